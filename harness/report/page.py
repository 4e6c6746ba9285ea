"""The report's pages: one self-contained HTML page per study (every image embedded) with its
tables.md and CSVs, and the index with the families x datasets table."""

from __future__ import annotations

import base64
import html
import json
import time
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from PIL import Image

from harness.core import keys
from harness.core.errors import warn
from harness.core.keys import Tag
from harness.report import plots
from harness.report.findings import findings
from harness.report.records import StudyRecord, latent_notes
from harness.report.strips import GRID_COLUMNS, MIN_FACE_PX, Strip, trial_strips
from harness.report.tables import all_trials, best_per_family, markdown, protocol_line
from harness.report.verdicts import Verdict, judge, recorded_claims

CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f2f2f2}figure{display:inline-block;margin:.5em;vertical-align:top}img{max-width:100%}
figcaption{font-size:12px;color:#555}.grid{display:flex;flex-wrap:wrap;gap:1em}.grid img{max-width:100%}
.note{color:#555;font-size:13px}.wide{overflow-x:auto}
.strips img{image-rendering:pixelated;max-width:none;display:block;margin:2px 0}.strip p{margin:.8em 0 .2em}
.claims th{text-align:left}.trials table{font-size:12px}
.held{color:#1a7f37}.did-not-hold{color:#b42318}.inconclusive{color:#8a6d00}
.inconclusive.outside{color:#c4320a}"""


GRID_NAMES = {artifact: picture for picture, artifact in keys.GRID_ARTIFACTS.items()}  # samples.png -> samples
GRID_SHOWN_PX = 1088  # a best trial's grid is shown this wide (whole-pixel steps): 32 px faces at 64 px and more


def _face_marks(faces: int) -> str:
    """A grid's faces per row and the least size a face may be shown at, for the browser test."""
    return f' data-faces="{faces}" data-min-px="{MIN_FACE_PX}"' if faces else ""


def _image(path: Path, title: str = "", at_least: int = 0, faces: int = 0) -> str:
    """The picture embedded; `at_least`: shown widened by a whole factor to about that many pixels,
    pixels kept sharp (a 16-wide grid of 32 px faces is otherwise 33 px a face on the page); `faces`:
    a grid's faces per row, marked for the browser test as in `_embedded`."""
    data = base64.b64encode(path.read_bytes()).decode()
    caption = f"<figcaption>{html.escape(title)}</figcaption>" if title else ""
    size = _face_marks(faces)
    if at_least:
        with Image.open(path) as picture:
            width = picture.width * max(1, at_least // picture.width)
        size += f' width="{width}" style="image-rendering:pixelated;max-width:none"'
    return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(title or path.name)}"{size}>{caption}</figure>'


def _grids(record: StudyRecord, best: pd.DataFrame, client: MlflowClient, out: Path) -> list[tuple[str, str, Path]]:
    """(family, picture, file) of the grids each family's best run holds, as its family declared them."""
    plots_of = record.table.set_index("number").get(f"tags.{Tag.FAMILY_PLOTS}", pd.Series(dtype=str))
    grids = []
    for _, row in best.iterrows():
        declared = (plots_of.get(row["trial"]) or "samples").split(",")  # runs from before the tag: samples
        folder = out / "grids" / row["family"]
        folder.mkdir(parents=True, exist_ok=True)
        for plot, name in keys.GRID_ARTIFACTS.items():
            if plot not in declared:
                continue
            try:
                grids.append((row["family"], name, Path(client.download_artifacts(row["run_id"], name, str(folder)))))
            except MlflowException as e:  # a run cut short before it wrote its grids
                warn(f"{record.name}: trial {row['trial']} has no {name} ({e.message.splitlines()[0][:120]})")
    return grids


def _embedded(path: Path, alt: str, faces: int = 0) -> str:
    """The picture inline; `faces`: how many faces a row of it holds, so a browser test can tell each
    face's shown size (data-faces, data-min-px)."""
    return f'<img src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}" alt="{html.escape(alt)}"{_face_marks(faces)}>'


def claims_frame(verdicts: list[Verdict]) -> pd.DataFrame:
    return pd.DataFrame([{"claim": v.claim.says, "source": v.claim.source, "verdict": v.verdict, "evidence": v.evidence}
                         for v in verdicts], columns=["claim", "source", "verdict", "evidence"])


def _leaning(verdict: Verdict) -> str:
    """An inconclusive single run says which way it leans, so one far outside the claim does not read
    like one inside it."""
    if not verdict.leaning:
        return ""
    return f"<br><span class='note'>one run, {verdict.leaning} the claimed range</span>"


def _claims_html(verdicts: list[Verdict]) -> str:
    if not verdicts:
        return "<p class='note'>This study declares no claims of the seed reports ([[claims]] in its study file).</p>"
    rows = "".join(f"<tr><td style='text-align:left'>{html.escape(v.claim.says)}<br><span class='note'>"
                   f"{html.escape(v.claim.source)}</span></td><td class='{v.verdict.replace(' ', '-')} {v.leaning}'><b>"
                   f"{html.escape(v.verdict)}</b>{_leaning(v)}</td><td style='text-align:left'>{html.escape(v.evidence)}</td></tr>"
                   for v in verdicts)
    return ("<table class='claims'><tr><th>the reports said</th><th>here</th><th>the numbers behind it</th></tr>" + rows + "</table>"
            "<p class='note'>held / did not hold: a 95% interval excludes the other answer; inconclusive otherwise "
            "(one run has no interval: <code>make confirm</code> re-trains the best configurations with fresh seeds).</p>")


def readable(value: str) -> str:
    """A protocol value as a person reads it: a JSON object or list recorded as a param becomes
    "key: value; ..." (one level deep), anything else stays as it was."""
    try:
        parsed = json.loads(value)
    except (TypeError, ValueError):
        return str(value)
    if isinstance(parsed, dict):
        return "; ".join(f"{k}: {readable(json.dumps(v)) if isinstance(v, (dict, list)) else v}" for k, v in parsed.items())
    if isinstance(parsed, list):
        return ", ".join(map(str, parsed))
    return str(value)


def _protocol_html(protocol: dict[str, str]) -> str:
    if not protocol:
        return "n/a"
    rows = "".join(f"<tr><th>{html.escape(k.removeprefix(keys.ScoreParam.PREFIX))}</th>"
                   f"<td style='text-align:left'>{html.escape(readable(v))}</td></tr>" for k, v in protocol.items())
    return f"<table class='protocol'>{rows}</table>"


def _trials_html(record: StudyRecord, trials: pd.DataFrame) -> str:
    """Every trial in rows of one height that fit the page: its state, flags, the objective and its
    per-scale parts, the swept parameters and its times; flag evidence and failures listed under it
    (every column is in trials.csv)."""
    shown = ["trial", "state", "family", "flags", *record.objectives,
             *[c for c in trials if c.startswith(f"{record.objective}{keys.SCALE_SEP}")],
             *[p for p in record.swept if p in trials], "train_s", "wall_s"]
    table = trials[[c for c in dict.fromkeys(shown) if c in trials]].copy()
    if "flags" in table:  # collapsed, did_not_learn: a cell that can wrap, so the rows fit the page
        table["flags"] = table["flags"].map(lambda v: v.replace(",", ", ") if isinstance(v, str) else v)
    notes = [f"trial {row['trial']}: {text}" for _, row in trials.iterrows()
             for text in (row.get("flag evidence", ""), row.get("failure", "")) if isinstance(text, str) and text]
    listed = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    table.columns = [c.replace("_", "_\u200b").replace("/", "/\u200b") for c in table.columns]  # headers wrap there
    return (table.to_html(index=False, float_format="%.4g", na_rep="")
            + "<p class='note'>Every score and parameter of every trial: trials.csv beside this page.</p>"
            + (f"<ul class='note'>{listed}</ul>" if listed else ""))


def _shown(value: object) -> str:
    if isinstance(value, float):
        return "" if pd.isna(value) else f"{value:.4g}"
    return "" if value is None else str(value)


def _best_html(best: pd.DataFrame) -> str:
    """The best trial of each family as a column (a row per score and parameter): some forty values
    fit a laptop's width this way, where a row of them scrolls sideways."""
    rows = "".join(f"<tr><th>{html.escape(str(column))}</th>" + "".join(
        f"<td>{html.escape(_shown(v))}</td>" for v in best[column]) + "</tr>" for column in best if column != "family")
    head = "".join(f"<th>{html.escape(str(f))}</th>" for f in best["family"])
    return f"<table class='best'><tr><th></th>{head}</tr>{rows}</table>"


def _strips_html(strips: list[Strip]) -> str:
    if not strips:
        return "<p class='note'>No trial has finished its sample grids yet.</p>"
    rows = "".join(f"<div class='strip'><p>{html.escape(s.label)}</p>" + "".join(
        _embedded(s.pictures[name], f"trial {s.trial} {name}", GRID_COLUMNS[name]) for name in ("samples", "reconstructions")
        if name in s.pictures) + "</div>" for s in strips)  # the label above its pictures: 16 faces of 64 px fit the page
    return (f"<p class='note'>The first row of every trial's grids, each face at {MIN_FACE_PX} px or more: samples from "
            "the same fixed z, then reconstructions (each reference face, then its reconstruction) of the same "
            "validation images.</p><div class='wide strips'>" + rows + "</div>")


def write_study_report(record: StudyRecord, client: MlflowClient, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    best, trials = best_per_family(record), all_trials(record)
    best.to_csv(out / "best_per_family.csv", index=False)
    trials.to_csv(out / "trials.csv", index=False)
    claimed = recorded_claims(record, client)
    paragraphs = findings(record, claimed) + latent_notes(record, client)
    drawn = plots.plot_objective_vs_params(record, out)
    val_kl, val_recon = keys.split_key("val", "kl"), keys.split_key("val", "recon_mse")
    for x, y, name in ((val_kl, val_recon, "tradeoff_recon_kl.png"), (val_recon, record.objective, "tradeoff_objective_recon.png")):
        if y != x and (path := plots.plot_tradeoff(record, x, y, out, name)):
            drawn.append(path)
    if len(record.objectives) > 1 and (path := plots.plot_tradeoff(record, *record.objectives[:2], out, "pareto.png")):
        drawn.append(path)
    drawn += plots.plot_loss_curves(record, client, out)
    drawn += [p for p in (plots.plot_quality_vs_cost(record, client, out), plots.plot_scales(record, out)) if p]
    drawn += [p for p in (plots.plot_importances(record, out), plots.plot_wall_times(record, out),
                          plots.plot_cost(record, out), plots.plot_confirm(record, out)) if p]
    grids = _grids(record, best, client, out)
    strips = trial_strips(record, client, out)
    verdicts = judge(record, claimed)
    claims = claims_frame(verdicts)
    claims.to_csv(out / "claims.csv", index=False)
    if verdicts:
        paragraphs = [*paragraphs, "The seed reports' claims this study tests: " + "; ".join(
            f"{v.claim.says}: {v.verdict}" for v in verdicts) + " (the numbers and intervals: the claims table below)."]
    measured = protocol_line(record)
    protocol = "; ".join(f"{k.removeprefix(keys.ScoreParam.PREFIX)}: {readable(v)}" for k, v in record.protocol.items())
    measured_md = f"_Measured with: {measured}._\n\n"
    strip_lines = "".join(f"- {s.label}: " + ", ".join(f"![{name}]({p.relative_to(out)})" for name, p in s.pictures.items())
                          + "\n" for s in strips)
    (out / "tables.md").write_text(
        f"# {record.name}\n\n" + "\n\n".join(paragraphs) + "\n\n## The reports' claims, checked\n\n"
        + markdown(claims) + f"\nScore protocol: {protocol}\n\n## Best trial per family\n\n{measured_md}{markdown(best)}"
        f"\n## Every trial, best first\n\n{measured_md}{markdown(trials)}\n## Samples of every trial\n\n{strip_lines}")
    measured_html = f"<p class='note'>Measured with: {html.escape(measured)}.</p>"
    page = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(record.name)}</title><style>{CSS}</style>",
            f"<h1>{html.escape(record.name)}</h1>", "".join(f"<p>{html.escape(p)}</p>" for p in paragraphs),
            f"<p class='note'>Objective: {html.escape(', '.join(f'{o} ({d})' for o, d in zip(record.objectives, record.directions)))}."
            f"</p><details class='note'><summary>Score protocol</summary>{_protocol_html(record.protocol)}</details>",
            "<h2>The reports' claims, checked</h2>", _claims_html(verdicts),
            "<h2>Best trial per family</h2>", measured_html, "<div class='wide'>",
            _best_html(best), "</div>",
            "<h2>Samples and reconstructions of the best trials</h2><div class='grid'>",
            "".join(_image(path, f"{family}: {name.removesuffix('.png')}", GRID_SHOWN_PX, GRID_COLUMNS[GRID_NAMES[name]])
                    for family, name, path in grids), "</div>",
            "<h2>Samples of every trial</h2>", _strips_html(strips),
            "<h2>Plots</h2>", "".join(_image(p) for p in drawn),
            "<h2>Every trial, best first</h2>", measured_html, "<div class='wide trials'>",
            _trials_html(record, trials), "</div>"]
    (out / "index.html").write_text("\n".join(page))
    return out / "index.html"


def _link(name: str) -> str:
    return f'<a href="{html.escape(name)}/index.html">{html.escape(name)}</a>'


def _index_entry(record: StudyRecord, out: Path, fresh: set[Path]) -> tuple[str, bool, str, str]:
    """(study, whether it has a page, the page's status, its trials' states) for the index."""
    page = out / record.name / "index.html"
    if page.resolve() in fresh:
        status = "rebuilt now"
    elif page.is_file():
        written = time.strftime("%Y-%m-%d %H:%M", time.localtime(page.stat().st_mtime))
        status = f"not rebuilt this time; its page is from {written}"
    else:
        status = f"no report yet: make report STUDY={record.name}"
    return record.name, page.is_file(), status, record.counts_text()


def write_index(records: list[StudyRecord], rebuilt: list[Path], table: pd.DataFrame, out: Path) -> Path:
    """reports/index.html: every study under RUNS_DIR with its trials' states and its page, marked rebuilt
    now, not rebuilt this time (`make report STUDY=x` rebuilds x alone) or missing; and the families x
    datasets table of them all."""
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "cross_study.csv", index=False)
    entries = [_index_entry(record, out, {p.resolve() for p in rebuilt}) for record in records]
    studies = "".join(f"- {f'[{name}]({name}/index.html)' if linked else name}: {counts} ({status})\n"
                      for name, linked, status, counts in entries)
    (out / "tables.md").write_text(f"# Studies\n\n{studies}\n# Families x datasets\n\nBest value per family; one "
                                   "column per dataset, objective and score protocol (never ranked across protocols)."
                                   "\n\n" + markdown(table))
    items = "".join(f"<li>{_link(name) if linked else html.escape(name)}: {html.escape(counts)} "
                    f"<span class='note'>({html.escape(status)})</span></li>" for name, linked, status, counts in entries)
    (out / "index.html").write_text(
        f"<!doctype html><meta charset='utf-8'><title>genbench report</title><style>{CSS}</style>"
        f"<h1>genbench report</h1><p class='note'>Every study under RUNS_DIR ({len(entries)}).</p><ul>{items}</ul>"
        "<h2>Families x datasets</h2><p class='note'>Best value per family; one column per dataset, objective and "
        "score protocol: scores measured differently are never ranked side by side.</p>"
        + table.to_html(index=False, na_rep=""))
    return out / "index.html"
