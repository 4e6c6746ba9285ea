"""The report's tables: best trial per family (with seed re-runs), every trial, and families x
datasets across studies; Markdown beside the CSV and HTML."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import pandas as pd
from scipy import stats

from harness.core import keys
from harness.core.keys import Tag
from harness.report.records import StudyRecord


def confidence(values: pd.Series) -> tuple[float, float, int]:
    """(mean, half-width of the 95% confidence interval (Student t), n)."""
    values = values.dropna().astype(float)
    n = len(values)
    if n < 2:
        return (float(values.mean()) if n else math.nan), math.nan, n
    return float(values.mean()), float(stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n)), n


BOOKKEEPING = ("family", "budget_optimizer", "rounds")  # run params that are not the trial's hyperparameters
NOT_SCORES = ("train_", "study_", "best_", keys.CURVE_PREFIX, keys.LOG10_PREFIX)  # training losses, the parent's counters, axes


def hyperparameters(table: pd.DataFrame) -> list[str]:
    """Every parameter the trials had (a run param without a dot: the family's space, steps, seed),
    in the order they were logged; each family's own (k, beta1) included, blank for the others."""
    return [c.removeprefix("params.") for c in table if c.startswith("params.") and "." not in c.removeprefix("params.")
            and c.removeprefix("params.") not in BOOKKEEPING and table[c].notna().any()]


def scale_order(block: str, declared: list[str]) -> tuple[int, int]:
    """Blocks in the extractor's order where the protocol declares it, else learned first, then by side
    from the finest (32px before 16px)."""
    if block in declared:
        return 0, declared.index(block)
    side = block.removesuffix("px")
    return 1, -int(side) if side.isdigit() else -10**9


def score_keys(record: StudyRecord) -> list[str]:
    """Every final score and evaluation metric the trials logged, the objective(s) first, then the
    Fréchet distance of each scale alone (fd_domain/learned, /32px, ...: in the extractor's order),
    sample quality (precision, recall, density, coverage, diversity ...), the test split's scores,
    validation metrics (KL, pixel MMD) and reconstruction on the test split (ELBO, PSNR, SSIM). Left
    out: per-round estimates (the round score, on fewer samples), training losses, cost (its own
    columns) and spreads (_std)."""
    extractor = record.protocol.get(keys.ScoreParam.EXTRACTOR, "")
    round_score = keys.round_score_key(extractor) if extractor else ""
    logged = [c.removeprefix("metrics.") for c in record.table if c.startswith("metrics.") and record.table[c].notna().any()]
    kept = [k for k in logged if k not in record.objectives and k != round_score and not k.endswith("_std")
            and not k.startswith(NOT_SCORES) and k not in keys.COST and not k.startswith(f"{keys.STEPS}_")]

    declared = list(json.loads(record.protocol.get(keys.ScoreParam.FLOOR_FD_BY_SCALE, "{}") or "{}"))

    def order(key: str) -> tuple[int, int, int]:
        scale = keys.scale_of(key)
        if scale:
            return (0, *scale_order(scale[1], declared))
        split = (keys.split_of(key) or ("",))[0]
        return (1 if not split else 2 if keys.score_kind(key.partition("_")[2]) else {"val": 3, "test": 4}[split]), 0, 0

    return [*record.objectives, *sorted(kept, key=order)]


def protocol_line(record: StudyRecord) -> str:
    """How every number of the study's tables was measured, stated once above them."""
    p, score = record.protocol, keys.ScoreParam
    parts = [f"budget {record.parent.get('steps', '?')} optimizer steps per trial"]
    if p.get(score.EXTRACTOR):
        parts.append(f"scores in {p[score.EXTRACTOR]} features (weights sha256 {p.get(score.EXTRACTOR_SHA256, '?')[:12]})")
    for field, text in ((score.SAMPLE_SIZE, "{}"), (score.REFERENCE_DATA, "reference: {}"), (score.INPUT, "input: {}")):
        if p.get(field):
            parts.append(text.format(p[field]))
    parts.append(f"dataset {record.dataset}")
    return "; ".join(parts)


def best_per_family(record: StudyRecord) -> pd.DataFrame:
    rows = []
    params = hyperparameters(record.table)
    for family, group in record.ranked.groupby("family", sort=False):
        best = group.iloc[0]
        row = {"family": family, "trial": int(best["number"]), record.objective: best[record.objective]}
        configs = record.confirm.get(f"tags.{Tag.CONFIG}", pd.Series(dtype=str))
        confirm = record.confirm[configs == f"trial-{int(best['number'])}"]
        mean, half, n = confidence(confirm[record.objective]) if len(confirm) else (math.nan, math.nan, 0)
        if not record.confirm.empty:  # without seed re-runs, no columns that can only say "none"
            row["seeds"] = n
            row[f"{record.objective} over seeds"] = f"{mean:.4g} ± {half:.2g}" if n >= 2 else ""
        for key in score_keys(record)[len(record.objectives):]:
            if pd.notna(best.get(f"metrics.{key}")):
                row[key] = best[f"metrics.{key}"]
        for p in params:
            if pd.notna(best.get(f"params.{p}")):
                row[p] = best[f"params.{p}"]
        row["flags"] = best.get("flags") or ""
        row["wall_s"] = round(float(best.get(f"metrics.{keys.TRAIN_SECONDS}", best["duration_s"]) or 0), 1)
        row["run_id"] = best.get("run_id")
        rows.append(row)
    if not rows:  # none unflagged
        return pd.DataFrame(columns=["family", "trial", record.objective])
    # One column order for every family (scores, then parameters), whichever family came first.
    order = ["family", "trial", record.objective, "seeds", f"{record.objective} over seeds",
             *score_keys(record)[len(record.objectives):], *params, "flags", "wall_s", "run_id"]
    frame = pd.DataFrame(rows)
    return frame[[c for c in order if c in frame]]


def all_trials(record: StudyRecord) -> pd.DataFrame:
    """Every trial, best first: state, tag, every score, every parameter, steps and wall-clock."""
    table = record.table.sort_values(record.objective, ascending=record.minimize, na_position="last")
    columns = {"number": "trial", "state": "state", "family": "family", "flags": "flags",
               **{(k if k in record.objectives else f"metrics.{k}"): k for k in score_keys(record)},
               **{f"params.{p}": p for p in hyperparameters(table)},
               f"metrics.{keys.TRAIN_SECONDS}": "train_s", "duration_s": "wall_s"}
    present = {k: v for k, v in columns.items() if k in table}
    out = table[list(present)].rename(columns=present)
    failure = f"user_attrs_{keys.Attr.FAILURE}"
    if failure in table:
        out["failure"] = table[failure].fillna("")
    evidence = f"tags.{Tag.FLAG_EVIDENCE}"
    if evidence in table:
        flagged = ~table["flags"].isin(["none", ""])
        out["flag evidence"] = table[evidence].where(flagged, "").fillna("")
    return out


def protocol_id(protocol: dict[str, str]) -> str:
    score = keys.ScoreParam
    fields = (score.EXTRACTOR, score.EXTRACTOR_SHA256, score.N, score.REFERENCE_IDENTITY, score.INPUT)
    return hashlib.sha256(json.dumps({k: protocol.get(k) for k in fields}).encode()).hexdigest()[:8]


def cross_study(records: list[StudyRecord]) -> pd.DataFrame:
    """families x (dataset, objective, protocol): the best value and the study it came from. Scores
    of different protocols land in different columns, so they are never ranked side by side."""
    rows = []
    for record in records:
        for family, group in record.ranked.groupby("family"):
            value = group.iloc[0][record.objective]
            rows.append({"family": family, "column": f"{record.dataset}, {record.objective}, protocol "
                                                     f"{protocol_id(record.protocol)}",
                         "value": f"{value:.4g} ({record.name})"})
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows).drop_duplicates(["family", "column"], keep="first")
    table = frame.pivot(index="family", columns="column", values="value").fillna("").reset_index()
    table.columns.name = None  # else the HTML shows the pivot's "column" as a stray header
    return table


def markdown(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "(none)\n"
    cells = [[fmt(v) for v in row] for row in frame.itertuples(index=False)]
    header = "| " + " | ".join(map(str, frame.columns)) + " |\n|" + "---|" * len(frame.columns) + "\n"
    return header + "".join("| " + " | ".join(c.replace("|", "/") for c in row) + " |\n" for row in cells)


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return str(value)
