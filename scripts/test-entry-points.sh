#!/usr/bin/env bash
# The README's entry points must work whatever ran before them in the same checkout:
# scripts/demo.sh and benchmarks/compare share build/release, and a cache value left by
# one (say, examples turned off) must not break the other. In a scratch copy of the
# tracked tree this runs demo -> compare -> demo, then, from a fresh cache,
# compare -> demo. Each step configures and builds exactly as a user's run would;
# demo.sh runs `tiny_llm_demo --help` and compare stops after its build (--build-only),
# so the check costs builds, not benchmark or demo time.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$root" && git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$work")
cd "$work"
step() {
  echo "--- entry points: $*"
  if ! "$@" >"$work/step.log" 2>&1; then
    tail -30 "$work/step.log"
    echo "entry points: '$*' failed after the steps above" >&2
    exit 1
  fi
}
step scripts/demo.sh --help
step benchmarks/compare --build-only
step scripts/demo.sh --help
test -x build/release/examples/quickstart
rm build/release/CMakeCache.txt
step benchmarks/compare --build-only
step scripts/demo.sh --help
test -x build/release/benchmarks/gemv_bench
echo "entry points: demo -> compare -> demo and compare -> demo all work"
