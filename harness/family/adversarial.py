"""What every adversarial family shares: the D/G schedule, the container module, the training step.

Each batch is one step of one network, as the reports trained ("alternating D and G every batch"):
  - schedule "ratio": D takes k steps, then G takes one (k = d_steps; k = 1 alternates every batch);
  - schedule "threshold" (the reports' untried idea): D steps until its loss falls below
    d_threshold, then G steps until its loss falls below g_threshold, and so on; either turn ends
    after max_consecutive steps so training cannot stall. It reads each step's loss on the host.
The schedule's position is part of the model's state_dict (extra state), so a resumed trial goes on
where it stopped. A family supplies its losses: d_loss(model, real, fake, params, fast) and
g_loss(model, fake, params, fast), each returning (loss, {metric: detached tensor}).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from harness.family.fast_path import PLAIN, FastPath, at_least_fp32
from harness.family.fused import Fused, Stack, zero_grads
from harness.family.generate import GRID_SEED, fixed_z
from harness.family.space import ChoiceParam, FloatParam, IntParam, Param

LossFn = Callable[..., tuple[Tensor, dict[str, Tensor]]]


class Alternation:
    """Whose turn it is: "d" or "g"."""

    def __init__(self, params: Mapping[str, Any]):
        self.mode = params.get("schedule", "ratio")
        self.k = int(params.get("d_steps", 1))
        self.d_threshold = float(params.get("d_threshold", 0.3))
        self.g_threshold = float(params.get("g_threshold", 1.0))
        self.cap = int(params.get("max_consecutive", 50))
        self.turn, self.count = "d", 0

    def done(self, who: str, loss: Tensor) -> None:
        """Record a step of `who` and decide whose turn is next."""
        self.count += 1
        if self.mode == "ratio":
            switch = who == "g" or self.count >= self.k
        else:
            threshold = self.d_threshold if who == "d" else self.g_threshold
            switch = self.count >= self.cap or loss.item() < threshold
        if switch:
            self.turn, self.count = ("g" if who == "d" else "d"), 0

    def state(self) -> dict[str, Any]:
        return {"turn": self.turn, "count": self.count}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.turn, self.count = state["turn"], int(state["count"])


class AdversarialPair(nn.Module):
    """A generator and a discriminator (or critic) trained against each other."""

    def __init__(self, generator: nn.Module, discriminator: nn.Module, latent_dim: int, params: Mapping[str, Any]):
        super().__init__()
        self.generator = generator
        self.discriminator = discriminator
        self.latent_dim = latent_dim
        self.schedule = Alternation(params)

    @torch.no_grad()
    def sample(self, z: Tensor) -> Tensor:  # z ~ N(0, I), (B, Z) -> (B, C, S, S)
        return self.generator(z)

    def get_extra_state(self) -> dict[str, Any]:
        return self.schedule.state()

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.schedule.restore(state)


def adversarial_step(model: AdversarialPair, x: Tensor, optimizers: Mapping[str, torch.optim.Optimizer],
                     params: Mapping[str, Any], fast: FastPath, d_loss: LossFn, g_loss: LossFn) -> dict[str, Tensor]:
    """One step of whichever network's turn it is, on this batch."""
    who = model.schedule.turn
    z = torch.randn(x.shape[0], model.latent_dim, device=x.device)
    with fast.forward():  # bf16 autocast when the fast path says so
        if who == "d":
            with torch.no_grad():
                fake = model.generator(z)
            loss, stats = d_loss(model, x, fake, params, fast)
        else:
            loss, stats = g_loss(model, model.generator(z), params, fast)
    loss = at_least_fp32(loss)
    optimizer = optimizers[who]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    model.schedule.done(who, loss.detach())
    return {**stats, "d_step": torch.tensor(1.0 if who == "d" else 0.0, device=x.device)}


def make_adam_pair(model: AdversarialPair, params: Mapping[str, Any], fast: FastPath,
                   beta2: float = 0.999) -> dict[str, torch.optim.Optimizer]:
    betas = (params["beta1"], beta2)
    return {"d": fast.adam(model.discriminator.parameters(), lr=params["lr_d"], betas=betas),
            "g": fast.adam(model.generator.parameters(), lr=params["lr_g"], betas=betas)}


def adversarial_space(lr: float, beta1: float, d_steps: int, latent_dim: int = 100) -> dict[str, Param]:
    """The schedule knobs every adversarial family has, with that family's defaults."""
    return {
        # Limits wide enough to force the blow-ups the reports met (an absurd lr), narrow enough to catch typos.
        "lr_g": FloatParam(1e-5, 1e-2, lr, log=True, limits=(1e-10, 1e6), help="generator Adam learning rate"),
        "lr_d": FloatParam(1e-5, 1e-2, lr, log=True, limits=(1e-10, 1e6), help="discriminator Adam learning rate"),
        "beta1": FloatParam(0.0, 0.99, beta1, limits=(0.0, 0.999), help="Adam beta1 (Radford: 0.5)"),
        "batch_size": IntParam(32, 512, 128, log=True, limits=(2, 65536), help="images per step"),
        "latent_dim": IntParam(16, 256, latent_dim, log=True, limits=(1, 4096), help="size of z"),
        "d_dropout": FloatParam(0.0, 0.5, 0.0, limits=(0.0, 0.9), help="dropout between the discriminator's layers"),
        "schedule": ChoiceParam(("ratio", "threshold"), "ratio", help="ratio: k D steps per G step; threshold: "
                                "each network steps until its loss is under its threshold"),
        "d_steps": IntParam(1, 10, d_steps, limits=(1, 1000), help="k: discriminator steps per generator step",
                            when=("schedule", "ratio")),
        "d_threshold": FloatParam(0.05, 2.0, 0.3, limits=(-1e6, 1e6), help="D steps until its loss < this",
                                  when=("schedule", "threshold")),
        "g_threshold": FloatParam(0.1, 5.0, 1.0, limits=(-1e6, 1e6), help="G steps until its loss < this",
                                  when=("schedule", "threshold")),
        "max_consecutive": IntParam(1, 500, 50, log=True, limits=(1, 100000), help="the longest turn of either",
                                    when=("schedule", "threshold")),
    }


def init_normal(module: nn.Module) -> None:
    """Radford et al.: conv weights from N(0, 0.02), BatchNorm scale from N(1, 0.02), biases 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


# ---- the BCE losses of the reports' GAN and DCGAN (the discriminator outputs a logit) -----------

def bce_d_loss(model: AdversarialPair, real: Tensor, fake: Tensor, params: Mapping[str, Any],
               fast: FastPath = PLAIN) -> tuple[Tensor, dict[str, Tensor]]:
    """d_loss_factor x (BCE(D(x), 1) + BCE(D(G(z)), 0)); the reports' first GAN used a factor of 1/2."""
    real_logit, fake_logit = model.discriminator(real), model.discriminator(fake)
    bce = nn.functional.binary_cross_entropy_with_logits
    loss = params.get("d_loss_factor", 1.0) * (bce(real_logit, torch.ones_like(real_logit))
                                               + bce(fake_logit, torch.zeros_like(fake_logit)))
    return loss, {"d_loss": loss.detach(), "d_real": torch.sigmoid(real_logit).mean().detach(),
                  "d_fake": torch.sigmoid(fake_logit).mean().detach()}


def bce_g_loss(model: AdversarialPair, fake: Tensor, params: Mapping[str, Any],
               fast: FastPath = PLAIN) -> tuple[Tensor, dict[str, Tensor]]:
    """The non-saturating generator loss BCE(D(G(z)), 1)."""
    logit = model.discriminator(fake)
    loss = nn.functional.binary_cross_entropy_with_logits(logit, torch.ones_like(logit))
    return loss, {"g_loss": loss.detach()}


@torch.no_grad()
def bce_eval_step(model: AdversarialPair, x: Tensor, params: Mapping[str, Any]) -> dict[str, Tensor]:
    """Both losses and D's mean outputs on held-out real images and fakes from a fixed z."""
    fake = model.generator(fixed_z(x.shape[0], model.latent_dim, GRID_SEED, x.device))
    d_loss, d_stats = bce_d_loss(model, x, fake, params)
    _, g_stats = bce_g_loss(model, fake, params)
    return {**d_stats, **g_stats}


BCE_METRICS = {"d_loss": None, "g_loss": None, "d_real": None, "d_fake": None}  # logged; not objectives


def fused_bce_step(stack: Stack, x: Tensor, noise: Tensor, params: list[Mapping[str, Any]],
                   optimizers: list[Mapping[str, torch.optim.Optimizer]], fast: FastPath,
                   progress: list[float]) -> list[dict[str, Tensor]]:
    """adversarial_step with the BCE losses for every member of a pack at once: x (P, B, C, S, S),
    noise (P, B, Z) (no schedule reads `progress`). Each member takes the step its own schedule says (its D:G ratio is a per-member
    mask). Alone, a D step runs D on the real batch and on the fakes, a G step on the fakes only; so
    D's pass over the real batch runs when some member takes a D step, and the members taking a G
    step get their D BatchNorm statistics back afterwards. One pass of D over the fakes then serves
    both: the D losses of D steppers, the G losses of G steppers (the gradients each member's other
    network receives are never stepped, as alone)."""
    models: list[AdversarialPair] = stack.models
    turns = [model.schedule.turn for model in models]
    d_turn = torch.tensor([t == "d" for t in turns], device=x.device)  # (P,)
    factor = stack.scalar([p.get("d_loss_factor", 1.0) for p in params])  # (P,)
    bce = nn.functional.binary_cross_entropy_with_logits
    with fast.forward():
        if d_turn.any():
            saved = stack.snapshot("discriminator") if not d_turn.all() else {}
            real_logit = at_least_fp32(stack("discriminator", x))  # (P, B, 1)
            stack.restore(saved, ~d_turn)
            d_real_loss = bce(real_logit, torch.ones_like(real_logit), reduction="none").flatten(1).mean(dim=1)
        with torch.enable_grad() if not d_turn.all() else torch.no_grad():  # alone, a D step's G runs without grad
            fake = stack("generator", noise)  # (P, B, C, S, S)
        fake_logit = at_least_fp32(stack("discriminator", fake))  # (P, B, 1)
        g_loss = bce(fake_logit, torch.ones_like(fake_logit), reduction="none").flatten(1).mean(dim=1)  # (P,)
    if d_turn.any():
        d_fake_loss = bce(fake_logit, torch.zeros_like(fake_logit), reduction="none").flatten(1).mean(dim=1)
        d_loss = factor * (d_real_loss + d_fake_loss)
        loss = torch.where(d_turn, d_loss, g_loss)
    else:
        loss = g_loss
    zero_grads(optimizers)
    loss.sum().backward()
    outputs = []
    for p, (model, turn) in enumerate(zip(models, turns)):
        optimizers[p][turn].step()
        model.schedule.done(turn, loss[p].detach())
        if turn == "d":
            stats = {"d_loss": d_loss[p], "d_real": torch.sigmoid(real_logit[p]).mean(),
                     "d_fake": torch.sigmoid(fake_logit[p]).mean()}
        else:
            stats = {"g_loss": g_loss[p]}
        outputs.append({**{k: v.detach() for k, v in stats.items()},
                        "d_step": torch.tensor(1.0 if turn == "d" else 0.0, device=x.device)})
    return outputs


# The BCE GANs' scalars: learning rates, Adam's beta1, D's dropout rate (0 builds no Dropout) and
# the schedule, whose D:G ratio becomes a per-member mask of whose turn it is (the threshold
# schedule reads each member's loss, as alone).
BCE_FUSED = Fused(scalars=frozenset({"lr_g", "lr_d", "beta1", "d_dropout", "schedule", "d_steps", "d_threshold",
                                     "g_threshold", "max_consecutive"}), step=fused_bce_step,
                  switches=frozenset({"d_dropout"}))
