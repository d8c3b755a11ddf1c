// LinearCrossEntropy (the fused output-layer loss) against the materialized path, float, loss and
// all gradients in one call:
//
//   lce/<impl>/<type>/N<N>/d<d>/V<V>[/t2]
//     fused         sml::LinearCrossEntropy: lce(H, W, labels, dH, dW) (token x vocabulary blocks,
//                   default 128 x 1024; the N x V logits are never formed)
//     materialized  Z = H W^T (Eigen GEMM, N x V floats), CrossEntropyLoss(Z, labels, Z) (the
//                   gradient written in place), dH = Z W, dW = Z^T H (Eigen GEMMs)
//     fused/half, fused/bf16  the same with Eigen::half / Eigen::bfloat16 H and W (widened to
//                   float per block in the kernel; float gradients): V = 32000 only, short cases
//                   to compare with the float rows of the same shape
//   Shapes: N = 4096, d = 1024, V in {32000, 128256} (issue 24). The V = 128256 materialized case
//   holds 2.1 GB of logits and both take tens of seconds per call: run one size with a short
//   minimum time, e.g.
//     softmaxlab_bench --benchmark_filter='^lce/.*/V32000$' --benchmark_min_time=0.05
//   Counters: peak_rss_bytes (the rise of the peak resident set over the first call, as in
//   bench_attention.cpp: the logits for the materialized path, the workspace for the fused one),
//   workspace_bytes (fused: LinearCrossEntropy::Workspace::bytes(); materialized: N V floats),
//   logits_bytes (N V floats, for the 1% target), process_cpu_s, threads, load1 (shared machine);
//   items: logits per second (N V per call), so the report's ratios are inverse time ratios.
//   /t2 rows (OpenMP builds with SOFTMAXLAB_USE_OPENMP): two threads, compare by real time.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <vector>

#include <Eigen/Core>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <softmaxlab/linear_cross_entropy.hpp>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "common.hpp"

namespace {

namespace sml = softmaxlab;
using softmaxlab_bench::Index;

template <class In>
void run_lce(benchmark::State& state, Index n, Index d, Index v, bool fused, int threads) {
  using MatIn = Eigen::Matrix<In, Eigen::Dynamic, Eigen::Dynamic>;
#if defined(_OPENMP)
  const int saved_threads = omp_get_max_threads();
  omp_set_num_threads(threads);
#endif
  // Hidden states and classifier of a trained-looking head: logits of a few units. The same
  // inputs for every case (Eigen's Random draws from std::rand).
  std::srand(24);
  const MatIn h = Eigen::MatrixXf::Random(n, d).cast<In>();
  const MatIn w = (Eigen::MatrixXf::Random(v, d) * (4.0f / static_cast<float>(d))).cast<In>();
  std::vector<int> labels(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i)
    labels[static_cast<std::size_t>(i)] = static_cast<int>((i * 7919) % v);
  Eigen::MatrixXf dh(n, d), dw(v, d);
  dh.setZero();
  dw.setZero();
#if defined(__GLIBC__)
  // Free heap pages of earlier cases go back to the system first, or this case would reuse them
  // without raising the resident set (a rise of 0 below its own workspace).
  malloc_trim(0);
#endif
  const bool rss = softmaxlab_bench::reset_peak_rss();
  const double rss_before = softmaxlab_bench::status_bytes("VmRSS");
  const sml::LinearCrossEntropy lce;
  sml::LinearCrossEntropy::Workspace ws;
  const sml::CrossEntropyLoss ce;
  Eigen::MatrixXf z;
  double loss = 0;
  auto once = [&] {
    if constexpr (!std::is_same_v<In, float>) {
      loss = lce(h, w, labels, dh, dw, sml::TokenOutputs().with_workspace(ws));
    } else if (fused) {
      loss = lce(h, w, labels, dh, dw, sml::TokenOutputs().with_workspace(ws));
    } else {
      z.resize(n, v);
      z.noalias() = h * w.transpose();
      loss = ce(z, labels, z);
      dh.noalias() = z * w;
      dw.noalias() = z.transpose() * h;
    }
  };
  once();  // warm-up: page faults, the workspace
  if (rss && rss_before > 0)
    state.counters["peak_rss_bytes"] = softmaxlab_bench::status_bytes("VmHWM") - rss_before;
  const double cpu_start = softmaxlab_bench::process_cpu_seconds();
  for (auto _ : state) {
    once();
    benchmark::DoNotOptimize(loss);
    benchmark::DoNotOptimize(dw.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()) * n * v);
  state.counters["process_cpu_s"] = benchmark::Counter(
      softmaxlab_bench::process_cpu_seconds() - cpu_start, benchmark::Counter::kAvgIterations);
  state.counters["workspace_bytes"] =
      fused ? double(ws.bytes()) : double(n) * double(v) * sizeof(float);
  state.counters["logits_bytes"] = double(n) * double(v) * sizeof(float);
  state.counters["threads"] = threads;
  state.counters["load1"] = softmaxlab_bench::load_average();
  state.counters["loss"] = loss;
#if defined(_OPENMP)
  omp_set_num_threads(saved_threads);
#endif
}

const bool registered = [] {
  const Index n = 4096, d = 1024;
  std::vector<int> thread_counts{1};
#if defined(_OPENMP) && defined(SOFTMAXLAB_USE_OPENMP)
  thread_counts.push_back(2);
#endif
  for (Index v : {Index(32000), Index(128256)}) {
    for (int threads : thread_counts) {
      for (bool fused : {true, false}) {
        softmaxlab_bench::Case c;
        c.name = std::string("lce/") + (fused ? "fused" : "materialized") + "/float/N"
                 + std::to_string(n) + "/d" + std::to_string(d) + "/V" + std::to_string(v)
                 + (threads == 1 ? "" : "/t" + std::to_string(threads));
        c.type_rank = 0;
        c.n = n * v;
        c.cache = threads == 1 ? softmaxlab_bench::Cache::Out : softmaxlab_bench::Cache::Threads;
        c.run = [=](benchmark::State& state) {
          run_lce<float>(state, n, d, v, fused, threads);
        };
        softmaxlab_bench::registry().push_back(std::move(c));
      }
    }
  }
  // 16-bit H and W, fused only, V = 32000.
  const auto add16 = [&](const char* type, auto tag, int threads) {
    using In = decltype(tag);
    softmaxlab_bench::Case c;
    c.name = std::string("lce/fused/") + type + "/N" + std::to_string(n) + "/d" + std::to_string(d)
             + "/V32000" + (threads == 1 ? "" : "/t" + std::to_string(threads));
    c.type_rank = 0;
    c.n = n * 32000;
    c.cache = threads == 1 ? softmaxlab_bench::Cache::Out : softmaxlab_bench::Cache::Threads;
    c.run = [=](benchmark::State& state) {
      run_lce<In>(state, n, d, 32000, true, threads);
    };
    softmaxlab_bench::registry().push_back(std::move(c));
  };
  for (int threads : thread_counts) {
    add16("half", Eigen::half(), threads);
    add16("bf16", Eigen::bfloat16(), threads);
  }
  return true;
}();

}  // namespace
