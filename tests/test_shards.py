"""Hand-encoded Examples and TFRecord files, read back with plain TensorFlow."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from asr import shards

FEATURE_SPEC = {
    "features": tf.io.VarLenFeature(tf.float32),
    "num_frames": tf.io.FixedLenFeature([], tf.int64),
    "labels": tf.io.VarLenFeature(tf.int64),
    "text": tf.io.FixedLenFeature([], tf.string),
    "utt_id": tf.io.FixedLenFeature([], tf.string),
    "duration": tf.io.FixedLenFeature([], tf.float32),
}


def sample_utterances(count: int = 3):
    rng = np.random.default_rng(3)
    return [
        {
            "features": rng.normal(size=(11 + 7 * i, 93)).astype(np.float32),
            "labels": [8, 5, 12, 28, 12, 15] + [0] * i,
            "text": "hel lo" + " " * i,
            "utt_id": f"19-198-{i:04d}",
            "duration": 0.5 + i,
        }
        for i in range(count)
    ]


def serialize(utterance) -> bytes:
    return shards.utterance_example(
        utterance["features"],
        utterance["labels"],
        utterance["text"],
        utterance["utt_id"],
        utterance["duration"],
    )


def test_example_bytes_equal_tensorflows_deterministic_serialization():
    utterance = sample_utterances(1)[0]
    expected = tf.train.Example(
        features=tf.train.Features(
            feature={
                "features": tf.train.Feature(
                    float_list=tf.train.FloatList(value=utterance["features"].ravel())
                ),
                "num_frames": tf.train.Feature(int64_list=tf.train.Int64List(value=[11])),
                "labels": tf.train.Feature(int64_list=tf.train.Int64List(value=utterance["labels"])),
                "text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"hel lo"])),
                "utt_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"19-198-0000"])),
                "duration": tf.train.Feature(float_list=tf.train.FloatList(value=[0.5])),
            }
        )
    )
    assert serialize(utterance) == expected.SerializeToString(deterministic=True)


@pytest.mark.parametrize("compression", ["gzip", "zlib", "none"])
@pytest.mark.parametrize("strategy", ["default", "huffman"])
def test_plain_tf_data_reads_shards_exactly(tmp_path, compression, strategy):
    utterances = sample_utterances()
    path = tmp_path / f"shard-00000{shards.SUFFIXES[compression]}"
    size = shards.write_shard(path, map(serialize, utterances), compression, 6, strategy)
    assert size == path.stat().st_size
    assert [p.name for p in tmp_path.iterdir()] == [path.name]

    dataset = tf.data.TFRecordDataset(str(path), compression_type=shards.TF_COMPRESSION_TYPE[compression])
    parsed = [tf.io.parse_single_example(record, FEATURE_SPEC) for record in dataset]
    assert len(parsed) == len(utterances)
    for example, utterance in zip(parsed, utterances, strict=True):
        frames = int(example["num_frames"])
        values = tf.sparse.to_dense(example["features"]).numpy().reshape(frames, 93)
        np.testing.assert_array_equal(values, utterance["features"])
        assert tf.sparse.to_dense(example["labels"]).numpy().tolist() == utterance["labels"]
        assert example["text"].numpy().decode() == utterance["text"]
        assert example["utt_id"].numpy().decode() == utterance["utt_id"]
        assert float(example["duration"]) == pytest.approx(utterance["duration"])

    ours = list(shards.read_utterances(path))
    assert [u["utt_id"] for u in ours] == [u["utt_id"] for u in utterances]
    np.testing.assert_array_equal(ours[2]["features"], utterances[2]["features"])
    assert ours[2]["labels"].tolist() == utterances[2]["labels"]


def test_uncompressed_file_equals_tensorflows_writer(tmp_path):
    records = [serialize(u) for u in sample_utterances()]
    ours = tmp_path / "ours.tfrecord"
    theirs = tmp_path / "theirs.tfrecord"
    shards.write_shard(ours, records, "none")
    with tf.io.TFRecordWriter(str(theirs)) as writer:
        for record in records:
            writer.write(record)
    assert ours.read_bytes() == theirs.read_bytes()


def test_compressed_output_is_reproducible(tmp_path):
    records = [serialize(u) for u in sample_utterances()]
    first, second = tmp_path / "a.tfrecord.gz", tmp_path / "b.tfrecord.gz"
    shards.write_shard(first, records, "gzip", 6, "huffman")
    shards.write_shard(second, iter(records), "gzip", 6, "huffman")
    assert first.read_bytes() == second.read_bytes()


def test_failed_write_leaves_neither_shard_nor_temporary(tmp_path):
    def broken():
        yield serialize(sample_utterances(1)[0])
        raise RuntimeError("decoder failed")

    with pytest.raises(RuntimeError):
        shards.write_shard(tmp_path / "shard-00000.tfrecord.gz", broken())
    assert list(tmp_path.iterdir()) == []


def test_reader_detects_corruption(tmp_path):
    path = tmp_path / "shard.tfrecord"
    shards.write_shard(path, [serialize(sample_utterances(1)[0])], "none")
    data = bytearray(path.read_bytes())
    data[40] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="CRC"):
        list(shards.read_records(path))


def _read_until_damage(path):
    """Records read before the reader raised, and the error (None for an intact file)."""
    records = []
    try:
        for record in shards.read_records(path):
            records.append(record)
    except shards.ShardError as error:
        return records, error
    return records, None


@pytest.mark.parametrize("compression", ["gzip", "zlib", "none"])
def test_cut_shard_yields_the_whole_records_before_the_cut_then_a_one_line_error(tmp_path, compression):
    records = [serialize(u) for u in sample_utterances(3)]
    path = tmp_path / f"shard{shards.SUFFIXES[compression]}"
    shards.write_shard(path, records, compression)
    whole = path.read_bytes()
    for cut in (len(whole) - 3, len(whole) // 2, 10):
        path.write_bytes(whole[:cut])
        read, error = _read_until_damage(path)
        assert error is not None, cut
        assert read == records[: len(read)] and error.records == len(read)
        assert len(read) < 3 or cut == len(whole) - 3  # a cut GZIP trailer: every record whole, still damage
        assert str(path) in str(error) and "\n" not in str(error)
    path.write_bytes(whole)
    assert _read_until_damage(path) == (records, None)


def test_flipped_bytes_near_the_start_of_a_gzip_shard_are_a_shard_error(tmp_path):
    """The damage asr.evaluate and asr.lm used to crash on with zlib.error."""
    path = tmp_path / "shard.tfrecord.gz"
    shards.write_shard(path, [serialize(u) for u in sample_utterances(3)], "gzip")
    data = bytearray(path.read_bytes())
    for offset in range(12, 40):
        data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    read, error = _read_until_damage(path)
    assert error is not None and error.records == len(read) == 0


def test_empty_shard_file_has_no_records_and_no_error(tmp_path):
    for compression in ("gzip", "none"):
        path = tmp_path / f"empty{shards.SUFFIXES[compression]}"
        shards.write_shard(path, [], compression)
        assert _read_until_damage(path) == ([], None)
