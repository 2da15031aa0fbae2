"""The numbers of one run (``docs/metrics.md`` defines each): time to accuracy, training throughput,
phases and their share of the run clock, utilization, price per hour, epoch-end accuracy. Energy is in
:mod:`asr.report.energy`."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np

from asr.report.loading import Run, is_number, last_elapsed
from asr.tta import RULES, reached_at

NON_TRAIN_PHASES = ("evaluate", "swap_out", "swap_in", "checkpoint")
PHASE_KINDS = {"evaluate": "evaluate", "swap_out": "swap", "swap_in": "swap", "checkpoint": "checkpoint"}
"""``phase`` event name -> the kind :func:`clock_share` counts it under; any other time is training."""
SHARE_KINDS = ("evaluate", "swap", "checkpoint", "training")
EVALUATION_KINDS = ("evaluate", "swap")
"""What an evaluation costs the run clock (the evaluation share): decoding and, in swap mode, the swap."""
HOURS_PER_YEAR = 365 * 24


def tta_seconds(
    run: Run, targets: Sequence[tuple[str, float]], window: int
) -> dict[tuple[str, float, str], Any]:
    """(metric, target, rule) -> seconds, None (not reached) or "not evaluated"."""
    values: dict[tuple[str, float, str], Any] = {}
    for metric, target in targets:
        series = run.series(metric)
        for rule in RULES:
            if not series:
                values[(metric, target, rule)] = "not evaluated"
                continue
            reached = reached_at(series, target, window, rule)
            values[(metric, target, rule)] = None if reached is None else reached.elapsed
    return values


def _training_steps(run: Run) -> list[dict[str, Any]]:
    """Training ``step`` events, without the first step of each session (it includes graph tracing)."""
    steps, first = [], True
    for event in run.events:
        if event.get("event") == "run_start":
            first = True
        elif event.get("event") == "step" and event.get("phase", "train") == "train":
            if not first and is_number(event.get("step_seconds")) and event["step_seconds"] > 0:
                steps.append(event)
            first = False
    return steps


def throughput(run: Run) -> dict[str, float] | None:
    """Utterances per second over training steps only: total, per replica, and the median step's; and
    seconds of (unpadded) audio per second, where the steps record it (``None`` otherwise)."""
    steps = [s for s in _training_steps(run) if is_number(s.get("batch_size"))]
    if not steps:
        return None
    seconds = sum(float(s["step_seconds"]) for s in steps)
    utterances = sum(float(s["batch_size"]) for s in steps)
    replicas = max(1, int(steps[-1].get("replicas") or run.replicas))
    total = utterances / seconds
    audio = [float(s["audio_seconds"]) for s in steps if is_number(s.get("audio_seconds"))]
    return {
        "audio_per_second": sum(audio) / seconds if len(audio) == len(steps) else None,
        "total": total,
        "per_replica": total / replicas,
        "median_step": statistics.median(float(s["batch_size"]) / float(s["step_seconds"]) for s in steps),
        "steps": len(steps),
        "replicas": replicas,
    }


def phase_spans(run: Run) -> list[tuple[str, float, float]]:
    """(phase, start, end) in run-clock seconds; a ``phase`` event is written when its phase ends."""
    spans = []
    for event in run.of_kind("phase"):
        if is_number(event.get("elapsed")) and is_number(event.get("seconds")):
            end = float(event["elapsed"])
            spans.append((str(event.get("phase")), max(0.0, end - float(event["seconds"])), end))
    return spans


@dataclasses.dataclass(frozen=True)
class ClockShare:
    """Where a run's clock went: ``run_clock`` seconds in all, ``seconds`` per kind of :data:`SHARE_KINDS`
    (training: the rest of the run clock), and ``off_clock`` seconds per name of work the run clock did not
    count (never part of the shares)."""

    run_clock: float
    seconds: dict[str, float]
    off_clock: dict[str, float]

    def share(self, *kinds: str) -> float | None:
        """The fraction (0 to 1) of the run clock the ``kinds`` took together; None for an empty clock."""
        if self.run_clock <= 0:
            return None
        return sum(self.seconds[kind] for kind in kinds) / self.run_clock


def clock_share(events: Sequence[dict[str, Any]]) -> ClockShare:
    """The evaluation share of a run from its event log (``docs/metrics.md``, *Evaluation share*).

    ``events`` are the run's surviving events (:func:`asr.tta.active_events`, as :class:`Run` holds them):
    every session's ``phase`` events count, those of work a resume threw away do not. The run clock is the
    last ``elapsed``; a phase's ``seconds`` were all on it (off-clock work never runs inside a phase).
    Off the clock: ``off_clock`` events (``eval.extra_sets``) and ``external`` evaluations (another
    process's time).
    """
    run_clock = last_elapsed(events)
    seconds = dict.fromkeys(SHARE_KINDS, 0.0)
    off_clock: dict[str, float] = {}
    for event in events:
        kind, spent = event.get("event"), event.get("seconds")
        if not is_number(spent):
            continue
        if kind == "phase" and event.get("phase") in PHASE_KINDS:
            seconds[PHASE_KINDS[event["phase"]]] += float(spent)
        elif kind == "off_clock":
            name = str(event.get("name") or "unnamed")
            off_clock[name] = off_clock.get(name, 0.0) + float(spent)
        elif kind == "eval" and event.get("source") == "external":
            off_clock["external evaluation"] = off_clock.get("external evaluation", 0.0) + float(spent)
    seconds["training"] = max(0.0, run_clock - sum(seconds.values()))
    return ClockShare(run_clock, seconds, off_clock)


def throughput_segments(run: Run) -> list[tuple[float, float, float]]:
    """(start, end, utterances per second) over run-clock seconds, sorted: each training step holds its
    rate from its start to its end; evaluation, swap and checkpoint phases are 0 (no training)."""
    segments = []
    for event in run.of_kind("step"):
        seconds, batch = event.get("step_seconds"), event.get("batch_size")
        if is_number(event.get("elapsed")) and is_number(seconds) and seconds > 0 and is_number(batch):
            segments.append((float(event["elapsed"]) - seconds, float(event["elapsed"]), batch / seconds))
    segments += [(start, end, 0.0) for phase, start, end in phase_spans(run) if phase in NON_TRAIN_PHASES]
    return sorted(segments)


def windowed_throughput(
    segments: Sequence[tuple[float, float, float]], window: float = 60.0, spacing: float = 5.0
) -> tuple[np.ndarray, np.ndarray]:
    """Utterances trained in the ``window`` seconds centred on each point (every ``spacing`` seconds),
    divided by the window: the rate a user sees, evaluation and swapping included as time without
    training. Only whole windows inside the segments' span are returned."""
    if not segments:
        return np.array([]), np.array([])
    starts, ends, rates = np.array(segments, dtype=float).T
    first, last = starts.min(), ends.max()

    def trained_by(t: np.ndarray) -> np.ndarray:
        covered = np.clip(t[:, None] - starts[None, :], 0.0, (ends - starts)[None, :])
        return covered @ rates

    centres = np.arange(first + window / 2, last - window / 2 + 1e-9, spacing)
    return centres, (trained_by(centres + window / 2) - trained_by(centres - window / 2)) / window


def utilization(run: Run) -> dict[str, Any] | None:
    """Mean and 95th-percentile CPU percent of the training process; mean GPU utilization, peak memory."""
    samples = [e for e in run.of_kind("util") if is_number(e.get("cpu_percent"))]
    if not samples:
        return None
    cpu = np.array([float(e["cpu_percent"]) for e in samples])
    with_children = [
        float(e["cpu_percent"]) + float(e["children_cpu_percent"])
        for e in samples
        if is_number(e.get("children_cpu_percent"))
    ]
    return {
        "samples": len(samples),
        "cpu_mean": float(cpu.mean()),
        "cpu_p95": float(np.percentile(cpu, 95)),
        "cpu_with_children_mean": float(np.mean(with_children)) if with_children else None,
        "gpus": _gpu_utilization(samples),
    }


def _gpu_utilization(samples: list[dict[str, Any]]) -> dict[int, dict[str, float | None]]:
    """Per GPU index: mean utilization (percent) and peak memory (MB) over the samples."""
    gpus: dict[int, dict[str, list[float]]] = {}
    for event in samples:
        for gpu in event.get("gpus") or []:
            slot = gpus.setdefault(int(gpu.get("index", 0)), {"utilization": [], "memory_used_mb": []})
            for key in slot:
                if is_number(gpu.get(key)):
                    slot[key].append(float(gpu[key]))
    return {
        index: {
            "utilization_mean": float(np.mean(v["utilization"])) if v["utilization"] else None,
            "memory_peak_mb": max(v["memory_used_mb"]) if v["memory_used_mb"] else None,
        }
        for index, v in sorted(gpus.items())
    }


def price_per_hour(run: Run, override: float | None) -> float | None:
    """The rig's price amortized per hour of use (price / depreciation period), or the override."""
    if override is not None:
        return override
    if run.rig.price_usd > 0 and run.rig.depreciation_years > 0:
        return run.rig.price_usd / (run.rig.depreciation_years * HOURS_PER_YEAR)
    return None


def epoch_accuracy(evals: Sequence[dict[str, Any]], window: int = 3) -> str:
    """``"dev 40.0/15.0 (41.0/15.5); dev-seen 30.0/11.0 (31.0/12.0)"``: per set, in the order first
    evaluated, the last epoch's WER/CER and the median of the last ``window`` epochs' (percent);
    an em dash when no evaluation has both."""
    series: dict[str, dict[int, tuple[float, float]]] = {}
    for event in evals:
        wer, cer = event.get("wer"), event.get("cer")
        if is_number(wer) and is_number(cer) and event.get("split") is not None:
            by_epoch = series.setdefault(str(event["split"]), {})
            by_epoch[int(event.get("epoch", len(by_epoch)))] = (float(wer), float(cer))
    parts = []
    for split, by_epoch in series.items():
        last = [by_epoch[e] for e in sorted(by_epoch)][-window:]
        wer, cer = statistics.median(w for w, _ in last), statistics.median(c for _, c in last)
        parts.append(f"{split} {last[-1][0]:.1f}/{last[-1][1]:.1f} ({wer:.1f}/{cer:.1f})")
    return "; ".join(parts) or "\u2014"
