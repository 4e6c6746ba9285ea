"""WGAN-GP (Gulrajani et al. 2017): a Wasserstein critic with a gradient penalty.

The critic is the DCGAN discriminator without BatchNorm (the penalty is per sample, which batch
statistics would break) and without a sigmoid; the generator is DCGAN's (tanh output). Critic
loss E[D(G(z))] - E[D(x)] + lambda E[(||grad D(x_hat)|| - 1)^2] on random interpolates x_hat;
generator loss -E[D(G(z))]; n_critic critic steps per generator step (d_steps, default 5);
Adam(lr 1e-4, betas (0, 0.9)) as in the paper.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from harness.family.adversarial import AdversarialPair, adversarial_space, adversarial_step, init_normal, make_adam_pair
from harness.family.contract import Family
from harness.family.fast_path import FastPath
from harness.family.generate import GRID_SEED, fixed_z
from harness.family.space import FloatParam, IntParam
from models.dcgan import Discriminator, Generator


def gradient_penalty(model: AdversarialPair, real: Tensor, fake: Tensor) -> Tensor:
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(model.discriminator(mixed).sum(), mixed, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()


def critic_loss(model: AdversarialPair, real: Tensor, fake: Tensor, params: Mapping[str, Any],
                fast: FastPath) -> tuple[Tensor, dict[str, Tensor]]:
    real_score, fake_score = model.discriminator(real).mean().float(), model.discriminator(fake).mean().float()
    with fast.full_precision():  # the penalty's double backward stays in fp32 under the fast path
        penalty = gradient_penalty(model, real.float(), fake.float())
    loss = fake_score - real_score + params["gp_weight"] * penalty
    return loss, {"d_loss": loss.detach(), "d_real": real_score.detach(), "d_fake": fake_score.detach(),
                  "gp": penalty.detach(), "wasserstein": (real_score - fake_score).detach()}


def generator_loss(model: AdversarialPair, fake: Tensor, params: Mapping[str, Any],
                   fast: FastPath) -> tuple[Tensor, dict[str, Tensor]]:
    loss = -model.discriminator(fake).mean()
    return loss, {"g_loss": loss.detach()}


SPACE = {
    **adversarial_space(lr=1e-4, beta1=0.0, d_steps=5, latent_dim=100),
    "gp_weight": FloatParam(1.0, 100.0, 10.0, log=True, limits=(0.0, 1e4), help="lambda, the gradient penalty weight"),
    "width": IntParam(16, 128, 64, log=True, limits=(4, 1024), help="channels of G's last and the critic's first layer"),
}
METRICS = {"d_loss": None, "g_loss": None, "d_real": None, "d_fake": None, "wasserstein": None}
# Gulrajani et al. 2017: Adam lr 1e-4, betas (0, 0.9), 5 critic steps per generator step, lambda 10.
REPORTED = {"lr_g": 1e-4, "lr_d": 1e-4, "beta1": 0.0, "schedule": "ratio", "d_steps": 5, "gp_weight": 10.0}
# Not fusable: the gradient penalty differentiates the critic inside the step (requires_grad_ and
# torch.autograd.grad with create_graph), which torch.func.vmap refuses; its trials train one at a time.
FUSED = None


def build(params: Mapping[str, Any], channels: int, image_size: int) -> AdversarialPair:
    latent, width = int(params["latent_dim"]), int(params["width"])
    critic = Discriminator(channels, image_size, width, float(params["d_dropout"]), batchnorm=False)
    model = AdversarialPair(Generator(latent, channels, image_size, width), critic, latent, params)
    model.apply(init_normal)
    return model


def make_optimizers(model: AdversarialPair, params: Mapping[str, Any], fast: FastPath):
    return make_adam_pair(model, params, fast, beta2=0.9)


def train_step(model: AdversarialPair, x: Tensor, optimizers, params: Mapping[str, Any], fast: FastPath,
               progress: float) -> dict[str, Tensor]:
    return adversarial_step(model, x, optimizers, params, fast, critic_loss, generator_loss)


@torch.no_grad()
def eval_step(model: AdversarialPair, x: Tensor, params: Mapping[str, Any]) -> dict[str, Tensor]:
    """Critic scores on held-out images and fakes from a fixed z (no penalty: it needs gradients)."""
    fake = model.generator(fixed_z(x.shape[0], model.latent_dim, GRID_SEED, x.device))
    real_score, fake_score = model.discriminator(x).mean(), model.discriminator(fake).mean()
    return {"d_loss": fake_score - real_score, "g_loss": -fake_score, "d_real": real_score, "d_fake": fake_score,
            "wasserstein": real_score - fake_score}


FAMILY = Family(
    name="wgan_gp", kind="adversarial", help="WGAN-GP: BatchNorm-free critic, Wasserstein loss + gradient penalty, n_critic",
    space=SPACE, metrics=METRICS, reported=REPORTED, output_range=(-1.0, 1.0), budget_optimizer="g", fused=FUSED,
    build=build, make_optimizers=make_optimizers, train_step=train_step, eval_step=eval_step)
