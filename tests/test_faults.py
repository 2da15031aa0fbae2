"""``python -m tools.faults --quick`` as CI runs it: the real commands under injected faults, every trial
passed.

The harness (the package ``tools/faults``) runs ``asr.extract``, ``asr.train``, ``asr.evaluate``, ``asr.lm``,
``asr.report``, ``asr.export``, ``asr.compress`` and ``asr.transcribe`` as processes on ``data/tiny`` and
checks what each fault must leave behind (see its docstring); here only its verdict is read: exit status 0,
and a summary row per fault kind of the quick mode with every trial passed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
QUICK_FAULTS = ("train-kill", "extract-kill", "checkpoint-damage", "events-cut", "disk-full", "corrupt-input",
                "nan-inject", "run-lock", "output-is-input")  # fmt: skip
"""Every fault kind but worker-kill (two multi-worker starts do not fit the quick mode's budget) and
export-kill / compress-kill (two exports per trial)."""
SUMMARY_ROW = re.compile(r"^\| ([a-z-]+) \| (\d+) \| (\d+) \|$", re.MULTILINE)


@pytest.mark.slow
def test_quick_fault_injection_passes_every_trial(tmp_path):
    rows_file = tmp_path / "rows.json"
    command = [sys.executable, "-m", "tools.faults", "--quick", "--work", tmp_path / "work",
               "--json", rows_file]  # fmt: skip
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    table = result.stdout[-8000:]
    summary = {fault: (int(n), int(passed)) for fault, n, passed in SUMMARY_ROW.findall(result.stdout)}
    for fault in QUICK_FAULTS:
        trials, passed = summary.get(fault, (0, 0))
        assert trials >= 1 and passed == trials, f"{fault}: {passed} of {trials} trials passed\n{table}"
    assert result.returncode == 0, table + result.stderr[-2000:]
    rows = json.loads(rows_file.read_text())["rows"]
    assert {row["fault"] for row in rows} == set(QUICK_FAULTS)
    assert all(row["passed"] for row in rows)
    assert "total wall time" in result.stdout
