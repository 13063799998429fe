// nibble-quant's model mode: a whole Llama-family model (a GGUF file or a Hugging Face
// directory) in; out, a GGUF model that llama.cpp runs or a quantized Hugging Face
// directory (GPTQ, AutoAWQ, bitsandbytes); the linears rounded by plain RTN or calibrated
// on text (GPTQ, AWQ).
#include "nibble_quant_model.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nibble/io/imatrix.hpp>
#include <nibble/model/gguf_model_from_hf.hpp>
#include <nibble/model/gguf_model_writer.hpp>
#include <nibble/model/hf_quantized_writer.hpp>
#include <nibble/model/load_model.hpp>
#include <nibble/model/quantize_model.hpp>
#include <nibble/quant/weighted_fit.hpp>

#include "process_memory.hpp"

namespace {

using namespace nibble;
using namespace nibble::model;
using Clock = std::chrono::steady_clock;

const char* kHelp = R"(nibble-quant MODEL OUT: quantize a whole model for llama.cpp or Hugging Face.

usage: nibble-quant MODEL OUT.gguf [--format gguf-q4_0|gguf-iq4_nl] [--method M]
                    [--calib TEXT.txt [--calib-tokens N] [--calib-seq N]]
                    [--imatrix FILE] [--embedding q8_0|f16|f32] [--force]
       nibble-quant HF_DIR OUT_DIR --format gptq|gptq-v2|awq|bnb-nf4|bnb-fp4 [--method M]
                    [--group N] [--double-quant] [--calib TEXT.txt ...] [--force]

MODEL is a Llama-family model (architecture llama or qwen2), either
  * a GGUF file, quantized or not: its weights are decoded to fp32 first (requantizing a
    quantized file, as llama-quantize --allow-requantize does). OUT keeps every metadata
    key (tokenizer, chat template, hyper-parameters) and every tensor other than the
    seven linears of each block unchanged; or
  * a Hugging Face directory (LlamaForCausalLM or Qwen2ForCausalLM: config.json,
    safetensors in F32/F16/BF16, tokenizer.json, tokenizer_config.json). OUT gets the
    metadata and tokenizer llama.cpp's convert_hf_to_gguf.py writes, the embedding (and
    an untied lm_head) as --embedding, the norms and biases as F32, and llama's q/k rows
    in llama.cpp's RoPE order (model/gguf_model_from_hf.hpp).
Either way the seven linears of each block are written as Q4_0 or IQ4_NL and OUT is a
GGUF model llama.cpp loads.

With an HF-format --format, MODEL must be a Hugging Face directory and OUT is a new
directory a Hugging Face user loads (model/hf_quantized_writer.hpp): model.safetensors
with every tensor under its own name — the seven linears of each block packed as the
format stores them, the norm gains as quantization left them (AWQ folds into them), the
rest byte for byte —, config.json with a quantization_config, and every other non-weight
file of MODEL (tokenizer, generation config, chat template) copied. nibble-llm and
load_hf_model read it back.

options:
  --format F        gguf-q4_0 (default): llama.cpp Q4_0, 4.5 bits/weight
                    gguf-iq4_nl: llama.cpp IQ4_NL (non-linear table), 4.5 bits/weight
                    gptq:    GPTQ checkpoint (checkpoint_format gptq: AutoGPTQ, transformers,
                             vLLM), int4 symmetric (zero point 8), fp16 scales
                    gptq-v2: the same with GPTQModel's gptq_v2 zero points
                    awq:     AutoAWQ GEMM, uint4 with zero points, fp16 scales
                    bnb-nf4 / bnb-fp4: bitsandbytes 4-bit, fp32 absmax per block
  --group N         HF formats: group size (blocksize for bnb). Default for gptq / awq: 128,
                    or the largest of 64, 32 that divides every linear's in_features (AWQ
                    needs that; GPTQ allows a shorter last group); bnb: 64.
  --double-quant    bnb-nf4 / bnb-fp4: double-quantized absmax (bnb_4bit_use_double_quant)
  --method M        rtn (default): llama.cpp's own rounding (the bytes llama-quantize
                           writes without an importance matrix); for HF formats plain
                           rounding (bnb: the bytes bitsandbytes' quantize_4bit writes)
                    clip:  per block, the scale (sign included, clipping allowed) and codes
                           with least squared error (quant/weighted_fit.hpp, equal weights;
                           gguf formats)
                    gptq:  GPTQ with act-order and the clip search, on calibration text
                    awq:   AWQ scales (folded into the norms and ffn_up rows) + clip search
                    awq+gptq: AWQ's scales, then GPTQ on the scaled weights
  --imatrix FILE    rtn / clip, gguf formats: weight the fit of every block by an importance matrix from
                    llama.cpp's llama-imatrix (imatrix.dat or its GGUF form): the codes and
                    scale with least importance-weighted error (quant/weighted_fit.hpp).
                    Needs no calibration run here; tensors the file lacks are fitted with
                    equal weights.
  --embedding T     Hugging Face input only: token_embd (and output) as q8_0 (default,
                    llama.cpp's Q8_0 rounding), f16 or f32
  --calib FILE      calibration text for gptq / awq / awq+gptq (plain UTF-8 text, e.g.
                    training stories; never the text you evaluate on)
  --calib-tokens N  use at most N calibration tokens (default 65536)
  --calib-seq N     tokens per calibration sequence (default 512); each starts with BOS
                    when the model's tokenizer adds one
  --damp F          GPTQ dampening, a fraction of the Hessian's mean diagonal (default 0.01)
  --threads N       worker threads (default: all cores)
  --force           overwrite OUT if it exists (an output directory is replaced whole)
  -h, --help        this text

Calibration runs block by block, as GPTQ and llm-awq do: the calibration sequences go
through block 0, the inputs of its linears are captured, the block is quantized, and the
outputs of the quantized block (AWQ: of the fp32 block) are block 1's inputs. Memory:
the model in fp32 (4 bytes per weight) plus one block's captured inputs — about
4 x tokens x (3 x hidden + intermediate) bytes (1.1 GB for SmolLM2-135M at 65536 tokens).
Progress is printed per block with the elapsed time and an estimate of what is left.
OUT is written under a temporary name and renamed when complete.
)";

struct Options {
  std::string in, out, format = "gguf-q4_0", method = "rtn", calib, imatrix, embedding;
  long calib_tokens = 65536, calib_seq = 512, group = 0;  // group 0: the format's default
  bool double_quant = false;
  double damp = 0.01;
  int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  bool force = false;
};

[[noreturn]] void usage_error(const std::string& msg) {
  std::fprintf(stderr, "nibble-quant: %s\n(run nibble-quant MODEL OUT.gguf --help for usage)\n", msg.c_str());
  std::exit(2);
}

long parse_long(const std::string& option, const std::string& text, long lo, long hi) {
  char* end = nullptr;
  const long v = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || v < lo || v > hi)
    usage_error(option + " must be a whole number from " + std::to_string(lo) + " to " + std::to_string(hi) +
                ", got '" + text + "'");
  return v;
}

Options parse(int argc, char** argv) {
  Options o;
  std::vector<std::string> positional;
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
    else if (a == "--method") o.method = value();
    else if (a == "--calib") o.calib = value();
    else if (a == "--imatrix") o.imatrix = value();
    else if (a == "--embedding") o.embedding = value();
    else if (a == "--calib-tokens") o.calib_tokens = parse_long(a, value(), 1, 1L << 24);
    else if (a == "--group") o.group = parse_long(a, value(), 8, 1 << 16);
    else if (a == "--double-quant") o.double_quant = true;
    else if (a == "--calib-seq") o.calib_seq = parse_long(a, value(), 16, 1 << 16);
    else if (a == "--damp") {
      const std::string v = value();
      char* end = nullptr;
      o.damp = std::strtod(v.c_str(), &end);
      if (v.empty() || *end != '\0' || !(o.damp >= 0.0 && o.damp <= 10.0)) usage_error("--damp must be from 0 to 10");
    } else if (a == "--threads") o.threads = static_cast<int>(parse_long(a, value(), 1, 1024));
    else if (a == "--force") o.force = true;
    else if (!a.empty() && a[0] == '-') usage_error("unknown option " + a);
    else positional.push_back(a);
  }
  if (positional.size() != 2) usage_error("expected MODEL (a GGUF file or a Hugging Face directory) and OUT");
  o.in = positional[0];
  o.out = positional[1];
  static const char* formats[] = {"gguf-q4_0", "gguf-iq4_nl", "gptq", "gptq-v2", "awq", "bnb-nf4", "bnb-fp4"};
  if (std::find(std::begin(formats), std::end(formats), o.format) == std::end(formats))
    usage_error("a model is written as --format gguf-q4_0, gguf-iq4_nl, gptq, gptq-v2, awq, bnb-nf4 or bnb-fp4, not '" +
                o.format + "'");
  const bool gguf = o.format.rfind("gguf", 0) == 0, bnb = o.format.rfind("bnb", 0) == 0;
  if (gguf && o.group) usage_error("--group is for the HF formats; GGUF blocks hold 32 weights");
  if (o.double_quant && !bnb) usage_error("--double-quant is for bnb-nf4 / bnb-fp4");
  if (!gguf && (o.method == "clip" || !o.imatrix.empty()))
    usage_error("--method clip and --imatrix fit GGUF blocks: use them with gguf-q4_0 / gguf-iq4_nl");
  if (!gguf && !o.embedding.empty()) usage_error("--embedding is for GGUF output (HF formats copy the embedding)");
  static const char* methods[] = {"rtn", "clip", "gptq", "awq", "awq+gptq"};
  if (std::find(std::begin(methods), std::end(methods), o.method) == std::end(methods))
    usage_error("unknown --method '" + o.method + "' (rtn, clip, gptq, awq, awq+gptq)");
  const bool calibrated = o.method == "gptq" || o.method == "awq" || o.method == "awq+gptq";
  if (calibrated && o.calib.empty()) usage_error("--method " + o.method + " needs calibration text: --calib FILE.txt");
  if (!calibrated && !o.calib.empty()) usage_error("--calib is used by --method gptq, awq and awq+gptq only");
  if (!o.imatrix.empty() && o.method != "rtn" && o.method != "clip")
    usage_error("--imatrix weights the rtn / clip fit: use it with --method rtn or clip");
  if (!o.embedding.empty() && o.embedding != "q8_0" && o.embedding != "f16" && o.embedding != "f32")
    usage_error("--embedding must be q8_0, f16 or f32, not '" + o.embedding + "'");
  return o;
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

bool same_file(const std::string& a, const std::string& b) {
  struct stat sa {}, sb {};
  return ::stat(a.c_str(), &sa) == 0 && ::stat(b.c_str(), &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  detail::require(in.good(), "cannot open calibration text '", path, "'");
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// Consecutive windows of `seq` tokens of the text, at most max_tokens in all; each
// window's first token becomes BOS when the tokenizer adds one (llama-imatrix and
// llama-perplexity do the same with their chunks).
std::vector<std::vector<int>> calibration_sequences(const LoadedModel& m, const Options& o) {
  const std::string text = read_text(o.calib);
  const std::vector<int> tokens = m.tokenizer.encode(text, false, false);
  const std::size_t seq = static_cast<std::size_t>(o.calib_seq);
  detail::require(tokens.size() >= seq, "calibration text '", o.calib, "' has ", tokens.size(),
                  " tokens, fewer than one sequence of ", seq, " (--calib-seq)");
  const std::size_t count = std::min(tokens.size() / seq, std::max<std::size_t>(1, static_cast<std::size_t>(o.calib_tokens) / seq));
  std::vector<std::vector<int>> out(count);
  for (std::size_t s = 0; s < count; ++s) {
    out[s].assign(tokens.begin() + static_cast<std::ptrdiff_t>(s * seq),
                  tokens.begin() + static_cast<std::ptrdiff_t>((s + 1) * seq));
    if (m.tokenizer.adds_bos()) out[s][0] = m.tokenizer.bos();
  }
  return out;
}

// The storage of a GGUF block type: groups of 32 with fp16 scales; Q4_0 is int4 with
// llama.cpp's scale rule (signed extreme / −8), IQ4_NL its non-linear table.
QuantConfig gguf_storage(io::GgmlType type) {
  QuantConfig c;
  c.group_size = 32;
  c.scale_format = ScaleFormat::f16;
  if (type == io::GgmlType::Q4_0) {
    c.codebook = Codebook::int4_sym;
    c.sym_scale = SymScale::full_range;
  } else {
    c.codebook = Codebook::iq4_nl;
  }
  return c;
}

// The storage of an HF checkpoint format in groups of `group`: GPTQ int4 symmetric (zero
// point 8) with fp16 scales, AWQ uint4 with zero points, bitsandbytes NF4 / FP4 with fp32
// (or double-quantized) absmax and bitsandbytes' own code choice for plain rounding.
QuantConfig hf_storage(const Options& o, int group) {
  if (o.format == "bnb-nf4" || o.format == "bnb-fp4") return io::bnb_quant_config(o.format == "bnb-nf4", group, o.double_quant);
  QuantConfig c;
  c.group_size = group;
  c.scale_format = ScaleFormat::f16;
  c.codebook = o.format == "awq" ? Codebook::uint4_asym : Codebook::int4_sym;
  c.sym_scale = SymScale::full_range;
  return c;
}

// --group, or the format's default for this model (see --help).
int hf_group(const Options& o, const LlamaConfig& c) {
  const int ins[] = {c.dim, c.q_dim(), c.hidden_dim};  // in_features of the linears
  auto divides = [&](long g) { return std::all_of(std::begin(ins), std::end(ins), [&](int n) { return n % g == 0; }); };
  const bool bnb = o.format.rfind("bnb", 0) == 0;
  long g = o.group;
  if (g == 0) {
    g = bnb ? 64 : 128;
    if (o.format == "gptq" || o.format == "gptq-v2" || o.format == "awq")
      for (long candidate : {128L, 64L, 32L})
        if (divides(candidate)) {
          g = candidate;
          break;
        }
    if (g != 128 && !bnb)
      std::fprintf(stderr, "nibble-quant: group size %ld (128 does not divide every in_features)\n", g);
  }
  // What the format can store, checked before any calibration runs.
  detail::require(!bnb || (g >= 32 && g <= 4096 && (g & (g - 1)) == 0), "bitsandbytes blocksizes are powers of two ",
                  "from 32 to 4096, not ", g);
  detail::require(o.format.rfind("gptq", 0) == 0 || divides(g), "--group ", g, " must divide every linear's in_features (",
                  c.dim, ", ", c.q_dim(), ", ", c.hidden_dim, "): ", o.format, " stores whole groups");
  if (!bnb)
    detail::require(c.dim % 8 == 0 && c.q_dim() % 8 == 0 && c.kv_dim() % 8 == 0 && c.hidden_dim % 8 == 0, o.format,
                    " packs 8 values per int32: every linear's in and out features must be multiples of 8");
  return static_cast<int>(g);
}

HfCheckpointFormat hf_format(const std::string& f) {
  if (f == "gptq") return HfCheckpointFormat::gptq_v1;
  if (f == "gptq-v2") return HfCheckpointFormat::gptq_v2;
  if (f == "awq") return HfCheckpointFormat::awq;
  return HfCheckpointFormat::bnb;
}

Method method_for(const std::string& name) {
  if (name == "gptq") return Method::gptq_int4_act_clip;
  if (name == "awq") return Method::awq;
  return Method::awq_gptq_clip_dq;  // awq+gptq (the scale format comes from the storage)
}

int run(const Options& o) {
  const auto t0 = Clock::now();
  auto seconds = [&] { return std::chrono::duration<double>(Clock::now() - t0).count(); };
  detail::require(exists(o.in), "'", o.in, "' does not exist");
  const bool hf = hf_detail::is_directory(o.in);
  detail::require(hf || has_gguf_magic(o.in), "'", o.in, "' is neither a GGUF file nor a directory");
  detail::require(!same_file(o.in, o.out), "OUT '", o.out, "' is the input ", hf ? "directory" : "file");
  detail::require(hf || o.embedding.empty(), "--embedding is for Hugging Face input; a GGUF input's embedding is ",
                  "copied as it is");
  detail::require(o.force || !exists(o.out), "'", o.out, "' exists: pass --force to overwrite it");
  const bool gguf = o.format.rfind("gguf", 0) == 0;
  detail::require(gguf || hf, "--format ", o.format, " writes a Hugging Face directory and needs one as MODEL; '", o.in,
                  "' is a GGUF file");
  const io::GgmlType type = o.format == "gguf-q4_0" ? io::GgmlType::Q4_0 : io::GgmlType::IQ4_NL;

  LoadOptions lo;
  lo.dequantize = true;  // the fp32 model the methods start from
  const LoadedModel m = load_model(o.in, lo);
  const LlamaConfig& c = m.weights.config;
  std::fprintf(stderr, "nibble-quant: %s: %d blocks, dim %d, ffn %d, %d heads (%d kv), vocab %d; loaded in %.1f s\n",
               o.in.c_str(), c.n_layers, c.dim, c.hidden_dim, c.n_heads, c.n_kv_heads, c.vocab_size, seconds());

  detail::require(gguf || hf_quantization(hf_detail::read_text(hf_detail::join(o.in, "config.json"), "config.json")) ==
                              HfQuantization::none,
                  "'", o.in, "' is already a quantized checkpoint: its packed tensors cannot be carried into ", o.format,
                  " (write a GGUF from it, or start from the F32/F16/BF16 model)");
  const QuantConfig storage = gguf ? gguf_storage(type) : hf_storage(o, hf_group(o, c));
  LlamaWeights out = m.weights;
  std::size_t calib_tokens = 0;
  if (o.method == "clip" || !o.imatrix.empty()) {
    // The (importance-)weighted fit, block by block; threads split each matrix's rows.
    const io::ImportanceMatrix imatrix = o.imatrix.empty() ? io::ImportanceMatrix() : io::load_imatrix(o.imatrix);
    WeightedFitOptions fit;
    fit.threads = o.threads;
    std::size_t weighted = 0, plain = 0;
    for (int l = 0; l < c.n_layers; ++l)
      for (const GgufLayerLinear& t : gguf_layer_linears()) {
        LlamaLayer& L = out.layers[static_cast<std::size_t>(l)];
        const RowMatrixXf& W = (L.*t.matrix).dense();
        const std::string name = gguf_block_prefix(l) + t.name + ".weight";
        const bool has = imatrix.contains(name);
        (has ? weighted : plain) += 1;
        const std::vector<float> none;
        L.*t.matrix = StoredMatrix(quantize_weighted(
            W, type == io::GgmlType::Q4_0 ? Codebook::int4_sym : Codebook::iq4_nl,
            has ? imatrix.for_weight(name, static_cast<std::size_t>(W.cols())) : none, fit));
      }
    if (!o.imatrix.empty())
      std::fprintf(stderr, "nibble-quant: imatrix '%s' (%u chunks): %zu matrices weighted, %zu without an entry\n",
                   o.imatrix.c_str(), imatrix.chunks, weighted, plain);
  } else if (o.method == "rtn") {
    // Matrix by matrix: llama.cpp's reference rounding for GGUF, plain rounding otherwise.
    for (auto& L : out.layers)
      for (const GgufLayerLinear& t : gguf_layer_linears()) {
        const RowMatrixXf& W = (L.*t.matrix).dense();
        L.*t.matrix = StoredMatrix(!gguf                       ? quantize(W, storage)
                                   : type == io::GgmlType::Q4_0 ? io::quantize_q4_0(W)
                                                                : io::quantize_iq4_nl(W));
      }
  } else {
    std::vector<std::vector<int>> calib;
    if (!o.calib.empty()) {
      calib = calibration_sequences(m, o);
      calib_tokens = calib.size() * calib.front().size();
      std::fprintf(stderr, "nibble-quant: calibration: %zu sequences of %zu tokens from '%s'\n", calib.size(),
                   calib.front().size(), o.calib.c_str());
    }
    ModelQuantOptions q;
    q.method = method_for(o.method);
    q.storage = storage;
    q.group_size = storage.group_size;
    q.int_scale_format = storage.scale_format;
    q.threads = o.threads;
    q.kernel_threads = 1;
    // Quantized blocks propagate the calibration data as fp32 products of their decoded
    // weights (Eigen's GEMM): the same values as the kernels, and the fastest at 512 rows.
    q.backend = LinearBackend::dequantized;
    q.gptq_damp = o.damp;
    const double start = seconds();
    q.on_block = [&](int done, int total) {
      const double spent = seconds() - start;
      std::fprintf(stderr, "nibble-quant: block %d/%d  %.1f s, about %.0f s left\n", done, total, seconds(),
                   spent / done * (total - done));
    };
    out = with_quantized_linears(std::move(out), quantize_model(m.weights, q, calib));
  }

  std::fprintf(stderr, "nibble-quant: writing %s\n", o.out.c_str());
  if (!gguf) {
    HfWriteOptions wo;
    wo.replace_existing = o.force;
    write_quantized_hf(o.in, out, hf_format(o.format), o.out, wo);
  } else if (hf) {
    HfGgufOptions ho;
    ho.embedding_type = o.embedding == "f16" ? io::GgmlType::F16
                        : o.embedding == "f32" ? io::GgmlType::F32
                                               : io::GgmlType::Q8_0;
    write_gguf_from_hf(o.in, out, type, o.out, ho);
  } else {
    write_quantized_gguf(io::GgufReader::open(o.in), out, type, o.out);
  }
  struct stat st {};
  ::stat(gguf ? o.out.c_str() : hf_detail::join(o.out, "model.safetensors").c_str(), &st);
  std::printf("%s -> %s: %s%s %s%s, %.1f MiB, %.1f s, peak RSS %.0f MiB\n", o.in.c_str(), o.out.c_str(), o.method.c_str(),
              o.imatrix.empty() ? "" : " + imatrix",
              o.format.c_str(),
              calib_tokens ? (" on " + std::to_string(calib_tokens) + " calibration tokens").c_str() : "",
              static_cast<double>(st.st_size) / (1 << 20), seconds(), nibble_tools::peak_rss_mib());
  return 0;
}

}  // namespace

bool is_model_input(const std::string& path) { return has_gguf_magic(path) || hf_detail::is_directory(path); }

int quantize_model_file_main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  try {
    return run(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "nibble-quant: error: %s\n", e.what());
    return 1;
  }
}
