#!/usr/bin/env bash
# nibble's bitsandbytes-exact mode (CodeFit::bitsandbytes) against bitsandbytes itself:
# C++ writes quantized cases and a nibble-quant bnb-nf4 checkpoint, and
# tests/interop/check_bnb.py runs PyPI bitsandbytes 0.50.2 on torch's CPU path and
# requires identical codes, absmax, scale codes, second-level absmax, offset and values.
# Fails loudly if PyPI cannot be reached: it never skips.
#
# torch comes from PyPI with --no-deps plus only what `import torch` loads (see
# scripts/python-env.sh). The venv is kept in build/bnb-venv.
#
#   scripts/test-bnb.sh [BUILD_DIR]      (default build/dev)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# The venv (scripts/python-env.sh bnb): torch 2.15 + bitsandbytes 0.50.2.
if ! venv=$(scripts/python-env.sh bnb); then
  echo "bnb: FAILED to install torch / bitsandbytes from PyPI (network?); the bitsandbytes check cannot run" >&2
  exit 1
fi
# The dev preset's tree by default: scripts/test.sh has built these programs there already.
build=${1:-build/dev}
[ -f "$build/CMakeCache.txt" ] || cmake --preset dev >/dev/null
cmake --build "$build" -j"$(nproc)" --target interop_bnb_fixtures nibble-quant >/dev/null
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$build/tests/interop_bnb_fixtures" cases "$out"
"$build/tools/nibble-quant" "$out/model.safetensors" "$out/cli_bnb_nf4.safetensors" --format bnb-nf4 --double-quant >/dev/null
"$build/tests/interop_bnb_fixtures" deq "$out/cli_bnb_nf4.safetensors" "$out/cli_deq.safetensors"
"$venv/bin/python" tests/interop/check_bnb.py "$out" 2> >(grep -v "kernels-community\|triton not found\|No CUDA runtime" >&2)
