"""Fused packs (harness/training/packs.py): a member is the trial it would be alone, step for step.

The tolerance. A member and its lone twin do the same arithmetic in a different order (a grouped
convolution instead of P convolutions, one backward through a stack), so they differ by rounding
only, and rounding grows: Adam turns a rounding-level gradient into a step of up to lr where the
true gradient is zero (a conv bias before BatchNorm), and a short GAN run is chaotic. Measured on
this project's CPU in fp32, 8 steps apart: members differed from their twins by up to 1.3 % in a
training loss, and so did the same lone trial on 1 against 2 CPU threads (0.85 %). A tolerance that
loose would let real mistakes through, so the exactness tests run in fp64: there rounding starts
near 1e-16, the largest difference measured after 8 steps was 1.3e-8 (a GAN discriminator's conv
bias), and anything wrong (another member's batch or noise, a wrong learning rate, a BatchNorm
statistic updated by a pass the member would not have run, a step a masked member should not have
taken) moves parameters by about lr = 1e-4 .. 1e-3 in one step. 1e-6 sits between the two; the
negative-control test shows a wrong noise stream is caught. In fp32 the first two steps' training
losses agree to 1e-3.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

import pytest
import torch

from harness.data.datasets import load_dataset
from harness.family.fast_path import FastPath
from harness.family.fused import Stack, template_of
from harness.family.registry import get_family
from harness.training import packs
from harness.training.loop import Diverged, TrainConfig, TrainHooks, TrainResult, load_model, save_model, train
from harness.training.packs import pack_fast, pack_key, train_pack, why_not_packable

PARAMETER_TOLERANCE = 1e-6  # fp64: see the module docstring
NO_SCORES = TrainHooks(scorers=[])

# Three members per family, differing in what a pack may differ in: learning rates, betas, loss
# weights, the KL warm-up and (GANs) the D:G ratio, so the members take D and G steps out of phase.
MEMBERS: dict[str, list[dict[str, Any]]] = {
    "vae": [{"kl_weight": 5e-5, "lr": 1e-3}, {"kl_weight": 1e-3, "lr": 5e-4, "weight_decay": 1e-4},
            {"kl_weight": 1e-2, "lr": 2e-3, "kl_warmup": 0.3}],
    "gan": [{"d_steps": 1}, {"d_steps": 2, "lr_d": 5e-4}, {"d_steps": 3, "d_loss_factor": 1.0, "beta1": 0.5}],
    "dcgan": [{"d_steps": 1, "width": 16}, {"d_steps": 2, "lr_g": 1e-3, "width": 16}, {"beta1": 0.9, "d_steps": 3, "width": 16}],
}


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthfaces", {"n": 300, "size": 32})


@contextmanager
def float64() -> Iterator[None]:
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def configs(family: str, batch_size: int = 16) -> list[dict[str, Any]]:
    f = get_family(family)
    return [f.defaults | {"batch_size": batch_size} | member for member in MEMBERS[family]]


def alone_and_packed(family: str, data, steps: int, rounds: int) -> tuple[list[TrainResult], list[TrainResult | Diverged]]:
    f = get_family(family)
    params = configs(family)
    settings = [TrainConfig(steps=steps, rounds=rounds, seed=5 + i) for i in range(len(params))]
    alone = [train(f, p, data, c, NO_SCORES) for p, c in zip(params, settings)]
    packed = train_pack(f, [(p, c, NO_SCORES) for p, c in zip(params, settings)], data)
    return alone, packed


def largest_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max((sa[k] - sb[k]).abs().max().item() for k in sa if torch.is_tensor(sa[k]) and sa[k].is_floating_point())


def loss_keys(history: list[Mapping[str, float]]) -> list[str]:
    return [k for k in history[0] if k.startswith(("train_", "val_")) and "per_s" not in k]


@pytest.mark.parametrize("family", [pytest.param("vae", marks=pytest.mark.slow), pytest.param("gan", marks=pytest.mark.slow),
                                    "dcgan"])
def test_a_member_matches_the_same_trial_trained_alone_step_for_step(family, data):
    with float64():
        alone, packed = alone_and_packed(family, data, steps=8, rounds=4)
    for lone, member in zip(alone, packed):
        assert isinstance(member, TrainResult)
        assert next(member.model.parameters()).dtype == torch.float64
        assert [h["steps"] for h in member.history] == [h["steps"] for h in lone.history] == [2, 4, 6, 8]
        assert [h["images_seen"] for h in member.history] == [h["images_seen"] for h in lone.history]
        for mine, theirs in zip(member.history, lone.history):  # every round's losses (logged in fp32)
            for key in loss_keys(lone.history):
                assert mine[key] == pytest.approx(theirs[key], rel=1e-6, abs=1e-9), key
        assert [p["steps"] for p in member.curve] == [p["steps"] for p in lone.curve] == list(range(1, 9))
        for mine, theirs in zip(member.curve, lone.curve):  # its own per-step curve, point for point
            assert mine.keys() == theirs.keys() and len(mine) == 1 + len(get_family(family).curves)
            for key in mine:
                assert mine[key] == pytest.approx(theirs[key], rel=1e-6, abs=1e-9), key
        assert largest_difference(member.model, lone.model) < PARAMETER_TOLERANCE
    if family != "vae":  # the D:G ratios really put the members out of phase
        assert len({h["steps_d"] for h in (m.history[-1] for m in packed)}) == 3


@pytest.mark.slow
def test_the_comparison_catches_a_member_drawing_the_wrong_noise(data, monkeypatch):
    """Negative control: the same test, with each member's generator one seed off, must fail."""
    real = packs.member_generator
    monkeypatch.setattr(packs, "member_generator", lambda seed, device: real(seed, device).manual_seed(seed + 1))
    with float64():
        alone, packed = alone_and_packed("vae", data, steps=4, rounds=1)
    assert min(largest_difference(m.model, a.model) for m, a in zip(packed, alone)) > 1000 * PARAMETER_TOLERANCE


@pytest.mark.parametrize("family", ["vae", "dcgan"])
def test_in_fp32_the_first_steps_training_losses_agree_to_rounding(family, data):
    """fp32, as studies run: training losses (batch statistics, so a pre-BatchNorm bias's rounding
    noise does not reach them) of the first two steps, to 1e-3 (measured: at most 1.7e-4)."""
    alone, packed = alone_and_packed(family, data, steps=2, rounds=2)
    for lone, member in zip(alone, packed):
        for mine, theirs in zip(member.history, lone.history):
            for key in (k for k in loss_keys(lone.history) if k.startswith("train_")):
                assert mine[key] == pytest.approx(theirs[key], rel=1e-3, abs=1e-7), key


@pytest.mark.slow
def test_a_member_checkpoint_loads_and_resumes_as_an_ordinary_trial(data, tmp_path):
    """A member's model file is an ordinary model of its family, and its checkpoint resumes alone to
    the same end as the member (its own random generator's state is in it)."""
    family = get_family("vae")
    params = configs("vae")
    saved: list[list[dict]] = [[] for _ in params]
    settings = [TrainConfig(steps=8, rounds=2, seed=5 + i, checkpoint_every=1) for i in range(len(params))]
    with float64():
        packed = train_pack(family, [(p, c, TrainHooks(scorers=[], save_checkpoint=saved[i].append))
                                     for i, (p, c) in enumerate(zip(params, settings))], data)
        member = packed[1]
        save_model(member.model, "vae", params[1], data.channels, data.image_size, tmp_path)
        loaded = load_model(tmp_path).double()
        z = torch.randn(4, member.model.latent_dim)
        assert torch.equal(loaded.sample(z), member.model.eval().sample(z))
        assert len(saved[1]) == 1 and saved[1][0]["round"] == 1
        resumed = train(family, params[1], data, settings[1], NO_SCORES, resume=saved[1][0])
    assert largest_difference(resumed.model, member.model) < PARAMETER_TOLERANCE
    assert resumed.history[-1]["val_loss"] == pytest.approx(member.history[-1]["val_loss"], rel=1e-6)


@pytest.mark.slow
def test_a_diverging_member_fails_alone_and_the_others_go_on(data):
    family = get_family("gan")
    params = configs("gan")
    params[1] = params[1] | {"lr_d": 1e5, "lr_g": 1e5}  # blows up within a few steps
    settings = [TrainConfig(steps=12, rounds=2, seed=5 + i) for i in range(3)]
    with float64():
        packed = train_pack(family, [(p, c, NO_SCORES) for p, c in zip(params, settings)], data)
        lone = train(family, params[2], data, settings[2], NO_SCORES)
    assert isinstance(packed[1], Diverged), packed[1]
    assert isinstance(packed[0], TrainResult) and isinstance(packed[2], TrainResult)
    assert packed[2].history[-1]["steps"] == 12
    assert largest_difference(packed[2].model, lone.model) < PARAMETER_TOLERANCE


def test_a_pruned_member_stops_and_the_others_train_to_the_end(data):
    family = get_family("vae")
    params = configs("vae")
    rounds_seen: list[list[int]] = [[] for _ in params]

    def hooks(i: int) -> TrainHooks:
        def on_round(round_: int, metrics: dict[str, float], model: torch.nn.Module) -> bool:
            rounds_seen[i].append(round_)
            return i == 0 and round_ == 1  # the pruner stops member 0 after its first round
        return TrainHooks(scorers=[], on_round=on_round)

    packed = train_pack(family, [(p, TrainConfig(steps=9, rounds=3, seed=i), hooks(i)) for i, p in enumerate(params)],
                        data)
    assert rounds_seen == [[1], [1, 2, 3], [1, 2, 3]]
    assert packed[0].stopped_at == 3 and packed[1].stopped_at is None
    assert [len(r.history) for r in packed] == [1, 3, 3]


def test_each_member_hands_its_own_per_step_curve_to_its_own_hooks(data):
    """A pack member's curve goes to its own run (its sink's on_curve), one call a round."""
    family = get_family("vae")
    params = configs("vae")[:2]
    received: list[list[list[dict]]] = [[], []]
    hooks = [TrainHooks(scorers=[], on_curve=received[i].append) for i in range(2)]
    packed = train_pack(family, [(p, TrainConfig(steps=6, rounds=2, seed=i, curve_every=2), h)
                                 for i, (p, h) in enumerate(zip(params, hooks))], data)
    for member, calls in zip(packed, received):
        assert [[p["steps"] for p in points] for points in calls] == [[2], [4, 6]]  # rounds end at 3 and 6
        assert sum(calls, []) == member.curve
    assert packed[0].curve[-1]["per_step/train_recon_mse"] != packed[1].curve[-1]["per_step/train_recon_mse"]


def test_members_drop_out_at_their_own_rates():
    """Dropout rates are per member: a pack of the conv VAE at 0.1 and 0.5 drops those fractions."""
    vae = get_family("vae")
    models = [vae.build(vae.defaults | {"dropout": rate}, 1, 32) for rate in (0.1, 0.5)]
    stack = Stack(template_of(models[0]), models)
    out = stack("encoder.layer1.drop", torch.ones(2, 100, 16, 8, 8))  # (P, B, C, H, W)
    for member, rate in zip(out, (0.1, 0.5)):
        assert (member == 0).float().mean().item() == pytest.approx(rate, abs=0.01)
        assert member[member != 0].unique().tolist() == [pytest.approx(1 / (1 - rate))]
    assert stack.template.get_submodule("encoder.layer1.drop").rate is None  # nothing left behind


def test_a_pack_trains_members_with_different_dropout_rates(data):
    vae = get_family("vae")
    params = [vae.defaults | {"batch_size": 16, "dropout": rate} for rate in (0.1, 0.3)]
    assert pack_key(vae, params[0]) == pack_key(vae, params[1])
    assert pack_key(vae, params[0]) != pack_key(vae, params[0] | {"dropout": 0.0})  # 0 builds no Dropout
    packed = train_pack(vae, [(p, TrainConfig(steps=6, rounds=2, seed=i), NO_SCORES) for i, p in enumerate(params)], data)
    assert all(isinstance(r, TrainResult) and r.history[-1]["steps"] == 6 for r in packed)
    assert packed[0].history[-1]["train_loss"] != packed[1].history[-1]["train_loss"]


def test_packs_hold_only_trials_that_differ_in_scalars():
    vae = get_family("vae")
    same = [(p, TrainConfig(steps=4, seed=0)) for p in configs("vae")]
    assert why_not_packable(vae, same) is None
    assert pack_key(vae, same[0][0]) == pack_key(vae, same[2][0])
    other_latent = [same[0], (same[1][0] | {"latent_dim": 16}, same[1][1])]
    assert "differ in more than the fused scalars" in why_not_packable(vae, other_latent)
    other_budget = [same[0], (same[1][0], TrainConfig(steps=5, seed=0))]
    assert "budget" in why_not_packable(vae, other_budget)
    assert pack_key(get_family("wgan_gp"), get_family("wgan_gp").defaults) is None
    layout = FastPath(channels_last=True)  # a stack of channels-last weights breaks the CPU conv backward
    assert "channels-last" in why_not_packable(vae, [(p, TrainConfig(steps=4, seed=0, fast=layout)) for p, _ in same])
    assert pack_fast(layout) == FastPath() and pack_fast(FastPath(autocast=True)).autocast
    with pytest.raises(ValueError, match="not one pack"):
        train_pack(vae, [(p, c, NO_SCORES) for p, c in other_latent], None)


@pytest.mark.slow
def test_a_study_with_pack_trains_its_grid_as_one_pack_and_records_each_trial_alone(runs_dir, smoke_runs, capsys):
    """`make study STUDY=smoke PACK=2`: both grid points train as one fused pack, each stays its own
    Optuna trial and MLflow child run with its own metrics and files, and ends where the same study
    without a pack ends (fp32, 16 steps: rounding only, so 1e-2 relative; measured 1.5e-3 and 1.2e-5)."""
    import optuna
    from mlflow import MlflowClient

    from conftest import mlflow_runs, split_runs
    from harness.cli import main

    assert main(["study", "smoke", "--device", "cpu", "--pack", "2"]) == 0
    assert "fused packs of up to 2" in capsys.readouterr().out
    packed = optuna.load_study(study_name="smoke-v2", storage=f"sqlite:///{runs_dir / 'optuna.db'}").get_trials()
    alone = optuna.load_study(study_name="smoke-v2", storage=f"sqlite:///{smoke_runs / 'optuna.db'}").get_trials()
    assert [t.state.name for t in packed] == ["COMPLETE", "COMPLETE"]
    assert [t.user_attrs["fused_pack"] for t in packed] == [[0, 1], [0, 1]]
    by_kl = {t.params["kl_weight"]: t.value for t in alone}
    for trial in packed:
        assert trial.value == pytest.approx(by_kl[trial.params["kl_weight"]], rel=1e-2)
    assert len({t.value for t in packed}) == 2  # each member scored on its own
    _, children = split_runs(mlflow_runs(runs_dir, "smoke-v2"))
    client = MlflowClient(tracking_uri=f"sqlite:///{runs_dir / 'mlflow.db'}")
    assert len(children) == 2
    for run in children:
        assert run.data.tags["fused_pack"] == "trials 0,1" and run.info.status == "FINISHED"
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"samples.png", "model.pt", "model.json",
                                                                             "reconstructions.png", "loss_curves.png"}
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_recon_mse")] == [8, 16]


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["vae", "dcgan"])
def test_on_a_gpu_members_train_like_their_lone_twins(family):
    """On CUDA (fp32, the plain path; cuDNN picks its own algorithms) the first two steps' training
    losses of each member agree with the lone trial's to 1e-3, as on the CPU."""
    data = load_dataset("synthfaces", {"n": 300, "size": 32}).place(torch.device("cuda"))
    alone, packed = alone_and_packed(family, data, steps=2, rounds=2)
    for lone, member in zip(alone, packed):
        assert next(member.model.parameters()).is_cuda
        for mine, theirs in zip(member.history, lone.history):
            for key in (k for k in loss_keys(lone.history) if k.startswith("train_")):
                assert mine[key] == pytest.approx(theirs[key], rel=1e-3, abs=1e-6), key


@pytest.mark.gpu
def test_on_a_gpu_the_bench_measures_packs_of_4_8_and_16_with_their_memory(tmp_path):
    from harness.bench.speeds import bench_packs

    rows = bench_packs(torch.device("cuda"), tmp_path / "cache", seconds=0.5, families=["vae"])
    assert [(r["family"], r["size"]) for r in rows] == [("vae", 32), ("vae", 64)]
    for r in rows:
        assert set(r["images_per_s"]) == {"alone", "pack4", "pack8", "pack16"}
        assert 0 < r["peak_gib"]["pack4"] < r["peak_gib"]["pack16"]


@pytest.mark.slow
@pytest.mark.fault
def test_ctrl_c_twice_during_a_pack_leaves_no_run_running(runs_dir, tmp_path, monkeypatch, capsys):
    """Ctrl-C while a pack trains, and again while its runs close: every member's run ends KILLED,
    every member's trial FAIL, and the study exits 130, as for a lone trial."""
    import optuna

    from conftest import mlflow_runs, second_ctrl_c_while_runs_close, smoke_study_of, write_study
    from harness.cli import main
    from harness.family import registry
    from harness.family.fused import Fused
    from harness.family.registry import register_family
    from models import vae

    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))
    steps = []

    def interrupted_step(*args):
        steps.append(1)
        if len(steps) == 3:
            raise KeyboardInterrupt  # the first Ctrl-C, during the pack's training
        return vae.fused_train_step(*args)

    register_family(dataclasses.replace(vae.FAMILY, name="packed",
                                        fused=Fused(vae.FUSED.scalars, interrupted_step, vae.FUSED.switches)))
    second_ctrl_c_while_runs_close(monkeypatch)
    study = write_study(tmp_path, "twice", smoke_study_of("packed", "twice"))
    assert main(["study", str(study), "--device", "cpu", "--pack", "2"]) == 130
    assert len(steps) == 3
    runs = mlflow_runs(runs_dir, "twice-v2")
    children = [r for r in runs if "fused_pack" in r.data.tags]
    assert len(children) == 2 and not [r for r in runs if r.info.status == "RUNNING"]
    assert {r.info.status for r in runs} == {"KILLED"}
    trials = optuna.load_study(study_name="twice-v2", storage=f"sqlite:///{runs_dir / 'optuna.db'}").get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "FAIL"]
    assert all("interrupted" in t.user_attrs["failure_reason"] for t in trials)
