"""Small helpers the command tests share (importable as ``helpers``: pytest puts ``tests/`` on the path)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path


def run_main(main: Callable[[list[str]], int], args: Sequence[object], capsys) -> tuple[int, list[str]]:
    """``main(args)`` in this process: its exit status (usage errors exit in argparse) and stderr lines."""
    try:
        status = main([str(a) for a in args])
    except SystemExit as stop:
        status = stop.code
    return status, capsys.readouterr().err.strip().splitlines()


def snapshot(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` and a hash of its bytes: a run left untouched has the same snapshot."""
    return {p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}  # fmt: skip


def beside(path: Path) -> list[str]:
    """Names in ``path``'s directory that start with its name (the output and any temporary of it)."""
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name))
