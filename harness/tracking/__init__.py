"""Stage 5, tracking: the MLflow client bound to the store (client), a parent run per invocation and
a child per trial (publish), what produced a number (provenance), `make ui` and `make server` (ui)."""

from harness.core.lazy import lazy_exports

_EXPORTS = {
    "Tracker": "client", "runs_frame": "client", "Publisher": "publish", "MlflowSink": "publish",
    "provenance_params": "provenance", "serve": "ui", "study_links": "ui",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
