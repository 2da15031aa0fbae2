"""Fail points: off by default, fire on the chosen passes or keys, and a kill is a real SIGKILL."""

import os
import signal
import subprocess
import sys

import pytest

from asr import failpoints


@pytest.fixture(autouse=True)
def fresh_counts():
    failpoints._passes.clear()
    yield
    failpoints._passes.clear()


def test_off_without_the_environment_variable(monkeypatch):
    monkeypatch.delenv(failpoints.ENVIRONMENT, raising=False)
    assert [failpoints.hit("train.step", key=k) for k in range(1, 4)] == [None, None, None]


def test_actions_fire_on_chosen_keys_or_passes(monkeypatch):
    monkeypatch.setenv(failpoints.ENVIRONMENT, "train.step=nan@2+4, evaluate=hang@2")
    assert [failpoints.hit("train.step", key=k) for k in range(1, 6)] == [None, "nan", None, "nan", None]
    assert [failpoints.hit("evaluate") for _ in range(3)] == [None, "hang", None]
    assert failpoints.hit("checkpoint.state") is None


def test_malformed_specification_names_the_bad_part(monkeypatch):
    monkeypatch.setenv(failpoints.ENVIRONMENT, "train.step=nan")
    with pytest.raises(failpoints.FailpointError, match=r"'train\.step=nan'"):
        failpoints.hit("train.step", key=1)


def test_kill_is_a_sigkill_on_the_chosen_pass():
    script = "from asr import failpoints\nfor i in range(5):\n    print(i, flush=True); failpoints.hit('x')"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                            env={**os.environ, failpoints.ENVIRONMENT: "x=kill@3"})  # fmt: skip
    assert result.returncode == -signal.SIGKILL
    assert result.stdout.split() == ["0", "1", "2"]
