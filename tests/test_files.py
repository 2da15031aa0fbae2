"""Atomic writes: a file is whole or absent, the previous version survives a failure, errors are one line."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from asr import files


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "state.json"
    files.write_json(path, {"step": 1})
    files.write_json(path, {"step": 2})
    assert files.load_json(path) == {"step": 2}
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]


def test_an_error_inside_the_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "table.md"
    files.write_text(path, "old\n")
    with pytest.raises(RuntimeError), files.atomic_write(path) as handle:
        handle.write("half of the new")
        raise RuntimeError("killed")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.md"]


def test_a_write_over_the_size_limit_is_a_one_line_error_and_keeps_the_previous_file(tmp_path):
    """RLIMIT_FSIZE fails writes with EFBIG as a full disk fails them with ENOSPC (Python ignores SIGXFSZ)."""
    path = tmp_path / "results.json"
    files.write_text(path, "previous\n")
    script = f"""
import resource
from asr import files
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
try:
    files.write_bytes({str(path)!r}, b"x" * 5000)
except files.WriteError as error:
    print(error)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{path}: cannot write (File too large); what was written before is intact, rerun when fixed"
    ]
    assert path.read_text() == "previous\n"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_json_readers(tmp_path):
    good, bad, missing = tmp_path / "good.json", tmp_path / "bad.json", tmp_path / "missing.json"
    good.write_text('{"a": 1}')
    bad.write_text('{"a": ')
    assert files.read_json(good) == {"a": 1}
    assert files.read_json(bad, {}) == {} and files.read_json(missing) is None
    with pytest.raises(files.JsonError, match=f"{bad}: not valid JSON"):
        files.load_json(bad)
    with pytest.raises(files.JsonError, match=f"{missing}: missing"):
        files.load_json(missing)


def test_remove_temporaries_removes_only_leftovers(tmp_path):
    (tmp_path / "ckpt-4.json").write_text("{}")
    (tmp_path / "ckpt-8.json.tmp-1234").write_text("{")
    (tmp_path / "other.tmp-99").write_text("")
    removed = files.remove_temporaries(tmp_path, "ckpt-*")
    assert [p.name for p in removed] == ["ckpt-8.json.tmp-1234"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-4.json", "other.tmp-99"]


def dead_pid() -> int:
    """The number of a process that has ended (and been reaped)."""
    process = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                             text=True, check=True)  # fmt: skip
    return int(process.stdout)


def test_an_output_that_is_contains_or_lies_inside_an_input_is_refused_however_spelled(tmp_path, monkeypatch):
    run = tmp_path / "runs" / "cpu"
    (run / "checkpoints").mkdir(parents=True)
    (tmp_path / "link").symlink_to(run)
    monkeypatch.chdir(tmp_path)
    cases = {
        run: "is the input --run",
        tmp_path / "runs" / "." / "cpu" / "..": "contains the input --run",
        "runs/cpu/": "is the input --run",
        "runs/x/../cpu": "is the input --run",
        tmp_path / "link": "is the input --run",
        "link/export": "lies inside the input --run",
        run / "checkpoints" / "new": "lies inside the input --run",
        tmp_path: "contains the input --run",
    }
    for out, relation in cases.items():
        with pytest.raises(files.OverlapError) as caught:
            files.refuse_overlap(out, {"--run": run})
        message = str(caught.value)
        assert message.startswith(f"--out {out}: {relation} {run}; ") and "\n" not in message, message
    for out in (tmp_path / "runs" / "cpu2", tmp_path / "runs" / "other" / "cpu", "cpu"):
        files.refuse_overlap(out, {"--run": run})  # siblings, a shared prefix, a relative name elsewhere
    with pytest.raises(files.OverlapError, match=r"^--output x\.jsonl: is the input x\.jsonl; "):
        files.refuse_overlap("x.jsonl", ["talk.wav", "x.jsonl"], option="--output")


def test_a_rerun_removes_dead_writers_leftovers_and_keeps_live_ones(tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    dead, live = dead_pid(), subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for pid in (dead, live.pid):
            (tmp_path / f"export.tmp-{pid}").mkdir()
            (tmp_path / f"export.tmp-{pid}" / "model.tflite").write_bytes(b"half")
        (tmp_path / f"export.old-{dead}").mkdir()
        (tmp_path / "export.tmp-notapid").mkdir()
        (tmp_path / "exports.tmp-1").mkdir()  # another output's
        with files.directory_in_place(out, force=True) as temporary:
            (temporary / "a").write_text("new")
        assert [p.name for p in out.iterdir()] == ["a"]
        names = sorted(p.name for p in tmp_path.iterdir())
        assert names == ["export", f"export.tmp-{live.pid}", "export.tmp-notapid", "exports.tmp-1"]
    finally:
        live.kill()
        live.wait()


def test_an_old_output_caught_between_two_renames_is_put_back(tmp_path):
    """A kill -9 between moving the old output aside and moving the new one in (where the file system cannot
    swap two directories) leaves ``OUT.old-PID`` and no ``OUT``: the next writer restores it first."""
    out = tmp_path / "run-k8"
    old = tmp_path / f"run-k8.old-{dead_pid()}"
    old.mkdir()
    (old / "compress.json").write_text("{}")
    assert files.clear_leftovers(out) == []
    assert (out / "compress.json").read_text() == "{}" and not old.exists()
    with pytest.raises(files.DirectoryExistsError, match="exists"), files.directory_in_place(out, False) as t:
        (t / "compress.json").write_text('{"new": 1}')
    assert (out / "compress.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run-k8"]


@pytest.mark.parametrize("swap", [True, False], ids=["atomic-swap", "move-aside"])
def test_force_replaces_an_output_whole_and_leaves_nothing_beside_it(tmp_path, monkeypatch, swap):
    if not swap:  # a file system without renameat2(RENAME_EXCHANGE): the old output is moved aside first
        monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    out = tmp_path / "export"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with files.directory_in_place(out, force=True) as temporary:
        (temporary / "sub").mkdir()
        (temporary / "sub" / "new.txt").write_text("new")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["sub", "sub/new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["export"]


def test_an_error_inside_the_directory_names_the_output_not_the_temporary(tmp_path):
    out = tmp_path / "export"
    with pytest.raises(files.WriteError) as caught, files.directory_in_place(out, False) as temporary:
        (temporary / "model.tflite").mkdir()
        (temporary / "model.tflite").write_bytes(b"x")  # IsADirectoryError on the temporary path
    assert str(caught.value).startswith(f"{out / 'model.tflite'}: cannot write (Is a directory)")
    (tmp_path / "file").write_text("")
    with (
        pytest.raises(files.WriteError) as caught,
        files.directory_in_place(tmp_path / "file" / "out", False),
    ):
        pass
    assert str(caught.value).startswith(f"{tmp_path / 'file' / 'out'}: cannot write (Not a directory)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_fsync_reaches_the_directory_after_the_rename(tmp_path, monkeypatch):
    """What makes a rename survive a power cut is an fsync of the directory that holds the new name, after
    the rename: every fsync is recorded (then done) with what it synced and whether the final name existed
    at that moment. (No power can be cut here; the order of the calls is what the guarantee rests on.)"""
    import stat

    calls = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        calls.append((path, stat.S_ISDIR(os.fstat(fd).st_mode), target.exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    target = tmp_path / "state.json"
    files.write_json(target, {"step": 1}, fsync=True)
    assert calls[0][:2] == (files.temporary_name(target), False) and not calls[0][2]
    assert calls[-1] == (tmp_path, True, True)
    calls.clear()
    files.write_json(target, {"step": 2})
    assert calls == []  # fsync=False: no sync at all
    target = tmp_path / "export"
    with files.directory_in_place(target, force=False) as temporary:
        (temporary / "variables").mkdir()
        (temporary / "variables" / "data").write_bytes(b"w")
        (temporary / "model.tflite").write_bytes(b"m")
    synced_before = {
        path.relative_to(temporary) for path, _, exists in calls if not exists and path != tmp_path
    }
    assert {Path("variables/data"), Path("variables"), Path("model.tflite"), Path(".")} <= synced_before
    assert calls[-1] == (tmp_path, True, True)


def test_file_crc32c_is_the_checksum_of_the_bytes(tmp_path):
    import google_crc32c

    path = tmp_path / "blob"
    data = os.urandom(3 * files.CRC_CHUNK // 2)
    path.write_bytes(data)
    assert files.file_crc32c(path) == int.from_bytes(google_crc32c.Checksum(data).digest(), "big")


def test_a_ctrl_c_swallowed_by_a_finalizer_still_stops_the_output_from_being_moved_into_place(tmp_path):
    """Python ignores an exception raised inside ``__del__``; TensorFlow runs code there, so a SIGINT that
    lands in it used to let the export finish and exit 0. Recorded, it stops the stage before the move, and
    it is not printed as Python's "Exception ignored in ..." traceback either."""
    import signal
    import sys
    import time

    class SignalledWhileCollected:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler runs here, inside __del__: its KeyboardInterrupt is swallowed

    out = tmp_path / "export"
    reported, hook = [], sys.unraisablehook
    sys.unraisablehook = reported.append
    try:
        with files.interrupts_recorded():
            with pytest.raises(KeyboardInterrupt), files.directory_in_place(out, force=False) as temporary:
                (temporary / "model.tflite").write_bytes(b"m")
                SignalledWhileCollected()  # collected at once
            assert list(tmp_path.iterdir()) == []
        assert sys.unraisablehook == reported.append  # put back
    finally:
        sys.unraisablehook = hook
    assert reported == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
