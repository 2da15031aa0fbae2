"""The report assembled (tables, notes, plots) and written: ``report.md`` with ``plots/*.png``, a
self-contained ``report.html``, and the tables on stdout."""

from __future__ import annotations

import base64
import dataclasses
import html
from pathlib import Path

from asr.files import write_bytes, write_text
from asr.report.accuracy_tables import cost_table, final_accuracy_table, tta_tables
from asr.report.grouping import Comparison
from asr.report.plots import Picture, make_plots
from asr.report.resource_tables import (
    clock_share_table,
    energy_tables,
    runs_table,
    throughput_table,
    utilization_table,
)
from asr.report.table import Table

TTA_DEFINITION = (
    "**Time to accuracy (TTA)** is read off the run clock: seconds since the model was created, "
    "counting training, evaluation, model swapping and checkpointing, and not the downtime between "
    "a stop and a resume (shown separately) nor feature extraction (before the clock starts; shown "
    "separately where the run recorded it). An evaluation counts at the time it finished, on the "
    "development split. *Median rule* (the paper's TTA(a, e)): the first evaluation after which the "
    "median of the last e evaluated epochs is at or below target a; no TTA before e epochs have been "
    "evaluated. *First rule* (MLPerf / DAWNBench): the first evaluation at or below the target. "
    "Ties count as reached. NA: not reached; \u2014: metric not evaluated."
)


@dataclasses.dataclass
class Report:
    comparison: Comparison
    tables: list[Table]
    plots: list[Picture]


def build_report(
    comparison: Comparison, util_window_start: float | None = None, plots: bool = True
) -> Report:
    """Every table and plot of the report, in the order they are shown."""
    tables = [
        *tta_tables(comparison),
        final_accuracy_table(comparison),
        cost_table(comparison),
        *energy_tables(comparison),
        clock_share_table(comparison),
        throughput_table(comparison),
        utilization_table(comparison),
        runs_table(comparison),
    ]
    return Report(comparison, tables, make_plots(comparison, util_window_start) if plots else [])


def render_markdown(report: Report, plot_dir: str = "plots") -> str:
    comparison = report.comparison
    lines = ["# Time-to-accuracy report", "", TTA_DEFINITION, ""]
    lines.append(
        f"Runs: {', '.join(r.label for r in comparison.runs)}. Baseline: {comparison.baseline}. "
        f"Window: {comparison.window} epochs."
    )
    if comparison.notes:
        lines += ["", "Notes:", *[f"- {note}" for note in comparison.notes]]
    for table in report.tables:
        lines += ["", f"## {table.title}", ""]
        if table.rows:
            lines.append(table.markdown())
        if table.note:
            lines += ["", table.note]
    for name, title, _ in report.plots:
        lines += ["", f"## {title}", "", f"![{title}]({plot_dir}/{name})"]
    return "\n".join(lines) + "\n"


_STYLE = (
    "body{font-family:sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em}"
    "td:not(:first-child){text-align:right}th{background:#f2f2f2}p.note{color:#555;font-size:.9em}"
    "img{max-width:100%}"
)


def render_html(report: Report) -> str:
    """One self-contained page: inline style, tables, plots as base64 PNG data URIs."""
    comparison = report.comparison
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Time-to-accuracy report</title>",
        f"<style>{_STYLE}</style></head><body><h1>Time-to-accuracy report</h1>",
        f"<p>{_inline(TTA_DEFINITION)}</p>",
        f"<p>Runs: {html.escape(', '.join(r.label for r in comparison.runs))}. Baseline: "
        f"{html.escape(comparison.baseline)}. Window: {comparison.window} epochs.</p>",
    ]
    if comparison.notes:
        parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in comparison.notes) + "</ul>")
    for table in report.tables:
        parts.append(f"<h2>{html.escape(table.title)}</h2>")
        if table.rows:
            parts.append(table.html())
        if table.note:
            parts.append(f"<p class='note'>{html.escape(table.note)}</p>")
    for _, title, png in report.plots:
        data = base64.b64encode(png).decode("ascii")
        parts.append(
            f"<h2>{html.escape(title)}</h2>"
            f"<img alt='{html.escape(title)}' src='data:image/png;base64,{data}'>"
        )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _inline(markdown: str) -> str:
    text = html.escape(markdown)
    while text.count("**") >= 2:
        text = text.replace("**", "<b>", 1).replace("**", "</b>", 1)
    while text.count("*") >= 2:
        text = text.replace("*", "<i>", 1).replace("*", "</i>", 1)
    return text


def write_report(report: Report, out: Path) -> list[Path]:
    """``report.md`` with ``plots/*.png`` and the self-contained ``report.html`` in ``out``."""
    plot_dir = out / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, _, png in report.plots:
        write_bytes(plot_dir / name, png)
        written.append(plot_dir / name)
    for name, text in (("report.md", render_markdown(report)), ("report.html", render_html(report))):
        write_text(out / name, text)
        written.append(out / name)
    return written


def print_tables(report: Report) -> None:
    comparison = report.comparison
    print(f"Time-to-accuracy report: {len(comparison.runs)} run(s), baseline {comparison.baseline}")
    for table in report.tables:
        print(f"\n{table.title}")
        if table.rows:
            print(table.markdown())
        if table.note:
            print(table.note)
