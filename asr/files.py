"""Files that are either whole or absent, and write failures as one line naming the path.

Every file the pipeline writes (shards, sidecars, manifests, checkpoint states, run recipes, evaluation
results, reports) goes through :func:`atomic_write`: the bytes go to ``NAME.tmp-<pid>`` beside ``NAME``
and are renamed over it only once complete, so a reader, a kill -9 or a full disk never leaves a
half-written ``NAME`` and never damages the previous one. When the write fails (no space left, a
file-size limit, a read-only directory) the temporary file is removed and :class:`WriteError` says
which path and why, in one line, for the entry point to print. With ``fsync=True`` the bytes reach the
device before the rename and the directory entry after it, so a power cut leaves the old or the new file.

A stage that writes a whole directory (an export, a compressed run) fills ``OUT.tmp-<pid>/`` and moves it
into place with :func:`directory_in_place`; a rerun removes what a killed run of the same output left
(:func:`clear_leftovers`). :func:`refuse_overlap` is the one check that an output is not, does not contain
and does not lie inside one of the command's inputs, which ``--force`` would otherwise replace.

:func:`read_json` is the one JSON reader: it returns ``default`` for a missing or unreadable file
(callers that must report the problem use :func:`load_json`, whose error names the file).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import glob
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

TEMPORARY_MARK = ".tmp-"
"""Temporary files are ``NAME.tmp-<pid>``; a leftover (after a kill -9) matches ``*.tmp-*``."""
OLD_MARK = ".old-"
"""An output moved aside while its replacement is renamed into place (only where the file system cannot
swap two directories atomically): ``NAME.old-<pid>``."""
CRC_CHUNK = 1 << 22


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


def error_line(error: Exception, path: str | os.PathLike = "") -> str:
    """The one line a command prints for an error that stops it: the message of the pipeline's own errors
    (:class:`WriteError`, :class:`DirectoryExistsError`, ``ValueError`` subclasses), :func:`os_error_line`
    for another OS error (``path`` when it names no file)."""
    if isinstance(error, OSError) and not isinstance(error, (WriteError, DirectoryExistsError)):
        return os_error_line(error, path)
    return str(error)


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
    before the rename and the directory's new entry after it (for files a power cut must not lose: shards,
    checkpoint states). OS errors are raised as :class:`WriteError` naming ``path``.
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
        if fsync:
            fsync_directory(path.parent)
    except OSError as error:
        _remove(temporary)
        raise (error if isinstance(error, WriteError) else WriteError(path, error)) from None
    except BaseException:
        _remove(temporary)
        raise


def _remove(path: Path) -> None:
    with suppress(OSError):
        path.unlink(missing_ok=True)


def fsync_directory(directory: str | os.PathLike) -> None:
    """Force ``directory``'s entries (a rename into it) to the device. File systems that cannot sync a
    directory (EINVAL) need no such sync."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def file_crc32c(path: str | os.PathLike) -> int:
    """CRC32C of a file's bytes (hardware-accelerated: ~1 ms per MB or less), read in 4 MiB chunks."""
    import google_crc32c

    checksum = google_crc32c.Checksum()
    with open(path, "rb") as handle:
        while chunk := handle.read(CRC_CHUNK):
            checksum.update(chunk)
    return int.from_bytes(checksum.digest(), "big")


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


_interrupted = [False]


@contextmanager
def interrupts_recorded() -> Iterator[None]:
    """Ctrl-C that is never lost while the block runs: SIGINT raises ``KeyboardInterrupt`` as usual and is
    also recorded, so that an interrupt swallowed by a finalizer (Python ignores exceptions raised inside
    ``__del__``, where TensorFlow runs code) still stops the stage at its next :func:`check_interrupted`
    (:func:`directory_in_place` checks before it moves an output into place). Such a swallowed interrupt is
    not reported either (Python's "Exception ignored in ..." traceback): it is the one the stage reports in
    one line. Outside the main thread (where Python delivers no signal) it does nothing."""
    import signal
    import sys
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def record(signum, frame):
        _interrupted[0] = True
        raise KeyboardInterrupt

    def unraisable(report) -> None:
        if not (_interrupted[0] and issubclass(report.exc_type, KeyboardInterrupt)):
            previous_hook(report)

    _interrupted[0] = False
    previous, previous_hook = signal.signal(signal.SIGINT, record), sys.unraisablehook
    sys.unraisablehook = unraisable
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = previous_hook
        _interrupted[0] = False


def check_interrupted() -> None:
    """``KeyboardInterrupt`` if Ctrl-C came inside :func:`interrupts_recorded` (even if swallowed since)."""
    if _interrupted[0]:
        raise KeyboardInterrupt


class DirectoryExistsError(FileExistsError):
    """An output directory that exists and may not be replaced; ``str()`` is one line naming it."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "directory exists"


class OverlapError(ValueError):
    """An output that is, contains or lies inside one of the command's inputs; ``str()`` is one line."""


def refuse_existing(out: Path, force: bool) -> None:
    """:class:`DirectoryExistsError` if output directory ``out`` exists and ``force`` is not given (entry
    points call it before long work, :func:`directory_in_place` again at the end)."""
    if out.exists() and not force:
        raise DirectoryExistsError(f"{out}: exists (use --force to replace it)")


def refuse_overlap(
    out: str | os.PathLike,
    inputs: Mapping[str, str | os.PathLike] | Iterable[str | os.PathLike],
    option: str = "--out",
) -> None:
    """:class:`OverlapError` when output ``out`` (given as ``option``) is, contains or lies inside one of
    ``inputs`` (a mapping ``{how the command names it: path}``, e.g. ``{"--run": run_dir}``, or paths).

    Checked before any work and whatever ``--force`` says: replacing ``out`` would delete the input. Paths
    are compared resolved (``..``, ``.``, symbolic links, a relative spelling) and, for what exists, as the
    same file (``os.path.samefile``: bind mounts, hard-linked files, case-insensitive file systems).
    """
    named = inputs.items() if isinstance(inputs, Mapping) else ((str(p), p) for p in inputs)
    target = _resolved(out)
    for name, path in named:
        source = _resolved(path)
        label = name if name == str(path) else f"{name} {path}"
        if _same(target, source):
            relation = f"is the input {label}"
        elif any(_same(parent, source) for parent in target.parents):
            relation = f"lies inside the input {label}"
        elif any(_same(parent, target) for parent in source.parents):
            relation = f"contains the input {label}"
        else:
            continue
        raise OverlapError(f"{option} {out}: {relation}; an output may not be, contain or lie inside an "
                           "input (--force included): choose another path")  # fmt: skip


def _resolved(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(Path(path).expanduser())).resolve()


def _same(a: Path, b: Path) -> bool:
    if a == b:
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def _leftover_pid(path: Path, out: Path) -> tuple[str, int] | None:
    """``(mark, pid)`` when ``path`` is ``OUT.tmp-<pid>`` or ``OUT.old-<pid>``, else None."""
    for mark in (TEMPORARY_MARK, OLD_MARK):
        prefix = f"{out.name}{mark}"
        if path.name.startswith(prefix) and path.name[len(prefix) :].isdigit():
            return mark, int(path.name[len(prefix) :])
    return None


def writer_alive(pid: int, since: float) -> bool:
    """Whether process ``pid`` is running and may have written a leftover last modified at ``since`` (epoch
    seconds): a process started after that is another one that reuses the number; a zombie is dead."""
    if pid == os.getpid():
        return True
    import psutil

    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and process.create_time() <= since + 1.0
    except psutil.Error:
        return False


def clear_leftovers(out: Path) -> list[Path]:
    """Remove what killed writers of ``out`` left beside it (``OUT.tmp-<pid>``, ``OUT.old-<pid>`` whose
    process is gone); returns what was removed. An ``OUT.old-<pid>`` while ``OUT`` is missing is the
    previous output, caught between two renames: it is put back as ``OUT`` instead."""
    removed = []
    for path in sorted(out.parent.glob(f"{glob.escape(out.name)}.*-*")):
        found = _leftover_pid(path, out)
        try:
            if found is None or writer_alive(found[1], path.lstat().st_mtime):
                continue
        except FileNotFoundError:  # removed meanwhile
            continue
        if found[0] == OLD_MARK and not out.exists():
            os.replace(path, out)
            continue
        _remove_tree(path)
        removed.append(path)
    return removed


def _remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        _remove(path)


@contextmanager
def directory_in_place(out: Path, force: bool) -> Iterator[Path]:
    """A temporary directory beside ``out`` to fill: moved into place as ``out`` when the block ends without
    error, removed in every case, so an interrupted stage never leaves a half-written ``out``.

    Leftovers of killed writers of the same ``out`` are removed first (:func:`clear_leftovers`). An
    existing ``out`` is replaced only with ``force`` (otherwise :class:`DirectoryExistsError`): the two are
    swapped in one atomic rename where the file system can (Linux ``renameat2(RENAME_EXCHANGE)``), so a
    reader or a kill -9 sees the whole old or the whole new ``out``, never neither; elsewhere the old one is
    moved aside first and put back if the new one cannot be moved in. The files and the rename are forced
    to the device (fsync), so a power cut leaves one of the two as well. An OS error names ``out`` (the
    file under it), not the temporary name.
    """
    out = Path(out)
    temporary = temporary_name(out)
    try:
        clear_leftovers(out)
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
    except OSError as error:
        raise WriteError(out, error) from None
    try:
        try:
            yield temporary
            check_interrupted()
            _sync_tree(temporary)
        except OSError as error:
            raise _outside_name(error, temporary, out) from None
        try:
            _move_into_place(temporary, out, force)
        except DirectoryExistsError:
            raise
        except OSError as error:
            raise WriteError(out, error) from None
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _outside_name(error: OSError, temporary: Path, out: Path) -> OSError:
    """``error`` as a :class:`WriteError` naming the path under ``out`` that the temporary one stands for;
    unchanged when it is about a path outside the temporary directory (an input)."""
    path = error.path if isinstance(error, WriteError) else error.filename
    if path is None:  # a write() that failed names no file: it was one under the temporary directory
        return WriteError(out, error)
    try:
        inside = Path(path).relative_to(temporary)
    except ValueError:
        return error
    return WriteError(out / inside, error.cause if isinstance(error, WriteError) else error)


def _sync_tree(directory: Path) -> None:
    """fsync every file and directory under ``directory`` (before it is renamed into place)."""
    for path in sorted(directory.rglob("*"), reverse=True):
        if path.is_file() and not path.is_symlink():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        elif path.is_dir():
            fsync_directory(path)
    fsync_directory(directory)


def _move_into_place(temporary: Path, out: Path, force: bool) -> None:
    refuse_existing(out, force)
    if not out.exists():
        os.rename(temporary, out)
    elif _exchange(temporary, out):
        pass  # the temporary name now holds the old output, which the caller removes
    else:
        old = out.with_name(f"{out.name}{OLD_MARK}{os.getpid()}")
        os.replace(out, old)
        try:
            os.replace(temporary, out)
        except BaseException:
            os.replace(old, out)
            raise
        _remove_tree(old)
    fsync_directory(out.parent)


RENAME_EXCHANGE = 2
AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap paths ``a`` and ``b`` in one atomic rename (Linux >= 3.15 ``renameat2``); False where the C
    library, the kernel or the file system cannot."""
    function = getattr(_libc(), "renameat2", None)
    if function is None:
        return False
    if function(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


@functools.cache
def _libc():
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover - no C library to load
        return None
