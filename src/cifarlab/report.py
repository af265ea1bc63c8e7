"""Writing a study's report: report.html (self-contained) and report.md with its PNGs, led
by the scorecard and the answer, then the numbers, the figures and the gallery of mistakes."""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

import numpy as np

from . import budget_report, figures, rundir, scorecard
from .errors import CifarlabError
from .results import METRICS, Group, Results, confusion_of, most_confused_pairs, sweeps
from .verdicts import (
    COMPARISON_HEAD,
    COMPARISON_KEYS,
    COMPARISON_NOTE,
    STAT_NOTE,
    answer,
    comparison_cells,
    comparison_table,
    comparisons,
    digits,
    table_rows,
    variant_table,
)


def misclassified_gallery(g: Group, count: int | None = 24) -> list[dict]:
    """The best variant's most confident mistakes on the test set: its first seed's run,
    evaluated as the run evaluated itself (its test-time augmentation), so they are the
    mistakes its test accuracy counts."""
    from PIL import Image

    from .run import test_evaluation
    run = g.runs[0]
    ev, data = test_evaluation(run.path, device="cpu", download=False, progress=False)
    images = data.test_x
    wrong = np.flatnonzero(ev.predictions != ev.labels)
    confidence = ev.probabilities[wrong, ev.predictions[wrong]]
    out = []
    for i in wrong[np.argsort(-confidence)][:count]:
        buf = io.BytesIO()
        Image.fromarray(images[i]).resize((64, 64), Image.NEAREST).save(buf, format="PNG")
        out.append({"png": buf.getvalue(), "true": data.classes[ev.labels[i]],
                    "predicted": data.classes[ev.predictions[i]],
                    "confidence": float(ev.probabilities[i, ev.predictions[i]])})
    return out


def terminal_text(results: Results) -> str:
    rows = table_rows(results)
    return scorecard_text(results) + budget_report.text(results, comparisons) + \
        "\n".join(answer(results, rows)) + "\n\n" + variant_table(results, rows) + "\n\n" + \
        comparison_table(results, rows)


def scorecard_text(results: Results) -> str:
    """The scorecard as Markdown, led by its one-line summary ('' without questions)."""
    if not results.questions:
        return ""
    answers = results.answers()
    return "Scorecard. " + scorecard.summary(answers) + "\n\n" + scorecard.markdown(answers) + \
        "\n\n"


# --------------------------------------------------------------------------- writing


def write(results: Results, out: str | Path, gallery: bool = True) -> tuple[Path, Path]:
    """Write report.html (self-contained) and report.md with its PNGs in report_files/."""
    out = Path(out)
    images: list[tuple[str, str, bytes]] = []  # (section, caption, png)
    if any(g.runs for g in results.groups):
        images.append(("curves", "Validation curves per variant",
                       figures.png(figures.study_curves(results))))
    for name, gs in sweeps(results).items():
        if len(gs) > 1:
            images.append(("sweeps", f"{name}: accuracy against the swept setting",
                           figures.png(figures.sweep(name, gs))))
    for g in results.groups:
        found = confusion_of(g) if g.runs and not g.same_as else None
        if found is not None:
            fig = figures.study_confusion(g.name, *found, len(g.runs))
            images.append(("confusion", g.name, figures.png(fig)))
    ranked = sorted((g for g in results.groups if g.runs),
                    key=lambda g: -g.summary("test_accuracy").mean)
    best = ranked[0] if ranked else None
    gallery_items, gallery_note = [], ""
    if gallery and best is not None:
        try:
            gallery_items = misclassified_gallery(best)
            if not gallery_items:
                gallery_note = "The best variant classified every test image correctly."
        except CifarlabError as e:
            gallery_note = f"No gallery: the test images could not be loaded ({e})."
    pairs = {g.name: most_confused_pairs(g, 3) if g.runs else [] for g in results.groups}
    files = out / "report_files"  # created only once every file it reads has been read
    files.mkdir(parents=True, exist_ok=True)
    names = {}
    for i, (section, caption, png) in enumerate(images):
        name = f"{i:02d}-{section}.png"
        rundir.atomic_write(files / name, png)
        names[i] = name
    md = _markdown(results, images, names, best, gallery_items, gallery_note, pairs)
    page = _html(results, images, best, gallery_items, gallery_note, pairs)
    rundir.atomic_write(out / "report.md", md)
    rundir.atomic_write(out / "report.html", page)
    return out / "report.html", out / "report.md"


def _settings_rows(results: Results) -> list[tuple[str, str]]:
    return [(k, str(v)) for k, v in results.settings.items() if v not in ("", None)]


def _markdown(results, images, names, best, gallery, gallery_note, confused) -> str:
    parts = [f"# {results.title}", ""]
    if results.scale_text and results.scale_text.startswith("SCALED"):
        parts += [f"> **{results.scale_text}** — not the full study.", ""]
    rows = table_rows(results)
    if results.questions:
        answers = results.answers()
        parts += ["## Scorecard", "", scorecard.summary(answers), "",
                  scorecard.markdown(answers), "", scorecard.NOTE, ""]
    if results.budget:
        parts += budget_report.markdown(results, comparisons).split("\n")[:-1]
    parts += ["## What this study says", ""] + [f"- {line}" for line in answer(results, rows)]
    parts += ["", "## Settings", "", "| setting | value |", "|---|---|"]
    parts += [f"| {k} | {v} |" for k, v in _settings_rows(results)]
    parts += ["", "## Results", "", STAT_NOTE, "", "### Each variant over seeds", "",
              variant_table(results, rows), "", "### Against the baseline", "",
              COMPARISON_NOTE, "", comparison_table(results, rows), ""]
    if results.unfinished:
        parts += [f"Unfinished runs (left out): {', '.join(results.unfinished)}", ""]
    for i, (section, caption, _) in enumerate(images):
        parts += [f"### {caption}", "", f"![{caption}](report_files/{names[i]})", ""]
    parts += ["## Most confused class pairs (true -> predicted, summed over seeds)", ""]
    for g in results.groups:
        parts.append(f"- **{g.name}**: " + (", ".join(
            f"{t} -> {p}: {c}" for t, p, c in confused[g.name]) or "none"))
    parts.append("")
    if best is not None:
        parts += [f"## Misclassified test images of the best variant ({best.name})", ""]
        parts.append(gallery_note or f"{len(gallery)} most confident mistakes; see report.html "
                                     "for the images.")
    return "\n".join(parts) + "\n"


_STYLE = """body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
#results th { cursor: pointer; background: #f3f5f8; }
#results th:hover { background: #e3e8ef; }
td.better { color: #0a7d2c; font-weight: bold; } td.worse { color: #b00020; font-weight: bold; }
td.open { color: #8a6d00; } td.same { color: #555; }
ul.answer { font-size: 15px; background: #f6f8fb; border-left: 4px solid #3b6ea5;
             padding: .6em 1em .6em 2em; } ul.answer li { margin: .3em 0; }
.banner { background: #fff3cd; border: 1px solid #e0c36a; padding: .6em 1em; }
figure { margin: 1em 0; } figure img { max-width: 100%; }
figcaption { color: #555; font-size: 13px; }
.gallery { display: flex; flex-wrap: wrap; gap: 10px; }
.tile { width: 130px; font-size: 12px; } .tile img { width: 64px; height: 64px;
        image-rendering: pixelated; display: block; }
.note { color: #555; font-size: 13px; max-width: 60em; }
"""

_SCORECARD_STYLE = """#scorecard td { max-width: 28em; } .claim { color: #555; font-size: 13px; }
.lead { font-size: 15px; font-weight: 600; }
"""

_SCRIPT = """document.querySelectorAll("#results th").forEach(function (th, col) {
  th.addEventListener("click", function () {
    var body = document.querySelector("#results tbody");
    var rows = Array.from(body.rows);
    var up = th.dataset.dir !== "up";
    th.dataset.dir = up ? "up" : "down";
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
      if (x === undefined || y === undefined) {
        x = a.cells[col].textContent; y = b.cells[col].textContent;
        return up ? x.localeCompare(y) : y.localeCompare(x);
      }
      x = x === "" ? -Infinity : parseFloat(x); y = y === "" ? -Infinity : parseFloat(y);
      return up ? x - y : y - x;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
document.body.dataset.ready = document.images.length;
"""


def _html_rows(results: Results, table: list[dict]) -> tuple[list[str], list[str]]:
    """The HTML rows of the two results tables: each variant, and each against the
    baseline (numeric cells carry their value for sorting)."""
    e = html.escape
    rows, cmp_rows = [], []
    for row in table:
        cells = [f'<td>{e(row["variant"])}</td>', f'<td>{e(row["trained_on"])}</td>',
                 f'<td data-v="{row["seeds"]}">{row["seeds"]}</td>']
        for key, _ in METRICS:
            s = row[key]
            value = "" if math.isnan(s.mean) else f"{s.mean}"
            cells.append(f'<td data-v="{value}">{e(s.text(digits(key)))}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
        c = row["vs_baseline"]
        text = comparison_cells(results, row["variant"], c)
        cls = text["verdict"] if text["verdict"] in ("better", "worse") else \
            "open" if text["verdict"].startswith(("inconclusive", "too few")) else "same"
        cells = [f'<td>{e(row["variant"])}</td>',
                 f'<td data-v="{"" if c is None else c.diff}">{e(text["diff"])}</td>']
        cells += [f"<td>{e(text[k])}</td>" for k in COMPARISON_KEYS[1:6]]
        cells.append(f'<td class="{cls}">{e(text["verdict"])}</td>')
        cells.append(f'<td>{e(text["decide"])}</td>')
        cmp_rows.append("<tr>" + "".join(cells) + "</tr>")
    return rows, cmp_rows


def _html_scorecard(results: Results) -> str:
    """The scorecard section: one row per question, its verdict coloured ('' without
    questions)."""
    if not results.questions:
        return ""
    e = html.escape
    answers = results.answers()
    names, table = scorecard.table(answers)
    head = "".join(f"<th>{e(h)}</th>" for h in names)
    rows = []
    for a, cells in zip(answers, table):
        cls = {"supported": "better", "contradicted": "worse"}.get(a.verdict, "open")
        tds = [f"<td title=\"{e(a.question.claim)}\"><b>{e(cells[0])}</b><br>"
               f"<span class=\"claim\">{e(a.question.claim)}</span></td>"]
        tds += [f"<td>{e(c)}</td>" for c in cells[1:6]]
        tds += [f'<td class="{cls}">{e(cells[6])}</td>']
        tds += [f"<td>{e(c)}</td>" for c in cells[7:]]
        rows.append("<tr>" + "".join(tds) + "</tr>")
    return (f'<h2>Scorecard</h2><p class="lead">{e(scorecard.summary(answers))}</p>'
            f'<table id="scorecard"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}'
            f'</tbody></table><p class="note">{e(scorecard.NOTE)}</p>\n')


def _html(results, images, best, gallery, gallery_note, confused) -> str:
    e = html.escape

    def img(png, alt):
        return (f'<img alt="{e(alt)}" src="data:image/png;base64,'
                f'{base64.b64encode(png).decode()}">')
    table = table_rows(results)
    rows, cmp_rows = _html_rows(results, table)
    head = "".join(f"<th>{e(h)}</th>" for h in ["variant", "trained on", "seeds"]
                   + [m for _, m in METRICS])
    cmp_head = "".join(f"<th>{e(h)}</th>" for h in COMPARISON_HEAD)
    said = "".join(f"<li>{e(line)}</li>" for line in answer(results, table))
    # '' for a study without questions or budget
    lead = _html_scorecard(results) + budget_report.html(results, comparisons)
    settings = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>"
                       for k, v in _settings_rows(results))
    banner = ""
    if results.scale_text and results.scale_text.startswith("SCALED"):
        banner = f'<p class="banner">{e(results.scale_text)} — not the full study.</p>'
    sections = {"curves": [], "sweeps": [], "confusion": []}
    for section, caption, png in images:
        sections[section].append(f"<figure>{img(png, caption)}<figcaption>{e(caption)}"
                                 "</figcaption></figure>")
    pairs = []
    for g in results.groups:
        pairs.append(f"<li><b>{e(g.name)}</b>: " + (", ".join(
            f"{e(t)} → {e(p)}: {c}" for t, p, c in confused[g.name]) or "none") + "</li>")
    tiles = "".join(
        f'<div class="tile">{img(item["png"], item["true"])}<span>true <b>{e(item["true"])}'
        f'</b><br>predicted <b>{e(item["predicted"])}</b><br>{item["confidence"]:.0%}</span>'
        "</div>" for item in gallery)
    unfinished = (f"<p>Unfinished runs (left out): {e(', '.join(results.unfinished))}</p>"
                  if results.unfinished else "")
    best_title = f" of the best variant ({e(best.name)})" if best is not None else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(results.title)}</title>
<style>
{_STYLE}{_SCORECARD_STYLE if results.questions else ""}</style></head><body>
<h1>{e(results.title)}</h1>
{banner}
{lead}<h2>What this study says</h2><ul class="answer">{said}</ul>
<h2>Settings</h2><table>{settings}</table>
<h2>Results</h2>
<p class="note">{e(STAT_NOTE)} Click a column heading to sort.</p>
<h3>Each variant over seeds</h3>
<table id="results"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>
<h3>Against the baseline</h3>
<p class="note">{e(COMPARISON_NOTE)}</p>
<table id="comparisons"><thead><tr>{cmp_head}</tr></thead>
<tbody>{"".join(cmp_rows)}</tbody></table>
{unfinished}
<h2>Learning curves</h2>{"".join(sections["curves"]) or "<p>No finished runs.</p>"}
<h2>Accuracy against the swept settings</h2>{"".join(sections["sweeps"]) or
    "<p>This study sweeps no setting.</p>"}
<h2>Confusion matrices and per-class F1</h2>{"".join(sections["confusion"])}
<h2>Most confused class pairs</h2><ul>{"".join(pairs)}</ul>
<h2>Misclassified test images{best_title}</h2>
<p class="note">{e(gallery_note) or "The most confident mistakes of its first seed's run."}</p>
<div class="gallery">{tiles}</div>
<script>
{_SCRIPT}</script>
</body></html>
"""
