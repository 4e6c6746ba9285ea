"""The training loop every family shares: epochs of `train_step`, then held-out scores.

Per-step losses stay on the device and are summed there; they are read once per epoch, and a
running "all finite" flag is read every CHECK_EVERY steps, so the loop rarely waits on the device.
A loss that becomes NaN or infinite or passes LOSS_BOUND, or a parameter that becomes NaN or
infinite, stops the trial within those steps (`Diverged`, carrying the history of the good epochs). With the same seed on the CPU, a trial
reproduces its losses exactly: the seed sets the initial weights, the batch order and the noise.
A checkpoint holds everything that decides the rest of the run (weights, optimiser states, every
random generator, the epoch, the history, the best score), so a resumed run on the CPU ends with
the same numbers as one that was never stopped.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from harness import keys
from harness.data import ImageSplits, to_model_range
from harness.generate import GRID_SEED, fixed_samples
from harness.metrics import median_bandwidth, pixel_mmd
from harness.phases import OFF, Profiler
from harness.registry import Family, get_family
from harness.speed import PLAIN, FastPath

EpochCallback = Callable[[int, dict[str, float], nn.Module], bool]  # True: stop here (e.g. pruned)
EpochScorer = Callable[[Family, nn.Module], dict[str, float]]  # sample scores after each epoch
Checkpoint = dict[str, Any]  # see `train`: model, optimizers, rng, epoch, history, best
CHECK_EVERY = 25  # steps between reads of the "all losses finite" flag
N_SCORE_SAMPLES = 512  # fixed-z samples scored against as many validation images each epoch


class Diverged(RuntimeError):
    """A loss or a parameter became NaN or infinite: the trial cannot go on."""

    def __init__(self, message: str, history: list[dict[str, float]]):
        super().__init__(message)
        self.history = history  # the epochs before it went wrong


@dataclass(frozen=True)
class TrainConfig:
    """How one configuration is trained, apart from its hyperparameters."""

    epochs: int
    seed: int  # initial weights, batch order and noise
    checkpoint_every: int = 0  # epochs between checkpoints (0: none)
    objective: str | None = None  # the metric whose best value so far a checkpoint keeps
    minimize: bool = True
    fast: FastPath = PLAIN  # the fast path (harness/speed.py)
    label: str | None = None  # the progress bar's; None: no bar
    phases: Profiler = OFF  # where the time goes (harness/phases.py)


@dataclass(frozen=True)
class TrainHooks:
    """What the caller does between epochs."""

    on_epoch: EpochCallback | None = None  # (epoch from 1, metrics, model) -> True to stop early
    save_checkpoint: Callable[[Checkpoint], None] | None = None  # every checkpoint_every epochs
    scorers: Sequence[EpochScorer] | None = None  # sample scores after every epoch (None: pixel MMD only)


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)  # one dict of metrics per epoch
    seconds: float = 0.0
    stopped_at: int | None = None  # the epoch after which on_epoch asked to stop


def evaluate(family: Family, model: nn.Module, data: ImageSplits, split: str, params: Mapping[str, Any],
             batch_size: int | None = None) -> dict[str, float]:
    """Image-weighted means of eval_step over a whole split, in eval mode, in training-size batches
    (they fit wherever training fits; on a CPU large batches are slower, not faster). Keys as
    eval_step returns them (no split prefix)."""
    batch_size = batch_size or int(params.get("batch_size", 128))
    was_training = model.training
    model.eval()
    sums: dict[str, Tensor] = {}
    seen = 0
    with torch.inference_mode():
        for x in data.batches(split, batch_size):
            for key, value in family.eval_step(model, to_model_range(x, family.output_range), params).items():
                sums[key] = sums.get(key, 0) + value.float() * x.shape[0]
            seen += x.shape[0]
    model.train(was_training)
    return {key: (value / seen).item() for key, value in sums.items()}


def grid_samples(family: Family, model: nn.Module, n: int, device: torch.device) -> Tensor:
    """The n images of a sample grid: the same z for every epoch and trial, so grids compare."""
    return fixed_samples(model, family.output_range, n, GRID_SEED, device)


class SampleScorer:
    """pixel_mmd of fixed-z samples against the first validation images, with a fixed kernel."""

    def __init__(self, data: ImageSplits, n: int = N_SCORE_SAMPLES):
        self.references = data.val[:n].to(data.device).float() / 255
        self.bandwidth = median_bandwidth(self.references)

    def __call__(self, family: Family, model: nn.Module) -> dict[str, float]:
        samples = grid_samples(family, model, len(self.references), self.references.device)
        return {keys.split_key("val", keys.PIXEL_MMD): pixel_mmd(samples, self.references, self.bandwidth)}


# Every training output here is a per-image mean: pixel losses are averaged over pixels (about 0.01
# to 1), the KL term is summed over at most a few thousand latent dimensions (tens to hundreds when
# healthy), the GAN losses are logistic, so they grow like the logit, and a WGAN critic's value is a
# mean score. A healthy value is below 1e3. Past 1e6 a logit, critic score or latent mean is in the
# millions: the run has diverged, though fp32 still holds the number (a reports' GAN reached 2e14, and
# the trial ended COMPLETE).
LOSS_BOUND = 1e6


def _first_bad(values: Mapping[str, float]) -> str | None:
    return next((f"{k} became {v}" for k, v in values.items() if not math.isfinite(v)), None)


def _extreme(value: Tensor) -> float:
    """The element of largest magnitude (NaN first), with its sign."""
    flat = value.detach().float().flatten()
    return flat[flat.abs().nan_to_num(nan=math.inf).argmax()].item()


def _first_diverged(losses: Mapping[str, float]) -> str | None:
    """The first training output that is non-finite or past LOSS_BOUND, said in words."""
    return _first_bad(losses) or next((f"{k} reached {v:.3g}, past the divergence bound {LOSS_BOUND:g}"
                                       for k, v in losses.items() if abs(v) > LOSS_BOUND), None)


def train(family: Family, params: Mapping[str, Any], data: ImageSplits, config: TrainConfig,
          hooks: TrainHooks = TrainHooks(), resume: Checkpoint | None = None) -> TrainResult:
    """Train a fresh model, or go on from `resume`, for config.epochs epochs (counted from 1)."""
    fast, phases = config.fast, config.phases
    scorers = [SampleScorer(data)] if hooks.scorers is None else hooks.scorers
    torch.manual_seed(config.seed)
    model = fast.prepare(family.build(params, data.channels, data.image_size).to(data.device))
    optimizers = family.make_optimizers(model, params, fast)
    order = torch.Generator().manual_seed(config.seed)  # batch order, on the CPU so it is the same everywhere
    result = TrainResult(model)
    first, best = 1, None
    if resume is not None:
        first, best = _restore(resume, model, optimizers, order, data.device), resume.get("best")
        result.history = list(resume["history"])
    start = time.perf_counter()
    bar = tqdm(range(first, config.epochs + 1), desc=config.label, unit="epoch", leave=False,
               disable=True if config.label is None else None)  # None: shown on a terminal only
    with fast.applied():
        for epoch in bar:
            t0 = time.perf_counter()
            model.train()
            step_params = {**params, "epoch": epoch}  # for schedules that change over epochs (KL warm-up)
            batches = data.train_batches(int(params["batch_size"]), order)
            metrics, seen = train_epoch(family, model, optimizers, batches, step_params, fast, phases, epoch,
                                        result.history)
            with phases.phase("validation"):
                metrics.update({keys.split_key("val", k): v for k, v in evaluate(family, model, data, "val", params).items()})
            with phases.phase("epoch scores"):
                for scorer in scorers:
                    metrics.update(scorer(family, model))
            bad = _first_bad(metrics)
            if bad:
                raise Diverged(f"epoch {epoch}: {bad}", result.history)
            seconds = time.perf_counter() - t0
            metrics.update({keys.EPOCH_SECONDS: seconds, keys.IMAGES_PER_SECOND: seen / seconds})
            result.history.append(metrics)
            with phases.phase("progress bar"):
                bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items() if keys.in_split(k, "val")})
            if config.objective in metrics and (best is None or (metrics[config.objective] < best) == config.minimize):
                best = metrics[config.objective]
            if hooks.on_epoch is not None and hooks.on_epoch(epoch, metrics, model):
                result.stopped_at = epoch
                break
            if hooks.save_checkpoint is not None and config.checkpoint_every and epoch % config.checkpoint_every == 0 \
                    and epoch < config.epochs:
                with phases.phase("checkpoint"):
                    hooks.save_checkpoint(_state(model, optimizers, order, epoch, result.history, best, data.device))
    bar.close()
    result.seconds = time.perf_counter() - start
    return result


def train_epoch(family: Family, model: nn.Module, optimizers: Mapping[str, torch.optim.Optimizer],
                batches: Iterable[Tensor], params: Mapping[str, Any], fast: FastPath = PLAIN,
                phases: Profiler = OFF, epoch: int = 1,
                history: Sequence[dict[str, float]] = ()) -> tuple[dict[str, float], int]:
    """One pass of train_step over uint8 batches on the fast path: the image-weighted mean of every
    output as train_<key> (read from the device once, at the end) and the number of images seen.
    Diverged carries `history`."""
    sums: dict[str, Tensor] = {}
    counts: dict[str, int] = {}
    finite = torch.ones((), dtype=torch.bool, device=next(model.parameters()).device)
    seen = 0
    inputs = phases.timed((fast.layout(to_model_range(x, family.output_range)) for x in batches), "data")
    for step, x in enumerate(inputs, start=1):
        with phases.phase("forward/backward"):  # the optimizer step inside is its own phase
            out = family.train_step(model, x, optimizers, params, fast)
        with phases.phase("loss bookkeeping"):
            for key, value in out.items():  # a key may come from some steps only (D or G steps)
                sums[key] = sums.get(key, 0) + value.float() * x.shape[0]
                counts[key] = counts.get(key, 0) + x.shape[0]
                finite &= (value.float().abs() <= LOSS_BOUND).all()  # False for NaN and inf too
            seen += x.shape[0]
            if step % CHECK_EVERY == 0 and not finite.item():
                raise Diverged(f"epoch {epoch}, step {step}: " + (
                    _first_diverged({k: _extreme(v) for k, v in out.items()})
                    or f"a training loss became NaN or infinite or passed {LOSS_BOUND:g}"), list(history))
    with phases.phase("loss bookkeeping"):
        metrics = {keys.split_key("train", key): (value / counts[key]).item() for key, value in sums.items()}  # one sync
    bad = _first_diverged(metrics) or next((f"parameter {name} became NaN or infinite" for name, p in
                                       model.named_parameters() if not torch.isfinite(p).all()), None)
    if bad:
        raise Diverged(f"epoch {epoch}: {bad}", list(history))
    return metrics, seen


def _state(model: nn.Module, optimizers: Mapping[str, torch.optim.Optimizer], order: torch.Generator, epoch: int,
           history: list[dict[str, float]], best: float | None, device: torch.device) -> Checkpoint:
    """A snapshot: copies, since state_dict() hands out the live tensors the next steps change in place."""
    return {"model": copy.deepcopy({k: v.detach().cpu() if isinstance(v, Tensor) else v
                                    for k, v in model.state_dict().items()}),
            "optimizers": {name: copy.deepcopy(opt.state_dict()) for name, opt in optimizers.items()},
            "rng": {"torch": torch.get_rng_state(), "order": order.get_state(),
                    "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
            "epoch": epoch, "history": list(history), "best": best}


def _restore(state: Checkpoint, model: nn.Module, optimizers: Mapping[str, torch.optim.Optimizer],
             order: torch.Generator, device: torch.device) -> int:
    """Put a checkpoint back; the epoch to go on with."""
    model.load_state_dict(state["model"])
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(state["optimizers"][name])
    torch.set_rng_state(state["rng"]["torch"])
    order.set_state(state["rng"]["order"])
    if device.type == "cuda" and state["rng"]["cuda"] is not None:
        torch.cuda.set_rng_state(state["rng"]["cuda"], device)
    return int(state["epoch"]) + 1


def save_model(model: nn.Module, family: str, params: Mapping[str, Any], channels: int, image_size: int,
               folder: Path) -> None:
    """model.pt (a CPU state_dict) and model.json (what `load_model` needs to rebuild it)."""
    state = {k: v.detach().cpu() if isinstance(v, Tensor) else v for k, v in model.state_dict().items()}
    torch.save(state, folder / "model.pt")
    spec = {"family": family, "params": dict(params), "channels": channels, "image_size": image_size}
    (folder / "model.json").write_text(json.dumps(spec, indent=2))


def load_model(folder: Path) -> nn.Module:
    """Rebuild a trial's model from its artifacts; weights_only=True never runs pickled code."""
    spec = json.loads((folder / "model.json").read_text())
    model = get_family(spec["family"]).build(spec["params"], spec["channels"], spec["image_size"])
    model.load_state_dict(torch.load(folder / "model.pt", map_location="cpu", weights_only=True))
    return model.eval()
