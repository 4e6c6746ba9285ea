"""The training loop every family shares: epochs of `train_step`, then held-out `eval_step`s.

Per-step losses stay on the device and are summed there; they are read once per epoch, so the
loop does not wait on the device inside an epoch. With the same seed on the CPU, a trial
reproduces its losses exactly: the seed sets the initial weights, the batch order and the noise.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from harness.data import ImageSplits, to_model_range
from harness.registry import Family, get_family

EpochCallback = Callable[[int, dict[str, float]], bool]  # True: stop here (e.g. pruned)


class Diverged(RuntimeError):
    """A loss became NaN or infinite: the trial cannot go on."""


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)  # one dict of metrics per epoch
    seconds: float = 0.0
    stopped_at: int | None = None  # the epoch after which on_epoch asked to stop


def evaluate(family: Family, model: nn.Module, data: ImageSplits, split: str, params: Mapping[str, Any],
             batch_size: int = 512) -> dict[str, float]:
    """Image-weighted means of eval_step over a whole split, in eval mode."""
    was_training = model.training
    model.eval()
    sums: dict[str, Tensor] = {}
    seen = 0
    with torch.no_grad():
        for x in data.batches(split, batch_size):
            for key, value in family.eval_step(model, to_model_range(x, family.output_range), params).items():
                sums[key] = sums.get(key, 0) + value.float() * x.shape[0]
            seen += x.shape[0]
    model.train(was_training)
    return {key: (value / seen).item() for key, value in sums.items()}


def train(family: Family, params: Mapping[str, Any], data: ImageSplits, *, epochs: int, seed: int,
          on_epoch: EpochCallback | None = None, progress: str | None = None) -> TrainResult:
    """Train a fresh model; `on_epoch(epoch, metrics)` (epochs count from 1) returns True to stop early."""
    torch.manual_seed(seed)
    model = family.build(params, data.channels, data.image_size).to(data.device)
    optimizers = family.make_optimizers(model, params)
    order = torch.Generator().manual_seed(seed)  # batch order, on the CPU so it is the same everywhere
    result = TrainResult(model)
    start = time.perf_counter()
    bar = tqdm(range(1, epochs + 1), desc=progress, unit="epoch", leave=False,
               disable=True if progress is None else None)  # None: shown on a terminal only
    for epoch in bar:
        t0 = time.perf_counter()
        model.train()
        sums: dict[str, Tensor] = {}
        seen = 0
        for x in data.train_batches(int(params["batch_size"]), order):
            out = family.train_step(model, to_model_range(x, family.output_range), optimizers, params)
            for key, value in out.items():
                sums[key] = sums.get(key, 0) + value.float() * x.shape[0]
            seen += x.shape[0]
        metrics = {f"train_{key}": (value / seen).item() for key, value in sums.items()}  # one sync per epoch
        metrics.update({f"val_{k}": v for k, v in evaluate(family, model, data, "val", params).items()})
        bad = [key for key, value in metrics.items() if not math.isfinite(value)]
        if bad:
            raise Diverged(f"{bad[0]} became {metrics[bad[0]]} in epoch {epoch}")
        seconds = time.perf_counter() - t0
        metrics.update(epoch_seconds=seconds, train_images_per_s=seen / seconds)
        result.history.append(metrics)
        bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items() if k.startswith("val_")})
        if on_epoch is not None and on_epoch(epoch, metrics):
            result.stopped_at = epoch
            break
    bar.close()
    result.seconds = time.perf_counter() - start
    return result


def save_model(model: nn.Module, family: str, params: Mapping[str, Any], channels: int, image_size: int,
               folder: Path) -> None:
    """model.pt (a CPU state_dict) and model.json (what `load_model` needs to rebuild it)."""
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, folder / "model.pt")
    spec = {"family": family, "params": dict(params), "channels": channels, "image_size": image_size}
    (folder / "model.json").write_text(json.dumps(spec, indent=2))


def load_model(folder: Path) -> nn.Module:
    """Rebuild a trial's model from its artifacts; weights_only=True never runs pickled code."""
    spec = json.loads((folder / "model.json").read_text())
    model = get_family(spec["family"]).build(spec["params"], spec["channels"], spec["image_size"])
    model.load_state_dict(torch.load(folder / "model.pt", map_location="cpu", weights_only=True))
    return model.eval()
