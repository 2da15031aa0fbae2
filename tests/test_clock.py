import time

import pytest

from asr.clock import RunClock


def test_clock_counts_elapsed_and_phases():
    clock = RunClock()
    with clock.phase("evaluate"):
        time.sleep(0.02)
    assert clock.phases["evaluate"] >= 0.02
    assert clock.elapsed() >= clock.phases["evaluate"]


def test_resume_continues_elapsed_and_counts_the_gap_as_downtime():
    state = {"elapsed": 100.0, "downtime": 5.0, "phases": {"train": 90.0}, "saved_wall_time": 1000.0}
    clock = RunClock.resume(state, now_wall_time=1060.0)
    assert 100.0 <= clock.elapsed() < 101.0
    assert clock.downtime == 65.0  # exact: 5 + (1060 - 1000), whole numbers in doubles
    assert clock.phases == {"train": 90.0}  # copied


def test_off_clock_work_stops_the_clock_and_is_totalled_apart():
    clock = RunClock(elapsed=10.0)
    before = clock.elapsed()
    with clock.off_clock("eval:dev-seen"):
        entered = clock.elapsed()
        time.sleep(0.05)
        inside = clock.elapsed()
    after = clock.elapsed()
    assert inside == entered and after - before < 0.01  # exact inside: the clock stood still
    assert clock.off_clock_totals["eval:dev-seen"] >= 0.05
    with pytest.raises(RuntimeError), clock.off_clock("a"), clock.off_clock("b"):
        pass
    resumed = RunClock.resume(clock.state())
    assert resumed.off_clock_totals == clock.off_clock_totals and resumed.elapsed() >= after


def test_state_round_trips():
    clock = RunClock(elapsed=42.0)
    state = clock.state()
    again = RunClock.resume(state, now_wall_time=state["saved_wall_time"])
    assert again.downtime == 0.0  # exact: now - saved_wall_time with now = saved_wall_time
    assert again.elapsed() >= 42.0
