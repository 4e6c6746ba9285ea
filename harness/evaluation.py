"""Scoring a trial's samples: one extractor, one protocol, reference statistics computed once.

Per epoch, a cheap Fréchet distance (`val_fd_<extractor>`, `epoch_samples` images from a fixed z
against as many validation images) goes to the pruner. After training, the full scores use
`final_samples` generated images (10,000 with a GPU, 2,000 on a CPU unless the study says) against
the validation split (the objective) and the test split (`test_` scores, reported, never selected
on): Fréchet distance, kernel distance (+ std over subsets), precision, recall, and the inception
score for extractors with class outputs. Reference statistics are cached under RUNS_DIR/cache/
reference/, keyed by extractor (and its weights or recipe), the split's content hash, the split,
the count and the preprocessing, so every later trial and study reuses them.
VAE families also get reconstruction scores on the test split: BCE, ELBO, PSNR, SSIM.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness import keys
from harness.cache import key_of, load_or_build, sha256_tensor
from harness.data import ImageSplits, did_you_mean, to_model_range
from harness.errors import UserError, warn
from harness.extractors import Extractor, extractor_names
from harness.generate import fixed_samples
from harness.metrics import gaussian_kl
from harness.registry import Family
from harness.scores import (FeatureStats, frechet_distance, inception_score, kernel_distance, precision_recall,
                            to_uint8)

EPOCH_SEED, FINAL_SEED = 1, 2  # the fixed z of the per-epoch and the final samples
BATCH = 250  # images per forward pass when sampling and extracting


@dataclass(frozen=True)
class ScoreSettings:
    """The [scores] table of a study file."""

    extractor: str = "auto"  # auto | inception | domain
    epoch_samples: int = 1000
    final_samples: int = 0  # 0: 10,000 with a GPU, 2,000 on a CPU
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    pr_k: int = 3


class SampleQuality:
    def __init__(self, extractor: Extractor, reason: str, data: ImageSplits, settings: ScoreSettings, cache_dir: Path):
        """cache_dir: where reference statistics are kept (Storage.reference_cache)."""
        self.extractor, self.reason, self.data, self.settings = extractor, reason, data, settings
        self.final_samples = settings.final_samples or (10_000 if data.device.type == "cuda" else 2_000)
        self.cache_dir = cache_dir
        self.computed = 0  # reference statistics computed here rather than found in the cache
        self._memo: dict[tuple[str, int], FeatureStats] = {}

    def check(self, objectives: list[str]) -> None:
        """Refuse objectives this data cannot give; warn about scores it must skip."""
        n_val = min(len(self.data.val), self.final_samples)
        if n_val <= self.settings.pr_k:
            if {"precision", "recall"} & set(objectives):
                raise UserError(f"precision/recall with k = {self.settings.pr_k} need more than {self.settings.pr_k} "
                                f"validation images, the dataset has {n_val}; use more data or another objective")
            warn(f"only {n_val} validation images: precision/recall (k = {self.settings.pr_k}) are skipped")
        if any(o == "is" for o in objectives) and not self.extractor.has_classes:
            raise UserError(f"objective is needs an extractor with class outputs; the {self.extractor.name} extractor "
                            "of this dataset has none (no labels to classify); choose another objective")

    def protocol(self) -> dict[str, Any]:
        """How every score is measured: logged with each run, so reports compare like with like."""
        n_val, n_test = len(self.data.val), len(self.data.test)
        return {"score.extractor": self.extractor.name, "score.extractor_choice": self.reason,
                "score.extractor_sha256": self.extractor.weights_sha256,
                "score.extractor_identity": json.dumps(self.extractor.identity, sort_keys=True),
                "score.input": self.extractor.input_description,
                "score.generated_epoch": self.settings.epoch_samples, "score.generated_final": self.final_samples,
                "score.reference_epoch": f"val {min(self.settings.epoch_samples, n_val)}",
                "score.reference_final": f"val {min(self.final_samples, n_val)}, test {min(self.final_samples, n_test)}",
                "score.dtype": "float32 features, float64 statistics",
                "score.kid": f"cubic polynomial kernel, {self.settings.kid_subsets} subsets of "
                             f"<= {self.settings.kid_subset_size}, seed 2020",
                "score.precision_recall_k": self.settings.pr_k}

    def _features(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        parts = [self.extractor(images[start:start + BATCH]) for start in range(0, len(images), BATCH)]
        features = torch.cat([p[0].float().cpu() for p in parts])
        logits = torch.cat([p[1].float().cpu() for p in parts]) if parts[0][1] is not None else None
        return features, logits

    def reference(self, split: str, n: int) -> FeatureStats:
        """Statistics of the first n images of a split: from memory, the disk cache, or computed once."""
        images = getattr(self.data, split)[:n].cpu().contiguous()
        n = len(images)
        if (split, n) in self._memo:
            return self._memo[(split, n)]
        key = key_of({"extractor": self.extractor.identity, "data_sha256": sha256_tensor(images), "split": split,
                      "n": n, "input": self.extractor.input_description, "version": 1}, length=24)

        def build() -> dict[str, Tensor]:
            features, _ = self._features(images)
            stats = FeatureStats.of(features)
            return {"mu": stats.mu, "sigma": stats.sigma, "features": features}

        stats, built = load_or_build(self.cache_dir / f"{self.extractor.name}-{split}-{n}-{key}.pt", build,
                                     lambda stored: FeatureStats(stored["mu"], stored["sigma"], stored["features"].double()),
                                     "reference statistics")
        self.computed += built
        self._memo[(split, n)] = stats
        return stats

    @torch.no_grad()
    def generated(self, family: Family, model: nn.Module, n: int, seed: int) -> tuple[FeatureStats, Tensor | None]:
        """Features of n samples from a fixed z, turned into uint8 images as real ones are stored."""
        images = fixed_samples(model, family.output_range, n, seed, self.data.device, batch=BATCH,
                               keep=lambda batch: to_uint8(batch).cpu())
        features, logits = self._features(images)
        return FeatureStats.of(features), logits

    def warm(self) -> None:
        """Compute (or find) every reference set the trials will ask for, once, before workers start."""
        self.reference("val", min(self.settings.epoch_samples, len(self.data.val)))
        self.reference("val", min(self.final_samples, len(self.data.val)))
        self.reference("test", min(self.final_samples, len(self.data.test)))

    def epoch_scores(self, family: Family, model: nn.Module) -> dict[str, float]:
        n = self.settings.epoch_samples
        generated, _ = self.generated(family, model, n, EPOCH_SEED)
        reference = self.reference("val", min(n, len(self.data.val)))
        return {keys.epoch_score_key(self.extractor.name): frechet_distance(generated, reference)}

    def final_scores(self, family: Family, model: nn.Module) -> dict[str, float]:
        """Scores against the validation split (unprefixed: fd_domain, the objective) and the test
        split (test_fd_domain: reported, never selected on)."""
        s = self.settings
        generated, logits = self.generated(family, model, self.final_samples, FINAL_SEED)
        scores: dict[str, float] = {}
        for split in ("val", "test"):
            def key(kind: str) -> str:
                name = keys.score_key(kind, self.extractor.name)
                return name if split == "val" else keys.split_key(split, name)

            reference = self.reference(split, min(self.final_samples, len(getattr(self.data, split))))
            kd, kd_std = kernel_distance(generated, reference, s.kid_subsets, s.kid_subset_size)
            scores.update({key("fd"): frechet_distance(generated, reference), key("kd"): kd,
                           keys.std_key(key("kd")): kd_std})
            if min(len(reference.features), len(generated.features)) > s.pr_k:  # else too few for k-NN balls
                precision, recall = precision_recall(generated, reference, s.pr_k)
                scores.update({key("precision"): precision, key("recall"): recall})
        if logits is not None:
            mean, std = inception_score(logits)
            name = keys.score_key("is", self.extractor.name)
            scores.update({name: mean, keys.std_key(name): std})
        return scores


@torch.no_grad()
def reconstruction_scores(family: Family, model: nn.Module, data: ImageSplits, split: str,
                          batch_size: int) -> dict[str, float]:
    """For VAEs on images in [0, 1]: per-pixel BCE of decode(mu); the ELBO in nats per image under a
    Bernoulli decoder, one z ~ q(z|x) per image from a fixed seed; PSNR and SSIM (torchmetrics) of
    decode(mu) per image, averaged."""
    from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

    if not family.autoencoder:
        raise ValueError(f"reconstruction scores need an autoencoder; {family.name} is {family.kind}")
    device = data.device
    psnr = PeakSignalNoiseRatio(data_range=1.0, reduction="elementwise_mean", dim=(1, 2, 3)).to(device)
    ssim = StructuralSimilarityIndexMeasure(data_range=1.0).to(device)
    generator = torch.Generator().manual_seed(0)
    model.eval()
    bce_sum, elbo_sum, n = 0.0, 0.0, 0
    for x in data.batches(split, batch_size):
        x = to_model_range(x, family.output_range)
        mu, logvar = model.encoder(x)
        mean = model.decoder(mu).clamp(1e-6, 1 - 1e-6)
        eps = torch.randn(mu.shape, generator=generator).to(device)
        sampled = model.decoder(mu + eps * torch.exp(0.5 * logvar)).clamp(1e-6, 1 - 1e-6)
        log_likelihood = -F.binary_cross_entropy(sampled, x, reduction="none").flatten(1).sum(1)
        kl = gaussian_kl(mu, logvar).sum(1)
        bce_sum += F.binary_cross_entropy(mean, x, reduction="none").flatten(1).mean(1).sum().item()
        elbo_sum += (log_likelihood - kl).sum().item()
        psnr.update(mean, x)
        ssim.update(mean, x)
        n += len(x)
    values = {"bce": bce_sum / n, "elbo": elbo_sum / n, "psnr": psnr.compute().item(), "ssim": ssim.compute().item()}
    return {keys.split_key(split, metric): value for metric, value in values.items()}


def score_settings(table: Mapping[str, Any], where: str) -> ScoreSettings:
    """The [scores] table, refusing unknown keys and bad values."""
    defaults = asdict(ScoreSettings())
    for key, value in table.items():
        if key not in defaults:
            raise UserError(f"{where}: unknown key {key!r}{did_you_mean(key, defaults)}; valid: {', '.join(defaults)}")
        if not isinstance(value, type(defaults[key])) or isinstance(value, bool):
            raise UserError(f"{where}.{key}: expected {type(defaults[key]).__name__}, got {value!r}")
    settings = ScoreSettings(**{**defaults, **table})
    if settings.extractor not in ("auto", *extractor_names()):
        raise UserError(f"{where}.extractor: {settings.extractor!r}; valid: auto, {', '.join(extractor_names())}")
    for key in ("epoch_samples", "kid_subsets", "kid_subset_size", "pr_k"):
        if getattr(settings, key) < (2 if key != "kid_subsets" else 1):
            raise UserError(f"{where}.{key}: {getattr(settings, key)} is too small")
    if settings.final_samples < 0 or settings.final_samples == 1:
        raise UserError(f"{where}.final_samples: {settings.final_samples}; give 0 (auto) or at least 2")
    return settings
