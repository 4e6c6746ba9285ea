"""What every stage shares: user errors (errors), the names of everything recorded (keys), RUNS_DIR's
paths and URIs (storage), riding out a database server's restarts (retry), load-or-build caches
(cache), what a running study prints (progress), off-screen figures (canvas) and lazy re-exports
(lazy). Nothing here imports another harness package."""

from harness.core.lazy import lazy_exports

_EXPORTS = {
    "UserError": "errors", "warn": "errors", "redact": "errors", "Storage": "storage",
    "load_or_build": "cache", "sha256_file": "cache", "Progress": "progress", "LongTask": "progress",
    "new_figure": "canvas", "save_figure": "canvas",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
