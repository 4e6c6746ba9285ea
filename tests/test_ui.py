"""`make ui`: the MLflow UI serves RUNS_DIR on 127.0.0.1, artifacts included; its links open a study in the
classic runs view and its trials compared on the objective; stopping it stops every process it started."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from browser import chromium, headless, visible_text
from mlflow import MlflowClient

from conftest import REPO, free_port, mlflow_runs, split_runs, wait_until_serving
from harness.core.storage import Storage
from harness.family.space import ChoiceParam, FloatParam, on_log_scale
from harness.study.studyfile import load_study
from harness.tracking.client import EXPERIMENT_KIND, Tracker
from harness.tracking.ui import COMPARE_VIEW, RUNS_VIEW, SHARED_VIEW, objective_charts, study_links


def listening_addresses(port: int) -> set[str]:
    """Local IPv4 addresses with a socket listening on `port`, from the kernel's table."""
    found = set()
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port_hex = local.split(":")
        if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def session_command_lines(session_id: int) -> list[str]:
    """The argv of every live process in a session (what `ps` shows any user of the machine). A zombie
    (exited, not yet reaped by its parent) runs nothing and has no argv: it is left out."""
    lines = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            state = open(f"/proc/{entry}/stat").read().rpartition(")")[2].split()[0]
            if os.getsid(int(entry)) == session_id and state != "Z":
                lines.append(open(f"/proc/{entry}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace"))
        except (OSError, ProcessLookupError):
            continue  # exited meanwhile
    return lines


@pytest.mark.slow
@pytest.mark.fault
def test_the_server_takes_its_store_from_a_file_never_from_argv(tmp_path):
    marker = "s3cret-marker"  # stands for a password: the store's URI must not reach any process's argv
    store = tmp_path / marker / "mlflow.db"
    store.parent.mkdir()
    (tmp_path / "store.txt").write_text(f"sqlite:///{store}\n")
    port = free_port()
    env = {**os.environ, "RUNS_DIR": str(tmp_path / "runs")}
    server = subprocess.Popen([sys.executable, "-m", "harness", "server", "--port", str(port), "--workers", "1",
                               "--backend-store-file", str(tmp_path / "store.txt")], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_serving(port, server, "tracking server")
        mlflow_session = next(os.getsid(int(c)) for c in open(f"/proc/{server.pid}/task/{server.pid}/children").read().split())
        lines = session_command_lines(server.pid) + session_command_lines(mlflow_session)  # the server runs in its own
        assert any("mlflow" in line for line in lines) and not any(marker in line for line in lines)
        assert store.exists()  # the server uses the store named in the file
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
    assert not session_command_lines(mlflow_session)  # and the server stopped every process it started


@pytest.mark.slow
@pytest.mark.fault
def test_make_refuses_a_store_uri_on_its_command_line(tmp_path):
    env = {**os.environ, "RUNS_DIR": str(tmp_path / "runs")}
    done = subprocess.run(["make", "server", "BACKEND_STORE=postgresql://genbench:hunter2@db-host/genbench"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "hunter2" not in done.stdout + done.stderr
    assert "set it in the environment (BACKEND_STORE=... make server)" in done.stderr


# ---- the study's links -----------------------------------------------------------------------------------

def test_the_tracker_makes_study_experiments_machine_learning_ones(runs_dir):
    storage = Storage.from_env()
    storage.prepare()
    client = storage.mlflow()
    assert client.get_experiment(Tracker(storage, "fresh-v1").experiment_id).tags[EXPERIMENT_KIND] \
        == "custom_model_development"
    older = client.create_experiment("older-v1")  # made before the tag: a study reopening it adds it
    assert EXPERIMENT_KIND not in client.get_experiment(older).tags
    Tracker(storage, "older-v1")
    assert client.get_experiment(older).tags[EXPERIMENT_KIND] == "custom_model_development"
    chosen = client.create_experiment("chosen-v1", tags={EXPERIMENT_KIND: "genai_development"})
    Tracker(storage, "chosen-v1")  # a kind a user picked in the UI stays
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND] == "genai_development"


@pytest.mark.slow
def test_the_links_open_the_classic_view_sorted_and_compared_on_the_objective(smoke_runs):
    client = MlflowClient(tracking_uri=f"sqlite:///{smoke_runs / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("smoke-v2")
    assert experiment.tags[EXPERIMENT_KIND] == "custom_model_development"  # the study created it so
    links = study_links(client, load_study("smoke"), "http://127.0.0.1:5000")
    page = f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning"
    assert links.runs == f"{page}&viewStateShareKey={RUNS_VIEW}"
    assert links.compare == f"{page}&compareRunsMode=CHART&viewStateShareKey={COMPARE_VIEW}"
    assert (links.objective, links.complete) == ("val_recon_mse", 2)
    tags = client.get_experiment(experiment.experiment_id).tags
    runs_view, compare_view = (json.loads(tags[SHARED_VIEW + key]) for key in (RUNS_VIEW, COMPARE_VIEW))
    for view in (runs_view, compare_view):  # sorted by the objective, best first; its column and the swept one shown
        assert (view["orderByKey"], view["orderByAsc"]) == ("metrics.`val_recon_mse`", True)
        assert {"metrics.`val_recon_mse`", "params.`kl_weight`", "tags.`state`"} <= set(view["selectedColumns"])
    assert runs_view["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": "mlflow.parentRunId"}]
    assert compare_view["searchFilter"] == "tags.state = 'COMPLETE' and tags.trial_number LIKE '%'"
    trials = [r.info.run_id for r in client.search_runs([experiment.experiment_id], compare_view["searchFilter"])]
    assert sorted(trials) == sorted(r.info.run_id for r in split_runs(mlflow_runs(smoke_runs, "smoke-v2"))[1])
    charts = {chart["type"]: chart for chart in compare_view["compareRunCharts"]}
    assert charts["BAR"]["metricKey"] == "val_recon_mse"
    assert (charts["SCATTER"]["xaxis"]["key"], charts["SCATTER"]["yaxis"]["key"]) == ("kl_weight", "val_recon_mse")
    assert charts["PARALLEL"]["selectedParams"] == ["kl_weight"]
    first, *folded = compare_view["compareRunSections"]  # the objective's open first; what MLflow adds, folded
    assert (first["name"], first["display"], first["columns"]) == ("objective val_recon_mse", True, 1)  # 1366 px
    assert compare_view["isAccordionReordered"] and not any(s["display"] for s in folded)
    assert {"Model metrics", "per_step", "fd_domain"} <= {s["name"] for s in folded}
    for run in split_runs(mlflow_runs(smoke_runs, "smoke-v2"))[1]:  # flagged trials red, the others blue
        assert run.data.tags["mlflow.runColor"] == ("#1f77b4" if run.data.tags["flags"] == "none" else "#d62728")


def test_a_log_scale_parameter_is_charted_on_its_logged_log10():
    spec = load_study("vae_kl_sweep")  # kl_weight: a grid 5e-5 .. 1e-2, over two decades
    charts = {c["type"]: c for c in objective_charts(["fd_domain"], spec, "s", 8, ["fd_domain", "log10_kl_weight"])}
    assert charts["SCATTER"]["xaxis"] == {"key": "log10_kl_weight", "type": "METRIC"}
    assert (charts["PARALLEL"]["selectedParams"], charts["PARALLEL"]["selectedMetrics"]) == ([], ["log10_kl_weight", "fd_domain"])
    charts = {c["type"]: c for c in objective_charts(["fd_domain"], spec, "s", 8, ["fd_domain"])}  # runs from before
    assert charts["SCATTER"]["xaxis"] == {"key": "kl_weight", "type": "PARAM"}
    assert on_log_scale(ChoiceParam((5e-5, 1e-3, 1e-2), 5e-5)) and not on_log_scale(ChoiceParam((1e-3, 1e-2), 1e-3))
    assert on_log_scale(FloatParam(1e-4, 1e-1, 1e-3, log=True)) and not on_log_scale(ChoiceParam(("a", "b", "c"), "a"))


# ---- stopping it ----------------------------------------------------------------------------------------

def live_processes(session_id: int) -> list[str]:
    """The argv of every process of a session that has not ended (zombies left out)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            state, _ppid, _group, session = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:4]
            if entry.name.isdigit() and int(session) == session_id and state != "Z":
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except (OSError, ValueError):
            continue  # not a process, or it ended meanwhile
    return found


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return found


def start_ui(runs: Path, *study: str) -> tuple[subprocess.Popen, str, int]:
    """`python -m harness ui` in a session of its own, as a terminal runs it; once MLflow's job runner has
    started its consumers (the processes `make ui` used to leave behind): (the process, what it printed
    before the server started, the server's session)."""
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "harness", "ui", "--port", str(port), *study], cwd=REPO,
                          env={**os.environ, "RUNS_DIR": str(runs)}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, start_new_session=True)
    printed = [ui.stdout.readline().decode() for _ in range(3)]  # the server's line, then two links
    wait_until_serving(port, ui, "MLflow UI")
    (server,) = [c for c in children(ui.pid)  # the server; the other child is its watchdog
                 if b"harness.tracking.watchdog" not in Path(f"/proc/{c}/cmdline").read_bytes()]
    server_session = os.getsid(server)
    deadline = time.time() + 120
    while not any("huey_consumer" in line for line in live_processes(server_session)):
        assert time.time() < deadline, f"no huey consumer started: {live_processes(server_session)}"
        time.sleep(0.5)
    return ui, "".join(printed), server_session


@pytest.mark.slow
def test_sigterm_to_the_harness_alone_stops_every_process_it_started(smoke_runs):
    ui, printed, server_session = start_ui(smoke_runs, "smoke")
    experiment = MlflowClient(tracking_uri=f"sqlite:///{smoke_runs / 'mlflow.db'}").get_experiment_by_name("smoke-v2")
    links = re.findall(r"http://\S+", printed)
    assert [link.split("/#/")[1] for link in links[1:]] == [
        f"experiments/{experiment.experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={RUNS_VIEW}",
        (f"experiments/{experiment.experiment_id}/runs?workflowType=machine_learning&compareRunsMode=CHART"
         f"&viewStateShareKey={COMPARE_VIEW}")]
    assert "sorted by val_recon_mse" in printed and "2 complete trials compared on val_recon_mse" in printed
    started = live_processes(server_session)
    assert len(started) >= 4  # the server, uvicorn, the job runner and its consumers
    os.kill(ui.pid, signal.SIGTERM)  # the harness only: the server is in a session of its own
    assert ui.wait(timeout=120) == 128 + signal.SIGTERM
    assert live_processes(server_session) == [] and live_processes(ui.pid) == []
    stopped = re.search(r"stopped the MLflow server: (\d+) process\(es\) ended", ui.stdout.read().decode())
    assert stopped and int(stopped[1]) >= 4


@pytest.mark.slow
def test_ctrl_c_stops_every_process_it_started(smoke_runs, tmp_path):
    """Also, while it serves: it serves the runs and their artifacts on the loopback address only;
    without a study, `make ui` prints links in the machine-learning view, and the experiments link
    renders as that view in a real browser (MLflow 3 otherwise opens its GenAI home), with the study
    in it."""
    ui, printed, server_session = start_ui(smoke_runs)
    base = re.search(r"http://127\.0\.0\.1:(\d+)", printed)
    experiments = json.loads(get(base[0] + "/api/2.0/mlflow/experiments/search?max_results=50"))
    assert "smoke-v2" in {e["name"] for e in experiments["experiments"]}
    child = split_runs(mlflow_runs(smoke_runs, "smoke-v2"))[1][0]
    png = get(f"{base[0]}/get-artifact?path=samples.png&run_uuid={child.info.run_id}")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert listening_addresses(int(base[1])) == {"127.0.0.1"}  # loopback only
    experiment = MlflowClient(tracking_uri=f"sqlite:///{smoke_runs / 'mlflow.db'}").get_experiment_by_name("smoke-v2")
    urls = re.findall(r"http://\S+", printed)[1:]
    assert [link.split("/#/")[1] for link in urls] == [
        "experiments?workflowType=machine_learning", f"experiments/{experiment.experiment_id}/runs?workflowType=machine_learning"]
    if chromium() is not None:  # .ci/run installs Debian's chromium
        text = ""
        for _ in range(3):  # the list is fetched after the page loads
            text = visible_text(headless("--virtual-time-budget=20000", "--dump-dom", urls[0], profile=tmp_path / "p").stdout)
            if "smoke-v2" in text:
                break
        assert "smoke-v2" in text and "Model registry" in text, text[:600]  # the machine-learning view's navigation
        assert "Welcome to MLflow" not in text and "Prompts" not in text, text[:600]  # not the GenAI home
    assert len(live_processes(server_session)) >= 4
    os.killpg(ui.pid, signal.SIGINT)  # what Ctrl-C does: SIGINT to the terminal's foreground process group
    assert ui.wait(timeout=120) == 130
    assert live_processes(server_session) == [] and live_processes(ui.pid) == []


@pytest.mark.slow
@pytest.mark.fault
def test_a_killed_ui_leaves_no_server_behind(smoke_runs):
    """SIGKILL of `make ui`'s process group (a crash, an OOM kill, a job's time limit) runs no handler
    of ours; the server's session, uvicorn and the job runner's consumers included, still ends."""
    ui, _, server_session = start_ui(smoke_runs)
    assert len(live_processes(server_session)) >= 4
    os.killpg(ui.pid, signal.SIGKILL)
    ui.wait(timeout=30)
    deadline = time.time() + 30
    while live_processes(server_session):
        assert time.time() < deadline, f"still running 30 s after the kill: {live_processes(server_session)}"
        time.sleep(0.5)
    assert not [line for line in live_processes(os.getsid(os.getpid())) if "harness.tracking.watchdog" in line]


LISTENER = ("import socket, sys, time; s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(); "
            "print('listening', flush=True); time.sleep(120)")


@pytest.mark.fault
@pytest.mark.parametrize("holder", ["another program", "a leftover MLflow server"])
def test_a_held_port_is_refused_in_one_line_naming_its_holder(tmp_path, holder):
    """Issue 32: a second `make server` on a port an orphan still served printed `[Errno 98] Address
    already in use` deep in its log and exited, while the orphan (on which store?) kept answering.
    Now the holder is named: its pid, and for an MLflow server the store it serves, password hidden."""
    port = free_port()
    store = "postgresql://genbench:s3cret-pw@db-host/genbench_mlflow"
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": store} if holder.endswith("server") else dict(os.environ)
    listener = subprocess.Popen([sys.executable, "-c", LISTENER, str(port)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline().strip() == "listening"
        done = subprocess.run([sys.executable, "-m", "harness", "server", "--port", str(port)], cwd=REPO,
                              env={**os.environ, "RUNS_DIR": str(tmp_path / "runs")}, capture_output=True, text=True,
                              timeout=120)
    finally:
        listener.kill()
        listener.wait()
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert f"port {port} on 127.0.0.1 is held by" in line and f"pid {listener.pid}" in line, line
    assert "s3cret-pw" not in line
    if holder.endswith("server"):
        assert "MLflow server still running" in line and "postgresql://genbench:***@db-host/genbench_mlflow" in line
        assert f"kill {listener.pid}" in line
    else:
        assert "another program" in line and "choose another PORT=" in line
