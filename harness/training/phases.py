"""Where a trial's time goes: seconds per phase (data, forward/backward, optimizer, logging, ...).

The training loop and the trial runner mark their phases with `phases.phase(name)` on the profiler
they are given: `OFF` (the default, a no-op) or a `PhaseTimes` from `profiling(device)`, which sums each
phase's *exclusive* time (a nested phase's seconds are taken out of its parent's) and, through
torch's global optimizer-step hooks while the block runs, counts every optimizer step inside a phase
as the phase "optimizer", so a family's train_step needs no marks. On CUDA each boundary
synchronises the device: the split is then true, but the profiled run is slower than an unprofiled
one, so throughput is measured without it (harness/bench/speeds.py).
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from typing import Any, Iterable, Iterator, Protocol, TypeVar

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

T = TypeVar("T")


class Profiler(Protocol):
    def phase(self, name: str) -> Any: ...

    def timed(self, items: Iterable[T], name: str) -> Iterable[T]: ...


class Off:
    """The profiler that measures nothing."""

    def phase(self, name: str) -> Any:
        return nullcontext()

    def timed(self, items: Iterable[T], name: str) -> Iterable[T]:
        return items


OFF = Off()


class PhaseTimes:
    """Exclusive seconds per phase name, and how often each phase ran."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[list[Any]] = []  # [name, start, seconds of nested phases]

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def enter(self, name: str) -> None:
        self._stack.append([name, self._now(), 0.0])

    def exit(self) -> None:
        name, start, nested = self._stack.pop()
        elapsed = self._now() - start
        self.seconds[name] += elapsed - nested
        self.calls[name] += 1
        if self._stack:
            self._stack[-1][2] += elapsed

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as `name`."""
        self.enter(name)
        try:
            yield
        finally:
            self.exit()

    def timed(self, items: Iterable[T], name: str) -> Iterator[T]:
        """The items of an iterable, the work of producing each timed as `name` (e.g. drawing batches)."""
        iterator = iter(items)
        while True:
            with self.phase(name):
                item = next(iterator, _END)
            if item is _END:
                return
            yield item  # type: ignore[misc]

    def optimizer_starts(self, *_: Any) -> None:
        """Optimizer steps inside a timed phase (a training step) only: not, say, a feature
        extractor's training while a study opens."""
        if self._stack:
            self.enter("optimizer")

    def optimizer_ends(self, *_: Any) -> None:
        if self._stack and self._stack[-1][0] == "optimizer":
            self.exit()


_END: Any = object()


@contextmanager
def profiling(device: torch.device) -> Iterator[PhaseTimes]:
    """A profiler to hand to the code run inside the block, counting optimizer steps while it runs."""
    phases = PhaseTimes(device)
    hooks = [register_optimizer_step_pre_hook(phases.optimizer_starts),
             register_optimizer_step_post_hook(phases.optimizer_ends)]
    try:
        yield phases
    finally:
        for hook in hooks:
            hook.remove()
