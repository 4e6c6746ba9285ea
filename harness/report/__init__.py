"""`make report`: the studies under RUNS_DIR as tables, plots and a page that reads like a paper.

For each study (Optuna study + MLflow experiment of the same name) it writes reports/<study>/:
index.html (self-contained: every image embedded), tables.md, the tables as CSV, and the plots as
PNG beside them. reports/index.html lists the studies and holds the cross-study table of families
x datasets. Numbers come from Optuna's trials dataframe and `mlflow.search_runs`; paragraphs of
findings are generated from them (harness/report/findings.py). Scores measured with different
protocols (extractor, sample counts, reference split) are never ranked side by side: the
cross-study table keeps one column per dataset, objective and protocol.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from scipy import stats  # noqa: E402

from harness.errors import UserError  # noqa: E402
from harness.settings import Settings  # noqa: E402

KEY_METRICS = ("val_recon_mse", "val_kl", "test_psnr", "test_ssim")  # shown beside the objective when present
SMOOTHING = 0.6  # exponential moving average weight of the smoothed loss curves
CURVES = {"vae": ("recon_mse", "kl"), "adversarial": ("d_loss", "g_loss")}  # one panel each: train and val


@dataclass
class StudyRecord:
    """One study's trials joined with their MLflow runs."""

    name: str
    study: optuna.Study
    table: pd.DataFrame  # one row per trial: number, state, family, objective(s), params.*, metrics.*
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


def load_studies(settings: Settings, names: list[str] | None = None) -> list[StudyRecord]:
    from harness.search import open_storage

    storage = open_storage(settings.storage_url)
    available = sorted(optuna.get_all_study_names(storage))
    if names:
        missing = [n for n in names if n not in available and not any(a.startswith(f"{n}-v") for a in available)]
        if missing:
            raise UserError(f"no study {missing[0]!r} under {settings.runs_dir}; studies there: {', '.join(available) or 'none'}")
        available = [a for a in available if a in names or any(a.startswith(f"{n}-v") for n in names)]
    if not available:
        raise UserError(f"no studies under {settings.runs_dir}; run one first: make study STUDY=smoke")
    mlflow.set_tracking_uri(settings.tracking_uri)
    return [record for name in available if (record := _load(name, storage)) is not None]


def _load(name: str, storage: optuna.storages.BaseStorage) -> StudyRecord | None:
    study = optuna.load_study(study_name=name, storage=storage)
    runs = mlflow.search_runs(experiment_names=[name], max_results=100_000)
    if runs.empty:
        return None
    parents = runs[runs.get("tags.kind", pd.Series(dtype=str)).isin(["study", "confirm"])].sort_values("start_time")
    parent = {k.removeprefix("params."): v for k, v in parents.iloc[-1].items() if k.startswith("params.")} if len(parents) else {}
    objectives = (parents.iloc[-1].get("tags.objective") or "").split(",") if len(parents) else []
    children = runs[runs["tags.mlflow.parentRunId"].notna()] if "tags.mlflow.parentRunId" in runs else runs.iloc[:0]
    confirm_flag = children["tags.confirm"] if "tags.confirm" in children else pd.Series("", index=children.index)
    trial_runs = children[(confirm_flag != "true") & children["tags.trial_number"].notna()].copy()
    trial_runs["number"] = trial_runs["tags.trial_number"].astype(int)
    frame = study.trials_dataframe(attrs=("number", "state", "duration", "user_attrs"))
    table = frame.merge(trial_runs, on="number", how="left", suffixes=("", "_run"))
    table["family"] = table.get("tags.family")
    table["duration_s"] = table["duration"].dt.total_seconds() if "duration" in table else np.nan
    if not [o for o in objectives if o]:  # runs logged before the objective tag: resolve the study's names
        from harness.evaluation import SCORE_OBJECTIVES
        extractor = parent.get("score.extractor", "")
        inception = {"fd": "fid", "kd": "kid", "val_fd": "val_fid"}
        objectives = [(inception.get(o, o) if extractor == "inception" else
                       ("val_" + f"fd_{extractor}" if o == "val_fd" else f"{o}_{extractor}"))
                      if o in SCORE_OBJECTIVES and extractor else o for o in parent.get("objective", "").split(",") if o]
    for key in objectives:
        table[key] = table.get(f"metrics.{key}")
    swept: dict[str, bool] = {}
    for trial in study.trials:
        for param, dist in trial.distributions.items():
            if param == "family":
                continue
            plain = param.split(".", 1)[-1]
            swept[plain] = bool(getattr(dist, "log", False))
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


# ---- tables ---------------------------------------------------------------------------------------

def confidence(values: pd.Series) -> tuple[float, float, int]:
    """(mean, half-width of the 95% confidence interval (Student t), n)."""
    values = values.dropna().astype(float)
    n = len(values)
    if n < 2:
        return (float(values.mean()) if n else math.nan), math.nan, n
    return float(values.mean()), float(stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n)), n


def best_per_family(record: StudyRecord) -> pd.DataFrame:
    rows = []
    for family, group in record.complete.groupby("family", sort=False):
        best = group.iloc[0]
        row = {"family": family, "trial": int(best["number"]), record.objective: best[record.objective]}
        confirm = record.confirm[record.confirm.get("tags.config", pd.Series(dtype=str)) == f"trial-{int(best['number'])}"]
        mean, half, n = confidence(confirm[record.objective]) if len(confirm) else (math.nan, math.nan, 0)
        row["seeds"] = n
        row[f"{record.objective} over seeds"] = f"{mean:.4g} ± {half:.2g}" if n >= 2 else ""
        for key in KEY_METRICS:
            if f"metrics.{key}" in best and pd.notna(best[f"metrics.{key}"]) and key != record.objective:
                row[key] = best[f"metrics.{key}"]
        for p in record.swept:
            if pd.notna(best.get(f"params.{p}")):
                row[p] = best[f"params.{p}"]
        row["epochs"] = best.get("params.epochs")
        row["wall_s"] = round(float(best.get("metrics.train_seconds", best["duration_s"]) or 0), 1)
        row["run_id"] = best.get("run_id")
        rows.append(row)
    return pd.DataFrame(rows)


def all_trials(record: StudyRecord) -> pd.DataFrame:
    table = record.table.sort_values(record.objective, ascending=record.minimize, na_position="last")
    columns = {"number": "trial", "state": "state", "family": "family",
               **{k: k for k in record.objectives}, **{f"metrics.{k}": k for k in KEY_METRICS if k not in record.objectives},
               **{f"params.{p}": p for p in record.swept}, "duration_s": "wall_s"}
    present = {k: v for k, v in columns.items() if k in table}
    out = table[list(present)].rename(columns=present)
    if "user_attrs_failure_reason" in table:
        out["failure"] = table["user_attrs_failure_reason"].fillna("")
    return out


def protocol_id(protocol: dict[str, str]) -> str:
    keys = ("score.extractor", "score.extractor_sha256", "score.generated_final", "score.reference_final", "score.input")
    return hashlib.sha256(json.dumps({k: protocol.get(k) for k in keys}).encode()).hexdigest()[:8]


def cross_study(records: list[StudyRecord]) -> pd.DataFrame:
    """families x (dataset, objective, protocol): the best value and the study it came from. Scores
    of different protocols land in different columns, so they are never ranked side by side."""
    rows = []
    for record in records:
        for family, group in record.complete.groupby("family"):
            value = group.iloc[0][record.objective]
            rows.append({"family": family, "column": f"{record.dataset}, {record.objective}, protocol "
                                                     f"{protocol_id(record.protocol)}",
                         "value": f"{value:.4g} ({record.name})"})
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows).drop_duplicates(["family", "column"], keep="first")
    return frame.pivot(index="family", columns="column", values="value").fillna("").reset_index()


def markdown(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "(none)\n"
    cells = [[_fmt(v) for v in row] for row in frame.itertuples(index=False)]
    header = "| " + " | ".join(map(str, frame.columns)) + " |\n|" + "---|" * len(frame.columns) + "\n"
    return header + "".join("| " + " | ".join(c.replace("|", "/") for c in row) + " |\n" for row in cells)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return str(value)


# ---- plots ----------------------------------------------------------------------------------------

def pareto_mask(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Points not dominated when both coordinates are minimised."""
    return np.array([not np.any((x <= x[i]) & (y <= y[i]) & ((x < x[i]) | (y < y[i]))) for i in range(len(x))])


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_objective_vs_params(record: StudyRecord, out: Path) -> list[Path]:
    done = record.complete
    metrics = [record.objective] + [k for k in ("val_kl", "val_recon_mse") if f"metrics.{k}" in done and k != record.objective
                                    and done[f"metrics.{k}"].notna().any()]
    paths = []
    for param, log in record.swept.items():
        column = f"params.{param}"
        if column not in done or not pd.api.types.is_numeric_dtype(done[column]):
            continue
        fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
        for ax, metric in zip(axes[0], metrics):
            y = done[metric] if metric in done else done[f"metrics.{metric}"]
            sns.scatterplot(x=done[column], y=y, hue=done["family"], ax=ax, legend=ax is axes[0][0])
            if log:
                ax.set_xscale("log")
            if (y > 0).all() and y.max() / max(y.min(), 1e-12) > 20:
                ax.set_yscale("log")
            ax.set_xlabel(param)
            ax.set_ylabel(metric)
        fig.suptitle(f"{record.name}: {', '.join(metrics)} vs {param}")
        paths.append(_save(fig, out / f"vs_{param}.png"))
    return paths


def plot_tradeoff(record: StudyRecord, x: str, y: str, out: Path, name: str) -> Path | None:
    done = record.complete
    xs = done[x] if x in done else done.get(f"metrics.{x}")
    ys = done[y] if y in done else done.get(f"metrics.{y}")
    if xs is None or ys is None or xs.isna().any() or ys.isna().any() or len(done) < 2:
        return None
    front = pareto_mask(xs.to_numpy(float), ys.to_numpy(float))
    fig, ax = plt.subplots(figsize=(5.2, 4))
    sns.scatterplot(x=xs, y=ys, hue=done["family"], ax=ax)
    order = np.argsort(xs.to_numpy()[front])
    ax.plot(xs.to_numpy()[front][order], ys.to_numpy()[front][order], "-o", color="crimson", label="Pareto front")
    for label, px, py in zip(done["number"], xs, ys):
        ax.annotate(str(int(label)), (px, py), fontsize=7, alpha=0.7)
    for values, set_scale in ((xs, ax.set_xscale), (ys, ax.set_yscale)):
        if (values > 0).all() and values.max() / values.min() > 20:
            set_scale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.legend(fontsize=8)
    ax.set_title(f"{y} vs {x}\n(lower is better for both; red: Pareto front)", fontsize=10)
    return _save(fig, out / name)


def plot_loss_curves(record: StudyRecord, client: MlflowClient, out: Path) -> list[Path]:
    """Best trial per family: raw (faint) and smoothed curves; D and G losses for adversarial families."""
    paths = []
    for _, best in best_per_family(record).iterrows():
        run_id = best["run_id"]
        losses = CURVES["adversarial" if best["family"] in ("gan", "dcgan", "wgan_gp") else "vae"]
        histories = {(loss, split): client.get_metric_history(run_id, f"{split}_{loss}")
                     for loss in losses for split in ("train", "val")}
        if not any(histories.values()):
            continue
        fig, axes = plt.subplots(1, len(losses), figsize=(4.6 * len(losses), 3.4), squeeze=False)
        for ax, loss in zip(axes[0], losses):
            for split in ("train", "val"):
                history = histories[(loss, split)]
                if not history:
                    continue
                steps = [m.step for m in history]
                values = pd.Series([m.value for m in history])
                line, = ax.plot(steps, values, alpha=0.3)
                ax.plot(steps, values.ewm(alpha=1 - SMOOTHING).mean(), color=line.get_color(), label=split)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.legend(fontsize=8)
            ax.set_title(f"{loss} (faint: raw, solid: smoothed)")
        fig.suptitle(f"{record.name}: {best['family']}, trial {best['trial']}")
        paths.append(_save(fig, out / f"curves_{best['family']}.png"))
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
    fig, ax = plt.subplots(figsize=(5.5, max(2.4, 0.8 + 0.35 * len(importances))))
    sns.barplot(x=list(importances.values()), y=list(importances.keys()), ax=ax, color="steelblue")
    ax.set_xlabel("importance (Optuna's PED-ANOVA)")
    ax.set_title(f"{record.name}: what moved {record.objective} ({len(complete)} complete trials)")
    return _save(fig, out / "importances.png")


def plot_wall_times(record: StudyRecord, out: Path) -> Path:
    table = record.table.sort_values("number")
    fig, ax = plt.subplots(figsize=(max(5, 0.35 * len(table)), 3.2))
    sns.barplot(x=table["number"].astype(int), y=table["duration_s"], hue=table["state"], dodge=False, ax=ax)
    ax.set_xlabel("trial")
    ax.set_ylabel("wall time (s)")
    ax.set_title(f"{record.name}: trial wall times")
    return _save(fig, out / "wall_times.png")


def plot_confirm(record: StudyRecord, out: Path) -> Path | None:
    if record.confirm.empty or record.objective not in record.confirm:
        return None
    rows = []
    for config, group in record.confirm.groupby("tags.config"):
        mean, half, n = confidence(group[record.objective])
        rows.append({"config": f"{group['tags.family'].iloc[0]} {config}", "mean": mean, "ci": half, "n": n})
    frame = pd.DataFrame(rows).sort_values("mean", ascending=record.minimize)
    fig, ax = plt.subplots(figsize=(6, max(2.4, 1.0 + 0.5 * len(frame))))
    ax.errorbar(frame["mean"], frame["config"], xerr=frame["ci"].fillna(0), fmt="o", capsize=4)
    ax.set_xlabel(f"{record.objective}: mean ± 95% CI over fresh seeds")
    ax.set_title(f"{record.name}: seed re-runs")
    return _save(fig, out / "confirm.png")


# ---- the page -------------------------------------------------------------------------------------

def _image(path: Path, title: str = "") -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    caption = f"<figcaption>{html.escape(title)}</figcaption>" if title else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(title or path.name)}">{caption}</figure>'


CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f2f2f2}figure{display:inline-block;margin:.5em;vertical-align:top}img{max-width:100%}
figcaption{font-size:12px;color:#555}.grid{display:flex;flex-wrap:wrap;gap:1em}.grid img{max-width:540px}
.note{color:#555;font-size:13px}"""


def write_study_report(record: StudyRecord, client: MlflowClient, out: Path) -> Path:
    from harness.report.findings import findings

    out.mkdir(parents=True, exist_ok=True)
    best, trials = best_per_family(record), all_trials(record)
    best.to_csv(out / "best_per_family.csv", index=False)
    trials.to_csv(out / "trials.csv", index=False)
    paragraphs = findings(record)
    plots = plot_objective_vs_params(record, out)
    for x, y, name in (("val_kl", "val_recon_mse", "tradeoff_recon_kl.png"),
                       ("val_recon_mse", record.objective, "tradeoff_objective_recon.png")):
        if y != x and (path := plot_tradeoff(record, x, y, out, name)):
            plots.append(path)
    if len(record.objectives) > 1 and (path := plot_tradeoff(record, *record.objectives[:2], out, "pareto.png")):
        plots.append(path)
    plots += plot_loss_curves(record, client, out)
    plots += [p for p in (plot_importances(record, out), plot_wall_times(record, out), plot_confirm(record, out)) if p]
    grids = []
    for _, row in best.iterrows():
        folder = out / "grids" / row["family"]
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("samples.png", "reconstructions.png"):
            try:
                grids.append((row["family"], name, Path(client.download_artifacts(row["run_id"], name, str(folder)))))
            except Exception:  # the GANs have no reconstructions
                continue
    protocol = "; ".join(f"{k.removeprefix('score.')}: {v}" for k, v in record.protocol.items())
    (out / "tables.md").write_text(
        f"# {record.name}\n\n" + "\n\n".join(paragraphs) + f"\n\nScore protocol: {protocol}\n\n"
        f"## Best trial per family\n\n{markdown(best)}\n## Every trial, best first\n\n{markdown(trials)}")
    page = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(record.name)}</title><style>{CSS}</style>",
            f"<h1>{html.escape(record.name)}</h1>", "".join(f"<p>{html.escape(p)}</p>" for p in paragraphs),
            f"<p class='note'>Objective: {html.escape(', '.join(f'{o} ({d})' for o, d in zip(record.objectives, record.directions)))}."
            f"</p><details class='note'><summary>Score protocol</summary>{html.escape(protocol) or 'n/a'}</details>",
            "<h2>Best trial per family</h2>", best.to_html(index=False, float_format="%.4g", na_rep=""),
            "<h2>Samples and reconstructions of the best trials</h2><div class='grid'>",
            "".join(_image(path, f"{family}: {name.removesuffix('.png')}") for family, name, path in grids), "</div>",
            "<h2>Plots</h2>", "".join(_image(p) for p in plots),
            "<h2>Every trial, best first</h2>", trials.to_html(index=False, float_format="%.4g", na_rep="")]
    (out / "index.html").write_text("\n".join(page))
    return out / "index.html"


def build(settings: Settings, names: list[str] | None, out: Path) -> list[Path]:
    records = load_studies(settings, names)
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    pages = [write_study_report(record, client, out / record.name) for record in records]
    table = cross_study(records)
    table.to_csv(out / "cross_study.csv", index=False)
    (out / "tables.md").write_text("# Families x datasets\n\nBest value per family; one column per dataset, objective "
                                   "and score protocol (never ranked across protocols).\n\n" + markdown(table))
    links = "".join(f"<li><a href='{html.escape(p.parent.name)}/index.html'>{html.escape(p.parent.name)}</a></li>" for p in pages)
    (out / "index.html").write_text(
        f"<!doctype html><meta charset='utf-8'><title>genbench report</title><style>{CSS}</style>"
        f"<h1>genbench report</h1><ul>{links}</ul><h2>Families x datasets</h2>"
        "<p class='note'>Best value per family; one column per dataset, objective and score protocol: scores "
        "measured differently are never ranked side by side.</p>" + table.to_html(index=False, na_rep=""))
    return [out / "index.html", *pages]
