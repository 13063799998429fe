#!/usr/bin/env bash
# nibble-quant with a Hugging Face directory in and a GGUF model out, checked with
# llama.cpp itself on SmolLM2-135M-Instruct:
#   1. scripts/make-hf-model.py turns the GGUF file into an HF directory (f32, so every
#      weight is the GGUF file's decoded value; q/k rows back in rotate_half order);
#   2. nibble-quant HFDIR hf.gguf and nibble-quant MODEL.gguf direct.gguf (rtn, Q4_0);
#   3. gguf-py compares the two files: every tensor of direct.gguf must be in hf.gguf with
#      the same type, shape and bytes (the q/k permutation undone exactly, token_embd
#      Q8_0 requantized to the same bytes), and the tokenizer keys must be equal;
#   4. llama-perplexity (4 chunks of 512 tokens of TinyStories validation text): the KL of
#      hf.gguf against the source Q4_1 model (--kl-divergence-base) must be within 1e-4
#      (or 1 %) of direct.gguf's;
#   5. llama-tokenize gives the same ids on both files for a few texts (with and without
#      special-token parsing), and llama-simple generates from hf.gguf.
# METHODS="clip gptq awq awq+gptq imatrix" (default: none beyond rtn) also quantizes the
# HF directory with those methods (calibrated ones on 4096 tokens of the training sample;
# imatrix: rtn weighted by llama-imatrix's matrix of the source model) and requires each
# output's KL to be within 25 % of the same method applied to the GGUF file (both routes
# calibrate on the same model; the HF one runs RoPE on halves, so rounding can differ).
#
#   tests/llama_cpp/check_hf_to_gguf.sh BIN_DIR BUILD_DIR
#
# BIN_DIR holds llama-perplexity, llama-tokenize, llama-simple (and llama-imatrix for METHODS=imatrix)
# (scripts/build-llama-cpp.sh: build/peers/llama.cpp-build/bin); BUILD_DIR is a configured
# nibble build whose nibble-quant is built here. Python with PyPI gguf / safetensors /
# numpy / tokenizers: $NIBBLE_PYTHON, else build/pyenv.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
[ $# -eq 2 ] || { echo "usage: $0 BIN_DIR BUILD_DIR" >&2; exit 2; }
bin=$1 build=$2
for t in llama-perplexity llama-tokenize llama-simple; do
  [ -x "$bin/$t" ] || { echo "$bin/$t not found" >&2; exit 2; }
done
model=${MODEL:-$root/build/models/SmolLM2-135M-Instruct.Q4_1.gguf}
text=$root/examples/data/tinystories_valid_first101.txt
calib=$root/examples/data/tinystories_train_sample_2MiB.txt
[ -f "$model" ] || { echo "$model missing (scripts/fetch-models.sh)" >&2; exit 2; }
py=${NIBBLE_PYTHON:-$root/build/pyenv/bin/python}
"$py" -c "import gguf, numpy, safetensors, tokenizers" 2>/dev/null ||
  { echo "$py cannot import gguf, numpy, safetensors and tokenizers" >&2; exit 2; }
threads=${THREADS:-2}
cmake --build "$build" --target nibble-quant -j"$threads" >/dev/null
quant=$build/tools/nibble-quant
tmp=${KEEP_DIR:-$(mktemp -d)}
mkdir -p "$tmp"
[ -n "${KEEP_DIR:-}" ] || trap 'rm -rf "$tmp"' EXIT
fail() { echo "check_hf_to_gguf: FAILED: $*" >&2; exit 1; }

echo "=== HF directory from $(basename "$model") (f32)"
"$py" "$root/scripts/make-hf-model.py" gguf "$model" "$tmp/hf" --dtype f32 >/dev/null

echo "=== nibble-quant rtn Q4_0: from the GGUF file and from the HF directory"
"$quant" "$model" "$tmp/direct.gguf" --force >"$tmp/direct.log" 2>&1 || { cat "$tmp/direct.log"; fail "nibble-quant GGUF"; }
"$quant" "$tmp/hf" "$tmp/hf.gguf" --force >"$tmp/hf.log" 2>&1 || { cat "$tmp/hf.log"; fail "nibble-quant HF"; }

echo "=== tensors and tokenizer keys (gguf-py)"
"$py" - "$tmp/direct.gguf" "$tmp/hf.gguf" <<'PY' || fail "the files differ"
import sys
import numpy as np
import gguf

a, b = (gguf.GGUFReader(p) for p in sys.argv[1:3])
ta = {t.name: t for t in a.tensors}
tb = {t.name: t for t in b.tensors}
bad = []
extra = sorted(set(tb) - set(ta))
if extra:
    bad.append(f"hf.gguf has tensors the direct file lacks: {extra[:5]}")
for name, t in ta.items():
    u = tb.get(name)
    if u is None:
        bad.append(f"{name}: missing")
    elif t.tensor_type != u.tensor_type or list(t.shape) != list(u.shape):
        bad.append(f"{name}: {t.tensor_type.name} {list(t.shape)} vs {u.tensor_type.name} {list(u.shape)}")
    elif not np.array_equal(np.asarray(t.data).view(np.uint8), np.asarray(u.data).view(np.uint8)):
        bad.append(f"{name}: bytes differ")
print(f"{len(ta)} tensors compared, {len(ta) - len(bad)} identical")

def value(r, k):
    f = r.fields.get(k)
    return None if f is None else f.contents()

keys = ["general.architecture", "general.file_type", "tokenizer.ggml.model", "tokenizer.ggml.pre",
        "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
        "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id",
        "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.chat_template"]
arch = value(a, "general.architecture")
keys += [f"{arch}.{k}" for k in ("block_count", "context_length", "embedding_length", "feed_forward_length",
                                 "attention.head_count", "attention.head_count_kv", "rope.freq_base",
                                 "attention.layer_norm_rms_epsilon", "vocab_size", "rope.dimension_count")]
for k in keys:
    if value(a, k) != value(b, k):
        va, vb = value(a, k), value(b, k)
        bad.append(f"metadata {k}: {str(va)[:60]} vs {str(vb)[:60]}")
print(f"{len(keys)} metadata keys compared")
only_a = sorted(set(a.fields) - set(b.fields) - {k for k in a.fields if k.startswith("GGUF.")})
only_b = sorted(set(b.fields) - set(a.fields))
print(f"keys only in direct.gguf (copied from the source, not written by the converter): {only_a}")
print(f"keys only in hf.gguf: {only_b}")
for line in bad[:20]:
    print("  " + line)
sys.exit(1 if bad else 0)
PY

kl() {  # kl NAME FILE: mean KLD of FILE against the source model
  "$bin/llama-perplexity" -m "$2" -f "$text" -c 512 --chunks 4 -t "$threads" --kl-divergence \
    --kl-divergence-base "$tmp/source.kld" >"$tmp/$1.ppl.log" 2>&1 || { tail -20 "$tmp/$1.ppl.log"; fail "llama-perplexity on $1"; }
  sed -n 's/^Mean[[:space:]]*KLD:[[:space:]]*\([0-9.eE+-]*\).*/\1/p' "$tmp/$1.ppl.log" | head -1
}
echo "=== llama-perplexity: KL against the source model (4 chunks of 512)"
"$bin/llama-perplexity" -m "$model" -f "$text" -c 512 --chunks 4 -t "$threads" \
  --kl-divergence-base "$tmp/source.kld" >"$tmp/source.log" 2>&1 || { tail -20 "$tmp/source.log"; fail "llama-perplexity base"; }
kl_direct=$(kl direct "$tmp/direct.gguf")
kl_hf=$(kl hf "$tmp/hf.gguf")
echo "KL direct (GGUF -> Q4_0): $kl_direct   KL from HF (HF dir -> Q4_0): $kl_hf"
python3 -c "import sys; a, b = float('$kl_direct'), float('$kl_hf'); sys.exit(0 if abs(a - b) <= max(1e-4, 0.01 * a) else 1)" ||
  fail "KL of the HF route ($kl_hf) is not close to the direct route's ($kl_direct)"

echo "=== llama-tokenize: the same ids on both files"
n=0
while IFS= read -r -d '' sample; do
  printf '%s' "$sample" >"$tmp/sample.txt"
  for special in "" "--no-parse-special"; do
    ids_a=$("$bin/llama-tokenize" -m "$tmp/direct.gguf" -f "$tmp/sample.txt" --ids --log-disable --no-escape $special 2>/dev/null)
    ids_b=$("$bin/llama-tokenize" -m "$tmp/hf.gguf" -f "$tmp/sample.txt" --ids --log-disable --no-escape $special 2>/dev/null)
    [ -n "$ids_a" ] && [ "$ids_a" = "$ids_b" ] || fail "llama-tokenize ($special) differs on '$sample': $ids_a vs $ids_b"
    n=$((n + 1))
  done
done < <(printf '%s\0' "Hello world! 1234 numbers, 3.14" \
  $'<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n' \
  $'\xc3\xbcn\xc3\xafc\xc3\xb6d\xc3\xa9   spaces\t\ttabs \xf0\x9f\xa6\x99' \
  "Once upon a time, there was a little girl named Lily.")
echo "$n tokenizations equal"

echo "=== llama-simple on hf.gguf"
"$bin/llama-simple" -m "$tmp/hf.gguf" -n 24 "Once upon a time" >"$tmp/simple.log" 2>&1 ||
  { tail -20 "$tmp/simple.log"; fail "llama-simple"; }
grep -a "Once upon a time" "$tmp/simple.log" | head -3

for method in ${METHODS:-}; do
  [ "$method" = rtn ] && continue
  flags=(--method "$method")
  case $method in
    clip) ;;
    imatrix)  # llama-imatrix on the source model (4 chunks of the training sample), then rtn
      [ -s "$tmp/imatrix.gguf" ] || "$bin/llama-imatrix" -m "$model" -f "$calib" -c 512 --chunks 4 -t "$threads" \
        -o "$tmp/imatrix.gguf" >"$tmp/imatrix.log" 2>&1 || { tail "$tmp/imatrix.log"; fail "llama-imatrix"; }
      flags=(--method rtn --imatrix "$tmp/imatrix.gguf") ;;
    *) flags+=(--calib "$calib" --calib-tokens 4096) ;;
  esac
  echo "=== --method $method: HF directory vs GGUF file"
  "$quant" "$model" "$tmp/direct-$method.gguf" --force "${flags[@]}" >"$tmp/direct-$method.log" 2>&1 ||
    { tail "$tmp/direct-$method.log"; fail "nibble-quant $method (GGUF)"; }
  "$quant" "$tmp/hf" "$tmp/hf-$method.gguf" --force "${flags[@]}" >"$tmp/hf-$method.log" 2>&1 ||
    { tail "$tmp/hf-$method.log"; fail "nibble-quant $method (HF)"; }
  a=$(kl "direct-$method" "$tmp/direct-$method.gguf")
  b=$(kl "hf-$method" "$tmp/hf-$method.gguf")
  echo "KL $method: direct $a, from HF $b"
  python3 -c "import sys; a, b = float('$a'), float('$b'); sys.exit(0 if abs(a - b) <= max(1e-4, 0.25 * a) else 1)" ||
    fail "KL of --method $method from HF ($b) is far from the GGUF route's ($a)"
done
echo "check_hf_to_gguf: OK"
