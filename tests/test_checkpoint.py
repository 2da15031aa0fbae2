"""Checkpoints: recorded sizes and checksums, damage found on disk, fall-back to the newest valid one."""

import json

import keras
import numpy as np
import pytest

from asr import checkpoint as ckpt


def make_checkpointer(run_dir, keep=3, seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    return ckpt.Checkpointer(run_dir, keep, model=model), model


def save_three(run_dir):
    checkpointer, model = make_checkpointer(run_dir)
    weights = {}
    for step in (1, 2, 3):
        model.layers[0].kernel.assign(np.full((4, 3), step, np.float32))
        checkpointer.save(step, {"progress": {"step": step}})
        weights[step] = np.asarray(model.layers[0].kernel)
    return weights


def restore_into_fresh_model(run_dir):
    checkpointer, model = make_checkpointer(run_dir, seed=1)
    warnings = []
    info, state = ckpt.restore_newest(ckpt.list_checkpoints(run_dir), checkpointer.restore, warnings.append)
    return info, state, np.asarray(model.layers[0].kernel), warnings


def data_file(run_dir, step):
    (path,) = (run_dir / "checkpoints").glob(f"ckpt-{step}.data-*")
    return path


def test_state_records_every_file_and_an_intact_checkpoint_restores(tmp_path):
    weights = save_three(tmp_path)
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest.step == 3 and set(latest.state["files"]) == {"ckpt-3.index", data_file(tmp_path, 3).name}
    assert ckpt.damage(latest) is None
    info, state, kernel, warnings = restore_into_fresh_model(tmp_path)
    assert info.step == 3 and state["progress"] == {"step": 3} and warnings == []
    assert np.array_equal(kernel, weights[3])  # the same bytes read back


@pytest.mark.parametrize(
    ("harm", "problem"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[:40]), "has 40 bytes"),
        (lambda p: p.write_bytes(b""), "has 0 bytes"),
        (lambda p: p.write_bytes(bytes(b ^ 0xFF for b in p.read_bytes())), "does not match its checksum"),
        (lambda p: p.unlink(), "is missing"),
    ],
    ids=["cut", "emptied", "flipped", "deleted"],
)
def test_damaged_latest_falls_back_to_the_newest_valid_with_one_warning_naming_both(tmp_path, harm, problem):
    weights = save_three(tmp_path)
    harm(data_file(tmp_path, 3))
    info, _, kernel, warnings = restore_into_fresh_model(tmp_path)
    assert info.step == 2 and np.array_equal(kernel, weights[2])
    assert len(warnings) == 1 and warnings[0].startswith("ckpt-3 (") and problem in warnings[0]
    assert "using the older ckpt-2" in warnings[0]


def test_an_emptied_index_is_damage_too(tmp_path):
    save_three(tmp_path)
    (tmp_path / "checkpoints" / "ckpt-3.index").write_bytes(b"")
    info, *_ = restore_into_fresh_model(tmp_path)
    assert info.step == 2


def test_no_valid_checkpoint_is_one_line_naming_each(tmp_path):
    save_three(tmp_path)
    for step in (1, 2, 3):
        data_file(tmp_path, step).write_bytes(b"")
    with pytest.raises(ckpt.NoValidCheckpointError) as raised:
        restore_into_fresh_model(tmp_path)
    message = str(raised.value)
    assert "\n" not in message and "no usable checkpoint" in message
    assert all(f"ckpt-{step} (" in message for step in (1, 2, 3))


def test_a_checkpoint_without_recorded_files_is_checked_by_tensorflow_when_read(tmp_path):
    """Checkpoints written before sizes were recorded: TF's own per-tensor checksums catch damage."""
    save_three(tmp_path)
    state_file = tmp_path / "checkpoints" / "ckpt-3.json"
    state = json.loads(state_file.read_text())
    del state["files"]
    state_file.write_text(json.dumps(state))
    data = data_file(tmp_path, 3)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    info, _, _, warnings = restore_into_fresh_model(tmp_path)
    assert info.step == 2 and "ckpt-3" in warnings[0]


def test_a_model_of_another_shape_is_a_mismatch_not_damage(tmp_path):
    save_three(tmp_path)
    keras.utils.set_random_seed(0)
    other = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    checkpointer = ckpt.Checkpointer(tmp_path, 3, model=other)
    with pytest.raises(ckpt.CheckpointMismatchError, match="ckpt-3: does not match this model"):
        ckpt.restore_newest(ckpt.list_checkpoints(tmp_path), checkpointer.restore, print)


def test_leftovers_of_a_killed_save_are_removed_and_never_listed(tmp_path):
    checkpointer, _ = make_checkpointer(tmp_path)
    checkpointer.save(1, {})
    directory = tmp_path / "checkpoints"
    (directory / "ckpt-2.tmp-999.index").write_bytes(b"x")
    (directory / "ckpt-2.tmp-999_temp").mkdir()
    (directory / "ckpt-2.json.tmp-999").write_text("{")
    assert [c.step for c in ckpt.list_checkpoints(tmp_path)] == [1]
    checkpointer.remove_leftovers()
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        ["ckpt-1.index", "ckpt-1.json", data_file(tmp_path, 1).name]
    )


def test_saving_the_same_step_again_and_pruning(tmp_path):
    checkpointer, _ = make_checkpointer(tmp_path, keep=2)
    for step in (1, 2, 2, 3):
        checkpointer.save(step, {"n": step})
    listed = ckpt.list_checkpoints(tmp_path)
    assert [c.step for c in listed] == [2, 3] and all(ckpt.damage(c) is None for c in listed)
    assert not list((tmp_path / "checkpoints").glob("ckpt-1*"))
