"""`make validate-scores` and `make score`: the panel's table and plot, and scoring a user's own images,
both with exactly the protocol a study uses (harness/scoring/evaluation.py, harness/scoring/real_images.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import torch

from harness.core import keys
from harness.core.canvas import new_figure, save_figure
from harness.core.errors import UserError
from harness.core.storage import Storage
from harness.data.check import resolve_source
from harness.data.datasets import get_dataset, resolve_options
from harness.data.formats import load_npz
from harness.data.image_files import load_folder
from harness.report.tables import markdown as markdown_table
from harness.scoring.evaluation import SampleQuality, ScoreSettings
from harness.scoring.extractors import ExtractorContext, describe_quality, resolve_extractor
from harness.scoring.panel import BROKEN, LEVELS, UNSEEN, PanelResult, run_panel, spearman
from harness.scoring.real_images import TARGET_N, ScoreData, score_data


def _scoring(source: str, dataset: str | None, options: Mapping[str, Any], wanted: int,
             storage: Storage) -> ScoreData:
    name, given = resolve_source(source, dataset, options)
    return score_data(name, resolve_options(name, given), storage.cache_dir, wanted)


def quality_for(data: ScoreData, extractor: str, final_samples: int, device: torch.device,
                storage: Storage) -> SampleQuality:
    found, reason = resolve_extractor(extractor, ExtractorContext(data, device, storage.extractor_cache,
                                                                  download=extractor == "inception"))
    return SampleQuality(found, reason, data, ScoreSettings(extractor=extractor, final_samples=final_samples),
                         storage.reference_cache, device)


def validate(source: str, dataset: str | None, options: Mapping[str, Any], extractors: list[str], n: int | None,
             device: torch.device, storage: Storage) -> tuple[bool, str]:
    """Run (or read) the panel of each extractor; write table (CSV, Markdown) and plot; (all passed, text)."""
    if not extractors:
        raise UserError("--extractors: name at least one extractor (domain, inception)")
    wanted = n or (10_000 if device.type == "cuda" else TARGET_N)
    data = _scoring(source, dataset, options, wanted, storage)
    results: list[PanelResult] = []
    lines = [f"scoring data: {data.dataset} {data.image_size}px, {data.how}"]
    for name in extractors:
        quality = quality_for(data, name, wanted, device, storage)
        result = run_panel(quality, quality.final_samples, storage.panel_cache)
        results.append(result)
        about = f" ({describe_quality(quality.extractor.quality)})" if quality.extractor.quality else ""
        lines.append(f"{name}: weights {quality.extractor.weights_sha256[:12]}, {quality.extractor.source}{about}")
    frame = pd.DataFrame([row for result in results for row in result.rows()])
    table = frame.pivot_table(index=["kind", "set", "level"], columns="extractor", values="fd", sort=False)
    out = storage.validation_dir
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{data.dataset}-{data.image_size}px-n{results[0].n}"
    frame.to_csv(out / f"{stem}.csv", index=False)
    agreement = _agreement(results)
    markdown = (f"Validation panel: {data.dataset} {data.image_size}px, n = {results[0].n} per set, Fréchet distance "
                f"to the reference set ({data.size_note(results[0].n)})\n\n" + markdown_table(table.reset_index())
                + "\n\n" + "\n".join(f"- {r.summary()}" for r in results)
                + "".join(f"\n- {line}" for line in agreement) + "\n")
    (out / f"{stem}.md").write_text(markdown)
    _plot(results, out / f"{stem}.png", f"{data.dataset} {data.image_size}px, n = {results[0].n}")
    lines += [table.to_string(float_format=lambda v: f"{v:.4g}"), *[r.summary() for r in results], *agreement,
              f"wrote {out / stem}.csv, .md and .png"]
    return all(r.verdict.passed for r in results), "\n".join(lines)


def _agreement(results: list[PanelResult]) -> list[str]:
    """Spearman's rank correlation of each extractor's FD with Inception FID over the panel's sets."""
    by_name = {r.extractor: r for r in results}
    if "inception" not in by_name:
        return []
    reference = by_name["inception"]
    sets = list(reference.scores)
    return [f"Spearman rank correlation of {r.extractor} FD with Inception FID over the {len(sets)} sets: "
            f"{spearman([r.scores[k] for k in sets], [reference.scores[k] for k in sets]):.3f}"
            for r in results if r.extractor != "inception"]


def _plot(results: list[PanelResult], path: Path, title: str) -> None:
    """Per extractor: FD against level per disturbance (the floor at level 0), broken generators dashed,
    the unseen change dotted."""
    figure = new_figure(5.2 * len(results), 4.2)
    axes = figure.subplots(1, len(results), squeeze=False)[0]
    for ax, result in zip(axes, results):
        floor = result.scores[("floor", 0)]
        for name, levels in LEVELS.items():
            ax.plot(range(len(levels) + 1), [floor] + [result.scores[(name, lv)] for lv in range(1, len(levels) + 1)],
                    marker="o", label=name.replace("_", " "))
        dashes = [(4, 2), (1, 1), (6, 2, 1, 2), (2, 2), (8, 3), (3, 1, 1, 1)]  # greys: apart from the disturbances' colours
        for index, name in enumerate(BROKEN):
            ax.axhline(result.scores[(name, 0)], dashes=dashes[index % len(dashes)], linewidth=1.2,
                       color=str(0.15 + 0.5 * index / max(1, len(BROKEN) - 1)), label=f"broken: {name.replace('_', ' ')}")
        for name in UNSEEN:
            ax.axhline(result.scores[(name, 0)], linestyle=":", linewidth=1.5, color="black",
                       label=f"unseen: {name.replace('_', ' ')}")
        ax.set_yscale("log")
        ax.set_xticks(range(5))
        ax.set_xlabel("disturbance level (0 = real vs real)")
        ax.set_ylabel(f"Fréchet distance ({'Inception' if result.extractor == 'inception' else result.extractor} features)")
        ax.set_title(f"{result.extractor}: {'passes' if result.verdict.passed else 'FAILS'}", fontsize=10)
    axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    figure.suptitle(title, fontsize=11)
    save_figure(figure, path)


def read_images(path: Path, channels: int, size: int) -> torch.Tensor:
    """A user's images as uint8 (N, C, H, W): a .npz array or a folder of PNG/JPEG files."""
    where = f"--images {path}"
    if path.is_dir():
        images = load_folder(str(path), channels, size, 0, where).images
    elif path.suffix.lower() == ".npz":
        images = load_npz(str(path), "", "auto", "C", [], 0, where).images
    elif not path.exists():
        raise UserError(f"{where}: no such file or folder")
    else:
        raise UserError(f"{where}: give a .npz file (key 'images') or a folder of PNG/JPEG files")
    if tuple(images.shape[1:]) != (channels, size, size):
        raise UserError(f"{where}: images are {tuple(images.shape[1:])} (C, H, W), the dataset's are "
                        f"{(channels, size, size)}; save them at the dataset's size and channels")
    return images


def score_files(source: str, dataset: str | None, options: Mapping[str, Any], images_path: Path, extractor: str,
                device: torch.device, storage: Storage) -> dict[str, Any]:
    """Score a user's images against a dataset as a study would score its samples (n = the number of
    images given, or what the data has): {"objective": the key a study's default objective (fd) reads
    with this extractor on this device, "scores": ..., "protocol": ...}."""
    name, given = resolve_source(source, dataset, options)
    resolved = resolve_options(name, given)
    probe = score_data(name, resolved, storage.cache_dir, 2)
    images = read_images(images_path, probe.channels, probe.image_size)
    if len(images) < 2:
        raise UserError(f"--images {images_path}: {len(images)} image(s); scores need at least 2")
    data = probe if get_dataset(name).draw is None else score_data(name, resolved, storage.cache_dir, len(images))
    quality = quality_for(data, extractor, len(images), device, storage)
    scored = quality.score_images(images)
    return {"objective": keys.resolve_objective("fd", quality.extractor.name), "scores": scored.scores,
            "protocol": {**quality.protocol(), keys.ScoreParam.FD_INF_FIT: scored.fd_inf_fit, keys.ScoreParam.IMAGES: str(images_path)}}
