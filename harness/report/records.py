"""A study as it was recorded: its Optuna trials joined with their MLflow runs, read through clients
bound to the store. Nothing here trains or imports the training stack: a report reads what was
recorded, including what each family is (its kind, curves and plots are tags of its runs)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from harness.core import keys
from harness.core.errors import UserError, warn
from harness.core.keys import Attr, Tag
from harness.core.storage import Storage
from harness.tracking.client import runs_frame


@dataclass
class StudyRecord:
    """One study's trials joined with their MLflow runs."""

    name: str
    study: optuna.Study
    table: pd.DataFrame  # one row per trial: number, state, family, objective(s), params.*, metrics.*, tags.*
    confirm: pd.DataFrame  # the seed re-runs: config, seed, objective(s)
    objectives: list[str]  # as logged (fd -> fd_domain or fid)
    directions: list[str]
    swept: dict[str, bool]  # swept parameter (as MLflow names it) -> log scale
    protocol: dict[str, str]  # score.* params shared by the trials
    dataset: str
    parent: dict[str, Any] = field(default_factory=dict)  # the latest parent run's params

    @property
    def objective(self) -> str:
        return self.objectives[0]

    @property
    def minimize(self) -> bool:
        return self.directions[0] == "minimize"

    @property
    def complete(self) -> pd.DataFrame:
        done = self.table[(self.table["state"] == "COMPLETE") & self.table[self.objective].notna()]
        return done.sort_values(self.objective, ascending=self.minimize)

    @property
    def ranked(self) -> pd.DataFrame:
        """The complete trials that may be called best: none excluded by a collapsed or did-not-learn flag."""
        done = self.complete
        return done[done["excluded"] != "true"]

    def counts(self) -> dict[str, int]:
        """Trials by state, as a reader names them (surplus apart from failed: trials that stopped at once,
        their point or budget taken by another worker or invocation); states with no trial left out."""
        failure = self.table.get(f"user_attrs_{Attr.FAILURE}", pd.Series("", index=self.table.index)).fillna("")
        surplus = (self.table["state"] == "FAIL") & failure.astype(str).str.startswith("surplus")
        states = self.table.loc[~surplus, "state"].value_counts()
        found = {word: int(states.get(state, 0)) for state, word in STATE_WORDS.items()}
        return {word: n for word, n in {**found, "surplus": int(surplus.sum())}.items() if n}

    def counts_text(self) -> str:
        """`3 trials: 2 complete, 1 running`, or `no trials yet`."""
        total = len(self.table)
        if not total:
            return "no trials yet"
        return f"{total} trial{'s' * (total != 1)}: " + ", ".join(f"{n} {word}" for word, n in self.counts().items())


STATE_WORDS = {"COMPLETE": "complete", "RUNNING": "running", "WAITING": "waiting", "PRUNED": "pruned", "FAIL": "failed"}


def select_studies(storage: Storage, names: list[str] | None = None) -> list[str]:
    """The named studies (a name without its version matches every version), or every study under RUNS_DIR."""
    available = sorted(optuna.get_all_study_names(storage.optuna()))
    if names:
        missing = [n for n in names if n not in available and not any(a.startswith(f"{n}-v") for a in available)]
        if missing:
            raise UserError(f"no study {missing[0]!r} under {storage.runs_dir}; studies there: {', '.join(available) or 'none'}")
        available = [a for a in available if a in names or any(a.startswith(f"{n}-v") for n in names)]
    if not available:
        raise UserError(f"no studies under {storage.runs_dir}; run one first: make study STUDY=smoke")
    return available


def load_studies(storage: Storage, names: list[str] | None = None) -> list[StudyRecord]:
    """The named studies, or every study, whatever state their trials are in (none yet, running,
    failed, pruned); reading is cheap: tables only, no images."""
    selected = select_studies(storage, names)
    rdb, client = storage.optuna(), storage.mlflow()
    return [_load(name, rdb, client) for name in selected]


def _column(frame: pd.DataFrame, key: str, default: Any = None) -> pd.Series:
    return frame[key] if key in frame else pd.Series(default, index=frame.index, dtype=object)


TRIAL_COLUMNS = {"number": "int64", "state": "object", "duration": "timedelta64[ns]"}


def _load(name: str, rdb: optuna.storages.BaseStorage, client: MlflowClient) -> StudyRecord:
    """One study's record. A study may have no MLflow runs (created, then stopped before its first trial)
    or no trials at all, and its trials may be running, failed or pruned: each still gets a record."""
    study = optuna.load_study(study_name=name, storage=rdb)
    identity = study.user_attrs.get(keys.StudyAttr.IDENTITY) or {}
    runs = runs_frame(client, name)
    if runs.empty:
        runs = pd.DataFrame({"run_id": pd.Series(dtype=object), "start_time": pd.Series(dtype="datetime64[ns, UTC]")})
    parents = runs[_column(runs, f"tags.{Tag.KIND}").isin(["study", "confirm"])].sort_values("start_time")
    parent = {k.removeprefix("params."): v for k, v in parents.iloc[-1].items()
              if k.startswith("params.") and pd.notna(v)} if len(parents) else {}
    objectives = (parents.iloc[-1].get(f"tags.{Tag.OBJECTIVE}") or "").split(",") if len(parents) else []
    children = runs[_column(runs, f"tags.{Tag.PARENT}").notna()]
    confirm_flag = _column(children, f"tags.{Tag.CONFIRM}", "")
    trial_runs = children[(confirm_flag != "true") & _column(children, f"tags.{Tag.TRIAL}").notna()].copy()
    trial_runs["number"] = _column(trial_runs, f"tags.{Tag.TRIAL}").astype("int64")
    frame = study.trials_dataframe(attrs=("number", "state", "duration", "user_attrs"))
    if frame.empty:  # no trials: Optuna's frame has no columns at all
        frame = pd.DataFrame({column: pd.Series(dtype=dtype) for column, dtype in TRIAL_COLUMNS.items()})
    table = frame.merge(trial_runs, on="number", how="left", suffixes=("", "_run"))
    table["family"] = _column(table, f"tags.{Tag.FAMILY}")
    table["flags"] = _column(table, f"tags.{Tag.FLAGS}", "").fillna("")
    table["excluded"] = _column(table, f"tags.{Tag.EXCLUDED}", "").fillna("")
    # A running trial has no duration yet: None, so the column is not a timedelta one until converted.
    table["duration_s"] = pd.to_timedelta(table["duration"]).dt.total_seconds()
    if not [o for o in objectives if o]:  # runs logged before the objective tag: resolve the study's names
        extractor = parent.get(keys.ScoreParam.EXTRACTOR, "")
        study_objectives = parent.get("objective", "").split(",") if parent else identity.get("objectives", [])
        objectives = [keys.resolve_objective(o, extractor) if extractor else o for o in study_objectives if o]
    if not objectives:  # neither a parent run nor the study's identity: name the objectives by position
        objectives = [f"objective {i}" for i in range(len(study.directions))]
    for key in objectives:  # blank (NaN) where no trial has logged it yet
        table[key] = _column(table, f"metrics.{key}").astype(float)
    swept: dict[str, bool] = {}
    for trial in study.trials:
        for param, dist in trial.distributions.items():
            if param == "family":
                continue
            plain = param.split(".", 1)[-1]
            swept[plain] = isinstance(dist, (optuna.distributions.FloatDistribution,
                                             optuna.distributions.IntDistribution)) and dist.log
    swept = {p: log for p, log in swept.items() if f"params.{p}" in table and table[f"params.{p}"].nunique() > 1}
    for p in swept:
        try:
            table[f"params.{p}"] = pd.to_numeric(table[f"params.{p}"])
        except (ValueError, TypeError):  # a categorical knob (e.g. schedule) stays text
            continue
        values = table[f"params.{p}"].dropna()
        # A grid's points are categorical to Optuna and carry no log flag: a positive range over 20x is log too.
        swept[p] = swept[p] or bool((values > 0).all() and values.max() / values.min() > 20)
    protocol = {k.removeprefix("params."): str(table[k].dropna().iloc[0]) for k in table
                if k.startswith(f"params.{keys.ScoreParam.PREFIX}") and table[k].notna().any()}
    confirm = children[confirm_flag == "true"].copy()
    for key in objectives:
        confirm[key] = _column(confirm, f"metrics.{key}").astype(float)
    return StudyRecord(name, study, table, confirm, objectives, [d.name.lower() for d in study.directions],
                       swept, protocol, parent.get("dataset") or identity.get("dataset", "?"), parent)


def latent_notes(record: StudyRecord, client: MlflowClient) -> list[str]:
    """Why a family's best trial has no latent arithmetic picture, as its run recorded it (latent/
    arithmetic_absent.txt, written where the data has no labels to pick the groups by)."""
    notes = []
    for family, group in record.ranked.groupby("family", sort=False):
        best = group.iloc[0]
        if "arithmetic" not in str(best.get(f"tags.{Tag.FAMILY_PLOTS}") or "").split(","):
            continue
        try:
            names = {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(best["run_id"], "latent")}
            if keys.Artifact.ARITHMETIC_ABSENT not in names or "arithmetic_chosen.png" in names:  # none, or picked by hand since
                continue
            with tempfile.TemporaryDirectory() as tmp:
                why = Path(client.download_artifacts(best["run_id"], f"latent/{keys.Artifact.ARITHMETIC_ABSENT}", tmp)).read_text().strip()
        except MlflowException as e:  # a run whose artifacts cannot be read: the rest of the report stands
            warn(f"{record.name}: the latent pictures of trial {int(best['number'])} cannot be listed "
                 f"({e.message.splitlines()[0][:120]})")
            continue
        notes.append(f"No latent arithmetic picture for {family} (trial {int(best['number'])}): {why}")
    return notes
