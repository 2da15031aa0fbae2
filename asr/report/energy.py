"""Energy of a run from its ``util`` samples (``docs/metrics.md``, *Energy and CO2*): power per source
integrated over the run clock, in total, per phase and per epoch.

The CPU is counted once per session: a session whose samples carry RAPL's measured ``cpu_power_w`` counts
under ``cpu-rapl``, any other under the ``cpu`` estimate (:func:`estimated_cpu_joules`, which
``tools/bench_infer.py`` uses too), so a run resumed on a machine without RAPL keeps both parts.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from asr.report.loading import Run, is_number
from asr.report.measures import PHASE_KINDS, SHARE_KINDS, phase_spans

POWER_SOURCES = {
    "gpu": "GPU board power, NVML (measured)",
    "cpu-rapl": "CPU packages, RAPL energy counters (measured: the whole packages, every process on them)",
    "cpu": "CPU, ESTIMATE: CPU time x rig.cpu_watts_per_core, only where RAPL was not readable",
}
CPU_SOURCES = ("cpu-rapl", "cpu")
"""The CPU's sources: each session counts under exactly one."""


def estimated_cpu_joules(cpu_seconds: float, watts_per_core: float) -> float:
    """The CPU energy estimate where nothing measured it (J): CPU seconds × watts per busy core. A core's
    share of the package power at full load; idle cores, memory and the rest of the host are not counted.
    Per second of run time the CPU seconds are the busy cores, and the same product gives watts."""
    return cpu_seconds * watts_per_core


def integrate(times: np.ndarray, values: np.ndarray, start: float, end: float) -> float:
    """Trapezoid integral of the piecewise-linear curve through the samples over [start, end].

    Outside the sampled range nothing is counted (no extrapolation). Power in W gives joules.
    """
    if len(times) < 2:
        return 0.0
    start, end = max(start, float(times[0])), min(end, float(times[-1]))
    if end <= start:
        return 0.0
    inside = (times > start) & (times < end)
    xs = np.concatenate([[start], times[inside], [end]])
    ys = np.concatenate([[np.interp(start, times, values)], values[inside], [np.interp(end, times, values)]])
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2.0))


@dataclasses.dataclass(frozen=True)
class PowerCurve:
    """One source's samples as segments ``(run-clock seconds, watts)``, each a curve of its own: nothing is
    counted between two segments (the sessions in between counted under another source)."""

    segments: tuple[tuple[np.ndarray, np.ndarray], ...]

    @property
    def sampled(self) -> bool:
        return any(len(times) >= 2 for times, _ in self.segments)

    def integrate(self, start: float, end: float) -> float:
        """Joules over [start, end] (run-clock seconds), summed over the segments."""
        return sum((integrate(times, watts, start, end) for times, watts in self.segments), 0.0)


def _measured_cpu(session: list[dict[str, Any]]) -> bool:
    """Whether RAPL measured the session's CPU power (a ``util`` sample with a ``cpu_power_w`` figure)."""
    return any(e.get("event") == "util" and is_number(e.get("cpu_power_w")) for e in session)


def power_curve(run: Run, source: str = "gpu") -> PowerCurve:
    """The ``source`` power of the run's ``util`` samples (:func:`_sample_watts`). Consecutive sessions it
    counts make one segment; ``cpu-rapl`` counts the sessions RAPL measured (:func:`_measured_cpu`), the
    ``cpu`` estimate every other session."""
    segments: list[list[dict[str, Any]]] = [[]]
    for session in run.session_events():
        if source in CPU_SOURCES and _measured_cpu(session) != (source == "cpu-rapl"):
            segments.append([])
        else:
            segments[-1] += [e for e in session if e.get("event") == "util"]
    curves = (_samples(samples, source, run.rig.cpu_watts_per_core) for samples in segments)
    return PowerCurve(tuple(curve for curve in curves if len(curve[0])))


def _samples(util: list[dict[str, Any]], source: str, per_core: float) -> tuple[np.ndarray, np.ndarray]:
    """Run-clock seconds and watts of the samples that have a ``source`` figure, in time order."""
    times, watts = [], []
    for event in util:
        value = _sample_watts(event, source, per_core) if is_number(event.get("elapsed")) else None
        if value is not None:
            times.append(float(event["elapsed"]))
            watts.append(value)
    order = np.argsort(times, kind="stable")
    return np.asarray(times, dtype=float)[order], np.asarray(watts, dtype=float)[order]


def _sample_watts(event: dict[str, Any], source: str, per_core: float) -> float | None:
    """One ``util`` sample's power (W), None where it has none: ``gpu``, total GPU board power (NVML);
    ``cpu-rapl``, the CPU packages' power measured by RAPL (``cpu_power_w``); ``cpu``, the estimate,
    (``cpu_percent`` + ``children_cpu_percent``) / 100 busy cores × ``per_core`` watts (none when 0)."""
    if source == "gpu":
        powers = [g.get("power_w") for g in event.get("gpus") or [] if is_number(g.get("power_w"))]
        return sum(powers) if powers else None
    if source == "cpu-rapl":
        return float(event["cpu_power_w"]) if is_number(event.get("cpu_power_w")) else None
    if per_core > 0 and is_number(event.get("cpu_percent")):
        children = event.get("children_cpu_percent")
        busy = float(event["cpu_percent"]) + (float(children) if is_number(children) else 0.0)
        return estimated_cpu_joules(busy / 100.0, per_core)
    return None


def energy(run: Run, source: str = "gpu") -> dict[str, Any] | None:
    """Joules of ``source`` (:func:`power_curve`): total, per phase (training = the rest), per epoch, and
    the curve; None if unsampled.

    Epoch k runs from the start of its first training step to the start of epoch k + 1, so it
    includes the evaluation and checkpointing that follow its training.
    """
    curve = power_curve(run, source)
    if not curve.sampled:
        return None
    total = curve.integrate(0.0, math.inf)
    phases: dict[str, float] = {}
    for name, start, end in phase_spans(run):
        phases[name] = phases.get(name, 0.0) + curve.integrate(start, end)
    phases = {"train": total - sum(phases.values()), **phases}
    bounds = _epoch_bounds(run)
    per_epoch = {epoch: curve.integrate(start, end) for epoch, (start, end) in bounds.items()}
    return {"total": total, "phases": phases, "epochs": per_epoch, "curve": curve}


def energy_by_kind(run: Run) -> tuple[dict[str, float], list[str]] | None:
    """Joules per kind of :data:`~asr.report.measures.SHARE_KINDS` (the phases of :func:`energy` grouped as
    :func:`~asr.report.measures.clock_share` groups their seconds: training is the rest), summed over the
    power sources that sampled the run (each session's CPU counted once), and those sources; None if none."""
    joules = dict.fromkeys(SHARE_KINDS, 0.0)
    sources = []
    for source in POWER_SOURCES:
        result = energy(run, source)
        if result is None:
            continue
        sources.append(source)
        for phase, value in result["phases"].items():
            joules[PHASE_KINDS.get(phase, "training")] += value
    return (joules, sources) if sources else None


def _epoch_bounds(run: Run) -> dict[int, tuple[float, float]]:
    """Epoch -> (start, end) run-clock seconds: from its first training step's start (epoch 0: from 0) to
    the next epoch's start (the last: without end)."""
    starts: dict[int, float] = {}
    for event in run.of_kind("step"):
        epoch = event.get("epoch")
        if isinstance(epoch, int) and epoch not in starts and is_number(event.get("elapsed")):
            starts[epoch] = float(event["elapsed"]) - float(event.get("step_seconds") or 0.0)
    epochs = sorted(starts)
    bounds = [0.0 if i == 0 else starts[e] for i, e in enumerate(epochs)] + [math.inf]
    return {e: (bounds[i], bounds[i + 1]) for i, e in enumerate(epochs)}
