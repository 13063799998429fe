#!/usr/bin/env bash
# The demo: builds the examples in Release and runs tiny_llm_demo on the bundled
# stories260K model (every quantization method, perplexity/KL table, a generated story).
# Arguments go to tiny_llm_demo (try --help, --all, --json). quickstart is built too.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release -j"$(nproc)" --target quickstart tiny_llm_demo
./build/release/examples/tiny_llm_demo "$@"
