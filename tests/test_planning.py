"""Which trials a study runs: the budget, grid points, and workers on several machines."""

import optuna

from harness.planning import plan_trials, surplus, waiting_params
from harness.studyfile import load_study

from conftest import REPO, write_study


def random_study(tmp_path, trials=2):
    text = (REPO / "studies" / "smoke.toml").read_text().replace('name = "smoke"', 'name = "rand"')
    text = text.replace('name = "grid"', 'name = "random"').replace("trials = 2", f"trials = {trials}")
    text = text.replace("kl_weight = [1e-3, 1e-2]", "kl_weight = {low = 1e-4, high = 1e-2}")
    return load_study(str(write_study(tmp_path, "rand", text)))


def test_a_trial_beyond_the_budget_is_surplus(tmp_path):
    spec = random_study(tmp_path, trials=2)
    study = optuna.create_study()
    for _ in range(2):
        study.tell(study.ask(), 1.0)
    late = study.ask()  # a worker elsewhere planned the same budget and starts a third
    assert "budget of 2 trials is met" in surplus(spec, study, late.number)
    fresh = optuna.create_study()
    fresh.tell(fresh.ask(), 1.0)
    assert surplus(spec, fresh, fresh.ask().number) == ""  # within the budget


def test_grid_studies_run_queued_points_only(tmp_path):
    spec = load_study("smoke")
    study = optuna.create_study()
    study.enqueue_trial({"kl_weight": 1e-3})
    assert surplus(spec, study, study.ask().number) == ""  # the queued point
    assert "every grid point is done or running" in surplus(spec, study, study.ask().number)  # nothing queued


def test_planning_leaves_running_trials_to_their_workers(tmp_path):
    spec = load_study("smoke")
    study = optuna.create_study()
    running = study.ask({"kl_weight": optuna.distributions.CategoricalDistribution([1e-3, 1e-2])})
    assert running.params  # another worker is on one grid point
    to_run, enqueue, _ = plan_trials(study, spec)
    assert to_run == 1 and len(enqueue) == 1 and enqueue[0]["kl_weight"] != running.params["kl_weight"]
    study.enqueue_trial(enqueue[0])
    assert waiting_params(study) == [enqueue[0]]
    assert plan_trials(study, spec)[1] == []  # queued already: not queued twice
