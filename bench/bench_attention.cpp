// Attention and AttentionSoftmax against the materialized forms, float.
//
//   attention/<impl>/float/<Lq>x<Lk>/d<d>[/t2]   O = softmax(Q K^T / sqrt(d)) V, dv = d:
//     flash              sml::Attention<> (key/value blocks, online normalizer; workspace
//                        Bq x Bk = 64 x 128 floats, 32 KiB, whatever Lk)
//     eigen_materialized S = Q K^T * scale (Eigen GEMM), then the plain Eigen softmax expression
//                        on S's rows, then O = S V (Eigen GEMM): Lq x Lk floats of scores
//     sml_materialized   the same with softmaxlab's Softmax rowwise on S
//     onednn             oneDNN primitives: matmul Q K^T with the scale as output scale, softmax_v2
//                        (accurate) in place on S, matmul S V (SOFTMAXLAB_BENCH_ONEDNN builds)
//   One thread, except the /t2 rows: two OpenMP threads (Attention's query blocks, Eigen's and
//   oneDNN's GEMM threads; built when the bench has OpenMP and SOFTMAXLAB_USE_OPENMP). Compare
//   the /t2 rows with the one-thread rows by real_time (CPU time counts the main thread only).
//   Shapes: Lq = Lk in {128, 1024, 4096}, d in {64, 128}; two threads at 4096, d = 64; decode
//   Lq = 1, Lk in {4096, 32768, 131072}, d = 128. Lq = Lk = 16384, d = 64 (1 GiB of scores in
//   the materialized forms, seconds per call) only when SOFTMAXLAB_BENCH_ATTENTION_LARGE=1:
//     SOFTMAXLAB_BENCH_ATTENTION_LARGE=1 softmaxlab_bench --benchmark_filter='^attention/.*/16384x'
//   Counters: workspace_bytes (what the form needs beyond Q, K, V and O: flash the stack score
//   block; materialized the score matrix; oneDNN the score matrix and its primitives'
//   scratchpads), peak_rss_bytes (the measured rise of the process's peak resident set over
//   the first call, from allocating the workspace to the end of the call, Linux: VmHWM after
//   resetting it through /proc/self/clear_refs; memory that malloc kept from an earlier case is
//   not seen, so this is exact for fresh mmap-sized workspaces such as the 16384 scores and a
//   lower bound otherwise), process_cpu_s (CPU seconds of all threads per call), flops (4 Lq Lk d),
//   threads, load1 (the 1-minute load average at the end of the run: the machine is shared).
//   attention_softmax/<impl>/float/rows64/<n>   64 rows of n scores with a full additive mask and
//   a scale: fused (sml::AttentionSoftmax::rowwise_masked) against eigen_expr, the plain
//   expression t = x * s + mask; y = exp(t - max t); y /= sum y.
// Run only these: softmaxlab_bench --benchmark_filter='^attention'
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <limits>
#include <memory>
#include <string>
#include <unordered_map>

#include <Eigen/Core>

#include <softmaxlab/attention.hpp>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "common.hpp"
#include "onednn_attention.hpp"

namespace {

namespace sml = softmaxlab;
using softmaxlab_bench::Index;
using RowMajorF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Two-thread rows need the library's query-block threads (SOFTMAXLAB_USE_OPENMP with OpenMP).
#if defined(_OPENMP) && defined(SOFTMAXLAB_USE_OPENMP)
constexpr bool kThreadRows = true;
#else
constexpr bool kThreadRows = false;
#endif

// The OpenMP thread count for one case (Eigen's GEMM and oneDNN follow omp_get_max_threads()),
// restored afterwards: main() runs everything else on one thread.
class ThreadScope {
 public:
  explicit ThreadScope(int threads) {
#if defined(_OPENMP)
    saved_ = omp_get_max_threads();
    omp_set_num_threads(threads);
#else
    EIGEN_UNUSED_VARIABLE(threads);
#endif
  }
  ~ThreadScope() {
#if defined(_OPENMP)
    omp_set_num_threads(saved_);
#endif
  }
  ThreadScope(const ThreadScope&) = delete;
  ThreadScope& operator=(const ThreadScope&) = delete;

 private:
  int saved_ = 1;
};

using softmaxlab_bench::load_average;
using softmaxlab_bench::process_cpu_seconds;
using softmaxlab_bench::reset_peak_rss;
using softmaxlab_bench::status_bytes;

enum class Impl { Flash, EigenMaterialized, SmlMaterialized, OneDnn };

#if SOFTMAXLAB_BENCH_ONEDNN
using softmaxlab_bench::OneDnnAttention;
#endif

void run_attention(benchmark::State& state, Index lq, Index lk, Index d, Impl impl, int threads) {
  const ThreadScope thread_scope(threads);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  RowMajorF q = RowMajorF::Random(lq, d) * 2.0f, k = RowMajorF::Random(lk, d) * 2.0f,
            v = RowMajorF::Random(lk, d), o = RowMajorF::Zero(lq, d), s;
  // The peak resident set from here on: the workspace (S, oneDNN's primitives) and one call.
  const bool rss = reset_peak_rss();
  const double rss_before = status_bytes("VmRSS");
  if (impl != Impl::Flash)
    s.resize(lq, lk);
  const sml::Attention<> flash;
  const sml::Softmax softmax;
  double workspace = impl == Impl::Flash
                         ? double(sml::detail::kAttentionMaxBlockQ
                                  * sml::detail::kAttentionMaxBlockK * sizeof(float))
                         : double(lq) * double(lk) * sizeof(float);
#if SOFTMAXLAB_BENCH_ONEDNN
  std::unique_ptr<OneDnnAttention> onednn;
  if (impl == Impl::OneDnn) {
    onednn = std::make_unique<OneDnnAttention>(q, k, v, s, o, scale);
    workspace += onednn->scratchpad_bytes;
    state.SetLabel(onednn->impl_info);
  }
#endif
  auto once = [&] {
    switch (impl) {
      case Impl::Flash:
        flash.apply(q, k, v, o);
        break;
      case Impl::EigenMaterialized: {
        s.noalias() = q * k.transpose();
        s *= scale;
        auto a = s.array();
        a = (a.colwise() - a.rowwise().maxCoeff()).exp();
        a.colwise() /= a.rowwise().sum();
        o.noalias() = s * v;
        break;
      }
      case Impl::SmlMaterialized:
        s.noalias() = q * k.transpose();
        s *= scale;
        softmax.rowwise(s, s);
        o.noalias() = s * v;
        break;
      case Impl::OneDnn:
#if SOFTMAXLAB_BENCH_ONEDNN
        (*onednn)();
#endif
        break;
    }
  };
  once();  // warm-up: page faults of the score matrix, first-call work
  if (rss && rss_before > 0)
    state.counters["peak_rss_bytes"] = status_bytes("VmHWM") - rss_before;
  const double cpu_start = process_cpu_seconds();
  for (auto _ : state) {
    once();
    benchmark::DoNotOptimize(o.data());
    benchmark::ClobberMemory();
  }
  // CPU seconds of all threads per call: against the one-thread row, the work the threads add
  // (GEMM oversubscription, spinning, imbalance shows as idle, not here), whatever the load.
  state.counters["process_cpu_s"] =
      benchmark::Counter(process_cpu_seconds() - cpu_start, benchmark::Counter::kAvgIterations);
  state.counters["workspace_bytes"] = workspace;
  state.counters["threads"] = threads;
  state.counters["load1"] = load_average();
  state.counters["flops"] = benchmark::Counter(4.0 * double(lq) * double(lk) * double(d),
                                               benchmark::Counter::kIsIterationInvariantRate);
}

const char* impl_name(Impl impl) {
  switch (impl) {
    case Impl::Flash:
      return "flash";
    case Impl::EigenMaterialized:
      return "eigen_materialized";
    case Impl::SmlMaterialized:
      return "sml_materialized";
    default:
      return "onednn";
  }
}

void register_attention(Index lq, Index lk, Index d, int threads = 1) {
  for (Impl impl : {Impl::Flash, Impl::EigenMaterialized, Impl::SmlMaterialized, Impl::OneDnn}) {
#if !SOFTMAXLAB_BENCH_ONEDNN
    if (impl == Impl::OneDnn)
      continue;
#endif
    softmaxlab_bench::Case c;
    c.name = std::string("attention/") + impl_name(impl) + "/float/" + std::to_string(lq) + "x"
             + std::to_string(lk) + "/d" + std::to_string(d)
             + (threads == 1 ? "" : "/t" + std::to_string(threads));
    c.type_rank = 0;
    c.n = lq * lk;
    c.cache = softmaxlab_bench::Cache::In;
    c.run = [=](benchmark::State& state) {
      run_attention(state, lq, lk, d, impl, threads);
    };
    softmaxlab_bench::registry().push_back(std::move(c));
  }
}

void run_attention_softmax(benchmark::State& state, Index n, bool fused) {
  const Index rows = 64;
  const RowMajorF x = RowMajorF::Random(rows, n) * 20.0f;
  RowMajorF mask = RowMajorF::Random(rows, n);
  for (Index i = 0; i < mask.size(); i += 11)
    mask(i) = -std::numeric_limits<float>::infinity();
  RowMajorF y(rows, n);
  const float s = 0.125f;
  const sml::AttentionSoftmax f(sml::AttentionOptions().with_scale(s));
  for (auto _ : state) {
    if (fused) {
      f.rowwise_masked(x, mask, y);
    } else {
      for (Index r = 0; r < rows; ++r) {
        auto yr = y.row(r).array();
        yr = x.row(r).array() * s + mask.row(r).array();
        yr = (yr - yr.maxCoeff()).exp();
        yr /= yr.sum();
      }
    }
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()) * rows * n);
}

void register_attention_softmax(Index n) {
  for (bool fused : {true, false}) {
    softmaxlab_bench::Case c;
    c.name = std::string("attention_softmax/") + (fused ? "fused" : "eigen_expr") + "/float/rows64/"
             + std::to_string(n);
    c.type_rank = 0;
    c.n = n;
    c.cache = softmaxlab_bench::Cache::In;
    c.run = [=](benchmark::State& state) {
      run_attention_softmax(state, n, fused);
    };
    softmaxlab_bench::registry().push_back(std::move(c));
  }
}

const bool registered = [] {
  for (Index n : {128, 1024, 4096})
    for (Index d : {64, 128})
      register_attention(n, n, d);
  if (kThreadRows)
    register_attention(4096, 4096, 64, 2);
  for (Index lk : {4096, 32768, 131072})
    register_attention(1, lk, 128);
  if (const char* large = std::getenv("SOFTMAXLAB_BENCH_ATTENTION_LARGE");
      large != nullptr && std::string(large) == "1")
    register_attention(16384, 16384, 64);
  for (Index n : {128, 1024, 4096})
    register_attention_softmax(n);
  return true;
}();

}  // namespace
