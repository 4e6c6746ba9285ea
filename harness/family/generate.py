"""Images from a fixed z: the same latent codes for every round, trial and run, so their pictures and
scores compare. Each use names its own seed (grids 0, per-round scores 1, final scores 2), and z is
drawn on the CPU from its own generator, so it is the same on every device and leaves the global
random stream (dropout, batch noise) untouched."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from harness.data.datasets import from_model_range

GRID_SEED = 0  # the sample grids logged with every round and trial, the latent pictures


def fixed_z(n: int, latent_dim: int, seed: int, device: torch.device | str = "cpu") -> Tensor:
    """(n, latent_dim) ~ N(0, I) from `seed`."""
    return torch.randn(n, latent_dim, generator=torch.Generator().manual_seed(seed)).to(device)


@torch.no_grad()
def fixed_samples(model: nn.Module, output_range: tuple[float, float], n: int, seed: int, device: torch.device,
                  batch: int | None = None, keep: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """n images from fixed_z(seed), in eval mode, `batch` at a time: floats in [0, 1] on `device`, or
    what `keep` turns each batch into (e.g. uint8 on the CPU, so thousands of samples never sit on
    the device as floats)."""
    was_training = model.training
    model.eval()
    z = fixed_z(n, model.latent_dim, seed)
    step = batch or n
    keep = keep or (lambda images: images)
    images = torch.cat([keep(from_model_range(model.sample(z[s:s + step].to(device)).float(), output_range))
                        for s in range(0, n, step)])
    model.train(was_training)
    return images
