"""`make bench`: measured speeds, printed as a table and written to RUNS_DIR/bench/bench.json.

Training throughput: images/s of every family at 32 and 64 px on the current device, the harness's
fast path (device-resident batches, the device's [speed] defaults, the harness's own training loop with
its on-device loss sums) against a plain PyTorch loop on the same model and the same images (a
torch DataLoader over the float32 tensors, fp32, torch.optim.Adam, `loss.item()` every step: the
way the reports trained), measured in turn in one process: after a warm-up step, three rounds of
about `seconds`/2 each, the best round kept. Family defaults (batch 128; ResNet18-VAE 32 on a
CPU), synthfaces images.

torch.compile: the conv VAE's first steps with and without compilation (inductor's on-disk caches
off: a fresh machine's first trial), its steady-state step time, and the number of steps
compilation needs to pay for itself.

Harness overhead: one real vae_kl_sweep trial (3 rounds of one epoch's steps each, a checkpoint
after round 2, MLflow and Optuna in a scratch RUNS_DIR) with every phase timed (harness/training/phases.py):
the per-round seconds in data, forward/backward, optimizer, validation, per-round scores, and in
what a plain loop does not do at all (tracking, Optuna, the progress bar, checkpoints): that last
share is the overhead. The plain loop's epoch (training + validation loss) on the same model and
data is measured beside it.

Data sampler: batches/second of the device-resident sampler (the whole set on the device, a
batch drawn by index) against a torch DataLoader over the same uint8 tensor (per-image indexing
and collation, then a copy to the device), both ending in the model-range float batch a training
step needs. 50,000 64x64 grayscale images, the size of the Cohn-Kanade set.

Sample-quality evaluation: the seconds of one trial's final scores (vae_kl_sweep's data and
protocol, the auto extractor) when the reference statistics must be computed and when they come
from the cache.

The full scale's workload (also alone: `make workload`): every shipped study's floating-point
operations at SCALE=full, counted (harness/bench/workload.py), and its training time on this device at
the rates measured above at 64 px: each family's FLOP/s is its counted FLOPs per image times its
measured fast-path images/s, so the time is measured throughput, not a peak figure.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import optuna
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from harness.bench.workload import bench_workload, workload_lines
from harness.core.storage import Storage
from harness.data.datasets import ImageSplits, load_dataset, to_model_range
from harness.family import fast_path as speed
from harness.family.contract import Family
from harness.family.fused import template_of
from harness.family.registry import family_names, get_family
from harness.study.studyfile import load_study
from harness.training import phases
from harness.training.loop import Learner, StepCounter, TrainConfig, TrainHooks, train_round
from harness.training.packs import fused_batch, new_member, pack_fast

OVERHEAD_PHASES = ("tracking", "optuna", "progress bar", "checkpoint")  # what a plain loop does not do


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


def bench_evaluation(device: torch.device, storage: Storage) -> dict[str, Any]:
    from harness.scoring.evaluation import SampleQuality, ScoreSettings
    from harness.scoring.extractors import ExtractorContext, resolve_extractor
    from harness.scoring.real_images import score_data

    data = score_data("synthfaces", {"size": 32}, storage.cache_dir)
    extractor, reason = resolve_extractor("auto", ExtractorContext(data, device, storage.extractor_cache, download=False))
    family = get_family("vae")
    torch.manual_seed(0)
    model = family.build(family.defaults, data.channels, data.image_size).to(device)
    timings = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label in ("without_cache", "with_cache"):  # the second finds the first's statistics on disk
            quality = SampleQuality(extractor, reason, data, ScoreSettings(), Path(tmp), device)
            start = time.perf_counter()
            quality.final_scores(family, model)
            timings[label] = time.perf_counter() - start
            timings[f"{label}_reference_sets_computed"] = quality.computed
    return {"benchmark": "final sample-quality scores", "device": str(device), "extractor": extractor.name,
            "generated": quality.final_samples, "reference": f"reference + holdout, {quality.final_samples} each",
            "seconds_without_cache": timings["without_cache"], "seconds_with_cache": timings["with_cache"],
            "reference_sets_computed": [timings["without_cache_reference_sets_computed"],
                                        timings["with_cache_reference_sets_computed"]]}


def _build(family: Family, params: Mapping[str, Any], data: ImageSplits,
           fast: speed.FastPath) -> tuple[nn.Module, dict[str, torch.optim.Optimizer]]:
    torch.manual_seed(0)
    model = fast.prepare(family.build(params, data.channels, data.image_size).to(data.device))
    return model, family.make_optimizers(model, params, fast)  # fused or not as the path says


def _best_rates(runners: Mapping[str, Callable[[int], float]], images_per_step: int,
                seconds: float) -> dict[str, tuple[float, int]]:
    """{name: (images/s, steps per round)}: each runner warmed up (one step: allocations, autotuning,
    compilation), its round sized from two more steps to take about seconds/2 (3 steps at least),
    then three rounds in turn with the others (so a drift of the machine hits all alike), the best
    round kept: on a shared 2-core CPU single rounds of the same loop vary by +-15%."""
    steps = {}
    for name, run_steps in runners.items():
        run_steps(1)
        steps[name] = max(3, min(100_000, int(seconds / 2 / (run_steps(2) / 2))))
    best = dict.fromkeys(runners, 0.0)
    for _ in range(3):
        for name, run_steps in runners.items():
            best[name] = max(best[name], steps[name] * images_per_step / run_steps(steps[name]))
    return {name: (best[name], steps[name]) for name in runners}


def fast_path_runner(family: Family, params: Mapping[str, Any], data: ImageSplits,
                     fast: speed.FastPath) -> Callable[[int], float]:
    """n batches of the harness's own training loop (training.train_round) over device-resident batches -> seconds."""
    model, optimizers = _build(family, params, data, fast)
    counter = StepCounter(optimizers, family.budget_optimizer)
    order = torch.Generator().manual_seed(0)
    batches = (x for _ in itertools.count() for x in data.train_batches(int(params["batch_size"]), order))

    def run_steps(n: int) -> float:
        start = time.perf_counter()
        with fast.applied():  # train_round reads its sums from the device at the end: synchronised
            train_round(Learner(family, model, optimizers, counter, params), itertools.islice(batches, n),
                        sys.maxsize, sys.maxsize, fast)
        return time.perf_counter() - start

    return run_steps


def plain_loader(family: Family, data: ImageSplits, batch_size: int) -> DataLoader:
    """The training images as the reports held them: float32 in the model's range, in host memory."""
    return DataLoader(TensorDataset(to_model_range(data.train.cpu(), family.output_range)), batch_size=batch_size,
                      shuffle=True, drop_last=True)


def plain_steps(family: Family, model: nn.Module, optimizers: Mapping[str, torch.optim.Optimizer],
                batches: Iterable[torch.Tensor], params: Mapping[str, Any], device: torch.device) -> dict[str, float]:
    """The reports' loop: each batch copied to the device, one step, every loss read (`.item()`) at once."""
    totals: dict[str, float] = {}
    for x in batches:
        for key, value in family.train_step(model, x.to(device), optimizers, params, speed.PLAIN, 0.0).items():
            totals[key] = totals.get(key, 0.0) + value.item()
    return totals


def plain_runner(family: Family, params: Mapping[str, Any], data: ImageSplits) -> Callable[[int], float]:
    """n steps of the plain loop -> seconds (every step ends in a read: synchronised)."""
    model, optimizers = _build(family, params, data, speed.PLAIN)
    batches = (x for _ in itertools.count() for (x,) in plain_loader(family, data, int(params["batch_size"])))

    def run_steps(n: int) -> float:
        start = time.perf_counter()
        plain_steps(family, model, optimizers, itertools.islice(batches, n), params, data.device)
        return time.perf_counter() - start

    return run_steps


CPU_BATCH = {"resnet_vae": 32}  # ResNet18-VAE steps take seconds on a CPU: a smaller batch keeps the bench short


def bench_training(device: torch.device, cache_dir: Path, seconds: float, sizes: tuple[int, ...] = (32, 64),
                   families: Iterable[str] | None = None) -> list[dict[str, Any]]:
    fast = speed.Speed().resolve(device)
    rows = []
    for size in sizes:
        data = load_dataset("synthfaces", {"n": 2560, "size": size}, cache_dir).place(device)
        for name in families or family_names():
            family = get_family(name)
            params = family.defaults | ({"batch_size": CPU_BATCH[name]} if device.type == "cpu" and name in CPU_BATCH else {})
            row: dict[str, Any] = {"benchmark": "training", "family": name, "size": size, "device": str(device),
                                   "batch_size": params["batch_size"], "images": f"synthfaces {len(data.train)} train",
                                   "fast_path": fast.params()}
            try:
                rates = _best_rates({"fast": fast_path_runner(family, params, data, fast),
                                     "plain": plain_runner(family, params, data)}, int(params["batch_size"]), seconds)
            except ValueError as e:  # a family that cannot take this size
                row["error"] = str(e)
            else:
                (row["fast_images_per_s"], row["fast_steps"]), (row["plain_images_per_s"], row["plain_steps"]) = (
                    rates["fast"], rates["plain"])
                row["ratio"] = row["fast_images_per_s"] / row["plain_images_per_s"]
            rows.append(row)
    return rows


PACK_SIZES = {"cpu": (4,), "cuda": (4, 8, 16)}  # a CPU step of 16 members at 64 px takes tens of seconds
PACK_PIXELS = {"cpu": (32,), "cuda": (32, 64)}


def pack_runner(family: Family, params: Mapping[str, Any], data: ImageSplits, fast: speed.FastPath,
                size: int) -> Callable[[int], float]:
    """n fused steps of a pack of `size` members (harness/training/packs.py) -> seconds (ends in a read: synchronised)."""
    runs = [new_member(family, params, data, TrainConfig(steps=sys.maxsize, seed=seed, fast=fast), TrainHooks(scorers=[]))
            for seed in range(size)]
    template = template_of(runs[0].model)

    def run_steps(n: int) -> float:
        start = time.perf_counter()
        with fast.applied():
            for _ in range(n):
                outputs, _ = fused_batch(family, template, runs)
            float(sum(v for out in outputs for v in out.values()))  # waits for the device
        return time.perf_counter() - start

    return run_steps


def peak_memory(run_steps: Callable[[int], float], device: torch.device) -> float | None:
    """GiB the device held at most over two steps (None on a CPU, where torch does not count)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    run_steps(2)
    return torch.cuda.max_memory_allocated(device) / 2**30


def bench_packs(device: torch.device, cache_dir: Path, seconds: float, sizes: tuple[int, ...] | None = None,
                families: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Fused packs against one trial at a time: images/s of all members together, per family that
    can be fused, at each pack size of PACK_SIZES (the device's), with peak memory on a GPU; one trial
    on the device's fast path, a pack on the path a packed trial gets (packs.pack_fast)."""
    fast = speed.Speed().resolve(device)
    rows = []
    for size in sizes or PACK_PIXELS.get(device.type, (32,)):
        data = load_dataset("synthfaces", {"n": 2560, "size": size}, cache_dir).place(device)
        for name in families or family_names():
            family = get_family(name)
            if family.fused is None:
                continue
            params = family.defaults | ({"batch_size": CPU_BATCH[name]} if device.type == "cpu" and name in CPU_BATCH else {})
            batch = int(params["batch_size"])
            runners = {"alone": fast_path_runner(family, params, data, fast)}
            runners |= {f"pack{p}": pack_runner(family, params, data, pack_fast(fast), p)
                        for p in PACK_SIZES.get(device.type, (4,))}
            rates = {}
            for key, run_steps in runners.items():  # each runner's own images per step
                members = 1 if key == "alone" else int(key.removeprefix("pack"))
                rates |= _best_rates({key: run_steps}, batch * members, seconds)
            row: dict[str, Any] = {"benchmark": "packs", "family": name, "size": size, "device": str(device),
                                   "batch_size": batch, "images_per_s": {k: v[0] for k, v in rates.items()},
                                   "peak_gib": {k: peak_memory(r, device) for k, r in runners.items()}}
            row["speedup"] = {k: v / row["images_per_s"]["alone"] for k, v in row["images_per_s"].items() if k != "alone"}
            rows.append(row)
    return rows


def pack_lines(rows: list[dict[str, Any]], device_name: str) -> list[str]:
    lines = [f"fused packs on {device_name}: images/s of all members together (speed-up over one trial at a time)"]
    for r in rows:
        cells = "  ".join(f"{k}: {v:.0f} ({r['speedup'][k]:.2f}x"
                          + (f", {r['peak_gib'][k]:.2f} GiB)" if r["peak_gib"][k] is not None else ")")
                          for k, v in r["images_per_s"].items() if k != "alone")
        alone = r["images_per_s"]["alone"]
        lines.append(f"{r['family']:<12} {r['size']:>3}px batch {r['batch_size']:>4}: alone {alone:.0f}  {cells}")
    return lines


def bench_compile(device: torch.device, cache_dir: Path, seconds: float) -> dict[str, Any]:
    """Is torch.compile worth it for a trial? Its first steps against eager's, and the steady state."""
    size = 64 if device.type == "cuda" else 32
    record: dict[str, Any] = {"benchmark": "torch.compile", "family": "vae", "size": size, "device": str(device)}
    if device.type == "cpu" and not speed.has_c_compiler():
        return record | {"skipped": "no C compiler: torch.compile on a CPU needs one (CC)"}
    family = get_family("vae")
    params = family.defaults
    data = load_dataset("synthfaces", {"n": 2560, "size": size}, cache_dir).place(device)
    eager = speed.Speed().resolve(device)
    runners = {"eager": fast_path_runner(family, params, data, eager),
               "compiled": fast_path_runner(family, params, data, dataclasses.replace(eager, compile=True))}
    cached_in = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    try:
        # Cold: an empty inductor cache, as for the first trial on a fresh machine (later trials on
        # the same machine reuse the compiled kernels and compile in a fraction of the time).
        with tempfile.TemporaryDirectory() as cold:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = cold
            try:
                for label, run_steps in runners.items():
                    record[f"{label}_first_2_steps_s"] = run_steps(2)  # compilation happens here
            finally:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR")
                os.environ.update({"TORCHINDUCTOR_CACHE_DIR": cached_in} if cached_in is not None else {})
        rates = _best_rates(runners, int(params["batch_size"]), seconds)
    except Exception as e:  # noqa: BLE001 - a compiler failure is a finding, not a crash of the bench
        return record | {"skipped": f"torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    finally:
        torch._dynamo.reset()
    for label, (rate, _) in rates.items():
        record[f"{label}_step_ms"] = 1000 * int(params["batch_size"]) / rate
    extra = record["compiled_first_2_steps_s"] - record["eager_first_2_steps_s"]
    saved = (record["eager_step_ms"] - record["compiled_step_ms"]) / 1000
    record["compile_seconds"] = extra
    record["break_even_steps"] = extra / saved if saved > 0 else None  # None: it never pays off
    return record


def bench_overhead(device: torch.device, storage: Storage) -> dict[str, Any]:
    """One real, profiled vae_kl_sweep trial of 3 rounds of an epoch's steps each, and the plain loop's
    epochs on the same model and data."""
    from harness.family.space import suggest
    from harness.search.runner import run_study
    from harness.search.session import open_session

    epochs = 3
    spec = load_study("vae_kl_sweep").with_overrides(trials=1)
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Storage.from_env({"RUNS_DIR": str(Path(tmp) / "runs")})
        scratch.prepare()
        storage.cache_dir.mkdir(parents=True, exist_ok=True)  # data, extractor, reference stats: shared with RUNS_DIR
        scratch.cache_dir.symlink_to(storage.cache_dir.resolve(), target_is_directory=True)
        session = open_session(spec, scratch, str(device), "overhead: warming the caches for one vae_kl_sweep trial")
        session.quality.warm()  # computed once per dataset in real use; `evaluation` above measures that cost
        per_epoch_steps = len(session.data.train) // int(spec.spaces["vae"]["batch_size"].value)
        spec = dataclasses.replace(spec, steps=epochs * per_epoch_steps, rounds=epochs, checkpoint_every=2)
        with phases.profiling(device) as profile:
            run_study(spec, scratch, str(device), profiler=profile)
    per_trial = ("final scores", "run artifacts")
    per_epoch = {name: seconds / epochs for name, seconds in profile.seconds.items() if name not in per_trial}
    epoch_seconds = sum(per_epoch.values())
    overhead = sum(per_epoch.get(name, 0.0) for name in OVERHEAD_PHASES)

    family = get_family("vae")
    params = suggest(optuna.trial.FixedTrial({"kl_weight": spec.grid["kl_weight"][0]}), spec.spaces["vae"])
    data = session.data
    model, optimizers = _build(family, params, data, speed.PLAIN)
    loader = plain_loader(family, data, int(params["batch_size"]))
    plain = []
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        model.train()
        plain_steps(family, model, optimizers, (x for (x,) in loader), params, device)
        model.eval()
        with torch.no_grad():  # the reports' validation loss, every epoch
            for (x,) in DataLoader(TensorDataset(to_model_range(data.val.cpu(), family.output_range)),
                                   batch_size=int(params["batch_size"])):
                family.eval_step(model, x.to(device), params)["loss"].item()
        plain.append(time.perf_counter() - start)
    return {"benchmark": "harness overhead", "device": str(device), "study": "vae_kl_sweep, 1 trial",
            "epochs": epochs, "checkpoint_every": 2, "train_images": len(data.train), "fast_path": session.fast.params(),
            "per_epoch_seconds": per_epoch, "epoch_seconds": epoch_seconds, "overhead_seconds": overhead,
            "overhead_fraction": overhead / epoch_seconds, "overhead_phases": list(OVERHEAD_PHASES),
            "per_trial_seconds": {name: profile.seconds.get(name, 0.0) for name in per_trial},
            "plain_epoch_seconds": sum(plain) / epochs}


def run_workload(device: torch.device, storage: Storage, seconds: float = 2.0) -> str:
    """`make workload`: the 64 px training rates, then the workload table (RUNS_DIR/bench/workload.json)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"make workload on {name}: training rates at 64 px, about {seconds:g} s each, then the counts", flush=True)
    training = bench_training(device, storage.cache_dir, seconds, sizes=(64,))
    rows = bench_workload(training, storage.cache_dir)
    storage.bench_dir.mkdir(parents=True, exist_ok=True)
    (storage.bench_dir / "workload.json").write_text(json.dumps({"device_name": name, "training": training,
                                                                 "workload": rows}, indent=2))
    return "\n".join(training_table(training, name) + workload_lines(rows, name)
                     + [f"written to {storage.bench_dir / 'workload.json'}"])


def run(device: torch.device, storage: Storage, seconds: float = 2.0) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"make bench on {name} ({torch.get_num_threads()} threads), about {seconds:g} s per measurement", flush=True)
    training = bench_training(device, storage.cache_dir, seconds)
    packs = bench_packs(device, storage.cache_dir, seconds)
    workload = bench_workload(training, storage.cache_dir)
    compiled = bench_compile(device, storage.cache_dir, seconds)
    overhead = bench_overhead(device, storage)
    rows = bench_sampler(device, seconds=seconds)
    evaluation = bench_evaluation(device, storage)
    out_dir = storage.bench_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"machine": platform.node(), "processor": platform.processor() or platform.machine(),
              "torch": torch.__version__, "threads": torch.get_num_threads(), "device_name": name,
              "training": training, "packs": packs, "workload": workload, "compile": compiled, "overhead": overhead,
              "rows": rows, "evaluation": evaluation}
    (out_dir / "bench.json").write_text(json.dumps(record, indent=2))
    return "\n".join(training_table(training, name) + pack_lines(packs, name) + workload_lines(workload, name)
                     + [compile_line(compiled)] + overhead_lines(overhead)
                     + sampler_lines(rows, record) + [evaluation_line(evaluation), f"written to {out_dir / 'bench.json'}"])


def training_table(rows: list[dict[str, Any]], device_name: str) -> list[str]:
    switches = ", ".join(f"{k.removeprefix('speed.')}={'on' if v else 'off'}" for k, v in rows[0]["fast_path"].items())
    lines = [f"training images/s on {device_name}: fast path (resident data, {switches}) "
             "vs a plain loop (DataLoader, fp32, torch.optim.Adam, loss.item() every step)",
             f"{'family':<12} {'px':>3} {'batch':>5} {'fast':>9} {'plain':>9} {'ratio':>6}"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['family']:<12} {r['size']:>3} {r['batch_size']:>5} n/a: {r['error'][:60]}")
        else:
            lines.append(f"{r['family']:<12} {r['size']:>3} {r['batch_size']:>5} {r['fast_images_per_s']:>9.0f} "
                         f"{r['plain_images_per_s']:>9.0f} {r['ratio']:>6.2f}")
    return lines


def compile_line(r: dict[str, Any]) -> str:
    if "skipped" in r:
        return f"torch.compile ({r['family']} {r['size']}px): skipped, {r['skipped']}"
    pays = (f"pays off after {r['break_even_steps']:.0f} steps" if r["break_even_steps"] is not None
            else "never pays off (no faster per step)")
    return (f"torch.compile ({r['family']} {r['size']}px): {r['compile_seconds']:.1f} s to compile (cold caches), "
            f"{r['eager_step_ms']:.1f} -> {r['compiled_step_ms']:.1f} ms/step, {pays}")


def overhead_lines(r: dict[str, Any]) -> list[str]:
    phases_text = ", ".join(f"{k} {v:.3f}" for k, v in sorted(r["per_epoch_seconds"].items(), key=lambda kv: -kv[1]))
    return [f"harness overhead ({r['study']}, {r['epochs']} epochs, {r['train_images']} training images, "
            f"checkpoint every {r['checkpoint_every']}): {r['overhead_seconds']:.3f} s of a {r['epoch_seconds']:.2f} s "
            f"epoch in {' + '.join(r['overhead_phases'])} = {100 * r['overhead_fraction']:.1f}%; "
            f"the plain loop's epoch (train + validation loss): {r['plain_epoch_seconds']:.2f} s",
            f"  seconds per epoch by phase: {phases_text}; once per trial: "
            + ", ".join(f"{k} {v:.2f}" for k, v in r["per_trial_seconds"].items())]


def sampler_lines(rows: list[dict[str, Any]], record: dict[str, Any]) -> list[str]:
    lines = [f"data sampler on {record['device_name']} ({record['threads']} threads), {rows[0]['images']}, batches/s:",
             f"{'batch':>6} {'resident':>10} {'loader 0w':>10} {'loader 2w':>10} {'x vs 0w':>8} {'x vs 2w':>8}"]
    for r in rows:
        lines.append(f"{r['batch_size']:>6} {r['device_resident_batches_per_s']:>10.1f} "
                     f"{r['dataloader_0_workers_batches_per_s']:>10.1f} {r['dataloader_2_workers_batches_per_s']:>10.1f} "
                     f"{r['speedup_vs_0_workers']:>8.1f} {r['speedup_vs_2_workers']:>8.1f}")
    return lines


def evaluation_line(evaluation: dict[str, Any]) -> str:
    return (f"final sample-quality scores ({evaluation['extractor']} extractor, {evaluation['generated']} generated "
            f"vs {evaluation['reference']}): {evaluation['seconds_without_cache']:.2f} s computing the reference "
            f"statistics, {evaluation['seconds_with_cache']:.2f} s with them cached")
