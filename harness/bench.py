"""`make bench`: measured speeds, printed as a table and written to RUNS_DIR/bench/bench.json.

Data sampler: batches/second of the device-resident sampler (the whole set on the device, a
batch drawn by index) against a torch DataLoader over the same uint8 tensor (per-image indexing
and collation, then a copy to the device), both ending in the model-range float batch a training
step needs. 50,000 64x64 grayscale images, the size of the Cohn-Kanade set.

Sample-quality evaluation: the seconds of one trial's final scores (vae_kl_sweep's data and
protocol, the auto extractor) when the reference statistics must be computed and when they come
from the cache.
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, TensorDataset

from harness.data import ImageSplits, to_model_range


def _rate(make_epoch: Callable[[], Iterator[torch.Tensor]], device: torch.device, seconds: float) -> float:
    """Batches per second over at least `seconds`, whole epochs restarted as needed."""
    batches, start = 0, time.perf_counter()
    while True:
        for x in make_epoch():
            to_model_range(x)
            batches += 1
            if batches % 20 == 0:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if time.perf_counter() - start >= seconds:
                    return batches / (time.perf_counter() - start)


def bench_sampler(device: torch.device, n: int = 50_000, size: int = 64, batch_sizes: tuple[int, ...] = (128, 512),
                  seconds: float = 2.0) -> list[dict[str, Any]]:
    images = torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    resident = ImageSplits(images, images[:1], images[:1]).place(device)
    generator = torch.Generator().manual_seed(0)
    rows = []
    for batch_size in batch_sizes:
        fast = _rate(lambda: resident.train_batches(batch_size, generator), device, seconds)
        row = {"benchmark": "data sampler", "device": str(device), "images": f"{n}x1x{size}x{size} uint8",
               "batch_size": batch_size, "device_resident_batches_per_s": fast}
        for workers in (0, 2):
            loader = DataLoader(TensorDataset(images), batch_size=batch_size, shuffle=True, drop_last=True,
                                num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0)
            slow = _rate(lambda: (x.to(device, non_blocking=True) for (x,) in loader), device, seconds)
            row[f"dataloader_{workers}_workers_batches_per_s"] = slow
            row[f"speedup_vs_{workers}_workers"] = fast / slow
        rows.append(row)
    return rows


def bench_evaluation(device: torch.device, cache_dir: Path) -> dict[str, Any]:
    from harness.data import load_dataset
    from harness.evaluation import SampleQuality, ScoreSettings
    from harness.extractors import ExtractorContext, resolve_extractor
    from harness.registry import get_family

    data = load_dataset("synthfaces", {"n": 6000, "size": 32}).place(device)
    extractor, reason = resolve_extractor("auto", ExtractorContext(data, device, cache_dir, download=False))
    family = get_family("vae")
    torch.manual_seed(0)
    model = family.build({k: p.default for k, p in family.space.items()}, data.channels, data.image_size).to(device)
    timings = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label in ("without_cache", "with_cache"):  # the second finds the first's statistics on disk
            quality = SampleQuality(extractor, reason, data, ScoreSettings(), Path(tmp))
            start = time.perf_counter()
            quality.final_scores(family, model)
            timings[label] = time.perf_counter() - start
            timings[f"{label}_reference_sets_computed"] = quality.computed
    return {"benchmark": "final sample-quality scores", "device": str(device), "extractor": extractor.name,
            "generated": quality.final_samples, "reference": f"val {len(data.val)} + test {len(data.test)}",
            "seconds_without_cache": timings["without_cache"], "seconds_with_cache": timings["with_cache"],
            "reference_sets_computed": [timings["without_cache_reference_sets_computed"],
                                        timings["with_cache_reference_sets_computed"]]}


def run(device: torch.device, out_dir: Path, cache_dir: Path, seconds: float = 2.0) -> str:
    rows = bench_sampler(device, seconds=seconds)
    evaluation = bench_evaluation(device, cache_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"machine": platform.node(), "processor": platform.processor() or platform.machine(),
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "rows": rows,
              "evaluation": evaluation}
    (out_dir / "bench.json").write_text(json.dumps(record, indent=2))
    lines = [f"data sampler on {record['device_name']} ({record['threads']} threads), {rows[0]['images']}, batches/s:",
             f"{'batch':>6} {'resident':>10} {'loader 0w':>10} {'loader 2w':>10} {'x vs 0w':>8} {'x vs 2w':>8}"]
    for r in rows:
        lines.append(f"{r['batch_size']:>6} {r['device_resident_batches_per_s']:>10.1f} "
                     f"{r['dataloader_0_workers_batches_per_s']:>10.1f} {r['dataloader_2_workers_batches_per_s']:>10.1f} "
                     f"{r['speedup_vs_0_workers']:>8.1f} {r['speedup_vs_2_workers']:>8.1f}")
    lines.append(f"final sample-quality scores ({evaluation['extractor']} extractor, {evaluation['generated']} generated "
                 f"vs {evaluation['reference']}): {evaluation['seconds_without_cache']:.2f} s computing the reference "
                 f"statistics, {evaluation['seconds_with_cache']:.2f} s with them cached")
    lines.append(f"written to {out_dir / 'bench.json'}")
    return "\n".join(lines)


WORKER_STUDY = """
name = "{name}"
version = 1
description = "make bench-workers: the same 8 trials at each worker count"
families = ["vae"]
trials = 8
epochs = {epochs}
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


def bench_workers(counts: list[int], out_dir: Path, device: str, epochs: int = 3) -> str:
    """Trials/hour of one 8-trial study for each worker count: wall time end to end (start-up, the
    trials, the report at the end), in one RUNS_DIR whose caches a warm-up study fills first."""
    import os
    import subprocess
    import sys

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "RUNS_DIR": str(Path(tmp) / "runs"), "STORAGE": "", "TRACKING_URI": ""}

        def study(name: str, workers: int, trials: int | None = None) -> float:
            path = Path(tmp) / f"{name}.toml"
            path.write_text(WORKER_STUDY.format(name=name, epochs=epochs))
            command = [sys.executable, "-m", "harness", "study", str(path), "--workers", str(workers), "--device", device]
            command += ["--trials", str(trials)] if trials else []
            start = time.perf_counter()
            subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return time.perf_counter() - start

        study("warmup", 1, trials=1)  # the data, the domain extractor and its reference statistics, cached
        for count in counts:
            seconds = study(f"workers{count}", count)
            rows.append({"workers": count, "trials": 8, "epochs": epochs, "seconds": seconds, "trials_per_hour": 8 * 3600 / seconds})
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"machine": platform.node(), "cpus": os.cpu_count(), "device": device,
              "gpus": torch.cuda.device_count(), "rows": rows}
    (out_dir / "workers.json").write_text(json.dumps(record, indent=2))
    lines = [f"one study of 8 trials x {epochs} epochs (conv VAE, 1,600 training images), {os.cpu_count()} CPUs, "
             f"{torch.cuda.device_count()} GPU(s):", f"{'workers':>8} {'seconds':>9} {'trials/hour':>12}"]
    lines += [f"{r['workers']:>8} {r['seconds']:>9.1f} {r['trials_per_hour']:>12.0f}" for r in rows]
    return "\n".join(lines + [f"written to {out_dir / 'workers.json'}"])
