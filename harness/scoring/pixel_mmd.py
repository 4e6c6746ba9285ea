"""Measures that need no pretrained network: pixel MMD between image sets, and the Gaussian KL term.

`pixel_mmd`: the unbiased squared maximum mean discrepancy (Gretton et al. 2012) between generated
images and validation images, in pixel space, with a sum of Gaussian kernels whose bandwidths are
0.5, 1 and 2 times the median distance between validation images. The bandwidths come from the
real images only, so every model on a dataset is scored with the same kernel. It is a weak,
honest two-sample distance (lower is better, 0 means indistinguishable, small negative values are
estimator noise), not a perceptual score and not FID.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

PIXEL_MMD_PROTOCOL = ("MMD^2 unbiased, pixels avg-pooled to <= 32 px, Gaussian kernels at 0.5/1/2 x the median "
                      "distance between validation images, fixed z (seed 0) samples vs the first validation images")
MAX_SIDE = 32  # images are average-pooled down to at most this side first: cheaper, less pixel noise


def _flatten(images: Tensor) -> Tensor:
    """(N, C, H, W) in [0, 1] -> (N, D) float64 after average pooling to at most 32 px."""
    factor = max(1, images.shape[-1] // MAX_SIDE)
    if factor > 1:
        images = F.avg_pool2d(images, factor)
    return images.flatten(1).double()


def median_bandwidth(references: Tensor) -> float:
    """The median pairwise distance between reference images (after pooling)."""
    x = _flatten(references)
    distances = torch.cdist(x, x)
    return distances[~torch.eye(len(x), dtype=torch.bool, device=x.device)].median().item()


def pixel_mmd(samples: Tensor, references: Tensor, bandwidth: float | None = None) -> float:
    """Unbiased MMD^2 between two image sets in [0, 1], shapes (N, C, H, W) and (M, C, H, W)."""
    if samples.shape[1:] != references.shape[1:]:
        raise ValueError(f"sample shape {tuple(samples.shape[1:])} != reference shape {tuple(references.shape[1:])}")
    if min(len(samples), len(references)) < 2:
        raise ValueError("pixel_mmd needs at least 2 images on each side")
    bandwidth = bandwidth or median_bandwidth(references)
    x, y = _flatten(samples), _flatten(references)
    everything = torch.cat([x, y])
    squared = torch.cdist(everything, everything).pow(2)
    kernel = sum(torch.exp(-squared / (2 * (scale * bandwidth) ** 2)) for scale in (0.5, 1.0, 2.0))
    n, m = len(x), len(y)
    kxx, kyy, kxy = kernel[:n, :n], kernel[n:, n:], kernel[:n, n:]
    mmd = ((kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1)) + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
           - 2 * kxy.mean())
    return mmd.item()


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per latent dimension, (B, Z): the VAE loss, the ELBO and the
    traversals' choice of active dimensions all sum or average this one term."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())
