"""A trial's row in the table and the checks that decide whether it passed."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Trial:
    """One row of the table. ``passed`` only when every check of the trial held."""

    fault: str
    corpus: str
    where: str
    """Where the fault struck (the last event before a kill, the damaged file, the full filesystem)."""
    did: str
    """What the program did; failed checks follow ``FAILED:``."""
    lost: str = "—"
    """Work lost to the fault (and redone), or input lost (utterances not used)."""
    equal: str = "—"
    """Whether the outcome equals an uninterrupted run's, where the trial can tell."""
    passed: bool = False
    seconds: float = 0.0


class Checks:
    """The checks of one trial: what the program did (notes) and each check that failed."""

    def __init__(self) -> None:
        self.notes: list[str] = []
        self.failed: list[str] = []

    def note(self, text: str) -> None:
        self.notes.append(text)

    def expect(self, ok: object, failure: str) -> bool:
        if not ok:
            self.failed.append(failure)
        return bool(ok)

    def row(self, fault: str, corpus: str, where: str, lost: str = "—", equal: str = "—") -> Trial:
        did = "; ".join(self.notes) or "—"
        if self.failed:
            did += " — FAILED: " + "; ".join(self.failed)
        return Trial(fault, corpus, where, did, lost, equal, passed=not self.failed)


class SetupError(RuntimeError):
    """A shared fixture (shards, reference run) could not be made; every trial needing it fails."""


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def kib(n: int) -> str:
    return f"{n / 1024:.0f} KiB"
