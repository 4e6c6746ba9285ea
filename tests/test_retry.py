"""Retrying a database server's transient errors (harness/core/retry.py), without a server: the real
restarts are in test_scaleout.py (they need PostgreSQL)."""

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy.exc import IntegrityError, OperationalError

from harness.core import retry
from harness.core.retry import ServerStorage, StoreUnreachable, is_transient, retried


def refused() -> OperationalError:
    return OperationalError("SELECT 1", {}, Exception("connection refused"))


def wrapped_by_optuna() -> optuna.exceptions.StorageInternalError:
    try:
        raise refused()
    except OperationalError as e:
        try:
            raise optuna.exceptions.StorageInternalError("invalid data in the commit") from e
        except optuna.exceptions.StorageInternalError as wrapped:
            return wrapped


def test_only_lost_or_refused_connections_are_transient():
    assert is_transient(refused()) and is_transient(wrapped_by_optuna())
    assert not is_transient(IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not is_transient(ValueError("bad data"))
    assert not is_transient(StoreUnreachable("waited already"))


def test_a_transient_error_is_retried_and_one_that_lasts_stops_in_one_line(monkeypatch):
    monkeypatch.setattr(retry.time, "sleep", lambda seconds: None)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise wrapped_by_optuna()
        return "answered"

    assert retried(flaky, lambda: "STORAGE=postgresql://u:***@db/x")() == "answered" and len(calls) == 3
    with pytest.raises(ValueError):  # not transient: at once
        retried(lambda: (_ for _ in ()).throw(ValueError("bad")), lambda: "STORAGE")()
    clock = iter(range(0, 10_000, 5))
    monkeypatch.setattr(retry.time, "monotonic", lambda: next(clock))

    def down():
        raise refused()

    with pytest.raises(StoreUnreachable) as stopped:
        retried(down, lambda: "STORAGE=postgresql://u:***@db/x", lambda: 30)()
    (line,) = str(stopped.value).splitlines()
    assert line.startswith("STORAGE=postgresql://u:***@db/x did not answer for 30 s") and "connection refused" in line


def test_a_state_commit_cut_after_it_landed_counts_as_done(tmp_path, monkeypatch):
    """The restart cut the connection after COMMIT reached the server: the retry finds the trial
    finished already. That is the update landing, not a refused second update."""
    monkeypatch.setattr(retry.time, "sleep", lambda seconds: None)
    storage = ServerStorage(f"sqlite:///{tmp_path / 'o.db'}")
    study = optuna.create_study(storage=storage)
    trial_id = study.ask()._trial_id
    real, cuts = optuna.storages.RDBStorage.set_trial_state_values, []

    def lands_then_cut(self, *args, **kwargs):
        if not cuts:
            cuts.append(1)
            real(self, *args, **kwargs)
            raise wrapped_by_optuna()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(optuna.storages.RDBStorage, "set_trial_state_values", lands_then_cut)
    assert storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [1.0]) is True
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):  # a real second update is still refused
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
