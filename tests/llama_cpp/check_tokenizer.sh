#!/usr/bin/env bash
# nibble's BPE tokenizer against llama.cpp's llama-tokenize on SmolLM2-135M-Instruct's GGUF
# (tests/llama_cpp/check_tokenizer.py says what is compared).
#   tests/llama_cpp/check_tokenizer.sh [LLAMA_TOKENIZE] [extra check_tokenizer.py options]
# LLAMA_TOKENIZE defaults to the build of scripts/build-llama-cpp.sh (build/peers/...), or
# $LLAMA_TOKENIZE. The model comes from scripts/fetch-models.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
llama=${1:-${LLAMA_TOKENIZE:-}}
[ $# -gt 0 ] && shift
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
exec python3 tests/llama_cpp/check_tokenizer.py --tokenize-ids build/dev/tests/tokenize_ids --llama-tokenize "$llama" \
  --model "$model" --texts "$texts" "$@"
