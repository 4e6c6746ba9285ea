import importlib
import importlib.util
import inspect

import pytest

from conftest import REPO
from harness.core.errors import UserError
from harness.family import contract, registry
from harness.family.contract import Family
from harness.family.registry import RegistryError, get_family, register_family
from harness.family.space import FloatParam, IntParam
from models import vae


@pytest.fixture(autouse=True)
def private_registry(monkeypatch):
    """Tests register throwaway families; keep them out of the real registry."""
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))


def declared(**changes) -> Family:
    """A small, valid family to change one field of."""
    fields = dict(name="tiny_vae", kind="autoencoder", help="a test family",
                  space={"lr": FloatParam(1e-4, 1e-2, 1e-3, log=True)}, metrics={"loss": "minimize"},
                  build=vae.build, make_optimizers=vae.make_optimizers, train_step=vae.train_step,
                  eval_step=vae.eval_step, budget_optimizer="vae")
    return Family(**{**fields, **changes})


def test_register_and_get():
    family = register_family(declared())
    assert get_family("tiny_vae") is family
    assert "tiny_vae" in registry.family_names()
    assert family.curves == () and family.plots[:2] == ("samples", "loss_curves")  # the kind's, for its metrics


def test_duplicate_name_is_refused():
    register_family(declared(name="twice"))
    with pytest.raises(RegistryError, match="already registered"):
        register_family(declared(name="twice"))


def test_builtin_name_cannot_be_taken():
    with pytest.raises(RegistryError, match="'vae' is already registered"):
        register_family(declared(name="vae"))


def test_only_a_family_declaration_is_registered():
    with pytest.raises(RegistryError, match="takes a harness.family.Family, got dict"):
        register_family({"name": "loose"})


@pytest.mark.parametrize("name", ["VAE", "1vae", "my-vae", "", "a" * 40, "vae name", 3])
def test_malformed_names_are_refused(name):
    with pytest.raises(RegistryError, match="must match"):
        register_family(declared(name=name))


@pytest.mark.parametrize("changes, message", [
    ({"kind": "diffusion"}, "kind 'diffusion' must be one of"),
    ({"space": {}}, "empty hyperparameter space"),
    ({"space": {"Bad-Name": FloatParam(0.1, 1.0, 0.5)}}, "parameter name"),
    ({"space": {"lr": (1e-4, 1e-2)}}, "is not a Param"),
    ({"metrics": {}}, "no metrics"),
    ({"metrics": {"loss": "lower"}}, "must be one of"),
    ({"build": "not a function"}, "build is not callable"),
    ({"train_step": None}, "train_step is not callable"),
    ({"space": {"lr": FloatParam(1e-4, 1e-2, 1e-3, when=("mode", "a"))}}, "depends on 'mode', which must come before it"),
    ({"budget_optimizer": None}, "budget_optimizer must name the optimizer whose steps are the budget"),
    ({"output_range": (0.0, 255.0)}, "output_range"),
    ({"reported": {"width": 3}}, "reported configuration names 'width', which is not in its space"),
    ({"curves": ("kl",)}, "curve 'kl' is not one of its metrics"),
    ({"plots": ("reconstructions",), "kind": "adversarial"}, "does not suit the adversarial kind"),
])
def test_malformed_declarations_are_refused(changes, message):
    with pytest.raises(RegistryError, match=message):
        register_family(declared(name="broken", **changes))
    assert "broken" not in registry.family_names()


@pytest.mark.parametrize("name", ["vae", "resnet_vae", "gan", "dcgan", "wgan_gp"])
def test_every_model_file_keeps_to_the_contract(name):
    """Each function a family names takes what the contract's Protocol says, by name and in order,
    so the loop can call any family the same way (a type checker holds the files to the same)."""
    family = get_family(name)
    for field, protocol in [("build", contract.Build), ("make_optimizers", contract.MakeOptimizers),
                            ("train_step", contract.TrainStep), ("eval_step", contract.EvalStep)]:
        assert parameters(getattr(family, field)) == parameters(protocol.__call__)[1:], f"{name}.{field}"
    if family.fused is not None:
        assert parameters(family.fused.step) == ["stack", "x", "noise", "params", "optimizers", "fast", "progress"]
    module = importlib.import_module(f"models.{name}")
    assert module.FAMILY.name == name  # each file declares its own family, under its own name


def parameters(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


OUTSIDE_FAMILY = '''"""A family written outside genbench: a linear VAE, one file."""
import torch
from torch import nn
from torch.nn import functional as F

from harness.family import Family, FloatParam, IntParam


class LinearVAE(nn.Module):
    def __init__(self, pixels: int, latent_dim: int, shape: tuple[int, int, int]):
        super().__init__()
        self.latent_dim, self.shape = latent_dim, shape
        self.encoder_net = nn.Linear(pixels, 2 * latent_dim)  # (B, C*S*S) -> (B, 2Z)
        self.decoder_net = nn.Linear(latent_dim, pixels)  # (B, Z) -> (B, C*S*S)

    def encoder(self, x):
        return self.encoder_net(x.flatten(1)).chunk(2, dim=1)  # mu, logvar: (B, Z) each

    def decoder(self, z):
        return torch.sigmoid(self.decoder_net(z)).view(-1, *self.shape)

    def reconstruct(self, x):
        return self.decoder(self.encoder(x)[0])

    def sample(self, z):
        return self.decoder(z)


def build(params, channels, image_size):
    return LinearVAE(channels * image_size ** 2, int(params["latent_dim"]), (channels, image_size, image_size))


def make_optimizers(model, params, fast):
    return {"ae": fast.adam(model.parameters(), lr=params["lr"])}


def train_step(model, x, optimizers, params, fast, progress):
    mu, logvar = model.encoder(x)
    recon = model.decoder(mu + torch.randn_like(mu) * torch.exp(0.5 * logvar))
    recon_mse = F.mse_loss(recon, x)
    kl = (-0.5 * (1 + logvar - mu ** 2 - logvar.exp())).sum(1).mean()
    loss = recon_mse + 1e-3 * kl
    optimizers["ae"].zero_grad()
    loss.backward()
    optimizers["ae"].step()
    return {"loss": loss.detach(), "recon_mse": recon_mse.detach(), "kl": kl.detach()}


@torch.no_grad()
def eval_step(model, x, params):
    mu, logvar = model.encoder(x)
    recon_mse = F.mse_loss(model.decoder(mu), x)
    kl = (-0.5 * (1 + logvar - mu ** 2 - logvar.exp())).sum(1).mean()
    return {"loss": recon_mse + 1e-3 * kl, "recon_mse": recon_mse, "kl": kl}


FAMILY = Family(name="linear_vae", kind="autoencoder", help="a linear VAE from outside",
                space={"lr": FloatParam(1e-4, 1e-2, 1e-3, log=True), "latent_dim": IntParam(2, 16, 4),
                       "batch_size": IntParam(8, 64, 16)},
                metrics={"recon_mse": "minimize", "kl": "minimize", "loss": "minimize"},
                build=build, make_optimizers=make_optimizers, train_step=train_step, eval_step=eval_step,
                budget_optimizer="ae")
'''


def test_a_family_from_a_file_outside_the_package_registers_and_trains(tmp_path):
    from harness.data.datasets import load_dataset
    from harness.training.loop import TrainConfig, train

    path = tmp_path / "linear_vae.py"
    path.write_text(OUTSIDE_FAMILY)
    spec = importlib.util.spec_from_file_location("linear_vae", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    family = register_family(module.FAMILY)
    assert get_family("linear_vae") is family and family.curves == ("recon_mse", "kl")
    data = load_dataset("synthfaces", {"n": 120, "size": 32})
    result = train(family, family.defaults, data, TrainConfig(steps=6, rounds=2, seed=0))
    assert [round(r["steps"]) for r in result.history] == [3, 6]
    assert result.history[-1]["val_recon_mse"] < result.history[0]["val_recon_mse"] * 1.5


def test_a_new_file_in_the_models_package_is_a_family_with_nothing_else_changed(tmp_path, monkeypatch):
    package = tmp_path / "more_models"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "linear_vae.py").write_text(OUTSIDE_FAMILY)
    (package / "helpers.py").write_text("X = 1  # a module with no FAMILY is not a family\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "MODELS_PACKAGE", "more_models")
    monkeypatch.setattr(registry, "_BUILTINS", {})
    assert registry.family_names() == ["linear_vae"]
    assert get_family("linear_vae").budget_optimizer == "ae"


def test_two_files_declaring_one_name_are_refused(tmp_path, monkeypatch):
    package = tmp_path / "twin_models"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in ("a", "b"):
        (package / f"{name}.py").write_text(OUTSIDE_FAMILY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "MODELS_PACKAGE", "twin_models")
    monkeypatch.setattr(registry, "_BUILTINS", {})
    with pytest.raises(RegistryError, match="'linear_vae' is declared by two files of twin_models/"):
        registry.family_names()


def test_unknown_family_is_a_user_error_listing_valid_ones():
    with pytest.raises(UserError, match=r"unknown family 'vea'; valid: .*vae"):
        get_family("vea")


def test_vae_space_names_the_reports_knobs():
    space = get_family("vae").space
    assert {"kl_weight", "latent_dim", "lr", "dropout", "weight_decay", "batch_size"} <= set(space)
    assert isinstance(space["kl_weight"], FloatParam) and space["kl_weight"].log
    assert isinstance(space["latent_dim"], IntParam)
    assert space["lr"].default == 1e-3 and space["weight_decay"].default == 1e-5  # the reports' values


def test_defaults_are_every_parameter_at_its_default_and_a_fresh_dict():
    vae = get_family("vae")
    assert vae.defaults == {name: param.default for name, param in vae.space.items()}
    assert vae.defaults["kl_weight"] == vae.space["kl_weight"].default
    vae.defaults["lr"] = 99.0  # a caller changing its copy changes nothing for the next one
    assert vae.defaults["lr"] == vae.space["lr"].default


def test_the_built_in_families_are_the_files_of_models():
    files = sorted(p.stem for p in (REPO / "models").glob("*.py") if p.stem != "__init__")
    assert registry.family_names() == sorted(files) == ["dcgan", "gan", "resnet_vae", "vae", "wgan_gp"]
