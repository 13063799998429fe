#!/usr/bin/env bash
# nibble's bitsandbytes-exact mode (CodeFit::bitsandbytes) against bitsandbytes itself:
# C++ writes quantized cases and a nibble-quant bnb-nf4 checkpoint, and
# tests/interop/check_bnb.py runs PyPI bitsandbytes 0.50.2 on torch's CPU path and
# requires identical codes, absmax, scale codes, second-level absmax, offset and values.
# Fails loudly if PyPI cannot be reached: it never skips.
#
# torch comes from PyPI with --no-deps plus only what `import torch` loads: its CUDA
# libraries (no GPU is used; the wheel links them) and a few pure-Python packages —
# not triton or the CUDA toolkit metapackage. The venv is kept in build/bnb-venv.
#
#   scripts/test-bnb.sh [BUILD_DIR]      (default build/dev)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=build/bnb-venv
torch_pin=torch==2.15.0
# What torch 2.15's libtorch_cuda.so links (see its METADATA) and bitsandbytes / the check import.
cuda_libs=(nvidia-cuda-runtime==13.2.86 nvidia-cublas==13.4.1.3 nvidia-cufft==12.2.0.57 nvidia-cufile==1.17.1.22
           nvidia-cusparse==12.7.10.12 nvidia-cuda-nvrtc==13.2.86 nvidia-nvjitlink==13.5.37 nvidia-cuda-cupti==13.2.86
           nvidia-cudnn-cu13==9.26.0.51 nvidia-cusparselt-cu13==0.8.1 nvidia-nccl-cu13==2.30.7
           nvidia-nvshmem-cu13==3.7.2)
python_deps=(bitsandbytes==0.50.2 numpy packaging safetensors filelock typing-extensions sympy networkx jinja2
             fsspec "setuptools>=77.0.3")
if ! "$venv/bin/python" -c "import torch, bitsandbytes, safetensors" 2>/dev/null; then
  echo "=== bnb: creating $venv with $torch_pin (no deps) + its CUDA libraries + bitsandbytes 0.50.2 from PyPI ==="
  rm -rf "$venv"
  python3 -m venv "$venv"
  start=$(date +%s)
  if ! "$venv/bin/pip" install -q --no-deps "$torch_pin" "${cuda_libs[@]}" ||
     ! "$venv/bin/pip" install -q --no-deps "${python_deps[@]}" mpmath markupsafe; then
    echo "bnb: FAILED to install torch / bitsandbytes from PyPI (network?); the bitsandbytes check cannot run" >&2
    exit 1
  fi
  echo "bnb: installed in $(( $(date +%s) - start )) s, $(du -sh "$venv" | cut -f1)"
  "$venv/bin/python" -c "import torch, bitsandbytes, safetensors" || {
    echo "bnb: torch / bitsandbytes installed but do not import" >&2; exit 1; }
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
