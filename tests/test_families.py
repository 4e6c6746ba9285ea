"""Every registered family: builds at 32/64 px and 1/3 channels, trains a step, samples, round-trips its space."""

import optuna
import pytest
import torch

from harness.data.datasets import to_model_range
from harness.family.fast_path import PLAIN
from harness.family.registry import family_names, get_family
from harness.family.space import suggest

SMALL = {"width": 8, "latent_dim": 16, "batch_size": 4}  # fast on a CPU; every family that has the knob


def params_for(name: str, **changes) -> dict:
    family = get_family(name)
    params = family.defaults
    params.update({k: v for k, v in SMALL.items() if k in params})
    if name == "resnet_vae":
        params["latent_dim"] = 32  # a choice of the report's sizes
    return {**params, **changes}


def test_the_reports_families_are_registered():
    assert {"vae", "resnet_vae", "gan", "dcgan", "wgan_gp"} <= set(family_names())


@pytest.mark.parametrize("name", family_names())
@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_build_train_and_sample(name, size, channels):
    family = get_family(name)
    params = params_for(name, progress=0.0)
    torch.manual_seed(0)
    model = family.build(params, channels, size)
    optimizers = family.make_optimizers(model, params, PLAIN)
    before = {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor) and v.is_floating_point()}
    x = to_model_range(torch.randint(0, 256, (4, channels, size, size), dtype=torch.uint8), family.output_range)
    outputs = [family.train_step(model, x, optimizers, params, PLAIN, 0.0) for _ in range(2)]  # adversarial: a D then a G step
    assert all(torch.isfinite(v).all() for out in outputs for v in out.values())
    changed = {k.split(".")[0] for k, v in model.state_dict().items() if k in before and not torch.equal(v, before[k])}
    expected = {"generator", "discriminator"} if family.kind == "adversarial" else {"encoder", "decoder"}
    assert expected <= changed  # every network learned something
    model.eval()
    low, high = family.output_range
    with torch.no_grad():
        samples = model.sample(torch.randn(3, model.latent_dim))
        assert samples.shape == (3, channels, size, size) and low <= samples.min() and samples.max() <= high
        if family.autoencoder:
            assert model.reconstruct(x).shape == x.shape
        scores = family.eval_step(model, x, params)
    assert set(scores) == set(family.metrics) and all(torch.isfinite(v) for v in scores.values())


@pytest.mark.parametrize("name", family_names())
def test_each_space_through_a_fixed_trial(name):
    space = get_family(name).space
    defaults = {k: p.default for k, p in space.items()}
    active = {k: v for k, v in defaults.items() if space[k].when is None or defaults[space[k].when[0]] == space[k].when[1]}
    assert suggest(optuna.trial.FixedTrial(defaults), space) == active
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    sampled = suggest(study.ask(), space)
    assert set(sampled) <= set(space) and set(active) - {"d_steps"} <= set(sampled)


@pytest.mark.parametrize("name", ["gan", "dcgan", "wgan_gp"])
def test_schedule_knobs_exist_only_for_their_schedule(name):
    space = get_family(name).space
    values = {k: p.default for k, p in space.items()}
    ratio = suggest(optuna.trial.FixedTrial({**values, "schedule": "ratio"}), space)
    threshold = suggest(optuna.trial.FixedTrial({**values, "schedule": "threshold"}), space)
    assert "d_steps" in ratio and not {"d_threshold", "g_threshold", "max_consecutive"} & set(ratio)
    assert "d_steps" not in threshold and {"d_threshold", "g_threshold", "max_consecutive"} <= set(threshold)


@pytest.mark.parametrize("name", family_names())
def test_sizes_a_family_cannot_take_are_value_errors(name):
    if name in ("vae", "gan"):
        size = 30  # needs a multiple of 4
    else:
        size = 28  # DCGAN needs a power of two, the ResNet a multiple of 8
    with pytest.raises(ValueError):
        get_family(name).build(params_for(name), 1, size)


def test_dcgan_follows_radford():
    family = get_family("dcgan")
    model = family.build(params_for("dcgan", width=32), 3, 64)
    layers = list(model.modules())
    assert not any(isinstance(m, (torch.nn.Linear, torch.nn.MaxPool2d, torch.nn.AvgPool2d)) for m in layers)
    convs = [m for m in layers if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert all(abs(m.weight.std().item() - 0.02) < 0.005 for m in convs if m.weight.numel() > 4000)
    assert any(isinstance(m, torch.nn.LeakyReLU) and m.negative_slope == 0.2 for m in model.discriminator.modules())
    assert isinstance(list(model.generator.modules())[-1], torch.nn.Tanh) and family.output_range == (-1.0, 1.0)
    assert family.space["beta1"].default == 0.5
    optimizers = family.make_optimizers(model, params_for("dcgan"), PLAIN)
    assert optimizers["g"].param_groups[0]["betas"] == (0.5, 0.999)
    dropout = family.build(params_for("dcgan", d_dropout=0.1), 1, 32)
    assert any(isinstance(m, torch.nn.Dropout) for m in dropout.discriminator.modules())


def test_wgan_gp_critic_has_no_batchnorm_and_the_papers_adam():
    family = get_family("wgan_gp")
    model = family.build(params_for("wgan_gp"), 1, 32)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.discriminator.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.generator.modules())
    optimizers = family.make_optimizers(model, params_for("wgan_gp"), PLAIN)
    assert optimizers["d"].param_groups[0]["betas"] == (0.0, 0.9) and optimizers["d"].param_groups[0]["lr"] == 1e-4
    assert family.space["d_steps"].default == 5 and family.space["gp_weight"].default == 10.0
    out = family.train_step(model, torch.rand(4, 1, 32, 32) * 2 - 1, optimizers, params_for("wgan_gp"), PLAIN, 0.0)
    assert "gp" in out and out["gp"] >= 0


def test_gan_is_built_from_the_vae_parts():
    from models import gan, vae
    model = get_family("gan").build(params_for("gan"), 1, 32)
    assert isinstance(model.generator, vae.Decoder) and model.discriminator.fc.out_features == 1
    assert isinstance(model.discriminator.layer2, vae.ConvBNReLU)
    assert gan.SPACE["d_loss_factor"].default == 0.5


def test_resnet_vae_uses_resnet18_blocks():
    from torchvision.models.resnet import BasicBlock
    model = get_family("resnet_vae").build(params_for("resnet_vae", width=64), 3, 64)
    assert sum(isinstance(m, BasicBlock) for m in model.encoder.modules()) == 8  # [2, 2, 2, 2], as resnet18
    assert model.encoder.layer4[0].conv1.out_channels == 512
    assert get_family("resnet_vae").space["latent_dim"].choices == (32, 64, 128, 256, 512)


def test_kl_warm_up_is_a_fraction_of_the_budget_grows_linearly_and_is_logged():
    from models.vae import kl_weight_now
    params = {"kl_weight": 0.01, "kl_warmup": 0.4}
    assert [kl_weight_now(params, p) for p in (0.1, 0.2, 0.4, 0.9)] == pytest.approx([0.0025, 0.005, 0.01, 0.01])
    assert kl_weight_now({"kl_weight": 0.01, "kl_warmup": 0.0}, 0.0) == 0.01
    assert kl_weight_now(params) == 0.01  # evaluation: no progress, the full weight
    from harness.data.datasets import load_dataset
    from harness.training.loop import TrainConfig, train
    data = load_dataset("synthfaces", {"n": 200})
    # 40 steps in 4 rounds; step i (from 0) has progress i/40, so the weight is 0.01 * min(1, i/20)
    history = train(get_family("vae"), params_for("vae", kl_warmup=0.5, kl_weight=0.01, batch_size=16), data,
                    TrainConfig(steps=40, rounds=4, seed=0)).history
    assert [h["train_kl_weight"] for h in history] == pytest.approx([0.00225, 0.00725, 0.01, 0.01])
