// GumbelSoftmax against Softmax on the same in-cache rows (the noise included: Philox4x32 bits,
// two logs per element), and NormalizedSoftmax against a plain Eigen matrix product of the same
// shape (the cosine logits should cost about one GEMM). Self-contained: no bench/common.hpp.
//
//   ./build/dev/bench/softmaxlab_bench --benchmark_filter='gumbel/|normalized/'
#include <cstdint>
#include <random>
#include <vector>

#include <benchmark/benchmark.h>

#include <softmaxlab/softmaxlab.hpp>

namespace {

namespace sml = softmaxlab;
using Index = Eigen::Index;

// 16 rows of 4096 floats = 256 KiB: fits Zen3's 512 KiB L2 with the output, swept row by row.
constexpr Index kRows = 16;

using RowMatrixF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

RowMatrixF logits(Index rows, Index cols) {
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0, 3);
  RowMatrixF x(rows, cols);
  for (Index i = 0; i < x.size(); ++i)
    x.data()[i] = normal(rng);
  return x;
}

template <class Fn>
void sweep_rows(benchmark::State& state, Fn&& fn) {
  const Index n = state.range(0);
  const RowMatrixF x = logits(kRows, n);
  RowMatrixF y(kRows, n);
  Index r = 0;
  for (auto _ : state) {
    fn(x.row(r), y.row(r));
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
    r = (r + 1) % kRows;
  }
  state.SetItemsProcessed(state.iterations() * n);
  state.SetBytesProcessed(state.iterations() * n * static_cast<int64_t>(sizeof(float)));
}

void softmax(benchmark::State& state) {
  const sml::Softmax f;
  sweep_rows(state, [&](const auto& x, const auto& y) { f.apply(x, y); });
}

void gumbel_soft(benchmark::State& state) {
  const sml::GumbelSoftmax g(1.0);
  sml::Philox4x32 gen(7);
  sweep_rows(state, [&](const auto& x, const auto& y) { g.apply(x, y, gen); });
}

void gumbel_soft_tau(benchmark::State& state) {
  const sml::GumbelSoftmax g(0.5);
  sml::Philox4x32 gen(7);
  sweep_rows(state, [&](const auto& x, const auto& y) { g.apply(x, y, gen); });
}

void gumbel_hard(benchmark::State& state) {
  const sml::GumbelSoftmax g(1.0, true);
  sml::Philox4x32 gen(7);
  sweep_rows(state, [&](const auto& x, const auto& y) { g.apply(x, y, gen); });
}

void gumbel_soft_mt19937(benchmark::State& state) {
  const sml::GumbelSoftmax g(1.0);
  std::mt19937 gen(7);
  sweep_rows(state, [&](const auto& x, const auto& y) { g.apply(x, y, gen); });
}

void gumbel_sample(benchmark::State& state) {
  const Index n = state.range(0);
  const RowMatrixF x = logits(kRows, n);
  sml::Philox4x32 gen(7);
  Index r = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(sml::GumbelSoftmax::sample(x.row(r), gen));
    r = (r + 1) % kRows;
  }
  state.SetItemsProcessed(state.iterations() * n);
}

void philox_fill(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  std::vector<std::uint32_t> words(n);
  sml::Philox4x32 gen(7);
  for (auto _ : state) {
    gen.fill(words.data(), n);
    benchmark::DoNotOptimize(words.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
}

BENCHMARK(softmax)->Name("gumbel/Softmax/float/incache")->Arg(4096);
BENCHMARK(gumbel_soft)->Name("gumbel/GumbelSoftmax/float/incache")->Arg(4096);
BENCHMARK(gumbel_soft_tau)->Name("gumbel/GumbelSoftmax-tau0.5/float/incache")->Arg(4096);
BENCHMARK(gumbel_hard)->Name("gumbel/GumbelSoftmax-hard/float/incache")->Arg(4096);
BENCHMARK(gumbel_soft_mt19937)->Name("gumbel/GumbelSoftmax-mt19937/float/incache")->Arg(4096);
BENCHMARK(gumbel_sample)->Name("gumbel/GumbelSoftmax-sample/float/incache")->Arg(4096);
BENCHMARK(philox_fill)->Name("gumbel/Philox4x32-fill/words")->Arg(4096);

// ------------------------------------------------------------------------------------------------
// NormalizedSoftmax: N = 1024 embeddings of D = 512 against C = 1000 classes.

constexpr Index kN = 1024, kD = 512, kC = 1000;

void set_gflops(benchmark::State& state) {
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * kN * kC * kD * static_cast<double>(state.iterations()) / 1e9,
                         benchmark::Counter::kIsRate);
}

void normalized_logits(benchmark::State& state) {
  const Eigen::MatrixXf e = Eigen::MatrixXf::Random(kN, kD), w = Eigen::MatrixXf::Random(kC, kD);
  const sml::NormalizedSoftmax ns(20);
  for (auto _ : state) {
    Eigen::MatrixXf l = ns.logits(e, w);
    benchmark::DoNotOptimize(l.data());
  }
  set_gflops(state);
}

void normalized_probabilities(benchmark::State& state) {
  const Eigen::MatrixXf e = Eigen::MatrixXf::Random(kN, kD), w = Eigen::MatrixXf::Random(kC, kD);
  const sml::NormalizedSoftmax ns(20);
  for (auto _ : state) {
    Eigen::MatrixXf p = ns(e, w);
    benchmark::DoNotOptimize(p.data());
  }
  set_gflops(state);
}

void eigen_gemm(benchmark::State& state) {
  const Eigen::MatrixXf e = Eigen::MatrixXf::Random(kN, kD), w = Eigen::MatrixXf::Random(kC, kD);
  for (auto _ : state) {
    Eigen::MatrixXf l(kN, kC);
    l.noalias() = e * w.transpose();
    benchmark::DoNotOptimize(l.data());
  }
  set_gflops(state);
}

BENCHMARK(normalized_logits)
    ->Name("normalized/NormalizedSoftmax-logits/float/1024x512x1000")
    ->Unit(benchmark::kMillisecond);
BENCHMARK(normalized_probabilities)
    ->Name("normalized/NormalizedSoftmax-probabilities/float/1024x512x1000")
    ->Unit(benchmark::kMillisecond);
BENCHMARK(eigen_gemm)
    ->Name("normalized/EigenGEMM/float/1024x512x1000")
    ->Unit(benchmark::kMillisecond);

}  // namespace
