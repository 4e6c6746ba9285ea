"""The report's plots, from what was recorded: the objective against each swept parameter, trade-offs
with their Pareto fronts, loss curves of each family's best trial (the curves the family declared,
read from its run's tags; per-step training points raw and smoothed), the objective against steps and
wall-clock as the rounds went, each trial's distance at every scale, parameter importances, wall
times and seed re-runs. Figures are at most
MAX_WIDTH_INCHES wide (1,400 px at the canvas's 100 dpi), to be read on a laptop screen."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from mlflow import MlflowClient

from harness.core import keys
from harness.core.canvas import new_figure, save_figure
from harness.core.keys import Tag
from harness.report.records import StudyRecord
from harness.report.tables import best_per_family, confidence, scale_order

MAX_WIDTH_INCHES = 14.0
MAX_COLUMNS = 3  # panels a row
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


def _history(client: MlflowClient, run_id: str, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of a metric's logged history, in step order."""
    points = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
    return [m.step for m in points], [m.value for m in points]


def _logged_scale(ax: Axes, values: list[float]) -> None:
    """A log y axis when the values are positive and span more than 20x."""
    if values and min(values) > 0 and max(values) / min(values) > 20:
        ax.set_yscale("log")


def _panels(count: int, width: float, height: float) -> tuple[Figure, list[Axes]]:
    """`count` panels, at most MAX_COLUMNS a row, no wider than MAX_WIDTH_INCHES; unused ones hidden."""
    columns = min(MAX_COLUMNS, count)
    rows = -(-count // columns)
    width = min(width, MAX_WIDTH_INCHES / columns)
    fig = new_figure(width * columns, height * rows + 0.5)
    axes = list(fig.subplots(rows, columns, squeeze=False).flatten())
    for ax in axes[count:]:
        ax.set_visible(False)
    return fig, axes[:count]


def plot_loss_curves(record: StudyRecord, client: MlflowClient, out: Path) -> list[Path]:
    """Best trial per family, the losses its family declared: training every few steps raw (faint) and
    smoothed (EMA; the round means for runs logged before per-step curves), validation each round."""
    paths = []
    curves_of = record.table.set_index("number").get(f"tags.{Tag.FAMILY_CURVES}", pd.Series(dtype=str))
    for _, best in best_per_family(record).iterrows():
        run_id, declared = best["run_id"], curves_of.get(best["trial"])
        losses = [c for c in (declared or "").split(",") if c]
        per_step = {loss: _history(client, run_id, keys.curve_key(keys.split_key("train", loss))) for loss in losses}
        per_round = {(loss, split): _history(client, run_id, keys.split_key(split, loss))
                     for loss in losses for split in ("train", "val")}
        losses = [loss for loss in losses if per_step[loss][0] or per_round[(loss, "train")][0]
                  or per_round[(loss, "val")][0]]
        if not losses:
            continue
        fig, axes = _panels(len(losses), 4.4, 3.3)
        for ax, loss in zip(axes, losses):
            drawn: list[float] = []
            steps, values = per_step[loss]
            if steps:
                ax.plot(steps, values, color="C0", alpha=0.3, linewidth=1)
                smooth = pd.Series(values).ewm(alpha=1 - keys.CURVE_SMOOTHING).mean()
                every = steps[1] - steps[0] if len(steps) > 1 else 1
                ax.plot(steps, smooth, color="C0", linewidth=1.8,
                        label=f"training, every {every} steps" if every > 1 else "training, every step")
            elif per_round[(loss, "train")][0]:
                steps, values = per_round[(loss, "train")]
                ax.plot(steps, values, "o-", color="C0", label="training, round means")
            drawn += values
            steps, values = per_round[(loss, "val")]
            if steps:
                ax.plot(steps, values, "o-", color="C1", label="validation, each round")
                drawn += values
            _logged_scale(ax, drawn)
            ax.set_xlabel("optimizer steps (the budget's)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(keys.label(loss))
            ax.legend(fontsize=8)
        fig.suptitle(f"{record.name}: {best['family']}, trial {best['trial']} "
                     "(training: faint raw, solid smoothed)", fontsize=10)
        paths.append(save_figure(fig, out / f"curves_{best['family']}.png"))
    return paths


def _round_key(record: StudyRecord, client: MlflowClient, run_ids: list[str]) -> str:
    """The key that carries the objective round by round: the objective itself when it is a split's
    (val_recon_mse), else its per-round validation counterpart where one was logged (fd_domain is
    scored once at the end; val_fd_domain after every round, on fewer samples)."""
    if keys.split_of(record.objective) is not None:
        return record.objective
    counterpart = keys.split_key("val", record.objective)
    return counterpart if any(client.get_metric_history(r, counterpart) for r in run_ids[:3]) else record.objective


def plot_quality_vs_cost(record: StudyRecord, client: MlflowClient, out: Path) -> Path | None:
    """The objective as every trial went, against optimizer steps and against wall-clock, one colour
    per family, each family's best trial bold (a star: its final objective where that is scored
    apart from the rounds). From the per-round histories each run logged."""
    trials = record.table[record.table["run_id"].notna()] if "run_id" in record.table else record.table.iloc[:0]
    if trials.empty:
        return None
    ranked = best_per_family(record)
    best = dict(zip(ranked["family"], ranked["trial"]))
    key = _round_key(record, client, list(trials["run_id"]))
    fig, axes = _panels(2, 5.4, 3.9)
    colours = {family: f"C{i}" for i, family in enumerate(dict.fromkeys(trials["family"].dropna()))}
    drawn: list[float] = []
    for _, trial in trials.iterrows():
        steps, values = _history(client, trial["run_id"], key)
        if not steps:
            continue
        walls = dict(zip(*_history(client, trial["run_id"], keys.WALL_SECONDS)))
        is_best = best.get(trial["family"]) == trial["number"]
        style = {"color": colours.get(trial["family"], "grey"), "linewidth": 2.2 if is_best else 0.9,
                 "alpha": 1.0 if is_best else 0.45, "marker": "o" if is_best else ".",
                 "label": f"{trial['family']} (best: trial {int(trial['number'])})" if is_best else None}
        axes[0].plot(steps, values, **style)
        timed = [(walls[s], v) for s, v in zip(steps, values) if s in walls]
        if timed:
            axes[1].plot(*zip(*timed), **style)
        drawn += values
        final = trial.get(record.objective)
        if is_best and key != record.objective and pd.notna(final):
            axes[0].plot(steps[-1], final, "*", markersize=13, color=style["color"], markeredgecolor="black")
            if timed:
                axes[1].plot(timed[-1][0], final, "*", markersize=13, color=style["color"], markeredgecolor="black")
            drawn.append(float(final))
    if not drawn:
        return None
    for ax, xlabel in zip(axes, ("optimizer steps (the budget's)",
                                 "wall-clock since the trial began (s; training with its per-round scoring)")):
        _logged_scale(ax, drawn)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(keys.label(key))
        ax.legend(fontsize=8)
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    final_note = f"; stars: the best trials' final {record.objective}" if key != record.objective else ""
    better = "lower" if _direction(record, record.objective) == "minimize" else "higher"
    fig.suptitle(f"{record.name}: {key} as training went, against steps and wall-clock\n"
                 f"(every trial; {better} is better{final_note})", fontsize=10)
    return save_figure(fig, out / "quality_vs_cost.png")


def plot_scales(record: StudyRecord, out: Path, most: int = 30) -> Path | None:
    """The Fréchet distance of each scale alone (fd_domain/learned, /32px, ...) of the complete trials,
    ordered by the study's objective, under the real-vs-real floor at each scale: which scale a model gets wrong ("blurry at 32 px,
    right at 8 px"). None where the extractor has no scales (Inception)."""
    done = record.complete
    extractor = record.protocol.get(keys.ScoreParam.EXTRACTOR, "")
    whole = keys.score_key("fd", extractor) if extractor else ""
    prefix = f"metrics.{whole}{keys.SCALE_SEP}"
    columns = [c for c in done if whole and c.startswith(prefix) and done[c].notna().any()]
    if not columns or done.empty:
        return None
    floor = json.loads(record.protocol.get(keys.ScoreParam.FLOOR_FD_BY_SCALE, "{}") or "{}")
    columns.sort(key=lambda c: scale_order(c.removeprefix(prefix), list(floor)))
    scales = [c.removeprefix(prefix) for c in columns]
    best = done.sort_values(record.objective, ascending=record.minimize).head(most)
    labels = [f"{int(r['number'])} {r['family']} ({record.objective} {r[record.objective]:.3g})"
              + ("" if r["flags"] in ("none", "") else f" [{r['flags']}]") for _, r in best.iterrows()]
    values = pd.DataFrame(best[columns].to_numpy(dtype=float), index=labels, columns=scales)
    if floor:
        values = pd.concat([pd.DataFrame([[floor.get(s, np.nan) for s in scales]], index=["real vs real (floor)"],
                                         columns=scales), values])
    label_inches = 0.075 * max(len(label) for label in values.index)  # the trial labels left of the cells
    fig = new_figure(min(MAX_WIDTH_INCHES, 2.5 + label_inches + 1.1 * len(scales)), 1.6 + 0.3 * len(values))
    ax = fig.subplots()
    sns.heatmap(np.log10(values.clip(lower=1e-3)), annot=values.map(lambda v: f"{v:.3g}"), fmt="", cmap="rocket_r",
                annot_kws={"fontsize": 8}, cbar_kws={"label": "log10 distance"}, ax=ax)
    ax.set_xlabel("learned: the network's features (coarse); then the detail at each size")
    ax.set_ylabel("")
    ax.set_title(f"{record.name}: {whole} of each scale alone, lower is better", fontsize=10)
    return save_figure(fig, out / "scales.png")


def plot_importances(record: StudyRecord, out: Path) -> Path | None:
    complete = [t for t in record.study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 3 or len(record.objectives) > 1 or len(record.swept) < 2:
        return None  # one swept parameter is one bar at 1.0: nothing to compare
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
    ax.set_title(f"{record.name}: what moved {record.objective}\n({len(complete)} complete trials)", fontsize=10)
    return save_figure(fig, out / "importances.png")


def plot_wall_times(record: StudyRecord, out: Path) -> Path:
    table = record.table.sort_values("number")
    fig = new_figure(max(5, 0.35 * len(table)), 3.2)
    ax = fig.subplots()
    sns.barplot(x=table["number"].astype(int), y=table["duration_s"], hue=table["state"], dodge=False, ax=ax)
    ax.set_xlabel("trial")
    ax.set_ylabel("wall time (s)")
    ax.set_title(f"{record.name}: trial wall times", fontsize=10)
    if ax.get_legend() is not None:  # beside the bars, never over them
        ax.legend(title="state", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
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
