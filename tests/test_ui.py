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
