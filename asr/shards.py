"""TFRecord shards of ``tf.train.Example`` records, written and read without TensorFlow.

Extraction workers must start fast, and importing TensorFlow takes ~5 s, so the two tiny
formats involved are encoded here by hand:

* ``tf.train.Example`` is a protobuf ``Example{features: Features{feature: map<string, Feature>}}``
  where a ``Feature`` holds one of ``bytes_list`` (field 1), ``float_list`` (2, packed float32)
  or ``int64_list`` (3, packed varints). Map entries are written in sorted key order so the
  bytes are deterministic.
* A TFRecord file is a sequence of ``uint64 length | uint32 masked_crc32c(length) | data |
  uint32 masked_crc32c(data)``, little-endian, optionally compressed as a whole (GZIP or ZLIB).

Plain ``tf.data.TFRecordDataset(path, compression_type="GZIP")`` with
``tf.io.parse_single_example`` reads these files (``tests/test_shards.py`` checks it).
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import google_crc32c
import numpy as np

from asr.files import JsonError, atomic_write, load_json

Compression = Literal["gzip", "zlib", "none"]
Strategy = Literal["default", "filtered", "huffman", "rle"]

SUFFIXES: dict[str, str] = {"gzip": ".tfrecord.gz", "zlib": ".tfrecord.zz", "none": ".tfrecord"}
"""Shard file suffix for each ``--compression``."""
TF_COMPRESSION_TYPE: dict[str, str] = {"gzip": "GZIP", "zlib": "ZLIB", "none": ""}
"""The ``compression_type`` argument ``tf.data.TFRecordDataset`` needs for each compression."""
DEFAULT_LEVEL = 6
"""zlib's (and TensorFlow's) default compression level."""
STRATEGIES: dict[str, int] = {
    "default": zlib.Z_DEFAULT_STRATEGY,
    "filtered": zlib.Z_FILTERED,
    "huffman": zlib.Z_HUFFMAN_ONLY,
    "rle": zlib.Z_RLE,
}
"""zlib strategies. ``huffman`` skips LZ77 string matching, which finds almost nothing in float32
features (they shrink ~10 % either way), and is ~3.5x faster than ``default`` at level 6."""
_WBITS = {"gzip": 31, "zlib": 15}
_CRC_MASK_DELTA = 0xA282EAD8


MANIFEST = "manifest.json"
"""What ``asr.extract`` writes beside its shards: parameters, alphabet, counts, mean/std, shard list."""


class ShardDirectoryError(ValueError):
    """A directory that is not a usable ``asr.extract`` output; the message names the key and the path."""


def read_manifest(
    shard_dir: str | os.PathLike, key: str, allow_missing: bool = False
) -> tuple[dict, list[Path]]:
    """The manifest of an ``asr.extract`` output directory and its shard files that hold utterances.

    Every reader of shards (training, evaluation, the LM build) checks a directory the same way: it
    exists, its manifest is readable, its alphabet is :mod:`asr.text`'s, the shards it lists are all
    there and hold at least one utterance. Raises :class:`ShardDirectoryError` whose message starts
    with ``key`` (a recipe key or a command-line option) and names the path. ``allow_missing``: listed
    shards that are missing are left out instead (:func:`missing_shards` names them) as long as one is left.
    """
    from asr.text import SYMBOLS

    shard_dir = Path(shard_dir)
    if not shard_dir.is_dir():
        raise ShardDirectoryError(f"{key}: {shard_dir}: no such shard directory (run asr.extract first)")
    path = shard_dir / MANIFEST
    if not path.is_file():
        raise ShardDirectoryError(f"{key}: {shard_dir}: no {MANIFEST} (is it an asr.extract output?)")
    try:
        manifest = load_json(path)
    except JsonError as error:
        raise ShardDirectoryError(f"{key}: {error}") from None
    if not isinstance(manifest, dict):
        raise ShardDirectoryError(f"{key}: {path}: not a manifest (expected a JSON object)")
    alphabet = manifest.get("alphabet")
    if alphabet is not None and list(alphabet) != list(SYMBOLS):
        raise ShardDirectoryError(
            f"{key}: {path}: alphabet {''.join(alphabet)!r} differs from this code's {''.join(SYMBOLS)!r}"
        )
    files = listed_shards(shard_dir, manifest)
    missing = missing_shards(shard_dir, manifest)
    if files and len(missing) == len(files):
        raise ShardDirectoryError(f"{key}: {shard_dir}: every shard its {MANIFEST} lists is missing")
    if missing and not allow_missing:
        raise ShardDirectoryError(
            f"{key}: {path}: lists shards that are missing: {', '.join(map(str, missing[:3]))}"
        )
    files = [f for f in files if f not in missing]
    if not files:
        raise ShardDirectoryError(f"{key}: {shard_dir}: no utterances in its shards (empty split)")
    return manifest, files


def listed_shards(shard_dir: Path, manifest: dict) -> list[Path]:
    """Shard files that hold utterances by the manifest (every shard file beside it if it lists none)."""
    listed = manifest.get("shards")
    if listed is None:
        return sorted({f for suffix in SUFFIXES.values() for f in shard_dir.glob(f"*{suffix}")})
    return [shard_dir / entry["file"] for entry in listed if entry.get("utterances", 1)]


def missing_shards(shard_dir: Path, manifest: dict) -> list[Path]:
    """Shard files the manifest lists with utterances that are not on disk."""
    return [f for f in listed_shards(shard_dir, manifest) if not f.is_file()]


# --------------------------------------------------------------------------- protobuf encoding


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _bytes_feature(values: Sequence[bytes]) -> bytes:
    return _length_delimited(1, b"".join(_length_delimited(1, v) for v in values))


def _float_feature(values: np.ndarray) -> bytes:
    packed = np.ascontiguousarray(values, dtype="<f4").tobytes()
    return _length_delimited(2, _length_delimited(1, packed) if packed else b"")


def _int64_feature(values: Iterable[int]) -> bytes:
    packed = b"".join(_varint(int(v)) for v in values)
    return _length_delimited(3, _length_delimited(1, packed) if packed else b"")


def encode_example(feature_map: Mapping[str, bytes]) -> bytes:
    """Serialize a ``tf.train.Example`` from already-encoded ``Feature`` messages (sorted keys)."""
    entries = b"".join(
        _length_delimited(1, _length_delimited(1, key.encode()) + _length_delimited(2, feature_map[key]))
        for key in sorted(feature_map)
    )
    return _length_delimited(1, entries)


def utterance_example(
    features: np.ndarray, labels: Sequence[int], text: str, utt_id: str, duration: float
) -> bytes:
    """The serialized Example for one utterance.

    Keys: ``features`` (float_list, T×93 row-major), ``num_frames`` (int64), ``labels``
    (int64_list, alphabet ids), ``text`` (bytes, normalized transcript), ``utt_id`` (bytes),
    ``duration`` (float, seconds of 16 kHz audio).
    """
    return encode_example(
        {
            "features": _float_feature(features.reshape(-1)),
            "num_frames": _int64_feature([features.shape[0]]),
            "labels": _int64_feature(labels),
            "text": _bytes_feature([text.encode()]),
            "utt_id": _bytes_feature([utt_id.encode()]),
            "duration": _float_feature(np.array([duration], dtype=np.float32)),
        }
    )


# --------------------------------------------------------------------------- TFRecord framing


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC32C: rotate right by 15 bits, add a constant (mod 2**32)."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _CRC_MASK_DELTA) & 0xFFFFFFFF


def record_frames(data: bytes) -> tuple[bytes, bytes]:
    """The bytes that go before and after ``data`` in a TFRecord file (header, footer)."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)), struct.pack("<I", masked_crc32c(data))


def _compressor(compression: Compression, level: int, strategy: Strategy):
    if compression == "none":
        return None
    # zlib's gzip wrapper writes mtime 0 and no file name, so output is byte-for-byte reproducible.
    return zlib.compressobj(level, zlib.DEFLATED, _WBITS[compression], 8, STRATEGIES[strategy])


def write_shard(
    path: Path,
    records: Iterable[bytes],
    compression: Compression = "gzip",
    level: int = DEFAULT_LEVEL,
    strategy: Strategy = "default",
) -> int:
    """Write serialized records as one TFRecord file, atomically (:func:`asr.files.atomic_write`, fsynced);
    returns the file size in bytes. Records are compressed one by one (no joined copy)."""
    path = Path(path)
    compressor = _compressor(compression, level, strategy)
    with atomic_write(path, "wb", fsync=True) as handle:
        for data in records:
            header, footer = record_frames(data)
            for piece in (header, data, footer):
                handle.write(compressor.compress(piece) if compressor else piece)
        if compressor:
            handle.write(compressor.flush())
    return path.stat().st_size


# --------------------------------------------------------------------------- reading (tests, tools)


def compression_of(path: Path) -> Compression:
    """The compression a shard file name implies (by its suffix)."""
    name = Path(path).name
    for compression, suffix in SUFFIXES.items():
        if compression != "none" and name.endswith(suffix):
            return compression  # type: ignore[return-value]
    return "none"


class ShardError(ValueError):
    """A damaged shard: ``records`` whole records were read before the damage ``reason`` at ``offset``
    (bytes into the uncompressed stream). ``str()`` is one line naming the file."""

    def __init__(self, path: str | os.PathLike, records: int, offset: int, reason: str):
        super().__init__(f"{path}: {reason} after {records} whole records (byte {offset} of the records)")
        self.path = Path(path)
        self.records = records
        self.offset = offset
        self.reason = reason


READ_CHUNK = 1 << 20
"""Compressed bytes read at a time: a shard is never held whole in memory."""


def _uncompressed_chunks(path: Path, compression: Compression) -> Iterator[bytes]:
    """The shard's record bytes, decompressed as read; raises ``zlib.error`` or ``EOFError`` on damage."""
    wbits = _WBITS.get(compression)
    with open(path, "rb") as handle:
        if wbits is None:
            while chunk := handle.read(READ_CHUNK):
                yield chunk
            return
        inflater, fed = zlib.decompressobj(wbits), False
        while chunk := handle.read(READ_CHUNK):
            while chunk:
                fed = True
                yield inflater.decompress(chunk)
                chunk = b""
                if inflater.eof:  # the next GZIP member (concatenated files), if any
                    chunk = inflater.unused_data
                    inflater, fed = zlib.decompressobj(wbits), False
        if fed and not inflater.eof:
            raise EOFError("compressed stream ends early (truncated file)")


def read_records(path: Path) -> Iterator[bytes]:
    """Serialized records of a TFRecord file, streamed, checking both CRCs; compression from the suffix.

    Damage of any kind (a bad CRC, a cut file, a corrupt GZIP stream) raises :class:`ShardError` after the
    records before it were yielded, so a reader can keep them and say how many were lost.
    """
    path = Path(path)
    buffer = bytearray()
    records = offset = 0
    try:
        chunks = _uncompressed_chunks(path, compression_of(path))
        for chunk in chunks:
            buffer += chunk
            while len(buffer) >= 12:
                length_bytes = bytes(buffer[:8])
                (length,) = struct.unpack("<Q", length_bytes)
                (length_crc,) = struct.unpack("<I", buffer[8:12])
                if length_crc != masked_crc32c(length_bytes):
                    raise ShardError(path, records, offset, "CRC mismatch in a record length")
                if len(buffer) < 16 + length:
                    break
                data = bytes(buffer[12 : 12 + length])
                (data_crc,) = struct.unpack("<I", buffer[12 + length : 16 + length])
                if data_crc != masked_crc32c(data):
                    raise ShardError(path, records, offset, "CRC mismatch in a record")
                yield data
                del buffer[: 16 + length]
                records += 1
                offset += 16 + length
    except (zlib.error, EOFError) as error:
        raise ShardError(path, records, offset, f"corrupt compressed stream ({error})") from None
    except OSError as error:
        raise ShardError(path, records, offset, f"unreadable ({error.strerror or error})") from None
    if buffer:
        raise ShardError(path, records, offset, f"truncated: {len(buffer)} bytes of an incomplete record")


def _read_varint(buffer: bytes, offset: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buffer[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, offset


def _fields(buffer: bytes) -> Iterator[tuple[int, int, bytes | int]]:
    offset = 0
    while offset < len(buffer):
        key, offset = _read_varint(buffer, offset)
        field, wire = key >> 3, key & 7
        if wire == 2:
            size, offset = _read_varint(buffer, offset)
            yield field, wire, buffer[offset : offset + size]
            offset += size
        elif wire == 0:
            value, offset = _read_varint(buffer, offset)
            yield field, wire, value
        elif wire == 5:
            yield field, wire, buffer[offset : offset + 4]
            offset += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def _decode_feature(payload: bytes) -> list[bytes] | np.ndarray:
    for kind, _, body in _fields(payload):
        values = [value for _, _, value in _fields(body)]  # type: ignore[arg-type]
        if kind == 1:
            return values  # type: ignore[return-value]
        if kind == 2:
            return np.frombuffer(b"".join(values), dtype="<f4")  # type: ignore[arg-type]
        if kind == 3:
            numbers: list[int] = []
            for value in values:
                if isinstance(value, int):
                    numbers.append(value)
                    continue
                offset = 0
                while offset < len(value):
                    number, offset = _read_varint(value, offset)
                    numbers.append(number - (1 << 64) if number >= 1 << 63 else number)
            return np.array(numbers, dtype=np.int64)
    return []


def decode_example(data: bytes) -> dict[str, list[bytes] | np.ndarray]:
    """A serialized ``tf.train.Example`` as {key: list of bytes | float32 array | int64 array}."""
    result: dict[str, list[bytes] | np.ndarray] = {}
    for _, _, features in _fields(data):
        for _, _, entry in _fields(features):  # type: ignore[arg-type]
            parts = {field: value for field, _, value in _fields(entry)}  # type: ignore[arg-type]
            result[parts[1].decode()] = _decode_feature(parts.get(2, b""))  # type: ignore[union-attr,arg-type]
    return result


def decode_utterance(data: bytes) -> dict:
    """One serialized utterance: utt_id, text, duration (s), labels, num_frames, features (T, 93)."""
    example = decode_example(data)
    frames = int(example["num_frames"][0])
    return {
        "utt_id": example["utt_id"][0].decode(),
        "text": example["text"][0].decode(),
        "duration": float(example["duration"][0]),
        "labels": np.asarray(example["labels"]),
        "num_frames": frames,
        "features": np.asarray(example["features"]).reshape(frames, -1),
    }


def read_utterances(path: Path) -> Iterator[dict]:
    """Utterances of one shard (:func:`decode_utterance`); damage raises :class:`ShardError` after the
    utterances before it."""
    for data in read_records(path):
        yield decode_utterance(data)


@dataclass(frozen=True)
class ShardDamage:
    """A shard file read only up to its damage, or missing: ``used`` utterances were read, of ``listed``
    by the manifest (None when it does not say). Every reader reports damage with this one line."""

    file: str
    reason: str
    used: int
    listed: int | None

    @property
    def lost(self) -> int | None:
        return None if self.listed is None else max(self.listed - self.used, 0)

    def describe(self, key: str) -> str:
        lost = "an unknown number" if self.lost is None else str(self.lost)
        return f"{key}: {self.file}: {self.reason}; {self.used} of its utterances used, {lost} lost"


def listed_utterances(manifest: dict) -> dict[str, int]:
    """Utterances per shard file name, as the manifest lists them."""
    return {e["file"]: int(e["utterances"]) for e in manifest.get("shards") or [] if "utterances" in e}
