#include <benchmark/benchmark.h>

#include <softmaxlab/softmaxlab.hpp>
static void BM_Softmax(benchmark::State& state) {
  Eigen::VectorXf x = Eigen::VectorXf::Random(state.range(0)) * 10, y(x.size());
  const softmaxlab::Softmax f;
  for (auto _ : state) {
    f.apply(x, y);
    benchmark::DoNotOptimize(y.data());
  }
  state.SetItemsProcessed(state.iterations() * x.size());
}
BENCHMARK(BM_Softmax)->Arg(4096);
