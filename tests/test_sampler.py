import os
import threading
import time

import pytest

from asr.clock import RunClock
from asr.events import EventLog, read_events
from asr.sampler import GpuProbe, UtilizationSampler


def _busy(cpu_seconds: float) -> None:
    """Burn this much CPU time (not wall time: on a loaded machine it takes longer, the work is the same)."""
    end = time.process_time() + cpu_seconds
    while time.process_time() < end:
        sum(range(1000))


def test_sampler_writes_util_events_on_the_run_clock(tmp_path):
    clock = RunClock(elapsed=500.0)  # a resumed run: its clock continues from 500 s
    with EventLog(tmp_path) as log:
        with UtilizationSampler(log, interval_seconds=0.05, clock=clock, position=lambda: (3, 42)) as sampler:
            _busy(0.6)
        written = sampler.samples_written
        time.sleep(0.2)  # nothing may be written after stop
    events, warnings = read_events(tmp_path)
    util = [e for e in events if e["event"] == "util"]
    assert warnings == [] and len(util) == written >= 3
    assert all(500.0 <= e["elapsed"] < 560.0 for e in util)
    assert [e["elapsed"] for e in util] == sorted(e["elapsed"] for e in util)
    assert all(e["epoch"] == 3 and e["step"] == 42 for e in util)
    assert all(e["gpus"] == [] for e in util)  # no NVIDIA driver on this machine
    assert max(e["cpu_percent"] for e in util) > 0.0  # measured from start()'s baseline (a first read: 0)


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


CHILD = """
import sys, time
print("ready", flush=True)
sys.stdin.readline()
start = time.process_time()
while time.process_time() - start < 0.5:
    pass
print(time.process_time() - start, flush=True)
sys.stdin.readline()
"""


def test_cpu_of_child_processes_is_sampled_separately(tmp_path):
    """A child burns 0.5 s of CPU between two samples and idles at both: the CPU seconds the sampler's
    percentage gives over the interval (bracketed by wall clock readings around the samples) are the ones
    the child's own CPU clock counted, however loaded the machine (a loaded one only stretches the wall)."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)  # fmt: skip
    try:
        assert child.stdout.readline() == "ready\n"  # the child's start-up CPU is behind it
        with EventLog(tmp_path) as log:
            sampler = UtilizationSampler(log, interval_seconds=10.0)
            before_first = time.monotonic()
            first = sampler.sample()  # sees the child for the first time: its baseline only
            after_first = time.monotonic()
            child.stdin.write("go\n")
            child.stdin.flush()
            burnt = float(child.stdout.readline())  # the child spins, this process waits
            before_second = time.monotonic()
            second = sampler.sample()
            after_second = time.monotonic()
        child.stdin.write("done\n")
        child.stdin.flush()
    finally:
        child.stdin.close()
        child.wait(timeout=30)
    assert first["children_cpu_percent"] == 0.0  # exact: nothing counted yet, the sum's starting 0.0
    cores = second["children_cpu_percent"] / 100  # CPU seconds per second over the interval
    shortest, longest = before_second - after_first, after_second - before_first
    # /proc counts CPU time in 10 ms ticks and the percentage is rounded to 0.1: a few ticks of slack
    assert cores * shortest - 0.03 <= burnt <= cores * longest + 0.03, (cores, shortest, longest, burnt)
    assert second["cpu_percent"] < second["children_cpu_percent"]


def powercap_tree(root, packages: dict[int, int], wrap: int = 1_000_000):
    """A powercap directory as Linux lays it out: package zones ``intel-rapl:N`` with a ``core`` sub-zone
    (part of its package, never added again) and the cumulative ``energy_uj`` of each."""
    for index, microjoules in packages.items():
        zone = root / f"intel-rapl:{index}"
        (zone / f"intel-rapl:{index}:0").mkdir(parents=True, exist_ok=True)
        (zone / "name").write_text(f"package-{index}\n")
        (zone / "max_energy_range_uj").write_text(f"{wrap - 1}\n")
        (zone / "energy_uj").write_text(f"{microjoules}\n")
        (zone / f"intel-rapl:{index}:0" / "name").write_text("core\n")
        (zone / f"intel-rapl:{index}:0" / "energy_uj").write_text("5\n")
    (root / "intel-rapl-mmio:0").mkdir(exist_ok=True)  # another control type's zone: not a package


def test_rapl_counter_adds_the_packages_and_survives_a_wrap(tmp_path):
    from asr.sampler import RaplCounter

    powercap_tree(tmp_path, {0: 100, 1: 999_000})
    counter = RaplCounter(tmp_path)
    assert counter.available and len(counter.zones) == 2
    assert counter.joules() == 0.0
    powercap_tree(tmp_path, {0: 500_100, 1: 1_000})  # package 1 wrapped past 999,999 µJ
    assert counter.joules() == pytest.approx(0.5 + 0.002)  # 500,000 + 2,000 µJ
    powercap_tree(tmp_path, {0: 600_100, 1: 3_000})
    assert counter.joules() == pytest.approx(0.502 + 0.102)


def test_rapl_counter_names_why_it_is_unavailable(tmp_path):
    from asr.sampler import RaplCounter

    missing = RaplCounter(tmp_path / "absent")
    assert not missing.available and "no RAPL package zone" in missing.unavailable_reason
    powercap_tree(tmp_path, {0: 100})
    (tmp_path / "intel-rapl:0" / "energy_uj").write_text("not a number\n")
    unreadable = RaplCounter(tmp_path)
    assert not unreadable.available and "intel-rapl:0" in unreadable.unavailable_reason


def test_sampler_writes_the_measured_package_power_where_rapl_is_readable(tmp_path):
    powercap_tree(tmp_path / "powercap", {0: 0}, wrap=2**40)
    with EventLog(tmp_path) as log:
        sampler = UtilizationSampler(log, interval_seconds=10.0, powercap_root=tmp_path / "powercap")
        first = sampler.sample()  # the counter's baseline
        began = time.monotonic()
        time.sleep(0.5)
        powercap_tree(tmp_path / "powercap", {0: 20_000_000}, wrap=2**40)  # 20 J
        second = sampler.sample()
        waited = time.monotonic() - began
        unmeasured = UtilizationSampler(log, interval_seconds=10.0, powercap_root=tmp_path / "absent")
        plain = unmeasured.sample()
    assert first["cpu_power_w"] is None
    assert 20.0 / (waited + 0.1) < second["cpu_power_w"] <= 20.0 / 0.5  # 20 J over the ~0.5 s in between
    assert "cpu_power_w" not in plain  # no counter: the field is absent and the report estimates instead
    assert sampler.cpu_energy_method().startswith("measured by RAPL (1 package(s)")
    assert unmeasured.cpu_energy_method().startswith("estimated in the report from CPU time (no RAPL package")


def test_cpu_name_reads_the_first_processor_and_falls_back_off_linux(tmp_path):
    from asr.sampler import cpu_name

    cpuinfo = tmp_path / "cpuinfo"
    processor = "processor\t: {}\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\nflags\t\t: fpu\n"
    cpuinfo.write_text(processor.format(0) + "\n" + processor.format(1).replace("AMD EPYC", "other"))
    assert cpu_name(cpuinfo) == f"AMD EPYC (family 25, model 17), {os.cpu_count()} logical CPUs"
    elsewhere = cpu_name(tmp_path / "absent")
    assert elsewhere.endswith(f", {os.cpu_count()} logical CPUs") and "family" not in elsewhere


def load_bench_infer():
    import importlib.util
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "tools" / "bench_infer.py"
    spec = importlib.util.spec_from_file_location("bench_infer", script)
    module = sys.modules["bench_infer"] = importlib.util.module_from_spec(spec)  # its dataclass looks it up
    spec.loader.exec_module(module)
    return module


class PackageHeatingModel:
    """Stands in for an acoustic model in ``tools/bench_infer.py``: all-blank logits, and each call adds
    3 J to package 0 of a fake powercap tree (when given one)."""

    def __init__(self, powercap=None):
        self.powercap, self.microjoules = powercap, 0

    def run(self, batch):
        import numpy as np

        from asr.text import NUM_SYMBOLS

        if self.powercap is not None:
            self.microjoules += 3_000_000
            powercap_tree(self.powercap, {0: self.microjoules}, wrap=2**40)
        return (np.zeros((len(batch[0]) // 2, NUM_SYMBOLS), np.float32),)


def test_bench_infer_measures_energy_with_rapl_where_readable_and_estimates_it_elsewhere(tmp_path):
    """The rule training follows: RAPL's joules where the package counters are readable, else the report's
    estimate (CPU seconds x watts per core); the table says which."""
    import dataclasses

    import numpy as np

    from asr.report.energy import estimated_cpu_joules

    bench = load_bench_infer()
    powercap_tree(tmp_path / "powercap", {0: 0}, wrap=2**40)
    speech = [("utt", np.random.default_rng(0).normal(0, 0.1, 16_000).astype(np.float32), "")]
    tables = {}
    for root in (tmp_path / "powercap", tmp_path / "absent"):
        model = PackageHeatingModel(root if root.exists() else None)
        cell = bench.Cell("cpu", "keras", 1, "", "", lengths=(0.5, 1.0), repeats=3, powercap_root=str(root))
        result = {"cell": dataclasses.asdict(cell), "load_seconds": 1.0, "peak_rss_mb": 500.0,
                  "energy": bench.energy_method(str(root))}  # fmt: skip
        result["lengths"] = bench.time_lengths(model, cell, speech)
        longest = result["lengths"][-1]
        joules = bench.summarize(result, 3.75)["joules_longest"]
        if root.exists():
            assert longest["rapl_joules"] == pytest.approx(3.0)  # the counter's 3 J per call, not CPU time
            assert joules == longest["rapl_joules"]
        else:
            assert "rapl_joules" not in longest
            assert joules == estimated_cpu_joules(longest["cpu"], 3.75) == longest["cpu"] * 3.75
        tables[root.name] = bench.markdown([result], {("cpu", "keras"): 1e6}, 3.75, "a CPU").splitlines()
    assert tables["powercap"][0] == "CPU: a CPU. Energy: measured by RAPL (1 package(s), the whole packages)."
    assert "(est.)" not in tables["powercap"][2] and "J per 30 s (est.)" in tables["absent"][2]
    assert tables["absent"][0].startswith(
        "CPU: a CPU. Energy: ESTIMATE from CPU seconds (no RAPL package zone"
    )
    assert tables["absent"][0].endswith("; the estimate: CPU seconds × 3.75 W per core.")
