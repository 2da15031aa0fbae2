"""Inference benchmark: real-time factor, latency against input length, memory, size, energy and accuracy
of every backend a trained model runs on, side by side in one run on this machine.

    python tools/bench_infer.py --run runs/cpu2 --out docs/results/inference

Models: the ``cpu`` recipe's trained model (``--run``) and the paper's model (``recipes/base.yaml``, random
weights: its speed does not depend on them). Backends: ``keras`` (the evaluation path: Keras model in a
``tf.function``), ``keras-xla`` (the same, XLA-compiled), ``savedmodel`` and ``tflite`` / ``tflite-int8``
(``asr.export``'s files). Every (model,
backend, threads) cell runs in a fresh process so that thread settings and peak memory are its own.

Method
- Input: real speech, minilibri test-clean utterances concatenated and cut to 1, 2, 4, 8, 16 and 30 s.
- Latency: per length, one warm-up call, then the median of ``--repeats`` calls; features (numpy, the
  same for every backend), network, and greedy decoding timed apart. RTF = (features + network + greedy)
  seconds / audio seconds. Fit: seconds = a + b × audio seconds (least squares over the lengths, as the
  wav2vec2 paper fits runtime against input size).
- CPU time: the process's user + system seconds over the same calls (all threads).
- Energy of the same calls, by the rule training follows (``asr.sampler``): measured by the CPU packages'
  RAPL counters (``asr.sampler.RaplCounter``) where Linux exposes readable ones (the whole packages: every
  process on them counts); elsewhere an ESTIMATE, the report's (``asr.report.energy.estimated_cpu_joules``):
  CPU seconds × ``--watts-per-core`` (default 3.75 W: a 96-core AMD EPYC 9004 "Genoa" part's 360 W TDP / 96
  cores), the cores' share of package power at full load only, no memory, disk or idle power. This
  project's VM exposes no RAPL counter, so its figures are estimates; the table says which.
- Peak memory: the process's maximum resident set (``ru_maxrss``), runtime included (TensorFlow alone
  is ~400 MB; the TFLite interpreter package ~40 MB).
- Accuracy (trained model only): every test-clean utterance, greedy and beam 64 + the LM, WER/CER by
  ``asr.metrics.score``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from asr.decoding import greedy_text  # noqa: E402 (the repository on the path first)
from asr.features import compute_features  # noqa: E402
from asr.report.energy import estimated_cpu_joules  # noqa: E402
from asr.sampler import POWERCAP_ROOT, RaplCounter, cpu_name  # noqa: E402

LENGTHS = (1, 2, 4, 8, 16, 30)
BACKENDS = ("keras", "keras-xla", "savedmodel", "tflite", "tflite-int8", "onnx")
WATTS_PER_CORE = 3.75
WAV2VEC2_JOULES = (13.90, 15.85)
"""wav2vec2 (small, clustered / vanilla) per inference of 450k samples (28.1 s) on a Jetson Xavier NX."""
WAV2VEC2_SECONDS = 450_000 / 16_000


# --------------------------------------------------------------------------- inputs


def test_utterances(corpus: Path, subset: str = "test-clean") -> list[tuple[str, np.ndarray, str]]:
    """``(utt_id, waveform, transcript)`` of a LibriSpeech-layout subset, in id order."""
    import soundfile

    from asr.corpus import librispeech_candidates
    from asr.text import normalize

    rows = []
    for candidate in sorted(librispeech_candidates(corpus, subset), key=lambda c: c.utt_id):
        waveform, rate = soundfile.read(candidate.path, dtype="float32")
        assert rate == 16_000, f"{candidate.path}: {rate} Hz"
        rows.append((candidate.utt_id, waveform, normalize(candidate.transcript or "")))
    return rows


def speech_of_length(utterances, seconds: float) -> np.ndarray:
    """Utterances joined end to end and cut to ``seconds`` (16 kHz)."""
    needed = int(seconds * 16_000)
    joined = np.concatenate([u[1] for u in utterances])
    while len(joined) < needed:
        joined = np.concatenate([joined, joined])
    return np.ascontiguousarray(joined[:needed])


# --------------------------------------------------------------------------- one cell, in a child process


@dataclasses.dataclass
class Cell:
    model: str
    backend: str
    threads: int
    source: str
    """Run directory (keras backend of the trained model), export directory, or "" (random paper model)."""
    corpus: str
    lengths: tuple[float, ...] = LENGTHS
    repeats: int = 3
    accuracy: bool = False
    lm: str = ""
    powercap_root: str = POWERCAP_ROOT
    """Where the RAPL counters are looked for (a test points it at a fake tree)."""


def load_backend(cell: Cell):
    """The cell's model as an :class:`asr.inference.AcousticModel`, on ``cell.threads`` threads."""
    if cell.backend in ("keras", "keras-xla", "savedmodel"):
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(cell.threads)
        tf.config.threading.set_inter_op_parallelism_threads(cell.threads)
    from asr import inference

    xla = cell.backend == "keras-xla"
    if not cell.backend.startswith("keras"):
        return inference.open_export(cell.source, cell.backend, threads=cell.threads)
    if cell.source:
        return inference.open_run(cell.source, warn=lambda line: None, xla=xla)
    return random_paper_model(xla)


def random_paper_model(xla: bool):
    """The paper's model (``recipes/base.yaml``) with its initial random weights, one device."""
    import tensorflow as tf

    from asr.config import load_recipe
    from asr.features import FEATURE_DIM
    from asr.inference import AcousticModel, build_eval_model, compiled_logits_fn, model_logits_fn

    recipe = load_recipe(REPO / "recipes" / "base.yaml")
    strategy = tf.distribute.get_strategy()
    model = build_eval_model(recipe, strategy)
    mean, std = np.zeros(FEATURE_DIM, np.float32), np.ones(FEATURE_DIM, np.float32)
    if xla:
        logits_fn = compiled_logits_fn(model, recipe.model, mean, std, mode=recipe.data.normalization)
    else:
        logits_fn = model_logits_fn(recipe, strategy, model, mean, std)
    return AcousticModel(logits_fn, recipe, "random weights")


def time_lengths(model, cell: Cell, utterances) -> list[dict]:
    """Per input length: median seconds of features, network and greedy decoding, CPU seconds, and the CPU
    packages' joules (``rapl_joules``) where RAPL is readable (:func:`energy_method`)."""
    rapl = RaplCounter(cell.powercap_root)
    rows = []
    for seconds in cell.lengths:
        waveform = speech_of_length(utterances, seconds)
        model.run([compute_features(waveform)])  # warm-up: graph tracing, tensor allocation
        parts: dict[str, list[float]] = {"features": [], "network": [], "greedy": [], "cpu": []}
        if rapl.available:
            parts["rapl_joules"] = []
        for _ in range(cell.repeats):
            for key, value in time_call(model, waveform, rapl).items():
                parts[key].append(value)
        rows.append({"seconds": seconds, **{k: statistics.median(v) for k, v in parts.items()}})
    return rows


def time_call(model, waveform: np.ndarray, rapl: RaplCounter) -> dict[str, float]:
    """One call, features to text: seconds of each part, CPU seconds, and joules if ``rapl`` is available."""
    joules = rapl.joules() if rapl.available else 0.0
    cpu = time.process_time()
    start = time.perf_counter()
    values = compute_features(waveform)
    after_features = time.perf_counter()
    (logits,) = model.run([values])
    after_network = time.perf_counter()
    greedy_text(logits)
    end = time.perf_counter()
    timed = {"cpu": time.process_time() - cpu, "features": after_features - start,
             "network": after_network - after_features, "greedy": end - after_network}  # fmt: skip
    if rapl.available:
        timed["rapl_joules"] = rapl.joules() - joules
    return timed


def energy_method(powercap_root: str = POWERCAP_ROOT) -> str:
    """How a cell's energy is known on this machine, the rule training's sampler follows: measured where
    RAPL's package counters are readable, else estimated from CPU time."""
    rapl = RaplCounter(powercap_root)
    if rapl.available:
        return f"measured by RAPL ({len(rapl.zones)} package(s), the whole packages)"
    return f"ESTIMATE from CPU seconds ({rapl.unavailable_reason})"


def call_joules(row: dict, watts_per_core: float) -> float:
    """One call's CPU energy (J): RAPL's measurement where the cell had one, else the report's estimate,
    CPU seconds × watts per core."""
    if row.get("rapl_joules") is not None:
        return row["rapl_joules"]
    return estimated_cpu_joules(row["cpu"], watts_per_core)


def measure_accuracy(model, utterances, lm: str, recipe) -> dict:
    """WER/CER on every utterance, greedy and beam 64 + LM; the decoding seconds of each."""
    from asr.decoding import BeamSearchDecoder, GreedyDecoder
    from asr.metrics import score

    started = time.perf_counter()
    logits = model.run_waveforms([u[1] for u in utterances])
    network = time.perf_counter() - started
    references = [u[2] for u in utterances]
    result = {"utterances": len(utterances), "network_seconds": network}
    decoders = {"greedy": GreedyDecoder()}
    if lm:
        decoders["beam64_lm"] = BeamSearchDecoder(64, lm, recipe.eval.lm_alpha, recipe.eval.lm_beta)
    for name, decoder in decoders.items():
        started = time.perf_counter()
        texts = decoder.decode(logits)
        scores = score(references, texts)
        result[name] = {"wer": scores.wer, "cer": scores.cer, "seconds": time.perf_counter() - started}
        decoder.close()
    return result


def run_cell(cell: Cell) -> dict:
    started = time.perf_counter()
    model = load_backend(cell)
    load_seconds = time.perf_counter() - started
    utterances = test_utterances(Path(cell.corpus))
    result = {"cell": dataclasses.asdict(cell), "load_seconds": load_seconds}
    result["energy"] = energy_method(cell.powercap_root)
    result["lengths"] = time_lengths(model, cell, utterances)
    if cell.accuracy:
        result["accuracy"] = measure_accuracy(model, utterances, cell.lm, model.recipe)
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def peak_rss_mb() -> float:
    """This process's peak resident set (``VmHWM``); not ``ru_maxrss``, which Linux carries over ``exec``
    from the forked parent's memory."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --------------------------------------------------------------------------- the parent


def prepare_exports(run_dir: Path, work: Path) -> dict[str, Path]:
    """``asr.export`` of the trained model and of the random paper model into ``work``."""
    from asr.export import ExportOptions, write_export

    exports = {"cpu": work / "cpu"}
    write_export(ExportOptions(run_dir, exports["cpu"], formats=formats(), force=True), log=lambda line: None)
    exports["paper"] = work / "paper"
    export_random_paper_model(exports["paper"])
    return exports


def formats() -> tuple[str, ...]:
    """Every export format; ONNX only where tf2onnx is installed (optional: ``docs/inference.md``)."""
    from asr.export import FORMATS, _has_tf2onnx

    return FORMATS + (("onnx",) if _has_tf2onnx() else ())


def export_random_paper_model(out: Path) -> None:
    from asr.config import dump_recipe, load_recipe
    from asr.export import _write_formats, export_metadata, serving_module
    from asr.features import FEATURE_DIM
    from asr.files import write_json, write_text
    from asr.model import build_model

    recipe = load_recipe(REPO / "recipes" / "base.yaml")
    mean, std = np.zeros(FEATURE_DIM, np.float32), np.ones(FEATURE_DIM, np.float32)
    module = serving_module(build_model(recipe.model), recipe, mean, std)
    out.mkdir(parents=True, exist_ok=True)
    metadata = export_metadata(recipe, {}, "random weights (recipes/base.yaml)", mean, std)
    metadata["files"] = _write_formats(module, formats(), out, lambda line: None)
    write_text(out / "recipe.yaml", dump_recipe(recipe))
    write_json(out / "export.json", metadata)


def model_bytes(model: str, backend: str, run_dir: Path, export: Path) -> int:
    """Bytes on disk of what the backend loads (keras: the checkpoint's weight files)."""
    if backend.startswith("keras"):
        if model == "paper":
            return json.loads((export / "export.json").read_text())["files"]["saved_model"]
        from asr.checkpoint import list_checkpoints

        newest = list_checkpoints(run_dir)[-1].path
        weights = [p for p in newest.parent.glob(f"{newest.name}.*") if not p.name.endswith(".json")]
        return sum(p.stat().st_size for p in weights)
    files = json.loads((export / "export.json").read_text())["files"]
    names = {"savedmodel": "saved_model", "tflite": "model.tflite", "tflite-int8": "model-int8.tflite",
             "onnx": "model.onnx"}  # fmt: skip
    return files[names[backend]]


def run_child(cell: Cell) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(dataclasses.asdict(cell))],
        capture_output=True, text=True, cwd=REPO, timeout=3600,
    )  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"{cell.model}/{cell.backend}/{cell.threads}: failed\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def summarize(result: dict, watts: float) -> dict:
    rows = result["lengths"]
    x = np.array([r["seconds"] for r in rows])
    total = np.array([r["features"] + r["network"] + r["greedy"] for r in rows])
    slope, intercept = np.polyfit(x, total, 1)
    by_length = {float(r["seconds"]): r for r in rows}
    longest = rows[-1]
    return {
        "fit_a_ms": intercept * 1e3,
        "fit_b_ms_per_s": slope * 1e3,
        "latency_1s_ms": _rtf(rows[0]) * rows[0]["seconds"] * 1e3,
        "rtf_16s": _rtf(by_length.get(16.0)),
        "rtf_longest": _rtf(longest),
        "joules_longest": call_joules(longest, watts),
        "joules_per_audio_s": call_joules(longest, watts) / longest["seconds"],
    }


def _rtf(row: dict | None) -> float:
    if row is None:
        return float("nan")
    return (row["features"] + row["network"] + row["greedy"]) / row["seconds"]


def markdown(results: list[dict], sizes: dict, watts: float, cpu: str) -> str:
    methods = sorted({r.get("energy", "ESTIMATE from CPU seconds") for r in results})
    estimated = any(method.startswith("ESTIMATE") for method in methods)
    lines = [
        f"CPU: {cpu}. Energy: {'; '.join(methods)}"
        + (f"; the estimate: CPU seconds × {watts} W per core." if estimated else "."),
        "",
        "| model | backend | threads | load s | peak RSS MB | file MB | a ms | b ms per audio s "
        f"| latency 1 s ms | RTF 16 s | RTF 30 s | J per 30 s{' (est.)' * estimated} "
        f"| J per audio s{' (est.)' * estimated} |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        cell, s = result["cell"], summarize(result, watts)
        size = sizes[(cell["model"], cell["backend"])] / 1e6
        lines.append(
            f"| {cell['model']} | {cell['backend']} | {cell['threads']} | {result['load_seconds']:.1f} "
            f"| {result['peak_rss_mb']:.0f} | {size:.1f} | {s['fit_a_ms']:.1f} | {s['fit_b_ms_per_s']:.2f} "
            f"| {s['latency_1s_ms']:.1f} | {s['rtf_16s']:.4f} | {s['rtf_longest']:.4f} "
            f"| {s['joules_longest']:.2f} | {s['joules_per_audio_s']:.3f} |"
        )
    lines += ["", "Where the time goes (16 s input, ms)", "",
              "| model | backend | threads | features | network | greedy |",
              "|---|---|---:|---:|---:|---:|"]  # fmt: skip
    for result in results:
        cell = result["cell"]
        row = next((r for r in result["lengths"] if float(r["seconds"]) == 16.0), None)
        if row:
            lines.append(f"| {cell['model']} | {cell['backend']} | {cell['threads']} "
                         f"| {row['features'] * 1e3:.1f} | {row['network'] * 1e3:.1f} "
                         f"| {row['greedy'] * 1e3:.2f} |")  # fmt: skip
    accuracy = [r for r in results if "accuracy" in r]
    if accuracy:
        lines += ["", "Accuracy on minilibri test-clean (trained cpu model)", "",
                  "| backend | greedy WER | greedy CER | beam 64 + LM WER | beam 64 + LM CER | beam s |",
                  "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
        for result in accuracy:
            a = result["accuracy"]
            beam = a.get("beam64_lm", {"wer": float("nan"), "cer": float("nan"), "seconds": float("nan")})
            lines.append(f"| {result['cell']['backend']} | {a['greedy']['wer']:.2f} "
                         f"| {a['greedy']['cer']:.2f} | {beam['wer']:.2f} | {beam['cer']:.2f} "
                         f"| {beam['seconds']:.1f} |")  # fmt: skip
    low, high = WAV2VEC2_JOULES
    per_second = f"{low / WAV2VEC2_SECONDS:.2f}–{high / WAV2VEC2_SECONDS:.2f}"
    lines += ["", f"Seed paper: wav2vec2 on a Jetson Xavier NX, {low}–{high} J per {WAV2VEC2_SECONDS:.1f} s "
              f"input = {per_second} J per audio second (measured at the board's power rail)."]  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colours = {backend: f"C{i}" for i, backend in enumerate(BACKENDS)}
    for axis, model in zip(axes, ("cpu", "paper"), strict=True):
        for result in (r for r in results if r["cell"]["model"] == model):
            cell = result["cell"]
            x = [r["seconds"] for r in result["lengths"]]
            y = [(r["features"] + r["network"] + r["greedy"]) * 1e3 for r in result["lengths"]]
            style = "-" if cell["threads"] == 1 else "--"
            axis.plot(x, y, marker="o", color=colours.get(cell["backend"]), linestyle=style,
                      label=f"{cell['backend']}, {cell['threads']} thr")  # fmt: skip
        axis.set(
            title=f"{model} model", xlabel="audio seconds", ylabel="latency ms (features+network+greedy)"
        )
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    from asr.config import Bound, OneLineParser, option_type

    parser = OneLineParser(prog="tools/bench_infer.py", description=__doc__.split("\n\n")[0])
    positive = option_type(float, Bound(0, low_open=True))
    parser.add_argument("--run", type=Path, default=REPO / "runs" / "cpu2", help="trained cpu-recipe run")
    parser.add_argument("--corpus", type=Path, default=REPO.parent / "shared" / "minilibri")
    parser.add_argument("--lm", default=str(REPO / "work" / "minilibri" / "lm"))
    parser.add_argument("--models", nargs="+", default=["cpu", "paper"])
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS))
    parser.add_argument("--threads", nargs="+", type=option_type(int, Bound(1)), default=[1, 2])
    parser.add_argument("--lengths", nargs="+", type=positive, default=list(LENGTHS))
    parser.add_argument("--repeats", type=option_type(int, Bound(1)), default=3)
    parser.add_argument("--watts-per-core", type=positive, default=WATTS_PER_CORE)
    parser.add_argument("--no-accuracy", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="directory for results.md/json and the plot")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--replot", type=Path, help="only redraw the plot from a results.json")
    args = parser.parse_args()
    if args.replot:
        plot(json.loads(args.replot.read_text()), args.replot.with_name("latency.png"))
        return
    if args.child:
        print(json.dumps(run_cell(Cell(**json.loads(args.child)))))
        return
    work = Path(tempfile.mkdtemp(prefix="bench-infer-"))
    print(f"exporting into {work} ...", file=sys.stderr)
    exports = prepare_exports(args.run, work)
    results, sizes = [], {}
    backends = [b for b in args.backends if b != "onnx" or "onnx" in formats()]
    if backends != args.backends:
        print("onnx: skipped, tf2onnx is not installed (docs/inference.md)", file=sys.stderr)
    for model in args.models:
        for backend in backends:
            sizes[(model, backend)] = model_bytes(model, backend, args.run, exports[model])
            for threads in args.threads:
                keras = backend.startswith("keras")
                source = str(exports[model]) if not keras else str(args.run) if model == "cpu" else ""
                accuracy = model == "cpu" and threads == max(args.threads) and not args.no_accuracy
                cell = Cell(model, backend, threads, source, str(args.corpus), tuple(args.lengths),
                            args.repeats, accuracy, args.lm)  # fmt: skip
                print(f"{model} / {backend} / {threads} thread(s) ...", file=sys.stderr)
                results.append(run_child(cell))
    table = markdown(results, sizes, args.watts_per_core, cpu_name())
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.md").write_text(table)
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
        plot(results, args.out / "latency.png")


if __name__ == "__main__":
    main()
