import optuna
import pytest

from harness.core.errors import UserError
from harness.family.space import ChoiceParam, FixedParam, FloatParam, IntParam, suggest
from models import vae


def test_vae_space_with_fixed_trial():
    values = {"kl_weight": 1e-3, "latent_dim": 32, "lr": 5e-4, "weight_decay": 1e-5, "dropout": 0.2, "batch_size": 64,
              "kl_warmup": 0.3}
    assert suggest(optuna.trial.FixedTrial(values), vae.SPACE) == values


def test_fixed_params_do_not_ask_the_trial():
    space = {"lr": FixedParam(1e-3), "latent_dim": IntParam(8, 64, 16)}
    assert suggest(optuna.trial.FixedTrial({"latent_dim": 8}), space) == {"lr": 1e-3, "latent_dim": 8}


def test_suggest_stays_in_range_with_a_real_trial():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        params = suggest(study.ask(), vae.SPACE)
        assert 5e-5 <= params["kl_weight"] <= 1e-2
        assert 8 <= params["latent_dim"] <= 256 and isinstance(params["latent_dim"], int)


KL = vae.SPACE["kl_weight"]


def test_override_scalar_fixes():
    assert KL.override(0.01, "w") == FixedParam(0.01, KL.help)


def test_override_list_gives_choices():
    param = KL.override([1e-4, 1e-3], "w")
    assert isinstance(param, ChoiceParam) and param.choices == (1e-4, 1e-3)


def test_override_range_narrows():
    param = KL.override({"low": 1e-4, "high": 1e-3}, "w")
    assert isinstance(param, FloatParam) and (param.low, param.high, param.log) == (1e-4, 1e-3, True)


@pytest.mark.parametrize("value, message", [
    ({"low": 1e-2, "high": 1e-3}, "empty range"),
    ({"low": 1e-3, "high": 1e-3}, "empty range"),
    ({"low": 0.0, "high": 1e-3}, "log range needs low > 0"),
    ({"low": 1e-4}, "a range is"),
    ({"low": 1e-4, "high": 1e-3, "step": 2}, "a range is"),
    ([], "empty list"),
    ([1e-3, 1e-3], "repeated values"),
    ("big", "expected a number"),
    (True, "expected a number"),
    (500.0, "outside the allowed"),
])
def test_bad_overrides_are_refused(value, message):
    with pytest.raises(UserError, match=message):
        KL.override(value, "space.vae.kl_weight")


def test_switching_a_range_to_log_needs_a_positive_low():
    dropout = vae.SPACE["dropout"]
    with pytest.raises(UserError, match="space.vae.dropout: a log range needs low > 0"):
        dropout.override({"low": 0.0, "high": 0.5, "log": True}, "space.vae.dropout")
    assert dropout.override({"low": 0.01, "high": 0.5, "log": True}, "w").log


def test_int_param_refuses_floats():
    with pytest.raises(UserError, match="expected an integer"):
        vae.SPACE["latent_dim"].override(32.0, "space.vae.latent_dim")


def test_choice_param_refuses_values_outside_its_choices():
    param = ChoiceParam(("relu", "leaky_relu"), "relu")
    assert param.override(["relu"], "w") == ChoiceParam(("relu",), "relu")
    with pytest.raises(UserError, match="not a choice; valid: 'relu', 'leaky_relu'"):
        param.override("gelu", "w")


def test_fixed_param_cannot_be_overridden():
    with pytest.raises(UserError, match="fixed"):
        FixedParam(3).override(4, "w")


def test_make_list_shows_ranges_as_a_person_writes_them(capsys):
    from harness.cli import main
    from harness.family.space import ChoiceParam, FixedParam, FloatParam, IntParam, shown

    assert shown(FloatParam(1e-5, 1e-2, 1e-3, log=True)) == "float 1e-05 .. 0.01, log scale"
    assert shown(IntParam(1, 10, 1, when=("schedule", "ratio"))) == "int 1 .. 10 (when schedule = ratio)"
    assert shown(ChoiceParam(("ratio", "threshold"), "ratio")) == "one of ratio, threshold"
    assert shown(FixedParam(64)) == "fixed at 64"
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "{'" not in out and "'type'" not in out  # no Python dicts
    assert "kl_weight" in out and "float 5e-05 .. 0.01, log scale" in out and "options: size = 32, n = 6000" in out
