"""Fused packs: several trials of one family trained in lockstep as one model (HFTA; harness/family/fused.py).

`train_pack` is `train` (harness/training/loop.py) for P members at once. Each member is a `TrialRun`,
built exactly as a lone trial is (its seed sets its initial weights; its batch order is its own),
with its own random generator for the noise its step draws, so on a CPU a member's losses match
the same trial trained alone up to fp32 rounding (tests/test_fusion.py). Each batch, the members
that still have steps to take in this round step together through the family's fused step; one
that has reached the round's target (a larger D:G ratio reaches it later) sits the batch out.
After each round every member is validated, scored and handed to its hooks on its own, so each
keeps its own history, per-step curve, checkpoints and pruning. A member that diverges fails alone
(its Diverged is its result) and one that is pruned stops; the rest go on. Wall-clock figures are the pack's:
members share every second of training, so per-member time is the pack's time.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Mapping, Sequence

import torch

from harness.core.progress import steps_shown
from harness.data.datasets import ImageSplits, to_model_range
from harness.family.contract import Family
from harness.family.fast_path import FastPath
from harness.family.fused import Stack, template_of
from harness.training.loop import (
    CHECK_EVERY,
    Diverged,
    LossTally,
    TrainConfig,
    TrainHooks,
    TrainResult,
    TrialRun,
)

PackKey = tuple[Any, ...]
# Trials per pack when PACK= is not given. 1 on a CPU: there a pack is slower than its members one
# after the other (make bench on this project's 2-core CPU, 32 px: a pack of 4 trained at 0.38x
# (GAN), 0.47x and 0.68x (conv VAE, two runs), 0.69x and 0.74x (DCGAN), 0.88x (ResNet-VAE) the
# images/s of one trial at a time). 8 on a GPU, where one small trial leaves most of the device
# idle (HFTA's case); that default is not measured here yet.
DEFAULT_PACK = {"cpu": 1, "cuda": 8}


def default_pack(device: torch.device) -> int:
    return DEFAULT_PACK.get(device.type, 1)


def pack_key(family: Family, params: Mapping[str, Any]) -> PackKey | None:
    """Trials with equal keys can share a pack: the family, every parameter that is not one of its
    fused scalars (shapes, batch size), and which of its switches are zero (the modules built).
    None: the family cannot be fused."""
    fused = family.fused
    if fused is None:
        return None
    return (family.name,) + tuple(sorted((k, repr(v)) for k, v in params.items() if k not in fused.scalars)) \
        + tuple(sorted((f"{k} > 0", float(v) > 0) for k, v in params.items() if k in fused.switches))


def why_not_packable(family: Family, members: Sequence[tuple[Mapping[str, Any], TrainConfig]]) -> str | None:
    """Why these trials cannot be one pack, in words; None when they can."""
    if family.fused is None:
        return f"family {family.name} cannot be fused"
    keys = {pack_key(family, params) for params, _ in members}
    if len(keys) > 1:
        return f"the trials differ in more than the fused scalars {sorted(family.fused.scalars)}"
    budgets = {(c.steps, c.rounds, c.fast, c.checkpoint_every, c.objective, c.minimize) for _, c in members}
    if len(budgets) > 1:
        return "the trials differ in budget, rounds, fast path, checkpoints or objective"
    if members[0][1].fast.compile or members[0][1].fast.channels_last:
        return "compiled or channels-last models train one at a time (see pack_fast)"
    return None


def pack_fast(fast: FastPath) -> FastPath:
    """The fast path a trial that may be packed trains on: without channels-last, since a stack of
    channels-last weights breaks the CPU convolution's backward ("slow_conv2d: grad_weight must be
    contiguous") and on a GPU it is unmeasured. Decided before the trial's run is started, so its
    recorded speed.* params are what it trained with."""
    return dataclasses.replace(fast, channels_last=False)


def new_member(family: Family, params: Mapping[str, Any], data: ImageSplits, config: TrainConfig,
               hooks: TrainHooks) -> TrialRun:
    """A pack member, built as train() builds a lone trial (its seed sets its initial weights), with
    the random generator its noise comes from."""
    torch.manual_seed(config.seed)
    run = TrialRun(family, params, data, config, hooks)
    run.rng = member_generator(config.seed, data.device)
    return run


def member_generator(seed: int, device: torch.device) -> torch.Generator:
    """The generator a member's noise comes from, in the state the global one would have alone:
    on a CPU the state after its model was built (call right after building it); on a GPU, the GPU
    generator that torch.manual_seed(seed) seeds (building on the CPU does not draw from it)."""
    if device.type == "cpu":
        return torch.Generator().set_state(torch.get_rng_state())
    return torch.Generator(device=device).manual_seed(seed)


def train_pack(family: Family, members: Sequence[tuple[Mapping[str, Any], TrainConfig, TrainHooks]],
               data: ImageSplits) -> list[TrainResult | Diverged]:
    """Train every member (params, config, hooks) to its config's budget together; per member, its
    TrainResult (stopped_at set when its hooks pruned it) or the Diverged that ended it."""
    why = why_not_packable(family, [(params, config) for params, config, _ in members])
    if why:
        raise ValueError(f"not one pack: {why}")
    runs = [new_member(family, params, data, config, hooks) for params, config, hooks in members]
    config = members[0][1]
    results: list[TrainResult | Diverged] = [run.result for run in runs]
    going = list(range(len(runs)))
    template = template_of(runs[0].model)  # the module code every Stack runs
    start = time.perf_counter()
    labels = [c.label for _, c, _ in members if c.label]
    shown_as = f"fused pack: {', '.join(labels)}" if labels else None
    with config.fast.applied(), steps_shown(shown_as, config.steps, lambda: min(run.counter.done for run in runs)) as shown:
        for round_ in range(1, config.rounds + 1):
            shown(f"round {round_}/{config.rounds}, {len(going)} of {len(runs)} going")
            t0 = time.perf_counter()
            tallies = {i: runs[i].new_tally() for i in going}  # each keeps its member's per-step curve
            for i in going:
                runs[i].begin_round()
            going = _train_round(family, template, runs, going, tallies, config.target(round_), results)
            train_seconds = time.perf_counter() - t0
            for i in list(going):
                run = runs[i]
                try:
                    metrics = tallies[i].means(run.model, run.counter, run.result.history)
                    stopped = run.end_round(round_, metrics, train_seconds, time.perf_counter() - train_seconds,
                                            tallies[i].curve())
                except Diverged as e:
                    results[i], stopped = e, True
                if stopped:
                    going.remove(i)
            if not going:
                break
    seconds = time.perf_counter() - start
    for result in results:
        if isinstance(result, TrainResult):
            result.seconds = seconds
    return results


def _train_round(family: Family, template: torch.nn.Module, runs: list[TrialRun], going: list[int],
                 tallies: dict[int, LossTally], target: int, results: list[TrainResult | Diverged]) -> list[int]:
    """Fused steps until every going member has `target` judged steps; the members still going."""
    batches = 0
    while True:
        stepping = [i for i in going if runs[i].counter.done < target]
        if not stepping:
            return going
        outputs, images = fused_batch(family, template, [runs[i] for i in stepping])
        batches += 1
        for i, out in zip(stepping, outputs):
            tallies[i].add(out, images, runs[i].counter.done)
        if batches % CHECK_EVERY == 0:
            for i in stepping:
                try:
                    tallies[i].check(runs[i].counter, runs[i].result.history)
                except Diverged as e:  # this member fails alone; the others go on
                    results[i] = e
                    going = [j for j in going if j != i]


def fused_batch(family: Family, template: torch.nn.Module,
                runs: Sequence[TrialRun]) -> tuple[list[dict[str, torch.Tensor]], int]:
    """One fused step of these members, each on its own next batch and its own noise: their outputs,
    and the images each member's batch held."""
    device, fast = runs[0].data.device, runs[0].config.fast
    x = torch.stack([to_model_range(next(run.stream), family.output_range) for run in runs])  # (P, B, C, S, S)
    noise = torch.stack([torch.randn(x.shape[1], run.model.latent_dim, generator=run.rng, device=device)
                         for run in runs])  # (P, B, Z)
    progress = [run.counter.done / run.config.steps for run in runs]
    stack = Stack(template, [run.model for run in runs])
    outputs = family.fused.step(stack, x, noise, [run.params for run in runs], [run.optimizers for run in runs], fast,
                                progress)
    stack.write_back()
    return outputs, x.shape[1]
