"""`python -m harness ...`: what the Makefile targets call.

A user's mistake (UserError) is one line on stderr and exit status 2; Ctrl-C is exit status 130
after the runs are closed; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from pathlib import Path
from typing import Any, NoReturn, Sequence

from harness.core.errors import UserError, restore_interrupts
from harness.core.keys import SCALES


def _int_at_least(minimum: int, what: str):
    """An argparse type: a whole number >= minimum, or a one-line error saying what was expected."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value
    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "a whole number (0 or more)")


def _positive_ints(text: str) -> list[int]:
    """An argparse type: comma-separated positive integers, e.g. 1,2,4."""
    try:
        return [_positive_int(part) for part in text.split(",")]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas (e.g. 1,2,4), got {text!r}") from None


def study_arguments(commands: argparse._SubParsersAction) -> None:
    study = commands.add_parser("study", help="run (or continue) a study")
    study.add_argument("study", help="a name under studies/ (e.g. vae_kl_sweep) or a path to a .toml file")
    study.add_argument("--trials", type=_positive_int, help="override the study's budget of finished trials")
    study.add_argument("--steps", type=_positive_int, help="override the step budget per trial")
    study.add_argument("--scale", choices=SCALES, default="cpu",
                       help="cpu: minutes on a laptop; full: the reports' scale, the file's [full] table (for a GPU)")
    study.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu, cuda, cuda:N")
    study.add_argument("--dataset", help="run on this dataset instead of the study's (e.g. ck, celeba, mnist)")
    study.add_argument("--data", help="path to the data (a .mat/.npz file or a folder); the kind is inferred if --dataset is not given")
    study.add_argument("--workers", type=_positive_int, default=1,
                       help="worker processes on this machine (one per GPU when there are GPUs)")
    study.add_argument("--pack", type=_positive_int,
                       help="train up to this many trials of one family at once as one fused model (default: 1 on a "
                            "CPU, 8 on a GPU); trials that differ in more than learning rates, betas, loss weights "
                            "or the D:G ratio, and WGAN-GP trials, still train one at a time")
    study.set_defaults(run=cmd_study)


def cmd_study(args: argparse.Namespace) -> int:
    from harness.core.storage import Storage
    from harness.search.runner import run_study
    from harness.study.studyfile import load_study

    spec = load_study(args.study, args.scale).with_overrides(trials=args.trials, steps=args.steps)
    spec = spec.with_dataset(args.dataset, args.data)
    if spec.grid is not None and spec.trials > spec.grid_size:
        print(f"note: the grid has {spec.grid_size} points; running at most that many trials")
        spec = spec.with_overrides(trials=spec.grid_size)
    result = run_study(spec, Storage.from_env(), device=args.device, workers=args.workers, pack=args.pack)
    print(result.message)
    return result.exit_code


def worker_arguments(commands: argparse._SubParsersAction) -> None:
    worker = commands.add_parser("worker")  # started by `study --workers N`, not by hand
    worker.add_argument("study")
    for flag in ("--parent-run", "--device", "--dataset", "--data"):
        worker.add_argument(flag)
    worker.add_argument("--scale", default="cpu")
    for flag in ("--share", "--index", "--trials", "--steps"):
        worker.add_argument(flag, type=int)
    worker.add_argument("--pack", type=int, default=1)
    worker.set_defaults(run=cmd_worker)


def cmd_worker(args: argparse.Namespace) -> int:
    from harness.core.storage import Storage
    from harness.search.runner import run_worker
    from harness.study.studyfile import load_study

    spec = load_study(args.study, args.scale).with_overrides(trials=args.trials, steps=args.steps)
    spec = spec.with_dataset(args.dataset, args.data)
    return run_worker(spec, Storage.from_env(), args.device, args.parent_run, args.share, args.index, args.pack)


def _option_value(text: str) -> Any:
    """KEY=VALUE values are read as TOML (32, 0.1, true, [30, 40]); anything else is a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def data_check_arguments(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser("data", help="inspect datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    check = data_commands.add_parser("check", help="count, shape, range, splits, preview grid; optional export")
    check.add_argument("source", help="a file or folder (the kind is inferred), or a dataset name such as synthfaces")
    check.add_argument("--dataset", help="the kind of data when it cannot be inferred")
    check.add_argument("--key", help="the array inside a .mat/.npz file")
    check.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                       help="a dataset option, e.g. size=32 or order=C (repeatable)")
    check.add_argument("--export", type=Path, help="write the images as loaded to this .npz (key 'images')")
    check.add_argument("--preview", type=Path, help="where to write the preview grid (default RUNS_DIR/data-check/)")
    check.set_defaults(run=cmd_data_check)


def cmd_data_check(args: argparse.Namespace) -> int:
    from harness.core.storage import Storage
    from harness.data.check import check

    options = _options(args.option)
    if args.key:
        options["key"] = args.key
    storage = Storage.from_env()
    storage.prepare()
    preview = args.preview or storage.data_check_dir / f"{Path(args.source).stem or 'data'}.png"
    print(check(args.source, args.dataset, options, storage.cache_dir, preview, args.export))
    return 0


def _options(items: Sequence[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--option {item!r}: expected KEY=VALUE, e.g. size=32")
        options[key.strip()] = _option_value(value.strip())
    return options


def validate_scores_arguments(commands: argparse._SubParsersAction) -> None:
    validate = commands.add_parser("validate-scores", help="the validation panel of extractors on a dataset: "
                                   "does each rank broken and damaged images below real ones? table + plot")
    validate.add_argument("source", help="a dataset name (synthfaces) or a file or folder")
    validate.add_argument("--dataset", help="the kind of data when it cannot be inferred")
    validate.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                          help="a dataset option, e.g. size=64 (repeatable)")
    validate.add_argument("--extractors", default="domain",
                          help="comma-separated (domain, inception); with inception, the Spearman rank correlation "
                               "of each other extractor with Inception FID over the panel's sets")
    validate.add_argument("--n", type=_positive_int, help="images per set (default: a study's, 2,000 on a CPU, "
                          "10,000 on a GPU, or what the data has)")
    validate.add_argument("--device", default="auto")
    validate.set_defaults(run=cmd_validate_scores)


def cmd_validate_scores(args: argparse.Namespace) -> int:
    from harness.core.storage import Storage
    from harness.scoring.commands import validate
    from harness.training.devices import resolve_device

    storage = Storage.from_env()
    storage.prepare()
    extractors = [e.strip() for e in args.extractors.split(",") if e.strip()]
    passed, text = validate(args.source, args.dataset, _options(args.option), extractors, args.n,
                            resolve_device(args.device), storage)
    print(text)
    return 0 if passed else 1


def score_arguments(commands: argparse._SubParsersAction) -> None:
    score = commands.add_parser("score", help="score your own images against a dataset with a study's protocol; "
                                "the last line is JSON")
    score.add_argument("source", help="the dataset: a name (synthfaces) or a file or folder")
    score.add_argument("--images", required=True, help="a .npz (key 'images', uint8 N x C x H x W or as data check "
                       "reads arrays) or a folder of PNG/JPEG files")
    score.add_argument("--dataset", help="the kind of data when it cannot be inferred")
    score.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="a dataset option")
    score.add_argument("--extractor", default="auto", help="auto, domain or inception")
    score.add_argument("--device", default="auto")
    score.set_defaults(run=cmd_score)


def cmd_score(args: argparse.Namespace) -> int:
    import json

    from harness.core.storage import Storage
    from harness.scoring.commands import score_files
    from harness.training.devices import resolve_device

    storage = Storage.from_env()
    storage.prepare()
    result = score_files(args.source, args.dataset, _options(args.option), Path(args.images), args.extractor,
                         resolve_device(args.device), storage)
    print(json.dumps(result, sort_keys=True))
    return 0


def bench_arguments(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser("bench", help="measure speeds; table + RUNS_DIR/bench/bench.json")
    bench.add_argument("--device", default="auto")
    bench.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    bench.add_argument("--workers", type=_positive_ints,
                       help="instead: trials/hour of one study at these worker counts, e.g. 1,2,4")
    bench.add_argument("--packs", type=_positive_ints,
                       help="with --workers: also in one process with fused packs of these sizes, e.g. 4,8")
    bench.add_argument("--workload", action="store_true",
                       help="instead: each shipped study's full-scale FLOPs and its training time at this device's rates")
    bench.set_defaults(run=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from harness.bench.speeds import run, run_workload
    from harness.bench.workers import bench_workers
    from harness.core.storage import Storage
    from harness.training.devices import resolve_device

    storage = Storage.from_env()
    storage.prepare()
    if args.workers:
        print(bench_workers(args.workers, storage.bench_dir, args.device, packs=args.packs or []))
        return 0
    if args.workload:
        print(run_workload(resolve_device(args.device), storage, seconds=args.seconds))
        return 0
    print(run(resolve_device(args.device), storage, seconds=args.seconds))
    return 0


def _indexes_or_label(text: str | None) -> list[int] | str | None:
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    return [int(p) for p in parts] if parts and all(p.isdigit() for p in parts) else text


def latent_arguments(commands: argparse._SubParsersAction) -> None:
    latent = commands.add_parser("latent", help="latent-space pictures of a finished run: interpolation, "
                                 "low-variance sampling, vector arithmetic, traversals")
    latent.add_argument("run_id", help="the MLflow run of a COMPLETE trial")
    latent.add_argument("--variance", type=float, default=0.05, help="low-variance sampling around mu ~ U(-1, 1)")
    latent.add_argument("--from", dest="source", help="a label value (neutral) or test-split indexes (3,7,9)")
    latent.add_argument("--to", dest="target", help="a label value (happy) or test-split indexes")
    latent.add_argument("--apply", help="test-split indexes of the faces to move by the vector")
    latent.add_argument("--out", type=Path, help="folder for the PNGs (default RUNS_DIR/latent/RUN_ID)")
    latent.add_argument("--device", default="auto")
    latent.set_defaults(run=cmd_latent)


def cmd_latent(args: argparse.Namespace) -> int:
    import tempfile

    from harness.core.storage import Storage
    from harness.training import latent
    from harness.training.devices import resolve_device
    from harness.training.pictures import save_png

    storage = Storage.from_env()
    storage.prepare()
    out = args.out or storage.latent_dir(args.run_id)
    with tempfile.TemporaryDirectory() as tmp:
        model, family, data = latent.load_run(storage, args.run_id, resolve_device(args.device), Path(tmp))
    source, target, apply = (_indexes_or_label(x) for x in (args.source, args.target, args.apply))
    groups = (source, target) if isinstance(source, str) and isinstance(target, str) else ("neutral", "happy")
    written = latent.make_all(model, family, data, out, args.variance, groups)
    if isinstance(source, list) or isinstance(target, list) or apply is not None:
        if not (isinstance(source, list) and isinstance(target, list) and isinstance(apply, list)):
            raise UserError("--from, --to and --apply take comma-separated test-split indexes together, e.g. "
                            "--from 3,7 --to 1,4 --apply 10,11,12")
        save_png(latent.arithmetic(model, family, data, source, target, apply), out / "arithmetic_chosen.png")
        written.append(out / "arithmetic_chosen.png")
    client = storage.mlflow()
    for path in written:
        client.log_artifact(args.run_id, str(path), "latent")
    print("\n".join(f"wrote {p} (and to run {args.run_id} under latent/)" for p in written))
    return 0


def confirm_arguments(commands: argparse._SubParsersAction) -> None:
    confirm = commands.add_parser("confirm", help="re-train a study's best configurations with fresh seeds")
    confirm.add_argument("study", help="the study (as for `study`)")
    confirm.add_argument("--seeds", type=_positive_int, default=5, help="fresh seeds per configuration (default 5)")
    confirm.add_argument("--top", type=_positive_int, default=1, help="best configurations per family (default 1)")
    confirm.add_argument("--steps", type=_positive_int, help="the study's step budget, if it was run with STEPS=")
    confirm.add_argument("--scale", choices=SCALES, default="cpu", help="the scale the study was run at")
    confirm.add_argument("--families", help="comma-separated families to confirm (default: every family of the study)")
    confirm.add_argument("--device", default="auto")
    confirm.add_argument("--inception", choices=("auto", "on", "off"), default="auto",
                         help="Inception FID beside the study's score on every run (auto: when its weights are installed)")
    confirm.add_argument("--inception-samples", type=_non_negative_int, default=0,
                         help="Inception's images per run (default 0: the study's n on a GPU, 500 on a CPU)")
    confirm.add_argument("--dataset", help="as given to `study`, for a study run on other data")
    confirm.add_argument("--data", help="as given to `study`")
    confirm.set_defaults(run=cmd_confirm)


def cmd_confirm(args: argparse.Namespace) -> int:
    from harness.core.storage import Storage
    from harness.search.confirm import run_confirm
    from harness.study.studyfile import load_study

    spec = load_study(args.study, args.scale).with_overrides(steps=args.steps).with_dataset(args.dataset, args.data)
    result = run_confirm(spec, Storage.from_env(), args.seeds, args.top, device=args.device, inception=args.inception,
                         inception_samples=args.inception_samples,
                         families=[f for f in (args.families or "").split(",") if f] or None)
    print(result.message)
    return result.exit_code


def report_arguments(commands: argparse._SubParsersAction) -> None:
    report = commands.add_parser("report", help="tables, plots and an HTML page per study, from RUNS_DIR")
    report.add_argument("studies", nargs="*", help="study names (e.g. vae_kl_sweep); all studies when none")
    report.add_argument("--out", type=Path, default=Path("reports"), help="where to write (default ./reports)")
    report.set_defaults(run=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from harness.core.storage import Storage
    from harness.report import build

    storage = Storage.from_env()
    storage.check_readable()
    storage.relocate()  # a moved RUNS_DIR's samples and curves are read from where they are now
    pages = build(storage, args.studies or None, args.out)
    print("\n".join(f"wrote {p}" for p in pages))
    return 0


def backend_store(path: str | None) -> str | None:
    """The server's store URI, from a file the user names or the BACKEND_STORE environment variable:
    never from argv, which every user of the machine can read with ps."""
    if path:
        try:
            lines = Path(path).expanduser().read_text().splitlines()
        except OSError as e:
            raise UserError(f"--backend-store-file: cannot read {path} ({e.strerror}); "
                            "give a file whose first line is the store URI") from None
        if not lines or not lines[0].strip():
            raise UserError(f"--backend-store-file: {path} is empty; its first line should be the store URI")
        return lines[0].strip()
    return os.environ.get("BACKEND_STORE") or None


def server_arguments(commands: argparse._SubParsersAction) -> None:
    server = commands.add_parser("server", help="an MLflow tracking server that workers on other machines log to")
    server.add_argument("--host", default="127.0.0.1", help="interface to bind (default loopback; 0.0.0.0 for all)")
    server.add_argument("--port", type=_positive_int, default=5000)
    server.add_argument("--backend-store-file", help="a file whose first line is the store for runs and metrics "
                        "(postgresql://user:password@host/db); or set BACKEND_STORE in the environment. Never a "
                        "URI on the command line: argv shows in ps. Default sqlite:///RUNS_DIR/mlflow.db")
    server.add_argument("--artifacts-destination", help="where the server keeps artifacts (default RUNS_DIR/artifacts)")
    server.add_argument("--workers", type=_positive_int, default=2, help="server processes")
    server.set_defaults(run=cmd_server)


def cmd_server(args: argparse.Namespace) -> int:
    from harness.core.errors import redact
    from harness.core.storage import OPTUNA_TABLES, Storage, check_own_database, check_reachable

    storage = Storage.from_env()
    storage.prepare()
    backend = backend_store(args.backend_store_file) or storage.local_backend_uri
    check_reachable(backend, "BACKEND_STORE")
    check_own_database(backend, "BACKEND_STORE", OPTUNA_TABLES, "Optuna's storage (STORAGE)")
    artifacts = args.artifacts_destination or storage.artifacts_uri
    print(f"MLflow tracking server on http://{args.host}:{args.port}: backend {redact(backend)}, artifacts "
          f"{redact(artifacts)}; workers set TRACKING_URI=http://<this machine>:{args.port} (Ctrl-C stops it)", flush=True)
    from harness.tracking.ui import serve

    return serve(backend, artifacts, args.host, args.port, args.workers)  # Ctrl-C stops every process it started


def ui_arguments(commands: argparse._SubParsersAction) -> None:
    ui = commands.add_parser("ui", help="serve the MLflow UI for RUNS_DIR")
    ui.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    ui.add_argument("--port", type=_positive_int, default=5000)
    ui.add_argument("study", nargs="?", help="print the links to this study's runs and to its trials compared")
    ui.add_argument("--scale", choices=SCALES, default="cpu", help="the study's scale (its experiment's name)")
    ui.set_defaults(run=cmd_ui)


def cmd_ui(args: argparse.Namespace) -> int:
    from harness.core.errors import redact
    from harness.core.storage import Storage
    from harness.tracking.ui import home_links, serve, study_links

    storage = Storage.from_env()
    if storage.tracking_uri.startswith(("http://", "https://")):
        print(f"TRACKING_URI is a tracking server: its UI is at {redact(storage.tracking_uri)}")
        return 0
    storage.check_readable()
    storage.prepare()  # a moved RUNS_DIR's artifact locations put right before the server reads them
    print(f"MLflow UI for {storage.runs_dir} on http://{args.host}:{args.port} (Ctrl-C stops it)", flush=True)
    if args.study:
        from harness.study.studyfile import load_study

        spec = load_study(args.study, args.scale)
        if storage.mlflow().get_experiment_by_name(spec.study_name) is None:
            raise UserError(f"no MLflow experiment {spec.study_name} under {storage.runs_dir}; run the study first")
        links = study_links(storage.mlflow(), spec, f"http://{args.host}:{args.port}")
        print(f"study {spec.study_name}, runs by parent run, sorted by {links.objective}: {links.runs}", flush=True)
        print(f"study {spec.study_name}, its {links.complete} complete trials compared on {links.objective}: "
              f"{links.compare}" if links.compare else f"study {spec.study_name}: no complete trial to compare yet",
              flush=True)
        if links.compare:
            print("  in its charts, flagged trials (collapsed, did not learn) are red, the others blue; a parameter "
                  "on a log scale is drawn on its log10", flush=True)
    else:
        print("\n".join(home_links(storage.mlflow(), f"http://{args.host}:{args.port}")), flush=True)
    return serve(storage.tracking_uri, storage.artifacts_uri, args.host, args.port, 1)


def list_arguments(commands: argparse._SubParsersAction) -> None:
    listing = commands.add_parser("list", help="families, datasets and studies (each study file is validated)")
    listing.set_defaults(run=cmd_list)


def cmd_list(args: argparse.Namespace) -> int:
    from harness.data.datasets import dataset_names, get_dataset
    from harness.family.registry import family_names, get_family
    from harness.family.space import shown
    from harness.study.studyfile import load_study, study_names

    print("families:")
    for name in family_names():
        family = get_family(name)
        print(f"  {name:<12} {family.kind}: {family.help}")
        print("      reported configuration (the seed reports'): "
              + ", ".join(f"{k} = {v:g}" if isinstance(v, float) else f"{k} = {v}" for k, v in family.reported.items()))
        width, ranges = max(map(len, family.space)), {param: shown(p) for param, p in family.space.items()}
        for param, p in family.space.items():
            print(f"      {param:<{width}}  {ranges[param]:<{max(map(len, ranges.values()))}}  default {p.default}  {p.help}")
    print("datasets:")
    for name in dataset_names():
        spec = get_dataset(name)
        options = ", ".join(f"{k} = {v!r}" if v == "" else f"{k} = {v}" for k, v in spec.all_options.items())
        print(f"  {name:<12} {spec.help}; options: {options}")
    print("studies:")
    status = 0
    for name in study_names():
        try:
            spec = load_study(name)
            print(f"  {name:<16} ok: {spec.description}")
        except UserError as e:
            status = 2
            print(f"  {name:<16} INVALID: {e}")
    return status


MLFLOW_QUIET = {"MLFLOW_DISABLE_TELEMETRY": "true",  # no network here, and nobody asked to be counted
                "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # one bar per artifact download is noise
                "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}  # we print one line per trial


class OneLineParser(argparse.ArgumentParser):
    """argparse prints a usage block of several lines for a mistyped option; a user needs one line
    saying what is wrong and where the options are listed. Subcommands inherit the class."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {self.prog}: {message} (`{self.prog} --help` lists the options)", file=sys.stderr)
        sys.exit(2)


# `python -m harness --help` lists them in this order.
COMMANDS = (study_arguments, worker_arguments, data_check_arguments, validate_scores_arguments, score_arguments,
            bench_arguments, latent_arguments, confirm_arguments, report_arguments, server_arguments, ui_arguments,
            list_arguments)


def main(argv: Sequence[str] | None = None) -> int:
    for key, value in MLFLOW_QUIET.items():  # before MLflow is imported: it decides about telemetry then
        os.environ.setdefault(key, value)
    parser = OneLineParser(prog="python -m harness", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    for add_arguments in COMMANDS:  # each command's flags are declared beside its handler
        add_arguments(commands)

    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished trials are kept; run the same command again to continue", file=sys.stderr)
        return 130
    finally:
        restore_interrupts()  # a first Ctrl-C deferred later ones while runs were closed
