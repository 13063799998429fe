#!/usr/bin/env bash
# Independent check of nibble's exporters: writes GGUF (Q4_0, IQ4_NL), GPTQ v1/v2,
# AutoAWQ and bitsandbytes files, then reads them with the PyPI packages gguf,
# safetensors and numpy (installed in build/pyenv) and compares their dequantization
# with nibble's. Then the reverse for GGUF: gguf-py writes one tensor of every type
# nibble decodes, and nibble's decoding of it — and of every tensor of the real
# SmolLM2-135M Q4_1 file (scripts/fetch-models.sh) — must equal gguf-py's dequantize
# bit for bit; the file's Q4_1 tensors imported into QuantizedMatrix must stay within
# the documented rounding bound. Fails loudly if PyPI cannot be reached — it never skips.
#
#   scripts/test-interop.sh [BUILD_DIR]      (default build/dev)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if ! venv=$(scripts/python-env.sh pyenv); then
  echo "interop: FAILED to install gguf/safetensors/numpy/tokenizers from PyPI (network?); the interop check cannot run" >&2
  exit 1
fi
# The dev preset's tree by default: scripts/test.sh has built these programs there already.
build=${1:-build/dev}
[ -f "$build/CMakeCache.txt" ] || cmake --preset dev >/dev/null
cmake --build "$build" -j"$(nproc)" --target interop_write_fixtures interop_decode_gguf >/dev/null
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$build/tests/interop_write_fixtures" "$out"
"$venv/bin/python" tests/interop/check.py "$out"
"$venv/bin/python" tests/interop/check_decode.py "$build/tests/interop_decode_gguf" generated "$out"
scripts/fetch-models.sh
"$venv/bin/python" tests/interop/check_decode.py "$build/tests/interop_decode_gguf" real \
  build/models/SmolLM2-135M-Instruct.Q4_1.gguf
