#!/usr/bin/env bash
# The demo: builds the examples in Release and runs the main one.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release -j"$(nproc)" --target quickstart
./build/release/examples/quickstart "$@"
