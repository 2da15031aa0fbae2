"""Which runs :mod:`asr.report` compares and how: the baseline first, repeats of one configuration grouped
and aggregated as MLPerf does, the targets and window every run is measured against."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections.abc import Sequence
from typing import Any

from asr.report.loading import Run, warn
from asr.tta import METRICS

_NOT_CONFIGURATION = {
    ("train", "seed"),
    ("data", "train"),
    ("data", "dev"),
    ("eval", "lm"),
    ("tta", "targets"),
    ("tta", "window"),
    ("tta", "sample_interval_seconds"),
}


@dataclasses.dataclass
class Comparison:
    """The runs of a report, baseline first, with what every run is measured against."""

    runs: list[Run]
    groups: dict[str, list[Run]]
    """Configuration label -> its runs (repeats), in the order of ``runs``."""
    baseline: str
    """The baseline configuration's label."""
    targets: list[tuple[str, float]]
    window: int
    price_override: float | None
    notes: list[str] = dataclasses.field(default_factory=list)


def compare(runs: list[Run], baseline: str | None = None, price_override: float | None = None) -> Comparison:
    """Order the runs (``baseline`` first: a run directory name, recipe name or rig label), label their
    configurations, give each a plot colour, and note (on stderr too) what the runs disagree on."""
    baseline_runs = [r for r in runs if baseline in (r.label, r.recipe_name, r.rig.name, str(r.path))]
    if baseline is not None and not baseline_runs:
        baseline_runs = [r for r in runs if r.group == baseline]
    ordered = baseline_runs[:1] + [r for r in runs if r not in baseline_runs[:1]]
    groups = _assign_groups(ordered)
    for index, run in enumerate(ordered):
        run.color = f"C{index % 10}"
    notes = []
    if baseline is not None and not baseline_runs:
        labels = ", ".join(sorted({r.label for r in runs} | {r.recipe_name for r in runs}))
        notes.append(f"baseline {baseline!r} matches no run (runs: {labels}); using {ordered[0].label}")
    targets, window, target_notes = _common_targets(ordered)
    notes += target_notes
    for note in notes:
        warn(note)
    return Comparison(ordered, groups, ordered[0].group, targets, window, price_override, notes=notes)


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


def _assign_groups(runs: list[Run]) -> dict[str, list[Run]]:
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


def target_label(metric: str, target: float) -> str:
    return f"{metric.upper()} {target:g}"


def _common_targets(runs: list[Run]) -> tuple[list[tuple[str, float]], int, list[str]]:
    """The baseline-first union of the runs' targets, the window, and notes where runs disagree."""
    notes, targets = [], []
    for run in runs:
        for target in run.targets():
            if target not in targets:
                targets.append(target)
    if len({tuple(run.targets()) for run in runs}) > 1:
        listing = "; ".join(
            f"{run.label}: {', '.join(target_label(*t) for t in run.targets())}" for run in runs
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


def unique_labels(runs: list[Run]) -> None:
    """Label runs by directory name, adding parent directories where names repeat (runs/a, other/a)."""
    depth = 1
    while len({run.label for run in runs}) < len(runs) and depth < 8:
        depth += 1
        for run in runs:
            run.label = "/".join(run.path.resolve().parts[-depth:])
