"""The reports' first GAN (seed reports 000 and 001): the conv VAE's parts turned against each other.

Generator: the VAE decoder from z ~ N(0, I) (linear layer, three BN-ReLU-Conv blocks with nearest 2x
upsampling, sigmoid). Discriminator: the VAE encoder's three Conv-BN-ReLU blocks and one linear
layer to a single logit. BCE losses, the discriminator's scaled by d_loss_factor (the report: 1/2),
one network per batch by the shared schedule (harness/family/adversarial.py).
"""

from __future__ import annotations

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
    make_adam_pair,
)
from harness.family.contract import Family
from harness.family.fast_path import FastPath
from harness.family.fused import Fused
from harness.family.space import FloatParam
from models.vae import ConvBNReLU, Decoder, VAEConfig


class Discriminator(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.layer1 = ConvBNReLU(cfg.channels, 16, pool=False, dropout=cfg.dropout)
        self.layer2 = ConvBNReLU(16, 32, pool=True, dropout=cfg.dropout)
        self.layer3 = ConvBNReLU(32, 64, pool=True, dropout=cfg.dropout)
        self.fc = nn.Linear(64 * cfg.bottleneck**2, 1)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, S, S) -> (B, 1) logit
        return self.fc(self.layer3(self.layer2(self.layer1(x))).flatten(1))


SPACE = {
    **adversarial_space(lr=1e-3, beta1=0.9, d_steps=1, latent_dim=32),  # the reports: Adam defaults, z of 32
    "d_loss_factor": FloatParam(0.1, 1.0, 0.5, limits=(1e-4, 100.0), help="scale of the discriminator loss (report: 1/2)"),
}
METRICS = BCE_METRICS
# Seed reports 000 and 001: Adam at its defaults (lr 1e-3, beta1 0.9), z of 32, D loss x 1/2, D and G alternating.
REPORTED = {"lr_g": 1e-3, "lr_d": 1e-3, "beta1": 0.9, "latent_dim": 32, "d_loss_factor": 0.5,
             "schedule": "ratio", "d_steps": 1}
eval_step = bce_eval_step
FUSED = Fused(BCE_FUSED.scalars | {"d_loss_factor"}, BCE_FUSED.step, BCE_FUSED.switches)  # latent, batch: the pack's


def build(params: Mapping[str, Any], channels: int, image_size: int) -> AdversarialPair:
    latent = int(params["latent_dim"])
    generator = Decoder(VAEConfig(image_size, channels, latent, 0.0))
    discriminator = Discriminator(VAEConfig(image_size, channels, latent, float(params["d_dropout"])))
    return AdversarialPair(generator, discriminator, latent, params)


def make_optimizers(model: AdversarialPair, params: Mapping[str, Any], fast: FastPath):
    return make_adam_pair(model, params, fast)


def train_step(model: AdversarialPair, x: Tensor, optimizers, params: Mapping[str, Any], fast: FastPath,
               progress: float) -> dict[str, Tensor]:
    return adversarial_step(model, x, optimizers, params, fast, bce_d_loss, bce_g_loss)


FAMILY = Family(
    name="gan", kind="adversarial", help="the reports' first GAN: VAE decoder as G, VAE encoder + logit as D, BCE with D loss x factor",
    space=SPACE, metrics=METRICS, reported=REPORTED, output_range=(0.0, 1.0), budget_optimizer="g", fused=FUSED,
    build=build, make_optimizers=make_optimizers, train_step=train_step, eval_step=eval_step)
