#!/usr/bin/env bash
# The AVX-512 kernels against the scalar reference, on emulated CPUs: this project's
# machines have no AVX-512 and qemu cannot emulate it, so kernels_test is linked
# statically and booted under bochs (scripts/bochs/run_static.sh) twice:
#   tigerlake         AVX-512 F/BW/VL + VNNI (vpdpbusd kernels)
#   corei7_skylake_x  AVX-512 F/BW/VL, no VNNI (maddubs kernels)
# NIBBLE_TEST_REQUIRE makes the run fail if the guest CPU did not offer the path,
# so a misconfigured emulator cannot pass by skipping. On a CPU with AVX-512 the
# normal presets (dev, asan) run these kernels natively as well.
set -euo pipefail
cd "$(dirname "$0")/.."
build=build/avx512-static
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_EXE_LINKER_FLAGS=-static \
  -DNIBBLE_TEST_ONLY=kernels_test -DNIBBLE_BUILD_BENCHMARKS=OFF -DNIBBLE_BUILD_EXAMPLES=OFF \
  -DNIBBLE_BUILD_TOOLS=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" --target kernels_test 2>&1 | grep -v "getaddrinfo\|gtest-all.cc" || true
test -x "$build/tests/kernels_test"
for run in tigerlake:avx512,vnni corei7_skylake_x:avx512,novnni; do
  cpu=${run%%:*}
  echo "=== kernels_test under bochs, cpu=$cpu ==="
  log=$(mktemp)
  status=0
  scripts/bochs/run_static.sh --cpu "$cpu" --env "NIBBLE_TEST_REQUIRE=${run#*:}" "$build/tests/kernels_test" \
    >"$log" || status=$?
  grep -E "^\[ +(OK|FAILED|PASSED|SKIPPED) +\]|^\[==========\]" "$log" || true
  if [ "$status" -ne 0 ] || ! grep -q "^\[  PASSED  \] [0-9]* tests\." "$log"; then
    echo "kernels_test failed under bochs cpu=$cpu (status $status):"
    cat "$log"
    rm -f "$log"
    exit 1
  fi
  rm -f "$log"
done
