"""`make confirm STUDY=... SEEDS=5`: re-train a study's best configurations with fresh seeds.

One trial per configuration is a single draw of the initialisation, batch order and noise; large
GAN studies re-run their winners with several seeds before claiming anything. This takes the best
`top` complete trials of each family, rebuilds their exact parameters, and trains each with seeds
study seed + 1 .. + SEEDS (fresh: never the seed the trial was chosen with, so the selection's luck
does not count). The runs go to the study's MLflow experiment under a `confirm` parent run, tagged
`confirm = true` and `config = trial-N`; the report shows mean ± 95% CI (Student t) per configuration
and tests the best against each other one with Welch's t-test (the difference with its 95% interval,
Holm-corrected when several pairs are compared) rather than asking whether the intervals overlap.
Running it again only trains the (configuration, seed) pairs that have no finished run yet.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

from harness.core import keys
from harness.core.errors import UserError, defer_interrupts, warn
from harness.core.keys import Attr, Tag
from harness.core.storage import Storage
from harness.family.space import suggest
from harness.scoring.flags import ranked_trials
from harness.search.outcome import FailureKind, State
from harness.search.runner import StudyResult, check_identity
from harness.search.session import Session, inception_cross_check, open_session
from harness.search.trial import TrialJob, TrialRunner
from harness.study.studyfile import StudySpec
from harness.tracking.client import Tracker, runs_frame
from harness.tracking.publish import Publisher

MIN_SEEDS = 3  # fewer gives no usable Student-t interval (t(0.975, 1) = 12.7)


def best_trials(study: optuna.Study, spec: StudySpec, top: int,
                families: list[str] | None = None) -> list[optuna.trial.FrozenTrial]:
    """The best `top` unflagged complete trials of each family (of `families`, default all)."""
    for family in families or []:
        if family not in spec.families:
            raise UserError(f"FAMILIES: {family!r} is not a family of {spec.study_name} ({', '.join(spec.families)})")
    complete = ranked_trials(study)
    if not complete:
        raise UserError(f"study {spec.study_name} has no complete, unflagged trial to confirm (collapsed or did-not-learn "
                        f"trials are never confirmed as best); run it first, or with more TRIALS: make study STUDY={spec.name}")
    reverse = spec.objectives[0].direction == "maximize"
    chosen = []
    for family in families or spec.families:
        mine = [t for t in complete if t.user_attrs.get(Attr.FAMILY, spec.families[0]) == family]
        chosen += sorted(mine, key=lambda t: t.values[0], reverse=reverse)[:top]
    return chosen


def trial_params(trial: optuna.trial.FrozenTrial, spec: StudySpec) -> tuple[str, dict]:
    """The family and every parameter the trial trained with (fixed ones and conditions included)."""
    family = trial.params.get("family", spec.families[0])
    prefix = f"{family}." if len(spec.families) > 1 else ""
    return family, suggest(optuna.trial.FixedTrial(dict(trial.params)), spec.spaces[family], prefix)


def _the_study(spec: StudySpec, storage: Storage) -> optuna.Study:
    """The study's Optuna study, refused when it was never run or was run with another definition."""
    storage.prepare()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        study = optuna.load_study(study_name=spec.study_name, storage=storage.optuna())
    except KeyError:
        raise UserError(f"no study {spec.study_name} under {storage.runs_dir}; run it first: make study STUDY={spec.name}") from None
    check_identity(study, keys.StudyAttr.IDENTITY, json.loads(json.dumps(spec.identity())), spec, storage.storage_url)
    return study


def _train_seeds(session: Session, publisher: Publisher, parent_id: str, todo: list[tuple[FrozenTrial, int]]) -> int:
    """Each (trial, seed) re-trained as a run under the parent: how many failed (each recorded in its run)."""
    spec, runner, key = session.spec, TrialRunner(session), session.objective_keys[0]
    failed = 0
    for trial, seed in todo:
        family, params = trial_params(trial, spec)
        run_id = publisher.start_trial(family, params, seed, f"confirm-t{trial.number}-s{seed}",
                                       {Tag.CONFIRM: "true", Tag.CONFIG: f"trial-{trial.number}",
                                        "source_trial": trial.number}, parent_id)
        with tempfile.TemporaryDirectory(prefix="genbench-confirm-") as scratch:
            outcome = runner.run(TrialJob(family, params, seed, f"trial {trial.number} seed {seed}"),
                                 publisher.sink(run_id), Path(scratch))
            publisher.publish(run_id, outcome)
        if outcome.state == State.COMPLETE:
            fid = f", fid={outcome.metrics['fid']:.4g}" if "fid" in outcome.metrics and key != "fid" else ""
            print(f"trial {trial.number:>3} ({family}) seed {seed}: {key}={outcome.metrics[key]:.4g} "
                  f"(the trial had {trial.values[0]:.4g}){fid}", flush=True)
            continue
        if outcome.failure is not None and outcome.failure.kind == FailureKind.INTERRUPTED:
            raise KeyboardInterrupt
        failed += 1  # recorded in its run; the other seeds go on
        warn(f"trial {trial.number} seed {seed} failed: {outcome.failure.reason if outcome.failure else outcome.state}")
    return failed


def run_confirm(spec: StudySpec, storage: Storage, seeds: int, top: int, device: str = "auto",
                inception: str = "auto", inception_samples: int = 0, families: list[str] | None = None) -> StudyResult:
    """inception, inception_samples: Inception FID beside the study's score on every run
    (session.inception_cross_check)."""
    if seeds < MIN_SEEDS:
        raise UserError(f"--seeds {seeds}: a 95 % interval needs at least {MIN_SEEDS} seeds (from 2, Student's t makes "
                        f"it 12.7 standard deviations wide); give SEEDS={MIN_SEEDS} or more (the default is 5)")
    study = _the_study(spec, storage)
    trials = best_trials(study, spec, top, families)
    seed_list = [spec.seed + 1 + i for i in range(seeds)]
    done_runs = runs_frame(storage.mlflow(), spec.study_name,
                           f"tags.{Tag.CONFIRM} = 'true' and tags.{Tag.STATE} = 'COMPLETE'")
    done = set() if done_runs.empty else set(zip(done_runs[f"tags.{Tag.CONFIG}"], done_runs["params.seed"].astype(int)))
    todo = [(t, s) for t in trials for s in seed_list if (f"trial-{t.number}", s) not in done]
    if not todo:
        return StudyResult(0, f"{spec.study_name}: every chosen configuration already has runs for seeds {seed_list}; "
                              "make report shows them")
    session = open_session(spec, storage, device, f"confirm {spec.study_name}: {len(trials)} configuration(s) x "
                                                  f"{seeds} seeds, {len(todo)} run(s) to train")
    check_identity(study, keys.StudyAttr.EXTRACTOR, json.loads(json.dumps(session.quality.extractor.identity)), spec,
                   storage.storage_url)
    session.cross_check = inception_cross_check(session, inception, inception_samples)
    checked = {} if session.cross_check is None else {
        f"cross_check.{k.removeprefix(keys.ScoreParam.PREFIX)}": v for k, v in session.cross_check.protocol().items()}
    publisher = Publisher(session, Tracker(storage, spec.study_name))
    parent_id = publisher.start_parent(f"{spec.name}-confirm", "confirm", {"confirm.seeds": ",".join(map(str, seed_list)),
                                                                           "confirm.top": top, **checked})
    try:
        failed = _train_seeds(session, publisher, parent_id, todo)
    except KeyboardInterrupt:
        defer_interrupts()
        publisher.tracker.end_run(parent_id, "KILLED", {Tag.STATE: "INTERRUPTED"})
        raise
    publisher.tracker.end_run(parent_id, "FINISHED", {Tag.STATE: "FINISHED"})
    return StudyResult(1 if failed == len(todo) else 0,
                       f"{len(todo) - failed} run(s) finished, {failed} failed; `make report STUDY={spec.name}` shows mean ± 95% CI")
