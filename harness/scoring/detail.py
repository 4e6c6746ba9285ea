"""How much detail an image has at each scale: a fixed, network-free descriptor beside the domain
network's features (harness/scoring/extractors.py), so that the CPU score sees the pixel scale the network's
2x pooling hides (checkerboards, grain, blocky blow-ups, lost detail).

Per image, for every level of its average-pooling pyramid from the full size down to 8 pixels, per
channel: the 2x2 Walsh-Hadamard details (horizontal edge, vertical edge, checkerboard) at every pixel
position, their root-mean-square over the positions of each of the four parity classes (row and
column mod 2), the four sorted, as log(1 + RMS in grey levels).
- Means over positions: a face moved by a pixel has the same detail (the parity classes only swap,
  and the sort undoes that), so what nobody sees costs nothing.
- Parity classes: stride-2 upsamplers (transposed convolutions, nearest blow-ups) make detail that
  depends on a pixel's position mod 2; a 2x blow-up has none at one parity and all at another.
- log(1 + RMS): detail is compared in ratios (twice the grain is one step more, as contrast is
  perceived), and detail under about a grey level, which no screen shows, adds nothing.
A level's features are weighted so that losing all of that level's detail (the extractor's training
images halved there and blown up smoothly) costs a given amount in Fréchet distance (the domain
extractor's recipe says how much, harness/scoring/extractors.py).
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.scoring.scores import FeatureStats, frechet_distance

SMALLEST = 8  # the coarsest level described: below 8 pixels a 2x2 detail is the whole face
PER_CHANNEL = 3 * 4  # 3 details x 4 parity classes
NO_DETAIL = 1e-2  # a level whose loss costs less than this (unweighted) has no detail of its own: not weighted
BATCH = 500  # images described at once when calibrating (a 64-px RGB level is 3 x 3 x 63 x 63 doubles an image)


def levels(image_size: int) -> list[int]:
    """The sides of the pyramid's levels described, the full size always: 32 -> [32, 16, 8],
    64 -> [64, 32, 16, 8], 30 -> [30, 15, 8]."""
    sides = [image_size]
    while -(-sides[-1] // 2) >= SMALLEST:
        sides.append(-(-sides[-1] // 2))
    return sides


def pyramid(images: Tensor, count: int) -> list[Tensor]:
    """The first `count` levels of the average-pooling pyramid (ceil: no pixel dropped), finest first."""
    out = [images]
    while len(out) < count:
        out.append(F.avg_pool2d(out[-1], 2, ceil_mode=True))
    return out


def _level_detail(x: Tensor) -> Tensor:
    """(N, C, S, S) grey levels -> (N, C * 12): log(1 + RMS) of the three 2x2 details per parity class, sorted."""
    a, b, c, d = x[..., :-1, :-1], x[..., :-1, 1:], x[..., 1:, :-1], x[..., 1:, 1:]
    details = torch.stack([(a + b - c - d) / 2, (a - b + c - d) / 2, (a - b - c + d) / 2], dim=2)  # (N, C, 3, S-1, S-1)
    rms = torch.stack([details[..., row::2, col::2].pow(2).mean(dim=(-1, -2)).sqrt()
                       for row in (0, 1) for col in (0, 1)], dim=-1)  # (N, C, 3, 4)
    return torch.log1p(rms.sort(dim=-1).values).flatten(1)


def describe(images: Tensor, image_size: int, count: int | None = None) -> list[Tensor]:
    """Images in [0, 1] (N, C, S, S) -> per level (finest first, the first `count`) its unweighted
    features (N, C * 12)."""
    return [_level_detail(level) for level in pyramid(images.double() * 255, count or len(levels(image_size)))]


def without_level(images: Tensor, level: int) -> Tensor:
    """The images with level `level`'s detail lost: that level of their pyramid halved, blown up smoothly
    to the level's side and on to the full size (bilinear)."""
    size, x = images.shape[-1], pyramid(images, level + 1)[level]
    side = x.shape[-1]
    x = F.interpolate(F.avg_pool2d(x, 2, ceil_mode=True), size=side, mode="bilinear", align_corners=False)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False) if side != size else x


class DetailFeatures(nn.Module):
    """Images in [0, 1] -> the weighted descriptor (N, C * 12 * levels). The weights are buffers: set
    once from real images (calibrate), kept in the extractor's state dict."""

    def __init__(self, channels: int, image_size: int):
        super().__init__()
        self.image_size, self.channels = image_size, channels
        self.sides = levels(image_size)
        self.register_buffer("weights", torch.ones(len(self.sides), dtype=torch.float64))

    @property
    def width(self) -> int:
        """How many features: 12 per channel and level."""
        return self.channels * PER_CHANNEL * len(self.sides)

    def blocks(self, offset: int = 0) -> dict[str, slice]:
        """Which feature columns describe which level: {'32px': slice(...), ...}."""
        step = self.channels * PER_CHANNEL
        return {f"{side}px": slice(offset + i * step, offset + (i + 1) * step) for i, side in enumerate(self.sides)}

    def forward(self, images: Tensor) -> Tensor:  # (N, C, S, S) in [0, 1] -> (N, width), in the images' dtype
        parts = describe(images, self.image_size)
        return torch.cat([w * part for w, part in zip(self.weights, parts)], dim=1).to(images.dtype)

    @torch.no_grad()
    def calibrate(self, images: Tensor, costs: list[float]) -> list[float]:
        """Weights such that losing all of level i's detail costs costs[i] in Fréchet distance against
        `images` (in [0, 1]), described BATCH at a time on their device; returns each level's
        unweighted cost. A level whose loss changes nothing (under NO_DETAIL: images blown up from a
        smaller size have no detail of their own there) gets weight 0, not a huge one."""
        def described(batches: Iterable[Tensor], level: int) -> FeatureStats:
            return FeatureStats.of(torch.cat([describe(x, self.image_size, level + 1)[level] for x in batches]))

        batches = images.double().split(BATCH)
        unweighted = [frechet_distance(described((without_level(x, level) for x in batches), level),
                                       described(batches, level)) for level in range(len(self.sides))]
        self.weights.copy_(torch.tensor([(cost / u) ** 0.5 if u >= NO_DETAIL else 0.0 for cost, u in zip(costs, unweighted)],
                                        dtype=torch.float64))
        return unweighted
