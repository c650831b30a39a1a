#!/usr/bin/env bash
# Installs Seldon MLServer (PyPI `mlserver`) with onnxruntime into a venv in the p2g cache, once,
# for the tests of the OCR agent's KServe V2 client. Prints the venv's python on stdout.
#
# mlserver and onnxruntime are pinned, all from wheels (~30 s, ~400 MB); the venv lives under
# $P2G_TEST_TOOLS (default ~/.cache/p2g/test-tools) so CI can keep it between runs.
# start_mlserver.py, next to this script, serves a folder of .onnx files with it.
set -euo pipefail
version="${P2G_MLSERVER_VERSION:-1.7.1}"
ort_version="${P2G_ONNXRUNTIME_VERSION:-1.32.0}"
root="${P2G_TEST_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/p2g/test-tools}"
venv="$root/mlserver-$version"
python="${P2G_TEST_PYTHON:-python3}"
mkdir -p "$root"
exec 9>"$root/.setup.lock"
# Test binaries run at once; one installs, the others wait for it.
flock 9
check='import mlserver, onnxruntime, numpy; assert onnxruntime.__version__ == "'"$ort_version"'"'
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "$check" 2>/dev/null; then
    echo "$venv/bin/python"
    exit 0
fi
echo "p2g tests: installing mlserver $version + onnxruntime $ort_version (once) into $venv" >&2
rm -rf "$venv"
"$python" -m venv "$venv" >&2
# Wheels only: a source build would hide a missing platform wheel behind minutes of compiling.
"$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q --only-binary :all: \
    "mlserver==$version" "onnxruntime==$ort_version" numpy >&2
"$venv/bin/python" -c "$check" >&2
echo "$venv/bin/python"
