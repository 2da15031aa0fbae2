"""Every record of an ``asr.extract`` output directory, for the readers that hold a whole split in memory
(evaluation, the LM build), with one policy for damaged and missing shards.

A shard can be damaged (a flipped byte, a copy cut short) or missing from its directory. By default the
whole records before the damage are used and each damaged or missing file gives one warning line naming it
with how many utterances were used and lost (:class:`asr.shards.ShardDamage`, the line training prints
too): one bad file out of hundreds should not throw away an evaluation or an LM build, and the count says
how incomplete the result is. ``strict`` stops at the first one instead, with one line
(:class:`ShardReaderError`), for runs whose figures must cover the whole set.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from asr.shards import (
    MANIFEST,
    ShardDamage,
    ShardDirectoryError,
    ShardError,
    decode_utterance,
    listed_utterances,
    missing_shards,
    read_manifest,
    read_records,
)


class ShardReaderError(ValueError):
    """A shard directory that cannot be read under the chosen policy; one line starting with the key."""


class ShardReader:
    """The shard files of one directory, read record by record under the damage policy.

    ``key`` (a command-line option or recipe key) starts every message. Missing files are known when the
    directory is opened, damage only once :meth:`records` reaches it; :attr:`damage` holds both.
    """

    def __init__(self, shard_dir: str | os.PathLike, key: str, strict: bool = False):
        self.shard_dir = Path(shard_dir)
        self.key = key
        self.strict = strict
        self.damage: list[ShardDamage] = []
        try:
            self.manifest, self.files = read_manifest(self.shard_dir, key, allow_missing=True)
        except ShardDirectoryError as error:
            raise ShardReaderError(str(error)) from None
        self._listed = listed_utterances(self.manifest)
        for path in missing_shards(self.shard_dir, self.manifest):
            self._damaged(path, f"missing (listed in {MANIFEST})", None)

    def records(self) -> Iterator[bytes]:
        """Serialized records of every readable file, in order; stops at damage per the policy."""
        for path in self.files:
            try:
                yield from read_records(path)
            except ShardError as error:
                self._damaged(path, error.reason, error.records)

    def utterances(self) -> Iterator[dict]:
        """Utterances as :func:`asr.shards.decode_utterance` gives them, from :meth:`records`."""
        for data in self.records():
            try:
                yield decode_utterance(data)
            except (ValueError, KeyError, IndexError) as error:  # a whole record that is no Example
                message = f"{self.key}: {self.shard_dir}: a record is not an utterance ({error})"
                raise ShardReaderError(message) from None

    @property
    def lost(self) -> int:
        """Utterances lost to damaged or missing files (those the manifest counts)."""
        return sum(d.lost or 0 for d in self.damage)

    def warnings(self) -> list[str]:
        return [d.describe(self.key) for d in self.damage]

    def _damaged(self, path: Path, reason: str, read: int | None) -> None:
        """Note the damage (``read``: whole records before it; None: the file is missing); strict: stop."""
        if self.strict:
            after = "" if read is None else f" after {read} whole records"
            raise ShardReaderError(f"{self.key}: {path}: {reason}{after} (--strict)")
        self.damage.append(ShardDamage(str(path), reason, read or 0, self._listed.get(path.name)))
