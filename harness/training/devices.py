"""Which device a study trains on."""

from __future__ import annotations

import torch

from harness.core.errors import UserError


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when there is one; an explicit device that is absent is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"DEVICE={name} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0 or (device.index or 0) >= count:
            raise UserError(f"DEVICE={name} but {count} CUDA device(s) are visible; use DEVICE=cpu or auto")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"DEVICE={name} but MPS is not available here; use DEVICE=cpu or auto")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"DEVICE={name} is not supported; use auto, cpu, cuda, cuda:N or mps")
    return device
