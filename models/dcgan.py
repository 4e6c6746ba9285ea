"""DCGAN (Radford et al. 2016) as the reports applied it (seed report 003, the PyTorch tutorial).

Strided (transposed) convolutions instead of pooling, no fully connected hidden layers, BatchNorm
(not on D's input layer nor G's output), ReLU in G and LeakyReLU(0.2) in D, tanh output, weights
from N(0, 0.02), Adam with beta1 = 0.5, optional dropout between D's layers (the report: 0.1).
Works for any power-of-two size >= 16 (32 and 64 px), 1 or 3 channels.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from torch import Tensor, nn

from harness.family.adversarial import (
    BCE_FUSED,
    BCE_METRICS,
    AdversarialPair,
    adversarial_space,
    adversarial_step,
    bce_d_loss,
    bce_eval_step,
    bce_g_loss,
    init_normal,
    make_adam_pair,
)
from harness.family.contract import Family
from harness.family.fast_path import FastPath
from harness.family.space import IntParam


def stages(image_size: int) -> int:
    """Doublings between the 4x4 core and the image."""
    n = int(math.log2(image_size)) - 2
    if image_size < 16 or 2 ** (n + 2) != image_size:
        raise ValueError(f"DCGAN needs a power-of-two image size >= 16, got {image_size}")
    return n


class Generator(nn.Module):
    def __init__(self, latent_dim: int, channels: int, image_size: int, width: int):
        super().__init__()
        n = stages(image_size)
        widths = [width * 2 ** (n - 1 - i) for i in range(n)]  # e.g. 64 px, width 64: 512, 256, 128, 64
        layers = [nn.ConvTranspose2d(latent_dim, widths[0], 4, 1, 0, bias=False),  # (B, Z, 1, 1) -> 4x4
                  nn.BatchNorm2d(widths[0]), nn.ReLU(True)]
        for c_in, c_out in zip(widths, widths[1:]):  # each doubles the side
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:  # (B, Z) -> (B, C, S, S) in [-1, 1]
        return self.net(z[:, :, None, None])


class Discriminator(nn.Module):
    def __init__(self, channels: int, image_size: int, width: int, dropout: float, batchnorm: bool = True):
        super().__init__()
        n = stages(image_size)
        widths = [width * 2**i for i in range(n)]  # e.g. 64, 128, 256, 512
        layers: list[nn.Module] = [nn.Conv2d(channels, widths[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        for c_in, c_out in zip(widths, widths[1:]):  # each halves the side, down to 4x4
            layers += [nn.Dropout(dropout)] if dropout > 0 else []
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False)]
            layers += [nn.BatchNorm2d(c_out)] if batchnorm else []
            layers += [nn.LeakyReLU(0.2, True)]
        layers += [nn.Conv2d(widths[-1], 1, 4, 1, 0, bias=False)]  # 4x4 -> 1x1: no fully connected layer
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, S, S) -> (B, 1) logit (or critic value)
        return self.net(x).flatten(1)


SPACE = {
    **adversarial_space(lr=2e-4, beta1=0.5, d_steps=1, latent_dim=100),  # Radford: lr 2e-4, beta1 0.5, z of 100
    "width": IntParam(16, 128, 64, log=True, limits=(4, 1024), help="channels of G's last and D's first layer (ngf = ndf)"),
}
METRICS = BCE_METRICS
# Radford et al. as seed reports 003 and 004 applied them: lr 2e-4, beta1 0.5, z of 100, width 64.
REPORTED = {"lr_g": 2e-4, "lr_d": 2e-4, "beta1": 0.5, "latent_dim": 100, "width": 64, "schedule": "ratio", "d_steps": 1}
eval_step = bce_eval_step
FUSED = BCE_FUSED  # width, latent size and batch size are the pack's


def build(params: Mapping[str, Any], channels: int, image_size: int) -> AdversarialPair:
    latent, width = int(params["latent_dim"]), int(params["width"])
    model = AdversarialPair(Generator(latent, channels, image_size, width),
                            Discriminator(channels, image_size, width, float(params["d_dropout"])), latent, params)
    model.apply(init_normal)
    return model


def make_optimizers(model: AdversarialPair, params: Mapping[str, Any], fast: FastPath):
    return make_adam_pair(model, params, fast)


def train_step(model: AdversarialPair, x: Tensor, optimizers, params: Mapping[str, Any], fast: FastPath,
               progress: float) -> dict[str, Tensor]:
    return adversarial_step(model, x, optimizers, params, fast, bce_d_loss, bce_g_loss)


FAMILY = Family(
    name="dcgan", kind="adversarial", help="DCGAN (Radford et al.): strided convs, BN, ReLU/LeakyReLU, tanh, N(0, 0.02), beta1 0.5",
    space=SPACE, metrics=METRICS, reported=REPORTED, output_range=(-1.0, 1.0), budget_optimizer="g", fused=FUSED,
    build=build, make_optimizers=make_optimizers, train_step=train_step, eval_step=eval_step)
