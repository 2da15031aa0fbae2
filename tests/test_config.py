"""Recipe checks: every numeric value in its range, an empty recipe refused, one line naming file and key."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from asr.config import BOUNDS, ConfigError, Recipe, load_recipe

REPO_ROOT = Path(__file__).resolve().parents[1]
CPU = REPO_ROOT / "recipes" / "cpu.yaml"

BAD_VALUES = [
    ("data.shuffle_buffer", -1),
    ("data.shuffle_buffer", 0),
    ("data.readers", 0),
    ("data.buffer", 0),
    ("data.max_frames", 0),
    ("data.freq_masks", -1),
    ("data.freq_mask_width", -1),
    ("data.time_masks", -1),
    ("data.time_mask_width", -2),
    ("model.conv_filters", 0),
    ("model.conv_kernel", 0),
    ("model.conv_stride", -1),
    ("model.rnn_layers", 0),
    ("model.rnn_units", 0),
    ("model.dropout", 1.0),
    ("model.dropout", -0.1),
    ("train.global_batch", 0),
    ("train.epochs", 0),
    ("train.time_budget_minutes", -1),
    ("train.max_steps", -1),
    ("train.learning_rate", -1),
    ("train.learning_rate", 0),
    ("train.learning_rate", ".nan"),
    ("train.learning_rate_decay", 0),
    ("train.learning_rate_decay", 1.5),
    ("train.learning_rate_decay_from_epoch", -1),
    ("train.rho", -0.5),
    ("train.rho", 1.5),
    ("train.epsilon", 0),
    ("train.epsilon", -1e-6),
    ("train.clip_norm", -1),
    ("train.clip_norm", ".inf"),
    ("train.sample_every_steps", -1),
    ("train.checkpoint_every_steps", -1),
    ("train.keep_checkpoints", 0),
    ("train.max_consecutive_nan_steps", 0),
    ("train.seed", -1),
    ("train.seed", 2**32),
    ("runtime.replicas", -1),
    ("eval.beam_width", 0),
    ("eval.lm_alpha", ".nan"),
    ("eval.lm_beta", "-.inf"),
    ("eval.every_epochs", 0),
    ("eval.batch_size", -1),
    ("eval.decode_workers", -1),
    ("tta.window", 0),
    ("tta.sample_interval_seconds", -1),
    ("tta.sample_interval_seconds", 0),
    ("rig.price_usd", -1),
    ("rig.depreciation_years", -3),
    ("tta.targets[0].value", 0),
    ("tta.targets[0].value", 101),
    ("data.bucket_boundaries[0]", 0),
]


def _override(key: str, value) -> str:
    if key == "tta.targets[0].value":
        return f"tta.targets=[{{metric: cer, value: {value}}}]"
    if key == "data.bucket_boundaries[0]":
        return f"data.bucket_boundaries=[{value}, 500]"
    return f"{key}={value}"


@pytest.mark.parametrize(("key", "value"), BAD_VALUES, ids=[f"{k}={v}" for k, v in BAD_VALUES])
def test_a_value_out_of_range_is_one_line_naming_file_and_key(key, value):
    with pytest.raises(ConfigError) as raised:
        load_recipe(CPU, [_override(key, value)])
    message = str(raised.value)
    assert message.startswith(f"{CPU} (with --set): {key}: must be ")
    assert "\n" not in message


def test_the_message_says_the_range_and_what_a_boundary_means(tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(f"base: {CPU}\ndata: {{shuffle_buffer: -1}}\n")
    with pytest.raises(ConfigError) as raised:
        load_recipe(recipe)
    assert str(raised.value) == (
        f"{recipe}: data.shuffle_buffer: must be at least 1 "
        "(1: no shuffling; tf.data cannot shuffle with 0), got -1"
    )
    with pytest.raises(ConfigError, match=r"eval\.batch_size: must be at least 0 \(0: the training global"):
        load_recipe(CPU, ["eval.batch_size=-1"])
    with pytest.raises(ConfigError, match=r"tta\.targets\[1\]\.value: must be in \(0, 100\] \(percent\)"):
        load_recipe(CPU, ["tta.targets=[{metric: cer, value: 10}, {metric: wer, value: 250}]"])


BOUNDARY_VALUES = [
    "data.shuffle_buffer=1",
    "data.freq_masks=0",
    "data.time_mask_width=0",
    "train.clip_norm=0",
    "train.sample_every_steps=0",
    "train.checkpoint_every_steps=0",
    "train.max_consecutive_nan_steps=1",
    "train.rho=0",
    "train.rho=1",
    "eval.batch_size=0",
    "eval.lm_alpha=-2.5",
    "rig.depreciation_years=0",
    "tta.targets=[{metric: wer, value: 100}]",
]


@pytest.mark.parametrize("override", BOUNDARY_VALUES)
def test_boundary_values_are_accepted(override):
    load_recipe(CPU, [override])


def _numeric_fields(cls, prefix: str) -> list[str]:
    hints = typing.get_type_hints(cls)
    return [f"{prefix}{field.name}" for field in dataclasses.fields(cls) if hints[field.name] in (int, float)]


def test_every_numeric_field_of_every_section_has_a_range():
    hints = typing.get_type_hints(Recipe)
    sections = [field.name for field in dataclasses.fields(Recipe) if field.name != "name"]
    numeric = [key for name in sections for key in _numeric_fields(hints[name], f"{name}.")]
    assert sorted(numeric) == sorted(BOUNDS)


@pytest.mark.parametrize("content", ["", "# only a comment\n", "{}\n"], ids=["empty", "comment", "empty-map"])
def test_an_empty_recipe_is_an_error(tmp_path, content):
    recipe = tmp_path / "empty.yaml"
    recipe.write_text(content)
    with pytest.raises(ConfigError, match=r"^.*empty\.yaml: recipe is empty"):
        load_recipe(recipe)


def test_every_shipped_recipe_is_valid():
    for recipe in sorted((REPO_ROOT / "recipes").glob("*.yaml")):
        load_recipe(recipe)


def test_training_on_an_empty_recipe_stops_with_one_line(tmp_path):
    recipe = tmp_path / "empty.yaml"
    recipe.write_text("")
    result = subprocess.run(
        [sys.executable, "-m", "asr.train", str(recipe), "--run-dir", str(tmp_path / "run")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    expected = f"{recipe}: recipe is empty (start from recipes/cpu.yaml or name a base: recipe)"
    assert result.stderr.strip().splitlines()[-1].endswith(expected)
    assert not (tmp_path / "run" / "checkpoints").exists()
