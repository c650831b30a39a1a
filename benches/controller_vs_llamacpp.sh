#!/usr/bin/env bash
# Prefill and decode speed of p2g's in-process controller vs llama.cpp (llama-cpp-python) on
# the same GGUF files, 2 threads, one after the other. Needs the qwen2.5-coder-0.5b bundle
# (p2g models fetch qwen2.5-coder-0.5b) and a venv with llama-cpp-python, built with the
# SIMD levels named (a default GGML_NATIVE build dies with "Illegal instruction" on VMs whose
# CPU advertises AMX without enabling it); name only what the CPU has (grep flags
# /proc/cpuinfo: AVX_VNNI is absent on AMD EPYC, for one):
#   python3 -m venv /tmp/llv && CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON \
#     -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON \
#     -DGGML_AVX512_BF16=ON -DLLAMA_CURL=OFF" /tmp/llv/bin/pip install llama-cpp-python==0.3.36
# (~6-12 min). P2G_INT8_PREFILL=0 runs p2g's f32 prefill path instead of the 8-bit one.
# Usage: bash benches/controller_vs_llamacpp.sh [VENV] [N_DECODE] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-/tmp/llv}
N=${2:-64}
ROUNDS=${3:-1}
PROMPT=benches/prompt_receipt.txt
cargo build --release --example controller_speed 2>/dev/null
DIR=$(./target/release/p2g models path qwen2.5-coder-0.5b)
export RAYON_NUM_THREADS=2
f=qwen2.5-coder-0.5b-instruct.gguf
for r in $(seq "$ROUNDS"); do
  echo "# $f, round $r"
  ./target/release/examples/controller_speed "$DIR/$f" "$PROMPT" "$N" | sed "s/^{/{\"round\":$r,/"
  "$VENV/bin/python" benches/llamacpp_speed.py "$DIR/$f" "$PROMPT" "$N" 2 | sed "s/^{/{\"round\":$r,/"
done
