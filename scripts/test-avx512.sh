#!/usr/bin/env bash
# The AVX-512 kernels against the scalar reference, on emulated CPUs: this project's
# machines have no AVX-512 and qemu cannot emulate it, so kernels_test (4-bit) and
# int8_matrix_test (8-bit) are linked statically and booted under bochs
# (scripts/bochs/run_static.sh) twice each:
#   tigerlake         AVX-512 F/BW/VL + VNNI (vpdpbusd kernels)
#   corei7_skylake_x  AVX-512 F/BW/VL, no VNNI (maddubs kernels)
# NIBBLE_TEST_REQUIRE makes the run fail if the guest CPU did not offer the path,
# so a misconfigured emulator cannot pass by skipping. On a CPU with AVX-512 the
# normal presets (dev, asan) run these kernels natively as well.
set -euo pipefail
cd "$(dirname "$0")/.."
build=build/avx512-static
tests=(kernels_test int8_matrix_test)
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_EXE_LINKER_FLAGS=-static \
  -DNIBBLE_TEST_ONLY="$(IFS=';'; echo "${tests[*]}")" -DNIBBLE_BUILD_BENCHMARKS=OFF -DNIBBLE_BUILD_EXAMPLES=OFF \
  -DNIBBLE_BUILD_TOOLS=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" --target "${tests[@]}" 2>&1 | grep -v "getaddrinfo\|gtest-all.cc" || true
for test in "${tests[@]}"; do
  test -x "$build/tests/$test"
  for run in tigerlake:avx512,vnni corei7_skylake_x:avx512,novnni; do
    cpu=${run%%:*}
    echo "=== $test under bochs, cpu=$cpu ==="
    log=$(mktemp)
    status=0
    scripts/bochs/run_static.sh --cpu "$cpu" --env "NIBBLE_TEST_REQUIRE=${run#*:}" "$build/tests/$test" \
      >"$log" || status=$?
    grep -E "^\[ +(OK|FAILED|PASSED|SKIPPED) +\]|^\[==========\]" "$log" || true
    if [ "$status" -ne 0 ] || ! grep -q "^\[  PASSED  \] [0-9]* tests\." "$log"; then
      echo "$test failed under bochs cpu=$cpu (status $status):"
      cat "$log"
      rm -f "$log"
      exit 1
    fi
    rm -f "$log"
  done
done
