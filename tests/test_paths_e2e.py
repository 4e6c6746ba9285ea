"""The paths through the harness end to end: a family registered from outside, pruning, several
objectives, the extractor identity guard, and a checkpoint or model file that cannot be read."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys

import optuna
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from optuna.trial import TrialState

from conftest import REPO, mlflow_runs, share_caches, split_runs, write_study
from harness.cli import main
from harness.core.errors import UserError
from harness.core.storage import Storage
from harness.family import registry
from harness.family.registry import register_family
from harness.scoring import extractors
from harness.tracking.publish import CHECKPOINT, read_checkpoint
from harness.training.latent import download_model
from harness.training.loop import save_model
from models import gan

RANDOM_VAE = """
[sampler]
name = "random"
[space.vae]
kl_weight = {low = 1e-5, high = 1e-1, log = true}
latent_dim = 16
batch_size = 64
"""

GRID_VAE = """
[sampler]
name = "grid"
[space.vae]
kl_weight = [1e-3, 1e-2]
latent_dim = 16
batch_size = 64
"""


def trials_of(runs_dir, name):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{runs_dir / 'optuna.db'}").get_trials()


def study_text(name: str, family: str, objective: str, body: str, rounds: int = 1, trials: int = 2) -> str:
    return f"""
name = "{name}"
version = 1
families = ["{family}"]
trials = {trials}
steps = {4 * rounds}
rounds = {rounds}
seed = 0
objective = {objective}
[dataset]
name = "synthfaces"
n = 300
[scores]
round_samples = 100
final_samples = 100
flags = "tag"  # a few steps learn nothing: tagged, still ranked
panel = "warn"  # at n = 100 the panel fails (harness/README.md, the validation panel): the paths are tested here, not the ranking
{body}
"""


@pytest.mark.slow
def test_a_family_registered_from_outside_gets_its_tables_and_plots(runs_dir, tmp_path, monkeypatch):
    """An adversarial family the harness has never heard of: its runs say what it is, and the report
    draws its losses and samples (and no reconstructions) from that alone."""
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))
    register_family(dataclasses.replace(gan.FAMILY, name="outsider_gan"))
    path = write_study(tmp_path, "outsider", study_text("outsider", "outsider_gan", '"fd"', """
[sampler]
name = "grid"
[space.outsider_gan]
lr_g = [1e-3, 2e-4]
batch_size = 64
"""))
    assert main(["study", str(path)]) == 0
    _, children = split_runs(mlflow_runs(runs_dir, "outsider-v1"))
    assert {(c.data.tags["family.kind"], c.data.tags["family.curves"]) for c in children} == {("adversarial", "d_loss,g_loss")}
    assert main(["report", "outsider", "--out", str(tmp_path / "reports")]) == 0
    folder = tmp_path / "reports" / "outsider-v1"
    best = pd.read_csv(folder / "best_per_family.csv")
    assert list(best["family"]) == ["outsider_gan"]
    assert (folder / "curves_outsider_gan.png").is_file()  # its declared curves, read from its runs
    assert (folder / "grids" / "outsider_gan" / "samples.png").is_file()
    assert not (folder / "grids" / "outsider_gan" / "reconstructions.png").exists()
    page = (folder / "index.html").read_text()
    assert "outsider_gan: samples" in page and "curves_outsider_gan" in page


@pytest.mark.slow
def test_pruned_trials_are_recorded_and_reported_as_pruned(runs_dir, tmp_path):
    """The median pruner stops a trial whose first round is worse than the first trial's."""
    path = write_study(tmp_path, "pruned", study_text("pruned", "vae", '"val_recon_mse"', """
[sampler]
name = "grid"
[pruner]
name = "median"
n_startup_trials = 1
n_warmup_steps = 0
[space.vae]
lr = [1e-3, 1e-7]
latent_dim = 16
batch_size = 32
""", rounds=3))
    assert main(["study", str(path)]) == 0
    trials = sorted(trials_of(runs_dir, "pruned-v1"), key=lambda t: t.params["lr"], reverse=True)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert sorted(trials[1].intermediate_values) == [1] and trials[1].value == trials[1].intermediate_values[1]  # round 1
    _, children = split_runs(mlflow_runs(runs_dir, "pruned-v1"))
    pruned_run = next(c for c in children if c.data.tags["trial_number"] == str(trials[1].number))
    assert pruned_run.info.status == "FINISHED" and pruned_run.data.tags["state"] == "PRUNED"
    client = MlflowClient(tracking_uri=f"sqlite:///{runs_dir / 'mlflow.db'}")
    assert [m.step for m in client.get_metric_history(pruned_run.info.run_id, "val_recon_mse")] == [4]
    assert "test_recon_mse" not in pruned_run.data.metrics  # never scored as if it had finished
    assert main(["report", "pruned", "--out", str(tmp_path / "reports")]) == 0
    table = pd.read_csv(tmp_path / "reports" / "pruned-v1" / "trials.csv")
    assert sorted(table["state"]) == ["COMPLETE", "PRUNED"]
    assert "1 pruned" in (tmp_path / "reports" / "pruned-v1" / "tables.md").read_text()


@pytest.mark.slow
def test_a_multi_objective_study_reports_its_pareto_front(runs_dir, tmp_path):
    path = write_study(tmp_path, "pareto", study_text("pareto", "vae", '["val_recon_mse", "val_kl"]', RANDOM_VAE, trials=3))
    assert main(["study", str(path)]) == 0
    trials = trials_of(runs_dir, "pareto-v1")
    assert len(trials) == 3 and all(t.state == TrialState.COMPLETE and len(t.values) == 2 for t in trials)
    parents, _ = split_runs(mlflow_runs(runs_dir, "pareto-v1"))
    assert parents[0].data.tags["objective"] == "val_recon_mse,val_kl"
    assert not [k for k in parents[0].data.metrics if k.startswith("best_")]  # no single best with two objectives
    assert main(["report", "pareto", "--out", str(tmp_path / "reports")]) == 0
    folder = tmp_path / "reports" / "pareto-v1"
    assert (folder / "pareto.png").is_file()
    assert 'alt="pareto.png"' in (folder / "index.html").read_text()  # on the page


@pytest.mark.slow
def test_a_changed_extractor_is_refused_and_nothing_is_recorded(runs_dir, tmp_path, monkeypatch, capsys):
    path = write_study(tmp_path, "guarded", study_text("guarded", "vae", '"val_recon_mse"', RANDOM_VAE, trials=1))
    monkeypatch.setitem(extractors.RECIPE, "steps", 20)  # the guard, not the extractor's quality, is tested here
    assert main(["study", str(path)]) == 0
    before = [(r.info.run_id, r.info.status) for r in mlflow_runs(runs_dir, "guarded-v1")]
    monkeypatch.setitem(extractors.RECIPE, "steps", 21)  # a new recipe: other features
    capsys.readouterr()
    assert main(["study", str(path), "--trials", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "was scored with another extractor" in err and "steps" in err
    assert [t.state for t in trials_of(runs_dir, "guarded-v1")] == [TrialState.COMPLETE]
    assert [(r.info.run_id, r.info.status) for r in mlflow_runs(runs_dir, "guarded-v1")] == before


@pytest.mark.fault
def test_an_unreadable_checkpoint_restarts_the_trial_saying_so(tmp_path, capsys):
    storage = Storage.from_env({"RUNS_DIR": str(tmp_path / "runs")})
    storage.prepare()
    client = storage.mlflow()
    experiment = client.create_experiment("checkpoints", artifact_location=storage.artifact_location("checkpoints"))
    empty, cut, good = (client.create_run(experiment).info.run_id for _ in range(3))
    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "last.pt").write_bytes(b"PK\x03\x04 cut short by a crash")
    client.log_artifact(cut, str(folder / "last.pt"), "checkpoint")
    state = {"model": {"w": torch.ones(2)}, "optimizers": {}, "rng": {}, "round": 2, "steps": {"vae": 8},
             "stream": {}, "history": [{"a": 1.0, "steps": 8.0}] * 2}
    torch.save(state, folder / "last.pt")
    client.log_artifact(good, str(folder / "last.pt"), "checkpoint")

    assert read_checkpoint(client, empty, "trial 3") is None
    assert "trial 3 left no checkpoint" in capsys.readouterr().out
    assert read_checkpoint(client, cut, "trial 7") is None
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("warning: checkpoint of trial 7 is unreadable (")
    assert err.endswith("); restarting it from step 0")
    assert read_checkpoint(client, good, "trial 8")["round"] == 2
    assert CHECKPOINT == "checkpoint/last.pt"


@pytest.mark.fault
def test_a_cut_model_file_is_one_line_naming_the_run(tmp_path):
    """`latent` and the study's report read a finished run's model.pt; one cut short (a full disk, an
    interrupted copy of RUNS_DIR) is a one-line error naming the run, not a traceback."""
    storage = Storage.from_env({"RUNS_DIR": str(tmp_path / "runs")})
    storage.prepare()
    client = storage.mlflow()
    run_id = client.create_run(client.create_experiment("models", storage.artifact_location("models"))).info.run_id
    folder = tmp_path / "files"
    folder.mkdir()
    model = registry.get_family("vae").build(registry.get_family("vae").reported_config, 1, 32)
    save_model(model, "vae", registry.get_family("vae").reported_config, 1, 32, folder)
    (folder / "model.pt").write_bytes((folder / "model.pt").read_bytes()[:1000])
    for name in ("model.pt", "model.json"):
        client.log_artifact(run_id, str(folder / name))
    with pytest.raises(UserError, match=f"^the model of run {run_id} is unreadable .*rerun this trial$"):
        download_model(client, run_id, tmp_path / "download")


@pytest.mark.slow
def test_a_trial_whose_recording_fails_is_closed_as_failed(runs_dir, tmp_path, monkeypatch, capsys):
    """Writing the finished trial's files fails (the disk filled up at the end): its run is closed as
    FAILED with the reason, not left RUNNING, and the study stops saying the disk is full."""
    import errno

    from harness.tracking.client import Tracker

    real = Tracker.log_artifact

    def full_at_the_weights(self, run_id, path, folder=None):
        if path.name == "model.pt":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(self, run_id, path, folder)

    monkeypatch.setattr(Tracker, "log_artifact", full_at_the_weights)
    path = write_study(tmp_path, "recording", study_text("recording", "vae", '"val_recon_mse"', RANDOM_VAE, trials=1))
    assert main(["study", str(path)]) == 2
    assert "is full" in capsys.readouterr().err
    (trial,) = trials_of(runs_dir, "recording-v1")
    assert trial.state == TrialState.FAIL and trial.user_attrs["failure_reason"].startswith("recording the trial failed")
    _, children = split_runs(mlflow_runs(runs_dir, "recording-v1"))
    assert [(c.info.status, c.data.tags["state"]) for c in children] == [("FAILED", "FAIL")]


@pytest.mark.fault
@pytest.mark.slow
def test_a_moved_runs_dir_reads_and_writes_only_its_own_artifacts(tmp_path, monkeypatch, shared_caches, capsys):
    """MLflow keeps absolute artifact locations: a RUNS_DIR copied elsewhere (the original deleted) must
    report, draw latents, confirm and continue its study from and into the copy."""
    original, moved = tmp_path / "disk1" / "runs", tmp_path / "disk2" / "runs"
    share_caches(original, shared_caches)
    monkeypatch.delenv("STORAGE", raising=False)
    monkeypatch.delenv("TRACKING_URI", raising=False)
    # In its own process, as a user's earlier command would be: MLflow caches each run's artifact
    # location per process, which would hide whether the copy's store points at the copy.
    path = write_study(tmp_path, "movable", study_text("movable", "vae", '"val_recon_mse"', GRID_VAE))
    env = {**os.environ, "RUNS_DIR": str(original)}
    done = subprocess.run([sys.executable, "-m", "harness", "study", str(path), "--trials", "1", "--device", "cpu"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    shutil.copytree(original, moved, symlinks=True)
    shutil.rmtree(original.parent)
    capsys.readouterr()

    monkeypatch.setenv("RUNS_DIR", str(moved))
    assert main(["report", "--out", str(tmp_path / "reports")]) == 0
    assert f"RUNS_DIR moved from {original} to {moved}" in capsys.readouterr().out  # said once, in one line
    (child,) = split_runs(mlflow_runs(moved, "movable-v1"))[1]
    assert main(["latent", child.info.run_id, "--out", str(tmp_path / "latent"), "--device", "cpu"]) == 0
    assert (tmp_path / "latent" / "interpolation.png").exists()  # model.pt was read from the copy
    assert main(["study", str(path), "--device", "cpu"]) == 0  # the second grid point, continued on the copy
    assert main(["confirm", str(path), "--seeds", "3", "--inception", "off", "--device", "cpu"]) == 0
    assert "RUNS_DIR moved" not in capsys.readouterr().out  # rewritten once, not on every command
    assert not original.parent.exists(), sorted(str(p) for p in original.parent.rglob("*"))  # nothing wrote to the old place
    client = MlflowClient(tracking_uri=f"sqlite:///{moved / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) >= 2 + 3 and all(r.info.artifact_uri.startswith(moved.as_uri() + "/artifacts/") for r in runs)
    for run in runs:  # every run's files are where its record says
        assert (moved / "artifacts").exists() and client.list_artifacts(run.info.run_id) is not None
    report = tmp_path / "reports" / "movable-v1"
    assert any(report.glob("*.html")) or any(report.glob("*.md"))
