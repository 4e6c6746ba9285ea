"""The names of what is recorded: one module builds them, and scores are named for their extractor."""

import pytest

from harness.core import keys


@pytest.mark.parametrize("objective, extractor, logged", [
    ("fd", "inception", "fid"), ("fd", "domain", "fd_domain"), ("kd", "inception", "kid"),
    ("val_fd", "inception", "val_fid"), ("val_fd", "domain", "val_fd_domain"), ("precision", "domain", "precision_domain"),
    ("val_recon_mse", "domain", "val_recon_mse"),  # a family's metric is logged as it is named
])
def test_objectives_resolve_to_the_logged_key(objective, extractor, logged):
    assert keys.resolve_objective(objective, extractor) == logged


def test_a_score_from_another_network_is_never_called_fid():
    assert keys.score_key("fd", "domain") != "fid" and "FID" not in keys.label("fd_domain")
    assert keys.label("fid") == "FID" and keys.label("test_fd_domain") == "test Fréchet distance, domain features"


@pytest.mark.parametrize("key, direction", [
    ("fid", "minimize"), ("test_kd_domain", "minimize"), ("recall_domain", "maximize"), ("is", "maximize"),
    ("test_psnr", "maximize"), ("test_bce", "minimize"), ("val_pixel_mmd", "minimize"),
    ("val_recon_mse", None),  # a family's metric: its family declares the direction
    ("kd_domain_std", None),  # a spread, not a score
])
def test_directions(key, direction):
    assert keys.direction(key) == direction


def test_split_keys_and_labels():
    assert keys.split_key("val", "recon_mse") == "val_recon_mse" and keys.split_of("val_recon_mse") == ("val", "recon_mse")
    assert keys.split_of("round_seconds") is None and keys.in_split("train_kl", "train")
    assert keys.label("val_recon_mse") == "validation reconstruction MSE"
    with pytest.raises(KeyError):
        keys.split_key("holdout", "kl")
    with pytest.raises(KeyError):
        keys.score_key("fid", "domain")
