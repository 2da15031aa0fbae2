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

import gzip
import os
import struct
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Literal

import google_crc32c
import numpy as np

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


def read_manifest(shard_dir: str | os.PathLike, key: str) -> tuple[dict, list[Path]]:
    """The manifest of an ``asr.extract`` output directory and its shard files that hold utterances.

    Every reader of shards (training, evaluation, the LM build) checks a directory the same way: it
    exists, its manifest is readable, its alphabet is :mod:`asr.text`'s, the shards it lists are all
    there and hold at least one utterance. Raises :class:`ShardDirectoryError` whose message starts
    with ``key`` (a recipe key or a command-line option) and names the path.
    """
    import json

    from asr.text import SYMBOLS

    shard_dir = Path(shard_dir)
    if not shard_dir.is_dir():
        raise ShardDirectoryError(f"{key}: {shard_dir}: no such shard directory (run asr.extract first)")
    path = shard_dir / MANIFEST
    if not path.is_file():
        raise ShardDirectoryError(f"{key}: {shard_dir}: no {MANIFEST} (is it an asr.extract output?)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ShardDirectoryError(f"{key}: {path}: unreadable manifest ({error})") from None
    alphabet = manifest.get("alphabet")
    if alphabet is not None and list(alphabet) != list(SYMBOLS):
        raise ShardDirectoryError(
            f"{key}: {path}: alphabet {''.join(alphabet)!r} differs from this code's {''.join(SYMBOLS)!r}"
        )
    listed = manifest.get("shards")
    if listed is None:  # a manifest without a shard list: every shard file beside it
        files = sorted({f for suffix in SUFFIXES.values() for f in shard_dir.glob(f"*{suffix}")})
    else:
        files = [shard_dir / entry["file"] for entry in listed if entry.get("utterances", 1)]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ShardDirectoryError(f"{key}: {path}: lists shards that are missing: {', '.join(missing[:3])}")
    if not files:
        raise ShardDirectoryError(f"{key}: {shard_dir}: no utterances in its shards (empty split)")
    return manifest, files


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
    """Write serialized records as one TFRecord file, atomically; returns the file size in bytes.

    Writes ``NAME.tmp-<pid>``, fsyncs it and renames it to ``NAME``: an interrupted write leaves
    no partial shard under the real name. Records are compressed one by one (no joined copy).
    """
    path = Path(path)
    temporary = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    compressor = _compressor(compression, level, strategy)
    try:
        with open(temporary, "wb") as handle:
            for data in records:
                header, footer = record_frames(data)
                for piece in (header, data, footer):
                    handle.write(compressor.compress(piece) if compressor else piece)
            if compressor:
                handle.write(compressor.flush())
            handle.flush()
            os.fsync(handle.fileno())
        size = temporary.stat().st_size
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return size


# --------------------------------------------------------------------------- reading (tests, tools)


def compression_of(path: Path) -> Compression:
    """The compression a shard file name implies (by its suffix)."""
    name = Path(path).name
    for compression, suffix in SUFFIXES.items():
        if compression != "none" and name.endswith(suffix):
            return compression  # type: ignore[return-value]
    return "none"


def read_records(path: Path) -> Iterator[bytes]:
    """Serialized records of a TFRecord file, checking both CRCs; compression from the suffix."""
    raw = Path(path).read_bytes()
    compression = compression_of(path)
    if compression == "gzip":
        raw = gzip.decompress(raw)
    elif compression == "zlib":
        raw = zlib.decompress(raw)
    offset = 0
    while offset < len(raw):
        length_bytes = raw[offset : offset + 8]
        (length,) = struct.unpack("<Q", length_bytes)
        (length_crc,) = struct.unpack("<I", raw[offset + 8 : offset + 12])
        data = raw[offset + 12 : offset + 12 + length]
        (data_crc,) = struct.unpack("<I", raw[offset + 12 + length : offset + 16 + length])
        if length_crc != masked_crc32c(length_bytes) or data_crc != masked_crc32c(data):
            raise ValueError(f"{path}: CRC mismatch in the record at byte {offset}")
        yield data
        offset += 16 + length


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


def read_utterances(path: Path) -> Iterator[dict]:
    """Utterances of one shard: utt_id, text, duration (s), labels, num_frames, features (T, 93)."""
    for data in read_records(path):
        example = decode_example(data)
        frames = int(example["num_frames"][0])
        yield {
            "utt_id": example["utt_id"][0].decode(),
            "text": example["text"][0].decode(),
            "duration": float(example["duration"][0]),
            "labels": np.asarray(example["labels"]),
            "num_frames": frames,
            "features": np.asarray(example["features"]).reshape(frames, -1),
        }
