import json
import math
import re

import numpy as np
import pytest

from asr.config import Recipe, RigConfig, TrainConfig, TTAConfig, dump_recipe
from asr.events import EVENT_LOG_NAME
from asr.report import load_run, main
from asr.report.energy import energy, energy_by_kind, integrate
from asr.report.grouping import aggregate
from asr.report.measures import clock_share, epoch_accuracy, windowed_throughput
from asr.tta import active_events

# Synthetic run shape, so every time below can be checked by hand: each epoch is 10 training
# steps of STEP s (the very first step of a session takes FIRST_STEP s: graph tracing), then
# swap_out 2 s, evaluate 6 s (the eval event is written when it ends), swap_in 2 s.
STEP, FIRST_STEP, STEPS = 5.0, 20.0, 10


def eval_times(epochs: int) -> list[float]:
    """Run-clock seconds of each epoch's eval event for a run from write_run (no resume)."""
    times, now = [], 0.0
    for epoch in range(epochs):
        now += (FIRST_STEP if epoch == 0 else STEP) + STEP * (STEPS - 1) + 2 + 6
        times.append(now)
        now += 2
    return times


def write_run(
    run_dir,
    cer,
    wer=None,
    name="cpu",
    rig="laptop",
    batch=8,
    price=0.0,
    power_w=None,
    resume_after_epoch=None,
    downtime=0.0,
    seed=0,
    step_scale=1.0,
    recipe=True,
    jitter=0.0,
    cpu_watts_per_core=0.0,
    grid_g_co2_per_kwh=0.0,
    utterances=None,
):
    """A run directory with a plausible event log: one eval per epoch with the given CER/WER %."""
    rng = np.random.default_rng(seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    wer = wer or [min(100.0, 2.2 * c) for c in cer]
    if recipe:
        values = Recipe(
            name=name,
            train=TrainConfig(global_batch=batch, seed=seed),
            rig=RigConfig(
                name=rig,
                price_usd=price,
                depreciation_years=1.0,
                cpu_watts_per_core=cpu_watts_per_core,
                grid_g_co2_per_kwh=grid_g_co2_per_kwh,
            ),
            tta=TTAConfig(),
        )
        (run_dir / "recipe.yaml").write_text(dump_recipe(values))
    events, now, step = [], 0.0, 0
    clock = [0.0]

    def emit(kind, **fields):
        events.append({"event": kind, "wall_time": 1.7e9 + clock[0], "elapsed": round(now, 6), **fields})

    def util_until(end):
        while clock[0] + 1.0 <= end:
            clock[0] += 1.0
            sample = {
                "event": "util",
                "wall_time": 0,
                "elapsed": clock[0],
                "cpu_percent": 150 + 10 * rng.random(),
            }
            gpus = (
                []
                if power_w is None
                else [{"index": 0, "utilization": 90, "memory_used_mb": 900, "power_w": power_w}]
            )
            events.append({**sample, "gpus": gpus})

    size = {} if utterances is None else {"utterances": utterances}
    emit("run_start", recipe=name, rig=rig, replicas=1, workers=1, resumed=False, downtime=0.0, **size)
    first = True
    for epoch, (c, w) in enumerate(zip(cer, wer, strict=True)):
        for _ in range(STEPS):
            seconds = (FIRST_STEP if first else STEP) * step_scale * (1 + jitter * abs(rng.normal()))
            first = False
            util_until(now + seconds)
            now += seconds
            step += 1
            loss = 300 * math.exp(-step / 20) + 20 + rng.normal(0, 3)
            emit(
                "step",
                epoch=epoch,
                step=step,
                phase="train",
                loss=loss,
                batch_size=batch,
                replicas=1,
                step_seconds=seconds,
                elements_per_second=batch / seconds,
                elements_per_second_per_replica=batch / seconds,
                audio_seconds=batch * 12.0,
            )
        emit("epoch_end", epoch=epoch, step=step, train_seconds=STEP * STEPS)
        for phase, seconds in (("swap_out", 2.0), ("evaluate", 6.0), ("swap_in", 2.0)):
            util_until(now + seconds)
            now += seconds
            if phase == "evaluate":
                emit(
                    "eval",
                    epoch=epoch,
                    step=step,
                    split="dev-clean",
                    loss=50.0,
                    wer=w,
                    cer=c,
                    cer_maxlen=c,
                    utterances=79,
                    seconds=6.0,
                    source="swap",
                )
            emit("phase", epoch=epoch, step=step, phase=phase, seconds=seconds)
        if resume_after_epoch == epoch:
            emit("run_end", epoch=epoch, step=step, reason="signal")
            emit(
                "run_start",
                epoch=epoch,
                step=step,
                recipe=name,
                rig=rig,
                replicas=1,
                workers=1,
                resumed=True,
                downtime=downtime,
            )
            first = True
    emit("run_end", epoch=len(cer) - 1, step=step, reason="epochs")
    events.sort(key=lambda e: e["elapsed"])
    (run_dir / EVENT_LOG_NAME).write_text("".join(json.dumps(e) + "\n" for e in events))
    return run_dir


CER_A = [40.0, 20.0, 12.0, 9.0, 8.5, 7.5, 6.9, 7.2]  # small batch: slower start, better end
CER_B = [30.0, 11.0, 9.5, 9.0, 8.8, 8.1, 7.9, 8.0]  # large batch


FINAL_ROWS = [
    {"split": "dev-clean", "wer": 19.5, "cer": 7.1, "cer_maxlen": 7.0, "beam_width": 256, "utterances": 79},
    {"split": "dev-clean", "wer": 18.0, "cer": 6.5, "cer_maxlen": 6.4, "beam_width": 512, "utterances": 79},
    {"split": "test-clean", "wer": 20.25, "cer": 7.5, "cer_maxlen": 7.4, "beam_width": 512, "utterances": 84},
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run directories built once for the tests that only read them (a test that changes one builds its
    own): name -> path, the name being the run's label in reports."""
    root = tmp_path_factory.mktemp("runs")
    gpu = write_run(root / "gpu", CER_A, price=8760.0, power_w=200.0)  # 1 price unit per hour
    (gpu / "eval").mkdir()
    (gpu / "eval" / "results.json").write_text(json.dumps(FINAL_ROWS))
    return {
        "small": write_run(root / "small", CER_A, batch=8),
        "large": write_run(root / "large", CER_B, batch=32),
        "resumed": write_run(root / "resumed", CER_A, resume_after_epoch=2, downtime=7200.0),
        "cpu": write_run(root / "cpu", CER_A, cpu_watts_per_core=4.0, grid_g_co2_per_kwh=400.0),
        "gpu": gpu,
    }


def run_report(tmp_path, runs, *extra, plots=False):
    out = tmp_path / "out"
    args = [str(r) for r in runs] + ["--out", str(out), *extra]
    status = main(args + ([] if plots else ["--no-plots"]))
    return status, out


def test_tta_table_minutes_percent_of_baseline_and_na(tmp_path, capsys, runs):
    status, out = run_report(tmp_path, [runs["small"], runs["large"]])
    assert status == 0
    times = eval_times(8)  # 73, 133, 193, ... seconds
    assert times[:3] == [73.0, 133.0, 193.0]
    md = (out / "report.md").read_text()
    table = md.split("## Time to accuracy in minutes (median rule")[1].split("##")[0]
    # CER 10, median of 3: small at epoch 4 (median of 12, 9, 8.5 = 9); large not at epoch 2
    # (median of 30, 11, 9.5 = 11) but at epoch 3 (median of 11, 9.5, 9 = 9.5)
    small, large = times[4] / 60, times[3] / 60
    row_small = next(
        line for line in table.splitlines() if line.startswith("| cpu @ laptop [train.global_batch=8]")
    )
    row_large = next(
        line for line in table.splitlines() if line.startswith("| cpu @ laptop [train.global_batch=32]")
    )
    assert f"| {small:.1f} |" in row_small and f"| {large:.1f} |" in row_large
    percent_rows = [line for line in table.splitlines() if "% of" in line]
    assert f"| {100 * large / small:.0f}% |" in percent_rows[1]
    # CER 7: small reaches the median of (7.5, 6.9, 7.2) = 7.2 > 7 never -> NA; large never
    assert row_small.split("|")[4].strip() == "NA"
    first = md.split("(first rule")[1].split("##")[0]
    # first rule, CER 7: small's epoch 6 (6.9)
    assert f"| {times[6] / 60:.1f} |" in first
    printed = capsys.readouterr().out
    assert "Time to accuracy in minutes (median rule" in printed and "NA" in printed
    assert "wrote" in printed


def test_a_baseline_seed_that_never_reaches_a_target_bounds_the_percent(tmp_path):
    stuck = [40.0, 20.0, 12.0, 11.0, 10.5, 10.4, 10.6, 10.5]  # never a median of CER 10
    runs = [
        write_run(tmp_path / "base-0", CER_A, name="base", seed=0),
        write_run(tmp_path / "base-1", stuck, name="base", seed=1),
        write_run(tmp_path / "fast-0", CER_B, name="fast", seed=0),
        write_run(tmp_path / "fast-1", CER_B, name="fast", seed=1),
    ]
    status, out = run_report(tmp_path, runs, "--baseline", "base")
    assert status == 0
    table = (
        (out / "report.md").read_text().split("## Time to accuracy in minutes (median rule")[1].split("##")[0]
    )
    times = eval_times(8)
    stuck_length = max(json.loads(line)["elapsed"] for line in (runs[1] / EVENT_LOG_NAME).open())
    bound = (times[4] + stuck_length) / 2  # CER_A reaches CER 10 at epoch 4, CER_B at epoch 3
    percents = [line.split("|")[2].strip() for line in table.splitlines() if "% of baseline" in line]
    assert percents == ["NA", f"\u2264{100 * times[3] / bound:.0f}%"]
    assert f"the aggregate is at least: CER 10 {bound / 60:.1f} min, CER 8" in table


def test_definition_throughput_and_runs_tables(tmp_path, runs):
    status, out = run_report(tmp_path, [runs["small"]])
    md = (out / "report.md").read_text()
    assert status == 0
    assert "not the downtime" in md and "feature extraction" in md and "median of the last e" in md
    # 79 timed steps of 5 s with 8 utterances of 12 s (the 20 s first step is excluded): 1.6 utt/s, 19.2 s/s
    throughput = md.split("## Training throughput")[1].split("##")[0]
    assert "| small | 1.60 | 1.60 | 1.60 | 19.2 | 79 | 1 | 8 |" in throughput
    runs = md.split("## Runs")[1].split("##")[0]
    assert f"| {eval_times(8)[-1] / 60:.1f} | 0.0 | not recorded | 8 | epochs |" in runs


def test_resume_with_downtime_is_excluded_from_tta_and_shown_separately(tmp_path, runs):
    status, out = run_report(tmp_path, [runs["resumed"]])
    assert status == 0
    md = (out / "report.md").read_text()
    # after the resume the first step again takes FIRST_STEP: epoch 3 onward is 15 s later than eval_times
    expected = (eval_times(8)[4] + FIRST_STEP - STEP) / 60
    table = md.split("(median rule")[1].split("##")[0]
    assert f"| {expected:.1f} |" in table.splitlines()[4]
    runs = md.split("## Runs")[1].split("##")[0]
    assert "| 2 |" in runs and "| 120.0 |" in runs  # two sessions, 7200 s of downtime


def test_aggregation_of_repeated_runs(tmp_path):
    # exact: means and medians of a few whole numbers are exactly representable (Python floats, any CPU)
    assert aggregate([5.0, 1.0, 3.0, 100.0, 4.0]) == (4.0, 1.0, 100.0)  # mean of 3, 4, 5
    assert aggregate([3.0, 1.0, 2.0, 10.0]) == (2.5, 1.0, 10.0)  # median
    assert aggregate([1.0, None, 2.0]) == (2.0, 1.0, None)  # not reached = slowest
    assert aggregate([None, None, 1.0]) == (None, 1.0, None)
    assert aggregate([1.0, 2.0, 3.0, 4.0, None]) == (3.0, 1.0, None)
    runs = [
        write_run(tmp_path / f"seed{s}", CER_A, seed=s, step_scale=scale)
        for s, scale in enumerate([1.0, 1.2, 0.8, 1.1, 1.5])
    ]
    status, out = run_report(tmp_path, runs)
    assert status == 0
    md = (out / "report.md").read_text()
    table = md.split("(median rule")[1].split("##")[0]
    rows = [line for line in table.splitlines() if line.startswith("| cpu @ laptop")]
    assert len(rows) == 1 and "n=5" in rows[0]
    # CER 10 at epoch 4's eval: the steps scale, the 10 s of swap and eval per epoch do not
    tta = sorted((eval_times(5)[4] - 50) * s + 50 for s in [1.0, 1.2, 0.8, 1.1, 1.5])
    mean = sum(tta[1:-1]) / 3 / 60
    assert f"| {mean:.1f} ({tta[0] / 60:.1f}\u2013{tta[-1] / 60:.1f}, n=5) |" in rows[0]
    # the evaluation share: 8 x (6 s evaluate + 4 s swap) = 80 s beside 415 s of steps x scale (20 + 79 x 5)
    share = md.split("## Evaluation share of the run clock")[1].split("##")[0]
    clocks = sorted(80 + 415 * s for s in [1.0, 1.2, 0.8, 1.1, 1.5])  # 412, 495, 536.5, 578, 702.5
    row = next(line for line in share.splitlines() if "aggregate of 5" in line).split(" | ")
    assert row[0] == "| cpu @ laptop: aggregate of 5"
    assert row[1] == f"{sum(clocks[1:-1]) / 3:.1f}"  # MLPerf: mean without the fastest and slowest run
    shares = sorted(48 / c for c in clocks)
    assert row[2] == f"48.0 ({100 * sum(shares[1:-1]) / 3:.1f}%)"  # the seconds alike, the share aggregated
    assert len([line for line in share.splitlines() if line.startswith("| seed")]) == 5


def test_runs_on_training_sets_of_different_size_are_not_repeats(tmp_path):
    runs = [
        write_run(tmp_path / "plain-a", CER_A, seed=1, utterances=508),
        write_run(tmp_path / "plain-b", CER_A, seed=2, utterances=508),
        write_run(tmp_path / "perturbed", CER_A, seed=1, utterances=1524),
    ]
    status, out = run_report(tmp_path, runs)
    assert status == 0
    table = (out / "report.md").read_text().split("(median rule")[1].split("##")[0]
    rows = [line for line in table.splitlines() if line.startswith("| cpu @ laptop")]
    assert len(rows) == 2
    assert rows[0].startswith("| cpu @ laptop [training utterances=508] |") and "n=2" in rows[0]
    assert rows[1].startswith("| cpu @ laptop [training utterances=1524] |") and "n=" not in rows[1]


def test_truncated_last_line_missing_log_and_unknown_baseline(tmp_path, capsys, runs):
    a = write_run(tmp_path / "killed", CER_A)
    with (a / EVENT_LOG_NAME).open("a") as log:
        log.write('{"event": "step", "elapsed": 9')
    status, out = run_report(tmp_path, [a, tmp_path / "nothing-here", runs["large"]], "--baseline", "sys10")
    err = capsys.readouterr().err
    assert status == 0
    assert f"{a / EVENT_LOG_NAME}:618: unreadable line skipped" in err
    assert "nothing-here: no such directory, run skipped" in err
    assert f"{a / EVENT_LOG_NAME}: 617 events read, 1 line(s) skipped" in err
    assert "baseline 'sys10' matches no run" in err
    lines = [line for line in err.splitlines() if line]
    assert all(line.startswith("asr.report: ") for line in lines)
    md = (out / "report.md").read_text()
    assert (
        "baseline 'sys10' matches no run" in md
        and "Baseline: cpu @ laptop [train.global_batch=8]. Repeated" in md
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--price-per-hour", "-1"], "argument --price-per-hour: must be at least 0, got -1"),
        (["--window", "nan"], "argument --window: must be a finite number, got nan"),
        (["--no-such-option"], "unrecognized arguments: --no-such-option"),
    ],
)
def test_a_usage_error_is_one_line_and_exit_status_2(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path), "--out", str(tmp_path / "out"), *args])
    assert exit_.value.code == 2 and not (tmp_path / "out").exists()
    assert capsys.readouterr().err == f"asr.report: error: {message} (see --help)\n"


def test_nothing_to_report_exits_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    status, out = run_report(tmp_path, [tmp_path / "empty", tmp_path / "missing"])
    assert status == 2 and not (out / "report.md").exists()
    err = capsys.readouterr().err
    assert "empty: no events.jsonl" in err and "nothing to report" in err


def test_baseline_by_name_reorders_and_different_targets_are_noted(tmp_path, capsys, runs):
    b = write_run(tmp_path / "b", CER_B, batch=32)
    recipe = (b / "recipe.yaml").read_text().replace("value: 19.2", "value: 25.0")
    (b / "recipe.yaml").write_text(recipe)
    status, out = run_report(tmp_path, [runs["small"], b], "--baseline", "b")
    assert status == 0
    md = (out / "report.md").read_text()
    assert "Baseline: cpu @ laptop [train.global_batch=32]" in md
    assert "runs configure different targets" in md and "WER 25" in md
    assert "different targets" in capsys.readouterr().err


def test_cost_energy_and_final_accuracy(tmp_path, runs):
    a, b = runs["gpu"], runs["large"]
    status, out = run_report(tmp_path, [a, b])
    assert status == 0
    md = (out / "report.md").read_text()
    tta_hours = eval_times(8)[4] / 3600
    cost = md.split("## Cost to accuracy")[1].split("##")[0]
    assert f"| gpu | 1.0000 | {tta_hours:.4f} |" in cost and "| large | no price |" in cost
    # constant 200 W sampled every second from 1 s: energy to CER 10 = 200 W x (TTA - 1 s)
    kj = md.split("## Energy to accuracy")[1].split("##")[0]
    assert f"| {200 * (eval_times(8)[4] - 1) / 1000:.1f} |" in kj and "| large |" not in kj
    final = md.split("## Final accuracy")[1].split("##")[0]
    assert "| gpu | 18.00 (6.50, beam 512) | 20.25 (7.50, beam 512) |" in final
    assert "No eval/results.json" in final and "large" in final.split("No eval/results.json")[1]


def test_integrate_power_by_hand():
    times, watts = np.array([0.0, 10.0]), np.array([0.0, 100.0])
    # whole numbers and halves: float64 trapezoids are exact here, approx only for readability
    assert integrate(times, watts, 0, 10) == pytest.approx(500.0)
    assert integrate(times, watts, 5, 10) == pytest.approx(375.0)  # (50 + 100) / 2 x 5 s
    assert integrate(times, watts, -5, 50) == pytest.approx(500.0)  # no extrapolation
    assert integrate(times[:1], watts[:1], 0, 10) == 0.0


def test_cpu_energy_estimate_and_co2_to_accuracy(tmp_path, runs):
    run_dir = runs["cpu"]
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    times, watts = np.array([(e["elapsed"], e["cpu_percent"] / 100 * 4.0) for e in events
                             if e["event"] == "util"]).T  # fmt: skip
    by_hand = float(np.sum(np.diff(times) * (watts[1:] + watts[:-1]) / 2))  # trapezoids, 1 s apart
    run = load_run(run_dir)
    assert energy(run, "gpu") is None
    assert energy(run, "cpu")["total"] == pytest.approx(by_hand, rel=1e-9)  # same sums, other order
    status, out = run_report(tmp_path, [run_dir])
    assert status == 0
    md = (out / "report.md").read_text()
    kj = md.split("## Energy to accuracy")[1].split("##")[0]
    assert f"| cpu | cpu | {by_hand / 1000:.1f} |" in kj and "ESTIMATE" in kj
    co2 = md.split("## CO2 to accuracy")[1].split("##")[0]
    assert f"| cpu | 400 | {by_hand / 3.6e6 * 400:.1f} |" in co2


def test_measured_cpu_power_replaces_the_estimate(tmp_path):
    """Samples with RAPL's ``cpu_power_w`` give a measured ``cpu-rapl`` row; the estimate of the same run is
    left out (it would count the CPU twice in CO2), and samples without a figure (the counter's first
    reading) are skipped."""
    run_dir = write_run(tmp_path / "cpu", CER_A, cpu_watts_per_core=4.0, grid_g_co2_per_kwh=400.0)
    log = run_dir / "events.jsonl"
    events = [json.loads(line) for line in log.read_text().splitlines()]
    util = [e for e in events if e["event"] == "util"]
    for index, event in enumerate(util):
        event["cpu_power_w"] = None if index == 0 else 30.0
    log.write_text("".join(json.dumps(e) + "\n" for e in events))
    run = load_run(run_dir)
    measured = energy(run, "cpu-rapl")
    span = util[-1]["elapsed"] - util[1]["elapsed"]
    assert measured["total"] == pytest.approx(30.0 * span)  # constant power: exact trapezoids
    status, out = run_report(tmp_path, [run_dir])
    assert status == 0
    md = (out / "report.md").read_text()
    kj = md.split("## Energy to accuracy")[1].split("##")[0]
    assert f"| cpu | cpu-rapl | {30.0 * span / 1000:.1f} |" in kj and "| cpu | cpu |" not in kj
    co2 = md.split("## CO2 to accuracy")[1].split("##")[0]
    assert f"| cpu | 400 | {30.0 * span / 3.6e6 * 400:.1f} |" in co2


def test_a_session_without_rapl_keeps_its_estimate_next_to_the_measured_one(tmp_path):
    """A run whose first session measured RAPL and whose resumed session (another host) did not: the
    measured part counts under cpu-rapl, the second session's CPU under the estimate, each session once."""
    run_dir = write_run(tmp_path / "cpu", CER_A, cpu_watts_per_core=4.0, grid_g_co2_per_kwh=400.0,
                        resume_after_epoch=3)  # fmt: skip
    log = run_dir / EVENT_LOG_NAME
    events = [json.loads(line) for line in log.read_text().splitlines()]
    resumed = next(i for i, e in enumerate(events) if e["event"] == "run_start" and e["resumed"])
    first = [e for e in events[:resumed] if e["event"] == "util"]
    second = [e for e in events[resumed:] if e["event"] == "util"]
    for index, event in enumerate(first):
        event["cpu_power_w"] = None if index == 0 else 20.0 + index % 3  # the counter's baseline: no figure
    log.write_text("".join(json.dumps(e) + "\n" for e in events))

    def trapezoids(samples, watts):
        times = np.array([e["elapsed"] for e in samples])
        power = np.array([watts(e) for e in samples])
        return float(np.sum(np.diff(times) * (power[1:] + power[:-1]) / 2))

    measured = trapezoids(first[1:], lambda e: e["cpu_power_w"])
    estimated = trapezoids(second, lambda e: e["cpu_percent"] / 100 * 4.0)
    run = load_run(run_dir)
    assert energy(run, "cpu-rapl")["total"] == pytest.approx(measured, rel=1e-12)
    assert energy(run, "cpu")["total"] == pytest.approx(estimated, rel=1e-12)
    status, out = run_report(tmp_path, [run_dir])
    assert status == 0
    md = (out / "report.md").read_text()
    kj = md.split("## Energy to accuracy")[1].split("##")[0]
    assert (
        f"| cpu | cpu-rapl | {measured / 1000:.1f} |" in kj
        and f"| cpu | cpu | {estimated / 1000:.1f} |" in kj
    )
    co2 = md.split("## CO2 to accuracy")[1].split("##")[0]
    assert f"| cpu | 400 | {(measured + estimated) / 3.6e6 * 400:.1f} |" in co2


def test_a_source_is_never_bridged_across_a_session_counted_under_the_other(tmp_path):
    """Sessions measured, estimated, measured: the measured curve stops at the middle session instead of
    joining its neighbours over it (that would count the middle session's CPU twice)."""
    run_dir = tmp_path / "three"
    run_dir.mkdir()
    rig = RigConfig(name="laptop", cpu_watts_per_core=4.0)
    (run_dir / "recipe.yaml").write_text(dump_recipe(Recipe(name="cpu", rig=rig)))
    events = []
    for session, rapl in enumerate((True, False, True)):
        events.append({"event": "run_start", "elapsed": 5.0 * session, "resumed": session > 0})
        for second in range(5 * session, 5 * session + 5):
            util = {"event": "util", "elapsed": float(second), "cpu_percent": 100.0}
            events.append({**util, "cpu_power_w": 10.0} if rapl else util)
    (run_dir / EVENT_LOG_NAME).write_text("".join(json.dumps(e) + "\n" for e in events))
    run = load_run(run_dir)
    assert energy(run, "cpu-rapl")["total"] == 2 * 4 * 10.0  # exact: whole seconds and watts
    assert energy(run, "cpu")["total"] == 4 * 4.0  # one busy core at 4 W from 5 s to 9 s


def test_no_cpu_estimate_without_a_per_core_figure(runs):
    run = load_run(runs["small"])
    assert energy(run, "cpu") is None


def test_energy_per_phase_and_epoch_add_up(runs):
    result = energy(load_run(runs["gpu"]))
    end = eval_times(8)[-1] + 2  # last swap_in ends; samples every whole second from 1 s
    # 200 W trapezoids between whole seconds: whole numbers, exact in any summation order
    assert result["total"] == pytest.approx(200.0 * (math.floor(end) - 1))
    assert result["phases"]["evaluate"] == pytest.approx(8 * 6 * 200.0)
    assert sum(result["phases"].values()) == pytest.approx(result["total"])
    assert sum(result["epochs"].values()) == pytest.approx(result["total"])
    assert list(result["epochs"]) == list(range(8))


def write_log(run_dir, events):
    """A run directory whose event log is ``events`` (hand-written), with a recipe of one repeat group."""
    run_dir.mkdir(parents=True)
    rig = RigConfig(name="laptop", cpu_watts_per_core=4.0)
    recipe = Recipe(name="cpu", rig=rig, train=TrainConfig(global_batch=4))
    (run_dir / "recipe.yaml").write_text(dump_recipe(recipe))
    (run_dir / EVENT_LOG_NAME).write_text("".join(json.dumps(e) + "\n" for e in events))
    return run_dir


def phase(elapsed, name, seconds):
    return {"event": "phase", "elapsed": elapsed, "phase": name, "seconds": seconds}


# Resident evaluation, one session: two epochs of 20 s, each ending with a 1 s checkpoint and a 4 s
# evaluation, an extra set decoded off the clock (7 s) and an external evaluation (5 s, another process).
RESIDENT_LOG = [
    {"event": "run_start", "elapsed": 0.0, "resumed": False},
    {"event": "step", "elapsed": 20.0, "step_seconds": 20.0, "batch_size": 4},
    phase(21.0, "checkpoint", 1.0),
    phase(25.0, "evaluate", 4.0),
    {"event": "off_clock", "elapsed": 25.0, "name": "eval:dev-seen", "seconds": 7.0},
    {"event": "eval", "elapsed": 25.0, "split": "dev", "cer": 50.0, "seconds": 3.9, "source": "resident"},
    {"event": "eval", "elapsed": 21.0, "split": "dev", "cer": 50.0, "seconds": 5.0, "source": "external"},
    {"event": "step", "elapsed": 45.0, "step_seconds": 20.0, "batch_size": 4},
    phase(46.0, "checkpoint", 1.0),
    phase(50.0, "evaluate", 4.0),
    {"event": "run_end", "elapsed": 50.0, "reason": "epochs"},
]


def util(elapsed):
    return {"event": "util", "elapsed": elapsed, "cpu_percent": 100.0}  # one busy core: 4 W (write_log)


# Swap evaluation, killed during the second epoch-end evaluation and resumed 600 s later from that epoch's
# checkpoint (clock saved at 50 s, evaluation pending): its checkpoint phase (52 s) and swap_out (53 s) were
# lost and are redone; the run ends at 90 s after a third evaluation. A utilization sample every 10 s.
SWAP_LOG = [
    {"event": "run_start", "elapsed": 0.0, "resumed": False, "downtime": 0.0},
    *[util(float(t)) for t in range(0, 50, 10)],
    phase(20.0, "checkpoint", 2.0),
    phase(21.0, "swap_out", 1.0),
    phase(27.0, "evaluate", 6.0),
    phase(30.0, "swap_in", 3.0),
    {"event": "eval", "elapsed": 30.0, "split": "dev", "cer": 50.0, "source": "swap"},
    {"event": "step", "elapsed": 48.0, "step_seconds": 18.0, "batch_size": 4},
    phase(52.0, "checkpoint", 2.0),  # lost: later than the clock the checkpoint saved
    phase(53.0, "swap_out", 1.0),  # lost; then the kill (no evaluate event)
    {"event": "run_start", "elapsed": 51.0, "resumed": True, "restart_elapsed": 50.0, "downtime": 600.0},
    *[util(float(t)) for t in range(60, 100, 10)],
    phase(52.0, "swap_out", 1.0),
    phase(58.0, "evaluate", 6.0),
    phase(61.0, "swap_in", 3.0),
    {"event": "eval", "elapsed": 61.0, "split": "dev", "cer": 40.0, "source": "swap"},
    {"event": "step", "elapsed": 78.0, "step_seconds": 17.0, "batch_size": 4},
    phase(80.0, "checkpoint", 2.0),
    phase(81.0, "swap_out", 1.0),
    phase(87.0, "evaluate", 6.0),
    phase(90.0, "swap_in", 3.0),
    {"event": "eval", "elapsed": 90.0, "split": "dev", "cer": 30.0, "source": "swap"},
    {"event": "run_end", "elapsed": 90.0, "reason": "epochs"},
]


def test_clock_share_of_hand_written_logs():
    """Seconds per kind and share of the run clock, worked by hand from the logs above."""
    resident = clock_share(active_events(RESIDENT_LOG))
    assert resident.run_clock == 50.0
    assert resident.seconds == {"evaluate": 8.0, "swap": 0.0, "checkpoint": 2.0, "training": 40.0}
    assert resident.share("evaluate") == 8 / 50 and resident.share("training") == 40 / 50
    assert resident.off_clock == {"eval:dev-seen": 7.0, "external evaluation": 5.0}  # never in the shares
    swap = clock_share(active_events(SWAP_LOG))
    # evaluate 3 x 6; swap: session 1: 1 + 3, session 2: (1 + 3) x 2; checkpoint 20 s and 80 s, 2 each (the
    # one at 52 s and the swap_out at 53 s were lost); downtime is not on the clock
    assert swap.run_clock == 90.0
    assert swap.seconds == {"evaluate": 18.0, "swap": 12.0, "checkpoint": 4.0, "training": 56.0}
    assert swap.share("evaluate", "swap") == 30 / 90 and swap.off_clock == {}
    assert clock_share([{"event": "run_start", "elapsed": 0.0}]).share("evaluate") is None


def test_evaluation_share_table_with_its_energy(tmp_path, runs):
    """The report's table: per run, seconds and % of the run clock per kind, the evaluation share, what ran
    off the clock, and the energy of each kind beside it."""
    resident = write_log(tmp_path / "resident", RESIDENT_LOG)
    swap = write_log(tmp_path / "swap", SWAP_LOG)
    status, out = run_report(tmp_path, [resident, swap, runs["gpu"]])
    assert status == 0
    md = (out / "report.md").read_text()
    table = md.split("## Evaluation share of the run clock")[1].split("##")[0]
    rows = {line.split(" | ")[0][2:]: line for line in table.splitlines() if line.startswith("| ")}
    assert rows["resident"] == (
        "| resident | 50.0 | 8.0 (16.0%) | 0.0 (0.0%) | 2.0 (4.0%) | 40.0 (80.0%) | 16.0% "
        "| 12.0 (eval:dev-seen, external evaluation) | none sampled | \u2014 | \u2014 | \u2014 | \u2014 |"
    )
    # a constant 4 W over 0-90 s (both sessions under the cpu estimate): 4 J per second of each kind
    assert rows["swap"] == (
        "| swap | 90.0 | 18.0 (20.0%) | 12.0 (13.3%) | 4.0 (4.4%) | 56.0 (62.2%) | 33.3% | \u2014 | cpu "
        "| 0.072 (20.0%) | 0.048 (13.3%) | 0.016 (4.4%) | 0.224 (62.2%) |"
    )
    # gpu: 8 epochs of 20 + 45 s of steps (the first 20 s) and 10 s of swap_out 2, evaluate 6, swap_in 2;
    # 200 W sampled every second from 1 s to 495 s: 98.8 kJ, evaluate 8 x 6 x 200 J, swap 8 x 4 x 200 J
    clock = 8 * 60 + 15
    evaluate, swapping, whole = 9.6, 6.4, 200 * (clock - 1) / 1000
    assert rows["gpu"] == (
        f"| gpu | {clock:.1f} | 48.0 ({4800 / clock:.1f}%) | 32.0 ({3200 / clock:.1f}%) | 0.0 (0.0%) "
        f"| {clock - 80:.1f} ({100 * (clock - 80) / clock:.1f}%) | {8000 / clock:.1f}% | \u2014 | gpu "
        f"| {evaluate:.3f} ({100 * evaluate / whole:.1f}%) | {swapping:.3f} ({100 * swapping / whole:.1f}%) "
        f"| 0.000 (0.0%) | {whole - 16:.3f} ({100 * (whole - 16) / whole:.1f}%) |"
    )
    # the hand-written logs are repeats of one configuration (gpu's batch differs): medians of two, energy
    # only where every run has it
    aggregated = "cpu @ laptop [train.global_batch=4]: aggregate of 2"
    assert rows[aggregated] == (
        f"| {aggregated} | 70.0 | 13.0 (18.0%) | 6.0 (6.7%) | 3.0 (4.2%) | 48.0 (71.1%) | 24.7% "
        "| 6.0 (eval:dev-seen, external evaluation) | cpu | \u2014 | \u2014 | \u2014 | \u2014 |"
    )
    joules, sources = energy_by_kind(load_run(runs["gpu"]))
    assert sources == ["gpu"] and joules["evaluate"] == pytest.approx(9600.0)
    assert "off_clock events" in table and "swap = swap_out + swap_in" in table
    page = (out / "report.html").read_text()
    assert "<h2>Evaluation share of the run clock</h2>" in page and "<td>18.0 (20.0%)</td>" in page


def test_plots_and_self_contained_html(tmp_path, runs):
    status, out = run_report(tmp_path, [runs["gpu"], runs["large"]], "--window", "60", plots=True)
    assert status == 0
    names = sorted(p.name for p in (out / "plots").iterdir())
    assert names == ["accuracy.png", "loss.png", "shares.png", "throughput.png", "utilization.png"]
    assert all((out / "plots" / n).read_bytes().startswith(b"\x89PNG") for n in names)
    page = (out / "report.html").read_text()
    sources = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]*)""", page)
    assert len(sources) == 5 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<script" not in page and "<link" not in page
    assert "window 60\u201385 s" not in page  # axis text is inside the PNG, not the page
    md = (out / "report.md").read_text()
    assert all(f"(plots/{n})" in md for n in names)


def test_runs_with_the_same_directory_name_keep_apart(tmp_path):
    a = write_run(tmp_path / "machine1" / "run", CER_A)
    b = write_run(tmp_path / "machine2" / "run", CER_B, rig="other")
    status, out = run_report(tmp_path, [a, b])
    assert status == 0
    runs = (out / "report.md").read_text().split("## Runs")[1]
    assert "| machine1/run | cpu @ laptop |" in runs and "| machine2/run | cpu @ other |" in runs


def test_feature_extraction_time_is_shown_separately(tmp_path):
    a = write_run(tmp_path / "a", CER_A)
    recipe = (a / "recipe.yaml").read_text().replace("train: features/train", f"train: {tmp_path}/feats")
    (a / "recipe.yaml").write_text(recipe)
    (tmp_path / "feats").mkdir()
    for task, seconds in enumerate([90.0, 120.0]):  # two parallel tasks: 120 s of wall time
        (tmp_path / "feats" / f"timing-task{task}.json").write_text(json.dumps({"total_seconds": seconds}))
    b = write_run(tmp_path / "b", CER_A)
    (b / "extract.json").write_text(json.dumps({"seconds": 300.0}))
    status, out = run_report(tmp_path, [a, b])
    assert status == 0
    runs = (out / "report.md").read_text().split("## Runs")[1]
    assert "| 0.0 | 2.0 | 8 | epochs |" in runs and "| 0.0 | 5.0 | 8 | epochs |" in runs


def test_windowed_throughput_counts_evaluation_as_time_without_training():
    segments = [(0.0, 10.0, 2.0), (10.0, 20.0, 0.0), (20.0, 30.0, 4.0)]  # train, evaluate, train
    centres, rates = windowed_throughput(segments, window=10.0, spacing=5.0)
    # exact: whole numbers, so the BLAS product (its order chosen per CPU) rounds nothing; even 0.0 is exact
    assert centres.tolist() == [5.0, 10.0, 15.0, 20.0, 25.0]
    assert rates.tolist() == pytest.approx([2.0, 1.0, 0.0, 2.0, 4.0])
    assert windowed_throughput([])[0].size == 0


def test_a_setting_an_older_run_did_not_record_keeps_the_runs_apart(tmp_path):
    older, newer = write_run(tmp_path / "older", CER_A), write_run(tmp_path / "newer", CER_A)
    recipe = older / "recipe.yaml"
    text = recipe.read_text()
    assert "rnn_loop: fused" in text
    recipe.write_text(text.replace("  rnn_loop: fused\n", ""))
    status, out = run_report(tmp_path, [older, newer])
    assert status == 0
    md = (out / "report.md").read_text()
    assert "| cpu @ laptop [model.rnn_loop=?] |" in md and "| cpu @ laptop [model.rnn_loop=fused] |" in md
    assert "n=2" not in md and "not recorded in the run's recipe.yaml" in md


def test_final_accuracy_of_an_incomplete_set_says_how_many_utterances_were_lost(tmp_path):
    run = write_run(tmp_path / "gpu", CER_A)
    (run / "eval").mkdir()
    row = {"split": "dev-clean", "wer": 20.0, "cer": 8.0, "beam_width": 512, "utterances": 60}
    rows = [{**row, "skipped_utterances": 19, "damaged_shards": 1}, {**row, "split": "test-clean"}]
    (run / "eval" / "results.json").write_text(json.dumps(rows))
    status, out = run_report(tmp_path, [run])
    assert status == 0
    final = (out / "report.md").read_text().split("## Final accuracy")[1].split("##")[0]
    assert "| gpu | 20.00 (8.00, beam 512; 19 utt. lost) | 20.00 (8.00, beam 512) |" in final
    assert "'utt. lost': the set had damaged or missing shards" in final


def test_a_report_that_cannot_be_written_is_one_line_naming_the_file(tmp_path, capsys, runs):
    out = tmp_path / "out"
    (out / "report.md").mkdir(parents=True)  # a directory where the file goes: the rename fails
    status, _ = run_report(tmp_path, [runs["gpu"]])
    assert status == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"asr.report: {out / 'report.md'}: cannot write (Is a directory)")
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]  # the temporary was removed


def test_runs_table_shows_each_evaluated_set_last_and_median_of_last_3(tmp_path):
    cer = [40.0, 30.0, 20.0, 18.0]
    run = write_run(tmp_path / "a", cer, wer=[c * 2 for c in cer])
    seen = [35.0, 25.0, 15.0, 13.0]
    with (run / EVENT_LOG_NAME).open("a") as log:
        for epoch, value in enumerate(seen):  # eval.extra_sets events, after the TTA set's
            event = {"event": "eval", "split": "dev-seen", "extra": True, "epoch": epoch,
                     "elapsed": eval_times(4)[epoch], "wer": value * 2, "cer": value}  # fmt: skip
            log.write(json.dumps(event) + "\n")
    status, out = run_report(tmp_path, [run])
    assert status == 0
    runs = (out / "report.md").read_text().split("## Runs")[1].split("##")[0]
    dev = f"{36.0:.1f}/{18.0:.1f} ({40.0:.1f}/{20.0:.1f})"  # last 3 CER 30, 20, 18 -> median 20
    assert f"dev-seen {26.0:.1f}/{13.0:.1f} ({30.0:.1f}/{15.0:.1f})" in runs and dev in runs
    assert runs.index(dev) < runs.index("dev-seen")
    tta = (out / "report.md").read_text().split("## Runs")[0]
    assert "dev-seen" not in tta  # never a TTA set
    assert epoch_accuracy([]) == "\u2014"
