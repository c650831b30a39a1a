#!/usr/bin/env bash
# OCR benchmark: p2g vs RapidOCR (rapidocr_onnxruntime 1.4.4), same PP-OCRv5
# ONNX model files, same thresholds, same thread budget, on the SROIE receipts.
#
#   bash benches/ocr_vs_rapidocr.sh [N_IMAGES]      # default: all images
#   MODE=one bash benches/ocr_vs_rapidocr.sh [N_IMAGES]
#
# MODE (default: per):
#   per   one process per image per engine; wall time and peak RSS are per image.
#   one   one process per engine over all images (`p2g ocr --json IMG...`,
#         `rapidocr_run.py IMG...`), models loaded once; per-image in-process times
#         from each engine's JSON, wall time and peak RSS once per process
#         ($BENCH_OUT/process-<engine>.json). Image and model files are read once
#         beforehand so both engines find them in the OS file cache.
# IMAGES_DIR: benchmark the images in this folder (.jpg/.jpeg/.png, sorted by name;
#   a relative path is taken from the current directory) instead of $SROIE_DIR/img.
#   They are still scored against $SROIE_DIR/box: STEM.csv, or, when there is none,
#   the stem minus its last _suffix (024_600dpi.jpg -> box/024.csv), with the
#   predicted boxes scaled back to the size of $SROIE_DIR/img/024.*. Images with no
#   ground truth are timed but not scored.
#
# Large scans (300 and 600 dpi upscales of three receipts; Pillow needed, see the
# script's docstring), then one process per engine over them:
#   /work/scratch/venv-pil/bin/python benches/make_large_scans.py \
#       --src ../shared/eval/sroie-dev/img --ids 000,010,024 --out target/large-scans \
#     && MODE=one IMAGES_DIR=target/large-scans bash benches/ocr_vs_rapidocr.sh
#
# Environment overrides (all optional):
#   MODE           per | one (above)
#   IMAGES_DIR     images to benchmark (above; default: $SROIE_DIR/img)
#   SROIE_DIR      ground-truth folder (default: <repo>/../shared/eval/sroie-dev)
#   BENCH_OUT      results folder      (default: <repo>/target/bench-ocr)
#   THREADS        threads per engine  (default: 2)
#   P2G_BIN        use this p2g binary and skip `cargo build --release`
#   RAPIDOCR_PYTHON  use this python (must already have rapidocr-onnxruntime==1.4.4
#                  and onnxruntime==1.32.0) instead of building a throwaway venv
#
# Outputs in $BENCH_OUT: p2g.jsonl, rapidocr.jsonl (one record per image:
# predictions + elapsed_ms + wall_s + peak_kib; in MODE=one wall_s/peak_kib are
# null there and in process-p2g.json / process-rapidocr.json instead), meta.json,
# report.md, and logs/ with each run's stderr.
set -euo pipefail

RAPIDOCR_VERSION=1.4.4
ONNXRUNTIME_VERSION=1.32.0
# Detection / recognition thresholds. These are p2g's defaults; RapidOCR is
# given the same values explicitly (its own defaults differ: box 0.5, unclip 1.6).
DET_THRESH=0.3
BOX_THRESH=0.6
UNCLIP_RATIO=1.5
TEXT_SCORE=0.5

die() { echo "ocr_vs_rapidocr: error: $*" >&2; exit 1; }
say() { echo "==> $*" >&2; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CALLER_PWD="$PWD"
cd "$ROOT"

MODE="${MODE:-per}"
case "$MODE" in
    per|one) ;;
    *) die "MODE must be 'per' (one process per image per engine, the default) or 'one' (one process per engine over all images), got '$MODE'" ;;
esac

N_IMAGES="${1:-}"
if [[ -n "$N_IMAGES" && ! "$N_IMAGES" =~ ^[1-9][0-9]*$ ]]; then
    die "N_IMAGES must be a positive integer, got '$N_IMAGES' (usage: bash benches/ocr_vs_rapidocr.sh [N_IMAGES])"
fi
SROIE_DIR="${SROIE_DIR:-$ROOT/../shared/eval/sroie-dev}"
BENCH_OUT="${BENCH_OUT:-$ROOT/target/bench-ocr}"
THREADS="${THREADS:-2}"

if [[ -n "${IMAGES_DIR:-}" ]]; then
    [[ "$IMAGES_DIR" == /* ]] || IMAGES_DIR="$CALLER_PWD/$IMAGES_DIR"
    [[ -d "$IMAGES_DIR" ]] || die "IMAGES_DIR not found: $IMAGES_DIR"
    IMAGES_DIR="$(cd "$IMAGES_DIR" && pwd)"
    [[ -d "$SROIE_DIR/box" ]] || die "ground-truth folder not found: $SROIE_DIR/box (IMAGES_DIR is scored against \$SROIE_DIR/box; set SROIE_DIR)"
    SROIE_DIR="$(cd "$SROIE_DIR" && pwd)"
else
    [[ -d "$SROIE_DIR/img" && -d "$SROIE_DIR/box" ]] || die "SROIE folder not found: $SROIE_DIR (expected img/ and box/)"
    SROIE_DIR="$(cd "$SROIE_DIR" && pwd)"
    IMAGES_DIR="$SROIE_DIR/img"
fi
[[ -x /usr/bin/time ]] || die "/usr/bin/time (GNU time) is required for peak-RSS measurement (apt-get install time)"
command -v python3 >/dev/null || die "python3 is required"
[[ -n "${P2G_BIN:-}" ]] || command -v cargo >/dev/null || die "cargo is required"

export OMP_NUM_THREADS="$THREADS"

mapfile -t IMAGES < <(find "$IMAGES_DIR" -maxdepth 1 -type f \( -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.png' \) | LC_ALL=C sort)
(( ${#IMAGES[@]} > 0 )) || die "no images (.jpg/.jpeg/.png) in $IMAGES_DIR"
if [[ -n "$N_IMAGES" ]] && (( N_IMAGES < ${#IMAGES[@]} )); then
    IMAGES=("${IMAGES[@]:0:$N_IMAGES}")
fi
if [[ "$MODE" == per ]]; then
    say "benchmarking ${#IMAGES[@]} image(s) from $IMAGES_DIR with $THREADS thread(s) per engine"
else
    say "benchmarking ${#IMAGES[@]} image(s) from $IMAGES_DIR with $THREADS thread(s) per engine, one process per engine (MODE=one)"
fi

TMP="$(mktemp -d "${TMPDIR:-/tmp}/p2g-bench-ocr.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

# --- 1. p2g -----------------------------------------------------------------
if [[ -n "${P2G_BIN:-}" ]]; then
    P2G="$P2G_BIN"
    say "using p2g binary $P2G (P2G_BIN set: no cargo build)"
    [[ -x "$P2G" ]] || die "P2G_BIN=$P2G is not an executable"
else
    say "building p2g (cargo build --release)"
    cargo build --release || die "cargo build --release failed"
    P2G="$ROOT/target/release/p2g"
    [[ -x "$P2G" ]] || die "$P2G was not produced by the build"
fi

say "making sure p2g's OCR models are cached (p2g models fetch ocr)"
"$P2G" models fetch ocr >&2 || die "'p2g models fetch ocr' failed"
MODELS="$("$P2G" models path ocr | tail -n 1)"
[[ -n "$MODELS" ]] || die "'p2g models path ocr' printed nothing"
for f in ppocrv5_det.onnx ppocrv5_rec.onnx ppocrv5_cls.onnx ppocr_keys_v5.txt; do
    [[ -f "$MODELS/$f" ]] || die "'p2g models path ocr' gave $MODELS, but $MODELS/$f is missing"
done
say "OCR models: $MODELS"

# --- 2. RapidOCR in a throwaway venv -------------------------------------------
if [[ -n "${RAPIDOCR_PYTHON:-}" ]]; then
    PY="$RAPIDOCR_PYTHON"
    say "using existing python for RapidOCR: $PY"
else
    say "creating throwaway venv and installing rapidocr-onnxruntime==$RAPIDOCR_VERSION onnxruntime==$ONNXRUNTIME_VERSION"
    python3 -m venv "$TMP/venv" || die "python3 -m venv failed (install python3-venv?)"
    PY="$TMP/venv/bin/python"
    "$PY" -m pip install --quiet --disable-pip-version-check \
        "rapidocr-onnxruntime==$RAPIDOCR_VERSION" "onnxruntime==$ONNXRUNTIME_VERSION" >&2 \
        || die "pip install of rapidocr-onnxruntime/onnxruntime failed"
fi
VERSIONS="$("$PY" -c 'import importlib.metadata as m; print(m.version("rapidocr-onnxruntime"), m.version("onnxruntime"))')" \
    || die "RapidOCR python environment is broken: $PY"
read -r GOT_RAPID GOT_ORT <<<"$VERSIONS"
[[ "$GOT_RAPID" == "$RAPIDOCR_VERSION" ]] || die "expected rapidocr-onnxruntime $RAPIDOCR_VERSION, found $GOT_RAPID"
[[ "$GOT_ORT" == "$ONNXRUNTIME_VERSION" ]] || die "expected onnxruntime $ONNXRUNTIME_VERSION, found $GOT_ORT"

# p2g loads its pinned libonnxruntime.so.1.32.0 from the model store: the very file the
# onnxruntime==1.32.0 wheel in the venv carries (same sha256), so both run the same build.

# --- 3. run ------------------------------------------------------------------
mkdir -p "$BENCH_OUT/logs"
rm -f "$BENCH_OUT/p2g.jsonl" "$BENCH_OUT/rapidocr.jsonl" "$BENCH_OUT/report.md" \
    "$BENCH_OUT/process-p2g.json" "$BENCH_OUT/process-rapidocr.json"

BENCH_P2G="$P2G" BENCH_RAPID="$GOT_RAPID" BENCH_ORT="$GOT_ORT" BENCH_PY="$PY" BENCH_MODELS="$MODELS" \
BENCH_THREADS="$THREADS" BENCH_N="${#IMAGES[@]}" BENCH_IMGDIR="$IMAGES_DIR" BENCH_MODE="$MODE" \
BENCH_THRESH="det_thresh $DET_THRESH, box_thresh $BOX_THRESH, unclip_ratio $UNCLIP_RATIO, text_score $TEXT_SCORE" \
python3 - "$BENCH_OUT/meta.json" <<'EOF'
import datetime, json, os, platform, subprocess, sys
E = os.environ
def sh(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    except Exception:
        return "unknown"
cpu = "unknown"
try:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
except OSError:
    pass
commit = sh("git", "rev-parse", "--short", "HEAD")
dirty = sh("git", "status", "--porcelain")
pyver = sh(E["BENCH_PY"], "-c", "import platform; print(platform.python_version())")
json.dump({
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    "host": f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}",
    "p2g": f"{sh(E['BENCH_P2G'], '--version')} (git {commit}{'+dirty' if dirty not in ('', 'unknown') else ''})",
    "RapidOCR": f"rapidocr-onnxruntime {E['BENCH_RAPID']}, onnxruntime {E['BENCH_ORT']} (python {pyver})",
    "p2g ONNX Runtime": "pinned libonnxruntime.so.1.32.0 from the p2g model store",
    "models": f"{E['BENCH_MODELS']} (ppocrv5_det/cls/rec.onnx, ppocr_keys_v5.txt)",
    "threads": f"{E['BENCH_THREADS']} per engine (ORT intra-op {E['BENCH_THREADS']}, inter-op 1), OMP_NUM_THREADS={E.get('OMP_NUM_THREADS')}",
    "thresholds": E["BENCH_THRESH"],
    "images": f"{E['BENCH_N']} from {E['BENCH_IMGDIR']}",
    **({"mode": "one process per engine over all images (models loaded once)"}
       if E["BENCH_MODE"] == "one" else {}),
}, open(sys.argv[1], "w"), indent=1)
EOF

run_one() {  # engine image -- command...
    local engine="$1" img="$2"; shift 3
    local stem; stem="$(basename "${img%.*}")"
    local rc=0
    rm -f "$TMP/time" "$TMP/stdout"
    /usr/bin/time -f '%e %M' -o "$TMP/time" "$@" >"$TMP/stdout" 2>"$BENCH_OUT/logs/$engine-$stem.stderr" || rc=$?
    if (( rc != 0 )); then
        echo "ocr_vs_rapidocr: warning: $engine failed on $img (exit $rc); last stderr lines:" >&2
        tail -n 5 "$BENCH_OUT/logs/$engine-$stem.stderr" | sed 's/^/    /' >&2
    fi
    python3 benches/report.py record --engine "$engine" --image "$img" \
        --stdout "$TMP/stdout" --time "$TMP/time" --rc "$rc" --out "$BENCH_OUT/$engine.jsonl"
}

run_all() {  # engine -- command... (MODE=one: one process over all of IMAGES)
    local engine="$1"; shift 2
    local rc=0
    rm -f "$TMP/time" "$TMP/stdout"
    say "$engine: one process over ${#IMAGES[@]} image(s)"
    /usr/bin/time -f '%e %M' -o "$TMP/time" "$@" >"$TMP/stdout" 2>"$BENCH_OUT/logs/$engine-all.stderr" || rc=$?
    if (( rc != 0 )); then
        echo "ocr_vs_rapidocr: warning: $engine exited with status $rc (an image failed, or the process died);" \
            "see $BENCH_OUT/logs/$engine-all.stderr; last lines:" >&2
        tail -n 5 "$BENCH_OUT/logs/$engine-all.stderr" | sed 's/^/    /' >&2
    fi
    python3 benches/report.py record-one --engine "$engine" \
        --stdout "$TMP/stdout" --time "$TMP/time" --rc "$rc" \
        --out "$BENCH_OUT/$engine.jsonl" --process "$BENCH_OUT/process-$engine.json" "${IMAGES[@]}"
}

if [[ "$MODE" == per ]]; then
    i=0
    for img in "${IMAGES[@]}"; do
        i=$((i + 1))
        say "[$i/${#IMAGES[@]}] $(basename "$img")"
        # sequential, never in parallel: one engine at a time owns the CPUs
        run_one p2g "$img" -- "$P2G" ocr --json --threads "$THREADS" "$img"
        run_one rapidocr "$img" -- "$PY" benches/rapidocr_run.py --models "$MODELS" --threads "$THREADS" \
            --det-thresh "$DET_THRESH" --box-thresh "$BOX_THRESH" \
            --unclip-ratio "$UNCLIP_RATIO" --text-score "$TEXT_SCORE" "$img"
    done
else
    # Warm the OS file cache so that neither engine pays disk reads the other does not:
    # the images, the model files, p2g's pinned libonnxruntime (or P2G_ORT_DYLIB), and
    # RapidOCR's python packages (its onnxruntime .so).
    say "warming the file cache (images, models, both engines' ONNX Runtime)"
    cat "${IMAGES[@]}" >/dev/null || die "cannot read the images"
    cat "$MODELS"/* >/dev/null 2>&1 || true
    ORT_DIR="$("$P2G" models path onnxruntime 2>/dev/null | tail -n 1)" || ORT_DIR=""
    if [[ -n "$ORT_DIR" && -d "$ORT_DIR" ]]; then cat "$ORT_DIR"/* >/dev/null 2>&1 || true; fi
    if [[ -n "${P2G_ORT_DYLIB:-}" ]]; then cat "$P2G_ORT_DYLIB" >/dev/null 2>&1 || true; fi
    "$PY" -c 'import rapidocr_onnxruntime, onnxruntime' >/dev/null 2>&1 \
        || die "'import rapidocr_onnxruntime, onnxruntime' fails in $PY"
    # sequential, never in parallel: one engine at a time owns the CPUs
    run_all p2g -- "$P2G" ocr --json --threads "$THREADS" "${IMAGES[@]}"
    run_all rapidocr -- "$PY" benches/rapidocr_run.py --models "$MODELS" --threads "$THREADS" \
        --det-thresh "$DET_THRESH" --box-thresh "$BOX_THRESH" \
        --unclip-ratio "$UNCLIP_RATIO" --text-score "$TEXT_SCORE" "${IMAGES[@]}"
fi

# --- 4. report -----------------------------------------------------------------
say "report ($BENCH_OUT/report.md)"
if [[ "$MODE" == per ]]; then
    python3 benches/report.py table --gt "$SROIE_DIR" --results "$BENCH_OUT" --meta "$BENCH_OUT/meta.json"
    say "raw results: $BENCH_OUT/p2g.jsonl $BENCH_OUT/rapidocr.jsonl"
else
    python3 benches/report.py table-one --gt "$SROIE_DIR" --results "$BENCH_OUT" --meta "$BENCH_OUT/meta.json"
    say "raw results: $BENCH_OUT/p2g.jsonl $BENCH_OUT/rapidocr.jsonl $BENCH_OUT/process-p2g.json $BENCH_OUT/process-rapidocr.json"
fi
