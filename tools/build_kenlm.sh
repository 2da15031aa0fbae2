#!/usr/bin/env bash
# Build KenLM's `lmplz` and `build_binary` (not shipped in the kenlm wheel) from the kenlm==0.3.0
# source distribution and copy them into OUT_BIN_DIR.
#
#   bash tools/build_kenlm.sh OUT_BIN_DIR        (the Makefile runs: bash tools/build_kenlm.sh .cache/kenlm/bin)
#
# Idempotent: does nothing when both binaries are already in OUT_BIN_DIR. Installs the Debian build
# dependencies with apt-get only when they are missing. Takes about 30 s on 2 cores. Quiet: one progress
# line per step; the full build log is kept only when a step fails.
set -euo pipefail

KENLM_VERSION=0.3.0
DEBIAN_PACKAGES=(cmake g++ make libboost-program-options-dev libboost-system-dev libboost-thread-dev
                 libboost-test-dev zlib1g-dev libbz2-dev liblzma-dev)

fail() { echo "error: build_kenlm: $*" >&2; exit 2; }
step() { echo "kenlm: $*" >&2; }

[[ $# -eq 1 && -n "$1" ]] || fail "usage: bash tools/build_kenlm.sh OUT_BIN_DIR"
OUT_DIR=$1

if [[ -x "$OUT_DIR/lmplz" && -x "$OUT_DIR/build_binary" ]]; then
    step "lmplz and build_binary already in $OUT_DIR"
    exit 0
fi

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -n "${PYTHON:-}" ]]; then
    PY=$PYTHON
elif [[ -x "$REPO_ROOT/.venv/bin/python" ]]; then
    PY=$REPO_ROOT/.venv/bin/python
else
    PY=$(command -v python3 || true)
fi
[[ -n "$PY" ]] || fail "no python found to run 'pip download' (set PYTHON=...)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/build_kenlm.XXXXXX")
LOG=$WORK/build.log
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT

run_logged() {  # run a step quietly; on failure show the log's tail and keep a copy
    local what=$1; shift
    if ! "$@" >>"$LOG" 2>&1; then
        local kept="${TMPDIR:-/tmp}/build_kenlm.log"
        cp "$LOG" "$kept"
        tail -n 25 "$LOG" >&2
        fail "$what failed (full log: $kept)"
    fi
}

missing=()
for package in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if (( ${#missing[@]} )); then
    command -v apt-get >/dev/null || fail "missing build packages (${missing[*]}) and no apt-get to install them"
    SUDO=""
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || fail "missing build packages (${missing[*]}); install them as root"
        SUDO=sudo
    fi
    step "[1/5] installing ${missing[*]} with apt-get"
    run_logged "apt-get update" $SUDO apt-get update -qq
    run_logged "apt-get install" env DEBIAN_FRONTEND=noninteractive \
        $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
    step "[1/5] build packages present"
fi

step "[2/5] fetching the kenlm==$KENLM_VERSION source distribution"
run_logged "pip download kenlm==$KENLM_VERSION" \
    "$PY" -m pip download --quiet --no-deps --no-binary kenlm --no-build-isolation \
        "kenlm==$KENLM_VERSION" -d "$WORK/dist"
ARCHIVE=$(find "$WORK/dist" -maxdepth 1 -name "kenlm-*" -print -quit)
[[ -n "$ARCHIVE" ]] || fail "pip download left no kenlm archive in $WORK/dist"
mkdir -p "$WORK/src"
run_logged "unpacking $(basename "$ARCHIVE")" tar -xf "$ARCHIVE" -C "$WORK/src" --strip-components=1
[[ -f "$WORK/src/CMakeLists.txt" ]] || fail "$(basename "$ARCHIVE") has no CMakeLists.txt"

step "[3/5] configuring with cmake"
run_logged "cmake configure" cmake -S "$WORK/src" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release

JOBS=$(nproc 2>/dev/null || echo 2)
step "[4/5] compiling lmplz and build_binary ($JOBS jobs)"
run_logged "compiling" cmake --build "$WORK/build" --target lmplz build_binary -- -j "$JOBS"

step "[5/5] installing into $OUT_DIR"
mkdir -p "$OUT_DIR"
for tool in lmplz build_binary; do
    built=$(find "$WORK/build" -type f -name "$tool" -perm -u+x -print -quit)
    [[ -n "$built" ]] || fail "the build produced no $tool"
    cp "$built" "$OUT_DIR/.$tool.tmp"
    mv -f "$OUT_DIR/.$tool.tmp" "$OUT_DIR/$tool"
done
"$OUT_DIR/lmplz" --help >/dev/null 2>&1 || true
step "done: $OUT_DIR/lmplz, $OUT_DIR/build_binary"
