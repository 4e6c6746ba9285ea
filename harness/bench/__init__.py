"""`make bench`, `make bench-workers` and `make workload`: measured speeds (speeds), trials/hour with
workers and packs (workers) and counted arithmetic (workload)."""

from harness.core.lazy import lazy_exports

_EXPORTS = {
    "bench_training": "speeds", "bench_packs": "speeds", "bench_workers": "workers", "bench_workload": "workload",
    "study_workload": "workload",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
