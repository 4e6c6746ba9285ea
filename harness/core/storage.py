"""RUNS_DIR and everything under it: the one module that builds a path or a URI there.

  RUNS_DIR/mlflow.db             MLflow backend store   (TRACKING_URI overrides, e.g. http://host:5000)
  RUNS_DIR/artifacts/<exp>/      MLflow artifacts, one folder per experiment, then per run
  RUNS_DIR/optuna.db             Optuna storage         (STORAGE overrides, e.g. postgresql://...)
  RUNS_DIR/cache/                decoded datasets; extractors/, reference/ and panel/ below it
  RUNS_DIR/bench/, data-check/, latent/<run id>/, validation/   what `make bench`, `data-check`,
                                 `latent` and `validate-scores` write
The MLflow client is always bound to the store explicitly (MLflow's default URI depends on the
working directory), and the Optuna tables are created here, once, before any worker touches them
(two machines creating them at once: the loser tries again).
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import sqlite3
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit
from urllib.request import urlopen

import optuna
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from sqlalchemy import create_engine, event, inspect
from sqlalchemy.exc import IntegrityError, ProgrammingError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from harness.core.errors import UserError, redact, redact_text
from harness.core.retry import ServerStorage


def take_write_lock_first(engine: Any) -> None:
    """Every transaction on this SQLite engine begins IMMEDIATE: it takes the database's write lock
    before its first read. Optuna pops an enqueued trial by reading that it is WAITING and then
    writing RUNNING (SELECT ... FOR UPDATE, which SQLite ignores), so with deferred transactions two
    workers both read WAITING and both ran the same grid point. Readers are not blocked (WAL)."""

    @event.listens_for(engine, "begin")
    def begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


SCHEMA_RACE_ATTEMPTS = 6


def open_rdb_storage(url: str, server: bool = False, **kwargs: Any) -> optuna.storages.RDBStorage:
    """Optuna's storage, retried while another process creates the same tables. Two machines that
    open one fresh PostgreSQL database at once both issue CREATE TABLE/TYPE; PostgreSQL fails the
    slower one with a unique violation in its catalog (measured: 29 of 36 processes, 6 at a time),
    and its transaction rolls back whole. Tried again, it finds the tables and goes on. `server`: a
    database server's storage, whose calls ride out its restarts (harness/core/retry.py)."""
    kind = ServerStorage if server else optuna.storages.RDBStorage
    for attempt in range(SCHEMA_RACE_ATTEMPTS - 1):
        try:
            return kind(url, **kwargs)
        except (IntegrityError, ProgrammingError):
            time.sleep(random.uniform(0.05, 0.2) * 2 ** attempt)  # apart, so the next try finds the tables
    return kind(url, **kwargs)  # a last try; its error is the user's to read


CONNECT_TIMEOUT_S = 5
TIMEOUT_ARGUMENT = {"postgresql": "connect_timeout", "mysql": "connect_timeout", "mariadb": "connect_timeout"}


def _engine(url: str) -> Any:
    """An engine that holds no pool and gives up connecting after CONNECT_TIMEOUT_S where its driver can."""
    base = urlsplit(url).scheme.split("+")[0]
    timeout = {TIMEOUT_ARGUMENT[base]: CONNECT_TIMEOUT_S} if base in TIMEOUT_ARGUMENT else {}
    return create_engine(url, poolclass=NullPool, connect_args=timeout)


def check_reachable(url: str, variable: str) -> None:
    """Fail within seconds, in one line, when a database or tracking server cannot be reached. Left
    to themselves, MLflow retried a refused PostgreSQL connection for 112 s and then printed a
    traceback, and a mysql:// URI without its driver printed 68 lines. Local SQLite stores pass."""
    parts = urlsplit(url)
    base = parts.scheme.split("+")[0]  # postgresql+psycopg -> postgresql
    if base in ("", "file", "sqlite") or "://" not in url:
        return
    shown = redact(url)
    if base in ("http", "https"):
        host = f"{parts.hostname}:{parts.port}" if parts.port else f"{parts.hostname}"
        try:  # MLflow's server answers /health; credentials are not needed (nor sent) to see that it answers
            with urlopen(f"{parts.scheme}://{host}{parts.path.rstrip('/')}/health", timeout=CONNECT_TIMEOUT_S):
                return
        except HTTPError:
            return  # the server answered
        except (URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise UserError(f"{variable}={shown} cannot be reached within {CONNECT_TIMEOUT_S} s "
                            f"({redact_text(str(reason), url)}); start the tracking server (make server) or "
                            f"fix {variable}") from None
    try:
        engine = _engine(url)
    except (ImportError, SQLAlchemyError, ValueError) as e:  # no driver for the scheme, or a malformed URL
        raise UserError(f"{variable}={shown} cannot be used: {redact_text(str(e).splitlines()[0], url)}; "
                        "install the database's Python driver and name it in the URI (e.g. mysql+pymysql://, "
                        "postgresql://, which uses psycopg) or use the local SQLite store (unset "
                        f"{variable})") from None
    try:
        with engine.connect():
            pass
    except SQLAlchemyError as e:
        detail = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise UserError(f"{variable}={shown}: no connection ({redact_text(detail, url)}, waited at most "
                        f"{CONNECT_TIMEOUT_S} s); start the database or fix the host, port, user and password "
                        f"in {variable}") from None
    finally:
        engine.dispose()


OPTUNA_TABLES = frozenset({"studies", "trials", "version_info"})  # what shows a database is Optuna's storage
MLFLOW_TABLES = frozenset({"experiments", "runs", "metrics"})  # ... and MLflow's tracking store
OWN_DATABASES = "harness/README.md, Several machines"


def check_own_database(url: str, variable: str, foreign: frozenset[str], owner: str) -> None:
    """Refuse, in one line, a database that already holds the other tool's tables. MLflow and Optuna
    both keep their schema revision in a table named alembic_version, so in one database each reads
    the other's (Optuna: "The runtime optuna version ... is no longer compatible with the table
    schema", in a 30-line traceback). A store that does not exist yet passes (nothing is created)."""
    parts = urlsplit(url)
    base = parts.scheme.split("+")[0]
    if base in ("", "file", "http", "https") or "://" not in url:
        return
    if base == "sqlite" and not Path(url.partition(":///")[2].split("?")[0]).is_file():  # sqlite:////abs or :///rel
        return
    try:
        engine = _engine(url)
        try:
            tables = set(inspect(engine).get_table_names())
        finally:
            engine.dispose()
    except (ImportError, SQLAlchemyError, ValueError):
        return  # unreachable or unusable: check_reachable says so in its own line
    if foreign <= tables:
        raise UserError(f"{variable}={redact(url)} is a database {owner} already uses; MLflow and Optuna both keep "
                        "their schema revision in a table alembic_version, so they cannot share one: give each its "
                        f"own database (CREATE DATABASE genbench_optuna and genbench_mlflow; {OWN_DATABASES})")


ARTIFACTS_PART = "/artifacts/"  # every local experiment's location is file://<RUNS_DIR>/artifacts/<name>
RELOCATED_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"), ("logged_models", "artifact_location"))


@dataclass(frozen=True)
class Storage:
    runs_dir: Path
    storage_url: str  # Optuna
    tracking_uri: str  # MLflow
    artifact_root: Path | None  # None when a tracking server decides where artifacts go
    heartbeat_seconds: int = 30  # trials beat this often; silent for 3 beats = their worker is gone

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "Storage":
        runs_dir = Path(environ.get("RUNS_DIR") or "mlruns").expanduser().resolve()
        tracking_uri = environ.get("TRACKING_URI") or f"sqlite:///{runs_dir / 'mlflow.db'}"
        local = urlsplit(tracking_uri).scheme in ("sqlite", "file", "")
        heartbeat = environ.get("HEARTBEAT_SECONDS") or "30"
        if not heartbeat.isdigit() or int(heartbeat) < 1:
            raise UserError(f"HEARTBEAT_SECONDS={heartbeat} must be a whole number of seconds >= 1")
        return cls(runs_dir=runs_dir,
                   storage_url=environ.get("STORAGE") or f"sqlite:///{runs_dir / 'optuna.db'}",
                   tracking_uri=tracking_uri,
                   artifact_root=runs_dir / "artifacts" if local else None,
                   heartbeat_seconds=int(heartbeat))

    def relocate(self) -> int:
        """Point a moved or copied RUNS_DIR's MLflow store at its own artifacts. MLflow stores each
        experiment's and run's artifact location as an absolute file URI, so a copy would go on writing
        into (and reading from) the old folder. Runs only on the local store; experiments whose location
        is not RUNS_DIR/artifacts/<name> (a tracking server's, a user's) are left alone. Idempotent, and
        safe with several processes: the rewrite is one write transaction. Returns the rows rewritten."""
        db = self.runs_dir / "mlflow.db"
        if self.artifact_root is None or self.tracking_uri != self.local_backend_uri or not db.exists():
            return 0
        current = self.artifacts_uri  # file:///new/runs/artifacts
        connection = sqlite3.connect(db, timeout=60, isolation_level=None)
        try:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "experiments" not in tables:
                return 0
            connection.execute("BEGIN IMMEDIATE")  # the write lock first: a second process waits, then finds nothing
            old_roots = {location[:location.rindex(ARTIFACTS_PART) + len(ARTIFACTS_PART) - 1]
                         for (location,) in connection.execute("SELECT artifact_location FROM experiments")
                         if location and location.startswith("file://") and ARTIFACTS_PART in location}
            old_roots.discard(current)
            changed = 0
            for old in sorted(old_roots):
                for table, column in RELOCATED_COLUMNS:
                    if table in tables:
                        changed += connection.execute(
                            f"UPDATE {table} SET {column} = ? || substr({column}, ?) WHERE substr({column}, 1, ?) = ?",
                            (current, len(old) + 1, len(old) + 1, old + "/")).rowcount  # old + "/": not .../artifacts2
            connection.execute("COMMIT")
        except sqlite3.Error as e:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise UserError(f"{db}: cannot update the artifact locations of a moved RUNS_DIR ({e})") from None
        finally:
            connection.close()
        if old_roots:
            moved = ", ".join(urlsplit(root).path.removesuffix("/artifacts") for root in sorted(old_roots))
            print(f"RUNS_DIR moved from {moved} to {self.runs_dir}: {changed} MLflow artifact locations now point "
                  "under it", flush=True)
        return changed

    def check_readable(self) -> None:
        """Before a command that only reads (make report, make ui): the local stores are there, so that
        reading never creates them, and a RUNS_DIR that is not there is named as the user gave it."""
        self.check_reachable()  # a remote store that does not answer first: it is what the user set
        local = [(name, uri) for name, uri in (("optuna.db", self.storage_url), ("mlflow.db", self.tracking_uri))
                 if uri == f"sqlite:///{self.runs_dir / name}"]
        if local and not self.runs_dir.is_dir():
            raise UserError(f"RUNS_DIR={self.runs_dir} does not exist: no study has written there; run one first "
                            "(make study STUDY=smoke) or set RUNS_DIR= to the folder your studies wrote")
        missing = [name for name, _ in local if not (self.runs_dir / name).exists()]
        if missing:
            raise UserError(f"no studies under RUNS_DIR={self.runs_dir} (it has no {' or '.join(missing)}); run one "
                            "first (make study STUDY=smoke) or set RUNS_DIR= to the folder your studies wrote")

    def prepare(self) -> None:
        """Create RUNS_DIR and prove it is writable before anything is recorded there."""
        try:
            self.runs_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.runs_dir, prefix=".write-check-"):
                pass
        except OSError as e:
            raise UserError(f"RUNS_DIR {self.runs_dir} is not writable ({e.strerror}); "
                            "set RUNS_DIR= to a folder you can write") from None
        self.check_reachable()
        with self.creation_lock():
            self._create_stores()
            self.relocate()

    def check_reachable(self) -> None:
        """The remote stores answer (in seconds), or the command stops in one line before recording."""
        check_reachable(self.tracking_uri, "TRACKING_URI")
        check_reachable(self.storage_url, "STORAGE")
        check_own_database(self.storage_url, "STORAGE", MLFLOW_TABLES, "MLflow's tracking store")
        check_own_database(self.tracking_uri, "TRACKING_URI", OPTUNA_TABLES, "Optuna's storage (STORAGE)")

    @contextmanager
    def creation_lock(self) -> Iterator[None]:
        """One process at a time creates (or migrates, or relocates) the SQLite stores of this RUNS_DIR.
        MLflow's store creates its tables and runs its migrations without a lock when it finds none,
        so two `make study` started together on a fresh RUNS_DIR left mlflow.db half-migrated."""
        with open(self.runs_dir / ".stores.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
            yield

    def _create_stores(self) -> None:
        """Open each local SQLite store once, so that its tables exist and are migrated before any other
        process of this RUNS_DIR opens it (they wait on the lock, then find them ready)."""
        if self.tracking_uri.startswith("sqlite:"):
            try:
                self.mlflow().search_experiments(max_results=1)
            except (MlflowException, SQLAlchemyError) as e:
                raise UserError(f"TRACKING_URI={redact(self.tracking_uri)} cannot be opened: "
                                f"{redact_text(str(e).splitlines()[0], self.tracking_uri)}") from None
        if self.storage_url.startswith("sqlite:"):
            self.optuna().engine.dispose()

    # ---- folders ------------------------------------------------------------------------------------

    @property
    def cache_dir(self) -> Path:
        """Decoded datasets (`<dataset>-<key>.pt`), keyed by the source's content and the options."""
        return self.runs_dir / "cache"

    @property
    def extractor_cache(self) -> Path:
        return self.cache_dir / "extractors"

    @property
    def reference_cache(self) -> Path:
        return self.cache_dir / "reference"

    @property
    def panel_cache(self) -> Path:
        """Validation panel results per (extractor weights, dataset, n): harness/scoring/panel.py."""
        return self.cache_dir / "panel"

    @property
    def validation_dir(self) -> Path:
        return self.runs_dir / "validation"

    @property
    def bench_dir(self) -> Path:
        return self.runs_dir / "bench"

    @property
    def data_check_dir(self) -> Path:
        return self.runs_dir / "data-check"

    def latent_dir(self, run_id: str) -> Path:
        return self.runs_dir / "latent" / run_id

    # ---- MLflow -------------------------------------------------------------------------------------

    @property
    def local_backend_uri(self) -> str:
        """The backend store a local `make server` serves by default."""
        return f"sqlite:///{self.runs_dir / 'mlflow.db'}"

    @property
    def artifacts_uri(self) -> str:
        return (self.artifact_root or self.runs_dir / "artifacts").as_uri()

    def artifact_location(self, experiment: str) -> str | None:
        """Where a new experiment keeps its runs' artifacts (None: the tracking server decides)."""
        return (self.artifact_root / experiment).as_uri() if self.artifact_root else None

    def mlflow(self) -> MlflowClient:
        """A client bound to this store (never MLflow's working-directory default)."""
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # not its INFO lines about creating tables
        return MlflowClient(tracking_uri=self.tracking_uri)

    # ---- Optuna -------------------------------------------------------------------------------------

    def optuna(self, heartbeat: bool = False) -> optuna.storages.RDBStorage:
        """The Optuna storage, its tables created here. With `heartbeat`, a running trial beats every
        heartbeat_seconds; one silent for 3 beats (its worker was killed) is failed by the next worker
        to start a trial, and re-queued once with the same parameters."""
        url = self.storage_url
        sqlite = url.startswith("sqlite")
        # SQLite: the driver's own transaction handling off (isolation_level None), so that every
        # transaction can begin IMMEDIATE below.
        # A server: each pooled connection is tested before use, so one a restart cut is replaced, not failed.
        kwargs: dict[str, Any] = {"engine_kwargs": {"connect_args": {"timeout": 60, "isolation_level": None}} if sqlite
                                  else {"pool_pre_ping": True}}
        try:
            with warnings.catch_warnings():  # Optuna marks the heartbeat API experimental; we rely on it knowingly
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                if heartbeat:
                    kwargs.update(heartbeat_interval=self.heartbeat_seconds, grace_period=3 * self.heartbeat_seconds,
                                  heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))
                storage = open_rdb_storage(url, server=not sqlite, **kwargs)
            if sqlite:  # readers and one writer at a time without blocking each other; kept by the file
                with storage.engine.connect() as connection:
                    connection.exec_driver_sql("PRAGMA journal_mode=WAL")
                take_write_lock_first(storage.engine)
            return storage
        except (SQLAlchemyError, ImportError, ValueError, OSError) as e:  # bad URL, missing driver, unreachable
            raise UserError(f"STORAGE={redact(url)} cannot be opened: {redact_text(str(e).splitlines()[0], url)}") from None

