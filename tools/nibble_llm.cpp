// nibble-llm: run, evaluate and time a Llama-family model (GGUF file, Hugging Face
// directory or llama2.c checkpoint) on nibble's kernels. Flags follow llama.cpp's tools
// (llama-cli, llama-perplexity, llama-bench) where they overlap.
//
//   nibble-llm run -m model.gguf -p "Once upon a time" -n 64
//   nibble-llm perplexity -m model.gguf -f text.txt -c 512 --kl-fp32
//   nibble-llm bench -m model.gguf -p 512 -n 128 -t 1,2
// Run with --help for everything.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include <nibble/io/llama_logits.hpp>
#include <nibble/model/chat.hpp>
#include <nibble/model/generate.hpp>
#include <nibble/model/load_model.hpp>
#include <nibble/model/perplexity.hpp>
#include <nibble/model/transformer.hpp>

#include "process_memory.hpp"

namespace {

using namespace nibble;
using namespace nibble::model;
using Clock = std::chrono::steady_clock;

const char* kHelp = R"(nibble-llm: run a Llama-family model on nibble's 4-bit kernels.

usage: nibble-llm COMMAND -m MODEL [options]

MODEL is a GGUF file (architectures llama, qwen2), a Hugging Face directory
(config.json, model.safetensors or a sharded index, tokenizer.json) or a llama2.c
checkpoint with --tokenizer tokenizer.bin. Tensors a GGUF file keeps at 4 bits (Q4_0,
Q4_1, IQ4_NL) or 8 bits (Q8_0) run as they are stored; other types are decoded to fp32.

commands:
  run         generate text from a prompt; the text goes to stdout, speed to stderr
  perplexity  llama-perplexity's protocol: chunks of -c tokens, the second half of each
              scored; prints PPL (and KL against a reference model when asked)
  bench       prompt processing (-p tokens in one batch) and text generation (-n tokens
              one at a time) speed, like llama-bench
  tokenize    print the token ids of -p TEXT (or -f FILE)

common options:
  -m PATH          model file
  -t N[,N...]      threads per matrix product (bench takes a list; others the first) [1]
  --tokenizer P    tokenizer.bin of a llama2.c checkpoint
  --fp32           decode every weight to fp32 first (the reference model)
  --backend B      how 4-bit weights run: fast (int8 activations, default), exact
                   (fp32 activations) or dequantized (decoded once, Eigen products)
  --requant C:gN   round every block linear again, from its fp32 decoding, to codebook C
                   (int4_sym, uint4_asym, nf4, fp4, iq4_nl) in groups of N with fp16
                   scales, e.g. int4_sym:g128 (the embedding / output stay as stored)

run:
  -p TEXT          prompt (or -f FILE)
  -n N             tokens to generate [128]
  --chat           format the prompt as a user message with the model's chat template
  --system TEXT    system message for --chat (default: the template's own, if any)
  --temp T         sampling temperature; 0 = greedy [0]
  --top-p P        nucleus sampling mass [0.9]
  --seed S         sampler seed [42]

perplexity:
  -f FILE          text to score
  -c N             context per chunk [512]
  --chunks N       score at most N chunks (0 = all) [0]
  --kl-fp32        also run the model decoded to fp32 and report KL(fp32 || model)
  --kl-base PATH   also run the model at PATH and report KL(PATH || model)
  --kl-llama FILE  report KL(FILE || model) against the logits llama.cpp saved with
                   `llama-perplexity --kl-divergence-base FILE`; the file's tokens and
                   -c are used (the text's tokenization is checked against them)
  --save-logits F  save this run's log-probabilities in that llama.cpp format, for
                   `llama-perplexity --kl-divergence --kl-divergence-base F`

bench:
  -p N             prompt tokens [512] (0 skips the prompt test)
  -n N             generated tokens [128] (0 skips the generation test)
  -r N             repetitions; the mean and standard deviation are printed [3]

output:
  --json           print the result as one JSON object on stdout
)";

struct Options {
  std::string command, model, tokenizer, prompt, file, kl_base, system, kl_llama, save_logits, requant;
  std::vector<int> threads{1};
  bool fp32 = false, chat = false, kl_fp32 = false, json = false, prompt_given = false;
  LinearBackend backend = LinearBackend::kernel_fast;
  int n_predict = -1, n_ctx = 512, chunks = 0, reps = 3, n_prompt = 512;
  float temp = 0.0f, top_p = 0.9f;
  unsigned long long seed = 42;
};

[[noreturn]] void usage_error(const std::string& msg) {
  std::fprintf(stderr, "nibble-llm: %s (see --help)\n", msg.c_str());
  std::exit(2);
}

long long parse_int(const std::string& flag, const std::string& v, long long lo, long long hi) {
  char* end = nullptr;
  const long long x = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || x < lo || x > hi)
    usage_error(flag + " " + v + ": expected an integer in " + std::to_string(lo) + ".." + std::to_string(hi));
  return x;
}

float parse_float(const std::string& flag, const std::string& v) {
  char* end = nullptr;
  const float x = std::strtof(v.c_str(), &end);
  if (v.empty() || *end != '\0' || !std::isfinite(x)) usage_error(flag + " " + v + ": expected a number");
  return x;
}

Options parse(int argc, char** argv) {
  Options o;
  if (argc < 2) usage_error("no command");
  o.command = argv[1];
  if (o.command == "--help" || o.command == "-h") {
    std::fputs(kHelp, stdout);
    std::exit(0);
  }
  if (o.command != "run" && o.command != "perplexity" && o.command != "bench" && o.command != "tokenize")
    usage_error("unknown command '" + o.command + "'");
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage_error(a + " needs a value");
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      std::fputs(kHelp, stdout);
      std::exit(0);
    } else if (a == "-m" || a == "--model") o.model = value();
    else if (a == "--tokenizer") o.tokenizer = value();
    else if (a == "-t" || a == "--threads") {
      o.threads.clear();
      std::stringstream ss(value());
      for (std::string part; std::getline(ss, part, ',');) o.threads.push_back(static_cast<int>(parse_int("-t", part, 1, 256)));
      if (o.threads.empty()) usage_error("-t needs at least one thread count");
    } else if (a == "--fp32") o.fp32 = true;
    else if (a == "--backend") {
      const std::string b = value();
      if (b == "fast") o.backend = LinearBackend::kernel_fast;
      else if (b == "exact") o.backend = LinearBackend::kernel_exact;
      else if (b == "dequantized") o.backend = LinearBackend::dequantized;
      else usage_error("--backend " + b + ": expected fast, exact or dequantized");
    } else if (a == "-p" || a == "--prompt") {
      o.prompt = value();
      o.prompt_given = true;
    } else if (a == "-f" || a == "--file") o.file = value();
    else if (a == "-n" || a == "--n-predict") o.n_predict = static_cast<int>(parse_int(a, value(), 0, 1 << 20));
    else if (a == "-c" || a == "--ctx-size") o.n_ctx = static_cast<int>(parse_int(a, value(), 4, 1 << 20));
    else if (a == "--chunks") o.chunks = static_cast<int>(parse_int(a, value(), 0, 1 << 30));
    else if (a == "-r" || a == "--repetitions") o.reps = static_cast<int>(parse_int(a, value(), 1, 1000));
    else if (a == "--chat") o.chat = true;
    else if (a == "--system") o.system = value();
    else if (a == "--temp") o.temp = parse_float(a, value());
    else if (a == "--top-p") o.top_p = parse_float(a, value());
    else if (a == "--seed") o.seed = static_cast<unsigned long long>(parse_int(a, value(), 0, (1LL << 62)));
    else if (a == "--kl-fp32") o.kl_fp32 = true;
    else if (a == "--kl-base") o.kl_base = value();
    else if (a == "--kl-llama") o.kl_llama = value();
    else if (a == "--save-logits") o.save_logits = value();
    else if (a == "--json") o.json = true;
    else if (a == "--requant") o.requant = value();
    else usage_error("unknown option '" + a + "'");
  }
  if (o.model.empty()) usage_error("-m MODEL is required");
  if (o.command == "bench" && o.prompt_given) o.n_prompt = static_cast<int>(parse_int("-p", o.prompt, 0, 1 << 20));
  return o;
}

// --requant C:gN → the quantizer configuration.
QuantConfig requant_config(const std::string& spec) {
  const std::size_t colon = spec.find(":g");
  if (colon == std::string::npos) usage_error("--requant " + spec + ": expected CODEBOOK:gN, e.g. int4_sym:g128");
  QuantConfig c;
  try {
    c.codebook = codebook_from_string(spec.substr(0, colon));
  } catch (const Error& e) {
    usage_error("--requant " + spec + ": " + e.what());
  }
  c.group_size = static_cast<std::size_t>(parse_int("--requant", spec.substr(colon + 2), 2, 1 << 20));
  c.scale_format = ScaleFormat::f16;
  return c;
}

LoadedModel open_model(const std::string& path, const Options& o, bool fp32) {
  LoadOptions lo;
  lo.dequantize = fp32;
  lo.tokenizer_path = o.tokenizer;
  LoadedModel m = load_model(path, lo);
  if (!o.requant.empty() && !fp32) {
    const QuantConfig c = requant_config(o.requant);
    const auto t0 = Clock::now();
    for (LlamaLayer& l : m.weights.layers)
      for (StoredMatrix* w : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w1, &l.w2, &l.w3}) *w = quantize(w->to_float(), c);
    std::fprintf(stderr, "requantized the block linears to %s in %.1f s\n", o.requant.c_str(),
                 std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return m;
}

// The runtime model; the loaded weights are released once it is built (the kernels'
// packed copies are all it needs), so memory holds one copy of the model.
Transformer build(LoadedModel& m, const Options& o, int threads) {
  RuntimeOptions r;
  r.backend = o.backend;
  r.threads = threads;
  m.model_bytes = m.weights.bytes();
  const LlamaConfig config = m.weights.config;
  Transformer t = Transformer::from_weights(std::move(m.weights), r);
  m.weights = LlamaWeights();
  m.weights.config = config;
  return t;
}

using nibble_tools::current_rss_mib;
using nibble_tools::peak_rss_mib;

std::string prompt_text(const Options& o) {
  if (!o.file.empty()) return read_text_file(o.file);
  if (!o.prompt_given) usage_error(o.command + " needs -p TEXT or -f FILE");
  return o.prompt;
}

std::string json_escape(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') out += '\\', out += static_cast<char>(c);
    else if (c == '\n') out += "\\n";
    else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else out += static_cast<char>(c);
  }
  return out;
}

int cmd_tokenize(const Options& o) {
  LoadedModel m = open_model(o.model, o, false);
  const std::vector<int> ids = m.tokenizer.encode(prompt_text(o), true, true);
  std::string line;
  for (std::size_t i = 0; i < ids.size(); ++i) line += (i ? " " : "") + std::to_string(ids[i]);
  std::printf("%s\n", line.c_str());
  return 0;
}

int cmd_run(const Options& o) {
  LoadedModel m = open_model(o.model, o, o.fp32);
  const Transformer model = build(m, o, o.threads.front());
  std::string text = prompt_text(o);
  if (o.chat) {
    std::vector<ChatMessage> msgs;
    if (!o.system.empty()) msgs.push_back({"system", o.system});
    msgs.push_back({"user", text});
    text = apply_chat_template(m.chat_template, msgs);
  }
  const std::vector<int> prompt = m.tokenizer.encode(text, true, o.chat);
  detail::require(!prompt.empty(), "the prompt encodes to no tokens");
  SamplerConfig sc;
  sc.temperature = o.temp;
  sc.top_p = o.top_p;
  sc.seed = o.seed;
  const int n = o.n_predict < 0 ? 128 : o.n_predict;
  const int n_fit = std::min<long long>(n, static_cast<long long>(model.config.seq_len) - static_cast<long long>(prompt.size()));
  detail::require(n_fit >= 0, "the prompt (", prompt.size(), " tokens) does not fit the model's context of ",
                  model.config.seq_len);
  if (!o.json && !o.chat) std::fputs(text.c_str(), stdout);
  std::string out;
  int previous = prompt.back();
  const TokenGeneration g = generate_tokens(
      model, prompt, n_fit, sc, [&](int id) { return m.tokenizer.is_end_of_generation(id); },
      [&](int id) {
        if (m.tokenizer.is_end_of_generation(id)) return;
        const std::string piece = m.tokenizer.piece(previous, id);
        previous = id;
        out += piece;
        if (!o.json) {
          std::fputs(piece.c_str(), stdout);
          std::fflush(stdout);
        }
      });
  if (o.json) {
    std::printf("{\"prompt_tokens\": %zu, \"generated\": %zu, \"prefill_tokens_per_second\": %.3f, "
                "\"decode_tokens_per_second\": %.3f, \"model_bytes\": %zu, \"kv_cache_bytes\": %zu, "
                "\"peak_rss_mib\": %.1f, \"text\": \"%s\"}\n",
                g.prompt_tokens, g.generated, g.prefill_tokens_per_second(), g.decode_tokens_per_second(),
                m.model_bytes, model.cache_bytes(static_cast<int>(g.tokens.size())), peak_rss_mib(),
                json_escape(out).c_str());
  } else {
    std::printf("\n");
    std::fprintf(stderr, "prompt: %zu tokens, %.1f tokens/s; generated: %zu tokens, %.1f tokens/s (%d thread%s)\n",
                 g.prompt_tokens, g.prefill_tokens_per_second(), g.generated, g.decode_tokens_per_second(),
                 o.threads.front(), o.threads.front() == 1 ? "" : "s");
    std::fprintf(stderr, "memory: peak RSS %.1f MiB (%.1f MiB at the end); model %.1f MiB + KV cache %.1f MiB\n",
                 peak_rss_mib(), current_rss_mib(),
                 static_cast<double>(m.model_bytes) / (1 << 20),
                 static_cast<double>(model.cache_bytes(static_cast<int>(g.tokens.size()))) / (1 << 20));
  }
  return 0;
}

int cmd_perplexity(const Options& o) {
  if (o.file.empty()) usage_error("perplexity needs -f FILE");
  if (o.kl_fp32 && !o.kl_base.empty()) usage_error("--kl-fp32 and --kl-base exclude each other");
  LoadedModel m = open_model(o.model, o, o.fp32);
  const Transformer model = build(m, o, o.threads.front());
  std::unique_ptr<Transformer> reference;
  if (o.kl_fp32 || !o.kl_base.empty()) {
    LoadedModel r = open_model(o.kl_fp32 ? o.model : o.kl_base, o, o.kl_fp32);
    detail::require(r.weights.config.vocab_size == m.weights.config.vocab_size, "the reference model's vocabulary (",
                    r.weights.config.vocab_size, ") differs from the model's (", m.weights.config.vocab_size, ")");
    reference = std::make_unique<Transformer>(build(r, o, o.threads.front()));
  }
  const auto t0 = Clock::now();
  std::vector<int> tokens = m.tokenizer.encode(read_text_file(o.file), true, false);
  const double tokenize_s = std::chrono::duration<double>(Clock::now() - t0).count();
  PerplexityOptions po;
  po.n_ctx = o.n_ctx;
  po.add_bos = m.tokenizer.adds_bos();
  po.bos_id = m.tokenizer.bos();
  po.max_chunks = o.chunks;
  const int vocab = m.weights.config.vocab_size;

  // llama.cpp's saved logits: its tokens and context decide the chunks.
  std::unique_ptr<io::LlamaLogitsReader> base;
  double base_kl = 0.0;
  std::size_t base_same_top = 0, base_positions = 0;
  if (!o.kl_llama.empty()) {
    base = std::make_unique<io::LlamaLogitsReader>(io::LlamaLogitsReader::open(o.kl_llama));
    const io::LlamaLogitsHeader& h = base->header();
    detail::require(h.n_vocab == vocab, "'", o.kl_llama, "' has a vocabulary of ", h.n_vocab, ", the model ", vocab);
    std::size_t differ = 0;
    for (std::size_t i = 0; i < base->tokens().size(); ++i)
      differ += i >= tokens.size() || tokens[i] != base->tokens()[i];
    std::fprintf(stderr, "kl-llama: %d chunks of %d from '%s'; %zu of its %zu tokens differ from nibble's tokenization\n",
                 h.n_chunk, h.n_ctx, o.kl_llama.c_str(), differ, base->tokens().size());
    tokens = base->tokens();
    po.n_ctx = h.n_ctx;
  }
  detail::require(po.n_ctx <= model.config.seq_len, "-c ", po.n_ctx, " exceeds the model's context of ",
                  model.config.seq_len);
  std::unique_ptr<io::LlamaLogitsWriter> save;
  if (!o.save_logits.empty()) {
    io::LlamaLogitsHeader h;
    h.n_ctx = po.n_ctx;
    h.n_vocab = vocab;
    std::size_t n_chunks = tokens.size() / static_cast<std::size_t>(po.n_ctx);
    if (po.max_chunks > 0) n_chunks = std::min(n_chunks, static_cast<std::size_t>(po.max_chunks));
    h.n_chunk = static_cast<int>(n_chunks);
    const std::vector<int> used(tokens.begin(), tokens.begin() + static_cast<std::ptrdiff_t>(n_chunks * po.n_ctx));
    save = std::make_unique<io::LlamaLogitsWriter>(o.save_logits, h, used);
  }
  std::vector<float> base_row(static_cast<std::size_t>(vocab));
  po.on_chunk = [&](std::size_t chunk, const RowMatrixXf& lp) {
    for (Eigen::Index t = 0; t < lp.rows(); ++t) {
      if (save) save->add(lp.row(t).data());
      if (base) {
        base->log_probs(chunk, static_cast<std::size_t>(t), base_row.data());
        base_kl += io::kl_from_base(base_row.data(), lp.row(t).data(), vocab);
        Eigen::Index top = 0;
        lp.row(t).maxCoeff(&top);
        base_same_top += std::max_element(base_row.begin(), base_row.end()) - base_row.begin() == top;
        ++base_positions;
      }
    }
  };
  po.progress = [&](std::size_t i, std::size_t n) {
    std::fprintf(stderr, "\r  chunk %zu/%zu", i, n);
    std::fflush(stderr);
  };
  std::fprintf(stderr, "perplexity: %zu tokens (tokenized in %.2f s), chunks of %d\n", tokens.size(), tokenize_s,
               po.n_ctx);
  const PerplexityResult r = llama_perplexity(model, tokens, po, reference.get());
  std::fprintf(stderr, "\n");
  if (save) save->finish();
  const double llama_kl = base_positions ? base_kl / static_cast<double>(base_positions) : 0.0;
  const double same_top = base_positions ? static_cast<double>(base_same_top) / static_cast<double>(base_positions) : 0.0;
  if (o.json) {
    std::printf("{\"tokens\": %zu, \"chunks\": %zu, \"scored\": %zu, \"perplexity\": %.6f", tokens.size(),
                r.chunk_nll.size(), r.scored(), r.perplexity());
    if (reference) std::printf(", \"reference_perplexity\": %.6f, \"mean_kl\": %.8f", r.reference_perplexity(), r.mean_kl());
    if (base) std::printf(", \"llama_mean_kl\": %.8f, \"llama_same_top\": %.6f", llama_kl, same_top);
    std::printf(", \"seconds\": %.3f, \"tokens_per_second\": %.2f}\n", r.seconds, r.tokens_per_second(po.n_ctx));
  } else {
    std::printf("Final estimate: PPL = %.4f (mean NLL %.6f over %zu tokens in %zu chunks)\n", r.perplexity(),
                std::log(r.perplexity()), r.scored(), r.chunk_nll.size());
    if (reference)
      std::printf("reference PPL = %.4f; mean KL(reference || model) = %.6f\n", r.reference_perplexity(), r.mean_kl());
    if (base)
      std::printf("llama.cpp logits: mean KL(llama.cpp || model) = %.6f, same top token %.2f%%\n", llama_kl,
                  100.0 * same_top);
    std::fprintf(stderr, "%.1f s, %.1f tokens/s\n", r.seconds, r.tokens_per_second(po.n_ctx));
  }
  return 0;
}

struct Stat {
  double mean = 0.0, sd = 0.0;
};
Stat stat_of(const std::vector<double>& v) {
  Stat s;
  for (double x : v) s.mean += x;
  s.mean /= static_cast<double>(v.size());
  for (double x : v) s.sd += (x - s.mean) * (x - s.mean);
  s.sd = v.size() > 1 ? std::sqrt(s.sd / static_cast<double>(v.size() - 1)) : 0.0;
  return s;
}

int cmd_bench(const Options& o) {
  LoadedModel m = open_model(o.model, o, o.fp32);
  const int n_gen = o.n_predict < 0 ? 128 : o.n_predict;
  const LlamaConfig c = m.weights.config;
  detail::require(o.n_prompt <= c.seq_len && n_gen <= c.seq_len, "bench sizes exceed the model's context of ",
                  c.seq_len);
  Transformer model = build(m, o, o.threads.front());
  // Token ids as llama-bench uses them: arbitrary valid ids (the content does not
  // change the work); a fixed pattern keeps runs comparable.
  auto tokens_of = [&](int n) {
    std::vector<int> t(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) t[static_cast<std::size_t>(i)] = static_cast<int>((1 + 7919LL * i) % c.vocab_size);
    return t;
  };
  if (!o.json)
    std::printf("| model | size (MiB) | threads | test | tokens/s |\n|---|---|---|---|---|\n");
  const double size_mib = static_cast<double>(m.model_bytes) / (1 << 20);
  std::string json = "[";
  for (int threads : o.threads) {
    model.set_threads(threads);
    auto report = [&](const char* test, int n, const std::vector<double>& rates) {
      const Stat s = stat_of(rates);
      if (o.json) {
        char buf[512];
        std::snprintf(buf, sizeof buf,
                      "%s{\"test\": \"%s%d\", \"threads\": %d, \"tokens_per_second\": %.3f, \"sd\": %.3f, "
                      "\"model_bytes\": %zu, \"peak_rss_mib\": %.1f, \"isa\": \"%s\"}",
                      json.size() > 1 ? ", " : "", test, n, threads, s.mean, s.sd, m.model_bytes, peak_rss_mib(),
                      to_string(selected_isa()));
        json += buf;
      } else {
        std::printf("| %s | %.2f | %d | %s%d | %.2f ± %.2f |\n", o.model.c_str(), size_mib, threads, test, n, s.mean,
                    s.sd);
        std::fflush(stdout);
      }
    };
    if (o.n_prompt > 0) {
      const std::vector<int> p = tokens_of(o.n_prompt);
      std::vector<double> rates;
      for (int r = -1; r < o.reps; ++r) {  // r = -1: warm-up
        KvCache cache = model.new_cache(o.n_prompt);
        const auto t0 = Clock::now();
        model.forward_last(p, cache);  // as llama-bench: logits of the last position only
        const double s = std::chrono::duration<double>(Clock::now() - t0).count();
        if (r >= 0) rates.push_back(o.n_prompt / s);
      }
      report("pp", o.n_prompt, rates);
    }
    if (n_gen > 0) {
      std::vector<double> rates;
      for (int r = -1; r < o.reps; ++r) {
        KvCache cache = model.new_cache(n_gen);
        const auto t0 = Clock::now();
        int next = 1;
        for (int i = 0; i < n_gen; ++i) {
          const RowMatrixXf logits = model.forward({next}, cache);
          Eigen::Index arg = 0;
          logits.row(0).maxCoeff(&arg);
          next = static_cast<int>(arg);
        }
        const double s = std::chrono::duration<double>(Clock::now() - t0).count();
        if (r >= 0) rates.push_back(n_gen / s);
      }
      report("tg", n_gen, rates);
    }
  }
  if (o.json) std::printf("%s]\n", json.c_str());
  else
    std::fprintf(stderr, "memory: peak RSS %.1f MiB (model %.1f MiB, ISA %s)\n", peak_rss_mib(), size_mib,
                 to_string(selected_isa()));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  try {
    if (o.command == "run") return cmd_run(o);
    if (o.command == "perplexity") return cmd_perplexity(o);
    if (o.command == "bench") return cmd_bench(o);
    return cmd_tokenize(o);
  } catch (const nibble::Error& e) {
    std::fprintf(stderr, "nibble-llm: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "nibble-llm: out of memory\n");
    return 1;
  }
}
