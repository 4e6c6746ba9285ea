"""`make ui`: the MLflow UI serves RUNS_DIR on 127.0.0.1, artifacts included."""

import json
import os
import socket
import subprocess
import sys
import urllib.request

import pytest

from conftest import REPO, free_port, mlflow_runs, split_runs, wait_until_serving

pytestmark = pytest.mark.slow


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


def test_ui_serves_the_runs(smoke_runs):
    port = free_port()
    env = {**os.environ, "RUNS_DIR": str(smoke_runs)}
    server = subprocess.Popen([sys.executable, "-m", "harness", "ui", "--port", str(port)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(port, server, "MLflow UI")
        experiments = json.loads(get(base + "/api/2.0/mlflow/experiments/search?max_results=50"))
        assert "smoke-v2" in {e["name"] for e in experiments["experiments"]}
        child = split_runs(mlflow_runs(smoke_runs, "smoke-v2"))[1][0]
        png = get(f"{base}/get-artifact?path=samples.png&run_uuid={child.info.run_id}")
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert listening_addresses(port) == {"127.0.0.1"}  # loopback only
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def session_command_lines(session_id: int) -> list[str]:
    """The argv of every process in a session (what `ps` shows any user of the machine)."""
    lines = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getsid(int(entry)) == session_id:
                lines.append(open(f"/proc/{entry}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace"))
        except (OSError, ProcessLookupError):
            continue  # exited meanwhile
    return lines


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
        lines = session_command_lines(server.pid)
        assert any("mlflow" in line for line in lines) and not any(marker in line for line in lines)
        assert store.exists()  # the server uses the store named in the file
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


@pytest.mark.fault
def test_make_refuses_a_store_uri_on_its_command_line(tmp_path):
    env = {**os.environ, "RUNS_DIR": str(tmp_path / "runs")}
    done = subprocess.run(["make", "server", "BACKEND_STORE=postgresql://genbench:hunter2@db-host/genbench"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "hunter2" not in done.stdout + done.stderr
    assert "set it in the environment (BACKEND_STORE=... make server)" in done.stderr
