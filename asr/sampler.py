"""Utilization sampling: a daemon thread that writes ``util`` events into the run's event log.

Every ``interval_seconds`` it records the CPU use of the training process (``psutil``
``Process.cpu_percent`` since the previous sample; 100 = one core fully busy, so a 2-core
machine tops out at 200), the same summed over its child processes (``children_cpu_percent``: the
decoding pool works there during evaluation, while the training process mostly waits) and, when
NVML is available (``pynvml`` from ``nvidia-ml-py`` and an NVIDIA driver), per GPU:
``utilization`` (percent of the sample period a kernel ran), ``memory_used_mb`` and ``power_w``
(board power; None where the GPU does not report it). Without NVML, ``gpus`` is an empty list: a
machine without GPUs or driver is normal, never an error. Where Linux exposes the CPU packages' RAPL
energy counters (``/sys/class/powercap/intel-rapl:N``, also on AMD CPUs since Zen) and they are readable,
``cpu_power_w`` is the packages' measured power, averaged over the interval since the previous sample
(:class:`RaplCounter`); elsewhere the field is absent and the report estimates CPU energy instead.

Each event carries the run clock's ``elapsed`` seconds, so utilization lines up with the other
events and excludes downtime. How training uses it::

    with UtilizationSampler(log, recipe.tta.sample_interval_seconds, clock=run_clock):
        ...  # train; the sampler stops (and writes nothing more) when the block exits

``clock`` is an :class:`asr.clock.RunClock` or any callable returning run-clock seconds.
``position``, if given, is a callable returning ``(epoch, step)`` for the events' common
fields. :class:`asr.events.EventLog` serializes writes from several threads.
The cost of sampling is measured by ``tools/bench_sampler.py`` (well under 1 % of a step).
:func:`cpu_name` names the machine's CPU for the benchmarks' tables.
"""

from __future__ import annotations

import contextlib
import os
import platform
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

try:
    import pynvml
except ImportError:  # nvidia-ml-py not installed: CPU only
    pynvml = None

CHILDREN_REFRESH_SECONDS = 10.0
"""How often descendants are looked up (seconds); their CPU is read at every sample."""


class GpuProbe:
    """Per-GPU utilization, memory and power through NVML; ``available`` is False without it."""

    def __init__(self) -> None:
        self.handles: list[Any] = []
        self.available = False
        if pynvml is None:
            return
        try:
            pynvml.nvmlInit()
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            self.available = True
        except Exception:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...: no GPUs to sample
            self.handles = []

    def sample(self) -> list[dict[str, Any]]:
        """One reading per GPU: index, utilization (percent), memory_used_mb, power_w."""
        readings = []
        for index, handle in enumerate(self.handles):
            readings.append(
                {
                    "index": index,
                    "utilization": _nvml(lambda h=handle: pynvml.nvmlDeviceGetUtilizationRates(h).gpu),
                    "memory_used_mb": _nvml(lambda h=handle: pynvml.nvmlDeviceGetMemoryInfo(h).used / 2**20),
                    "power_w": _nvml(lambda h=handle: pynvml.nvmlDeviceGetPowerUsage(h) / 1000.0),
                }
            )
        return readings

    def close(self) -> None:
        if self.available:
            with contextlib.suppress(Exception):
                pynvml.nvmlShutdown()
            self.available = False


def _nvml(read: Callable[[], float]) -> float | None:
    try:
        return float(read())
    except Exception:  # NVMLError_NotSupported on some boards
        return None


CPUINFO = "/proc/cpuinfo"


def cpu_name(cpuinfo: str | os.PathLike = CPUINFO) -> str:
    """The CPU this process runs on, for the tables of the benchmarks (``tools/bench_*.py``): Linux's model
    name with its family and model numbers (a hypervisor may show a generic name, e.g. "AMD EPYC"; the
    numbers still tell the generation) and the logical CPUs, e.g. ``AMD EPYC (family 25, model 17), 2
    logical CPUs``. Without ``cpuinfo`` (not Linux), ``platform.processor()``'s name."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError, UnicodeDecodeError):
        for line in Path(cpuinfo).read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())  # the first processor's
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
    family, model = fields.get("cpu family"), fields.get("model")
    numbers = f" (family {family}, model {model})" if family and model else ""
    return f"{name}{numbers}, {os.cpu_count()} logical CPUs"


POWERCAP_ROOT = "/sys/class/powercap"


class RaplCounter:
    """The CPU packages' cumulative energy from Linux's powercap RAPL zones (``intel-rapl:N`` whose ``name``
    is ``package-*``; sub-zones such as ``core`` are parts of a package and not added again).

    ``available`` is False, with the reason in ``unavailable_reason``, when there are no package zones
    (virtual machines usually have none) or their ``energy_uj`` cannot be read (root-only on kernels patched
    for CVE-2020-8694). :meth:`joules` adds up each package's increase since the previous reading, taking a
    counter that wrapped past ``max_energy_range_uj`` into account.
    """

    def __init__(self, root: str | os.PathLike = POWERCAP_ROOT):
        self.zones: list[tuple[Path, int]] = []
        self.unavailable_reason = ""
        self._last: list[int] = []
        self._total_uj = 0
        for zone in sorted(Path(root).glob("intel-rapl:*")):
            try:
                if zone.name.count(":") != 1 or not (zone / "name").read_text().startswith("package"):
                    continue
                wrap = int((zone / "max_energy_range_uj").read_text()) + 1
                self._last.append(int((zone / "energy_uj").read_text()))
            except (OSError, ValueError) as error:
                self.unavailable_reason = f"{zone}: {getattr(error, 'strerror', None) or error}"
                self.zones, self._last = [], []
                return
            self.zones.append((zone / "energy_uj", wrap))
        if not self.zones:
            self.unavailable_reason = f"no RAPL package zone under {root}"

    @property
    def available(self) -> bool:
        return bool(self.zones)

    def joules(self) -> float:
        """Energy of all packages since this counter was made (J); raises OSError if a zone vanished."""
        for index, (path, wrap) in enumerate(self.zones):
            now = int(path.read_text())
            self._total_uj += (now - self._last[index]) % wrap
            self._last[index] = now
        return self._total_uj / 1e6


class UtilizationSampler:
    """Writes a ``util`` event every ``interval_seconds`` from a daemon thread until :meth:`stop`.

    ``event_log``: anything with ``write(event, **fields)`` (an :class:`asr.events.EventLog`);
    ``pid``: the process to watch (default: this one); ``clock``: a ``RunClock`` or a callable
    returning run-clock seconds (default: seconds since :meth:`start`).
    """

    def __init__(
        self,
        event_log: Any,
        interval_seconds: float = 1.0,
        pid: int | None = None,
        clock: Any = None,
        position: Callable[[], tuple[int, int]] | None = None,
        powercap_root: str | os.PathLike = POWERCAP_ROOT,
    ):
        if interval_seconds <= 0:
            raise ValueError(f"interval_seconds must be positive, got {interval_seconds}")
        self.event_log = event_log
        self.interval_seconds = float(interval_seconds)
        self.process = psutil.Process(pid if pid is not None else os.getpid())
        self._elapsed = self._clock_function(clock)
        self.position = position
        self.samples_written = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._gpus: GpuProbe | None = None
        self._children: dict[int, psutil.Process] = {}
        self._children_refreshed = -float("inf")
        self._rapl = RaplCounter(powercap_root)
        self._rapl_previous: tuple[float, float] | None = None
        """(monotonic seconds, joules) of the previous RAPL reading."""

    def _clock_function(self, clock: Any) -> Callable[[], float]:
        if clock is None:
            started = time.monotonic()
            return lambda: time.monotonic() - started
        if hasattr(clock, "elapsed"):
            return clock.elapsed
        if callable(clock):
            return clock
        raise TypeError(f"clock must be a RunClock or a callable returning seconds, got {clock!r}")

    def sample(self) -> dict[str, Any]:
        """Take one reading now and write it as a ``util`` event; returns the event's fields."""
        fields: dict[str, Any] = {"elapsed": float(self._elapsed())}
        if self.position is not None:
            fields["epoch"], fields["step"] = self.position()
        fields["cpu_percent"] = self.process.cpu_percent(interval=None)
        fields["children_cpu_percent"] = self._children_cpu_percent()
        fields["gpus"] = self._gpus.sample() if self._gpus is not None else []
        if self._rapl.available:
            fields["cpu_power_w"] = self._cpu_power()
        self.event_log.write("util", **fields)
        self.samples_written += 1
        return fields

    def cpu_energy_method(self) -> str:
        """One line on how CPU energy is known for this run: measured (RAPL) or why not."""
        if self._rapl.available:
            return f"measured by RAPL ({len(self._rapl.zones)} package(s); util events' cpu_power_w)"
        return f"estimated in the report from CPU time ({self._rapl.unavailable_reason})"

    def _cpu_power(self) -> float | None:
        """Mean package power (W) since the previous reading; None for the first one (its baseline)."""
        try:
            reading = (time.monotonic(), self._rapl.joules())
        except (OSError, ValueError):  # a zone vanished or a cut read: no figure this time
            self._rapl_previous = None
            return None
        previous, self._rapl_previous = self._rapl_previous, reading
        if previous is None or reading[0] <= previous[0]:
            return None
        return (reading[1] - previous[1]) / (reading[0] - previous[0])

    def _children_cpu_percent(self) -> float:
        """CPU percent of the process's descendants since the previous sample.

        Looking descendants up walks all of /proc (slow when Python code holds the GIL), so it is
        done at most every ``CHILDREN_REFRESH_SECONDS``; in between only the known children are read.
        A child counts from the sample after the one that found it (the first reading is its
        baseline); the decoding pool lives for the whole run, so nothing of it is missed after that.
        """
        now = time.monotonic()
        if now - self._children_refreshed >= CHILDREN_REFRESH_SECONDS:
            self._children_refreshed = now
            try:
                found = self.process.children(recursive=True)
            except psutil.Error:
                found = []
            fresh = {child.pid: child for child in found if child.pid not in self._children}
            for child in fresh.values():
                with contextlib.suppress(psutil.Error):
                    child.cpu_percent(interval=None)
            alive = {pid: self._children[pid] for pid in (c.pid for c in found) if pid in self._children}
            self._children = {**alive, **fresh}
            counted = alive
        else:
            counted = self._children
        total = 0.0
        for pid, child in list(counted.items()):
            try:
                total += child.cpu_percent(interval=None)
            except psutil.Error:  # exited
                self._children.pop(pid, None)
        return total

    def start(self) -> UtilizationSampler:
        """Start sampling (the first reading comes one interval later, when CPU use is measurable)."""
        if self._thread is not None:
            return self
        self._gpus = GpuProbe()
        self.process.cpu_percent(interval=None)  # the baseline the first sample is measured against
        self._children_cpu_percent()  # likewise for child processes (and the first /proc walk)
        if self._rapl.available:
            self._cpu_power()  # and for the energy counters
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="utilization-sampler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_seconds):
            try:
                self.sample()
            except (psutil.Error, ValueError, OSError):  # process gone or log closed: stop quietly
                return

    def stop(self) -> None:
        """Stop the thread and wait for it; no event is written after this returns."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._gpus is not None:
            self._gpus.close()
            self._gpus = None

    def __enter__(self) -> UtilizationSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
