#!/usr/bin/env bash
# Independent check of nibble's exporters: writes GGUF (Q4_0, IQ4_NL), GPTQ v1/v2,
# AutoAWQ and bitsandbytes files, then reads them with the PyPI packages gguf,
# safetensors and numpy (installed in build/pyenv) and compares their dequantization
# with nibble's. Fails loudly if PyPI cannot be reached — it never skips.
#
#   scripts/test-interop.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=build/pyenv
if ! "$venv/bin/python" -c "import gguf, safetensors, numpy" 2>/dev/null; then
  echo "=== interop: creating $venv with gguf, safetensors, numpy from PyPI ==="
  python3 -m venv "$venv"
  if ! "$venv/bin/pip" install -q gguf safetensors numpy; then
    echo "interop: FAILED to install gguf/safetensors/numpy from PyPI (network?); the interop check cannot run" >&2
    exit 1
  fi
fi
build=build/interop
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DNIBBLE_BUILD_BENCHMARKS=OFF -DNIBBLE_BUILD_EXAMPLES=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" --target interop_write_fixtures >/dev/null
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$build/tests/interop_write_fixtures" "$out"
"$venv/bin/python" tests/interop/check.py "$out"
