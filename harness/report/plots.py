"""The report's plots, from what was recorded: the objective against each swept parameter, trade-offs
with their Pareto fronts, loss curves of each family's best trial (the curves the family declared,
read from its run's tags), parameter importances, wall times and seed re-runs."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import seaborn as sns
from matplotlib.ticker import MaxNLocator
from mlflow import MlflowClient

from harness import keys
from harness.canvas import new_figure, save_figure
from harness.keys import Tag
from harness.report.records import StudyRecord
from harness.report.tables import best_per_family, confidence

SMOOTHING = 0.6  # exponential moving average weight of the smoothed loss curves
BESIDE_OBJECTIVE = (keys.split_key("val", "kl"), keys.split_key("val", "recon_mse"))  # drawn beside it when logged


def pareto_mask(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Points not dominated when both coordinates are minimised."""
    return np.array([not np.any((x <= x[i]) & (y <= y[i]) & ((x < x[i]) | (y < y[i]))) for i in range(len(x))])


def _column(frame: pd.DataFrame, key: str) -> pd.Series | None:
    return frame[key] if key in frame else frame.get(f"metrics.{key}")


def _direction(record: StudyRecord, key: str) -> str:
    if key in record.objectives:
        return record.directions[record.objectives.index(key)]
    return keys.direction(key) or "minimize"


def plot_objective_vs_params(record: StudyRecord, out: Path) -> list[Path]:
    done = record.complete
    metrics = [record.objective] + [k for k in BESIDE_OBJECTIVE if f"metrics.{k}" in done and k != record.objective
                                    and done[f"metrics.{k}"].notna().any()]
    paths = []
    for param, log in record.swept.items():
        column = f"params.{param}"
        if column not in done or not pd.api.types.is_numeric_dtype(done[column]):
            continue
        fig = new_figure(4.2 * len(metrics), 3.4)
        axes = fig.subplots(1, len(metrics), squeeze=False)
        for ax, metric in zip(axes[0], metrics):
            y = _column(done, metric)
            sns.scatterplot(x=done[column], y=y, hue=done["family"], ax=ax, legend=ax is axes[0][0])
            if log:
                ax.set_xscale("log")
            if (y > 0).all() and y.max() / max(y.min(), 1e-12) > 20:
                ax.set_yscale("log")
            ax.set_xlabel(param)
            ax.set_ylabel(keys.label(metric))
        fig.suptitle(f"{record.name}: {', '.join(metrics)} vs {param}")
        paths.append(save_figure(fig, out / f"vs_{param}.png"))
    return paths


def plot_tradeoff(record: StudyRecord, x: str, y: str, out: Path, name: str) -> Path | None:
    done = record.complete
    xs, ys = _column(done, x), _column(done, y)
    if xs is None or ys is None or xs.isna().any() or ys.isna().any() or len(done) < 2:
        return None
    signs = [1.0 if _direction(record, key) == "minimize" else -1.0 for key in (x, y)]
    front = pareto_mask(signs[0] * xs.to_numpy(float), signs[1] * ys.to_numpy(float))
    fig = new_figure(5.2, 4)
    ax = fig.subplots()
    sns.scatterplot(x=xs, y=ys, hue=done["family"], ax=ax)
    order = np.argsort(xs.to_numpy()[front])
    ax.plot(xs.to_numpy()[front][order], ys.to_numpy()[front][order], "-o", color="crimson", label="Pareto front")
    for label, px, py in zip(done["number"], xs, ys):
        ax.annotate(str(int(label)), (px, py), fontsize=7, alpha=0.7)
    for values, set_scale in ((xs, ax.set_xscale), (ys, ax.set_yscale)):
        if (values > 0).all() and values.max() / values.min() > 20:
            set_scale("log")
    ax.set_xlabel(keys.label(x))
    ax.set_ylabel(keys.label(y))
    ax.legend(fontsize=8)
    better = ", ".join(f"{k} {'lower' if s > 0 else 'higher'}" for k, s in zip((x, y), signs))
    ax.set_title(f"{y} vs {x}\n(better: {better}; red: Pareto front)", fontsize=10)
    return save_figure(fig, out / name)


def plot_loss_curves(record: StudyRecord, client: MlflowClient, out: Path) -> list[Path]:
    """Best trial per family: raw (faint) and smoothed curves of the losses its family declared."""
    paths = []
    curves_of = record.table.set_index("number").get(f"tags.{Tag.FAMILY_CURVES}", pd.Series(dtype=str))
    for _, best in best_per_family(record).iterrows():
        run_id, declared = best["run_id"], curves_of.get(best["trial"])
        losses = [c for c in (declared or "").split(",") if c]
        histories = {(loss, split): client.get_metric_history(run_id, keys.split_key(split, loss))
                     for loss in losses for split in ("train", "val")}
        if not any(histories.values()):
            continue
        fig = new_figure(4.6 * len(losses), 3.4)
        axes = fig.subplots(1, len(losses), squeeze=False)
        for ax, loss in zip(axes[0], losses):
            for split in ("train", "val"):
                history = histories[(loss, split)]
                if not history:
                    continue
                steps = [m.step for m in history]
                values = pd.Series([m.value for m in history])
                line, = ax.plot(steps, values, alpha=0.3)
                ax.plot(steps, values.ewm(alpha=1 - SMOOTHING).mean(), color=line.get_color(), label=split)
            ax.set_xlabel("steps (the budget's optimizer)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.legend(fontsize=8)
            ax.set_title(f"{keys.label(loss)} (faint: raw, solid: smoothed)")
        fig.suptitle(f"{record.name}: {best['family']}, trial {best['trial']}")
        paths.append(save_figure(fig, out / f"curves_{best['family']}.png"))
    return paths


def plot_importances(record: StudyRecord, out: Path) -> Path | None:
    complete = [t for t in record.study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 3 or len(record.objectives) > 1 or len(record.swept) == 0:
        return None
    try:
        with warnings.catch_warnings():  # "few trials per regime": the title says how many trials there are
            warnings.simplefilter("ignore", UserWarning)
            importances = optuna.importance.get_param_importances(
                record.study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    except (RuntimeError, ValueError):  # e.g. a single distinct value
        return None
    if not importances:
        return None
    fig = new_figure(5.5, max(2.4, 0.8 + 0.35 * len(importances)))
    ax = fig.subplots()
    sns.barplot(x=list(importances.values()), y=list(importances.keys()), ax=ax, color="steelblue")
    ax.set_xlabel("importance (Optuna's PED-ANOVA)")
    ax.set_title(f"{record.name}: what moved {record.objective} ({len(complete)} complete trials)")
    return save_figure(fig, out / "importances.png")


def plot_wall_times(record: StudyRecord, out: Path) -> Path:
    table = record.table.sort_values("number")
    fig = new_figure(max(5, 0.35 * len(table)), 3.2)
    ax = fig.subplots()
    sns.barplot(x=table["number"].astype(int), y=table["duration_s"], hue=table["state"], dodge=False, ax=ax)
    ax.set_xlabel("trial")
    ax.set_ylabel("wall time (s)")
    ax.set_title(f"{record.name}: trial wall times")
    return save_figure(fig, out / "wall_times.png")


def plot_cost(record: StudyRecord, out: Path) -> Path | None:
    """The objective against the training wall-clock of each complete trial (flagged ones hollow), so
    quality can be read against cost: every trial had the same step budget, not the same time."""
    done = record.complete
    seconds = done.get(f"metrics.{keys.TRAIN_SECONDS}")
    if seconds is None or seconds.isna().all() or len(done) < 2:
        return None
    fig = new_figure(5.2, 3.8)
    ax = fig.subplots()
    flagged = ~done["flags"].isin(["none", ""])
    for family, group in done.groupby("family", sort=False):
        line = ax.scatter(group.loc[~flagged, f"metrics.{keys.TRAIN_SECONDS}"], group.loc[~flagged, record.objective],
                          label=family)
        ax.scatter(group.loc[flagged, f"metrics.{keys.TRAIN_SECONDS}"], group.loc[flagged, record.objective],
                   facecolors="none", edgecolors=line.get_facecolor())
    ax.set_xlabel("training wall-clock (s)")
    ax.set_ylabel(keys.label(record.objective))
    ax.legend(fontsize=8)
    ax.set_title(f"{record.name}: score vs cost\n(hollow: flagged)", fontsize=10)
    return save_figure(fig, out / "cost.png")


def plot_confirm(record: StudyRecord, out: Path) -> Path | None:
    if record.confirm.empty or record.objective not in record.confirm:
        return None
    rows = []
    for config, group in record.confirm.groupby(f"tags.{Tag.CONFIG}"):
        mean, half, n = confidence(group[record.objective])
        rows.append({"config": f"{group[f'tags.{Tag.FAMILY}'].iloc[0]} {config}", "mean": mean, "ci": half, "n": n})
    frame = pd.DataFrame(rows).sort_values("mean", ascending=record.minimize)
    fig = new_figure(6, max(2.4, 1.0 + 0.5 * len(frame)))
    ax = fig.subplots()
    ax.errorbar(frame["mean"], frame["config"], xerr=frame["ci"].fillna(0), fmt="o", capsize=4)
    ax.set_xlabel(f"{keys.label(record.objective)}: mean ± 95% CI over fresh seeds")
    ax.set_title(f"{record.name}: seed re-runs")
    return save_figure(fig, out / "confirm.png")
