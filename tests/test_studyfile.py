import pytest

from conftest import write_study
from harness.core.errors import UserError
from harness.family.space import ChoiceParam, FixedParam, FloatParam
from harness.study.studyfile import load_study, study_names

BASE = """
name = "mystudy"
version = 1
families = ["vae"]
trials = 4
steps = 10
rounds = 2
objective = "val_recon_mse"

[dataset]
name = "synthfaces"
n = 200

[sampler]
name = "tpe"
n_startup_trials = 2

[pruner]
name = "median"

[space.vae]
kl_weight = {low = 1e-4, high = 1e-2}
latent_dim = 16
"""


def load(tmp_path, text, name="mystudy"):
    return load_study(str(write_study(tmp_path, name, text)))


@pytest.mark.parametrize("name", study_names())
def test_every_study_file_is_valid(name):
    spec = load_study(name)
    assert spec.name == name and spec.trials >= 1 and spec.steps >= spec.rounds >= 1
    assert spec.families and spec.objectives


def test_the_named_studies_exist():
    assert {"smoke", "vae_kl_sweep"} <= set(study_names())


def test_vae_kl_sweep_is_the_reports_grid():
    spec = load_study("vae_kl_sweep")
    grid = spec.grid["kl_weight"]
    assert spec.sampler == "grid" and min(grid) == 5e-5 and max(grid) == 1e-2
    assert spec.trials == spec.grid_size >= 6
    assert spec.objectives[0].metric == "fd" and spec.objectives[0].direction == "minimize"  # sample quality


def test_a_valid_file_is_read_fully(tmp_path):
    spec = load(tmp_path, BASE)
    space = spec.spaces["vae"]
    assert isinstance(space["kl_weight"], FloatParam) and (space["kl_weight"].low, space["kl_weight"].high) == (1e-4, 1e-2)
    assert space["latent_dim"] == FixedParam(16, space["latent_dim"].help)
    assert space["lr"] is not None and spec.dataset_options["n"] == 200 and spec.dataset_options["size"] == 32
    assert spec.study_name == "mystudy-v1" and spec.seed == 0


def test_grid_fixes_unnamed_params_at_their_defaults(tmp_path):
    text = BASE.replace('name = "tpe"\nn_startup_trials = 2', 'name = "grid"').replace(
        "kl_weight = {low = 1e-4, high = 1e-2}", "kl_weight = [1e-4, 1e-3]").replace("trials = 4", "trials = 2")
    spec = load(tmp_path, text)
    assert spec.grid == {"kl_weight": [1e-4, 1e-3]} and spec.grid_size == 2
    assert isinstance(spec.spaces["vae"]["kl_weight"], ChoiceParam)
    assert spec.spaces["vae"]["lr"].value == 1e-3


@pytest.mark.parametrize("old, new, message", [
    ("trials = 4", "trails = 4", r"unknown key 'trails' \(did you mean 'trials'\?\); valid keys: name, version"),
    ("steps = 10\n", "", "missing key 'steps'"),
    ("steps = 10", "epochs = 2", "epochs: budgets are optimizer steps now: write steps = N"),
    ("rounds = 2", "rounds = 11", "rounds = 11 but steps = 10: a round needs at least one step"),
    ('families = ["vae"]', 'families = ["vea"]', "unknown family 'vea'; valid: dcgan, gan, resnet_vae, vae, wgan_gp"),
    ('families = ["vae"]', "families = []", "families: empty"),
    ('families = ["vae"]', 'families = "vae"', "families: expected a list"),
    ("latent_dim = 16", "latnet_dim = 16", r"unknown parameter 'latnet_dim' \(did you mean 'latent_dim'\?\); valid: kl_weight"),
    ("kl_weight = {low = 1e-4, high = 1e-2}", "kl_weight = {low = 1e-2, high = 1e-4}", r"space.vae.kl_weight: empty range"),
    ("kl_weight = {low = 1e-4, high = 1e-2}", "kl_weight = []", "space.vae.kl_weight: empty list"),
    ("[space.vae]", "[space.gan]", r"space.gan: 'gan' is not in families"),
    ('name = "mystudy"', 'name = "other"', "must be lowercase letters, digits and _ and equal the file name 'mystudy'"),
    ("version = 1", "version = 0", "version: must be >= 1"),
    ("trials = 4", "trials = 0", "trials: must be >= 1"),
    ("trials = 4", 'trials = "many"', "trials: expected an integer"),
    ('objective = "val_recon_mse"', 'objective = "val_fid"',
     r"objective: 'val_fid' is not a score or metric of vae \(did you mean 'val_fd'\?\); "
     r"valid: fd, fd_inf, kd, precision, recall, coverage, is, val_fd, val_recon_mse"),
    ('objective = "val_recon_mse"', 'objective = "fid"', r"fid is fd when the extractor is inception"),
    ('name = "median"', 'name = "median"\n[scores]\nextractor = "clip"', r"scores.extractor: 'clip'; valid: auto, domain, inception"),
    ('name = "median"', 'name = "median"\n[scores]\nround_sample = 10',
     r"scores: unknown key 'round_sample' \(did you mean 'round_samples'\?\)"),
    ('name = "median"', 'name = "median"\n[scores]\nfinal_samples = 1', r"scores.final_samples: 1; give 0"),
    ('objective = "val_recon_mse"', 'objective = ["val_recon_mse", "val_recon_mse"]', "names a metric twice"),
    ("n = 200", "n = 200\nsize = 48", "dataset.size: synthfaces are drawn at 32 or 64 pixels, not 48"),
    ("n = 200", "n = 2", "dataset.n: synthfaces needs at least 3 images"),
    ("n = 200", "m = 200", r"unknown option 'm' for dataset 'synthfaces'.*valid: size, n, seed"),
    ('name = "synthfaces"', 'name = "celeba_hq"', "unknown dataset 'celeba_hq'"),
    ('name = "tpe"', 'name = "bayes"', "unknown sampler 'bayes'; valid: grid, tpe, random"),
    ("n_startup_trials = 2", "n_startup_trial = 2", "sampler 'tpe' has no option 'n_startup_trial'; valid: consider_prior"),
    ('name = "median"', 'name = "percentile"', "pruner 'percentile' needs percentile"),
    ('name = "median"', 'name = "median"\nn_startup_trials = -1', "pruner 'median' refused its options"),
])
def test_mistakes_are_refused_in_one_line(tmp_path, old, new, message):
    assert old in BASE
    with pytest.raises(UserError, match=message) as caught:
        load(tmp_path, BASE.replace(old, new))
    assert "\n" not in str(caught.value) and str(caught.value).startswith(f"{tmp_path}/mystudy.toml: ")


def test_grid_mistakes(tmp_path):
    grid = BASE.replace('name = "tpe"\nn_startup_trials = 2', 'name = "grid"')
    with pytest.raises(UserError, match="the grid sampler needs a list of values or one value, not a range"):
        load(tmp_path, grid)
    with pytest.raises(UserError, match="trials = 4 but the grid has 2 points; set trials = 2"):
        load(tmp_path, grid.replace("kl_weight = {low = 1e-4, high = 1e-2}", "kl_weight = [1e-4, 1e-3]"))
    with pytest.raises(UserError, match="needs at least one parameter given as a list"):
        load(tmp_path, grid.replace("kl_weight = {low = 1e-4, high = 1e-2}", "kl_weight = 1e-4"))


def test_a_knob_that_cannot_apply_is_refused(tmp_path):
    text = BASE.replace('families = ["vae"]', 'families = ["dcgan"]').replace("[space.vae]", "[space.dcgan]")
    text = text.replace("kl_weight = {low = 1e-4, high = 1e-2}\nlatent_dim = 16", 'schedule = "ratio"\nd_threshold = 0.5')
    text = text.replace('objective = "val_recon_mse"', 'objective = "val_pixel_mmd"')
    with pytest.raises(UserError, match="d_threshold only applies when schedule = 'threshold', but schedule can only be 'ratio'"):
        load(tmp_path, text)
    assert load(tmp_path, text.replace('schedule = "ratio"', 'schedule = "threshold"')).spaces["dcgan"]["d_threshold"].value == 0.5


def test_scores_as_objectives(tmp_path):
    spec = load(tmp_path, BASE.replace('objective = "val_recon_mse"', 'objective = "fd"'))
    assert spec.objectives[0].direction == "minimize" and spec.scores.extractor == "auto"
    assert load(tmp_path, BASE.replace('objective = "val_recon_mse"', 'objective = "recall"').replace(
        'name = "median"', 'name = "none"')).objectives[0].direction == "maximize"
    with pytest.raises(UserError, match="kd is only measured after training; pruning needs a score measured every round"):
        load(tmp_path, BASE.replace('objective = "val_recon_mse"', 'objective = "kd"'))


def test_multi_objective_cannot_prune(tmp_path):
    text = BASE.replace('objective = "val_recon_mse"', 'objective = ["val_recon_mse", "val_kl"]')
    with pytest.raises(UserError, match="prunes single-objective studies only"):
        load(tmp_path, text)
    spec = load(tmp_path, text.replace('name = "median"', 'name = "none"'))
    assert [o.metric for o in spec.objectives] == ["val_recon_mse", "val_kl"]


def test_broken_toml_and_missing_files(tmp_path):
    with pytest.raises(UserError, match="not valid TOML"):
        load(tmp_path, BASE.replace("trials = 4", "trials = = 4"))
    with pytest.raises(UserError, match=r"no study 'vae_kl_swep' \(did you mean 'vae_kl_sweep'\?\).*available: .*smoke"):
        load_study("vae_kl_swep")
    with pytest.raises(UserError, match="does not exist"):
        load_study(str(tmp_path / "absent.toml"))


def test_every_study_has_a_full_scale_larger_than_its_cpu_scale():
    for name in study_names():
        cpu, full = load_study(name), load_study(name, "full")
        assert full.study_name == f"{cpu.study_name}-full"  # never mixed with the CPU scale's trials
        assert full.steps > cpu.steps and full.families == cpu.families and full.objectives == cpu.objectives
        if cpu.dataset == "synthfaces" and name != "smoke":
            assert full.dataset_options["size"] == 64 and full.dataset_options["n"] == 50_000


def test_the_full_table_overrides_key_by_key(tmp_path):
    text = BASE + '\n[full]\nsteps = 500\ntrials = 9\n[full.dataset]\nn = 900\n[full.space.vae]\nlatent_dim = 64\n'
    cpu = load(tmp_path, text)
    full = load_study(str(tmp_path / "mystudy.toml"), "full")
    assert (cpu.steps, cpu.trials, cpu.dataset_options["n"]) == (10, 4, 200)
    assert (full.steps, full.trials, full.dataset_options["n"], full.rounds) == (500, 9, 900, 2)
    assert full.spaces["vae"]["latent_dim"].value == 64 and isinstance(full.spaces["vae"]["kl_weight"], FloatParam)
    with pytest.raises(UserError, match=r"full.objective: not a key the full scale may change"):
        load(tmp_path, BASE + '\n[full]\nobjective = "val_kl"\n')
    with pytest.raises(UserError, match=r"\(SCALE=full\) steps: must be >= 1"):
        load_study(str(write_study(tmp_path, "mystudy", BASE + "\n[full]\nsteps = 0\n")), "full")
    with pytest.raises(UserError, match="SCALE=huge: valid scales are cpu, full"):
        load_study("smoke", "huge")


def test_studies_on_the_same_images_share_one_score_protocol():
    """So the cross-study table has one column per score for them, not one per study."""
    groups = {}
    for name in study_names():
        spec = load_study(name)
        same_images = (spec.dataset, tuple(sorted((k, v) for k, v in spec.dataset_options.items() if k != "n")))
        groups.setdefault(same_images, set()).add(spec.scores)
    assert groups and all(len(settings) == 1 for settings in groups.values())
