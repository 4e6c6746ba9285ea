"""Stage 4, search: the study loop (runner), which trials to run (planning), what an invocation loads
once (session), one trial (trial) and its outcome (outcome), N workers (workers), `make confirm` (confirm)."""
