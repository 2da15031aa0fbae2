"""Damaging files as a disk or a careless copy would, and a full disk (tmpfs or RLIMIT_FSIZE)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from tools.faults.checks import kib
from tools.faults.outputs import Saved
from tools.faults.process import with_file_size_limit

TMPFS_BYTES = 8 << 20


def flip_bytes(path: Path, fractions: Sequence[float], start: int = 0) -> str:
    """Invert the bytes at ``fractions`` of ``path`` after offset ``start`` (size kept); says which."""
    data = bytearray(path.read_bytes())
    positions = sorted({start + min(int(f * (len(data) - start)), len(data) - start - 1) for f in fractions})
    for position in positions:
        data[position] ^= 0xFF
    path.write_bytes(bytes(data))
    return (
        f"{path.name}: {len(positions)} byte(s) inverted at {', '.join(map(str, positions))} of {len(data)}"
    )


def cut_file(path: Path, fraction: float, start: int = 0) -> str:
    """Truncate ``path`` at ``fraction`` of its bytes after ``start``; says where."""
    size = path.stat().st_size
    keep = start + int(fraction * (size - start))
    with open(path, "r+b") as handle:
        handle.truncate(keep)
    return f"{path.name} cut to {keep} of {size} bytes"


def flac_audio_start(path: Path) -> int:
    """Offset of a FLAC file's first audio frame (after ``fLaC`` and its metadata blocks)."""
    data = path.read_bytes()
    offset = 4
    while offset + 4 <= len(data):
        header = data[offset]
        offset += 4 + int.from_bytes(data[offset + 1 : offset + 4], "big")
        if header & 0x80:  # last metadata block
            break
    return offset


def damage_checkpoint(saved: Saved, kind: str, fractions: Sequence[float]) -> str:
    """Damage one checkpoint's TF files as a disk or a careless copy would; says what was done."""
    (data,) = sorted(saved.prefix.parent.glob(f"{saved.name}.data-*"))
    index = saved.prefix.parent / f"{saved.name}.index"
    if kind == "truncate-data":
        return cut_file(data, fractions[0])
    if kind == "empty-index":
        index.write_bytes(b"")
        return f"{index.name} emptied"
    if kind == "flip-data":
        return flip_bytes(data, fractions[:3])
    data.unlink()
    return f"{data.name} deleted"


# --------------------------------------------------------------------------- a full disk


def disk_full_method(work: Path) -> str:
    """``tmpfs`` when this process may mount one (root, and ``mount -t tmpfs`` works), else ``rlimit``."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        return "rlimit"
    probe = work / "tmpfs-probe"
    probe.mkdir(parents=True, exist_ok=True)
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)], capture_output=True
        ).returncode
        == 0
    )
    if mounted:
        subprocess.run(["umount", str(probe)], capture_output=True)
    probe.rmdir()
    return "tmpfs" if mounted else "rlimit"


MOUNTS: set[Path] = set()


class FullDisk:
    """Where a write must fail: a small tmpfs at ``mount`` filled by a filler file to leave ``leave`` bytes
    (a real ENOSPC), or, without tmpfs, RLIMIT_FSIZE ``limit`` on every file the command writes (EFBIG).

    ``command()`` wraps a command for the fault; ``lift()`` deletes the filler (or drops the limit); the
    tmpfs is unmounted when the ``with`` block ends.
    """

    def __init__(self, method: str, mount: Path, leave: int, limit: int):
        self.method, self.mount, self.leave, self.limit = method, mount, leave, limit
        self.filler = mount / "filler"
        self.lifted = False

    def __enter__(self) -> FullDisk:
        self.mount.mkdir(parents=True, exist_ok=True)
        if self.method == "tmpfs":
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(self.mount)],
                check=True,
                capture_output=True,
            )
            MOUNTS.add(self.mount)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.method == "tmpfs":
            unmount(self.mount)

    def fill(self) -> None:
        """Fill the tmpfs to leave ``leave`` bytes free (nothing to do under RLIMIT)."""
        if self.method != "tmpfs":
            return
        stat = os.statvfs(self.mount)
        size = max(0, stat.f_bavail * stat.f_frsize - self.leave)
        with open(self.filler, "wb") as handle:
            os.posix_fallocate(handle.fileno(), 0, max(size, 1))

    def free(self) -> int:
        stat = os.statvfs(self.mount)
        return stat.f_bavail * stat.f_frsize

    def command(self, command: Sequence[str]) -> list[str]:
        if self.method == "rlimit" and not self.lifted:
            return with_file_size_limit(command, self.limit)
        return list(map(str, command))

    def lift(self) -> None:
        self.lifted = True
        self.filler.unlink(missing_ok=True)

    def describe(self, what: str) -> str:
        """Where the fault was put and how it was targeted, for the row."""
        if self.method == "tmpfs":
            return (
                f"{what} alone on a tmpfs of {TMPFS_BYTES >> 20} MiB, {kib(self.free())} left free (filler)"
            )
        return f"{what}: RLIMIT_FSIZE={self.limit} B on every file the command writes (tmpfs not used)"


def unmount(path: Path) -> None:
    result = subprocess.run(["umount", str(path)], capture_output=True)
    if result.returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
    MOUNTS.discard(path)
