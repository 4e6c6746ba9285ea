"""The training fast path: each part switchable per study ([speed] table), each recorded with every run.

- data: the whole set on the training device, batches drawn by index (harness/data/datasets.py); a DataLoader
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
A trial's `FastPath` is passed to the code that uses it: the training loop calls `fast.prepare(model)`
and `fast.layout(batch)` and holds `fast.applied()` (cuDNN autotuning) around the trial; a family's
make_optimizers and train_step receive it and use `fast.adam(...)` (instead of torch.optim.Adam) and
`with fast.forward():` (around forward passes and losses).
"""

from __future__ import annotations

import inspect
import os
import shutil
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Mapping

import torch

from harness.core.errors import UserError

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

    @contextmanager
    def applied(self) -> Iterator[None]:
        """cuDNN autotuning as this path says, for the block (a trial); restored after it."""
        autotuning = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = autotuning

    def forward(self) -> Any:
        """Around a training step's forward passes and losses (not its backward): bf16 autocast when on."""
        return torch.autocast(self.device_type, dtype=torch.bfloat16) if self.autocast else nullcontext()

    def full_precision(self) -> Any:
        """Inside `forward()`, for what must stay fp32 (e.g. a gradient penalty's double backward)."""
        return torch.autocast(self.device_type, enabled=False) if self.autocast else nullcontext()

    def adam(self, params: Any, **kwargs: Any) -> torch.optim.Adam:
        """torch.optim.Adam, with the fused kernel when this path says so."""
        return torch.optim.Adam(params, **kwargs, **({"fused": True} if self.fused_adam else {}))

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """Memory layout and compilation of a freshly built model (compiled in place: same state_dict keys)."""
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.compile:
            for part in model.children():
                part.compile()
        return model

    def layout(self, images: torch.Tensor) -> torch.Tensor:
        """A batch in the memory layout the model was prepared in."""
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images


def at_least_fp32(tensor: torch.Tensor) -> torch.Tensor:
    """A loss input in at least fp32: an autocast (bf16) output as fp32; fp32, and the fp64 of the
    exactness tests, as they are."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


PLAIN = FastPath()  # fp32, default layout, torch.optim.Adam: the reports' loop


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
