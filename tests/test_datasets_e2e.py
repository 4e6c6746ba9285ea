"""Studies on every registered dataset through DATASET=/DATA=, `data check`, the PIE faces, `make bench`."""

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from test_loaders import column_major, make_celeba, make_mnist, write_mat73

from conftest import SHARED_DATA, mlflow_runs, split_runs
from harness.bench.speeds import bench_sampler
from harness.cli import main
from harness.data.datasets import dataset_names, load_dataset
from harness.family.registry import get_family
from harness.training.loop import TrainConfig, evaluate, train

pytestmark = pytest.mark.slow
RNG = np.random.default_rng(5)
FACES = RNG.integers(0, 256, (40, 32, 32), dtype=np.uint8)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """A tiny source for every dataset that reads files."""
    root = tmp_path_factory.mktemp("sources")
    scipy.io.savemat(root / "faces_v5.mat", {"fea": column_major(FACES)})
    write_mat73(root / "faces_v73.mat", {"fea": column_major(FACES)})
    np.savez(root / "faces.npz", images=FACES[:, None])
    make_celeba(root / "celeba", n=24)
    make_mnist(root / "mnist", compress=True)
    (root / "folder").mkdir()
    from PIL import Image
    for i, face in enumerate(FACES):
        Image.fromarray(face).save(root / "folder" / f"{i:03d}.png")
    return {"ck": root / "faces_v5.mat", "mat": root / "faces_v73.mat", "npz": root / "faces.npz",
            "celeba": root / "celeba", "mnist": root / "mnist", "folder": root / "folder"}


def test_every_file_dataset_has_a_source_here(sources):
    assert set(sources) | {"synthfaces"} == set(dataset_names())


@pytest.mark.parametrize("dataset", ["ck", "mat", "npz", "celeba", "mnist", "folder"])
def test_a_study_runs_on_every_dataset_through_the_overrides(dataset, sources, runs_dir):
    path = sources[dataset]
    assert main(["study", "smoke", "--dataset", dataset, "--data", str(path), "--trials", "1", "--steps", "8"]) == 0
    experiment = f"smoke-v2-{dataset}-{path.name}"
    parents, children = split_runs(mlflow_runs(runs_dir, experiment))
    assert len(parents) == 1 and len(children) == 1 and children[0].data.tags["state"] == "COMPLETE"
    params = children[0].data.params
    assert params["data.dataset"] == dataset and params["data.image_size"] == "32"  # the study's size is kept
    assert (runs_dir / "cache").is_dir()


def test_a_path_alone_infers_the_dataset(sources, runs_dir):
    assert main(["study", "smoke", "--data", str(sources["mat"]), "--trials", "1", "--steps", "8"]) == 0
    assert split_runs(mlflow_runs(runs_dir, f"smoke-v2-mat-{sources['mat'].name}"))[1]


@pytest.mark.parametrize("args, message", [
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["--dataset", "ck"], "needs the path to a .mat file"),
    (["--dataset", "ck", "--data", "/no/such/file.mat"], "does not exist"),
    (["--dataset", "synthfaces", "--data", "x.mat"], "does not read files"),
])
def test_bad_overrides_are_one_line_errors(args, message, runs_dir, capsys):
    assert main(["study", "smoke", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_data_check_prints_previews_and_exports_exactly(sources, runs_dir, tmp_path, capsys):
    export = tmp_path / "out.npz"
    assert main(["data", "check", str(sources["ck"]), "--export", str(export)]) == 0
    out = capsys.readouterr().out
    assert "images   40 x 1 x 32 x 32, uint8, values" in out and "splits   train 32, val 4, test 4 (seeded 0)" in out
    assert "layout NF, order F" in out and (runs_dir / "data-check" / "faces_v5.png").is_file()
    saved = np.load(export)
    assert saved["images"].dtype == np.uint8 and np.array_equal(saved["images"][:, 0], FACES)
    original = load_dataset("ck", {"path": str(sources["ck"])})
    again = load_dataset("npz", {"path": str(export)})  # the exported split comes back as the official one
    assert torch.equal(again.val, original.val) and torch.equal(again.test, original.test)
    assert main(["data", "check", "synthfaces", "--option", "n=100", "--option", "size=64"]) == 0
    assert "images   100 x 1 x 64 x 64" in capsys.readouterr().out
    assert main(["data", "check", str(sources["ck"]), "--option", "size"]) == 2
    assert main(["data", "check", str(sources["ck"]), "--key", "nothing"]) == 2
    assert "has no numeric array 'nothing'" in capsys.readouterr().err


@pytest.mark.skipif(not (SHARED_DATA / "PIE_32x32.mat").exists(), reason="../shared/data/PIE_32x32.mat is absent")
def test_a_vae_learns_the_pie_faces():
    data = load_dataset("mat", {"path": str(SHARED_DATA / "PIE_32x32.mat")})
    vae = get_family("vae")
    params = {**vae.defaults, "batch_size": 64}
    torch.manual_seed(0)
    before = evaluate(vae, vae.build(params, 1, 32), data, "val", params)["recon_mse"]
    after = train(vae, params, data, TrainConfig(steps=300, seed=0)).history[-1]["val_recon_mse"]
    assert after < 0.5 * before


def test_bench_measures_both_samplers():
    rows = bench_sampler(torch.device("cpu"), n=2000, size=32, batch_sizes=(64,), seconds=0.2)
    row = rows[0]
    assert row["device_resident_batches_per_s"] > 0 and row["dataloader_0_workers_batches_per_s"] > 0
    assert row["speedup_vs_0_workers"] == row["device_resident_batches_per_s"] / row["dataloader_0_workers_batches_per_s"]
