"""What a study invocation (or a `confirm`, or a worker) loads once before its first trial: the data on
its device, the sample-quality scorer with its extractor, and the fast path."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from harness.core import keys
from harness.core.errors import UserError, warn
from harness.core.storage import Storage
from harness.data.datasets import ImageSplits, get_dataset, load_dataset
from harness.family.fast_path import FastPath
from harness.family.registry import get_family
from harness.scoring import flags
from harness.scoring.evaluation import SampleQuality
from harness.scoring.extractors import ExtractorContext, inception_weights, resolve_extractor
from harness.scoring.panel import PanelResult, run_panel
from harness.scoring.real_images import GPU_N, TARGET_N, score_data, warn_if_trained_on
from harness.study.studyfile import StudySpec
from harness.training.devices import resolve_device
from harness.training.phases import OFF, Profiler


@dataclass
class Session:
    spec: StudySpec
    storage: Storage
    device: torch.device
    data: ImageSplits
    quality: SampleQuality
    fast: FastPath  # the study's [speed] switches as they apply on this device
    panel: str = "not run"  # the extractor's validation panel on this data, in one line (logged)
    phases: Profiler = OFF  # where the time goes (make bench profiles a real trial through this)
    cross_check: SampleQuality | None = None  # Inception beside the study's own extractor (confirm runs)
    learned_bar: tuple[str, float] | None = None  # the did-not-learn bar from the panel (harness/scoring/flags.py)

    @property
    def objective_keys(self) -> list[str]:
        """The study's objectives as they are logged (fd -> fd_domain or fid)."""
        return [keys.resolve_objective(o.metric, self.quality.extractor.name) for o in self.spec.objectives]

    @property
    def pruned_on(self) -> str:
        """The per-round score the pruner sees: the per-round Fréchet distance for a score objective
        measured only at the end, else the objective itself."""
        first = self.spec.objectives[0].metric
        return keys.round_score_key(self.quality.extractor.name) if first == "fd" else self.objective_keys[0]


def open_session(spec: StudySpec, storage: Storage, device: str, headline: str) -> Session:
    """Load the data (from the cache), place it, pick the extractor; print what will happen."""
    dev = resolve_device(device)
    fast = spec.speed.resolve(dev)  # refuses what this machine cannot do before any data or extractor work
    data = load_dataset(spec.dataset, spec.dataset_options, storage.cache_dir)
    print(f"{headline} on {dev}; {spec.dataset} {data.image_size}px x{data.channels}, "
          f"{len(data.train)}/{len(data.val)}/{len(data.test)} train/val/test images", flush=True)
    check_families_fit(spec, data)
    data = data.place(dev)
    wanted = spec.scores.final_samples or (GPU_N if dev.type == "cuda" else TARGET_N)
    scoring = score_data(spec.dataset, spec.dataset_options, storage.cache_dir, wanted)
    if get_dataset(spec.dataset).draw is None:
        warn_if_trained_on(scoring, data.train)
    extractor, reason = resolve_extractor(spec.scores.extractor, ExtractorContext(
        scoring, dev, storage.extractor_cache, download=spec.scores.extractor == "inception"))
    quality = SampleQuality(extractor, reason, scoring, spec.scores, storage.reference_cache, dev)
    quality.check([o.metric for o in spec.objectives])
    print(f"scores: {extractor.name} extractor ({reason}); {scoring.size_note(quality.final_samples)}", flush=True)
    panel = require_panel(quality, [o.metric for o in spec.objectives], storage)
    return Session(spec, storage, dev, data, quality, fast,
                   panel="not run (Inception on a CPU)" if panel is None else panel.summary(),
                   learned_bar=None if panel is None else flags.baseline(panel.scores))


CROSS_CHECK_CPU_N = 500  # Inception's images per confirm run on a CPU: about 100 s at ~5 images/s


def inception_cross_check(session: Session, mode: str, samples: int) -> SampleQuality | None:
    """Inception FID (the accepted instrument) beside a study's own score, for the runs that back a
    claim: mode auto (whenever verified weights are installed), on (refuse without them) or off.
    n: `samples`, else the study's n on a GPU and CROSS_CHECK_CPU_N on a CPU, where Inception is slow."""
    if mode == "off" or session.quality.extractor.name == "inception":
        return None
    if inception_weights(download=False) is None:
        if mode == "on":
            raise UserError("--inception on: no Inception weights on this machine; `make setup` installs them")
        warn("no Inception weights on this machine, so confirm runs carry no FID beside the study's score; "
             "`make setup` installs them")
        return None
    scoring = session.quality.data
    n = samples or (session.quality.final_samples if session.device.type == "cuda" else CROSS_CHECK_CPU_N)
    extractor, _ = resolve_extractor("inception", ExtractorContext(scoring, session.device,
                                                                   session.storage.extractor_cache, download=False))
    settings = dataclasses.replace(session.spec.scores, extractor="inception", final_samples=n)
    quality = SampleQuality(extractor, f"cross-check: --inception {mode}", scoring, settings,
                            session.storage.reference_cache, session.device)
    print(f"confirm: Inception FID beside {session.objective_keys[0]} on each run, "
          f"{scoring.size_note(quality.final_samples)} ({extractor.source})", flush=True)
    return quality


def check_families_fit(spec: StudySpec, data: ImageSplits) -> None:
    """Build each family once for these images, so a size it cannot take fails now, not in every trial."""
    for name in spec.families:
        defaults = {param: p.default for param, p in spec.spaces[name].items()}
        try:
            get_family(name).build(defaults, data.channels, data.image_size)
        except ValueError as e:
            raise UserError(f"family {name} cannot take the {spec.dataset} images ({data.channels} channel(s), "
                            f"{data.image_size}x{data.image_size}): {e}; set the dataset's size option") from None


def require_panel(quality: SampleQuality, objectives: list[str], storage: Storage) -> PanelResult | None:
    """Run (or read) the validation panel of the study's extractor on its data at the study's n, and
    refuse a score objective on an extractor that fails it. Inception on a CPU is not run here (it
    would take hours): the study says so and names the command that runs it."""
    extractor = quality.extractor
    if extractor.name == "inception" and quality.device.type != "cuda":
        warn("Inception's validation panel is not run on a CPU before a study; `make validate-scores "
             "EXTRACTORS=inception` runs it")
        return None
    result = run_panel(quality, quality.final_samples, storage.panel_cache)
    print(f"scores: {result.summary()}{' (cached)' if result.cached else ''}", flush=True)
    scored = [o for o in objectives if o in keys.SCORE_OBJECTIVES]
    if scored and not result.verdict.passed and quality.settings.panel == "warn":
        warn(f"objective {scored[0]} is measured with an extractor that fails the validation panel "
             f"({result.verdict.failures[0]}); its ranking may be wrong. [scores] panel = \"require\" refuses it")
    elif scored and not result.verdict.passed:
        raise UserError(f"objective {scored[0]}: the {extractor.name} extractor fails the validation panel on "
                        f"{quality.data.dataset} {quality.data.image_size}px at n = {result.n} "
                        f"({result.verdict.failures[0]}); raise [scores] final_samples (small n ranks noisily), choose "
                        f"another objective, or set [scores] panel = \"warn\" to rank anyway; see `make validate-scores`")
    return result
