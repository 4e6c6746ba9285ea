"""The model zoo in studies: blow-ups end one trial, not the study; every family in one comparison."""

import dataclasses
import math
import re

import optuna
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from optuna.trial import TrialState

from conftest import REPO, mlflow_runs, split_runs, write_study
from harness.cli import main
from harness.family import registry
from harness.family.registry import register_family
from models import vae

pytestmark = pytest.mark.slow


def trials_of(runs_dir, study):
    return optuna.load_study(study_name=study, storage=f"sqlite:///{runs_dir / 'optuna.db'}").get_trials()


def test_a_forced_blow_up_fails_its_trial_and_the_study_goes_on(runs_dir, tmp_path, capsys):
    study = write_study(tmp_path, "blowup", """
name = "blowup"
version = 1
families = ["wgan_gp"]
trials = 2
steps = 4
rounds = 2
objective = "val_pixel_mmd"
[dataset]
name = "synthfaces"
n = 400
[sampler]
name = "grid"
[space.wgan_gp]
lr_d = [1e-4, 1e6]   # an absurd learning rate, as the reports' GANs met infinite losses
width = 16
batch_size = 64
""")
    assert main(["study", str(study)]) == 0  # one trial completed: the study did its job
    trials = {t.params["lr_d"]: t for t in trials_of(runs_dir, "blowup-v1")}
    assert trials[1e-4].state == TrialState.COMPLETE and trials[1e6].state == TrialState.FAIL
    reason = trials[1e6].user_attrs["failure_reason"]
    assert reason.startswith("Diverged: step ") and "became nan" in reason
    _, children = split_runs(mlflow_runs(runs_dir, "blowup-v1"))
    failed = next(c for c in children if c.info.status == "FAILED")
    assert failed.data.tags["failure_reason"] == reason and failed.data.tags["state"] == "FAIL"
    assert "1 complete, 0 pruned, 1 failed" in capsys.readouterr().out


def test_the_last_good_sample_grid_is_kept(runs_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))

    def late_blow_up(model, x, optimizers, params, fast, progress):
        out = vae.train_step(model, x, optimizers, params, fast, progress)
        return out if progress < 0.5 else {**out, "loss": torch.tensor(math.inf)}

    register_family(dataclasses.replace(vae.FAMILY, name="late", train_step=late_blow_up))
    text = (REPO / "studies" / "smoke.toml").read_text().replace('name = "smoke"', 'name = "late"')
    text = text.replace('families = ["vae"]', 'families = ["late"]').replace("[space.vae]", "[space.late]")
    text = text.replace("rounds = 2", "rounds = 4").replace("kl_weight = [1e-3, 1e-2]", "kl_weight = [1e-3]")
    text = text.replace("trials = 2", "trials = 1")
    assert main(["study", str(write_study(tmp_path, "late", text))]) == 1  # its only trial failed
    (run,) = split_runs(mlflow_runs(runs_dir, "late-v2"))[1]  # 16 steps in rounds of 4; inf from step 9 on
    assert run.data.tags["last_good_step"] == "8" and "train_loss became inf" in run.data.tags["failure_reason"]
    client = MlflowClient(tracking_uri=f"sqlite:///{runs_dir / 'mlflow.db'}")
    assert [a.path for a in client.list_artifacts(run.info.run_id, "samples")] == ["samples/step_0000004.png", "samples/step_0000008.png"]
    assert "loss_curves.png" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert len(client.get_metric_history(run.info.run_id, "val_recon_mse")) == 2


def test_families_compare_runs_every_family_with_the_same_budget(runs_dir, tmp_path, capsys):
    text = (REPO / "studies" / "families_compare.toml").read_text()
    text = re.sub(r"(?m)^steps = \d+$", "steps = 3", text.replace("n = 3000", "n = 300")).replace("trials = 2", "trials = 1")
    text += "\n[scores]\nround_samples = 200\nfinal_samples = 200\npanel = \"warn\"\n"  # domain-v5 fails the panel at 200
    path = write_study(tmp_path, "families_compare", text)
    assert main(["study", str(path)]) == 0
    trials = trials_of(runs_dir, "families_compare-v3")
    assert sorted(t.params["family"] for t in trials) == sorted(registry.family_names())
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert all(t.user_attrs["reference_config"] == t.params["family"] for t in trials)  # each family's first trial
    dcgan = next(t for t in trials if t.params["family"] == "dcgan")
    assert (dcgan.params["dcgan.lr_g"], dcgan.params["dcgan.beta1"]) == (2e-4, 0.5)  # Radford et al.'s
    resnet = next(t for t in trials if t.params["family"] == "resnet_vae")
    assert resnet.params["resnet_vae.latent_dim"] == 32  # report 004's conclusion, not the 256 it started from
    _, children = split_runs(mlflow_runs(runs_dir, "families_compare-v3"))
    assert sorted(c.data.tags["family"] for c in children) == sorted(registry.family_names())
    assert {c.data.params["batch_size"] for c in children} == {"64"}  # the same images per step for all
    assert all("val_pixel_mmd" in c.data.metrics for c in children)
    assert main(["study", str(path)]) == 0
    assert "already has 1 finished trials for each of its 5 families" in capsys.readouterr().out
    assert main(["study", str(path), "--trials", "2"]) == 0  # one more each, still balanced
    counts = {f: sum(t.params["family"] == f for t in trials_of(runs_dir, "families_compare-v3")) for f in registry.family_names()}
    assert set(counts.values()) == {2}
    assert sum("reference_config" in t.user_attrs for t in trials_of(runs_dir, "families_compare-v3")) == 5  # once each


def test_gan_k_sweep_gives_every_k_the_same_generator_steps(runs_dir, tmp_path):
    text = (REPO / "studies" / "gan_k_sweep.toml").read_text()
    text = re.sub(r"(?m)^rounds = \d+$", "rounds = 1", re.sub(r"(?m)^steps = \d+$", "steps = 3", text.replace("n = 4000", "n = 300")))
    text = text.replace("d_loss_factor = [0.5, 1.0]", "d_loss_factor = [0.5]").replace("trials = 8", "trials = 4")
    text += "\n[scores]\nround_samples = 200\nfinal_samples = 200\npanel = \"warn\"\n"  # the budget is tested here
    assert main(["study", str(write_study(tmp_path, "gan_k_sweep", text))]) == 0
    _, children = split_runs(mlflow_runs(runs_dir, "gan_k_sweep-v2"))
    recorded = sorted((int(c.data.params["d_steps"]), c.data.params["steps"], c.data.params["budget_optimizer"],
                       c.data.metrics["steps_g"], c.data.metrics["steps_d"]) for c in children)
    assert recorded == [(k, "3", "g", 3.0, 3.0 * k) for k in (1, 2, 5, 10)]  # equal G steps; k D steps on top
    assert main(["report", "gan_k_sweep", "--out", str(tmp_path / "reports")]) == 0
    folder = tmp_path / "reports" / "gan_k_sweep-v2"
    assert (folder / "vs_d_steps.png").is_file() and (folder / "cost.png").is_file()  # score vs k, vs wall-clock


class OneFace(torch.nn.Module):
    """A generator that ignores z: the same face whatever it is asked (a forced collapse)."""

    def __init__(self, face: torch.Tensor):
        super().__init__()
        self.face = torch.nn.Parameter(face)  # (C, S, S) in [0, 1]

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (B, Z) -> (B, C, S, S)
        return self.face.clamp(0, 1).expand(z.shape[0], *self.face.shape)


def test_a_forced_collapse_is_tagged_and_never_reported_best(runs_dir, tmp_path, monkeypatch, capsys):
    """Precision rewards a collapse: one real face, repeated, lies inside the real manifold every time.
    Judged by precision, Optuna alone calls the collapsed trial best; genbench must not."""
    from harness.family.adversarial import AdversarialPair
    from harness.scoring.real_images import score_data
    from models import gan

    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))
    face = score_data("synthfaces", {"n": 300, "size": 32}, None, 200).reference[0].float() / 255  # a scored face

    def build(params, channels, image_size):
        latent = int(params["latent_dim"])
        discriminator = gan.Discriminator(vae.VAEConfig(image_size, channels, latent, 0.0))
        return AdversarialPair(OneFace(face.clone()), discriminator, latent, params)

    register_family(dataclasses.replace(gan.FAMILY, name="one_face", build=build))
    path = write_study(tmp_path, "collapse", """
name = "collapse"
version = 1
families = ["vae", "one_face"]
trials = 1
steps = 4
rounds = 1
objective = "precision"
[dataset]
name = "synthfaces"
n = 300
[sampler]
name = "random"
[space.one_face]
lr_g = 1e-8   # the face stays the scored face
[scores]
round_samples = 200
final_samples = 200
panel = "warn"  # domain-v5 fails the panel at n = 200 (harness/README.md, the validation panel); the flags are tested here
""")
    assert main(["study", str(path)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "family=one_face" in x)
    assert "precision=1 [collapsed" in line and ", not ranked]" in line  # said where the user sees it
    trials = {t.params["family"]: t for t in trials_of(runs_dir, "collapse-v1")}
    collapsed = trials["one_face"]
    assert collapsed.state == TrialState.COMPLETE and "collapsed" in collapsed.user_attrs["flags"].split(",")
    assert collapsed.value > trials["vae"].value  # one real face is more "precise" than 4 steps of a VAE ...
    study = optuna.load_study(study_name="collapse-v1", storage=f"sqlite:///{runs_dir / 'optuna.db'}")
    assert study.best_trial.number == collapsed.number  # ... so Optuna alone would call it best
    parents, children = split_runs(mlflow_runs(runs_dir, "collapse-v1"))
    assert parents[0].data.tags.get("best_trial") != str(collapsed.number)
    run = next(c for c in children if c.data.tags["family"] == "one_face")
    assert "collapsed" in run.data.tags["flags"] and "diversity 0 < 0.5" in run.data.tags["flags.evidence"]
    assert run.data.tags["flags.excluded"] == "true" and collapsed.user_attrs["excluded"] is True
    assert run.data.metrics["diversity_domain"] == 0.0
    assert main(["report", "collapse", "--out", str(tmp_path / "reports")]) == 0
    folder = tmp_path / "reports" / "collapse-v1"
    assert "one_face" not in pd.read_csv(folder / "best_per_family.csv")["family"].tolist()
    table = pd.read_csv(folder / "trials.csv")
    assert "collapsed" in table.loc[table["family"] == "one_face", "flags"].iloc[0]
