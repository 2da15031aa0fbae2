"""Running the pipeline's commands as processes: output captured to log files, whole process groups
killed, fail points and file-size limits put in their environment."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

REPO_ROOT = Path(__file__).resolve().parents[2]
WARNING_LINE = re.compile(r"\bwarning: ")
"""The pipeline's own warning lines (``asr.train: warning: ...``), not Python's ``...Warning:`` ones."""
FILE_SIZE_LIMIT = (
    "import os, resource, sys; n = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_FSIZE, (n, n)); os.execv(sys.argv[2], sys.argv[2:])"
)
"""Runs a command under RLIMIT_FSIZE (the thread-safe form of ``preexec_fn=setrlimit``: the harness runs
trials from threads). Python ignores SIGXFSZ and the exec keeps it ignored, so writes fail with EFBIG."""


@dataclasses.dataclass
class Finished:
    """A command's exit status (None: timed out, or still running when killed), output and wall time."""

    code: int | None
    stdout: str
    stderr: str
    seconds: float

    @property
    def lines(self) -> list[str]:
        """Non-empty stderr lines as a terminal shows them: a progress bar redrawn with ``\\r`` and erased
        (tqdm's ``leave=False``) is not a line."""
        visible = (line.rsplit("\r", 1)[-1] for line in self.stderr.split("\n"))
        return [line for line in visible if line.strip()]

    @property
    def last_line(self) -> str:
        return self.lines[-1].strip() if self.lines else ""

    @property
    def warnings(self) -> list[str]:
        return [line for line in self.lines if WARNING_LINE.search(line)]

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.stderr

    def describe(self) -> str:
        """``exit N: <last stderr line>`` (shortened), for a row."""
        code = "timed out" if self.code is None else f"exit {self.code}"
        return f"{code}: {shorten(self.last_line)}" if self.last_line else code


LIVE: set[Process] = set()
LIVE_LOCK = threading.Lock()
STOPPING = threading.Event()
"""Set on Ctrl-C: no new process starts, the running ones are killed."""


class Stopped(Exception):
    """The harness is stopping (Ctrl-C)."""


class Process:
    """A command started in a session of its own (so that its workers can be found and killed), its output
    copied to ``LOG.out``/``LOG.err`` by the harness: through pipes, so that a file-size limit on the
    command (RLIMIT_FSIZE) does not apply to its own stderr."""

    def __init__(self, command: Sequence[str], log: Path, env: dict[str, str] | None = None):
        if STOPPING.is_set():
            raise Stopped("interrupted")
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.command = [str(c) for c in command]
        self.started = time.monotonic()
        self.popen = subprocess.Popen(
            self.command,
            cwd=REPO_ROOT,
            env=environment(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._copies = [
            threading.Thread(target=_copy, args=(pipe, Path(f"{log}{suffix}")), daemon=True)
            for pipe, suffix in ((self.popen.stdout, ".out"), (self.popen.stderr, ".err"))
        ]
        for copy in self._copies:
            copy.start()
        with LIVE_LOCK:
            LIVE.add(self)

    @property
    def code(self) -> int | None:
        return self.popen.poll()

    def wait(self, seconds: float) -> bool:
        """Wait until ``seconds`` after the start; True when the process has exited."""
        return self.wait_more(self.started + seconds - time.monotonic())

    def wait_more(self, seconds: float) -> bool:
        """Wait up to ``seconds`` from now; True when the process has exited."""
        try:
            self.popen.wait(timeout=max(0.0, seconds))
            return True
        except subprocess.TimeoutExpired:
            return False

    def kill(self) -> None:
        """SIGKILL the process itself (its workers, if any, live on as orphans)."""
        with contextlib.suppress(ProcessLookupError):
            self.popen.kill()
        self.popen.wait()

    def signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signum)

    def group_alive(self) -> bool:
        try:
            os.killpg(self.popen.pid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def end_group(self, grace: float = 0.0) -> bool:
        """Wait up to ``grace`` seconds for the whole group (orphaned workers included), then SIGKILL it;
        True when some of it was still alive then."""
        deadline = time.monotonic() + grace
        while self.group_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        lingering = self.group_alive()
        self.signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        with LIVE_LOCK:
            LIVE.discard(self)
        return lingering

    def finish(self) -> Finished:
        for copy in self._copies:  # orphaned workers may hold the pipes open: what they wrote so far
            copy.join(timeout=5)
        read = lambda suffix: Path(f"{self.log}{suffix}").read_bytes().decode(errors="replace")  # noqa: E731
        return Finished(self.popen.poll(), read(".out"), read(".err"), time.monotonic() - self.started)


def _copy(pipe: IO[bytes], path: Path) -> None:
    with open(path, "wb") as out:
        while chunk := pipe.read1(1 << 16):
            out.write(chunk)
            out.flush()


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The harness's environment without fail points, plus ``extra``. A process that crashes (SIGSEGV,
    SIGABRT) writes its Python stack to its ``.err`` log (``PYTHONFAULTHANDLER``)."""
    env = {key: value for key, value in os.environ.items() if key != "ASR_FAILPOINTS"}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("PYTHONFAULTHANDLER", "1")
    return {**env, **(extra or {})}


def failpoint(spec: str) -> dict[str, str]:
    return {"ASR_FAILPOINTS": spec}


def run(
    command: Sequence[str], log: Path, env: dict[str, str] | None = None, timeout: float = 900
) -> Finished:
    """Run a command to its end (SIGKILLed with its group after ``timeout`` s: exit status None)."""
    process = Process(command, log, env)
    exited = process.wait(timeout)
    process.end_group()
    finished = process.finish()
    return finished if exited else dataclasses.replace(finished, code=None)


def module(name: str, *args: object) -> list[str]:
    return [sys.executable, "-m", name, *map(str, args)]


def with_file_size_limit(command: Sequence[str], limit: int) -> list[str]:
    return [sys.executable, "-c", FILE_SIZE_LIMIT, str(limit), *map(str, command)]


def shorten(text: str, width: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def free_ports(count: int) -> list[int]:
    """Ports free on localhost now, for a multi-worker cluster's TF_CONFIG (tests/test_train.py uses it)."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def kill_everything() -> None:
    """SIGKILL every process group the harness started that may still run."""
    with LIVE_LOCK:
        live = list(LIVE)
    for process in live:
        process.signal_group(signal.SIGKILL)
