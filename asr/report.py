"""``python -m asr.report RUN_DIR [RUN_DIR ...]``: compare runs by time, cost and energy to accuracy.

Reads only run directories (they may come from different machines): ``events.jsonl`` (the
event log, :mod:`asr.events`), ``recipe.yaml`` (the resolved recipe: name, rig, targets, window,
batch) and, when present, ``eval/results.json`` (final ``asr.evaluate`` results: a list of rows
``{split, wer, cer, cer_maxlen, beam_width, utterances, ...}``). Writes ``report.md`` with its
plots as PNG files next to it and a self-contained ``report.html`` (plots embedded as base64),
and prints the tables:

- time to accuracy (the paper's Table 4) under the median and the first-evaluation rule, in
  minutes and as % of the baseline, ``NA`` where a target was not reached;
- final accuracy (Table 5), cost and energy to accuracy, throughput and utilization;
- per run: sessions, active run time, downtime between stop and resume, feature extraction.

Runs of the same configuration (same recipe name, rig label and resolved recipe apart from the
seed and data paths) are aggregated as MLPerf does: drop the fastest and slowest, mean of the
rest; with fewer than 5 runs, the median; min and max are shown. ``docs/metrics.md`` defines
every number. Bad input (a missing log, a truncated line, disagreeing targets, an unknown
baseline) gives a one-line message on stderr and the rest of the report; exit status 2 only
when no run can be reported.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import html
import io
import json
import math
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from asr.config import ConfigError, Recipe, RigConfig, TTAConfig, parse_yaml, recipe_from_dict
from asr.events import EVENT_LOG_NAME, read_events
from asr.files import JsonError, WriteError, load_json, read_json, write_bytes, write_text
from asr.tta import METRICS, RULES, EvalPoint, active_events, eval_series, reached_at, tta_split

RECIPE_NAME = "recipe.yaml"
RESULTS_PATH = Path("eval") / "results.json"
UTIL_WINDOW_SECONDS = 25.0
NON_TRAIN_PHASES = ("evaluate", "swap_out", "swap_in", "checkpoint")
HOURS_PER_YEAR = 365 * 24

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


def warn(message: str) -> None:
    print(f"asr.report: {message}", file=sys.stderr)


# --------------------------------------------------------------------------- reading runs


@dataclasses.dataclass
class Run:
    """One run directory, read and normalized (events after resume roll-back, see ``active_events``)."""

    path: Path
    label: str
    events: list[dict[str, Any]]
    recipe: Recipe | None
    recipe_name: str
    rig: RigConfig
    tta: TTAConfig
    global_batch: int | None
    replicas: int
    split: str | None
    results: list[dict[str, Any]] | None
    recorded: frozenset[str] = frozenset()
    """``section.key`` settings written in the run's recipe.yaml (a run saved before a setting existed
    has no value for it, not the default of today's code)."""
    group: str = ""
    color: str = "C0"

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == kind]

    @property
    def active_seconds(self) -> float:
        return max((float(e["elapsed"]) for e in self.events if _number(e.get("elapsed"))), default=0.0)

    @property
    def downtime_seconds(self) -> float:
        return sum(float(e.get("downtime") or 0.0) for e in self.of_kind("run_start"))

    @property
    def sessions(self) -> int:
        return max(1, len(self.of_kind("run_start")))

    @property
    def extract_seconds(self) -> float | None:
        """Feature extraction seconds if recorded (``run_start.extract_seconds`` or ``extract.json``)."""
        for event in self.of_kind("run_start"):
            if _number(event.get("extract_seconds")):
                return float(event["extract_seconds"])
        path = self.path / "extract.json"
        if path.is_file():
            recorded = read_json(path)
            if isinstance(recorded, dict) and "seconds" in recorded:
                return float(recorded["seconds"]) if _number(recorded["seconds"]) else None
            warn(f"{path}: not a JSON object with 'seconds', feature extraction time not shown")
        return self._extract_seconds_from_features()

    def _extract_seconds_from_features(self) -> float | None:
        """Fallback on the same machine: ``timing-task*.json`` of the recipe's feature directories
        (``asr.extract``); the longest task per directory (tasks may run in parallel), summed."""
        if self.recipe is None:
            return None
        total, found = 0.0, False
        for directory in {self.recipe.data.train, self.recipe.data.dev}:
            for base in (self.path, Path.cwd()):
                task_seconds = []
                for timing in sorted((base / directory).glob("timing-task*.json")):
                    recorded = read_json(timing)
                    value = recorded.get("total_seconds") if isinstance(recorded, dict) else None
                    if _number(value):
                        task_seconds.append(float(value))
                if task_seconds:
                    total, found = total + max(task_seconds), True
                    break
        return total if found else None

    def targets(self) -> list[tuple[str, float]]:
        return [(t.metric, float(t.value)) for t in self.tta.targets]

    def series(self, metric: str) -> list[EvalPoint]:
        return eval_series(self.events, metric, self.split)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_run(path: str | Path) -> Run | None:
    """The run in ``path``, or None (with a message) if it has no readable event log."""
    path = Path(path)
    if not (path / EVENT_LOG_NAME).is_file():
        why = "no such directory" if not path.is_dir() else f"no {EVENT_LOG_NAME}"
        warn(f"{path}: {why}, run skipped")
        return None
    raw, problems = read_events(path)
    for problem in problems:
        warn(problem)
    if problems:
        warn(f"{path / EVENT_LOG_NAME}: {len(raw)} events read, {len(problems)} line(s) skipped")
    if not raw:
        warn(f"{path / EVENT_LOG_NAME}: no events, run skipped")
        return None
    events = active_events(raw)
    dropped = len(raw) - len(events)
    if dropped:
        warn(f"{path}: {dropped} events from work lost at a resume (redone later) ignored")
    recipe, recorded = _load_recipe(path)
    start = next((e for e in events if e.get("event") == "run_start"), {})
    name = recipe.name if recipe else str(start.get("recipe") or "unknown")
    rig = recipe.rig if recipe else RigConfig(name=str(start.get("rig") or "unknown"))
    replicas = start.get("replicas") or (recipe.runtime.replicas if recipe else 0) or 1
    batch = recipe.train.global_batch if recipe else None
    return Run(
        path=path,
        label=path.resolve().name,
        events=events,
        recipe=recipe,
        recipe_name=name,
        rig=rig,
        tta=recipe.tta if recipe else TTAConfig(),
        global_batch=batch,
        replicas=int(replicas),
        split=tta_split(events),
        results=_load_results(path),
        recorded=recorded,
    )


def _load_recipe(path: Path) -> tuple[Recipe | None, frozenset[str]]:
    """The run's recipe and the ``section.key`` settings its file records."""
    recipe_path = path / RECIPE_NAME
    if not recipe_path.is_file():
        warn(f"{recipe_path}: missing; using default targets and rig (name from the event log)")
        return None, frozenset()
    try:
        values = parse_yaml(recipe_path.read_text()) or {}
        values.pop("base", None)
        recorded = frozenset(
            f"{section}.{key}" for section, keys in values.items() if isinstance(keys, dict) for key in keys
        )
        return recipe_from_dict(values, str(recipe_path)), recorded
    except (ConfigError, ValueError, AttributeError, TypeError) as error:
        warn(f"{str(error).splitlines()[0]}; using default targets and rig")
    except Exception as error:  # yaml.YAMLError
        warn(f"{recipe_path}: not valid YAML ({type(error).__name__}); using default targets and rig")
    return None, frozenset()


def _load_results(path: Path) -> list[dict[str, Any]] | None:
    results_path = path / RESULTS_PATH
    if not results_path.is_file():
        return None
    try:
        rows = load_json(results_path)
    except JsonError as error:
        warn(f"{error}; final accuracy not shown for this run")
        return None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "split" in r for r in rows):
        warn(f"{results_path}: expected a list of rows with 'split'; final accuracy not shown for this run")
        return None
    return rows


# --------------------------------------------------------------------------- grouping repeated runs

_NOT_CONFIGURATION = {
    ("train", "seed"),
    ("data", "train"),
    ("data", "dev"),
    ("eval", "lm"),
    ("tta", "targets"),
    ("tta", "window"),
    ("tta", "sample_interval_seconds"),
}


def _configuration(run: Run) -> dict[str, Any]:
    """The settings that make runs repeats of each other: the recipe apart from seed and paths. A setting
    the run's recipe.yaml does not record (saved before the setting existed) is unknown, shown as ``?``.
    The training set enters by its size (``run_start.utterances``), not its path, which differs between
    machines: a run on a perturbed or extended copy is another configuration."""
    if run.recipe is None:
        return {}
    flat = {}
    starts = run.of_kind("run_start")
    if starts and isinstance(starts[0].get("utterances"), int):
        flat["training utterances"] = json.dumps(starts[0]["utterances"])
    for section, values in run.recipe.to_dict().items():
        if isinstance(values, dict):
            for key, value in values.items():
                dotted = f"{section}.{key}"
                if (section, key) not in _NOT_CONFIGURATION and section != "rig" and dotted in run.recorded:
                    flat[dotted] = json.dumps(value, sort_keys=True, default=str)
    return flat


def assign_groups(runs: list[Run]) -> dict[str, list[Run]]:
    """Label each run's configuration; runs sharing a label are repeats (aggregated)."""
    configs = [_configuration(run) for run in runs]
    by_name: dict[tuple[str, str], list[int]] = {}
    for index, run in enumerate(runs):
        by_name.setdefault((run.recipe_name, run.rig.name), []).append(index)
    for (name, rig), indices in by_name.items():
        keys = sorted({k for i in indices for k in configs[i]})
        differing = [k for k in keys if len({configs[i].get(k) for i in indices}) > 1]
        for i in indices:
            extra = ", ".join(
                f"{k}={json.loads(configs[i][k]) if k in configs[i] else '?'}" for k in differing
            )
            runs[i].group = f"{name} @ {rig}" + (f" [{extra}]" if extra else "")
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.group, []).append(run)
    return groups


def aggregate(values: Sequence[float | None]) -> tuple[float | None, float | None, float | None]:
    """MLPerf aggregation of repeated runs: (aggregate, min, max), None where not reached.

    Five runs or more: drop the fastest and the slowest and average the rest; fewer: the median.
    A run that never reached the target counts as infinitely slow.
    """
    if not values:
        return None, None, None
    times = sorted(math.inf if v is None else float(v) for v in values)
    if len(times) >= 5:
        kept = times[1:-1]
        middle = math.inf if math.inf in kept else sum(kept) / len(kept)
    else:
        middle = statistics.median(times)

    def finite(value: float) -> float | None:
        return None if math.isinf(value) else value

    return finite(middle), finite(times[0]), finite(times[-1])


# --------------------------------------------------------------------------- the numbers


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


def training_steps(run: Run) -> list[dict[str, Any]]:
    """Training ``step`` events, without the first step of each session (it includes graph tracing)."""
    steps, first = [], True
    for event in run.events:
        if event.get("event") == "run_start":
            first = True
        elif event.get("event") == "step" and event.get("phase", "train") == "train":
            if not first and _number(event.get("step_seconds")) and event["step_seconds"] > 0:
                steps.append(event)
            first = False
    return steps


def throughput(run: Run) -> dict[str, float] | None:
    """Utterances per second over training steps only: total, per replica, and the median step's; and
    seconds of (unpadded) audio per second, where the steps record it (``None`` otherwise)."""
    steps = [s for s in training_steps(run) if _number(s.get("batch_size"))]
    if not steps:
        return None
    seconds = sum(float(s["step_seconds"]) for s in steps)
    utterances = sum(float(s["batch_size"]) for s in steps)
    replicas = max(1, int(steps[-1].get("replicas") or run.replicas))
    total = utterances / seconds
    audio = [float(s["audio_seconds"]) for s in steps if _number(s.get("audio_seconds"))]
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
        if _number(event.get("elapsed")) and _number(event.get("seconds")):
            end = float(event["elapsed"])
            spans.append((str(event.get("phase")), max(0.0, end - float(event["seconds"])), end))
    return spans


POWER_SOURCES = {
    "gpu": "GPU board power, NVML (measured)",
    "cpu-rapl": "CPU packages, RAPL energy counters (measured: the whole packages, every process on them)",
    "cpu": "CPU, ESTIMATE: CPU time x rig.cpu_watts_per_core, only where RAPL was not readable",
}


def power_samples(run: Run, source: str = "gpu") -> tuple[np.ndarray, np.ndarray]:
    """Run-clock seconds and watts of the ``util`` samples: ``gpu``, total GPU board power (NVML);
    ``cpu-rapl``, the CPU packages' power measured by RAPL (``cpu_power_w``); ``cpu``, an estimate,
    (``cpu_percent`` + ``children_cpu_percent``) / 100 busy cores × ``rig.cpu_watts_per_core`` (none when
    that is 0)."""
    times, watts = [], []
    per_core = run.rig.cpu_watts_per_core
    for event in run.of_kind("util"):
        if not _number(event.get("elapsed")):
            continue
        if source == "gpu":
            powers = [g.get("power_w") for g in event.get("gpus") or [] if _number(g.get("power_w"))]
            if powers:
                times.append(float(event["elapsed"]))
                watts.append(sum(powers))
        elif source == "cpu-rapl":
            if _number(event.get("cpu_power_w")):
                times.append(float(event["elapsed"]))
                watts.append(float(event["cpu_power_w"]))
        elif per_core > 0 and _number(event.get("cpu_percent")):
            children = event.get("children_cpu_percent")
            busy = float(event["cpu_percent"]) + (float(children) if _number(children) else 0.0)
            times.append(float(event["elapsed"]))
            watts.append(busy / 100.0 * per_core)
    order = np.argsort(times, kind="stable")
    return np.asarray(times, dtype=float)[order], np.asarray(watts, dtype=float)[order]


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


def energy(run: Run, source: str = "gpu") -> dict[str, Any] | None:
    """Joules of ``source`` (:func:`power_samples`): total, per phase (training = the rest), per epoch;
    None if unsampled.

    Epoch k runs from the start of its first training step to the start of epoch k + 1, so it
    includes the evaluation and checkpointing that follow its training.
    """
    times, watts = power_samples(run, source)
    if len(times) < 2:
        return None
    total = integrate(times, watts, 0.0, math.inf)
    phases: dict[str, float] = {}
    for name, start, end in phase_spans(run):
        phases[name] = phases.get(name, 0.0) + integrate(times, watts, start, end)
    phases = {"train": total - sum(phases.values()), **phases}
    starts: dict[int, float] = {}
    for event in run.of_kind("step"):
        epoch = event.get("epoch")
        if isinstance(epoch, int) and epoch not in starts and _number(event.get("elapsed")):
            starts[epoch] = float(event["elapsed"]) - float(event.get("step_seconds") or 0.0)
    epochs = sorted(starts)
    bounds = [0.0 if i == 0 else starts[e] for i, e in enumerate(epochs)] + [math.inf]
    per_epoch = {e: integrate(times, watts, bounds[i], bounds[i + 1]) for i, e in enumerate(epochs)}
    return {"total": total, "phases": phases, "epochs": per_epoch, "times": times, "watts": watts}


def utilization(run: Run) -> dict[str, Any] | None:
    """Mean and 95th-percentile CPU percent of the training process; mean GPU utilization, peak memory."""
    samples = [e for e in run.of_kind("util") if _number(e.get("cpu_percent"))]
    if not samples:
        return None
    cpu = np.array([float(e["cpu_percent"]) for e in samples])
    with_children = [
        float(e["cpu_percent"]) + float(e["children_cpu_percent"])
        for e in samples
        if _number(e.get("children_cpu_percent"))
    ]
    gpus: dict[int, dict[str, list[float]]] = {}
    for event in samples:
        for gpu in event.get("gpus") or []:
            slot = gpus.setdefault(int(gpu.get("index", 0)), {"utilization": [], "memory_used_mb": []})
            for key in slot:
                if _number(gpu.get(key)):
                    slot[key].append(float(gpu[key]))
    return {
        "samples": len(samples),
        "cpu_mean": float(cpu.mean()),
        "cpu_p95": float(np.percentile(cpu, 95)),
        "cpu_with_children_mean": float(np.mean(with_children)) if with_children else None,
        "gpus": {
            index: {
                "utilization_mean": float(np.mean(v["utilization"])) if v["utilization"] else None,
                "memory_peak_mb": max(v["memory_used_mb"]) if v["memory_used_mb"] else None,
            }
            for index, v in sorted(gpus.items())
        },
    }


def price_per_hour(run: Run, override: float | None) -> float | None:
    """The rig's price amortized per hour of use (price / depreciation period), or the override."""
    if override is not None:
        return override
    if run.rig.price_usd > 0 and run.rig.depreciation_years > 0:
        return run.rig.price_usd / (run.rig.depreciation_years * HOURS_PER_YEAR)
    return None


# --------------------------------------------------------------------------- formatting


@dataclasses.dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""

    def markdown(self) -> str:
        lines = [
            f"| {' | '.join(self.header)} |",
            "|" + "|".join(["---"] + ["---:"] * (len(self.header) - 1)) + "|",
        ]
        lines += [f"| {' | '.join(row)} |" for row in self.rows]
        return "\n".join(lines)

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c).replace(chr(10), '<br>')}</td>" for c in row) + "</tr>"
            for row in self.rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: float | None, digits: int = 1) -> str:
    return "NA" if value is None else f"{value:.{digits}f}"


def _target_label(metric: str, target: float) -> str:
    return f"{metric.upper()} {target:g}"


# --------------------------------------------------------------------------- the report


@dataclasses.dataclass
class Report:
    runs: list[Run]
    groups: dict[str, list[Run]]
    baseline: str
    targets: list[tuple[str, float]]
    window: int
    price_override: float | None
    tables: list[Table] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    plots: list[tuple[str, str, bytes]] = dataclasses.field(default_factory=list)


def common_targets(runs: list[Run]) -> tuple[list[tuple[str, float]], int, list[str]]:
    """The baseline-first union of the runs' targets, the window, and notes where runs disagree."""
    notes, targets = [], []
    for run in runs:
        for target in run.targets():
            if target not in targets:
                targets.append(target)
    if len({tuple(run.targets()) for run in runs}) > 1:
        listing = "; ".join(
            f"{run.label}: {', '.join(_target_label(*t) for t in run.targets())}" for run in runs
        )
        notes.append(f"runs configure different targets ({listing}); every target is computed for every run")
    window = runs[0].tta.window
    if len({run.tta.window for run in runs}) > 1:
        windows = ", ".join(f"{run.label}: {run.tta.window}" for run in runs)
        notes.append(
            f"runs configure different windows ({windows}); all use {window} epochs (the baseline's)"
        )
    splits = {run.split for run in runs if run.split is not None}
    if len(splits) > 1:
        notes.append(
            f"runs evaluate different splits ({', '.join(sorted(splits))}); TTA compares them anyway"
        )
    missing = [
        f"{run.label} ({metric})"
        for run in runs
        for metric in METRICS
        if any(m == metric for m, _ in targets) and not run.series(metric)
    ]
    if missing:
        notes.append(f"metric never evaluated: {', '.join(missing)} (\u2014 in the tables)")
    return targets, window, notes


def build_report(
    runs: list[Run],
    baseline: str | None = None,
    price_override: float | None = None,
    util_window_start: float | None = None,
    plots: bool = True,
) -> Report:
    """Every table, note and plot of the report, for runs already loaded."""
    baseline_runs = [r for r in runs if baseline in (r.label, r.recipe_name, r.rig.name, str(r.path))]
    if baseline is not None and not baseline_runs:
        baseline_runs = [r for r in runs if r.group == baseline]
    ordered = baseline_runs[:1] + [r for r in runs if r not in baseline_runs[:1]]
    groups = assign_groups(ordered)
    for index, run in enumerate(ordered):
        run.color = f"C{index % 10}"
    notes = []
    if baseline is not None and not baseline_runs:
        labels = ", ".join(sorted({r.label for r in runs} | {r.recipe_name for r in runs}))
        msg = f"baseline {baseline!r} matches no run (runs: {labels}); using {ordered[0].label}"
        warn(msg)
        notes.append(msg)
    targets, window, target_notes = common_targets(ordered)
    for note in target_notes:
        warn(note)
    notes += target_notes
    report = Report(ordered, groups, ordered[0].group, targets, window, price_override, notes=notes)
    report.tables += tta_tables(report)
    report.tables.append(final_accuracy_table(report))
    report.tables.append(cost_table(report))
    energy_table_ = energy_tables(report)
    report.tables += energy_table_
    report.tables.append(throughput_table(report))
    report.tables.append(utilization_table(report))
    report.tables.append(runs_table(report))
    if plots:
        report.plots = make_plots(report, util_window_start)
    return report


def _group_cell(values: list[float | None], scale: float, digits: int = 1) -> tuple[str, float | None]:
    middle, low, high = aggregate(values)
    text = _fmt(None if middle is None else middle * scale, digits)
    if len(values) > 1 and low is None:
        text += f" (n={len(values)})"
    elif len(values) > 1:
        low_text = _fmt(None if low is None else low * scale, digits)
        high_text = _fmt(None if high is None else high * scale, digits)
        text += f" ({low_text}\u2013{high_text}, n={len(values)})"
    return text, middle


def censored_aggregate(runs: Sequence[Run], times: Sequence[Any]) -> float | None:
    """A lower bound (s) of the runs' aggregate time to a target that some never reached: each of those
    counts at its whole active length, the earliest it could have got there had it gone on."""
    if any(t == "not evaluated" for t in times):
        return None
    return aggregate(
        [float(t) if _number(t) else run.active_seconds for run, t in zip(runs, times, strict=True)]
    )[0]


def _percent_of_baseline(middle: float | None, reference: float | None, bound: float | None) -> str:
    if middle is None:
        return "NA"
    if reference:
        return f"{100 * middle / reference:.0f}%"
    return f"\u2264{100 * middle / bound:.0f}%" if bound else "\u2014"


def tta_tables(report: Report) -> list[Table]:
    """The paper's Table 4 for each rule: minutes per target and % of the baseline configuration."""
    tables = []
    per_run = {run.label: tta_seconds(run, report.targets, report.window) for run in report.runs}
    for rule in RULES:
        rows, base, bounds = [], {}, {}
        for group, members in report.groups.items():
            cells, percents = [], []
            for metric, target in report.targets:
                key = (metric, target, rule)
                raw = [per_run[run.label][key] for run in members]
                if all(v == "not evaluated" for v in raw):
                    cells.append("\u2014")
                    percents.append("\u2014")
                    continue
                text, middle = _group_cell([v if _number(v) else None for v in raw], 1 / 60)
                cells.append(text)
                if group == report.baseline:
                    base[key] = middle
                    if middle is None:
                        bounds[key] = censored_aggregate(members, raw)
                percents.append(_percent_of_baseline(middle, base.get(key), bounds.get(key)))
            rows.append([group, *cells])
            rows.append(["  % of baseline", *percents])
        name = (
            f"median of the last {report.window} evaluated epochs" if rule == "median" else "first evaluation"
        )
        note = (
            f"Baseline: {report.baseline}. Repeated runs: aggregate (min\u2013max, n); "
            "% of the baseline's aggregate."
        )
        known = [
            f"{_target_label(m, t)} {b / 60:.1f} min" for (m, t, _), b in bounds.items() if b is not None
        ]
        if known:
            note += (
                " \u2264 X%: an upper bound, the baseline's aggregate being NA (a run missed the target);"
                " counting such a run at its whole length, the aggregate is at least: "
                + ", ".join(known)
                + "."
            )
        if any("=?" in group for group in report.groups):
            note += " [setting=?]: not recorded in the run's recipe.yaml (saved before the setting existed)."
        tables.append(
            Table(
                f"Time to accuracy in minutes ({rule} rule: {name})",
                ["configuration", *[_target_label(m, t) for m, t in report.targets]],
                rows,
                note,
            )
        )
    return tables


def final_accuracy_table(report: Report) -> Table:
    """The paper's Table 5: final WER (CER) per split, from ``eval/results.json``."""
    splits: list[str] = []
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for run in report.runs:
        for row in run.results or []:
            split = str(row["split"])
            if split not in splits:
                splits.append(split)
            current = best.get((run.label, split))
            if current is None or (row.get("beam_width") or 0) > (current.get("beam_width") or 0):
                best[(run.label, split)] = row
    rows = []
    for run in report.runs:
        if run.results is None:
            continue
        cells = []
        for split in splits:
            row = best.get((run.label, split))
            cells.append("\u2014" if row is None else _final_cell(row))
        rows.append([run.label, *cells])
    missing = [run.label for run in report.runs if run.results is None]
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
    return f"{_fmt(_num(row.get('wer')), 2)} ({_fmt(_num(row.get('cer')), 2)}{beam}{lost})"


def _num(value: Any) -> float | None:
    return float(value) if _number(value) else None


def cost_table(report: Report) -> Table:
    """Cost to accuracy (median rule): TTA hours times the rig's amortized price per hour."""
    rows = []
    for run in report.runs:
        rate = price_per_hour(run, report.price_override)
        seconds = tta_seconds(run, report.targets, report.window)
        cells = []
        for metric, target in report.targets:
            value = seconds[(metric, target, "median")]
            if not _number(value):
                cells.append("\u2014" if value == "not evaluated" else "NA")
            elif rate is None:
                cells.append("no price")
            else:
                cells.append(f"{value / 3600 * rate:.4f}")
        rate_text = "no price" if rate is None else f"{rate:.4f}"
        rows.append([run.label, rate_text, *cells])
    source = (
        "--price-per-hour"
        if report.price_override is not None
        else "rig.price_usd / (rig.depreciation_years \u00d7 8760 h)"
    )
    return Table(
        "Cost to accuracy (median rule), price units",
        ["run", "price per hour", *[_target_label(m, t) for m, t in report.targets]],
        rows,
        f"Cost = TTA in hours \u00d7 price per hour; price per hour = {source}.",
    )


def _energy_rows(
    run: Run, report: Report
) -> tuple[list[list[str]], list[list[str]], list[float | None], float]:
    """One run's energy-to-accuracy and per-phase rows (one per power source), joules to each target
    summed over sources (None where not reached), and the whole run's joules."""
    seconds = tta_seconds(run, report.targets, report.window)
    to_accuracy, phases = [], []
    summed: list[float | None] = [0.0] * len(report.targets)
    whole = 0.0
    results = {source: energy(run, source) for source in POWER_SOURCES}
    if results["cpu-rapl"] is not None:
        results["cpu"] = None  # measured: the estimate would count the CPU twice
    for source, result in results.items():
        if result is None:
            continue
        cells = []
        for index, (metric, target) in enumerate(report.targets):
            value = seconds[(metric, target, "median")]
            joules = integrate(result["times"], result["watts"], 0.0, value) if _number(value) else None
            summed[index] = None if joules is None or summed[index] is None else summed[index] + joules
            cells.append(_fmt(None if joules is None else joules / 1000, 1))
        whole += result["total"]
        to_accuracy.append([run.label, source, _fmt(result["total"] / 1000), *cells])
        phase_text = ", ".join(f"{k} {v / 1000:.1f}" for k, v in result["phases"].items())
        epoch_text = ", ".join(f"{k}: {v / 1000:.1f}" for k, v in result["epochs"].items())
        phases.append([run.label, source, phase_text, epoch_text])
    return to_accuracy, phases, summed, whole


def energy_tables(report: Report) -> list[Table]:
    """Energy to accuracy (kJ until each median-rule TTA) per power source, CO2 to accuracy, and energy
    per phase/epoch."""
    to_accuracy, phases, co2 = [], [], []
    for run in report.runs:
        rows, phase_rows, joules_to, whole = _energy_rows(run, report)
        to_accuracy += rows
        phases += phase_rows
        intensity = run.rig.grid_g_co2_per_kwh
        if rows and intensity > 0:
            grams = [None if j is None else j / 3.6e6 * intensity for j in joules_to]
            co2.append([run.label, f"{intensity:g}", _fmt(whole / 3.6e6 * intensity, 1),
                        *[_fmt(g, 1) for g in grams]])  # fmt: skip
    if not to_accuracy:
        return [
            Table(
                "Energy to accuracy",
                ["run"],
                [],
                "No power was sampled in any run (no NVML, no readable RAPL) and no run sets "
                "rig.cpu_watts_per_core: no energy figures.",
            )
        ]
    sources = "; ".join(f"{key}: {text}" for key, text in POWER_SOURCES.items())
    tables = [
        Table(
            "Energy to accuracy (median rule), kJ",
            ["run", "source", "whole run", *[_target_label(m, t) for m, t in report.targets]],
            to_accuracy,
            f"Power integrated over the run clock (trapezoid between the 1 s utilization samples). {sources} "
            "(the estimate: busy cores of the training process and its children; memory, idle cores and the "
            "rest of the host are not counted). A run with GPU and CPU figures has one row each; CO2 adds "
            "them.",
        ),
        Table("Energy per phase and per epoch, kJ", ["run", "source", "per phase", "per epoch"], phases),
    ]
    if co2:
        tables.append(
            Table(
                "CO2 to accuracy (median rule), g",
                ["run", "g CO2 per kWh", "whole run", *[_target_label(m, t) for m, t in report.targets]],
                co2,
                "g CO2 = (GPU + CPU energy) in kWh × rig.grid_g_co2_per_kwh; the CPU part is an estimate "
                "where its source is cpu.",
            )
        )
    return tables


def throughput_table(report: Report) -> Table:
    rows = []
    for run in report.runs:
        result = throughput(run)
        if result is None:
            rows.append(
                [
                    run.label,
                    "\u2014",
                    "\u2014",
                    "\u2014",
                    "\u2014",
                    "0",
                    str(run.replicas),
                    str(run.global_batch or "?"),
                ]
            )
            continue
        rows.append(
            [
                run.label,
                f"{result['total']:.2f}",
                f"{result['per_replica']:.2f}",
                f"{result['median_step']:.2f}",
                _fmt(result["audio_per_second"]),
                str(result["steps"]),
                str(result["replicas"]),
                str(run.global_batch or "?"),
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


def utilization_table(report: Report) -> Table:
    rows = []
    for run in report.runs:
        result = utilization(run)
        if result is None:
            rows.append([run.label, "0", "\u2014", "\u2014", "\u2014", "no samples"])
            continue
        gpus = (
            "; ".join(
                f"GPU{i}: {_fmt(g['utilization_mean'], 0)}%, peak {_fmt(g['memory_peak_mb'], 0)} MB"
                for i, g in result["gpus"].items()
            )
            or "none sampled"
        )
        rows.append(
            [
                run.label,
                str(result["samples"]),
                f"{result['cpu_mean']:.0f}",
                f"{result['cpu_p95']:.0f}",
                "\u2014"
                if result["cpu_with_children_mean"] is None
                else f"{result['cpu_with_children_mean']:.0f}",
                gpus,
            ]
        )
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


def runs_table(report: Report) -> Table:
    rows = []
    for run in report.runs:
        end = next((e.get("reason") for e in reversed(run.events) if e.get("event") == "run_end"), None)
        last_epoch = max((e.get("epoch", 0) for e in run.of_kind("epoch_end")), default=None)
        extract = run.extract_seconds
        rows.append(
            [
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
        )
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
        rows,
        "Run time is the TTA clock at the last event; downtime (between stop and resume) and feature "
        "extraction are not part of it. WER/CER per evaluated set: the TTA set (data.dev) first, then "
        "each eval.extra_sets set (evaluated off the run clock, never used for TTA).",
    )


def epoch_accuracy(evals: Sequence[dict[str, Any]], window: int = 3) -> str:
    """``"dev 40.0/15.0 (41.0/15.5); dev-seen 30.0/11.0 (31.0/12.0)"``: per set, in the order first
    evaluated, the last epoch's WER/CER and the median of the last ``window`` epochs' (percent);
    an em dash when no evaluation has both."""
    series: dict[str, dict[int, tuple[float, float]]] = {}
    for event in evals:
        wer, cer = event.get("wer"), event.get("cer")
        if _number(wer) and _number(cer) and event.get("split") is not None:
            by_epoch = series.setdefault(str(event["split"]), {})
            by_epoch[int(event.get("epoch", len(by_epoch)))] = (float(wer), float(cer))
    parts = []
    for split, by_epoch in series.items():
        last = [by_epoch[e] for e in sorted(by_epoch)][-window:]
        wer, cer = statistics.median(w for w, _ in last), statistics.median(c for _, c in last)
        parts.append(f"{split} {last[-1][0]:.1f}/{last[-1][1]:.1f} ({wer:.1f}/{cer:.1f})")
    return "; ".join(parts) or "\u2014"


# --------------------------------------------------------------------------- plots


def make_plots(report: Report, util_window_start: float | None) -> list[tuple[str, str, bytes]]:
    """(file name, title, PNG bytes) of each figure, drawn with matplotlib's Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    figures: list[tuple[str, str, Callable[[Any], None]]] = [
        (
            "loss.png",
            "CTC loss over run time (Gaussian-smoothed, \u03c3 = 10 steps)",
            lambda f: plot_loss(report, f),
        ),
        (
            "accuracy.png",
            "Development CER and WER over run time, targets dashed",
            lambda f: plot_accuracy(report, f),
        ),
        (
            "throughput.png",
            "Training throughput over run time (thin: per step, 0 while evaluating, swapping, "
            "checkpointing; thick: mean over 60 s)",
            lambda f: plot_throughput(report, f),
        ),
        (
            "utilization.png",
            f"CPU and GPU utilization over a {UTIL_WINDOW_SECONDS:g} s window",
            lambda f: plot_utilization(report, f, util_window_start),
        ),
    ]
    pictures = []
    for name, title, draw in figures:
        figure = plt.figure(figsize=(9, 4.8) if name != "accuracy.png" else (12, 4.8), dpi=100)
        try:
            draw(figure)
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", bbox_inches="tight")
            pictures.append((name, title, buffer.getvalue()))
        finally:
            plt.close(figure)
    return pictures


def _plain_log_axis(axes: Any) -> None:
    """Log y axis labelled 20, 30, 100 rather than 2x10^1."""
    from matplotlib.ticker import LogFormatter

    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(3, 1.5)))
    axes.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(3, 1.5)))


def _empty(axes: Any, text: str) -> None:
    axes.text(0.5, 0.5, text, ha="center", va="center", transform=axes.transAxes, color="0.4")


def plot_loss(report: Report, figure: Any) -> None:
    from scipy.ndimage import gaussian_filter1d

    axes = figure.add_subplot(1, 1, 1)
    drawn = False
    for run in report.runs:
        steps = [s for s in run.of_kind("step") if _number(s.get("loss")) and _number(s.get("elapsed"))]
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


def plot_accuracy(report: Report, figure: Any) -> None:
    for index, metric in enumerate(METRICS):
        axes = figure.add_subplot(1, 2, index + 1)
        drawn = False
        for run in report.runs:
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
        for m, target in report.targets:
            if m == metric:
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
        axes.set_title(f"dev {metric.upper()}")
        axes.set_xlabel("run time (minutes)")
        axes.set_ylabel(f"{metric.upper()} (%)")
        if drawn:
            _plain_log_axis(axes)
            axes.legend()
        else:
            _empty(axes, f"no {metric.upper()} evaluations")
        axes.grid(True, which="both", alpha=0.3)


def throughput_segments(run: Run) -> list[tuple[float, float, float]]:
    """(start, end, utterances per second) over run-clock seconds, sorted: each training step holds its
    rate from its start to its end; evaluation, swap and checkpoint phases are 0 (no training)."""
    segments = []
    for event in run.of_kind("step"):
        seconds, batch = event.get("step_seconds"), event.get("batch_size")
        if _number(event.get("elapsed")) and _number(seconds) and seconds > 0 and _number(batch):
            segments.append((float(event["elapsed"]) - seconds, float(event["elapsed"]), batch / seconds))
    segments += [(start, end, 0.0) for phase, start, end in phase_spans(run) if phase in NON_TRAIN_PHASES]
    return sorted(segments)


def throughput_curve(run: Run) -> tuple[list[float], list[float]]:
    """The segments of :func:`throughput_segments` as a step curve (two points per segment)."""
    times, values = [], []
    for start, end, value in throughput_segments(run):
        times += [start, end]
        values += [value, value]
    return times, values


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


def plot_throughput(report: Report, figure: Any) -> None:
    axes = figure.add_subplot(1, 1, 1)
    drawn = False
    for run in report.runs:
        times, values = throughput_curve(run)
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


def default_util_window(report: Report) -> float:
    """Start 5 s before the first run's first evaluation phase (so the swap shows), else at 0."""
    starts = [start for phase, start, _ in phase_spans(report.runs[0]) if phase in ("swap_out", "evaluate")]
    return max(0.0, min(starts) - 5.0) if starts else 0.0


def plot_utilization(report: Report, figure: Any, window_start: float | None) -> None:
    start = default_util_window(report) if window_start is None else float(window_start)
    end = start + UTIL_WINDOW_SECONDS
    axes = figure.add_subplot(1, 1, 1)
    drawn = shaded = False
    for run in report.runs:
        samples = [
            e for e in run.of_kind("util") if _number(e.get("elapsed")) and start <= e["elapsed"] <= end
        ]
        if not samples:
            continue
        seconds = [float(e["elapsed"]) for e in samples]
        axes.plot(
            seconds,
            [e.get("cpu_percent") for e in samples],
            color=run.color,
            label=f"{run.label} CPU",
            marker=".",
            markersize=3,
        )
        if any(_number(e.get("children_cpu_percent")) for e in samples):
            axes.plot(
                seconds,
                [e["cpu_percent"] + e.get("children_cpu_percent", 0.0) for e in samples],
                color=run.color,
                linestyle=":",
                label=f"{run.label} CPU with child processes",
            )
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
        for phase, p_start, p_end in phase_spans(run):
            if phase != "checkpoint" and p_end >= start and p_start <= end:
                axes.axvspan(max(p_start, start), min(p_end, end), color=run.color, alpha=0.1, linewidth=0)
                shaded = True
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


# --------------------------------------------------------------------------- output


def render_markdown(report: Report, plot_dir: str = "plots") -> str:
    lines = ["# Time-to-accuracy report", "", TTA_DEFINITION, ""]
    lines.append(
        f"Runs: {', '.join(r.label for r in report.runs)}. Baseline: {report.baseline}. "
        f"Window: {report.window} epochs."
    )
    if report.notes:
        lines += ["", "Notes:", *[f"- {note}" for note in report.notes]]
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
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Time-to-accuracy report</title>",
        f"<style>{_STYLE}</style></head><body><h1>Time-to-accuracy report</h1>",
        f"<p>{_inline(TTA_DEFINITION)}</p>",
        f"<p>Runs: {html.escape(', '.join(r.label for r in report.runs))}. Baseline: "
        f"{html.escape(report.baseline)}. Window: {report.window} epochs.</p>",
    ]
    if report.notes:
        parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in report.notes) + "</ul>")
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
    print(f"Time-to-accuracy report: {len(report.runs)} run(s), baseline {report.baseline}")
    for table in report.tables:
        print(f"\n{table.title}")
        if table.rows:
            print(table.markdown())
        if table.note:
            print(table.note)


def unique_labels(runs: list[Run]) -> None:
    """Label runs by directory name, adding parent directories where names repeat (runs/a, other/a)."""
    depth = 1
    while len({run.label for run in runs}) < len(runs) and depth < 8:
        depth += 1
        for run in runs:
            run.label = "/".join(run.path.resolve().parts[-depth:])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m asr.report",
        description="Compare training runs by time, cost and energy to accuracy (reads run directories).",
    )
    parser.add_argument(
        "runs", nargs="+", metavar="RUN_DIR", help="run directories (events.jsonl, recipe.yaml)"
    )
    parser.add_argument(
        "--baseline",
        metavar="NAME",
        help="run directory name, recipe name or rig label to compare against (default: first run)",
    )
    parser.add_argument("--out", metavar="DIR", default="report", help="output directory (default: ./report)")
    parser.add_argument(
        "--price-per-hour",
        type=float,
        metavar="X",
        help="price per hour of use for every run, instead of the rig's amortized price",
    )
    parser.add_argument(
        "--window",
        type=float,
        metavar="SECONDS_START",
        dest="window_start",
        help=f"start (run-clock seconds) of the {UTIL_WINDOW_SECONDS:g} s utilization plot window",
    )
    parser.add_argument("--no-plots", action="store_true", help="tables only (faster)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.price_per_hour is not None and args.price_per_hour < 0:
        warn(f"--price-per-hour: must be >= 0, got {args.price_per_hour}")
        return 2
    runs = [run for run in (load_run(path) for path in args.runs) if run is not None]
    if not runs:
        warn("no run could be read; nothing to report")
        return 2
    unique_labels(runs)
    report = build_report(
        runs, args.baseline, args.price_per_hour, args.window_start, plots=not args.no_plots
    )
    out = Path(args.out)
    try:
        written = write_report(report, out)
    except WriteError as error:  # names the file (disk full, file-size limit)
        warn(str(error))
        return 2
    except OSError as error:
        warn(f"{out}: cannot write the report: {error.strerror or error}")
        return 2
    print_tables(report)
    print(
        f"\nwrote {', '.join(str(p) for p in written if p.suffix in ('.md', '.html'))} and {out / 'plots'}/"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
