"""Who holds a TCP port: before `make server` or `make ui` starts MLflow's server, so that a port
already taken is said in one line naming its holder, not as `[Errno 98] Address already in use` deep
in uvicorn's log while the holder (often an orphaned server of ours, on another store) keeps answering.
"""

from __future__ import annotations

import errno
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from harness.core.errors import UserError, redact

LISTEN = "0A"  # the state column of /proc/net/tcp for a listening socket


@dataclass(frozen=True)
class Holder:
    pid: int | None  # None: a process this user cannot see (another user's, another namespace's)
    command: str
    store: str | None  # an MLflow server's backend store (redacted), when its environment is readable


def listening_inodes(port: int) -> set[str]:
    """The socket inodes listening on `port` (IPv4 and IPv6), from /proc/net."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                found.add(fields[9])
    return found


def holder_of(port: int) -> Holder:
    """The process listening on `port`, as far as /proc lets this user see."""
    inodes = {f"socket:[{inode}]" for inode in listening_inodes(port)}
    for entry in Path("/proc").iterdir() if inodes else ():
        if not entry.name.isdigit():
            continue
        try:
            if not any(os.readlink(fd) in inodes for fd in (entry / "fd").iterdir()):
                continue
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # not ours to read, or it ended meanwhile
            continue
        try:
            environ = dict(item.split("=", 1) for item in (entry / "environ").read_text(errors="replace").split("\0")
                           if "=" in item)
        except OSError:
            environ = {}
        store = environ.get("MLFLOW_BACKEND_STORE_URI")
        return Holder(int(entry.name), command, redact(store) if store else None)
    return Holder(None, "", None)


def check_port_free(host: str, port: int, variable: str = "PORT") -> None:
    """Refuse, in one line, a port something already listens on, saying who and what to do."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no holder
        try:
            probe.bind((host, port))
            return
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                return  # a host that is not ours to bind: the server says so itself
    who = holder_of(port)
    where = f"port {port} on {host}"
    if who.pid is None:
        raise UserError(f"{where} is held by a process this user cannot see; choose another {variable}= "
                        "(or ask the machine's owner who listens there)")
    shown = re.sub(r"(://[^:/@\s]+):[^@\s]+@", r"\1:***@", who.command)  # a password on its command line
    shown = shown if len(shown) <= 120 else shown[:117] + "..."
    if who.store is not None or "mlflow" in who.command:
        serving = f", serving {who.store}" if who.store else ""
        raise UserError(f"{where} is held by an MLflow server still running (pid {who.pid}{serving}: {shown}); "
                        f"if it is a leftover, stop it (kill {who.pid}) and start again, else choose another "
                        f"{variable}=")
    raise UserError(f"{where} is held by another program (pid {who.pid}: {shown}); choose another {variable}= "
                    "or stop that program")
