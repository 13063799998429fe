// gptq_bench: GPTQ on one 4096 × 4096 layer with 128 × 512 = 65,536 calibration
// tokens. Times, separately: Hessian accumulation, the inverse Cholesky factor, and
// the quantization itself (nibble's blocked, threaded gptq_quantize), next to a
// straightforward unblocked implementation of the same math in the same run; and
// AWQ's scale search (20 ratios, no clip search) on the same layer with
// NIBBLE_AWQ_BENCH_TOKENS (default 16,384) of the same activations.
//
//   ./gptq_bench                                  (full size; several minutes on 2 cores)
//   NIBBLE_GPTQ_BENCH_N=1024 NIBBLE_GPTQ_BENCH_TOKENS=8192 ./gptq_bench   (quick look)
//
// The header names what ran the math ("calibration math": OpenBLAS and its kernels, or
// Eigen and its compile-time SIMD). Each case runs once (Iterations(1)): the work is
// seconds to minutes, and the ratios between cases of the same run are what to read.
// The machine may be shared: check `uptime` before trusting absolute times.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdlib>
#include <random>
#include <vector>

#include <nibble/nibble.hpp>

namespace {

Eigen::Index env_or(const char* name, Eigen::Index fallback) {
  const char* v = std::getenv(name);
  return v ? std::atol(v) : fallback;
}

const Eigen::Index kN = env_or("NIBBLE_GPTQ_BENCH_N", 4096);
const Eigen::Index kTokens = env_or("NIBBLE_GPTQ_BENCH_TOKENS", 65536);
constexpr Eigen::Index kBatch = 512;
constexpr int kDistinctBatches = 8;  // cycled, so the token data stays small in memory

// Calibration batches: correlated channels (a banded mix) plus a few loud ones.
const std::vector<nibble::RowMatrixXf>& batches() {
  static const std::vector<nibble::RowMatrixXf> data = [] {
    std::mt19937 rng(1);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<nibble::RowMatrixXf> out;
    for (int b = 0; b < kDistinctBatches; ++b) {
      nibble::RowMatrixXf Z(kBatch, kN);
      for (Eigen::Index i = 0; i < Z.size(); ++i) Z.data()[i] = normal(rng);
      nibble::RowMatrixXf X = Z;
      for (Eigen::Index c = 1; c < kN; ++c) X.col(c) += 0.5f * Z.col(c - 1);
      for (Eigen::Index c = 0; c < kN; c += 97) X.col(c) *= 10.0f;
      out.push_back(std::move(X));
    }
    return out;
  }();
  return data;
}

const nibble::RowMatrixXf& weights() {
  static const nibble::RowMatrixXf W = [] {
    std::mt19937 rng(2);
    std::normal_distribution<float> normal(0.0f, 0.02f);
    nibble::RowMatrixXf w(kN, kN);
    for (Eigen::Index i = 0; i < w.size(); ++i) w.data()[i] = normal(rng);
    return w;
  }();
  return W;
}

// The Hessian the quantization cases use (from the distinct batches once each).
const Eigen::MatrixXd& hessian() {
  static const Eigen::MatrixXd H = [] {
    nibble::HessianAccumulator acc(static_cast<std::size_t>(kN), 2);
    for (const auto& X : batches()) acc.add(X);
    return acc.hessian();
  }();
  return H;
}

nibble::GptqConfig config(int threads) {
  nibble::GptqConfig c;
  c.quant.codebook = nibble::Codebook::uint4_asym;
  c.quant.group_size = 128;
  c.quant.scale_format = nibble::ScaleFormat::f16;
  c.threads = threads;
  return c;
}

// The same math as gptq_quantize with dynamic groups, written the direct way: every
// column's error update is applied at once to all later columns (a rank-1 update of
// the remaining matrix per column), one thread, no blocking.
double unblocked_gptq(const nibble::RowMatrixXf& W0, const Eigen::MatrixXd& H0, const nibble::GptqConfig& cfg) {
  const Eigen::Index rows = W0.rows(), n = W0.cols();
  const auto gs = static_cast<Eigen::Index>(cfg.quant.group_size);
  Eigen::MatrixXd W = W0.cast<double>();
  Eigen::MatrixXd H = H0;
  H.diagonal().array() += cfg.damp * H.diagonal().mean();
  const Eigen::MatrixXd Hinv = Eigen::LLT<Eigen::MatrixXd>(H).solve(Eigen::MatrixXd::Identity(n, n));
  const Eigen::MatrixXd U = Eigen::LLT<Eigen::MatrixXd>(Hinv).matrixU();
  std::vector<nibble::GroupParams> p(static_cast<std::size_t>(rows));
  std::vector<float> group(static_cast<std::size_t>(gs));
  Eigen::VectorXd e(rows);
  double loss = 0.0;
  for (Eigen::Index i = 0; i < n; ++i) {
    for (Eigen::Index r = 0; r < rows; ++r) {
      if (i % gs == 0) {
        for (Eigen::Index j = 0; j < gs; ++j) group[static_cast<std::size_t>(j)] = static_cast<float>(W(r, i + j));
        p[static_cast<std::size_t>(r)] = nibble::fit_group(group.data(), group.size(), cfg.quant.codebook);
        p[static_cast<std::size_t>(r)].scale = nibble::round_scale(p[static_cast<std::size_t>(r)].scale, cfg.quant.scale_format);
      }
      const auto& pr = p[static_cast<std::size_t>(r)];
      const double q = nibble::decode_value(nibble::encode_value(static_cast<float>(W(r, i)), pr, cfg.quant.codebook), pr,
                                            cfg.quant.codebook);
      e[r] = (W(r, i) - q) / U(i, i);
      loss += 0.5 * e[r] * e[r];
    }
    if (i + 1 < n) W.rightCols(n - i - 1).noalias() -= e * U.row(i).tail(n - i - 1);
  }
  return loss;
}

void BM_HessianAccumulation(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  const auto& data = batches();
  for (auto _ : state) {
    nibble::HessianAccumulator acc(static_cast<std::size_t>(kN), threads);
    for (Eigen::Index t = 0, b = 0; t < kTokens; t += kBatch, ++b) acc.add(data[static_cast<std::size_t>(b % kDistinctBatches)]);
    benchmark::DoNotOptimize(acc.hessian()(0, 0));
  }
  state.counters["tokens"] = static_cast<double>(kTokens);
}

void BM_InverseFactor(benchmark::State& state) {
  const Eigen::MatrixXd& H = hessian();
  for (auto _ : state) {
    nibble::RowMatrixXd U;
    benchmark::DoNotOptimize(nibble::detail::gptq_inverse_factor(H, 0.01 * H.diagonal().mean(), U));
  }
}

void BM_GptqBlocked(benchmark::State& state) {
  const auto& W = weights();
  const auto& H = hessian();
  for (auto _ : state) {
    const nibble::GptqResult r = nibble::gptq_quantize(W, H, config(static_cast<int>(state.range(0))));
    state.counters["loss"] = r.report.loss;
  }
}

// AWQ's scale search on the same layer: Gram matrix of the tokens, then 20 candidate
// scalings, each an output-error evaluation over the whole layer.
void BM_AwqSearch(benchmark::State& state) {
  const Eigen::Index tokens = env_or("NIBBLE_AWQ_BENCH_TOKENS", 16384);
  nibble::RowMatrixXf X(tokens, kN);
  for (Eigen::Index t = 0; t < tokens; t += kBatch) {
    const Eigen::Index count = std::min(kBatch, tokens - t);
    X.middleRows(t, count) = batches()[static_cast<std::size_t>((t / kBatch) % kDistinctBatches)].topRows(count);
  }
  const std::vector<nibble::RowMatrixXf> W{weights()};
  nibble::AwqConfig c;
  c.clip_search = false;
  c.threads = static_cast<int>(state.range(0));
  for (auto _ : state) {
    const nibble::AwqResult r = nibble::awq_quantize(W, X, c);
    state.counters["ratio"] = r.best_ratio;
    state.counters["loss"] = r.loss_best;
  }
  state.counters["tokens"] = static_cast<double>(tokens);
}

void BM_GptqUnblocked(benchmark::State& state) {
  const auto& W = weights();
  const auto& H = hessian();
  for (auto _ : state) state.counters["loss"] = unblocked_gptq(W, H, config(1));
}

}  // namespace

BENCHMARK(BM_HessianAccumulation)->Arg(1)->Arg(2)->ArgName("threads")->Iterations(1)->UseRealTime()->Unit(benchmark::kSecond);
BENCHMARK(BM_InverseFactor)->Iterations(1)->UseRealTime()->Unit(benchmark::kSecond);
BENCHMARK(BM_GptqBlocked)->Arg(1)->Arg(2)->ArgName("threads")->Iterations(1)->UseRealTime()->Unit(benchmark::kSecond);
BENCHMARK(BM_AwqSearch)->Arg(1)->Arg(2)->ArgName("threads")->Iterations(1)->UseRealTime()->Unit(benchmark::kSecond);
BENCHMARK(BM_GptqUnblocked)->Iterations(1)->UseRealTime()->Unit(benchmark::kSecond);
int main(int argc, char** argv) {
  // What ran the math: the BLAS and its kernels (or Eigen and its compile-time SIMD),
  // next to the ISA nibble's own kernels detected on this CPU.
  benchmark::AddCustomContext("calibration math", nibble::calibration_backend());
  benchmark::AddCustomContext("cpu isa (nibble kernels)", nibble::to_string(nibble::selected_isa()));
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
