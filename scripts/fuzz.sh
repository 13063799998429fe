#!/usr/bin/env bash
# Runs every libFuzzer harness in fuzz/ for a bounded time (default 20 s each) with
# clang's -fsanitize=fuzzer,address,undefined, starting from the committed seed corpus
# in fuzz/corpus/<harness>/. Fails on the first crash, leak, sanitizer report or
# uncaught exception (a reader may only throw nibble::Error), or any input that takes
# more than 10 s (a hang). The seeds are written by fuzz/make_seeds.cpp:
#   g++ -std=c++17 -Iinclude -I/usr/include/eigen3 fuzz/make_seeds.cpp -o /tmp/seeds && /tmp/seeds fuzz/corpus
#
#   scripts/fuzz.sh [seconds-per-harness]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-20}
cxx=${CXX_FUZZ:-clang++-14}
command -v "$cxx" >/dev/null || cxx=clang++
out="$root/build/fuzz"
mkdir -p "$out"
flags=(-std=c++17 -O1 -gline-tables-only -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
       -DNIBBLE_FUZZ_NO_CHECKSUMS -I"$root/include" -I/usr/include/eigen3)
for harness in safetensors nibble_file gguf checkpoints bpe model llama_logits hf_config imatrix; do
  echo "=== fuzz $harness (${seconds}s) ==="
  "$cxx" "${flags[@]}" "$root/fuzz/fuzz_$harness.cpp" -o "$out/fuzz_$harness"
  work=$(mktemp -d)
  # New inputs go to a scratch corpus; the committed seeds are read-only.
  if ! (cd "$out" && "./fuzz_$harness" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -print_final_stats=1 "$work" "$root/fuzz/corpus/$harness" 2>"$out/fuzz_$harness.log"); then
    tail -40 "$out/fuzz_$harness.log"
    echo "fuzz: $harness FAILED (crash input saved in $out)" >&2
    rm -rf "$work"
    exit 1
  fi
  grep -E "stat::number_of_executed_units|stat::new_units_added" "$out/fuzz_$harness.log" | tr '\n' ' '
  echo
  rm -rf "$work"
done
echo "fuzz: all harnesses ran ${seconds}s without a crash"
