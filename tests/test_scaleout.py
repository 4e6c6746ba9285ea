"""Workers, a real cluster path (PostgreSQL + an MLflow tracking server), and surviving a SIGKILL."""

import multiprocessing
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from contextlib import closing
from pathlib import Path
from typing import Iterator

import optuna
import pytest
import torch
from mlflow import MlflowClient
from optuna.trial import TrialState
from sqlalchemy import create_engine, text
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import NullPool

from conftest import REPO, free_port, mlflow_runs, share_caches, split_runs, wait_until_serving, write_study
from harness.cli import main
from harness.core.errors import UserError
from harness.core.storage import (
    MLFLOW_TABLES,
    OPTUNA_TABLES,
    SCHEMA_RACE_ATTEMPTS,
    Storage,
    check_own_database,
    open_rdb_storage,
)
from harness.data.datasets import load_dataset
from harness.family import fast_path as speed
from harness.family.registry import get_family
from harness.training.loop import TrainConfig, train

pytestmark = pytest.mark.slow


def study_text(name: str, trials: int, rounds: int, sampler: str = "grid", checkpoint_every: int = 5) -> str:
    """480 training images in batches of 64: a round of 7 steps is an epoch."""
    space = 'kl_weight = [1e-3, 1e-2, 3e-3, 3e-4]' if sampler == "grid" else 'kl_weight = {low = 1e-4, high = 1e-2, log = true}'
    return f"""
name = "{name}"
version = 1
families = ["vae"]
trials = {trials}
steps = {7 * rounds}
rounds = {rounds}
seed = 0
objective = "val_recon_mse"
checkpoint_every = {checkpoint_every}
[dataset]
name = "synthfaces"
n = 600
[sampler]
name = "{sampler}"
[space.vae]
{space}
latent_dim = 16
batch_size = 64
[scores]
round_samples = 100
final_samples = 200
"""


def harness(*args: str, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=REPO, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout)


def started_together(target, args_of_each: list[tuple]) -> list[str]:
    """Start one spawned process per args, all waiting on one barrier; what each put in the queue."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(len(args_of_each)), context.Queue()
    processes = [context.Process(target=target, args=(*args, barrier, results)) for args in args_of_each]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=300) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    return outcomes


def prepare_and_use(runs: str, index: int, barrier, results) -> None:
    """One command starting on a fresh RUNS_DIR: create the stores, then record something in each."""
    os.environ["RUNS_DIR"] = runs
    barrier.wait()
    try:
        storage = Storage.from_env()
        storage.prepare()
        storage.mlflow().create_experiment(f"exp{index}", storage.artifact_location(f"exp{index}"))
        optuna.create_study(study_name=f"study{index}", storage=storage.optuna())
        results.put("ok")
    except Exception as e:  # noqa: BLE001 - reported to the test, which fails on it
        results.put(f"{type(e).__name__}: {e}")


def schema(db: Path) -> tuple[str, list[str]]:
    with closing(sqlite3.connect(db)) as connection:
        (version,) = connection.execute("SELECT version_num FROM alembic_version").fetchone()
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    return version, tables


@pytest.mark.fault
def test_commands_starting_together_on_a_fresh_runs_dir_create_the_stores_once(tmp_path):
    """Two `make study` at once on a fresh RUNS_DIR left mlflow.db half-migrated for good (MLflow creates
    and migrates its tables without a lock). Four processes start at the same moment; each must record,
    and the stores must end exactly as one process alone leaves them."""
    runs = str(tmp_path / "runs")
    assert started_together(prepare_and_use, [(runs, i) for i in range(4)]) == ["ok"] * 4
    alone = Storage.from_env({"RUNS_DIR": str(tmp_path / "alone")})
    alone.prepare()
    assert schema(tmp_path / "runs" / "mlflow.db") == schema(tmp_path / "alone" / "mlflow.db")
    assert len(Storage.from_env({"RUNS_DIR": runs}).mlflow().search_experiments()) == 5  # Default + 4
    assert len(optuna.get_all_study_summaries(f"sqlite:///{runs}/optuna.db")) == 4


def pop_queued(runs: str, barrier, popped) -> None:
    """One process asking for trials of the 'pop' study until its queue is empty (no training)."""
    os.environ["RUNS_DIR"] = runs
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name="pop", storage=Storage.from_env().optuna())
    barrier.wait()
    numbers = []
    while True:
        trial = study.ask()
        if "fixed_params" not in study._storage.get_trial(trial._trial_id).system_attrs:
            study.tell(trial, state=TrialState.FAIL)
            break
        numbers.append(trial.number)
        try:
            study.tell(trial, 0.0)
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
            pass  # popped twice: another process told it first
    popped.put(numbers)


@pytest.mark.fault
def test_processes_popping_one_sqlite_queue_never_take_the_same_trial(tmp_path):
    """Optuna pops a queued trial by reading WAITING, then writing RUNNING; on SQLite two processes both
    read WAITING and both ran it (10 runs in 10 before the fix) unless every transaction takes the
    write lock first."""
    runs = str(tmp_path / "runs")
    storage = Storage.from_env({"RUNS_DIR": runs})
    storage.prepare()
    study = optuna.create_study(study_name="pop", storage=storage.optuna())
    for i in range(16):
        study.enqueue_trial({"x": float(i)})
    context = multiprocessing.get_context("spawn")
    barrier, popped = context.Barrier(4), context.Queue()
    processes = [context.Process(target=pop_queued, args=(runs, barrier, popped)) for _ in range(4)]
    for process in processes:
        process.start()
    numbers = [n for _ in processes for n in popped.get(timeout=300)]
    for process in processes:
        process.join(timeout=60)
    assert sorted(numbers) == list(range(16))  # every queued trial once, none twice


@pytest.mark.fault
def test_two_invocations_with_two_workers_each_train_every_grid_point_once(tmp_path, shared_caches):
    """Two terminals (or two jobs of a cluster array) start the same grid study at once on a fresh
    RUNS_DIR, each with two local workers: the databases are created once, each grid point is trained
    once, and every trained run sits under its invocation's parent run."""
    share_caches(tmp_path / "runs", shared_caches)
    path = write_study(tmp_path, "twice", study_text("twice", trials=4, rounds=1))
    env = {**os.environ, "RUNS_DIR": str(tmp_path / "runs"), "STORAGE": "", "TRACKING_URI": ""}
    invocations = [subprocess.Popen([sys.executable, "-m", "harness", "study", str(path), "--workers", "2"], cwd=REPO,
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=900)[0] for p in invocations]
    for process, output in zip(invocations, outputs):
        assert process.returncode == 0, output
        assert "database is locked" not in output and "Traceback" not in output, output
        assert "[worker 0]" in output and "[worker 1]" in output  # each invocation ran its two workers
        assert " 0 failed" in output  # the copies another invocation trained are surplus, not failures
    completes = [int(re.search(r"(\d+) complete, ", output).group(1)) for output in outputs]
    assert sum(completes) == 4
    trials = optuna.load_study(study_name="twice-v1", storage=f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}").trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["kl_weight"] for t in complete) == [3e-4, 1e-3, 3e-3, 1e-2]  # each point trained once
    skipped = [t for t in trials if t.state == TrialState.FAIL]
    assert all(t.user_attrs["failure_reason"].startswith("surplus") for t in skipped)  # copies, not run
    parents, children = split_runs(mlflow_runs(tmp_path / "runs", "twice-v1"))
    trained = [r for r in children if r.info.status == "FINISHED"]
    assert len(trained) == len(children) == 4  # surplus copies never start a run
    assert sorted(int(c.data.tags["trial_number"]) for c in trained) == sorted(t.number for t in complete)
    assert len(parents) == 2 and {c.data.tags["mlflow.parentRunId"] for c in children} <= {p.info.run_id for p in parents}
    print(f"trained {len(trained)} of 4 grid points; {len(skipped)} queued copies skipped")  # for the closing note


def study_exists(db: Path, name: str) -> bool:
    """Read-only: True once the storage holds the study (opening it with Optuna would create tables)."""
    if not db.exists():
        return False
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as connection:
            return connection.execute("SELECT 1 FROM studies WHERE study_name = ?", (name,)).fetchone() is not None
    except sqlite3.Error:  # the tables are still being created
        return False


@pytest.mark.fault
def test_a_killed_worker_is_retried_and_resumes_from_its_checkpoint(tmp_path, shared_caches):
    runs = tmp_path / "runs"
    share_caches(runs, shared_caches)
    path = write_study(tmp_path, "killme", study_text("killme", trials=2, rounds=6, checkpoint_every=2).replace(
        "kl_weight = [1e-3, 1e-2, 3e-3, 3e-4]", "kl_weight = [1e-3, 1e-2]"))
    env = {**os.environ, "RUNS_DIR": str(runs), "HEARTBEAT_SECONDS": "1", "STORAGE": "", "TRACKING_URI": ""}
    worker = subprocess.Popen([sys.executable, "-m", "harness", "study", str(path)], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    storage = f"sqlite:///{runs / 'optuna.db'}"
    deadline = time.time() + 300
    while True:  # kill it in the middle of trial 1: after round 3, so the round-2 checkpoint exists
        time.sleep(0.2)
        assert worker.poll() is None and time.time() < deadline, "the study ended before it could be killed"
        if not study_exists(runs / "optuna.db", "killme-v1"):  # loading it earlier would race the study creating it
            continue
        trials = optuna.load_study(study_name="killme-v1", storage=storage).trials
        if len(trials) > 1 and trials[1].state == TrialState.RUNNING and len(trials[1].intermediate_values) >= 3:
            break
    os.killpg(worker.pid, signal.SIGKILL)
    killed_at = time.time()
    worker.wait()
    before = optuna.load_study(study_name="killme-v1", storage=storage).trials
    assert [t.state for t in before] == [TrialState.COMPLETE, TrialState.RUNNING]  # left as the kill found it
    assert before[1].user_attrs["worker"]["pid"] == worker.pid  # who ran it, so a rerun can see it is gone

    # Rerun at once, with an hour's heartbeat: three missed beats would take 3 hours, so only the dead
    # process can tell the rerun that trial 1 is not running any more.
    with pytest.MonkeyPatch.context() as mp:
        for key, value in (("RUNS_DIR", str(runs)), ("HEARTBEAT_SECONDS", "3600"), ("STORAGE", ""), ("TRACKING_URI", "")):
            mp.setenv(key, value)
        assert main(["study", str(path)]) == 0
    after = optuna.load_study(study_name="killme-v1", storage=storage).trials
    print(f"kill to the retry's start: {after[2].datetime_start.timestamp() - killed_at:.1f} s")  # for the closing note
    assert [t.state for t in after] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert after[0].value == before[0].value  # the finished trial is intact
    assert after[2].params == after[1].params  # retried once, with the same parameters
    resumed_from = after[2].user_attrs["resumed_from_step"]
    assert resumed_from >= 14 and sorted(after[2].intermediate_values) == [1, 2, 3, 4, 5, 6]  # the pruner's steps: rounds

    runs_now = mlflow_runs(runs, "killme-v1")
    assert not [r for r in runs_now if r.info.status == "RUNNING"]  # nothing left RUNNING
    killed = next(r for r in runs_now if r.data.tags.get("trial_number") == "1")
    assert killed.info.status == "KILLED" and "its process is gone" in killed.data.tags["failure_reason"]
    retry = next(r for r in runs_now if r.data.tags.get("trial_number") == "2")
    assert retry.data.tags["retry_of"] == "1" and retry.data.tags["resumed_from_step"] == str(resumed_from)
    client = MlflowClient(tracking_uri=f"sqlite:///{runs / 'mlflow.db'}")
    assert [m.step for m in client.get_metric_history(retry.info.run_id, "val_recon_mse")] == [7, 14, 21, 28, 35, 42]
    # Resumed from its checkpoint, the trial ends exactly where an uninterrupted run ends.
    vae = get_family("vae")
    params = vae.defaults | {"kl_weight": 1e-2, "latent_dim": 16, "batch_size": 64}
    data = load_dataset("synthfaces", {"n": 600})
    torch.set_num_threads(torch.get_num_threads())
    fast = speed.Speed().resolve(torch.device("cpu"))  # the study's fast path (fused Adam where torch has it)
    assert after[2].value == train(vae, params, data, TrainConfig(steps=42, rounds=6, seed=0, fast=fast)).history[-1]["val_recon_mse"]


needs_postgres = pytest.mark.skipif(not os.environ.get("GENBENCH_TEST_POSTGRES"),
                                    reason="set GENBENCH_TEST_POSTGRES=postgresql://... (.ci/run starts PostgreSQL and sets it)")


@pytest.fixture
def fresh_postgres() -> Iterator[str]:
    """GENBENCH_TEST_POSTGRES with a new, empty schema first on its search path: every test meets the
    tables uncreated, as a fresh database does (CI's is fresh only for the first test to use it)."""
    url = os.environ["GENBENCH_TEST_POSTGRES"]
    name = f"t_{uuid.uuid4().hex[:12]}"
    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {name}"))
    try:
        yield f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{name}"
    finally:
        with engine.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {name} CASCADE"))
        engine.dispose()


def test_a_storage_whose_tables_another_process_is_creating_is_opened_again(monkeypatch):
    """The loser of the CREATE TABLE race gets IntegrityError and tries again; an error that lasts is
    raised after the last attempt, not retried for ever."""
    calls = []

    def racing(url, **kwargs):
        calls.append(url)
        if len(calls) < 3:
            raise IntegrityError("CREATE TYPE", {}, Exception('duplicate key value violates "pg_type_typname_nsp_index"'))
        return "storage"

    monkeypatch.setattr(optuna.storages, "RDBStorage", racing)
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    assert open_rdb_storage("postgresql://db") == "storage" and len(calls) == 3
    calls.clear()

    def lasting(url, **kwargs):
        calls.append(url)
        raise IntegrityError("INSERT", {}, Exception("a constraint the user's database keeps refusing"))

    monkeypatch.setattr(optuna.storages, "RDBStorage", lasting)
    with pytest.raises(IntegrityError):
        open_rdb_storage("postgresql://db")
    assert len(calls) == SCHEMA_RACE_ATTEMPTS


def open_optuna_storage(url: str, barrier, results) -> None:
    """One machine opening the Optuna storage at the same moment as the others."""
    barrier.wait()
    try:
        Storage.from_env({"STORAGE": url}).optuna()
        results.put("ok")
    except Exception as e:  # noqa: BLE001 - reported to the test, which fails on it
        results.put(f"{type(e).__name__}: {e}")


@pytest.mark.fault
@needs_postgres
def test_machines_opening_a_fresh_postgres_at_once_all_get_the_storage(fresh_postgres):
    """CI's first PostgreSQL run failed: two machines on a fresh database both created Optuna's tables
    and PostgreSQL refused the slower one (unique violation on pg_type). Six open it at the same moment."""
    assert started_together(open_optuna_storage, [(fresh_postgres,)] * 6) == ["ok"] * 6
    assert optuna.get_all_study_summaries(fresh_postgres) == []  # the tables are there, and empty


@pytest.fixture
def readme_databases() -> Iterator[tuple[str, str]]:
    """Step 1 of harness/README.md's several-machines recipe: two databases, one for Optuna and one for
    MLflow (fresh names, owned by GENBENCH_TEST_POSTGRES's role, dropped after)."""
    url = os.environ["GENBENCH_TEST_POSTGRES"]
    user, tag = url.split("://", 1)[1].split(":", 1)[0], uuid.uuid4().hex[:8]
    names = (f"genbench_optuna_{tag}", f"genbench_mlflow_{tag}")
    engine = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        for name in names:
            connection.execute(text(f"CREATE DATABASE {name} OWNER {user}"))
    base = url.rsplit("/", 1)[0]
    try:
        yield f"{base}/{names[0]}", f"{base}/{names[1]}"
    finally:
        with engine.connect() as connection:
            for name in names:
                connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        engine.dispose()


def make(*args: str, env: dict, timeout: int = 600, **popen) -> subprocess.Popen:
    return subprocess.Popen(["make", "--no-print-directory", *args], cwd=REPO, env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


@pytest.mark.fault
@needs_postgres
def test_the_readmes_several_machines_steps_work_as_written(tmp_path, shared_caches, readme_databases):
    """harness/README.md's recipe step by step: two databases; `BACKEND_STORE=... make server`; on two
    machines at once (their own RUNS_DIR each) `STORAGE=... make study STUDY=... TRACKING_URI=http://...`;
    then `make report` from a third place with the same STORAGE and TRACKING_URI."""
    optuna_db, mlflow_db = readme_databases
    password = optuna_db.split("://", 1)[1].split("@", 1)[0].partition(":")[2]
    name = f"pg_{uuid.uuid4().hex[:8]}"
    path = write_study(tmp_path, name, study_text(name, trials=4, rounds=1, sampler="random"))
    port = free_port()
    log = open(tmp_path / "server.log", "w")  # a pipe nobody reads fills with the access log and stalls the server
    server = subprocess.Popen(["make", "--no-print-directory", "server", f"PORT={port}"], cwd=REPO, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True,
                              env={**os.environ, "BACKEND_STORE": mlflow_db, "RUNS_DIR": str(tmp_path / "server")})
    try:
        wait_until_serving(port, server, "tracking server")
        for i in range(2):
            share_caches(tmp_path / f"machine{i}", shared_caches)
        machines = [make("study", f"STUDY={path}", f"TRACKING_URI=http://127.0.0.1:{port}", "DEVICE=cpu",
                         env={"RUNS_DIR": str(tmp_path / f"machine{i}"), "STORAGE": optuna_db}) for i in range(2)]
        outputs = [m.communicate(timeout=600)[0] for m in machines]
        for machine, output in zip(machines, outputs):
            assert machine.returncode == 0, output
            assert password and password not in output  # credentials are never printed
        trials = optuna.load_study(study_name=f"{name}-v1", storage=optuna_db).trials
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        assert len(complete) == 4 and all(t.user_attrs["failure_reason"].startswith("surplus")
                                          for t in trials if t.state != TrialState.COMPLETE)
        assert len({t.params["kl_weight"] for t in complete}) == 4  # no sampler repeated another's draw
        client = MlflowClient(tracking_uri=f"http://127.0.0.1:{port}")
        experiment = client.get_experiment_by_name(f"{name}-v1")
        every = client.search_runs([experiment.experiment_id])
        children = [r for r in every if "mlflow.parentRunId" in r.data.tags]
        assert sorted(int(c.data.tags["trial_number"]) for c in children) == sorted(t.number for t in complete)
        assert all(c.info.status == "FINISHED" for c in children)
        print(f"PostgreSQL, two machines at once: {len(complete)} trained, "
              f"{len(trials) - len(complete)} surplus, {len({t.params['kl_weight'] for t in complete})} distinct draws")
        assert "samples.png" in {a.path for a in client.list_artifacts(children[0].info.run_id)}  # through the server
        for run in every:
            assert password not in str(run.data.params) and password not in str(run.data.tags)
        assert MLFLOW_TABLES <= set(inspect_tables(mlflow_db)) and not OPTUNA_TABLES & set(inspect_tables(mlflow_db))
        report = make("report", f"STUDY={name}", f"TRACKING_URI=http://127.0.0.1:{port}",
                      env={"RUNS_DIR": str(tmp_path / "anywhere"), "STORAGE": optuna_db})
        said = report.communicate(timeout=300)[0]
        assert report.returncode == 0 and password not in said, said
        assert f"reports/{name}-v1/index.html" in said
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
        assert password not in (tmp_path / "server.log").read_text()
        shutil.rmtree(REPO / "reports" / f"{name}-v1", ignore_errors=True)


def inspect_tables(url: str) -> list[str]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        return sa_inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_a_full_disk_stops_the_study_with_one_line_and_keeps_what_was_recorded(tmp_path, monkeypatch, capsys,
                                                                                shared_caches):
    import errno
    import sqlite3

    from harness.training import pictures as figures

    runs = tmp_path / "runs"
    share_caches(runs, shared_caches)
    for key, value in (("RUNS_DIR", str(runs)), ("STORAGE", ""), ("TRACKING_URI", "")):
        monkeypatch.setenv(key, value)
    path = write_study(tmp_path, "full", study_text("full", trials=4, rounds=1))
    real_save, calls = figures.save_png, []

    def fills_up(grid, target, *args, **kwargs):
        calls.append(target)
        if len(calls) > 4:  # the parent run's dataset grid and trial 0's 3 grids; then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        return real_save(grid, target, *args, **kwargs)

    monkeypatch.setattr(figures, "save_png", fills_up)
    assert main(["study", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is full" in err[0] and "the 1 finished trial(s) are kept" in err[0]
    trials = optuna.load_study(study_name="full-v1", storage=f"sqlite:///{runs / 'optuna.db'}").trials
    # Stopped at once: no third trial tried; the other grid points stay queued for the next run.
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING, TrialState.WAITING]
    for db in ("optuna.db", "mlflow.db"):
        assert sqlite3.connect(runs / db).execute("PRAGMA integrity_check").fetchone() == ("ok",)
    monkeypatch.setattr(figures, "save_png", real_save)  # space freed: the same command goes on
    assert main(["study", str(path)]) == 0
    trials = optuna.load_study(study_name="full-v1", storage=f"sqlite:///{runs / 'optuna.db'}").trials
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 4


@pytest.mark.slow
@pytest.mark.fault
def test_optuna_and_mlflow_never_share_one_database(tmp_path, capsys):
    """Both tools keep their schema revision in a table alembic_version; in one database Optuna read
    MLflow's and failed in a 30-line traceback. Each store that holds the other's tables is refused in
    one line naming the fix; a store not there yet passes and is not created."""
    mlflow_db, optuna_db = tmp_path / "mlflow.db", tmp_path / "optuna.db"
    MlflowClient(tracking_uri=f"sqlite:///{mlflow_db}").search_experiments()  # MLflow's tables
    optuna.storages.RDBStorage(f"sqlite:///{optuna_db}").engine.dispose()  # Optuna's
    for url, variable, foreign in ((f"sqlite:///{mlflow_db}", "STORAGE", MLFLOW_TABLES),
                                   (f"sqlite:///{optuna_db}", "BACKEND_STORE", OPTUNA_TABLES)):
        with pytest.raises(UserError, match=f"^{variable}=.* already uses; .*alembic_version.*own database"):
            check_own_database(url, variable, foreign, "the other tool")
    check_own_database(f"sqlite:///{optuna_db}", "STORAGE", MLFLOW_TABLES, "MLflow")  # its own tool's: fine
    check_own_database(f"sqlite:///{tmp_path / 'new.db'}", "STORAGE", MLFLOW_TABLES, "MLflow")
    assert not (tmp_path / "new.db").exists()
    capsys.readouterr()  # MLflow's own lines while it created its tables above
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RUNS_DIR", str(tmp_path / "runs"))
        mp.setenv("STORAGE", f"sqlite:///{mlflow_db}")
        mp.delenv("TRACKING_URI", raising=False)
        assert main(["study", "smoke"]) == 2
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and said[0].startswith("error: STORAGE=sqlite:///") and "genbench_optuna" in said[0]


@pytest.mark.fault
@needs_postgres
def test_the_readmes_one_database_form_is_refused_in_one_line(tmp_path, fresh_postgres):
    """The recipe as issue 32 found it: one PostgreSQL database for both, the tracking store's tables
    created first; `make study` with STORAGE on it stops in one line without the password."""
    password = fresh_postgres.split("://", 1)[1].split("@", 1)[0].partition(":")[2]
    MlflowClient(tracking_uri=fresh_postgres).search_experiments()  # what `make server` does first
    done = subprocess.run([sys.executable, "-m", "harness", "study", "smoke", "--device", "cpu"], cwd=REPO,
                          env={**os.environ, "RUNS_DIR": str(tmp_path / "runs"), "STORAGE": fresh_postgres},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "already uses" in line and "alembic_version" in line and password not in line


needs_a_restartable_postgres = pytest.mark.skipif(
    not (os.environ.get("GENBENCH_TEST_POSTGRES") and os.environ.get("GENBENCH_TEST_POSTGRES_CLUSTER")),
    reason="set GENBENCH_TEST_POSTGRES and GENBENCH_TEST_POSTGRES_CLUSTER='<version> <cluster>' for pg_ctlcluster "
           "(.ci/run sets both)")


def pg_ctl(action: str) -> None:
    """Stop, start or restart the test's PostgreSQL cluster, for real (its processes end and come back)."""
    version, cluster = os.environ["GENBENCH_TEST_POSTGRES_CLUSTER"].split()
    subprocess.run(["pg_ctlcluster", version, cluster, action], check=True, capture_output=True, timeout=120)


@pytest.mark.fault
@needs_a_restartable_postgres
def test_optunas_storage_rides_out_a_database_restart_and_stops_in_one_line_when_it_stays_down(fresh_postgres,
                                                                                                monkeypatch):
    """Issue 32: a two-second PostgreSQL restart failed the running trial with a StorageInternalError
    blaming 'invalid data'. Now every storage call waits for the database (bounded), and one that
    stays down stops with a one-line StoreUnreachable without the password."""
    from harness.core.retry import ServerStorage, StoreUnreachable

    password = fresh_postgres.split("://", 1)[1].split("@", 1)[0].partition(":")[2]
    storage = Storage.from_env({"STORAGE": fresh_postgres}).optuna()
    assert isinstance(storage, ServerStorage)
    study = optuna.create_study(study_name="restart", storage=storage)
    before = study.ask()
    pg_ctl("restart")  # every pooled connection is cut; the next calls must not fail
    before.set_user_attr("seen", 1)
    study.tell(before, 1.0)
    pg_ctl("stop")
    restarted = subprocess.Popen(["sh", "-c", f"sleep 3; pg_ctlcluster {os.environ['GENBENCH_TEST_POSTGRES_CLUSTER']} start"])
    try:
        started = time.monotonic()
        during = study.ask()  # refused for about 3 s, then served
        study.tell(during, 2.0)
        assert time.monotonic() - started > 2
    finally:
        restarted.wait(timeout=120)
    assert [(t.state, t.value) for t in study.trials] == [(TrialState.COMPLETE, 1.0), (TrialState.COMPLETE, 2.0)]
    monkeypatch.setattr(ServerStorage, "wait_s", 2.0)
    pg_ctl("stop")
    try:
        with pytest.raises(StoreUnreachable) as stopped:
            study.ask()
    finally:
        pg_ctl("start")
    (line,) = str(stopped.value).splitlines()
    assert line.startswith("STORAGE=postgresql://genbench") and "did not answer for 2 s" in line
    assert "run the same make study again" in line and password not in line


@pytest.mark.fault
@needs_a_restartable_postgres
def test_a_study_goes_on_through_a_database_restart_mid_trial(tmp_path, shared_caches, fresh_postgres):
    """The study of issue 32's report: PostgreSQL down for 4 s while a trial trains (its rounds and
    heartbeats meet the refused connections). Every grid point completes, none is failed or run
    twice, nothing is said in a traceback, and the values are those of a run on SQLite."""
    name = f"pgr_{uuid.uuid4().hex[:8]}"
    path = write_study(tmp_path, name, study_text(name, trials=2, rounds=6, checkpoint_every=0))
    share_caches(tmp_path / "runs", shared_caches)
    run = subprocess.Popen([sys.executable, "-m", "harness", "study", str(path), "--device", "cpu"], cwd=REPO,
                           env={**os.environ, "RUNS_DIR": str(tmp_path / "runs"), "STORAGE": fresh_postgres,
                                "HEARTBEAT_SECONDS": "1"},
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not mid_training(fresh_postgres, f"{name}-v1"):
        assert run.poll() is None and time.time() < deadline, run.stdout.read() if run.poll() is not None else "no round"
        time.sleep(0.2)
    pg_ctl("stop")
    time.sleep(4)
    pg_ctl("start")
    output = run.communicate(timeout=600)[0]
    assert run.returncode == 0 and "Traceback" not in output, output
    trials = optuna.load_study(study_name=f"{name}-v1", storage=fresh_postgres).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2, output
    share_caches(tmp_path / "alone", shared_caches)
    alone = harness("study", str(path), "--device", "cpu", env={"RUNS_DIR": str(tmp_path / "alone"), "STORAGE": "",
                                                                 "TRACKING_URI": ""})
    assert alone.returncode == 0, alone.stdout + alone.stderr
    unfaulted = optuna.load_study(study_name=f"{name}-v1", storage=f"sqlite:///{tmp_path / 'alone' / 'optuna.db'}").trials
    assert {t.params["kl_weight"]: t.value for t in trials} == {t.params["kl_weight"]: t.value for t in unfaulted}


def mid_training(url: str, name: str) -> bool:
    """A trial of the study is running and has reported a round."""
    try:
        trials = optuna.load_study(study_name=name, storage=url).trials
    except KeyError:  # the study is not created yet
        return False
    return any(t.state == TrialState.RUNNING and t.intermediate_values for t in trials)
