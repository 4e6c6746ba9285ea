"""N worker processes on one study (`make study WORKERS=N`): each runs its share of the trials (so
the study's total is exact) through `python -m harness worker`, on its own GPU when there are GPUs,
else with its share of the CPU threads; they meet in the Optuna storage and the MLflow store."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from harness.studyfile import StudySpec


def spawn_workers(spec: StudySpec, device: str, workers: int, to_run: int, parent_id: str) -> None:
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
                   "--trials", str(spec.trials), "--steps", str(spec.steps), "--scale", spec.scale]
        if spec.variant:
            command += ["--dataset", spec.dataset] + (["--data", spec.dataset_options["path"]]
                                                       if spec.dataset_options.get("path") else [])
        processes.append(subprocess.Popen(command, env=env))
    try:
        for process in processes:
            process.wait()
    except KeyboardInterrupt:  # the workers got the same Ctrl-C: let them close their runs
        for process in processes:
            process.wait()
        raise
