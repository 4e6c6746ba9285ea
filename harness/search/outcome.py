"""What one trained configuration came to: the typed value the trial runner returns, and what the
search loop tells Optuna and the publisher records in MLflow."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Sequence

from harness.scoring.flags import Flags


class State(str, Enum):
    COMPLETE = "COMPLETE"  # trained and scored
    PRUNED = "PRUNED"  # stopped early by the pruner; its last per-round score stands
    FAIL = "FAIL"  # diverged, raised, or was interrupted


class FailureKind(str, Enum):
    DIVERGED = "diverged"  # a loss or weight became NaN or infinite, or a loss passed the bound: the good rounds are kept
    ERROR = "error"  # an exception: a bug, or the machine (a full disk); its traceback is kept
    INTERRUPTED = "interrupted"  # Ctrl-C: the study stops after recording it


@dataclass(frozen=True)
class Failure:
    kind: FailureKind
    reason: str  # one line, for the trial's user attributes, the run's tags and the progress line
    details: str = ""  # a traceback, for ERROR
    last_good_step: int = 0  # for DIVERGED: the steps at its last good round


@dataclass
class TrialOutcome:
    state: State
    family: str
    params: dict[str, Any]
    seed: int
    history: list[dict[str, float]] = field(default_factory=list)  # per round, as trained (resumed rounds included)
    final: dict[str, float] = field(default_factory=dict)  # end-of-training scores (COMPLETE only)
    artifacts: list[Path] = field(default_factory=list)  # files for the run's top folder
    failure: Failure | None = None
    stopped_at: int | None = None  # the steps after which the pruner stopped it
    seconds: float = 0.0  # training time
    reference_stats: str = "cached"  # computed: this trial computed reference statistics
    flags: Flags | None = None  # COMPLETE only: collapsed / did not learn, with the evidence

    @property
    def metrics(self) -> dict[str, float]:
        """The last round's metrics with the final scores on top."""
        return (self.history[-1] if self.history else {}) | self.final

    def values(self, objective_keys: Sequence[str]) -> list[float]:
        """The objectives' values of a COMPLETE outcome, in the study's order."""
        return [self.metrics[key] for key in objective_keys]
