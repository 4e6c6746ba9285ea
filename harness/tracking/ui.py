"""`make ui`: MLflow's server for RUNS_DIR, stopped with every process it starts, and the links that
open a study in MLflow's classic runs view and in a comparison of its trials on the objective.

What the UI of MLflow 3.17 reads, from its bundle (mlflow/server/js/build/static/js), and nothing
patched:
- GenAI or classic view: the `workflowType` URL parameter (`machine_learning`), else the choice last
  made in the browser's sidebar (GenAI at first). The experiment's `mlflow.experimentKind` tag, which
  the tracker sets, is not read for this while the sidebar's switch is enabled, as it is in 3.17.
- The runs table's sort and filter are URL parameters (orderByKey, orderByAsc, searchFilter, ...);
  its columns, grouping and charts are not. Those come from a shared view: an experiment tag
  `mlflow.sharedViewState.<key>` holding the view as JSON, opened with `?viewStateShareKey=<key>`
  (what the UI's own "share" writes).
- Child runs nest under their parent only while the table is sorted by start time and not filtered,
  and they start collapsed: no URL parameter expands them, and a shared view drops `runsExpanded`.
  So the runs link groups the runs by parent run (tag mlflow.parentRunId; groups start expanded)
  and sorts each group by the objective.
- The compare-runs page (#/compare-runs?runs=[...]&experiments=[...]) reads no parameter that picks a
  metric: its plots start on the first metric the runs share (train_loss). So the compare link opens
  the runs page's chart view (compareRunsMode=CHART) on the complete trials, with charts of the
  objective that the shared view defines.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import pandas as pd
from mlflow import MlflowClient

from harness.core import keys
from harness.core.errors import UserError
from harness.core.keys import Tag, resolve_objective
from harness.family.space import FixedParam, on_log_scale
from harness.study.studyfile import StudySpec
from harness.tracking.client import EXPERIMENT_KIND, ML_EXPERIMENT, runs_frame
from harness.tracking.ports import check_port_free
from harness.tracking.watchdog import STOP_GRACE_S, end_session, session_processes

SHARED_VIEW = "mlflow.sharedViewState."  # + key: an experiment tag the UI opens with ?viewStateShareKey=key
RUNS_VIEW, COMPARE_VIEW = "genbench-runs", "genbench-compare"
CLASSIC = "workflowType=machine_learning"
SCATTERS = 4  # at most this many parameter-against-objective charts
CHART_COLUMNS = 1  # charts per row in the compare view: at 1366 px, MLflow's default 3 leave each about 130 px
# wide, and 2 about 210 px while the assistant panel MLflow opens on a first visit is open; 1: 420 px, 800 px without it
RUN_COLOUR = "mlflow.runColor"  # a run tag the UI draws the run in, in every chart and beside its name
FLAGGED_COLOUR, UNFLAGGED_COLOUR = "#d62728", "#1f77b4"  # red: flagged (collapsed, did not learn); blue: the rest
MODEL_METRICS, SYSTEM_METRICS = "Model metrics", "System metrics"  # the UI's sections of keys with no "/" and of system/


@dataclass(frozen=True)
class StudyLinks:
    runs: str  # the runs table, grouped by parent run, sorted by the objective
    compare: str | None  # the complete trials' charts on the objective; None before the first one
    objective: str  # as logged (fd -> fd_domain)
    complete: int  # complete trials


def column(kind: str, key: str) -> str:
    """A runs-table column as the UI names it: metrics.`val_fd_domain`."""
    return f"{kind}.`{key}`"


def study_links(client: MlflowClient, spec: StudySpec, base: str) -> StudyLinks:
    """Write the study's two shared views into its experiment and return the links that open them.
    An experiment made before the tracker set its kind gets it too."""
    experiment = client.get_experiment_by_name(spec.study_name)
    if experiment is None:
        raise UserError(f"no MLflow experiment {spec.study_name}; run the study first")
    if EXPERIMENT_KIND not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND, ML_EXPERIMENT[EXPERIMENT_KIND])
    runs = runs_frame(client, spec.study_name)
    objectives = objective_keys(runs, spec)
    swept = swept_params(spec)
    order = {"orderByKey": column("metrics", objectives[0]), "orderByAsc": spec.objectives[0].direction == "minimize"}
    columns = ([column("metrics", o) for o in objectives] + [column("params", p) for p in swept]
               + [column("tags", Tag.STATE), column("tags", Tag.FLAGS)])
    base_view = {**order, "selectedColumns": columns, "runsHiddenMode": "SHOW_ALL"}
    runs_view = {**base_view, "searchFilter": "", "groupsExpanded": {},
                 "groupBy": {"aggregateFunction": "min" if order["orderByAsc"] else "max",
                             "groupByKeys": [{"mode": "tag", "groupByData": Tag.PARENT}]}}
    client.set_experiment_tag(experiment.experiment_id, SHARED_VIEW + RUNS_VIEW, json.dumps(runs_view))
    page = f"{base}/#/experiments/{experiment.experiment_id}/runs?{CLASSIC}"
    complete = count_complete(runs)
    if not complete:
        return StudyLinks(f"{page}&viewStateShareKey={RUNS_VIEW}", None, objectives[0], 0)
    mark_flagged(client, runs)
    metrics = logged_metrics(runs)
    section = "genbench-objective"
    compare_view = {**base_view, "groupBy": None,
                    "searchFilter": f"tags.{Tag.STATE} = 'COMPLETE' and tags.{Tag.TRIAL} LIKE '%'",
                    "compareRunCharts": objective_charts(objectives, spec, section, complete, metrics),
                    "compareRunSections": chart_sections(section, f"objective {objectives[0]}", metrics),
                    "isAccordionReordered": True}  # the sections in the order given: the objective's first
    client.set_experiment_tag(experiment.experiment_id, SHARED_VIEW + COMPARE_VIEW, json.dumps(compare_view))
    return StudyLinks(f"{page}&viewStateShareKey={RUNS_VIEW}",
                      f"{page}&compareRunsMode=CHART&viewStateShareKey={COMPARE_VIEW}", objectives[0], complete)


def logged_metrics(runs: pd.DataFrame) -> list[str]:
    return [c.removeprefix("metrics.") for c in runs if c.startswith("metrics.")]


def chart_sections(uuid: str, name: str, metrics: list[str]) -> list[dict[str, Any]]:
    """The compare view's sections: the objective's, open, first; then, folded, every section the UI
    would otherwise add on its own for the metrics logged (one per prefix before a "/", `Model
    metrics` for the rest), which it sorts by name above the objective's and opens."""
    section = {"isReordered": False, "deleted": False, "isGenerated": False}
    prefixes = {m.rsplit("/", 1)[0] if "/" in m else MODEL_METRICS for m in metrics}
    prefixes = {SYSTEM_METRICS if p == "system" else p for p in prefixes}
    return [{**section, "uuid": uuid, "name": name, "display": True, "columns": CHART_COLUMNS},
            *({**section, "uuid": f"genbench-folded-{i}", "name": p, "display": False, "isGenerated": True}
              for i, p in enumerate(sorted(prefixes)))]


def mark_flagged(client: MlflowClient, runs: pd.DataFrame) -> None:
    """Colour each complete trial's run as the UI draws it: red when flagged (collapsed or did not
    learn, never reported as best), blue otherwise, so the compare charts show which points to
    discount. A run already so coloured is left alone."""
    if runs.empty or f"tags.{Tag.TRIAL}" not in runs:
        return
    complete = runs[(runs[f"tags.{Tag.STATE}"] == "COMPLETE") & runs[f"tags.{Tag.TRIAL}"].notna()]
    flags = complete.get(f"tags.{Tag.FLAGS}", pd.Series("none", index=complete.index)).fillna("none")
    colours = complete.get(f"tags.{RUN_COLOUR}", pd.Series(None, index=complete.index, dtype=object))
    for run_id, flag, colour in zip(complete["run_id"], flags, colours):
        wanted = UNFLAGGED_COLOUR if flag == "none" else FLAGGED_COLOUR
        if colour != wanted:
            client.set_tag(run_id, RUN_COLOUR, wanted)


def home_links(client: MlflowClient, base: str) -> list[str]:
    """Where `make ui` without a study sends a user of MLflow's classic runs view: the experiments
    list in the machine-learning view (MLflow 3 otherwise opens its GenAI home), and the runs of the
    study recorded last."""
    lines = [f"experiments, in MLflow's machine-learning view: {base}/#/experiments?{CLASSIC}"]
    studies = [e for e in client.search_experiments() if e.name != "Default"]
    if studies:
        latest = max(studies, key=lambda e: e.last_update_time or e.creation_time or 0)
        lines.append(f"the latest study, {latest.name}, its runs: {base}/#/experiments/{latest.experiment_id}/runs?{CLASSIC}")
    else:
        lines.append("no study recorded yet: make study STUDY=smoke records one")
    return lines


def objective_keys(runs: pd.DataFrame, spec: StudySpec) -> list[str]:
    """The objectives as the runs logged them (their `objective` tag), else the study's names resolved
    with the extractor the runs logged (runs written before the tag)."""
    tagged = runs.get(f"tags.{Tag.OBJECTIVE}", pd.Series(dtype=object)).dropna()
    if len(tagged):
        return str(tagged.iloc[0]).split(",")
    extractors = runs.get(f"params.{keys.ScoreParam.EXTRACTOR}", pd.Series(dtype=object)).dropna()
    return [resolve_objective(o.metric, str(extractors.iloc[0])) if len(extractors) else o.metric
            for o in spec.objectives]


def swept_params(spec: StudySpec) -> list[str]:
    """The parameters the study searches (not fixed), in the space's order; `family` when it has several."""
    names = ["family"] if len(spec.families) > 1 else []
    for space in spec.spaces.values():
        names += [n for n, p in space.items() if not isinstance(p, FixedParam) and n not in names]
    return names


def count_complete(runs: pd.DataFrame) -> int:
    """Complete trials (seed re-runs of `confirm` carry no trial number)."""
    if runs.empty or f"tags.{Tag.TRIAL}" not in runs:
        return 0
    return int(((runs[f"tags.{Tag.STATE}"] == "COMPLETE") & runs[f"tags.{Tag.TRIAL}"].notna()).sum())


def objective_charts(objectives: list[str], spec: StudySpec, section: str, runs: int,
                     metrics: list[str] = ()) -> list[dict[str, Any]]:
    """A bar chart of each objective over the trials, a parallel-coordinates chart of the parameters
    every family searches and the objectives, and each searched parameter against the objective, in
    the UI's chart-card format (mlflow's RunsChartsCardConfig). A parameter on a log scale is drawn
    on its logged log10 (`metrics`: the keys the runs logged), there being no log axis to ask for."""
    card = {"runsCountToCompare": max(runs, 10), "metricSectionId": section, "deleted": False, "isGenerated": False}
    charts: list[dict[str, Any]] = [{**card, "uuid": f"genbench-bar-{i}", "type": "BAR", "metricKey": key,
                                     "displayName": key} for i, key in enumerate(objectives)]
    shared = [p for p in swept_params(spec) if p != "family"
              and all(p in space and not isinstance(space[p], FixedParam) for space in spec.spaces.values())]
    logs = {p for p in swept_params(spec) if keys.log10_key(p) in metrics
            and any(on_log_scale(s[p]) for s in spec.spaces.values() if p in s)}
    if shared:  # a log-scale parameter's axis is its log10, a metric
        charts.append({**card, "uuid": "genbench-parallel", "type": "PARALLEL",
                       "selectedParams": [p for p in shared if p not in logs],
                       "selectedMetrics": [keys.log10_key(p) for p in shared if p in logs] + objectives, "showAllRuns": False})
    for i, param in enumerate([p for p in swept_params(spec) if p != "family"][:SCATTERS]):
        x = {"key": keys.log10_key(param), "type": "METRIC"} if param in logs else {"key": param, "type": "PARAM"}
        charts.append({**card, "uuid": f"genbench-scatter-{i}", "type": "SCATTER",
                       "xaxis": x, "yaxis": {"key": objectives[0], "type": "METRIC"}})
    return charts


# ---- the server ---------------------------------------------------------------------------------------

def serve(backend: str, artifacts: str, host: str, port: int, workers: int) -> int:
    """Run `mlflow server` until it exits or this process gets Ctrl-C, SIGTERM or SIGHUP; then stop
    every process it started and return 128 + the signal (130 for Ctrl-C), or the server's status.

    MLflow's server starts uvicorn and a job runner that starts several huey consumers; stopped early
    it leaves consumers running. So the server runs in a session of its own (Ctrl-C on the terminal
    reaches only this process) and stopping signals that whole session: SIGTERM, a few seconds, then
    SIGKILL. Killed outright (SIGKILL: nothing runs), this process cannot stop it, so a watchdog
    (harness/tracking/watchdog.py) ends the server's session once this process is gone. The store
    URIs go through the environment: argv shows in ps to every user."""
    mlflow = shutil.which("mlflow", path=os.path.dirname(sys.executable)) or shutil.which("mlflow")
    if mlflow is None:
        raise UserError("the mlflow command is not installed; run `make setup`")
    check_port_free(host, port)
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": backend, "MLFLOW_ARTIFACTS_DESTINATION": artifacts}
    received: list[int] = []
    wanted = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # Ctrl-C, kill, the terminal closing
    previous = {s: signal.signal(s, lambda signum, _frame: received.append(signum)) for s in wanted}
    server = watchdog = None
    try:
        server = subprocess.Popen([mlflow, "server", "--serve-artifacts", "--host", host, "--port", str(port),
                                   "--workers", str(workers)], env=env, start_new_session=True)
        watchdog = subprocess.Popen([sys.executable, "-m", "harness.tracking.watchdog", str(server.pid)],
                                    stdin=subprocess.DEVNULL, start_new_session=True)  # ends it if we are killed
        while not received and server.poll() is None:
            time.sleep(0.2)  # a signal only records itself, so none can land halfway through Popen
    finally:
        for s in wanted:  # a second Ctrl-C while stopping is ignored, so the stop always finishes
            signal.signal(s, signal.SIG_IGN)
        if server is not None:
            stopped = stop_session(server)
            print(f"stopped the MLflow server: {stopped} process(es) ended", file=sys.stderr, flush=True)
        if watchdog is not None:
            watchdog.kill()
            watchdog.wait()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 128 + received[0] if received else server.returncode


def stop_session(leader: subprocess.Popen, grace: float = STOP_GRACE_S) -> int:
    """End every process of the session `leader` began (its process group and any process that left
    the group): SIGTERM, up to `grace` seconds, then SIGKILL; reap the leader. Returns how many
    processes were alive when it began."""
    count = len(session_processes(leader.pid))
    end_session(leader.pid, grace, reap=leader.poll)
    leader.wait()
    return count
