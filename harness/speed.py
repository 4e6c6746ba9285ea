"""The training fast path: each part switchable per study ([speed] table), each recorded with every run.

- data: the whole set on the training device, batches drawn by index (harness/data.py); a DataLoader
  only for a set that does not fit.
- autocast: bf16 autocast of the training forward passes ("auto": on with CUDA, off on a CPU, where
  bf16 arithmetic is slower than fp32). Validation and the scores always run in fp32, so the numbers
  a study compares do not depend on the switch.
- channels_last: the NHWC memory layout convolutions run fastest in on GPUs ("auto": on with CUDA).
- fused_adam: Adam's fused multi-tensor kernel ("auto": wherever this torch build has it; on this
  project's 2-core CPU it ran as fast as, or up to 14% faster per step than, the default Adam).
- cudnn_benchmark: cuDNN tries its convolution algorithms once per shape and keeps the fastest
  ("auto": on with CUDA; meaningless on a CPU).
- compile: torch.compile of the model's parts (off unless asked: compilation takes tens of seconds,
  which short trials do not win back; `make bench` measures where it breaks even).
The training loop sets the path for the trial it runs (`active(fast)`), and everything else reads it
from there: family code through `forward()` (around forward passes and losses) and `adam(...)`
(instead of torch.optim.Adam), the loop through `prepare()` (the model) and `layout()` (each batch).
"""

from __future__ import annotations

import inspect
import os
import shutil
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Mapping

import torch

from harness.errors import UserError

CHOICES = {"autocast": ("auto", "bf16", "off"), "channels_last": ("auto", "on", "off"),
           "fused_adam": ("auto", "on", "off"), "cudnn_benchmark": ("auto", "on", "off"), "compile": ("off", "on")}


@dataclass(frozen=True)
class Speed:
    """The [speed] table of a study file, before the device is known."""

    autocast: str = "auto"
    channels_last: str = "auto"
    fused_adam: str = "auto"
    cudnn_benchmark: str = "auto"
    compile: str = "off"

    def resolve(self, device: torch.device) -> "FastPath":
        cuda = device.type == "cuda"
        if self.compile == "on" and not cuda and not has_c_compiler():
            raise UserError("[speed] compile = \"on\" needs a C compiler on a CPU and there is none (no `cc` on "
                            "PATH, CC unset): install gcc, or set compile = \"off\"")
        return FastPath(
            device_type=device.type,
            autocast=self.autocast == "bf16" or (self.autocast == "auto" and cuda),
            channels_last=self.channels_last == "on" or (self.channels_last == "auto" and cuda),
            fused_adam=self.fused_adam == "on" or (self.fused_adam == "auto" and fused_adam_available(device)),
            cudnn_benchmark=cuda and self.cudnn_benchmark != "off",
            compile=self.compile == "on")


@dataclass(frozen=True)
class FastPath:
    """The switches as they apply on one device."""

    device_type: str = "cpu"
    autocast: bool = False
    channels_last: bool = False
    fused_adam: bool = False
    cudnn_benchmark: bool = False
    compile: bool = False

    def params(self) -> dict[str, Any]:
        return {f"speed.{k}": v for k, v in asdict(self).items() if k != "device_type"}


PLAIN = FastPath()
_ACTIVE: ContextVar[FastPath] = ContextVar("fast_path", default=PLAIN)


def speed_settings(table: Mapping[str, Any], where: str) -> Speed:
    for key, value in table.items():
        if key not in CHOICES:
            raise UserError(f"{where}: unknown key {key!r}; valid: {', '.join(CHOICES)}")
        if value not in CHOICES[key]:
            raise UserError(f"{where}.{key}: {value!r}; valid: {', '.join(CHOICES[key])}")
    return Speed(**table)


def has_c_compiler() -> bool:
    """torch.compile on a CPU builds C++ (inductor): it needs the compiler CC names, or cc."""
    return shutil.which(os.environ.get("CC", "cc")) is not None


def fused_adam_available(device: torch.device) -> bool:
    if "fused" not in inspect.signature(torch.optim.Adam).parameters:
        return False
    try:
        torch.optim.Adam([torch.zeros(1, device=device, requires_grad=True)], fused=True)
        return True
    except (RuntimeError, ValueError):  # this build has no fused kernel for this device
        return False


@contextmanager
def active(fast: FastPath) -> Iterator[None]:
    token, autotuning = _ACTIVE.set(fast), torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = fast.cudnn_benchmark
    try:
        yield
    finally:
        _ACTIVE.reset(token)
        torch.backends.cudnn.benchmark = autotuning


def forward() -> Any:
    """Around a training step's forward passes and losses (not its backward): bf16 autocast when on."""
    fast = _ACTIVE.get()
    return torch.autocast(fast.device_type, dtype=torch.bfloat16) if fast.autocast else nullcontext()


def full_precision() -> Any:
    """Inside `forward()`, for what must stay fp32 (e.g. a gradient penalty's double backward)."""
    fast = _ACTIVE.get()
    return torch.autocast(fast.device_type, enabled=False) if fast.autocast else nullcontext()


def adam(params: Any, **kwargs: Any) -> torch.optim.Adam:
    """torch.optim.Adam, with the fused kernel when the fast path says so."""
    return torch.optim.Adam(params, **kwargs, **({"fused": True} if _ACTIVE.get().fused_adam else {}))


def prepare(model: torch.nn.Module) -> torch.nn.Module:
    """Memory layout and compilation of a freshly built model (compiled in place: same state_dict keys)."""
    fast = _ACTIVE.get()
    if fast.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if fast.compile:
        for part in model.children():
            part.compile()
    return model


def layout(images: torch.Tensor) -> torch.Tensor:
    """A batch in the memory layout the model was prepared in."""
    return images.contiguous(memory_format=torch.channels_last) if _ACTIVE.get().channels_last else images
