"""Stage 3, scoring: sample-quality scores from features (scores), feature extractors (extractors,
inception, detail), the real images scored against (real_images), scoring a trial (evaluation),
pixel MMD (pixel_mmd), trials that must not be ranked (flags), and the validation panel with its
commands, `make validate-scores` and `make score` (panel, commands)."""

from harness.core.lazy import lazy_exports

_EXPORTS = {
    "FeatureStats": "scores", "frechet_distance": "scores", "kernel_distance": "scores", "precision_recall": "scores",
    "register_extractor": "extractors", "resolve_extractor": "extractors", "extractor_names": "extractors", "Extractor": "extractors",
    "ScoreData": "real_images", "score_data": "real_images", "SampleQuality": "evaluation", "ScoreSettings": "evaluation",
    "run_panel": "panel", "Flags": "flags",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
