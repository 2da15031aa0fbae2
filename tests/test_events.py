import json

import pytest

from asr.events import EVENT_LOG_NAME, EventLog, read_events


def test_events_round_trip_with_wall_time(tmp_path):
    with EventLog(tmp_path) as log:
        log.write("step", elapsed=1.5, epoch=0, step=1, loss=12.0)
        log.write("eval", elapsed=9.0, epoch=0, step=4, wer=50.0)
    events, warnings = read_events(tmp_path)
    assert warnings == []
    assert [e["event"] for e in events] == ["step", "eval"]
    assert events[0]["loss"] == 12.0 and events[1]["wer"] == 50.0  # exact: JSON round-trips doubles
    assert all(isinstance(e["wall_time"], float) for e in events)


def test_truncated_last_line_is_skipped_with_a_warning(tmp_path):
    path = tmp_path / EVENT_LOG_NAME
    path.write_text(json.dumps({"event": "step", "step": 1}) + "\n" + '{"event": "st')
    events, warnings = read_events(path)
    assert len(events) == 1
    assert len(warnings) == 1 and ":2:" in warnings[0]


def test_appending_keeps_earlier_events(tmp_path):
    EventLog(tmp_path).write("run_start")
    EventLog(tmp_path).write("run_start", resumed=True)
    events, _ = read_events(tmp_path)
    assert [e.get("resumed") for e in events] == [None, True]


def test_missing_log_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_events(tmp_path / "nope")


def test_a_cut_last_line_stays_one_skipped_line_and_new_events_start_on_a_fresh_line(tmp_path):
    """A kill mid-write left half a line: the next session's run_start must not be glued to it."""
    EventLog(tmp_path).write("run_start")
    path = tmp_path / EVENT_LOG_NAME
    with path.open("a") as handle:
        handle.write('{"event":"step","elapsed":3.')
    with EventLog(tmp_path) as log:
        log.write("run_start", resumed=True)
        log.write("step", step=1)
    events, warnings = read_events(path)
    assert [e["event"] for e in events] == ["run_start", "run_start", "step"]
    assert events[1]["resumed"] is True
    assert len(warnings) == 1 and ":2:" in warnings[0]


def test_a_failed_write_names_the_log_and_the_next_event_starts_a_fresh_line(tmp_path):
    """A file-size limit (like a full disk) cuts an event mid-line: one WriteError naming the log; once
    space is back, the next event is whole and the cut one is a single skipped line."""
    import subprocess
    import sys

    script = f"""
import resource
from asr.events import EventLog
from asr.files import WriteError
log = EventLog({str(tmp_path)!r})
log.write("run_start")
resource.setrlimit(resource.RLIMIT_FSIZE, (150, resource.RLIM_INFINITY))
try:
    log.write("step", text="x" * 200)
except WriteError as error:
    print(error)
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
log.write("run_end", reason="error")
log.close()
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines() == [
        f"{tmp_path / EVENT_LOG_NAME}: cannot write (File too large); what was written before is intact, "
        "rerun when fixed"
    ]
    events, warnings = read_events(tmp_path)
    assert [e["event"] for e in events] == ["run_start", "run_end"]
    assert len(warnings) == 1
