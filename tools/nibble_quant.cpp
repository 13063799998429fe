// nibble-quant: quantize every linear weight of a safetensors checkpoint and write a
// file another runtime loads. One tensor at a time is read from the memory map,
// quantized and written, so memory stays near the largest tensor, not the model.
//
//   nibble-quant model.safetensors model.nibble
//   nibble-quant model.safetensors model.gguf --format gguf-q4_0
//   nibble-quant model.safetensors out.safetensors --format gptq --method gptq --calib acts.safetensors
// Run with --help for everything.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include <nibble/io/io.hpp>
#include <nibble/quant/metrics.hpp>
#include <nibble/quant/rtn.hpp>
#include <nibble/quant/awq.hpp>
#include <nibble/quant/gptq.hpp>
#include <nibble/quant/hessian.hpp>
#include <nibble/quant/hqq.hpp>

#include "awq_folding.hpp"
#include "nibble_quant_model.hpp"

namespace {

using namespace nibble;
using Clock = std::chrono::steady_clock;

const char* kHelp = R"(nibble-quant: quantize the weights of a safetensors checkpoint to 4 bits.

usage: nibble-quant IN.safetensors OUT [options]
       nibble-quant MODEL OUT.gguf [options]        a whole model (GGUF file or Hugging Face
                                                     directory) for llama.cpp, optionally
                                                     calibrated on text (MODEL --help)

Every 2-D floating-point tensor (F32/F16/BF16) whose name does not match the skip
pattern is quantized; everything else (embeddings, norms, biases, 1-D tensors) is
copied unchanged. A table at the end lists bits/weight, sizes, SQNR and time.

options:
  --format F     output format (default: from OUT's extension: .nibble -> nibble,
                 .gguf -> gguf-q4_0; a .safetensors OUT needs --format)
                   nibble       nibble's own container (any method, any group)
                   gguf-q4_0    GGUF Q4_0, llama.cpp's reference rounding (group 32)
                   gguf-iq4_nl  GGUF IQ4_NL, llama.cpp's non-linear 4-bit table (group 32);
                                --method rtn is llama.cpp's own fit, clip/gptq fit to the table
                   gptq         GPTQ checkpoint (qweight/qzeros/scales/g_idx, gptq_v2 zeros)
                   gptq-v1      same with v1 zeros (zero - 1; cannot store zero point 0)
                   awq          AutoAWQ GEMM checkpoint (out_features % 8 == 0)
                   bnb-nf4      bitsandbytes NF4 state dict (blocksize 32..4096, in_features % blocksize == 0);
                                the bytes bitsandbytes' quantize_4bit writes (see --code-fit)
                   bnb-fp4      the same with bitsandbytes' FP4 (bnb-nf4 --method fp4)
  --method M     how weights are rounded (default: rtn; nf4 for bnb-nf4)
                   rtn    round to nearest, per-group absmax (or min/max with --asym)
                   clip   rtn plus a per-group search for the clipping range with least error
                   nf4    NormalFloat4 (QLoRA); fp4: bitsandbytes' FP4
                   hqq    half-quadratic zero-point optimization, float zeros (nibble format only)
                   gptq   GPTQ with calibration activations (needs --calib)
                   awq    activation-aware scaling + clip search (needs --calib). In llama-style
                          layers (model.layers.N.self_attn.*_proj, mlp.*_proj, input_layernorm,
                          post_attention_layernorm) the scales are folded into the norms and
                          into v_proj / up_proj rows, so any format holds the result. Elsewhere:
                          --format nibble stores "<name>.awq_scale" (F32 [in], divide the input
                          by it); other formats get the clip search only
  --group G      group size along in_features: 32, 64, 128 (default), ... or "row"
                 (gguf formats always use 32; bnb-nf4 defaults to 64)
  --asym         uint4 with a zero point per group (default for gptq/awq formats)
  --sym          int4 symmetric (default otherwise)
  --double-quant nf4/fp4 only: 8-bit quantized scales (QLoRA double quantization)
  --code-fit F   nf4/fp4 only: bitsandbytes (default for bnb-nf4/bnb-fp4): codes, absmax and
                 scale codes exactly as bitsandbytes 0.50.2's quantize_4bit; restored (default
                 otherwise): codes against the double-quantized scales as decoded, slightly
                 more accurate but not what bitsandbytes writes
  --act-order    gptq only: quantize columns by descending activation energy. With
                 --format gptq / gptq-v1 the groups follow that order and g_idx records
                 it (AutoGPTQ desc_act=True); other formats keep contiguous groups
                 (static groups, no g_idx needed)
  --calib FILE   calibration activations for --method gptq/awq: a safetensors file with a
                 tokens x in_features matrix per weight, named like the weight
                 (e.g. "model.layers.0.mlp.up_proj.weight"), or shared by every weight
                 with that input size, named "in_features.<N>" (e.g. "in_features.4096")
  --threads N    worker threads (default: all cores)
  --skip REGEX   also keep tensors whose name matches REGEX in float
  --no-default-skip   do not skip names matching the default pattern
                 (embed|norm|wte|wpe|ln_|lm_head|\.bias$)
  -h, --help     this text

Tensors whose shape a format cannot store (e.g. in_features not divisible by 32 for
gguf-q4_0) are kept in float and reported; nothing is dropped silently.
)";

struct Options {
  std::string in, out, format, method = "rtn", calib;
  int group = 128;
  bool group_given = false, asym = false, sym = false, double_quant = false, default_skip = true, act_order = false;
  std::string code_fit;  // "", "bitsandbytes" or "restored"
  int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  std::vector<std::string> skip;
};

[[noreturn]] void usage_error(const std::string& msg) {
  std::fprintf(stderr, "nibble-quant: %s\n(run nibble-quant --help for usage)\n", msg.c_str());
  std::exit(2);
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

Options parse(int argc, char** argv) {
  Options o;
  std::vector<std::string> positional;
  bool method_given = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage_error("option " + a + " needs a value");
      return argv[++i];
    };
    if (a == "-h" || a == "--help") {
      std::fputs(kHelp, stdout);
      std::exit(0);
    } else if (a == "--format") o.format = value();
    else if (a == "--method") { o.method = value(); method_given = true; }
    else if (a == "--group") {
      const std::string g = value();
      o.group_given = true;
      if (g == "row") o.group = kPerRow;
      else {
        char* end = nullptr;
        const long v = std::strtol(g.c_str(), &end, 10);
        if (*end != '\0' || v < 16 || v > (1 << 20)) usage_error("--group must be a number >= 16 or \"row\", got '" + g + "'");
        o.group = static_cast<int>(v);
      }
    } else if (a == "--asym") o.asym = true;
    else if (a == "--sym") o.sym = true;
    else if (a == "--double-quant") o.double_quant = true;
    else if (a == "--code-fit") {
      o.code_fit = value();
      if (o.code_fit != "bitsandbytes" && o.code_fit != "restored")
        usage_error("--code-fit must be bitsandbytes or restored, got '" + o.code_fit + "'");
    }
    else if (a == "--act-order") o.act_order = true;
    else if (a == "--calib") o.calib = value();
    else if (a == "--threads") {
      o.threads = std::atoi(value().c_str());
      if (o.threads < 1 || o.threads > 1024) usage_error("--threads must be between 1 and 1024");
    } else if (a == "--skip") o.skip.push_back(value());
    else if (a == "--no-default-skip") o.default_skip = false;
    else if (!a.empty() && a[0] == '-') usage_error("unknown option " + a);
    else positional.push_back(a);
  }
  if (positional.size() != 2) usage_error("expected IN.safetensors and OUT");
  o.in = positional[0];
  o.out = positional[1];
  if (o.format.empty()) {
    if (ends_with(o.out, ".nibble")) o.format = "nibble";
    else if (ends_with(o.out, ".gguf")) o.format = "gguf-q4_0";
    else usage_error("cannot tell the format from '" + o.out + "': pass --format (nibble, gguf-q4_0, gguf-iq4_nl, gptq, gptq-v1, awq, bnb-nf4, bnb-fp4)");
  }
  static const std::vector<std::string> formats = {"nibble", "gguf-q4_0", "gguf-iq4_nl", "gptq", "gptq-v1", "awq", "bnb-nf4", "bnb-fp4"};
  if (std::find(formats.begin(), formats.end(), o.format) == formats.end()) usage_error("unknown --format " + o.format);
  static const std::vector<std::string> methods = {"rtn", "clip", "nf4", "fp4", "hqq", "gptq", "awq"};
  if (std::find(methods.begin(), methods.end(), o.method) == methods.end()) usage_error("unknown --method " + o.method);
  if (o.format == "bnb-nf4" && !method_given) o.method = "nf4";
  if (o.format == "bnb-fp4") {  // one writer for both: the method picks the table
    if (method_given && o.method != "fp4") usage_error("bnb-fp4 stores FP4: drop --method or use fp4");
    o.method = "fp4";
    o.format = "bnb-nf4";
  }
  if (o.code_fit.empty()) o.code_fit = o.format == "bnb-nf4" ? "bitsandbytes" : "restored";
  if (o.code_fit == "bitsandbytes" && o.method != "nf4" && o.method != "fp4")
    usage_error("--code-fit bitsandbytes applies to --method nf4 or fp4");
  if (o.asym && o.sym) usage_error("--asym and --sym exclude each other");
  const bool ckpt = o.format == "gptq" || o.format == "gptq-v1" || o.format == "awq";
  if (ckpt && !o.sym) o.asym = true;
  if (o.format == "gguf-q4_0" || o.format == "gguf-iq4_nl") {
    if (o.group_given && o.group != 32) usage_error("GGUF Q4_0 / IQ4_NL blocks are 32 weights: drop --group or use 32");
    o.group = 32;
  }
  if (o.format == "bnb-nf4" && !o.group_given) o.group = 64;
  if (o.format == "bnb-nf4" && (o.group <= 0 || !is_bnb_blocksize(static_cast<std::size_t>(o.group))))
    usage_error("bitsandbytes blocksizes are 32, 64, 128, 256, 512, 1024, 2048 and 4096, got --group " +
                (o.group == kPerRow ? std::string("row") : std::to_string(o.group)));
  const bool calibrated = o.method == "gptq" || o.method == "awq";
  if (calibrated && o.calib.empty())
    usage_error("--method " + o.method + " needs calibration activations: --calib FILE (see --help for the tensor naming)");
  if (!calibrated && !o.calib.empty()) usage_error("--calib is only used by --method gptq and awq");
  if (o.double_quant && o.method != "nf4" && o.method != "fp4") usage_error("--double-quant applies to --method nf4 or fp4");
  if (o.act_order && o.method != "gptq") usage_error("--act-order applies to --method gptq");
  if (o.format == "gguf-iq4_nl" && o.method != "rtn" && o.method != "clip" && o.method != "gptq" && o.method != "awq")
    usage_error("gguf-iq4_nl stores llama.cpp's non-linear table: use --method rtn (llama.cpp's own fit), clip, gptq or awq");
  if (o.format == "gguf-iq4_nl" && o.asym) usage_error("gguf-iq4_nl has no zero points: drop --asym");
  if (o.format == "gguf-q4_0" && (o.method == "nf4" || o.method == "fp4" || o.method == "hqq" || o.asym))
    usage_error("gguf-q4_0 stores symmetric int4: use --method rtn, clip or gptq");
  if (o.format == "bnb-nf4" && o.method != "nf4" && o.method != "fp4") usage_error("bnb-nf4 needs --method nf4 or fp4");
  if (ckpt && (o.method == "nf4" || o.method == "fp4" || o.method == "hqq"))
    usage_error(o.format + " stores integer codes with integer zero points: use --method rtn, clip or gptq");
  return o;
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024.0 && u < 4) {
    b /= 1024.0;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", b, units[u]);
  return buf;
}

struct Row {
  std::string name, shape, note;
  double bits = 0, sqnr = 0, seconds = 0;
  std::uint64_t before = 0, after = 0, weights = 0;
  bool quantized = false;
};

// Progress on stderr: a redrawn bar on a terminal, one plain line per tensor otherwise.
class Progress {
 public:
  Progress(std::uint64_t total_weights, std::size_t total_tensors)
      : tty_(::isatty(STDERR_FILENO) != 0), total_(total_weights), count_(total_tensors), start_(Clock::now()) {}
  void begin(std::size_t index, const std::string& name) {
    if (!tty_) return;
    draw(index, name);
  }
  void end(std::size_t index, const std::string& name, std::uint64_t weights, const std::string& what) {
    done_ += weights;
    if (tty_) {
      draw(index + 1, name);
    } else {
      std::fprintf(stderr, "[%zu/%zu] %s: %s\n", index + 1, count_, name.c_str(), what.c_str());
    }
  }
  void finish() {
    if (tty_) std::fputc('\n', stderr);
  }

 private:
  void draw(std::size_t index, const std::string& name) {
    const double secs = std::chrono::duration<double>(Clock::now() - start_).count();
    const double frac = total_ ? static_cast<double>(done_) / static_cast<double>(total_) : 1.0;
    const double rate = secs > 0 ? static_cast<double>(done_) / secs : 0.0;
    const double eta = rate > 0 ? static_cast<double>(total_ - done_) / rate : 0.0;
    const int width = 24, filled = static_cast<int>(frac * width);
    std::string bar(static_cast<std::size_t>(filled), '=');
    bar.resize(width, ' ');
    std::string shown = name.size() > 40 ? "..." + name.substr(name.size() - 37) : name;
    std::fprintf(stderr, "\r[%s] %3.0f%% %zu/%zu %-40s %6.1f Mweights/s ETA %4.0fs", bar.c_str(), 100 * frac, index,
                 count_, shown.c_str(), rate / 1e6, eta);
    std::fflush(stderr);
  }
  bool tty_;
  std::uint64_t total_, done_ = 0;
  std::size_t count_;
  Clock::time_point start_;
};

bool calibrated_method(const Options& o) { return o.method == "gptq" || o.method == "awq"; }

bool is_float(io::DType t) { return t == io::DType::F32 || t == io::DType::F16 || t == io::DType::BF16; }

// Round-to-nearest family with group fitting spread over threads (rows are independent;
// the result is the same for any thread count because every group is fitted alike).
QuantizedMatrix rtn_parallel(const RowMatrixXf& W, const QuantConfig& config, int threads) {
  if (config.scale_format == ScaleFormat::dq8 || config.code_fit == CodeFit::bitsandbytes || threads == 1)
    return quantize(W, config);
  const std::size_t rows = static_cast<std::size_t>(W.rows()), cols = static_cast<std::size_t>(W.cols());
  const std::size_t gs = effective_group_size(config.group_size, cols), G = (cols + gs - 1) / gs;
  std::vector<GroupParams> params(rows * G);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      for (std::size_t r = static_cast<std::size_t>(t); r < rows; r += static_cast<std::size_t>(threads))
        for (std::size_t g = 0; g < G; ++g) {
          const std::size_t n = std::min(cols, (g + 1) * gs) - g * gs;
          params[r * G + g] = fit_group_mse(W.row(static_cast<Eigen::Index>(r)).data() + g * gs, n, config.codebook,
                                            config.sym_scale, config.clip, config.scale_format);
        }
    });
  for (auto& th : pool) th.join();
  return encode_matrix(W, gs, config.codebook, params, config.scale_format);
}

// Calibration activations for one weight (see --help for the naming convention).
RowMatrixXf calibration_for(const io::SafetensorsReader& calib, const std::string& name, std::size_t in) {
  const std::string shared = "in_features." + std::to_string(in);
  const std::string key = calib.contains(name) ? name : shared;
  detail::require(calib.contains(key), "no calibration activations for '", name, "': the calibration file needs a tensor named '",
                  name, "' or '", shared, "' (tokens x ", in, ")");
  RowMatrixXf X = calib.matrix(key);
  detail::require(static_cast<std::size_t>(X.cols()) == in, "calibration tensor '", key, "' has ", X.cols(),
                  " columns, expected in_features = ", in);
  return X;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && is_model_input(argv[1])) return quantize_model_file_main(argc, argv);
  const Options o = parse(argc, argv);
  try {
    const io::SafetensorsReader in = io::SafetensorsReader::open(o.in);
    std::unique_ptr<io::SafetensorsReader> calib;
    if (!o.calib.empty()) calib = std::make_unique<io::SafetensorsReader>(io::SafetensorsReader::open(o.calib));
    std::string skip_pattern = o.default_skip ? "embed|norm|wte|wpe|ln_|lm_head|\\.bias$" : "";
    for (const auto& s : o.skip) skip_pattern += (skip_pattern.empty() ? "" : "|") + std::string("(?:") + s + ")";
    std::regex skip_re;
    try {
      skip_re = std::regex(skip_pattern.empty() ? "$^" : skip_pattern, std::regex::ECMAScript | std::regex::icase);
    } catch (const std::regex_error& e) {
      usage_error("--skip pattern is not a valid regular expression: " + std::string(e.what()));
    }

    // Plan: which tensors get quantized.
    std::vector<bool> quantize_it(in.tensors().size());
    std::uint64_t total_weights = 0;
    for (std::size_t i = 0; i < in.tensors().size(); ++i) {
      const auto& t = in.tensors()[i];
      quantize_it[i] = is_float(t.dtype) && t.shape.size() == 2 && t.shape[0] > 0 && t.shape[1] > 0 &&
                       !std::regex_search(t.name, skip_re);
      if (quantize_it[i]) total_weights += t.elements();
    }

    // AWQ folding: the llama-style layers (prefix "model.layers.N.") whose scales fold,
    // and how many of each layer's tensors are still to be written (a folded layer is
    // computed when its first tensor comes up and dropped after its last).
    std::map<std::string, std::vector<nibble_quant::AwqFoldGroup>> fold_groups;
    std::map<std::string, std::size_t> fold_pending;
    std::map<std::string, nibble_quant::AwqFoldedLayer> folded;
    std::map<std::string, std::size_t> index_of;
    const std::regex layer_re(R"(^(model\.layers\.[0-9]+\.))");
    auto layer_prefix = [&](const std::string& name) {
      std::smatch m;
      return std::regex_search(name, m, layer_re) ? m[1].str() : std::string();
    };
    if (o.method == "awq") {
      for (std::size_t i = 0; i < in.tensors().size(); ++i) {
        index_of[in.tensors()[i].name] = i;
        const std::string p = layer_prefix(in.tensors()[i].name);
        if (p.empty()) continue;
        if (!fold_groups.count(p)) fold_groups[p] = nibble_quant::awq_fold_groups(in, p);
        ++fold_pending[p];
      }
      // Gemma's norms scale by (1 + gain), so dividing the gain by s would be wrong; its
      // tensor names are llama's, so the checkpoint's config.json (if beside it) decides.
      const std::string config_path = o.in.substr(0, o.in.find_last_of('/') + 1) + "config.json";
      std::ifstream config_file(config_path);
      if (config_file) {
        const nlohmann::json config = nlohmann::json::parse(config_file, nullptr, /*allow_exceptions=*/false);
        const bool typed = config.is_object() && config.contains("model_type") && config["model_type"].is_string();
        const std::string type = typed ? config["model_type"].get<std::string>() : std::string();
        if (type.rfind("gemma", 0) == 0) {
          std::fprintf(stderr, "awq: %s says model_type %s: its norms are not folded (clip search only)\n",
                       config_path.c_str(), type.c_str());
          for (auto& [p, g] : fold_groups) g.clear();
        }
      }
      std::size_t foldable = 0;
      for (const auto& [p, g] : fold_groups) foldable += !g.empty();
      std::fprintf(stderr, "awq: scales fold into norms / v_proj / up_proj in %zu of %zu layers\n", foldable,
                   fold_groups.size());
    }

    // Codebook and scale storage for the chosen method / format.
    QuantConfig qc;
    qc.group_size = o.group;
    qc.codebook = o.asym ? Codebook::uint4_asym : Codebook::int4_sym;
    qc.scale_format = ScaleFormat::f16;
    if (o.method == "nf4" || o.method == "fp4") {
      qc.codebook = o.method == "nf4" ? Codebook::nf4 : Codebook::fp4;
      qc.scale_format = o.double_quant ? ScaleFormat::dq8 : ScaleFormat::f32;
      qc.code_fit = o.code_fit == "bitsandbytes" ? CodeFit::bitsandbytes : CodeFit::restored;
    }
    if (o.method == "clip") qc.clip.enabled = true;
    if (o.format == "gguf-q4_0") qc.sym_scale = SymScale::full_range;  // Q4_0's d = extreme / −8
    if (o.format == "gguf-iq4_nl") qc.codebook = Codebook::iq4_nl;

    const bool to_nibble = o.format == "nibble", to_gguf = o.format.rfind("gguf", 0) == 0;
    const bool gptq_format = o.format == "gptq" || o.format == "gptq-v1";
    std::unique_ptr<io::NibbleFileWriter> nw;
    std::unique_ptr<io::GgufWriter> gw;
    std::unique_ptr<io::SafetensorsWriter> sw;
    std::uint64_t written = 0;
    auto output_bytes = [&]() -> std::uint64_t {
      return nw ? nw->bytes_written() : gw ? gw->data_bytes() : sw->data_bytes();
    };
    if (to_nibble) nw = std::make_unique<io::NibbleFileWriter>(o.out);
    else if (to_gguf) {
      gw = std::make_unique<io::GgufWriter>(o.out);
      gw->set_general("nibble", o.in, o.format == "gguf-q4_0" ? 2u : 25u);
    } else sw = std::make_unique<io::SafetensorsWriter>(o.out);

    std::vector<Row> rows;
    Progress progress(total_weights, in.tensors().size());
    const auto t_all = Clock::now();
    for (std::size_t i = 0; i < in.tensors().size(); ++i) {
      const io::TensorInfo& t = in.tensors()[i];
      Row row;
      row.name = t.name;
      for (auto d : t.shape) row.shape += (row.shape.empty() ? "" : "x") + std::to_string(d);
      row.before = t.end - t.begin;
      row.weights = t.elements();
      progress.begin(i, t.name);
      const auto t0 = Clock::now();
      const std::uint64_t out_before = output_bytes();
      bool done = false;
      // AWQ: this tensor's layer, folded (computed on its first tensor).
      nibble_quant::AwqFoldedLayer* layer = nullptr;
      const std::string prefix_of_layer = o.method == "awq" ? layer_prefix(t.name) : std::string();
      if (!prefix_of_layer.empty() && !fold_groups[prefix_of_layer].empty()) {
        auto it = folded.find(prefix_of_layer);
        if (it == folded.end()) {
          auto quantized = [&](const std::string& name) { return quantize_it[index_of.at(name)]; };
          auto inputs = [&](const std::string& name, std::size_t cols) { return calibration_for(*calib, name, cols); };
          AwqConfig ac;
          ac.quant = qc;
          ac.threads = o.threads;
          it = folded.emplace(prefix_of_layer, nibble_quant::awq_fold_layer(in, fold_groups[prefix_of_layer], ac,
                                                                           quantized, inputs)).first;
        }
        layer = &it->second;
      }
      if (quantize_it[i]) {
        const RowMatrixXf W = in.matrix(t.name);
        const std::size_t C = static_cast<std::size_t>(W.cols());
        // A group longer than the row becomes one group per row (small layers in tiny models).
        QuantConfig qc_t = qc;
        if (!to_gguf && o.group != kPerRow && static_cast<std::size_t>(o.group) > C) {
          qc_t.group_size = kPerRow;
          row.note = "group = row (" + std::to_string(C) + ")";
        }
        std::vector<float> awq_scale;
        std::vector<std::uint32_t> input_order;  // GPTQ act-order with permuted groups
        try {
          Eigen::MatrixXf deq;
          QuantizedMatrix q;
          const bool from_fold = layer && layer->quantized.count(t.name);  // its SQNR is known already
          if (from_fold) {
            q = std::move(layer->quantized.at(t.name));  // Q(W·diag(s)), s folded upstream
          } else if (o.format == "gguf-q4_0" && o.method == "rtn") {
            q = io::quantize_q4_0(W);  // byte-identical to llama.cpp's reference
          } else if (o.format == "gguf-iq4_nl" && o.method == "rtn") {
            q = io::quantize_iq4_nl(W);  // llama.cpp's own least-squares fit
          } else if (o.method == "hqq") {
            detail::require(to_nibble, "hqq stores float zero points; only --format nibble can hold them");
            HqqConfig hc;
            hc.quant = qc_t;
            hc.quant.codebook = Codebook::uint4_asym;
            hc.zero_format = ScaleFormat::f16;
            q = hqq_quantize(W, hc);
          } else if (o.method == "awq") {
            // No foldable producer: nibble files keep s beside the weight; other formats
            // cannot, so only the clip search runs (s ≡ 1).
            AwqConfig ac;
            ac.quant = qc_t;
            ac.threads = o.threads;
            if (to_nibble) {
              AwqResult res = awq_quantize({W}, calibration_for(*calib, t.name, C), ac);
              q = std::move(res.matrices[0]);
              awq_scale = std::vector<float>(res.scales.data(), res.scales.data() + res.scales.size());
            } else {
              row.note += std::string(row.note.empty() ? "" : "; ") + "awq: no foldable producer, clip search only";
              q = awq_clip_quantize(W, calibration_for(*calib, t.name, C), ac);
            }
          } else if (o.method == "gptq") {
            HessianAccumulator acc(C, o.threads);
            acc.add(calibration_for(*calib, t.name, C));
            GptqConfig gc;
            gc.quant = qc_t;
            gc.threads = o.threads;
            gc.act_order = o.act_order;
            gc.permuted_groups = o.act_order && gptq_format;  // only GPTQ checkpoints have a g_idx
            GptqResult res = gptq_quantize(W, acc.hessian(), gc);
            q = std::move(res.matrix);
            input_order = std::move(res.input_order);
          } else {
            q = rtn_parallel(W, qc_t, o.threads);
          }
          // The effective weight in the original input space (AWQ: Q·diag(s)⁻¹), for the SQNR.
          if (!from_fold)
            deq = awq_scale.empty() ? gptq_dequantize(q, input_order)
                                    : awq_dequantize(q, Eigen::Map<const Eigen::VectorXf>(
                                                            awq_scale.data(), static_cast<Eigen::Index>(C)));
          const std::string prefix = ends_with(t.name, ".weight") ? t.name.substr(0, t.name.size() - 7) : t.name;
          if (to_nibble) {
            nw->add(t.name, q);
            if (!awq_scale.empty()) nw->add_raw(t.name + ".awq_scale", io::DType::F32, {C}, awq_scale.data(), 4 * C);
          }
          else if (o.format == "gguf-q4_0") gw->add_q4_0(t.name, q);
          else if (o.format == "gguf-iq4_nl") gw->add_iq4_nl(t.name, q);
          else if (o.format == "gptq") io::write_gptq(*sw, prefix, q, io::GptqFormat::v2, input_order);
          else if (o.format == "gptq-v1") io::write_gptq(*sw, prefix, q, io::GptqFormat::v1, input_order);
          else if (o.format == "awq") io::write_awq(*sw, prefix, q);
          else io::write_bnb(*sw, t.name, q, t.dtype == io::DType::F32 ? "float32" : t.dtype == io::DType::F16 ? "float16" : "bfloat16");
          row.quantized = true;
          row.sqnr = from_fold ? layer->sqnr_db.at(t.name) : compare(W, deq).sqnr_db;
          done = true;
        } catch (const Error& e) {
          // A shape the format cannot hold: keep this tensor in float and say why.
          row.note = e.what();
          if (row.note.rfind("nibble: ", 0) == 0) row.note = row.note.substr(8);
          row.note = "kept in float: " + row.note;
          if (calibrated_method(o) && row.note.find("calibration") != std::string::npos) throw;
        }
      }
      if (!done) {  // copy unchanged, or as AWQ folding changed it (in the tensor's dtype)
        io::ByteView b = in.bytes(t);
        std::vector<std::uint8_t> changed;
        if (layer && layer->replaced.count(t.name)) {
          const std::vector<float>& v = layer->replaced.at(t.name);
          changed = io::encode_floats(v.data(), v.size(), t.dtype, t.name + " (after folding AWQ scales)");
          b = io::ByteView{changed.data(), changed.size()};
          row.note += std::string(row.note.empty() ? "" : "; ") + "awq scales folded in";
        }
        if (to_nibble) {
          if (is_float(t.dtype)) nw->add_raw(t.name, t.dtype, t.shape, b.data, b.size);
          else row.note = "dropped: nibble files hold float tensors only (dtype " + std::string(io::to_string(t.dtype)) + ")";
        } else if (to_gguf) {
          if (is_float(t.dtype) && !t.shape.empty() && t.shape.size() <= 4) {
            std::vector<std::uint64_t> ne(t.shape.rbegin(), t.shape.rend());
            const auto type = t.dtype == io::DType::F32 ? io::GgmlType::F32 : t.dtype == io::DType::F16 ? io::GgmlType::F16 : io::GgmlType::BF16;
            gw->add_tensor(t.name, static_cast<std::uint32_t>(type), ne, b.data, b.size);
          } else {
            row.note = "dropped: GGUF output holds float tensors with 1-4 dims only";
          }
        } else {
          sw->add(t.name, t.dtype, t.shape, b.data, b.size);
        }
      }
      in.release(t);
      if (layer && --fold_pending[prefix_of_layer] == 0) folded.erase(prefix_of_layer);
      row.after = output_bytes() - out_before;
      written += row.after;
      row.bits = row.weights ? 8.0 * static_cast<double>(row.after) / static_cast<double>(row.weights) : 0.0;
      row.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
      char what[160];
      if (row.quantized) std::snprintf(what, sizeof what, "%.3f bits/weight, SQNR %.2f dB, %.2f s", row.bits, row.sqnr, row.seconds);
      else std::snprintf(what, sizeof what, "kept (%s)", row.note.empty() ? "skipped by name or not a 2-D float" : row.note.c_str());
      progress.end(i, t.name, quantize_it[i] ? row.weights : 0, what);
      rows.push_back(std::move(row));
    }
    progress.finish();

    // Format-level metadata and the config a loader needs.
    std::string config;
    if (o.format == "gptq" || o.format == "gptq-v1")
      config = io::gptq_quantize_config(o.group == kPerRow ? -1 : o.group, !o.asym,
                                        o.format == "gptq" ? io::GptqFormat::v2 : io::GptqFormat::v1, o.act_order);
    else if (o.format == "awq") config = io::awq_quantization_config(o.group);
    else if (o.format == "bnb-nf4") config = io::bnb_quantization_config(o.method == "nf4", o.double_quant);
    if (nw) {
      nw->set_metadata("nibble.method", o.method);
      nw->set_metadata("nibble.group_size", o.group == kPerRow ? "row" : std::to_string(o.group));
      nw->set_metadata("nibble.source", o.in);
      if (o.method == "awq")
        nw->set_metadata("nibble.awq_scales", "folded into the norms and v_proj/up_proj rows of llama-style layers; "
                                              "where <name>.awq_scale exists the weight is Q(W*diag(s)): divide inputs by s");
      nw->finish();
    } else if (gw) {
      gw->finish();
    } else {
      sw->set_metadata("format", "pt");
      sw->set_metadata("quantization_config", config);
      sw->finish();
      std::ofstream(o.out + ".quantization_config.json") << config << "\n";
    }

    // Summary table.
    std::printf("\n%-48s %-12s %9s %11s %11s %9s %8s\n", "tensor", "shape", "bits/w", "before", "after", "SQNR dB", "time s");
    std::uint64_t before = 0, after = 0, qweights = 0, qbefore = 0, qafter = 0, skipped = 0;
    for (const auto& r : rows) {
      std::string name = r.name.size() > 48 ? "..." + r.name.substr(r.name.size() - 45) : r.name;
      if (r.quantized)
        std::printf("%-48s %-12s %9.3f %11s %11s %9.2f %8.2f  %s\n", name.c_str(), r.shape.c_str(), r.bits,
                    human_bytes(double(r.before)).c_str(), human_bytes(double(r.after)).c_str(), r.sqnr, r.seconds,
                    r.note.c_str());
      else
        std::printf("%-48s %-12s %9s %11s %11s %9s %8.2f  %s\n", name.c_str(), r.shape.c_str(), "kept",
                    human_bytes(double(r.before)).c_str(), human_bytes(double(r.after)).c_str(), "-", r.seconds,
                    r.note.empty() ? "" : r.note.c_str());
      before += r.before;
      after += r.after;
      if (r.quantized) {
        qweights += r.weights;
        qbefore += r.before;
        qafter += r.after;
      } else {
        ++skipped;
      }
    }
    const double secs = std::chrono::duration<double>(Clock::now() - t_all).count();
    std::printf("%-48s %-12s %9.3f %11s %11s %9s %8.2f\n", "total (quantized tensors)", "",
                qweights ? 8.0 * double(qafter) / double(qweights) : 0.0, human_bytes(double(qbefore)).c_str(),
                human_bytes(double(qafter)).c_str(), "", secs);
    std::printf("%-48s %-12s %9s %11s %11s\n", "total (file data)", "", "", human_bytes(double(before)).c_str(),
                human_bytes(double(after)).c_str());
    std::printf("%zu tensors quantized, %llu kept; wrote %s (%s, method %s)\n", rows.size() - skipped,
                static_cast<unsigned long long>(skipped), o.out.c_str(), o.format.c_str(), o.method.c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "\nnibble-quant: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
