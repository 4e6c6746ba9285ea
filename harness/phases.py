"""Where a trial's time goes: seconds per phase (data, forward/backward, optimizer, logging, ...).

The training loop and the run logger mark their phases with `phase(name)`; outside `profiling()`
that is a no-op costing a context-variable read. Inside it, each phase's *exclusive* time is summed
(a nested phase's seconds are taken out of its parent's), and every torch optimizer step inside a phase
becomes the phase "optimizer" through torch's global step hooks, so a family's train_step needs no marks.
On CUDA each boundary synchronises the device: the split is then true, but the profiled run is
slower than an unprofiled one, so throughput is measured without it (harness/bench.py).
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from typing import Any, Iterable, Iterator, TypeVar

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

T = TypeVar("T")


class Phases:
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

    def optimizer_starts(self, *_: Any) -> None:
        """Optimizer steps inside a timed phase (a training step) only: not, say, a feature
        extractor's training while a study opens."""
        if self._stack:
            self.enter("optimizer")

    def optimizer_ends(self, *_: Any) -> None:
        if self._stack and self._stack[-1][0] == "optimizer":
            self.exit()


_ACTIVE: ContextVar[Phases | None] = ContextVar("phases", default=None)


@contextmanager
def _timed_phase(phases: Phases, name: str) -> Iterator[None]:
    phases.enter(name)
    try:
        yield
    finally:
        phases.exit()


def phase(name: str) -> Any:
    """Time the block as `name` when profiling; otherwise nothing."""
    phases = _ACTIVE.get()
    return nullcontext() if phases is None else _timed_phase(phases, name)


_END: Any = object()


def timed(items: Iterable[T], name: str) -> Iterator[T]:
    """The items of an iterable, the work of producing each timed as `name` (e.g. drawing batches)."""
    iterator = iter(items)
    while True:
        with phase(name):
            item = next(iterator, _END)
        if item is _END:
            return
        yield item  # type: ignore[misc]


@contextmanager
def profiling(device: torch.device) -> Iterator[Phases]:
    """Record phases (and optimizer steps) of everything run inside the block."""
    phases = Phases(device)
    token = _ACTIVE.set(phases)
    hooks = [register_optimizer_step_pre_hook(phases.optimizer_starts),
             register_optimizer_step_post_hook(phases.optimizer_ends)]
    try:
        yield phases
    finally:
        for hook in hooks:
            hook.remove()
        _ACTIVE.reset(token)
