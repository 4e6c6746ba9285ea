"""Reports of studies in every state (a finished one, one with only a running trial, one with failed
and pruned trials, one with no trials), an index that lists every study, the reason latent arithmetic
is absent on unlabelled data, and the long phases' progress lines when output is piped."""

from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import mlflow_runs, share_caches, split_runs, write_study
from harness.cli import main
from harness.core import keys, progress
from harness.core.keys import Tag
from harness.core.progress import LongTask
from harness.core.storage import Storage
from harness.data import synthfaces
from harness.scoring import extractors
from harness.scoring import real_images as reference
from harness.tracking.client import Tracker

FINISHED = "finished_demo"
TROUBLED = "troubled_demo"
RUNNING = "running_demo-v1"
EMPTY = "empty_demo-v1"
STUDY = """
name = "{name}"
version = 1
families = ["vae"]
trials = {trials}
steps = 8
rounds = 2
seed = 0
objective = "val_recon_mse"
[dataset]
name = "npz"
path = "{path}"
[sampler]
name = "grid"
[pruner]
name = "{pruner}"
{pruner_options}
[space.vae]
lr = {lrs}
latent_dim = 8
batch_size = 32
[scores]
round_samples = 20
final_samples = 20
flags = "tag"                 # 8 steps learn nothing: tagged, still ranked
"""


def study_text(name: str, path: Path, lrs: list[float], pruner: str = "none", pruner_options: str = "") -> str:
    return STUDY.format(name=name, path=path, trials=len(lrs), lrs=lrs, pruner=pruner, pruner_options=pruner_options)


@pytest.fixture(scope="module")
def states(tmp_path_factory, shared_caches):
    """Four studies in one RUNS_DIR, on 120 unlabelled faces: one finished, one whose trials failed
    (diverged) and were pruned, one with only a running trial (an Optuna trial asked for and its MLflow
    run left RUNNING, as a study that is still training leaves them), one created with no trials."""
    root = tmp_path_factory.mktemp("states")
    runs = root / "runs"
    share_caches(runs, shared_caches)
    faces, _ = synthfaces.generate(120, 32, seed=3)
    np.savez(root / "faces.npz", images=faces.numpy())
    finished = write_study(root / "studies", FINISHED, study_text(FINISHED, root / "faces.npz", [1e-3, 3e-3]))
    troubled = write_study(root / "studies", TROUBLED, study_text(
        TROUBLED, root / "faces.npz", [1e-3, 1e-7, 1.0], "median", "n_startup_trials = 1\nn_warmup_steps = 0"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RUNS_DIR", str(runs))
        mp.delenv("STORAGE", raising=False)
        mp.delenv("TRACKING_URI", raising=False)
        assert main(["study", str(finished)]) == 0
        assert main(["study", str(troubled)]) == 0
        storage = Storage.from_env()
        leave_a_trial_running(storage)
        optuna.create_study(study_name=EMPTY, storage=storage.optuna(), direction="minimize")
    return runs, root


def leave_a_trial_running(storage: Storage) -> None:
    """What `make study` leaves while its first trial trains: a RUNNING Optuna trial and MLflow runs."""
    study = optuna.create_study(study_name=RUNNING, storage=storage.optuna(), direction="minimize")
    study.set_user_attr(keys.StudyAttr.IDENTITY, {"dataset": "npz", "objectives": ["val_recon_mse"]})
    trial = study.ask()
    tracker = Tracker(storage, RUNNING)
    parent = tracker.start_run("running_demo-20250101-000000", {"dataset": "npz", "objective": "val_recon_mse"},
                               {Tag.KIND: "study", Tag.STATE: "RUNNING", Tag.OBJECTIVE: "val_recon_mse"})
    tracker.start_run(f"trial-{trial.number}", {"family": "vae", "lr": 1e-3},
                      {Tag.TRIAL: trial.number, Tag.FAMILY: "vae", Tag.STATE: "RUNNING", Tag.FAMILY_PLOTS: "samples"},
                      parent_id=parent)


def report(runs: Path, out: Path, *studies: str) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RUNS_DIR", str(runs))
        mp.delenv("STORAGE", raising=False)
        mp.delenv("TRACKING_URI", raising=False)
        assert main(["report", *studies, "--out", str(out)]) == 0


@pytest.fixture(scope="module")
def reports(states):
    """Every study's report, built once with output captured (not a terminal), as `make report | tee` does."""
    runs, root = states
    out = root / "reports"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        report(runs, out)
    return out, buffer.getvalue()


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as picture:
        picture.verify()
    with Image.open(path) as picture:
        return picture.size


@pytest.mark.slow
def test_every_state_renders_its_page_tables_and_csvs(reports):
    out, printed = reports
    for name in (f"{FINISHED}-v1", f"{TROUBLED}-v1", RUNNING, EMPTY):
        folder = out / name
        assert {"index.html", "tables.md", "trials.csv", "best_per_family.csv"} <= {p.name for p in folder.iterdir()}, name
        assert "report " in printed and name in printed  # one line per study as it was built
    assert [line.split(":")[0] for line in printed.splitlines() if line.startswith("report ")] == \
        ["report 1/4", "report 2/4", "report 3/4", "report 4/4"]


@pytest.mark.slow
def test_a_study_with_only_a_running_trial_says_nothing_is_ranked_yet(reports):
    out, _ = reports
    folder = out / RUNNING
    text = (folder / "tables.md").read_text()
    assert "1 trial: 1 running." in text and "1 trial running, none complete: nothing is ranked yet." in text
    trials = pd.read_csv(folder / "trials.csv")
    assert list(trials["state"]) == ["RUNNING"] and list(trials["trial"]) == [0] and list(trials["family"]) == ["vae"]
    assert trials["wall_s"].isna().all()  # no duration until it ends
    assert pd.read_csv(folder / "best_per_family.csv").empty
    page = (folder / "index.html").read_text()
    assert "nothing is ranked yet" in page and "<td>RUNNING</td>" in page


@pytest.mark.slow
def test_a_study_with_failed_and_pruned_trials_says_why(reports):
    out, _ = reports
    folder = out / f"{TROUBLED}-v1"
    trials = pd.read_csv(folder / "trials.csv")
    assert sorted(trials["state"]) == ["COMPLETE", "FAIL", "PRUNED"]
    assert {"trial", "state", "family", "flags", "val_recon_mse", "lr", "wall_s", "failure"} <= set(trials.columns)
    failed = trials[trials["state"] == "FAIL"].iloc[0]
    assert failed["lr"] == pytest.approx(1.0) and "Diverged" in failed["failure"]
    text = (folder / "tables.md").read_text()
    assert "3 trials: 1 complete, 1 pruned, 1 failed." in text
    assert f"First failure, trial {int(failed['trial'])}: Diverged: step" in text
    best = pd.read_csv(folder / "best_per_family.csv")
    assert list(best["family"]) == ["vae"] and best["lr"][0] == pytest.approx(1e-3)  # the complete one is ranked
    wall = folder / "wall_times.png"
    width, height = png_size(wall)
    assert 300 <= width <= 2000 and 200 <= height <= 1400


@pytest.mark.slow
def test_a_study_with_no_trials_says_so(reports):
    out, _ = reports
    folder = out / EMPTY
    assert "No trials yet" in (folder / "tables.md").read_text()
    assert "No trials yet" in (folder / "index.html").read_text()
    trials = pd.read_csv(folder / "trials.csv")
    assert trials.empty and {"trial", "state"} <= set(trials.columns)


@pytest.mark.slow
def test_the_finished_study_has_its_tables_and_pictures(reports):
    out, _ = reports
    folder = out / f"{FINISHED}-v1"
    trials = pd.read_csv(folder / "trials.csv")
    assert list(trials["state"]) == ["COMPLETE", "COMPLETE"] and trials["val_recon_mse"].is_monotonic_increasing
    assert {"trial", "state", "family", "val_recon_mse", "lr", "wall_s"} <= set(trials.columns)
    assert "2 trials: 2 complete." in (folder / "tables.md").read_text()
    pictures = [p for p in folder.rglob("*.png")]
    assert {"samples.png", "reconstructions.png", "wall_times.png"} <= {p.name for p in pictures}
    for path in pictures:
        width, height = png_size(path)
        assert 16 <= width <= 3000 and 16 <= height <= 3000, path
        assert path.stat().st_size < 2_000_000, path


@pytest.mark.slow
def test_unlabelled_data_says_why_latent_arithmetic_is_absent(states, reports):
    runs, _ = states
    out, _ = reports
    parents, _ = split_runs(mlflow_runs(runs, f"{FINISHED}-v1"))
    best_run = parents[0].data.tags[Tag.BEST_RUN]
    storage = Storage.from_env({"RUNS_DIR": str(runs)})
    names = {a.path for a in storage.mlflow().list_artifacts(best_run, "latent")}
    assert f"latent/{keys.Artifact.ARITHMETIC_ABSENT}" in names and "latent/interpolation.png" in names
    assert not [n for n in names if "arithmetic_" in n and n.endswith(".png")]
    sentence = "latent arithmetic needs attribute labels to pick its groups (neutral, happy); dataset npz has none"
    assert sentence in (out / f"{FINISHED}-v1" / "tables.md").read_text()
    assert sentence in (out / f"{FINISHED}-v1" / "index.html").read_text()


@pytest.mark.slow
def test_the_index_lists_every_study_after_a_report_of_one(states, reports):
    runs, root = states
    out, _ = reports
    report(runs, out, TROUBLED)
    index = (out / "index.html").read_text()
    for name in (f"{FINISHED}-v1", RUNNING, EMPTY):
        assert f'<a href="{name}/index.html">{name}</a>' in index and "not rebuilt this time" in index
    assert f'<a href="{TROUBLED}-v1/index.html">{TROUBLED}-v1</a>' in index and "rebuilt now" in index
    assert "1 trial: 1 running" in index and "no trials yet" in index
    cross = pd.read_csv(out / "cross_study.csv")
    assert any(f"{FINISHED}-v1" in str(v) for v in cross.to_numpy().ravel())  # not shrunk to the rebuilt study
    fresh = root / "fresh-reports"
    report(runs, fresh, RUNNING)
    index = (fresh / "index.html").read_text()
    assert index.count("no report yet") == 3 and f'<a href="{RUNNING}/index.html">' in index
    assert f"no report yet: make report STUDY={EMPTY}" in (fresh / "tables.md").read_text()


@pytest.mark.slow
def test_extractor_training_prints_progress_when_piped(monkeypatch, capsys):
    monkeypatch.setattr(progress, "LINE_SECONDS", 0.01)
    images = synthfaces.generate(64, 32, seed=0)[0]
    net = extractors.DomainNet(1, 32, 0, 0)
    extractors._train_domain(net, images, extractors.Targets(None, 0, None, None), torch.device("cpu"))
    lines = [line for line in capsys.readouterr().out.splitlines() if "training the domain extractor:" in line]
    steps = extractors.training_steps(64)
    assert len(lines) >= 3 and all(f"/{steps} steps" in line and "s so far" in line for line in lines)
    assert any("loss " in line for line in lines)


def test_drawing_the_reference_images_prints_progress_when_piped(monkeypatch, capsys):
    monkeypatch.setattr(progress, "LINE_SECONDS", 0.01)
    monkeypatch.setattr(reference, "EXTRACTOR_SAMPLE", 600)
    data = reference.score_data("synthfaces", {"size": 32, "n": 100}, None, wanted=300)
    assert len(data.train) == 600 and len(data.reference) == 300
    lines = [line for line in capsys.readouterr().out.splitlines() if "drawing the scoring images of synthfaces" in line]
    assert len(lines) >= 2 and all("/1200 images" in line for line in lines)


def test_a_phase_is_silent_on_time_and_says_how_far(monkeypatch, capsys):
    monkeypatch.setattr(progress, "LINE_SECONDS", 0.01)
    with LongTask("counting", total=4, unit="thing") as phase:
        for i in range(4):
            time.sleep(0.05)
            phase.update(1, note=f"at {i}")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  counting: ")]
    assert len(lines) >= 3 and "/4 things" in lines[-1] and "at " in lines[-1]
    monkeypatch.setattr(progress, "LINE_SECONDS", 60.0)
    with LongTask("quick", total=1) as phase:
        phase.update(1)
    assert capsys.readouterr().out == ""  # a phase shorter than the interval prints nothing


@pytest.mark.parametrize("exists", [False, True])
def test_reading_a_runs_dir_with_no_studies_names_it_and_creates_nothing(tmp_path, monkeypatch, capsys, exists):
    """`RUNS_DIR=/missing make report` used to blame STORAGE=sqlite:///... (which the user never set),
    and on an empty folder left an optuna.db behind."""
    runs = tmp_path / "runs"
    if exists:
        runs.mkdir()
    monkeypatch.setenv("RUNS_DIR", str(runs))
    monkeypatch.delenv("STORAGE", raising=False)
    monkeypatch.delenv("TRACKING_URI", raising=False)
    assert main(["report", "--out", str(tmp_path / "reports")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"RUNS_DIR={runs}" in err and "STORAGE" not in err
    assert ("does not exist" in err) != exists and ("no studies under" in err) == exists
    assert not runs.exists() if not exists else list(runs.iterdir()) == []
    assert not (tmp_path / "reports").exists()


def test_a_trial_shows_its_steps_read_from_its_counter_when_piped(monkeypatch, capsys):
    """The loop does nothing for its progress: another thread reads the step counter."""
    monkeypatch.setattr(progress, "LINE_SECONDS", 0.01)
    counter = {"done": 0}
    with progress.steps_shown("trial 3", 40, lambda: counter["done"]) as shown:
        for step in range(1, 41):
            counter["done"] = step
            if step == 20:
                shown("round 1/2, val_loss=0.5")
            time.sleep(0.005)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  trial 3: ")]
    assert len(lines) >= 3 and any("/40 steps (" in line for line in lines)
    assert any("round 1/2, val_loss=0.5" in line for line in lines)
    with progress.steps_shown(None, 40, lambda: 0) as shown:  # no label: nothing shown, nothing started
        shown("ignored")
    assert capsys.readouterr().out == ""


def test_a_study_ends_with_the_next_commands_as_typed(tmp_path, monkeypatch):
    from harness.study.studyfile import load_study

    monkeypatch.chdir(tmp_path)
    spec = load_study("vae_kl_sweep")
    assert progress.next_commands(spec, tmp_path / "mlruns") == (
        f"next: make report STUDY=vae_kl_sweep (writes reports/{spec.study_name}/index.html), "
        "make ui STUDY=vae_kl_sweep (its runs in the MLflow UI)")
    full_spec = load_study("vae_kl_sweep", "full")
    full = progress.next_commands(full_spec, Path("/data/runs"))
    assert f"RUNS_DIR=/data/runs make report STUDY=vae_kl_sweep (writes reports/{full_spec.study_name}/" in full
    assert full.endswith("RUNS_DIR=/data/runs make ui STUDY=vae_kl_sweep SCALE=full (its runs in the MLflow UI)")
