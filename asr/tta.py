"""Time-to-accuracy (TTA): when a run's validation error first reaches a target.

Definitions (``docs/metrics.md`` has them in full):

- The clock is the run clock (:mod:`asr.clock`), the ``elapsed`` field of every event: seconds
  since the model was created, counting training, evaluation, swapping and checkpointing, and
  not the downtime between a stop and a ``--resume``. Feature extraction is outside it.
- An evaluation is one ``eval`` event of the TTA split (the development set): its time is the
  event's ``elapsed`` (when the evaluation finished), its value a metric in percent (``cer`` or
  ``wer``). Evaluations are taken in log order; if an epoch is evaluated again, the newer value
  replaces the older one and that epoch counts as the latest evaluated (the window follows the log's
  order, not epoch numbers).
- ``rule="median"`` (the paper's TTA(a, e)): the first evaluation after which the median of the
  values of the last ``window`` evaluated epochs is at or below the target. Before ``window``
  epochs have been evaluated there is no median, so no TTA (a run evaluated 2 times can never
  reach a 3-epoch target). With an even window the median is the mean of the two middle values.
- ``rule="first"`` (MLPerf / DAWNBench): the first evaluation whose value is at or below it.
- Ties count as reached (``value <= target``). Never reached: ``None`` (``NA`` in reports).

How training uses it::

    tracker = TTATracker(recipe.tta.targets, recipe.tta.window)   # or TTATracker.from_state(saved)
    for reached in tracker.update(eval_event):                     # after every eval event
        log.write("target", **reached.event_fields())
        print(reached.describe())
    if recipe.tta.stop_at_last_target and tracker.all_reached(): ...
    checkpoint_extra["tta"] = tracker.state()                      # saved with the clock state

On resume, restore the tracker from the state saved with the checkpoint (``from_state``): it
then agrees with the restored run clock. Without a saved state, ``from_events`` rebuilds it from
the event log, dropping work that the resume rolled back (:func:`active_events`). The report
recomputes every TTA from the ``eval`` events with the same functions, so the ``target`` events
are a convenience for people reading the log, never the source of the report's numbers.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Iterable, Sequence
from typing import Any, Literal, NamedTuple

Rule = Literal["median", "first"]
RULES: tuple[Rule, ...] = ("median", "first")
METRICS = ("cer", "wer")


class EvalPoint(NamedTuple):
    """One evaluation of one metric: run-clock seconds, epoch (0-based), value in percent."""

    elapsed: float
    epoch: int
    value: float


@dataclasses.dataclass(frozen=True)
class Reached:
    """A (metric, target, rule) reached: when (run-clock seconds), at which epoch, with which value.

    ``value`` is the median of the window for the median rule, the evaluation's value otherwise.
    """

    metric: str
    target: float
    rule: Rule
    elapsed: float
    epoch: int
    value: float
    step: int | None = None

    def event_fields(self) -> dict[str, Any]:
        """Fields of the ``target`` event (``EventLog.write("target", **fields)``)."""
        fields: dict[str, Any] = {
            "elapsed": self.elapsed,
            "epoch": self.epoch,
            "metric": self.metric,
            "target": self.target,
            "rule": self.rule,
            "value": self.value,
        }
        if self.step is not None:
            fields["step"] = self.step
        return fields

    def describe(self) -> str:
        """One line for the console, e.g. ``TTA cer<=10 (median): 12.50 min at epoch 5, cer 9.80%``; the epoch
        is counted from 1, as in the console's ``epoch N: dev ...`` lines (events keep the 0-based index)."""
        how = "median" if self.rule == "median" else "first evaluation"
        return (
            f"TTA {self.metric}<={self.target:g} ({how}): {self.elapsed / 60:.2f} min "
            f"at epoch {self.epoch + 1}, {self.metric} {self.value:.2f}%"
        )


def _distinct_epochs(evals: Iterable[EvalPoint]) -> Iterable[tuple[EvalPoint, list[float]]]:
    """Each evaluation with the values of all distinct epochs evaluated so far, oldest first."""
    latest: dict[int, float] = {}
    for point in evals:
        latest.pop(point.epoch, None)
        latest[point.epoch] = point.value
        yield point, list(latest.values())


def reached_at(evals: Sequence[EvalPoint], target: float, window: int, rule: Rule) -> Reached | None:
    """The first evaluation at which ``target`` (percent) counts as reached under ``rule``, or None.

    ``evals`` are one metric's evaluations of the TTA split in log order (see the module docstring).
    """
    if window < 1:
        raise ValueError(f"window must be at least 1 epoch, got {window}")
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    for point, values in _distinct_epochs(EvalPoint(*e) for e in evals):
        if rule == "first":
            value = point.value
        elif len(values) >= window:
            value = float(statistics.median(values[-window:]))
        else:
            continue
        if value <= target:
            return Reached("", float(target), rule, float(point.elapsed), int(point.epoch), value)
    return None


def time_to_accuracy(evals: Sequence[EvalPoint], target: float, window: int, rule: Rule) -> float | None:
    """Run-clock seconds until ``target`` (percent) is reached under ``rule``; None if never."""
    reached = reached_at(evals, target, window, rule)
    return None if reached is None else reached.elapsed


# --------------------------------------------------------------------------- event logs


def active_events(events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events of the run as it finally happened, in log order.

    A resumed run restarts from its checkpoint, so events logged before the stop whose run clock is later
    than that checkpoint's describe work that was lost and redone, and are dropped (an evaluation of a lost
    epoch does not count); one at exactly the checkpoint's clock is kept. The restart point is the
    ``run_start``'s ``restart_elapsed`` (the checkpoint's saved clock); logs written before that field
    existed use the ``run_start``'s own ``elapsed``, which is later by the resumed session's set-up time.
    A ``run_start`` that did not resume (a session killed before its first checkpoint was rerun from
    scratch) drops everything before it.
    """
    kept: list[dict[str, Any]] = []
    for event in events:
        if event.get("event") == "run_start" and event.get("resumed") is False:
            kept = []  # a start from scratch: whatever came before never reached a checkpoint
        if event.get("event") == "run_start" and event.get("resumed"):
            restart = _elapsed({"elapsed": event.get("restart_elapsed", event.get("elapsed"))})
            if restart is not None:
                kept = [e for e in kept if (_elapsed(e) or 0.0) <= restart + 1e-9]
        kept.append(event)
    return kept


def _elapsed(event: dict[str, Any]) -> float | None:
    value = event.get("elapsed")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def tta_split(events: Iterable[dict[str, Any]]) -> str | None:
    """The split TTA is measured on: that of the first ``eval`` event (training's dev split) that is not of
    an extra set (``eval.extra_sets``)."""
    for event in events:
        if event.get("event") == "eval" and event.get("split") is not None and not event.get("extra"):
            return str(event["split"])
    return None


def eval_series(events: Iterable[dict[str, Any]], metric: str, split: str | None) -> list[EvalPoint]:
    """One metric's evaluations of ``split`` (None: any split), skipping events that lack it."""
    points = []
    for event in events:
        if event.get("event") != "eval" or (split is not None and event.get("split") != split):
            continue
        value, elapsed = event.get(metric), _elapsed(event)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or elapsed is None:
            continue
        points.append(EvalPoint(elapsed, int(event.get("epoch", len(points))), float(value)))
    return points


# --------------------------------------------------------------------------- the tracker


def _target_pairs(targets: Iterable[Any]) -> list[tuple[str, float]]:
    """``(metric, percent)`` pairs from ``asr.config.Target`` objects, pairs or mappings."""
    pairs = []
    for target in targets:
        if isinstance(target, dict):
            metric, value = target["metric"], target["value"]
        elif hasattr(target, "metric"):
            metric, value = target.metric, target.value
        else:
            metric, value = target
        if metric not in METRICS:
            raise ValueError(f"target metric must be one of {METRICS}, got {metric!r}")
        pairs.append((str(metric), float(value)))
    return pairs


class TTATracker:
    """Follows a training run's evaluations and says when each (target, rule) is first reached.

    ``targets``: ``asr.config.Target`` objects (or ``(metric, percent)`` pairs); ``window``:
    epochs in the median; ``split``: the split that counts (None: the first one evaluated).
    """

    def __init__(self, targets: Iterable[Any], window: int, split: str | None = None):
        if window < 1:
            raise ValueError(f"window must be at least 1 epoch, got {window}")
        self.targets = _target_pairs(targets)
        self.window = int(window)
        self.split = split
        self.history: dict[str, list[EvalPoint]] = {metric: [] for metric in METRICS}
        self.reached: dict[tuple[str, float, str], Reached] = {}

    def update(self, eval_event: dict[str, Any]) -> list[Reached]:
        """Take one ``eval`` event; return the (target, rule) pairs it newly reaches, median rule first."""
        if eval_event.get("event", "eval") != "eval" or eval_event.get("extra"):
            return []  # an eval.extra_sets set is reported, never a TTA input
        split = eval_event.get("split")
        if self.split is None:
            self.split = split
        if split != self.split:
            return []
        for metric, points in self.history.items():
            epoch = eval_event.get("epoch", len(points))
            points.extend(eval_series([{**eval_event, "event": "eval", "epoch": epoch}], metric, None))
        newly = []
        for rule in RULES:
            for metric, target in self.targets:
                key = (metric, target, rule)
                if key in self.reached:
                    continue
                found = reached_at(self.history[metric], target, self.window, rule)
                if found is not None:
                    found = dataclasses.replace(found, metric=metric, step=eval_event.get("step"))
                    self.reached[key] = found
                    newly.append(found)
        return newly

    def all_reached(self, rule: Rule = "median") -> bool:
        """Whether every target has been reached under ``rule`` (for ``stop_at_last_target``)."""
        return all((metric, target, rule) in self.reached for metric, target in self.targets)

    def state(self) -> dict[str, Any]:
        """JSON-ready state to save with the checkpoint (next to the run clock's)."""
        return {
            "targets": [[metric, target] for metric, target in self.targets],
            "window": self.window,
            "split": self.split,
            "history": {metric: [list(p) for p in points] for metric, points in self.history.items()},
            "reached": [dataclasses.asdict(r) for r in self.reached.values()],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TTATracker:
        """The tracker as saved by :meth:`state`."""
        tracker = cls(state["targets"], state["window"], state.get("split"))
        for metric, points in state.get("history", {}).items():
            tracker.history[metric] = [EvalPoint(float(e), int(n), float(v)) for e, n, v in points]
        for fields in state.get("reached", []):
            reached = Reached(**fields)
            tracker.reached[(reached.metric, reached.target, reached.rule)] = reached
        return tracker

    @classmethod
    def from_events(
        cls, events: Sequence[dict[str, Any]], targets: Iterable[Any], window: int, split: str | None = None
    ) -> TTATracker:
        """A tracker that has seen the run's surviving ``eval`` events (see :func:`active_events`)."""
        tracker = cls(targets, window, split)
        for event in active_events(events):
            if event.get("event") == "eval":
                tracker.update(event)
        return tracker
