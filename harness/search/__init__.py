"""Stage 4, search: the study loop (runner), which trials to run (planning), what an invocation loads
once (session), one trial (trial) and its outcome (outcome), N workers (workers), `make confirm` (confirm)."""

from harness.core.lazy import lazy_exports

_EXPORTS = {
    "run_study": "runner", "run_worker": "runner", "StudyResult": "runner", "plan_trials": "planning",
    "Session": "session", "open_session": "session", "TrialRunner": "trial", "TrialJob": "trial",
    "TrialOutcome": "outcome", "State": "outcome", "spawn_workers": "workers", "run_confirm": "confirm",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
