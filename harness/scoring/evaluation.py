"""Scoring a trial's samples: one extractor, one protocol, reference statistics computed once.

The real images come from the dataset's scoring sample (harness/scoring/real_images.py), the same for every
study on it. After every round, a cheap Fréchet distance (`val_fd_<extractor>`, `round_samples` images from a
fixed z against as many reference images) goes to the pruner. After training, n generated images
(`final_samples`: 10,000 with a GPU, 2,000 on a CPU, or what the data has) are scored against n
reference images (the objective) and n holdout images (`test_` scores, reported, never selected on):
Fréchet distance (and, for an extractor whose features come in blocks, the distance of each block
alone: fd_domain/32px is the detail at 32 pixels), FD-infinity, kernel distance (+ std over subsets),
precision, recall, density, coverage (one k: pr_k), and the inception score for extractors with
class outputs. Reference statistics are cached under
RUNS_DIR/cache/reference/, keyed by the extractor (its weights' hash), the images' content hash, the
count and the preprocessing, so every later trial and study reuses them.
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

from harness.core import keys
from harness.core.cache import key_of, load_or_build, sha256_tensor
from harness.core.errors import UserError, warn
from harness.core.progress import LongTask
from harness.data.datasets import ImageSplits, did_you_mean, to_model_range
from harness.family.contract import Family
from harness.family.generate import GRID_SEED, fixed_samples
from harness.scoring.extractors import Extractor, extractor_names
from harness.scoring.pixel_mmd import gaussian_kl
from harness.scoring.real_images import GPU_N, TARGET_N, ScoreData
from harness.scoring.scores import (
    KID_SEED,
    FeatureStats,
    diversity,
    frechet_distance,
    inception_score,
    kernel_distance,
    knn_scores,
    to_uint8,
)

ROUND_SEED, FINAL_SEED = 1, 2  # the fixed z of the per-round and the final samples
BATCH = 250  # images per forward pass when sampling and extracting


@dataclass(frozen=True)
class ScoreSettings:
    """The [scores] table of a study file."""

    extractor: str = "auto"  # auto | inception | domain
    round_samples: int = 1000
    final_samples: int = 0  # 0: 10,000 with a GPU, 2,000 on a CPU
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    pr_k: int = 3
    # What a failed validation panel does to a score objective: "require" refuses the study, "warn"
    # says so in one line and logs it (score.panel), for exploring at sample sizes too small to rank.
    panel: str = "require"
    # What a collapsed or did-not-learn flag does (harness/scoring/flags.py): "exclude" never reports the trial
    # as best in a study judged by sample quality; "tag" only tags it (for studies too small to learn).
    flags: str = "exclude"


class SampleQuality:
    def __init__(self, extractor: Extractor, reason: str, data: ScoreData, settings: ScoreSettings, cache_dir: Path,
                 device: torch.device):
        """data: the dataset's scoring images (harness/scoring/real_images.py); cache_dir: where reference
        statistics are kept (Storage.reference_cache)."""
        self.extractor, self.reason, self.data, self.settings, self.device = extractor, reason, data, settings, device
        wanted = settings.final_samples or (GPU_N if device.type == "cuda" else TARGET_N)
        self.final_samples = data.sample_size(wanted)  # generated = reference = holdout images
        self.round_samples = data.sample_size(settings.round_samples)
        self.cache_dir = cache_dir
        self.computed = 0  # reference statistics computed here rather than found in the cache
        self._memo: dict[tuple[str, int], FeatureStats] = {}
        self._floor: float | None = None
        self._floor_by_scale: dict[str, float] | None = None

    def check(self, objectives: list[str]) -> None:
        """Refuse objectives this data or extractor cannot give; warn about scores it must skip."""
        n = self.final_samples
        if n <= self.settings.pr_k:
            if {"precision", "recall", "coverage"} & set(objectives):
                raise UserError(f"precision, recall and coverage with k = {self.settings.pr_k} need more than "
                                f"{self.settings.pr_k} reference images, the dataset has {n}; use more data or another objective")
            warn(f"only {n} reference images: precision, recall, density and coverage (k = {self.settings.pr_k}) are skipped")
        if any(o == "is" for o in objectives):
            if not self.extractor.has_classes:
                raise UserError(f"objective is needs an extractor with class outputs; the {self.extractor.name} "
                                f"extractor here has none ({self.extractor.no_classes_reason}); choose another objective")
            if self.extractor.quality and not classifier_is_good(self.extractor.quality):  # trained here: checked
                q = self.extractor.quality
                raise UserError(f"objective is needs a classifier far above chance: the {self.extractor.name} extractor's "
                                f"held-out accuracy is {q['accuracy']:.1%} (chance {q['chance']:.1%}, needed "
                                f"{needed_accuracy(q['chance']):.1%}); choose another objective")

    def floor(self) -> float:
        """The real-vs-real Fréchet distance at the compared n: holdout against reference (computed once:
        protocol() is logged with every run)."""
        if self._floor is None:
            self._floor = frechet_distance(self.reference("holdout", self.final_samples),
                                           self.reference("reference", self.final_samples))
        return self._floor

    def protocol(self) -> dict[str, Any]:
        """How every score is measured: logged with each run, so reports compare like with like."""
        n, s = self.final_samples, self.settings
        return {keys.ScoreParam.EXTRACTOR: self.extractor.name, keys.ScoreParam.EXTRACTOR_CHOICE: self.reason,
                keys.ScoreParam.EXTRACTOR_SHA256: self.extractor.weights_sha256,
                keys.ScoreParam.EXTRACTOR_WEIGHTS: self.extractor.source,
                keys.ScoreParam.EXTRACTOR_IDENTITY: json.dumps(self.extractor.identity, sort_keys=True),
                keys.ScoreParam.EXTRACTOR_QUALITY: json.dumps(self.extractor.quality, sort_keys=True),
                keys.ScoreParam.INPUT: self.extractor.input_description,
                keys.ScoreParam.REFERENCE_DATA: self.data.how,
                keys.ScoreParam.REFERENCE_IDENTITY: json.dumps(self.data.identity, sort_keys=True),
                keys.ScoreParam.N: n, keys.ScoreParam.SAMPLE_SIZE: self.data.size_note(n),
                keys.ScoreParam.N_ROUND: self.round_samples,
                keys.ScoreParam.FLOOR_FD: round(self.floor(), 6),
                **({keys.ScoreParam.FLOOR_FD_BY_SCALE: json.dumps(self.floor_by_scale())} if self.extractor.blocks else {}),
                keys.ScoreParam.Z_SEEDS: json.dumps({"grid": GRID_SEED, "round": ROUND_SEED, "final": FINAL_SEED}),
                keys.ScoreParam.DTYPE: "float32 features, float64 statistics",
                keys.ScoreParam.KID: f"cubic polynomial kernel, {s.kid_subsets} subsets of "
                             f"{min(s.kid_subset_size, n)} (asked {s.kid_subset_size}), seed {KID_SEED}",
                keys.ScoreParam.FD_INF: f"linear fit of FD against 1/N over N = {', '.join(map(str, fd_inf_sizes(n)))} "
                                f"generated images (seed {FD_INF_SEED}), reference fixed (Chong & Forsyth 2020)",
                keys.ScoreParam.PRECISION_RECALL_K: s.pr_k}  # the k of density and coverage too (the name is older)

    def features(self, images: Tensor, phase: LongTask | None = None) -> tuple[Tensor, Tensor | None]:
        parts = []
        for start in range(0, len(images), BATCH):
            parts.append(self.extractor(images[start:start + BATCH]))
            if phase is not None:
                phase.update(len(parts[-1][0]))
        features = torch.cat([p[0].float().cpu() for p in parts])
        logits = torch.cat([p[1].float().cpu() for p in parts]) if parts[0][1] is not None else None
        return features, logits

    def reference(self, part: str, n: int) -> FeatureStats:
        """Statistics of the first n images of the reference or the holdout: from memory, the disk
        cache, or computed once. Keyed by the extractor's identity (its weights hash included), the
        images' content hash and the input preprocessing."""
        images = getattr(self.data, part)[:n].cpu().contiguous()
        n = len(images)
        if (part, n) in self._memo:
            return self._memo[(part, n)]
        key = key_of({"extractor": self.extractor.identity, "weights_sha256": self.extractor.weights_sha256,
                      "data_sha256": sha256_tensor(images), "part": part, "n": n,
                      "input": self.extractor.input_description, "version": 2}, length=24)

        def build() -> dict[str, Tensor]:  # minutes for Inception on a CPU: the phase shows how far it is
            with LongTask(f"reference statistics ({self.extractor.name}, {part})", total=n, unit="image") as phase:
                features, _ = self.features(images, phase)
            stats = FeatureStats.of(features)
            return {"mu": stats.mu, "sigma": stats.sigma, "features": features}

        stats, built = load_or_build(self.cache_dir / f"{self.extractor.name}-{part}-{n}-{key}.pt", build,
                                     lambda stored: FeatureStats(stored["mu"], stored["sigma"], stored["features"].double()),
                                     "reference statistics")
        self.computed += built
        self._memo[(part, n)] = stats
        return stats

    def floor_by_scale(self) -> dict[str, float]:
        """The real-vs-real floor of each block alone (holdout against reference at the compared n)."""
        if self._floor_by_scale is None:
            holdout, reference = self.reference("holdout", self.final_samples), self.reference("reference", self.final_samples)
            self._floor_by_scale = {block: round(frechet_distance(holdout.part(columns), reference.part(columns)), 6)
                                    for block, columns in self.extractor.blocks.items()}
        return self._floor_by_scale

    def scale_scores(self, generated: FeatureStats, reference: FeatureStats) -> dict[str, float]:
        """The Fréchet distance of each block of the features alone (fd_domain/learned, fd_domain/32px,
        ...): which scale a model gets wrong. Empty for an extractor without blocks (Inception)."""
        whole = keys.score_key("fd", self.extractor.name)
        return {keys.scale_key(whole, block): frechet_distance(generated.part(columns), reference.part(columns))
                for block, columns in self.extractor.blocks.items()}

    def generated_images(self, family: Family, model: nn.Module, n: int, seed: int) -> Tensor:
        """n samples from a fixed z as uint8 (N, C, H, W) on the CPU, as real images are stored."""
        return fixed_samples(model, family.output_range, n, seed, self.device, batch=BATCH,
                             keep=lambda batch: to_uint8(batch).cpu())

    def warm(self) -> None:
        """Compute (or find) every reference set the trials will ask for, once, before workers start."""
        self.reference("reference", self.round_samples)
        self.reference("reference", self.final_samples)
        self.reference("holdout", self.final_samples)

    def round_scores(self, family: Family, model: nn.Module) -> dict[str, float]:
        n = self.round_samples
        generated = FeatureStats.of(self.features(self.generated_images(family, model, n, ROUND_SEED))[0])
        return {keys.round_score_key(self.extractor.name): frechet_distance(generated, self.reference("reference", n))}

    def final_scores(self, family: Family, model: nn.Module) -> "ScoredImages":
        return self.score_images(self.generated_images(family, model, self.final_samples, FINAL_SEED))

    def score_images(self, images: Tensor) -> "ScoredImages":
        """Scores of a set of uint8 images (a trial's final samples, or `harness score`'s) against the
        reference (unprefixed: fd_domain, the objective) and the holdout (test_fd_domain: reported,
        never selected on), at n = the compared sample size."""
        s, n = self.settings, self.final_samples
        if len(images) < n:
            raise UserError(f"{len(images)} images given; the protocol compares n = {n} (give at least {n})")
        generated_features, logits = self.features(images[:n])
        generated = FeatureStats.of(generated_features)
        scores: dict[str, float] = {}
        for part, split in (("reference", "val"), ("holdout", "test")):
            def key(kind: str) -> str:
                name = keys.score_key(kind, self.extractor.name)
                return name if split == "val" else keys.split_key(split, name)

            reference = self.reference(part, n)
            kd, kd_std = kernel_distance(generated, reference, s.kid_subsets, s.kid_subset_size)
            scores.update({key("fd"): frechet_distance(generated, reference), key("kd"): kd,
                           keys.std_key(key("kd")): kd_std})
            if n > s.pr_k:  # else too few for k-NN balls
                scores.update({key(kind): value for kind, value in knn_scores(generated, reference, s.pr_k).items()})
        scores.update(self.scale_scores(generated, self.reference("reference", n)))
        learned = self.extractor.blocks.get("learned", slice(None))  # diversity's bar (flags.py) was set there
        scores[keys.score_key("diversity", self.extractor.name)] = diversity(generated.part(learned),
                                                                             self.reference("reference", n).part(learned))
        fd_inf, points = frechet_distance_infinity(generated.features, self.reference("reference", n))
        scores[keys.score_key("fd_inf", self.extractor.name)] = fd_inf
        if logits is not None:
            mean, std = inception_score(logits)
            name = keys.score_key("is", self.extractor.name)
            scores.update({name: mean, keys.std_key(name): std})
        return ScoredImages(scores, points, n)


@dataclass(frozen=True)
class ScoredImages:
    scores: dict[str, float]
    fd_inf_fit: list[tuple[int, float]]  # (generated images, Fréchet distance): the points FD∞ is fitted to
    n: int

    def record(self) -> dict[str, Any]:
        """What a trial keeps as scores.json and `harness score` prints: the numbers and their fit."""
        return {"scores": self.scores, "n": self.n, "fd_inf_fit": [list(p) for p in self.fd_inf_fit]}


FD_INF_SEED = 3


def fd_inf_sizes(n: int) -> list[int]:
    """Five generated-set sizes evenly spaced in 1/N from n / 5 to n (Chong & Forsyth fit in 1/N)."""
    low = max(2, n // 5)
    inverse = torch.linspace(1 / low, 1 / n, 5)
    return sorted({max(2, round(1 / float(v))) for v in inverse})


def frechet_distance_infinity(generated: Tensor, reference: FeatureStats) -> tuple[float, list[tuple[int, float]]]:
    """FD∞: the Fréchet distance extrapolated to infinitely many generated images, the intercept of
    a least-squares line of FD against 1/N over random subsets of sizes fd_inf_sizes(n)."""
    g = torch.Generator().manual_seed(FD_INF_SEED)
    points = []
    for size in fd_inf_sizes(len(generated)):
        subset = generated[torch.randperm(len(generated), generator=g)[:size]]
        points.append((size, frechet_distance(FeatureStats.of(subset), reference)))
    x = torch.tensor([1 / size for size, _ in points], dtype=torch.float64)
    y = torch.tensor([fd for _, fd in points], dtype=torch.float64)
    slope = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum().clamp(min=1e-30)
    return float(y.mean() - slope * x.mean()), points


def needed_accuracy(chance: float) -> float:
    """An `is` objective needs a classifier at least halfway from chance to perfect on held-out images:
    the inception score is only as meaningful as the classifier's confidence is earned."""
    return chance + 0.5 * (1 - chance)


def classifier_is_good(quality: Mapping[str, Any]) -> bool:
    return "accuracy" in quality and quality["accuracy"] >= needed_accuracy(quality["chance"])


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
    if settings.panel not in ("require", "warn"):
        raise UserError(f"{where}.panel: {settings.panel!r}; valid: require, warn")
    if settings.flags not in ("exclude", "tag"):
        raise UserError(f"{where}.flags: {settings.flags!r}; valid: exclude, tag")
    for key in ("round_samples", "kid_subsets", "kid_subset_size", "pr_k"):
        if getattr(settings, key) < (2 if key != "kid_subsets" else 1):
            raise UserError(f"{where}.{key}: {getattr(settings, key)} is too small")
    if settings.final_samples < 0 or settings.final_samples == 1:
        raise UserError(f"{where}.final_samples: {settings.final_samples}; give 0 (auto) or at least 2")
    return settings
