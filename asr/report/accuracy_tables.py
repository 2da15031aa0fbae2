"""The report's accuracy tables: time to accuracy per rule (the paper's Table 4), final accuracy (Table 5)
and cost to accuracy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from asr.report.grouping import Comparison, aggregate, target_label
from asr.report.loading import RESULTS_PATH, Run, is_number
from asr.report.measures import price_per_hour, tta_seconds
from asr.report.table import Table, fmt, num
from asr.tta import RULES

Key = tuple[str, float, str]
"""(metric, target, rule)."""


def tta_tables(comparison: Comparison) -> list[Table]:
    """The paper's Table 4 for each rule: minutes per target and % of the baseline configuration."""
    per_run = {run.label: tta_seconds(run, comparison.targets, comparison.window) for run in comparison.runs}
    tables = []
    for rule in RULES:
        rows, bounds = _tta_rows(comparison, per_run, rule)
        name = (
            f"median of the last {comparison.window} evaluated epochs"
            if rule == "median"
            else "first evaluation"
        )
        tables.append(
            Table(
                f"Time to accuracy in minutes ({rule} rule: {name})",
                ["configuration", *[target_label(m, t) for m, t in comparison.targets]],
                rows,
                _tta_note(comparison, bounds),
            )
        )
    return tables


def _tta_rows(
    comparison: Comparison, per_run: dict[str, dict[Key, Any]], rule: str
) -> tuple[list[list[str]], dict[Key, float | None]]:
    """Per configuration a row of minutes and a row of % of the baseline (the baseline comes first); the
    lower bounds of the baseline's aggregates that are NA."""
    rows, base, bounds = [], {}, {}
    for group, members in comparison.groups.items():
        cells, percents = [], []
        for metric, target in comparison.targets:
            key = (metric, target, rule)
            raw = [per_run[run.label][key] for run in members]
            if all(v == "not evaluated" for v in raw):
                cells.append("\u2014")
                percents.append("\u2014")
                continue
            text, middle = _group_cell([v if is_number(v) else None for v in raw], 1 / 60)
            cells.append(text)
            if group == comparison.baseline:
                base[key] = middle
                if middle is None:
                    bounds[key] = _censored_aggregate(members, raw)
            percents.append(_percent_of_baseline(middle, base.get(key), bounds.get(key)))
        rows.append([group, *cells])
        rows.append(["  % of baseline", *percents])
    return rows, bounds


def _tta_note(comparison: Comparison, bounds: dict[Key, float | None]) -> str:
    note = (
        f"Baseline: {comparison.baseline}. Repeated runs: aggregate (min\u2013max, n); "
        "% of the baseline's aggregate."
    )
    known = [f"{target_label(m, t)} {b / 60:.1f} min" for (m, t, _), b in bounds.items() if b is not None]
    if known:
        note += (
            " \u2264 X%: an upper bound, the baseline's aggregate being NA (a run missed the target);"
            " counting such a run at its whole length, the aggregate is at least: " + ", ".join(known) + "."
        )
    if any("=?" in group for group in comparison.groups):
        note += " [setting=?]: not recorded in the run's recipe.yaml (saved before the setting existed)."
    return note


def _group_cell(values: list[float | None], scale: float, digits: int = 1) -> tuple[str, float | None]:
    middle, low, high = aggregate(values)
    text = fmt(None if middle is None else middle * scale, digits)
    if len(values) > 1 and low is None:
        text += f" (n={len(values)})"
    elif len(values) > 1:
        low_text = fmt(None if low is None else low * scale, digits)
        high_text = fmt(None if high is None else high * scale, digits)
        text += f" ({low_text}\u2013{high_text}, n={len(values)})"
    return text, middle


def _censored_aggregate(runs: Sequence[Run], times: Sequence[Any]) -> float | None:
    """A lower bound (s) of the runs' aggregate time to a target that some never reached: each of those
    counts at its whole active length, the earliest it could have got there had it gone on."""
    if any(t == "not evaluated" for t in times):
        return None
    return aggregate(
        [float(t) if is_number(t) else run.active_seconds for run, t in zip(runs, times, strict=True)]
    )[0]


def _percent_of_baseline(middle: float | None, reference: float | None, bound: float | None) -> str:
    if middle is None:
        return "NA"
    if reference:
        return f"{100 * middle / reference:.0f}%"
    return f"\u2264{100 * middle / bound:.0f}%" if bound else "\u2014"


def final_accuracy_table(comparison: Comparison) -> Table:
    """The paper's Table 5: final WER (CER) per split, from ``eval/results.json``."""
    splits: list[str] = []
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for run in comparison.runs:
        for row in run.results or []:
            split = str(row["split"])
            if split not in splits:
                splits.append(split)
            current = best.get((run.label, split))
            if current is None or (row.get("beam_width") or 0) > (current.get("beam_width") or 0):
                best[(run.label, split)] = row
    rows = []
    for run in comparison.runs:
        if run.results is not None:
            cells = [_final_cell(best[run.label, s]) if (run.label, s) in best else "\u2014" for s in splits]
            rows.append([run.label, *cells])
    missing = [run.label for run in comparison.runs if run.results is None]
    note = "WER % (CER %, beam width) of the final model, widest beam evaluated."
    if any(row.get("damaged_shards") for row in best.values()):
        note += " 'utt. lost': the set had damaged or missing shards; its figures leave those out."
    if missing:
        note += f" No {RESULTS_PATH} (run `python -m asr.evaluate`) for: {', '.join(missing)}."
    return Table("Final accuracy", ["run", *splits], rows, note)


def _final_cell(row: dict[str, Any]) -> str:
    """``WER (CER, beam W)``, and how many utterances were lost when the set had damaged shards."""
    beam = f", beam {row['beam_width']}" if row.get("beam_width") else ""
    lost = f"; {row.get('skipped_utterances', '?')} utt. lost" if row.get("damaged_shards") else ""
    return f"{fmt(num(row.get('wer')), 2)} ({fmt(num(row.get('cer')), 2)}{beam}{lost})"


def cost_table(comparison: Comparison) -> Table:
    """Cost to accuracy (median rule): TTA hours times the rig's amortized price per hour."""
    rows = []
    for run in comparison.runs:
        rate = price_per_hour(run, comparison.price_override)
        seconds = tta_seconds(run, comparison.targets, comparison.window)
        cells = []
        for metric, target in comparison.targets:
            value = seconds[(metric, target, "median")]
            if not is_number(value):
                cells.append("\u2014" if value == "not evaluated" else "NA")
            elif rate is None:
                cells.append("no price")
            else:
                cells.append(f"{value / 3600 * rate:.4f}")
        rows.append([run.label, "no price" if rate is None else f"{rate:.4f}", *cells])
    source = (
        "--price-per-hour"
        if comparison.price_override is not None
        else "rig.price_usd / (rig.depreciation_years \u00d7 8760 h)"
    )
    return Table(
        "Cost to accuracy (median rule), price units",
        ["run", "price per hour", *[target_label(m, t) for m, t in comparison.targets]],
        rows,
        f"Cost = TTA in hours \u00d7 price per hour; price per hour = {source}.",
    )
