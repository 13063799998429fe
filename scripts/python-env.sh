#!/usr/bin/env bash
# Creates, once, a Python environment the interop checks run in, from PyPI:
#   pyenv   build/pyenv: gguf, safetensors, numpy, tokenizers (test-interop, test-hf,
#           test-real-model, make-hf-model.py and the llama.cpp checks)
#   bnb     build/bnb-venv: torch 2.15 + bitsandbytes 0.50.2 (test-bnb; 4.2 GB)
# An environment whose packages already import is left alone. Prints its directory on
# stdout; exits non-zero when pip fails (callers say what that means for their check).
#
#   scripts/python-env.sh pyenv|bnb
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
case "${1:-}" in
  pyenv)
    venv=build/pyenv
    imports="gguf, safetensors, numpy, tokenizers"
    install() { "$venv/bin/pip" install -q gguf safetensors numpy tokenizers; }
    ;;
  bnb)
    # torch comes with --no-deps plus only what `import torch` loads: its CUDA libraries
    # (no GPU is used, but the wheel links them) and a few pure-Python packages — not
    # triton or the CUDA toolkit metapackage.
    venv=build/bnb-venv
    imports="torch, bitsandbytes, safetensors"
    torch_pin=torch==2.15.0
    # What torch 2.15's libtorch_cuda.so links (see its METADATA) and bitsandbytes / the check import.
    cuda_libs=(nvidia-cuda-runtime==13.2.86 nvidia-cublas==13.4.1.3 nvidia-cufft==12.2.0.57 nvidia-cufile==1.17.1.22
               nvidia-cusparse==12.7.10.12 nvidia-cuda-nvrtc==13.2.86 nvidia-nvjitlink==13.5.37
               nvidia-cuda-cupti==13.2.86 nvidia-cudnn-cu13==9.26.0.51 nvidia-cusparselt-cu13==0.8.1
               nvidia-nccl-cu13==2.30.7 nvidia-nvshmem-cu13==3.7.2)
    python_deps=(bitsandbytes==0.50.2 numpy packaging safetensors filelock typing-extensions sympy networkx jinja2
                 fsspec "setuptools>=77.0.3" mpmath markupsafe)
    install() {
      "$venv/bin/pip" install -q --no-deps "$torch_pin" "${cuda_libs[@]}" &&
        "$venv/bin/pip" install -q --no-deps "${python_deps[@]}"
    }
    ;;
  *)
    echo "usage: scripts/python-env.sh pyenv|bnb" >&2
    exit 2
    ;;
esac
mkdir -p build
# One creator at a time (scripts/test.sh fills the environments in the background while
# it compiles); a second caller waits, then finds the packages importable.
exec 9>"build/.$(basename "$venv").lock"
flock 9
if ! "$venv/bin/python" -c "import $imports" 2>/dev/null; then
  echo "python-env: creating $venv with $imports from PyPI" >&2
  start=$(date +%s)
  rm -rf "$venv"
  python3 -m venv "$venv"
  install >&2 || { echo "python-env: pip FAILED to install $imports into $venv" >&2; exit 1; }
  # (bitsandbytes warns on import about optional GPU packages: shown only on failure)
  if ! err=$("$venv/bin/python" -c "import $imports" 2>&1); then
    echo "$err" >&2
    echo "python-env: $imports installed in $venv but do not import" >&2
    exit 1
  fi
  echo "python-env: $venv ready in $(( $(date +%s) - start )) s, $(du -sh "$venv" | cut -f1)" >&2
fi
echo "$root/$venv"
