"""The full scale's counted workload (harness/bench/workload.py) against answers known by hand."""

import pytest
import torch
from torch import nn

from harness.bench import workload
from harness.family.registry import get_family
from harness.study.studyfile import load_study


def test_the_counter_gives_the_textbook_count_of_a_layer_and_of_inception():
    with workload.FlopCount() as flops:
        nn.Linear(10, 20)(torch.zeros(3, 10))
    assert flops.total == 2 * 3 * 10 * 20  # a multiply and an add per weight per row
    with workload.FlopCount() as flops:
        nn.Conv2d(2, 4, 3, padding=1)(torch.zeros(1, 2, 5, 5))
    assert flops.total == 2 * 25 * 4 * 2 * 9
    assert workload.inception_flops_per_image() == pytest.approx(2 * 5.71e9, rel=0.02)  # 5.71 GMACs at 299 px


def test_a_step_scales_with_the_batch_and_counts_every_discriminator_turn():
    vae = get_family("vae")
    params = vae.defaults | vae.reported_config
    one, two = (workload.step_flops(vae, params | {"batch_size": b}, 1, 32) for b in (2, 4))
    assert one > 0 and two == 2 * one
    gan = get_family("gan")
    by_k = [workload.step_flops(gan, gan.defaults | gan.reported_config | {"batch_size": 2, "d_steps": k}, 1, 32)
            for k in (1, 2, 3)]
    d_step = by_k[1] - by_k[0]
    assert d_step > 0 and by_k[2] - by_k[1] == d_step  # one more discriminator step per k
    assert by_k[0] > d_step  # k = 1 is a discriminator step and the generator's
    params = gan.defaults | gan.reported_config | {"batch_size": 2, "d_steps": 3}
    assert workload.batch_flops(gan, params, 1, 32) == pytest.approx(by_k[2] / 4)  # 4 batches make the step


def test_a_study_is_its_trials_steps_and_scores():
    spec = load_study("smoke", "full")
    w = workload.study_workload(spec, channels=1, size=64, inception=1000)
    assert w.trials == spec.grid_size == 2
    (family, params), _ = workload.trial_configurations(spec)
    step = workload.step_flops(get_family(family), params, 1, 64)
    assert w.training == pytest.approx(w.trials * spec.steps * step)
    final = spec.scores.final_samples or workload.GPU_N
    assert w.images_scored == w.trials * (spec.rounds * spec.scores.round_samples + final)
    assert w.scoring == w.images_scored * 1000 and w.session == workload.SESSION_SETS * final * 1000
    assert w.hours_at(w.total) == pytest.approx(1 / 3600)


@pytest.mark.slow
def test_the_bench_turns_counts_into_time_at_the_measured_rate(tmp_path):
    from harness.bench.workload import bench_workload, workload_lines

    wgan = get_family("wgan_gp")  # 5 critic batches and a generator batch per step
    per_batch = workload.batch_flops(wgan, wgan.defaults | {"batch_size": 128}, 1, 64)
    measured = [{"family": "wgan_gp", "size": 64, "batch_size": 128, "fast_images_per_s": 500.0}]
    rows = bench_workload(measured, tmp_path / "cache", studies=["wgan_gp_sweep", "dcgan_lr_sweep"])
    wgan_row, dcgan_row = rows
    seconds = wgan_row["training_flops"] / (per_batch / 128 * 500.0)  # the measured images/s are batches x size
    assert wgan_row["training_seconds_here"] == pytest.approx(seconds)
    assert dcgan_row["training_seconds_here"] is None  # no rate measured for DCGAN: no time claimed
    lines = workload_lines(rows, "cpu")
    assert "wgan_gp_sweep-v3-full" in lines[2] and lines[3].endswith("n/a")
