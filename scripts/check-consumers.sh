#!/usr/bin/env bash
# Builds and runs a tiny consumer of nibble twice: against the installed package
# (find_package(nibble CONFIG REQUIRED)) and through add_subdirectory.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cmake -S "$root" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DNIBBLE_BUILD_TESTS=OFF \
  -DNIBBLE_BUILD_BENCHMARKS=OFF -DNIBBLE_BUILD_EXAMPLES=OFF -DNIBBLE_BUILD_TOOLS=OFF -DNIBBLE_INSTALL=ON >/dev/null
cmake --install "$work/build" --prefix "$work/prefix" >/dev/null
for mode in find_package add_subdirectory; do
  cmake -S "$root/tests/consumer" -B "$work/consumer-$mode" -DCONSUMER_MODE=$mode \
    -DNIBBLE_ROOT="$root" -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null
  cmake --build "$work/consumer-$mode" -j"$(nproc)" >/dev/null
  "$work/consumer-$mode/consumer"
done
