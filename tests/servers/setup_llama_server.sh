#!/usr/bin/env bash
# Installs llama.cpp's OpenAI-compatible server (PyPI `llama-cpp-python[server]`) into a venv
# in the p2g cache, once, for the tests of `--controller openai`. Prints the venv's python.
#
# PyPI has no wheel of it for this platform, so pip builds llama.cpp from source (~5-10 min on
# 2 cores). The build is cached outside the repository (the wheel and the venv live under
# $P2G_TEST_TOOLS, default ~/.cache/p2g/test-tools); CI keeps that folder between runs to skip it.
# The flags: a native build dies with "Illegal instruction" on VMs whose CPU advertises AMX
# without enabling it, so the SIMD levels are named instead of GGML_NATIVE.
set -euo pipefail
version="${P2G_LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
root="${P2G_TEST_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/p2g/test-tools}"
venv="$root/llama-cpp-python-$version"
python="${P2G_TEST_PYTHON:-python3}"
mkdir -p "$root"
exec 9>"$root/.setup.lock"
# Test binaries run at once; one builds, the others wait for it.
flock 9
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import llama_cpp.server" 2>/dev/null; then
    echo "$venv/bin/python"
    exit 0
fi
rm -rf "$venv"
wheels="$root/wheels"
mkdir -p "$wheels"
if ! ls "$wheels"/llama_cpp_python-"$version"-*.whl >/dev/null 2>&1; then
    echo "p2g tests: building llama-cpp-python $version (once, ~5-10 min on 2 cores) into $wheels" >&2
    CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DLLAMA_CURL=OFF}" \
    CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
        "$python" -m pip wheel --no-deps --disable-pip-version-check --no-input \
        "llama-cpp-python==$version" -w "$wheels" >&2
fi
"$python" -m venv "$venv" >&2
"$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q \
    "$wheels"/llama_cpp_python-"$version"-*.whl "llama-cpp-python[server]==$version" \
    --find-links "$wheels" >&2
"$venv/bin/python" -c "import llama_cpp.server" >&2
echo "$venv/bin/python"
