"""What a family is: the one declaration a model file ends with, and the four functions it names.

A family is one file, models/<name>.py: its config dataclass and nn.Modules, then

    FAMILY = Family(name="vae", kind="autoencoder", help="...", space=SPACE, metrics=METRICS,
                    reported=REPORTED, build=build, make_optimizers=make_optimizers,
                    train_step=train_step, eval_step=eval_step, budget_optimizer="vae", fused=FUSED)

The registry (harness/family/registry.py) finds every module of `models/` that defines FAMILY,
checks it and fills in what was left to the kind (curves, plots, the budget optimizer); a family
written elsewhere is registered with register_family(FAMILY). The fields:
  kind      "autoencoder" (the model has encoder, decoder, reconstruct and sample) or "adversarial"
            (generator, discriminator and sample); every model has `latent_dim`
  space     its hyperparameters (harness/family/space.py), in the order conditions need
  metrics   what eval_step returns, and whether lower or higher is better (None: logged, never an
            objective); the loop logs them as train_<m> / val_<m> / test_<m> (harness/core/keys.py)
  reported  the configuration the seed reports trained (the rest of the space at its defaults);
            every sampled study runs it first (harness/search/planning.py)
  curves    the losses drawn as training and validation curves (None: the kind's)
  plots     the pictures that suit it (None: the kind's; see registry.PLOTS)
  output_range  of the output activation: (0, 1) for a sigmoid, (-1, 1) for a tanh; images reach
            the steps as floats in this range
  budget_optimizer  the optimizer (a key of make_optimizers' result) whose steps are the study's
            budget: the generator's ("g", the adversarial kind's default; its D steps come on top),
            or the one optimizer of an autoencoder (no default: name it)
  fused     how its trials train several at once as one pack (harness/family/fused.py), or None
The functions follow the Protocols below, so a type checker (and tests/test_registry.py) can hold
a model file against them. What the report needs of a family (kind, curves, plots) is recorded
with every run (`record_tags`), so the report reads it from MLflow and never imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Protocol

from harness.core import keys
from harness.family.space import Param

if TYPE_CHECKING:  # the contract names torch's types; importing it costs nothing at run time
    import torch
    from torch import Tensor, nn

    from harness.family.fast_path import FastPath
    from harness.family.fused import Fused

Params = Mapping[str, Any]


class Build(Protocol):
    def __call__(self, params: Params, channels: int, image_size: int) -> nn.Module:
        """A fresh model for these hyperparameters, images of `channels` x `image_size` x `image_size`."""


class MakeOptimizers(Protocol):
    def __call__(self, model: Any, params: Params, fast: FastPath) -> dict[str, torch.optim.Optimizer]:
        """Its optimizers by name (one of them the budget optimizer); `fast.adam` builds Adam the fast path's way."""


class TrainStep(Protocol):
    def __call__(self, model: Any, x: Tensor, optimizers: Mapping[str, torch.optim.Optimizer], params: Params,
                 fast: FastPath, progress: float) -> dict[str, Tensor]:
        """One update on batch x: its losses as detached scalar tensors. `progress` is the fraction of
        the step budget done before this step (0 to 1), for schedules such as the KL warm-up."""


class EvalStep(Protocol):
    def __call__(self, model: Any, x: Tensor, params: Params) -> dict[str, Tensor]:
        """Held-out losses on batch x, one scalar tensor per declared metric."""


@dataclass(frozen=True, kw_only=True)
class Family:
    """One family, declared once in its model file (see the module docstring for each field)."""

    name: str
    kind: str
    help: str
    space: Mapping[str, Param]
    metrics: Mapping[str, str | None]  # eval_step key -> "minimize" | "maximize" | None (logged only)
    build: Build
    make_optimizers: MakeOptimizers
    train_step: TrainStep
    eval_step: EvalStep
    reported: Mapping[str, Any] = field(default_factory=dict)  # empty: every parameter at its default
    curves: tuple[str, ...] | None = None
    plots: tuple[str, ...] | None = None
    output_range: tuple[float, float] = (0.0, 1.0)
    budget_optimizer: str | None = None
    fused: Fused | None = None

    @property
    def autoencoder(self) -> bool:
        return self.kind == "autoencoder"

    @property
    def defaults(self) -> dict[str, Any]:
        """Every parameter at its default: a configuration to build, bench or test with."""
        return {name: param.default for name, param in self.space.items()}

    @property
    def reported_config(self) -> dict[str, Any]:
        """The seed reports' configuration, every other parameter at its default (conditional ones only
        where their condition holds)."""
        config = self.defaults | dict(self.reported)
        return {name: value for name, value in config.items()
                if self.space[name].when is None or config.get(self.space[name].when[0]) == self.space[name].when[1]}

    @property
    def objectives(self) -> dict[str, str]:
        """val_<metric> -> direction, for every metric that can be an objective."""
        scored = {**self.metrics, **keys.COMMON_METRICS}
        return {keys.split_key("val", m): d for m, d in scored.items() if d is not None}

    def record_tags(self) -> dict[str, str]:
        """What a reader of the runs needs to know about this family, recorded with every run."""
        return {keys.Tag.FAMILY_KIND: self.kind, keys.Tag.FAMILY_CURVES: ",".join(self.curves or ()),
                keys.Tag.FAMILY_PLOTS: ",".join(self.plots or ())}
