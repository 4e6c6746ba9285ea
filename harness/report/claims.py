"""The seed reports' claims a study declared, judged on its recorded trials: held, did not hold or
inconclusive, with the numbers and the interval behind each verdict.

The claims are read from the study file logged with the study's parent run (what ran, not what the
file says today). A verdict is "held" or "did not hold" only when a 95% interval excludes the other
answer; a single run has no interval, so a claim about one configuration stays inconclusive until
`make confirm` re-trains it with fresh seeds.
"""

from __future__ import annotations

import math
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from scipy import stats

from harness import keys
from harness.claims import Bounds, Claim, parse_claims
from harness.errors import UserError, warn
from harness.keys import Tag
from harness.report.tables import confidence

if TYPE_CHECKING:
    from harness.report.records import StudyRecord

HELD, NOT_HELD, INCONCLUSIVE = "held", "did not hold", "inconclusive"
SPEARMAN_VARIANCE = 1.06  # Fieller, Hartley & Pearson (1957): var(atanh(rho_s)) ~ 1.06 / (n - 3)


@dataclass(frozen=True)
class Verdict:
    claim: Claim
    verdict: str  # held | did not hold | inconclusive
    evidence: str  # the numbers and intervals behind it, and how they were computed


def recorded_claims(record: "StudyRecord", client: MlflowClient) -> tuple[Claim, ...]:
    """The [[claims]] of the study file logged with the study's latest parent run (none: no claims)."""
    experiment = client.get_experiment_by_name(record.name)
    if experiment is None:
        return ()
    parents = client.search_runs([experiment.experiment_id], f"tags.{Tag.KIND} = 'study'",
                                 order_by=["attributes.start_time DESC"], max_results=1)
    if not parents:
        return ()
    run_id = parents[0].info.run_id
    try:
        files = [a.path for a in client.list_artifacts(run_id) if a.path.endswith(".toml")]
        if not files:
            return ()
        with tempfile.TemporaryDirectory() as tmp:
            text = Path(client.download_artifacts(run_id, files[0], tmp)).read_text()
        return parse_claims(tomllib.loads(text).get("claims", []), f"{record.name} (its logged {files[0]}): ")
    except (MlflowException, OSError, tomllib.TOMLDecodeError, UserError) as e:
        warn(f"{record.name}: its claims could not be read ({str(e).splitlines()[0][:160]}); none are judged")
        return ()


def judge(record: "StudyRecord", claims: tuple[Claim, ...]) -> list[Verdict]:
    judges = {"near": _near, "trend": _trend, "better_within": _better_within}
    return [judges[claim.test](record, claim) for claim in claims]


def _key(record: "StudyRecord", metric: str) -> str:
    """The metric as logged: fd -> fd_domain or fid, per the study's extractor."""
    extractor = record.protocol.get("score.extractor", "")
    return keys.resolve_objective(metric, extractor) if extractor else metric


def _values(frame: pd.DataFrame, key: str) -> pd.Series:
    column = key if key in frame else f"metrics.{key}"
    if column not in frame:
        return pd.Series(np.nan, index=frame.index, dtype=float)
    return pd.to_numeric(frame[column], errors="coerce")


def _param(frame: pd.DataFrame, param: str) -> pd.Series:
    column = f"params.{param}"
    return frame[column] if column in frame else pd.Series(np.nan, index=frame.index)


def _g(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3g}"


def _near(record: "StudyRecord", claim: Claim) -> Verdict:
    key, done = _key(record, claim.metric), record.complete
    match = pd.Series(True, index=done.index)
    for param, value in claim.at.items():
        numbers = pd.to_numeric(_param(done, param), errors="coerce")
        match &= (numbers - value).abs() <= 1e-9 * max(1.0, abs(value))
    where = ", ".join(f"{p} = {_g(v)}" for p, v in claim.at.items())
    rows = done[match]
    if rows.empty:
        return Verdict(claim, INCONCLUSIVE, f"no complete trial at {where}")
    values = list(_values(rows, key).dropna())
    configs = record.confirm.get(f"tags.{Tag.CONFIG}", pd.Series(dtype=str))
    for number in rows["number"]:
        values += list(_values(record.confirm[configs == f"trial-{int(number)}"], key).dropna())
    low, high = claim.range or (math.nan, math.nan)
    claimed = f"claimed {_g(low)} to {_g(high)}"
    if len(values) < 2:
        inside = "inside" if values and low <= values[0] <= high else "outside"
        return Verdict(claim, INCONCLUSIVE, f"{key} at {where}: {_g(values[0]) if values else 'n/a'} ({inside} the "
                                            f"{claimed}); one run has no interval: `make confirm` re-trains it with seeds")
    mean, half, n = confidence(pd.Series(values))
    lo, hi = mean - half, mean + half
    verdict = HELD if low <= lo and hi <= high else NOT_HELD if hi < low or lo > high else INCONCLUSIVE
    return Verdict(claim, verdict, f"{key} at {where}: {_g(mean)} ± {_g(half)} (95% CI over {n} runs, Student t; "
                                   f"{claimed})")


def _spearman(x: pd.Series, y: pd.Series) -> tuple[float, float, float]:
    """Spearman's rho and its 95% interval (Fisher's z with Fieller's variance)."""
    rho = float(stats.spearmanr(x, y).statistic)
    z, se = math.atanh(max(-0.9999, min(0.9999, rho))), math.sqrt(SPEARMAN_VARIANCE / (len(x) - 3))
    return rho, math.tanh(z - 1.96 * se), math.tanh(z + 1.96 * se)


def _trend(record: "StudyRecord", claim: Claim) -> Verdict:
    done = record.complete
    parts, verdicts = [], []
    x_all = pd.to_numeric(_param(done, claim.param), errors="coerce")
    for metric, sign in claim.metrics.items():
        key = _key(record, metric)
        y = _values(done, key)
        ok = x_all.notna() & y.notna()
        x, y = x_all[ok], y[ok]
        if len(x) < 4 or x.nunique() < 3:
            verdicts.append(INCONCLUSIVE)
            parts.append(f"{key}: {len(x)} complete trials over {x.nunique()} values of {claim.param} "
                         "(a trend needs 4 trials and 3 values)")
            continue
        rho, lo, hi = _spearman(x, y)
        expected = 1 if sign == "up" else -1
        verdicts.append(HELD if expected * lo > 0 and expected * hi > 0
                        else NOT_HELD if expected * lo < 0 and expected * hi < 0 else INCONCLUSIVE)
        perfect = f", a perfect rank order: 1 in {math.factorial(len(x)):,} by chance" if abs(rho) == 1 else ""
        parts.append(f"{key} {'rises' if rho > 0 else 'falls'} with {claim.param}: Spearman ρ = {rho:+.2f} "
                     f"(95% CI {lo:+.3f} to {hi:+.3f}, n = {len(x)}{perfect}; claimed: {sign})")
    verdict = NOT_HELD if NOT_HELD in verdicts else HELD if all(v == HELD for v in verdicts) else INCONCLUSIVE
    return Verdict(claim, verdict, "; ".join(parts) + " (intervals: Fisher's z with Fieller's variance)")


def _within(frame: pd.DataFrame, bounds: Mapping[str, Bounds]) -> pd.Series:
    inside = pd.Series(True, index=frame.index)
    for param, allowed in bounds.items():
        values = _param(frame, param)
        if allowed and isinstance(allowed[0], str):
            inside &= values.astype(str).isin(allowed)
        else:
            numbers = pd.to_numeric(values, errors="coerce")
            low, high = float(allowed[0]), float(allowed[1])
            slack = 1e-9 * max(1.0, abs(low), abs(high))
            inside &= (numbers >= low - slack) & (numbers <= high + slack)
    return inside


def _describe(bounds: Mapping[str, Bounds]) -> str:
    return ", ".join(f"{p} in {'{' + ', '.join(v) + '}' if v and isinstance(v[0], str) else f'{_g(v[0])}..{_g(v[1])}'}"
                     for p, v in bounds.items())


def _better_within(record: "StudyRecord", claim: Claim) -> Verdict:
    key = _key(record, claim.metric)
    table = record.table[_within(record.table, claim.among)] if claim.among else record.table
    inside_all = _within(table, claim.within)
    failed = table["state"] == "FAIL"
    stability = (f"failed (diverged or errored) trials: {int((failed & inside_all).sum())} of {int(inside_all.sum())} "
                 f"inside, {int((failed & ~inside_all).sum())} of {int((~inside_all).sum())} outside")
    done = table[(table["state"] == "COMPLETE")]
    values, inside = _values(done, key), _within(done, claim.within)
    a, b = values[inside].dropna(), values[~inside].dropna()
    scope = f"{_describe(claim.within)}" + (f" (among {_describe(claim.among)})" if claim.among else "")
    if len(a) < 2 or len(b) < 2:
        return Verdict(claim, INCONCLUSIVE, f"{key}: {len(a)} complete trials with {scope}, {len(b)} without; "
                                            f"an interval needs 2 of each; {stability}")
    test = stats.ttest_ind(a, b, equal_var=False)
    lo, hi = test.confidence_interval(0.95)
    difference = float(a.mean() - b.mean())
    sign = -1 if claim.better == "lower" else 1  # the difference the claim expects: inside better
    verdict = HELD if sign * lo > 0 and sign * hi > 0 else NOT_HELD if sign * lo < 0 and sign * hi < 0 else INCONCLUSIVE
    return Verdict(claim, verdict, f"mean {key} with {scope}: {_g(float(a.mean()))} (n = {len(a)}), without: "
                                   f"{_g(float(b.mean()))} (n = {len(b)}); difference {difference:+.3g} (95% CI {lo:+.3g} "
                                   f"to {hi:+.3g}, Welch t; {claim.better} is better); {stability}")
