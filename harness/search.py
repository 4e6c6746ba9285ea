"""Running a study: an Optuna study in the storage, each trial trained and tracked in MLflow.

`trials` in a study file is the study's budget of finished (complete or pruned) trials, not a
count per invocation (per family, when a study has several: each family gets the same budget, its
trials enqueued in turn); running a study again continues it under a new parent run, with the trial
numbers going on, until the budget is met. Grid studies plan their own points: every grid point
without a finished trial is enqueued, so an interrupted or failed point is run again, and a grid
that is complete says so and runs nothing. A trial whose loss or weights become NaN or infinite
ends as FAIL (the sampler learns nothing from it), with the reason in its user attributes and run
tags; its per-epoch sample grids up to the last good epoch stay in its run.
"""

from __future__ import annotations

import itertools
import json
import time
import warnings
from dataclasses import dataclass
from typing import Any, Mapping

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from harness.errors import UserError

# Optuna marks the heartbeat retry API experimental; it is what we rely on, knowingly.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
from harness.runs import ConfigRunner, Session, finish_study, open_session
from harness.settings import Settings, redact, resolve_device
from harness.space import suggest
from harness.studyfile import StudySpec

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
IDENTITY_ATTR = "genbench_identity"
EXTRACTOR_ATTR = "genbench_extractor"
N_GRID_IMAGES = 32  # validation images in every reconstruction grid; samples use as many z


@dataclass
class Outcome:
    exit_code: int
    message: str


def open_storage(url: str, heartbeat: int = 0) -> optuna.storages.RDBStorage:
    """The Optuna storage, its tables created once here, before any worker touches it. With a heartbeat,
    a running trial beats every `heartbeat` seconds; one silent for 3 beats (its worker was killed) is
    failed by the next worker to start a trial, and re-queued once with the same parameters."""
    sqlite = url.startswith("sqlite")
    kwargs: dict[str, Any] = {"engine_kwargs": {"connect_args": {"timeout": 60}} if sqlite else {}}
    if heartbeat:
        kwargs.update(heartbeat_interval=heartbeat, grace_period=3 * heartbeat,
                      heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))
    try:
        storage = optuna.storages.RDBStorage(url, **kwargs)
        if sqlite:  # readers and one writer at a time without blocking each other; kept by the file
            with storage.engine.connect() as connection:
                connection.exec_driver_sql("PRAGMA journal_mode=WAL")
        return storage
    except Exception as e:  # sqlalchemy and driver errors have no common base worth naming
        raise UserError(f"STORAGE={redact(url)} cannot be opened: {str(e).splitlines()[0]}") from None


def recover_stale_trials(study: optuna.Study, settings: Settings) -> None:
    """Trials whose worker died (no heartbeat for 3 beats) become FAIL and are re-queued once; their
    MLflow runs, and parent runs with nothing left running, are closed as KILLED instead of RUNNING forever."""
    from harness.tracking import Tracker

    optuna.storages.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    orphans = [t for t in trials if t.state == TrialState.FAIL and "mlflow_run_id" in t.user_attrs]
    if not orphans:
        return
    tracker = Tracker(settings, None)
    alive = {t.user_attrs.get("parent_run_id") for t in trials if t.state == TrialState.RUNNING}
    for trial in orphans:
        run = tracker.client.get_run(trial.user_attrs["mlflow_run_id"])
        if run.info.status == "RUNNING":
            tracker.end_run(run.info.run_id, "KILLED", {"state": "FAIL", "failure_reason":
                            f"its worker stopped: no heartbeat for {3 * settings.heartbeat_seconds} s"})
        parent_id = trial.user_attrs.get("parent_run_id")
        if parent_id and parent_id not in alive and tracker.client.get_run(parent_id).info.status == "RUNNING":
            tracker.end_run(parent_id, "KILLED", {"state": "INTERRUPTED"})


def stored_trials(storage: optuna.storages.BaseStorage, study_name: str) -> int:
    try:
        return storage.get_n_trials(storage.get_study_id_from_name(study_name))
    except KeyError:  # a new study
        return 0


def check_identity(study: optuna.Study, attr: str, mine: dict[str, Any], spec: StudySpec, storage_url: str) -> None:
    """Refuse to mix trials of a changed study definition (or scored by another extractor) into an
    existing Optuna study."""
    stored = study.user_attrs.get(attr)
    if stored is None:
        study.set_user_attr(attr, mine)
        return
    if stored != mine:
        changed = ", ".join(f"{k} {_short(stored.get(k))} -> {_short(mine[k])}" for k in mine if stored.get(k) != mine[k])
        what = "scored with another extractor" if attr == EXTRACTOR_ATTR else "run with another definition"
        raise UserError(f"study {spec.study_name} in {redact(storage_url)} was {what} "
                        f"({changed}); bump version in {spec.path.name} to start a new study, or use another RUNS_DIR")


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def plan_trials(study: optuna.Study, spec: StudySpec) -> tuple[int, list[dict[str, Any]], str]:
    """(trials to run now, grid points to enqueue, why nothing runs when it is 0)."""
    done = study.get_trials(deepcopy=False, states=FINISHED)
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))  # another worker's: not ours to run
    left = spec.trials - len(done) - len(running)
    if len(spec.families) > 1:
        return _plan_per_family(study, spec, done + running)
    if spec.grid is None:
        why = (f"{spec.study_name} already has {len(done)} finished trials, its budget (trials = {spec.trials}); "
               "raise TRIALS= to run more")
        return max(0, left), [], why
    names = list(spec.grid)
    points = [dict(zip(names, values)) for values in itertools.product(*spec.grid.values())]
    missing = [p for p in points if not any(_matches(p, t.params) for t in done)]
    if not missing:
        return 0, [], f"grid complete: all {len(points)} points of {spec.study_name} are done"
    missing = [p for p in missing if not any(_matches(p, t.params) for t in running)]
    to_run = max(0, min(len(missing), left))
    waiting = waiting_params(study)
    enqueue = [p for p in missing[:to_run] if not any(_matches(p, w) for w in waiting)]
    why = (f"{spec.study_name} has {len(done)} finished trials, its budget (trials = {spec.trials}); "
           f"{len(missing)} of {len(points)} grid points remain: raise TRIALS= to run them")
    return to_run, enqueue, why


def _plan_per_family(study: optuna.Study, spec: StudySpec, done: list[FrozenTrial]) -> tuple[int, list[dict[str, Any]], str]:
    """The same budget for every family: each family's missing trials, enqueued in turn."""
    waiting = [w.get("family") for w in waiting_params(study)]
    left = {f: max(0, spec.trials - sum(t.params.get("family") == f for t in done)) for f in spec.families}
    to_queue = {f: max(0, n - waiting.count(f)) for f, n in left.items()}
    enqueue = []
    while any(to_queue.values()):
        for family in spec.families:
            if to_queue[family]:
                enqueue.append({"family": family})
                to_queue[family] -= 1
    why = (f"{spec.study_name} already has {spec.trials} finished trials for each of its {len(spec.families)} "
           "families, its budget; raise TRIALS= to run more")
    return sum(left.values()), enqueue, why


def waiting_params(study: optuna.Study) -> list[dict[str, Any]]:
    """The parameters of queued trials: enqueued ones hold them as fixed_params, the heartbeat's retries as params."""
    return [t.system_attrs.get("fixed_params") or t.params for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))]


def _matches(point: Mapping[str, Any], params: Mapping[str, Any]) -> bool:
    return all(name in params and params[name] == value for name, value in point.items())


class TrialRunner:
    """The Optuna objective: sample a configuration, then train and score it into a child run."""

    def __init__(self, session: Session, parent_id: str):
        self.session, self.parent_id, self.runner = session, parent_id, ConfigRunner(session)
        self.keys = session.objective_keys
        first = session.spec.objectives[0].metric
        self.pruned_on = session.spec.scores.resolve("val_fd", session.quality.extractor) if first == "fd" else self.keys[0]

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        trial.set_user_attr("parent_run_id", self.parent_id)
        try:
            return self._run(trial)
        except (optuna.TrialPruned, KeyboardInterrupt):
            raise
        except Exception as e:
            if "failure_reason" not in trial.user_attrs:  # failed before its run could record it
                trial.set_user_attr("failure_reason", f"{type(e).__name__}: {e}")
            raise

    def _run(self, trial: optuna.Trial) -> float | list[float]:
        spec = self.session.spec
        surplus = self._surplus(trial)
        if surplus:  # another worker (another machine) took the last of the budget: nothing left for this one
            trial.set_user_attr("failure_reason", surplus)
            trial.study.stop()
            raise RuntimeError(surplus)
        several = len(spec.families) > 1
        family = trial.suggest_categorical("family", list(spec.families)) if several else spec.families[0]
        prefix = f"{family}." if several else ""  # keeps each family's distributions apart in Optuna
        params = suggest(trial, spec.spaces[family], prefix)
        original = self._retry_of(trial)
        tags = {"trial_number": trial.number} | ({"retry_of": original.number} if original else {})
        run_id = self.runner.start(family, params, spec.seed, f"trial-{trial.number}", tags, self.parent_id)
        trial.set_user_attr("mlflow_run_id", run_id)
        trial.set_user_attr("family", family)
        resume = self.runner.checkpoint_of(original.user_attrs.get("mlflow_run_id")) if original else None
        if resume is not None:
            trial.set_user_attr("resumed_from_epoch", int(resume["epoch"]))
            for epoch, metrics in enumerate(resume["history"], start=1):  # the pruner sees the whole curve
                self._report(trial, epoch, metrics, decide=False)
        computed_before = self.session.quality.computed
        scores = self.runner.run(run_id, family, params, spec.seed, f"trial {trial.number}",
                                 report=lambda epoch, metrics: self._report(trial, epoch, metrics),
                                 on_failure=lambda reason: trial.set_user_attr("failure_reason", reason),
                                 resume=resume)
        trial.set_user_attr("reference_stats", "computed" if self.session.quality.computed > computed_before else "cached")
        values = [scores[key] for key in self.keys]
        return values[0] if len(values) == 1 else values

    def _report(self, trial: optuna.Trial, epoch: int, metrics: dict[str, float], decide: bool = True) -> bool:
        """The per-epoch score to the pruner; True asks the loop to stop (pruned)."""
        if len(self.session.spec.objectives) > 1 or self.pruned_on not in metrics:
            return False  # Optuna cannot prune multi-objective trials; final-only scores have nothing per epoch
        trial.report(metrics[self.pruned_on], epoch)
        return decide and trial.should_prune()

    def _surplus(self, trial: optuna.Trial) -> str:
        """Why this trial should not run, when workers on several machines planned the same budget:
        a grid study runs queued points only; any other study stops at its budget of finished plus
        running trials (trial numbers are handed out in order, so the later one sees the earlier)."""
        spec = self.session.spec
        trials = trial.study.get_trials(deepcopy=False)
        me = next(t for t in trials if t.number == trial.number)
        queued = "fixed_params" in me.system_attrs or "failed_trial" in me.system_attrs or me.params
        if spec.grid is not None:
            return "" if queued else "surplus: every grid point is done or running elsewhere"
        taken = [t for t in trials if t.state in FINISHED or (t.state == TrialState.RUNNING and t.number <= trial.number)]
        budget = spec.trials * len(spec.families)
        return "" if queued or len(taken) <= budget else f"surplus: the budget of {budget} trials is met by other workers"

    @staticmethod
    def _retry_of(trial: optuna.Trial) -> FrozenTrial | None:
        """The trial this one re-runs, when its worker died (Optuna's stale-trial retry)."""
        frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
        number = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
        return None if number is None else next(t for t in trial.study.get_trials(deepcopy=False) if t.number == number)


class Progress:
    """Study progress bar (trials done / to run, best so far) and one printed line per trial."""

    def __init__(self, spec: StudySpec, total: int, prefix: str = "", bar: bool = True):
        self.spec, self.prefix = spec, prefix
        self.bar = tqdm(total=total, desc=spec.study_name, unit="trial", dynamic_ncols=True,
                        disable=None if bar else True)
        self.counts = {state: 0 for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
        self.first_failure = ""
        self.disk_full = ""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.counts[trial.state] = self.counts.get(trial.state, 0) + 1
        self.bar.update(1)
        best = _best_text(study, self.spec)
        if best:
            self.bar.set_postfix_str(f"best {best}")
        params = " ".join(f"{k}={_fmt(v)}" for k, v in trial.params.items())
        if trial.state == TrialState.FAIL:
            reason = trial.user_attrs.get("failure_reason", "failed")
            self.first_failure = self.first_failure or f"trial {trial.number}: {reason}"
            detail = reason
            if is_disk_full(reason):  # every next trial would fail the same way
                self.disk_full = reason
                study.stop()
        elif trial.values:
            detail = " ".join(f"{o.metric}={_fmt(v)}" for o, v in zip(self.spec.objectives, trial.values))
        else:  # pruned: the last reported value
            step = trial.last_step
            detail = f"{self.spec.objectives[0].metric}={_fmt(trial.intermediate_values[step])} at epoch {step}" \
                if step is not None else ""
        seconds = trial.duration.total_seconds() if trial.duration else 0.0
        self.bar.write(f"{self.prefix}trial {trial.number:>3} {trial.state.name:<8} {detail}  {params}  ({seconds:.1f} s)")

    def close(self) -> None:
        self.bar.close()


def is_disk_full(reason: str) -> bool:
    return "No space left on device" in reason or "database or disk is full" in reason


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _best_text(study: optuna.Study, spec: StudySpec) -> str:
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return ""
    if len(spec.objectives) > 1:
        return f"{len(study.best_trials)} trial(s) on the Pareto front"
    best = study.best_trial
    return f"{spec.objectives[0].metric}={_fmt(best.value)} (trial {best.number})"


def run_study(spec: StudySpec, settings: Settings, device: str = "auto", workers: int = 1) -> Outcome:
    settings.prepare()
    resolve_device(device)  # a device that is not there is refused before anything is written
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # we print one line per trial instead
    storage = open_storage(settings.storage_url, settings.heartbeat_seconds)
    study = optuna.create_study(
        study_name=spec.study_name, storage=storage, sampler=spec.make_sampler(stored_trials(storage, spec.study_name)),
        pruner=spec.make_pruner(), directions=[o.direction for o in spec.objectives], load_if_exists=True)
    check_identity(study, IDENTITY_ATTR, json.loads(json.dumps(spec.identity())), spec, settings.storage_url)
    recover_stale_trials(study, settings)
    to_run, enqueue, why = plan_trials(study, spec)
    if to_run == 0:
        best = _best_text(study, spec)
        return Outcome(0, why + (f"; best {best}" if best else ""))

    workers = min(workers, to_run)
    session = open_session(spec, settings, device, f"study {spec.study_name}: {to_run} trial(s) to run, "
                                                   f"{spec.epochs} epoch(s) each" + (f", {workers} workers" if workers > 1 else ""))
    extractor = session.quality.extractor
    check_identity(study, EXTRACTOR_ATTR, json.loads(json.dumps(extractor.identity)), spec, settings.storage_url)
    for point in enqueue:
        study.enqueue_trial(point)
    tracker = session.tracker
    parent_id = session.start_parent(spec.name, "study")
    start = time.perf_counter()
    if workers > 1:
        session.quality.warm()  # every worker then reads the reference statistics from the cache
        try:
            run_workers(spec, device, workers, to_run, parent_id)
        except KeyboardInterrupt:
            tracker.end_run(parent_id, "KILLED", {"state": "INTERRUPTED"})
            raise
        ours = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("parent_run_id") == parent_id]
        ran = {state: sum(t.state == state for t in ours) for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
        reasons = [t.user_attrs.get("failure_reason", "failed") for t in ours if t.state == TrialState.FAIL]
        first_failure = next((f"trial {t.number}: {t.user_attrs.get('failure_reason', 'failed')}" for t in ours
                              if t.state == TrialState.FAIL), "")
        disk_full = next((r for r in reasons if is_disk_full(r)), "")
    else:
        progress = Progress(spec, to_run)
        try:
            study.optimize(TrialRunner(session, parent_id), n_trials=to_run, catch=(Exception,),
                           callbacks=[progress], gc_after_trial=False)
        except KeyboardInterrupt:
            progress.close()
            tracker.end_run(parent_id, "KILLED", {"state": "INTERRUPTED"})
            raise
        progress.close()
        ran, first_failure, disk_full = progress.counts, progress.first_failure, progress.disk_full
    if disk_full:
        try:
            tracker.end_run(parent_id, "FAILED", {"state": "DISK FULL"})
        except Exception:  # noqa: BLE001 - the disk is full: the message below is what matters
            pass
        finished = len(study.get_trials(deepcopy=False, states=FINISHED))
        raise UserError(f"the disk under {settings.runs_dir} is full ({disk_full.split(':', 1)[-1].strip()}); free "
                        f"space and run the same command again: the {finished} finished trial(s) are kept")

    counts = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,)))
              for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    tracker.log_metrics(parent_id, {f"study_trials_{k}": v for k, v in counts.items()}, step=0)
    if len(spec.objectives) == 1 and counts["complete"]:
        best = study.best_trial
        tracker.log_metrics(parent_id, {f"best_{session.objective_keys[0]}": best.value}, step=0)
        tracker.set_tags(parent_id, {"best_trial": best.number, "best_run_id": best.user_attrs.get("mlflow_run_id", "")})
    if counts["complete"]:
        finish_study(session, parent_id)
    tracker.end_run(parent_id, "FINISHED", {"state": "FINISHED"})

    summary = (f"{sum(ran.values())} trial(s) in {time.perf_counter() - start:.0f} s: "
               f"{ran[TrialState.COMPLETE]} complete, {ran[TrialState.PRUNED]} pruned, {ran[TrialState.FAIL]} failed")
    best = _best_text(study, spec)
    where = f"MLflow experiment {spec.study_name}, parent run {parent_id}; open it with `make ui`"
    if ran[TrialState.COMPLETE] + ran[TrialState.PRUNED] == 0:
        return Outcome(1, f"{summary}; every trial failed, first {first_failure} (error.txt in its run)")
    return Outcome(0, f"{summary}; best {best}\n{where}" if best else f"{summary}\n{where}")


def run_workers(spec: StudySpec, device: str, workers: int, to_run: int, parent_id: str) -> None:
    """N worker processes on one study: each runs its share of the trials (so the study's total is
    exact), on its own GPU when there are GPUs, else with its share of the CPU threads."""
    import os
    import subprocess
    import sys

    import torch

    gpus = torch.cuda.device_count() if device in ("auto", "cuda") else 0
    threads = max(1, (os.cpu_count() or 1) // workers)
    shares = [to_run // workers + (1 if i < to_run % workers else 0) for i in range(workers)]
    processes = []
    for index, share in enumerate(shares):
        env = {**os.environ, "GENBENCH_WORKER": str(index), "OMP_NUM_THREADS": str(threads)}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(index % gpus)
        command = [sys.executable, "-m", "harness", "worker", str(spec.path), "--parent-run", parent_id,
                   "--share", str(share), "--index", str(index), "--device", "cuda" if gpus else device,
                   "--trials", str(spec.trials), "--epochs", str(spec.epochs)]
        if spec.variant:
            command += ["--dataset", spec.dataset] + (["--data", spec.dataset_options["path"]]
                                                       if spec.dataset_options.get("path") else [])
        processes.append(subprocess.Popen(command, env=env))
    try:
        for process in processes:
            process.wait()
    except KeyboardInterrupt:  # the workers got the same Ctrl-C: let them close their runs
        for process in processes:
            process.wait()
        raise


def run_worker(spec: StudySpec, settings: Settings, device: str, parent_id: str, share: int, index: int) -> int:
    """One worker of `run_workers`: its share of trials, logged under the invocation's parent run."""
    import os

    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = open_storage(settings.storage_url, settings.heartbeat_seconds)
    sampler = spec.make_sampler(stored_trials(storage, spec.study_name) + 7919 * (index + 1))  # workers differ
    study = optuna.load_study(study_name=spec.study_name, storage=storage, sampler=sampler, pruner=spec.make_pruner())
    session = open_session(spec, settings, device, f"worker {index}: {share} trial(s)")
    progress = Progress(spec, share, prefix=f"[worker {index}] ", bar=False)
    study.optimize(TrialRunner(session, parent_id), n_trials=share, catch=(Exception,), callbacks=[progress],
                   gc_after_trial=False)
    return 0
