"""The report's pages: one self-contained HTML page per study (every image embedded) with its
tables.md and CSVs, and the index with the families x datasets table."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from harness import keys
from harness.errors import warn
from harness.keys import Tag
from harness.report import plots
from harness.report.findings import findings
from harness.report.records import StudyRecord
from harness.report.tables import all_trials, best_per_family, markdown

GRIDS = {"samples": "samples.png", "reconstructions": "reconstructions.png"}  # plot -> the run's artifact

CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f2f2f2}figure{display:inline-block;margin:.5em;vertical-align:top}img{max-width:100%}
figcaption{font-size:12px;color:#555}.grid{display:flex;flex-wrap:wrap;gap:1em}.grid img{max-width:540px}
.note{color:#555;font-size:13px}"""


def _image(path: Path, title: str = "") -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    caption = f"<figcaption>{html.escape(title)}</figcaption>" if title else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(title or path.name)}">{caption}</figure>'


def _grids(record: StudyRecord, best: pd.DataFrame, client: MlflowClient, out: Path) -> list[tuple[str, str, Path]]:
    """(family, picture, file) of the grids each family's best run holds, as its family declared them."""
    plots_of = record.table.set_index("number").get(f"tags.{Tag.FAMILY_PLOTS}", pd.Series(dtype=str))
    grids = []
    for _, row in best.iterrows():
        declared = (plots_of.get(row["trial"]) or "samples").split(",")  # runs from before the tag: samples
        folder = out / "grids" / row["family"]
        folder.mkdir(parents=True, exist_ok=True)
        for plot, name in GRIDS.items():
            if plot not in declared:
                continue
            try:
                grids.append((row["family"], name, Path(client.download_artifacts(row["run_id"], name, str(folder)))))
            except MlflowException as e:  # a run cut short before it wrote its grids
                warn(f"{record.name}: trial {row['trial']} has no {name} ({e.message.splitlines()[0][:120]})")
    return grids


def write_study_report(record: StudyRecord, client: MlflowClient, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    best, trials = best_per_family(record), all_trials(record)
    best.to_csv(out / "best_per_family.csv", index=False)
    trials.to_csv(out / "trials.csv", index=False)
    paragraphs = findings(record)
    drawn = plots.plot_objective_vs_params(record, out)
    val_kl, val_recon = keys.split_key("val", "kl"), keys.split_key("val", "recon_mse")
    for x, y, name in ((val_kl, val_recon, "tradeoff_recon_kl.png"), (val_recon, record.objective, "tradeoff_objective_recon.png")):
        if y != x and (path := plots.plot_tradeoff(record, x, y, out, name)):
            drawn.append(path)
    if len(record.objectives) > 1 and (path := plots.plot_tradeoff(record, *record.objectives[:2], out, "pareto.png")):
        drawn.append(path)
    drawn += plots.plot_loss_curves(record, client, out)
    drawn += [p for p in (plots.plot_importances(record, out), plots.plot_wall_times(record, out),
                          plots.plot_cost(record, out), plots.plot_confirm(record, out)) if p]
    grids = _grids(record, best, client, out)
    protocol = "; ".join(f"{k.removeprefix('score.')}: {v}" for k, v in record.protocol.items())
    (out / "tables.md").write_text(
        f"# {record.name}\n\n" + "\n\n".join(paragraphs) + f"\n\nScore protocol: {protocol}\n\n"
        f"## Best trial per family\n\n{markdown(best)}\n## Every trial, best first\n\n{markdown(trials)}")
    page = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(record.name)}</title><style>{CSS}</style>",
            f"<h1>{html.escape(record.name)}</h1>", "".join(f"<p>{html.escape(p)}</p>" for p in paragraphs),
            f"<p class='note'>Objective: {html.escape(', '.join(f'{o} ({d})' for o, d in zip(record.objectives, record.directions)))}."
            f"</p><details class='note'><summary>Score protocol</summary>{html.escape(protocol) or 'n/a'}</details>",
            "<h2>Best trial per family</h2>", best.to_html(index=False, float_format="%.4g", na_rep=""),
            "<h2>Samples and reconstructions of the best trials</h2><div class='grid'>",
            "".join(_image(path, f"{family}: {name.removesuffix('.png')}") for family, name, path in grids), "</div>",
            "<h2>Plots</h2>", "".join(_image(p) for p in drawn),
            "<h2>Every trial, best first</h2>", trials.to_html(index=False, float_format="%.4g", na_rep="")]
    (out / "index.html").write_text("\n".join(page))
    return out / "index.html"


def write_index(pages: list[Path], table: pd.DataFrame, out: Path) -> Path:
    table.to_csv(out / "cross_study.csv", index=False)
    (out / "tables.md").write_text("# Families x datasets\n\nBest value per family; one column per dataset, objective "
                                   "and score protocol (never ranked across protocols).\n\n" + markdown(table))
    links = "".join(f"<li><a href='{html.escape(p.parent.name)}/index.html'>{html.escape(p.parent.name)}</a></li>" for p in pages)
    (out / "index.html").write_text(
        f"<!doctype html><meta charset='utf-8'><title>genbench report</title><style>{CSS}</style>"
        f"<h1>genbench report</h1><ul>{links}</ul><h2>Families x datasets</h2>"
        "<p class='note'>Best value per family; one column per dataset, objective and score protocol: scores "
        "measured differently are never ranked side by side.</p>" + table.to_html(index=False, na_rep=""))
    return out / "index.html"
