"""The validation panel, FD∞, the refusal of an objective on an extractor that fails the panel, and
`make validate-scores` / `make score`."""

import json

import numpy as np
import pytest
import torch
from scipy import stats

from conftest import SHARED_DATA, mlflow_runs, split_runs, write_study
from harness.cli import main
from harness.scoring import extractors
from harness.scoring.evaluation import SampleQuality, ScoreSettings, fd_inf_sizes, frechet_distance_infinity
from harness.scoring.extractors import Extractor, ExtractorContext, resolve_extractor
from harness.scoring.panel import BROKEN, LEVELS, SET_COUNT, UNSEEN, judge, panel_sets, run_panel, spearman
from harness.scoring.real_images import score_data
from harness.scoring.scores import FeatureStats


@pytest.fixture(scope="module")
def small():
    return score_data("synthfaces", {"size": 32}, None, 64)


def test_the_panel_has_the_floor_seven_disturbances_at_four_levels_six_broken_generators_and_an_unseen_change(small):
    sets = panel_sets(small, 64)
    assert [(s.name, s.level) for s in sets][:1] == [("floor", 0)] and len(sets) == 1 + 7 * 4 + 6 + 1 == SET_COUNT
    assert torch.equal(sets[0].images, small.holdout[:64])
    assert all(s.images.shape == (64, 1, 32, 32) and s.images.dtype == torch.uint8 for s in sets)
    assert {s.name for s in sets if s.level == 0} - {"floor"} == set(BROKEN) | set(UNSEEN)
    real = small.holdout[:64].float()
    for name in LEVELS:  # each disturbance damages the pixels more at each level
        damage = [float((s.images.float() - real).abs().mean()) for s in sets if s.name == name]
        assert damage == sorted(damage) and damage[0] > 0, name
    by_name = {s.name: s.images for s in sets if s.level == 0}
    assert len(torch.unique(by_name["mean_image"], dim=0)) == 1 and len(torch.unique(by_name["eight_images"], dim=0)) == 8
    half = by_name["half_resolution"]  # every 2x2 block is one grey level
    assert torch.equal(half, half[..., ::2, ::2].repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1))
    moved = by_name["moved_one_pixel"]  # the holdout one pixel to the right, its first column repeated
    assert torch.equal(moved[..., 1:], real.to(torch.uint8)[..., :-1]) and torch.equal(moved[..., 0], moved[..., 1])
    levels = {s.level: s.images.float() - real for s in sets if s.name == "pixel_checkerboard"}
    inside = (real > 40) & (real < 215)  # away from clipping: exactly +-4, 8, 16, 32 on alternate pixels
    for level, grey in zip(range(1, 5), LEVELS["pixel_checkerboard"]):
        assert torch.equal(levels[level][inside].abs(), torch.full_like(levels[level][inside], float(grey)))
        d = levels[level]
        both = (d[..., 1:] != 0) & (d[..., :-1] != 0)
        assert both.any() and (d[..., 1:][both] * d[..., :-1][both] < 0).all()  # neighbours move apart


def test_the_verdict_names_each_failed_check():
    good = {("floor", 0): 1.0, **{(n, lv): 10.0 * lv for n in LEVELS for lv in range(1, 5)},
            **{(n, 0): 100.0 for n in BROKEN}, ("moved_one_pixel", 0): 2.0}
    assert judge(good).passed and judge(good).failures == []
    bad = {**good, ("swirl", 4): 25.0, ("eight_images", 0): 15.0}  # below level 3 (30); below level 2 (20)
    failures = judge(bad).failures
    assert not judge(bad).passed and len(failures) == 2
    assert failures[0] == "swirl is not monotone: level 4 scores 25, not above level 3 (30)"
    assert failures[1] == "broken generator eight_images scores 15, not worse than level 2 of gaussian_noise (20)"
    seen = judge({**good, ("moved_one_pixel", 0): 20.0}).failures  # as bad as moderate damage
    assert seen == ["unseen change moved_one_pixel scores 20, not better than level 2 of gaussian_noise (20)"]
    assert judge({**good, ("moved_one_pixel", 0): 19.9}).passed
    high_floor = judge({**good, ("floor", 0): 12.0}).failures  # above every level 1 (10)
    assert "the real-vs-real floor (12) is not below every other set (2)" in high_floor  # the moved faces
    assert "gaussian_noise is not monotone: level 1 scores 10, not above level 0 (12)" in high_floor


def test_spearman_agrees_with_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=26).tolist(), rng.normal(size=26).tolist()
    b[3] = b[4]  # a tie
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    assert spearman(a, a) == pytest.approx(1.0)


def test_fd_infinity_removes_the_small_sample_bias():
    """Two Gaussians 0.5 apart in each of 64 dimensions: FD = 64 x 0.25 = 16 with infinitely many
    samples; at n = 400 the plain FD is biased upwards by the covariance estimate's noise."""
    g = torch.Generator().manual_seed(0)
    d = 64
    reference = FeatureStats.of(torch.randn(50_000, d, generator=g, dtype=torch.float64))
    generated = torch.randn(400, d, generator=g, dtype=torch.float64) + 0.5
    fd_inf, points = frechet_distance_infinity(generated, reference)
    plain = points[-1][1]
    assert [size for size, _ in points] == fd_inf_sizes(400) == sorted(fd_inf_sizes(400)) and points[-1][0] == 400
    assert plain > 16 + 2 and abs(fd_inf - 16) < abs(plain - 16) / 2  # measured: 18.6 and 14.9


class MeanPixel(Extractor):
    """A useless extractor: the image's mean brightness and its square. Blur keeps the mean."""

    def __init__(self):
        self.name, self.weights_sha256, self.source, self.has_classes = "meanpixel", "none", "a test", False
        self.input_description, self.identity, self.quality = "uint8", {"extractor": "meanpixel"}, {}

    def __call__(self, images):
        m = images.float().mean(dim=(1, 2, 3))[:, None] / 255
        return torch.cat([m, m ** 2], dim=1), None


@pytest.fixture
def meanpixel():
    extractors.register_extractor("meanpixel", lambda context: MeanPixel())
    yield
    del extractors._EXTRACTORS["meanpixel"]


def test_the_panel_fails_a_useless_extractor_and_is_cached(small, tmp_path, meanpixel):
    quality = SampleQuality(MeanPixel(), "test", small, ScoreSettings(final_samples=64), tmp_path, torch.device("cpu"))
    result = run_panel(quality, 64, tmp_path / "panel")
    assert not result.verdict.passed and not result.cached
    assert any(f.startswith("broken generator quarter_resolution scores") for f in result.verdict.failures)  # same mean
    again = run_panel(quality, 64, tmp_path / "panel")
    assert again.cached and again.scores == result.scores


@pytest.mark.slow
def test_the_domain_extractor_passes_the_panel_at_a_studys_size(shared_caches):
    """At n = 2,000 (a study's size on a CPU), as `make study` checks it before the first trial:
    every check passes; the closest call, 8 faces repeated against level 2 of the blur, measured
    95.9 against 89.1 (domain-v5), and a face moved by a pixel (4.5) well below the mildest level 2
    (sigma-8 grain, 11.1)."""
    data = score_data("synthfaces", {"size": 32}, None, 2000)
    extractor, reason = resolve_extractor("domain", ExtractorContext(data, torch.device("cpu"),
                                                                     shared_caches / "extractors", download=False))
    quality = SampleQuality(extractor, reason, data, ScoreSettings(final_samples=2000), shared_caches / "reference",
                            torch.device("cpu"))
    result = run_panel(quality, 2000, shared_caches / "panel")
    assert result.verdict.passed, result.verdict.failures
    worst_level2 = max(result.scores[(name, 2)] for name in LEVELS)
    assert min(result.scores[(name, 0)] for name in BROKEN) > 1.05 * worst_level2
    assert result.scores[("moved_one_pixel", 0)] < 0.5 * min(result.scores[(name, 2)] for name in LEVELS)


STUDY = """
name = "{name}"
version = 1
families = ["vae"]
trials = 1
steps = 4
rounds = 1
objective = "{objective}"
[dataset]
name = "synthfaces"
n = 300
[sampler]
name = "random"
[space.vae]
latent_dim = 8
batch_size = 64
[scores]
extractor = "{extractor}"
round_samples = 64
final_samples = 64
panel = "{panel}"
"""


@pytest.mark.slow
def test_a_score_objective_on_an_extractor_that_fails_the_panel_is_refused(runs_dir, tmp_path, meanpixel, capsys):
    path = write_study(tmp_path / "studies", "useless",
                       STUDY.format(name="useless", objective="fd", extractor="meanpixel", panel="require"))
    assert main(["study", str(path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "the meanpixel extractor fails the validation panel" in err
    assert "is not monotone: level 1 scores" in err and "Traceback" not in err
    if (runs_dir / "mlflow.db").exists():  # refused before anything was recorded
        from mlflow import MlflowClient
        client = MlflowClient(tracking_uri=f"sqlite:///{runs_dir / 'mlflow.db'}")
        found = client.get_experiment_by_name("useless")
        assert found is None or not client.search_runs([found.experiment_id])


@pytest.mark.slow
def test_by_default_a_failed_panel_is_warned_and_logged(runs_dir, tmp_path, meanpixel, capsys):
    path = write_study(tmp_path / "studies", "warned", STUDY.format(name="warned", objective="fd", extractor="meanpixel",
                                                                      panel="warn"))
    assert main(["study", str(path), "--device", "cpu"]) == 0
    assert "is measured with an extractor that fails the validation panel" in capsys.readouterr().err
    parents, _ = split_runs(mlflow_runs(runs_dir, "warned-v1"))
    assert parents[0].data.params["score.panel"].startswith("meanpixel fails the validation panel at n = 64")


@pytest.mark.slow
def test_validate_scores_writes_a_table_and_a_plot(runs_dir, meanpixel, capsys):
    assert main(["validate-scores", "synthfaces", "--extractors", "meanpixel", "--n", "64", "--device", "cpu"]) == 1
    out = capsys.readouterr().out
    assert "meanpixel fails the validation panel at n = 64" in out
    table = (runs_dir / "validation" / "synthfaces-32px-n64.md").read_text()
    assert "| floor | floor | 0 |" in table and "swirl" in table and "quarter_resolution" in table
    assert (runs_dir / "validation" / "synthfaces-32px-n64.png").stat().st_size > 10_000
    assert len((runs_dir / "validation" / "synthfaces-32px-n64.csv").read_text().splitlines()) == 1 + 36


@pytest.mark.slow
def test_make_score_on_a_trials_saved_samples_gives_the_trials_numbers(runs_dir, tmp_path, capsys):
    from importlib.metadata import version

    from harness.core.storage import Storage
    from harness.family.generate import fixed_samples
    from harness.family.registry import get_family
    from harness.scoring.evaluation import FINAL_SEED
    from harness.scoring.scores import to_uint8
    from harness.training.loop import load_model

    # objective val_recon_mse: at n = 64 the panel is not passed (mode collapse scores too well at
    # such a small n), so an fd objective would be refused; the scores are logged all the same
    path = write_study(tmp_path / "studies", "scored", STUDY.format(name="scored", objective="val_recon_mse",
                                                                     extractor="domain", panel="warn"))
    assert main(["study", str(path), "--device", "cpu"]) == 0
    _, children = split_runs(mlflow_runs(runs_dir, "scored-v1"))
    run = children[0]
    assert run.data.params["score.n"] == "64" and run.data.params["lib.torch"] == version("torch")
    assert run.data.params["lib.optuna"] == version("optuna") and run.data.params["lib.torch-fidelity"] == version("torch-fidelity")
    assert len(run.data.params["code.commit"]) in (40, 7) and run.data.params["code.dirty"] in ("true", "false", "unknown")
    assert json.loads(run.data.params["score.z_seeds"]) == {"grid": 0, "round": 1, "final": 2}
    assert "subsets of 64 (asked 1000)" in run.data.params["score.kid"]
    assert float(run.data.params["score.floor_fd"]) < run.data.metrics["fd_domain"]
    local = tmp_path / "model"
    local.mkdir()
    client = Storage.from_env().mlflow()
    for name in ("model.pt", "model.json", "scores.json"):
        client.download_artifacts(run.info.run_id, name, str(local))
    model = load_model(local).eval()
    images = fixed_samples(model, get_family("vae").output_range, 64, FINAL_SEED, torch.device("cpu"), batch=250,
                           keep=lambda b: to_uint8(b).cpu())
    np.savez_compressed(tmp_path / "samples.npz", images=images.numpy())
    capsys.readouterr()
    assert main(["score", "synthfaces", "--images", str(tmp_path / "samples.npz"), "--extractor", "domain",
                 "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["objective"] == "fd_domain"  # what objective = "fd" reads with the domain extractor
    for key in ("fd_domain", "test_fd_domain", "kd_domain", "precision_domain", "recall_domain", "fd_inf_domain",
                "diversity_domain", "fd_domain/learned", "fd_domain/32px", "fd_domain/16px", "fd_domain/8px"):
        assert printed["scores"][key] == pytest.approx(run.data.metrics[key], rel=1e-6, abs=1e-9), key
    assert printed["protocol"]["score.extractor_sha256"] == run.data.params["score.extractor_sha256"]
    logged = json.loads((local / "scores.json").read_text())
    assert printed["protocol"]["score.fd_inf_fit"] == logged["fd_inf_fit"] and logged["n"] == 64
    assert [size for size, _ in logged["fd_inf_fit"]] == fd_inf_sizes(64)


@pytest.mark.slow
def test_make_score_refuses_images_of_another_size(runs_dir, tmp_path, capsys):
    np.savez_compressed(tmp_path / "wrong.npz", images=np.zeros((10, 1, 16, 16), dtype=np.uint8))
    assert main(["score", "synthfaces", "--images", str(tmp_path / "wrong.npz"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "images are (1, 16, 16) (C, H, W), the dataset's are (1, 32, 32)" in err and "Traceback" not in err


@pytest.mark.slow
def test_the_scoring_sample_does_not_depend_on_a_studys_n_and_is_never_trained_on():
    small_study = score_data("synthfaces", {"size": 32, "n": 600, "seed": 4}, None, 100)
    big_study = score_data("synthfaces", {"size": 32, "n": 6000}, None, 100)
    assert small_study.identity == big_study.identity and torch.equal(small_study.reference, big_study.reference)
    assert score_data("synthfaces", {"size": 64}, None, 100).identity != small_study.identity
    from harness.data.datasets import load_dataset
    from harness.scoring.real_images import warn_if_trained_on
    study = load_dataset("synthfaces", {"size": 32, "n": 6000})
    assert warn_if_trained_on(small_study, study.train) == 0  # fresh draws from other seeds
    assert small_study.sample_size(2000) == 100 and "fewer than 2000" in small_study.size_note(100)
    assert "as asked" in small_study.size_note(100) and "only" not in small_study.size_note(100)  # drawn, not short


def test_a_file_sets_scoring_sample_is_its_default_split_and_a_study_on_another_split_is_warned(tmp_path, capsys):
    from harness.data.datasets import load_dataset
    from harness.scoring.real_images import warn_if_trained_on
    faces = np.random.default_rng(0).integers(0, 255, (200, 1, 16, 16), dtype=np.uint8)
    np.savez(tmp_path / "faces.npz", images=faces)
    data = score_data("npz", {"path": str(tmp_path / "faces.npz")}, None)
    assert (len(data.train), len(data.reference), len(data.holdout)) == (160, 20, 20) and data.max_n == 20
    assert "the dataset has only 20 held-out images per side" in data.size_note(20)
    same_split = load_dataset("npz", {"path": str(tmp_path / "faces.npz")})
    assert warn_if_trained_on(data, same_split.train) == 0
    other_split = load_dataset("npz", {"path": str(tmp_path / "faces.npz"), "seed": 5})
    assert warn_if_trained_on(data, other_split.train) > 0 and "scores will flatter it" in capsys.readouterr().err


def _issue_sets(faces: torch.Tensor) -> dict[str, torch.Tensor]:
    """Issue 28's table: real faces with damage every person sees, and moved by a pixel (no defect)."""
    def u8(x: torch.Tensor) -> torch.Tensor:
        return x.round().clamp(0, 255).to(torch.uint8)

    side = faces.shape[-1]
    board = ((torch.arange(side)[:, None] + torch.arange(side)[None, :]) % 2).float() * 2 - 1
    grain = torch.randn(faces.shape, generator=torch.Generator().manual_seed(0))
    x = faces.float()
    return {"checker8": u8(x + 8 * board), "checker16": u8(x + 16 * board), "checker32": u8(x + 32 * board),
            "grain10": u8(x + 10 * grain), "grain25": u8(x + 25 * grain),
            "half": u8(torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(x, 2), scale_factor=2)),
            "moved": torch.cat([faces[..., :1], faces[..., :-1]], dim=-1)}


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "PIE_32x32.mat").exists(), reason="../shared/data/PIE_32x32.mat is absent")
def test_on_pie_faces_the_domain_extractor_passes_the_panel_and_ranks_what_a_person_sees(shared_caches):
    """PIE: real faces the panel's design did not start from (n = 170, its validation split). The panel
    passes, and issue 28's table holds with the default CPU score: every damaged set above the faces
    as they are (the test split), the faces moved by a pixel below every damaged set. Measured
    (domain-v5): faces 59.8 (the floor), +-8 checkerboard 170, grain sigma 10 116, half resolution
    1,307, moved 79.8; domain-v4 scored them 50.7, 50.7, 48.2, 50.4 and 69.3."""
    data = score_data("mat", {"path": str(SHARED_DATA / "PIE_32x32.mat")}, None, 2000)
    extractor, reason = resolve_extractor("domain", ExtractorContext(data, torch.device("cpu"),
                                                                     shared_caches / "extractors", download=False))
    quality = SampleQuality(extractor, reason, data, ScoreSettings(), shared_caches / "reference", torch.device("cpu"))
    assert quality.final_samples == 170
    result = run_panel(quality, 170, shared_caches / "panel")
    assert result.verdict.passed, result.verdict.failures
    scored = {name: quality.score_images(images).scores["fd_domain"] for name, images in _issue_sets(data.holdout).items()}
    faces = quality.floor()  # the test split against the validation split: the faces as they are
    assert all(value > faces for value in scored.values()), (faces, scored)
    assert all(scored["moved"] < value for name, value in scored.items() if name != "moved"), scored
    assert scored["checker8"] < scored["checker16"] < scored["checker32"] and scored["grain10"] < scored["grain25"]
    parts = quality.score_images(_issue_sets(data.holdout)["checker16"]).scores  # the damage is at 32 px, not coarser
    assert parts["fd_domain/32px"] > 100 * max(parts["fd_domain/16px"], parts["fd_domain/8px"])
