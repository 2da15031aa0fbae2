"""The report's resource tables: energy and CO2 to accuracy, energy per phase and epoch, the evaluation
share of the run clock (with the energy of each share), training throughput, utilization, and the runs
themselves (sessions, run time, downtime, extraction)."""

from __future__ import annotations

from typing import Any

from asr.report.energy import POWER_SOURCES, energy, energy_by_kind
from asr.report.grouping import Comparison, aggregate, target_label
from asr.report.loading import Run, is_number
from asr.report.measures import (
    EVALUATION_KINDS,
    SHARE_KINDS,
    clock_share,
    epoch_accuracy,
    throughput,
    tta_seconds,
    utilization,
)
from asr.report.table import Table, fmt

JOULES_PER_KWH = 3.6e6


NO_ENERGY = Table(
    "Energy to accuracy",
    ["run"],
    [],
    "No power was sampled in any run (no NVML, no readable RAPL) and no run sets "
    "rig.cpu_watts_per_core: no energy figures.",
)


def energy_tables(comparison: Comparison) -> list[Table]:
    """Energy to accuracy (kJ until each median-rule TTA) per power source, CO2 to accuracy, and energy
    per phase/epoch."""
    to_accuracy, phases, co2 = [], [], []
    for run in comparison.runs:
        rows, phase_rows, joules_to, whole = _energy_rows(run, comparison)
        to_accuracy += rows
        phases += phase_rows
        if rows and run.rig.grid_g_co2_per_kwh > 0:
            co2.append(_co2_row(run, joules_to, whole))
    if not to_accuracy:
        return [NO_ENERGY]
    targets = [target_label(m, t) for m, t in comparison.targets]
    sources = "; ".join(f"{key}: {text}" for key, text in POWER_SOURCES.items())
    tables = [
        Table(
            "Energy to accuracy (median rule), kJ",
            ["run", "source", "whole run", *targets],
            to_accuracy,
            f"Power integrated over the run clock (trapezoid between the 1 s utilization samples). {sources} "
            "(the estimate: busy cores of the training process and its children; memory, idle cores and the "
            "rest of the host are not counted). A run with GPU and CPU figures has one row each; CO2 adds "
            "them.",
        ),
        Table("Energy per phase and per epoch, kJ", ["run", "source", "per phase", "per epoch"], phases),
    ]
    if co2:
        note = (
            "g CO2 = (GPU + CPU energy) in kWh × rig.grid_g_co2_per_kwh; the CPU part is an estimate "
            "where its source is cpu."
        )
        tables.append(
            Table(
                "CO2 to accuracy (median rule), g", ["run", "g CO2 per kWh", "whole run", *targets], co2, note
            )
        )
    return tables


def _co2_row(run: Run, joules_to: list[float | None], whole: float) -> list[str]:
    """Grams of CO2 for the whole run and to each target (None: not reached), at the rig's grid intensity."""
    intensity = run.rig.grid_g_co2_per_kwh
    grams = [None if j is None else j / JOULES_PER_KWH * intensity for j in joules_to]
    return [
        run.label,
        f"{intensity:g}",
        fmt(whole / JOULES_PER_KWH * intensity, 1),
        *[fmt(g, 1) for g in grams],
    ]


def _energy_rows(
    run: Run, comparison: Comparison
) -> tuple[list[list[str]], list[list[str]], list[float | None], float]:
    """One run's energy-to-accuracy and per-phase rows (one per power source), joules to each target
    summed over sources (None where not reached), and the whole run's joules. Each session's CPU counts
    under one source (:mod:`asr.report.energy`), so the sum counts it once."""
    seconds = tta_seconds(run, comparison.targets, comparison.window)
    to_accuracy, phases = [], []
    summed: list[float | None] = [0.0] * len(comparison.targets)
    whole = 0.0
    for source in POWER_SOURCES:
        result = energy(run, source)
        if result is None:
            continue
        cells = []
        for index, (metric, target) in enumerate(comparison.targets):
            value = seconds[(metric, target, "median")]
            joules = result["curve"].integrate(0.0, value) if is_number(value) else None
            summed[index] = None if joules is None or summed[index] is None else summed[index] + joules
            cells.append(fmt(None if joules is None else joules / 1000, 1))
        whole += result["total"]
        to_accuracy.append([run.label, source, fmt(result["total"] / 1000), *cells])
        phase_text = ", ".join(f"{k} {v / 1000:.1f}" for k, v in result["phases"].items())
        epoch_text = ", ".join(f"{k}: {v / 1000:.1f}" for k, v in result["epochs"].items())
        phases.append([run.label, source, phase_text, epoch_text])
    return to_accuracy, phases, summed, whole


def clock_share_table(comparison: Comparison) -> Table:
    """Per run, seconds and % of the run clock of evaluation, swapping, checkpointing and training, the
    evaluation share (evaluate + swap), the work done off the clock, and the energy of each kind; after
    the runs of a configuration repeated, their aggregate."""
    rows = []
    for group, members in comparison.groups.items():
        figures = [_share_figures(run) for run in members]
        rows += [_share_row(run.label, f) for run, f in zip(members, figures, strict=True)]
        if len(members) > 1:
            rows.append(_share_row(f"{group}: aggregate of {len(members)}", _aggregate_figures(figures)))
    return Table(
        "Evaluation share of the run clock",
        [
            "run",
            "run clock (s)",
            *[f"{kind}, s (% of clock)" for kind in SHARE_KINDS],
            "evaluation share (evaluate + swap)",
            "off the clock, s",
            "energy source",
            *[f"{kind}, kJ (% of energy)" for kind in SHARE_KINDS],
        ],
        rows,
        "From the phase events of every session (work lost at a resume left out): evaluate = decoding the "
        "development set (swap mode: building the evaluation model too); swap = swap_out + swap_in; "
        "checkpoint = saving; training = the rest of the run clock (steps, input pipeline, start-up). Off "
        "the clock, never in the shares: eval.extra_sets (off_clock events) and external evaluations. "
        "Energy: the per-phase energy (all power sources sampled, each session's CPU once) grouped the "
        "same way. Aggregate rows: each figure aggregated over the configuration's runs as TTA is, so "
        "their shares need not add up to 100%.",
    )


def _share_figures(run: Run) -> dict[str, Any]:
    """One run's :func:`clock_share` and :func:`energy_by_kind` as flat figures (seconds, fractions, J)."""
    share = clock_share(run.events)
    figures: dict[str, Any] = {
        "run_clock": share.run_clock,
        "evaluation": share.share(*EVALUATION_KINDS),
        "off_clock": sum(share.off_clock.values()),
        "off_clock_names": sorted(share.off_clock),
        "sources": [],
    }
    for kind in SHARE_KINDS:
        figures[f"{kind} s"], figures[f"{kind} share"] = share.seconds[kind], share.share(kind)
    by_kind = energy_by_kind(run)
    if by_kind is not None:
        joules, figures["sources"] = by_kind
        total = sum(joules.values())
        for kind in SHARE_KINDS:
            figures[f"{kind} J"] = joules[kind]
            figures[f"{kind} J share"] = joules[kind] / total if total > 0 else None
    return figures


def _aggregate_figures(figures: list[dict[str, Any]]) -> dict[str, Any]:
    """Each numeric figure aggregated over repeated runs (:func:`aggregate`); a figure some run lacks
    (energy not sampled) is left out."""
    merged: dict[str, Any] = {
        "off_clock_names": sorted({n for f in figures for n in f["off_clock_names"]}),
        "sources": sorted({s for f in figures for s in f["sources"]}, key=list(POWER_SOURCES).index),
    }
    for key in figures[0]:
        if key not in merged and all(is_number(f.get(key)) for f in figures):
            merged[key] = aggregate([f[key] for f in figures])[0]
    return merged


def _share_row(label: str, figures: dict[str, Any]) -> list[str]:
    def part(value: Any, fraction: Any, scale: float = 1.0, digits: int = 1) -> str:
        if not is_number(value):
            return "\u2014"
        percent = f" ({100 * fraction:.1f}%)" if is_number(fraction) else ""
        return f"{value * scale:.{digits}f}{percent}"

    off_clock = "\u2014"
    if figures["off_clock_names"] and is_number(figures.get("off_clock")):
        off_clock = f"{figures['off_clock']:.1f} ({', '.join(figures['off_clock_names'])})"
    evaluation = figures.get("evaluation")
    return [
        label,
        fmt(figures.get("run_clock")),
        *[part(figures.get(f"{k} s"), figures.get(f"{k} share")) for k in SHARE_KINDS],
        f"{100 * evaluation:.1f}%" if is_number(evaluation) else "\u2014",
        off_clock,
        " + ".join(figures["sources"]) or "none sampled",
        *[part(figures.get(f"{k} J"), figures.get(f"{k} J share"), 1 / 1000, 3) for k in SHARE_KINDS],
    ]


def throughput_table(comparison: Comparison) -> Table:
    rows = []
    for run in comparison.runs:
        result = throughput(run)
        batch = str(run.global_batch or "?")
        if result is None:
            rows.append([run.label, "\u2014", "\u2014", "\u2014", "\u2014", "0", str(run.replicas), batch])
            continue
        rows.append(
            [
                run.label,
                f"{result['total']:.2f}",
                f"{result['per_replica']:.2f}",
                f"{result['median_step']:.2f}",
                fmt(result["audio_per_second"]),
                str(result["steps"]),
                str(result["replicas"]),
                batch,
            ]
        )
    return Table(
        "Training throughput, utterances per second",
        ["run", "total", "per replica", "median step", "audio s per s", "steps", "replicas", "global batch"],
        rows,
        "Utterances of all training steps / their step seconds: evaluation, swapping and checkpointing "
        "excluded, as is the first step of each session (graph tracing). Audio s per s: seconds of speech "
        "in those steps' utterances (padding excluded, after tempo perturbation) / the same step seconds.",
    )


def utilization_table(comparison: Comparison) -> Table:
    rows = [_utilization_row(run) for run in comparison.runs]
    return Table(
        "Utilization",
        [
            "run",
            "samples",
            "CPU mean %",
            "CPU p95 %",
            "CPU mean % with child processes",
            "GPUs (mean utilization, peak memory)",
        ],
        rows,
        "CPU % of the training process, 100 = one core busy (psutil); with child processes: plus its "
        "descendants (the decoding pool during evaluation; \u2014 for runs logged before this was sampled); "
        "GPU utilization from NVML.",
    )


def _utilization_row(run: Run) -> list[str]:
    result = utilization(run)
    if result is None:
        return [run.label, "0", "\u2014", "\u2014", "\u2014", "no samples"]
    gpus = "; ".join(
        f"GPU{i}: {fmt(g['utilization_mean'], 0)}%, peak {fmt(g['memory_peak_mb'], 0)} MB"
        for i, g in result["gpus"].items()
    )
    with_children = result["cpu_with_children_mean"]
    return [
        run.label,
        str(result["samples"]),
        f"{result['cpu_mean']:.0f}",
        f"{result['cpu_p95']:.0f}",
        "\u2014" if with_children is None else f"{with_children:.0f}",
        gpus or "none sampled",
    ]


def runs_table(comparison: Comparison) -> Table:
    return Table(
        "Runs",
        [
            "run",
            "configuration",
            "sessions",
            "run time (min)",
            "downtime (min)",
            "feature extraction (min)",
            "epochs",
            "ended",
            "epoch-end WER/CER %: last (median of last 3)",
        ],
        [_runs_row(run) for run in comparison.runs],
        "Run time is the TTA clock at the last event; downtime (between stop and resume) and feature "
        "extraction are not part of it. WER/CER per evaluated set: the TTA set (data.dev) first, then "
        "each eval.extra_sets set (evaluated off the run clock, never used for TTA).",
    )


def _runs_row(run: Run) -> list[str]:
    end: Any = next((e.get("reason") for e in reversed(run.events) if e.get("event") == "run_end"), None)
    last_epoch = max((e.get("epoch", 0) for e in run.of_kind("epoch_end")), default=None)
    extract = run.extract_seconds
    return [
        run.label,
        run.group,
        str(run.sessions),
        f"{run.active_seconds / 60:.1f}",
        f"{run.downtime_seconds / 60:.1f}",
        "not recorded" if extract is None else f"{extract / 60:.1f}",
        "\u2014" if last_epoch is None else str(last_epoch + 1),
        str(end or "unfinished"),
        epoch_accuracy(run.of_kind("eval")),
    ]
