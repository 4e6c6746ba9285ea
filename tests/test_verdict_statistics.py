"""The statistics behind the report's verdicts, checked against independent computations: the trend
claims' permutation test of Spearman's rho, and the seed re-runs' Welch tests with Holm's correction."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from harness.report import StudyRecord
from harness.report.findings import holm, seeds
from harness.report.verdicts import _spearman


def brute_force(x: list[float], y: list[float]) -> tuple[float, float]:
    """(P(rho >= observed), P(rho <= observed)) over every order of y, by scipy's spearmanr on each."""
    observed = stats.spearmanr(x, y).statistic
    rhos = [stats.spearmanr(x, order).statistic for order in itertools.permutations(y)]
    return (sum(r >= observed - 1e-9 for r in rhos) / len(rhos), sum(r <= observed + 1e-9 for r in rhos) / len(rhos))


@pytest.mark.parametrize("x, y", [
    ([1, 2, 3, 4], [4, 3, 2, 1]),
    ([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]),
    ([1, 1, 2, 3, 3], [5, 1, 2, 4, 3]),  # ties in x
    ([1, 2, 3, 4, 5, 6], [1, 3, 2, 2, 6, 5]),  # ties in y
    ([0.1, 0.1, 0.2, 0.2, 0.3, 0.3, 0.4], [3.0, 1.0, 2.0, 6.0, 5.0, 4.0, 7.0]),  # several trials a value
])
def test_the_exact_p_value_is_the_share_of_all_orders_at_least_as_extreme(x, y):
    test = _spearman(pd.Series(x, dtype=float), pd.Series(y, dtype=float))
    up, down = brute_force(x, y)
    assert test.rho == pytest.approx(stats.spearmanr(x, y).statistic)
    assert test.up == pytest.approx(up, abs=1e-12) and test.down == pytest.approx(down, abs=1e-12)
    assert test.exact is not None and test.exact[2] == math.factorial(len(x))


def vectorized_spearman(x: np.ndarray):
    def statistic(y: np.ndarray, axis: int = -1) -> np.ndarray:
        ry = stats.rankdata(y, axis=axis)
        rx = stats.rankdata(x)
        ry, rx = ry - ry.mean(axis=axis, keepdims=True), rx - rx.mean()
        return (ry * rx).sum(axis=axis) / np.sqrt((ry ** 2).sum(axis=axis) * (rx ** 2).sum())
    return statistic


def test_the_exact_p_value_agrees_with_scipys_permutation_test():
    x = np.array([1.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 6.0])
    y = np.array([2.0, 1.0, 3.0, 5.0, 4.0, 8.0, 6.0, 7.0])
    test = _spearman(pd.Series(x), pd.Series(y))
    for side, mine in (("greater", test.up), ("less", test.down)):
        theirs = stats.permutation_test((y,), vectorized_spearman(x), permutation_type="pairings", vectorized=True,
                                        n_resamples=np.inf, alternative=side)
        assert mine == pytest.approx(theirs.pvalue, abs=1e-12)
    assert test.exact is not None and test.exact[2] == 40_320 and test.up < 0.025


def test_above_eight_trials_the_random_permutations_agree_within_monte_carlo_error():
    rng = np.random.default_rng(7)
    x = np.repeat(np.arange(1.0, 7.0), 2)  # 12 trials, two at each of 6 values
    y = 0.4 * x + rng.normal(0, 1.2, 12)
    test = _spearman(pd.Series(x), pd.Series(y))
    assert test.exact is None and "20,000 random permutations" in test.method
    theirs = stats.permutation_test((y,), vectorized_spearman(x), permutation_type="pairings", vectorized=True,
                                    n_resamples=20_000, alternative="greater", random_state=np.random.default_rng(3))
    error = math.sqrt(2 * theirs.pvalue * (1 - theirs.pvalue) / 20_000)  # two independent estimates
    assert 0.001 < theirs.pvalue < 0.2  # a p-value with room for error on both sides
    assert abs(test.up - theirs.pvalue) < 5 * error


def test_holm_adjusts_step_down_and_stays_monotone():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5] and holm([0.6, 0.9]) == pytest.approx([1.0, 1.0])


def confirmed(groups: dict[str, list[float]], minimize: bool = True) -> StudyRecord:
    """A study whose only content is its seed re-runs: family -> the objective over the seeds."""
    rows = [{"tags.config": f"trial-{i}", "tags.family": family, "fd_domain": value}
            for i, (family, values) in enumerate(groups.items()) for value in values]
    return StudyRecord("x-v1", None, pd.DataFrame(), pd.DataFrame(rows), ["fd_domain"],
                       ["minimize" if minimize else "maximize"], {}, {}, "synthfaces")


def test_seed_reruns_whose_intervals_overlap_can_differ_significantly():
    best, other = [9.0, 10.0, 11.0, 10.5, 9.5], [10.5, 11.5, 12.5, 12.0, 11.0]
    half = stats.t.ppf(0.975, 4) * np.std(best, ddof=1) / math.sqrt(5)
    assert np.mean(best) + half > np.mean(other) - half  # the 95% intervals overlap: the old rule said no
    welch = stats.ttest_ind(best, other, equal_var=False)
    low, high = welch.confidence_interval(0.95)
    text = seeds(confirmed({"dcgan": best, "vae": other}))
    assert text.startswith("Re-trained with fresh seeds (mean ± 95% CI): dcgan (trial-0): 10 ± 0.982 over 5 seeds")
    assert "Welch's t-test of the best (dcgan) against each other configuration (1 pair)" in text
    assert f"dcgan vs vae: -1.5 (95% CI {low:+.3g} to {high:+.3g}), p = {welch.pvalue:.3g}: significant" in text
    assert welch.pvalue < 0.05 and "Holm" not in text


def test_seed_reruns_that_do_not_differ_and_several_pairs_corrected():
    text = seeds(confirmed({"dcgan": [9.0, 10.0, 11.0, 10.5, 9.5], "vae": [9.5, 11.0, 12.0, 10.0, 11.5]}))
    assert "dcgan vs vae" in text and ": not significant" in text and ": significant" not in text
    # Three configurations: two pairs, Holm-corrected. vae alone would pass at p < 0.05, not after the correction.
    groups = {"dcgan": [9.0, 10.0, 11.0, 10.5, 9.5], "vae": [10.0, 11.5, 12.5, 11.0, 12.0],
              "wgan_gp": [10.0, 10.5, 11.5, 11.0, 10.2]}
    p = {f: stats.ttest_ind(groups["dcgan"], groups[f], equal_var=False).pvalue for f in ("vae", "wgan_gp")}
    assert p["vae"] < 0.05 < 2 * p["vae"] and p["wgan_gp"] > p["vae"]
    text = seeds(confirmed(groups))
    assert "(2 pairs)" in text and "Holm-adjusted p ≤ 0.05 over the 2 pairs tested" in text
    assert f"p = {p['vae']:.3g}, Holm {min(1.0, 2 * p['vae']):.3g}: not significant" in text
    # Higher is better: the best is the largest mean; a configuration with one seed is named, not tested.
    text = seeds(confirmed({"dcgan": [9.0, 10.0, 11.0], "vae": [20.0, 21.0, 22.0], "gan": [5.0]}, minimize=False))
    assert "the best (vae)" in text and "vae vs dcgan: +11" in text and "vae vs gan: not tested" in text
