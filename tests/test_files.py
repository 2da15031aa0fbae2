"""Atomic writes: a file is whole or absent, the previous version survives a failure, errors are one line."""

import subprocess
import sys

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
