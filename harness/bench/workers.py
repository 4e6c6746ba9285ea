"""`make bench-workers`: trials/hour of one 8-trial study with 1, 2 and 4 worker processes (and fused
packs), each study a real `python -m harness study` in a scratch RUNS_DIR; RUNS_DIR/bench/workers.json."""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

WORKER_STUDY = """
name = "{name}"
version = 2
description = "make bench-workers: the same 8 trials at each worker count"
families = ["vae"]
trials = 8
steps = {steps}
rounds = 3
seed = 0
objective = "val_recon_mse"
checkpoint_every = 0
[dataset]
name = "synthfaces"
n = 2000
[sampler]
name = "grid"
[space.vae]
kl_weight = [5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2]
"""


def bench_workers(counts: list[int], out_dir: Path, device: str, steps: int = 36, packs: list[int] | None = None) -> str:
    """Trials/hour of one 8-trial study for each worker count (one trial at a time each), then in one
    process with each fused pack size of `packs`: wall time end to end (start-up, the trials, the
    report at the end), in one RUNS_DIR whose caches a warm-up study fills first."""
    import subprocess
    import sys

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "RUNS_DIR": str(Path(tmp) / "runs"), "STORAGE": "", "TRACKING_URI": ""}

        def study(name: str, workers: int, trials: int | None = None, pack: int = 1) -> float:
            path = Path(tmp) / f"{name}.toml"
            path.write_text(WORKER_STUDY.format(name=name, steps=steps))
            command = [sys.executable, "-m", "harness", "study", str(path), "--workers", str(workers), "--device", device,
                       "--pack", str(pack)]
            command += ["--trials", str(trials)] if trials else []
            start = time.perf_counter()
            subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return time.perf_counter() - start

        study("warmup", 1, trials=1)  # the data, the domain extractor and its reference statistics, cached
        for count in counts:
            seconds = study(f"workers{count}", count)
            rows.append({"workers": count, "pack": 1, "trials": 8, "steps": steps, "seconds": seconds,
                         "trials_per_hour": 8 * 3600 / seconds})
        for size in packs or []:
            seconds = study(f"pack{size}", 1, pack=size)
            rows.append({"workers": 1, "pack": size, "trials": 8, "steps": steps, "seconds": seconds,
                         "trials_per_hour": 8 * 3600 / seconds})
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"machine": platform.node(), "cpus": os.cpu_count(), "device": device,
              "gpus": torch.cuda.device_count(), "rows": rows}
    (out_dir / "workers.json").write_text(json.dumps(record, indent=2))
    lines = [f"one study of 8 trials x {steps} steps (conv VAE, 1,600 training images, batch 128), {os.cpu_count()} CPUs, "
             f"{torch.cuda.device_count()} GPU(s):", f"{'workers':>8} {'pack':>5} {'seconds':>9} {'trials/hour':>12}"]
    lines += [f"{r['workers']:>8} {r['pack']:>5} {r['seconds']:>9.1f} {r['trials_per_hour']:>12.0f}" for r in rows]
    return "\n".join(lines + [f"written to {out_dir / 'workers.json'}"])
