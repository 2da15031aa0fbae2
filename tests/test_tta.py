import json

import pytest

from asr.config import Target
from asr.tta import EvalPoint, TTATracker, active_events, eval_series, reached_at, time_to_accuracy

# (elapsed seconds, epoch, CER %) of six evaluations, worked by hand below. Exact comparisons throughout:
# values are copied or medians, and the mean of two (even window) of these halves and whole numbers is
# exactly representable, so ties with a target are decided exactly (Python floats, any CPU).
CER = [
    EvalPoint(600, 0, 30.0),
    EvalPoint(1200, 1, 12.0),
    EvalPoint(1800, 2, 9.5),
    EvalPoint(2400, 3, 11.0),
    EvalPoint(3000, 4, 9.0),
    EvalPoint(3600, 5, 8.0),
]


def test_median_rule_waits_until_the_median_of_the_window_is_at_the_target():
    # medians of 3: epoch 2 -> 12, epoch 3 -> 11, epoch 4 -> median(9.5, 11, 9) = 9.5 <= 10
    assert time_to_accuracy(CER, 10.0, 3, "median") == 3000
    assert reached_at(CER, 10.0, 3, "median").value == 9.5


def test_first_rule_takes_the_first_evaluation_at_the_target():
    assert time_to_accuracy(CER, 10.0, 3, "first") == 1800


def test_ties_at_the_target_count_as_reached():
    assert time_to_accuracy(CER, 8.0, 3, "first") == 3600  # 8.0 <= 8.0
    assert time_to_accuracy(CER, 12.0, 3, "median") == 1800  # median(30, 12, 9.5) = 12 <= 12


def test_not_reached_is_none():
    # medians at epochs 4 and 5 are 9.5 and 9: never <= 8
    assert time_to_accuracy(CER, 8.0, 3, "median") is None
    assert time_to_accuracy(CER, 5.0, 3, "first") is None
    assert time_to_accuracy([], 50.0, 3, "median") is None


def test_no_median_before_window_epochs_exist():
    # 30 <= 50 at the very first evaluation, but a 3-epoch median exists only after epoch 2
    assert time_to_accuracy(CER, 50.0, 3, "median") == 1800
    assert time_to_accuracy(CER, 50.0, 3, "first") == 600
    assert time_to_accuracy(CER[:2], 50.0, 3, "median") is None


def test_window_of_one_equals_first_rule_and_even_window_averages_the_middle():
    for target in (30.0, 10.0, 9.0, 8.0, 1.0):
        assert time_to_accuracy(CER, target, 1, "median") == time_to_accuracy(CER, target, 1, "first")
    # window 2 at epoch 2: mean(12, 9.5) = 10.75; epoch 3: 10.25; epoch 4: mean(11, 9) = 10
    assert time_to_accuracy(CER, 10.0, 2, "median") == 3000


def test_a_re_evaluated_epoch_replaces_its_earlier_value():
    evals = [EvalPoint(10, 0, 20.0), EvalPoint(20, 1, 20.0), EvalPoint(30, 1, 5.0), EvalPoint(40, 2, 5.0)]
    # window 2 over distinct epochs: at t=30 epochs (0: 20, 1: 5) -> 12.5; at t=40 (1: 5, 2: 5) -> 5
    assert time_to_accuracy(evals, 6.0, 2, "median") == 40


def test_a_re_evaluated_older_epoch_counts_as_the_latest_in_the_window():
    """The window is the last epochs evaluated in log order: epoch 3 evaluated again after epoch 5 makes
    the window (5, 3), not (4, 5) as sorting by epoch would."""
    values = [30.0, 20.0, 15.0, 14.0, 16.0, 12.0]  # window 2: medians 25, 17.5, 14.5, 15, 14
    evals = [EvalPoint(600 * (epoch + 1), epoch, value) for epoch, value in enumerate(values)]
    evals.append(EvalPoint(4000, 3, 8.0))  # epoch 3 again (say, with the averaged weights)
    reached = reached_at(evals, 10.0, 2, "median")
    # exact: the mean of 12 and 8 is 10, a tie with the target (reached)
    assert (reached.elapsed, reached.epoch, reached.value) == (4000, 3, 10.0)
    tracker = TTATracker([("cer", 10.0)], window=2)
    found = [r for p in evals for r in tracker.update(_eval_event(p.elapsed, p.epoch, p.value, 50.0))]
    assert [(r.rule, r.elapsed) for r in found] == [("median", 4000), ("first", 4000)]


def test_bad_window_and_rule_are_rejected():
    with pytest.raises(ValueError, match="window"):
        time_to_accuracy(CER, 10.0, 0, "median")
    with pytest.raises(ValueError, match="rule"):
        time_to_accuracy(CER, 10.0, 3, "mean")


def _eval_event(elapsed, epoch, cer, wer, split="dev-clean", step=None):
    return {
        "event": "eval",
        "elapsed": elapsed,
        "epoch": epoch,
        "step": step or 10 * (epoch + 1),
        "split": split,
        "cer": cer,
        "wer": wer,
    }


def test_tracker_reports_each_target_and_rule_once_in_order():
    tracker = TTATracker([Target("cer", 10.0), Target("wer", 22.0)], window=3)
    wers = [60.0, 30.0, 21.0, 25.0, 20.0, 19.0]
    reached_per_eval = [
        tracker.update(_eval_event(p.elapsed, p.epoch, p.value, w)) for p, w in zip(CER, wers, strict=True)
    ]
    summary = [[(r.metric, r.target, r.rule, r.elapsed) for r in reached] for reached in reached_per_eval]
    assert summary == [
        [],
        [],
        [("cer", 10.0, "first", 1800), ("wer", 22.0, "first", 1800)],
        [],
        # cer median(9.5, 11, 9) = 9.5; wer median(21, 25, 20) = 21
        [("cer", 10.0, "median", 3000), ("wer", 22.0, "median", 3000)],
        [],
    ]
    first = reached_per_eval[2][0]
    assert first.event_fields() == {
        "elapsed": 1800,
        "epoch": 2,
        "metric": "cer",
        "target": 10.0,
        "rule": "first",
        "value": 9.5,
        "step": 30,
    }
    assert first.describe() == "TTA cer<=10 (first evaluation): 30.00 min at epoch 3, cer 9.50%"
    assert tracker.all_reached("median") and tracker.all_reached("first")


def test_tracker_ignores_other_splits_and_loss_only_evaluations():
    tracker = TTATracker([("cer", 10.0)], window=1)
    assert tracker.update(_eval_event(10, 0, 50.0, 80.0)) == []
    assert tracker.update(_eval_event(20, 0, 1.0, 1.0, split="test-clean")) == []
    loss_only = {"event": "eval", "elapsed": 30, "epoch": 1, "split": "dev-clean", "loss": 3.0}
    assert tracker.update(loss_only) == []
    assert tracker.split == "dev-clean" and not tracker.all_reached()
    assert [r.elapsed for r in tracker.update(_eval_event(40, 2, 9.0, 30.0))] == [40, 40]


def test_tracker_state_survives_a_json_round_trip_and_continues():
    targets = [Target("cer", 10.0)]
    whole = TTATracker(targets, 3)
    for point in CER:
        whole.update(_eval_event(point.elapsed, point.epoch, point.value, 50.0))
    resumed = TTATracker(targets, 3)
    for point in CER[:3]:
        resumed.update(_eval_event(point.elapsed, point.epoch, point.value, 50.0))
    resumed = TTATracker.from_state(json.loads(json.dumps(resumed.state())))
    assert list(resumed.reached) == [("cer", 10.0, "first")]  # already reached before the stop: not again
    newly = [r for p in CER[3:] for r in resumed.update(_eval_event(p.elapsed, p.epoch, p.value, 50.0))]
    assert [(r.rule, r.elapsed) for r in newly] == [("median", 3000)]
    assert resumed.reached == whole.reached


RESUMED_LOG = [
    {"event": "run_start", "elapsed": 0.0, "downtime": 0.0, "resumed": False},
    _eval_event(100.0, 0, 40.0, 70.0),
    _eval_event(200.0, 1, 20.0, 50.0),
    {"event": "checkpoint", "elapsed": 210.0, "epoch": 1},
    _eval_event(300.0, 2, 5.0, 15.0),  # lost: the run was killed before the next checkpoint
    # resumed from the checkpoint taken at 210 s of run time, after 3600 s of downtime
    {"event": "run_start", "elapsed": 210.0, "downtime": 3600.0, "resumed": True},
    _eval_event(320.0, 2, 9.0, 30.0),
]


def test_resume_drops_lost_work_and_the_clock_excludes_downtime():
    kept = active_events(RESUMED_LOG)
    assert [e["elapsed"] for e in kept if e["event"] == "eval"] == [100.0, 200.0, 320.0]
    points = eval_series(kept, "cer", "dev-clean")
    assert time_to_accuracy(points, 10.0, 1, "first") == 320.0  # not 300 (lost), not 320 + 3600
    tracker = TTATracker.from_events(RESUMED_LOG, [("cer", 10.0)], window=3)
    assert tracker.reached[("cer", 10.0, "first")].elapsed == 320.0
    assert ("cer", 10.0, "median") not in tracker.reached  # median(40, 20, 9) = 20


def test_the_restart_point_is_the_checkpoint_clock_not_the_resumed_sessions_first_event():
    """The resumed session's run_start comes after its set-up time (evaluator, decoder pool), so it is later
    than the checkpoint it resumed from; a lost step logged in between must still be dropped."""
    log = [
        {"event": "run_start", "elapsed": 0.0, "resumed": False},
        {"event": "step", "step": 60, "elapsed": 28.08},
        {"event": "checkpoint", "step": 60, "elapsed": 28.13},
        {"event": "step", "step": 61, "elapsed": 28.27},  # lost: the kill came before the next checkpoint
        {"event": "run_start", "elapsed": 28.32, "restart_elapsed": 28.09, "resumed": True},
        {"event": "step", "step": 61, "elapsed": 33.26},
    ]
    assert [e.get("step") for e in active_events(log) if e["event"] == "step"] == [60, 61]
    assert [e["elapsed"] for e in active_events(log) if e["event"] == "step"] == [28.08, 33.26]


def test_an_event_exactly_at_the_restart_point_is_kept():
    """Only events later than the clock saved with the checkpoint were lost; one logged at that very clock
    reading (here the epoch's evaluation, then the checkpoint) was part of what the checkpoint saved."""
    log = [
        {"event": "run_start", "elapsed": 0.0, "resumed": False},
        _eval_event(28.09, 0, 9.0, 30.0),
        {"event": "checkpoint", "step": 60, "elapsed": 28.09},
        {"event": "step", "step": 61, "elapsed": 28.27},  # lost
        {"event": "run_start", "elapsed": 28.32, "restart_elapsed": 28.09, "resumed": True},
        {"event": "step", "step": 61, "elapsed": 33.26},
    ]
    kept = active_events(log)
    assert [(e["event"], e["elapsed"]) for e in kept[1:3]] == [("eval", 28.09), ("checkpoint", 28.09)]
    assert [e.get("step") for e in kept if e["event"] == "step"] == [61] and kept[-1]["elapsed"] == 33.26
    tracker = TTATracker.from_events(log, [("cer", 10.0)], window=1)
    assert tracker.reached[("cer", 10.0, "first")].elapsed == 28.09


def test_a_fresh_start_after_a_session_that_saved_no_checkpoint_drops_that_session():
    log = [
        {"event": "run_start", "elapsed": 0.0, "resumed": False},
        {"event": "step", "step": 1, "elapsed": 2.0},
        {"event": "step", "step": 2, "elapsed": 3.0},  # killed before the first checkpoint
        {"event": "run_start", "elapsed": 0.1, "resumed": False},
        {"event": "step", "step": 1, "elapsed": 2.1},
    ]
    kept = active_events(log)
    assert [e["event"] for e in kept] == ["run_start", "step"] and kept[1]["elapsed"] == 2.1
