#!/usr/bin/env bash
# Load on loopback: the same receipts' questions answered by the embedded controller and by the
# same GGUF behind llama.cpp's server (llama-cpp-python[server]), one at a time and N at once.
#
#   bash benches/openai_load.sh [RECEIPTS] [N]      (defaults: 10 receipts, 4 at once)
#
# Needs a release build (cargo build --release) and the server venv the tests set up
# (tests/servers/setup_llama_server.sh). Run nothing else meanwhile: the server and p2g share
# the cores. Prints one summary line per run (accuracy, median seconds, failures, wall time).
set -euo pipefail
cd "$(dirname "$0")/.."
limit="${1:-10}"
parallel="${2:-4}"
data=../shared/eval/sroie-dev
p2g=./target/release/p2g
python="$(bash tests/servers/setup_llama_server.sh)"
gguf="$($p2g models path qwen2.5-coder-0.5b)/qwen2.5-coder-0.5b-instruct.gguf"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$python" -m llama_cpp.server --host 127.0.0.1 --port "$port" --model "$gguf" --model_alias qwen \
    --n_ctx 8192 --n_threads 2 --n_threads_batch 2 >/tmp/p2g-load-server.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
until curl -s -o /dev/null "http://127.0.0.1:$port/v1/models"; do sleep 0.5; done
summary() { tail -1 | python3 -c 'import json,sys; s=json.load(sys.stdin); print(json.dumps({k: s[k] for k in ("n","median_s","failures","parallel","wall_s")} | {"accuracy": s["accuracy"]["overall"], "fields": {k: v for k, v in s["accuracy"].items() if k != "overall"}}))'; }
echo "embedded (in process):"
$p2g eval sroie "$data" --limit "$limit" --json 2>/dev/null | summary
remote=(--controller openai --base-url "http://127.0.0.1:$port/v1" --model qwen)
echo "openai (llama.cpp server), one at a time:"
$p2g eval sroie "$data" --limit "$limit" --json "${remote[@]}" --parallel 1 2>/dev/null | summary
echo "openai (llama.cpp server), $parallel at once:"
$p2g eval sroie "$data" --limit "$limit" --json "${remote[@]}" --parallel "$parallel" 2>/dev/null | summary
