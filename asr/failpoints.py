"""Named points where a fault is injected on purpose, for the fault-injection harness (``tools/faults``).

A kill at a random time rarely lands inside a checkpoint write that takes milliseconds; a fail point makes
the harness's faults land exactly where the guarantees are hardest to keep, with the same real effect
(a SIGKILL is a SIGKILL). Off unless the ``ASR_FAILPOINTS`` environment variable names points, so a normal
run pays one dictionary lookup per pass::

    ASR_FAILPOINTS="checkpoint.state=kill@3"        # SIGKILL on the 3rd pass through that point
    ASR_FAILPOINTS="train.step=nan@5+6+7"           # passes keyed 5, 6 and 7 return "nan"

``ACTION@N[+N...]``: ``N`` is the ``key`` the code passes (the batch number for ``train.step``) or else
the point's pass count in this process, from 1. ``kill`` sends SIGKILL to this process; ``term-all``
sends SIGTERM to it and to every process it started, as ``pkill -f`` or a batch scheduler cancelling a
job does; any other action is returned to the caller, which knows what it means (``nan``/``inf``: make
this step's loss non-finite).

Points: ``checkpoint.weights`` (before the weights are written), ``checkpoint.state`` (weights written,
run state not yet), ``train.step`` (before a step; key: the batch's number in the run, from 1, skipped
ones counted), ``evaluate`` (an evaluation has begun), ``events.write`` (before an event is appended),
``extract.shard`` (in a worker, before a shard is written; key: shard index).
"""

from __future__ import annotations

import functools
import os
import signal
from collections import Counter

ENVIRONMENT = "ASR_FAILPOINTS"
_passes: Counter[str] = Counter()


class FailpointError(ValueError):
    """``ASR_FAILPOINTS`` that cannot be parsed; the message quotes the bad part."""


@functools.cache
def _parse(spec: str) -> dict[str, tuple[str, frozenset[int]]]:
    points = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        try:
            name, rule = item.split("=", 1)
            action, counts = rule.split("@", 1)
            points[name.strip()] = (action.strip(), frozenset(int(n) for n in counts.split("+")))
        except ValueError:
            raise FailpointError(f"{ENVIRONMENT}: {item!r}: expected NAME=ACTION@N[+N...]") from None
    return points


def hit(name: str, key: int | None = None) -> str | None:
    """Pass through fail point ``name``; the action due on this pass (``kill`` does not return), or None."""
    spec = os.environ.get(ENVIRONMENT)
    if not spec:
        return None
    rule = _parse(spec).get(name)
    if rule is None:
        return None
    _passes[name] += 1
    action, when = rule
    if (key if key is not None else _passes[name]) not in when:
        return None
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "term-all":
        import psutil

        for process in psutil.Process().children(recursive=True):
            process.send_signal(signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
    return action
