"""Paragraphs of findings, generated from a study's numbers and what its study file declares: no
hand-written claims and no study known by name.

Every study gets a summary (how many trials, the best one, the seed re-runs). Then what its
declaration calls for: a grid is read value by value, with the metrics its [[claims]] name (the
claims themselves, what the reports said, are judged in harness/report/verdicts.py); several
families are put side by side; two objectives get their Pareto front.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from harness.core.keys import Attr, Tag
from harness.report.tables import confidence
from harness.report.verdicts import logged_key, metric_values
from harness.study.claims import Claim

if TYPE_CHECKING:
    from harness.report.records import StudyRecord


def _g(value: float) -> str:
    return f"{value:.3g}" if isinstance(value, (int, float)) and not math.isnan(value) else "n/a"


def _metric(row: pd.Series, key: str) -> float:
    for column in (key, f"metrics.{key}"):
        if column in row and pd.notna(row[column]):
            return float(row[column])
    return math.nan


def summary(record: "StudyRecord") -> str:
    """How many trials in each state, the first failure's reason, and the best trial; a study with no
    complete trial (none yet, all running, or all failed or pruned) says so instead of a best."""
    if record.table.empty:
        return ("No trials yet: the study exists, but none of its trials has started, so there is nothing to "
                "show or rank. Running the study adds them.")
    counts = record.counts()
    text = record.counts_text() + "."
    if counts.get("surplus"):
        text += " Surplus trials stopped at once: their points or budget were taken by another worker or invocation."
    failed = record.table[record.table["state"] == "FAIL"]
    reasons = failed.get(f"user_attrs_{Attr.FAILURE}", pd.Series(dtype=object)).dropna().astype(str)
    reasons = reasons[~reasons.str.startswith("surplus")]
    if len(reasons):
        first = reasons.index[0]
        reason = (reasons[first].splitlines() or [""])[0][:200].rstrip(".")
        text += f" First failure, trial {int(failed.loc[first, 'number'])}: {reason}."
    done, ranked = record.complete, record.ranked
    waiting = counts.get("running", 0) + counts.get("waiting", 0)
    if done.empty and waiting:
        words = " or ".join(word for word in ("running", "waiting") if counts.get(word))
        return text + f" {waiting} trial{'s' * (waiting > 1)} {words}, none complete: nothing is ranked yet."
    if done.empty:
        return text + " No trial completed, so nothing is ranked."
    if waiting:
        text += (f" {waiting} trial{'s are' if waiting > 1 else ' is'} not finished: the ranking below is of the "
                 "complete trials so far.")
    flagged = int((~done["flags"].isin(["none", ""])).sum())
    if flagged:
        text += (f" {flagged} complete trial(s) are flagged collapsed or did not learn (the flags column)"
                 + (f"; {len(done) - len(ranked)} of them are never called best, the study being judged by "
                    "sample quality." if len(done) > len(ranked) else "."))
    if ranked.empty:
        return text
    best = ranked.iloc[0]
    params = ", ".join(f"{p} = {_g(best[f'params.{p}']) if isinstance(best[f'params.{p}'], float) else best[f'params.{p}']}"
                       for p in record.swept if f"params.{p}" in best and pd.notna(best[f"params.{p}"]))
    text += (f" Best {record.objective} ({record.directions[0]}): {_g(best[record.objective])}, trial {int(best['number'])}"
             f" ({best['family']}{', ' + params if params else ''}); the complete trials ranged from "
             f"{_g(done[record.objective].min())} to {_g(done[record.objective].max())}.")
    if not record.confirm.empty:
        text += " " + seeds(record)
    return text


SIGNIFICANCE = 0.05  # two-sided, on Holm-adjusted p-values when several pairs are compared


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given: calling each test significant at adjusted
    p <= 0.05 keeps the chance of any false call among them at 5% (no assumption on their dependence)."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [math.nan] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def seeds(record: "StudyRecord") -> str:
    """The seed re-runs: mean ± 95% CI per configuration, and Welch's t-test of the best against each
    other one (Holm-corrected over the pairs): two 95% intervals can overlap while the difference is
    significant, so whether they overlap is not the test."""
    rows = []
    for config, group in record.confirm.groupby(f"tags.{Tag.CONFIG}"):
        values = group[record.objective].dropna().astype(float)
        mean, half, n = confidence(values)
        rows.append((group[f"tags.{Tag.FAMILY}"].iloc[0], config, mean, half, n, values))
    rows.sort(key=lambda r: r[2], reverse=not record.minimize)
    parts = [f"{family} ({config}): {_g(mean)} ± {_g(half)} over {n} seeds" for family, config, mean, half, n, _ in rows]
    text = "Re-trained with fresh seeds (mean ± 95% CI): " + "; ".join(parts) + "."
    if len(rows) < 2:
        return text
    families = [r[0] for r in rows]
    label = {r[1]: r[0] if families.count(r[0]) == 1 else f"{r[0]} ({r[1]})" for r in rows}  # config -> name
    best, best_values = label[rows[0][1]], rows[0][5]
    tested, untested = [], []
    for _, config, mean, _, _, values in rows[1:]:
        pair = f"{best} vs {label[config]}"
        if len(best_values) < 2 or len(values) < 2:
            untested.append(f"{pair}: not tested (a t-test needs 2 seeds a side)")
            continue
        if float(np.std(best_values)) == 0.0 and float(np.std(values)) == 0.0:  # Welch would say p = 0 or nan
            untested.append(f"{pair}: not tested (the seeds have no spread)")
            continue
        test = stats.ttest_ind(best_values, values, equal_var=False)
        low, high = test.confidence_interval(0.95)
        tested.append((pair, rows[0][2] - mean, float(low), float(high), float(test.pvalue)))
    several = len(tested) > 1
    verdicts = [f"{pair}: {difference:+.3g} (95% CI {low:+.3g} to {high:+.3g}), p = {_g(p)}"
                f"{f', Holm {_g(adjusted)}' if several else ''}: "
                f"{'significant' if adjusted <= SIGNIFICANCE else 'not significant'}"
                for (pair, difference, low, high, p), adjusted in zip(tested, holm([t[4] for t in tested]))]
    pairs = len(rows) - 1
    how = (f"Welch's t-test of the best ({best}) against each other configuration ({pairs} pair{'s' * (pairs > 1)}): "
           f"the difference of means, best − other, with its Welch 95% CI; significant at "
           + (f"Holm-adjusted p ≤ {SIGNIFICANCE} over the {len(tested)} pairs tested (the intervals are not adjusted)"
              if several else f"p ≤ {SIGNIFICANCE}"))
    return text + f" {how}: " + "; ".join(verdicts + untested) + "."


GRID_VALUES = 8  # a swept parameter with at most this many values (a grid, a choice) is read value by value


def by_parameter(record: "StudyRecord", claims: Sequence[Claim] = ()) -> list[str]:
    """For each swept parameter with few values: the objective at each value (the best complete trial
    there) and each metric the study's claims name, with whether it rose or fell at every step; with
    two such parameters, how much the second moves the objective at equal values of the first."""
    done = record.complete
    grid = [p for p in record.swept if f"params.{p}" in done and 1 < done[f"params.{p}"].nunique() <= GRID_VALUES]
    if done.empty or not grid:
        return []
    named = [logged_key(record, m) for claim in claims for m in (claim.metric, *claim.metrics) if m]
    shown = [m for m in dict.fromkeys([*record.objectives, *named]) if not metric_values(done, m).isna().all()]
    paragraphs = [_along(record, done, param, shown) for param in grid]
    if len(grid) == 2:
        paragraphs.append(_interaction(record, done, *grid))
    return [p for p in paragraphs if p]


def _along(record: "StudyRecord", done: pd.DataFrame, param: str, shown: list[str]) -> str:
    best = done.sort_values(record.objective, ascending=record.minimize).groupby(f"params.{param}", sort=True).head(1)
    best = best.assign(_at=pd.to_numeric(best[f"params.{param}"], errors="coerce")).sort_values("_at")
    several = len(best) < len(done)
    parts = []
    for metric in shown:
        values = metric_values(best, metric)
        pairs = ", ".join(f"{_g(at) if isinstance(at, float) else at}: {_g(v)}" for at, v in zip(best[f"params.{param}"], values))
        parts.append(f"{metric} {pairs} ({_trend(values)})")
    return (f"By {param}, {len(best)} values" + (" (at each, the trial best by the objective)" if several else "")
            + ": " + "; ".join(parts) + ".")


def _trend(values: pd.Series) -> str:
    values = values.dropna()
    if len(values) < 2:
        return "one value"
    if values.is_monotonic_increasing and values.iloc[-1] > values.iloc[0]:
        return "rising at every step"
    if values.is_monotonic_decreasing and values.iloc[-1] < values.iloc[0]:
        return "falling at every step"
    return "not monotonic"


def _interaction(record: "StudyRecord", done: pd.DataFrame, rows: str, columns: str) -> str:
    pivot = done.pivot_table(index=f"params.{rows}", columns=f"params.{columns}", values=record.objective)
    if pivot.shape[1] < 2 or pivot.isna().all().all():
        return ""
    change = (pivot.max(axis=1) - pivot.min(axis=1)) / pivot.min(axis=1).abs()
    return (f"At equal {rows}, changing {columns} between {', '.join(_g(float(c)) for c in pivot.columns)} changed "
            f"{record.objective} by at most {100 * change.max():.1f}%.")


def per_family(record: "StudyRecord") -> str:
    """With several families: the best objective of each, and what one trial per configuration cannot say."""
    done = record.ranked
    if done.empty or done["family"].nunique() < 2:
        return ""
    grouped = done.groupby("family")[record.objective]
    ranked = (grouped.min() if record.minimize else grouped.max()).sort_values(ascending=record.minimize)
    return ("Best " + record.objective + " per family, best first: " + ", ".join(f"{f} {_g(v)}" for f, v in ranked.items())
            + (". One trial per configuration is not evidence of a difference; `make confirm` re-trains the best ones "
               "with fresh seeds." if record.confirm.empty else "."))


def pareto(record: "StudyRecord") -> str:
    """With two objectives: the Pareto front's size and its two ends."""
    if len(record.objectives) < 2 or record.study is None:
        return ""
    front = record.study.best_trials
    if not front:
        return ""
    a, b = record.objectives[:2]
    ends = sorted(front, key=lambda t: t.values[0])
    return (f"{len(front)} trial(s) on the Pareto front of {a} and {b}; at its ends trial {ends[0].number} has "
            f"{a} {_g(ends[0].values[0])} with {b} {_g(ends[0].values[1])}, and trial {ends[-1].number} has {a} "
            f"{_g(ends[-1].values[0])} with {b} {_g(ends[-1].values[1])}.")


def findings(record: "StudyRecord", claims: Sequence[Claim] = ()) -> list[str]:
    """The summary, then what the study file's declarations call for: its grid read value by value
    (with the metrics its claims name), its families side by side, its two objectives' front."""
    specific = [*by_parameter(record, claims), per_family(record), pareto(record)]
    return [summary(record)] + [p for p in specific if p]
