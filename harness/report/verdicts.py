"""The seed reports' claims a study declared, judged on its recorded trials: held, did not hold or
inconclusive, with the numbers and the interval behind each verdict.

The claims are read from the study file logged with the study's parent run (what ran, not what the
file says today). A verdict is "held" or "did not hold" only when the numbers exclude the other answer
at the 95 % level: a 95 % interval (near, better_within) or a one-sided permutation p-value of at most
0.025 (trend, exact at a few trials, where Fisher's z is not valid); a single run has no interval, so
a claim about one configuration stays inconclusive until `make confirm` re-trains it with fresh seeds.
"""

from __future__ import annotations

import itertools
import math
import tempfile
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from scipy import stats

from harness.core import keys
from harness.core.errors import UserError, warn
from harness.core.keys import Tag
from harness.report.tables import confidence
from harness.study.claims import Bounds, Claim, parse_claims

if TYPE_CHECKING:
    from harness.report.records import StudyRecord

HELD, NOT_HELD, INCONCLUSIVE = "held", "did not hold", "inconclusive"
SPEARMAN_VARIANCE = 1.06  # Fieller, Hartley & Pearson (1957): var(atanh(rho_s)) ~ 1.06 / (n - 3)
ALPHA = 0.025  # one-sided, in the claimed direction: the strictness of a two-sided 95 % interval excluding 0
EXACT_UP_TO = 8  # trials: all n! orders enumerated (40,320 at 8); above, random permutations
DRAWS, DRAW_SEED = 20_000, 0  # random permutations above EXACT_UP_TO, seeded so a report is reproducible
FISHER_FROM = 10  # trials: below this Fisher's z interval for Spearman's rho is not trustworthy; never the verdict


@dataclass(frozen=True)
class Verdict:
    claim: Claim
    verdict: str  # held | did not hold | inconclusive
    evidence: str  # the numbers and intervals behind it, and how they were computed
    leaning: str = ""  # an inconclusive single run: "inside" or "outside" the claimed range (else "")


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


def logged_key(record: "StudyRecord", metric: str) -> str:
    """The metric as logged: fd -> fd_domain or fid, per the study's extractor."""
    extractor = record.protocol.get(keys.ScoreParam.EXTRACTOR, "")
    return keys.resolve_objective(metric, extractor) if extractor else metric


def metric_values(frame: pd.DataFrame, key: str) -> pd.Series:
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
    key, done = logged_key(record, claim.metric), record.complete
    match = pd.Series(True, index=done.index)
    for param, value in claim.at.items():
        numbers = pd.to_numeric(_param(done, param), errors="coerce")
        match &= (numbers - value).abs() <= 1e-9 * max(1.0, abs(value))
    where = ", ".join(f"{p} = {_g(v)}" for p, v in claim.at.items())
    rows = done[match]
    if rows.empty:
        return Verdict(claim, INCONCLUSIVE, f"no complete trial at {where}")
    values = list(metric_values(rows, key).dropna())
    configs = record.confirm.get(f"tags.{Tag.CONFIG}", pd.Series(dtype=str))
    for number in rows["number"]:
        values += list(metric_values(record.confirm[configs == f"trial-{int(number)}"], key).dropna())
    low, high = claim.range or (math.nan, math.nan)
    claimed = f"claimed {_g(low)} to {_g(high)}"
    if len(values) < 2:
        inside = "inside" if values and low <= values[0] <= high else "outside"
        return Verdict(claim, INCONCLUSIVE, f"{key} at {where}: {_g(values[0]) if values else 'n/a'} ("
                                            f"{how_far(values[0], low, high) if values else inside + ' the'} {claimed}); "
                                            "one run has no interval: `make confirm` re-trains it with seeds",
                       inside if values else "")
    mean, half, n = confidence(pd.Series(values))
    lo, hi = mean - half, mean + half
    verdict = HELD if low <= lo and hi <= high else NOT_HELD if hi < low or lo > high else INCONCLUSIVE
    return Verdict(claim, verdict, f"{key} at {where}: {_g(mean)} ± {_g(half)} (95% CI over {n} runs, Student t; "
                                   f"{claimed})")


def how_far(value: float, low: float, high: float) -> str:
    """Where one value lies from a claimed range: "inside the", "11x below the", "0.3 above the"."""
    if low <= value <= high:
        return "inside the"
    edge = low if value < low else high
    side = "below" if value < low else "above"
    if value > 0 and edge > 0:  # a ratio reads best for positive quantities (a KL, a distance)
        return f"{max(value, edge) / min(value, edge):.2g}x {side} the"
    return f"{abs(value - edge):.2g} {side} the"


@dataclass(frozen=True)
class Permutation:
    """Spearman's rho and its one-sided permutation p-values (y's order against x, average ranks for ties)."""

    rho: float
    n: int
    up: float  # P(rho >= observed) over the orders
    down: float  # P(rho <= observed)
    method: str  # how the orders were drawn, for the evidence
    exact: tuple[int, int, int] | None  # (orders rising as far, orders falling as far, all orders) when enumerated


@lru_cache(maxsize=EXACT_UP_TO)
def _orders(n: int) -> np.ndarray:
    """Every order of n items, one a row (n! rows)."""
    return np.array(list(itertools.permutations(range(n))), dtype=np.int8)


def _spearman(x: pd.Series, y: pd.Series) -> Permutation:
    """Spearman's rho and its permutation test: exact over all n! orders of y for n <= 8 (Fisher's z
    is not valid at 4 to 8 trials), else 20,000 seeded random orders with p = (hits + 1) / (draws + 1)."""
    rx, ry = stats.rankdata(x.to_numpy(float)), stats.rankdata(y.to_numpy(float))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    n, scale = len(rx), math.sqrt(float((rx @ rx) * (ry @ ry)))
    if scale == 0:  # a constant parameter or metric: no order at all
        return Permutation(math.nan, n, math.nan, math.nan, "no test: no spread", None)
    rho = float(rx @ ry) / scale
    if n <= EXACT_UP_TO:
        rhos = ry[_orders(n)] @ rx / scale
        method = f"exact permutation test over all {len(rhos):,} orders"
    else:
        rng = np.random.default_rng(DRAW_SEED)
        block = max(1, min(DRAWS, 2_000_000 // n))  # orders drawn at a time: memory stays small at many trials
        rhos = np.concatenate([ry[rng.permuted(np.tile(np.arange(n), (min(block, DRAWS - start), 1)), axis=1)] @ rx
                               for start in range(0, DRAWS, block)]) / scale
        method = f"{DRAWS:,} random permutations (seed {DRAW_SEED}), p = (hits + 1) / (draws + 1)"
    tolerance = 1e-9  # tied orders give the same rho up to rounding: count them as at least as extreme
    rising, falling = int((rhos >= rho - tolerance).sum()), int((rhos <= rho + tolerance).sum())
    if n <= EXACT_UP_TO:
        return Permutation(rho, n, rising / len(rhos), falling / len(rhos), method, (rising, falling, len(rhos)))
    return Permutation(rho, n, (rising + 1) / (DRAWS + 1), (falling + 1) / (DRAWS + 1), method, None)


def _fisher(rho: float, n: int) -> tuple[float, float] | None:
    """Fisher's z 95 % interval with Fieller's variance, where it is valid (n >= 10, |rho| < 1): extra
    evidence of the size of the trend, never the verdict (the permutation test decides at every n)."""
    if n < FISHER_FROM or not abs(rho) < 1:
        return None
    z, se = math.atanh(rho), math.sqrt(SPEARMAN_VARIANCE / (n - 3))
    return math.tanh(z - 1.96 * se), math.tanh(z + 1.96 * se)


def _p(p: float, count: int | None, total: int | None) -> str:
    """A p-value, as the fraction of orders it counts when they were all enumerated."""
    if count is None or total is None:
        return f"{p:.2g}"
    return "1" if count == total else f"{count:,}/{total:,} = {p:.2g}"


def _trend(record: "StudyRecord", claim: Claim) -> Verdict:
    done = record.complete
    parts, verdicts = [], []
    x_all = pd.to_numeric(_param(done, claim.param), errors="coerce")
    for metric, sign in claim.metrics.items():
        key = logged_key(record, metric)
        y = metric_values(done, key)
        ok = x_all.notna() & y.notna()
        x, y = x_all[ok], y[ok]
        if len(x) < 4 or x.nunique() < 3:
            verdicts.append(INCONCLUSIVE)
            parts.append(f"{key}: {len(x)} complete trials over {x.nunique()} values of {claim.param} "
                         "(a trend needs 4 trials and 3 values)")
            continue
        test = _spearman(x, y)
        if math.isnan(test.rho):
            verdicts.append(INCONCLUSIVE)
            parts.append(f"{key} is the same in all {test.n} trials: no order to test (claimed: {sign})")
            continue
        claimed, other = (test.up, test.down) if sign == "up" else (test.down, test.up)
        verdicts.append(HELD if claimed <= ALPHA else NOT_HELD if other <= ALPHA else INCONCLUSIVE)
        rising, falling, total = test.exact or (None, None, None)
        fisher = _fisher(test.rho, test.n)
        interval = (f"; Fisher's z 95% CI {fisher[0]:+.3f} to {fisher[1]:+.3f}, Fieller's variance, not the verdict"
                    if fisher else "")
        parts.append(f"{key} {'rises' if test.rho > 0 else 'falls'} with {claim.param}: Spearman ρ = {test.rho:+.2f} "
                     f"(n = {test.n}; {test.method}: P(ρ ≥ {test.rho:+.2f}) = {_p(test.up, rising, total)}, "
                     f"P(ρ ≤ {test.rho:+.2f}) = {_p(test.down, falling, total)}{interval}; claimed: {sign})")
    verdict = NOT_HELD if NOT_HELD in verdicts else HELD if all(v == HELD for v in verdicts) else INCONCLUSIVE
    return Verdict(claim, verdict, "; ".join(parts) + f" (one-sided permutation p-values, average ranks for ties: "
                                                      f"held when the claimed side's p ≤ {ALPHA}, did not hold when "
                                                      f"the other side's is; the 5% two-sided level)")


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
    key = logged_key(record, claim.metric)
    table = record.table[_within(record.table, claim.among)] if claim.among else record.table
    inside_all = _within(table, claim.within)
    failed = table["state"] == "FAIL"
    stability = (f"failed (diverged or errored) trials: {int((failed & inside_all).sum())} of {int(inside_all.sum())} "
                 f"inside, {int((failed & ~inside_all).sum())} of {int((~inside_all).sum())} outside")
    done = table[(table["state"] == "COMPLETE")]
    values, inside = metric_values(done, key), _within(done, claim.within)
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
