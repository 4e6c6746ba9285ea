"""Paragraphs of findings, generated from a study's numbers: no hand-written claims.

Every study gets a summary (how many trials, the best one). The studies that repeat the seed
reports' experiments get a paragraph that puts our measurement next to what the report said.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import numpy as np
import pandas as pd
from scipy import stats

from harness.core import keys
from harness.core.keys import Attr, Tag
from harness.report.tables import confidence

VAL_KL, VAL_RECON = keys.split_key("val", "kl"), keys.split_key("val", "recon_mse")

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


def _at(done: pd.DataFrame, param: str, value: float) -> pd.Series | None:
    column = f"params.{param}"
    if column not in done:
        return None
    rows = done[(done[column].astype(float) - value).abs() <= 1e-12 * max(1.0, abs(value))]
    return rows.iloc[0] if len(rows) else None


def vae_kl_sweep(record: "StudyRecord") -> str:
    done = record.complete
    low, high = _at(done, "kl_weight", 1e-3), _at(done, "kl_weight", 1e-2)
    if low is None or high is None:
        return "The sweep has no complete trials at KL weights 1e-3 and 1e-2 to compare with the reports."
    text = (f"The reports found that raising the KL weight from 1e-3 to 1e-2 drops the KL from about 4 to about 0.5 "
            f"and worsens reconstruction. Here it moved the validation KL from {_g(_metric(low, VAL_KL))} to "
            f"{_g(_metric(high, VAL_KL))} and the validation reconstruction MSE from "
            f"{_g(_metric(low, VAL_RECON))} to {_g(_metric(high, VAL_RECON))}")
    if record.objective not in (VAL_RECON, VAL_KL):
        text += f"; {record.objective} went from {_g(_metric(low, record.objective))} to {_g(_metric(high, record.objective))}"
    ordered = done.sort_values("params.kl_weight")
    kl = ordered[f"metrics.{VAL_KL}"].astype(float)
    trend = "fell at every step up the grid" if kl.is_monotonic_decreasing else "did not fall at every step up the grid"
    return text + f". Over the whole grid ({len(done)} points) the validation KL {trend}."


def gan_k_sweep(record: "StudyRecord") -> str:
    done = record.complete
    if "params.d_steps" not in done or done.empty:
        return ""
    by_k = done.groupby("params.d_steps")[record.objective].mean()
    text = ("Mean " + record.objective + " by D steps per G step (k): " +
            ", ".join(f"k={int(k)}: {_g(v)}" for k, v in by_k.items()) + ".")
    if "params.d_loss_factor" in done and done["params.d_loss_factor"].nunique() > 1:
        pivot = done.pivot_table(index="params.d_steps", columns="params.d_loss_factor", values=record.objective)
        change = (pivot.max(axis=1) - pivot.min(axis=1)) / pivot.min(axis=1).abs()
        text += (f" At equal k, changing the D loss factor between {', '.join(_g(float(c)) for c in pivot.columns)} "
                 f"changed {record.objective} by at most {100 * change.max():.1f}%.")
    return text


def dcgan_lr_sweep(record: "StudyRecord") -> str:
    done = record.complete
    if record.ranked.empty:
        return ""
    best = record.ranked.iloc[0]
    text = (f"Best learning rates: G {_g(best.get('params.lr_g'))}, D {_g(best.get('params.lr_d'))}, beta1 "
            f"{_g(best.get('params.beta1'))} ({record.objective} {_g(best[record.objective])}).")
    if "params.beta1" in done and done["params.beta1"].nunique() > 1:
        by_beta = done.groupby("params.beta1")[record.objective].agg(["min", "count"])
        text += " Best " + record.objective + " by beta1: " + ", ".join(
            f"{_g(float(b))}: {_g(r['min'])} ({int(r['count'])} complete)" for b, r in by_beta.iterrows()) + "."
    pruned = int((record.table["state"] == "PRUNED").sum())
    return text + f" {pruned} trial(s) were pruned by their per-round score."


def resnet_vae_latent_sweep(record: "StudyRecord") -> str:
    done = record.complete
    if "params.latent_dim" not in done or done.empty:
        return ""
    ordered = done.sort_values("params.latent_dim")
    parts = ", ".join(f"{int(r['params.latent_dim'])}: {_g(r[record.objective])}" for _, r in ordered.iterrows())
    if record.ranked.empty:
        return f"{record.objective} by latent size: {parts}; every trial is flagged, so none is called best."
    best = record.ranked.iloc[0]
    return (f"{record.objective} by latent size: {parts}. The best latent size was {int(best['params.latent_dim'])} "
            "(the report compared 32 to 512).")


def families_compare(record: "StudyRecord") -> str:
    done = record.ranked
    if done.empty:
        return ""
    best = done.groupby("family")[record.objective].min() if record.minimize else done.groupby("family")[record.objective].max()
    ranked = best.sort_values(ascending=record.minimize)
    return ("Best " + record.objective + " per family, best first: " +
            ", ".join(f"{f} {_g(v)}" for f, v in ranked.items()) +
            (". One trial per configuration is not evidence of a difference; `make confirm` re-trains the best ones "
             "with fresh seeds." if record.confirm.empty else "."))


def vae_pareto(record: "StudyRecord") -> str:
    front = record.study.best_trials
    if not front or len(record.objectives) < 2:
        return ""
    a, b = record.objectives[:2]
    ends = sorted(front, key=lambda t: t.values[0])
    return (f"{len(front)} trial(s) on the Pareto front of {a} and {b}; at its ends trial {ends[0].number} has "
            f"{a} {_g(ends[0].values[0])} with {b} {_g(ends[0].values[1])}, and trial {ends[-1].number} has {a} "
            f"{_g(ends[-1].values[0])} with {b} {_g(ends[-1].values[1])}.")


BY_STUDY: dict[str, Callable[["StudyRecord"], str]] = {
    "vae_kl_sweep": vae_kl_sweep, "gan_k_sweep": gan_k_sweep, "dcgan_lr_sweep": dcgan_lr_sweep,
    "resnet_vae_latent_sweep": resnet_vae_latent_sweep, "families_compare": families_compare, "vae_pareto": vae_pareto,
}


def findings(record: "StudyRecord") -> list[str]:
    base = record.name.split("-v")[0]
    specific = BY_STUDY.get(base, lambda r: "")(record)
    return [summary(record)] + ([specific] if specific else [])
