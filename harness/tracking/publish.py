"""Publishing to MLflow: a parent run per invocation, a child run per trial, and each trial's outcome.

The trial runner (harness/search/trial.py) returns a TrialOutcome; this module records it: params and tags
when the run starts, each round's metrics, per-step curve points and sample grid and each checkpoint
as they come (the `MlflowSink`), and at the end the files, the final scores and the state. A failure
is recorded as far as the machine allows (a full disk must not hide why the trial failed). It also
reads back the one thing a run needs from an earlier run: the checkpoint a retried trial resumes from.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import optuna
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from optuna.trial import TrialState
from sqlalchemy.exc import SQLAlchemyError

from harness.core import keys
from harness.core.cache import UNREADABLE
from harness.core.errors import redact, warn
from harness.core.keys import Attr, Tag
from harness.family.fast_path import FastPath
from harness.family.registry import get_family
from harness.family.space import on_log_scale
from harness.scoring.pixel_mmd import PIXEL_MMD_PROTOCOL
from harness.search.outcome import FailureKind, State, TrialOutcome
from harness.search.session import Session
from harness.tracking.client import Tracker
from harness.tracking.provenance import provenance_params
from harness.training import pictures as figures
from harness.training.loop import Checkpoint

CHECKPOINT = "checkpoint/last.pt"  # a run's latest checkpoint artifact, replaced every checkpoint_every rounds
CHECKPOINT_KEYS = ("model", "optimizers", "rng", "round", "steps", "stream", "history")


class MlflowSink:
    """A training run's rounds and checkpoints, into its MLflow run as they come."""

    def __init__(self, tracker: Tracker, run_id: str):
        self.tracker, self.run_id = tracker, run_id

    def round(self, steps: int, metrics: Mapping[str, float], grid: Path) -> None:
        self.tracker.log_metrics(self.run_id, metrics, step=steps)  # the x axis: the budget's steps
        self.tracker.log_artifact(self.run_id, grid, "samples")

    def curve(self, points: Sequence[Mapping[str, float]]) -> None:
        """A round's per-step curve points, in one log_batch (MLflow step = the judged step)."""
        self.tracker.log_points(self.run_id, points, keys.STEPS)

    def checkpoint(self, state: Checkpoint) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(CHECKPOINT).name
            torch.save(state, path)
            self.tracker.log_artifact(self.run_id, path, str(Path(CHECKPOINT).parent))


class Publisher:
    """The runs of one session (a study invocation, a worker or a confirm) in the study's experiment."""

    def __init__(self, session: Session, tracker: Tracker):
        self.session, self.tracker = session, tracker

    def start_parent(self, name: str, kind: str, extra: Mapping[str, Any] | None = None) -> str:
        """The parent run of one invocation: the study's settings, the file, the data, the extractor."""
        s, spec = self.session, self.session.spec
        parent_id = self.tracker.start_run(
            f"{name}-{time.strftime('%Y%m%d-%H%M%S')}",
            params={"study": spec.name, "version": spec.version, "dataset": spec.dataset,
                    **{f"dataset.{k}": v for k, v in spec.dataset_options.items()},
                    "families": ",".join(spec.families), "sampler": spec.sampler,
                    **{f"sampler.{k}": v for k, v in spec.sampler_options.items()},
                    "pruner": spec.pruner, **{f"pruner.{k}": v for k, v in spec.pruner_options.items()},
                    "trials": spec.trials, "steps": spec.steps, "rounds": spec.rounds, "seed": spec.seed,
                    "objective": ",".join(o.metric for o in spec.objectives), "device": str(s.device),
                    **s.quality.protocol(), keys.ScoreParam.PANEL: s.panel, **provenance_params(), **(extra or {})},
            tags={"study": spec.study_name, Tag.KIND: kind, "optuna_study": spec.study_name,
                  "optuna_storage": redact(s.storage.storage_url), Tag.STATE: "RUNNING",
                  Tag.OBJECTIVE: ",".join(s.objective_keys)})
        self.tracker.log_artifact(parent_id, spec.path)
        with tempfile.TemporaryDirectory() as tmp:  # what the study trained on, at a glance
            figures.save_png(figures.image_grid(s.data.train[:64].float() / 255), Path(tmp) / "dataset.png")
            self.tracker.log_artifact(parent_id, Path(tmp) / "dataset.png")
        if s.quality.extractor.artifact:  # the domain network: its weights, so its scores can be checked
            self.tracker.log_artifact(parent_id, s.quality.extractor.artifact, "extractor")
        return parent_id

    def start_trial(self, family: str, params: Mapping[str, Any], seed: int, name: str, tags: Mapping[str, Any],
                    parent_id: str, fast: FastPath | None = None) -> str:
        """The trial's child run; `fast`: the fast path it trains on, where not the session's."""
        s = self.session
        run_id = self.tracker.start_run(
            name, params={**params, "family": family, "steps": s.spec.steps, "rounds": s.spec.rounds,
                          "budget_optimizer": get_family(family).budget_optimizer, "seed": seed,
                          "metric.pixel_mmd": PIXEL_MMD_PROTOCOL, **s.quality.protocol(), **provenance_params(),
                          "data.source": json.dumps({"dataset": s.spec.dataset, "options": dict(s.spec.dataset_options)}),
                          **{f"data.{k}": v for k, v in s.data.description.items()},
                          **(fast or s.fast).params(), "speed.data": "device-resident" if s.data.resident else "DataLoader"},
            tags={"study": s.spec.study_name, Tag.FAMILY: family, "dataset": s.spec.dataset, Tag.STATE: "RUNNING",
                  "device": str(s.device), Tag.OBJECTIVE: ",".join(s.objective_keys),
                  **get_family(family).record_tags(), **tags},
            parent_id=parent_id)
        space = s.spec.spaces.get(family, {})
        logs = {keys.log10_key(name): math.log10(value) for name, value in params.items()
                if name in space and on_log_scale(space[name]) and isinstance(value, (int, float)) and value > 0}
        if logs:  # the charts' log axis for a log-scale parameter (MLflow's scatter charts have none)
            self.tracker.log_metrics(run_id, logs, step=0)
        return run_id

    def sink(self, run_id: str) -> MlflowSink:
        return MlflowSink(self.tracker, run_id)

    def resumed(self, run_id: str, checkpoint: Checkpoint) -> None:
        """The curves of the killed run go on in the retry's run: its rounds and per-step points up to
        the checkpoint, the very ones the retry does not train again."""
        for metrics in checkpoint["history"]:
            self.tracker.log_metrics(run_id, metrics, step=int(metrics[keys.STEPS]))
        self.tracker.log_points(run_id, checkpoint.get("curve", []), keys.STEPS)
        self.tracker.set_tags(run_id, {Tag.RESUMED_FROM: resumed_step(checkpoint)})

    def checkpoint_of(self, run_id: str | None, label: str) -> Checkpoint | None:
        return read_checkpoint(self.tracker.client, run_id, label)

    def publish(self, run_id: str, outcome: TrialOutcome) -> None:
        """The outcome's files, final scores and state, into its run."""
        t = self.tracker
        if outcome.state == State.FAIL:
            self._fail(run_id, outcome)
            return
        for path in outcome.artifacts:
            t.log_artifact(run_id, path)
        if outcome.state == State.PRUNED:
            t.end_run(run_id, "FINISHED", {Tag.STATE: "PRUNED"})
            return
        t.log_metrics(run_id, outcome.final | {keys.TRAIN_SECONDS: outcome.seconds}, step=self.session.spec.steps)
        flagged = {Tag.FLAGS: outcome.flags.text, Tag.FLAG_EVIDENCE: outcome.flags.evidence,
                   Tag.EXCLUDED: str(outcome.flags.excluded).lower()} if outcome.flags else {}
        t.end_run(run_id, "FINISHED", {Tag.STATE: "COMPLETE", Tag.REFERENCE_STATS: outcome.reference_stats, **flagged})

    def _fail(self, run_id: str, outcome: TrialOutcome) -> None:
        """Record a failure as far as possible: when the disk is full, recording fails too, and must not
        hide the reason the trial failed."""
        failure, t = outcome.failure, self.tracker
        assert failure is not None
        steps = [lambda path=path: t.log_artifact(run_id, path) for path in outcome.artifacts]
        if failure.kind == FailureKind.DIVERGED:
            steps.append(lambda: t.set_tags(run_id, {Tag.LAST_GOOD_STEP: failure.last_good_step}))
        if failure.details:
            steps.append(lambda: t.log_text(run_id, failure.details, "error.txt"))
        status = "KILLED" if failure.kind == FailureKind.INTERRUPTED else "FAILED"
        steps.append(lambda: t.end_run(run_id, status, {Tag.STATE: "FAIL", Tag.FAILURE: failure.reason[:5000]}))
        for step in steps:
            try:
                step()
            except (MlflowException, SQLAlchemyError, OSError):  # the original failure is what the user needs
                continue


def resumed_step(checkpoint: Checkpoint) -> int:
    """The judged steps a checkpoint was taken at."""
    history = checkpoint["history"]
    return int(history[-1][keys.STEPS]) if history else 0


def read_checkpoint(client: MlflowClient, run_id: str | None, label: str) -> Checkpoint | None:
    """The last checkpoint a run left, or None, saying in one line why there is none to go on from."""
    if not run_id:
        return None
    if not client.list_artifacts(run_id, str(Path(CHECKPOINT).parent)):
        print(f"{label} left no checkpoint (it stopped before its first); restarting it from step 0", flush=True)
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, CHECKPOINT, tmp)
            state = torch.load(path, map_location="cpu", weights_only=True)
            missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
            if missing:
                raise KeyError(f"no {', '.join(missing)}")
            return state
        except (MlflowException, *UNREADABLE) as e:
            warn(f"checkpoint of {label} is unreadable ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                 "restarting it from step 0")
            return None


def close_stale_runs(tracker: Tracker, study: optuna.Study, heartbeat_seconds: int) -> None:
    """Trials whose worker died (failed by Optuna's stale-trial check) get their MLflow runs, and parent
    runs with nothing left running, closed as KILLED instead of RUNNING forever."""
    trials = study.get_trials(deepcopy=False)
    orphans = [t for t in trials if t.state == TrialState.FAIL and Attr.RUN_ID in t.user_attrs]
    alive = {t.user_attrs.get(Attr.PARENT_RUN) for t in trials if t.state == TrialState.RUNNING}
    for trial in orphans:
        run = tracker.client.get_run(trial.user_attrs[Attr.RUN_ID])
        if run.info.status == "RUNNING":
            tracker.end_run(run.info.run_id, "KILLED", {Tag.STATE: "FAIL", Tag.FAILURE:
                            f"its worker stopped: its process is gone, or no heartbeat for {3 * heartbeat_seconds} s"})
        parent_id = trial.user_attrs.get(Attr.PARENT_RUN)
        if parent_id and parent_id not in alive and tracker.client.get_run(parent_id).info.status == "RUNNING":
            tracker.end_run(parent_id, "KILLED", {Tag.STATE: "INTERRUPTED"})
