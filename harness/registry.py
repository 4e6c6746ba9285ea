"""Model families by name: their hyperparameter space, build function and training step.

A family is a handful of plain functions (usually all in models/<name>.py):
  build(params, channels, image_size) -> nn.Module with `sample(z)` (and `reconstruct(x)` for
      autoencoders) and a `latent_dim` attribute
  make_optimizers(model, params) -> {name: optimizer}
  train_step(model, x, optimizers, params) -> {metric: detached scalar tensor}, one update
  eval_step(model, x, params) -> {metric: scalar tensor} on held-out images (keys = `metrics`)
Images reach the steps as floats in the family's `output_range`: [0, 1] for a sigmoid output,
[-1, 1] for a tanh (the same as ToTensor + Normalize(0.5, 0.5)).
`metrics` names what eval_step returns and whether lower or higher is better (None: logged, never
an objective); the training loop logs them as train_<m> / val_<m> / test_<m>. On top of those the
harness scores every family's samples each epoch (COMMON_METRICS, harness/metrics.py), so families
can be compared on one objective. A study's objective is one of val_<m> with a direction.
Built-ins are registered at the bottom of this file, in one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from harness.errors import UserError
from harness.space import ChoiceParam, FixedParam, FloatParam, IntParam, Param

NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
DIRECTIONS = ("minimize", "maximize")
COMMON_METRICS = {"pixel_mmd": "minimize"}  # computed by the training loop for every family

Params = Mapping[str, Any]
Optimizers = Mapping[str, torch.optim.Optimizer]


@dataclass(frozen=True)
class Family:
    name: str
    space: Mapping[str, Param]
    metrics: Mapping[str, str | None]  # eval_step key -> "minimize" | "maximize" | None (logged only)
    build: Callable[[Params, int, int], nn.Module]
    make_optimizers: Callable[[nn.Module, Params], dict[str, torch.optim.Optimizer]]
    train_step: Callable[[nn.Module, Tensor, Optimizers, Params], dict[str, Tensor]]
    eval_step: Callable[[nn.Module, Tensor, Params], dict[str, Tensor]]
    help: str = ""
    output_range: tuple[float, float] = (0.0, 1.0)  # of the output activation: sigmoid (0, 1), tanh (-1, 1)

    @property
    def defaults(self) -> dict[str, Any]:
        """Every parameter at its default: a configuration to build, bench or test with."""
        return {name: param.default for name, param in self.space.items()}

    @property
    def objectives(self) -> dict[str, str]:
        """val_<metric> -> direction, for every metric that can be an objective."""
        scored = {**self.metrics, **COMMON_METRICS}
        return {f"val_{m}": d for m, d in scored.items() if d is not None}


class RegistryError(ValueError):
    """A family declared wrongly: a bug in the code that registers it, not a user's mistake."""


_FAMILIES: dict[str, Family] = {}


def register_family(name: str, *, space: Mapping[str, Param], metrics: Mapping[str, str | None],
                    build: Callable, make_optimizers: Callable, train_step: Callable, eval_step: Callable,
                    help: str = "", output_range: tuple[float, float] = (0.0, 1.0)) -> Family:
    if not isinstance(name, str) or not NAME.match(name):
        raise RegistryError(f"family name {name!r} must match {NAME.pattern} (lowercase, digits, _)")
    if name in _FAMILIES:
        raise RegistryError(f"family {name!r} is already registered")
    if not space:
        raise RegistryError(f"family {name!r}: empty hyperparameter space")
    for index, (param_name, param) in enumerate(space.items()):
        if not NAME.match(param_name):
            raise RegistryError(f"family {name!r}: parameter name {param_name!r} must match {NAME.pattern}")
        if not isinstance(param, (FloatParam, IntParam, ChoiceParam, FixedParam)):
            raise RegistryError(f"family {name!r}: parameter {param_name!r} is not a Param: {param!r}")
        if param.when is not None and param.when[0] not in list(space)[:index]:
            raise RegistryError(f"family {name!r}: {param_name!r} depends on {param.when[0]!r}, which must come before it")
    if not metrics:
        raise RegistryError(f"family {name!r}: no metrics")
    for metric, direction in metrics.items():
        if not NAME.match(metric) or (direction is not None and direction not in DIRECTIONS):
            raise RegistryError(f"family {name!r}: metric {metric!r}: {direction!r} must be one of {DIRECTIONS} or None")
        if metric in COMMON_METRICS:
            raise RegistryError(f"family {name!r}: metric {metric!r} is computed for every family already")
    for what, fn in [("build", build), ("make_optimizers", make_optimizers),
                     ("train_step", train_step), ("eval_step", eval_step)]:
        if not callable(fn):
            raise RegistryError(f"family {name!r}: {what} is not callable")
    if output_range not in ((0.0, 1.0), (-1.0, 1.0)):
        raise RegistryError(f"family {name!r}: output_range {output_range} must be (0, 1) (sigmoid) or (-1, 1) (tanh)")
    family = Family(name, dict(space), dict(metrics), build, make_optimizers, train_step, eval_step, help,
                    tuple(map(float, output_range)))
    _FAMILIES[name] = family
    return family


def family_names() -> list[str]:
    return sorted(_FAMILIES)


def get_family(name: str, where: str = "family") -> Family:
    if name not in _FAMILIES:
        raise UserError(f"{where}: unknown family {name!r}; valid: {', '.join(family_names())}")
    return _FAMILIES[name]


# ---- built-in families, one line each ----------------------------------------------------------

def _register_builtins() -> None:
    from models import dcgan, gan, resnet_vae, vae, wgan_gp

    def add(name: str, module: Any, help: str, output_range: tuple[float, float] = (0.0, 1.0)) -> None:
        register_family(name, space=module.SPACE, metrics=module.METRICS, build=module.build,
                        make_optimizers=module.make_optimizers, train_step=module.train_step,
                        eval_step=module.eval_step, help=help, output_range=output_range)

    add("vae", vae, "conv VAE of the reports: Conv-BN-ReLU encoder, BN-ReLU-Conv decoder, MSE + w*KL")
    add("resnet_vae", resnet_vae, "ResNet18-style encoder and mirrored decoder, MSE + w*KL (report 004)")
    add("gan", gan, "the reports' first GAN: VAE decoder as G, VAE encoder + logit as D, BCE with D loss x factor")
    add("dcgan", dcgan, "DCGAN (Radford et al.): strided convs, BN, ReLU/LeakyReLU, tanh, N(0, 0.02), beta1 0.5",
        output_range=(-1.0, 1.0))
    add("wgan_gp", wgan_gp, "WGAN-GP: BatchNorm-free critic, Wasserstein loss + gradient penalty, n_critic",
        output_range=(-1.0, 1.0))


_register_builtins()
