import pytest

from harness.core.errors import UserError
from harness.family import registry
from harness.family.registry import RegistryError, get_family, register_family
from harness.family.space import FloatParam, IntParam
from models import vae


@pytest.fixture(autouse=True)
def private_registry(monkeypatch):
    """Tests register throwaway families; keep them out of the real registry."""
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))


def family_kwargs(**changes):
    kwargs = dict(kind="autoencoder", space={"lr": FloatParam(1e-4, 1e-2, 1e-3, log=True)}, metrics={"loss": "minimize"},
                  build=vae.build, make_optimizers=vae.make_optimizers, train_step=vae.train_step,
                  eval_step=vae.eval_step, budget_optimizer="vae")
    kwargs.update(changes)
    return kwargs


def test_register_and_get():
    family = register_family("tiny_vae", **family_kwargs())
    assert get_family("tiny_vae") is family
    assert "tiny_vae" in registry.family_names()


def test_duplicate_name_is_refused():
    register_family("twice", **family_kwargs())
    with pytest.raises(RegistryError, match="already registered"):
        register_family("twice", **family_kwargs())


def test_builtin_name_cannot_be_taken():
    with pytest.raises(RegistryError, match="'vae' is already registered"):
        register_family("vae", **family_kwargs())


@pytest.mark.parametrize("name", ["VAE", "1vae", "my-vae", "", "a" * 40, "vae name", 3])
def test_malformed_names_are_refused(name):
    with pytest.raises(RegistryError, match="must match"):
        register_family(name, **family_kwargs())


@pytest.mark.parametrize("changes, message", [
    ({"space": {}}, "empty hyperparameter space"),
    ({"space": {"Bad-Name": FloatParam(0.1, 1.0, 0.5)}}, "parameter name"),
    ({"space": {"lr": (1e-4, 1e-2)}}, "is not a Param"),
    ({"metrics": {}}, "no metrics"),
    ({"metrics": {"loss": "lower"}}, "must be one of"),
    ({"build": "not a function"}, "build is not callable"),
    ({"train_step": None}, "train_step is not callable"),
    ({"space": {"lr": FloatParam(1e-4, 1e-2, 1e-3, when=("mode", "a"))}}, "depends on 'mode', which must come before it"),
    ({"budget_optimizer": None}, "budget_optimizer must name the optimizer whose steps are the budget"),
])
def test_malformed_declarations_are_refused(changes, message):
    with pytest.raises(RegistryError, match=message):
        register_family("broken", **family_kwargs(**changes))
    assert "broken" not in registry.family_names()


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
