"""Which trials a study runs: the budget, grid points, and workers on several machines."""

import multiprocessing
from dataclasses import replace

import optuna
import pytest

from conftest import REPO, write_study
from harness.core.storage import Storage
from harness.family.registry import get_family
from harness.search.planning import plan_trials, surplus, waiting_params
from harness.study.studyfile import load_study


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
    assert to_run == 1 and len(enqueue) == 1 and enqueue[0].params["kl_weight"] != running.params["kl_weight"]
    study.enqueue_trial(enqueue[0].params)
    assert waiting_params(study) == [enqueue[0].params]
    assert plan_trials(study, spec)[1] == []  # queued already: not queued twice


def test_a_sampled_study_runs_the_reference_configuration_first_and_once(tmp_path):
    spec = random_study(tmp_path, trials=3)  # kl_weight in [1e-4, 1e-2]; smoke fixes the rest
    study = optuna.create_study()
    to_run, enqueue, _ = plan_trials(study, spec)
    assert to_run == 3 and len(enqueue) == 1
    reference = get_family("vae").reported_config
    assert enqueue[0].params["kl_weight"] == 1e-4 and reference["kl_weight"] == 5e-5  # the nearest point to the reports'
    assert enqueue[0].user_attrs["reference_moved"]["kl_weight"] == [5e-5, 1e-4]
    assert all(reference[k] == v for k, v in enqueue[0].params.items() if k != "kl_weight")
    assert "batch_size" not in enqueue[0].params  # fixed by the study
    assert enqueue[0].user_attrs["reference_config"] == "vae"
    study.enqueue_trial(enqueue[0].params, user_attrs=enqueue[0].user_attrs)
    assert plan_trials(study, spec)[1] == []  # queued already
    trial = study.ask()
    assert trial.user_attrs["reference_config"] == "vae"
    study.tell(trial, 1.0)
    assert plan_trials(study, spec)[1] == []  # ran already


def test_a_space_that_leaves_the_reference_out_runs_the_nearest_point_and_says_so(tmp_path):
    text = (REPO / "studies" / "smoke.toml").read_text().replace('name = "smoke"', 'name = "far"')
    text = text.replace('name = "grid"', 'name = "tpe"').replace("kl_weight = [1e-3, 1e-2]",
                                                                 "kl_weight = {low = 1e-2, high = 1e-1, log = true}")
    spec = load_study(str(write_study(tmp_path, "far", text)))
    (queued,) = plan_trials(optuna.create_study(), spec)[1]
    assert queued.params["kl_weight"] == 1e-2
    assert queued.user_attrs["reference_moved"]["kl_weight"] == [5e-5, 1e-2]


def test_every_family_of_a_comparison_starts_with_its_reference():
    spec = load_study("families_compare")
    _, enqueue, _ = plan_trials(optuna.create_study(), spec)
    first = {}
    for queued in enqueue:
        first.setdefault(queued.params["family"], queued)
    assert set(first) == set(spec.families)
    for family, queued in first.items():
        assert queued.user_attrs["reference_config"] == family
        reference = get_family(family).reported_config
        free = {k.removeprefix(f"{family}."): v for k, v in queued.params.items() if k != "family"}
        moved = queued.user_attrs.get("reference_moved", {})
        assert all(free[k] == reference[k] for k in free if k not in moved)
    dcgan = first["dcgan"].params
    assert dcgan["dcgan.lr_g"] == 2e-4 and dcgan["dcgan.beta1"] == 0.5
    assert [q.user_attrs.get("reference_config") for q in enqueue].count(None) == len(enqueue) - len(spec.families)


def draws(study: optuna.Study, n: int) -> dict[int, float]:
    drawn = {}
    for _ in range(n):
        trial = study.ask()
        drawn[trial.number] = trial.suggest_float("kl_weight", 1e-4, 1e-2, log=True)
        study.tell(trial, 1.0)
    return drawn



def invocation(study_path: str, sampler: str, options: dict, storage: str, n: int, barrier, results) -> None:
    """One `make study` process: its own sampler from the study file, n draws on the shared storage."""
    spec = replace(load_study(study_path), sampler=sampler, sampler_options=options)
    study = optuna.create_study(study_name=spec.study_name, storage=Storage.from_env({"STORAGE": storage}).optuna(),
                                sampler=spec.make_sampler(), load_if_exists=True)
    barrier.wait()
    try:
        results.put(draws(study, n))
    except Exception as e:  # noqa: BLE001 - reported to the test, which fails on it
        results.put(f"{type(e).__name__}: {e}")


def at_once(spec, storage: str, n: int) -> dict[int, float]:
    """Two invocations of the study, real processes started on one barrier, draw n trials between them."""
    optuna.create_study(study_name=spec.study_name, storage=Storage.from_env({"STORAGE": storage}).optuna())
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    processes = [context.Process(target=invocation, args=(str(spec.path), spec.sampler, spec.sampler_options, storage,
                                                          n // 2, barrier, results)) for _ in range(2)]
    for process in processes:
        process.start()
    got = [results.get(timeout=300) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    assert all(isinstance(g, dict) for g in got), got
    assert not set(got[0]) & set(got[1])  # trial numbers are unique across processes
    return got[0] | got[1]


@pytest.mark.fault
def test_concurrent_invocations_of_a_random_study_never_draw_alike(tmp_path):
    """Two invocations of one study (each its own sampler from the same study seed), two processes at
    once on one storage; before per-trial seeding both drew the same configurations and trained each twice. Trial N
    draws the same values whoever runs it, so a study is still reproducible."""
    spec = random_study(tmp_path, trials=12)
    drawn = at_once(spec, f"sqlite:///{tmp_path / 'shared.db'}", 12)
    assert len(set(drawn.values())) == 12  # twelve trials, twelve configurations
    alone = draws(optuna.create_study(sampler=spec.make_sampler()), 12)  # one process, in another storage
    assert alone == drawn
    reseeded = draws(optuna.create_study(sampler=replace(spec, seed=spec.seed + 1).make_sampler()), 12)
    assert not set(reseeded.values()) & set(drawn.values())  # the study seed still decides


@pytest.mark.fault
def test_model_based_samplers_draw_per_trial_too(tmp_path):
    spec = replace(random_study(tmp_path, trials=12), sampler="tpe", sampler_options={"n_startup_trials": 2})
    drawn = at_once(spec, f"sqlite:///{tmp_path / 'shared.db'}", 8)
    assert len(set(drawn.values())) == 8
