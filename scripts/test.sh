#!/usr/bin/env bash
# The whole test suite: the CMake presets (native warnings-as-errors, ASan+UBSan,
# AArch64 NEON under qemu with and without dotprod), the native build's kernel tests
# under qemu-x86_64 -cpu Nehalem (the scalar fallback), the AVX-512 kernels under
# bochs, then the two ways a consumer project uses the package and the README's entry
# points run in any order.
#
#   scripts/test.sh                 all of it
#   scripts/test.sh dev asan        only these presets
set -euo pipefail
cd "$(dirname "$0")/.."
# Each phase's wall time, printed as it ends and again in a table at the end, so a slow
# CI run shows where its minutes went (budget: 45 minutes on 2 cores).
timings=()
phase_start=$SECONDS phase_name=""
phase() {
  if [ -n "$phase_name" ]; then
    local t=$((SECONDS - phase_start))
    timings+=("$(printf '%4dm%02ds  %s' $((t / 60)) $((t % 60)) "$phase_name")")
    echo "--- $phase_name took $((t / 60))m$((t % 60))s"
  fi
  phase_start=$SECONDS phase_name="$*"
  [ -z "$*" ] || echo "=== $* ==="
}
phase "Debian packages (scripts/install-deps.sh)"
scripts/install-deps.sh
prepare_pid=""
if [ $# -eq 0 ]; then
  # The later phases' downloads (SmolLM2, the llama.cpp sdist, the two Python
  # environments: network and disk) and the llama.cpp build run in the background from
  # here at the lowest CPU priority, so they use what the compile and test phases leave
  # idle (emulators, serial test tails, Python) instead of adding ~6 minutes after them.
  # Best effort: the phases that need them run the same idempotent scripts again, which
  # find the work done (each takes a lock, so they wait for a run still going) or fail
  # or skip exactly as they would have.
  mkdir -p build
  prepare_log=build/test-prepare.log
  # Its own session (process group), so a failing phase can stop all of it. A new
  # session is also a new scheduler autogroup where the kernel has them, and between
  # autogroups the nice of each task does not count, only the group's: that is set to
  # 19 too (without it the background build took half the CPU and the dev preset's
  # compile ran twice as long).
  setsid bash -c '
    echo 19 2>/dev/null >/proc/self/autogroup || true
    nice -n 19 scripts/fetch-models.sh &
    nice -n 19 scripts/python-env.sh pyenv >/dev/null &
    nice -n 19 scripts/python-env.sh bnb >/dev/null &
    nice -n 19 scripts/build-llama-cpp.sh >/dev/null &
    wait' >"$prepare_log" 2>&1 &
  prepare_pid=$!
  trap '[ -z "$prepare_pid" ] || kill -- "-$prepare_pid" 2>/dev/null || true' EXIT
fi
jobs=$(nproc)
presets=("$@")
((${#presets[@]})) || presets=(dev asan aarch64-qemu aarch64-qemu-nodot)
total=0
for preset in "${presets[@]}"; do
  phase "preset $preset"
  cmake --preset "$preset" >/dev/null
  cmake --build --preset "$preset" -j"$jobs"
  log=$(mktemp)
  ctest --preset "$preset" -j"$jobs" --timeout 600 | tee "$log"
  n=$(sed -n 's/.*tests passed, 0 tests failed out of \([0-9]*\).*/\1/p' "$log" | tail -1)
  total=$((total + ${n:-0}))
  rm -f "$log"
done
if [ $# -eq 0 ]; then
  # The scalar fallback: the dev build targets baseline x86-64 and picks its kernels at
  # run time, so its kernel tests under qemu-x86_64 -cpu Nehalem (no AVX2) run exactly
  # what the x86-noavx2 preset would build again (3 min of compiling saved).
  phase "scalar fallback: the dev build's kernel tests under qemu-x86_64 -cpu Nehalem"
  # llama2c_test leaves out its two slowest tests here (45 s emulated): the fp32
  # perplexity and the calibration comparison exercise no dispatch the greedy-story and
  # quantized-kernel tests do not.
  for test in kernels_test int8_matrix_test llama2c_test; do
    log=$(mktemp)
    filter=-Forward.Fp32PerplexityMatchesTheReference:Quantized.GptqAndAwqBeatRoundToNearest
    [ "$test" = llama2c_test ] || filter='*'
    NIBBLE_TEST_USER_MODE_EMULATOR=1 NIBBLE_TEST_REQUIRE=scalar qemu-x86_64 -cpu Nehalem \
      "build/dev/tests/$test" --gtest_brief=1 --gtest_filter="$filter" | tee "$log"
    n=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) tests\{0,1\}\..*/\1/p' "$log" | tail -1)
    total=$((total + ${n:-0}))
    rm -f "$log"
  done
  phase "AVX-512 kernels under bochs (emulated Tiger Lake and Skylake-X)"
  scripts/test-avx512.sh build/dev  # the dev preset links static copies of the two tests
  phase "consumer projects"
  scripts/check-consumers.sh
  phase "entry points in any order (demo, compare)"
  scripts/test-entry-points.sh
  phase "what is left of the background downloads and llama.cpp build"
  wait "$prepare_pid" || true
  prepare_pid=""
  sed 's/^/  background: /' "$prepare_log"
  phase "exporters read back by Python gguf / safetensors / numpy"
  scripts/test-interop.sh
  phase "a real model (SmolLM2-135M) against llama.cpp on the same file"
  scripts/test-real-model.sh build/dev
  phase "Hugging Face directories (scripts/make-hf-model.py) against the GGUF / llama2.c loaders"
  scripts/test-hf.sh
  phase "bitsandbytes-exact mode against bitsandbytes 0.50.2 itself (torch CPU)"
  scripts/test-bnb.sh
  phase "fuzz every file reader (6 s each)"
  scripts/fuzz.sh 6
fi
phase ""
echo "=== time per phase ==="
printf '%s\n' "${timings[@]}"
printf '%4dm%02ds  total\n' $((SECONDS / 60)) $((SECONDS % 60))
echo "all presets: ${presets[*]}"
echo "${total} passed, 0 failed"
