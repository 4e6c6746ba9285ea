"""What a study costs in arithmetic, counted: so a GPU user knows the order of the full scale's cost
before renting a GPU, and a CPU user why the full scale is not for a laptop.

Counted by torch.utils.flop_counter's formulas (matrix multiplications and convolutions, forward
and backward; elementwise work and the optimizer update are left out, a few per cent for these
nets) in a dispatch mode of our own (FlopCounterMode's module tracker breaks on WGAN-GP's
double backward), on the CPU, since the count does not depend on the device:

- a step: one step of the study's judged network (budget_optimizer) by the family's own train_step,
  everything else it trains on the way included (a GAN's k discriminator steps, WGAN-GP's gradient
  penalty), on one batch at the study's image size;
- a trial: its steps, plus the Inception-v3 forward passes of its scores (each round's round_samples
  and the final_samples generated images);
- a study: its trials (every grid point of a grid study; a sampled study's trials at each family's
  reported configuration, which is trial 0 and what the others are drawn around), plus what a
  session computes once: the statistics of the reference and hold-out images and of the validation
  panel's sets, final_samples images each.

Seconds follow only from a throughput a device sustains, which is not counted here: `hours_at`
converts at a rate the caller states, `make workload` at the rates it measures.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import optuna
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry
from torchvision.models import inception_v3

from harness.data.datasets import load_dataset
from harness.family import fast_path as speed
from harness.family.contract import Family
from harness.family.registry import get_family
from harness.family.space import reported_point, suggest
from harness.scoring.panel import SET_COUNT
from harness.scoring.real_images import GPU_N
from harness.study.studyfile import StudySpec, load_study, study_names
from harness.training.loop import StepCounter

INCEPTION_SIZE = 299  # the FID network's input side: every scored image is resized to it
# Image sets a session scores once: the reference images, and the panel's (harness/scoring/panel.py).
SESSION_SETS = 1 + SET_COUNT


class FlopCount(TorchDispatchMode):
    """Floating-point operations of the operators run inside it, by torch's own formulas (they read
    shapes only, so meta tensors count as real ones do)."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **(kwargs or {}), out_val=out)
        return out


def count_step(family: Family, params: Mapping[str, Any], channels: int, size: int) -> tuple[int, int]:
    """(floating-point operations, train_step calls) of one step of the family's judged network at
    these parameters, counted on the meta device: shapes only, no arithmetic, so a full-scale ResNet
    step counts in milliseconds."""
    torch.manual_seed(0)
    model = family.build(params, channels, size).to("meta")
    optimizers = family.make_optimizers(model, params, speed.PLAIN)
    counter = StepCounter(optimizers, family.budget_optimizer)
    x = torch.empty(int(params["batch_size"]), channels, size, size, device="meta")
    calls = 0
    with FlopCount() as flops:
        while counter.done == 0:  # a GAN's discriminator turns first, then the generator's step
            family.train_step(model, x, optimizers, params, speed.PLAIN, 0.0)
            calls += 1
    return flops.total, calls


def step_flops(family: Family, params: Mapping[str, Any], channels: int, size: int) -> int:
    """Floating-point operations of one step of the judged network, all it trains on the way included."""
    return count_step(family, params, channels, size)[0]


def batch_flops(family: Family, params: Mapping[str, Any], channels: int, size: int) -> float:
    """Floating-point operations per batch the family trains on, averaged over its turns: what one
    of the bench's images/s counts, times the batch size (a GAN with k = 5 spends 6 batches on a step)."""
    flops, calls = count_step(family, params, channels, size)
    return flops / calls


def inception_flops_per_image() -> int:
    """One forward pass of Inception-v3 at 299 x 299 (torchvision's topology, no weights needed to count)."""
    net = inception_v3(weights=None, aux_logits=False, init_weights=False).eval().to("meta")
    with FlopCount() as flops, torch.no_grad():
        net(torch.empty(1, 3, INCEPTION_SIZE, INCEPTION_SIZE, device="meta"))
    return flops.total


def trial_configurations(spec: StudySpec) -> list[tuple[str, dict[str, Any]]]:
    """(family, params) of every trial the study runs, as far as they are known before it runs: each
    grid point, or each family's reported configuration for all of its trials."""
    configurations = []
    for name in spec.families:
        family, space = get_family(name), spec.spaces[name]
        if spec.grid is not None:
            points = [dict(zip(spec.grid, values)) for values in itertools.product(*spec.grid.values())]
        else:
            points = [reported_point(space, family.reported_config)[0]] * spec.trials
        configurations += [(name, family.defaults | suggest(optuna.trial.FixedTrial(p), space)) for p in points]
    return configurations


@dataclass(frozen=True)
class Workload:
    """A study's counted arithmetic (floating-point operations) and where it goes."""

    study: str
    trials: int
    training: float  # all trials' training steps
    scoring: float  # all trials' Inception passes (rounds and final)
    session: float  # reference, hold-out and panel statistics, once per study
    images_scored: int
    per_family_step: Mapping[str, float]  # the reference (or first grid point) step of each family
    training_by_family: Mapping[str, float]  # the training part, per family

    @property
    def total(self) -> float:
        return self.training + self.scoring + self.session

    def hours_at(self, flops_per_second: float) -> float:
        return self.total / flops_per_second / 3600


def study_workload(spec: StudySpec, channels: int, size: int, inception: int | None = None) -> Workload:
    """The study's workload on a GPU (its default sample counts there); `inception`: FLOPs per scored image."""
    inception = inception_flops_per_image() if inception is None else inception
    final = spec.scores.final_samples or GPU_N
    scored_per_trial = spec.rounds * spec.scores.round_samples + final
    steps: dict[str, float] = {}
    per_family: dict[str, float] = {}
    by_family: dict[str, float] = {}
    configurations = trial_configurations(spec)
    for name, params in configurations:
        key = f"{name} {sorted(params.items())}"
        if key not in steps:
            steps[key] = float(step_flops(get_family(name), params, channels, size))
        per_family.setdefault(name, steps[key])
        by_family[name] = by_family.get(name, 0.0) + spec.steps * steps[key]
    scored = len(configurations) * scored_per_trial
    return Workload(spec.study_name, len(configurations), sum(by_family.values()), float(scored * inception),
                    float(SESSION_SETS * final * inception), scored, per_family, by_family)


def order_of(hours: float) -> str:
    return f"{hours * 60:.0f} min" if hours < 1 else f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.0f} days"


def bench_workload(training: list[dict[str, Any]], cache_dir: Path,
                   studies: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Each shipped study's full-scale workload, and its training time at the 64 px rates in `training`."""
    flops_per_second: dict[str, float] = {}
    data = load_dataset("synthfaces", {"n": 64, "size": 64}, cache_dir)
    for r in training:
        if r["size"] == 64 and "error" not in r:
            family = get_family(r["family"])
            params = family.defaults | {"batch_size": r["batch_size"]}
            per_image = batch_flops(family, params, data.channels, 64) / r["batch_size"]  # as images/s counts them
            flops_per_second[r["family"]] = per_image * r["fast_images_per_s"]
    inception = inception_flops_per_image()
    rows = []
    for name in studies or study_names():
        spec = load_study(name, "full")
        size = int(spec.dataset_options.get("size", 64))
        w = study_workload(spec, data.channels, size, inception)
        training_seconds = (sum(v / flops_per_second[f] for f, v in w.training_by_family.items())
                            if set(w.training_by_family) <= set(flops_per_second) else None)
        rows.append({"benchmark": "workload", "study": w.study, "trials": w.trials, "image_size": size,
                     "total_flops": w.total, "training_flops": w.training, "scoring_flops": w.scoring,
                     "session_flops": w.session,
                     "images_scored": w.images_scored, "inception_flops_per_image": inception,
                     "step_flops": dict(w.per_family_step), "training_seconds_here": training_seconds,
                     "family_flops_per_second_here": {f: flops_per_second.get(f) for f in spec.families}})
    return rows


def workload_lines(rows: list[dict[str, Any]], device_name: str) -> list[str]:
    lines = [f"the full scale (SCALE=full) of each shipped study, counted (matmuls and convolutions, forward and "
             f"backward; Inception-v3 {rows[0]['inception_flops_per_image'] / 1e9:.1f} GFLOP per scored image), "
             f"and its training time on {device_name} at the rates measured above at 64 px",
             f"{'study':<32} {'trials':>6} {'PFLOP':>8} {'train':>8} {'scores':>7} {'session':>7} {'training here':>14}"]
    for r in rows:
        here = order_of(r["training_seconds_here"] / 3600) if r["training_seconds_here"] else "n/a"
        lines.append(f"{r['study']:<32} {r['trials']:>6} {r['total_flops'] / 1e15:>8.1f} {r['training_flops'] / 1e15:>8.1f} "
                     f"{r['scoring_flops'] / 1e15:>7.1f} {r['session_flops'] / 1e15:>7.1f} {here:>14}")
    return lines
