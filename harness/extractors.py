"""Feature extractors by name, for the sample-quality scores (harness/scores.py).

- `inception`: torch-fidelity's `inception-v3-compat` network (the one FID is defined with) with its
  official weights, found in the torch hub cache under their official file name, or at
  INCEPTION_WEIGHTS=..., or downloaded when asked for by name and the machine is online. The file's
  sha256 is checked against the official one before use (torch.hub checks nothing, and
  torch-fidelity unpickles the file). Scores: fid, kid, is, precision, recall.
- `domain`: a small convolutional network trained once per dataset with a fixed recipe: a classifier
  of the dataset's categorical label (plus a regression of its other labels) where it has labels,
  else an autoencoder. Cached by the training images' content hash + recipe + seed. It runs fast
  on a CPU and needs no download. Its scores are named for what they are: fd_domain, kd_domain,
  is_domain (classifier only), precision_domain, recall_domain, never fid.
`auto` picks inception on a GPU when its verified weights are present (Inception runs at ~10
images/s on a 2-core CPU), else domain; the choice and the reason are logged.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.cache import key_of, load_or_build, sha256_file, sha256_tensor
from harness.data import ImageSplits
from harness.errors import UserError, warn

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"  # its name holds the first 8


class Extractor:
    """Images uint8 (N, C, H, W) -> features (N, D) and, with class outputs, logits (N, K)."""

    name: str
    weights_sha256: str
    input_description: str  # the image size fed to the network and how it is resized
    has_classes: bool
    identity: dict[str, Any]  # what makes two extractors give the same scores (cache keys, study identity)
    artifact: Path | None = None  # weights to keep with a study's parent run, so its scores can be checked

    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError


@dataclass
class ExtractorContext:
    data: ImageSplits
    device: torch.device
    cache_dir: Path  # where trained extractors are kept (Storage.extractor_cache)
    download: bool  # may fetch weights from the network


_EXTRACTORS: dict[str, Callable[[ExtractorContext], Extractor]] = {}
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def register_extractor(name: str, factory: Callable[[ExtractorContext], Extractor]) -> None:
    if not isinstance(name, str) or not _NAME.match(name) or name == "auto":
        raise ValueError(f"extractor name {name!r} must match {_NAME.pattern} and not be 'auto'")
    if name in _EXTRACTORS:
        raise ValueError(f"extractor {name!r} is already registered")
    if not callable(factory):
        raise ValueError(f"extractor {name!r}: the factory is not callable")
    _EXTRACTORS[name] = factory


def extractor_names() -> list[str]:
    return sorted(_EXTRACTORS)


def resolve_extractor(name: str, context: ExtractorContext) -> tuple[Extractor, str]:
    """The extractor and why it was chosen."""
    if name == "auto":
        if context.device.type != "cuda":
            return _EXTRACTORS["domain"](context), "auto: no GPU, and Inception runs at ~10 images/s on a CPU"
        if inception_weights(download=False) is None:
            return _EXTRACTORS["domain"](context), "auto: no Inception weights on this machine (INCEPTION_WEIGHTS=)"
        return _EXTRACTORS["inception"](context), "auto: GPU and verified Inception weights"
    if name not in _EXTRACTORS:
        raise UserError(f"scores.extractor: unknown extractor {name!r}; valid: auto, {', '.join(extractor_names())}")
    return _EXTRACTORS[name](context), "named in the study"


# ---- Inception (torch-fidelity) -------------------------------------------------------------------

def inception_weights(download: bool) -> Path | None:
    """The verified official weights file, or None when there is none here (and none could be fetched)."""
    given = os.environ.get("INCEPTION_WEIGHTS")
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            raise UserError(f"INCEPTION_WEIGHTS={given} does not exist; point it at {INCEPTION_FILE}")
    else:
        path = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
        if not path.is_file():
            if not download:
                return None
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.hub.download_url_to_file(INCEPTION_URL, str(path), progress=False)
            except OSError as e:  # offline: urllib's errors are OSErrors
                warn(f"could not download the Inception weights ({type(e).__name__}); see INCEPTION_WEIGHTS=")
                return None
    actual = sha256_file(path)
    if actual != INCEPTION_SHA256:
        raise UserError(f"{path} has sha256 {actual[:16]}..., not the official {INCEPTION_SHA256[:16]}... of "
                        f"{INCEPTION_FILE}; delete it or set INCEPTION_WEIGHTS= to the official file")
    return path


class InceptionExtractor(Extractor):
    def __init__(self, weights: Path, device: torch.device):
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        self.name, self.weights_sha256, self.has_classes = "inception", INCEPTION_SHA256, True
        self.input_description = "uint8 3x299x299 (grayscale replicated), torch-fidelity TF1-compatible bilinear resize"
        self.identity = {"extractor": "inception-v3-compat", "sha256": INCEPTION_SHA256}
        self.device = device
        self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                               feature_extractor_weights_path=str(weights)).to(device)

    @torch.no_grad()
    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        x = images.to(self.device)
        features, logits = self.net(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x)
        return features, logits


def _inception(context: ExtractorContext) -> Extractor:
    path = inception_weights(download=context.download)
    if path is None:
        raise UserError(f"no Inception weights: put {INCEPTION_FILE} in {Path(torch.hub.get_dir()) / 'checkpoints'} "
                        "or set INCEPTION_WEIGHTS=...; offline, use extractor = 'domain'")
    return InceptionExtractor(path, context.device)


# ---- the domain network --------------------------------------------------------------------------

RECIPE = {"name": "domain-v2", "width": 32, "features": 128, "epochs": 5, "batch_size": 128, "lr": 1e-3, "seed": 0}


class DomainNet(nn.Module):
    """Four 3x3 convolutions (three of stride 2) and a linear embedding; heads for the recipe."""

    def __init__(self, channels: int, image_size: int, n_classes: int, n_targets: int, autoencode: bool):
        super().__init__()
        w, side = RECIPE["width"], -(-image_size // 8)
        self.body = nn.Sequential(
            nn.Conv2d(channels, w, 3, 1, 1), nn.ReLU(),
            nn.Conv2d(w, w, 3, 2, 1), nn.ReLU(),  # S/2
            nn.Conv2d(w, 2 * w, 3, 2, 1), nn.ReLU(),  # S/4
            nn.Conv2d(2 * w, 4 * w, 3, 2, 1), nn.ReLU(),  # S/8
            nn.Flatten(), nn.Linear(4 * w * side * side, RECIPE["features"]))  # (B, 128): the features
        self.classify = nn.Linear(RECIPE["features"], n_classes) if n_classes else None
        self.regress = nn.Linear(RECIPE["features"], n_targets) if n_targets else None
        self.decode = nn.Sequential(
            nn.Linear(RECIPE["features"], 4 * w * side * side), nn.ReLU(), nn.Unflatten(1, (4 * w, side, side)),
            nn.ConvTranspose2d(4 * w, 2 * w, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(w, channels, 4, 2, 1), nn.Sigmoid()) if autoencode else None

    def forward(self, x: Tensor) -> Tensor:  # (B, C, S, S) in [0, 1] -> (B, 128)
        return self.body(x)


def _training_targets(data: ImageSplits) -> tuple[str | None, int, Tensor | None, Tensor | None]:
    """(categorical label name, its classes, class targets, standardised other labels) of the train split."""
    labels = data.labels.get("train")
    if labels is None or not data.label_classes:
        return None, 0, None, None
    name, classes = next(iter(data.label_classes.items()))
    column = data.label_names.index(name)
    others = [i for i in range(labels.shape[1]) if i != column]
    rest = labels[:, others] if others else None
    if rest is not None:
        rest = (rest - rest.mean(0)) / rest.std(0).clamp(min=1e-6)
    return name, classes, labels[:, column].long(), rest


class DomainExtractor(Extractor):
    def __init__(self, net: DomainNet, path: Path, recipe: Mapping[str, Any], device: torch.device):
        self.name, self.device, self.net, self.artifact = "domain", device, net.to(device).eval(), path
        self.weights_sha256 = sha256_file(path)
        self.has_classes = net.classify is not None
        self.input_description = "uint8 at the dataset's size and channels, scaled to [0, 1], no resize"
        self.identity = {"extractor": "domain", **recipe}

    @torch.no_grad()
    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        features = self.net(images.to(self.device).float() / 255)
        return features, (self.net.classify(features) if self.net.classify is not None else None)


def _domain(context: ExtractorContext) -> Extractor:
    data = context.data
    label, classes, targets, rest = _training_targets(data)
    train_images = data.train.cpu().contiguous()
    if label is None:
        task = "autoencode"
    else:
        task = f"classify {label} ({classes} classes)" + (" + regress the other labels" if rest is not None else "")
    recipe = {**RECIPE, "task": task, "data_sha256": sha256_tensor(train_images)}
    path = context.cache_dir / f"domain-{key_of(recipe)}.pt"
    with torch.random.fork_rng(devices=[]):  # the recipe's seed sets the initial weights too
        torch.manual_seed(RECIPE["seed"])
        net = DomainNet(data.channels, data.image_size, classes, 0 if rest is None else rest.shape[1], label is None)

    def build() -> dict[str, Tensor]:
        start = time.perf_counter()
        _train_domain(net, train_images, targets, rest, context.device)
        print(f"trained the domain extractor ({recipe['task']}) in {time.perf_counter() - start:.0f} s; cached at {path}",
              flush=True)
        return {k: v.cpu() for k, v in net.state_dict().items()}

    load_or_build(path, build, net.load_state_dict, "extractor cache")
    return DomainExtractor(net, path, recipe, context.device)


def _train_domain(net: DomainNet, images: Tensor, targets: Tensor | None, rest: Tensor | None,
                  device: torch.device) -> None:
    generator = torch.Generator().manual_seed(RECIPE["seed"])
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(RECIPE["seed"])
        net.to(device).train()
        optimizer = torch.optim.Adam(net.parameters(), lr=RECIPE["lr"])
        n, batch = len(images), min(RECIPE["batch_size"], len(images))
        for _ in range(RECIPE["epochs"]):
            order = torch.randperm(n, generator=generator)
            for start in range(0, n - batch + 1, batch):
                index = order[start:start + batch]
                x = images[index].to(device).float() / 255
                features = net(x)
                if net.decode is not None:  # decoded at 8 x ceil(S / 8): crop to the input
                    loss = F.mse_loss(net.decode(features)[..., :x.shape[-2], :x.shape[-1]], x)
                else:
                    loss = F.cross_entropy(net.classify(features), targets[index].to(device))
                    if net.regress is not None:
                        loss = loss + F.mse_loss(net.regress(features), rest[index].to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    net.eval()


register_extractor("inception", _inception)
register_extractor("domain", _domain)
