"""Reading what the programs wrote (event logs, checkpoints, shards) from the files themselves, and
snapshots to tell what changed."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from asr.runlock import HOLDER_FILE, LOCK_FILE


def read_event_log(run_dir: Path) -> tuple[list[dict], bool]:
    """The events of ``RUN/events.jsonl`` that parse, and whether its last line is cut (no newline)."""
    path = run_dir / "events.jsonl"
    if not path.is_file():
        return [], False
    data = path.read_bytes()
    events = []
    for line in data.decode(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and "event" in record:
                events.append(record)
    return events, bool(data) and not data.endswith(b"\n")


def step_losses(events: Sequence[dict]) -> list[tuple[int, float]]:
    return [(int(e["step"]), float(e["loss"])) for e in events if e.get("event") == "step"]


@dataclasses.dataclass(frozen=True)
class Saved:
    """A complete checkpoint as a resumed run sees it: ``ckpt-N.json`` readable, ``ckpt-N.index`` present."""

    name: str
    step: int
    state: dict
    prefix: Path

    @property
    def elapsed(self) -> float:
        return float(self.state.get("clock", {}).get("elapsed", 0.0))


def checkpoints(run_dir: Path) -> list[Saved]:
    """Complete checkpoints of a run, oldest first, read from the files (not through asr.checkpoint)."""
    found = []
    directory = run_dir / "checkpoints"
    for state_file in directory.glob("ckpt-*.json") if directory.is_dir() else ():
        match = re.fullmatch(r"ckpt-(\d+)", state_file.stem)
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            continue
        if match and isinstance(state, dict) and state_file.with_suffix(".index").is_file():
            found.append(Saved(state_file.stem, int(match.group(1)), state, state_file.with_suffix("")))
    return sorted(found, key=lambda saved: saved.step)


def leftovers(directory: Path) -> list[str]:
    """Temporary files a killed or failed writer left (``*.tmp-*``, TF's ``*_temp``)."""
    found = []
    for _, dirs, files in os.walk(directory, followlinks=True):
        found += [name for name in (*dirs, *files) if ".tmp-" in name or name.endswith("_temp")]
    return sorted(found)


def snapshot(directory: Path) -> dict[str, tuple[int, str]]:
    """``{relative path: (bytes, sha256)}`` of every file under ``directory`` (symlinks followed)."""
    files = {}
    for root, _, names in os.walk(directory, followlinks=True):
        for name in names:
            path = Path(root) / name
            data = path.read_bytes()
            files[str(path.relative_to(directory))] = (len(data), hashlib.sha256(data).hexdigest())
    return files


def changed_since(
    before: dict[str, tuple[int, str]],
    directory: Path,
    appended: Sequence[str] = (),
    prunable: str | None = None,
    rewritten: Sequence[str] = (),
) -> list[str]:
    """Files of ``before`` that are no longer what they were: ``appended`` files must still start with their
    old bytes, files matching ``prunable`` may be gone (old checkpoints the program pruned), ``rewritten``
    ones are not compared (a rerun rewrites ``recipe.yaml`` with its own ``--set`` values)."""
    changed = []
    for name, (size, digest) in sorted(before.items()):
        path = directory / name
        if name in rewritten:
            continue
        if not path.is_file():
            if not (prunable and re.match(prunable, name)):
                changed.append(f"{name} removed")
            continue
        data = path.read_bytes()
        data = data[:size] if name in appended else data
        if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
            changed.append(f"{name} changed")
    return changed


def lock_holder(run_dir: Path) -> dict | None:
    """The holder record beside a run directory's lock (``train.lock.json``: pid, host, started, command),
    or None when there is none (never taken, or released)."""
    return json_or_none(run_dir / HOLDER_FILE)


def lock_files(run_dir: Path) -> list[str]:
    """The lock and its holder record, where present (a run that ended normally leaves neither)."""
    return [name for name in (LOCK_FILE, HOLDER_FILE) if (run_dir / name).exists()]


def output_leftovers(out: Path) -> list[str]:
    """Temporaries of an output directory a killed or failed writer left: ``OUT.tmp-*`` and ``OUT.old-*``
    beside it, ``*.tmp-*`` inside it."""
    beside = sorted(p.name for p in out.parent.glob(f"{out.name}.*") if re.search(r"\.(tmp|old)-", p.name))
    return beside + (leftovers(out) if out.is_dir() else [])


def without(record: dict, *keys: str) -> dict:
    return {k: v for k, v in record.items() if k not in keys}


def compare_extraction(out: Path, reference: Path) -> list[str]:
    """Differences from a reference extraction: every shard byte for byte, sidecars and manifest.json
    without their timing fields (``worker_seconds``, ``worker_cpu_seconds``; ``extraction_seconds``,
    ``split``: tests/test_extract.py ``manifest_without_timing``)."""
    problems = []
    shards = sorted(p.name for p in out.glob("shard-*"))
    expected = sorted(p.name for p in reference.glob("shard-*"))
    if shards != expected:
        problems.append(f"shard files {shards} instead of {expected}")
    for name in set(shards) & set(expected):
        if (out / name).read_bytes() != (reference / name).read_bytes():
            problems.append(f"{name} differs")
    for sidecar in sorted((reference / "sidecars").glob("*.json")):
        mine = out / "sidecars" / sidecar.name
        timing = ("worker_seconds", "worker_cpu_seconds")
        if not mine.is_file() or without(json.loads(mine.read_text()), *timing) != without(
            json.loads(sidecar.read_text()), *timing
        ):
            problems.append(f"sidecars/{sidecar.name} differs")
    manifest = out / "manifest.json"
    timing = ("extraction_seconds", "split")
    if not manifest.is_file():
        problems.append("no manifest.json")
    elif without(json.loads(manifest.read_text()), *timing) != without(
        json.loads((reference / "manifest.json").read_text()), *timing
    ):
        problems.append("manifest.json differs")
    return problems


def copy_run(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination, symlinks=True)
    return destination


def json_or_none(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
