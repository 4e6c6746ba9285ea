"""Riding out a database server that restarts or is briefly unreachable.

Optuna's RDBStorage gives up on the first dropped connection: a two-second PostgreSQL restart during
a study ended the running trial FAIL with "StorageInternalError: An exception is raised during the
commit. This typically happens due to invalid data in the commit" (the cause was the restart). Here
every call of Optuna's storage on a database server is tried again while the error is a lost or
refused connection, for at most STORE_WAIT_S in all; then the study stops in one line
(StoreUnreachable) and the same `make study` resumes it. SQLite files do not restart: their errors
(a full disk, a lock) are not retried. MLflow's HTTP client retries a tracking server on its own
(MLFLOW_HTTP_REQUEST_MAX_RETRIES, about 4 minutes by default).
"""

from __future__ import annotations

import functools
import random
import threading
import time
from typing import Any, Callable, TypeVar

import optuna
from optuna.trial import TrialState
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from harness.core.errors import UserError, redact

STORE_WAIT_S = 60.0  # the longest a call waits for the database to come back, all attempts together
FIRST_PAUSE_S = 0.5  # then doubled, up to MAX_PAUSE_S
MAX_PAUSE_S = 8.0

F = TypeVar("F", bound=Callable[..., Any])


class StoreUnreachable(UserError):
    """The database stayed unreachable for STORE_WAIT_S: the study stops; rerunning resumes it."""


def is_transient(error: BaseException) -> bool:
    """A lost or refused connection, anywhere in the error's chain (Optuna wraps SQLAlchemy's error in
    StorageInternalError): what a restart or a network blip raises, not what bad data raises."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, StoreUnreachable):  # already waited for: not again by an outer call
            return False
        if isinstance(seen, (OperationalError, InterfaceError)):
            return True
        if isinstance(seen, DBAPIError) and seen.connection_invalidated:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def first_line(error: BaseException) -> str:
    """The root cause's first line (psycopg's own words: 'connection refused', 'terminating ...')."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    return (str(getattr(error, "orig", None) or error).strip().splitlines() or [type(error).__name__])[0]


def retried(call: F, what: Callable[[], str], wait_s: Callable[[], float] = lambda: STORE_WAIT_S) -> F:
    """`call`, tried again after a transient error with doubling pauses, for at most wait_s() seconds."""

    @functools.wraps(call)
    def attempt(*args: Any, **kwargs: Any) -> Any:
        deadline, pause, tries = time.monotonic() + wait_s(), FIRST_PAUSE_S, 0
        while True:
            try:
                return call(*args, **kwargs)
            except Exception as e:
                if not is_transient(e):
                    raise
                tries += 1
                if time.monotonic() + pause > deadline:
                    raise StoreUnreachable(f"{what()} did not answer for {wait_s():.0f} s ({tries} tries; last: "
                                           f"{first_line(e)}); the study stops here: start the database or fix "
                                           "the network, then run the same make study again (what is recorded "
                                           "is kept, and the interrupted trial runs again)") from None
                time.sleep(pause * random.uniform(0.8, 1.2))
                pause = min(2 * pause, MAX_PAUSE_S)

    return attempt  # type: ignore[return-value]


RDB = optuna.storages.RDBStorage


class ServerStorage(RDB):
    """Optuna's RDBStorage on a database server (PostgreSQL, MySQL), every call retried through a
    restart (`retried`). A write whose commit was cut by the restart may have landed: setting a
    state that the trial already has is then taken as done, not as a second, refused update."""

    wait_s = STORE_WAIT_S

    def _what(self) -> str:
        return f"STORAGE={redact(self.url)}"

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Any = None) -> bool:
        first = [True]

        def once() -> bool:
            try:
                return RDB.set_trial_state_values(self, trial_id, state, values)
            except optuna.exceptions.UpdateFinishedTrialError:
                if first[0] or not state.is_finished() or RDB.get_trial(self, trial_id).state != state:
                    raise
                return True  # the cut commit had landed
            finally:
                first[0] = False

        return retried(once, self._what, lambda: self.wait_s)()


_inside = threading.local()  # a retried call's own calls of other methods are not retried again within it


def _retrying_method(name: str) -> Callable[..., Any]:
    method = getattr(RDB, name)

    @functools.wraps(method)
    def call(self: ServerStorage, *args: Any, **kwargs: Any) -> Any:
        if getattr(_inside, "call", False):
            return method(self, *args, **kwargs)
        _inside.call = True
        try:
            return retried(functools.partial(method, self), self._what, lambda: self.wait_s)(*args, **kwargs)
        finally:
            _inside.call = False

    return call


# Every call of Optuna's storage API that reaches the database: BaseStorage's and BaseHeartbeat's, and
# the private ones Optuna's _CachedStorage calls on the RDBStorage under it.
for _name in ("create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
              "get_study_id_from_name", "get_study_name_from_id", "get_study_directions", "get_study_user_attrs",
              "get_study_system_attrs", "get_trial_user_attrs", "get_trial_system_attrs", "get_all_studies",
              "create_new_trial", "set_trial_param", "get_trial_param", "set_trial_intermediate_value",
              "set_trial_user_attr", "set_trial_system_attr", "get_trial_id_from_study_id_trial_number",
              "get_trial", "get_all_trials", "get_best_trial", "record_heartbeat", "_get_stale_trial_ids",
              "_create_new_trial", "_set_trial_param", "_get_best_trial_id", "_get_trials"):
    setattr(ServerStorage, _name, _retrying_method(_name))
