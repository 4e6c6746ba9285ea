"""Latent-space pictures of a trained model, as the reports drew them by hand.

- interpolation: between encoded test images (VAEs: the posterior means, linearly) or between
  random z (GANs: spherically, as z ~ N(0, I) lives near a sphere); a row per pair.
- low variance: the reports' test of structure: mu_i ~ U(-1, 1) per dimension, then samples with
  a small variance (0.05 in the report) around it; a row per mu. Similar faces along a row mean
  nearby latent points decode to similar faces.
- arithmetic (VAEs): the mean latent of one group minus another's (e.g. "happy" minus "neutral" by
  the built-in data's labels, or images the user picks) added to other faces; rows: the faces,
  their reconstructions, the reconstructions moved by the vector.
- traversal (VAEs): the most active latent dimensions (largest mean KL on the test split) swept
  from -3 to 3 around one face's code; a row per dimension.
Every function returns an image grid in [0, 1]; `make_all` writes the PNGs a run keeps under latent/,
those of the family's declared plots.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from torch import Tensor, nn

from harness.core import keys
from harness.core.cache import UNREADABLE
from harness.core.errors import UserError, redact
from harness.core.storage import Storage
from harness.data.datasets import ImageSplits, from_model_range, load_dataset, to_model_range
from harness.family.contract import Family
from harness.family.generate import GRID_SEED, fixed_z
from harness.family.registry import get_family
from harness.scoring.pixel_mmd import gaussian_kl
from harness.training.loop import load_model
from harness.training.pictures import image_grid, save_png

STEPS = 8


def _decode(model: nn.Module, family: Family, z: Tensor) -> Tensor:
    return from_model_range(model.sample(z), family.output_range)


def download_model(client: MlflowClient, run_id: str, folder: Path) -> tuple[nn.Module, Family]:
    """A finished run's model (its model.pt and model.json artifacts), on the CPU in eval mode."""
    for name in (keys.Artifact.MODEL, keys.Artifact.MODEL_CONFIG):
        client.download_artifacts(run_id, name, str(folder))
    try:
        model = load_model(folder)
    except UNREADABLE as e:  # a file cut short by a full disk or a copy that stopped
        raise UserError(f"the model of run {run_id} is unreadable ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                        "pick another COMPLETE trial's run, or rerun this trial") from None
    return model, get_family(json.loads((folder / keys.Artifact.MODEL_CONFIG).read_text())["family"])


def load_run(storage: Storage, run_id: str, device: torch.device, folder: Path) -> tuple[nn.Module, Family, ImageSplits]:
    """A finished run's model and the data it was trained on (from the cache), for `python -m harness latent`."""
    client = storage.mlflow()
    try:
        run = client.get_run(run_id)
        names = {a.path for a in client.list_artifacts(run_id)}
    except MlflowException as e:
        raise UserError(f"no run {run_id} with artifacts in {redact(storage.tracking_uri)} ({e.message.splitlines()[0]}); "
                        "copy the run id from the MLflow UI") from None
    if not {keys.Artifact.MODEL, keys.Artifact.MODEL_CONFIG} <= names or "data.source" not in run.data.params:
        raise UserError(f"run {run_id} has no trained model (model.pt) and data description; pick a COMPLETE trial's run")
    source = json.loads(run.data.params["data.source"])
    data = load_dataset(source["dataset"], source["options"], storage.cache_dir).place(device)
    model, family = download_model(client, run_id, folder)
    return model.to(device), family, data


def _encode(model: nn.Module, family: Family, images: Tensor) -> Tensor:
    return model.encoder(to_model_range(images, family.output_range))[0]  # the posterior means


def _slerp(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    cos = ((a * b).sum(-1, keepdim=True) / (a.norm(dim=-1, keepdim=True) * b.norm(dim=-1, keepdim=True))).clamp(-1, 1)
    omega = torch.acos(cos)
    sin = torch.sin(omega).clamp(min=1e-6)
    return torch.sin((1 - t) * omega) / sin * a + torch.sin(t * omega) / sin * b


@torch.no_grad()
def interpolation(model: nn.Module, family: Family, data: ImageSplits, pairs: int = 6, seed: int = GRID_SEED) -> Tensor:
    t = torch.linspace(0, 1, STEPS, device=data.device)[:, None]
    rows = []
    if family.autoencoder:
        images = data.test[:2 * pairs].to(data.device)
        codes = _encode(model, family, images)
        for i in range(pairs):
            a, b = codes[2 * i], codes[2 * i + 1]
            path = _decode(model, family, (1 - t) * a + t * b)
            rows.append(torch.cat([images[2 * i:2 * i + 1].float() / 255, path, images[2 * i + 1:2 * i + 2].float() / 255]))
    else:
        z = fixed_z(2 * pairs, model.latent_dim, seed, data.device)
        for i in range(pairs):
            rows.append(_decode(model, family, _slerp(z[2 * i][None], z[2 * i + 1][None], t)))
    return image_grid(torch.cat(rows), per_row=len(rows[0]))


@torch.no_grad()
def low_variance(model: nn.Module, family: Family, device: torch.device, variance: float = 0.05, rows: int = 6,
                 per_row: int = 8, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    mu = torch.rand(rows, 1, model.latent_dim, generator=g) * 2 - 1  # mu_i ~ U(-1, 1)
    z = mu + math.sqrt(variance) * torch.randn(rows, per_row, model.latent_dim, generator=g)
    return image_grid(_decode(model, family, z.flatten(0, 1).to(device)), per_row=per_row)


def labelled_groups(data: ImageSplits, source: str, target: str) -> tuple[Tensor, Tensor]:
    """Test-split indices of two values of the data's categorical label (e.g. neutral and happy)."""
    if not data.label_classes or "test" not in data.labels:
        raise UserError("this dataset has no labels: pick the images with --from/--to/--apply (test-split indices)")
    name = next(iter(data.label_classes))
    from harness.data import synthfaces
    names = list(synthfaces.EXPRESSIONS) if name == "expression" else [str(i) for i in range(data.label_classes[name])]
    for value in (source, target):
        if value not in names:
            raise UserError(f"{value!r} is not a value of the label {name}; valid: {', '.join(names)}")
    column = data.labels["test"][:, data.label_names.index(name)].long()
    return (column == names.index(source)).nonzero().flatten(), (column == names.index(target)).nonzero().flatten()


@torch.no_grad()
def arithmetic(model: nn.Module, family: Family, data: ImageSplits, source: Sequence[int] | Tensor,
               target: Sequence[int] | Tensor, apply: Sequence[int] | Tensor, scale: float = 1.0) -> Tensor:
    """Faces `apply` moved by mean code(target) - mean code(source); rows: faces, reconstructions, moved."""
    if not family.autoencoder:
        raise UserError(f"vector arithmetic needs an encoder: {family.name} is {family.kind}; it works for autoencoders")
    test = data.test
    for indexes in (source, target, apply):
        if len(indexes) == 0 or max(int(i) for i in indexes) >= len(test):
            raise UserError(f"image indexes must be test-split indexes in 0..{len(test) - 1}, got {list(indexes)[:5]}")
    pick = lambda indexes: test[torch.as_tensor(list(map(int, indexes)))].to(data.device)  # noqa: E731
    vector = _encode(model, family, pick(target)).mean(0) - _encode(model, family, pick(source)).mean(0)
    faces = pick(apply)
    codes = _encode(model, family, faces)
    rows = [faces.float() / 255, _decode(model, family, codes), _decode(model, family, codes + scale * vector)]
    return image_grid(torch.cat(rows), per_row=len(faces))


@torch.no_grad()
def traversal(model: nn.Module, family: Family, data: ImageSplits, dims: int = 8, span: float = 3.0,
              image: int = 0) -> Tensor:
    if not family.autoencoder:
        raise UserError(f"latent traversals need an encoder: {family.name} is {family.kind}; they are drawn for autoencoders")
    images = data.test[:512].to(data.device)
    mu, logvar = model.encoder(to_model_range(images, family.output_range))
    kl_per_dim = gaussian_kl(mu, logvar).mean(0)
    active = kl_per_dim.argsort(descending=True)[:min(dims, model.latent_dim)]
    base = mu[image]
    values = torch.linspace(-span, span, STEPS + 1, device=data.device)
    rows = []
    for d in active:
        z = base.repeat(len(values), 1)
        z[:, d] = values
        rows.append(_decode(model, family, z))
    return image_grid(torch.cat(rows), per_row=len(values))


def make_all(model: nn.Module, family: Family, data: ImageSplits, folder: Path, variance: float = 0.05,
             groups: tuple[str, str] = ("neutral", "happy")) -> list[Path]:
    """The family's latent pictures that this data allows, as PNGs in `folder`; where the family draws
    arithmetic and the data cannot (no labels), keys.Artifact.ARITHMETIC_ABSENT says why, for the run and the report."""
    model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    pictures = {}
    if "interpolation" in family.plots:
        pictures["interpolation.png"] = lambda: interpolation(model, family, data)
    if "low_variance" in family.plots:
        pictures["low_variance.png"] = lambda: low_variance(model, family, data.device, variance)
    if "traversal" in family.plots:
        pictures["traversal.png"] = lambda: traversal(model, family, data)
    written = []
    if "arithmetic" in family.plots:
        source, target, absent = arithmetic_groups(data, groups)
        if absent:  # said on the console and kept beside the pictures, where the report reads it
            print(absent, flush=True)
            (folder / keys.Artifact.ARITHMETIC_ABSENT).write_text(absent + "\n")
            written.append(folder / keys.Artifact.ARITHMETIC_ABSENT)
        else:
            apply, rest = source[:8], (source[8:] if len(source) > 8 else source)  # move faces not in the mean
            pictures[f"arithmetic_{groups[1]}_minus_{groups[0]}.png"] = lambda: arithmetic(
                model, family, data, rest, target, apply)
    for name, draw in pictures.items():
        save_png(draw(), folder / name)
        written.append(folder / name)
    return written


def arithmetic_groups(data: ImageSplits, groups: tuple[str, str]) -> tuple[Tensor, Tensor, str]:
    """(source, target, "") test-split indices of the two label values, or why there is no arithmetic
    picture: it needs the data's attribute labels to pick each group's faces, and both groups present."""
    dataset = data.description.get("dataset", "this dataset")
    if not data.label_classes or "test" not in data.labels:
        return torch.empty(0), torch.empty(0), (
            f"latent arithmetic needs attribute labels to pick its groups ({groups[0]}, {groups[1]}); dataset "
            f"{dataset} has none. Pick the faces by hand: python -m harness latent RUN_ID --from 3,7 --to 1,4 "
            "--apply 10,11 (test-split indices)")
    try:
        source, target = labelled_groups(data, *groups)
    except UserError as e:  # not values of its label
        return torch.empty(0), torch.empty(0), f"latent arithmetic skipped on dataset {dataset}: {e}"
    if not (len(source) and len(target)):
        return source, target, (f"latent arithmetic needs faces of both groups; the test split of dataset {dataset} "
                                f"has {len(source)} {groups[0]} and {len(target)} {groups[1]}")
    return source, target, ""
