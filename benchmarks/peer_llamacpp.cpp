// llama.cpp's matrix multiplication timed the way token generation runs it: weights in
// the buffer llama.cpp picks on this CPU, float activations quantized inside the product
// (to Q8_0 / Q8_K), and several products per graph so that thread hand-off between
// nodes is paid as in a real graph; the time reported is per product. See
// peer_llamacpp.hpp. Only ggml's public API is used.
#include "peer_llamacpp.hpp"

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <vector>

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "ggml.h"

namespace peer {
namespace {

ggml_backend_dev_t cpu_device() {
  static ggml_backend_dev_t dev = [] {
    ggml_backend_dev_t d = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    if (!d) throw std::runtime_error("llama.cpp: no CPU device registered");
    return d;
  }();
  return dev;
}

ggml_backend_t cpu_backend() {
  static ggml_backend_t backend = ggml_backend_dev_init(cpu_device(), nullptr);
  return backend;
}

// The CPU device's extra buffer types in llama.cpp's order of preference, then plain CPU.
std::vector<ggml_backend_buffer_type_t> candidate_buffers() {
  std::vector<ggml_backend_buffer_type_t> out;
  ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(cpu_device());
  auto get_extra = reinterpret_cast<ggml_backend_dev_get_extra_bufts_t>(
      ggml_backend_reg_get_proc_address(reg, "ggml_backend_dev_get_extra_bufts"));
  if (get_extra)
    for (ggml_backend_buffer_type_t* p = get_extra(cpu_device()); p && *p; ++p) out.push_back(*p);
  out.push_back(ggml_backend_dev_buffer_type(cpu_device()));
  return out;
}

struct ContextDeleter {
  void operator()(ggml_context* c) const { ggml_free(c); }
};
struct BufferDeleter {
  void operator()(ggml_backend_buffer* b) const { ggml_backend_buffer_free(b); }
};
using Context = std::unique_ptr<ggml_context, ContextDeleter>;
using Buffer = std::unique_ptr<ggml_backend_buffer, BufferDeleter>;

Context new_context(std::size_t tensors, std::size_t graph_size) {
  ggml_init_params p{};
  p.mem_size = ggml_tensor_overhead() * tensors + (graph_size ? ggml_graph_overhead_custom(graph_size, false) : 0);
  p.no_alloc = true;
  Context c(ggml_init(p));
  if (!c) throw std::runtime_error("llama.cpp: ggml_init failed");
  return c;
}

// The buffer llama.cpp would put this weight in: the first candidate whose device
// accepts a product with the weight there (as llama.cpp's own weight placement asks).
ggml_backend_buffer_type_t pick_buffer(ggml_type type, std::size_t rows, std::size_t cols, std::size_t batch) {
  for (ggml_backend_buffer_type_t buft : candidate_buffers()) {
    Context ctx = new_context(3, 0);
    ggml_tensor* w = ggml_new_tensor_2d(ctx.get(), type, static_cast<int64_t>(cols), static_cast<int64_t>(rows));
    ggml_tensor* x = ggml_new_tensor_2d(ctx.get(), GGML_TYPE_F32, static_cast<int64_t>(cols), static_cast<int64_t>(batch));
    ggml_tensor* y = ggml_mul_mat(ctx.get(), w, x);
    Buffer probe(ggml_backend_buft_alloc_buffer(buft, 0));
    w->buffer = probe.get();
    const bool ok = ggml_backend_dev_supports_op(cpu_device(), y);
    w->buffer = nullptr;
    if (ok) return buft;
  }
  throw std::runtime_error("llama.cpp: no buffer type takes this product");
}

std::uint64_t next_random(std::uint64_t& s) {
  std::uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

float random_float(std::uint64_t& s) {  // uniform in [-1, 1)
  return static_cast<float>(static_cast<double>(next_random(s) >> 11) * (2.0 / 9007199254740992.0) - 1.0);
}

// Random blocks of a 4-bit type, as nibble's side uses random codes: every code and
// sub-block scale byte random, the fp16 super-scales small and positive. Quantizing
// random floats would give the same kind of bytes, but IQ4_NL's search takes ~50 s on
// 16384² here. Layouts (ggml-common.h): Q4_0 and IQ4_NL blocks are {fp16 d; 16 bytes of
// codes} per 32 weights; Q4_K blocks are {fp16 d; fp16 dmin; 12 bytes of 6-bit scales
// and mins; 128 bytes of codes} per 256.
std::vector<std::uint8_t> random_weights(ggml_type type, std::size_t rows, std::size_t cols) {
  const std::size_t block_bytes = ggml_type_size(type);
  const bool k_quant = type == GGML_TYPE_Q4_K;
  if (block_bytes != (k_quant ? 144u : 18u)) throw std::runtime_error("llama.cpp: unexpected block size");
  std::vector<std::uint8_t> q(rows * ggml_row_size(type, static_cast<int64_t>(cols)));
  std::uint64_t seed = 11;
  for (std::size_t i = 0; i + 8 <= q.size(); i += 8) {
    const std::uint64_t v = next_random(seed);
    std::memcpy(q.data() + i, &v, 8);
  }
  for (std::size_t b = 0; b < q.size(); b += block_bytes)
    for (int h = 0; h < (k_quant ? 2 : 1); ++h) {
      const float scale = (k_quant ? 0.001f : 0.01f) * (1.0f + random_float(seed) * 0.5f);
      const ggml_fp16_t half = ggml_fp32_to_fp16(scale);
      std::memcpy(q.data() + b + 2 * h, &half, 2);
    }
  return q;
}

// One configuration's weights, activations and graph; one alive at a time.
struct Setup {
  std::string key;
  Context weights_ctx, graph_ctx;
  Buffer weights, activations;
  ggml_cgraph* graph = nullptr;
  std::vector<ggml_tensor*> outputs;
};
Setup& setup_slot() {
  static Setup s;
  return s;
}

// y = W x in double from llama.cpp's dequantization of the bytes it was given, for the
// batch columns in `cols_to_check`; compared with every product node's output.
void check_against_reference(ggml_type type, const std::vector<std::uint8_t>& q, std::size_t rows, std::size_t cols,
                             std::size_t batch, const std::vector<float>& x, const Setup& s) {
  const std::size_t row_bytes = ggml_row_size(type, static_cast<int64_t>(cols));
  const auto to_float = ggml_get_type_traits(type)->to_float;
  std::vector<std::size_t> check_cols = {0};
  if (batch > 1) check_cols.push_back(batch - 1);
  std::vector<double> ref(rows * check_cols.size());
  std::vector<float> w(cols);
  for (std::size_t r = 0; r < rows; ++r) {
    to_float(q.data() + r * row_bytes, w.data(), static_cast<int64_t>(cols));
    for (std::size_t c = 0; c < check_cols.size(); ++c) {
      const float* xc = x.data() + check_cols[c] * cols;
      double acc = 0;
      for (std::size_t k = 0; k < cols; ++k) acc += static_cast<double>(w[k]) * xc[k];
      ref[c * rows + r] = acc;
    }
  }
  std::vector<float> y(rows * batch);
  for (ggml_tensor* out : s.outputs) {
    ggml_backend_tensor_get(out, y.data(), 0, y.size() * sizeof(float));
    for (std::size_t c = 0; c < check_cols.size(); ++c) {
      double max_ref = 0, max_err = 0;
      for (std::size_t r = 0; r < rows; ++r) {
        const double want = ref[c * rows + r], got = y[check_cols[c] * rows + r];
        max_ref = std::max(max_ref, std::fabs(want));
        max_err = std::max(max_err, std::isfinite(got) ? std::fabs(got - want) : INFINITY);
      }
      // Activations are rounded to 8 bits inside the product, which costs 0.3-0.5% of
      // the largest output on these shapes; a wrong kernel or layout is off by its size.
      if (!(max_err <= 0.03 * max_ref))
        throw std::runtime_error("llama.cpp result differs from the double reference: max error " +
                                 std::to_string(max_err) + " vs max |y| " + std::to_string(max_ref));
    }
  }
}

void build(Setup& s, ggml_type type, ggml_backend_buffer_type_t buft, std::size_t rows, std::size_t cols,
           std::size_t batch, bool cold, std::size_t cold_bytes) {
  const std::vector<std::uint8_t> q = random_weights(type, rows, cols);
  const std::size_t copies = cold ? std::max<std::size_t>(1, (cold_bytes + q.size() - 1) / q.size()) : 1;
  // Hot: the same weight several times in one graph; cold: each copy once.
  const std::size_t nodes = cold ? copies : 8;
  s.weights_ctx = new_context(copies, 0);
  std::vector<ggml_tensor*> w(copies);
  for (auto& t : w) t = ggml_new_tensor_2d(s.weights_ctx.get(), type, static_cast<int64_t>(cols), static_cast<int64_t>(rows));
  s.weights.reset(ggml_backend_alloc_ctx_tensors_from_buft(s.weights_ctx.get(), buft));
  if (!s.weights) throw std::runtime_error("llama.cpp: cannot allocate the weights");
  for (ggml_tensor* t : w) ggml_backend_tensor_set(t, q.data(), 0, q.size());  // repacks in repacking buffers

  s.graph_ctx = new_context(nodes + 1, nodes + 1);
  ggml_tensor* x = ggml_new_tensor_2d(s.graph_ctx.get(), GGML_TYPE_F32, static_cast<int64_t>(cols), static_cast<int64_t>(batch));
  s.graph = ggml_new_graph_custom(s.graph_ctx.get(), nodes + 1, false);
  for (std::size_t i = 0; i < nodes; ++i) {
    s.outputs.push_back(ggml_mul_mat(s.graph_ctx.get(), w[i % copies], x));
    ggml_build_forward_expand(s.graph, s.outputs.back());
  }
  s.activations.reset(ggml_backend_alloc_ctx_tensors(s.graph_ctx.get(), cpu_backend()));
  if (!s.activations) throw std::runtime_error("llama.cpp: cannot allocate the activations");
  std::vector<float> xv(cols * batch);
  std::uint64_t seed = 2;
  for (float& v : xv) v = random_float(seed);
  ggml_backend_tensor_set(x, xv.data(), 0, xv.size() * sizeof(float));
  if (ggml_backend_graph_compute(cpu_backend(), s.graph) != GGML_STATUS_SUCCESS)
    throw std::runtime_error("llama.cpp: graph compute failed");
  check_against_reference(type, q, rows, cols, batch, xv, s);
}

void bench(benchmark::State& st, ggml_type type, ggml_backend_buffer_type_t buft, std::size_t rows, std::size_t cols,
           std::size_t batch, int threads, bool cold, std::size_t cold_bytes) {
  Setup& s = setup_slot();
  const std::string key = std::string(ggml_type_name(type)) + ggml_backend_buft_name(buft) + std::to_string(rows) + "x" +
                          std::to_string(cols) + "b" + std::to_string(batch) + (cold ? "cold" : "hot");
  try {
    if (s.key != key) {
      s = Setup();
      build(s, type, buft, rows, cols, batch, cold, cold_bytes);
      s.key = key;
    }
  } catch (const std::exception& e) {
    s = Setup();
    st.SkipWithError(e.what());
    return;
  }
  ggml_backend_cpu_set_n_threads(cpu_backend(), threads);
  const double nodes = static_cast<double>(s.outputs.size());
  for (auto _ : st) {
    const auto t0 = std::chrono::steady_clock::now();
    ggml_backend_graph_compute(cpu_backend(), s.graph);
    const std::chrono::duration<double> dt = std::chrono::steady_clock::now() - t0;
    st.SetIterationTime(dt.count() / nodes);
  }
  const double bytes = static_cast<double>(ggml_row_size(type, static_cast<int64_t>(cols)) * rows);
  st.SetBytesProcessed(static_cast<std::int64_t>(bytes * static_cast<double>(st.iterations())));
  st.counters["weight_bytes"] = bytes;
  st.counters["GFLOPs"] = benchmark::Counter(2.0 * rows * cols * batch * static_cast<double>(st.iterations()) / 1e9,
                                             benchmark::Counter::kIsRate);
}

}  // namespace

void register_llamacpp(std::size_t rows, std::size_t cols, std::size_t batch, int threads, bool cold,
                       std::size_t cold_bytes) {
  for (ggml_type type : {GGML_TYPE_Q4_0, GGML_TYPE_IQ4_NL, GGML_TYPE_Q4_K}) {
    if (cols % static_cast<std::size_t>(ggml_blck_size(type)) != 0) continue;  // Q4_K needs rows of 256k
    ggml_backend_buffer_type_t buft = pick_buffer(type, rows, cols, batch);
    const std::string name = std::string("llamacpp/") + ggml_type_name(type) + "/" + ggml_backend_buft_name(buft) + "/" +
                             std::to_string(rows) + "x" + std::to_string(cols) + "/b" + std::to_string(batch) + "/t" +
                             std::to_string(threads) + "/" + (cold ? "cold" : "hot");
    benchmark::RegisterBenchmark(name.c_str(),
                                 [=](benchmark::State& st) { bench(st, type, buft, rows, cols, batch, threads, cold, cold_bytes); })
        ->UseManualTime()
        ->Unit(benchmark::kMicrosecond);
  }
}

std::string llamacpp_description() {
  std::string s = std::string("llama.cpp (ggml ") + ggml_version() + ", commit " + ggml_commit() + "), buffers:";
  for (ggml_backend_buffer_type_t buft : candidate_buffers()) s += std::string(" ") + ggml_backend_buft_name(buft);
  return s;
}

}  // namespace peer
