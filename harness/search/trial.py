"""The trial runner: one configuration trained with one seed and scored, returned as a TrialOutcome.

It knows nothing of Optuna or MLflow. While it trains, each round's metrics and sample grid, and
each checkpoint, go to a `RunSink` (the publisher writes them to the trial's MLflow run as they
come, so a killed trial can resume and the UI shows live curves); a `stop_after` callback (the
pruner) may end training after any round. At the end it writes the run's files into a scratch
folder (samples, reconstructions, loss curves, weights) and returns them with the scores. Every
failure comes back as a FAIL outcome naming its reason: a divergence keeps its good rounds, an
exception its traceback, a Ctrl-C says so (the caller stops the study after recording it).
"""

from __future__ import annotations

import json
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import torch

from harness.core import keys
from harness.core.errors import defer_interrupts
from harness.core.progress import LongTask
from harness.data.datasets import from_model_range, to_model_range
from harness.family.contract import Family
from harness.family.fast_path import FastPath
from harness.family.registry import get_family
from harness.scoring.evaluation import reconstruction_scores
from harness.scoring.flags import excludes, judge
from harness.search.outcome import Failure, FailureKind, State, TrialOutcome
from harness.search.session import Session
from harness.training import pictures as figures
from harness.training.loop import (
    Checkpoint,
    Diverged,
    SampleScorer,
    TrainConfig,
    TrainHooks,
    TrainResult,
    evaluate,
    grid_samples,
    save_model,
    train,
)
from harness.training.packs import train_pack

N_GRID_IMAGES = 32  # validation images in every reconstruction grid; samples use as many z
StopAfter = Callable[[int, dict[str, float]], bool]  # (round from 1, metrics) -> stop now (pruned)


class RunSink(Protocol):
    """Where a trial's progress goes while it trains."""

    def round(self, steps: int, metrics: Mapping[str, float], grid: Path) -> None: ...

    def curve(self, points: Sequence[Mapping[str, float]]) -> None: ...  # a round's per-step curve points

    def checkpoint(self, state: Checkpoint) -> None: ...


@dataclass(frozen=True)
class TrialJob:
    family: str
    params: Mapping[str, Any]
    seed: int
    label: str  # "trial 3", "trial 3 seed 2": the progress bar's and the figures' titles
    resume: Checkpoint | None = None  # go on from here (a retried trial whose worker died)
    fast: FastPath | None = None  # its fast path, where not the session's (a trial that may be packed)


class TrialRunner:
    def __init__(self, session: Session):
        self.session = session
        data = session.data
        self.references = data.val[:N_GRID_IMAGES].to(data.device)  # uint8: the same images for every run
        self.scorers = [SampleScorer(data), session.quality.round_scores]

    def run(self, job: TrialJob, sink: RunSink, scratch: Path, stop_after: StopAfter | None = None) -> TrialOutcome:
        """Train (or go on from job.resume) and score; files are written under `scratch`."""
        family = get_family(job.family)
        hooks = self._hooks(family, sink, scratch, stop_after)
        return self._outcome(job, scratch, lambda: train(family, job.params, self.session.data, self._config(job),
                                                         hooks, job.resume))

    def run_pack(self, jobs: Sequence[TrialJob], sinks: Sequence[RunSink], scratches: Sequence[Path],
                 stops: Sequence[StopAfter | None]) -> list[TrialOutcome]:
        """Train fresh trials of one family together as a fused pack (harness/training/packs.py), then score
        each as `run` does; each gets its own outcome (a member that diverged fails alone)."""
        family = get_family(jobs[0].family)
        members = [(job.params, self._config(job), self._hooks(family, sink, scratch, stop))
                   for job, sink, scratch, stop in zip(jobs, sinks, scratches, stops)]
        try:
            results: list[TrainResult | BaseException] = list(train_pack(family, members, self.session.data))
        except KeyboardInterrupt as e:
            defer_interrupts()
            results = [e] * len(jobs)
        except Exception as e:  # noqa: BLE001 - the pack's error fails each of its trials, with its traceback
            results = [e] * len(jobs)
        return [self._outcome(job, scratch, lambda result=result: _returned(result))
                for job, scratch, result in zip(jobs, scratches, results)]

    def _config(self, job: TrialJob) -> TrainConfig:
        s = self.session
        return TrainConfig(steps=s.spec.steps, rounds=s.spec.rounds, seed=job.seed, checkpoint_every=s.spec.checkpoint_every,
                           objective=s.objective_keys[0], minimize=s.spec.objectives[0].direction == "minimize",
                           fast=job.fast or s.fast, label=job.label, phases=s.phases)

    def _hooks(self, family: Family, sink: RunSink, scratch: Path, stop_after: StopAfter | None) -> TrainHooks:
        return TrainHooks(on_round=lambda round_, metrics, model: self._round(family, round_, metrics, model, sink,
                                                                              scratch, stop_after),
                          save_checkpoint=sink.checkpoint, scorers=self.scorers, on_curve=sink.curve)

    def _outcome(self, job: TrialJob, scratch: Path, trained: Callable[[], TrainResult]) -> TrialOutcome:
        """The outcome of a trial whose training `trained` returns (or raises): its files and scores."""
        s, family = self.session, get_family(job.family)
        computed_before = s.quality.computed
        outcome = TrialOutcome(State.FAIL, job.family, dict(job.params), job.seed)
        try:
            result = trained()
            outcome.history, outcome.seconds, outcome.stopped_at = result.history, result.seconds, result.stopped_at
            with s.phases.phase("run artifacts"), LongTask(f"{job.label}: its pictures and model files", unit="file"):
                outcome.artifacts = self._artifacts(family, job, result, scratch)
            if result.stopped_at is not None:
                outcome.state = State.PRUNED
                return outcome
            with s.phases.phase("final scores"), LongTask(f"{job.label}: final scores on {s.quality.final_samples} samples",
                                                          unit="score"):
                outcome.final = self._final_scores(family, job.params, result.model, scratch)
                outcome.artifacts.append(scratch / "scores.json")
            outcome.flags = judge(outcome.final, s.quality.extractor.name, s.learned_bar,
                                  excludes(s.objective_keys[0], s.spec.scores.flags))
            outcome.state = State.COMPLETE
        except KeyboardInterrupt:
            defer_interrupts()  # the run is closed as KILLED next, whatever a second Ctrl-C says
            outcome.failure = Failure(FailureKind.INTERRUPTED, "interrupted (Ctrl-C)")
        except Diverged as e:
            outcome.history = e.history
            last_good = int(e.history[-1][keys.STEPS]) if e.history else 0
            if e.history:
                path = scratch / keys.Artifact.LOSS_CURVES
                figures.loss_curves(e.history, path, f"{s.spec.study_name} {job.label} ({job.family}), "
                                                     f"diverged after step {last_good}")
                outcome.artifacts = [path]
            outcome.failure = Failure(FailureKind.DIVERGED, f"Diverged: {e}", last_good_step=last_good)
        except Exception as e:  # noqa: BLE001 - a trial's error fails that trial, recorded with its traceback
            outcome.failure = Failure(FailureKind.ERROR, f"{type(e).__name__}: {e}", "".join(
                traceback.format_exception(e)))
        finally:
            outcome.reference_stats = "computed" if s.quality.computed > computed_before else "cached"
        return outcome

    def _round(self, family: Family, round_: int, metrics: dict[str, float], model: torch.nn.Module, sink: RunSink,
               scratch: Path, stop_after: StopAfter | None) -> bool:
        """The round and its sample grid to the sink (the same z every round, so rounds compare); then
        whether to stop."""
        s = self.session
        steps = int(metrics[keys.STEPS])
        with s.phases.phase("tracking"):
            path = scratch / "samples" / f"step_{steps:07d}.png"
            path.parent.mkdir(exist_ok=True)
            figures.save_png(figures.image_grid(grid_samples(family, model, N_GRID_IMAGES, s.data.device)), path)
            sink.round(steps, metrics, path)
        with s.phases.phase("optuna"):
            return stop_after(round_, metrics) if stop_after is not None else False

    def _artifacts(self, family: Family, job: TrialJob, result: TrainResult, scratch: Path) -> list[Path]:
        """Reconstruction grid (autoencoders), samples from a fixed z ~ N(0, I), loss curves, weights."""
        s = self.session
        model, value_range = result.model.eval(), family.output_range
        written = []
        with torch.no_grad():
            if "reconstructions" in family.plots:
                x = to_model_range(self.references, value_range)
                figures.save_png(figures.reconstruction_grid(from_model_range(x, value_range),
                                                             from_model_range(model.reconstruct(x), value_range)),
                                 scratch / keys.Artifact.RECONSTRUCTIONS)
                written.append(scratch / keys.Artifact.RECONSTRUCTIONS)
            figures.save_png(figures.image_grid(grid_samples(family, model, N_GRID_IMAGES, s.data.device)),
                             scratch / keys.Artifact.SAMPLES)
        figures.loss_curves(result.history, scratch / keys.Artifact.LOSS_CURVES, f"{s.spec.study_name} {job.label} ({family.name})",
                            result.curve)
        save_model(model, family.name, job.params, s.data.channels, s.data.image_size, scratch)
        logged = (keys.Artifact.SAMPLES, keys.Artifact.LOSS_CURVES, keys.Artifact.MODEL, keys.Artifact.MODEL_CONFIG)
        return written + [scratch / name for name in logged]

    def _final_scores(self, family: Family, params: Mapping[str, Any], model: torch.nn.Module,
                      scratch: Path) -> dict[str, float]:
        """Held-out losses on the test split, sample quality, and the autoencoders' reconstruction scores;
        the sample-quality scores with FD∞'s fit points also go to scores.json."""
        s = self.session
        final = {keys.split_key("test", k): v for k, v in evaluate(family, model, s.data, "test", params).items()}
        scored = s.quality.final_scores(family, model)
        final.update(scored.scores)
        record = scored.record()
        if s.cross_check is not None:  # Inception's fid, kid, ... beside the study's own scores
            checked = s.cross_check.final_scores(family, model)
            final.update(checked.scores)
            record["cross_check"] = checked.record()
        (scratch / "scores.json").write_text(json.dumps(record, indent=1))
        if family.autoencoder and family.output_range == (0.0, 1.0):  # BCE and the ELBO need [0, 1] outputs
            final.update(reconstruction_scores(family, model, s.data, "test", int(params["batch_size"])))
        return final


def _returned(result: TrainResult | BaseException) -> TrainResult:
    """A pack member's training result, or what ended it raised again (for `_outcome` to record)."""
    if isinstance(result, BaseException):
        raise result
    return result
