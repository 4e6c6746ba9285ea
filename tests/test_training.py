import dataclasses
import math

import pytest
import torch

from harness.data.datasets import ImageSplits, load_dataset
from harness.family.registry import get_family
from harness.training.loop import Diverged, TrainConfig, TrainHooks, evaluate, train

PARAMS = {"kl_weight": 1e-3, "latent_dim": 8, "lr": 1e-3, "weight_decay": 1e-5, "dropout": 0.1, "batch_size": 32}


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthfaces", {"n": 300, "size": 32})


def test_same_seed_reproduces_the_final_validation_loss_exactly(data):
    vae = get_family("vae")
    first = train(vae, PARAMS, data, TrainConfig(steps=16, rounds=2, seed=11))
    second = train(vae, PARAMS, data, TrainConfig(steps=16, rounds=2, seed=11))
    assert first.history[-1]["val_recon_mse"] == second.history[-1]["val_recon_mse"]
    assert first.history[-1]["val_loss"] == second.history[-1]["val_loss"]
    other = train(vae, PARAMS, data, TrainConfig(steps=16, rounds=2, seed=12))
    assert other.history[-1]["val_recon_mse"] != first.history[-1]["val_recon_mse"]


def test_history_has_train_validation_and_cost_metrics_per_round(data):
    # 240 training images, batch 32: 7 batches an epoch; 20 steps in 3 rounds end at steps 7, 13, 20
    result = train(get_family("vae"), PARAMS, data, TrainConfig(steps=20, rounds=3, seed=0))
    assert len(result.history) == 3
    for metrics in result.history:
        assert {"train_loss", "train_recon_mse", "train_kl", "val_loss", "val_recon_mse", "val_kl", "steps", "steps_vae",
                "images_seen", "epochs", "round_seconds", "wall_seconds", "seconds_per_step",
                "train_images_per_s"} <= set(metrics)
    assert [h["steps"] for h in result.history] == [7, 13, 20] == [h["steps_vae"] for h in result.history]
    assert [h["images_seen"] for h in result.history] == [7 * 32, 13 * 32, 20 * 32]
    assert result.history[-1]["epochs"] == pytest.approx(20 * 32 / 240)
    assert 0 < result.history[0]["wall_seconds"] < result.history[1]["wall_seconds"] < result.history[2]["wall_seconds"]
    assert result.history[-1]["train_recon_mse"] < result.history[0]["train_recon_mse"]


@pytest.mark.slow
def test_the_budget_is_the_generators_steps_whatever_the_discriminators_ratio(data):
    gan = get_family("gan")
    for k in (1, 3):
        history = train(gan, gan.defaults | {"batch_size": 32, "d_steps": k}, data, TrainConfig(steps=6, rounds=2, seed=0)).history
        assert [h["steps_g"] for h in history] == [3, 6] and history[-1]["steps"] == 6
        assert history[-1]["steps_d"] == 6 * k  # k D steps before each G step, on top of the budget
        assert history[-1]["images_seen"] == 6 * (k + 1) * 32  # one batch per step of either network


def test_batches_run_on_across_epochs_and_never_repeat_within_one(data):
    from harness.training.loop import BatchStream
    small = numbered(10).place(torch.device("cpu"))
    stream = BatchStream(small, 3, torch.Generator().manual_seed(0))
    first_epoch = torch.cat([next(stream) for _ in range(3)]).flatten().tolist()
    assert len(set(first_epoch)) == 9 and stream.epochs == 0
    fourth = next(stream)
    assert stream.epochs == 1 and stream.images == 12 and fourth.shape[0] == 3
    position = stream.position()
    rest = [next(stream) for _ in range(4)]
    again = BatchStream(small, 3, torch.Generator(), position)
    assert all(torch.equal(a, b) for a, b in zip(rest, (next(again) for _ in range(4))))


def test_on_round_can_stop_training(data):
    seen = []
    result = train(get_family("vae"), PARAMS, data, TrainConfig(steps=10, rounds=5, seed=0),
                   TrainHooks(on_round=lambda round_, metrics, model: seen.append((round_, metrics["steps"])) or round_ == 2))
    assert seen == [(1, 2), (2, 4)] and result.stopped_at == 4 and len(result.history) == 2  # stopped at step 4


def test_a_non_finite_loss_stops_the_trial(data):
    vae = get_family("vae")

    def nan_step(model, x, optimizers, params, fast, progress):
        return {**vae.train_step(model, x, optimizers, params, fast, progress), "loss": torch.tensor(math.nan)}

    broken = dataclasses.replace(vae, name="broken", train_step=nan_step)
    with pytest.raises(Diverged, match="step 7: train_loss became nan") as caught:
        train(broken, PARAMS, data, TrainConfig(steps=14, rounds=2, seed=0))
    assert caught.value.history == []


@pytest.mark.slow
def test_a_finite_loss_past_the_bound_stops_the_trial_and_one_below_does_not(data):
    """The reports' GAN reached a discriminator loss of 2e14 and ended COMPLETE: finite is not enough."""
    vae = get_family("vae")

    def blowing_up(value, from_progress):
        def step(model, x, optimizers, params, fast, progress):
            out = vae.train_step(model, x, optimizers, params, fast, progress)
            return {**out, "loss": torch.tensor(value)} if progress >= from_progress else out
        return dataclasses.replace(vae, name="blowing_up", train_step=step)

    with pytest.raises(Diverged, match=r"step 20: train_loss reached 2e\+14, past the divergence bound 1e\+06") as caught:
        train(blowing_up(2e14, 0.5), PARAMS, data, TrainConfig(steps=20, rounds=2, seed=0))
    assert len(caught.value.history) == 1
    # within a round (every CHECK_EVERY = 25 steps; 60 steps here), with its sign
    with pytest.raises(Diverged, match=r"step 25: loss reached -3e\+08, past the divergence bound"):
        train(blowing_up(-3e8, 0), PARAMS, data, TrainConfig(steps=60, rounds=1, seed=0))
    assert len(train(blowing_up(9e5, 0), PARAMS, data, TrainConfig(steps=10, rounds=2, seed=0)).history) == 2


def test_a_step_that_never_moves_the_budget_optimizer_is_an_error_not_a_hang(data, monkeypatch):
    from harness.training import loop as training
    monkeypatch.setattr(training, "STALL_BATCHES", 30)
    idle = dataclasses.replace(get_family("vae"), name="idle", train_step=lambda model, x, optimizers, params, fast, progress: {})
    with pytest.raises(RuntimeError, match="30 batches without a step of its budget optimizer 'vae'"):
        train(idle, PARAMS, data, TrainConfig(steps=5, seed=0))


def test_evaluate_weights_by_images(data):
    vae = get_family("vae")
    model = vae.build(PARAMS, 1, 32)
    whole = evaluate(vae, model, data, "val", PARAMS, batch_size=1000)
    pieces = evaluate(vae, model, data, "val", PARAMS, batch_size=7)  # last batch partial
    assert whole["recon_mse"] == pytest.approx(pieces["recon_mse"], rel=1e-5)


def numbered(n: int) -> ImageSplits:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1)
    return ImageSplits(images, images[:4], images[:4])


@pytest.mark.parametrize("resident", [True, False])
def test_training_batches_cover_each_image_at_most_once(resident):
    data = numbered(10).place(torch.device("cpu"), max_bytes=None if resident else 0)
    assert data.resident is resident
    drawn = torch.cat(list(data.train_batches(3, torch.Generator().manual_seed(0)))).flatten()
    assert len(drawn) == 9 and len(set(drawn.tolist())) == 9  # 3 full batches, the partial one dropped
    assert torch.cat(list(data.batches("train", 4))).flatten().tolist() == list(range(10))  # all, in order
    assert len(list(data.train_batches(64, torch.Generator()))) == 1  # a set smaller than a batch is one batch


def test_device_resident_and_dataloader_batches_are_the_same():
    resident = numbered(50).place(torch.device("cpu"))
    loader = numbered(50).place(torch.device("cpu"), max_bytes=0)
    a = list(resident.train_batches(8, torch.Generator().manual_seed(3)))
    b = list(loader.train_batches(8, torch.Generator().manual_seed(3)))
    assert len(a) == len(b) == 6 and all(torch.equal(x, y) for x, y in zip(a, b))


def test_a_trial_trains_the_same_through_a_dataloader(data):
    vae = get_family("vae")
    resident = train(vae, PARAMS, data, TrainConfig(steps=10, seed=4)).history[-1]
    streamed = train(vae, PARAMS, data.place(torch.device("cpu"), max_bytes=0), TrainConfig(steps=10, seed=4)).history[-1]
    assert streamed["val_recon_mse"] == resident["val_recon_mse"]


@pytest.mark.slow
def test_a_resumed_run_ends_where_an_unstopped_one_does(data, tmp_path):
    vae = get_family("vae")
    config = TrainConfig(steps=20, rounds=4, seed=5)  # 7 batches an epoch: the checkpoint falls mid-epoch
    straight = train(vae, PARAMS, data, config).history
    saved = []

    train(vae, PARAMS, data, dataclasses.replace(config, checkpoint_every=2, objective="val_recon_mse"),
          TrainHooks(save_checkpoint=saved.append, on_round=lambda steps, metrics, model: False))
    assert [c["round"] for c in saved] == [2] and saved[0]["steps"] == {"vae": 10}  # every 2 rounds, not after the last
    torch.save(saved[0], tmp_path / "last.pt")
    state = torch.load(tmp_path / "last.pt", weights_only=True)  # plain tensors and numbers only
    assert state["best"] == min(h["val_recon_mse"] for h in straight[:2])
    resumed = train(vae, PARAMS, data, config, resume=state).history
    timing = ("round_seconds", "wall_seconds", "seconds_per_step", "train_images_per_s")
    assert len(resumed) == 4 and [{k: v for k, v in h.items() if k not in timing} for h in resumed[:2]] == \
        [{k: v for k, v in h.items() if k not in timing} for h in straight[:2]]
    assert resumed[-1]["val_recon_mse"] == straight[-1]["val_recon_mse"]  # bit for bit on the CPU
    assert resumed[-1]["val_pixel_mmd"] == straight[-1]["val_pixel_mmd"]


@pytest.mark.slow
def test_adversarial_runs_resume_with_their_schedule(data):
    gan = get_family("gan")
    params = gan.defaults | {"batch_size": 32, "d_steps": 3}
    config = TrainConfig(steps=6, rounds=3, seed=1)
    straight = train(gan, params, data, config).history
    saved = []
    train(gan, params, data, dataclasses.replace(config, checkpoint_every=1), TrainHooks(save_checkpoint=saved.append))
    resumed = train(gan, params, data, config, resume=saved[0]).history
    assert resumed[-1]["train_g_loss"] == straight[-1]["train_g_loss"]
    assert resumed[-1]["steps_d"] == straight[-1]["steps_d"] == 18
