"""One configuration trained into one MLflow run, and the session every run of a study shares.

`Session` is what a study invocation (or a `confirm`) loads once: the data on its device, the
sample-quality scorer with its extractor, the tracker. `ConfigRunner.run` trains one configuration
with one seed and logs everything: params and tags, per-epoch metrics and sample grids, the final
scores, the artifacts, and on failure the reason. The Optuna objective (harness/search.py) and the
seed re-runs (harness/confirm.py) both use it.
"""

from __future__ import annotations

import json
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import optuna
import torch

from harness.data import ImageSplits, from_model_range, load_dataset, to_model_range
from harness.errors import UserError
from harness.evaluation import SampleQuality, reconstruction_scores
from harness.extractors import ExtractorContext, resolve_extractor
from harness.figures import image_grid, loss_curves, reconstruction_grid, save_png
from harness.metrics import PIXEL_MMD_PROTOCOL
from harness.phases import phase
from harness.registry import Family, get_family
from harness.speed import FastPath
from harness.settings import Settings, redact, resolve_device
from harness.studyfile import StudySpec
from harness.tracking import Tracker
from harness.training import (Checkpoint, Diverged, SampleScorer, TrainResult, evaluate, fixed_samples, save_model,
                              train)

N_GRID_IMAGES = 32  # validation images in every reconstruction grid; samples use as many z
CHECKPOINT = "checkpoint/last.pt"  # a run's latest checkpoint artifact, replaced every checkpoint_every epochs

EpochReport = Callable[[int, dict[str, float]], bool]  # (epoch, metrics) -> stop now (pruned)


@dataclass
class Session:
    spec: StudySpec
    settings: Settings
    device: torch.device
    data: ImageSplits
    quality: SampleQuality
    tracker: Tracker
    fast: FastPath  # the study's [speed] switches as they apply on this device

    @property
    def objective_keys(self) -> list[str]:
        """The study's objectives as they are logged (fd -> fd_domain or fid)."""
        return [self.spec.scores.resolve(o.metric, self.quality.extractor) for o in self.spec.objectives]

    def start_parent(self, name: str, kind: str, extra: Mapping[str, Any] | None = None) -> str:
        """The parent run of one invocation: the study's settings, the file, the data, the extractor."""
        spec = self.spec
        parent_id = self.tracker.start_run(
            f"{name}-{time.strftime('%Y%m%d-%H%M%S')}",
            params={"study": spec.name, "version": spec.version, "dataset": spec.dataset,
                    **{f"dataset.{k}": v for k, v in spec.dataset_options.items()},
                    "families": ",".join(spec.families), "sampler": spec.sampler,
                    **{f"sampler.{k}": v for k, v in spec.sampler_options.items()},
                    "pruner": spec.pruner, **{f"pruner.{k}": v for k, v in spec.pruner_options.items()},
                    "trials": spec.trials, "epochs": spec.epochs, "seed": spec.seed,
                    "objective": ",".join(o.metric for o in spec.objectives), "device": str(self.device),
                    **self.quality.protocol(), **(extra or {})},
            tags={"study": spec.study_name, "kind": kind, "optuna_study": spec.study_name,
                  "optuna_storage": redact(self.settings.storage_url), "state": "RUNNING",
                  "objective": ",".join(self.objective_keys)})
        self.tracker.log_artifact(parent_id, spec.path)
        with tempfile.TemporaryDirectory() as tmp:  # what the study trained on, at a glance
            save_png(image_grid(self.data.train[:64].float() / 255), Path(tmp) / "dataset.png")
            self.tracker.log_artifact(parent_id, Path(tmp) / "dataset.png")
        path = getattr(self.quality.extractor, "path", None)
        if path:  # the domain network: its weights, so its scores can be checked
            self.tracker.log_artifact(parent_id, path, "extractor")
        return parent_id


def open_session(spec: StudySpec, settings: Settings, device: str, headline: str) -> Session:
    """Load the data (from the cache), place it, pick the extractor; print what will happen."""
    dev = resolve_device(device)
    cache = settings.runs_dir / "cache"
    data = load_dataset(spec.dataset, spec.dataset_options, cache)
    print(f"{headline} on {dev}; {spec.dataset} {data.image_size}px x{data.channels}, "
          f"{len(data.train)}/{len(data.val)}/{len(data.test)} train/val/test images", flush=True)
    check_families_fit(spec, data)
    data = data.place(dev)
    extractor, reason = resolve_extractor(spec.scores.extractor, ExtractorContext(
        data, dev, cache, download=spec.scores.extractor == "inception"))
    quality = SampleQuality(extractor, reason, data, spec.scores, cache)
    quality.check([o.metric for o in spec.objectives])
    print(f"scores: {extractor.name} extractor ({reason})", flush=True)
    fast = spec.speed.resolve(dev)  # refuses what this machine cannot do before anything is recorded
    return Session(spec, settings, dev, data, quality, Tracker(settings, spec.study_name), fast)


def load_run(settings: Settings, run_id: str, device: torch.device, folder: Path) -> tuple[torch.nn.Module, Family, ImageSplits]:
    """A finished run's model (its weights artifact) and the data it was trained on (from the cache)."""
    from mlflow.exceptions import MlflowException

    from harness.training import load_model

    tracker = Tracker(settings, None)
    try:
        run = tracker.client.get_run(run_id)
        local = Path(tracker.client.download_artifacts(run_id, "", str(folder)))
    except MlflowException as e:
        raise UserError(f"no run {run_id} with artifacts in {redact(settings.tracking_uri)} ({e.message.splitlines()[0]}); "
                        "copy the run id from the MLflow UI") from None
    if not (local / "model.pt").is_file() or "data.source" not in run.data.params:
        raise UserError(f"run {run_id} has no trained model (model.pt) and data description; pick a COMPLETE trial's run")
    source = json.loads(run.data.params["data.source"])
    data = load_dataset(source["dataset"], source["options"], settings.runs_dir / "cache").place(device)
    model = load_model(local).to(device)
    return model, get_family(run.data.params["family"]), data


def finish_study(session: Session, parent_id: str) -> None:
    """After a study: the report's tables and key plots into the parent run (for the MLflow UI), and
    latent-space pictures of each family's best trial into that trial's run. A failure here is a
    warning: the trials are recorded already."""
    from harness import latent
    from harness.loaders import warn
    from harness.report import best_per_family, load_studies, write_study_report
    from harness.training import load_model

    tracker = session.tracker
    try:
        with tempfile.TemporaryDirectory() as tmp:
            (record,) = load_studies(session.settings, [session.spec.study_name])
            write_study_report(record, tracker.client, Path(tmp) / "report")
            for path in sorted((Path(tmp) / "report").glob("*")):
                if path.is_file() and path.suffix in (".md", ".csv", ".png", ".html"):
                    tracker.log_artifact(parent_id, path, "report")
            for _, best in best_per_family(record).iterrows():
                folder = Path(tmp) / "runs" / best["run_id"]
                for name in ("model.pt", "model.json"):
                    tracker.client.download_artifacts(best["run_id"], name, str(folder))
                model = load_model(folder).to(session.device)
                for path in latent.make_all(model, get_family(best["family"]), session.data, folder / "latent"):
                    tracker.log_artifact(best["run_id"], path, "latent")
    except Exception as e:  # noqa: BLE001 - the study's results stand without these extras
        warn(f"the study's report artifacts could not be written ({type(e).__name__}: {e}); `make report` retries")


def check_families_fit(spec: StudySpec, data: ImageSplits) -> None:
    """Build each family once for these images, so a size it cannot take fails now, not in every trial."""
    for name in spec.families:
        defaults = {param: p.default for param, p in spec.spaces[name].items()}
        try:
            get_family(name).build(defaults, data.channels, data.image_size)
        except ValueError as e:
            raise UserError(f"family {name} cannot take the {spec.dataset} images ({data.channels} channel(s), "
                            f"{data.image_size}x{data.image_size}): {e}; set the dataset's size option") from None


class ConfigRunner:
    def __init__(self, session: Session):
        self.session = session
        data = session.data
        self.references = data.val[:N_GRID_IMAGES].to(data.device)  # uint8: the same images for every run
        self.scorers = [SampleScorer(data), session.quality.epoch_scores]

    def start(self, family: str, params: Mapping[str, Any], seed: int, name: str, tags: Mapping[str, Any],
              parent_id: str) -> str:
        s = self.session
        return s.tracker.start_run(
            name, params={**params, "family": family, "epochs": s.spec.epochs, "seed": seed,
                          "metric.pixel_mmd": PIXEL_MMD_PROTOCOL, **s.quality.protocol(),
                          "data.source": json.dumps({"dataset": s.spec.dataset, "options": dict(s.spec.dataset_options)}),
                          **{f"data.{k}": v for k, v in s.data.description.items()},
                          **s.fast.params(), "speed.data": "device-resident" if s.data.resident else "DataLoader"},
            tags={"study": s.spec.study_name, "family": family, "dataset": s.spec.dataset, "state": "RUNNING",
                  "device": str(s.device), "objective": ",".join(s.objective_keys), **tags},
            parent_id=parent_id)

    def checkpoint_of(self, run_id: str | None) -> Checkpoint | None:
        """The last checkpoint a run left (None when it left none)."""
        if not run_id:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = self.session.tracker.client.download_artifacts(run_id, CHECKPOINT, tmp)
            except Exception:  # no checkpoint yet: the killed trial died before its first one
                return None
            return torch.load(path, map_location="cpu", weights_only=True)

    def _save_checkpoint(self, run_id: str, state: Checkpoint) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(CHECKPOINT).name
            torch.save(state, path)
            self.session.tracker.log_artifact(run_id, path, str(Path(CHECKPOINT).parent))

    def run(self, run_id: str, family_name: str, params: Mapping[str, Any], seed: int, label: str,
            report: EpochReport | None = None, on_failure: Callable[[str], None] | None = None,
            resume: Checkpoint | None = None) -> dict[str, float]:
        """Train (or go on from `resume`) and score; the last epoch's metrics with the final scores.
        Pruned: optuna.TrialPruned."""
        s, family = self.session, get_family(family_name)
        computed_before = s.quality.computed
        if resume is not None:  # the curves go on from where the killed run stopped
            for epoch, metrics in enumerate(resume["history"], start=1):
                s.tracker.log_metrics(run_id, metrics, step=epoch)
            s.tracker.set_tags(run_id, {"resumed_from_epoch": int(resume["epoch"])})
        try:
            result = train(family, params, s.data, epochs=s.spec.epochs, seed=seed, scorers=self.scorers,
                           on_epoch=lambda epoch, metrics, model: self._epoch(run_id, family, epoch, metrics, model, report),
                           progress=label, checkpoint_every=s.spec.checkpoint_every,
                           save_checkpoint=lambda state: self._save_checkpoint(run_id, state), resume=resume,
                           objective=s.objective_keys[0], minimize=s.spec.objectives[0].direction == "minimize",
                           fast=s.fast)
            with phase("run artifacts"):
                self._log_artifacts(run_id, label, family, params, result)
            if result.stopped_at is not None:
                s.tracker.end_run(run_id, "FINISHED", {"state": "PRUNED"})
                raise optuna.TrialPruned(f"pruned after epoch {result.stopped_at}")
            with phase("final scores"):
                final = {f"test_{k}": v for k, v in evaluate(family, result.model, s.data, "test", params).items()}
                final.update(s.quality.final_scores(family, result.model))
                if hasattr(result.model, "encoder") and family.output_range == (0.0, 1.0):  # the VAEs
                    final.update(reconstruction_scores(family, result.model, s.data, "test", int(params["batch_size"])))
            s.tracker.log_metrics(run_id, final | {"train_seconds": result.seconds}, step=s.spec.epochs)
            reference = "computed" if s.quality.computed > computed_before else "cached"
            s.tracker.end_run(run_id, "FINISHED", {"state": "COMPLETE", "score.reference_stats": reference})
            return result.history[-1] | final
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            self._fail(run_id, "interrupted (Ctrl-C)", "KILLED", on_failure)
            raise
        except Diverged as e:
            if e.history:
                with tempfile.TemporaryDirectory() as tmp:
                    loss_curves(e.history, Path(tmp) / "loss_curves.png",
                                f"{s.spec.study_name} {label} ({family_name}), diverged after epoch {len(e.history)}")
                    s.tracker.log_artifact(run_id, Path(tmp) / "loss_curves.png")
            s.tracker.set_tags(run_id, {"last_good_epoch": len(e.history)})
            self._fail(run_id, f"Diverged: {e}", "FAILED", on_failure)
            raise
        except Exception as e:
            self._fail(run_id, f"{type(e).__name__}: {e}", "FAILED", on_failure, traceback.format_exc())
            raise

    def _epoch(self, run_id: str, family: Family, epoch: int, metrics: dict[str, float], model: torch.nn.Module,
               report: EpochReport | None) -> bool:
        """Log the epoch and its sample grid (the same z every epoch, so epochs are comparable)."""
        s = self.session
        with phase("tracking"):
            s.tracker.log_metrics(run_id, metrics, step=epoch)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"epoch_{epoch:03d}.png"
                save_png(image_grid(fixed_samples(family, model, N_GRID_IMAGES, s.data.device)), path)
                s.tracker.log_artifact(run_id, path, "samples")
        with phase("optuna"):
            return report(epoch, metrics) if report is not None else False

    def _fail(self, run_id: str, reason: str, status: str, on_failure: Callable[[str], None] | None,
              details: str = "") -> None:
        """Record a failure as far as possible: when the disk is full, recording fails too, and must not
        hide the reason the trial failed."""
        steps = [lambda: on_failure(reason) if on_failure is not None else None,
                 lambda: self.session.tracker.client.log_text(run_id, details, "error.txt") if details else None,
                 lambda: self.session.tracker.end_run(run_id, status, {"state": "FAIL", "failure_reason": reason[:5000]})]
        for step in steps:
            try:
                step()
            except Exception:  # noqa: BLE001 - the original error is what the user needs
                pass

    def _log_artifacts(self, run_id: str, label: str, family: Family, params: Mapping[str, Any],
                       result: TrainResult) -> None:
        """Reconstruction grid (autoencoders), samples from a fixed z ~ N(0, I), loss curves, weights."""
        s = self.session
        model, value_range = result.model.eval(), family.output_range
        with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
            folder = Path(tmp)
            if hasattr(model, "reconstruct"):
                x = to_model_range(self.references, value_range)
                save_png(reconstruction_grid(from_model_range(x, value_range),
                                             from_model_range(model.reconstruct(x), value_range)),
                         folder / "reconstructions.png")
            save_png(image_grid(fixed_samples(family, model, N_GRID_IMAGES, s.data.device)), folder / "samples.png")
            loss_curves(result.history, folder / "loss_curves.png", f"{s.spec.study_name} {label} ({family.name})")
            save_model(model, family.name, params, s.data.channels, s.data.image_size, folder)
            s.tracker.log_artifacts(run_id, folder)
