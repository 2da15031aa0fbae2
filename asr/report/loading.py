"""Reading one run directory for :mod:`asr.report`: its event log (after resume roll-back), recipe and
final results, each problem a one-line warning on stderr rather than an error."""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from asr.config import ConfigError, Recipe, RigConfig, TTAConfig, parse_yaml, recipe_from_dict
from asr.events import EVENT_LOG_NAME, read_events
from asr.files import JsonError, load_json, read_json
from asr.tta import EvalPoint, active_events, eval_series, tta_split

RECIPE_NAME = "recipe.yaml"
RESULTS_PATH = Path("eval") / "results.json"


def warn(message: str) -> None:
    print(f"asr.report: {message}", file=sys.stderr)


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool): what an event field must be to count."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def last_elapsed(events: Sequence[dict[str, Any]]) -> float:
    """The run clock at the last event (seconds): the run's active time (0 for none)."""
    return max((float(e["elapsed"]) for e in events if is_number(e.get("elapsed"))), default=0.0)


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

    def session_events(self) -> list[list[dict[str, Any]]]:
        """The events of each session (process) of the run, in log order: every ``run_start`` opens one."""
        sessions: list[list[dict[str, Any]]] = [[]]
        for event in self.events:
            if event.get("event") == "run_start" and sessions[-1]:
                sessions.append([])
            sessions[-1].append(event)
        return sessions

    @property
    def active_seconds(self) -> float:
        return last_elapsed(self.events)

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
            if is_number(event.get("extract_seconds")):
                return float(event["extract_seconds"])
        path = self.path / "extract.json"
        if path.is_file():
            recorded = read_json(path)
            if isinstance(recorded, dict) and "seconds" in recorded:
                return float(recorded["seconds"]) if is_number(recorded["seconds"]) else None
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
                task_seconds = _task_seconds(base / directory)
                if task_seconds:
                    total, found = total + max(task_seconds), True
                    break
        return total if found else None

    def targets(self) -> list[tuple[str, float]]:
        return [(t.metric, float(t.value)) for t in self.tta.targets]

    def series(self, metric: str) -> list[EvalPoint]:
        return eval_series(self.events, metric, self.split)


def _task_seconds(directory: Path) -> list[float]:
    """``total_seconds`` of each ``timing-task*.json`` ``asr.extract`` left in a feature directory."""
    task_seconds = []
    for timing in sorted(directory.glob("timing-task*.json")):
        recorded = read_json(timing)
        value = recorded.get("total_seconds") if isinstance(recorded, dict) else None
        if is_number(value):
            task_seconds.append(float(value))
    return task_seconds


def load_run(path: str | Path) -> Run | None:
    """The run in ``path``, or None (with a message) if it has no readable event log."""
    path = Path(path)
    events = _read_log(path)
    if events is None:
        return None
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


def _read_log(path: Path) -> list[dict[str, Any]] | None:
    """The run's events that survived its resumes, or None (with a message) when there are none."""
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
    return events


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
