"""Stage 2, training: the loop every family shares (loop), fused packs of trials (packs), where a
trial's time goes (phases), the device (devices), and the pictures of a trained model (pictures, latent)."""

from harness.core.lazy import lazy_exports

_EXPORTS = {
    "train": "loop", "train_round": "loop", "TrainConfig": "loop", "TrainHooks": "loop",
    "TrainResult": "loop", "Diverged": "loop", "Learner": "loop", "save_model": "loop",
    "load_model": "loop", "train_pack": "packs", "resolve_device": "devices", "profiling": "phases",
    "PhaseTimes": "phases", "Profiler": "phases", "OFF": "phases",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
