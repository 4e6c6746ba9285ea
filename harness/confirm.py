"""`make confirm STUDY=... SEEDS=5`: re-train a study's best configurations with fresh seeds.

One trial per configuration is a single draw of the initialisation, batch order and noise; large
GAN studies re-run their winners with several seeds before claiming anything. This takes the best
`top` complete trials of each family, rebuilds their exact parameters, and trains each with seeds
study seed + 1 .. + SEEDS (fresh: never the seed the trial was chosen with, so the selection's luck
does not count). The runs go to the study's MLflow experiment under a `confirm` parent run, tagged
`confirm = true` and `config = trial-N`; the report shows mean ± 95% CI (Student t) per configuration
and calls a difference between families significant only when the intervals do not overlap.
Running it again only trains the (configuration, seed) pairs that have no finished run yet.
"""

from __future__ import annotations

import json

import mlflow
import optuna
from optuna.trial import TrialState

from harness.errors import UserError
from harness.loaders import warn
from harness.runs import ConfigRunner, open_session
from harness.search import EXTRACTOR_ATTR, IDENTITY_ATTR, Outcome, check_identity, open_storage
from harness.settings import Settings
from harness.space import suggest
from harness.studyfile import StudySpec


def best_trials(study: optuna.Study, spec: StudySpec, top: int) -> list[optuna.trial.FrozenTrial]:
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not complete:
        raise UserError(f"study {spec.study_name} has no complete trial to confirm; run it first: make study STUDY={spec.name}")
    reverse = spec.objectives[0].direction == "maximize"
    chosen = []
    for family in spec.families:
        mine = [t for t in complete if t.user_attrs.get("family", spec.families[0]) == family]
        chosen += sorted(mine, key=lambda t: t.values[0], reverse=reverse)[:top]
    return chosen


def trial_params(trial: optuna.trial.FrozenTrial, spec: StudySpec) -> tuple[str, dict]:
    """The family and every parameter the trial trained with (fixed ones and conditions included)."""
    family = trial.params.get("family", spec.families[0])
    prefix = f"{family}." if len(spec.families) > 1 else ""
    return family, suggest(optuna.trial.FixedTrial(dict(trial.params)), spec.spaces[family], prefix)


def run_confirm(spec: StudySpec, settings: Settings, seeds: int, top: int, device: str = "auto") -> Outcome:
    settings.prepare()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = open_storage(settings.storage_url)
    try:
        study = optuna.load_study(study_name=spec.study_name, storage=storage)
    except KeyError:
        raise UserError(f"no study {spec.study_name} under {settings.runs_dir}; run it first: make study STUDY={spec.name}") from None
    check_identity(study, IDENTITY_ATTR, json.loads(json.dumps(spec.identity())), spec, settings.storage_url)
    trials = best_trials(study, spec, top)
    seed_list = [spec.seed + 1 + i for i in range(seeds)]
    mlflow.set_tracking_uri(settings.tracking_uri)
    done_runs = mlflow.search_runs(experiment_names=[spec.study_name], filter_string="tags.confirm = 'true' and "
                                   "tags.state = 'COMPLETE'", max_results=100_000)
    done = set() if done_runs.empty else set(zip(done_runs["tags.config"], done_runs["params.seed"].astype(int)))
    todo = [(t, s) for t in trials for s in seed_list if (f"trial-{t.number}", s) not in done]
    if not todo:
        return Outcome(0, f"{spec.study_name}: every chosen configuration already has runs for seeds {seed_list}; "
                          "make report shows them")
    session = open_session(spec, settings, device, f"confirm {spec.study_name}: {len(trials)} configuration(s) x "
                                                   f"{seeds} seeds, {len(todo)} run(s) to train")
    check_identity(study, EXTRACTOR_ATTR, json.loads(json.dumps(session.quality.extractor.identity)), spec,
                   settings.storage_url)
    parent_id = session.start_parent(f"{spec.name}-confirm", "confirm", {"confirm.seeds": ",".join(map(str, seed_list)),
                                                                         "confirm.top": top})
    runner, key = ConfigRunner(session), session.objective_keys[0]
    failed = 0
    try:
        for trial, seed in todo:
            family, params = trial_params(trial, spec)
            run_id = runner.start(family, params, seed, f"confirm-t{trial.number}-s{seed}",
                                  {"confirm": "true", "config": f"trial-{trial.number}", "source_trial": trial.number},
                                  parent_id)
            try:
                scores = runner.run(run_id, family, params, seed, f"trial {trial.number} seed {seed}")
                print(f"trial {trial.number:>3} ({family}) seed {seed}: {key}={scores[key]:.4g} "
                      f"(the trial had {trial.values[0]:.4g})", flush=True)
            except (optuna.TrialPruned, KeyboardInterrupt):
                raise
            except Exception as e:  # recorded in its run; the other seeds go on
                failed += 1
                warn(f"trial {trial.number} seed {seed} failed: {type(e).__name__}: {e}")
    except KeyboardInterrupt:
        session.tracker.end_run(parent_id, "KILLED", {"state": "INTERRUPTED"})
        raise
    session.tracker.end_run(parent_id, "FINISHED", {"state": "FINISHED"})
    return Outcome(1 if failed == len(todo) else 0,
                   f"{len(todo) - failed} run(s) finished, {failed} failed; `make report STUDY={spec.name}` shows mean ± 95% CI")
