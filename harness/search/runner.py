"""Running a study: Optuna asks for trials, the trial runner trains each, the publisher records it.

`run_study` opens the study in the Optuna storage and refuses one whose definition (or extractor)
changed, plans the budget (harness/search/planning.py), opens the session (data, extractor), starts the
invocation's MLflow parent run, and runs the trial loop here or in worker processes
(harness/search/workers.py). The loop is Optuna's ask-and-tell: ask for a trial, sample its configuration
(harness/family/space.py), hand it to the trial runner (harness/search/trial.py), publish the TrialOutcome it
returns (harness/tracking/publish.py), and tell Optuna its state and values. A trial whose loss or weights
become NaN or infinite ends as FAIL (the sampler learns nothing from it), with the reason in its
user attributes and run tags; its per-round sample grids up to the last good round stay in its run.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
import traceback
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import torch
from mlflow.exceptions import MlflowException
from optuna.trial import TrialState
from sqlalchemy.exc import SQLAlchemyError

from harness.core import keys
from harness.core.errors import UserError, defer_interrupts, redact, warn
from harness.core.keys import Attr, Tag
from harness.core.progress import SURPLUS, Progress, Tally, best_text, next_commands
from harness.core.retry import StoreUnreachable
from harness.core.storage import Storage
from harness.family.registry import get_family
from harness.family.space import suggest
from harness.scoring.flags import best_ranked
from harness.search import planning
from harness.search.liveness import OpenStudy, fail_stale_trials, heartbeat, heartbeat_api
from harness.search.outcome import Failure, FailureKind, State, TrialOutcome
from harness.search.session import Session, open_session
from harness.search.trial import TrialJob, TrialRunner
from harness.search.workers import spawn_workers, worker_identity
from harness.study.studyfile import StudySpec
from harness.tracking.client import Tracker
from harness.tracking.publish import Publisher, close_stale_runs, resumed_step
from harness.training.devices import resolve_device
from harness.training.packs import PackKey, default_pack, pack_fast, pack_key
from harness.training.phases import OFF, Profiler


@dataclass
class StudyResult:
    exit_code: int
    message: str


def check_identity(study: optuna.Study, attr: str, mine: dict[str, Any], spec: StudySpec, storage_url: str) -> None:
    """Refuse to mix trials of a changed study definition (or scored by another extractor) into an
    existing Optuna study."""
    stored = study.user_attrs.get(attr)
    if stored is None:
        study.set_user_attr(attr, mine)
        return
    if stored != mine:
        changed = ", ".join(f"{k} {_short(stored.get(k))} -> {_short(mine[k])}" for k in mine if stored.get(k) != mine[k])
        what = "scored with another extractor" if attr == keys.StudyAttr.EXTRACTOR else "run with another definition"
        raise UserError(f"study {spec.study_name} in {redact(storage_url)} was {what} "
                        f"({changed}); bump version in {spec.path.name} to start a new study, or use another RUNS_DIR")


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def open_study(spec: StudySpec, storage: Storage, heartbeat: bool) -> OpenStudy:
    """The study's Optuna study (created on first use), its definition checked against what it holds.
    The sampler seeds each trial's draws by the study seed and the trial's number (harness/study/samplers.py)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # we print one line per trial instead
    rdb = storage.optuna(heartbeat=heartbeat)
    study = optuna.create_study(study_name=spec.study_name, storage=rdb, sampler=spec.make_sampler(),
                                pruner=spec.make_pruner(), directions=[o.direction for o in spec.objectives], load_if_exists=True)
    check_identity(study, keys.StudyAttr.IDENTITY, json.loads(json.dumps(spec.identity())), spec, storage.storage_url)
    return OpenStudy(study, rdb)


@dataclass
class Prepared:
    """A trial asked, sampled and started in MLflow, ready to train."""

    trial: optuna.Trial
    job: TrialJob
    run_id: str
    key: PackKey | None  # trials with one key may train as one fused pack (None: alone)


class TrialLoop:
    """Ask, run, publish, tell: `n` trials of one study, logged under one parent run. With pack > 1
    it asks for up to `pack` trials at once (as parallel workers would), trains those that can share
    a fused pack (same family, differing only in its fused scalars; harness/training/packs.py) together and
    the rest one at a time, then publishes and tells each."""

    def __init__(self, opened: OpenStudy, session: Session, publisher: Publisher, parent_id: str, progress: Progress,
                 pack: int = 1):
        self.opened, self.study = opened, opened.study
        self.session, self.publisher, self.parent_id, self.progress = session, publisher, parent_id, progress
        self.runner = TrialRunner(session)
        self.keys = session.objective_keys
        self.pack = pack
        self.stopped = ""  # why the loop stopped before its n trials

    def run(self, n: int) -> None:
        left = n
        while left > 0 and not self.stopped:
            fail_stale_trials(self.opened)
            trials = []
            for _ in range(min(self.pack, left)):
                with heartbeat_api():
                    trials.append(self.study.ask())
            left -= len(trials)
            for frozen in self._run_and_tell(trials):
                self.progress(self.study, frozen)
            if self.progress.tally.disk_full:  # every next trial would fail the same way
                self.stopped = self.progress.tally.disk_full

    def _run_and_tell(self, trials: list[optuna.Trial]) -> list[optuna.trial.FrozenTrial]:
        told: dict[int, optuna.trial.FrozenTrial] = {}
        try:
            with ExitStack() as beating:
                for trial in trials:
                    beating.enter_context(heartbeat(self.opened, trial.number))
                outcomes = self._run(trials, told)
        except KeyboardInterrupt:  # outside the trials' training: they fail, and the study stops
            defer_interrupts()
            for trial in trials:
                if trial.number not in told:
                    self._fail(trial, "interrupted (Ctrl-C)")
            raise
        except StoreUnreachable:  # the study stops; the rerun finds these trials' worker gone and re-queues them
            raise
        except Exception as e:  # noqa: BLE001 - outside the runner (the store): the trials fail, with the reason
            return [told.get(t.number) or self._fail(t, f"{type(e).__name__}: {e}") for t in trials]
        interrupted = False
        for trial in trials:
            if trial.number in told:
                continue
            outcome = outcomes.get(trial.number)
            if outcome is None:  # surplus: not run
                told[trial.number] = self._fail(trial, trial.user_attrs[Attr.FAILURE])
            elif outcome.state == State.COMPLETE:
                values = outcome.values(self.keys)
                told[trial.number] = self.study.tell(trial, values[0] if len(values) == 1 else values)
            elif outcome.state == State.PRUNED:
                told[trial.number] = self.study.tell(trial, state=TrialState.PRUNED)
            else:
                told[trial.number] = self._fail(trial, outcome.failure.reason)
                interrupted |= outcome.failure.kind == FailureKind.INTERRUPTED
        if interrupted:
            raise KeyboardInterrupt
        return [told[trial.number] for trial in trials]

    def _fail(self, trial: optuna.Trial, reason: str) -> optuna.trial.FrozenTrial:
        if Attr.FAILURE not in trial.user_attrs:
            trial.set_user_attr(Attr.FAILURE, reason)
        return self.study.tell(trial, state=TrialState.FAIL)

    def _run(self, trials: list[optuna.Trial], told: dict[int, optuna.trial.FrozenTrial]) -> dict[int, TrialOutcome]:
        """Prepare, train and publish the trials; a trial whose preparation fails outside the runner
        (the store, sampling) is failed and told here, with its reason. Their outcomes by number."""
        prepared: list[Prepared] = []
        for trial in trials:
            try:
                ready = self._prepare(trial)
            except StoreUnreachable:
                raise
            except Exception as e:  # noqa: BLE001 - outside the runner: this trial fails, with its reason
                told[trial.number] = self._fail(trial, f"{type(e).__name__}: {e}")
                continue
            if ready is not None:
                prepared.append(ready)
        groups: dict[Any, list[Prepared]] = {}
        for ready in prepared:  # a trial without a key, or alone with its key, trains alone
            groups.setdefault(ready.key if ready.key is not None else ("alone", ready.trial.number), []).append(ready)
        outcomes: dict[int, TrialOutcome] = {}
        with ExitStack() as scratches:
            folders = {r.trial.number: Path(scratches.enter_context(tempfile.TemporaryDirectory(prefix="genbench-trial-")))
                       for r in prepared}
            for group in groups.values():
                if any(o.failure is not None and o.failure.kind == FailureKind.INTERRUPTED for o in outcomes.values()):
                    for ready in group:  # Ctrl-C: the trials not started yet are not started
                        outcomes[ready.trial.number] = TrialOutcome(State.FAIL, ready.job.family, dict(ready.job.params),
                                                                    ready.job.seed, failure=Failure(
                                                                        FailureKind.INTERRUPTED, "interrupted (Ctrl-C)"))
                    continue
                stops = [lambda round_, metrics, trial=r.trial: self._report(trial, round_, metrics, decide=True)
                         for r in group]
                sinks = [self.publisher.sink(r.run_id) for r in group]
                where = [folders[r.trial.number] for r in group]
                if len(group) == 1:
                    results = [self.runner.run(group[0].job, sinks[0], where[0], stop_after=stops[0])]
                else:
                    members = [r.trial.number for r in group]
                    for ready in group:  # who shared the pack (its wall-clock figures are the pack's)
                        ready.trial.set_user_attr(Attr.PACK, members)
                        self.publisher.tracker.set_tags(ready.run_id, {Tag.PACK: "trials " + ",".join(map(str, members))})
                    results = self.runner.run_pack([r.job for r in group], sinks, where, stops)
                for ready, outcome in zip(group, results):
                    outcomes[ready.trial.number] = outcome
            for ready in prepared:
                outcomes[ready.trial.number] = self._publish(ready, outcomes[ready.trial.number])
        return outcomes

    def _prepare(self, trial: optuna.Trial) -> Prepared | None:
        """Sample the trial and start its run; None when it must not run (the budget is met elsewhere)."""
        spec = self.session.spec
        trial.set_user_attr(Attr.WORKER, worker_identity(trial.number))  # first: a rerun can tell if this process dies
        trial.set_user_attr(Attr.PARENT_RUN, self.parent_id)
        surplus = planning.surplus(spec, self.study, trial.number)
        if surplus:
            trial.set_user_attr(Attr.FAILURE, surplus)
            self.stopped = surplus
            return None
        duplicate = planning.duplicate_of(self.study, trial.number)
        if duplicate is not None:  # another invocation queued the same point: it is trial `duplicate`'s
            trial.set_user_attr(Attr.FAILURE, f"surplus: the same point as trial {duplicate}, queued twice by "
                                              "two invocations started together")
            return None
        several = len(spec.families) > 1
        family = trial.suggest_categorical("family", list(spec.families)) if several else spec.families[0]
        prefix = f"{family}." if several else ""  # keeps each family's distributions apart in Optuna
        params = suggest(trial, spec.spaces[family], prefix)
        with heartbeat_api():
            original = planning.retry_of(self.study, trial.number)
        tags = {Tag.TRIAL: trial.number} | ({Tag.RETRY_OF: original.number} if original else {}) \
            | ({Tag.REPORTED_CONFIG: "true"} if trial.user_attrs.get(Attr.REPORTED_CONFIG) else {})
        packable = self.pack > 1 and original is None and not self.session.fast.compile \
            and get_family(family).fused is not None
        fast = pack_fast(self.session.fast) if packable else None
        run_id = self.publisher.start_trial(family, params, spec.seed, f"trial-{trial.number}", tags, self.parent_id, fast)
        trial.set_user_attr(Attr.RUN_ID, run_id)
        trial.set_user_attr(Attr.FAMILY, family)
        resume = self.publisher.checkpoint_of(original.user_attrs.get(Attr.RUN_ID), f"trial {original.number}") \
            if original else None
        if resume is not None:
            trial.set_user_attr(Attr.RESUMED_FROM, resumed_step(resume))
            for round_, metrics in enumerate(resume["history"], start=1):  # the pruner sees the whole curve
                self._report(trial, round_, metrics)
            self.publisher.resumed(run_id, resume)
        job = TrialJob(family, params, spec.seed, f"trial {trial.number}", resume, fast)
        key = pack_key(get_family(family), params) if packable and resume is None else None
        return Prepared(trial, job, run_id, key)

    def _publish(self, ready: Prepared, outcome: TrialOutcome) -> TrialOutcome:
        """The outcome into the trial's MLflow run and Optuna user attributes."""
        trial, run_id = ready.trial, ready.run_id
        _check_objectives(outcome, self.keys)
        trial.set_user_attr(Attr.REFERENCE_STATS, outcome.reference_stats)
        try:
            self.publisher.publish(run_id, outcome)
        except (MlflowException, SQLAlchemyError, OSError) as e:  # the run must not stay RUNNING
            outcome = replace(outcome, state=State.FAIL, failure=Failure(
                FailureKind.ERROR, f"recording the trial failed: {type(e).__name__}: {e}", traceback.format_exc()))
            self.publisher.publish(run_id, outcome)  # a failure is recorded as far as the store allows
        if outcome.failure is not None:
            trial.set_user_attr(Attr.FAILURE, outcome.failure.reason)
        if outcome.flags is not None and outcome.state == State.COMPLETE:
            trial.set_user_attr(Attr.FLAGS, outcome.flags.text)
            trial.set_user_attr(Attr.EXCLUDED, outcome.flags.excluded)
        return outcome

    def _report(self, trial: optuna.Trial, round_: int, metrics: dict[str, float], decide: bool = False) -> bool:
        """The per-round score to the pruner, at the round's number (Optuna's step: every trial of a
        study ends round r at the same optimizer step, and a pruner's warm-up or Hyperband's resources
        count rounds, whatever STEPS= says); True asks the training loop to stop (pruned)."""
        pruned_on = self.session.pruned_on
        if len(self.session.spec.objectives) > 1 or pruned_on not in metrics:
            return False  # Optuna cannot prune multi-objective trials; final-only scores have nothing per round
        trial.report(metrics[pruned_on], round_)
        return decide and trial.should_prune()


def _check_objectives(outcome: TrialOutcome, objective_keys: list[str]) -> None:
    """A COMPLETE outcome whose objective is not a finite number cannot be ranked: it fails, saying so."""
    if outcome.state != State.COMPLETE:
        return
    bad = next(((k, outcome.metrics.get(k)) for k in objective_keys
                if not isinstance(outcome.metrics.get(k), float) or not math.isfinite(outcome.metrics[k])), None)
    if bad:
        outcome.state = State.FAIL
        outcome.failure = Failure(FailureKind.ERROR, f"objective {bad[0]} is {bad[1]}: nothing to rank by")


def run_study(spec: StudySpec, storage: Storage, device: str = "auto", workers: int = 1,
              profiler: Profiler = OFF, pack: int | None = None) -> StudyResult:
    """Run (or continue) a study; `profiler` times the phases of its trials (make bench); `pack`:
    trials per fused pack (None: the device's default, harness/training/packs.py)."""
    resolve_device(device)  # a device that is not there is refused before anything is written
    storage.prepare()
    opened = open_study(spec, storage, heartbeat=True)
    study = opened.study
    tracker = Tracker(storage, spec.study_name)
    fail_stale_trials(opened)
    close_stale_runs(tracker, study, storage.heartbeat_seconds)
    to_run, enqueue, why = planning.plan_trials(study, spec)
    if to_run == 0:
        best = best_text(study, spec)
        return StudyResult(0, why + (f"; best {best}" if best else "") + f"\n{next_commands(spec, storage.runs_dir)}")

    workers = min(workers, to_run)
    pack = pack or default_pack(resolve_device(device))
    session = open_session(spec, storage, device, f"study {spec.study_name}: {to_run} trial(s) to run, "
                                                  f"{spec.steps} steps each" + (f", {workers} workers" if workers > 1 else "")
                                                  + (f", fused packs of up to {pack}" if pack > 1 else ""))
    session.phases = profiler
    check_identity(study, keys.StudyAttr.EXTRACTOR, json.loads(json.dumps(session.quality.extractor.identity)), spec,
                   storage.storage_url)
    for queued in enqueue:
        study.enqueue_trial(queued.params, user_attrs=queued.user_attrs)
    publisher = Publisher(session, tracker)
    parent_id = publisher.start_parent(spec.name, "study")
    start = time.perf_counter()
    try:
        tally = _run_trials(opened, session, publisher, parent_id, device, workers, to_run, pack)
    except KeyboardInterrupt:
        defer_interrupts()
        tracker.end_run(parent_id, "KILLED", {Tag.STATE: "INTERRUPTED"})
        raise
    except StoreUnreachable:  # Optuna's database is gone for good; MLflow's store may still answer
        try:
            tracker.end_run(parent_id, "FAILED", {Tag.STATE: "STORE UNREACHABLE"})
        except (MlflowException, SQLAlchemyError, OSError):  # then the next make study closes it
            pass
        raise
    if tally.disk_full:
        _stop_on_full_disk(study, storage, tracker, parent_id, tally.disk_full)
    _finish_parent(study, session, publisher, parent_id)
    return _result(study, spec, storage, parent_id, tally, time.perf_counter() - start)


def _run_trials(opened: OpenStudy, session: Session, publisher: Publisher, parent_id: str, device: str, workers: int,
                to_run: int, pack: int) -> Tally:
    """`to_run` trials under the parent run, here or in `workers` processes: what became of them."""
    spec, study = session.spec, opened.study
    if workers > 1:
        session.quality.warm()  # every worker then reads the reference statistics from the cache
        spawn_workers(spec, device, workers, to_run, parent_id, pack)
        tally = Tally()
        for trial in study.get_trials(deepcopy=False):
            if trial.user_attrs.get(Attr.PARENT_RUN) == parent_id:
                tally.add(trial)
        return tally
    progress = Progress(spec, to_run)
    try:
        TrialLoop(opened, session, publisher, parent_id, progress, pack).run(to_run)
    finally:
        progress.close()
    return progress.tally


def _stop_on_full_disk(study: optuna.Study, storage: Storage, tracker: Tracker, parent_id: str, disk_full: str) -> None:
    try:
        tracker.end_run(parent_id, "FAILED", {Tag.STATE: "DISK FULL"})
    except (MlflowException, SQLAlchemyError, OSError):  # the disk is full: the message below is what matters
        pass
    finished = len(study.get_trials(deepcopy=False, states=planning.FINISHED))
    raise UserError(f"the disk under {storage.runs_dir} is full ({disk_full.split(':', 1)[-1].strip()}); free "
                    f"space and run the same command again: the {finished} finished trial(s) are kept")


def _result(study: optuna.Study, spec: StudySpec, storage: Storage, parent_id: str, tally: Tally,
            seconds: float) -> StudyResult:
    """The study's last lines: what ran, the best trial, where to look."""
    ran = tally.counts
    summary = (f"{sum(ran.values())} trial(s) in {seconds:.0f} s: "
               f"{ran[TrialState.COMPLETE]} complete, {ran[TrialState.PRUNED]} pruned, {ran[TrialState.FAIL]} failed")
    if ran[SURPLUS]:
        summary += f", {ran[SURPLUS]} surplus (their points or budget taken by another worker or invocation)"
    best = best_text(study, spec)
    where = f"MLflow experiment {spec.study_name}, parent run {parent_id}\n{next_commands(spec, storage.runs_dir)}"
    if ran[TrialState.COMPLETE] + ran[TrialState.PRUNED] == 0 and ran[TrialState.FAIL]:
        return StudyResult(1, f"{summary}; every trial failed, first {tally.first_failure} (error.txt in its run)")
    return StudyResult(0, f"{summary}; best {best}\n{where}" if best else f"{summary}\n{where}")


def _finish_parent(study: optuna.Study, session: Session, publisher: Publisher, parent_id: str) -> None:
    """The study's counts and best trial on the parent run, the report's tables and plots in it (for
    the MLflow UI), latent-space pictures of each family's best trial in that trial's run; then closed."""
    tracker = publisher.tracker
    counts = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,)))
              for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    tracker.log_metrics(parent_id, {f"study_trials_{k}": v for k, v in counts.items()}, step=0)
    best = best_ranked(study, session.spec.objectives[0].direction == "maximize") \
        if len(session.spec.objectives) == 1 else None
    if len(session.spec.objectives) == 1 and best is not None:
        tracker.log_metrics(parent_id, {f"best_{session.objective_keys[0]}": best.value}, step=0)
        tracker.set_tags(parent_id, {Tag.BEST_TRIAL: best.number, Tag.BEST_RUN: best.user_attrs.get(Attr.RUN_ID, "")})
    if counts["complete"]:
        _report_into_runs(session, tracker, parent_id)
    tracker.end_run(parent_id, "FINISHED", {Tag.STATE: "FINISHED"})


def _report_into_runs(session: Session, tracker: Tracker, parent_id: str) -> None:
    """The report's files into the parent run and the latent pictures into each family's best run.
    A failure here is a warning: the trials are recorded already, and `make report` draws them again."""
    from harness.report import best_per_family, load_studies, write_study_report
    from harness.training import latent

    try:
        with tempfile.TemporaryDirectory() as tmp:
            (record,) = load_studies(session.storage, [session.spec.study_name])
            write_study_report(record, tracker.client, Path(tmp) / "report")
            for path in sorted((Path(tmp) / "report").glob("*")):
                if path.is_file() and path.suffix in (".md", ".csv", ".png", ".html"):
                    tracker.log_artifact(parent_id, path, "report")
            for _, best in best_per_family(record).iterrows():
                model, family = latent.download_model(tracker.client, best["run_id"], Path(tmp) / "runs" / best["run_id"])
                folder = Path(tmp) / "latent" / best["run_id"]
                for path in latent.make_all(model.to(session.device), family, session.data, folder):
                    tracker.log_artifact(best["run_id"], path, "latent")
    except Exception as e:  # noqa: BLE001 - the study's results stand without these extras; said in one line
        warn(f"the study's report artifacts could not be written ({type(e).__name__}: {e}); `make report` retries")


def run_worker(spec: StudySpec, storage: Storage, device: str, parent_id: str, share: int, index: int,
               pack: int = 1) -> int:
    """One worker process of `spawn_workers`: its share of trials, logged under the invocation's parent run."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))  # its share of the CPU
    opened = open_study(spec, storage, heartbeat=True)
    session = open_session(spec, storage, device, f"worker {index}: {share} trial(s)")
    publisher = Publisher(session, Tracker(storage, spec.study_name))
    progress = Progress(spec, share, prefix=f"[worker {index}] ", bar=False)
    try:
        TrialLoop(opened, session, publisher, parent_id, progress, pack).run(share)
    finally:
        progress.close()
    return 0
