"""Which trials a study runs: its budget of finished trials, the grid points still missing, the
queue, and the trials a worker must not run because the budget is met elsewhere.

Every sampled (not grid) study runs each family's reported configuration (the seed reports'; see
harness/family/registry.py) as that family's first trial, so no family is judged by random draws alone:
it is enqueued, marked with the user attribute `reported_config`, before any sampled trial.

`trials` in a study file is the study's budget of finished (complete or pruned) trials, not a count
per invocation (per family, when a study has several: each family gets the same budget, its trials
enqueued in turn); running a study again continues it until the budget is met. Grid studies plan
their own points: every grid point without a finished trial is enqueued, so an interrupted or
failed point is run again, and a grid that is complete says so and runs nothing.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Mapping

import optuna
from optuna.trial import FrozenTrial, TrialState

from harness.core import keys
from harness.core.keys import Attr
from harness.family.registry import get_family
from harness.family.space import reported_point
from harness.study.studyfile import StudySpec

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class Queued:
    """A trial to enqueue: its fixed parameters and user attributes."""

    params: dict[str, Any]
    user_attrs: dict[str, Any] = field(default_factory=dict)


def reported_trial(spec: StudySpec, family: str) -> Queued:
    """The family's reported configuration in this study's space (see space.reported_point); what
    the space moved is kept in the user attribute `reference_moved`."""
    several = len(spec.families) > 1
    point, moved = reported_point(spec.spaces[family], get_family(family).reported_config,
                                   f"{family}." if several else "")
    attrs = {Attr.REPORTED_CONFIG: family} | ({Attr.REPORTED_MOVED: {k: list(v) for k, v in moved.items()}} if moved else {})
    return Queued(({"family": family} if several else {}) | point, attrs)


def has_reported(study: optuna.Study, family: str) -> bool:
    """Whether the study ran, runs or queued the family's reported trial already."""
    return any(t.user_attrs.get(Attr.REPORTED_CONFIG) == family for t in study.get_trials(deepcopy=False))


def plan_trials(study: optuna.Study, spec: StudySpec) -> tuple[int, list[Queued], str]:
    """(trials to run now, trials to enqueue (grid points, reported configurations), why nothing runs
    when it is 0)."""
    done = study.get_trials(deepcopy=False, states=FINISHED)
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))  # another worker's: not ours to run
    left = spec.trials - len(done) - len(running)
    if len(spec.families) > 1:
        return _plan_per_family(study, spec, done + running)
    if spec.grid is None:
        why = (f"{spec.study_name} already has {len(done)} finished trials, its budget (trials = {spec.trials}); "
               "raise TRIALS= to run more")
        family = spec.families[0]
        reported = [reported_trial(spec, family)] if left > 0 and not has_reported(study, family) else []
        return max(0, left), reported, why
    names = list(spec.grid)
    points = [dict(zip(names, values)) for values in itertools.product(*spec.grid.values())]
    missing = [p for p in points if not any(matches(p, t.params) for t in done)]
    if not missing:
        return 0, [], f"grid complete: all {len(points)} points of {spec.study_name} are done"
    missing = [p for p in missing if not any(matches(p, t.params) for t in running)]
    to_run = max(0, min(len(missing), left))
    waiting = waiting_params(study)
    enqueue = [Queued(p) for p in missing[:to_run] if not any(matches(p, w) for w in waiting)]
    why = (f"{spec.study_name} has {len(done)} finished trials, its budget (trials = {spec.trials}); "
           f"{len(missing)} of {len(points)} grid points remain: raise TRIALS= to run them")
    return to_run, enqueue, why


def _plan_per_family(study: optuna.Study, spec: StudySpec, done: list[FrozenTrial]) -> tuple[int, list[Queued], str]:
    """The same budget for every family: each family's missing trials, enqueued in turn, its
    reported configuration first."""
    waiting = [w.get("family") for w in waiting_params(study)]
    left = {f: max(0, spec.trials - sum(t.params.get("family") == f for t in done)) for f in spec.families}
    to_queue = {f: max(0, n - waiting.count(f)) for f, n in left.items()}
    enqueue = []
    reported = {f for f in spec.families if to_queue[f] and not has_reported(study, f)}
    while any(to_queue.values()):
        for family in spec.families:
            if to_queue[family]:
                enqueue.append(reported_trial(spec, family) if family in reported else Queued({"family": family}))
                reported.discard(family)
                to_queue[family] -= 1
    why = (f"{spec.study_name} already has {spec.trials} finished trials for each of its {len(spec.families)} "
           "families, its budget; raise TRIALS= to run more")
    return sum(left.values()), enqueue, why


def waiting_params(study: optuna.Study) -> list[dict[str, Any]]:
    """The parameters of queued trials: enqueued ones hold them as fixed_params, the heartbeat's retries as params."""
    return [t.system_attrs.get(keys.OPTUNA_FIXED_PARAMS) or t.params
            for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))]


def matches(point: Mapping[str, Any], params: Mapping[str, Any]) -> bool:
    return all(name in params and params[name] == value for name, value in point.items())


def surplus(spec: StudySpec, study: optuna.Study, number: int) -> str:
    """Why trial `number` should not run, when workers on several machines planned the same budget:
    a grid study runs queued points only; any other study stops at its budget of finished plus
    running trials (trial numbers are handed out in order, so the later one sees the earlier)."""
    trials = study.get_trials(deepcopy=False)
    me = next(t for t in trials if t.number == number)
    queued = keys.OPTUNA_FIXED_PARAMS in me.system_attrs or "failed_trial" in me.system_attrs or me.params
    if spec.grid is not None:
        return "" if queued else "surplus: every grid point is done or running elsewhere"
    taken = [t for t in trials if t.state in FINISHED or (t.state == TrialState.RUNNING and t.number <= number)]
    budget = spec.trials * len(spec.families)
    return "" if queued or len(taken) <= budget else f"surplus: the budget of {budget} trials is met by other workers"


def duplicate_of(study: optuna.Study, number: int) -> int | None:
    """The earlier trial that holds the same queued point (a grid point, a reported configuration) as
    trial `number`, when two invocations planned the same study at once and both queued it; None when
    the point is this trial's. The lowest trial number keeps a point, so two invocations that pop copies
    at the same moment agree without a lock (on SQLite and PostgreSQL alike). Failed trials give their
    point up: a rerun or the heartbeat's retry takes it."""
    trials = study.get_trials(deepcopy=False)
    me = next(t for t in trials if t.number == number)
    point = me.system_attrs.get(keys.OPTUNA_FIXED_PARAMS)
    if point is None:
        return None
    return next((t.number for t in trials if t.number < number and t.state != TrialState.FAIL
                 and t.system_attrs.get(keys.OPTUNA_FIXED_PARAMS) == point), None)


def retry_of(study: optuna.Study, number: int) -> FrozenTrial | None:
    """The trial that trial `number` re-runs, when its worker died (Optuna's stale-trial retry)."""
    trials = study.get_trials(deepcopy=False)
    frozen = next(t for t in trials if t.number == number)
    original = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
    return None if original is None else next(t for t in trials if t.number == original)
