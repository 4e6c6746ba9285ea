"""Optuna samplers and pruners, by the names a study file uses.

A study names one of each and may set any constructor argument that takes a plain value
(numbers, strings, booleans); the valid ones are read from the constructor's signature, so a
typo is refused with the list. The sampler's seed is the study's seed.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping

import optuna

from harness.errors import UserError

SAMPLERS: dict[str, type[optuna.samplers.BaseSampler]] = {
    # Grid studies enqueue every point that has no finished trial (harness/search.py), so the sampler
    # never chooses. Optuna's GridSampler would count a failed or interrupted point as visited, and its
    # bookkeeping breaks on enqueued trials when one point is left; a seeded RandomSampler stands in.
    "grid": optuna.samplers.RandomSampler,
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "qmc": optuna.samplers.QMCSampler,
    "gp": optuna.samplers.GPSampler,
    "nsgaii": optuna.samplers.NSGAIISampler,
}
PRUNERS: dict[str, type[optuna.pruners.BasePruner]] = {
    "none": optuna.pruners.NopPruner,
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "threshold": optuna.pruners.ThresholdPruner,
}
_PLAIN = (type(None), bool, int, float, str)
_NOT_FROM_A_FILE = ("Callable", "Sampler", "Crossover", "Mutation", "Sequence", "Pruner")


def settable_options(cls: type) -> dict[str, inspect.Parameter]:
    """Constructor arguments a study file may set: plain values only; the seed is the study's."""
    options = {}
    for name, p in inspect.signature(cls).parameters.items():
        if name in ("self", "seed", "search_space") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        annotation = str(p.annotation)
        if any(word in annotation for word in _NOT_FROM_A_FILE):
            continue
        if p.default is p.empty or isinstance(p.default, _PLAIN):
            options[name] = p
    return options


def _construct(kind: str, table: Mapping[str, type], name: str, options: Mapping[str, Any],
               where: str, **fixed: Any) -> Any:
    if name not in table:
        raise UserError(f"{where}.name: unknown {kind} {name!r}; valid: {', '.join(table)}")
    cls = table[name]
    allowed = settable_options(cls)
    unknown = [key for key in options if key not in allowed]
    if unknown:
        valid = ", ".join(allowed) or "none"
        raise UserError(f"{where}: {kind} {name!r} has no option {unknown[0]!r}; valid: {valid}")
    missing = [k for k, p in allowed.items() if p.default is p.empty and k not in options]
    if missing:
        raise UserError(f"{where}: {kind} {name!r} needs {', '.join(missing)}")
    bad = [k for k, v in options.items() if not isinstance(v, _PLAIN)]
    if bad:
        raise UserError(f"{where}.{bad[0]}: expected a number, string or boolean, got {options[bad[0]]!r}")
    try:
        return cls(**fixed, **options)
    except (TypeError, ValueError) as e:
        raise UserError(f"{where}: {kind} {name!r} refused its options: {e}") from None


def make_sampler(name: str, options: Mapping[str, Any], seed: int,
                 grid: Mapping[str, list[Any]] | None = None, where: str = "sampler") -> optuna.samplers.BaseSampler:
    if name == "grid" and not grid:
        raise UserError(f"{where}: the grid sampler needs at least one parameter given as a list of values "
                        "in [space.<family>], e.g. kl_weight = [1e-4, 1e-3]")
    return _construct("sampler", SAMPLERS, name, options, where, seed=seed)


def make_pruner(name: str, options: Mapping[str, Any], where: str = "pruner") -> optuna.pruners.BasePruner:
    return _construct("pruner", PRUNERS, name, options, where)
