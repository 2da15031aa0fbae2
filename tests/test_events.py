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
    assert events[0]["loss"] == 12.0 and events[1]["wer"] == 50.0
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
