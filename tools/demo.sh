#!/usr/bin/env bash
# The main job: extract -> language model -> train (per-epoch evaluation, TTA) -> final evaluation -> report.
#
#   bash tools/demo.sh [--stage N] [--stop-stage M] [--corpus DIR] [--work DIR] [--run-dir DIR]
#                      [--minutes M] [--final-beam W] [--lm-text FILE|''] [--set section.key=value ...]
#
# Stages (icefall style: each skips work already finished, so re-running continues where it stopped):
#   0  check the environment (venv, KenLM binaries)
#   1  extract features of train-clean, dev-clean, test-clean   -> WORK/{train,dev,test}
#   2  4-gram KenLM model from the training transcripts + LM text  -> WORK/lm
#      (--lm-text: default data/lm-text/minilibri-books.txt.gz, the books minus dev/test; '' = none)
#   3  train recipes/demo.yaml (cpu recipe) until its time budget  -> RUN_DIR
#   4  final evaluation: beam 256 + LM on test-clean and dev-clean -> RUN_DIR/eval
#   5  report (Markdown + HTML + plots)                            -> RUN_DIR/report
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT"
PY=${PYTHON:-$REPO_ROOT/.venv/bin/python}
KENLM_BIN=${KENLM_BIN:-$REPO_ROOT/.cache/kenlm/bin}
STAGE=0
STOP_STAGE=5
CORPUS=data/minilibri-demo
WORK=work/demo
RUN_DIR=runs/demo
MINUTES=""
FINAL_BEAM=256
LM_TEXT=data/lm-text/minilibri-books.txt.gz
SETS=()

usage() { sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
fail() { echo "demo.sh: error: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
    case $1 in
        -h|--help) usage; exit 0 ;;
        --stage) STAGE=${2:?}; shift 2 ;;
        --stop-stage) STOP_STAGE=${2:?}; shift 2 ;;
        --corpus) CORPUS=${2:?}; shift 2 ;;
        --work) WORK=${2:?}; shift 2 ;;
        --run-dir) RUN_DIR=${2:?}; shift 2 ;;
        --minutes) MINUTES=${2:?}; shift 2 ;;
        --final-beam) FINAL_BEAM=${2:?}; shift 2 ;;
        --lm-text) LM_TEXT=${2?}; shift 2 ;;
        --set) SETS+=(--set "${2:?}"); shift 2 ;;
        *) fail "unknown option $1 (see --help)" ;;
    esac
done
[[ $STAGE =~ ^[0-5]$ ]] || fail "--stage: expected 0-5, got '$STAGE'"
[[ $STOP_STAGE =~ ^[0-5]$ ]] || fail "--stop-stage: expected 0-5, got '$STOP_STAGE'"
[[ $FINAL_BEAM =~ ^[1-9][0-9]*$ ]] || fail "--final-beam: expected a positive integer, got '$FINAL_BEAM'"
[[ -z $MINUTES || $MINUTES =~ ^[0-9]+([.][0-9]+)?$ ]] || fail "--minutes: expected a number, got '$MINUTES'"

JOB_STARTED=$(date +%s)
STAGE_STARTED=0
begin() {  # begin N NAME: true when stage N is selected
    (( STAGE <= $1 && $1 <= STOP_STAGE )) || return 1
    echo; echo "=== stage $1: $2 ==="; STAGE_STARTED=$(date +%s); return 0
}
done_in() { echo "--- stage $1 finished in $(( $(date +%s) - STAGE_STARTED )) s"; }

if begin 0 "check the environment"; then
    [[ -x $PY ]] || fail "$PY not found: run 'make demo' (it creates .venv) or set PYTHON=..."
    "$PY" -c "import asr, tensorflow" 2>/dev/null || fail "$PY cannot import asr and tensorflow: run 'make install'"
    [[ -x $KENLM_BIN/lmplz && -x $KENLM_BIN/build_binary ]] \
        || fail "KenLM binaries missing in $KENLM_BIN: run 'make kenlm'"
    [[ -d $CORPUS ]] || fail "--corpus $CORPUS: no such directory"
    [[ -z $LM_TEXT || -f $LM_TEXT ]] || fail "--lm-text $LM_TEXT: no such file"
    echo "python: $PY; KenLM: $KENLM_BIN; corpus: $CORPUS; work: $WORK; run: $RUN_DIR"
    done_in 0
fi

if begin 1 "extract features (80 log-Mel + 13 MFCC, TFRecord shards)"; then
    for pair in train-clean:train dev-clean:dev test-clean:test; do
        subset=${pair%%:*}; split=${pair##*:}
        if [[ -f $WORK/$split/manifest.json ]]; then
            echo "$WORK/$split: done already, skipped"
            continue
        fi
        "$PY" -m asr extract --corpus "$CORPUS" --subsets "$subset" --out "$WORK/$split" --workers "$(nproc)"
    done
    done_in 1
fi

if begin 2 "language model (4-gram KenLM + dictionary: training transcripts${LM_TEXT:+ + $LM_TEXT})"; then
    if [[ -f $WORK/lm/lm.binary ]]; then
        echo "$WORK/lm: done already, skipped"
    else
        text=()
        [[ -n $LM_TEXT ]] && text=(--text "$LM_TEXT")
        "$PY" -m asr lm --manifest "$WORK/train" "${text[@]}" --order 4 --out "$WORK/lm" --kenlm-bin "$KENLM_BIN"
    fi
    done_in 2
fi

if begin 3 "train (recipes/demo.yaml: evaluation every epoch, time-to-accuracy tracker)"; then
    if [[ -f $RUN_DIR/.done ]]; then
        echo "$RUN_DIR: trained already, skipped (delete $RUN_DIR/.done to train on)"
    else
        budget=()
        [[ -n $MINUTES ]] && budget=(--set "train.time_budget_minutes=$MINUTES")
        "$PY" -m asr train recipes/demo.yaml --run-dir "$RUN_DIR" \
            --set "data.train=$WORK/train" --set "data.dev=$WORK/dev" --set "eval.lm=$WORK/lm" \
            "${budget[@]}" "${SETS[@]}"
        touch "$RUN_DIR/.done"
    fi
    done_in 3
fi

if begin 4 "final evaluation (beam $FINAL_BEAM + LM) on test-clean and dev-clean"; then
    if [[ -f $RUN_DIR/.evaluated ]]; then
        echo "$RUN_DIR/eval: done already, skipped"
    else
        "$PY" -m asr evaluate --run "$RUN_DIR" --data "$WORK/test" "$WORK/dev" --beam "$FINAL_BEAM" --lm "$WORK/lm"
        touch "$RUN_DIR/.evaluated"
    fi
    done_in 4
fi

if begin 5 "report"; then
    "$PY" -m asr report "$RUN_DIR" --out "$RUN_DIR/report" > "$RUN_DIR/report.log"
    echo "report: $RUN_DIR/report/report.md and report.html"
    done_in 5
fi

echo
echo "=== headline (whole job: $(( $(date +%s) - JOB_STARTED )) s) ==="
"$PY" - "$RUN_DIR" "$FINAL_BEAM" <<'PYTHON'
import json, sys
from pathlib import Path

import yaml

run = Path(sys.argv[1])
recipe = yaml.safe_load((run / "recipe.yaml").read_text()) if (run / "recipe.yaml").is_file() else {}
window = (recipe.get("tta") or {}).get("window", 3)
events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines() if line.strip()] \
    if (run / "events.jsonl").is_file() else []
targets = [e for e in events if e.get("event") == "target" and e.get("rule") == "median"]
evals = [e for e in events if e.get("event") == "eval"]
for e in targets:
    print(f"TTA {e['metric'].upper()} {e['target']:g} % (median of {window} epochs): {e['elapsed'] / 60:.1f} min")
if evals:
    last = evals[-1]
    print(f"last per-epoch evaluation ({last['split']}, beam {last.get('beam_width')}): "
          f"WER {last['wer']:.1f} %, CER {last['cer']:.1f} % after {last['elapsed'] / 60:.1f} min")
results = run / "eval" / "results.json"
if results.is_file():
    beam = int(sys.argv[2])
    rows = [r for r in json.loads(results.read_text()) if r.get("beam_width") == beam]
    for r in rows:
        print(f"final {r['split']} (beam {beam} + LM): WER {r['wer']:.2f} %, CER {r['cer']:.2f} %")
print(f"report: {run / 'report' / 'report.html'}")
PYTHON
