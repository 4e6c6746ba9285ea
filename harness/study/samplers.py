"""Optuna samplers and pruners, by the names a study file uses.

A study names one of each and may set any constructor argument that takes a plain value
(numbers, strings, booleans); the valid ones are read from the constructor's signature, so a
typo is refused with the list. The draws for trial N depend on the study's seed and N only
(`TrialSeeded`), so invocations and workers sharing a study never draw alike.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from harness.core.errors import UserError

SAMPLERS: dict[str, type[optuna.samplers.BaseSampler]] = {
    # Grid studies enqueue every point that has no finished trial (harness/search/runner.py), so the sampler
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
# QMC draws point k of one scrambled sequence for the k-th trial: its seed (the scramble) must stay
# the same for every trial, or the points are no longer low-discrepancy.
SEEDED_ONCE = ("qmc",)
_PLAIN = (type(None), bool, int, float, str)


def trial_seed(study_seed: int, trial_number: int) -> int:
    """A seed for one trial's draws: different for every trial number, the same on every machine."""
    return int(np.random.SeedSequence([study_seed, trial_number]).generate_state(1)[0])


class TrialSeeded(optuna.samplers.BaseSampler):
    """A sampler rebuilt for each trial with a seed made of the study seed and the trial's number.
    Optuna's samplers seed one random state per process: two invocations (or workers) of a study that
    start from the same seed drew the same configurations and trained them twice. Trial numbers are
    handed out by the storage, unique across every process sharing it, so here each trial draws its
    own values, and trial N draws the same ones whoever runs it. Model-based samplers (TPE, GP,
    NSGA-II) read the finished trials from the storage, so rebuilding them loses nothing they learn."""

    def __init__(self, build: Callable[[int], optuna.samplers.BaseSampler], study_seed: int) -> None:
        self._build, self._study_seed = build, study_seed
        self._current = build(study_seed)  # builds (and validates) once; replaced per trial in before_trial

    def __str__(self) -> str:
        return f"TrialSeeded({type(self._current).__name__}, seed={self._study_seed})"

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._current = self._build(trial_seed(self._study_seed, trial.number))
        self._current.before_trial(study, trial)

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._current.infer_relative_search_space(study, trial)

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self._current.sample_relative(study, trial, search_space)

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._current.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._current.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        pass  # the seed is the trial's, by design
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
    if name in SEEDED_ONCE:
        return _construct("sampler", SAMPLERS, name, options, where, seed=seed)
    return TrialSeeded(lambda trial_seed: _construct("sampler", SAMPLERS, name, options, where, seed=trial_seed), seed)


def make_pruner(name: str, options: Mapping[str, Any], where: str = "pruner") -> optuna.pruners.BasePruner:
    return _construct("pruner", PRUNERS, name, options, where)
