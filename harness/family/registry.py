"""Model families by name: the registry collects the Family each model file declares
(harness/family/contract.py) and checks it once.

Every module of `models/` that defines FAMILY is a built-in family, found on first use (nothing is
imported at import time); adding a family is adding its file there. A family written elsewhere (a
user's own file, a test) is registered with register_family(FAMILY). A family declared wrongly is
a RegistryError naming the family and the field: a bug in its code, not a user's mistake.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import re
from typing import Any, Mapping

from harness.core import keys
from harness.core.errors import UserError
from harness.family.contract import Family
from harness.family.fused import Fused
from harness.family.space import ChoiceParam, FixedParam, FloatParam, IntParam, Param

NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
KINDS = ("autoencoder", "adversarial")
PLOTS = {  # picture -> the kinds it suits
    "samples": KINDS, "loss_curves": KINDS, "interpolation": KINDS, "low_variance": KINDS,
    "reconstructions": ("autoencoder",), "traversal": ("autoencoder",), "arithmetic": ("autoencoder",),
}
DEFAULT_CURVES = {"autoencoder": ("recon_mse", "kl"), "adversarial": ("d_loss", "g_loss")}
MODELS_PACKAGE = "models"  # where the built-in families' files are


class RegistryError(ValueError):
    """A family declared wrongly: a bug in the code that registers it, not a user's mistake."""


_FAMILIES: dict[str, Family] = {}  # registered by users (and tests)
_BUILTINS: dict[str, Family] = {}  # filled on first use by _builtins()


def register_family(family: Family) -> Family:
    """Check `family` and add it by its name; the checked family (defaults filled in)."""
    if not isinstance(family, Family):
        raise RegistryError(f"register_family takes a harness.family.Family, got {type(family).__name__}")
    if family.name in _families():
        raise RegistryError(f"family {family.name!r} is already registered")
    checked = _checked(family)
    _FAMILIES[checked.name] = checked
    return checked


def _checked(family: Family) -> Family:
    """`family` with its defaults filled in, after every check; each mistake a RegistryError."""
    if not isinstance(family.name, str) or not NAME.match(family.name):
        raise RegistryError(f"family name {family.name!r} must match {NAME.pattern} (lowercase, digits, _)")
    at = f"family {family.name!r}"
    if family.kind not in KINDS:
        raise RegistryError(f"{at}: kind {family.kind!r} must be one of {KINDS}")
    _check_space(at, family.space)
    _check_metrics(at, family.metrics)
    for param_name, value in dict(family.reported).items():
        _check_reported(at, family.space, param_name, value)
    for what in ("build", "make_optimizers", "train_step", "eval_step"):
        if not callable(getattr(family, what)):
            raise RegistryError(f"{at}: {what} is not callable")
    if tuple(family.output_range) not in ((0.0, 1.0), (-1.0, 1.0)):
        raise RegistryError(f"{at}: output_range {family.output_range} must be (0, 1) (sigmoid) or (-1, 1) (tanh)")
    budget_optimizer = family.budget_optimizer or ("g" if family.kind == "adversarial" else "")
    if not budget_optimizer or not NAME.match(budget_optimizer):
        raise RegistryError(f"{at}: budget_optimizer must name the optimizer whose steps are the budget "
                            f"(a key of what make_optimizers returns), got {family.budget_optimizer!r}")
    _check_fused(at, family.fused, family.space)
    return dataclasses.replace(family, space=dict(family.space), metrics=dict(family.metrics),
                               reported=dict(family.reported), curves=_curves(at, family), plots=_plots(at, family),
                               output_range=tuple(map(float, family.output_range)), budget_optimizer=budget_optimizer)


def _check_space(at: str, space: Mapping[str, Param]) -> None:
    if not space:
        raise RegistryError(f"{at}: empty hyperparameter space")
    for index, (param_name, param) in enumerate(space.items()):
        if not NAME.match(param_name):
            raise RegistryError(f"{at}: parameter name {param_name!r} must match {NAME.pattern}")
        if not isinstance(param, (FloatParam, IntParam, ChoiceParam, FixedParam)):
            raise RegistryError(f"{at}: parameter {param_name!r} is not a Param: {param!r}")
        if param.when is not None and param.when[0] not in list(space)[:index]:
            raise RegistryError(f"{at}: {param_name!r} depends on {param.when[0]!r}, which must come before it")


def _check_metrics(at: str, metrics: Mapping[str, str | None]) -> None:
    if not metrics:
        raise RegistryError(f"{at}: no metrics")
    for metric, direction in metrics.items():
        if not NAME.match(metric) or (direction is not None and direction not in ("minimize", "maximize")):
            raise RegistryError(f"{at}: metric {metric!r}: {direction!r} must be one of ('minimize', 'maximize') or None")
        if metric in keys.COMMON_METRICS:
            raise RegistryError(f"{at}: metric {metric!r} is computed for every family already")


def _curves(at: str, family: Family) -> tuple[str, ...]:
    curves = tuple(family.curves if family.curves is not None
                   else (c for c in DEFAULT_CURVES[family.kind] if c in family.metrics))
    for curve in curves:
        if curve not in family.metrics:
            raise RegistryError(f"{at}: curve {curve!r} is not one of its metrics {list(family.metrics)}")
    return curves


def _plots(at: str, family: Family) -> tuple[str, ...]:
    kind = family.kind
    plots = tuple(family.plots if family.plots is not None else (p for p, kinds in PLOTS.items() if kind in kinds))
    for plot in plots:
        if plot not in PLOTS or kind not in PLOTS[plot]:
            suited = [p for p, kinds in PLOTS.items() if kind in kinds]
            raise RegistryError(f"{at}: plot {plot!r} does not suit the {kind} kind; valid: {', '.join(suited)}")
    return plots


def _check_fused(at: str, fused: Fused | None, space: Mapping[str, Param]) -> None:
    if fused is None:
        return
    if not isinstance(fused, Fused) or not callable(fused.step):
        raise RegistryError(f"{at}: fused must be a harness.family.fused.Fused with a callable step, or None")
    unknown = sorted(set(fused.scalars) - set(space))
    if unknown:
        raise RegistryError(f"{at}: fused scalars {unknown} are not in its space")
    if not set(fused.switches) <= set(fused.scalars):
        raise RegistryError(f"{at}: fused switches {sorted(set(fused.switches) - set(fused.scalars))} are not scalars")


def _check_reported(at: str, space: Mapping[str, Param], name: str, value: Any) -> None:
    param = space.get(name)
    if param is None:
        raise RegistryError(f"{at}: reported configuration names {name!r}, which is not in its space")
    try:
        if isinstance(param, (FloatParam, IntParam)):
            param.check_value(value, f"{at}: reported {name}")
            return
    except UserError as e:
        raise RegistryError(str(e)) from None
    allowed = param.choices if isinstance(param, ChoiceParam) else (param.value,)
    if value not in allowed:
        raise RegistryError(f"{at}: reported {name} = {value!r} is not one of {list(allowed)}")


def _families() -> dict[str, Family]:
    return {**_builtins(), **_FAMILIES}


def family_names() -> list[str]:
    return sorted(_families())


def get_family(name: str, where: str = "family") -> Family:
    families = _families()
    if name not in families:
        raise UserError(f"{where}: unknown family {name!r}; valid: {', '.join(sorted(families))}")
    return families[name]


def _builtins() -> dict[str, Family]:
    """Every FAMILY of a module in `models/`, checked, found the first time a family is asked for."""
    if _BUILTINS:
        return _BUILTINS
    package = importlib.import_module(MODELS_PACKAGE)
    found: dict[str, Family] = {}
    for module_info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{MODELS_PACKAGE}.{module_info.name}")
        family = getattr(module, "FAMILY", None)
        if family is None:
            continue
        if family.name in found:
            raise RegistryError(f"family {family.name!r} is declared by two files of {MODELS_PACKAGE}/")
        found[family.name] = _checked(family)
    _BUILTINS.update(found)
    return _BUILTINS
