// GEMV / small-batch GEMM from packed 4-bit weights against baselines in the same
// binary: fp32 Eigen GEMV/GEMM, an int8 per-row-scaled AVX2 GEMV, dequantize-then-
// fp32-GEMV, and a streaming read of the same working set (the memory roofline).
// nibble's 8-bit form (Int8Matrix, GGUF Q8_0: 8.5 bits per weight) runs as format
// "q8_0" on the same shapes, and on SmolLM2-135M's tied output projection (49152 × 576).
//
// This TU is compiled WITHOUT -m flags: nibble's kernels pick their ISA at run time.
// The baselines live in gemv_baselines.cpp, compiled with -O3 -march=native.
//
// Regimes: hot = the same matrix every call (L3 for 4096², DRAM for the largest);
// cold = cycle through enough copies (>= 512 MiB in total) that weights come from DRAM.
// Counters: bytes_per_second = weight bytes read (scales and zeros included), GFLOPs = 2·rows·cols·batch.
// Built with a llama.cpp tree (benchmarks/compare --peer llama.cpp), llama.cpp's own
// products run right after nibble's on the same configurations (peer_llamacpp.hpp).
//
//   gemv_bench [--quick] [google benchmark flags]
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nibble/nibble.hpp>

#include "gemv_baselines.hpp"
#ifdef NIBBLE_PEER_LLAMA_CPP
#include "peer_llamacpp.hpp"
#endif

namespace {

constexpr std::size_t kColdBytes = std::size_t{512} << 20;

std::uint64_t splitmix(std::uint64_t& s) {
  std::uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

void fill_random_bytes(std::uint8_t* p, std::size_t n, std::uint64_t seed) {
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const std::uint64_t v = splitmix(seed);
    std::memcpy(p + i, &v, 8);
  }
  for (; i < n; ++i) p[i] = static_cast<std::uint8_t>(splitmix(seed));
}

float random_float(std::uint64_t& s) {  // uniform in [-1, 1)
  return static_cast<float>(static_cast<double>(splitmix(s) >> 11) * (2.0 / 9007199254740992.0) - 1.0);
}

struct Format {
  nibble::Codebook codebook;
  nibble::ScaleFormat scales;
  std::size_t group_size;
  std::string name() const {
    return std::string(nibble::to_string(codebook)) + "_" + nibble::to_string(scales) + "_g" +
           std::to_string(group_size);
  }
};

nibble::QuantizedMatrix random_quantized(std::size_t rows, std::size_t cols, std::size_t gs, Format f,
                                         std::uint64_t seed) {
  std::vector<std::uint8_t> codes(rows * nibble::packed_size(cols));
  fill_random_bytes(codes.data(), codes.size(), seed);
  const std::size_t groups = rows * ((cols + gs - 1) / gs);
  std::vector<float> s(groups);
  for (auto& v : s) v = 0.01f + 0.01f * (random_float(seed) + 1.0f);
  nibble::ZeroPoints zeros;
  if (f.codebook == nibble::Codebook::uint4_asym) {
    std::vector<std::uint8_t> z(groups);
    for (auto& v : z) v = static_cast<std::uint8_t>(splitmix(seed) & 15);
    zeros = nibble::ZeroPoints::uint4(z);
  }
  return nibble::QuantizedMatrix(rows, cols, gs, f.codebook, std::move(codes),
                                 nibble::ScaleArray::encode(s, f.scales), std::move(zeros));
}

std::size_t copies_for(std::size_t bytes, bool cold) {
  if (!cold) return 1;
  return std::max<std::size_t>(1, (kColdBytes + bytes - 1) / bytes);
}

// One data set alive at a time keeps memory bounded (fp32 16384² alone is 1 GiB).
struct DataSet {
  std::string key;
  std::vector<std::unique_ptr<nibble::PackedMatrix>> packed;
  std::vector<std::unique_ptr<nibble::Int8Matrix>> q8;
  std::vector<std::vector<float>> f32;
  std::vector<std::vector<std::int8_t>> i8;
  std::vector<float> row_scale;
  std::vector<std::uint8_t> raw;  // stream buffer / int4 codes for dequant
  std::vector<float> raw_scales, scratch;
};
DataSet& dataset(const std::string& key) {
  static DataSet d;
  if (d.key != key) {
    d = DataSet();
    d.key = key;
  }
  return d;
}

// Every baseline and the streaming read get the same page size as nibble's weights
// (core/weight_arena.hpp), so the ceiling stays honest.
using nibble::detail::huge_page_vector;

std::vector<float> random_vector(std::size_t n, std::uint64_t seed) {
  std::vector<float> v = huge_page_vector<float>(n);
  for (auto& x : v) x = random_float(seed);
  return v;
}

void split_rows(int threads, std::size_t rows, const std::function<void(std::size_t, std::size_t)>& f) {
  const std::size_t n = static_cast<std::size_t>(threads);
  const std::function<void(std::size_t)> task = [&](std::size_t t) {
    const std::size_t r0 = rows * t / n / 8 * 8, r1 = t + 1 == n ? rows : rows * (t + 1) / n / 8 * 8;
    f(r0, r1);
  };
  nibble::detail::ThreadPool::instance().run(n, task);
}

void set_counters(benchmark::State& st, std::size_t bytes, std::size_t rows, std::size_t cols, std::size_t batch) {
  const auto iters = static_cast<double>(st.iterations());
  st.SetBytesProcessed(static_cast<std::int64_t>(bytes) * st.iterations());
  st.counters["GFLOPs"] = benchmark::Counter(2.0 * rows * cols * batch * iters / 1e9, benchmark::Counter::kIsRate);
  st.counters["weight_bytes"] = static_cast<double>(bytes);
}

std::string regime(bool cold) { return cold ? "cold" : "hot"; }
std::string shape_name(std::size_t rows, std::size_t cols) { return std::to_string(rows) + "x" + std::to_string(cols); }

void bench_nibble(benchmark::State& st, std::size_t rows, std::size_t cols, std::size_t batch, Format f,
                  nibble::ActivationMode mode, int threads, bool cold) {
  const std::string key = "nibble/" + f.name() + shape_name(rows, cols) + regime(cold);
  DataSet& d = dataset(key);
  if (d.packed.empty()) {
    const nibble::QuantizedMatrix q = random_quantized(rows, cols, f.group_size, f, 1);
    const std::size_t n = copies_for(q.storage_bytes(), cold);
    for (std::size_t i = 0; i < n; ++i) d.packed.push_back(std::make_unique<nibble::PackedMatrix>(q));
  }
  const auto X = random_vector(batch * cols, 2);
  std::vector<float> Y(batch * rows);
  const nibble::GemvOptions opt{mode, threads};
  std::size_t i = 0;
  for (auto _ : st) {
    nibble::gemm(*d.packed[i], X.data(), batch, Y.data(), opt);
    benchmark::DoNotOptimize(Y.data());
    if (++i == d.packed.size()) i = 0;
  }
  set_counters(st, d.packed[0]->weight_bytes(), rows, cols, batch);
}

nibble::Int8Matrix random_q8_0(std::size_t rows, std::size_t cols, std::uint64_t seed) {
  std::vector<std::int8_t> codes(rows * cols);
  fill_random_bytes(reinterpret_cast<std::uint8_t*>(codes.data()), codes.size(), seed);
  std::vector<std::uint16_t> scales(rows * cols / nibble::kQ8Block);
  for (auto& v : scales) v = nibble::float_to_half(0.001f + 0.001f * (random_float(seed) + 1.0f));
  return nibble::Int8Matrix(rows, cols, std::move(codes), std::move(scales));
}

// The 8-bit form; weight bytes = codes + fp16 scales, the GGUF Q8_0 tensor size. In the
// layout the model would use for this mode (nibble::preferred_int8_layout in fast mode,
// row_major in exact mode) unless one is given.
void bench_q8_0(benchmark::State& st, std::size_t rows, std::size_t cols, std::size_t batch,
                nibble::ActivationMode mode, int threads, bool cold, const nibble::Int8Layout* layout = nullptr) {
  const nibble::Int8Layout l =
      layout ? *layout : mode == nibble::ActivationMode::fast ? nibble::preferred_int8_layout() : nibble::Int8Layout::row_major;
  DataSet& d = dataset("nibble/q8_0/" + std::string(nibble::to_string(l)) + "/" + shape_name(rows, cols) + regime(cold));
  if (d.q8.empty()) {
    // Each copy made as the model makes its Q8_0 matrices: from the GGUF bytes (on huge
    // pages), reordered in place.
    const nibble::Int8Matrix q = random_q8_0(rows, cols, 1);
    const std::vector<std::uint8_t> blocks = q.to_q8_0_blocks();
    for (std::size_t i = 0, n = copies_for(q.storage_bytes(), cold); i < n; ++i)
      d.q8.push_back(std::make_unique<nibble::Int8Matrix>(
          nibble::Int8Matrix::from_q8_0_blocks(rows, cols, blocks.data(), blocks.size()).with_layout(l)));
  }
  const auto X = random_vector(batch * cols, 2);
  std::vector<float> Y(batch * rows);
  const nibble::GemvOptions opt{mode, threads};
  std::size_t i = 0;
  for (auto _ : st) {
    nibble::gemm(*d.q8[i], X.data(), batch, Y.data(), opt);
    benchmark::DoNotOptimize(Y.data());
    if (++i == d.q8.size()) i = 0;
  }
  set_counters(st, d.q8[0]->storage_bytes(), rows, cols, batch);
}

void bench_eigen(benchmark::State& st, std::size_t rows, std::size_t cols, std::size_t batch, int threads, bool cold) {
  DataSet& d = dataset("f32/" + shape_name(rows, cols) + regime(cold));
  const std::size_t bytes = rows * cols * sizeof(float);
  if (d.f32.empty())
    for (std::size_t i = 0, n = copies_for(bytes, cold); i < n; ++i) d.f32.push_back(random_vector(rows * cols, 3 + i));
  const auto X = random_vector(batch * cols, 2);
  std::vector<float> Y(batch * rows);
  std::size_t i = 0;
  for (auto _ : st) {
    const float* W = d.f32[i].data();
    split_rows(threads, rows, [&](std::size_t r0, std::size_t r1) {
      if (batch == 1) baseline::eigen_gemv_rows(W, rows, cols, X.data(), Y.data(), r0, r1);
      else baseline::eigen_gemm_rows(W, rows, cols, X.data(), batch, Y.data(), r0, r1);
    });
    benchmark::DoNotOptimize(Y.data());
    if (++i == d.f32.size()) i = 0;
  }
  set_counters(st, bytes, rows, cols, batch);
}

void bench_int8(benchmark::State& st, std::size_t rows, std::size_t cols, int threads, bool cold) {
  DataSet& d = dataset("i8/" + shape_name(rows, cols) + regime(cold));
  const std::size_t bytes = rows * cols + rows * sizeof(float);
  if (d.i8.empty()) {
    for (std::size_t i = 0, n = copies_for(bytes, cold); i < n; ++i) {
      d.i8.push_back(huge_page_vector<std::int8_t>(rows * cols));
      fill_random_bytes(reinterpret_cast<std::uint8_t*>(d.i8.back().data()), rows * cols, 5 + i);
    }
    d.row_scale = random_vector(rows, 6);
  }
  const auto x = random_vector(cols, 2);
  std::vector<std::int8_t> qx(cols);
  std::vector<float> y(rows);
  std::size_t i = 0;
  for (auto _ : st) {
    float xs = 0;
    baseline::quantize_x_int8(x.data(), cols, qx.data(), &xs);
    const std::int8_t* W = d.i8[i].data();
    split_rows(threads, rows, [&](std::size_t r0, std::size_t r1) {
      baseline::int8_gemv_rows(W, d.row_scale.data(), cols, qx.data(), xs, y.data(), r0, r1);
    });
    benchmark::DoNotOptimize(y.data());
    if (++i == d.i8.size()) i = 0;
  }
  set_counters(st, bytes, rows, cols, 1);
}

void bench_dequant(benchmark::State& st, std::size_t rows, std::size_t cols, int threads) {
  DataSet& d = dataset("dq/" + shape_name(rows, cols));
  if (d.raw.empty()) {
    d.raw.resize(rows * cols / 2);
    fill_random_bytes(d.raw.data(), d.raw.size(), 7);
    d.raw_scales = random_vector(rows * cols / 128, 8);
    d.scratch.resize(rows * cols);
  }
  const auto x = random_vector(cols, 2);
  std::vector<float> y(rows);
  for (auto _ : st) {
    split_rows(threads, rows, [&](std::size_t r0, std::size_t r1) {
      baseline::dequant_then_gemv_rows(d.raw.data(), d.raw_scales.data(), cols, 128, d.scratch.data(), x.data(),
                                       y.data(), r0, r1);
    });
    benchmark::DoNotOptimize(y.data());
  }
  set_counters(st, d.raw.size() + d.raw_scales.size() * sizeof(float), rows, cols, 1);
}

// Streaming read of `bytes` (the int4 working set), split across threads like a GEMV.
void bench_stream(benchmark::State& st, std::size_t bytes, int threads, bool cold) {
  DataSet& d = dataset("stream/" + std::to_string(bytes) + regime(cold));
  const std::size_t n = copies_for(bytes, cold);
  if (d.raw.empty()) {
    d.raw = huge_page_vector<std::uint8_t>(n * bytes);
    fill_random_bytes(d.raw.data(), d.raw.size(), 9);
  }
  std::size_t i = 0;
  float sink[256] = {};
  for (auto _ : st) {
    const std::size_t base = i * bytes;
    split_rows(threads, bytes / 128, [&](std::size_t b0, std::size_t b1) {
      sink[(b0 * 7) % 256] += baseline::stream_read(d.raw.data() + base, b0 * 128, b1 * 128);
    });
    benchmark::DoNotOptimize(sink);
    if (++i == n) i = 0;
  }
  st.SetBytesProcessed(static_cast<std::int64_t>(bytes) * st.iterations());
  st.counters["weight_bytes"] = static_cast<double>(bytes);
}

// llama.cpp's rows for one configuration, registered next to nibble's so that both run
// back to back; nothing without the peer.
void add_peer(std::size_t rows, std::size_t cols, std::size_t batch, int threads, bool cold) {
#ifdef NIBBLE_PEER_LLAMA_CPP
  peer::register_llamacpp(rows, cols, batch, threads, cold, kColdBytes);
#else
  (void)rows, (void)cols, (void)batch, (void)threads, (void)cold;
#endif
}

void register_all(bool quick) {
  using nibble::ActivationMode;
  using nibble::Codebook;
  using nibble::ScaleFormat;
  // int4_sym with f16 scales at the group sizes people use: 32 (every GGUF 4-bit
  // format; 4.5 bits/weight like Q4_0), 64, and 128 (GPTQ/AWQ checkpoints).
  const std::vector<Format> main_formats = {{Codebook::int4_sym, ScaleFormat::f16, 32},
                                            {Codebook::int4_sym, ScaleFormat::f16, 64},
                                            {Codebook::int4_sym, ScaleFormat::f16, 128}};
  const Format main_format = main_formats.back();
  // The other codebooks and scale storages, at group size 128 and 32.
  std::vector<Format> variants;
  for (std::size_t gs : {std::size_t{128}, std::size_t{32}}) {
    for (const Format& f : std::vector<Format>{{Codebook::int4_sym, ScaleFormat::f32, gs},
                                               {Codebook::int4_sym, ScaleFormat::dq8, gs},
                                               {Codebook::uint4_asym, ScaleFormat::f16, gs},
                                               {Codebook::nf4, ScaleFormat::f16, gs},
                                               {Codebook::fp4, ScaleFormat::f16, gs},
                                               {Codebook::iq4_nl, ScaleFormat::f16, gs}})
      variants.push_back(f);
  }
  struct Shape {
    std::size_t rows, cols;
  };
  std::vector<Shape> shapes = {{4096, 4096}, {11008, 4096}, {4096, 11008}, {16384, 16384}};
  if (quick) shapes = {{4096, 4096}, {16384, 16384}};
  auto add = [](const std::string& name, auto fn) {
    benchmark::RegisterBenchmark(name.c_str(), fn)->UseRealTime()->Unit(benchmark::kMicrosecond);
  };
  for (const Shape& s : shapes) {
    const std::string sh = shape_name(s.rows, s.cols);
    const bool big = s.rows == 16384;
    const bool with_variants = s.rows == s.cols;  // format comparisons on 4096² and 16384²
    const std::size_t int4_bytes = random_quantized(8, s.cols, 128, main_format, 1).storage_bytes() / 8 * s.rows;
    for (bool cold : {false, true}) {
      if (big && !cold && quick) continue;
      for (int t : {1, 2}) {
        const std::string suffix = "/" + sh + "/b1/t" + std::to_string(t) + "/" + regime(cold);
        for (ActivationMode mode : {ActivationMode::fast, ActivationMode::exact}) {
          const std::string m = mode == ActivationMode::fast ? "fast" : "exact";
          for (const Format& f : main_formats)
            add("nibble/" + f.name() + "/" + m + suffix, [=](benchmark::State& st) {
              bench_nibble(st, s.rows, s.cols, 1, f, mode, t, cold);
            });
          add("nibble/q8_0/" + m + suffix,
              [=](benchmark::State& st) { bench_q8_0(st, s.rows, s.cols, 1, mode, t, cold); });
          if (with_variants && !(quick && t == 2))
            for (const Format& f : variants)
              add("nibble/" + f.name() + "/" + m + suffix, [=](benchmark::State& st) {
                bench_nibble(st, s.rows, s.cols, 1, f, mode, t, cold);
              });
        }
        if ((s.rows == 4096 && !cold) || (big && cold)) add_peer(s.rows, s.cols, 1, t, cold);
        add("eigen_fp32" + suffix, [=](benchmark::State& st) { bench_eigen(st, s.rows, s.cols, 1, t, cold); });
        add("int8" + suffix, [=](benchmark::State& st) { bench_int8(st, s.rows, s.cols, t, cold); });
        if (!big && !cold && !quick)
          add("dequant_fp32" + suffix, [=](benchmark::State& st) { bench_dequant(st, s.rows, s.cols, t); });
        add("stream" + suffix, [=](benchmark::State& st) { bench_stream(st, int4_bytes, t, cold); });
      }
    }
  }
  // SmolLM2-135M's token_embd as its tied output projection (Q8_0 in the GGUF file), the
  // 4-bit g32 form of the same shape, and fp32; hot = the 28 MiB of Q8_0 stay in L3.
  for (bool cold : {false, true})
    for (int t : {1, 2}) {
      const std::size_t rows = 49152, cols = 576;
      const std::string suffix = "/" + shape_name(rows, cols) + "/b1/t" + std::to_string(t) + "/" + regime(cold);
      for (ActivationMode mode : {ActivationMode::fast, ActivationMode::exact}) {
        const std::string m = mode == ActivationMode::fast ? "fast" : "exact";
        add("nibble/q8_0/" + m + suffix, [=](benchmark::State& st) { bench_q8_0(st, rows, cols, 1, mode, t, cold); });
        if (mode == ActivationMode::fast && nibble::preferred_int8_layout() != nibble::Int8Layout::row_major) {
          // The layout fast mode takes here against the row-major one, at batch 1 and 64.
          static const nibble::Int8Layout row_major = nibble::Int8Layout::row_major;
          add("nibble/q8_0_row_major/" + m + suffix,
              [=](benchmark::State& st) { bench_q8_0(st, rows, cols, 1, mode, t, cold, &row_major); });
          if (!cold) {
            const std::string b64 = "/" + shape_name(rows, cols) + "/b64/t" + std::to_string(t) + "/hot";
            add("nibble/q8_0/" + m + b64, [=](benchmark::State& st) { bench_q8_0(st, rows, cols, 64, mode, t, cold); });
            add("nibble/q8_0_row_major/" + m + b64,
                [=](benchmark::State& st) { bench_q8_0(st, rows, cols, 64, mode, t, cold, &row_major); });
          }
        }
        add("nibble/" + main_formats.front().name() + "/" + m + suffix, [=](benchmark::State& st) {
          bench_nibble(st, rows, cols, 1, main_formats.front(), mode, t, cold);
        });
      }
      add("eigen_fp32" + suffix, [=](benchmark::State& st) { bench_eigen(st, rows, cols, 1, t, cold); });
    }
  // Decode-sized products (SmolLM2-135M's attention and MLP shapes), hot: the fixed cost
  // per call and what a second thread gains there. Group size 32 (GGUF's), fast mode.
  for (const Shape& s : std::vector<Shape>{{576, 576}, {1536, 576}, {576, 1536}})
    for (int t : {1, 2}) {
      const std::string suffix = "/" + shape_name(s.rows, s.cols) + "/b1/t" + std::to_string(t) + "/hot";
      const Format f = main_formats.front();
      add("nibble/" + f.name() + "/fast" + suffix, [=](benchmark::State& st) {
        bench_nibble(st, s.rows, s.cols, 1, f, ActivationMode::fast, t, false);
      });
      add_peer(s.rows, s.cols, 1, t, false);
      add("eigen_fp32" + suffix, [=](benchmark::State& st) { bench_eigen(st, s.rows, s.cols, 1, t, false); });
    }
  // Small batches on 4096², hot, and a 512-token prompt (prefill; fast mode only).
  for (std::size_t batch : {std::size_t{8}, std::size_t{32}, std::size_t{512}})
    for (int t : {1, 2}) {
      const std::string suffix = "/4096x4096/b" + std::to_string(batch) + "/t" + std::to_string(t) + "/hot";
      for (ActivationMode mode : {ActivationMode::fast, ActivationMode::exact}) {
        if (batch == 512 && mode == ActivationMode::exact) continue;
        const std::string m = mode == ActivationMode::fast ? "fast" : "exact";
        for (const Format& f : {main_formats.front(), main_format})
          add("nibble/" + f.name() + "/" + m + suffix, [=](benchmark::State& st) {
            bench_nibble(st, 4096, 4096, batch, f, mode, t, false);
          });
      }
      if (batch != 8) add_peer(4096, 4096, batch, t, false);
      add("eigen_fp32" + suffix, [=](benchmark::State& st) { bench_eigen(st, 4096, 4096, batch, t, false); });
    }
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    if (std::string(argv[i]) == "--quick") quick = true;
    else args.push_back(argv[i]);
  }
  int n = static_cast<int>(args.size());
  register_all(quick);
  benchmark::Initialize(&n, args.data());
  if (benchmark::ReportUnrecognizedArguments(n, args.data())) return 1;
  benchmark::AddCustomContext("nibble_isa", nibble::to_string(nibble::selected_isa()));
  // Not timed here (gptq_bench times it); reported so compare's output says what nibble's
  // programs run Hessians / GPTQ / AWQ on in this build.
  benchmark::AddCustomContext("calibration_math", nibble::calibration_backend());
#ifdef NIBBLE_PEER_LLAMA_CPP
  benchmark::AddCustomContext("peer", peer::llamacpp_description());
#endif
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
