"""The run clock: active seconds since the model was created, kept across stop and resume.

Time-to-accuracy is read off this clock. It counts everything a run does once the model exists
(training, evaluation, swapping, checkpointing); feature extraction happens before and is
reported separately. When a run stops and is resumed, the clock continues from the value saved
with the checkpoint, and the gap between the stop and the resume is counted as ``downtime``,
never as run time. Per-phase totals (seconds) say where the time went.

Work that is measured but must not count towards time to accuracy (the extra evaluation sets,
``eval.extra_sets``) runs inside :meth:`RunClock.off_clock`: the clock stands still meanwhile and the
seconds are totalled separately in ``off_clock_totals``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

_IMPORTED = time.monotonic()


class RunClock:
    """Monotonic run time in seconds, with per-phase totals and downtime across resumes."""

    def __init__(
        self,
        elapsed: float = 0.0,
        downtime: float = 0.0,
        phases: dict[str, float] | None = None,
        off_clock: dict[str, float] | None = None,
    ):
        self._offset = float(elapsed)
        self._started = time.monotonic()
        self._stopped_at: float | None = None
        self.downtime = float(downtime)
        self.phases: dict[str, float] = dict(phases or {})
        self.off_clock_totals: dict[str, float] = dict(off_clock or {})

    def elapsed(self) -> float:
        """Seconds of active run time, including earlier sessions of a resumed run; it does not move
        inside :meth:`off_clock`."""
        now = time.monotonic() if self._stopped_at is None else self._stopped_at
        return self._offset + (now - self._started)

    @contextlib.contextmanager
    def off_clock(self, name: str) -> Iterator[None]:
        """Stop the clock for the ``with`` body (which must not nest, or contain a :meth:`phase`) and add its
        wall time to ``off_clock_totals[name]`` instead: :meth:`elapsed` reads the same before and after."""
        if self._stopped_at is not None:
            raise RuntimeError("RunClock.off_clock does not nest")
        self._stopped_at = time.monotonic()
        try:
            yield
        finally:
            spent = time.monotonic() - self._stopped_at
            self._offset -= spent
            self._stopped_at = None
            self.off_clock_totals[name] = self.off_clock_totals.get(name, 0.0) + spent

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the wall time of the ``with`` body to ``phases[name]``."""
        began = time.monotonic()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.monotonic() - began

    def state(self) -> dict[str, Any]:
        """What a checkpoint saves: run time, downtime, phases, and when it was saved."""
        return {
            "elapsed": self.elapsed(),
            "downtime": self.downtime,
            "phases": dict(self.phases),
            "off_clock": dict(self.off_clock_totals),
            "saved_wall_time": time.time(),
        }

    @classmethod
    def resume(cls, state: dict[str, Any], now_wall_time: float | None = None) -> RunClock:
        """Continue a saved clock; the wall time since it was saved becomes downtime."""
        now = time.time() if now_wall_time is None else now_wall_time
        gap = max(0.0, now - float(state.get("saved_wall_time", now)))
        return cls(
            elapsed=float(state.get("elapsed", 0.0)),
            downtime=float(state.get("downtime", 0.0)) + gap,
            phases=state.get("phases"),
            off_clock=state.get("off_clock"),
        )


def process_seconds() -> float:
    """Seconds since this process started: interpreter start-up and imports included.

    Linux records a process's start in ``/proc/self/stat`` (field 22) in clock ticks (``SC_CLK_TCK``,
    100 per second) of ``CLOCK_BOOTTIME``; read against that clock the figure is exact to one tick: it can
    overstate by less than 10 ms (the start is truncated to a tick), never understate. (psutil's
    ``create_time`` adds the boot time, which Linux gives in whole seconds: up to 1 s off.) Without
    ``/proc``: the seconds since this module was imported, which leaves out the interpreter's start.
    """
    try:
        with open("/proc/self/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()  # the name in (...) may hold spaces
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of the whole line
        return max(time.clock_gettime(time.CLOCK_BOOTTIME) - started, 0.0)
    except (OSError, IndexError, ValueError, AttributeError):
        return time.monotonic() - _IMPORTED
