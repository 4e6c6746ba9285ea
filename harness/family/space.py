"""Hyperparameter spaces.

A family declares each knob once, with its default search range and the limits any value must
respect. A study may narrow a range, give a list of values, or fix a value; `Param.override`
checks that and returns the new `Param`. `suggest` turns a space into values as a function of an
Optuna trial (so `optuna.trial.FixedTrial` can unit-test it). A knob with `when = (other, value)`
only exists when an earlier knob has that value (e.g. thresholds only for the threshold schedule),
the define-by-run way: otherwise it is not sampled, not logged and not passed on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Mapping, Protocol

import optuna

from harness.core.errors import UserError

Scalar = int | float | str | bool


Condition = tuple[str, Any] | None  # (earlier parameter, value it must have)


class Param(Protocol):
    help: str
    when: Condition

    def suggest(self, trial: optuna.trial.BaseTrial, name: str) -> Any: ...

    def override(self, value: Any, where: str) -> "Param": ...

    def describe(self) -> dict[str, Any]: ...


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class FloatParam:
    low: float
    high: float
    default: float
    log: bool = False
    limits: tuple[float, float] = (-math.inf, math.inf)
    help: str = ""
    when: Condition = None

    def __post_init__(self) -> None:
        _check_declaration(self)

    def suggest(self, trial: optuna.trial.BaseTrial, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def check_value(self, value: Any, where: str) -> float:
        if not _is_number(value):
            raise UserError(f"{where}: expected a number, got {value!r}")
        lo, hi = self.limits
        if not lo <= value <= hi:
            raise UserError(f"{where}: {value} is outside the allowed [{lo}, {hi}]")
        return float(value)

    def override(self, value: Any, where: str) -> Param:
        return _override_numeric(self, value, where)

    def describe(self) -> dict[str, Any]:
        return {"type": "float", "low": self.low, "high": self.high, "log": self.log}


@dataclass(frozen=True)
class IntParam:
    low: int
    high: int
    default: int
    log: bool = False
    limits: tuple[int, int] = (-(2**62), 2**62)
    help: str = ""
    when: Condition = None

    def __post_init__(self) -> None:
        _check_declaration(self)

    def suggest(self, trial: optuna.trial.BaseTrial, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, log=self.log)

    def check_value(self, value: Any, where: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        lo, hi = self.limits
        if not lo <= value <= hi:
            raise UserError(f"{where}: {value} is outside the allowed [{lo}, {hi}]")
        return value

    def override(self, value: Any, where: str) -> Param:
        return _override_numeric(self, value, where)

    def describe(self) -> dict[str, Any]:
        return {"type": "int", "low": self.low, "high": self.high, "log": self.log}


@dataclass(frozen=True)
class ChoiceParam:
    choices: tuple[Scalar, ...]
    default: Scalar
    help: str = ""
    when: Condition = None

    def __post_init__(self) -> None:
        if self.default not in self.choices:
            raise ValueError(f"default {self.default!r} not among {self.choices}")

    @classmethod
    def of(cls, values: list[Any], where: str, help: str = "", when: Condition = None) -> "ChoiceParam":
        if not values:
            raise UserError(f"{where}: empty list of values; give at least one value")
        if len(set(values)) != len(values):
            raise UserError(f"{where}: repeated values in {values}")
        return cls(tuple(values), values[0], help, when)

    def suggest(self, trial: optuna.trial.BaseTrial, name: str) -> Scalar:
        return trial.suggest_categorical(name, list(self.choices))

    def override(self, value: Any, where: str) -> Param:
        allowed = ", ".join(map(repr, self.choices))
        values = value if isinstance(value, list) else [value]
        bad = [v for v in values if v not in self.choices]
        if isinstance(value, Mapping) or bad:
            raise UserError(f"{where}: {value!r} is not a choice; valid: {allowed}")
        if isinstance(value, list):
            return ChoiceParam.of(values, where, self.help, self.when)
        return FixedParam(value, self.help, self.when)

    def describe(self) -> dict[str, Any]:
        return {"type": "choice", "choices": list(self.choices)}


@dataclass(frozen=True)
class FixedParam:
    value: Scalar
    help: str = ""
    when: Condition = None

    @property
    def default(self) -> Scalar:
        return self.value

    def suggest(self, trial: optuna.trial.BaseTrial, name: str) -> Scalar:
        return self.value

    def override(self, value: Any, where: str) -> Param:
        raise UserError(f"{where}: this parameter is fixed at {self.value!r} and cannot be changed")

    def describe(self) -> dict[str, Any]:
        return {"type": "fixed", "value": self.value}


def _override_numeric(param: FloatParam | IntParam, value: Any, where: str) -> Param:
    """A {low, high, log} table narrows the range, a list gives choices, a value fixes it."""
    if isinstance(value, Mapping):
        if set(value) - {"low", "high", "log"} or not {"low", "high"} <= set(value):
            raise UserError(f"{where}: a range is {{low = ..., high = ..., log = true|false}}; got {dict(value)}")
        log = value.get("log", param.log)
        if not isinstance(log, bool):
            raise UserError(f"{where}.log: expected true or false, got {log!r}")
        low, high = param.check_value(value["low"], where + ".low"), param.check_value(value["high"], where + ".high")
        _check_range(low, high, log, where)
        return replace(param, low=low, high=high, log=log, default=min(max(param.default, low), high))
    if isinstance(value, list):
        return ChoiceParam.of([param.check_value(v, where) for v in value], where, param.help, param.when)
    return FixedParam(param.check_value(value, where), param.help, param.when)


def _check_declaration(param: FloatParam | IntParam) -> None:
    _check_range(param.low, param.high, param.log, "declaration")
    if not param.low <= param.default <= param.high:
        raise ValueError(f"default {param.default} outside [{param.low}, {param.high}]")


def _check_range(low: float, high: float, log: bool, where: str) -> None:
    if not low < high:
        raise UserError(f"{where}: empty range (low {low} >= high {high}); give low < high, or one value to fix it")
    if log and low <= 0:
        raise UserError(f"{where}: a log range needs low > 0 (got {low}); set log = false or raise low")


def suggest(trial: optuna.trial.BaseTrial, space: Mapping[str, Param], prefix: str = "") -> dict[str, Any]:
    """Sample one configuration: free parameters through `trial` (named prefix + name), fixed ones as
    they are, conditional ones only when their condition holds."""
    values: dict[str, Any] = {}
    for name, param in space.items():
        if param.when is None or values.get(param.when[0]) == param.when[1]:
            values[name] = param.suggest(trial, prefix + name)
    return values


def describe(param: Param) -> dict[str, Any]:
    """What a study stores to recognise its own space: the distribution and its condition."""
    return param.describe() | ({"when": list(param.when)} if param.when else {})


def reported_point(space: Mapping[str, Param], reported: Mapping[str, Any],
                    prefix: str = "") -> tuple[dict[str, Any], dict[str, tuple[Any, Any]]]:
    """The configuration of `space` nearest to a family's reported configuration, as Optuna's
    enqueue_trial takes it (free parameters only, named prefix + name), and what the study's space
    moved: {name: (reported value, value used)} where it fixes another value or its range or
    choices leave the reported value out (a range: the nearer end; choices: the nearest number)."""
    values: dict[str, Any] = {}
    point: dict[str, Any] = {}
    moved: dict[str, tuple[Any, Any]] = {}
    for name, param in space.items():
        if param.when is not None and values.get(param.when[0]) != param.when[1]:
            continue
        wanted = reported.get(name, param.default)
        values[name] = value = _nearest(param, wanted)
        if not isinstance(param, FixedParam):
            point[prefix + name] = value
        if value != wanted:
            moved[name] = (wanted, value)
    return point, moved


def _nearest(param: Param, value: Any) -> Any:
    if isinstance(param, FixedParam):
        return param.value
    if isinstance(param, (FloatParam, IntParam)):
        return type(param.low)(min(max(value, param.low), param.high))
    if value in param.choices:
        return value
    numbers = [c for c in param.choices if _is_number(c)]
    return min(numbers, key=lambda c: abs(c - value)) if numbers and _is_number(value) else param.default


LOG_GRID_SPAN = 100.0  # numeric choices whose largest is this many times the smallest, or more, are a log grid


def on_log_scale(param: Param) -> bool:
    """Whether a parameter is read on a log axis: a log range, or positive numeric choices spanning two
    decades or more (a study's grid of a log range, 5e-5 .. 1e-2, is no longer a range)."""
    if isinstance(param, (FloatParam, IntParam)):
        return param.log
    if isinstance(param, ChoiceParam) and len(param.choices) > 2 and all(_is_number(c) and c > 0 for c in param.choices):
        return max(param.choices) / min(param.choices) >= LOG_GRID_SPAN
    return False


def shown(param: Param) -> str:
    """A parameter's range as `make list` prints it: "float 1e-05 .. 0.01, log scale", "one of ratio, threshold"."""
    described = param.describe()
    kind = described["type"]
    if kind in ("float", "int"):
        text = f"{kind} {described['low']:g} .. {described['high']:g}" + (", log scale" if described["log"] else "")
    elif kind == "choice":
        text = "one of " + ", ".join(map(str, described["choices"]))
    else:
        text = f"fixed at {described['value']}"
    return text + (f" (when {param.when[0]} = {param.when[1]})" if param.when else "")
