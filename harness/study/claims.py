"""Claims of the seed reports that a study tests, declared in its study file ([[claims]] tables).

A claim is what a report said, in its words, and a test the report can run on the study's trials:

  near           the metric at one configuration lies in a range ("KL weight 1e-2 gives a KL of about 0.5")
  trend          as a parameter grows, each named metric goes up or down ("a higher KL weight lowers the KL")
  better_within  trials whose parameters lie within the given ranges or values score better on the metric
                 than the other trials ("beta1 0.5 trains better than 0.9")

Parsing lives here, light (no pandas, no torch), so the study file is refused at load for a bad claim;
the report judges the claims (harness/report/verdicts.py) from what was recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from harness.core.errors import UserError
from harness.core.keys import SCORES, split_of

TESTS = {
    "near": "metric, at = {param = value, ...}, range = [low, high]",
    "trend": "param, metrics = {metric = 'up' | 'down', ...}",
    "better_within": "metric, better = 'lower' | 'higher', within = {param = [low, high] or ['value', ...]}, "
                     "optionally among = {param = [...]} (the trials compared)",
}
KEYS = {"says", "source", "test", "metric", "at", "range", "param", "metrics", "better", "within", "among"}
NEEDS = {"near": ("metric", "at", "range"), "trend": ("param", "metrics"),
         "better_within": ("metric", "better", "within")}

Bounds = tuple[float, float] | tuple[str, ...]  # a numeric range (inclusive) or a set of values


@dataclass(frozen=True)
class Claim:
    says: str  # the report's claim, in words a reader recognises
    source: str  # which report said it
    test: str  # near | trend | better_within
    metric: str = ""  # near, better_within: a study metric (val_kl, fd: resolved per extractor by the report)
    at: Mapping[str, float] = field(default_factory=dict)  # near: the configuration
    range: tuple[float, float] | None = None  # near: where the claimed value lies
    param: str = ""  # trend: the parameter that grows
    metrics: Mapping[str, str] = field(default_factory=dict)  # trend: metric -> up | down
    better: str = ""  # better_within: lower | higher
    within: Mapping[str, Bounds] = field(default_factory=dict)  # better_within: the trials the claim favours
    among: Mapping[str, Bounds] = field(default_factory=dict)  # better_within: the trials compared (default all)

    def params(self) -> set[str]:
        """Every parameter the claim names."""
        return {*self.at, *([self.param] if self.param else []), *self.within, *self.among}

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in ("", None, {})}


def parse_claims(value: Any, at: str) -> tuple[Claim, ...]:
    """The [[claims]] of a study file, each checked: a mistake is one line naming the claim and the key."""
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise UserError(f"{at}claims: write each claim as a [[claims]] table")
    return tuple(_claim(item, f"{at}claims[{i}]") for i, item in enumerate(value))


def _claim(table: Mapping[str, Any], where: str) -> Claim:
    unknown = sorted(set(table) - KEYS)
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r}; a claim has {', '.join(sorted(KEYS))}")
    test = table.get("test")
    if test not in TESTS:
        raise UserError(f"{where}: test = {test!r}; choose one of {', '.join(TESTS)}")
    for key in ("says", "source", *NEEDS[test]):
        if key not in table:
            raise UserError(f"{where}: missing key {key!r}; a {test} claim has says, source and {TESTS[test]}")
    for key in ("says", "source"):
        if not isinstance(table[key], str) or not table[key].strip():
            raise UserError(f"{where}.{key}: write it as a non-empty string")
    extra = sorted(set(table) - {"says", "source", "test", *NEEDS[test], *(("among",) if test == "better_within" else ())})
    if extra:
        raise UserError(f"{where}: {extra[0]!r} is not a key of a {test} claim ({TESTS[test]})")
    claim = Claim(says=table["says"], source=table["source"], test=test)
    if test == "near":
        low, high = _range(table["range"], f"{where}.range")
        at_values = _table(table["at"], f"{where}.at")
        for param, number in at_values.items():
            if isinstance(number, bool) or not isinstance(number, (int, float)):
                raise UserError(f"{where}.at.{param}: {number!r} must be a number")
        return Claim(**{**claim.__dict__, "metric": _metric(table["metric"], f"{where}.metric"),
                        "at": {p: float(v) for p, v in at_values.items()}, "range": (low, high)})
    if test == "trend":
        directions = _table(table["metrics"], f"{where}.metrics")
        for metric, sign in directions.items():
            _metric(metric, f"{where}.metrics")
            if sign not in ("up", "down"):
                raise UserError(f"{where}.metrics.{metric}: {sign!r}; write 'up' or 'down'")
        return Claim(**{**claim.__dict__, "param": _name(table["param"], f"{where}.param"), "metrics": dict(directions)})
    if table["better"] not in ("lower", "higher"):
        raise UserError(f"{where}.better: {table['better']!r}; write 'lower' or 'higher'")
    return Claim(**{**claim.__dict__, "metric": _metric(table["metric"], f"{where}.metric"), "better": table["better"],
                    "within": _bounds(table["within"], f"{where}.within"),
                    "among": _bounds(table.get("among", {}), f"{where}.among") if "among" in table else {}})


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not value:
        raise UserError(f"{where}: write it as a non-empty inline table, e.g. {{kl_weight = 1e-2}}")
    return dict(value)


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise UserError(f"{where}: {value!r} must be a parameter name")
    return value


def _metric(value: Any, where: str) -> str:
    """A score kind (fd, kd, precision, recall, ...) or a split metric (val_kl, test_psnr)."""
    if not isinstance(value, str) or not (value in SCORES or split_of(value)):
        raise UserError(f"{where}: {value!r} is not a metric; name a score ({', '.join(SCORES)}) or a "
                        "<split>_<metric> such as val_kl or test_psnr")
    return value


def _range(value: Any, where: str) -> tuple[float, float]:
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value) or value[0] > value[1]):
        raise UserError(f"{where}: {value!r}; write [low, high] with low <= high")
    return float(value[0]), float(value[1])


def _bounds(value: Any, where: str) -> dict[str, Bounds]:
    """{param: [low, high]} (numbers: an inclusive range) or {param: ['a', 'b', ...]} (the values allowed)."""
    out: dict[str, Bounds] = {}
    for param, bounds in _table(value, where).items():
        if isinstance(bounds, list) and bounds and all(isinstance(v, str) for v in bounds):
            out[param] = tuple(bounds)
        else:
            out[param] = _range(bounds, f"{where}.{param}")
    return out


def check_params(claims: tuple[Claim, ...], known: set[str], at: str) -> None:
    """Each parameter a claim names must be one the study's families have (or 'family')."""
    for i, claim in enumerate(claims):
        for param in sorted(claim.params() - known - {"family"}):
            raise UserError(f"{at}claims[{i}]: no family of this study has a parameter {param!r}; "
                            f"its parameters: {', '.join(sorted(known))}")
