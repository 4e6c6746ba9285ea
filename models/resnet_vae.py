"""ResNet18-VAE (seed report 004): torchvision's resnet18 topology as the encoder, mirrored as the decoder.

Encoder: a 3x3 stem (stride 1 at 32 px, 2 at 64 px, so the blocks always start at 32x32; no max
pool, as ResNets for small images do), four stages of two torchvision BasicBlocks (widths w, 2w,
4w, 8w; w = 64 is resnet18's), global average pooling and a linear layer to mu and log-variance.
Random init: nothing is downloaded. Decoder: a linear layer to 8w x 4 x 4 and the same stages run
backwards, each upsampling 2x (nearest) in its last block, then a 3x3 conv and a sigmoid. The loss,
warm-up and optimiser are the conv VAE's; the report compared latent sizes 32 .. 512.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock

from harness.family.contract import Family
from harness.family.fused import Fused
from harness.family.space import ChoiceParam, IntParam
from models import vae


def stem_stride(image_size: int) -> int:
    stride = 1 if image_size <= 32 else 2
    if image_size % (8 * stride) or image_size // (8 * stride) < 1:
        raise ValueError(f"the ResNet-VAE needs an image size divisible by {8 * stride}, got {image_size}")
    return stride


def down_stage(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    shortcut = None
    if stride != 1 or c_in != c_out:
        shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
    return nn.Sequential(BasicBlock(c_in, c_out, stride, shortcut), BasicBlock(c_out, c_out))


class UpBlock(nn.Module):
    """A BasicBlock backwards: two 3x3 conv-BN with a shortcut, optionally upsampling 2x first."""

    def __init__(self, c_in: int, c_out: int, upsample: bool):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest") if upsample else nn.Identity()
        self.conv1, self.bn1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out)
        self.conv2, self.bn2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity() if c_in == c_out else nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False),
                                                                        nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        x = self.up(x)
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class ResNetEncoder(nn.Module):
    def __init__(self, channels: int, image_size: int, width: int, latent_dim: int):
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(channels, w, 3, stem_stride(image_size), 1, bias=False),
                                  nn.BatchNorm2d(w), nn.ReLU(inplace=True))  # (B, w, 32, 32) at 32 and 64 px
        self.layer1 = down_stage(w, w, 1)  # 32x32
        self.layer2 = down_stage(w, 2 * w, 2)  # 16x16
        self.layer3 = down_stage(2 * w, 4 * w, 2)  # 8x8
        self.layer4 = down_stage(4 * w, 8 * w, 2)  # 4x4
        self.fc = nn.Linear(8 * w, 2 * latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))  # (B, 8w, S/8s, S/8s)
        mu, logvar = self.fc(h.mean(dim=(2, 3))).chunk(2, dim=1)  # global average pool -> (B, Z) each
        return mu, logvar


class ResNetDecoder(nn.Module):
    def __init__(self, channels: int, image_size: int, width: int, latent_dim: int):
        super().__init__()
        w, stride = width, stem_stride(image_size)
        self.side = image_size // (8 * stride)
        self.fc = nn.Linear(latent_dim, 8 * w * self.side**2)
        self.layer4 = nn.Sequential(UpBlock(8 * w, 8 * w, False), UpBlock(8 * w, 4 * w, True))  # 4 -> 8
        self.layer3 = nn.Sequential(UpBlock(4 * w, 4 * w, False), UpBlock(4 * w, 2 * w, True))  # 8 -> 16
        self.layer2 = nn.Sequential(UpBlock(2 * w, 2 * w, False), UpBlock(2 * w, w, True))  # 16 -> 32
        self.layer1 = nn.Sequential(UpBlock(w, w, False), UpBlock(w, w, False))
        self.up = nn.Upsample(scale_factor=stride, mode="nearest") if stride > 1 else nn.Identity()  # undo the stem
        self.out = nn.Conv2d(w, channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:  # (B, Z) -> (B, C, S, S) in [0, 1]
        h = F.relu(self.fc(z)).view(z.shape[0], -1, self.side, self.side)
        h = self.layer1(self.layer2(self.layer3(self.layer4(h))))
        return F.sigmoid(self.out(self.up(h)))


SPACE = {
    "kl_weight": vae.SPACE["kl_weight"],
    "latent_dim": ChoiceParam((32, 64, 128, 256, 512), 128, help="size of z (the report: 32 .. 512)"),
    "width": IntParam(8, 64, 64, log=True, limits=(2, 512), help="channels of the first stage (resnet18: 64)"),
    "lr": vae.SPACE["lr"],
    "weight_decay": vae.SPACE["weight_decay"],
    "batch_size": vae.SPACE["batch_size"],
    "kl_warmup": vae.SPACE["kl_warmup"],
}
METRICS = vae.METRICS
# Seed report 004: resnet18's width (64) and the latent size it concluded for: it trained 256 and 512,
# then found "with z >= 64 the model is over fitting ... with z = 32 the latent space is able to learn
# features that capture meaningful variation". It names no KL weight, so the conv VAE's loss, KL
# weight and Adam. (Measured at the CPU scale, latent 256 draws one blurry face: fd_domain 345.)
REPORTED = {"width": 64, "latent_dim": 32, "lr": 1e-3, "kl_weight": vae.REPORTED["kl_weight"]}


def build(params: Mapping[str, Any], channels: int, image_size: int) -> vae.VAE:
    latent, width = int(params["latent_dim"]), int(params["width"])
    return vae.VAE(ResNetEncoder(channels, image_size, width, latent),
                   ResNetDecoder(channels, image_size, width, latent), latent)


make_optimizers, train_step, eval_step = vae.make_optimizers, vae.train_step, vae.eval_step
# The conv VAE's fused step and scalars (it has no dropout); width and latent size are the pack's.
FUSED = Fused(vae.FUSED.scalars - {"dropout"}, vae.FUSED.step)


FAMILY = Family(
    name="resnet_vae", kind="autoencoder", help="ResNet18-style encoder and mirrored decoder, MSE + w*KL (report 004)",
    space=SPACE, metrics=METRICS, reported=REPORTED, output_range=(0.0, 1.0), budget_optimizer="vae", fused=FUSED,
    build=build, make_optimizers=make_optimizers, train_step=train_step, eval_step=eval_step)
