"""The report's figures (matplotlib, Agg backend, PNG bytes): loss, development accuracy, throughput over
run time, the shares of the run clock, and CPU/GPU utilization over a short window."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np

from asr.report.grouping import Comparison
from asr.report.loading import Run, is_number
from asr.report.measures import (
    SHARE_KINDS,
    clock_share,
    phase_spans,
    throughput_segments,
    windowed_throughput,
)
from asr.tta import METRICS

UTIL_WINDOW_SECONDS = 25.0
SHARE_COLORS = {
    "evaluate": "tab:red",
    "swap": "tab:orange",
    "checkpoint": "tab:purple",
    "training": "tab:green",
}
Picture = tuple[str, str, bytes]
"""(file name, title, PNG bytes)."""


def make_plots(comparison: Comparison, util_window_start: float | None) -> list[Picture]:
    """(file name, title, PNG bytes) of each figure, drawn with matplotlib's Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    pictures = []
    for name, title, draw in _figures(comparison, util_window_start):
        sizes = {"accuracy.png": (12, 4.8), "shares.png": (9, 1.4 + 0.45 * len(comparison.runs))}
        figure = plt.figure(figsize=sizes.get(name, (9, 4.8)), dpi=100)
        try:
            draw(figure)
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", bbox_inches="tight")
            pictures.append((name, title, buffer.getvalue()))
        finally:
            plt.close(figure)
    return pictures


def _figures(
    comparison: Comparison, util_window_start: float | None
) -> list[tuple[str, str, Callable[[Any], None]]]:
    """(file name, title, function drawing it on a figure) of each plot, in the report's order."""
    return [
        (
            "loss.png",
            "CTC loss over run time (Gaussian-smoothed, \u03c3 = 10 steps)",
            lambda f: _plot_loss(comparison, f),
        ),
        (
            "accuracy.png",
            "Development CER and WER over run time, targets dashed",
            lambda f: _plot_accuracy(comparison, f),
        ),
        (
            "throughput.png",
            "Training throughput over run time (thin: per step, 0 while evaluating, swapping, "
            "checkpointing; thick: mean over 60 s)",
            lambda f: _plot_throughput(comparison, f),
        ),
        (
            "shares.png",
            "Shares of the run clock: evaluation, swapping, checkpointing and training",
            lambda f: _plot_shares(comparison, f),
        ),
        (
            "utilization.png",
            f"CPU and GPU utilization over a {UTIL_WINDOW_SECONDS:g} s window",
            lambda f: _plot_utilization(comparison, f, util_window_start),
        ),
    ]


def _plain_log_axis(axes: Any) -> None:
    """Log y axis labelled 20, 30, 100 rather than 2x10^1."""
    from matplotlib.ticker import LogFormatter

    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(3, 1.5)))
    axes.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(3, 1.5)))


def _empty(axes: Any, text: str) -> None:
    axes.text(0.5, 0.5, text, ha="center", va="center", transform=axes.transAxes, color="0.4")


def _plot_loss(comparison: Comparison, figure: Any) -> None:
    from scipy.ndimage import gaussian_filter1d

    axes = figure.add_subplot(1, 1, 1)
    drawn = False
    for run in comparison.runs:
        steps = [s for s in run.of_kind("step") if is_number(s.get("loss")) and is_number(s.get("elapsed"))]
        if not steps:
            continue
        minutes = np.array([float(s["elapsed"]) / 60 for s in steps])
        loss = np.array([float(s["loss"]) for s in steps])
        axes.plot(minutes, loss, color=run.color, alpha=0.15, linewidth=0.8)
        axes.plot(minutes, gaussian_filter1d(loss, sigma=10), color=run.color, label=run.label, linewidth=1.6)
        drawn = True
    axes.set_xlabel("run time (minutes)")
    axes.set_ylabel("CTC loss per utterance")
    if drawn:
        _plain_log_axis(axes)
        axes.legend()
    else:
        _empty(axes, "no training steps logged")
    axes.grid(True, which="both", alpha=0.3)


def _plot_accuracy(comparison: Comparison, figure: Any) -> None:
    for index, metric in enumerate(METRICS):
        axes = figure.add_subplot(1, 2, index + 1)
        drawn = False
        for run in comparison.runs:
            series = run.series(metric)
            if series:
                axes.plot(
                    [p.elapsed / 60 for p in series],
                    [p.value for p in series],
                    marker="o",
                    markersize=3,
                    color=run.color,
                    label=run.label,
                )
                drawn = True
        for target in (t for m, t in comparison.targets if m == metric):
            _target_line(axes, target)
        axes.set_title(f"dev {metric.upper()}")
        axes.set_xlabel("run time (minutes)")
        axes.set_ylabel(f"{metric.upper()} (%)")
        if drawn:
            _plain_log_axis(axes)
            axes.legend()
        else:
            _empty(axes, f"no {metric.upper()} evaluations")
        axes.grid(True, which="both", alpha=0.3)


def _target_line(axes: Any, target: float) -> None:
    """A dashed horizontal line at ``target`` labelled at the right edge."""
    axes.axhline(target, color="0.35", linestyle="--", linewidth=0.9)
    axes.annotate(
        f"{target:g}",
        xy=(1.0, target),
        xycoords=("axes fraction", "data"),
        xytext=(3, 0),
        textcoords="offset points",
        va="center",
        fontsize=8,
        color="0.3",
    )


def _throughput_curve(run: Run) -> tuple[list[float], list[float]]:
    """The segments of :func:`throughput_segments` as a step curve (two points per segment)."""
    times, values = [], []
    for start, end, value in throughput_segments(run):
        times += [start, end]
        values += [value, value]
    return times, values


def _plot_throughput(comparison: Comparison, figure: Any) -> None:
    axes = figure.add_subplot(1, 1, 1)
    drawn = False
    for run in comparison.runs:
        times, values = _throughput_curve(run)
        if any(values):
            axes.plot([t / 60 for t in times], values, color=run.color, linewidth=0.5, alpha=0.3)
            centres, rates = windowed_throughput(throughput_segments(run))
            axes.plot(centres / 60, rates, color=run.color, label=run.label, linewidth=2.0)
            drawn = True
    axes.set_xlabel("run time (minutes)")
    axes.set_ylabel("utterances per second (all replicas)")
    axes.set_title(
        "thin: each training step (drops to 0: evaluation, swapping, checkpointing); thick: mean over 60 s",
        fontsize=9,
    )
    if drawn:
        axes.legend()
        axes.set_ylim(bottom=0)
    else:
        _empty(axes, "no training steps logged")
    axes.grid(True, alpha=0.3)


def _plot_shares(comparison: Comparison, figure: Any) -> None:
    """One horizontal bar per run (the first at the top), stacked by kind, in % of its run clock."""
    axes = figure.add_subplot(1, 1, 1)
    shares = [(run.label, clock_share(run.events)) for run in comparison.runs]
    shares = [(label, share) for label, share in shares if share.run_clock > 0]
    rows = np.arange(len(shares))
    left = np.zeros(len(shares))
    for kind in SHARE_KINDS:
        widths = np.array([100 * (share.share(kind) or 0.0) for _, share in shares])
        bars = axes.barh(rows, widths, left=left, color=SHARE_COLORS[kind], label=kind, height=0.6)
        labels = [f"{w:.0f}%" if w >= 4 else "" for w in widths]
        axes.bar_label(bars, labels=labels, label_type="center", fontsize=8, color="white")
        left += widths
    axes.set_yticks(rows, [label for label, _ in shares])
    axes.invert_yaxis()
    axes.set_xlim(0, 100)
    axes.set_xlabel("% of the run clock")
    if shares:
        axes.legend(ncol=len(SHARE_KINDS), loc="lower center", bbox_to_anchor=(0.5, 1.0), fontsize=8)
    else:
        _empty(axes, "no run clock logged")
    axes.grid(True, axis="x", alpha=0.3)


def _default_util_window(comparison: Comparison) -> float:
    """Start 5 s before the first run's first evaluation phase (so the swap shows), else at 0."""
    spans = phase_spans(comparison.runs[0])
    starts = [start for phase, start, _ in spans if phase in ("swap_out", "evaluate")]
    return max(0.0, min(starts) - 5.0) if starts else 0.0


def _plot_utilization(comparison: Comparison, figure: Any, window_start: float | None) -> None:
    start = _default_util_window(comparison) if window_start is None else float(window_start)
    end = start + UTIL_WINDOW_SECONDS
    axes = figure.add_subplot(1, 1, 1)
    drawn = shaded = False
    for run in comparison.runs:
        samples = [
            e for e in run.of_kind("util") if is_number(e.get("elapsed")) and start <= e["elapsed"] <= end
        ]
        if not samples:
            continue
        _cpu_lines(axes, run, samples)
        _gpu_lines(axes, run, samples)
        shaded = _shade_phases(axes, run, start, end) or shaded
        drawn = True
    axes.set_xlim(start, end)
    axes.set_xlabel(f"run time (seconds), window {start:.0f}\u2013{end:.0f} s")
    axes.set_ylabel("utilization (%; CPU: 100 = one core)")
    if shaded:
        axes.plot([], [], color="0.6", alpha=0.3, linewidth=8, label="evaluation / swap (shaded)")
    if drawn:
        axes.legend(fontsize=8)
        axes.set_ylim(bottom=0)
    else:
        _empty(axes, "no utilization samples in this window (choose one with --window)")
    axes.grid(True, alpha=0.3)


def _cpu_lines(axes: Any, run: Run, samples: list[dict[str, Any]]) -> None:
    """The training process's CPU percent, and with its child processes where sampled (dotted)."""
    seconds = [float(e["elapsed"]) for e in samples]
    axes.plot(
        seconds,
        [e.get("cpu_percent") for e in samples],
        color=run.color,
        label=f"{run.label} CPU",
        marker=".",
        markersize=3,
    )
    if any(is_number(e.get("children_cpu_percent")) for e in samples):
        axes.plot(
            seconds,
            [e["cpu_percent"] + e.get("children_cpu_percent", 0.0) for e in samples],
            color=run.color,
            linestyle=":",
            label=f"{run.label} CPU with child processes",
        )


def _gpu_lines(axes: Any, run: Run, samples: list[dict[str, Any]]) -> None:
    """Each GPU's utilization, one line style per GPU index (gaps where a sample lacks it)."""
    seconds = [float(e["elapsed"]) for e in samples]
    indices = sorted({g.get("index", 0) for e in samples for g in e.get("gpus") or []})
    for index, style in zip(indices, ["--", ":", "-.", (0, (5, 1))] * 4, strict=False):
        values = [
            next((g.get("utilization") for g in e.get("gpus") or [] if g.get("index", 0) == index), None)
            for e in samples
        ]
        axes.plot(
            seconds,
            [np.nan if v is None else v for v in values],
            color=run.color,
            linestyle=style,
            label=f"{run.label} GPU{index}",
        )


def _shade_phases(axes: Any, run: Run, start: float, end: float) -> bool:
    """Shade the run's evaluation and swap phases inside [start, end]; whether any was."""
    shaded = False
    for phase, p_start, p_end in phase_spans(run):
        if phase != "checkpoint" and p_end >= start and p_start <= end:
            axes.axvspan(max(p_start, start), min(p_end, end), color=run.color, alpha=0.1, linewidth=0)
            shaded = True
    return shaded
