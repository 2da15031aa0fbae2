import os
import threading
import time

import pytest

from asr.clock import RunClock
from asr.events import EventLog, read_events
from asr.sampler import GpuProbe, UtilizationSampler


def _busy(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sum(range(1000))


def test_sampler_writes_util_events_on_the_run_clock(tmp_path):
    clock = RunClock(elapsed=500.0)  # a resumed run: its clock continues from 500 s
    with EventLog(tmp_path) as log:
        with UtilizationSampler(log, interval_seconds=0.05, clock=clock, position=lambda: (3, 42)) as sampler:
            _busy(0.6)
        written = sampler.samples_written
        _busy(0.2)  # nothing may be written after stop
    events, warnings = read_events(tmp_path)
    util = [e for e in events if e["event"] == "util"]
    assert warnings == [] and len(util) == written >= 3
    assert all(500.0 <= e["elapsed"] < 560.0 for e in util)
    assert [e["elapsed"] for e in util] == sorted(e["elapsed"] for e in util)
    assert all(e["epoch"] == 3 and e["step"] == 42 for e in util)
    assert all(e["gpus"] == [] for e in util)  # no NVIDIA driver on this machine
    assert max(e["cpu_percent"] for e in util) > 10.0  # this process was busy


def test_sampler_accepts_a_callable_clock_and_samples_another_process(tmp_path):
    with EventLog(tmp_path) as log:
        sampler = UtilizationSampler(log, interval_seconds=10.0, pid=os.getppid(), clock=lambda: 7.5)
        fields = sampler.sample()
    assert fields["elapsed"] == 7.5 and fields["cpu_percent"] >= 0.0  # elapsed: the clock's value, copied
    assert [e["event"] for e in read_events(tmp_path)[0]] == ["util"]


def test_stop_is_prompt_even_with_a_long_interval(tmp_path):
    with EventLog(tmp_path) as log:
        sampler = UtilizationSampler(log, interval_seconds=3600.0).start()
        began = time.monotonic()
        sampler.stop()
    assert time.monotonic() - began < 5.0
    assert not any(t.name == "utilization-sampler" for t in threading.enumerate())


def test_gpu_probe_fails_gracefully_without_a_driver():
    probe = GpuProbe()
    if probe.available:
        pytest.skip("an NVIDIA driver is present")
    assert probe.sample() == []
    probe.close()


def test_bad_arguments_are_rejected(tmp_path):
    with EventLog(tmp_path) as log:
        with pytest.raises(ValueError, match="interval_seconds"):
            UtilizationSampler(log, interval_seconds=0)
        with pytest.raises(TypeError, match="clock"):
            UtilizationSampler(log, clock=42)


def test_cpu_of_child_processes_is_sampled_separately(tmp_path):
    import subprocess
    import sys

    child = subprocess.Popen(
        [sys.executable, "-c", "import time\nend = time.time() + 1.5\nwhile time.time() < end: pass"]
    )
    try:
        with EventLog(tmp_path) as log:
            sampler = UtilizationSampler(log, interval_seconds=10.0)
            first = sampler.sample()  # sees the child for the first time: its baseline only
            time.sleep(0.6)  # the child spins, this process sleeps
            second = sampler.sample()
    finally:
        child.wait(timeout=30)
    assert first["children_cpu_percent"] == 0.0  # exact: nothing counted yet, the sum's starting 0.0
    assert second["children_cpu_percent"] > 30.0
    assert second["cpu_percent"] < second["children_cpu_percent"]
