"""Export a trained model to run outside this pipeline: a TensorFlow SavedModel and TFLite flatbuffers.

``python -m asr.export --run RUN_DIR --out EXPORT_DIR`` writes, from the run's newest undamaged checkpoint
(or ``--checkpoint STEP``)::

    EXPORT_DIR/saved_model.pb, variables/   SavedModel; signatures below
    EXPORT_DIR/model.tflite                 TFLite float32: features [1, T, 93] + frames [1] -> logits, frames
    EXPORT_DIR/model-int8.tflite            the same with dynamic-range int8 weights
    EXPORT_DIR/model.onnx                   with --formats ... onnx: ONNX (opset 17) of the features signature
    EXPORT_DIR/export.json                  alphabet, normalization, sample rate, frame times, source, sizes,
                                            and the size and CRC32C of every other file (checked when opened)
    EXPORT_DIR/recipe.yaml                  the run's recipe

SavedModel signatures
    ``serving_default``: ``waveforms float32 [B, N]`` (16 kHz mono in [-1, 1), zero-padded) and
    ``lengths int32 [B]`` (samples) -> ``logits float32 [B, T_out, 30]``, ``output_frames int32 [B]``,
    ``text string [B]`` (greedy CTC decoding). ``features``: ``features float32 [B, T, 93]`` (as
    ``asr.extract`` writes them, not normalized) and ``frames int32 [B]`` -> ``logits``, ``output_frames``.
    The features are computed in the graph by :func:`asr.features.graph_features`, the same pipeline as
    ``asr.extract``; the training set's mean/std, the alphabet (``alphabet``) and the recipe
    (``recipe_yaml``) are constants inside the SavedModel, so it needs nothing beside it.

TFLite
    Raw features in (what ``asr.extract`` writes, computed by :func:`asr.features.compute_features`;
    normalization inside), one utterance per call (batch 1: the converter lowers the recurrent loops to
    builtin ops only when the batch dimension is static); the frame count is dynamic
    (``resize_tensor_input``). Only builtin ops, so the small ``ai-edge-litert`` interpreter runs it
    without TensorFlow. int8: weights stored as int8 with a float scale per tensor or channel, and each
    product's input quantized to int8 per call (dynamic range). The feature front end stays outside the
    TFLite models because of that: quantizing the power spectrum's input to the Mel product (values from
    1e-10 to 1e3 in one frame) to 256 levels zeroes the quiet bands, and the int8 model with the front end
    inside got none of 6 test sentences' greedy text right (float32 inside TFLite: all 6).

The whole directory is written under a temporary name and renamed into place
(:func:`asr.files.directory_in_place`), so an interrupted export leaves no half-written ``EXPORT_DIR`` and a
rerun removes what a killed one left; an existing ``EXPORT_DIR`` is replaced only with ``--force``, and
never when it is, contains or lies inside the run directory. Errors are one line ``asr.export: error:
...`` with exit status 2 (Ctrl-C: ``asr.export: interrupted``, 130).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from asr.config import Bound, OneLineParser, Recipe, dump_recipe, option_type
from asr.features import FEATURE_DIM, FRAME_SECONDS, SAMPLE_RATE
from asr.files import (
    OverlapError,
    check_interrupted,
    directory_in_place,
    error_line,
    interrupts_recorded,
    refuse_existing,
    refuse_overlap,
    write_bytes,
    write_json,
    write_text,
)
from asr.inference import EXPORT_FILE, EXPORT_FORMAT_VERSION, ONNX_FILE, export_checksums
from asr.inference import TFLITE_BACKENDS as TFLITE_FILES
from asr.startup import import_tensorflow
from asr.text import BLANK_ID, SEPARATOR_ID, SYMBOLS

PROG = "asr.export"
FORMATS = ("savedmodel", "tflite", "tflite-int8")
OPTIONAL_FORMATS = ("onnx",)
ONNX_INSTALL = "the package's onnx extra: pip install tf2onnx==1.17.0 onnx==1.16.2 onnxruntime==1.19.2"


class ExportError(ValueError):
    """What stops an export, as one line naming the file or option."""


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """What ``asr.export`` writes and from which checkpoint."""

    run_dir: Path
    out: Path
    step: int | None = None
    formats: tuple[str, ...] = FORMATS
    force: bool = False

    def __post_init__(self) -> None:
        unknown = [f for f in self.formats if f not in FORMATS + OPTIONAL_FORMATS]
        if unknown or not self.formats:
            given = ", ".join(unknown) or "none given"
            raise ExportError(f"--formats: {given}; choose from {', '.join(FORMATS + OPTIONAL_FORMATS)}")
        if "onnx" in self.formats and not _has_tf2onnx():
            raise ExportError(f"--formats onnx: tf2onnx is not installed ({ONNX_INSTALL})")


# --------------------------------------------------------------------------- the graph


def greedy_text_graph(logits, output_frames):
    """Greedy CTC text per row in a graph: argmax per frame, merge repeats, drop blank and separator.

    Same rule as :func:`asr.decoding.greedy_text` (``tests/test_export.py`` compares them).
    """
    import tensorflow as tf

    ids = tf.argmax(logits, axis=-1, output_type=tf.int32)
    valid = tf.sequence_mask(output_frames, tf.shape(ids)[1])
    previous = tf.pad(ids[:, :-1], [[0, 0], [1, 0]], constant_values=-1)
    keep = valid & tf.not_equal(ids, previous) & tf.not_equal(ids, BLANK_ID) & tf.not_equal(ids, SEPARATOR_ID)
    characters = tf.where(keep, tf.gather(tf.constant(list(SYMBOLS)), ids), "")
    return tf.strings.reduce_join(characters, axis=1)


def serving_module(model, recipe: Recipe, mean: np.ndarray, std: np.ndarray):
    """A ``tf.Module`` with the two serving functions, the normalization and the recipe inside."""
    import tensorflow as tf

    from asr.features import graph_features
    from asr.model import output_frames
    from asr.normalization import normalize_graph

    class ServingModule(tf.Module):
        def __init__(self):
            super().__init__(name="asr_export")
            self.model = model
            self.alphabet = tf.constant(list(SYMBOLS))
            self.recipe_yaml = tf.constant(dump_recipe(recipe))

        def logits(self, features, frames):
            """Raw features ``[B, T, 93]`` -> ``(logits, output frames)``; normalized in the recipe's
            ``data.normalization`` mode, padded frames zeroed, exactly as evaluation does
            (:mod:`asr.normalization`)."""
            normalized = normalize_graph(features, frames, mean, std, recipe.data.normalization)
            return self.model((normalized, frames), training=False), output_frames(frames, recipe.model)

        def waveform_logits(self, waveforms, lengths):
            return self.logits(*graph_features(waveforms, lengths))

        @tf.function(input_signature=[
            tf.TensorSpec([None, None], tf.float32, name="waveforms"),
            tf.TensorSpec([None], tf.int32, name="lengths"),
        ])  # fmt: skip
        def transcribe(self, waveforms, lengths):
            logits, frames = self.waveform_logits(waveforms, lengths)
            return {"logits": logits, "output_frames": frames, "text": greedy_text_graph(logits, frames)}

        @tf.function(input_signature=[
            tf.TensorSpec([None, None, FEATURE_DIM], tf.float32, name="features"),
            tf.TensorSpec([None], tf.int32, name="frames"),
        ])  # fmt: skip
        def from_features(self, features, frames):
            logits, out = self.logits(features, frames)
            return {"logits": logits, "output_frames": out}

    return ServingModule()


def tflite_bytes(module, quantize: bool) -> bytes:
    """The features model as a TFLite flatbuffer (batch 1, builtin ops only; int8 weights if ``quantize``).

    The function is traced again with a static batch of 1 and its variables frozen into constants: the
    converter cannot read Keras 3 variables inside while loops, nor lower tensor lists whose element shape
    (batch × units) is unknown.
    """
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    function = tf.function(module.logits).get_concrete_function(
        tf.TensorSpec([1, None, FEATURE_DIM], tf.float32, name="features"),
        tf.TensorSpec([1], tf.int32, name="frames"),
    )
    frozen = convert_variables_to_constants_v2(function, lower_control_flow=False)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return converter.convert()


# --------------------------------------------------------------------------- the directory


def export_metadata(recipe: Recipe, info: dict[str, Any], source: str, mean: np.ndarray, std: np.ndarray):
    """``export.json``: what a program needs to use the export without this package."""
    import tensorflow as tf

    return {
        "format_version": EXPORT_FORMAT_VERSION,
        "source": source,
        **{key: info[key] for key in ("epoch", "step", "elapsed") if key in info},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tensorflow": tf.__version__,
        "sample_rate": SAMPLE_RATE,
        "feature_frame_seconds": FRAME_SECONDS,
        "output_frame_seconds": FRAME_SECONDS * recipe.model.conv_stride,
        "conv_kernel": recipe.model.conv_kernel,
        "conv_stride": recipe.model.conv_stride,
        "max_frames": recipe.data.max_frames,
        "alphabet": list(SYMBOLS),
        "blank_id": BLANK_ID,
        "separator_id": SEPARATOR_ID,
        "normalization": {
            "mode": recipe.data.normalization,
            "mean": np.asarray(mean).tolist(),
            "std": np.asarray(std).tolist(),
        },
        "tflite_inputs": ["features float32 [1, T, 93] (asr.extract's, not normalized)", "frames int32 [1]"],
        "tflite_outputs": ["logits float32 [1, T_out, 30]", "output_frames int32 [1]"],
    }


def check_output(options: ExportOptions) -> None:
    """Refuse, before any work, an output that is, contains or lies inside the run directory (``--force``
    included) and one that exists without ``--force``."""
    refuse_overlap(options.out, {"--run": options.run_dir})
    refuse_existing(options.out, options.force)


def write_export(options: ExportOptions, log=print) -> dict[str, Any]:
    """Export the run's checkpoint as ``options`` say; returns ``export.json``'s content."""
    from asr.inference import read_normalization, restore_model, restore_run

    check_output(options)
    recipe, checkpoint, (model, info) = restore_run(options.run_dir, options.step, restore_model, warn=log)
    checkpoint = checkpoint.path
    mean, std = read_normalization(options.run_dir, recipe)
    module = serving_module(model, recipe, mean, std)
    with directory_in_place(options.out, options.force) as temporary:
        metadata = export_metadata(recipe, info, str(checkpoint), mean, std)
        metadata["files"] = _write_formats(module, options.formats, temporary, log)
        write_text(temporary / "recipe.yaml", dump_recipe(recipe))
        metadata["checksums"] = export_checksums(temporary)
        write_json(temporary / EXPORT_FILE, metadata)
    return metadata


def _write_formats(module, formats: Sequence[str], directory: Path, log) -> dict[str, int]:
    """Write each format into ``directory``; returns bytes per file written."""
    import tensorflow as tf

    from asr.checkpoint import tf_write_error

    sizes: dict[str, int] = {}
    if "savedmodel" in formats:
        started = time.perf_counter()
        signatures = {"serving_default": module.transcribe, "features": module.from_features}
        try:
            tf.saved_model.save(module, str(directory), signatures=signatures)
        except (OSError, tf.errors.OpError) as error:  # TF reports a full disk as an OpError
            raise tf_write_error(directory / "saved_model.pb", error) from None
        check_interrupted()
        sizes["saved_model"] = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
        log(f"SavedModel: {sizes['saved_model'] / 1e6:.1f} MB in {time.perf_counter() - started:.1f} s")
    for name in ("tflite", "tflite-int8"):
        if name in formats:
            started = time.perf_counter()
            blob = tflite_bytes(module, quantize=name == "tflite-int8")
            write_bytes(directory / TFLITE_FILES[name], blob)
            check_interrupted()
            sizes[TFLITE_FILES[name]] = len(blob)
            log(f"{TFLITE_FILES[name]}: {len(blob) / 1e6:.1f} MB in {time.perf_counter() - started:.1f} s")
    if "onnx" in formats:
        started = time.perf_counter()
        blob = onnx_bytes(module)
        write_bytes(directory / ONNX_FILE, blob)
        check_interrupted()
        sizes[ONNX_FILE] = len(blob)
        log(f"{ONNX_FILE}: {len(blob) / 1e6:.1f} MB in {time.perf_counter() - started:.1f} s")
    return sizes


def _has_tf2onnx() -> bool:
    import importlib.util

    return importlib.util.find_spec("tf2onnx") is not None


def onnx_bytes(module) -> bytes:
    """The ``features`` signature as an ONNX model (opset 17), batch and length dynamic."""
    import tensorflow as tf
    import tf2onnx

    signature = [
        tf.TensorSpec([None, None, FEATURE_DIM], tf.float32, name="features"),
        tf.TensorSpec([None], tf.int32, name="frames"),
    ]
    proto, _ = tf2onnx.convert.from_function(module.from_features, input_signature=signature, opset=17)
    return proto.SerializeToString()


# --------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None) -> ExportOptions:
    parser = OneLineParser(
        prog=PROG,
        description="Export a run's checkpoint as a SavedModel (waveform in, logits and greedy text out) and "
        "TFLite float32 / int8 models. See docs/inference.md.",
    )
    parser.add_argument("--run", required=True, type=Path, help="run directory of asr.train")
    parser.add_argument("--out", required=True, type=Path, help="export directory to write")
    parser.add_argument("--checkpoint", type=option_type(int, Bound(0)), default=None, metavar="STEP",
                        help="the checkpoint at this step (default: the newest undamaged one)")  # fmt: skip
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), metavar="FORMAT",
                        help=f"what to write (default: {', '.join(FORMATS)}; also onnx, which needs "
                        "tf2onnx)")  # fmt: skip
    parser.add_argument("--force", action="store_true", help="replace an existing export directory")
    args = parser.parse_args(argv)
    try:
        return ExportOptions(args.run, args.out, args.checkpoint, tuple(args.formats), args.force)
    except ExportError as error:
        parser.error(str(error))


def stopping_errors() -> tuple[type[Exception], ...]:
    """What stops an export with a one-line message naming the file, key or option."""
    from asr.checkpoint import CheckpointDamagedError, CheckpointMismatchError, NoValidCheckpointError
    from asr.config import ConfigError
    from asr.inference import NormalizationError

    return (ExportError, OverlapError, ConfigError, NormalizationError, NoValidCheckpointError,
            CheckpointMismatchError, CheckpointDamagedError, OSError)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """The command: 0 when exported, 2 with one ``asr.export: error:`` line, 130 on Ctrl-C."""
    options = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        started = time.perf_counter()
        with interrupts_recorded():
            import_tensorflow()
            metadata = write_export(options, log=lambda line: print(line, file=sys.stderr))
    except stopping_errors() as error:
        print(f"{PROG}: error: {error_line(error, options.out)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    print(f"exported {metadata['source']} (step {metadata.get('step')}) to {options.out} "
          f"in {time.perf_counter() - started:.0f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
