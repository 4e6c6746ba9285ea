"""What a study invocation (or a `confirm`, or a worker) loads once before its first trial: the data on
its device, the sample-quality scorer with its extractor, and the fast path."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness import keys
from harness.data import ImageSplits, load_dataset
from harness.devices import resolve_device
from harness.errors import UserError
from harness.evaluation import SampleQuality
from harness.extractors import ExtractorContext, resolve_extractor
from harness.phases import OFF, Profiler
from harness.registry import get_family
from harness.speed import FastPath
from harness.storage import Storage
from harness.studyfile import StudySpec


@dataclass
class Session:
    spec: StudySpec
    storage: Storage
    device: torch.device
    data: ImageSplits
    quality: SampleQuality
    fast: FastPath  # the study's [speed] switches as they apply on this device
    phases: Profiler = OFF  # where the time goes (make bench profiles a real trial through this)

    @property
    def objective_keys(self) -> list[str]:
        """The study's objectives as they are logged (fd -> fd_domain or fid)."""
        return [keys.resolve_objective(o.metric, self.quality.extractor.name) for o in self.spec.objectives]

    @property
    def pruned_on(self) -> str:
        """The per-epoch score the pruner sees: the per-epoch Fréchet distance for a score objective
        measured only at the end, else the objective itself."""
        first = self.spec.objectives[0].metric
        return keys.epoch_score_key(self.quality.extractor.name) if first == "fd" else self.objective_keys[0]


def open_session(spec: StudySpec, storage: Storage, device: str, headline: str) -> Session:
    """Load the data (from the cache), place it, pick the extractor; print what will happen."""
    dev = resolve_device(device)
    data = load_dataset(spec.dataset, spec.dataset_options, storage.cache_dir)
    print(f"{headline} on {dev}; {spec.dataset} {data.image_size}px x{data.channels}, "
          f"{len(data.train)}/{len(data.val)}/{len(data.test)} train/val/test images", flush=True)
    check_families_fit(spec, data)
    data = data.place(dev)
    extractor, reason = resolve_extractor(spec.scores.extractor, ExtractorContext(
        data, dev, storage.extractor_cache, download=spec.scores.extractor == "inception"))
    quality = SampleQuality(extractor, reason, data, spec.scores, storage.reference_cache)
    quality.check([o.metric for o in spec.objectives])
    print(f"scores: {extractor.name} extractor ({reason})", flush=True)
    fast = spec.speed.resolve(dev)  # refuses what this machine cannot do before anything is recorded
    return Session(spec, storage, dev, data, quality, fast)


def check_families_fit(spec: StudySpec, data: ImageSplits) -> None:
    """Build each family once for these images, so a size it cannot take fails now, not in every trial."""
    for name in spec.families:
        defaults = {param: p.default for param, p in spec.spaces[name].items()}
        try:
            get_family(name).build(defaults, data.channels, data.image_size)
        except ValueError as e:
            raise UserError(f"family {name} cannot take the {spec.dataset} images ({data.channels} channel(s), "
                            f"{data.image_size}x{data.image_size}): {e}; set the dataset's size option") from None
