#!/usr/bin/env bash
# Prefill and decode speed of p2g's in-process controller vs llama.cpp (llama-cpp-python) on
# the same GGUF files, 2 threads, one after the other. Needs the qwen2.5-coder-0.5b bundle
# (p2g models fetch qwen2.5-coder-0.5b) and a venv with llama-cpp-python:
#   python3 -m venv /tmp/llv && /tmp/llv/bin/pip install llama-cpp-python==0.3.36   # builds llama.cpp, ~10 min
# Usage: bash benches/controller_vs_llamacpp.sh [VENV] [N_DECODE]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-/tmp/llv}
N=${2:-64}
PROMPT=benches/prompt_receipt.txt
cargo build --release --example controller_speed 2>/dev/null
DIR=$(./target/release/p2g models path qwen2.5-coder-0.5b)
export RAYON_NUM_THREADS=2
for f in qwen2.5-coder-0.5b-instruct.gguf; do
  echo "# $f"
  ./target/release/examples/controller_speed "$DIR/$f" "$PROMPT" "$N" | sed "s/^{/{\"file\":\"$f\",/"
  "$VENV/bin/python" benches/llamacpp_speed.py "$DIR/$f" "$PROMPT" "$N" 2 | sed "s/^{/{\"file\":\"$f\",/"
done
