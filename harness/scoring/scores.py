"""Sample-quality scores from features: Fréchet distance, kernel distance, precision/recall, IS.

The networks that make the features live in harness/scoring/extractors.py; this file is the arithmetic,
written to agree with torch-fidelity and torchmetrics on the same features (tests/test_scores.py):
  - Fréchet distance: ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2), float64 statistics, unbiased
    covariances, the trace of the square root from the eigenvalues of S1 S2 (as both libraries;
    from an n x n problem when a set has fewer images n than features, the same number).
  - kernel distance (KID's estimator): the unbiased MMD^2 with the cubic polynomial kernel
    (x.y / d + 1)^3, averaged over random equal-size subsets drawn as torch-fidelity draws them
    (numpy RandomState(seed).choice, generated set first); with subsets of the whole sets it is the
    plain unbiased MMD^2, whatever the draw.
  - precision and recall: the k-nearest-neighbour manifold estimate of Kynkäänniemi et al. 2019,
    closed balls as torch-fidelity's metric_prc (the same numbers at the same k).
  - density and coverage (Naeem et al. 2020): the same real k-NN balls, counted instead of united, so
    a few real outliers with large balls cannot make a poor set look precise or diverse.
  - inception score: exp E_x KL(p(y|x) || p(y)) over splits, for extractors with class outputs; the
    images permuted and cut into splits as torch-fidelity's metric_isc does (mean and std agree).
  - diversity: the median distance from each generated image to its nearest other generated image,
    over the same among the real images, in features standardised by the real ones' std. About 1
    for real data, 0 for a set of repeated images (mode collapse); a diagnostic, never an objective
    (uniform noise scores above 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

KID_SEED = 2020  # torch-fidelity's default rng_seed
ISC_SEED = 2020  # the same seed: torch-fidelity permutes the images with it before cutting IS splits


@dataclass(frozen=True)
class FeatureStats:
    """What the scores need from one image set: mean and covariance (float64) and the features."""

    mu: Tensor  # (D,)
    sigma: Tensor  # (D, D)
    features: Tensor  # (N, D), float64 on the CPU

    @classmethod
    def of(cls, features: Tensor) -> "FeatureStats":
        x = features.detach().double().cpu()
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f"features must be (N >= 2, D), got {tuple(x.shape)}")
        mu = x.mean(dim=0)
        centred = x - mu
        return cls(mu, centred.T @ centred / (len(x) - 1), x)

    def part(self, columns: slice) -> "FeatureStats":
        """The statistics of some of the features (one block: a scale)."""
        return FeatureStats(self.mu[columns], self.sigma[columns, columns], self.features[:, columns])


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    diff = a.mu - b.mu
    return float(diff @ diff + a.sigma.trace() + b.sigma.trace() - 2 * trace_sqrt_product(a, b))


def trace_sqrt_product(a: FeatureStats, b: FeatureStats) -> Tensor:
    """Tr (S_a S_b)^1/2, the sum of the square roots of the eigenvalues of S_a S_b. When one set has
    fewer images than features (Inception's 2048 features and a few hundred images on a CPU; FD∞'s
    small subsets), S = C^T C / (n - 1) from its centred features C, and the nonzero eigenvalues of
    S S_other are those of the small symmetric matrix C S_other C^T / (n - 1): the same number from an
    n x n problem instead of a general 2048 x 2048 one (0.9 s each on a 2-core CPU, 17 per scored run)."""
    small, other = (a, b) if len(a.features) <= len(b.features) else (b, a)
    n, d = small.features.shape
    if n > d:
        return torch.linalg.eigvals(a.sigma @ b.sigma).sqrt().real.sum()
    centred = small.features - small.mu
    product = centred @ other.sigma @ centred.T / (n - 1)  # (n, n), symmetric positive semi-definite
    return torch.linalg.eigvalsh((product + product.T) / 2).clamp(min=0).sqrt().sum()


def _poly_mmd(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3; x and y have the same number of rows."""
    m, d = len(x), x.shape[1]
    kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2 * kxy.sum() / (m * m))


def kernel_distance(generated: FeatureStats, reference: FeatureStats, subsets: int = 100,
                    subset_size: int = 1000, seed: int = KID_SEED) -> tuple[float, float]:
    """(mean, std) of the MMD^2 over `subsets` random subsets of min(subset_size, both sizes) each."""
    x, y = generated.features.numpy(), reference.features.numpy()
    m = min(subset_size, len(x), len(y))
    if m < 2:
        raise ValueError("the kernel distance needs at least 2 images on each side")
    rng = np.random.RandomState(seed)
    values = np.array([_poly_mmd(x[rng.choice(len(x), m, replace=False)], y[rng.choice(len(y), m, replace=False)])
                       for _ in range(subsets)])
    return float(values.mean()), float(values.std())


def _kth_neighbour_radii(features: Tensor, k: int, block: int = 4096) -> Tensor:
    """Distance from each point to its k-th nearest other point."""
    radii = torch.empty(len(features), dtype=features.dtype)
    for start in range(0, len(features), block):
        distances = torch.cdist(features[start:start + block], features)
        radii[start:start + block] = distances.kthvalue(k + 1, dim=1).values  # the 1st is the point itself
    return radii


def _ball_hits(points: Tensor, centres: Tensor, radii: Tensor, block: int = 4096) -> tuple[Tensor, Tensor]:
    """How many closed balls (centre, radius) contain each of `points`, and whether each ball holds
    at least one of them."""
    counts = torch.empty(len(points), dtype=torch.long)
    held = torch.zeros(len(centres), dtype=torch.bool)
    for start in range(0, len(points), block):
        inside = torch.cdist(points[start:start + block], centres) <= radii[None, :]  # (b, centres)
        counts[start:start + block] = inside.sum(dim=1)
        held |= inside.any(dim=0)
    return counts, held


def knn_scores(generated: FeatureStats, reference: FeatureStats, k: int = 3) -> dict[str, float]:
    """Precision, recall, density and coverage from one set of k-NN radii per side.

    Precision (Kynkäänniemi et al. 2019): the share of generated points inside at least one real
    ball (a real point's ball reaches its k-th nearest other real point); recall: the share of real
    points inside at least one generated ball. A few real outliers have huge balls, so a generated
    set piled around one of them is all "precise".
    Density and coverage (Naeem et al. 2020) use the real balls only: density = (1 / kM) x the number
    of (generated point, real ball containing it) pairs, about 1 for a set drawn like the reference
    (more than 1 when it crowds where the real data is dense); coverage = the share of real balls
    that hold at least one generated point. Naeem recommend k = 5 (real against real coverage is
    then about 1 - 2^-5 = 0.97 at M = N); we take the study's precision/recall k (pr_k, 3: about
    0.875), so one k defines all four and is logged once."""
    fake, real = generated.features, reference.features
    if min(len(fake), len(real)) <= k:
        raise ValueError(f"k-NN scores with k = {k} need more than {k} images on each side")
    real_radii = _kth_neighbour_radii(real, k)
    in_real, covered = _ball_hits(fake, real, real_radii)  # real balls holding each generated point; held ones
    in_fake, _ = _ball_hits(real, fake, _kth_neighbour_radii(fake, k))  # generated balls holding each real point
    return {"precision": (in_real > 0).sum().item() / len(fake), "recall": (in_fake > 0).sum().item() / len(real),
            "density": in_real.sum().item() / (k * len(fake)), "coverage": covered.sum().item() / len(real)}


def precision_recall(generated: FeatureStats, reference: FeatureStats, k: int = 3) -> tuple[float, float]:
    """Precision: generated images inside the real manifold (k-NN balls of real features); recall:
    real images inside the generated manifold."""
    scores = knn_scores(generated, reference, k)
    return scores["precision"], scores["recall"]


def density_coverage(generated: FeatureStats, reference: FeatureStats, k: int = 3) -> tuple[float, float]:
    """Naeem et al. 2020's density and coverage (knn_scores)."""
    scores = knn_scores(generated, reference, k)
    return scores["density"], scores["coverage"]


def _median_neighbour_distance(x: Tensor, block: int = 4096) -> float:
    nearest = []
    for start in range(0, len(x), block):
        d = torch.cdist(x[start:start + block], x)  # (b, N)
        d[torch.arange(len(d)), torch.arange(start, start + len(d))] = torch.inf  # not itself
        nearest.append(d.min(dim=1).values)
    return torch.cat(nearest).median().item()


def diversity(generated: FeatureStats, reference: FeatureStats) -> float:
    """Median nearest-neighbour distance among the generated features over the same among the
    reference features, both standardised by the reference's per-feature std."""
    scale = reference.features.std(dim=0).clamp(min=1e-12)
    real = _median_neighbour_distance(reference.features / scale)
    return _median_neighbour_distance(generated.features / scale) / max(real, 1e-12)


def inception_score(logits: Tensor, splits: int = 10, seed: int = ISC_SEED) -> tuple[float, float]:
    """(mean, std) over splits of exp(E_x KL(p(y|x) || p(y))), from class logits (N, K). The images are
    permuted by numpy RandomState(seed).permutation and split i is rows i N // splits to (i + 1) N //
    splits, as torch-fidelity 0.4 does (seed 2020, its rng_seed), so both numbers agree with it (fewer
    splits when there are fewer images)."""
    log_p = torch.log_softmax(logits.double().cpu(), dim=1)[np.random.RandomState(seed).permutation(len(logits))]
    n, splits = len(log_p), min(splits, len(log_p))
    values = []
    for i in range(splits):
        part = log_p[i * n // splits:(i + 1) * n // splits]
        log_marginal = torch.logsumexp(part, dim=0) - np.log(len(part))
        values.append(float(torch.exp((part.exp() * (part - log_marginal)).sum(dim=1).mean())))
    return float(np.mean(values)), float(np.std(values))


def to_uint8(images: Tensor) -> Tensor:
    """Generated images in [0, 1] -> uint8, rounded and clamped: how real images are stored."""
    return (images * 255).round().clamp(0, 255).to(torch.uint8)
