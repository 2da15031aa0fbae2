"""Typed, validated configuration: one frozen dataclass per stage, nested in :class:`Recipe`.

A recipe is YAML. It may name a ``base:`` recipe (a path relative to itself) whose values it
overrides, key by key, so the per-rig recipes only say what differs. The merged mapping is
checked once, at the entry point: an unknown key, a wrong type or an impossible value raises
:class:`ConfigError` whose message names the file and the dotted key; the entry point prints it
on one line and exits with status 2. Everything below the entry point receives typed objects.

``--set section.key=value`` overrides are parsed as YAML scalars and checked like the file.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A recipe or override that cannot be used; the message names the file and key."""


# PyYAML follows YAML 1.1, where "1e-4" (no dot) is a string; accept it as a float.
class _Loader(yaml.SafeLoader):
    pass


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    """``yaml.safe_load`` that reads ``1e-4`` as a float."""
    return yaml.load(text, Loader=_Loader)


# --------------------------------------------------------------------------- stage configs


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the shards are and how ``tf.data`` feeds them (paper Table 2)."""

    train: str = "features/train"
    """Directory of training shards written by ``asr.extract`` (its manifest gives mean/std)."""
    dev: str = "features/dev"
    """Directory of validation shards, decoded at every epoch end."""
    readers: int = 8
    """Shards read in parallel (the paper's "readers")."""
    shuffle_buffer: int = 1024
    """Utterances held in the shuffle buffer."""
    buffer: int = 40
    """Batches prefetched ahead of the accelerator (the paper's "buffer")."""
    max_frames: int = 1670
    """Fixed padded length in 10 ms frames (1670 = 16.7 s, the paper's)."""
    padding: Literal["fixed", "bucket"] = "fixed"
    """``fixed`` pads every batch to ``max_frames``; ``bucket`` groups similar lengths."""
    bucket_boundaries: tuple[int, ...] = (400, 600, 800, 1000, 1200, 1400)
    """Upper frame bounds of the length buckets when ``padding: bucket``."""
    tempo_range: tuple[float, float] = (1.0, 1.0)
    """Tempo perturbation: each training utterance, each epoch, is played at a tempo factor drawn
    uniformly from this range (1.1: 10 % faster, 10 % fewer frames) by resampling its feature frames in
    time (linear interpolation); a factor whose result could no longer hold the transcript is not used.
    ``[1.0, 1.0]``: off."""
    spec_augment: bool = False
    """SpecAugment-style time and frequency masking on training batches."""
    freq_masks: int = 2
    freq_mask_width: int = 15
    time_masks: int = 2
    time_mask_width: int = 40


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The Deep-Speech-2-style acoustic model (paper Figure 4). Sizes in units/channels."""

    conv_filters: int = 600
    conv_kernel: int = 11
    """Convolution width in 10 ms frames; shorter inputs cannot be used."""
    conv_stride: int = 2
    rnn: Literal["lstm", "gru"] = "lstm"
    """Recurrent cell: the paper's LSTM, or a GRU (three gates instead of four: ~25 % less compute)."""
    bidirectional: bool = False
    """Run each recurrent layer forwards and backwards and concatenate (the paper's are forwards only)."""
    rnn_layers: int = 5
    rnn_units: int = 800
    """Units per recurrent layer and direction."""
    dropout: float = 0.05
    """Dropout rate between every pair of layers."""
    rnn_loop: Literal["fused", "keras"] = "fused"
    """How a recurrent layer runs where cuDNN does not (CPUs): ``fused`` does the input projection and the
    weight gradients of all time steps as single matrix products (:mod:`asr.recurrent`; 3x faster at the
    paper's sizes on this machine), ``keras`` is Keras' own step-by-step loop. Same weights and results;
    on a GPU both run cuDNN."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimization and the training state machine (paper Figure 6)."""

    global_batch: int = 96
    """Utterances per synchronous step, summed over all replicas."""
    epochs: int = 20
    time_budget_minutes: float = 0.0
    """Stop when the run clock passes this many minutes (0: no budget)."""
    max_steps: int = 0
    """Stop after this many optimizer steps in total (0: no limit); for smoke tests and benchmarks."""
    optimizer: Literal["adadelta", "adam"] = "adadelta"
    learning_rate: float = 1.0
    learning_rate_decay: float = 1.0
    """Multiply the learning rate by this once per epoch from ``learning_rate_decay_from_epoch`` on
    (annealing as in Deep Speech 2; 1.0: constant)."""
    learning_rate_decay_from_epoch: int = 0
    rho: float = 0.95
    epsilon: float = 1e-6
    clip_norm: float = 0.0
    """Global gradient-norm clip (0: off)."""
    sample_every_steps: int = 50
    """Decode one training batch greedily and log a few sentences this often."""
    checkpoint_every_steps: int = 250
    keep_checkpoints: int = 3
    max_consecutive_nan_steps: int = 5
    """After this many non-finite losses in a row, stop with the last good weights."""
    seed: int = 1234


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """Devices and numerics; all placement goes through ``tf.distribute``."""

    strategy: Literal["auto", "mirrored", "central_storage", "multi_worker", "one_device"] = "auto"
    """``auto``: multi-worker under TF_CONFIG/SLURM, mirrored with several devices, else one."""
    replicas: int = 0
    """Replicas on this machine: GPUs to use, or logical CPU devices without GPUs (0: all GPUs, one CPU)."""
    mixed_precision: Literal["float32", "float16", "bfloat16"] = "float32"
    xla: bool = False
    sync_batch_norm: bool = False
    """Batch-norm statistics over the global batch instead of each replica's slice."""


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Per-epoch validation (paper 4.4.2) and final decoding."""

    mode: Literal["swap", "resident", "external", "loss"] = "swap"
    decoder: Literal["greedy", "beam"] = "beam"
    beam_width: int = 256
    lm: str = ""
    """Directory written by ``asr.lm`` (KenLM binary + unigrams); empty: no language model."""
    lm_alpha: float = 0.5
    lm_beta: float = 1.0
    every_epochs: int = 1
    batch_size: int = 0
    """Utterances per evaluation batch (0: the training global batch)."""
    decode_workers: int = 0
    """Processes decoding in parallel (0: all CPU cores)."""


@dataclasses.dataclass(frozen=True)
class Target:
    metric: Literal["cer", "wer"]
    value: float
    """Percent."""


@dataclasses.dataclass(frozen=True)
class TTAConfig:
    """Time-to-accuracy targets (paper 4.1): percent values, median over ``window`` epochs."""

    targets: tuple[Target, ...] = (
        Target("cer", 10.0),
        Target("cer", 8.0),
        Target("cer", 7.0),
        Target("wer", 22.0),
        Target("wer", 20.2),
        Target("wer", 19.2),
    )
    window: int = 3
    stop_at_last_target: bool = False
    sample_interval_seconds: float = 1.0
    """Utilization sampler period (CPU, and GPU where NVML is present)."""


@dataclasses.dataclass(frozen=True)
class RigConfig:
    """The hardware a run is measured on, for cost-to-accuracy."""

    name: str = "local"
    price_usd: float = 0.0
    depreciation_years: float = 3.0
    """Price amortized over this many years of continuous use."""


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One experiment: everything ``asr.train`` needs, built once from YAML."""

    name: str = "base"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    eval: EvalConfig = EvalConfig()
    tta: TTAConfig = TTAConfig()
    rig: RigConfig = RigConfig()

    def validate(self, where: str = "recipe") -> Recipe:
        """Cross-field rules; raises :class:`ConfigError` naming ``where`` and the key."""
        _positive(where, "train.global_batch", self.train.global_batch)
        _positive(where, "train.epochs", self.train.epochs)
        _positive(where, "data.readers", self.data.readers)
        _positive(where, "data.buffer", self.data.buffer)
        _positive(where, "data.max_frames", self.data.max_frames)
        _positive(where, "model.conv_kernel", self.model.conv_kernel)
        _positive(where, "model.conv_stride", self.model.conv_stride)
        _positive(where, "model.rnn_units", self.model.rnn_units)
        _positive(where, "tta.window", self.tta.window)
        if self.model.rnn_layers < 1:
            raise ConfigError(f"{where}: model.rnn_layers: must be at least 1, got {self.model.rnn_layers}")
        if not 0.0 <= self.model.dropout < 1.0:
            raise ConfigError(f"{where}: model.dropout: must be in [0, 1), got {self.model.dropout}")
        if self.data.max_frames < self.model.conv_kernel:
            raise ConfigError(
                f"{where}: data.max_frames: {self.data.max_frames} is shorter than "
                f"model.conv_kernel {self.model.conv_kernel}"
            )
        if self.runtime.replicas < 0:
            raise ConfigError(f"{where}: runtime.replicas: must be >= 0, got {self.runtime.replicas}")
        replicas = max(self.runtime.replicas, 1)
        if self.train.global_batch % replicas:
            raise ConfigError(
                f"{where}: train.global_batch: {self.train.global_batch} utterances cannot be split "
                f"evenly over runtime.replicas={replicas}"
            )
        if not 0.0 < self.train.learning_rate_decay <= 1.0:
            raise ConfigError(
                f"{where}: train.learning_rate_decay: must be in (0, 1], got {self.train.learning_rate_decay}"
            )
        if self.train.max_steps < 0:
            raise ConfigError(f"{where}: train.max_steps: must be >= 0, got {self.train.max_steps}")
        if self.train.time_budget_minutes < 0:
            raise ConfigError(f"{where}: train.time_budget_minutes: must be >= 0")
        if self.eval.beam_width < 1:
            raise ConfigError(f"{where}: eval.beam_width: must be at least 1, got {self.eval.beam_width}")
        tempo = self.data.tempo_range
        if len(tempo) != 2 or not 0.5 <= tempo[0] <= tempo[1] <= 2.0:
            raise ConfigError(
                f"{where}: data.tempo_range: expected [low, high] with 0.5 <= low <= high <= 2.0, "
                f"got {list(self.data.tempo_range)}"
            )
        if list(self.data.bucket_boundaries) != sorted(set(self.data.bucket_boundaries)):
            raise ConfigError(f"{where}: data.bucket_boundaries: must be strictly increasing")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _positive(where: str, key: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{where}: {key}: must be positive, got {value}")


# --------------------------------------------------------------------------- building

T = typing.TypeVar("T")


def from_dict(cls: type[T], values: Any, where: str, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, checking keys and types recursively."""
    if not isinstance(values, dict):
        got = type(values).__name__
        raise ConfigError(f"{where}: {prefix or 'top level'}: expected a mapping, got {got}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{where}: {dotted}: unknown key (known: {known})")
        kwargs[key] = _coerce(hints[key], value, where, dotted)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where, key + ".")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where, key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: {key}: expected a list, got {value!r}")
        item = args[0]
        return tuple(_coerce(item, v, where, f"{key}[{i}]") for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: {key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint!r} for {key}")


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_recipe_mapping(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The recipe's mapping with its ``base:`` chain merged in (base first)."""
    path = Path(path)
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: base: recipes include each other in a loop")
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read recipe: {error.strerror or error}") from None
    try:
        values = parse_yaml(text) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: top level: expected a mapping")
    base = values.pop("base", None)
    if base is None:
        return values
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base: expected a recipe path, got {base!r}")
    parent = read_recipe_mapping(path.parent / base, (*_seen, path.resolve()))
    return _deep_merge(parent, values)


def apply_overrides(values: dict[str, Any], overrides: list[str], where: str = "--set") -> dict[str, Any]:
    """Apply ``section.key=value`` strings; values are YAML scalars (``1e-4`` is a float)."""
    result = dict(values)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{where}: {item!r}: expected section.key=value")
        dotted, raw = item.split("=", 1)
        try:
            value = parse_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        keys = dotted.strip().split(".")
        node = result
        for part in keys[:-1]:
            child = node.get(part)
            child = dict(child) if isinstance(child, dict) else {}
            node[part] = child
            node = child
        node[keys[-1]] = value
    return result


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, merge, override, type-check and validate a recipe."""
    values = read_recipe_mapping(path)
    where = str(path)
    if overrides:
        values = apply_overrides(values, list(overrides))
        where = f"{path} (with --set)"
    return from_dict(Recipe, values, where).validate(where)


def recipe_from_dict(values: dict[str, Any], where: str = "recipe") -> Recipe:
    """A validated recipe from an already-resolved mapping (a run directory's ``recipe.yaml``)."""
    return from_dict(Recipe, values, where).validate(where)


def dump_recipe(recipe: Recipe) -> str:
    """YAML of the fully resolved recipe, as saved in the run directory."""
    return yaml.safe_dump(_plain(recipe.to_dict()), sort_keys=False)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
