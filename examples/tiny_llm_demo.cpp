// tiny_llm_demo: nibble on a real model. Loads stories260K (a Llama-2 style model
// trained on TinyStories), quantizes its 35 linear layers with each method, runs them
// through nibble's packed 4-bit kernels, and prints perplexity and KL divergence against
// fp32 on held-out stories, then writes a story with the 4-bit model.
//
//   tiny_llm_demo                      default table (every method at g32, a few g64 / per-row)
//   tiny_llm_demo --all                every method × {32, 64, per-row}
//   tiny_llm_demo --methods uint4,gptq-act --groups 32,64,row --json
//   tiny_llm_demo --help
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <nibble/model/generate.hpp>
#include <nibble/model/quantize_model.hpp>

#ifndef NIBBLE_DEMO_DATA_DIR
#define NIBBLE_DEMO_DATA_DIR "examples/data"
#endif

namespace {

using nibble::model::Method;

struct Options {
  std::string data_dir = NIBBLE_DEMO_DATA_DIR;
  std::string model, tokenizer, eval_text, calib_text;
  std::vector<std::string> methods;  // empty: default set
  std::vector<int> groups;           // empty: default set
  bool all = false;
  bool json = false;
  int threads = 2;
  int eval_stories = 0;  // 0: all
  int calib_stories = 128;
  nibble::model::LinearBackend backend = nibble::model::LinearBackend::kernel_exact;
  nibble::ScaleFormat scales = nibble::ScaleFormat::f16;
  bool story = true;
  std::string story_method = "gptq-act";
  int story_group = 32;
  int story_tokens = 200;
  float temperature = 0.8f, top_p = 0.9f;
  unsigned long long seed = 42;
  std::string prompt;
  std::vector<std::pair<std::string, int>> group_overrides;
};

void usage() {
  std::printf(
      "usage: tiny_llm_demo [options]\n"
      "  --methods a,b,...    methods to run (default: all at g32 plus a few g64/per-row rows)\n"
      "  --groups 32,64,row   group sizes for --methods (default 32)\n"
      "  --all                every method at group sizes 32, 64 and per-row\n"
      "  --group-override L=G,...  per-matrix group sizes (wq wk wv wo w1 w2 w3), e.g. wo=16,w2=16\n"
      "  --mode M             exact (default) | fast (int8 activations) | dequantized (fp32 cross-check)\n"
      "  --scales F           scale storage of the integer formats: f16 (default) | f32\n"
      "  --threads N          threads (default 2)\n"
      "  --eval FILE          evaluation text, stories separated by <|endoftext|> (default: bundled validation)\n"
      "  --eval-stories N     score only the first N stories (default: all)\n"
      "  --calib FILE         calibration text for GPTQ/AWQ (default: bundled training sample)\n"
      "  --calib-stories N    calibration stories (default 128)\n"
      "  --model FILE --tokenizer FILE   another llama2.c checkpoint (default: bundled stories260K)\n"
      "  --data DIR           directory of the bundled files\n"
      "  --json               one JSON object per table row on stdout (progress on stderr)\n"
      "  --no-story           skip text generation\n"
      "  --story-method M --story-group G --story-tokens N --temperature T --top-p P --seed S --prompt TEXT\n"
      "  --list               list the methods\n");
}

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

int parse_group(const std::string& s) {
  if (s == "row" || s == "per-row" || s == "0") return nibble::kPerRow;
  const int g = std::atoi(s.c_str());
  if (g <= 0) throw nibble::Error("bad group size '" + s + "' (expected a number like 32, or 'row')");
  return g;
}

std::string group_label(int g) { return g == nibble::kPerRow ? "row" : std::to_string(g); }

Options parse(int argc, char** argv) {
  Options o;
  auto value = [&](int& i) -> std::string {
    if (i + 1 >= argc) throw nibble::Error(std::string("option ") + argv[i] + " needs a value");
    return argv[++i];
  };
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      usage();
      std::exit(0);
    } else if (a == "--list") {
      for (const auto& m : nibble::model::all_methods())
        std::printf("%-20s %s%s%s\n", m.name, m.description, m.calibrated ? " (calibrated)" : "",
                    m.standard ? "" : " [experiment]");
      std::exit(0);
    } else if (a == "--methods") {
      o.methods = split_list(value(i));
    } else if (a == "--groups") {
      for (const auto& g : split_list(value(i))) o.groups.push_back(parse_group(g));
    } else if (a == "--group-override") {
      for (const auto& item : split_list(value(i))) {
        const auto eq = item.find('=');
        if (eq == std::string::npos) throw nibble::Error("bad --group-override '" + item + "' (expected e.g. w2=16)");
        o.group_overrides.emplace_back(item.substr(0, eq), parse_group(item.substr(eq + 1)));
      }
    } else if (a == "--all") {
      o.all = true;
    } else if (a == "--json") {
      o.json = true;
    } else if (a == "--threads") {
      o.threads = std::atoi(value(i).c_str());
    } else if (a == "--mode") {
      const std::string m = value(i);
      if (m == "exact") o.backend = nibble::model::LinearBackend::kernel_exact;
      else if (m == "fast") o.backend = nibble::model::LinearBackend::kernel_fast;
      else if (m == "dequantized") o.backend = nibble::model::LinearBackend::dequantized;
      else throw nibble::Error("bad --mode '" + m + "' (expected exact, fast or dequantized)");
    } else if (a == "--scales") {
      const std::string m = value(i);
      if (m == "f16") o.scales = nibble::ScaleFormat::f16;
      else if (m == "f32") o.scales = nibble::ScaleFormat::f32;
      else throw nibble::Error("bad --scales '" + m + "' (expected f16 or f32)");
    } else if (a == "--eval") {
      o.eval_text = value(i);
    } else if (a == "--eval-stories") {
      o.eval_stories = std::atoi(value(i).c_str());
    } else if (a == "--calib") {
      o.calib_text = value(i);
    } else if (a == "--calib-stories") {
      o.calib_stories = std::atoi(value(i).c_str());
    } else if (a == "--model") {
      o.model = value(i);
    } else if (a == "--tokenizer") {
      o.tokenizer = value(i);
    } else if (a == "--data") {
      o.data_dir = value(i);
    } else if (a == "--no-story") {
      o.story = false;
    } else if (a == "--story-method") {
      o.story_method = value(i);
    } else if (a == "--story-group") {
      o.story_group = parse_group(value(i));
    } else if (a == "--story-tokens") {
      o.story_tokens = std::atoi(value(i).c_str());
    } else if (a == "--temperature") {
      o.temperature = static_cast<float>(std::atof(value(i).c_str()));
    } else if (a == "--top-p") {
      o.top_p = static_cast<float>(std::atof(value(i).c_str()));
    } else if (a == "--seed") {
      o.seed = std::strtoull(value(i).c_str(), nullptr, 10);
    } else if (a == "--prompt") {
      o.prompt = value(i);
    } else {
      throw nibble::Error("unknown option '" + a + "' (see --help)");
    }
  }
  if (o.threads < 1) throw nibble::Error("--threads must be >= 1");
  if (o.calib_stories < 1) throw nibble::Error("--calib-stories must be >= 1");
  if (o.eval_stories < 0) throw nibble::Error("--eval-stories must be >= 0");
  const std::string d = o.data_dir + "/";
  if (o.model.empty()) o.model = d + "stories260K.bin";
  if (o.tokenizer.empty()) o.tokenizer = d + "tok512.bin";
  if (o.eval_text.empty()) o.eval_text = d + "tinystories_valid_first101.txt";
  if (o.calib_text.empty()) o.calib_text = d + "tinystories_train_sample_2MiB.txt";
  return o;
}

// The rows of the table: (method, group size).
std::vector<std::pair<Method, int>> table_rows(const Options& o) {
  std::vector<std::pair<Method, int>> rows;
  std::vector<Method> methods;
  for (const auto& name : o.methods) methods.push_back(nibble::model::method_by_name(name).method);
  if (methods.empty())
    for (const auto& m : nibble::model::all_methods())
      if (m.standard) methods.push_back(m.method);
  if (o.all || !o.methods.empty() || !o.groups.empty()) {
    std::vector<int> groups = o.groups;
    if (groups.empty()) groups = o.all ? std::vector<int>{32, 64, nibble::kPerRow} : std::vector<int>{32};
    for (int g : groups)
      for (Method m : methods) rows.emplace_back(m, g);
    return rows;
  }
  for (Method m : methods) rows.emplace_back(m, 32);
  rows.emplace_back(Method::gptq_mixed, 32);  // the best found at <= 4.6 bits/weight
  for (Method m : {Method::rtn_uint4, Method::gptq_act}) rows.emplace_back(m, 64);
  rows.emplace_back(Method::rtn_uint4, nibble::kPerRow);
  return rows;
}

struct Row {
  std::string method, description, group;
  int group_size = 0;
  double bits = 0, ppl = 0, kl = 0, tokens_per_s = 0, quantize_s = 0;
  std::size_t bytes = 0;
};

void print_header() {
  std::printf("\n| %-32s | %5s | %6s | %9s | %7s | %7s | %6s | %8s |\n", "method", "group", "bits/w", "bytes", "ppl",
              "delta", "KL", "tok/s");
  std::printf("|%s|%s|%s|%s|%s|%s|%s|%s|\n", std::string(34, '-').c_str(), std::string(7, '-').c_str(),
              std::string(8, '-').c_str(), std::string(11, '-').c_str(), std::string(9, '-').c_str(),
              std::string(9, '-').c_str(), std::string(8, '-').c_str(), std::string(10, '-').c_str());
}

void print_row(const Row& r, double ppl_fp32) {
  std::printf("| %-32s | %5s | %6.3f | %9zu | %7.4f | %+6.2f%% | %6.4f | %8.0f |\n", r.description.c_str(),
              r.group.c_str(), r.bits, r.bytes, r.ppl, 100.0 * (r.ppl / ppl_fp32 - 1.0), r.kl, r.tokens_per_s);
  std::fflush(stdout);
}

void print_json(const Row& r, double ppl_fp32) {
  std::printf(
      "{\"method\": \"%s\", \"group_size\": %d, \"bits_per_weight\": %.4f, \"model_bytes\": %zu, \"ppl\": %.5f, "
      "\"ppl_fp32\": %.5f, \"delta_pct\": %.3f, \"kl\": %.5f, \"tokens_per_s\": %.1f, \"quantize_s\": %.3f}\n",
      r.method.c_str(), r.group_size, r.bits, r.bytes, r.ppl, ppl_fp32, 100.0 * (r.ppl / ppl_fp32 - 1.0), r.kl,
      r.tokens_per_s, r.quantize_s);
  std::fflush(stdout);
}

void show_story(const char* label, const nibble::model::Generation& g, const std::string& prompt) {
  std::printf("\n--- %s (%zu tokens, %.0f tokens/s) ---\n%s%s\n", label, g.generated, g.tokens_per_second(),
              prompt.c_str(), g.text.c_str());
}

int run(const Options& o) {
  namespace nm = nibble::model;
  FILE* info = o.json ? stderr : stdout;
  const nm::LlamaWeights weights = nm::load_llama2c_checkpoint(o.model);
  const nm::Tokenizer tok = nm::load_tokenizer(o.tokenizer, weights.config.vocab_size);
  const auto& c = weights.config;
  std::fprintf(info, "model %s: dim %d, hidden %d, %d layers, %d heads (%d kv), vocab %d, seq_len %d\n",
               o.model.c_str(), c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size, c.seq_len);

  std::vector<std::string> eval_stories = nm::split_stories(nm::read_text_file(o.eval_text));
  if (o.eval_stories > 0 && static_cast<std::size_t>(o.eval_stories) < eval_stories.size())
    eval_stories.resize(static_cast<std::size_t>(o.eval_stories));
  const auto eval = nm::tokenize_stories(tok, eval_stories, c.seq_len);
  std::vector<std::string> calib_stories = nm::split_stories(nm::read_text_file(o.calib_text));
  if (calib_stories.size() > static_cast<std::size_t>(o.calib_stories))
    calib_stories.resize(static_cast<std::size_t>(o.calib_stories));
  const auto calib = nm::tokenize_stories(tok, calib_stories, c.seq_len);
  std::fprintf(info, "eval: %zu stories from %s; calibration: %zu stories from %s\n", eval.size(),
               o.eval_text.c_str(), calib.size(), o.calib_text.c_str());
  std::fprintf(info, "kernels: %s path, %s activations, %d threads; integer-format scales %s\n",
               nibble::to_string(nibble::selected_isa()), nm::to_string(o.backend), o.threads,
               nibble::to_string(o.scales));

  const nm::Transformer fp32 = nm::Transformer::from_weights(weights);
  std::vector<nibble::RowMatrixXf> reference;
  const nm::EvalResult base = nm::evaluate(fp32, eval, o.threads, nullptr, &reference);
  const double ppl_fp32 = base.perplexity();
  Row fp_row{"fp32", "fp32 (reference)", "-", 0, 32.0, ppl_fp32, 0.0, base.tokens_per_second(), 0.0,
             nm::fp32_model_bytes(weights)};
  std::fprintf(info, "%zu tokens scored\n", base.tokens);
  if (o.json) print_json(fp_row, ppl_fp32);
  else {
    print_header();
    print_row(fp_row, ppl_fp32);
  }

  for (const auto& [method, group] : table_rows(o)) {
    nm::ModelQuantOptions q;
    q.method = method;
    q.group_size = group;
    q.int_scale_format = o.scales;
    q.backend = o.backend;
    q.threads = o.threads;
    q.group_overrides = o.group_overrides;
    const nm::QuantizedModel qm = nm::quantize_model(weights, q, calib);
    const nm::EvalResult r = nm::evaluate(qm.model, eval, o.threads, &reference);
    const auto& info_m = nm::method_info(method);
    Row row{info_m.name, info_m.description, group_label(group), group, qm.bits_per_weight(), r.perplexity(),
            r.mean_kl(), r.tokens_per_second(), qm.seconds, qm.model_bytes()};
    if (o.json) print_json(row, ppl_fp32);
    else print_row(row, ppl_fp32);
  }
  if (!o.json)
    std::printf("\nppl: perplexity over every token after BOS (stories cut at %d tokens); delta vs fp32;\n"
                "KL: mean KL(fp32 || quantized) in nats/token; bits/w: all stored bits of the 35 linears\n"
                "(codes, scales, zeros) per weight; bytes: whole model, embedding and norms in fp32;\n"
                "tok/s: tokens scored per second (whole-story forward passes, %d threads).\n",
                c.seq_len, o.threads);

  if (o.story) {
    nm::ModelQuantOptions q;
    q.method = nm::method_by_name(o.story_method).method;
    q.group_size = o.story_group;
    q.int_scale_format = o.scales;
    q.backend = o.backend;
    q.threads = o.threads;
    const nm::QuantizedModel qm = nm::quantize_model(weights, q, calib);
    const std::string label = std::string(nm::method_info(q.method).description) + " g" + group_label(o.story_group);
    FILE* out = info;
    std::fflush(stdout);
    const nm::Generation greedy = nm::generate(qm.model, tok, o.prompt, o.story_tokens);
    const nm::Generation sampled =
        nm::generate(qm.model, tok, o.prompt, o.story_tokens, {o.temperature, o.top_p, o.seed});
    const nm::Generation fp_greedy = nm::generate(fp32, tok, o.prompt, o.story_tokens);
    if (out == stdout) {
      show_story((label + ", greedy").c_str(), greedy, o.prompt);
      char buf[128];
      std::snprintf(buf, sizeof buf, ", temperature %.2f, top-p %.2f, seed %llu", o.temperature, o.top_p, o.seed);
      show_story((label + buf).c_str(), sampled, o.prompt);
      show_story("fp32, greedy (for comparison)", fp_greedy, o.prompt);
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse(argc, argv));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tiny_llm_demo: %s\n", e.what());
    return 1;
  }
}
