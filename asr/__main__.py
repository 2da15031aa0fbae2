"""``python -m asr`` (or the ``asr`` console script): list the stages, or run one by name.

``asr extract ...`` is the same as ``python -m asr.extract ...``; each stage keeps its own
arguments and ``--help``.
"""

from __future__ import annotations

import importlib
import sys

STAGES: dict[str, str] = {
    "extract": "corpus (LibriSpeech layout or a CSV/JSONL manifest) -> 93-dim features in TFRecord shards",
    "lm": "training transcripts -> KenLM n-gram language model and dictionary",
    "train": "recipe YAML -> trained model, checkpoints, event log, per-epoch evaluation, TTA",
    "evaluate": "checkpoint + shards -> WER/CER tables (beam search + LM), beam sweeps, --watch",
    "report": "run directories -> time-to-accuracy, cost, energy and throughput report (Markdown + HTML)",
    "export": "checkpoint -> SavedModel (waveform in, text out) and TFLite float32 / int8 models",
    "transcribe": "audio files (any format, rate, channels, length) + run or export -> text, word times",
}

USAGE = "usage: python -m asr STAGE [ARGS...]   (python -m asr STAGE --help for a stage's options)"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        print("\nstages, in the order the data flows:")
        for name, what in STAGES.items():
            print(f"  {name:<9} {what}")
        print("\nThe whole pipeline on the bundled corpus: make demo  (see README.md)")
        return 0
    stage, rest = args[0], args[1:]
    if stage not in STAGES:
        print(f"asr: error: unknown stage {stage!r} (stages: {', '.join(STAGES)})", file=sys.stderr)
        return 2
    module = importlib.import_module(f"asr.{stage}")
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
