"""Typed, validated configuration: one frozen dataclass per stage, nested in :class:`Recipe`.

A recipe is YAML. It may name a ``base:`` recipe (a path relative to itself) whose values it
overrides, key by key, so the per-rig recipes only say what differs. The merged mapping is
checked once, at the entry point: an unknown key, a wrong type or an impossible value raises
:class:`ConfigError` whose message names the file and the dotted key; the entry point prints it
on one line and exits with status 2. Everything below the entry point receives typed objects.
Every numeric value has a range (:data:`BOUNDS`; NaN and infinities are outside every range), and an
empty recipe file is refused rather than silently training the defaults.

``--set section.key=value`` overrides are parsed as YAML scalars and checked like the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable
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
    """Utterances held in the shuffle buffer; 1 turns shuffling off (the shard files' order is still
    shuffled every epoch). 0 is refused: ``tf.data`` cannot shuffle with an empty buffer."""
    buffer: int = 40
    """Batches prefetched ahead of the accelerator (the paper's "buffer")."""
    max_frames: int = 1670
    """Fixed padded length in 10 ms frames (1670 = 16.7 s, the paper's)."""
    padding: Literal["fixed", "bucket"] = "fixed"
    """``fixed`` pads every batch to ``max_frames``; ``bucket`` groups similar lengths."""
    bucket_boundaries: tuple[int, ...] = (400, 600, 800, 1000, 1200, 1400)
    """Upper frame bounds of the length buckets when ``padding: bucket``."""
    batch_by: Literal["utterances", "audio_seconds"] = "utterances"
    """``utterances``: every batch holds ``train.global_batch`` utterances. ``audio_seconds`` (dynamic
    batching, needs ``padding: bucket``): each bucket's batches hold as many utterances as fit in
    ``batch_audio_seconds`` of padded audio per replica, so short utterances come many to a batch and long
    ones few; utterances longer than ``max_frames`` are dropped."""
    batch_audio_seconds: float = 0.0
    """Padded audio per replica per batch (s) with ``batch_by: audio_seconds``: batch × padded frames ×
    10 ms never exceeds it."""
    static_shapes: bool = False
    """Every training batch of a length bucket has one shape: features padded to the bucket's longest
    length (``boundary - 1`` frames; the last bucket, and fixed padding: ``max_frames``), labels to the
    output frames of that length. XLA compiles one program per input shape, so ``runtime.xla`` needs
    this (one compilation per bucket instead of one per batch); utterances longer than ``max_frames``
    are dropped. Costs padding: the frames up to the bucket's bound."""
    tempo_range: tuple[float, float] = (1.0, 1.0)
    """Tempo perturbation: each training utterance, each epoch, is played at a tempo factor drawn
    uniformly from this range (1.1: 10 % faster, 10 % fewer frames) by resampling its feature frames in
    time (linear interpolation); a factor whose result could no longer hold the transcript is not used.
    ``[1.0, 1.0]``: off."""
    spec_augment: bool = False
    """SpecAugment-style time and frequency masking on training batches."""
    spec_augment_from_epoch: int = 0
    """First epoch (0-based) whose batches are masked, with ``spec_augment``; earlier epochs train on
    unmasked features. Masking slows the first epochs, when the model underfits anyway, and is what keeps it
    improving once it starts to fit; starting it late trades one for the other (RESULTS.md section 9)."""
    freq_masks: int = 2
    """Feature bands zeroed per utterance (with ``spec_augment``)."""
    freq_mask_width: int = 15
    """Widest band, in features of the 93 (each band's width is drawn from 0 to this)."""
    time_masks: int = 2
    """Spans of frames zeroed per utterance (with ``spec_augment``)."""
    time_mask_width: int = 40
    """Longest span in 10 ms frames (and never more than a fifth of the utterance)."""
    vtlp_range: tuple[float, float] = (1.0, 1.0)
    """Vocal-tract-length perturbation (Jaitly & Hinton 2013): each training utterance, each epoch, has its
    Mel frequency axis warped by a factor drawn uniformly from this range (piecewise linear in Hz, the band
    edge fixed: :func:`asr.augment.vtlp_warp`), the MFCCs recomputed from the warped log-Mel. Typical
    ``[0.9, 1.1]``; ``[1.0, 1.0]``: off."""
    noise_snr_db: tuple[float, ...] = ()
    """Additive noise: ``[low, high]`` in dB; a training utterance, each epoch with ``noise_probability``,
    gets ``noise_color`` Gaussian noise added in the Mel power domain at an SNR drawn uniformly from the range
    (the waveform's SNR, the utterance's power per sample over the noise's, estimated from the Mel powers:
    :func:`asr.augment.add_noise`). ``[]``: off."""
    noise_color: Literal["white", "pink"] = "white"
    """Spectrum of the added noise: ``white`` (flat) or ``pink`` (power density falling as 1/f)."""
    noise_probability: float = 0.5
    """Chance that a training utterance gets noise in an epoch (drawn per utterance and epoch), so the model
    also keeps hearing clean speech, as evaluation does: with 1.0 every utterance is noisy and a clean
    evaluation set is out of its training distribution (RESULTS.md §11)."""
    normalization: Literal["global", "utterance"] = "global"
    """How features are standardized before the model, in training, evaluation and exported models alike:
    ``global`` with the training manifest's per-feature mean/std; ``utterance`` with each utterance's own
    mean/std over its frames (per-utterance mean and variance normalization: removes a constant channel or
    loudness offset; :mod:`asr.normalization`)."""


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
    warmup_steps: int = 0
    """Raise the learning rate linearly over the first this-many optimizer updates, from
    ``learning_rate / warmup_steps`` to ``learning_rate`` (0: off). Adam's first updates move each weight
    by about the rate whatever the gradient's size, which throws freshly initialised weights off at a high
    rate (minilibri, rate 3e-3: dev CER 91 % after the first epoch, 75 % with 120 warm-up updates)."""
    rho: float = 0.95
    epsilon: float = 1e-6
    clip_norm: float = 0.0
    """Global gradient-norm clip (0: off)."""
    sample_every_steps: int = 50
    """Decode one training batch greedily and log a few sentences this often."""
    checkpoint_every_steps: int = 250
    keep_checkpoints: int = 3
    accumulate_steps: int = 1
    """Micro-batches (dataset batches) per optimizer update: gradients summed over them, divided by their
    number. 1: none. Steps, checkpoints and the learning-rate schedule count updates."""
    ema_decay: float = 0.0
    """Evaluate, checkpoint and export an exponential moving average of the trainable weights instead of the
    weights themselves: after each update ``average = d * average + (1 - d) * weights`` with
    ``d = min(ema_decay, (1 + n) / (10 + n))`` and n the updates before it (TensorFlow's ``num_updates``
    rule: the average follows the weights closely at the start, when they move fast, and averages over
    about ``1 / (1 - ema_decay)`` updates later). Batch-norm statistics are the model's own. 0: off.
    Measured on minilibri (RESULTS.md section 9): 0.99 with the short start, dev CER 19.5 % after 8 epochs
    where the raw weights measure 22.4 %."""
    max_consecutive_nan_steps: int = 5
    """After this many non-finite losses in a row, stop with the last good weights."""
    seed: int = 1234
    clustered_weights: str = ""
    """A compact file of ``asr.compress`` (``model.kmeans.npz``): fine-tuning after clustering. The model
    starts from the file's weights, and every weight of a cluster gets the cluster's summed gradient (the
    gradient of the centroid they share), so the centroids move and the assignments stay fixed. Empty: off."""


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """Devices and numerics; all placement goes through ``tf.distribute``."""

    strategy: Literal["auto", "mirrored", "central_storage", "multi_worker", "one_device"] = "auto"
    """``auto``: multi-worker under TF_CONFIG/SLURM, mirrored with several devices, else one."""
    replicas: int = 0
    """Replicas on this machine: GPUs to use, or logical CPU devices without GPUs (0: all GPUs, one CPU)."""
    mixed_precision: Literal["float32", "float16", "bfloat16"] = "float32"
    xla: bool = False
    """XLA-compile the training step (needs ``data.static_shapes``). The CTC loss is then TF's dense
    formulation, since the fused sparse CTC kernel has no XLA version."""
    sync_batch_norm: bool = False
    """Batch-norm statistics over the global batch instead of each replica's slice."""


EXTRA_SET_NAME = re.compile(r"[A-Za-z0-9._-]+")
"""What an ``eval.extra_sets`` name may be (it names the set in the event log, TensorBoard and reports)."""


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
    extra_sets: dict[str, str] = dataclasses.field(default_factory=dict)
    """More validation sets, name → shard directory (``{dev-seen: work/minilibri-unseen/dev}``), evaluated
    at each epoch end right after ``data.dev`` with the same model and decoder: ``eval`` events with
    ``split`` = the name and ``extra: true``. Not used for time to accuracy, and off the run clock (their
    seconds are reported apart, :meth:`asr.clock.RunClock.off_clock`). Not evaluated in ``external`` mode."""


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
    cpu_watts_per_core: float = 0.0
    """Power of one busy CPU core (W) for a CPU energy ESTIMATE where no power counter is read: the training
    process tree's sampled CPU time × this. 0: no CPU energy. E.g. TDP / cores: 360 W / 96 = 3.75 (AMD EPYC
    9654)."""
    grid_g_co2_per_kwh: float = 0.0
    """Carbon intensity of the electricity (g CO2 per kWh) for CO2 to accuracy; 0: no CO2 figures."""


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
        """Every numeric value in its range (:data:`BOUNDS`), then the rules between fields; raises
        :class:`ConfigError` naming ``where`` and the key."""
        for key, bound in BOUNDS.items():
            section, name = key.split(".")
            bound.check(where, key, getattr(getattr(self, section), name))
        for i, boundary in enumerate(self.data.bucket_boundaries):
            Bound(1).check(where, f"data.bucket_boundaries[{i}]", boundary)
        for i, target in enumerate(self.tta.targets):
            Bound(0, 100, low_open=True, note="percent").check(where, f"tta.targets[{i}].value", target.value)
        self._validate_together(where)
        self._validate_extra_sets(where)
        return self

    def _validate_extra_sets(self, where: str) -> None:
        dev_name = Path(self.data.dev).name if self.data.dev else ""
        for name, path in self.eval.extra_sets.items():
            key = f"eval.extra_sets.{name}"
            if not EXTRA_SET_NAME.fullmatch(name):
                raise ConfigError(f"{where}: {key}: a set name is letters, digits, '.', '_' or '-'")
            if not path:
                raise ConfigError(f"{where}: {key}: expected a shard directory, got an empty string")
            if name == dev_name:
                raise ConfigError(
                    f"{where}: {key}: the name is data.dev's ({dev_name}), whose evaluations TTA reads; "
                    "choose another"
                )

    def _validate_together(self, where: str) -> None:
        """Rules that involve more than one value."""
        if self.data.max_frames < self.model.conv_kernel:
            raise ConfigError(
                f"{where}: data.max_frames: {self.data.max_frames} is shorter than "
                f"model.conv_kernel {self.model.conv_kernel}"
            )
        replicas = max(self.runtime.replicas, 1)
        if self.train.global_batch % replicas:
            raise ConfigError(
                f"{where}: train.global_batch: {self.train.global_batch} utterances cannot be split "
                f"evenly over runtime.replicas={replicas}"
            )
        tempo = self.data.tempo_range
        if len(tempo) != 2 or not 0.5 <= tempo[0] <= tempo[1] <= 2.0:
            raise ConfigError(
                f"{where}: data.tempo_range: expected [low, high] with 0.5 <= low <= high <= 2.0, "
                f"got {list(self.data.tempo_range)}"
            )
        self._validate_augmentation(where)
        if list(self.data.bucket_boundaries) != sorted(set(self.data.bucket_boundaries)):
            raise ConfigError(f"{where}: data.bucket_boundaries: must be strictly increasing")
        self._validate_dynamic_batching(where)
        if self.runtime.xla and not self.data.static_shapes:
            raise ConfigError(
                f"{where}: runtime.xla: true needs data.static_shapes: true (XLA compiles one program per "
                "batch shape; without fixed shapes it recompiles nearly every step)"
            )

    def _validate_augmentation(self, where: str) -> None:
        vtlp = self.data.vtlp_range
        if len(vtlp) != 2 or not 0.5 <= vtlp[0] <= vtlp[1] <= 2.0:
            raise ConfigError(
                f"{where}: data.vtlp_range: expected [low, high] with 0.5 <= low <= high <= 2.0 "
                f"([1.0, 1.0]: off), got {list(vtlp)}"
            )
        snr = self.data.noise_snr_db
        if snr and (len(snr) != 2 or not -30 <= snr[0] <= snr[1] <= 100):
            raise ConfigError(
                f"{where}: data.noise_snr_db: expected [] (off) or [low, high] in dB with "
                f"-30 <= low <= high <= 100, got {list(snr)}"
            )

    def _validate_dynamic_batching(self, where: str) -> None:
        data = self.data
        if data.batch_by != "audio_seconds":
            return
        if data.padding != "bucket":
            raise ConfigError(f"{where}: data.batch_by: audio_seconds needs data.padding: bucket")
        if data.batch_audio_seconds * 100 < data.max_frames:
            needed = data.max_frames / 100
            raise ConfigError(
                f"{where}: data.batch_audio_seconds: {data.batch_audio_seconds:g} s cannot hold one "
                f"utterance of data.max_frames={data.max_frames} frames (at least {needed:g} s)"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Bound:
    """The range a numeric recipe value must be in: ``low``/``high`` (None: unbounded), each included unless
    ``*_open``. NaN and infinities are never in range: a NaN compares false with every bound and would pass
    any plain ``<`` test, then surface as a NaN loss or a hang hours later."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    note: str = ""
    """What a boundary value means (``0: off``), shown with the range."""

    def holds(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):  # (an int is finite, however long)
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        low, high = _plain_number(self.low), _plain_number(self.high)
        if self.low == -math.inf and self.high is None:
            text = "a finite number"
        elif self.high is None:
            text = f"greater than {low}" if self.low_open else f"at least {low}"
        else:
            text = f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        return f"{text} ({self.note})" if self.note else text

    def check(self, where: str, key: str, value: float) -> None:
        if not self.holds(value):
            raise ConfigError(f"{where}: {key}: must be {self}, got {value!r}")


def _plain_number(value: float | None) -> str:
    """``1`` rather than ``1.0``, ``4294967296`` rather than ``4.29497e+09``."""
    if value is None or not math.isfinite(value):
        return str(value)
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


FINITE = Bound(-math.inf)
"""Any finite number (``holds`` rejects NaN and infinities before comparing)."""
_COUNT = Bound(1)
_ZERO_IS_OFF = Bound(0, note="0: off")
_RATE = Bound(0, 1, high_open=True)

BOUNDS: dict[str, Bound] = {
    "data.readers": _COUNT,
    "data.shuffle_buffer": Bound(1, note="1: no shuffling; tf.data cannot shuffle with 0"),
    "data.buffer": _COUNT,
    "data.max_frames": _COUNT,
    "data.freq_masks": Bound(0),
    "data.freq_mask_width": Bound(0, 93, note="features per frame"),
    "data.time_masks": Bound(0),
    "data.time_mask_width": Bound(0),
    "data.spec_augment_from_epoch": Bound(0, note="0: from the first epoch"),
    "data.noise_probability": Bound(0, 1, note="1: every training utterance"),
    "model.conv_filters": _COUNT,
    "model.conv_kernel": _COUNT,
    "model.conv_stride": _COUNT,
    "model.rnn_layers": _COUNT,
    "model.rnn_units": _COUNT,
    "model.dropout": _RATE,
    "train.global_batch": _COUNT,
    "train.epochs": _COUNT,
    "train.time_budget_minutes": Bound(0, note="0: no budget"),
    "train.max_steps": Bound(0, note="0: no limit"),
    "train.learning_rate": Bound(0, low_open=True),
    "train.learning_rate_decay": Bound(0, 1, low_open=True, note="1: constant"),
    "train.learning_rate_decay_from_epoch": Bound(0),
    "train.warmup_steps": Bound(0, note="0: off"),
    "train.rho": Bound(0, 1),
    "train.epsilon": Bound(0, low_open=True, note="AdaDelta never moves the weights with 0"),
    "train.clip_norm": _ZERO_IS_OFF,
    "train.sample_every_steps": _ZERO_IS_OFF,
    "train.checkpoint_every_steps": Bound(0, note="0: only at epoch ends"),
    "train.keep_checkpoints": _COUNT,
    "train.max_consecutive_nan_steps": _COUNT,
    "train.accumulate_steps": _COUNT,
    "train.ema_decay": Bound(0, 1, high_open=True, note="0: off"),
    "train.seed": Bound(0, 2**32, high_open=True, note="NumPy's seed range"),
    "runtime.replicas": Bound(0, note="0: all GPUs, or one CPU"),
    "eval.beam_width": Bound(1, note="1: greedy"),
    "eval.lm_alpha": FINITE,
    "eval.lm_beta": FINITE,
    "eval.every_epochs": _COUNT,
    "eval.batch_size": Bound(0, note="0: the training global batch"),
    "eval.decode_workers": Bound(0, note="0: all CPU cores"),
    "tta.window": _COUNT,
    "tta.sample_interval_seconds": Bound(0, low_open=True),
    "data.batch_audio_seconds": Bound(0, note="0: batches by utterance count"),
    "rig.price_usd": Bound(0),
    "rig.depreciation_years": Bound(0, note="0: no price per hour"),
    "rig.cpu_watts_per_core": Bound(0, note="0: no CPU energy estimate"),
    "rig.grid_g_co2_per_kwh": Bound(0, note="0: no CO2 figures"),
}
"""Range of every numeric recipe value, by dotted key (``tests/test_config.py`` checks that every numeric
field of every section is listed)."""


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line, ``PROG: error: MESSAGE (see --help)`` with exit
    status 2, like every other error of the stages (instead of the usage block, then the error)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def option_type(kind: type[int] | type[float], bound: Bound) -> Callable[[str], Any]:
    """An ``argparse`` ``type=`` for a numeric command-line option that must be in ``bound``: a bad value is
    a usage error naming the option (exit status 2), as a recipe value out of range is, instead of a
    traceback (or a silent fallback) once the command is under way."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            expected = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not bound.holds(value):
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    return parse


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
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key}: expected a mapping, got {value!r}")
        return {
            _coerce(args[0], k, where, f"{key} key"): _coerce(args[1], v, where, f"{key}.{k}")
            for k, v in value.items()
        }
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
        values = parse_yaml(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {str(error).splitlines()[0]}") from None
    if values is None or values == {}:  # an empty file (or a wrong one) must not train on the defaults
        raise ConfigError(f"{path}: recipe is empty (start from recipes/cpu.yaml or name a base: recipe)")
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
