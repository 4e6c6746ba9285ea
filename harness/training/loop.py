"""The training loop every family shares: a budget of optimizer steps, cut into evaluation rounds.

The budget is steps of the network being judged (the family's `budget_optimizer`: the generator of an
adversarial family, whose discriminator steps come on top and are logged; the whole model of an
autoencoder), so a study compares configurations that got the same number of updates, whatever
their batch size or D:G ratio. The steps are cut into `rounds` evenly spaced evaluations: after
each, validation losses, per-round sample scores, cost (steps, images seen, epochs, wall-clock) and
the pruner's decision. Batches run on epoch after epoch (each a fresh shuffle); epochs are a
derived figure in the logs.

Per-step losses stay on the device and are summed there; they are read once per round, and a
running "all finite" flag is read every CHECK_EVERY steps, so the loop rarely waits on the device.
The losses the family declares as curves are also kept every `curve_step` judged steps (about
keys.CURVE_POINTS points a trial, each the mean since the previous point or the round's start), read
with the round's sums and handed to `on_curve` once a round.
A loss that becomes NaN or infinite or passes LOSS_BOUND, or a parameter that becomes NaN or
infinite, stops the trial within those steps (`Diverged`, carrying the history of the good rounds).
With the same seed on the CPU, a trial reproduces its losses exactly: the seed sets the initial
weights, the batch order and the noise. A checkpoint holds everything that decides the rest of the
run (weights, optimiser states, every random generator, the position in the batch order, the step
counts, the history, the best score), so a resumed run on the CPU ends with the same numbers as
one that was never stopped.
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

from harness.core import keys
from harness.core.progress import steps_shown
from harness.data.datasets import ImageSplits, to_model_range
from harness.family.contract import Family
from harness.family.fast_path import PLAIN, FastPath
from harness.family.generate import GRID_SEED, fixed_samples
from harness.family.registry import get_family
from harness.scoring.pixel_mmd import median_bandwidth, pixel_mmd
from harness.training.phases import OFF, Profiler

RoundCallback = Callable[[int, dict[str, float], nn.Module], bool]  # (round from 1, metrics, model) -> stop now (pruned)
RoundScorer = Callable[[Family, nn.Module], dict[str, float]]  # sample scores after each round
Checkpoint = dict[str, Any]  # see TrialRun.checkpoint: model, optimizers, rng, round, steps, stream, history, curve, best
CurvePoint = dict[str, float]  # {keys.STEPS: judged step, per_step/train_<loss>: mean since the previous point}
CHECK_EVERY = 25  # steps between reads of the "all losses finite" flag
STALL_BATCHES = 1_000_000  # batches without a step of the budget optimizer: a family's bug (the threshold
# schedule's longest turn is max_consecutive, at most 100,000)
N_SCORE_SAMPLES = 512  # fixed-z samples scored against as many validation images each round


class Diverged(RuntimeError):
    """A loss or a parameter became NaN or infinite, or a loss passed LOSS_BOUND: the trial cannot go on."""

    def __init__(self, message: str, history: list[dict[str, float]]):
        super().__init__(message)
        self.history = history  # the rounds before it went wrong


@dataclass(frozen=True)
class TrainConfig:
    """How one configuration is trained, apart from its hyperparameters."""

    steps: int  # the budget: optimizer steps of the family's budget_optimizer
    seed: int  # initial weights, batch order and noise
    rounds: int = 1  # evaluations, evenly spaced in steps (the last at `steps`)
    checkpoint_every: int = 0  # rounds between checkpoints (0: none)
    objective: str | None = None  # the metric whose best value so far a checkpoint keeps
    minimize: bool = True
    fast: FastPath = PLAIN  # the fast path (harness/family/fast_path.py)
    label: str | None = None  # the progress bar's; None: no bar
    phases: Profiler = OFF  # where the time goes (harness/training/phases.py)
    curve_every: int = 0  # judged steps between points of the per-step curves (0: keys.curve_every(steps))

    def __post_init__(self) -> None:
        if not 1 <= self.rounds <= self.steps:
            raise ValueError(f"rounds must be 1 .. steps ({self.steps}), got {self.rounds}")

    def target(self, round_: int) -> int:
        """The judged steps done at the end of a round (counted from 1)."""
        return round(self.steps * round_ / self.rounds)

    @property
    def curve_step(self) -> int:
        """Judged steps between two points of the per-step curves."""
        return self.curve_every or keys.curve_every(self.steps)


@dataclass(frozen=True)
class TrainHooks:
    """What the caller does between rounds."""

    on_round: RoundCallback | None = None  # (round from 1, metrics with their steps, model) -> True to stop early
    save_checkpoint: Callable[[Checkpoint], None] | None = None  # every checkpoint_every rounds
    scorers: Sequence[RoundScorer] | None = None  # sample scores after every round (None: pixel MMD only)
    on_curve: Callable[[list[CurvePoint]], None] | None = None  # the round's per-step points, once a round


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)  # one dict of metrics per round
    curve: list[CurvePoint] = field(default_factory=list)  # the per-step points, every config.curve_step steps
    seconds: float = 0.0
    stopped_at: int | None = None  # the judged steps after which on_round asked to stop


class StepCounter:
    """Optimizer steps per optimizer, counted by a hook on each (so no family reports them, and a
    step the threshold schedule takes is counted like any other)."""

    def __init__(self, optimizers: Mapping[str, torch.optim.Optimizer], judged: str, counts: Mapping[str, int] | None = None):
        if judged not in optimizers:
            raise ValueError(f"budget optimizer {judged!r} is not one of the family's optimizers {list(optimizers)}")
        self.judged = judged
        self.counts = {name: int((counts or {}).get(name, 0)) for name in optimizers}
        for name, optimizer in optimizers.items():
            optimizer.register_step_post_hook(lambda *_, name=name: self._count(name))

    def _count(self, name: str) -> None:
        self.counts[name] += 1

    @property
    def done(self) -> int:
        """Steps of the judged network so far."""
        return self.counts[self.judged]


class BatchStream:
    """Shuffled training batches, epoch after epoch. Its position (the order generator's state where
    the current epoch began and the batches drawn in it) goes into a checkpoint, so a resumed run
    draws the very batches an unstopped one would have."""

    def __init__(self, data: ImageSplits, batch_size: int, order: torch.Generator, position: Mapping[str, Any] | None = None):
        self.data, self.batch_size, self.order = data, batch_size, order
        self.epochs, self.images, self.drawn = 0, 0, 0
        self._batches: Iterable[Tensor] | None = None
        if position is not None:
            order.set_state(position["epoch_start"])
            self.epochs, self.images = int(position["epochs"]), int(position["images"])
            self._begin()
            for _ in range(int(position["drawn"])):
                next(self._batches)
                self.drawn += 1

    def _begin(self) -> None:
        self._epoch_start = self.order.get_state()  # train_batches draws its permutation on the first next()
        self._batches, self.drawn = iter(self.data.train_batches(self.batch_size, self.order)), 0

    def __iter__(self) -> "BatchStream":
        return self

    def __next__(self) -> Tensor:
        while True:
            if self._batches is None:
                self._begin()
            x = next(self._batches, None)
            if x is not None:
                self.drawn += 1
                self.images += x.shape[0]
                return x
            self._batches, self.epochs = None, self.epochs + 1

    def position(self) -> dict[str, Any]:
        if self._batches is None:
            self._begin()
        return {"epoch_start": self._epoch_start.clone(), "drawn": self.drawn, "epochs": self.epochs, "images": self.images}


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
    """The n images of a sample grid: the same z for every round and trial, so grids compare."""
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


class TrialRun:
    """One configuration in training: its model, optimizers, batch stream, step counts and history,
    and what closes a round (validation, scores, the hooks, checkpoints). `train` drives one; a fused
    pack (harness/training/packs.py) drives several in lockstep and gives each its own random generator `rng`
    (None: the global one, as a lone trial uses)."""

    def __init__(self, family: Family, params: Mapping[str, Any], data: ImageSplits, config: TrainConfig,
                 hooks: TrainHooks, resume: Checkpoint | None = None):
        self.family, self.params, self.data, self.config, self.hooks = family, params, data, config, hooks
        self.rng: torch.Generator | None = None
        self.scorers = [SampleScorer(data)] if hooks.scorers is None else hooks.scorers
        self.model = config.fast.prepare(family.build(params, data.channels, data.image_size).to(data.device))
        self.optimizers = family.make_optimizers(self.model, params, config.fast)
        order = torch.Generator().manual_seed(config.seed)  # batch order, on the CPU so it is the same everywhere
        self.result = TrainResult(self.model)
        self.first, self.best, self.wall, position, counts = 1, None, 0.0, None, None
        if resume is not None:
            self.first, self.best = _restore(resume, self.model, self.optimizers, data.device), resume.get("best")
            self.result.history = list(resume["history"])
            self.result.curve = list(resume.get("curve", []))  # checkpoints from before the curves: none
            position, counts = resume["stream"], resume["steps"]
            self.wall = self.result.history[-1][keys.WALL_SECONDS] if self.result.history else 0.0
        self.counter = StepCounter(self.optimizers, family.budget_optimizer, counts)
        self.stream = BatchStream(data, int(params["batch_size"]), order, position)
        self.steps_before, self.images_before = 0, 0

    def begin_round(self) -> None:
        self.steps_before, self.images_before = self.counter.done, self.stream.images
        self.model.train()

    def new_tally(self) -> LossTally:
        """A round's tally, keeping the family's declared curves every config.curve_step judged steps."""
        return LossTally(self.data.device, self.family.curves, self.config.curve_step, self.counter.done)

    def end_round(self, round_: int, metrics: dict[str, float], train_seconds: float, round_start: float,
                  curve: Sequence[CurvePoint] = ()) -> bool:
        """The round's per-step points to on_curve; validation, round scores, cost figures and the hooks
        after a round's training; True: stop (pruned). `round_start` is when the round's training
        began (perf_counter)."""
        config, phases, data, counter, stream = self.config, self.config.phases, self.data, self.counter, self.stream
        self.result.curve.extend(curve)
        if curve and self.hooks.on_curve is not None:  # first: a round that fails validation keeps its curve
            with phases.phase("tracking"):
                self.hooks.on_curve(list(curve))
        with phases.phase("validation"):
            metrics.update({keys.split_key("val", k): v
                            for k, v in evaluate(self.family, self.model, data, "val", self.params).items()})
        with phases.phase("round scores"):
            for scorer in self.scorers:
                metrics.update(scorer(self.family, self.model))
        bad = _first_bad(metrics)
        if bad:
            raise Diverged(f"step {counter.done}: {bad}", self.result.history)
        seconds = time.perf_counter() - round_start
        self.wall += seconds
        metrics.update({keys.steps_key(name): float(n) for name, n in counter.counts.items()})
        metrics.update({keys.STEPS: float(counter.done), keys.IMAGES_SEEN: float(stream.images),
                        keys.EPOCHS: stream.images / len(data.train), keys.ROUND_SECONDS: seconds,
                        keys.WALL_SECONDS: self.wall,
                        keys.SECONDS_PER_STEP: train_seconds / max(1, counter.done - self.steps_before),
                        keys.IMAGES_PER_SECOND: (stream.images - self.images_before) / train_seconds})
        self.result.history.append(metrics)
        if config.objective in metrics and (self.best is None or (metrics[config.objective] < self.best) == config.minimize):
            self.best = metrics[config.objective]
        if self.hooks.on_round is not None and self.hooks.on_round(round_, metrics, self.model):
            self.result.stopped_at = counter.done
            return True
        if self.hooks.save_checkpoint is not None and config.checkpoint_every and round_ % config.checkpoint_every == 0 \
                and round_ < config.rounds:
            with phases.phase("checkpoint"):
                self.hooks.save_checkpoint(self.checkpoint(round_))
        return False

    def checkpoint(self, round_: int) -> Checkpoint:
        """A snapshot after `round_`: copies, since state_dict() hands out the live tensors the next
        steps change in place. The random state is the global generators' or, for a member of a fused
        pack, its own `rng`'s."""
        return {"model": copy.deepcopy({k: v.detach().cpu() if isinstance(v, Tensor) else v
                                        for k, v in self.model.state_dict().items()}),
                "optimizers": {name: copy.deepcopy(opt.state_dict()) for name, opt in self.optimizers.items()},
                "rng": _rng_state(self.data.device, self.rng),
                "round": round_, "steps": dict(self.counter.counts), "stream": self.stream.position(),
                "history": list(self.result.history), "curve": list(self.result.curve), "best": self.best}

    @property
    def learner(self) -> Learner:
        return Learner(self.family, self.model, self.optimizers, self.counter, self.params)


def train(family: Family, params: Mapping[str, Any], data: ImageSplits, config: TrainConfig,
          hooks: TrainHooks = TrainHooks(), resume: Checkpoint | None = None) -> TrainResult:
    """Train a fresh model, or go on from `resume`, until config.steps steps of the judged network."""
    fast, phases = config.fast, config.phases
    torch.manual_seed(config.seed)
    run = TrialRun(family, params, data, config, hooks, resume)
    start = time.perf_counter()
    with fast.applied(), steps_shown(config.label, config.steps, lambda: run.counter.done) as shown:
        for round_ in range(run.first, config.rounds + 1):
            t0 = time.perf_counter()
            run.begin_round()
            tally = run.new_tally()
            metrics = train_round(run.learner, run.stream, config.target(round_), config.steps, fast, phases,
                                  run.result.history, tally)
            with phases.phase("loss bookkeeping"):
                curve = tally.curve()
            stop = run.end_round(round_, metrics, time.perf_counter() - t0, t0, curve)
            with phases.phase("progress bar"):
                shown(f"round {round_}/{config.rounds}, " + ", ".join(
                    f"{k}={v:.4g}" for k, v in metrics.items() if keys.in_split(k, "val")))
            if stop:
                break
    run.result.seconds = time.perf_counter() - start
    return run.result


class LossTally:
    """A round's training outputs, summed on the device and read once at its end, and the running
    "every loss finite and within LOSS_BOUND" flag, read every CHECK_EVERY steps. With `curves` and
    `every`, it also keeps a point of those outputs each time the judged steps pass a multiple of
    `every` (counted from `step`, the judged steps at the round's start): the image-weighted mean
    since the previous point, on the device until `curve` reads them all at once."""

    def __init__(self, device: torch.device, curves: Sequence[str] = (), every: int = 0, step: int = 0):
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}
        self.finite = torch.ones((), dtype=torch.bool, device=device)
        self.last: Mapping[str, Tensor] = {}
        self.curves, self.every, self.marked = tuple(curves), every, step
        self.window: dict[str, tuple[Tensor, int]] = {}  # curve -> (weighted sum, images) since the last point
        self.points: list[tuple[int, dict[str, Tensor]]] = []

    def add(self, out: Mapping[str, Tensor], images: int, step: int | None = None) -> None:
        """One batch's outputs; `step`: the judged steps after it (None: keep no curve points)."""
        for key, value in out.items():  # a key may come from some steps only (D or G steps)
            weighted = value.float() * images
            self.sums[key] = self.sums.get(key, 0) + weighted
            self.counts[key] = self.counts.get(key, 0) + images
            self.finite &= (value.float().abs() <= LOSS_BOUND).all()  # False for NaN and inf too
            if key in self.curves and self.every:
                total, seen = self.window.get(key, (0, 0))
                self.window[key] = (total + weighted, seen + images)
        self.last = out
        if self.every and step is not None and step // self.every > self.marked // self.every:
            if self.window:
                self.points.append((step, {key: total / seen for key, (total, seen) in self.window.items()}))
            self.window, self.marked = {}, step

    def curve(self) -> list[CurvePoint]:
        """The points kept so far (one read of the device), keyed as they are logged."""
        if not self.points:
            return []
        values = iter(torch.stack([v for _, point in self.points for v in point.values()]).tolist())
        return [{keys.STEPS: float(step),
                 **{keys.curve_key(keys.split_key("train", key)): next(values) for key in point}}
                for step, point in self.points]

    def check(self, counter: StepCounter, history: Sequence[dict[str, float]]) -> None:
        """Diverged if a loss so far was NaN, infinite or past LOSS_BOUND (one read of the device)."""
        if not self.finite.item():
            raise Diverged(f"step {counter.done}: " + (
                _first_diverged({k: _extreme(v) for k, v in self.last.items()})
                or f"a training loss became NaN or infinite or passed {LOSS_BOUND:g}"), list(history))

    def means(self, model: nn.Module, counter: StepCounter, history: Sequence[dict[str, float]]) -> dict[str, float]:
        """The image-weighted mean of every output as train_<key> (one read); Diverged if one of them,
        or a parameter, is not finite."""
        metrics = {keys.split_key("train", key): (value / self.counts[key]).item() for key, value in self.sums.items()}
        bad = _first_diverged(metrics) or next((f"parameter {name} became NaN or infinite" for name, p in
                                                model.named_parameters() if not torch.isfinite(p).all()), None)
        if bad:
            raise Diverged(f"step {counter.done}: {bad}", list(history))
        return metrics


@dataclass(frozen=True)
class Learner:
    """What train_step changes and reads: a family's model, its optimizers, their step counts and
    the hyperparameters."""

    family: Family
    model: nn.Module
    optimizers: Mapping[str, torch.optim.Optimizer]
    counter: StepCounter
    params: Mapping[str, Any]


def train_round(learner: Learner, batches: Iterable[Tensor], target: int, budget: int, fast: FastPath = PLAIN,
                phases: Profiler = OFF, history: Sequence[dict[str, float]] = (),
                tally: LossTally | None = None) -> dict[str, float]:
    """train_step on batches until the judged network has taken `target` steps: the image-weighted
    mean of every output as train_<key> (read from the device once, at the end). Each step is told
    its progress, the fraction of `budget` done before it. Diverged carries `history`.
    `tally`: one that keeps curve points (TrialRun.new_tally), read by its caller; None: a plain one."""
    family, model, optimizers, counter, params = learner.family, learner.model, learner.optimizers, learner.counter, learner.params
    tally = LossTally(next(model.parameters()).device) if tally is None else tally
    inputs = phases.timed((fast.layout(to_model_range(x, family.output_range)) for x in batches), "data")
    stalled_since, done_before = 0, counter.done
    for step, x in enumerate(inputs, start=1):
        with phases.phase("forward/backward"):  # the optimizer step inside is its own phase
            out = family.train_step(model, x, optimizers, params, fast, counter.done / budget)
        with phases.phase("loss bookkeeping"):
            tally.add(out, x.shape[0], counter.done)
            if step % CHECK_EVERY == 0:
                tally.check(counter, history)
        if counter.done >= target:
            break
        if step - stalled_since >= STALL_BATCHES:
            raise RuntimeError(f"family {family.name}: {STALL_BATCHES} batches without a step of its budget optimizer "
                               f"{counter.judged!r}; its train_step must step that optimizer (registry: budget_optimizer)")
        if counter.done > done_before:
            stalled_since, done_before = step, counter.done
    with phases.phase("loss bookkeeping"):
        return tally.means(model, counter, history)


def _rng_state(device: torch.device, rng: torch.Generator | None) -> dict[str, Tensor | None]:
    """What `_restore` puts back into the global generators: a pack member's own generator stands in
    for the one its device's noise comes from (the CPU's, or the GPU's)."""
    cuda = device.type == "cuda"
    if rng is None:
        return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if cuda else None}
    return {"torch": rng.get_state() if not cuda else torch.get_rng_state(), "cuda": rng.get_state() if cuda else None}


def _restore(state: Checkpoint, model: nn.Module, optimizers: Mapping[str, torch.optim.Optimizer],
             device: torch.device) -> int:
    """Put a checkpoint back (the batch order and the step counts are the caller's); the round to go on with."""
    model.load_state_dict(state["model"])
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(state["optimizers"][name])
    torch.set_rng_state(state["rng"]["torch"])
    if device.type == "cuda" and state["rng"]["cuda"] is not None:
        torch.cuda.set_rng_state(state["rng"]["cuda"], device)
    return int(state["round"]) + 1


def save_model(model: nn.Module, family: str, params: Mapping[str, Any], channels: int, image_size: int,
               folder: Path) -> None:
    """model.pt (a CPU state_dict) and model.json (what `load_model` needs to rebuild it)."""
    state = {k: v.detach().cpu() if isinstance(v, Tensor) else v for k, v in model.state_dict().items()}
    torch.save(state, folder / keys.Artifact.MODEL)
    spec = {"family": family, "params": dict(params), "channels": channels, "image_size": image_size}
    (folder / keys.Artifact.MODEL_CONFIG).write_text(json.dumps(spec, indent=2))


def load_model(folder: Path) -> nn.Module:
    """Rebuild a trial's model from its artifacts; weights_only=True never runs pickled code."""
    spec = json.loads((folder / keys.Artifact.MODEL_CONFIG).read_text())
    model = get_family(spec["family"]).build(spec["params"], spec["channels"], spec["image_size"])
    model.load_state_dict(torch.load(folder / keys.Artifact.MODEL, map_location="cpu", weights_only=True))
    return model.eval()
