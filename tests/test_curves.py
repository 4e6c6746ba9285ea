"""Per-step loss curves (issue 16, item 5) and quality against cost (item 4): what a trial logs every
few steps, how it reaches MLflow (one log_batch a round), that a resumed trial neither repeats nor
loses a point, and that the pictures drawn from them fit a laptop screen."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from harness.core import keys
from harness.core.keys import Tag
from harness.core.storage import Storage
from harness.data.datasets import load_dataset
from harness.family.registry import get_family
from harness.report import StudyRecord, plots
from harness.tracking.client import Tracker
from harness.tracking.publish import MlflowSink, Publisher
from harness.training import pictures as figures
from harness.training.loop import TrainConfig, TrainHooks, train

STEPS = 200
MAX_WIDTH_PX = 1400  # a laptop screen; the loss-curve figure was 2,940 px wide
PARAMS = {"kl_weight": 1e-3, "latent_dim": 8, "lr": 1e-3, "weight_decay": 1e-5, "dropout": 0.1, "batch_size": 16}
RECON, KL = keys.curve_key("train_recon_mse"), keys.curve_key("train_kl")


def counting_step(model, x, optimizers, params, fast, progress):
    """A step that moves nothing (no gradients) but counts, and whose 'losses' are the step's number:
    a 200-step trial in a second, with curve values known exactly."""
    step = round(progress * STEPS) + 1  # the judged step this batch makes
    optimizers["vae"].step()
    return {"loss": torch.tensor(float(step)), "recon_mse": torch.tensor(float(step)), "kl": torch.tensor(2.0 * step)}


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthfaces", {"n": 300, "size": 32})


@pytest.fixture(scope="module")
def counting():
    return dataclasses.replace(get_family("vae"), name="counting", train_step=counting_step)


@pytest.fixture(scope="module")
def tracker(tmp_path_factory) -> Tracker:
    storage = Storage.from_env({"RUNS_DIR": str(tmp_path_factory.mktemp("curves") / "runs")})
    storage.prepare()
    return Tracker(storage, "curves")


def new_run(tracker: Tracker, name: str) -> str:
    return tracker.start_run(name, params={}, tags={})


def counted_batches(tracker: Tracker, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The metric keys of every log_batch call the tracker's client makes from now on."""
    calls: list[list[str]] = []
    real = tracker.client.log_batch

    def log_batch(run_id, metrics=(), params=(), tags=(), **kwargs):
        calls.append([m.key for m in metrics])
        return real(run_id, metrics=metrics, params=params, tags=tags, **kwargs)

    monkeypatch.setattr(tracker.client, "log_batch", log_batch)
    return calls


def steps_of(tracker: Tracker, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in tracker.client.get_metric_history(run_id, key))


def test_a_trial_keeps_about_100_points_each_the_mean_since_the_last(counting, data):
    assert keys.curve_every(STEPS) == 2 and keys.curve_every(50) == 1 and keys.curve_every(10_000) == 100
    rounds = []
    result = train(counting, PARAMS, data, TrainConfig(steps=STEPS, rounds=3, seed=0),
                   TrainHooks(scorers=[], on_curve=rounds.append))
    # rounds end at steps 67, 133, 200: a point at every even step, the window restarting with a round
    assert [h["steps"] for h in result.history] == [67, 133, 200]
    assert [len(r) for r in rounds] == [33, 33, 34] and sum(rounds, []) == result.curve
    assert [p[keys.STEPS] for p in result.curve] == list(range(2, STEPS + 1, 2))
    by_step = {int(p[keys.STEPS]): p for p in result.curve}
    assert by_step[4][RECON] == 3.5 and by_step[4][KL] == 7.0  # the mean of steps 3 and 4
    assert by_step[68][RECON] == 68.0  # round 2 began after step 67: its first point is step 68 alone
    assert set(by_step[200]) == {keys.STEPS, RECON, KL}  # the declared curves only, not loss or kl_weight
    assert result.history[-1]["train_recon_mse"] == pytest.approx(sum(range(134, 201)) / 67)  # still the round mean


def test_a_set_interval_is_kept_and_a_gan_keeps_both_losses_per_generator_step(data):
    gan = get_family("gan")
    result = train(gan, gan.defaults | {"batch_size": 16, "d_steps": 3}, data,
                   TrainConfig(steps=6, rounds=2, seed=0, curve_every=2), TrainHooks(scorers=[]))
    assert [p[keys.STEPS] for p in result.curve] == [2, 4, 6]  # every second generator step, across the rounds
    assert all(set(p) == {keys.STEPS, keys.curve_key("train_d_loss"), keys.curve_key("train_g_loss")}
               for p in result.curve)


def test_each_round_logs_its_points_in_one_log_batch(counting, data, tracker, monkeypatch):
    run_id = new_run(tracker, "one-batch-a-round")
    calls = counted_batches(tracker, monkeypatch)
    train(counting, PARAMS, data, TrainConfig(steps=STEPS, rounds=3, seed=0),
          TrainHooks(scorers=[], on_curve=MlflowSink(tracker, run_id).curve))
    curve_calls = [c for c in calls if any(keys.curve_of(k) for k in c)]
    assert len(curve_calls) == 3 == len(calls)  # one a round, nothing else logged by this sink
    assert [len(c) for c in curve_calls] == [66, 66, 68]  # 33, 33 and 34 points of two curves
    assert steps_of(tracker, run_id, RECON) == list(range(2, STEPS + 1, 2))  # MLflow step = the judged step
    assert tracker.client.get_metric_history(run_id, RECON)[-1].value == 199.5


def test_more_than_1000_metrics_go_in_chunks_of_1000(tracker, monkeypatch):
    run_id = new_run(tracker, "chunks")
    calls = counted_batches(tracker, monkeypatch)
    tracker.log_points(run_id, [{keys.STEPS: s, RECON: 1.0, KL: 2.0} for s in range(1, 601)], keys.STEPS)
    assert [len(c) for c in calls] == [1000, 200]
    assert steps_of(tracker, run_id, KL) == list(range(1, 601))


def test_a_resumed_trial_neither_repeats_nor_loses_a_point(counting, data, tracker):
    config = TrainConfig(steps=STEPS, rounds=3, seed=0)
    straight = train(counting, PARAMS, data, config, TrainHooks(scorers=[])).curve
    saved = []
    train(counting, PARAMS, data, dataclasses.replace(config, checkpoint_every=1),
          TrainHooks(scorers=[], save_checkpoint=saved.append))
    assert [c["round"] for c in saved] == [1, 2] and saved[0]["curve"] == straight[:33]
    run_id = new_run(tracker, "retry")  # the retry's run: the killed run's points up to its checkpoint, then its own
    Publisher(None, tracker).resumed(run_id, saved[0])  # resumed() writes through the tracker only
    resumed = train(counting, PARAMS, data, config,
                    TrainHooks(scorers=[], on_curve=MlflowSink(tracker, run_id).curve), resume=saved[0])
    assert resumed.curve == straight
    logged = steps_of(tracker, run_id, RECON)
    assert logged == [int(p[keys.STEPS]) for p in straight] and len(set(logged)) == len(logged) == 100
    older = {k: v for k, v in saved[1].items() if k != "curve"}  # a checkpoint written before curves existed
    assert train(counting, PARAMS, data, config, TrainHooks(scorers=[]), resume=older).curve == straight[66:]


def test_the_trial_picture_wraps_its_panels_to_a_laptop_screen(tmp_path):
    history = [{keys.STEPS: s, "train_loss": 1 / s, "train_recon_mse": 0.1 / s, "train_kl": 5.0, "train_kl_weight": 1e-3,
                "val_loss": 1.1 / s, "val_recon_mse": 0.11 / s, "val_kl": 5.5, "val_pixel_mmd": 0.1,
                "val_fd_domain": 100 / s, keys.WALL_SECONDS: float(s)} for s in (10, 20, 30)]
    curve = [{keys.STEPS: s, RECON: 0.1 / s, KL: 5.0 + (s % 3)} for s in range(1, 31)]
    figures.loss_curves(history, tmp_path / "loss_curves.png", "a title", curve)
    with Image.open(tmp_path / "loss_curves.png") as picture:
        width, height = picture.size
    assert 800 < width <= MAX_WIDTH_PX and height < 1000  # 7 losses: 3 a row, 3 rows


def report_record(tracker: Tracker) -> StudyRecord:
    """Two families, two trials each, logged as a study logs them: per-step curves, per-round
    validation, the per-round score, wall-clock, and the final objective."""
    rows = []
    for number, (family, curves, slope) in enumerate([("vae", "recon_mse,kl", 1.0), ("vae", "recon_mse,kl", 2.0),
                                                       ("gan", "d_loss,g_loss", 1.0), ("gan", "d_loss,g_loss", 3.0)]):
        run_id = new_run(tracker, f"trial-{number}")
        losses = curves.split(",")
        tracker.log_points(run_id, [{keys.STEPS: s, **{keys.curve_key(keys.split_key("train", loss)):
                                                      slope / s + 0.01 * (s % 5) for loss in losses}}
                                    for s in range(2, 201, 2)], keys.STEPS)
        for s in (67, 133, 200):
            tracker.log_metrics(run_id, {**{keys.split_key(split, loss): slope / s for loss in losses
                                            for split in ("train", "val")},
                                         "val_fd_domain": 100 * slope / s + 20, keys.WALL_SECONDS: s / 10}, step=s)
        tracker.log_metrics(run_id, {"fd_domain": 50 * slope + 10}, step=200)
        rows.append({"number": number, "state": "COMPLETE", "family": family, "run_id": run_id,
                     "fd_domain": 50 * slope + 10, "excluded": "", "flags": "none",
                     f"tags.{Tag.FAMILY_CURVES}": curves,
                     "params.steps": 200, "duration_s": 20.0})
    return StudyRecord("curves_demo-v1", None, pd.DataFrame(rows), pd.DataFrame({f"tags.{Tag.CONFIG}": []}),
                       ["fd_domain"], ["minimize"], {}, {}, "synthfaces")


@pytest.mark.slow
def test_the_reports_curve_and_cost_figures_fit_a_laptop_screen(tracker, tmp_path):
    record = report_record(tracker)
    curves = plots.plot_loss_curves(record, tracker.client, tmp_path)
    cost = plots.plot_quality_vs_cost(record, tracker.client, tmp_path)
    assert {p.name for p in curves} == {"curves_vae.png", "curves_gan.png"} and cost == tmp_path / "quality_vs_cost.png"
    for path in [*curves, cost]:
        with Image.open(path) as picture:
            assert 600 < picture.size[0] <= MAX_WIDTH_PX, (path.name, picture.size)
    assert plots._round_key(record, tracker.client, list(record.table["run_id"])) == "val_fd_domain"  # fd is final-only


def test_no_runs_no_cost_figure(tracker, tmp_path):
    empty = StudyRecord("empty-v1", None, pd.DataFrame({"number": [], "state": [], "family": [], "fd_domain": []}),
                        pd.DataFrame(), ["fd_domain"], ["minimize"], {}, {}, "synthfaces")
    assert plots.plot_quality_vs_cost(empty, tracker.client, Path(tmp_path)) is None
