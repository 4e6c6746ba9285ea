"""The smoke study end to end in a temporary RUNS_DIR: Optuna trials, MLflow runs, artifacts, re-runs."""

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from mlflow import MlflowClient
from optuna.trial import TrialState

from conftest import REPO, mlflow_runs, second_ctrl_c_while_runs_close, smoke_study_of, split_runs, write_study
from harness.cli import main
from harness.core.keys import Attr
from harness.data.datasets import load_dataset
from harness.family import registry
from harness.family.registry import register_family
from harness.training.loop import evaluate, load_model
from models import vae

pytestmark = pytest.mark.slow
ARTIFACTS = {"reconstructions.png", "samples.png", "loss_curves.png", "model.pt", "model.json", "samples", "scores.json"}


def optuna_trials(runs_dir: Path, study: str = "smoke-v2") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=f"sqlite:///{runs_dir / 'optuna.db'}").get_trials()


def test_smoke_study_records_trials_runs_and_artifacts(smoke_runs):
    trials = optuna_trials(smoke_runs)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert sorted(t.params["kl_weight"] for t in trials) == [1e-3, 1e-2]
    assert all(len(t.intermediate_values) == 2 for t in trials)  # reported every round, for pruners
    # Reference statistics: computed for the first trial, read from the cache by the second.
    assert [t.user_attrs["reference_stats"] for t in trials] == ["computed", "cached"]

    parents, children = split_runs(mlflow_runs(smoke_runs, "smoke-v2"))
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.params["sampler"] == "grid"
    client = MlflowClient(tracking_uri=f"sqlite:///{smoke_runs / 'mlflow.db'}")
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {"smoke.toml", "dataset.png", "extractor", "report"}
    (weights,) = client.list_artifacts(parent.info.run_id, "extractor")  # the domain network behind its scores
    assert weights.path.startswith("extractor/domain-") and parent.data.params["score.extractor"] == "domain"
    assert parent.data.metrics["best_val_recon_mse"] == min(t.value for t in trials)
    for run in children:
        tags, params = run.data.tags, run.data.params
        assert tags["mlflow.parentRunId"] == parent.info.run_id and run.info.status == "FINISHED"
        assert (tags["family"], tags["dataset"], tags["study"], tags["state"]) == ("vae", "synthfaces", "smoke-v2", "COMPLETE")
        trial = trials[int(tags["trial_number"])]
        assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
        assert float(params["kl_weight"]) == trial.params["kl_weight"] and params["latent_dim"] == "16"
        history = client.get_metric_history(run.info.run_id, "val_recon_mse")
        assert [m.step for m in history] == [8, 16] and history[-1].value == trial.value  # steps = 16 in 2 rounds
        assert params["steps"] == "16" and params["rounds"] == "2" and params["budget_optimizer"] == "vae"
        assert [m.value for m in client.get_metric_history(run.info.run_id, "images_seen")] == [8 * 64, 16 * 64]
        assert {"epochs", "wall_seconds", "seconds_per_step", "steps_vae"} <= set(run.data.metrics)
        for key in ("train_loss", "train_kl", "val_kl", "val_loss"):
            assert len(client.get_metric_history(run.info.run_id, key)) == 2
        assert "test_recon_mse" in run.data.metrics
        metrics = run.data.metrics  # offline on a CPU: the domain extractor, and its scores named for it
        assert {"val_fd_domain", "fd_domain", "kd_domain", "kd_domain_std", "precision_domain", "recall_domain",
                "is_domain", "test_fd_domain", "test_bce", "test_elbo", "test_psnr", "test_ssim"} <= set(metrics)
        assert not [k for k in metrics if "fid" in k or k in ("kid", "is")]
        assert params["score.extractor"] == "domain" and params["score.n"] == "2000" and "fd_inf_domain" in metrics
        panel = parent.data.params["score.panel"]
        assert panel.startswith("domain ") and "validation panel at n = 2000" in panel
        assert float(params["score.floor_fd"]) < metrics["fd_domain"] and params["code.commit"] != ""
        assert len(client.get_metric_history(run.info.run_id, "val_fd_domain")) == 2
        extra = {"latent"} if run.info.run_id == parent.data.tags["best_run_id"] else set()  # the best trial's pictures
        assert {a.path for a in client.list_artifacts(run.info.run_id)} == ARTIFACTS | extra
        samples = [a.path for a in client.list_artifacts(run.info.run_id, "samples")]
        assert samples == ["samples/step_0000008.png", "samples/step_0000016.png"]

        folder = Path(client.download_artifacts(run.info.run_id, ""))
        torch.load(folder / "model.pt", weights_only=True)
        model = load_model(folder)
        data = load_dataset("synthfaces", {"size": 32, "n": 600})
        rebuilt = evaluate(vae_family(), model, data, "val", {"kl_weight": trial.params["kl_weight"]})
        assert rebuilt["recon_mse"] == pytest.approx(trial.value, rel=1e-5)


def vae_family():
    return registry.get_family("vae")


def test_reconstruction_grid_pairs_references_with_reconstructions(smoke_runs):
    from PIL import Image

    run = split_runs(mlflow_runs(smoke_runs, "smoke-v2"))[1][0]
    folder = Path(MlflowClient(tracking_uri=f"sqlite:///{smoke_runs / 'mlflow.db'}").download_artifacts(run.info.run_id, ""))
    with Image.open(folder / "reconstructions.png") as grid:
        # 32 pairs, 8 per row -> 16 columns x 4 rows of 32 px tiles with 2 px padding, enlarged 2x.
        assert grid.size == (2 * (16 * 34 + 2), 2 * (4 * 34 + 2))


def test_rerun_of_a_complete_grid_says_so_and_records_nothing(smoke_runs, monkeypatch, capsys):
    monkeypatch.setenv("RUNS_DIR", str(smoke_runs))
    assert main(["study", "smoke"]) == 0
    assert "grid complete: all 2 points of smoke-v2 are done" in capsys.readouterr().out
    parents, children = split_runs(mlflow_runs(smoke_runs, "smoke-v2"))
    assert (len(parents), len(children)) == (1, 2)


def test_interrupted_grid_finishes_its_missing_points(runs_dir, smoke_runs, capsys):
    assert main(["study", "smoke", "--trials", "1"]) == 0
    assert len(optuna_trials(runs_dir)) == 1
    assert main(["study", "smoke"]) == 0
    trials = optuna_trials(runs_dir)
    assert [t.number for t in trials] == [0, 1] and all(t.state == TrialState.COMPLETE for t in trials)
    assert sorted(t.params["kl_weight"] for t in trials) == [1e-3, 1e-2]
    parents, children = split_runs(mlflow_runs(runs_dir, "smoke-v2"))
    assert (len(parents), len(children)) == (2, 2)
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {p.info.run_id for p in parents}
    assert [t.user_attrs["reference_stats"] for t in trials] == ["computed", "cached"]  # across invocations too
    # Same seed, same grid point, another RUNS_DIR: the same final validation loss, exactly.
    reference = {t.params["kl_weight"]: t.value for t in optuna_trials(smoke_runs)}
    assert {t.params["kl_weight"]: t.value for t in trials} == reference


def test_ctrl_c_marks_the_trial_and_the_next_run_finishes_it(runs_dir):
    """A real Ctrl-C, pressed twice as users do: SIGINT to `python -m harness study`'s process group (what
    the terminal sends) while its second trial trains, and again 0.1 s later while its runs close."""
    study = subprocess.Popen([sys.executable, "-m", "harness", "study", "smoke", "--device", "cpu"], cwd=REPO,
                             env={**os.environ, "RUNS_DIR": str(runs_dir)}, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 300
    while not training_trial(runs_dir, 1):
        assert study.poll() is None and time.time() < deadline, study.communicate()[0]
        time.sleep(0.2)
    os.killpg(study.pid, signal.SIGINT)
    time.sleep(0.1)
    os.killpg(study.pid, signal.SIGINT)
    output = study.communicate(timeout=120)[0]
    # 130, or killed by the second SIGINT when it lands after the command has closed everything and returned
    assert study.returncode in (130, -signal.SIGINT) and "Traceback" not in output, output
    assert "interrupted: finished trials are kept" in output
    trials = optuna_trials(runs_dir)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL]
    assert trials[1].user_attrs["failure_reason"] == "interrupted (Ctrl-C)"
    parents, children = split_runs(mlflow_runs(runs_dir, "smoke-v2"))
    assert parents[0].info.status == "KILLED"
    killed = [c for c in children if c.info.status == "KILLED"]
    assert len(killed) == 1 and killed[0].data.tags["state"] == "FAIL"
    assert not [r for r in parents + children if r.info.status == "RUNNING"]

    assert main(["study", "smoke"]) == 0
    trials = optuna_trials(runs_dir)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert trials[2].params == trials[1].params  # the interrupted point, run again


def training_trial(runs_dir: Path, number: int) -> bool:
    """Trial `number` is running and has logged its first round in MLflow (it is mid-training)."""
    if not (runs_dir / "optuna.db").exists():
        return False
    try:
        trials = optuna_trials(runs_dir)
    except KeyError:  # the study is not created yet
        return False
    if len(trials) <= number or trials[number].state != TrialState.RUNNING or Attr.RUN_ID not in trials[number].user_attrs:
        return False
    client = MlflowClient(tracking_uri=f"sqlite:///{runs_dir / 'mlflow.db'}")
    return bool(client.get_run(trials[number].user_attrs[Attr.RUN_ID]).data.metrics)


def test_a_non_grid_study_continues_with_new_trial_numbers(runs_dir, tmp_path, capsys):
    text = (REPO / "studies" / "smoke.toml").read_text()
    text = text.replace('name = "smoke"', 'name = "smoke_random"').replace('name = "grid"', 'name = "random"')
    text = text.replace("kl_weight = [1e-3, 1e-2]", "kl_weight = {low = 5e-5, high = 1e-2}").replace("trials = 2", "trials = 1")
    text += "[scores]\nround_samples = 100\nfinal_samples = 200\n"  # continuation is tested, not the scores
    path = write_study(tmp_path / "studies", "smoke_random", text)
    assert main(["study", str(path), "--steps", "8"]) == 0
    assert main(["study", str(path), "--steps", "8"]) == 0
    assert "already has 1 finished trials, its budget" in capsys.readouterr().out
    assert main(["study", str(path), "--steps", "8", "--trials", "3"]) == 0
    trials = optuna_trials(runs_dir, "smoke_random-v2")
    assert [t.number for t in trials] == [0, 1, 2] and len({t.params["kl_weight"] for t in trials}) == 3
    assert trials[0].params["kl_weight"] == 5e-5 and trials[0].user_attrs["reference_config"] == "vae"  # the reports'
    assert [t.user_attrs.get("reference_config") for t in trials[1:]] == [None, None]
    parents, children = split_runs(mlflow_runs(runs_dir, "smoke_random-v2"))
    assert [c.data.tags.get("reference_config") for c in sorted(children, key=lambda c: c.data.tags["trial_number"])] == \
        ["true", None, None]
    assert (len(parents), len(children)) == (2, 3)


def test_a_changed_definition_is_refused_and_nothing_is_lost(smoke_runs, monkeypatch, capsys):
    monkeypatch.setenv("RUNS_DIR", str(smoke_runs))
    before = (smoke_runs / "optuna.db").read_bytes(), (smoke_runs / "mlflow.db").read_bytes()
    assert main(["study", "smoke", "--steps", "20"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "was run with another definition (steps 16 -> 20)" in err
    assert ((smoke_runs / "optuna.db").read_bytes(), (smoke_runs / "mlflow.db").read_bytes()) == before


def test_failing_trials_are_recorded_and_the_study_goes_on(runs_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))

    def exploding_step(model, x, optimizers, params, fast, progress):
        raise RuntimeError("boom")

    register_family(dataclasses.replace(vae.FAMILY, name="exploding", train_step=exploding_step))
    text = (REPO / "studies" / "smoke.toml").read_text().replace('name = "smoke"', 'name = "explode"')
    text = text.replace('families = ["vae"]', 'families = ["exploding"]').replace("[space.vae]", "[space.exploding]")
    assert main(["study", str(write_study(tmp_path, "explode", text))]) == 1
    out = capsys.readouterr().out
    assert "2 trial(s)" in out and "2 failed" in out and "every trial failed, first trial 0: RuntimeError: boom" in out
    trials = optuna_trials(runs_dir, "explode-v2")
    assert [t.state for t in trials] == [TrialState.FAIL] * 2
    assert trials[0].user_attrs["failure_reason"] == "RuntimeError: boom"
    parents, children = split_runs(mlflow_runs(runs_dir, "explode-v2"))
    client = MlflowClient(tracking_uri=f"sqlite:///{runs_dir / 'mlflow.db'}")
    for run in children:
        assert run.info.status == "FAILED" and run.data.tags["failure_reason"] == "RuntimeError: boom"
        assert "error.txt" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert parents[0].info.status == "FINISHED"


@pytest.mark.fault
def test_user_mistakes_exit_non_zero_with_one_line_and_no_traceback(tmp_path):
    env = {"RUNS_DIR": str(tmp_path / "runs"), "PATH": "/usr/bin:/bin"}
    bad = write_study(tmp_path, "typo", (REPO / "studies" / "smoke.toml").read_text()
                      .replace('name = "smoke"', 'name = "typo"').replace("steps = 16", "stpes = 16"))
    mistakes = (["study", "vae_kl_swep"], ["study", str(bad)], ["study", "smoke", "--device", "cuda:7"],
                ["study", "smoke", "--bogus"], ["stduy", "smoke"], ["study", "smoke", "--steps", "-3"], ["study"],
                ["study", "smoke", "--pack", "0"], ["bench", "--workers", "1,two"], ["bench", "--workers", "1", "--packs", "4,"])
    for args in mistakes:  # the last four are argparse's: one line too, not its usage block
        done = subprocess.run([sys.executable, "-m", "harness", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in done.stderr
    assert not (tmp_path / "runs" / "optuna.db").exists()  # refused before anything was recorded


SECRET = "pa%40ss-w0rd"  # as written in a URI; a driver's message would show it decoded, "pa@ss-w0rd"


@pytest.mark.fault
def test_unreachable_stores_fail_fast_in_one_line_that_never_shows_the_password(tmp_path):
    """A database or tracking server that is down, or a URI whose driver is missing: one redacted line
    and exit 2 before anything is recorded (MLflow alone retried a refused PostgreSQL for 112 s and
    printed a traceback; mysql:// printed 68 lines). All output of each failing run is searched for the
    password, in both its forms."""
    cases = [("TRACKING_URI", f"postgresql://genbench:{SECRET}@127.0.0.1:1/genbench", "study"),
             ("TRACKING_URI", f"mysql://genbench:{SECRET}@127.0.0.1:1/genbench", "study"),
             ("TRACKING_URI", f"http://genbench:{SECRET}@127.0.0.1:1", "report"),
             ("STORAGE", f"postgresql://genbench:{SECRET}@127.0.0.1:1/genbench", "study")]
    live = os.environ.get("GENBENCH_TEST_POSTGRES")  # a real server and a wrong password: rejected, not leaked
    if live:
        cases.append(("STORAGE", live.replace("://genbench_ci:", f"://genbench_ci:{SECRET}x"), "study"))
    processes = []
    for i, (variable, uri, command) in enumerate(cases):
        env = {**os.environ, "RUNS_DIR": str(tmp_path / f"runs{i}"), "STORAGE": "", "TRACKING_URI": "", variable: uri}
        args = [sys.executable, "-m", "harness", command] + (["smoke", "--device", "cpu"] if command == "study" else [])
        processes.append(subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
    for (variable, uri, _), process in zip(cases, processes):
        out, err = process.communicate(timeout=120)  # a hang guard only: a refused connection is answered at once
        assert process.returncode == 2, (uri, out, err)
        for form in (SECRET, "pa@ss-w0rd"):
            assert form not in out + err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {variable}=") and "***@" in lines[0], err
        assert "Traceback" not in out + err
    assert not list(tmp_path.glob("runs*/mlflow.db"))  # nothing was recorded


def test_an_unwritable_runs_dir_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("RUNS_DIR", str(blocker / "runs"))
    assert main(["study", "smoke"]) == 2
    assert "is not writable" in capsys.readouterr().err


@pytest.mark.gpu
def test_smoke_study_on_the_gpu(runs_dir):
    assert main(["study", "smoke", "--device", "cuda"]) == 0
    trials = optuna_trials(runs_dir)
    assert all(t.state == TrialState.COMPLETE for t in trials)
    _, children = split_runs(mlflow_runs(runs_dir, "smoke-v2"))
    assert all(c.data.tags["device"].startswith("cuda") for c in children)


@pytest.mark.fault
def test_a_second_ctrl_c_while_runs_close_leaves_nothing_running(runs_dir, tmp_path, monkeypatch, capsys):
    """Users press Ctrl-C twice: the second arrives while the first's runs are being closed, and used to
    leave the child run RUNNING in MLflow for good."""
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))
    steps = []

    def interrupted_step(model, x, optimizers, params, fast, progress):
        steps.append(1)
        if len(steps) == 3:
            raise KeyboardInterrupt  # the first Ctrl-C, during training
        return vae.train_step(model, x, optimizers, params, fast, progress)

    register_family(dataclasses.replace(vae.FAMILY, name="interrupted", train_step=interrupted_step))
    second_ctrl_c_while_runs_close(monkeypatch)
    assert main(["study", str(write_study(tmp_path, "twice", smoke_study_of("interrupted", "twice")))]) == 130
    assert "still closing the interrupted runs" in capsys.readouterr().err
    runs = mlflow_runs(runs_dir, "twice-v2")
    assert runs and not [r for r in runs if r.info.status == "RUNNING"]
    assert {r.info.status for r in runs} == {"KILLED"}
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Python's handler is back
    # the next grid point waits for a rerun
    assert [t.state for t in optuna_trials(runs_dir, "twice-v2")] == [TrialState.FAIL, TrialState.WAITING]
