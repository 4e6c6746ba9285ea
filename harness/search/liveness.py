"""Which trials are alive: a running trial beats in the Optuna storage (`heartbeat`), and a trial whose
worker is gone is failed and re-queued once (`fail_stale_trials`) by the next process to start a trial."""

from __future__ import annotations

import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import optuna
from optuna.trial import TrialState

from harness.core.keys import Attr
from harness.core.retry import StoreUnreachable
from harness.search.workers import worker_is_gone


@dataclass
class OpenStudy:
    study: optuna.Study
    rdb: optuna.storages.RDBStorage  # the storage under it, for the heartbeat


@contextmanager
def heartbeat_api() -> Iterator[None]:
    """Optuna marks its stale-trial API experimental and warns when a heartbeat storage is used outside
    Study.optimize; this loop beats itself (`heartbeat`) and relies on that API knowingly."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used with Study.optimize")
        yield


def fail_stale_trials(opened: OpenStudy) -> None:
    """Trials whose worker is gone become FAIL and are re-queued once, by the storage's callback: at
    once when the worker ran on this machine and its process no longer exists, otherwise when it has
    missed three heartbeats. Without the first, a rerun right after a kill saw the dead trial as
    running and came up one trial short."""
    study, storage = opened.study, opened.rdb
    dead = [t._trial_id for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if isinstance(t.user_attrs.get(Attr.WORKER), dict) and worker_is_gone(t.user_attrs[Attr.WORKER], t.number)]
    failed = []
    for trial_id in dead:
        try:
            if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                failed.append(trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:  # another process reclaimed it first
            pass
    with heartbeat_api():
        retry = storage.get_heartbeat_stale_trial_callback()
        for trial_id in failed if retry is not None else []:
            retry(study, storage.get_trial(trial_id))
        optuna.storages.fail_stale_trials(study)


@contextmanager
def heartbeat(opened: OpenStudy, number: int) -> Iterator[None]:
    """Record the trial's heartbeat every interval while the block runs (when the storage has one)."""
    storage, interval = opened.rdb, opened.rdb.get_heartbeat_interval()
    if not interval:
        yield
        return
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(opened.study.study_name),
                                                               number)
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                storage.record_heartbeat(trial_id)
            except StoreUnreachable:  # the trial's own next call says so, and stops the study
                pass
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-trial-{number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
