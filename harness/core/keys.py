"""The names of everything a study records, declared once: metric keys, their directions and labels,
and the tags and attributes that writers and readers of a run share.

Metric keys are `<split>_<metric>` for what the families' eval_step returns (`train_loss`,
`val_recon_mse`, `test_kl`), and the sample-quality scores are named for the extractor that measured
them (`fid` with Inception, `fd_domain` with the domain network: a score from another network is never
called FID). Every module that writes or reads a metric builds its name here, so the objectives,
the pruner, the report, the findings, `confirm` and the evaluation cannot drift apart. This module
imports nothing heavy: the report reads it without the training stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Direction = Literal["minimize", "maximize"]
SPLITS = ("train", "val", "test")
SCALES = ("cpu", "full")  # a study file's top level (minutes on a CPU) and its [full] table (the reports' scale)


@dataclass(frozen=True)
class MetricInfo:
    direction: Direction | None  # None: logged, never an objective
    label: str  # what a reader sees on an axis or above a column


# ---- sample quality: per extractor ----------------------------------------------------------------

SCORES: dict[str, MetricInfo] = {
    "fd": MetricInfo("minimize", "Fréchet distance"),
    "fd_inf": MetricInfo("minimize", "Fréchet distance extrapolated to infinite n (FD∞)"),
    "kd": MetricInfo("minimize", "kernel distance (KID estimator)"),
    "precision": MetricInfo("maximize", "precision (k-NN manifold)"),
    "recall": MetricInfo("maximize", "recall (k-NN manifold)"),
    "density": MetricInfo(None, "density (real k-NN balls per generated image / k; about 1 for real data)"),
    "coverage": MetricInfo("maximize", "coverage (share of real k-NN balls reached)"),
    "is": MetricInfo("maximize", "inception score"),
    "diversity": MetricInfo("maximize", "diversity (nearest-neighbour distance, generated / real)"),
}
INCEPTION_NAMES = {"fd": "fid", "fd_inf": "fid_inf", "kd": "kid", "is": "is", "precision": "precision",
                   "recall": "recall", "density": "density", "coverage": "coverage", "diversity": "diversity"}
DIAGNOSTIC_SCORES = ("diversity", "density")  # logged, never objectives: noise maximises diversity; density is best near 1
# What a study file may name as its objective besides the families' val_<metric>: resolved per extractor.
SCORE_OBJECTIVES: dict[str, Direction] = {**{kind: info.direction for kind, info in SCORES.items()
                                             if kind not in DIAGNOSTIC_SCORES}, "val_fd": "minimize"}
ROUND_SCORE = "fd"  # the score measured after every round (on fewer samples), for pruning
PRUNABLE_SCORE_OBJECTIVES = ("fd", "val_fd")  # score objectives with a per-round value the pruner can follow


def score_key(kind: str, extractor: str) -> str:
    """fd + inception -> fid; fd + domain -> fd_domain."""
    if kind not in SCORES:
        raise KeyError(f"unknown score kind {kind!r}; known: {', '.join(SCORES)}")
    return INCEPTION_NAMES[kind] if extractor == "inception" else f"{kind}_{extractor}"


SCALE_SEP = "/"  # fd_domain/32px: the part of a score that one feature block (a scale) gives


def scale_key(key: str, block: str) -> str:
    """fd_domain + 32px -> fd_domain/32px: the Fréchet distance of one block of the features alone."""
    return f"{key}{SCALE_SEP}{block}"


def scale_of(key: str) -> tuple[str, str] | None:
    """fd_domain/32px -> (fd_domain, 32px); None for a key of the whole features."""
    whole, sep, block = key.partition(SCALE_SEP)
    return (whole, block) if sep and block and not key.startswith(CURVE_PREFIX) else None


SCALE_LABELS = {"learned": "the network's features (coarse structure)"}


def std_key(key: str) -> str:
    """The spread logged beside a score (kid_std, kd_domain_std, is_std)."""
    return f"{key}_std"


def round_score_key(extractor: str) -> str:
    """The per-round score the pruner sees: val_fid or val_fd_domain."""
    return split_key("val", score_key(ROUND_SCORE, extractor))


# ---- losses and reconstruction ----------------------------------------------------------------------

def split_key(split: str, metric: str) -> str:
    """val + recon_mse -> val_recon_mse."""
    if split not in SPLITS:
        raise KeyError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    return f"{split}_{metric}"


def split_of(key: str) -> tuple[str, str] | None:
    """val_recon_mse -> (val, recon_mse); None for a key with no split."""
    split, _, metric = key.partition("_")
    return (split, metric) if split in SPLITS and metric else None


def in_split(key: str, split: str) -> bool:
    parts = split_of(key)
    return parts is not None and parts[0] == split


LOG10_PREFIX = "log10_"  # log10_kl_weight: a log-scale parameter's log, logged at a trial's start for a chart's log axis


def log10_key(param: str) -> str:
    """kl_weight -> log10_kl_weight: MLflow's scatter charts have no log axis, so the log is logged."""
    return f"{LOG10_PREFIX}{param}"


PIXEL_MMD = "pixel_mmd"  # scored for every family each round (harness/scoring/pixel_mmd.py)
COMMON_METRICS: dict[str, Direction] = {PIXEL_MMD: "minimize"}
RECONSTRUCTION: dict[str, MetricInfo] = {  # autoencoders, on the test split (harness/scoring/evaluation.py)
    "bce": MetricInfo("minimize", "per-pixel BCE of decode(mu)"),
    "elbo": MetricInfo("maximize", "ELBO (nats per image)"),
    "psnr": MetricInfo("maximize", "PSNR (dB)"),
    "ssim": MetricInfo("maximize", "SSIM"),
}

# ---- cost --------------------------------------------------------------------------------------------

# Logged after every round (harness/training/loop.py), so quality can be plotted against cost. The budget is
# STEPS: optimizer steps of the family's budget_optimizer; every optimizer's own count is steps_<name>
# (a GAN's steps_d, the discriminator's steps that come on top of its generator's).
STEPS = "steps"
IMAGES_SEEN = "images_seen"  # training images drawn so far
EPOCHS = "epochs"  # images_seen / training images: derived, never the budget
ROUND_SECONDS = "round_seconds"  # the round's wall-clock: training, validation and per-round scores
WALL_SECONDS = "wall_seconds"  # wall-clock since the trial began (resumed rounds included)
SECONDS_PER_STEP = "seconds_per_step"  # training time per judged step (D steps included for a GAN)
IMAGES_PER_SECOND = "train_images_per_s"
TRAIN_SECONDS = "train_seconds"  # the whole training of a finished trial, scoring excluded
COST = (STEPS, IMAGES_SEEN, EPOCHS, ROUND_SECONDS, WALL_SECONDS, SECONDS_PER_STEP, IMAGES_PER_SECOND, TRAIN_SECONDS)


def steps_key(optimizer: str) -> str:
    """steps_g, steps_d: one optimizer's steps so far."""
    return f"{STEPS}_{optimizer}"


# ---- per-step training curves ----------------------------------------------------------------------

# The training losses a family declares as curves are also logged every few judged steps (about
# CURVE_POINTS points a trial, MLflow step = the judged step), each point the mean over the steps since
# the previous point (or the round's start). They go under their own keys, per_step/train_kl, never
# under train_kl: train_kl stays the round's mean (one point a round, its latest value the last
# round's, as the tables and the compare view read it), and MLflow's UI puts the per_step/ charts in
# their own section instead of mixing ~100 step points into a chart of a few round means.
CURVE_POINTS = 100
CURVE_PREFIX = "per_step/"
CURVE_SMOOTHING = 0.8  # EMA weight the pictures smooth per-step curves with (a window of about 5 points)


def curve_every(steps: int) -> int:
    """Judged steps between two points of a per-step curve: about CURVE_POINTS points in `steps`."""
    return max(1, steps // CURVE_POINTS)


def curve_key(key: str) -> str:
    """train_kl -> per_step/train_kl: the per-step curve of a training loss."""
    return f"{CURVE_PREFIX}{key}"


def curve_of(key: str) -> str | None:
    """per_step/train_kl -> train_kl; None for any other key."""
    return key.removeprefix(CURVE_PREFIX) if key.startswith(CURVE_PREFIX) else None

# ---- labels for readers -----------------------------------------------------------------------------

FAMILY_METRIC_LABELS = {"recon_mse": "reconstruction MSE", "kl": "KL(q(z|x) || p(z))", "loss": "loss",
                        "d_loss": "discriminator loss", "g_loss": "generator loss", PIXEL_MMD: "pixel MMD²"}
SPLIT_LABELS = {"train": "training", "val": "validation", "test": "test"}


def score_kind(metric: str) -> tuple[str, str] | None:
    """(kind, extractor) of a score's name without split: fid -> (fd, inception), kd_domain -> (kd, domain),
    fd_domain/32px -> (fd, domain)."""
    metric = (scale_of(metric) or (metric,))[0]
    for kind, name in INCEPTION_NAMES.items():
        if metric == name:
            return kind, "inception"
    for kind in sorted(SCORES, key=len, reverse=True):  # fd_inf_domain is fd_inf, not fd of "inf_domain"
        if metric.startswith(f"{kind}_") and not metric.endswith("_std"):
            return kind, metric.removeprefix(f"{kind}_")
    return None


def label(key: str) -> str:
    """A reader's name for a metric key: val_recon_mse -> 'validation reconstruction MSE'."""
    split, metric = split_of(key) or ("", key)
    scored = score_kind(metric)
    if scored:
        kind, extractor = scored
        text = {("fd", "inception"): "FID", ("fd_inf", "inception"): "FID∞"}.get(scored, SCORES[kind].label)
        text += "" if extractor == "inception" else f", {extractor} features"
        block = (scale_of(metric) or ("", ""))[1]
        if block:
            text += f": {SCALE_LABELS.get(block, f'detail at {block}')} alone"
    elif metric in RECONSTRUCTION:
        text = RECONSTRUCTION[metric].label
    else:
        text = FAMILY_METRIC_LABELS.get(metric, metric)
    return f"{SPLIT_LABELS.get(split, '')} {text}".strip()


def direction(key: str) -> Direction | None:
    """The direction of a logged metric key, where one is declared here (scores, reconstruction, pixel MMD)."""
    _, metric = split_of(key) or ("", key)
    scored = score_kind(metric)
    if scored:
        return SCORES[scored[0]].direction
    if metric in RECONSTRUCTION:
        return RECONSTRUCTION[metric].direction
    return COMMON_METRICS.get(metric)


def resolve_objective(objective: str, extractor: str) -> str:
    """A study's objective as it is logged: fd -> fid or fd_domain, val_fd -> val_fid or val_fd_domain."""
    if objective == "val_fd":
        return round_score_key(extractor)
    return score_key(objective, extractor) if objective in SCORES else objective


# ---- tags and attributes shared by the writers (search, publish) and the readers (report) -------------

class Tag:
    """MLflow run tags."""

    STATE = "state"  # COMPLETE | PRUNED | FAIL | RUNNING (child runs); RUNNING | FINISHED | INTERRUPTED (parents)
    FAILURE = "failure_reason"
    FAMILY = "family"
    FAMILY_KIND = "family.kind"  # autoencoder | adversarial: what the report draws for it
    FAMILY_CURVES = "family.curves"  # comma-separated losses drawn as train/val curves
    FAMILY_PLOTS = "family.plots"  # comma-separated pictures that suit the family
    TRIAL = "trial_number"
    KIND = "kind"  # a parent run's kind: study | confirm
    OBJECTIVE = "objective"  # the logged objective keys, comma-separated
    CONFIRM = "confirm"  # "true" on seed re-runs
    CONFIG = "config"  # trial-N: the configuration a seed re-run repeats
    BEST_RUN = "best_run_id"
    BEST_TRIAL = "best_trial"
    REFERENCE_STATS = "score.reference_stats"  # computed | cached
    RESUMED_FROM = "resumed_from_step"
    RETRY_OF = "retry_of"
    LAST_GOOD_STEP = "last_good_step"  # a diverged trial's steps at its last good round
    REPORTED_CONFIG = "reference_config"  # "true": the family's reported configuration (harness/search/planning.py)
    FLAGS = "flags"  # collapsed,did_not_learn | none: never reported as best (harness/scoring/flags.py)
    PACK = "fused_pack"  # "trials 3,4,5": trained together as one fused pack (harness/training/packs.py)
    FLAG_EVIDENCE = "flags.evidence"  # the numbers behind the flags
    EXCLUDED = "flags.excluded"  # "true": flagged in a study judged by sample quality: never reported as best
    PARENT = "mlflow.parentRunId"


class Attr:
    """Optuna trial user attributes."""

    RUN_ID = "mlflow_run_id"
    PARENT_RUN = "parent_run_id"
    FAMILY = "family"
    FAILURE = "failure_reason"
    REFERENCE_STATS = "reference_stats"
    RESUMED_FROM = "resumed_from_step"
    REPORTED_CONFIG = "reference_config"  # the family whose reported configuration the trial is
    FLAGS = "flags"  # as the run tag
    EXCLUDED = "excluded"  # True: never reported as best (the run tag flags.excluded)
    REPORTED_MOVED = "reference_moved"  # {param: [reference value, value used]} where the study's space differs
    WORKER = "worker"  # {host, pid, start, trial}: the process running the trial (harness/search/workers.py)
    PACK = "fused_pack"  # [trial numbers] trained together as one fused pack (harness/training/packs.py)


class ScoreParam:
    """MLflow params that say how a run's scores were measured, written by the scoring protocol
    (harness/scoring/evaluation.py) and read by the report: compare two scores only where these agree."""

    PREFIX = "score."
    EXTRACTOR = "score.extractor"  # the feature network's name (inception | domain)
    EXTRACTOR_CHOICE = "score.extractor_choice"
    EXTRACTOR_SHA256 = "score.extractor_sha256"  # its weights' sha256
    EXTRACTOR_WEIGHTS = "score.extractor_weights"
    EXTRACTOR_IDENTITY = "score.extractor_identity"
    EXTRACTOR_QUALITY = "score.extractor_quality"
    INPUT = "score.input"  # how images reach the extractor
    REFERENCE_DATA = "score.reference_data"  # what the real images are
    REFERENCE_IDENTITY = "score.reference_identity"
    N = "score.n"  # samples in the final scores
    SAMPLE_SIZE = "score.sample_size"
    N_ROUND = "score.n_round"  # samples in each round's score
    FLOOR_FD = "score.floor_fd"  # the FD of real images against the reference (the noise floor)
    FLOOR_FD_BY_SCALE = "score.floor_fd_by_scale"  # JSON {scale: floor} for an extractor with feature blocks
    Z_SEEDS = "score.z_seeds"
    DTYPE = "score.dtype"
    KID = "score.kid"
    FD_INF = "score.fd_inf"
    PRECISION_RECALL_K = "score.precision_recall_k"
    FD_INF_FIT = "score.fd_inf_fit"  # make score only: the FD-against-1/N fit
    IMAGES = "score.images"  # make score only: the scored file
    PANEL = "score.panel"  # the validation panel's verdict (pass | warn | ...)


class StudyAttr:
    """Optuna study user attributes."""

    IDENTITY = "genbench_identity"  # the study file's identity: a rerun with another definition is refused
    EXTRACTOR = "genbench_extractor"  # the extractor the study's scores use, fixed at its first trial


OPTUNA_FIXED_PARAMS = "fixed_params"  # Optuna's own system attribute on an enqueued trial (Study.enqueue_trial)


class Artifact:
    """File names of what a trial run logs: the trial writes them, the report and the latent tools read them."""

    SAMPLES = "samples.png"
    RECONSTRUCTIONS = "reconstructions.png"
    LOSS_CURVES = "loss_curves.png"
    MODEL = "model.pt"
    MODEL_CONFIG = "model.json"  # the family, its parameters and the image shape: what load_model rebuilds from
    ARITHMETIC_ABSENT = "arithmetic_absent.txt"  # in latent/: why a run has no arithmetic picture


GRID_ARTIFACTS = {"samples": Artifact.SAMPLES, "reconstructions": Artifact.RECONSTRUCTIONS}  # picture -> its artifact
