"""N worker processes on one study (`make study WORKERS=N`): each runs its share of the trials (so
the study's total is exact) through `python -m harness worker`, on its own GPU when there are GPUs,
else with its share of the CPU threads; they meet in the Optuna storage and the MLflow store.

Which process runs a trial is recorded with it (`worker_identity`), so a rerun on the same machine
can tell at once that a RUNNING trial's process is gone (killed, the machine's session closed)
instead of waiting three missed heartbeats (`worker_is_gone`)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import Any, Mapping

import torch

from harness.core.errors import defer_interrupts
from harness.study.studyfile import StudySpec


def spawn_workers(spec: StudySpec, device: str, workers: int, to_run: int, parent_id: str, pack: int = 1) -> None:
    """Start the workers and wait for them all; a Ctrl-C reaches them too, and they close their runs."""
    gpus = torch.cuda.device_count() if device in ("auto", "cuda") else 0
    threads = max(1, (os.cpu_count() or 1) // workers)
    shares = [to_run // workers + (1 if i < to_run % workers else 0) for i in range(workers)]
    processes = []
    for index, share in enumerate(shares):
        env = {**os.environ, "GENBENCH_WORKER": str(index), "OMP_NUM_THREADS": str(threads)}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(index % gpus)
        command = [sys.executable, "-m", "harness", "worker", str(spec.path), "--parent-run", parent_id,
                   "--share", str(share), "--index", str(index), "--device", "cuda" if gpus else device,
                   "--trials", str(spec.trials), "--steps", str(spec.steps), "--scale", spec.scale, "--pack", str(pack)]
        if spec.variant:
            command += ["--dataset", spec.dataset] + (["--data", spec.dataset_options["path"]]
                                                       if spec.dataset_options.get("path") else [])
        processes.append(subprocess.Popen(command, env=env))
    try:
        for process in processes:
            process.wait()
    except KeyboardInterrupt:  # the workers got the same Ctrl-C: let them close their runs
        defer_interrupts()
        for process in processes:
            process.wait()
        raise


def _process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux /proc), which tells a reused pid from
    the original; None where there is no /proc."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[19])  # field 22; the name in parentheses may hold spaces


def worker_identity(trial_number: int) -> dict[str, Any]:
    """Who runs this trial: recorded as the trial's `worker` user attribute when it starts. The trial
    number is part of it because Optuna copies a failed trial's attributes into its retry."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _process_start(os.getpid()), "trial": trial_number}


def worker_is_gone(worker: Mapping[str, Any], trial_number: int) -> bool:
    """True when the trial's process ran on this machine and no longer exists (or its pid now belongs
    to another process). Trials of other machines are left to the heartbeat."""
    if worker.get("host") != socket.gethostname() or worker.get("trial") != trial_number:
        return False
    pid = int(worker["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's process
        return False
    start = _process_start(pid)
    return worker.get("start") is not None and start is not None and start != worker["start"]
