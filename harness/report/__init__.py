"""`make report`: the studies under RUNS_DIR as tables, plots and a page that reads like a paper.

For each study (Optuna study + MLflow experiment of the same name) it writes reports/<study>/:
index.html (self-contained: every image embedded), tables.md, the tables as CSV, and the plots as
PNG beside them. reports/index.html lists every study under RUNS_DIR (`make report STUDY=x` rebuilds
x's page alone) and holds the cross-study table of families x datasets. The parts: records.py reads
what was recorded (Optuna trials joined with MLflow runs), tables.py and plots.py make the tables and
figures, findings.py the paragraphs (generated from the numbers), page.py the HTML. Scores measured
with different protocols (extractor, sample counts, reference split) are never ranked side by side:
the cross-study table keeps one column per dataset, objective and protocol. The report reads; it
imports neither the training stack nor models/.
"""

from __future__ import annotations

from pathlib import Path

from harness.core.progress import LongTask
from harness.core.storage import Storage
from harness.report.page import write_index, write_study_report
from harness.report.plots import pareto_mask
from harness.report.records import StudyRecord, load_studies, select_studies
from harness.report.tables import best_per_family, confidence, cross_study

__all__ = ["StudyRecord", "best_per_family", "build", "confidence", "load_studies", "pareto_mask", "write_study_report"]


def build(storage: Storage, names: list[str] | None, out: Path) -> list[Path]:
    """The pages of the named studies (all when none), then the index. The index reads every study's
    record, not only the named ones (tables, no images: seconds), so that `make report STUDY=x` neither
    drops the other studies from it nor shrinks the families x datasets table to x's rows."""
    chosen = set(select_studies(storage, names))
    records = load_studies(storage)
    client = storage.mlflow()
    pages = []
    todo = [record for record in records if record.name in chosen]
    for i, record in enumerate(todo, start=1):  # a line per study, and more while a big one draws
        print(f"report {i}/{len(todo)}: {record.name} ({record.counts_text()})", flush=True)
        with LongTask(f"building the report of {record.name}", unit="page"):
            pages.append(write_study_report(record, client, out / record.name))
    return [write_index(records, pages, cross_study(records), out), *pages]
