#!/usr/bin/env bash
# nibble's imatrix reader against llama.cpp's llama-imatrix on a real model: collects a
# small importance matrix (4 chunks of 512 tokens) in both of llama-imatrix's formats
# (GGUF and legacy .dat), checks that nibble reads both exactly as gguf-py / an
# independent parser do (tests/llama_cpp/check_imatrix.py), then compares nibble's
# weighted Q4_0 / IQ4_NL fit with llama.cpp's imatrix fit on the model's first layers.
#
#   tests/llama_cpp/check_imatrix.sh BIN_DIR MODEL TEXT BUILD_DIR
#
# BIN_DIR holds llama-imatrix (scripts/build-llama-cpp.sh: build/peers/llama.cpp-build/bin);
# BUILD_DIR is a configured nibble build (e.g. build/dev), where imatrix_dump is built.
# Python with the PyPI gguf package: $NIBBLE_PYTHON, else build/pyenv (scripts/test-interop.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
[ $# -eq 4 ] || { echo "usage: $0 BIN_DIR MODEL TEXT BUILD_DIR" >&2; exit 2; }
bin=$1 model=$2 text=$3 build=$4
[ -x "$bin/llama-imatrix" ] || { echo "$bin/llama-imatrix not found" >&2; exit 2; }
[ -f "$model" ] && [ -f "$text" ] || { echo "model or text missing ($model, $text)" >&2; exit 2; }
py=${NIBBLE_PYTHON:-$root/build/pyenv/bin/python}
"$py" -c "import gguf, numpy" 2>/dev/null || { echo "$py cannot import gguf and numpy" >&2; exit 2; }
cmake --build "$build" --target imatrix_dump -j2 >/dev/null
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for fmt in gguf dat; do
  "$bin/llama-imatrix" -m "$model" -f "$text" --chunks 4 -c 512 -t 2 --no-ppl \
    -o "$tmp/imatrix.$fmt" --output-format "$fmt" >"$tmp/llama-imatrix-$fmt.log" 2>&1 ||
    { tail -20 "$tmp/llama-imatrix-$fmt.log"; echo "llama-imatrix ($fmt) failed" >&2; exit 1; }
done
"$py" "$root/tests/llama_cpp/check_imatrix.py" "$build/tests/imatrix_dump" "$tmp/imatrix.gguf" "$tmp/imatrix.dat"
# The fit on real weights (the first two layers' 14 matrices, ~15 s): nibble's weighted
# error must not exceed llama.cpp's imatrix fit's.
"$build/tests/imatrix_dump" "$tmp/imatrix.gguf" --fit "$model" 14 | tee "$tmp/fit.txt" | grep TOTAL
awk '/^TOTAL/ { if ($NF + 0 > $(NF - 2) + 0) bad = 1 } END { exit bad }' "$tmp/fit.txt" ||
  { echo "check_imatrix: nibble's weighted fit is worse than llama.cpp's imatrix fit" >&2; exit 1; }
echo "check_imatrix: OK"
