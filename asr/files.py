"""Files that are either whole or absent, and write failures as one line naming the path.

Every file the pipeline writes (shards, sidecars, manifests, checkpoint states, run recipes, evaluation
results, reports) goes through :func:`atomic_write`: the bytes go to ``NAME.tmp-<pid>`` beside ``NAME``
and are renamed over it only once complete, so a reader, a kill -9 or a full disk never leaves a
half-written ``NAME`` and never damages the previous one. When the write fails (no space left, a
file-size limit, a read-only directory) the temporary file is removed and :class:`WriteError` says
which path and why, in one line, for the entry point to print.

:func:`read_json` is the one JSON reader: it returns ``default`` for a missing or unreadable file
(callers that must report the problem use :func:`load_json`, whose error names the file).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

TEMPORARY_MARK = ".tmp-"
"""Temporary files are ``NAME.tmp-<pid>``; a leftover (after a kill -9) matches ``*.tmp-*``."""


class WriteError(OSError):
    """A file could not be written (disk full, size limit, permissions); ``str()`` is one line."""

    def __init__(self, path: str | os.PathLike, error: OSError):
        super().__init__(error.errno, error.strerror)
        self.path = Path(path)
        self.cause = error

    def __reduce__(self):  # rebuilt from its arguments, so it crosses a process pool intact
        return type(self), (self.path, self.cause)

    def __str__(self) -> str:
        reason = self.cause.strerror or type(self.cause).__name__
        return f"{self.path}: cannot write ({reason}); what was written before is intact, rerun when fixed"


def os_error_line(error: OSError, path: str | os.PathLike = "") -> str:
    """``PATH: reason`` for a one-line error message: the file the OS names (else ``path``) and why."""
    return f"{error.filename or path}: {error.strerror or error}"


class JsonError(ValueError):
    """A JSON file that is missing or not valid JSON; the message names it."""


def temporary_name(path: str | os.PathLike) -> Path:
    """Where :func:`atomic_write` puts ``path``'s bytes until they are complete."""
    path = Path(path)
    return path.with_name(f"{path.name}{TEMPORARY_MARK}{os.getpid()}")


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", fsync: bool = False) -> Iterator[IO]:
    """Open ``NAME.tmp-<pid>`` for writing; on success rename it over ``path``, on any error remove it.

    ``mode`` is ``"w"`` (UTF-8 text) or ``"wb"``. ``fsync=True`` also forces the bytes to the device
    before the rename (for files a power cut must not lose: shards, checkpoint states). OS errors are
    raised as :class:`WriteError` naming ``path``.
    """
    path = Path(path)
    temporary = temporary_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, mode, encoding=None if "b" in mode else "utf-8") as handle:
            yield handle
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as error:
        _remove(temporary)
        raise (error if isinstance(error, WriteError) else WriteError(path, error)) from None
    except BaseException:
        _remove(temporary)
        raise


def _remove(path: Path) -> None:
    with suppress(OSError):
        path.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str, fsync: bool = False) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path, "w", fsync) as handle:
        handle.write(text)


def write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = False) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, "wb", fsync) as handle:
        handle.write(data)


def write_json(
    path: str | os.PathLike, value: Any, indent: int | None = 1, sort_keys: bool = False, fsync: bool = False
) -> None:
    """Write ``value`` as JSON (one trailing newline) to ``path`` atomically."""
    write_text(path, json.dumps(value, indent=indent, sort_keys=sort_keys) + "\n", fsync)


def load_json(path: str | os.PathLike) -> Any:
    """The JSON value in ``path``; raises :class:`JsonError` naming the file when missing or invalid."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise JsonError(f"{path}: missing") from None
    except OSError as error:
        raise JsonError(f"{path}: unreadable ({error.strerror or error})") from None
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
        raise JsonError(f"{path}: not valid JSON ({str(error).splitlines()[0]})") from None


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    """The JSON value in ``path``, or ``default`` when it is missing or not valid JSON."""
    try:
        return load_json(path)
    except JsonError:
        return default


def remove_temporaries(directory: str | os.PathLike, pattern: str = "*") -> list[Path]:
    """Delete leftover ``NAME.tmp-<pid>`` files of ``pattern`` in ``directory`` (a killed writer's);
    returns what was removed. Only for directories one process writes at a time."""
    directory = Path(directory)
    removed = []
    for leftover in directory.glob(f"{pattern}{TEMPORARY_MARK}*"):
        if leftover.is_file():
            _remove(leftover)
            removed.append(leftover)
    return removed


class DirectoryExistsError(FileExistsError):
    """An output directory that exists and may not be replaced; ``str()`` is one line naming it."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "directory exists"


def refuse_existing(out: Path, force: bool) -> None:
    """:class:`DirectoryExistsError` if output directory ``out`` exists and ``force`` is not given (entry
    points call it before long work, :func:`directory_in_place` again at the end)."""
    if out.exists() and not force:
        raise DirectoryExistsError(f"{out}: exists (use --force to replace it)")


@contextmanager
def directory_in_place(out: Path, force: bool) -> Iterator[Path]:
    """A temporary directory beside ``out`` to fill: renamed to ``out`` when the block ends without error,
    removed in every case, so an interrupted stage never leaves a half-written ``out``. An existing
    ``out`` is replaced only with ``force`` (moved aside, then removed, so a reader never sees half of
    either); otherwise :class:`DirectoryExistsError`."""
    temporary = temporary_name(out)
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    try:
        yield temporary
        _move_into_place(temporary, out, force)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _move_into_place(temporary: Path, out: Path, force: bool) -> None:
    refuse_existing(out, force)
    if out.exists():
        old = out.with_name(f"{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(temporary, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(temporary, out)
