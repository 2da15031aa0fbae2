"""One owner per run directory: the lock ``asr.train`` holds on ``RUN_DIR`` while it trains.

Two training processes in one run directory (a job submitted twice, a rerun while the first still runs)
would both write checkpoints, remove each other's temporary files and append to one event log (two
evaluations per epoch, step events twice: a corrupt TTA series). :class:`RunLock` makes the second one
stop before it writes anything, with one line naming the holder.

The lock is a POSIX record lock (``fcntl.lockf``) on ``RUN_DIR/train.lock``, taken without waiting:

- the kernel releases it when its process ends, however it ends (kill -9 included), so a lock left by a
  killed run is simply taken over by the next one; nothing stale has to be guessed from a pid;
- unlike ``flock``, a record lock belongs to the process, not to the open file: the beam-search workers
  that ``asr.train`` forks (:mod:`asr.decoding`) do not inherit it, so an orphaned worker that outlives a
  killed trainer does not keep the run locked;
- it also works on NFS (lockd), where a run directory shared by several machines lives.

Beside it, ``RUN_DIR/train.lock.json`` names the holder (pid, host, start time, command) for the second
process's message; it is written once the lock is held, and both files are removed when the holder
releases the lock normally (a killed holder leaves them; the next holder names the one it took over from).

Only a multi-worker run's chief takes the lock: the other workers write to private scratch directories
(:func:`asr.checkpoint.worker_scratch`). Readers (``asr.evaluate --watch``, ``asr.report``) never take it:
they read a run in progress.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import os
import socket
from datetime import datetime
from pathlib import Path
from typing import Any

from asr.files import WriteError, read_json, remove_temporaries, write_json

LOCK_FILE = "train.lock"
HOLDER_FILE = "train.lock.json"
_held: set[str] = set()
"""Run directories (real paths) this process holds: a record lock never conflicts with its own process,
and closing a second descriptor of the lock file would drop the first one's lock."""


class RunInUseError(RuntimeError):
    """The run directory is held by another live process; ``str()`` is one line naming it."""

    def __init__(self, run_dir: Path, holder: Holder | None):
        self.run_dir, self.holder = run_dir, holder
        super().__init__(str(self))

    def __str__(self) -> str:
        who = self.holder.describe() if self.holder else "another process (its holder record is unreadable)"
        return f"{self.run_dir}: in use by {who}; wait for it to end or stop it, or choose another --run-dir"


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds a run directory: what ``train.lock.json`` records."""

    pid: int
    host: str
    started: str
    """Local time with its UTC offset, to the second (ISO 8601)."""
    command: str

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} since {self.started} ({self.command})"

    @classmethod
    def here(cls, command: str) -> Holder:
        started = datetime.now().astimezone().isoformat(timespec="seconds")
        return cls(os.getpid(), socket.gethostname(), started, " ".join(command.split()))

    @classmethod
    def from_json(cls, value: Any) -> Holder | None:
        try:
            return cls(int(value["pid"]), str(value["host"]), str(value["started"]), str(value["command"]))
        except (TypeError, KeyError, ValueError):
            return None


def read_holder(run_dir: str | os.PathLike) -> Holder | None:
    """The holder recorded in ``RUN_DIR/train.lock.json`` (None when missing or unreadable). It is the
    holder of the lock only while the lock is held: a killed holder's record stays behind."""
    return Holder.from_json(read_json(Path(run_dir) / HOLDER_FILE))


class RunLock:
    """The lock of one run directory for this process: ``with RunLock(run_dir, command):``.

    :meth:`acquire` creates the run directory if needed, takes the lock or raises :class:`RunInUseError`
    (nothing in the directory touched), then records this process as the holder. ``taken_over`` is the
    record of a previous holder that ended without releasing (killed), else None. :meth:`release`
    removes both files and the directories :meth:`acquire` created, if they are still empty.
    """

    def __init__(self, run_dir: str | os.PathLike, command: str):
        self.run_dir = Path(run_dir)
        self.command = command
        self.taken_over: Holder | None = None
        self.locked = False
        """False also when the file system cannot lock (``ENOLCK``): see :attr:`unsupported`."""
        self.unsupported: str | None = None
        self._fd: int | None = None
        self._created: list[Path] = []
        self._key = ""

    @property
    def lock_path(self) -> Path:
        return self.run_dir / LOCK_FILE

    @property
    def holder_path(self) -> Path:
        return self.run_dir / HOLDER_FILE

    def acquire(self) -> RunLock:
        self._key = os.path.realpath(self.run_dir)
        if self._key in _held:
            raise RunInUseError(self.run_dir, read_holder(self.run_dir))
        self._created = _missing_directories(self.run_dir)
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            while not self._lock_once():
                pass
        except RunInUseError:
            self._remove_created()
            raise
        except OSError as error:
            self._remove_created()
            raise WriteError(self.lock_path, error) from None
        if self.locked:
            _held.add(self._key)
            try:
                self._record()
            except BaseException:
                self.release()
                raise
        return self

    def _record(self) -> None:
        """Note a previous holder that never released (killed), then record this process as the holder."""
        previous = read_holder(self.run_dir)
        self.taken_over = previous if previous and previous.pid != os.getpid() else None
        remove_temporaries(self.run_dir, HOLDER_FILE)  # a killed holder's half-written record
        write_json(self.holder_path, dataclasses.asdict(Holder.here(self.command)))

    def _lock_once(self) -> bool:
        """One attempt; False when the file was replaced meanwhile (a holder releasing it: try again)."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EACCES, errno.EAGAIN):
                raise RunInUseError(self.run_dir, read_holder(self.run_dir)) from None
            if error.errno == errno.ENOLCK:
                self.unsupported = f"{self.lock_path}: cannot lock ({error.strerror})"
                return True
            raise
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(self.lock_path))
        except FileNotFoundError:
            same = False
        if not same:  # locked a file its holder unlinked while releasing: lock the one now in place
            os.close(fd)
            return False
        self._fd, self.locked = fd, True
        return True

    def release(self) -> None:
        """Remove the holder record and the lock file, then unlock (in that order: a process that opened the
        old file meanwhile finds it unlinked and retries on a new one)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.holder_path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.lock_path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd, self.locked = None, False
        _held.discard(self._key)
        self._remove_created()

    def _remove_created(self) -> None:
        for directory in reversed(self._created):
            with contextlib.suppress(OSError):
                directory.rmdir()  # only when empty: nothing was written there after all
        self._created = []

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _missing_directories(path: Path) -> list[Path]:
    """``path`` and its parents that do not exist yet, outermost first."""
    missing = []
    for directory in (path, *path.parents):
        if directory.exists():
            break
        missing.append(directory)
    return missing[::-1]
