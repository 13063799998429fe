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
#
#   scripts/test-avx512.sh [BUILD_DIR]
# BUILD_DIR: a build tree that has kernels_test_static and int8_matrix_test_static
# (the dev preset links them from its own objects, so scripts/test.sh compiles nothing
# here); without it, build/avx512-static is configured and built for just these two.
set -euo pipefail
cd "$(dirname "$0")/.."
tests=(kernels_test int8_matrix_test)
build=${1:-}
if [ -z "$build" ]; then
  build=build/avx512-static
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DNIBBLE_TEST_STATIC="$(IFS=';'; echo "${tests[*]}")" \
    -DNIBBLE_TEST_ONLY="$(IFS=';'; echo "${tests[*]}")" -DNIBBLE_BUILD_BENCHMARKS=OFF -DNIBBLE_BUILD_EXAMPLES=OFF \
    -DNIBBLE_BUILD_TOOLS=OFF >/dev/null
  cmake --build "$build" -j"$(nproc)" --target "${tests[@]/%/_static}" 2>&1 | grep -v "getaddrinfo\|gtest-all.cc" || true
fi
for test in "${tests[@]}"; do
  test -x "$build/tests/${test}_static" || { echo "test-avx512: $build/tests/${test}_static was not built" >&2; exit 1; }
done
# One CPU model's runs, one after the other, into its own log.
# The 49152-row output-projection shape (a minute of emulated time per CPU model) runs
# natively in every preset; under bochs the smaller shapes cover the same kernels.
skip_under_emulation=(--gtest_filter=-Int8Kernels.SmolLM2OutputProjectionShape)
run_cpu() {
  local cpu=$1 require=$2 test status
  for test in "${tests[@]}"; do
    echo "=== $test under bochs, cpu=$cpu ==="
    status=0
    scripts/bochs/run_static.sh --cpu "$cpu" --env "NIBBLE_TEST_REQUIRE=$require" "$build/tests/${test}_static" \
      "${skip_under_emulation[@]}" 2>&1 || status=$?
    echo "=== $test cpu=$cpu status $status ==="
  done
}
# bochs runs on one host core: the two CPU models boot side by side (each in a
# private network namespace, so their VNC displays do not collide) when the
# machine can make one; otherwise one after the other.
logs=$(mktemp -d)
runs=(tigerlake:avx512,vnni corei7_skylake_x:avx512,novnni)
if unshare -n true 2>/dev/null; then
  for run in "${runs[@]}"; do run_cpu "${run%%:*}" "${run#*:}" >"$logs/${run%%:*}" & done
  wait
else
  for run in "${runs[@]}"; do run_cpu "${run%%:*}" "${run#*:}" >"$logs/${run%%:*}"; done
fi
failed=0
for run in "${runs[@]}"; do
  cpu=${run%%:*}
  for test in "${tests[@]}"; do
    # This test's part of the log: from its start marker to its status line.
    part=$(sed -n "/^=== $test under bochs, cpu=$cpu ===\$/,/^=== $test cpu=$cpu status /p" "$logs/$cpu")
    echo "=== $test under bochs, cpu=$cpu ==="
    grep -E "^\[ +(OK|FAILED|PASSED|SKIPPED) +\]|^\[==========\]" <<<"$part" || true
    if ! grep -q "^=== $test cpu=$cpu status 0 ===\$" <<<"$part" || ! grep -q "^\[  PASSED  \] [0-9]* tests\." <<<"$part"; then
      echo "$test failed under bochs cpu=$cpu:"
      echo "$part"
      failed=1
    fi
  done
done
rm -rf "$logs"
exit "$failed"
