"""A study as it was recorded: its Optuna trials joined with their MLflow runs, read through clients
bound to the store. Nothing here trains or imports the training stack: a report reads what was
recorded, including what each family is (its kind, curves and plots are tags of its runs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import pandas as pd
from mlflow import MlflowClient

from harness import keys
from harness.errors import UserError
from harness.keys import Tag
from harness.storage import Storage
from harness.tracking import runs_frame


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


def load_studies(storage: Storage, names: list[str] | None = None) -> list[StudyRecord]:
    """The named studies (a name without its version matches every version), or every study."""
    rdb = storage.optuna()
    available = sorted(optuna.get_all_study_names(rdb))
    if names:
        missing = [n for n in names if n not in available and not any(a.startswith(f"{n}-v") for a in available)]
        if missing:
            raise UserError(f"no study {missing[0]!r} under {storage.runs_dir}; studies there: {', '.join(available) or 'none'}")
        available = [a for a in available if a in names or any(a.startswith(f"{n}-v") for n in names)]
    if not available:
        raise UserError(f"no studies under {storage.runs_dir}; run one first: make study STUDY=smoke")
    client = storage.mlflow()
    return [record for name in available if (record := _load(name, rdb, client)) is not None]


def _load(name: str, rdb: optuna.storages.BaseStorage, client: MlflowClient) -> StudyRecord | None:
    study = optuna.load_study(study_name=name, storage=rdb)
    runs = runs_frame(client, name)
    if runs.empty:
        return None
    kinds = runs.get(f"tags.{Tag.KIND}", pd.Series(dtype=str))
    parents = runs[kinds.isin(["study", "confirm"])].sort_values("start_time")
    parent = {k.removeprefix("params."): v for k, v in parents.iloc[-1].items() if k.startswith("params.")} if len(parents) else {}
    objectives = (parents.iloc[-1].get(f"tags.{Tag.OBJECTIVE}") or "").split(",") if len(parents) else []
    parent_column = f"tags.{Tag.PARENT}"
    children = runs[runs[parent_column].notna()] if parent_column in runs else runs.iloc[:0]
    confirm_flag = children.get(f"tags.{Tag.CONFIRM}", pd.Series("", index=children.index))
    trial_runs = children[(confirm_flag != "true") & children[f"tags.{Tag.TRIAL}"].notna()].copy()
    trial_runs["number"] = trial_runs[f"tags.{Tag.TRIAL}"].astype(int)
    frame = study.trials_dataframe(attrs=("number", "state", "duration", "user_attrs"))
    table = frame.merge(trial_runs, on="number", how="left", suffixes=("", "_run"))
    table["family"] = table.get(f"tags.{Tag.FAMILY}")
    table["flags"] = table.get(f"tags.{Tag.FLAGS}", pd.Series("", index=table.index)).fillna("")
    table["excluded"] = table.get(f"tags.{Tag.EXCLUDED}", pd.Series("", index=table.index)).fillna("")
    table["duration_s"] = table["duration"].dt.total_seconds() if "duration" in table else np.nan
    if not [o for o in objectives if o]:  # runs logged before the objective tag: resolve the study's names
        extractor = parent.get("score.extractor", "")
        objectives = [keys.resolve_objective(o, extractor) if extractor else o
                      for o in parent.get("objective", "").split(",") if o]
    for key in objectives:
        table[key] = table.get(f"metrics.{key}")
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
                if k.startswith("params.score.") and table[k].notna().any()}
    confirm = children[confirm_flag == "true"].copy()
    for key in objectives:
        confirm[key] = confirm.get(f"metrics.{key}")
    return StudyRecord(name, study, table, confirm, objectives, [d.name.lower() for d in study.directions],
                       swept, protocol, parent.get("dataset", "?"), parent)
