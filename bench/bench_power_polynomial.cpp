// PowerSoftmax and PolynomialSoftmax against Softmax on the same in-cache rows, side by side in one
// run (float, rows of 4096: 8 rows in, 8 rows out, 256 KiB swept repeatedly, so they stay in L2).
// Targets (DESIGN.md): PowerSoftmax(4) >= 2x Softmax, PolynomialSoftmax (default) >= 1.5x Softmax.
// Compare the items_per_second of power/<variant>/float/incache/4096 with power/Softmax/... .
//
// Command (one line; random interleaving spreads a shared machine's load changes over all
// variants, so the ratios of the medians are fair):
//   build/dev/bench/softmaxlab_bench --benchmark_filter='^power/' --benchmark_repetitions=10
//   --benchmark_enable_random_interleaving=true --benchmark_min_time=0.2
//   --benchmark_report_aggregates_only=true
#include <random>

#include <benchmark/benchmark.h>

#include <softmaxlab/polynomial.hpp>
#include <softmaxlab/power.hpp>
#include <softmaxlab/softmax.hpp>

namespace {

constexpr Eigen::Index kRows = 8;

// Rows of 4096 floats, normal(0, 3) logits (spread about 25; the PolynomialSoftmax default is
// specified for spread <= 20, its speed does not depend on the values).
Eigen::MatrixXf make_rows(Eigen::Index n) {
  std::mt19937 gen(20261126);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> x(kRows, n);
  for (Eigen::Index i = 0; i < x.size(); ++i)
    x.data()[i] = normal(gen);
  return x;
}

template <class F>
void run_rows(benchmark::State& state, const F& f) {
  const Eigen::Index n = state.range(0);
  using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const RowMajor x = make_rows(n);
  RowMajor y(kRows, n);
  Eigen::Index row = 0;
  for (auto _ : state) {
    f.apply(x.row(row), y.row(row));
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
    row = row + 1 == kRows ? 0 : row + 1;
  }
  state.SetItemsProcessed(state.iterations() * n);
  state.SetBytesProcessed(state.iterations() * n * static_cast<int64_t>(2 * sizeof(float)));
}

void softmax(benchmark::State& state) {
  run_rows(state, softmaxlab::Softmax());
}
void power4(benchmark::State& state) {
  run_rows(state, softmaxlab::PowerSoftmax(4));
}
void power2(benchmark::State& state) {
  run_rows(state, softmaxlab::PowerSoftmax(2));
}
void power8(benchmark::State& state) {
  run_rows(state, softmaxlab::PowerSoftmax(8));
}
void power4_goldschmidt(benchmark::State& state) {
  softmaxlab::PowerSoftmaxOptions o;
  o.reciprocal = softmaxlab::ReciprocalMethod::Goldschmidt;
  run_rows(state, softmaxlab::PowerSoftmax(4, o));
}
void polynomial(benchmark::State& state) {
  run_rows(state, softmaxlab::PolynomialSoftmax());
}
void polynomial_rs17(benchmark::State& state) {
  run_rows(state, softmaxlab::PolynomialSoftmax(
                      softmaxlab::PolynomialSoftmaxOptions::repeated_squaring(17, 20)));
}
void polynomial_public(benchmark::State& state) {
  auto c = softmaxlab::PolynomialSoftmaxOptions().with_public_bound(16.0);
  run_rows(state, softmaxlab::PolynomialSoftmax(c));
}

}  // namespace

BENCHMARK(softmax)->Name("power/Softmax/float/incache/4096")->Arg(4096);
BENCHMARK(power4)->Name("power/PowerSoftmax4/float/incache/4096")->Arg(4096);
BENCHMARK(power2)->Name("power/PowerSoftmax2/float/incache/4096")->Arg(4096);
BENCHMARK(power8)->Name("power/PowerSoftmax8/float/incache/4096")->Arg(4096);
BENCHMARK(power4_goldschmidt)->Name("power/PowerSoftmax4Goldschmidt/float/incache/4096")->Arg(4096);
BENCHMARK(polynomial)->Name("power/PolynomialSoftmax/float/incache/4096")->Arg(4096);
BENCHMARK(polynomial_public)
    ->Name("power/PolynomialSoftmaxPublicBound/float/incache/4096")
    ->Arg(4096);
BENCHMARK(polynomial_rs17)
    ->Name("power/PolynomialSoftmaxRepeatedSquaring17/float/incache/4096")
    ->Arg(4096);
