#!/usr/bin/env bash
# Runs every libFuzzer harness in fuzz/ for a bounded time (default 20 s each, one
# harness per core at a time) with clang's -fsanitize=fuzzer,address,undefined,
# starting from the committed seed corpus in fuzz/corpus/<harness>/. A harness fails
# on its first crash, leak, sanitizer report or uncaught exception (a reader may only throw nibble::Error), or any input that takes
# more than 10 s (a hang); the script fails if any harness did. The seeds are written by fuzz/make_seeds.cpp:
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
harnesses=(safetensors nibble_file gguf checkpoints bpe model llama_logits hf_config imatrix)
jobs=$(nproc)
# Builds and fuzzes one harness; its report goes to $out/fuzz_<harness>.report.
fuzz_one() {
  local harness=$1 work status=0
  {
    echo "=== fuzz $harness (${seconds}s) ==="
    "$cxx" "${flags[@]}" "$root/fuzz/fuzz_$harness.cpp" -o "$out/fuzz_$harness" || return 1
    work=$(mktemp -d)
    # New inputs go to a scratch corpus; the committed seeds are read-only.
    (cd "$out" && "./fuzz_$harness" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
      -print_final_stats=1 "$work" "$root/fuzz/corpus/$harness" 2>"$out/fuzz_$harness.log") || status=$?
    rm -rf "$work"
    if ((status)); then
      tail -40 "$out/fuzz_$harness.log"
      echo "fuzz: $harness FAILED (crash input saved in $out)"
      return 1
    fi
    grep -E "stat::number_of_executed_units|stat::new_units_added" "$out/fuzz_$harness.log" | tr '\n' ' '
    echo
  } >"$out/fuzz_$harness.report" 2>&1
}
# One harness per core at a time (each is single-threaded: compile, then fuzz).
failed=0
running=0
for harness in "${harnesses[@]}"; do
  if ((running == jobs)); then wait -n || failed=1; running=$((running - 1)); fi
  fuzz_one "$harness" &
  running=$((running + 1))
done
while ((running)); do wait -n || failed=1; running=$((running - 1)); done
for harness in "${harnesses[@]}"; do cat "$out/fuzz_$harness.report"; done
if ((failed)); then
  echo "fuzz: a harness failed (see above)" >&2
  exit 1
fi
echo "fuzz: all harnesses ran ${seconds}s without a crash"
