"""What a running study prints: a progress bar (trials done of those to run, best so far), one line
per finished trial, and the counts the summary at the end is made of."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from harness.keys import Attr
from harness.flags import best_ranked, ranked_trials
from harness.studyfile import StudySpec

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
SURPLUS = "surplus"  # a count beside the states: trials that stopped at once, their work done or budgeted elsewhere


def is_surplus(trial: FrozenTrial) -> bool:
    """A trial that never trained because another worker or invocation has its point or its budget:
    not a failure of the study (planning.surplus, planning.duplicate_of)."""
    return trial.state == TrialState.FAIL and str(trial.user_attrs.get(Attr.FAILURE, "")).startswith(SURPLUS)


@dataclass
class Tally:
    """What a study's summary is made of: its trials by state (surplus apart), the first real failure,
    and the reason once a trial failed because the disk is full (every next one would)."""

    counts: dict[Any, int] = field(default_factory=lambda: {state: 0 for state in (*COUNTED, SURPLUS)})
    first_failure: str = ""
    disk_full: str = ""

    def add(self, trial: FrozenTrial) -> None:
        key = SURPLUS if is_surplus(trial) else trial.state
        self.counts[key] = self.counts.get(key, 0) + 1
        if key == TrialState.FAIL:
            reason = str(trial.user_attrs.get(Attr.FAILURE, "failed"))
            self.first_failure = self.first_failure or f"trial {trial.number}: {reason}"
            if is_disk_full(reason):
                self.disk_full = reason


class Progress:
    def __init__(self, spec: StudySpec, total: int, prefix: str = "", bar: bool = True):
        self.spec, self.prefix = spec, prefix
        self.bar = tqdm(total=total, desc=spec.study_name, unit="trial", dynamic_ncols=True,
                        disable=None if bar else True)  # None: shown on a terminal only
        self.tally = Tally()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.tally.add(trial)
        self.bar.update(1)
        best = best_text(study, self.spec)
        if best:
            self.bar.set_postfix_str(f"best {best}")
        params = " ".join(f"{k}={fmt(v)}" for k, v in trial.params.items())
        if trial.state == TrialState.FAIL:
            detail = trial.user_attrs.get(Attr.FAILURE, "failed")
        elif trial.values:
            detail = " ".join(f"{o.metric}={fmt(v)}" for o, v in zip(self.spec.objectives, trial.values))
            if trial.user_attrs.get(Attr.FLAGS, "none") != "none":  # collapsed, did_not_learn: said where it is seen
                detail += f" [{trial.user_attrs[Attr.FLAGS]}{', not ranked' if trial.user_attrs.get(Attr.EXCLUDED) else ''}]"
        else:  # pruned: the last reported value
            step = trial.last_step
            detail = f"{self.spec.objectives[0].metric}={fmt(trial.intermediate_values[step])} at round {step}" \
                if step is not None else ""
        seconds = trial.duration.total_seconds() if trial.duration else 0.0
        self.bar.write(f"{self.prefix}trial {trial.number:>3} {trial.state.name:<8} {detail}  {params}  ({seconds:.1f} s)")

    def close(self) -> None:
        self.bar.close()


def is_disk_full(reason: str) -> bool:
    return "No space left on device" in reason or "database or disk is full" in reason


def fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def best_text(study: optuna.Study, spec: StudySpec) -> str:
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return ""
    if len(spec.objectives) > 1:
        return f"{len(study.best_trials)} trial(s) on the Pareto front"
    best = best_ranked(study, spec.objectives[0].direction == "maximize")
    flagged = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) - len(ranked_trials(study))
    note = f"; {flagged} trial(s) not ranked (flagged collapsed or did not learn)" if flagged else ""
    if best is None:
        return f"none: every complete trial is flagged{note}"
    return f"{spec.objectives[0].metric}={fmt(best.value)} (trial {best.number}){note}"
