"""The fault kinds: their order (which is the order of the random draws), how each is planned and run."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

from tools.faults.checks import Trial
from tools.faults.fixtures import Context
from tools.faults.trials import (
    checkpoint_damage,
    corrupt_input,
    disk_full,
    events_cut,
    extract_kill,
    nan_inject,
    output_is_input,
    output_kill,
    run_lock,
    train_kill,
    worker_kill,
)


@dataclasses.dataclass(frozen=True)
class Kind:
    plan: Callable[[random.Random, bool], list[dict]]
    """Draws the trials' parameters (an empty list: none in this mode)."""
    run: Callable[[Context, list[dict]], list[Trial]]


KINDS: dict[str, Kind] = {
    "train-kill": Kind(train_kill.plan_train_kill, train_kill.train_kill),
    "extract-kill": Kind(extract_kill.plan_extract_kill, extract_kill.extract_kill),
    "checkpoint-damage": Kind(checkpoint_damage.plan_checkpoint_damage, checkpoint_damage.checkpoint_damage),
    "events-cut": Kind(events_cut.plan_events_cut, events_cut.events_cut),
    "disk-full": Kind(disk_full.plan_disk_full, disk_full.disk_full),
    "corrupt-input": Kind(corrupt_input.plan_corrupt_input, corrupt_input.corrupt_input),
    "worker-kill": Kind(worker_kill.plan_worker_kill, worker_kill.worker_kill),
    "nan-inject": Kind(nan_inject.plan_nan_inject, nan_inject.nan_inject),
    # kinds added later draw after the ones above, so that a seed still names the same trials for those
    "run-lock": Kind(run_lock.plan_run_lock, run_lock.run_lock),
    "export-kill": Kind(output_kill.plan_export_kill, output_kill.export_kill),
    "compress-kill": Kind(output_kill.plan_compress_kill, output_kill.compress_kill),
    "output-is-input": Kind(output_is_input.plan_output_is_input, output_is_input.output_is_input),
}
FAULTS = tuple(KINDS)
EXCLUSIVE = {"worker-kill"}
"""Faults whose trials run alone, after the others: two training processes and a heartbeat timeout."""
NO_REFERENCE = {"extract-kill", "nan-inject", "corrupt-input"}
"""Faults whose trials need no reference training run (only corrupt-input's asr.evaluate rows copy one)."""


def plan(seed: int, quick: bool) -> dict[str, list[dict]]:
    """Every trial's parameters, drawn from one ``random.Random(seed)`` in a fixed order for every fault,
    selected or not: a seed names the same trials in a full run, an ``--only`` run and any ``--jobs``.
    Times, offsets and counts that depend on a reference run are drawn as fractions and scaled then."""
    rng = random.Random(seed)
    planned = {fault: kind.plan(rng, quick) for fault, kind in KINDS.items()}
    return {fault: [{**spec, "index": i} for i, spec in enumerate(specs)] for fault, specs in planned.items()}
