import pytest
import torch

from harness.data import synthfaces
from harness.family.fast_path import PLAIN
from harness.training.loop import load_model, save_model
from models import vae

PARAMS = {"latent_dim": 16, "dropout": 0.1, "lr": 1e-3, "weight_decay": 1e-5, "kl_weight": 1e-3}


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes(size, channels):
    model = vae.build(PARAMS, channels, size)
    x = torch.rand(4, channels, size, size)
    recon, mu, logvar = model(x)
    assert recon.shape == x.shape and mu.shape == logvar.shape == (4, 16)
    assert 0 <= recon.min() and recon.max() <= 1  # sigmoid output
    model.eval()
    assert model.reconstruct(x).shape == x.shape
    assert model.sample(torch.randn(5, model.latent_dim)).shape == (5, channels, size, size)


def test_architecture_matches_the_report_printout():
    """Seed report 001 prints the 64x64 CK VAE: fc 16384 -> 128 (latent 64), decoder fc 64 -> 16384."""
    model = vae.build({**PARAMS, "latent_dim": 64, "dropout": 0.0}, 1, 64)
    enc, dec = model.encoder, model.decoder
    assert [enc.layer1.conv.out_channels, enc.layer2.conv.out_channels, enc.layer3.conv.out_channels] == [16, 32, 64]
    assert isinstance(enc.layer1.pool, torch.nn.Identity) and isinstance(enc.layer2.pool, torch.nn.AvgPool2d)
    assert (enc.fc.in_features, enc.fc.out_features) == (16384, 128)
    assert (dec.fc.in_features, dec.fc.out_features) == (64, 16384)
    assert [dec.layer1.conv.out_channels, dec.layer2.conv.out_channels, dec.layer3.conv.out_channels] == [32, 16, 1]
    assert dec.layer1.up.mode == "nearest" and isinstance(dec.layer3.up, torch.nn.Identity)


def test_image_size_must_allow_two_poolings():
    with pytest.raises(ValueError, match="multiple of 4"):
        vae.VAEConfig(image_size=30)


def test_kl_divergence():
    zeros = torch.zeros(3, 8)
    assert vae.kl_divergence(zeros, zeros).item() == 0.0
    assert vae.kl_divergence(torch.ones(3, 8), zeros).item() == pytest.approx(4.0)  # 0.5 * 8 * 1^2


def test_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = vae.build(PARAMS, 1, 32)
    optimizers = vae.make_optimizers(model, PARAMS, PLAIN)
    x = synthfaces.generate(16, 32, seed=0)[0].float() / 255
    first = vae.train_step(model, x, optimizers, PARAMS, PLAIN, 0.0)["recon_mse"].item()
    for _ in range(30):
        last = vae.train_step(model, x, optimizers, PARAMS, PLAIN, 0.0)["recon_mse"].item()
    assert last < 0.7 * first


def test_weights_round_trip_with_weights_only(tmp_path):
    model = vae.build(PARAMS, 1, 32).eval()
    save_model(model, "vae", PARAMS, 1, 32, tmp_path)
    torch.load(tmp_path / "model.pt", weights_only=True)  # plain tensors only: no pickled code
    loaded = load_model(tmp_path)
    x = torch.rand(2, 1, 32, 32)
    assert torch.equal(loaded.reconstruct(x), model.reconstruct(x))
