"""The model zoo in studies: blow-ups end one trial, not the study; every family in one comparison."""

import math

import optuna
import pytest
import torch
from mlflow import MlflowClient
from optuna.trial import TrialState

from harness import registry
from harness.cli import main
from harness.registry import register_family
from models import vae

from conftest import REPO, mlflow_runs, split_runs, write_study

pytestmark = pytest.mark.slow


def trials_of(runs_dir, study):
    return optuna.load_study(study_name=study, storage=f"sqlite:///{runs_dir / 'optuna.db'}").get_trials()


def test_a_forced_blow_up_fails_its_trial_and_the_study_goes_on(runs_dir, tmp_path, capsys):
    study = write_study(tmp_path, "blowup", """
name = "blowup"
version = 1
families = ["wgan_gp"]
trials = 2
epochs = 2
objective = "val_pixel_mmd"
[dataset]
name = "synthfaces"
n = 400
[sampler]
name = "grid"
[space.wgan_gp]
lr_d = [1e-4, 1e6]   # an absurd learning rate, as the reports' GANs met infinite losses
width = 16
batch_size = 64
""")
    assert main(["study", str(study)]) == 0  # one trial completed: the study did its job
    trials = {t.params["lr_d"]: t for t in trials_of(runs_dir, "blowup-v1")}
    assert trials[1e-4].state == TrialState.COMPLETE and trials[1e6].state == TrialState.FAIL
    reason = trials[1e6].user_attrs["failure_reason"]
    assert reason.startswith("Diverged: epoch 1") and "became nan" in reason
    _, children = split_runs(mlflow_runs(runs_dir, "blowup-v1"))
    failed = next(c for c in children if c.info.status == "FAILED")
    assert failed.data.tags["failure_reason"] == reason and failed.data.tags["state"] == "FAIL"
    assert "1 complete, 0 pruned, 1 failed" in capsys.readouterr().out


def test_the_last_good_sample_grid_is_kept(runs_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))

    def late_blow_up(model, x, optimizers, params, fast):
        out = vae.train_step(model, x, optimizers, params, fast)
        return out if params["epoch"] < 3 else {**out, "loss": torch.tensor(math.inf)}

    register_family("late", kind="autoencoder", space=vae.SPACE, metrics=vae.METRICS, build=vae.build, make_optimizers=vae.make_optimizers,
                    train_step=late_blow_up, eval_step=vae.eval_step)
    text = (REPO / "studies" / "smoke.toml").read_text().replace('name = "smoke"', 'name = "late"')
    text = text.replace('families = ["vae"]', 'families = ["late"]').replace("[space.vae]", "[space.late]")
    text = text.replace("epochs = 2", "epochs = 4").replace("kl_weight = [1e-3, 1e-2]", "kl_weight = [1e-3]").replace("trials = 2", "trials = 1")
    assert main(["study", str(write_study(tmp_path, "late", text))]) == 1  # its only trial failed
    (run,) = split_runs(mlflow_runs(runs_dir, "late-v1"))[1]
    assert run.data.tags["last_good_epoch"] == "2" and "train_loss became inf" in run.data.tags["failure_reason"]
    client = MlflowClient(tracking_uri=f"sqlite:///{runs_dir / 'mlflow.db'}")
    assert [a.path for a in client.list_artifacts(run.info.run_id, "samples")] == ["samples/epoch_001.png", "samples/epoch_002.png"]
    assert "loss_curves.png" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert len(client.get_metric_history(run.info.run_id, "val_recon_mse")) == 2


def test_families_compare_runs_every_family_with_the_same_budget(runs_dir, tmp_path, capsys):
    text = (REPO / "studies" / "families_compare.toml").read_text()
    text = text.replace("n = 3000", "n = 300").replace("epochs = 3", "epochs = 1").replace("trials = 2", "trials = 1")
    text += "\n[scores]\nepoch_samples = 200\nfinal_samples = 200\n"  # the panel passes at 200 too
    path = write_study(tmp_path, "families_compare", text)
    assert main(["study", str(path)]) == 0
    trials = trials_of(runs_dir, "families_compare-v1")
    assert sorted(t.params["family"] for t in trials) == sorted(registry.family_names())
    assert all(t.state == TrialState.COMPLETE for t in trials)
    _, children = split_runs(mlflow_runs(runs_dir, "families_compare-v1"))
    assert sorted(c.data.tags["family"] for c in children) == sorted(registry.family_names())
    assert all("val_pixel_mmd" in c.data.metrics for c in children)
    assert main(["study", str(path)]) == 0
    assert "already has 1 finished trials for each of its 5 families" in capsys.readouterr().out
    assert main(["study", str(path), "--trials", "2"]) == 0  # one more each, still balanced
    counts = {f: sum(t.params["family"] == f for t in trials_of(runs_dir, "families_compare-v1")) for f in registry.family_names()}
    assert set(counts.values()) == {2}
