"""The real images a dataset's samples are scored against: one set per (dataset, image size), the same
for every study on it, whatever the study's own `n`, so scores of different studies compare.

- A procedural set (synthfaces) draws three fresh sets from fixed seeds that no study trains on: the
  extractor's training sample, the reference (the objective is measured against it) and the
  holdout (test scores, the real-vs-real floor, the validation panel's real images).
- A file-based set is loaded whole (its sample-count option, e.g. `limit`, set to 0) and split with
  the default split options: the extractor trains on the train split, the reference is the
  validation split, the holdout the test split. A study with the default split trains on exactly
  that train split; one with other split options may train on reference images, and is told so.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from torch import Tensor

from harness.core.cache import sha256_tensor
from harness.core.errors import warn
from harness.core.progress import LongTask
from harness.data.datasets import SPLIT_OPTIONS, TrainShape, get_dataset, load_images, make_splits, resolve_options

TARGET_N = 2000  # reference images wanted on each side where the data has them (at least, on a CPU)
GPU_N = 10_000  # final_samples = 0 with a GPU: the size FID is usually reported at
EXTRACTOR_SAMPLE = 10_000  # images drawn to train the domain extractor on, for a procedural set
SEEDS = {"train": 1_000_001, "reference": 1_000_002, "holdout": 1_000_003}  # procedural draws, not a study's
VERSION = 1  # bump when what is selected here changes


@dataclass(frozen=True)
class ScoreData(TrainShape):
    """Real images of one dataset at one image size, for training extractors and for reference sets."""

    dataset: str
    identity: dict[str, Any]  # what fixes these images: part of every extractor and reference cache key
    train: Tensor  # uint8 (N, C, H, W): what the domain extractor learns from
    reference: Tensor  # the objective's reference set
    holdout: Tensor  # a second real set, disjoint from both
    labels: Mapping[str, Tensor] = field(default_factory=dict)  # train / reference -> (N, F) float
    label_names: tuple[str, ...] = ()
    label_classes: Mapping[str, int] = field(default_factory=dict)
    how: str = ""  # one line for the protocol

    @property
    def max_n(self) -> int:
        """The most images a compared score can use on each side."""
        return min(len(self.reference), len(self.holdout))

    def sample_size(self, wanted: int) -> int:
        return min(wanted, self.max_n)

    def size_note(self, n: int) -> str:
        """Says so when the data cannot give TARGET_N reference images."""
        if n >= TARGET_N:
            return f"n = {n} generated and {n} reference images"
        if n == self.max_n and "draw_seeds" not in self.identity:  # a drawn set has as many as asked
            return (f"n = {n} generated and {n} reference images: the dataset has only {self.max_n} "
                    f"held-out images per side (fewer than {TARGET_N}; small-n scores carry a larger bias)")
        return f"n = {n} generated and {n} reference images (fewer than {TARGET_N}, as asked)"


def canonical_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The study's dataset options with what only selects a study's share of the images reset."""
    spec = get_dataset(name)
    canonical = resolve_options(name, {k: v for k, v in options.items() if k not in SPLIT_OPTIONS})
    canonical.update(SPLIT_OPTIONS)
    if spec.sample_count is not None:
        canonical[spec.sample_count] = 0 if spec.draw is None else spec.options[spec.sample_count]
    return canonical


def score_data(name: str, options: Mapping[str, Any], cache_dir: Path | None, wanted: int = TARGET_N) -> ScoreData:
    """The scoring images of this dataset; procedural sets draw `wanted` reference and holdout images."""
    spec = get_dataset(name)
    canonical = canonical_options(name, options)
    if spec.draw is not None:
        drawn = {}
        parts = (("train", EXTRACTOR_SAMPLE), ("reference", wanted), ("holdout", wanted))
        with LongTask(f"drawing the scoring images of {name}", total=sum(n for _, n in parts), unit="image") as phase:
            for part, n in parts:  # a minute on a 2-core CPU: the phase says it is alive
                phase.update(0, note=f"the {part} set ({n})")
                drawn[part] = spec.draw(canonical, n, SEEDS[part])
                phase.update(n)
        identity_options = {k: v for k, v in canonical.items() if k != spec.sample_count and k not in SPLIT_OPTIONS}
        identity = {"dataset": name, "options": identity_options, "draw_seeds": SEEDS,
                    "extractor_sample": EXTRACTOR_SAMPLE, "version": VERSION}
        labels = {part: d.labels for part, d in drawn.items() if d.labels is not None}
        first = drawn["train"]
        return ScoreData(name, identity, first.images, drawn["reference"].images, drawn["holdout"].images,
                         {k: labels[k] for k in ("train", "reference") if k in labels}, first.label_names,
                         dict(first.label_classes),
                         f"fresh draws: {EXTRACTOR_SAMPLE} for the extractor (seed {SEEDS['train']}), reference "
                         f"seed {SEEDS['reference']}, holdout seed {SEEDS['holdout']}; no study trains on them")
    with LongTask(f"loading the scoring images of {name}", unit="image"):  # the whole set, and its content hashes
        splits = make_splits(name, load_images(name, canonical, cache_dir), canonical)
        identity = {"dataset": name, "train_sha256": sha256_tensor(splits.train), "val_sha256": sha256_tensor(splits.val),
                    "test_sha256": sha256_tensor(splits.test), "version": VERSION}
    labels = {part: splits.labels[split] for part, split in (("train", "train"), ("reference", "val"))
              if split in splits.labels}
    return ScoreData(name, identity, splits.train, splits.val, splits.test, labels, splits.label_names,
                     dict(splits.label_classes),
                     f"the whole set split {SPLIT_OPTIONS} ({splits.description['split']}): extractor on train "
                     f"({len(splits.train)}), reference = validation ({len(splits.val)}), holdout = test ({len(splits.test)})")


def warn_if_trained_on(reference: ScoreData, train: Tensor) -> int:
    """How many reference or holdout images a study's training split holds (warned: its scores flatter it)."""
    def digests(images: Tensor) -> list[bytes]:
        flat = images.cpu().contiguous().flatten(1).numpy()
        return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat]

    seen = set(digests(train))
    shared = sum(d in seen for part in (reference.reference, reference.holdout) for d in digests(part))
    if shared:
        warn(f"the study trains on {shared} of the {len(reference.reference) + len(reference.holdout)} images its "
             "samples are scored against (its split options differ from the defaults); scores will flatter it")
    return shared
