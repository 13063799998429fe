#!/usr/bin/env bash
# nibble's BPE tokenizer against llama.cpp's llama-tokenize on SmolLM2-135M-Instruct's GGUF
# (tests/llama_cpp/check_tokenizer.py says what is compared).
#
#   tests/llama_cpp/check_tokenizer.sh [--pre-variants] [LLAMA_TOKENIZE] [check_tokenizer.py options]
#
# LLAMA_TOKENIZE defaults to $LLAMA_TOKENIZE or the build of scripts/build-llama-cpp.sh
# (build/peers/...). The model comes from scripts/fetch-models.sh. --pre-variants also
# checks the gpt2, llama3, qwen2 and default pre-tokenizers on vocabulary-only copies of
# the file with another tokenizer.ggml.pre (made with the PyPI gguf package of
# build/pyenv, which scripts/test-interop.sh sets up, or $NIBBLE_PYTHON), with fewer cases each.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
variants=0
if [ "${1:-}" = "--pre-variants" ]; then
  variants=1
  shift
fi
llama=${LLAMA_TOKENIZE:-}
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then
  llama=$1
  shift
fi
if [ -z "$llama" ]; then
  for c in build/peers/llama.cpp-build/bin/llama-tokenize build/peers/*/bin/llama-tokenize; do
    [ -x "$c" ] && { llama=$c; break; }
  done
fi
[ -n "$llama" ] && [ -x "$llama" ] || { echo "llama-tokenize not found (run scripts/build-llama-cpp.sh or pass its path)" >&2; exit 2; }
model=build/models/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f "$model" ] || { echo "$model missing (run scripts/fetch-models.sh)" >&2; exit 2; }
[ -d build/dev ] || cmake --preset dev >/dev/null
cmake --build build/dev --target tokenize_ids -j2 >/dev/null
texts=${NIBBLE_TEXTS:-$root/examples/data}
check() {
  python3 tests/llama_cpp/check_tokenizer.py --tokenize-ids build/dev/tests/tokenize_ids --llama-tokenize "$llama" \
    --texts "$texts" "$@"
}
echo "=== smollm ($model)"
check --model "$model" "$@"
if [ $variants = 1 ]; then
  out=build/llama_cpp_pre_variants
  "${NIBBLE_PYTHON:-build/pyenv/bin/python}" tests/llama_cpp/make_pre_variants.py "$model" "$out" gpt-2 llama-bpe qwen2 default >/dev/null
  for pre in gpt-2 llama-bpe qwen2 default; do
    echo "=== $pre"
    check --model "$out/vocab-$pre.gguf" --lines 0 --random 200 "$@"
  done
fi
