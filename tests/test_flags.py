"""Trials that complete but are never called best: collapsed, or did not learn (harness/scoring/flags.py)."""

import optuna
import pytest

from harness.core.errors import UserError
from harness.scoring import flags
from harness.scoring.flags import COLLAPSED, DID_NOT_LEARN, baseline, best_ranked, excludes, judge
from harness.search.confirm import best_trials
from harness.study.studyfile import load_study

PANEL = {("floor", 0): 0.7, ("uniform_noise", 0): 468.0, ("mean_image", 0): 349.0, ("checkerboard", 0): 683.0,
         ("eight_images", 0): 68.0, ("quarter_resolution", 0): 246.0, ("gaussian_blur", 2): 30.0}


def test_the_did_not_learn_bar_is_the_best_generator_that_knows_nothing_of_faces():
    assert baseline(PANEL) == ("mean_image", 349.0)  # not the real images repeated (68) nor a quarter resolution (246)
    assert baseline({("floor", 0): 1.0}) is None


@pytest.mark.parametrize("diversity, fd, expected", [
    (0.9, 140.0, ()),
    (0.09, 339.0, (COLLAPSED,)),  # one face over and over: a good-looking score, no diversity
    (0.8, 577.0, (DID_NOT_LEARN,)),  # noise: diverse, and further from faces than the mean image
    (0.0, 683.0, (COLLAPSED, DID_NOT_LEARN)),
])
def test_judge_flags_with_the_numbers_behind_each_flag(diversity, fd, expected):
    result = judge({"diversity_domain": diversity, "fd_domain": fd}, "domain", baseline(PANEL))
    assert result.names == expected and result.excluded == bool(expected)
    assert (result.text == "none") == (not expected)
    assert not judge({"diversity_domain": diversity, "fd_domain": fd}, "domain", baseline(PANEL), False).excluded
    if COLLAPSED in expected:
        assert f"diversity {diversity:.3g} < {flags.COLLAPSE_DIVERSITY}" in result.evidence
    if DID_NOT_LEARN in expected:
        assert f"fd_domain {fd:.4g} > 349 of the panel's mean_image" in result.evidence


def test_without_a_panel_or_a_diversity_score_nothing_is_flagged_and_it_says_so():
    result = judge({"fid": 500.0}, "inception", None)
    assert result.names == () and "collapse not tested" in result.evidence and "learning not tested" in result.evidence


def test_flags_exclude_only_in_studies_judged_by_sample_quality():
    assert excludes("fd_domain", "exclude") and excludes("fid", "exclude") and excludes("val_fd_domain", "exclude")
    assert excludes("recall_domain", "exclude") and not excludes("fd_domain", "tag")
    assert not excludes("val_recon_mse", "exclude") and not excludes("val_pixel_mmd", "exclude")


def flagged_study() -> optuna.Study:
    study = optuna.create_study()
    for value, text in ((10.0, "collapsed"), (20.0, "none"), (30.0, "none"), (5.0, "did_not_learn")):
        trial = study.ask()
        trial.set_user_attr("flags", text)
        trial.set_user_attr("excluded", text != "none")
        trial.set_user_attr("family", "vae")
        study.tell(trial, value)
    return study


def test_the_best_trial_is_never_a_flagged_one():
    study = flagged_study()
    assert study.best_trial.value == 5.0  # Optuna's best is flagged
    assert best_ranked(study).value == 20.0 and best_ranked(study, maximize=True).value == 30.0
    assert [t.value for t in best_trials(study, load_study("smoke"), top=2)] == [20.0, 30.0]  # what confirm re-trains
    with pytest.raises(UserError, match="FAMILIES: 'gan' is not a family of smoke-v2"):
        best_trials(study, load_study("smoke"), top=1, families=["gan"])
