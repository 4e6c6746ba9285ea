"""Model families by name: what each family is, its hyperparameter space, and its training code.

A family declares, once, at registration:
  kind      "autoencoder" (the model has encoder, decoder, reconstruct and sample) or "adversarial"
            (generator, discriminator and sample); every model has `latent_dim`
  metrics   what eval_step returns, and whether lower or higher is better (None: logged, never an
            objective); the loop logs them as train_<m> / val_<m> / test_<m> (harness/core/keys.py)
  curves    the losses drawn as training and validation curves (default: the kind's)
  plots     the pictures that suit it (default: the kind's; see PLOTS)
  reference the configuration the seed reports trained (the rest of the space at its defaults);
            every sampled study runs it first (harness/search/planning.py)
  budget_optimizer  the optimizer (a key of make_optimizers) whose steps are the study's budget: the
            generator's ("g", default for the adversarial kind; its D steps come on top), or the one
            optimizer of an autoencoder
  fused     how its trials train several at once as one fused pack (harness/family/fused.py), or None
and its code, usually all in models/<name>.py:
  build(params, channels, image_size) -> nn.Module
  make_optimizers(model, params, fast) -> {name: optimizer}   (fast: harness/speed.FastPath)
  train_step(model, x, optimizers, params, fast) -> {metric: detached scalar tensor}, one update
  eval_step(model, x, params) -> {metric: scalar tensor} on held-out images (keys = `metrics`)
Images reach the steps as floats in the family's `output_range`: [0, 1] for a sigmoid output,
[-1, 1] for a tanh. What the report needs of a family (kind, curves, plots) is recorded with every
run (`record_tags`), so the report reads it from MLflow and never imports this module.
The built-in families are registered on first use, in one place at the bottom of this file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from harness.core import keys
from harness.core.errors import UserError
from harness.family.fused import Fused
from harness.family.space import ChoiceParam, FixedParam, FloatParam, IntParam, Param

NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
KINDS = ("autoencoder", "adversarial")
PLOTS = {  # picture -> the kinds it suits
    "samples": KINDS, "loss_curves": KINDS, "interpolation": KINDS, "low_variance": KINDS,
    "reconstructions": ("autoencoder",), "traversal": ("autoencoder",), "arithmetic": ("autoencoder",),
}
DEFAULT_CURVES = {"autoencoder": ("recon_mse", "kl"), "adversarial": ("d_loss", "g_loss")}

Params = Mapping[str, Any]


@dataclass(frozen=True)
class Family:
    name: str
    kind: str
    space: Mapping[str, Param]
    metrics: Mapping[str, str | None]  # eval_step key -> "minimize" | "maximize" | None (logged only)
    curves: tuple[str, ...]
    plots: tuple[str, ...]
    reference: Mapping[str, Any]  # the seed reports' configuration (parameters not named: their defaults)
    build: Callable[..., Any]
    make_optimizers: Callable[..., Any]
    train_step: Callable[..., Any]
    eval_step: Callable[..., Any]
    help: str = ""
    output_range: tuple[float, float] = (0.0, 1.0)  # of the output activation: sigmoid (0, 1), tanh (-1, 1)
    budget_optimizer: str = "g"  # whose optimizer steps are the budget (harness/training/loop.py)
    fused: Fused | None = None  # how several trials train as one pack (harness/training/packs.py); None: one at a time

    @property
    def autoencoder(self) -> bool:
        return self.kind == "autoencoder"

    @property
    def defaults(self) -> dict[str, Any]:
        """Every parameter at its default: a configuration to build, bench or test with."""
        return {name: param.default for name, param in self.space.items()}

    @property
    def reference_config(self) -> dict[str, Any]:
        """The seed reports' configuration, every other parameter at its default (conditional ones only
        where their condition holds)."""
        config = self.defaults | dict(self.reference)
        return {name: value for name, value in config.items()
                if self.space[name].when is None or config.get(self.space[name].when[0]) == self.space[name].when[1]}

    @property
    def objectives(self) -> dict[str, str]:
        """val_<metric> -> direction, for every metric that can be an objective."""
        scored = {**self.metrics, **keys.COMMON_METRICS}
        return {keys.split_key("val", m): d for m, d in scored.items() if d is not None}

    def record_tags(self) -> dict[str, str]:
        """What a reader of the runs needs to know about this family, recorded with every run."""
        return {keys.Tag.FAMILY_KIND: self.kind, keys.Tag.FAMILY_CURVES: ",".join(self.curves),
                keys.Tag.FAMILY_PLOTS: ",".join(self.plots)}


class RegistryError(ValueError):
    """A family declared wrongly: a bug in the code that registers it, not a user's mistake."""


_FAMILIES: dict[str, Family] = {}  # registered by users (and tests)
_BUILTINS: dict[str, Family] = {}  # filled on first use by _builtins()


def register_family(name: str, *, kind: str, space: Mapping[str, Param], metrics: Mapping[str, str | None],
                    build: Callable, make_optimizers: Callable, train_step: Callable, eval_step: Callable,
                    curves: tuple[str, ...] | None = None, plots: tuple[str, ...] | None = None,
                    reference: Mapping[str, Any] | None = None, help: str = "",
                    output_range: tuple[float, float] = (0.0, 1.0), budget_optimizer: str | None = None,
                    fused: Fused | None = None) -> Family:
    if not isinstance(name, str) or not NAME.match(name):
        raise RegistryError(f"family name {name!r} must match {NAME.pattern} (lowercase, digits, _)")
    if name in _families():
        raise RegistryError(f"family {name!r} is already registered")
    family = _declare(name, kind, space, metrics, build, make_optimizers, train_step, eval_step, curves, plots,
                      reference, help, output_range, budget_optimizer, fused)
    _FAMILIES[name] = family
    return family


def _declare(name: str, kind: str, space: Mapping[str, Param], metrics: Mapping[str, str | None], build: Callable,
             make_optimizers: Callable, train_step: Callable, eval_step: Callable, curves: tuple[str, ...] | None,
             plots: tuple[str, ...] | None, reference: Mapping[str, Any] | None, help: str,
             output_range: tuple[float, float], budget_optimizer: str | None, fused: Fused | None) -> Family:
    """A validated Family; every mistake is a RegistryError naming the family and the field."""
    at = f"family {name!r}"
    if kind not in KINDS:
        raise RegistryError(f"{at}: kind {kind!r} must be one of {KINDS}")
    if not space:
        raise RegistryError(f"{at}: empty hyperparameter space")
    for index, (param_name, param) in enumerate(space.items()):
        if not NAME.match(param_name):
            raise RegistryError(f"{at}: parameter name {param_name!r} must match {NAME.pattern}")
        if not isinstance(param, (FloatParam, IntParam, ChoiceParam, FixedParam)):
            raise RegistryError(f"{at}: parameter {param_name!r} is not a Param: {param!r}")
        if param.when is not None and param.when[0] not in list(space)[:index]:
            raise RegistryError(f"{at}: {param_name!r} depends on {param.when[0]!r}, which must come before it")
    if not metrics:
        raise RegistryError(f"{at}: no metrics")
    for metric, direction in metrics.items():
        if not NAME.match(metric) or (direction is not None and direction not in ("minimize", "maximize")):
            raise RegistryError(f"{at}: metric {metric!r}: {direction!r} must be one of ('minimize', 'maximize') or None")
        if metric in keys.COMMON_METRICS:
            raise RegistryError(f"{at}: metric {metric!r} is computed for every family already")
    curves = tuple(curves if curves is not None else (c for c in DEFAULT_CURVES[kind] if c in metrics))
    for curve in curves:
        if curve not in metrics:
            raise RegistryError(f"{at}: curve {curve!r} is not one of its metrics {list(metrics)}")
    plots = tuple(plots if plots is not None else (p for p, kinds in PLOTS.items() if kind in kinds))
    for plot in plots:
        if plot not in PLOTS or kind not in PLOTS[plot]:
            suited = [p for p, kinds in PLOTS.items() if kind in kinds]
            raise RegistryError(f"{at}: plot {plot!r} does not suit the {kind} kind; valid: {', '.join(suited)}")
    reference = dict(reference or {})
    for param_name, value in reference.items():
        _check_reference(at, space, param_name, value)
    for what, fn in [("build", build), ("make_optimizers", make_optimizers),
                     ("train_step", train_step), ("eval_step", eval_step)]:
        if not callable(fn):
            raise RegistryError(f"{at}: {what} is not callable")
    if output_range not in ((0.0, 1.0), (-1.0, 1.0)):
        raise RegistryError(f"{at}: output_range {output_range} must be (0, 1) (sigmoid) or (-1, 1) (tanh)")
    budget_optimizer = budget_optimizer or ("g" if kind == "adversarial" else "")
    if not budget_optimizer or not NAME.match(budget_optimizer):
        raise RegistryError(f"{at}: budget_optimizer must name the optimizer whose steps are the budget "
                            f"(a key of what make_optimizers returns), got {budget_optimizer!r}")
    if fused is not None:
        if not isinstance(fused, Fused) or not callable(fused.step):
            raise RegistryError(f"{at}: fused must be a harness.family.fused.Fused with a callable step, or None")
        unknown = sorted(set(fused.scalars) - set(space))
        if unknown:
            raise RegistryError(f"{at}: fused scalars {unknown} are not in its space")
        if not set(fused.switches) <= set(fused.scalars):
            raise RegistryError(f"{at}: fused switches {sorted(set(fused.switches) - set(fused.scalars))} are not scalars")
    return Family(name, kind, dict(space), dict(metrics), curves, plots, reference, build, make_optimizers,
                  train_step, eval_step, help, tuple(map(float, output_range)), budget_optimizer, fused)


def _check_reference(at: str, space: Mapping[str, Param], name: str, value: Any) -> None:
    param = space.get(name)
    if param is None:
        raise RegistryError(f"{at}: reference names {name!r}, which is not in its space")
    try:
        if isinstance(param, (FloatParam, IntParam)):
            param.check_value(value, f"{at}: reference {name}")
            return
    except UserError as e:
        raise RegistryError(str(e)) from None
    allowed = param.choices if isinstance(param, ChoiceParam) else (param.value,)
    if value not in allowed:
        raise RegistryError(f"{at}: reference {name} = {value!r} is not one of {list(allowed)}")


def _families() -> dict[str, Family]:
    return {**_builtins(), **_FAMILIES}


def family_names() -> list[str]:
    return sorted(_families())


def get_family(name: str, where: str = "family") -> Family:
    families = _families()
    if name not in families:
        raise UserError(f"{where}: unknown family {name!r}; valid: {', '.join(sorted(families))}")
    return families[name]


# ---- built-in families, one line each ----------------------------------------------------------

def _builtins() -> dict[str, Family]:
    if _BUILTINS:
        return _BUILTINS
    from models import dcgan, gan, resnet_vae, vae, wgan_gp

    built: dict[str, Family] = {}

    def add(name: str, kind: str, module: Any, help: str, output_range: tuple[float, float] = (0.0, 1.0),
            budget_optimizer: str | None = None) -> None:
        built[name] = _declare(name, kind, module.SPACE, module.METRICS, module.build, module.make_optimizers,
                               module.train_step, module.eval_step, None, None, module.REFERENCE, help,
                               output_range, budget_optimizer, module.FUSED)

    add("vae", "autoencoder", vae, "conv VAE of the reports: Conv-BN-ReLU encoder, BN-ReLU-Conv decoder, MSE + w*KL",
        budget_optimizer="vae")
    add("resnet_vae", "autoencoder", resnet_vae, "ResNet18-style encoder and mirrored decoder, MSE + w*KL (report 004)",
        budget_optimizer="vae")
    add("gan", "adversarial", gan,
        "the reports' first GAN: VAE decoder as G, VAE encoder + logit as D, BCE with D loss x factor")
    add("dcgan", "adversarial", dcgan,
        "DCGAN (Radford et al.): strided convs, BN, ReLU/LeakyReLU, tanh, N(0, 0.02), beta1 0.5", (-1.0, 1.0))
    add("wgan_gp", "adversarial", wgan_gp,
        "WGAN-GP: BatchNorm-free critic, Wasserstein loss + gradient penalty, n_critic", (-1.0, 1.0))
    _BUILTINS.update(built)
    return _BUILTINS
