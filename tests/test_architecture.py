"""The shape of the code: no import cycle, a report that reads without the training stack, one owner
for RUNS_DIR's paths and for metric keys, no work at import time, families that say what they are."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from harness.core import keys

PACKAGES = ("harness", "models")
# Packages that train: what reads results (the report, keys, storage) must reach none of them.
TRAINING_STACK = ("harness.training.", "harness.search.", "harness.family.")
STORAGE_OWNER = ("harness/core/storage.py",)
KEYS_OWNER = ("harness/core/keys.py",)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = REPO, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its file (inside functions too)."""
    files = {module_name(p, root): p for package in packages for p in (root / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from pkg import sub` imports the submodule when there is one, else names of pkg
                targets = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in files else node.module
                           for alias in node.names]
            else:
                continue
            edges |= {t for t in targets if t in files and t != name}
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as [a, b, ..., a], or [] when there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return []


def test_the_harness_has_no_import_cycle():
    graph = import_graph()
    assert {"harness.search.runner", "harness.report", "harness.report.records", "models.vae"} <= set(graph)
    assert "harness.search.trial" in graph["harness.search.runner"]  # edges are found, function-level imports included
    assert "harness.training.latent" in graph["harness.search.runner"]
    assert find_cycle(graph) == [], " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_hidden_cycle(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("def later():\n    from pkg.c import thing\n")  # inside a function
    (package / "c.py").write_text("import pkg.a\nthing = 1\n")
    assert find_cycle(import_graph(tmp_path, ("pkg",))) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]


def imported_by(statement: str, libraries: str = "pass") -> dict:
    """What importing does in a fresh interpreter (after `libraries` have done their own import-time work)."""
    code = (f"import json, logging, os, sys; {libraries}; before = dict(os.environ); "
            f"level = logging.getLogger('mlflow').level; {statement}; "
            "print(json.dumps({'modules': sorted(sys.modules), 'environ_changed': dict(os.environ) != before, "
            "'logging_changed': logging.getLogger('mlflow').level != level}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_the_report_imports_neither_the_training_stack_nor_the_models():
    modules = imported_by("import harness.report")["modules"]
    assert "harness.report" in modules
    assert not [m for m in modules if m.startswith(TRAINING_STACK) or m == "models" or m.startswith("models.")]
    assert "torch" not in modules  # it reads what was recorded: no tensors needed


@pytest.mark.slow
def test_importing_does_no_work():
    """No module changes the environment, configures logging or registers the built-in families on import."""
    statement = ("import harness.search.runner, harness.report, harness.search.confirm, harness.cli, harness.bench.speeds, "
                 "harness.bench.workers, harness.family.registry; "
                 "assert not harness.family.registry._BUILTINS, 'the built-in families were registered at import'")
    found = imported_by(statement, "import torch, torchvision, mlflow, optuna, pandas, seaborn, matplotlib")
    assert not found["environ_changed"] and not found["logging_changed"]
    assert not [m for m in found["modules"] if m.startswith("models")]


def sources(exclude: tuple[str, ...] = ()) -> dict[str, str]:
    return {str(p.relative_to(REPO)): p.read_text() for p in (REPO / "harness").rglob("*.py")
            if str(p.relative_to(REPO)) not in exclude}


def test_only_storage_builds_paths_under_runs_dir():
    offenders = {name: line.strip() for name, text in sources(STORAGE_OWNER).items()
                 for line in text.splitlines() if re.search(r"runs_dir\s*/", line)}
    assert offenders == {}


def test_metric_keys_are_built_in_one_module():
    pattern = re.compile(r"""f["'](val|test|train)_\{|["'](val|test|train)_["']\s*\+|\+\s*["']_std["']""")
    offenders = {name: [line.strip() for line in text.splitlines() if pattern.search(line)]
                 for name, text in sources(KEYS_OWNER).items()}
    assert {name: lines for name, lines in offenders.items() if lines} == {}


def test_nothing_guesses_what_a_family_is():
    offenders = {name: [line.strip() for line in text.splitlines() if "hasattr(" in line]
                 for name, text in sources().items()}
    assert {name: lines for name, lines in offenders.items() if lines} == {}


@pytest.mark.parametrize("module", ["harness.report", "harness.report.records", "harness.core.keys", "harness.core.storage"])
def test_readers_do_not_import_the_training_stack(module):
    graph = import_graph()
    seen, todo = set(), [module]
    while todo:  # everything it reaches
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(graph.get(current, ()))
    assert not [m for m in seen if m == "models" or m.startswith(TRAINING_STACK)]


def test_the_names_these_tests_check_are_real_modules():
    """A moved module must not make a check above silently match nothing."""
    graph = import_graph()
    packages = {name for name in graph if (REPO / name.replace(".", "/") / "__init__.py").exists()}
    assert {prefix.rstrip(".") for prefix in TRAINING_STACK} <= packages
    assert {"harness.report", "harness.report.records", "harness.core.keys", "harness.core.storage",
            "harness.family.registry", "harness.search.runner", "harness.search.trial",
            "harness.training.loop", "harness.training.latent"} <= set(graph)
    assert {path for path in STORAGE_OWNER + KEYS_OWNER if not (REPO / path).exists()} == set()


def recorded_names() -> dict[str, str]:
    """value -> its declaration, for every name keys.py declares that no ordinary word could be
    (it holds a '.' or '_'): tags, attributes, score params, artifacts."""
    names = {}
    for declared in (keys.Tag, keys.Attr, keys.ScoreParam, keys.StudyAttr, keys.Artifact):
        for attr, value in vars(declared).items():
            if attr.isupper() and isinstance(value, str) and re.search(r"[._]", value):
                names[value] = f"keys.{declared.__name__}.{attr}"
    return names


def literal_names(source: str, names: dict[str, str]) -> list[str]:
    """The string literals of `source` that spell a recorded name (alone, or as a pandas column of
    runs_frame: params.<name>, tags.<name>) instead of taking it from keys.py."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            bare = re.sub(r"^(params|tags|metrics|attrs|user_attrs)\.", "", node.value)
            if bare in names or bare.startswith(keys.ScoreParam.PREFIX):
                found.append(f"line {node.lineno}: {node.value!r} (use {names.get(bare, 'keys.ScoreParam')})")
    return found


def test_the_guard_finds_recorded_names_spelled_out():
    names = recorded_names()
    source = 'a = run["score.extractor"]\nb = "samples.png"\nc = t.get("params.score.n")\nd = "family"\ne = keys.Artifact.SAMPLES\n'
    assert sorted(hit.split(":")[0] for hit in literal_names(source, names)) == ["line 1", "line 2", "line 3"]


def test_every_recorded_name_comes_from_keys():
    names = recorded_names()
    assert {"score.extractor", "samples.png", "genbench_identity", "arithmetic_absent.txt", "failure_reason"} <= set(names)
    offenders = {name: literal_names(text, names) for name, text in sources(KEYS_OWNER).items()}
    offenders.update({str(p.relative_to(REPO)): literal_names(p.read_text(), names) for p in (REPO / "models").glob("*.py")})
    assert {name: hits for name, hits in offenders.items() if hits} == {}


MAX_MODULE_LINES, MAX_FUNCTION_LINES, MAX_PARAMETERS = 500, 60, 8


def test_modules_and_functions_stay_small():
    """A module a newcomer can read in one sitting, functions that fit on a screen, calls that fit on a line."""
    too_big = []
    for path in [*(REPO / "harness").rglob("*.py"), *(REPO / "models").glob("*.py")]:
        text, where = path.read_text(), str(path.relative_to(REPO))
        if len(text.splitlines()) > MAX_MODULE_LINES:
            too_big.append(f"{where}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            args = node.args
            named = [*args.posonlyargs, *args.args, *args.kwonlyargs]
            count = len(named) + bool(args.vararg) + bool(args.kwarg) - (bool(named) and named[0].arg in ("self", "cls"))
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_FUNCTION_LINES or count > MAX_PARAMETERS:
                too_big.append(f"{where}:{node.lineno} {node.name}: {lines} lines, {count} parameters")
    assert too_big == []


STAGE_PACKAGES = ("core", "data", "family", "training", "scoring", "study", "search", "tracking", "report", "bench")


def test_every_package_has_a_short_init_whose_names_are_real():
    """Each package re-exports its public names (import harness.search; harness.search.run_study); its
    __init__ imports nothing to do so, so that importing one package does not import them all."""
    import importlib

    assert sorted(p.name for p in (REPO / "harness").iterdir() if p.is_dir() and (p / "__init__.py").exists()) == \
        sorted(STAGE_PACKAGES)
    for name in STAGE_PACKAGES:
        package = importlib.import_module(f"harness.{name}")
        assert package.__all__, name
        for public in package.__all__:
            assert getattr(package, public) is not None, f"harness.{name}.{public}"
    with pytest.raises(AttributeError, match="has no attribute 'nothing_here'"):
        importlib.import_module("harness.search").nothing_here


@pytest.mark.slow
def test_importing_the_packages_loads_no_torch():
    modules = imported_by("import " + ", ".join(f"harness.{name}" for name in STAGE_PACKAGES))["modules"]
    assert "torch" not in modules and not [m for m in modules if m.startswith("harness.training.")]
