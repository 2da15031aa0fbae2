"""The tools' command lines: a bad option is one line ``tools/NAME.py: error: ... (see --help)``, exit status
2, before any work (as for the stages: :class:`asr.config.OneLineParser`, :func:`asr.config.option_type`)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"

BAD_OPTIONS = [
    ("bench_augment", "--rounds", int, "0", "must be at least 1, got 0"),
    ("bench_compress", "--finetune-lr", float, "0", "must be greater than 0, got 0"),
    ("bench_compress", "--sensitivity", int, "-1", "must be at least 0 (0: skip), got -1"),
    ("bench_decode", "--workers", int, "-2", "must be at least 0 (0: all cores), got -2"),
    ("bench_extract", "--workers", int, "0", "must be at least 1, got 0"),
    ("bench_infer", "--lengths", float, "nan", "must be greater than 0, got nan"),
    ("bench_padding", "--audio-budget", float, "-1", "must be at least 0 (0: equal on average), got -1"),
    ("bench_precision", "--frames", int, "0", "must be at least 1, got 0"),
    ("bench_reliability", "--rounds", int, "-3", "must be at least 1, got -3"),
    ("bench_sampler", "--block-seconds", float, "0", "must be greater than 0, got 0"),
    ("bench_train", "--warmup", int, "-1", "must be at least 0, got -1"),
]


def tool_main(name: str):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.main


def usage_error(main, argv: list[str], monkeypatch, capsys) -> str:
    """The one stderr line of ``main`` stopping on ``argv`` (exit status 2)."""
    extra = ["--run", "unused"] if main.__module__ == "tool_bench_compress" else []  # its required option
    monkeypatch.setattr(sys, "argv", [main.__module__, *extra, *argv])
    with pytest.raises(SystemExit) as exited:
        main()
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("\n") == 1, err
    return err.rstrip("\n")


@pytest.mark.parametrize(("name", "option", "kind", "value", "message"), BAD_OPTIONS)
def test_a_bad_numeric_option_is_one_line_naming_the_tool(
    name, option, kind, value, message, monkeypatch, capsys
):
    main = tool_main(name)
    expected = "a whole number" if kind is int else "a number"
    line = usage_error(main, [option, "x"], monkeypatch, capsys)
    assert line == f"tools/{name}.py: error: argument {option}: expected {expected}, got 'x' (see --help)"
    line = usage_error(main, [option, value], monkeypatch, capsys)  # was accepted: the bench ran with it
    assert line == f"tools/{name}.py: error: argument {option}: {message} (see --help)"


def test_the_corpus_tools_errors_are_one_line_naming_the_tool(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exited:
        tool_main("make_lm_text")(["--bogus"])
    assert exited.value.code == 2
    assert (
        capsys.readouterr().err
        == "tools/make_lm_text.py: error: unrecognized arguments: --bogus (see --help)\n"
    )

    make_default_corpus = tool_main("make_default_corpus")
    assert make_default_corpus(["--source", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (
        f"tools/make_default_corpus.py: error: --source {tmp_path}: not a minilibri copy (no train-clean/)\n"
    )
    assert not (tmp_path / "out").exists()
