"""The fast path's switches leave results numerically close to the plain path (same seed, same batches).

Tolerances, and why:
- Step 1 is a forward pass through identical weights. In fp32 only the order of the sums inside the
  kernels changes (channels_last) or nothing does (the optimizer has not run yet): a few fp32 unit
  roundoffs (6e-8) per reduction, measured <= 3e-7, allowed 1e-5. Under bf16 autocast every
  convolution rounds its inputs to 8 significant bits (unit roundoff 2^-8 = 3.9e-3 per value, mostly
  averaging out in the sums): measured <= 1.1e-3, allowed 1e-2.
- Steps 2-4 follow Adam updates, whose first steps move every weight by about lr whatever the size
  of its gradient, so a gradient component that rounding pushes across zero moves its weight by 2 lr:
  losses then differ by up to ~lr (1e-3 for the VAEs, 2e-4 for DCGAN). Measured <= 4.6e-4 in fp32,
  allowed 2e-3; bf16 measured <= 1.3e-2, allowed 3e-2.
- After two epochs (30 steps) those differences compound: the conv VAE's validation loss moved by
  <= 1.5e-3 (fp32 switches) and 2.2e-2 (bf16) relative; allowed 1e-2 and 5e-2.
The ResNet18-VAE is left out of the multi-step checks: twenty BatchNorm layers amplify the same
roundings to 5e-3 within three steps (chaotic, not wrong); its first step is checked like the others.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from conftest import REPO, mlflow_runs, share_caches, split_runs, write_study
from harness.cli import main
from harness.core.errors import UserError
from harness.core.storage import Storage
from harness.data.datasets import load_dataset, to_model_range
from harness.family import fast_path as speed
from harness.family.registry import get_family
from harness.study.studyfile import load_study
from harness.training import phases
from harness.training.loop import Learner, StepCounter, TrainConfig, TrainHooks, train, train_round

LOSS_KEYS = {"vae": ["loss"], "resnet_vae": ["loss"], "gan": ["d_loss", "g_loss"], "dcgan": ["d_loss", "g_loss"],
             "wgan_gp": ["d_loss", "g_loss"]}
FP32_SWITCHES = {"fused_adam": speed.FastPath(fused_adam=True), "channels_last": speed.FastPath(channels_last=True)}
BF16 = speed.FastPath(autocast=True)
ALL_ON = speed.FastPath(autocast=True, channels_last=True, fused_adam=True)


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthfaces", {"n": 600, "size": 32})


def step_losses(family_name: str, fast: speed.FastPath, data, steps: int, batch_size: int = 16) -> list[dict[str, float]]:
    """The losses of the first `steps` training steps on fixed batches, from seed 0."""
    family = get_family(family_name)
    params = {**family.defaults, "batch_size": batch_size}
    torch.manual_seed(0)
    with fast.applied():
        model = fast.prepare(family.build(params, data.channels, data.image_size))
        optimizers = family.make_optimizers(model, params, fast)
        losses = []
        for i in range(steps):
            x = fast.layout(to_model_range(data.train[i * batch_size:(i + 1) * batch_size], family.output_range))
            out = family.train_step(model, x, optimizers, params, fast, 0.0)
            losses.append({k: v.item() for k, v in out.items() if k in LOSS_KEYS[family_name]})
    return losses


def worst_relative(a: list[dict[str, float]], b: list[dict[str, float]]) -> list[float]:
    assert [set(x) for x in a] == [set(y) for y in b]
    return [max(abs(x[k] - y[k]) / abs(y[k]) for k in y) for x, y in zip(a, b)]


@pytest.mark.parametrize("family", [pytest.param(f, marks=pytest.mark.slow) if f == "resnet_vae" else f for f in sorted(LOSS_KEYS)])
def test_first_step_loss_is_close_to_the_plain_path(family, data):
    plain = step_losses(family, speed.PLAIN, data, 1)
    for name, fast in FP32_SWITCHES.items():
        assert worst_relative(step_losses(family, fast, data, 1), plain)[0] <= 1e-5, name
    deviation = worst_relative(step_losses(family, BF16, data, 1), plain)[0]
    assert 0 < deviation <= 1e-2  # > 0: autocast really ran the forward pass in bf16


@pytest.mark.parametrize("family", ["vae", "gan", "dcgan", "wgan_gp"])
def test_four_steps_of_losses_stay_close_to_the_plain_path(family, data):
    plain = step_losses(family, speed.PLAIN, data, 4)
    for name, fast in FP32_SWITCHES.items():
        assert max(worst_relative(step_losses(family, fast, data, 4), plain)) <= 2e-3, name
    assert max(worst_relative(step_losses(family, BF16, data, 4), plain)) <= 3e-2


@pytest.mark.slow
def test_two_epochs_end_at_a_validation_loss_close_to_the_plain_path(data):
    vae = get_family("vae")
    params = {**vae.defaults, "batch_size": 32}

    def val_loss(fast: speed.FastPath) -> float:
        return train(vae, params, data, TrainConfig(steps=30, seed=3, fast=fast), TrainHooks(scorers=[])).history[-1]["val_loss"]

    plain = val_loss(speed.PLAIN)
    for name, fast in FP32_SWITCHES.items():
        assert abs(val_loss(fast) - plain) / plain <= 1e-2, name
    assert abs(val_loss(ALL_ON) - plain) / plain <= 5e-2


def test_the_switches_do_what_they_say(data):
    vae = get_family("vae")
    params = {**vae.defaults, "batch_size": 32}
    model = ALL_ON.prepare(vae.build(params, 1, 32))
    optimizer = vae.make_optimizers(model, params, ALL_ON)["vae"]
    with ALL_ON.forward():
        recon, _, _ = model(to_model_range(data.train[:4], vae.output_range))
    assert optimizer.defaults["fused"] is True
    assert recon.dtype == torch.bfloat16
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    assert not vae.make_optimizers(vae.build(params, 1, 32), params, speed.PLAIN)["vae"].defaults.get("fused")


def test_auto_resolves_per_device():
    cpu = speed.Speed().resolve(torch.device("cpu"))
    assert (cpu.autocast, cpu.channels_last, cpu.cudnn_benchmark, cpu.compile) == (False, False, False, False)
    assert cpu.fused_adam == speed.fused_adam_available(torch.device("cpu"))
    cuda = speed.Speed(fused_adam="off").resolve(torch.device("cuda"))
    assert (cuda.autocast, cuda.channels_last, cuda.cudnn_benchmark, cuda.fused_adam) == (True, True, True, False)
    forced = speed.Speed(autocast="bf16", channels_last="on").resolve(torch.device("cpu"))
    assert (forced.autocast, forced.channels_last) == (True, True)
    assert speed.Speed(fused_adam="off", compile="on").resolve(torch.device("cuda")).compile
    off = speed.Speed(autocast="off", channels_last="off", fused_adam="off", cudnn_benchmark="off")
    assert off.resolve(torch.device("cuda")).params() == {
        "speed.autocast": False, "speed.channels_last": False, "speed.fused_adam": False,
        "speed.cudnn_benchmark": False, "speed.compile": False}


STUDY = """
name = "{name}"
version = 1
families = ["vae"]
trials = 1
steps = 4
rounds = 1
seed = 0
objective = "val_recon_mse"
[dataset]
name = "synthfaces"
n = 300
[speed]
{speed}
"""


@pytest.mark.slow
def test_compile_without_a_c_compiler_is_refused_before_anything_runs(tmp_path, runs_dir, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("CC", raising=False)
    path = write_study(tmp_path, "compiled", STUDY.format(name="compiled", speed='compile = "on"'))
    assert main(["study", str(path), "--device", "cpu"]) != 0
    err = capsys.readouterr().err.strip()
    assert "needs a C compiler" in err and len(err.splitlines()) == 1
    assert not (runs_dir / "mlflow.db").exists() or not mlflow_runs_exist(runs_dir)


def mlflow_runs_exist(runs_dir) -> bool:
    from mlflow import MlflowClient
    client = MlflowClient(tracking_uri=f"sqlite:///{runs_dir / 'mlflow.db'}")
    return any(client.search_runs([e.experiment_id]) for e in client.search_experiments())


def test_a_study_file_sets_the_switches(tmp_path):
    path = write_study(tmp_path, "fast", STUDY.format(name="fast", speed='autocast = "bf16"\ncompile = "on"'))
    spec = load_study(str(path))
    assert spec.speed == speed.Speed(autocast="bf16", compile="on")
    assert "speed" not in spec.identity()  # a faster path is the same study: it may resume one run without it


@pytest.mark.parametrize("line, message", [
    ('autocast = "fp16"', "speed.autocast: 'fp16'; valid: auto, bf16, off"),
    ('compiled = "on"', "unknown key 'compiled'; valid: autocast, channels_last, fused_adam, cudnn_benchmark, compile"),
])
def test_a_bad_speed_table_is_refused_in_one_line(tmp_path, runs_dir, capsys, line, message):
    path = write_study(tmp_path, "bad", STUDY.format(name="bad", speed=line))
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        load_study(str(path))
    assert main(["study", str(path), "--device", "cpu"]) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.slow
def test_every_trial_run_records_its_fast_path(smoke_runs):
    _, children = split_runs(mlflow_runs(smoke_runs, "smoke-v2"))
    assert children
    expected = {k: str(v) for k, v in speed.Speed().resolve(torch.device("cpu")).params().items()}
    for run in children:
        assert {k: run.data.params[k] for k in expected} == expected
        assert run.data.params["speed.data"] == "device-resident"


def test_profiling_splits_a_round_into_phases(data):
    vae = get_family("vae")
    params = {**vae.defaults, "batch_size": 32}
    torch.manual_seed(0)
    model = vae.build(params, 1, 32)
    optimizers = vae.make_optimizers(model, params, speed.PLAIN)
    optimizers["vae"].step()  # outside any phase, outside profiling: never counted
    batches = data.train_batches(32, torch.Generator().manual_seed(0))
    with phases.profiling(torch.device("cpu")) as profile:
        optimizers["vae"].step()  # inside profiling but outside a phase (say, an extractor's training): not counted
        counter = StepCounter(optimizers, "vae")
        steps = len(data.train) // 32 - 2
        metrics = train_round(Learner(vae, model, optimizers, counter, params), batches, steps, steps, phases=profile)
    assert counter.done == steps and metrics["train_loss"] > 0
    assert profile.calls["optimizer"] == steps and profile.calls["forward/backward"] == steps
    assert profile.calls["data"] == steps  # the round ends at its target: no batch drawn past it
    assert all(profile.seconds[name] > 0 for name in ("data", "forward/backward", "optimizer", "loss bookkeeping"))
    with phases.OFF.phase("outside"):  # the default profiler records nothing anywhere
        pass
    assert "outside" not in profile.seconds


def test_nested_phases_count_their_time_once():
    with phases.profiling(torch.device("cpu")) as profile:
        with profile.phase("outer"):
            x = torch.randn(300, 300)
            with profile.phase("inner"):
                for _ in range(20):
                    x = x @ x.T / 300
    total = profile.seconds["outer"] + profile.seconds["inner"]
    assert profile.seconds["inner"] > 0 and profile.seconds["outer"] > 0
    assert total == pytest.approx(sum(profile.seconds.values()))
    assert profile.calls == {"outer": 1, "inner": 1}


@pytest.mark.slow
def test_bench_measures_fast_and_plain_side_by_side(tmp_path):
    from harness.bench.speeds import bench_training, training_table

    rows = bench_training(torch.device("cpu"), tmp_path / "cache", seconds=0.2, sizes=(32,), families=["vae", "dcgan"])
    assert [(r["family"], r["size"]) for r in rows] == [("vae", 32), ("dcgan", 32)]
    for r in rows:
        assert r["fast_images_per_s"] > 0 and r["plain_images_per_s"] > 0 and r["fast_steps"] >= 3
        assert r["ratio"] == pytest.approx(r["fast_images_per_s"] / r["plain_images_per_s"])
    table = training_table(rows, "cpu")
    assert "fused_adam=" in table[0] and table[2].split()[:3] == ["vae", "32", "128"]


@pytest.mark.slow
def test_bench_measures_fused_packs_beside_one_trial_at_a_time(tmp_path):
    from harness.bench.speeds import bench_packs, pack_lines

    rows = bench_packs(torch.device("cpu"), tmp_path / "cache", seconds=0.2, families=["vae", "wgan_gp"])
    assert [(r["family"], r["size"]) for r in rows] == [("vae", 32)]  # WGAN-GP cannot be fused; a CPU benches 32 px
    (r,) = rows
    assert set(r["images_per_s"]) == {"alone", "pack4"} and all(v > 0 for v in r["images_per_s"].values())
    assert r["speedup"]["pack4"] == pytest.approx(r["images_per_s"]["pack4"] / r["images_per_s"]["alone"])
    assert r["peak_gib"] == {"alone": None, "pack4": None}  # torch counts no CPU memory
    assert pack_lines(rows, "cpu")[1].split()[:2] == ["vae", "32px"]


@pytest.mark.slow
def test_bench_overhead_profiles_a_real_trial(tmp_path, shared_caches):
    from harness.bench.speeds import OVERHEAD_PHASES, bench_overhead, overhead_lines

    share_caches(tmp_path / "runs", shared_caches)
    r = bench_overhead(torch.device("cpu"), Storage.from_env({"RUNS_DIR": str(tmp_path / "runs")}))
    per_epoch = r["per_epoch_seconds"]
    assert {"data", "forward/backward", "optimizer", "validation", "round scores", "tracking", "optuna",
            "checkpoint"} <= set(per_epoch)
    assert r["epoch_seconds"] == pytest.approx(sum(per_epoch.values()))
    assert r["overhead_seconds"] == pytest.approx(sum(per_epoch[k] for k in OVERHEAD_PHASES if k in per_epoch))
    assert 0 < r["overhead_fraction"] < 1 and r["plain_epoch_seconds"] > 0
    assert r["per_trial_seconds"]["final scores"] > 0 and r["per_trial_seconds"]["run artifacts"] > 0
    assert "%" in overhead_lines(r)[0]


@pytest.mark.slow
@pytest.mark.skipif(not speed.has_c_compiler(), reason="torch.compile on a CPU needs a C compiler (cc); none found")
def test_bench_compile_finds_the_break_even(tmp_path, monkeypatch):
    from harness.bench.speeds import bench_compile, compile_line

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    r = bench_compile(torch.device("cpu"), tmp_path / "cache", seconds=0.3)
    assert "skipped" not in r, r
    assert r["compiled_first_2_steps_s"] > r["eager_first_2_steps_s"]  # compiling takes time
    assert r["compile_seconds"] == pytest.approx(r["compiled_first_2_steps_s"] - r["eager_first_2_steps_s"])
    if r["compiled_step_ms"] < r["eager_step_ms"]:
        saved = (r["eager_step_ms"] - r["compiled_step_ms"]) / 1000
        assert r["break_even_steps"] == pytest.approx(r["compile_seconds"] / saved)
    else:
        assert r["break_even_steps"] is None and "never pays off" in compile_line(r)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")  # the cold cache was the bench's own


@pytest.mark.slow
@pytest.mark.skipif(not speed.has_c_compiler(), reason="torch.compile on a CPU needs a C compiler (cc); none found")
def test_compiled_model_gives_the_eager_losses(data):
    eager = dataclasses.replace(speed.PLAIN, fused_adam=True)
    plain = step_losses("vae", eager, data, 3)
    compiled = step_losses("vae", dataclasses.replace(eager, compile=True), data, 3)
    torch._dynamo.reset()
    # Inductor fuses and reorders fp32 arithmetic: the same tolerances as the other fp32 switches
    assert worst_relative(compiled, plain)[0] <= 1e-5
    assert max(worst_relative(compiled, plain)) <= 2e-3


def test_speed_keys_are_documented():
    readme = (REPO / "harness" / "README.md").read_text()  # its section "Speed: the fast path and `make bench`"
    for key in speed.CHOICES:
        assert f"`{key}`" in readme, f"harness/README.md does not document [speed] {key}"


@pytest.mark.gpu
def test_the_cuda_fast_path_ends_close_to_fp32_on_the_same_gpu(data):
    cuda = torch.device("cuda")
    vae = get_family("vae")
    params = {**vae.defaults, "batch_size": 32}
    placed = data.place(cuda)
    fast = speed.Speed().resolve(cuda)
    assert fast.autocast and fast.channels_last and fast.cudnn_benchmark

    def val_loss(path: speed.FastPath) -> float:
        return train(vae, params, placed, TrainConfig(steps=30, seed=3, fast=path), TrainHooks(scorers=[])).history[-1]["val_loss"]

    plain = val_loss(speed.PLAIN)
    assert abs(val_loss(fast) - plain) / plain <= 5e-2  # the bf16 tolerance of the CPU test above
