"""What a running study prints: a progress bar (trials done of those to run, best so far), one line
per finished trial, and the counts the summary at the end is made of; and `LongTask`, what any other
long phase (training the domain extractor, drawing reference images, building reports) prints so
that a log never goes silent, on a terminal or piped."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from harness.core.keys import Attr
from harness.scoring.flags import best_ranked, ranked_trials

LINE_SECONDS = 5.0  # piped output: a phase prints a line this often
BAR_SECONDS = 1.0  # on a terminal: how often the bar's time and note are refreshed


class StudyView(Protocol):
    """What these printers read of a study (harness.study.studyfile.StudySpec). Not imported from there: it
    reaches the extractors, which print through LongTask, and the report, which must not load torch."""

    @property
    def study_name(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def scale(self) -> str: ...

    @property
    def objectives(self) -> Sequence[Any]: ...  # each with .metric and .direction


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
    def __init__(self, spec: StudyView, total: int, prefix: str = "", bar: bool = True):
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


def best_text(study: optuna.Study, spec: StudyView) -> str:
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


def on_terminal() -> bool:
    """Whether progress bars can be drawn: tqdm draws on stderr, and only where it is a terminal."""
    return sys.stderr.isatty()


class LongTask:
    """A long phase that must not go silent. On a terminal, a bar (or a counter when the total is not
    known); where output is piped (a log file, CI, `| tee`), a plain line on stdout every LINE_SECONDS
    saying what runs, how far it is and for how long. A background thread does the printing, so a
    phase stuck in one long call (drawing 10,000 faces) still shows that it is alive.

        with LongTask("training the domain extractor", total=steps, unit="step") as phase:
            for step in ...:
                phase.update(1, note=f"loss {loss:.3f}")

    `count`, where given, is asked how far it is instead (a trial's step counter): the loop it watches
    then does no work at all for its progress.
    """

    def __init__(self, what: str, total: int | None = None, unit: str = "step", count: Callable[[], int] | None = None):
        self.what, self.total, self.unit, self.count = what, total, unit, count
        self.done, self.note = 0, ""
        self.start = time.perf_counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.bar = tqdm(total=total, desc=what, unit=unit, dynamic_ncols=True, leave=False,
                        bar_format=None if total else "{desc}: {elapsed}{postfix}") if on_terminal() else None
        self._thread = threading.Thread(target=self._beat, name=f"progress: {what}", daemon=True)
        self._thread.start()

    def update(self, n: int = 1, note: str | None = None) -> None:
        with self._lock:
            self.done += n
            if note is not None:
                self.note = note
            if self.bar is not None:
                self.bar.update(n)

    def line(self) -> str:
        """What a piped log shows: `  what: 200/2000 steps (10%), loss 1.78, 87 s so far`."""
        self._counted()
        with self._lock:
            if self.total:
                far = f"{self.done}/{self.total} {self.unit}s ({100 * self.done / self.total:.0f}%)"
            else:
                far = f"{self.done} {self.unit}s" if self.done else ""
            parts = [p for p in (far, self.note) if p]
        seconds = time.perf_counter() - self.start
        return f"  {self.what}: {', '.join(parts + [f'{seconds:.0f} s so far'])}"

    def _beat(self) -> None:
        while not self._stop.wait(BAR_SECONDS if self.bar is not None else LINE_SECONDS):
            if self.bar is None:
                sys.stdout.write(self.line() + "\n")  # one write: a line never interleaves with another thread's
                sys.stdout.flush()
                continue
            self._counted()
            with self._lock:
                self.bar.set_postfix_str(self.note, refresh=False)
                self.bar.refresh()  # the elapsed time moves on even while one call blocks

    def _counted(self) -> None:
        if self.count is not None:
            done = self.count()
            self.update(done - self.done)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "LongTask":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def steps_shown(label: str | None, steps: int, done: Callable[[], int]) -> Iterator[Callable[[str], None]]:
    """A trial's steps as they go, on a terminal (a bar) and piped (a line every few seconds), read
    from its step counter by another thread (nothing added to the loop); yields a function that sets
    the note beside them. No label: nothing shown."""
    if label is None:
        yield lambda note: None
        return
    task = LongTask(label, total=steps, unit="step", count=done)
    try:
        yield lambda note: task.update(0, note=note)
    finally:
        task.close()


def next_commands(spec: StudyView, runs_dir: Path) -> str:
    """What to run after a study, exactly as it is typed (RUNS_DIR= too when it is not the default)."""
    runs = "" if runs_dir == Path.cwd() / "mlruns" else f"RUNS_DIR={runs_dir} "
    scale = f" SCALE={spec.scale}" if spec.scale != "cpu" else ""
    return (f"next: {runs}make report STUDY={spec.name} (writes reports/{spec.study_name}/index.html), "
            f"{runs}make ui STUDY={spec.name}{scale} (its runs in the MLflow UI)")
