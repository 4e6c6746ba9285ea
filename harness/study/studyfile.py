"""Study files: a named, versioned declaration of one search, in TOML (studies/<name>.toml).

Everything that defines the search is in the file: dataset, families, space overrides, sampler,
pruner, trials, the step budget of each trial and its evaluation rounds, objective(s), seed.
The file describes the CPU scale (minutes on a laptop); its [full] table, the reports' scale for a GPU,
overrides what differs there (SCALE=full): the runs of the full scale are a study of their own
(`<name>-v<version>-full`), never mixed with the CPU scale's. Loading validates all of it before anything runs, and
every mistake is refused with a one-line message naming the key and what is valid.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import optuna

from harness.core.errors import UserError
from harness.core.keys import PRUNABLE_SCORE_OBJECTIVES, SCALES, SCORE_OBJECTIVES
from harness.data.datasets import did_you_mean, get_dataset, infer_dataset, resolve_options
from harness.family.fast_path import Speed, speed_settings
from harness.family.registry import NAME, get_family
from harness.family.space import ChoiceParam, FixedParam, Param, describe
from harness.scoring.evaluation import ScoreSettings, score_settings
from harness.study.claims import Claim, check_params, parse_claims
from harness.study.samplers import make_pruner, make_sampler

STUDIES_DIR = Path(__file__).resolve().parents[2] / "studies"

KEYS = {  # every key a study file may have, and what it means
    "name": "the study's name; equals the file name",
    "version": "integer; bump it when the search changes: a new version is a new Optuna study and MLflow experiment",
    "description": "free text",
    "dataset": "[dataset] name = 'synthfaces', plus that dataset's options",
    "families": "list of registered family names",
    "space": "[space.<family>] per parameter: a value fixes it, a [list] gives choices, {low, high, log} a range",
    "sampler": "[sampler] name = grid|tpe|random|qmc|gp|nsgaii, plus its options",
    "pruner": "[pruner] name = none|median|percentile|hyperband|successive_halving|threshold, plus its options",
    "trials": "the budget: finished (complete or pruned) trials the study should have (per family when several)",
    "steps": "the budget of every trial: optimizer steps of the network being judged (the generator of an "
             "adversarial family, its discriminator steps on top; the whole model of an autoencoder)",
    "rounds": "evaluations per trial, evenly spaced in steps: validation, per-round score, sample grid, pruner "
              "(default 5; at most steps)",
    "objective": "val_<metric> of the families, or a list of them for a multi-objective study",
    "seed": "seed of the sampler and of every trial's initialisation and batch order",
    "speed": "[speed] the training fast path: autocast = auto|bf16|off, channels_last = auto|on|off, "
             "fused_adam = auto|on|off, cudnn_benchmark = auto|on|off, compile = off|on",
    "checkpoint_every": "save a resumable checkpoint every N rounds (default 2; 0: never)",
    "scores": "[scores] extractor = auto|inception|domain, round_samples, final_samples, kid_subsets, "
              "kid_subset_size, pr_k, panel = require|warn, flags = exclude|tag",
    "claims": "[[claims]] the seed reports' claims the study tests (says, source, test = near|trend|better_within "
              "and its keys); the report says of each: held, did not hold or inconclusive",
    "full": "[full] the reports' scale (SCALE=full, for a GPU): the keys that differ there, among trials, steps, "
            "rounds, checkpoint_every, [dataset], [space.<family>], [scores], [speed]",
}
FULL_KEYS = ("trials", "steps", "rounds", "checkpoint_every", "dataset", "space", "scores", "speed")
REQUIRED = ("name", "version", "dataset", "families", "trials", "steps", "objective")
RETIRED = {"epochs": "budgets are optimizer steps now: write steps = N (N = epochs x training images / batch size "
                     "for an autoencoder; a GAN's generator takes one step in every k + 1 batches), and bump version"}


@dataclass(frozen=True)
class Objective:
    metric: str  # e.g. val_recon_mse
    direction: str  # minimize | maximize


@dataclass(frozen=True)
class StudySpec:
    name: str
    version: int
    description: str
    path: Path
    dataset: str
    dataset_options: Mapping[str, Any]
    families: tuple[str, ...]
    spaces: Mapping[str, Mapping[str, Param]]  # family -> full space after the file's overrides
    sampler: str
    sampler_options: Mapping[str, Any]
    pruner: str
    pruner_options: Mapping[str, Any]
    trials: int
    steps: int  # per trial, of each family's budget_optimizer
    seed: int
    objectives: tuple[Objective, ...]
    scores: ScoreSettings = ScoreSettings()
    checkpoint_every: int = 2  # rounds
    rounds: int = 5
    speed: Speed = Speed()
    variant: str = ""  # set when the command line swaps the dataset, so those runs are a study of their own
    scale: str = "cpu"  # cpu | full (the file's [full] table on top)
    claims: tuple[Claim, ...] = ()  # the seed reports' claims the study tests (harness/study/claims.py)

    @property
    def study_name(self) -> str:
        """The Optuna study and the MLflow experiment: one per study version (and scale, and dataset variant)."""
        return (f"{self.name}-v{self.version}" + (f"-{self.scale}" if self.scale != "cpu" else "")
                + (f"-{self.variant}" if self.variant else ""))

    def with_dataset(self, dataset: str | None = None, path: str | None = None) -> "StudySpec":
        """The same study on other data (DATASET=, DATA=). A path alone keeps the study's dataset when
        it reads files, else the kind is inferred from the path. Options both datasets have (size,
        seed, fractions) are kept; the runs go to the study `<name>-v<version>-<dataset>[-<file>]`."""
        if not dataset and not path:
            return self
        if dataset is None:
            dataset = self.dataset if "path" in get_dataset(self.dataset).options else infer_dataset(path)
        if dataset == self.dataset and not path:
            return self
        accepted = get_dataset(dataset, "DATASET").all_options
        kept = {k: v for k, v in self.dataset_options.items() if k in accepted and k != "path"}
        if path:
            if "path" not in accepted:
                raise UserError(f"DATA: dataset {dataset} does not read files; give DATASET= of one that does")
            kept["path"] = path
        options = resolve_options(dataset, kept, "DATASET/DATA")
        variant = dataset + (f"-{re.sub(r'[^A-Za-z0-9_.-]', '_', Path(path).name)}" if path else "")
        return replace(self, dataset=dataset, dataset_options=options, variant=variant)

    @property
    def grid(self) -> dict[str, list[Any]] | None:
        """The grid sampler's points per parameter (one family; every list-valued parameter)."""
        if self.sampler != "grid":
            return None
        space = self.spaces[self.families[0]]
        return {name: list(p.choices) for name, p in space.items() if isinstance(p, ChoiceParam)}

    @property
    def grid_size(self) -> int:
        return math.prod(len(values) for values in self.grid.values()) if self.grid else 0

    def make_sampler(self) -> optuna.samplers.BaseSampler:
        """Trial N's draws are seeded by the study seed and N: reproducible, a continued study does not
        replay its first invocation's configurations, and concurrent invocations do not draw alike."""
        return make_sampler(self.sampler, self.sampler_options, self.seed, self.grid)

    def make_pruner(self) -> optuna.pruners.BasePruner:
        return make_pruner(self.pruner, self.pruner_options)

    def with_overrides(self, trials: int | None = None, steps: int | None = None) -> "StudySpec":
        steps = steps or self.steps
        return replace(self, trials=trials or self.trials, steps=steps, rounds=min(self.rounds, steps))

    def identity(self) -> dict[str, Any]:
        """What makes two runs of the study comparable: stored with the Optuna study and checked on resume."""
        return {
            "dataset": self.dataset, "dataset_options": dict(self.dataset_options), "families": list(self.families),
            "space": {f: {n: describe(p) for n, p in s.items()} for f, s in self.spaces.items()},
            "sampler": self.sampler, "objectives": [o.metric for o in self.objectives],
            "steps": self.steps, "rounds": self.rounds, "seed": self.seed, "scores": asdict(self.scores),
        }


def study_names() -> list[str]:
    return sorted(p.stem for p in STUDIES_DIR.glob("*.toml"))


def find_study(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise UserError(f"study file {path} does not exist")
        return path
    candidate = STUDIES_DIR / f"{name_or_path}.toml"
    if not candidate.is_file():
        raise UserError(f"no study {name_or_path!r}{did_you_mean(name_or_path, study_names())} "
                        f"(looked for {_shown(candidate)}); available: {', '.join(study_names())}")
    return candidate


def load_study(name_or_path: str, scale: str = "cpu") -> StudySpec:
    """The study at a scale: "cpu" (the file's top level) or "full" (its [full] table on top)."""
    if scale not in SCALES:
        raise UserError(f"SCALE={scale}: valid scales are {', '.join(SCALES)}")
    path = find_study(name_or_path)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{_shown(path)}: not valid TOML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{_shown(path)}: cannot read: {e}") from None
    return parse_study(data, path, scale)


def at_scale(data: Mapping[str, Any], scale: str, at: str) -> dict[str, Any]:
    """The file's keys at a scale: for "full", its [full] table merged over the top level (tables
    key by key, [space.<family>] parameter by parameter)."""
    full = _typed(data.get("full", {}), dict, at + "full")
    for key in full:
        if key not in FULL_KEYS:
            raise UserError(f"{at}full.{key}: not a key the full scale may change{did_you_mean(key, FULL_KEYS)}; "
                            f"valid: {', '.join(FULL_KEYS)}")
    merged = {k: v for k, v in data.items() if k != "full"}
    if scale == "cpu":
        return merged
    for key, value in full.items():
        if key == "space":
            spaces = dict(_typed(merged.get("space", {}), dict, at + "space"))
            for family, params in _typed(value, dict, at + "full.space").items():
                spaces[family] = {**_typed(spaces.get(family, {}), dict, at + f"space.{family}"),
                                  **_typed(params, dict, at + f"full.space.{family}")}
            merged["space"] = spaces
        elif isinstance(value, dict):
            merged[key] = {**_typed(merged.get(key, {}), dict, at + key), **value}
        else:
            merged[key] = value
    return merged


def parse_study(data: Mapping[str, Any], path: Path, scale: str = "cpu") -> StudySpec:
    at = _shown(path) + ": "
    _check_keys(data, at)
    data = at_scale(data, scale, at)
    if scale != "cpu":
        at = f"{at}(SCALE={scale}) "

    name = _typed(data["name"], str, at + "name")
    if not NAME.match(name) or name != path.stem:
        raise UserError(f"{at}name {name!r} must be lowercase letters, digits and _ and equal the file name {path.stem!r}")
    version = _positive(data["version"], at + "version")
    description = _typed(data.get("description", ""), str, at + "description")
    seed = _typed(data.get("seed", 0), int, at + "seed")
    if seed < 0:
        raise UserError(f"{at}seed: must be >= 0, got {seed}")
    trials = _positive(data["trials"], at + "trials")
    steps = _positive(data["steps"], at + "steps")
    rounds = _positive(data.get("rounds", min(5, steps)), at + "rounds")
    if rounds > steps:
        raise UserError(f"{at}rounds = {rounds} but steps = {steps}: a round needs at least one step; lower rounds")

    dataset_table = dict(_typed(data["dataset"], dict, at + "dataset"))
    dataset = _typed(dataset_table.pop("name", None), str, at + "dataset.name")
    dataset_options = resolve_options(dataset, dataset_table, at + "dataset")
    families = _families(data["families"], at)

    sampler_table = dict(_typed(data.get("sampler", {"name": "tpe"}), dict, at + "sampler"))
    sampler = _typed(sampler_table.pop("name", "tpe"), str, at + "sampler.name")
    pruner_table = dict(_typed(data.get("pruner", {"name": "none"}), dict, at + "pruner"))
    pruner = _typed(pruner_table.pop("name", "none"), str, at + "pruner.name")

    spaces = _spaces(_typed(data.get("space", {}), dict, at + "space"), families, sampler == "grid", at)
    objectives = _objectives(data["objective"], families, at)
    _check_prunable(objectives, pruner, at)
    scores = score_settings(_typed(data.get("scores", {}), dict, at + "scores"), at + "scores")

    checkpoint_every = _typed(data.get("checkpoint_every", 2), int, at + "checkpoint_every")
    if checkpoint_every < 0:
        raise UserError(f"{at}checkpoint_every: must be >= 0 (0: never), got {checkpoint_every}")
    fast = speed_settings(_typed(data.get("speed", {}), dict, at + "speed"), at + "speed")
    claims = parse_claims(data.get("claims", []), at)
    check_params(claims, {p for space in spaces.values() for p in space}, at)
    spec = StudySpec(name, version, description, path, dataset, dataset_options, families, spaces,
                     sampler, sampler_table, pruner, pruner_table, trials, steps, seed, objectives, scores,
                     checkpoint_every, rounds, fast, scale=scale, claims=claims)
    # Build both now so bad options are refused before anything runs.
    make_sampler(sampler, sampler_table, seed, spec.grid, at + "sampler")
    make_pruner(pruner, pruner_table, at + "pruner")
    if sampler == "grid" and trials > spec.grid_size:
        raise UserError(f"{at}trials = {trials} but the grid has {spec.grid_size} points; set trials = {spec.grid_size}")
    return spec


def _check_keys(data: Mapping[str, Any], at: str) -> None:
    for key in data:
        if key in RETIRED:
            raise UserError(f"{at}{key}: {RETIRED[key]}")
        if key not in KEYS:
            raise UserError(f"{at}unknown key {key!r}{did_you_mean(key, KEYS)}; valid keys: {', '.join(KEYS)}")
    for key in REQUIRED:
        if key not in data:
            raise UserError(f"{at}missing key {key!r} ({KEYS[key]})")


def _families(value: Any, at: str) -> tuple[str, ...]:
    family_list = _typed(value, list, at + "families")
    if not family_list:
        raise UserError(f"{at}families: empty; name at least one family")
    families = tuple(_typed(f, str, at + "families") for f in family_list)
    if len(set(families)) != len(families):
        raise UserError(f"{at}families: {list(families)} names a family twice")
    for family in families:
        get_family(family, at + "families")
    return families


def _check_prunable(objectives: Sequence[Objective], pruner: str, at: str) -> None:
    if len(objectives) > 1 and pruner != "none":
        raise UserError(f"{at}pruner: Optuna prunes single-objective studies only; use pruner name = 'none'")
    if pruner != "none" and objectives[0].metric in SCORE_OBJECTIVES and objectives[0].metric not in PRUNABLE_SCORE_OBJECTIVES:
        raise UserError(f"{at}pruner: {objectives[0].metric} is only measured after training; pruning needs a score "
                        "measured every round: objective fd (pruned on val_fd) or a val_ metric, or pruner name = 'none'")


def _spaces(table: Mapping[str, Any], families: tuple[str, ...], grid: bool, at: str) -> dict[str, dict[str, Param]]:
    for family in table:
        if family not in families:
            raise UserError(f"{at}space.{family}: {family!r} is not in families {list(families)}")
    if grid and len(families) > 1:
        raise UserError(f"{at}sampler: the grid sampler takes one family, got {list(families)}; "
                        "use tpe or random for several families")
    spaces = {}
    for family_name in families:
        family = get_family(family_name)
        overrides = _typed(table.get(family_name, {}), dict, f"{at}space.{family_name}")
        space: dict[str, Param] = {}
        for param in overrides:
            if param not in family.space:
                raise UserError(f"{at}space.{family_name}: unknown parameter {param!r}{did_you_mean(param, family.space)}; "
                                f"valid: {', '.join(family.space)}")
        for param, declared in family.space.items():
            where = f"{at}space.{family_name}.{param}"
            if param in overrides:
                space[param] = declared.override(overrides[param], where)
                if grid and not isinstance(space[param], (ChoiceParam, FixedParam)):
                    raise UserError(f"{where}: the grid sampler needs a list of values or one value, not a range")
            else:
                space[param] = FixedParam(declared.default, declared.help, declared.when) if grid else declared
        for param in overrides:  # a knob the study names must be able to exist
            if space[param].when is None:
                continue
            other, needed = space[param].when
            possible = getattr(space[other], "choices", None) or (getattr(space[other], "value", needed),)
            if needed not in possible:
                raise UserError(f"{at}space.{family_name}.{param} only applies when {other} = {needed!r}, "
                                f"but {other} can only be {', '.join(map(repr, possible))}")
        spaces[family_name] = space
    return spaces


def _objectives(value: Any, families: tuple[str, ...], at: str) -> tuple[Objective, ...]:
    metrics = value if isinstance(value, list) else [value]
    if not metrics:
        raise UserError(f"{at}objective: empty; name at least one metric")
    shared = {m: d for m, d in get_family(families[0]).objectives.items()
              if all(m in get_family(f).objectives for f in families)}
    valid = {**SCORE_OBJECTIVES, **shared}
    objectives = []
    for metric in metrics:
        metric = _typed(metric, str, at + "objective")
        if metric not in valid:
            hint = "; fid is fd when the extractor is inception" if metric in ("fid", "kid") else ""
            raise UserError(f"{at}objective: {metric!r} is not a score or metric of {', '.join(families)}"
                            f"{did_you_mean(metric, valid)}; valid: {', '.join(valid)}{hint}")
        objectives.append(Objective(metric, valid[metric]))
    if len({o.metric for o in objectives}) != len(objectives):
        raise UserError(f"{at}objective: {metrics} names a metric twice")
    return tuple(objectives)


def _typed(value: Any, kind: type, where: str) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = {str: "a string", int: "an integer", list: "a list", dict: "a table"}
        raise UserError(f"{where}: expected {names.get(kind, kind.__name__)}, got {value!r}")
    return value


def _positive(value: Any, where: str) -> int:
    value = _typed(value, int, where)
    if value < 1:
        raise UserError(f"{where}: must be >= 1, got {value}")
    return value


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
