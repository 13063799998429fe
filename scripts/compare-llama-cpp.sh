#!/usr/bin/env bash
# nibble against llama.cpp on a real model, both sides measured in this one run on this
# machine: SmolLM2-135M-Instruct (Q4_1 as shipped, and Q4_0 made by
# `llama-quantize --allow-requantize`), decode and prompt speed (llama-bench vs
# nibble-llm bench), perplexity with llama.cpp's protocol (llama-perplexity vs
# nibble-llm perplexity) and KL between the two runtimes.
#
#   scripts/compare-llama-cpp.sh                full run (a few minutes on 2 cores)
#   CHUNKS=4 REPS=1 scripts/compare-llama-cpp.sh  quicker
#   THREADS=1,2 (default) sets the thread counts of the speed rows.
# Results: a markdown table on stdout, the raw figures in build/compare-llama-cpp/.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
threads=${THREADS:-1,2}
reps=${REPS:-3}
chunks=${CHUNKS:-8}   # llama.cpp's KL base file takes ~25 MB per chunk
text=${TEXT:-$root/examples/data/tinystories_valid_first101.txt}
out="$root/build/compare-llama-cpp"
mkdir -p "$out"

bin=$(scripts/build-llama-cpp.sh)
scripts/fetch-models.sh >&2
cmake --preset release >/dev/null
cmake --build --preset release --target nibble-llm -j"$(nproc)" >&2
llm="$root/build/release/tools/nibble-llm"
q41="$root/build/models/SmolLM2-135M-Instruct.Q4_1.gguf"
q40="$out/SmolLM2-135M-Instruct.Q4_0.gguf"
if [ ! -s "$q40" ]; then
  "$bin/llama-quantize" --allow-requantize "$q41" "$q40.part" Q4_0 >"$out/llama-quantize.log" 2>&1
  mv "$q40.part" "$q40"
fi
cpu=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)
isa=$("$llm" bench -m "$q41" -p 0 -n 1 -r 1 --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)[0].get("isa","?"))')
echo "compare-llama-cpp: $cpu, nibble ISA $isa, threads $threads, $reps repetitions" >&2

# Speed: llama-bench and nibble-llm bench alternate per model so both see the same machine state.
for m in q41 q40; do
  file=${!m}
  "$bin/llama-bench" -m "$file" -p 512 -n 128 -t "$threads" -r "$reps" -o json >"$out/llama-bench-$m.json" 2>"$out/llama-bench-$m.log"
  "$llm" bench -m "$file" -p 512 -n 128 -t "$threads" -r "$reps" --json >"$out/nibble-bench-$m.json"
done
"$llm" bench -m "$q41" --fp32 -p 512 -n 128 -t "$threads" -r "$reps" --json >"$out/nibble-bench-fp32.json"
# nibble's fastest format: the block linears rounded again to int4 g128 (fp16 scales,
# 4.125 bits/weight) from the Q4_1 file's fp32 decoding (a second rounding: its
# perplexity is printed too).
best=int4_sym:g128
"$llm" bench -m "$q41" --requant "$best" -p 512 -n 128 -t "$threads" -r "$reps" --json >"$out/nibble-bench-best.json"

# Quality: llama.cpp saves its Q4_1 logits; nibble scores the same tokens with the same
# weights (KL against llama.cpp's run), and its fp32 model's logits go back to
# llama-perplexity --kl-divergence.
chunk_flag=()
[ "$chunks" != 0 ] && chunk_flag=(--chunks "$chunks")
"$bin/llama-perplexity" -m "$q41" -f "$text" -c 512 -t 2 "${chunk_flag[@]}" \
  --kl-divergence-base "$out/llama-q41.kld" >"$out/llama-perplexity-q41.log" 2>&1
"$llm" perplexity -m "$q41" -f "$text" -t 2 --kl-llama "$out/llama-q41.kld" --json \
  >"$out/nibble-perplexity-q41.json" 2>"$out/nibble-perplexity-q41.log"
"$llm" perplexity -m "$q41" --fp32 -f "$text" -t 2 --kl-llama "$out/llama-q41.kld" \
  --save-logits "$out/nibble-fp32.kld" --json >"$out/nibble-perplexity-fp32.json" 2>"$out/nibble-perplexity-fp32.log"
"$llm" perplexity -m "$q41" --requant "$best" -f "$text" -t 2 "${chunk_flag[@]}" --json \
  >"$out/nibble-perplexity-best.json" 2>"$out/nibble-perplexity-best.log"
"$bin/llama-perplexity" -m "$q41" -f "$text" -c 512 -t 2 --kl-divergence \
  --kl-divergence-base "$out/nibble-fp32.kld" >"$out/llama-kl-vs-nibble-fp32.log" 2>&1

python3 - "$out" "$cpu" "$isa" <<'PY'
import json, re, sys
out, cpu, isa = sys.argv[1:4]
def load(name):
    with open(f"{out}/{name}") as f:
        return json.load(f)
def llama_rate(rows, test, t):
    for r in rows:
        n_p, n_g = r.get("n_prompt", 0), r.get("n_gen", 0)
        name = f"pp{n_p}" if n_p else f"tg{n_g}"
        if name == test and int(r["n_threads"]) == t:
            return float(r["avg_ts"]), float(r["stddev_ts"])
    return None
def nibble_rate(rows, test, t):
    for r in rows:
        if r["test"] == test and int(r["threads"]) == t:
            return float(r["tokens_per_second"]), float(r["sd"])
    return None
threads = sorted({int(r["threads"]) for r in load("nibble-bench-q41.json")})
summary = {"cpu": cpu, "isa": isa}
print(f"\nSmolLM2-135M-Instruct on {cpu} (nibble ISA {isa}); tokens/s, mean ± sd\n")
print("| weights | test | threads | llama.cpp | nibble | nibble ÷ llama.cpp | nibble fp32 |")
print("|---|---|---|---|---|---|---|")
fp32 = load("nibble-bench-fp32.json")
best = load("nibble-bench-best.json")
for m, label in (("q41", "Q4_1 (as shipped)"), ("q40", "Q4_0 (llama-quantize)")):
    lb, nb = load(f"llama-bench-{m}.json"), load(f"nibble-bench-{m}.json")
    for test in ("tg128", "pp512"):
        for t in threads:
            l, n, f = llama_rate(lb, test, t), nibble_rate(nb, test, t), nibble_rate(fp32, test, t)
            if not l or not n:
                continue
            ratio = n[0] / l[0]
            summary[f"{m}_{test}_{t}t_vs_llamacpp"] = round(ratio, 3)
            print(f"| {label} | {test} | {t} | {l[0]:.1f} ± {l[1]:.1f} | {n[0]:.1f} ± {n[1]:.1f} | {ratio:.2f} | "
                  f"{f[0]:.1f} |")
for test in ("tg128", "pp512"):
    for t in threads:
        n, l = nibble_rate(best, test, t), llama_rate(load("llama-bench-q40.json"), test, t)
        if n and l:
            summary[f"best_{test}_{t}t_vs_llamacpp_q40"] = round(n[0] / l[0], 3)
            print(f"| nibble int4_sym g128 (requantized) | {test} | {t} | Q4_0: {l[0]:.1f} | {n[0]:.1f} ± {n[1]:.1f} | "
                  f"{n[0] / l[0]:.2f} | |")
ppl_log = open(f"{out}/llama-perplexity-q41.log").read()
m = re.search(r"Final estimate: PPL = ([0-9.]+)", ppl_log)
llama_ppl = float(m.group(1)) if m else float("nan")
nq, nf = load("nibble-perplexity-q41.json"), load("nibble-perplexity-fp32.json")
kl_log = open(f"{out}/llama-kl-vs-nibble-fp32.log").read()
m = re.search(r"Mean\s+KLD:\s+([0-9.]+)", kl_log)
llama_kl = float(m.group(1)) if m else float("nan")
diff = abs(nq["perplexity"] / llama_ppl - 1)
summary.update(llama_ppl_q41=llama_ppl, nibble_ppl_q41=nq["perplexity"], ppl_rel_diff=diff,
               nibble_fp32_ppl=nf["perplexity"], kl_q41_llama_vs_nibble=nq["llama_mean_kl"],
               kl_nibble_fp32_vs_llama_q41=llama_kl, kl_llama_q41_vs_nibble_fp32=nf["llama_mean_kl"])
print(f"\nperplexity (-c 512, {nq['chunks']} chunks, {nq['scored']} tokens scored):")
print(f"  Q4_1: llama-perplexity {llama_ppl:.4f}, nibble {nq['perplexity']:.4f} (differ by {100*diff:.3f}%)")
print(f"  nibble fp32 (the file dequantized): {nf['perplexity']:.4f}")
nb = load("nibble-perplexity-best.json")
print(f"  nibble int4_sym g128 requantized from the Q4_1 file: {nb['perplexity']:.4f}")
summary["nibble_ppl_best"] = nb["perplexity"]
print(f"  KL(llama.cpp Q4_1 || nibble Q4_1) = {nq['llama_mean_kl']:.6f}, same top token {100*nq['llama_same_top']:.2f}%")
print(f"  KL(nibble fp32 || llama.cpp Q4_1) = {llama_kl:.6f} (llama-perplexity --kl-divergence)")
print(f"  KL(llama.cpp Q4_1 || nibble fp32) = {nf['llama_mean_kl']:.6f}")
with open(f"{out}/summary.json", "w") as f:
    json.dump(summary, f, indent=1)
PY
