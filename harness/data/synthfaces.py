"""`synthfaces`: a built-in grayscale face set, drawn procedurally so everything runs offline.

Each face is a head oval with hair, eyes, brows, nose and a mouth whose curvature (and opening)
encodes an expression, under a random pose (yaw, pitch, roll), size, position and directional
lighting. Face i depends only on (seed, i): the generating factors come from one NumPy PCG64
stream, one row of uniforms per face, so a smaller set is a prefix of a larger one. Rendering is
vectorised tensor arithmetic over a coordinate grid (soft-edged shapes, anti-aliased at any size).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

EXPRESSIONS = ("neutral", "happy", "sad", "surprised", "angry")
# Per expression: mouth curvature (+ smiles), mouth opening, brow raise, brow tilt (+ inner ends up).
_EXPRESSION_SHAPE = torch.tensor([
    [0.00, 0.00, 0.00, 0.00],  # neutral
    [0.90, 0.25, 0.10, 0.00],  # happy
    [-0.80, 0.00, 0.05, 0.45],  # sad
    [0.05, 0.90, 0.90, 0.00],  # surprised
    [-0.40, 0.05, -0.45, -0.60],  # angry
])
FACTORS = ("expression", "mouth_curvature", "mouth_open", "brow_raise", "brow_tilt", "yaw", "pitch",
           "roll", "scale", "shift_x", "shift_y", "light_angle", "light_strength", "skin", "hair",
           "background")
_N_UNIFORMS = 20  # uniforms drawn per face; fixed so face i is the same whatever n is


def sample_factors(n: int, seed: int) -> Tensor:
    """(n, len(FACTORS)) float32 generating factors; column 0 is the expression index."""
    u = torch.from_numpy(np.random.Generator(np.random.PCG64(seed)).random((n, _N_UNIFORMS))).float()
    expression = (u[:, 0] * len(EXPRESSIONS)).long().clamp(max=len(EXPRESSIONS) - 1)
    shape = _EXPRESSION_SHAPE[expression] + 0.15 * (u[:, 1:5] - 0.5)  # jitter within an expression

    def between(col: int, lo: float, hi: float) -> Tensor:
        return lo + (hi - lo) * u[:, col]

    return torch.stack([
        expression.float(), shape[:, 0], shape[:, 1].clamp(min=0), shape[:, 2], shape[:, 3],
        between(5, -0.5, 0.5),  # yaw: features slide sideways, the far half narrows
        between(6, -0.35, 0.35),  # pitch: features slide up/down
        between(7, -0.3, 0.3),  # roll (radians): in-plane tilt of the head
        between(8, 0.92, 1.12),  # scale of the head in the frame (tight crops, as face sets are)
        between(9, -0.08, 0.08), between(10, -0.06, 0.06),  # head position
        between(11, 0, 2 * math.pi), between(12, 0.0, 0.9),  # light direction and strength
        between(13, 0.5, 0.82),  # skin brightness
        between(14, 0.0, 1.0),  # hair coverage
        between(15, 0.05, 0.35),  # background brightness
    ], dim=1)


class _Head:
    """Head-local pixel coordinates of n faces and the soft-edged shapes drawn in them."""

    def __init__(self, f: dict[str, Tensor], size: int):
        axis = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1  # pixel centres in [-1, 1]
        self.v, u = torch.meshgrid(axis, axis, indexing="ij")  # (S, S): v down, u right
        # Head-local coordinates: undo shift, roll and scale.
        du, dv = u - f["shift_x"], self.v - f["shift_y"]
        cos, sin = torch.cos(f["roll"]), torch.sin(f["roll"])
        self.x = (cos * du + sin * dv) / f["scale"]  # (n, S, S)
        self.y = (-sin * du + cos * dv) / f["scale"]
        self.edge = 1.0 / (size * f["scale"])  # half a pixel of soft edge, in head units

    def inside(self, dist: Tensor) -> Tensor:
        """Signed distance (> 0 inside) -> pixel coverage in [0, 1]."""
        return (0.5 + dist / (2 * self.edge)).clamp_(0, 1)

    def ellipse(self, cx: Tensor | float, cy: Tensor | float, rx: Tensor | float, ry: Tensor | float,
                angle: Tensor | None = None) -> Tensor:
        ex, ey = self.x - cx, self.y - cy
        if angle is not None:
            c, s = torch.cos(angle), torch.sin(angle)
            ex, ey = c * ex + s * ey, -s * ex + c * ey
        # q = (ex/rx)^2 + (ey/ry)^2 is 1 on the rim; (1 - q) * min(rx, ry) / 2 is the signed
        # distance across the minor axis (softer towards the tips), and keeps its sign far away.
        # In-place arithmetic: this is most of the rendering time.
        q = ex.mul_(1 / rx).square_().addcmul_(ey.mul_(1 / ry), ey)
        k = torch.minimum(torch.as_tensor(rx), torch.as_tensor(ry)) / (4 * self.edge)
        return q.mul_(-k).add_(k + 0.5).clamp_(0, 1)


def render(factors: Tensor, size: int) -> Tensor:
    """Factors (n, F) -> images (n, 1, size, size) float32 in [0, 1]."""
    f = {name: factors[:, i, None, None] for i, name in enumerate(FACTORS)}  # each (n, 1, 1)
    head = _Head(f, size)
    x, y = head.x, head.y
    face_rx = 0.62 * (1 - 0.18 * f["yaw"].abs())
    face = head.ellipse(0.0, 0.05, face_rx, 0.8)
    skull = head.ellipse(0.0, -0.02, face_rx * 1.1, 0.88)  # hair sits on the head, outside the face
    hairline = -0.45 + 0.35 * (1 - f["hair"])  # more hair -> lower hairline
    hair = skull * torch.clamp(1 - face + head.inside(hairline - y - 0.05 * (x / face_rx) ** 2), 0, 1)
    hair = hair * (f["hair"] > 0.15)

    # Lighting: a directional gradient plus a fall-off towards the rim, like a rounded surface.
    lx, ly = torch.cos(f["light_angle"]), torch.sin(f["light_angle"])
    r2 = (x / face_rx) ** 2 + ((y - 0.05) / 0.8) ** 2
    skin = f["skin"] * (1 + f["light_strength"] * 0.6 * (lx * x + ly * y)) * (1 - 0.28 * r2.clamp(max=1))

    dark, light = _eyes_and_brows(head, f)
    dark = _nose_and_mouth(head, f, dark, lx)

    background = f["background"] * (1 + 0.3 * head.v)
    img = background + (skin - background) * face
    img = img + (0.3 * f["skin"] + 0.05 - img) * hair  # darker hair
    img = img + (0.95 - img) * light * face * 0.5  # eye whites, a little brighter than skin
    img = img * (1 - 0.85 * dark * face)
    return img.clamp(0, 1).unsqueeze(1)


def _eyes_and_brows(head: _Head, f: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """How much each pixel is covered by dark features (irises, brows) and by eye whites. Features
    slide with yaw/pitch; the eye on the far side shrinks."""
    yaw, fx = f["yaw"], 0.32 * f["yaw"]
    eye_y = -0.12 + 0.22 * f["pitch"]
    dark = torch.zeros_like(head.x)
    light = torch.zeros_like(head.x)
    for side in (-1.0, 1.0):
        near = 1 + 0.45 * side * yaw  # side * yaw > 0: this eye turns towards the viewer
        ex = side * 0.24 * (1 - 0.25 * side * yaw) + fx
        light = torch.maximum(light, head.ellipse(ex, eye_y, 0.13 * near, 0.065))
        dark = torch.maximum(dark, head.ellipse(ex + 0.3 * fx, eye_y, 0.055 * near, 0.055))  # iris
        brow_y = eye_y - 0.16 - 0.08 * f["brow_raise"]
        tilt = -side * 0.35 * f["brow_tilt"]
        dark = torch.maximum(dark, 0.85 * head.ellipse(ex, brow_y, 0.15 * near, 0.032, tilt))
    return dark, light


def _nose_and_mouth(head: _Head, f: dict[str, Tensor], dark: Tensor, lx: Tensor) -> Tensor:
    """`dark` with the nose's shadow and nostrils and the mouth drawn in (lx: the light's direction)."""
    fx, fy = 0.32 * f["yaw"], 0.22 * f["pitch"]
    nose_x = 1.25 * fx
    dark = torch.maximum(dark, 0.35 * head.ellipse(nose_x + 0.02 * lx, 0.05 + fy, 0.03, 0.14))  # bridge shadow
    for side in (-1.0, 1.0):
        dark = torch.maximum(dark, 0.7 * head.ellipse(nose_x + side * 0.055, 0.2 + fy, 0.035, 0.022))  # nostrils
    # Mouth: a curved band y = centre - curvature * (x/w)^2; opening adds a dark cavity.
    mx, my = head.x - 1.1 * fx, head.y - (0.45 + fy)
    half_width = 0.22
    curve = -0.1 * f["mouth_curvature"] * ((mx / half_width) ** 2 - 0.35)
    band = head.inside(0.028 + 0.05 * f["mouth_open"] - (my - curve).abs()) * head.inside(half_width - mx.abs())
    opening = f["mouth_open"]
    cavity = head.ellipse(1.1 * fx, 0.45 + fy + 0.02, 0.15, 0.09 * opening + 0.01) * (opening > 0.1)
    return torch.maximum(dark, torch.maximum(0.75 * band, 0.95 * cavity))


def generate(n: int, size: int = 32, seed: int = 0, chunk: int = 256) -> tuple[Tensor, Tensor]:
    """n faces as uint8 (n, 1, size, size) and their factors (n, F); chunked to bound memory."""
    if size < 16:
        raise ValueError(f"synthfaces needs size >= 16, got {size}")
    factors = sample_factors(n, seed)
    images = torch.empty(n, 1, size, size, dtype=torch.uint8)
    for start in range(0, n, chunk):
        block = render(factors[start:start + chunk], size)
        images[start:start + chunk] = (block * 255).round().to(torch.uint8)
    return images, factors
