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
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from harness.data import ImageSplits, from_model_range, load_dataset, to_model_range
from harness.errors import UserError
from harness.evaluation import SCORE_OBJECTIVES, SampleQuality, reconstruction_scores
from harness.extractors import ExtractorContext, resolve_extractor
from harness.figures import image_grid, loss_curves, reconstruction_grid, save_png
from harness.registry import Family, get_family
from harness.settings import Settings, redact, resolve_device
from harness.space import suggest
from harness.studyfile import StudySpec
from harness.metrics import PIXEL_MMD_PROTOCOL
from harness.tracking import Tracker
from harness.training import Diverged, SampleScorer, TrainResult, evaluate, fixed_samples, save_model, train

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
IDENTITY_ATTR = "genbench_identity"
EXTRACTOR_ATTR = "genbench_extractor"
N_GRID_IMAGES = 32  # validation images in every reconstruction grid; samples use as many z


@dataclass
class Outcome:
    exit_code: int
    message: str


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """The Optuna storage, its tables created once here, before any trial touches it."""
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except Exception as e:  # sqlalchemy and driver errors have no common base worth naming
        raise UserError(f"STORAGE={redact(url)} cannot be opened: {str(e).splitlines()[0]}") from None


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


def check_families_fit(spec: StudySpec, data: ImageSplits) -> None:
    """Build each family once for these images, so a size it cannot take fails now, not in every trial."""
    for name in spec.families:
        defaults = {param: p.default for param, p in spec.spaces[name].items()}
        try:
            get_family(name).build(defaults, data.channels, data.image_size)
        except ValueError as e:
            raise UserError(f"family {name} cannot take the {spec.dataset} images ({data.channels} channel(s), "
                            f"{data.image_size}x{data.image_size}): {e}; set the dataset's size option") from None


def plan_trials(study: optuna.Study, spec: StudySpec) -> tuple[int, list[dict[str, Any]], str]:
    """(trials to run now, grid points to enqueue, why nothing runs when it is 0)."""
    done = study.get_trials(deepcopy=False, states=FINISHED)
    left = spec.trials - len(done)
    if len(spec.families) > 1:
        return _plan_per_family(study, spec, done)
    if spec.grid is None:
        why = (f"{spec.study_name} already has {len(done)} finished trials, its budget (trials = {spec.trials}); "
               "raise TRIALS= to run more")
        return max(0, left), [], why
    names = list(spec.grid)
    points = [dict(zip(names, values)) for values in itertools.product(*spec.grid.values())]
    missing = [p for p in points if not any(_matches(p, t.params) for t in done)]
    if not missing:
        return 0, [], f"grid complete: all {len(points)} points of {spec.study_name} are done"
    to_run = max(0, min(len(missing), left))
    waiting = [t.system_attrs.get("fixed_params", {}) for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))]
    enqueue = [p for p in missing[:to_run] if not any(_matches(p, w) for w in waiting)]
    why = (f"{spec.study_name} has {len(done)} finished trials, its budget (trials = {spec.trials}); "
           f"{len(missing)} of {len(points)} grid points remain: raise TRIALS= to run them")
    return to_run, enqueue, why


def _plan_per_family(study: optuna.Study, spec: StudySpec, done: list[FrozenTrial]) -> tuple[int, list[dict[str, Any]], str]:
    """The same budget for every family: each family's missing trials, enqueued in turn."""
    waiting = [t.system_attrs.get("fixed_params", {}).get("family") for t in
               study.get_trials(deepcopy=False, states=(TrialState.WAITING,))]
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


def _matches(point: Mapping[str, Any], params: Mapping[str, Any]) -> bool:
    return all(name in params and params[name] == value for name, value in point.items())


class TrialRunner:
    """The Optuna objective: sample a configuration, train it, log everything to a child run."""

    def __init__(self, spec: StudySpec, data: ImageSplits, tracker: Tracker, parent_id: str, quality: SampleQuality):
        self.spec, self.data, self.tracker, self.parent_id, self.quality = spec, data, tracker, parent_id, quality
        self.references = data.val[:N_GRID_IMAGES].to(data.device)  # uint8: the same images for every trial
        self.scorers = [SampleScorer(data), quality.epoch_scores]
        self.keys = [spec.scores.resolve(o.metric, quality.extractor) for o in spec.objectives]  # as logged
        first = spec.objectives[0].metric
        self.pruned_on = spec.scores.resolve("val_fd", quality.extractor) if first == "fd" else self.keys[0]

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        spec = self.spec
        several = len(spec.families) > 1
        family_name = trial.suggest_categorical("family", list(spec.families)) if several else spec.families[0]
        family = get_family(family_name)
        prefix = f"{family_name}." if several else ""  # keeps each family's distributions apart in Optuna
        params = suggest(trial, spec.spaces[family_name], prefix)
        run_id = self.tracker.start_run(
            f"trial-{trial.number}",
            params={**params, "family": family_name, "epochs": spec.epochs, "seed": spec.seed,
                    "metric.pixel_mmd": PIXEL_MMD_PROTOCOL, **self.quality.protocol(),
                    **{f"data.{k}": v for k, v in self.data.description.items()}},
            tags={"study": spec.study_name, "family": family_name, "dataset": spec.dataset,
                  "trial_number": trial.number, "state": "RUNNING", "device": str(self.data.train.device)},
            parent_id=self.parent_id)
        trial.set_user_attr("mlflow_run_id", run_id)
        trial.set_user_attr("family", family_name)
        computed_before = self.quality.computed
        try:
            result = train(family, params, self.data, epochs=spec.epochs, seed=spec.seed, scorers=self.scorers,
                           on_epoch=lambda epoch, metrics, model: self._on_epoch(trial, run_id, family, epoch, metrics, model),
                           progress=f"trial {trial.number}")
            self._log_artifacts(run_id, trial.number, family, params, result)
            if result.stopped_at is not None:
                self.tracker.end_run(run_id, "FINISHED", {"state": "PRUNED"})
                raise optuna.TrialPruned(f"pruned after epoch {result.stopped_at}")
            final = {f"test_{k}": v for k, v in evaluate(family, result.model, self.data, "test", params).items()}
            final.update(self.quality.final_scores(family, result.model))
            if hasattr(result.model, "encoder") and family.output_range == (0.0, 1.0):  # the VAEs
                final.update(reconstruction_scores(family, result.model, self.data, "test", int(params["batch_size"])))
            self.tracker.log_metrics(run_id, final | {"train_seconds": result.seconds}, step=spec.epochs)
            reference = "computed" if self.quality.computed > computed_before else "cached"
            self.tracker.end_run(run_id, "FINISHED", {"state": "COMPLETE", "score.reference_stats": reference})
            trial.set_user_attr("reference_stats", reference)
            scores = result.history[-1] | final
            values = [scores[key] for key in self.keys]
            return values[0] if len(values) == 1 else values
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            self._fail(trial, run_id, "interrupted (Ctrl-C)", "KILLED")
            raise
        except Diverged as e:
            if e.history:
                with tempfile.TemporaryDirectory() as tmp:
                    loss_curves(e.history, Path(tmp) / "loss_curves.png", f"{spec.study_name} trial {trial.number} "
                                f"({family_name}), diverged after epoch {len(e.history)}")
                    self.tracker.log_artifact(run_id, Path(tmp) / "loss_curves.png")
            self.tracker.set_tags(run_id, {"last_good_epoch": len(e.history)})
            self._fail(trial, run_id, f"Diverged: {e}", "FAILED")
            raise
        except Exception as e:
            self._fail(trial, run_id, f"{type(e).__name__}: {e}", "FAILED", traceback.format_exc())
            raise

    def _on_epoch(self, trial: optuna.Trial, run_id: str, family: Family, epoch: int, metrics: dict[str, float],
                  model: torch.nn.Module) -> bool:
        """Log the epoch and its sample grid; report to the pruner; True asks the loop to stop (pruned)."""
        self.tracker.log_metrics(run_id, metrics, step=epoch)
        with tempfile.TemporaryDirectory() as tmp:  # the same z every epoch, so epochs are comparable
            path = Path(tmp) / f"epoch_{epoch:03d}.png"
            save_png(image_grid(fixed_samples(family, model, N_GRID_IMAGES, self.data.device)), path)
            self.tracker.log_artifact(run_id, path, "samples")
        if len(self.spec.objectives) > 1 or self.pruned_on not in metrics:
            return False  # Optuna cannot prune multi-objective trials; final-only scores have nothing per epoch
        trial.report(metrics[self.pruned_on], epoch)
        return trial.should_prune()

    def _fail(self, trial: optuna.Trial, run_id: str, reason: str, status: str, details: str = "") -> None:
        trial.set_user_attr("failure_reason", reason)
        if details:
            self.tracker.client.log_text(run_id, details, "error.txt")
        self.tracker.end_run(run_id, status, {"state": "FAIL", "failure_reason": reason[:5000]})

    def _log_artifacts(self, run_id: str, number: int, family: Family, params: Mapping[str, Any],
                       result: TrainResult) -> None:
        """Reconstruction grid (autoencoders), samples from a fixed z ~ N(0, I), loss curves, weights."""
        model, value_range = result.model.eval(), family.output_range
        with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
            folder = Path(tmp)
            if hasattr(model, "reconstruct"):
                x = to_model_range(self.references, value_range)
                save_png(reconstruction_grid(from_model_range(x, value_range),
                                             from_model_range(model.reconstruct(x), value_range)),
                         folder / "reconstructions.png")
            save_png(image_grid(fixed_samples(family, model, N_GRID_IMAGES, self.data.device)), folder / "samples.png")
            loss_curves(result.history, folder / "loss_curves.png", f"{self.spec.study_name} trial {number} ({family.name})")
            save_model(model, family.name, params, self.data.channels, self.data.image_size, folder)
            self.tracker.log_artifacts(run_id, folder)


class Progress:
    """Study progress bar (trials done / to run, best so far) and one printed line per trial."""

    def __init__(self, spec: StudySpec, total: int):
        self.spec = spec
        self.bar = tqdm(total=total, desc=spec.study_name, unit="trial", dynamic_ncols=True, disable=None)
        self.counts = {state: 0 for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
        self.first_failure = ""

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
        elif trial.values:
            detail = " ".join(f"{o.metric}={_fmt(v)}" for o, v in zip(self.spec.objectives, trial.values))
        else:  # pruned: the last reported value
            step = trial.last_step
            detail = f"{self.spec.objectives[0].metric}={_fmt(trial.intermediate_values[step])} at epoch {step}" \
                if step is not None else ""
        seconds = trial.duration.total_seconds() if trial.duration else 0.0
        self.bar.write(f"trial {trial.number:>3} {trial.state.name:<8} {detail}  {params}  ({seconds:.1f} s)")

    def close(self) -> None:
        self.bar.close()


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _best_text(study: optuna.Study, spec: StudySpec) -> str:
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return ""
    if len(spec.objectives) > 1:
        return f"{len(study.best_trials)} trial(s) on the Pareto front"
    best = study.best_trial
    return f"{spec.objectives[0].metric}={_fmt(best.value)} (trial {best.number})"


def run_study(spec: StudySpec, settings: Settings, device: str = "auto") -> Outcome:
    settings.prepare()
    dev = resolve_device(device)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # we print one line per trial instead
    storage = open_storage(settings.storage_url)
    study = optuna.create_study(
        study_name=spec.study_name, storage=storage, sampler=spec.make_sampler(stored_trials(storage, spec.study_name)),
        pruner=spec.make_pruner(),
        directions=[o.direction for o in spec.objectives], load_if_exists=True)
    check_identity(study, IDENTITY_ATTR, json.loads(json.dumps(spec.identity())), spec, settings.storage_url)
    to_run, enqueue, why = plan_trials(study, spec)
    if to_run == 0:
        best = _best_text(study, spec)
        return Outcome(0, why + (f"; best {best}" if best else ""))

    cache = settings.runs_dir / "cache"
    data = load_dataset(spec.dataset, spec.dataset_options, cache)
    print(f"study {spec.study_name}: {to_run} trial(s) to run, {spec.epochs} epoch(s) each, on {dev}; "
          f"{spec.dataset} {data.image_size}px x{data.channels}, "
          f"{len(data.train)}/{len(data.val)}/{len(data.test)} train/val/test images", flush=True)
    check_families_fit(spec, data)
    data = data.place(dev)
    extractor, reason = resolve_extractor(spec.scores.extractor, ExtractorContext(
        data, dev, cache, download=spec.scores.extractor == "inception"))
    quality = SampleQuality(extractor, reason, data, spec.scores, cache)
    quality.check([o.metric for o in spec.objectives])
    check_identity(study, EXTRACTOR_ATTR, json.loads(json.dumps(extractor.identity)), spec, settings.storage_url)
    print(f"scores: {extractor.name} extractor ({reason})", flush=True)
    for point in enqueue:
        study.enqueue_trial(point)
    tracker = Tracker(settings, spec.study_name)
    parent_id = tracker.start_run(
        f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}",
        params={"study": spec.name, "version": spec.version, "dataset": spec.dataset,
                **{f"dataset.{k}": v for k, v in spec.dataset_options.items()},
                "families": ",".join(spec.families), "sampler": spec.sampler,
                **{f"sampler.{k}": v for k, v in spec.sampler_options.items()},
                "pruner": spec.pruner, **{f"pruner.{k}": v for k, v in spec.pruner_options.items()},
                "trials": spec.trials, "epochs": spec.epochs, "seed": spec.seed,
                "objective": ",".join(o.metric for o in spec.objectives), "device": str(dev), **quality.protocol()},
        tags={"study": spec.study_name, "kind": "study", "optuna_study": spec.study_name,
              "optuna_storage": redact(settings.storage_url), "state": "RUNNING"})
    tracker.log_artifact(parent_id, spec.path)
    if getattr(extractor, "path", None):  # the domain network: its weights, so its scores can be checked
        tracker.log_artifact(parent_id, extractor.path, "extractor")
    with tempfile.TemporaryDirectory() as tmp:  # what the study trained on, at a glance
        save_png(image_grid(data.train[:64].float() / 255), Path(tmp) / "dataset.png")
        tracker.log_artifact(parent_id, Path(tmp) / "dataset.png")
    progress = Progress(spec, to_run)
    start = time.perf_counter()
    try:
        study.optimize(TrialRunner(spec, data, tracker, parent_id, quality), n_trials=to_run, catch=(Exception,),
                       callbacks=[progress], gc_after_trial=False)
    except KeyboardInterrupt:
        progress.close()
        tracker.end_run(parent_id, "KILLED", {"state": "INTERRUPTED"})
        raise
    progress.close()

    counts = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,)))
              for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    tracker.log_metrics(parent_id, {f"study_trials_{k}": v for k, v in counts.items()}, step=0)
    if len(spec.objectives) == 1 and counts["complete"]:
        best = study.best_trial
        tracker.log_metrics(parent_id, {f"best_{spec.scores.resolve(spec.objectives[0].metric, extractor)}": best.value},
                            step=0)
        tracker.set_tags(parent_id, {"best_trial": best.number, "best_run_id": best.user_attrs.get("mlflow_run_id", "")})
    tracker.end_run(parent_id, "FINISHED", {"state": "FINISHED"})

    ran = progress.counts
    summary = (f"{sum(ran.values())} trial(s) in {time.perf_counter() - start:.0f} s: "
               f"{ran[TrialState.COMPLETE]} complete, {ran[TrialState.PRUNED]} pruned, {ran[TrialState.FAIL]} failed")
    best = _best_text(study, spec)
    where = f"MLflow experiment {spec.study_name}, parent run {parent_id}; open it with `make ui`"
    if ran[TrialState.COMPLETE] + ran[TrialState.PRUNED] == 0:
        return Outcome(1, f"{summary}; every trial failed, first {progress.first_failure} (error.txt in its run)")
    return Outcome(0, f"{summary}; best {best}\n{where}" if best else f"{summary}\n{where}")
