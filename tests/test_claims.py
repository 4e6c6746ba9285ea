"""The seed reports' claims: declared in study files (refused at load when wrong), judged on recorded trials."""

import numpy as np
import pandas as pd
import pytest

from conftest import write_study
from harness.core.errors import UserError
from harness.report import StudyRecord
from harness.report.verdicts import HELD, INCONCLUSIVE, NOT_HELD, judge
from harness.study.claims import Claim, parse_claims
from harness.study.studyfile import load_study, study_names

BASE = """
name = "{name}"
version = 1
families = ["vae"]
trials = 2
steps = 10
objective = "fd"
[dataset]
name = "synthfaces"
n = 600
"""


def record(kl_weights, val_kl, fd, confirm=None, families=None, states=None, extra=None) -> StudyRecord:
    """A recorded study as the report reads it, from numbers chosen by the test."""
    n = len(kl_weights)
    table = pd.DataFrame({"number": range(n), "state": states or ["COMPLETE"] * n,
                          "family": families or ["vae"] * n, "flags": ["none"] * n, "excluded": [""] * n,
                          "params.kl_weight": kl_weights, "params.family": families or ["vae"] * n,
                          "metrics.val_kl": val_kl, "fd_domain": fd, "metrics.fd_domain": fd, **(extra or {})})
    return StudyRecord("x-v1", None, table, confirm if confirm is not None else pd.DataFrame(), ["fd_domain"],
                       ["minimize"], {"kl_weight": True}, {"score.extractor": "domain"}, "synthfaces")


def claim(**fields) -> Claim:
    return Claim(says="the report's words", source="report 003", **fields)


def test_a_trend_holds_fails_or_is_inconclusive_by_its_permutation_p_value():
    weights = [5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2]
    falling = [20.0, 12.0, 8.0, 5.0, 3.0, 2.0, 1.0, 0.5]
    rising_fd = list(np.linspace(30, 300, 8))
    study = record(weights, falling, rising_fd)
    down = claim(test="trend", param="kl_weight", metrics={"val_kl": "down", "fd": "up"})
    verdict = judge(study, (down,))[0]
    assert verdict.verdict == HELD and "val_kl falls" in verdict.evidence and "fd_domain rises" in verdict.evidence
    assert "ρ = -1.00 (n = 8; exact permutation test over all 40,320 orders" in verdict.evidence
    assert "P(ρ ≤ -1.00) = 1/40,320 = 2.5e-05" in verdict.evidence and "P(ρ ≥ +1.00) = 1/40,320" in verdict.evidence
    assert judge(study, (claim(test="trend", param="kl_weight", metrics={"val_kl": "up"}),))[0].verdict == NOT_HELD
    # One part against the claim is enough for "did not hold".
    assert judge(study, (claim(test="trend", param="kl_weight", metrics={"val_kl": "down", "fd": "down"}),))[0].verdict == NOT_HELD
    noisy = record(weights, [3.0, 1.0, 4.0, 1.5, 5.0, 2.0, 3.5, 2.5], rising_fd)
    assert judge(noisy, (claim(test="trend", param="kl_weight", metrics={"val_kl": "down"}),))[0].verdict == INCONCLUSIVE
    few = record(weights[:3], falling[:3], rising_fd[:3])
    verdict = judge(few, (claim(test="trend", param="kl_weight", metrics={"val_kl": "down"}),))[0]
    assert verdict.verdict == INCONCLUSIVE and "needs 4 trials" in verdict.evidence


def trend(x: list[float], y: list[float], sign: str = "up") -> tuple[str, str]:
    """The verdict and evidence of a trend claim on val_kl against kl_weight."""
    verdict = judge(record(x, y, [1.0] * len(x)), (claim(test="trend", param="kl_weight", metrics={"val_kl": sign}),))[0]
    return verdict.verdict, verdict.evidence


@pytest.mark.parametrize("x, y, count, total, verdict", [
    # n = 4: a perfect order has one-sided p = 1/24 = 0.042; Fisher's z (clamped) used to call it held.
    ([1, 2, 3, 4], [1, 2, 3, 4], 1, 24, INCONCLUSIVE),
    # n = 5: a perfect order is 1 in 120; one adjacent swap (rho = 0.9) is 5 in 120 = 0.042, once held.
    ([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], 1, 120, HELD),
    ([1, 2, 3, 4, 5], [1, 2, 3, 5, 4], 5, 120, INCONCLUSIVE),
    # n = 5, ties in x (two trials at one value), either side of 0.025: 2/120 = 0.017 held, 4/120 = 0.033 not.
    ([1, 1, 2, 3, 4], [1, 2, 3, 4, 5], 2, 120, HELD),
    ([1, 1, 2, 2, 3], [1, 2, 3, 4, 5], 4, 120, INCONCLUSIVE),
    # n = 6 without ties: rho = 0.886 is 12/720 = 0.017 (held), rho = 0.829 is 21/720 = 0.029 (once held, now not).
    ([1, 2, 3, 4, 5, 6], [1, 2, 4, 3, 6, 5], 12, 720, HELD),
    ([1, 2, 3, 4, 5, 6], [1, 2, 3, 5, 6, 4], 21, 720, INCONCLUSIVE),
    # n = 6 with three tied trials: exactly at the boundary, 18/720 = 0.025 (held: p <= 0.025).
    ([1, 1, 1, 2, 4, 3], [1, 2, 3, 4, 5, 6], 18, 720, HELD),
])
def test_a_trend_at_a_few_trials_is_judged_by_its_exact_permutation_p_value(x, y, count, total, verdict):
    weights = [1e-4 * w for w in x]
    got, evidence = trend(weights, y, "up")
    assert got == verdict, evidence
    assert f"n = {len(x)}; exact permutation test over all {total:,} orders" in evidence
    assert f"P(ρ ≥ {evidence.split('ρ = ')[1][:5]}) = {count:,}/{total:,} = {count / total:.2g}" in evidence
    # The same numbers against a falling claim: did not hold exactly where the rising one held.
    assert trend(weights, y, "down")[0] == (NOT_HELD if verdict == HELD else INCONCLUSIVE)
    assert trend(weights, [-v for v in y], "down")[0] == verdict


def test_a_constant_metric_has_no_trend():
    got, evidence = trend([1e-4, 2e-4, 3e-4, 4e-4, 5e-4], [2.0] * 5)
    assert got == INCONCLUSIVE and "the same in all 5 trials" in evidence


def test_a_trend_over_many_trials_draws_random_orders_and_shows_fishers_interval():
    x = list(np.geomspace(1e-5, 1e-1, 12))
    rng = np.random.default_rng(1)
    y = list(-np.arange(12) + rng.normal(0, 3, 12))
    got, evidence = trend(x, y, "down")
    assert got == HELD and "n = 12; 20,000 random permutations (seed 0), p = (hits + 1) / (draws + 1)" in evidence
    assert "Fisher's z 95% CI" in evidence and "not the verdict" in evidence
    # A perfect order of 12 has no Fisher interval (atanh(1) is infinite), and is held by the permutations.
    perfect = trend(x, list(range(12)), "up")
    assert perfect[0] == HELD and "Fisher" not in perfect[1] and "= 5e-05" in perfect[1]


def test_a_value_at_one_configuration_needs_seed_reruns_for_a_verdict():
    near = claim(test="near", metric="val_kl", at={"kl_weight": 1e-2}, range=(0.25, 1.0))
    single = judge(record([1e-3, 1e-2], [4.0, 0.5], [50.0, 60.0]), (near,))[0]
    assert single.verdict == INCONCLUSIVE and "0.5 (inside" in single.evidence and "one run" in single.evidence
    confirm = pd.DataFrame({"tags.config": ["trial-1"] * 3, "metrics.val_kl": [0.45, 0.55, 0.5]})
    assert judge(record([1e-3, 1e-2], [4.0, 0.5], [50.0, 60.0], confirm), (near,))[0].verdict == HELD
    far = pd.DataFrame({"tags.config": ["trial-1"] * 3, "metrics.val_kl": [0.02, 0.03, 0.025]})
    verdict = judge(record([1e-3, 1e-2], [4.0, 0.02], [50.0, 60.0], far), (near,))[0]
    assert verdict.verdict == NOT_HELD and "over 4 runs" in verdict.evidence
    wide = pd.DataFrame({"tags.config": ["trial-1"] * 2, "metrics.val_kl": [0.1, 1.5]})
    assert judge(record([1e-3, 1e-2], [4.0, 0.9], [50.0, 60.0], wide), (near,))[0].verdict == INCONCLUSIVE
    assert "no complete trial" in judge(record([1e-3], [4.0], [50.0]), (near,))[0].evidence


def test_better_within_compares_the_trials_inside_with_the_rest():
    weights = [1e-4, 2e-4, 3e-4, 1e-2, 2e-2, 3e-2]
    better = claim(test="better_within", metric="fd", better="lower", within={"kl_weight": (1e-4, 5e-4)})
    good_inside = record(weights, [1.0] * 6, [30.0, 32.0, 31.0, 90.0, 95.0, 92.0])
    verdict = judge(good_inside, (better,))[0]
    assert verdict.verdict == HELD and "Welch" in verdict.evidence and "(n = 3)" in verdict.evidence
    assert judge(record(weights, [1.0] * 6, [90.0, 95.0, 92.0, 30.0, 32.0, 31.0]), (better,))[0].verdict == NOT_HELD
    assert judge(record(weights, [1.0] * 6, [30.0, 90.0, 60.0, 35.0, 88.0, 61.0]), (better,))[0].verdict == INCONCLUSIVE
    # Failed trials are counted, not scored; a group of one has no interval.
    failing = record(weights, [1.0] * 6, [30.0, np.nan, np.nan, 90.0, 95.0, 92.0],
                     states=["COMPLETE", "FAIL", "FAIL", "COMPLETE", "COMPLETE", "COMPLETE"])
    verdict = judge(failing, (better,))[0]
    assert verdict.verdict == INCONCLUSIVE and "2 of 3 inside, 0 of 3 outside" in verdict.evidence
    # Families as values, and the trials compared narrowed with among.
    families = ["vae", "vae", "gan", "gan", "dcgan", "dcgan"]
    mixed = record(weights, [1.0] * 6, [50.0, 52.0, 90.0, 93.0, 40.0, 41.0], families=families)
    dcgan = claim(test="better_within", metric="fd", better="lower", within={"family": ("dcgan",)},
                  among={"family": ("gan", "dcgan")})
    verdict = judge(mixed, (dcgan,))[0]
    assert verdict.verdict == HELD and "without: 91.5 (n = 2)" in verdict.evidence
    gans = claim(test="better_within", metric="fd", better="lower", within={"family": ("gan", "dcgan")})
    assert "(n = 4)" in judge(mixed, (gans,))[0].evidence


@pytest.mark.parametrize("text, message", [
    ('test = "guess"\nsays = "x"\nsource = "y"', "test = 'guess'; choose one of near, trend, better_within"),
    ('test = "near"\nsays = "x"\nsource = "y"\nmetric = "val_kl"\nat = {kl_weight = 1e-2}',
     "missing key 'range'"),
    ('test = "near"\nsays = "x"\nsource = "y"\nmetric = "val_kl"\nat = {kl_weight = 1e-2}\nrange = [1, 0.5]',
     "range: [1, 0.5]; write [low, high] with low <= high"),
    ('test = "trend"\nsays = "x"\nsource = "y"\nparam = "kl_weight"\nmetrics = {val_kl = "sideways"}',
     "metrics.val_kl: 'sideways'; write 'up' or 'down'"),
    ('test = "trend"\nsays = "x"\nsource = "y"\nparam = "kl_weight"\nmetrics = {sharpness = "up"}',
     "'sharpness' is not a metric"),
    ('test = "trend"\nsays = "x"\nsource = "y"\nparam = "d_steps"\nmetrics = {val_kl = "up"}',
     "no family of this study has a parameter 'd_steps'"),
    ('test = "better_within"\nsays = "x"\nsource = "y"\nmetric = "fd"\nbetter = "smaller"\nwithin = {lr = [1e-4, 1e-3]}',
     "better: 'smaller'; write 'lower' or 'higher'"),
    ('test = "trend"\nsays = "x"\nsource = "y"\nparam = "kl_weight"\nmetrics = {val_kl = "up"}\nrange = [0, 1]',
     "'range' is not a key of a trend claim"),
])
def test_a_wrong_claim_is_refused_in_one_line_naming_it(tmp_path, text, message):
    path = write_study(tmp_path, "claimed", BASE.format(name="claimed") + "\n[[claims]]\n" + text + "\n")
    with pytest.raises(UserError) as error:
        load_study(str(path))
    assert message in str(error.value) and "claims[0]" in str(error.value) and "\n" not in str(error.value)


def test_claims_must_be_tables():
    with pytest.raises(UserError, match=r"write each claim as a \[\[claims\]\] table"):
        parse_claims({"says": "x"}, "s: ")


def test_the_shipped_sweeps_declare_the_reports_claims():
    """Every study that repeats a seed report's experiment names what that report claimed."""
    declared = {name: load_study(name).claims for name in study_names()}
    for name in ("vae_kl_sweep", "gan_k_sweep", "dcgan_lr_sweep", "resnet_vae_latent_sweep", "families_compare", "vae_pareto"):
        assert declared[name], f"{name} declares no claims"
        assert all(c.source.startswith(("report", "the DCGAN")) for c in declared[name])
    assert {c.test for cs in declared.values() for c in cs} == {"near", "trend", "better_within"}
