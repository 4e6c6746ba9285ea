"""The MLflow server's watchdog: ends the server's whole session when the command that started it
is gone, however it went (SIGKILL, an OOM kill, a cluster job's time limit). MLflow's server runs in
a session of its own so that Ctrl-C reaches only our command, which then stops it; killed outright,
our command could stop nothing, and uvicorn and its workers kept serving on the port. The watchdog
is a small process of its own (it imports nothing heavy), started by `serve` and stopped by it.

    python -m harness.tracking.watchdog SERVER_SESSION
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable

POLL_S = 0.5
STOP_GRACE_S = 5.0  # between SIGTERM and SIGKILL for the server's processes


def session_processes(sid: int) -> list[int]:
    """The live processes (zombies left out) of a session, from /proc; where there is no /proc, the
    session's first process group (the server's: start_new_session) while any of it is alive."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(sid, 0)
        except ProcessLookupError:
            return []
        return [sid]
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, _ppid, _pgrp, session = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:4]
        except (OSError, ValueError):  # it ended meanwhile
            continue
        if int(session) == sid and state != "Z":
            found.append(int(entry.name))
    return found


def signal_session(sid: int, sig: int) -> None:
    """`sig` to the session's first process group (newcomers included) and to each of its processes."""
    for pid in {-sid, *session_processes(sid)}:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            continue


def end_session(sid: int, grace: float = STOP_GRACE_S, reap: Callable[[], object] = lambda: None) -> None:
    """SIGTERM to every process of the session, up to `grace` seconds for them to end, then SIGKILL to
    what is left and up to `grace` again; `reap`: called while waiting (the leader's parent reaps it,
    so that it does not count as alive)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        signal_session(sid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            reap()
            if not session_processes(sid):
                return
            time.sleep(0.1)


def watch(sid: int) -> int:
    """Until our parent (the command that started the server) is gone, then end the server's session;
    return at once when the server's session has ended by itself."""
    parent = os.getppid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the command's to handle; it stops us after
    while os.getppid() == parent:  # reparented: the command died
        if not session_processes(sid):
            return 0
        time.sleep(POLL_S)
    end_session(sid)
    return 0


if __name__ == "__main__":
    sys.exit(watch(int(sys.argv[1])))
