"""Stage 1, data: datasets by name (datasets), the file formats users have (formats: .mat, .npz,
MNIST; image_files: CelebA, folders), the built-in synthetic faces (synthfaces) and `make data-check` (check)."""

from harness.core.lazy import lazy_exports

_EXPORTS = {
    "load_dataset": "datasets", "dataset_names": "datasets", "get_dataset": "datasets", "register_dataset": "datasets",
    "DatasetSpec": "datasets", "ImageSplits": "datasets", "LoadedImages": "formats",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
