// MultiHeadAttention (issue 23) against a loop of one-head Attention and the materialized form,
// float, one thread (two with /t2 when the bench has OpenMP and SOFTMAXLAB_USE_OPENMP).
//
//   mha_prefill/<impl>/float/<L>x<L>/hq32_hkv8_d128[/t2]   causal, Q L x 32*128, K, V L x 8*128:
//     mha           sml::MultiHeadAttention (group tiles, K/V blocks converted once per group)
//     head_loop     32 calls of sml::Attention<> on head h's columns and its KV head's columns
//     materialized  per head: S = Q_h K_g^T scale (Eigen GEMM), -inf above the diagonal,
//                   sml::Softmax rowwise, O_h = S V_g (L x L floats of scores)
//     onednn        per head: oneDNN's matmul (scale as output scale, the causal mask as a
//                   binary-add post-op), softmax_v2, matmul on head h's column blocks
//                   (bench/onednn_attention.hpp, as bench_attention.cpp; SOFTMAXLAB_BENCH_ONEDNN)
//     L in {512, 2048, 8192}; the 8,192 rows (seconds per call, 256 MiB of scores in the
//     materialized forms) run one iteration: filter them out with --benchmark_filter='^mha_(?!
//     prefill/.*8192)' or run them alone.
//   /t2: two threads (OpenMP with SOFTMAXLAB_USE_OPENMP; wall time): MHA's tiles, the loop's and
//   the materialized form's Eigen GEMMs, oneDNN's primitives.
//   mha_window/<impl>/float/<Lq>x8192/hq32_hkv8_d128   causal, window (1024, 0) against full
//     causal, all queries (Lq = 8192) and the last 1,024 (Lq = 1024).
//   mha_decode/<kv>/float/1x<Lk>/hq32_hkv8_d128   one query token against a cache of Lk keys,
//     K and V half or float; bytes_per_second counts the K and V bytes read, Lk 8 (128 + 128)
//     sizeof(kv) per call. mha_decode/read_bandwidth/<bytes>: a plain sum over a buffer of the same
//     size as the half cache, the read bandwidth of this machine in the same run.
//   mha_decode/half_paged16/float/1x<Lk>/hq32_hkv8_d128   the half cache as pages of 16 rows in a
//     shuffled order (MultiHeadAttention::apply_paged, PagedKV).
//   mha_decode/fma_rate/zmm   (AVX-512 builds) 512-bit FMAs per second on one thread, in the same
//     run: the decoding kernels issue 64 FMAs per key row per KV group here, so their FMA-bound
//     rate is 8 cache bytes per FMA (half) or 16 (float).
// items_per_second: calls per second for prefill and window cases, bytes per second (as
// bytes_per_second) for decode and read cases, so scripts/bench_report.py's MHA_TARGETS ratios
// are speed-ups and fractions of the read bandwidth.
// Counters: flops (4 Lq Lk_visible d), workspace_bytes (the scores of the materialized form; the
// tile workspace of the flash forms), load1.
// Run only these: softmaxlab_bench --benchmark_filter='^mha_'
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <Eigen/Core>

#include <softmaxlab/multi_head_attention.hpp>

#if defined(_OPENMP)
#include <omp.h>
#endif
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "common.hpp"
#include "onednn_attention.hpp"

namespace {

namespace sml = softmaxlab;
using softmaxlab_bench::Index;
using RowMajorF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using RowMajorH = Eigen::Matrix<Eigen::half, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

constexpr Index kHq = 32, kHkv = 8, kD = 128;

void set_threads(int threads) {
#if defined(_OPENMP)
  omp_set_num_threads(threads);
#else
  EIGEN_UNUSED_VARIABLE(threads);
#endif
}

double load1() {
  double l[1] = {0};
  return getloadavg(l, 1) == 1 ? l[0] : -1;
}

// threads > 1: wall time (Cache::Threads); iterations > 0: that fixed count (heavy cases).
void add(const std::string& name, Index n, int threads, int iterations,
         std::function<void(benchmark::State&)> run) {
  softmaxlab_bench::Case c;
  c.name = name;
  c.type_rank = 0;
  c.n = n;
  c.cache = threads > 1 ? softmaxlab_bench::Cache::Threads : softmaxlab_bench::Cache::In;
  c.iterations = iterations;
  c.run = std::move(run);
  softmaxlab_bench::registry().push_back(std::move(c));
}

enum class Impl { Mha, HeadLoop, Materialized, OneDnn };

// Causal (optionally windowed) attention of Lq queries over Lk keys, every head.
void run_prefill(benchmark::State& state, Index lq, Index lk, Index left, Impl impl, int threads) {
  set_threads(threads);
  const RowMajorF q = RowMajorF::Random(lq, kHq * kD), k = RowMajorF::Random(lk, kHkv * kD);
  const RowMajorF v = RowMajorF::Random(lk, kHkv * kD);
  RowMajorF o(lq, kHq * kD);
  const sml::AttentionOptions opt = sml::AttentionOptions().with_causal(true).with_window(left, 0);
  const sml::MultiHeadAttention mha(opt, kHq, kHkv);
  const sml::Attention<> one(sml::AttentionOptions().with_causal(true));
  const sml::Softmax softmax;
  const float scale = 1.0f / std::sqrt(float(kD));
  RowMajorF s;
  if (impl == Impl::Materialized || impl == Impl::OneDnn)
    s.resize(lq, lk);
  const float ninf = -std::numeric_limits<float>::infinity();
#if SOFTMAXLAB_BENCH_ONEDNN
  // One set of primitives per head on its column blocks, one score matrix and one causal mask
  // (0 or -inf, bottom-right aligned) shared by the heads, which run in turn.
  RowMajorF mask;
  std::vector<std::unique_ptr<softmaxlab_bench::OneDnnAttention>> heads;
  if (impl == Impl::OneDnn) {
    mask = RowMajorF::Zero(lq, lk);
    for (Index i = 0; i < lq; ++i) {
      const Index first_masked = std::max<Index>(0, std::min(lk, i + lk - lq + 1));
      mask.row(i).tail(lk - first_masked).setConstant(ninf);
    }
    auto* qp = const_cast<float*>(q.data());
    auto* kp = const_cast<float*>(k.data());
    auto* vp = const_cast<float*>(v.data());
    for (Index h = 0; h < kHq; ++h) {
      const Index g = h / (kHq / kHkv);
      heads.push_back(std::make_unique<softmaxlab_bench::OneDnnAttention>(
          qp + h * kD, lq, kD, kHq * kD, kp + g * kD, lk, kHkv * kD, vp + g * kD, kD, kHkv * kD,
          s.data(), o.data() + h * kD, kHq * kD, scale, mask.data()));
    }
    state.SetLabel(heads[0]->impl_info);
  }
#endif
  auto once = [&] {
    switch (impl) {
      case Impl::Mha:
        mha.apply(q, k, v, o);
        break;
      case Impl::HeadLoop:
        for (Index h = 0; h < kHq; ++h) {
          const Index g = h / (kHq / kHkv);
          one.apply(q.middleCols(h * kD, kD), k.middleCols(g * kD, kD), v.middleCols(g * kD, kD),
                    o.middleCols(h * kD, kD));
        }
        break;
      case Impl::Materialized:
        for (Index h = 0; h < kHq; ++h) {
          const Index g = h / (kHq / kHkv);
          s.noalias() = q.middleCols(h * kD, kD) * k.middleCols(g * kD, kD).transpose();
          s *= scale;
          for (Index i = 0; i < lq; ++i) {
            const Index first_masked = std::max<Index>(0, std::min(lk, i + lk - lq + 1));
            s.row(i).tail(lk - first_masked).setConstant(ninf);
          }
          softmax.rowwise(s, s);
          o.middleCols(h * kD, kD).noalias() = s * v.middleCols(g * kD, kD);
        }
        break;
      case Impl::OneDnn:
#if SOFTMAXLAB_BENCH_ONEDNN
        for (auto& head : heads)
          (*head)();
#endif
        break;
    }
  };
  if (state.max_iterations > 1)
    once();  // warm-up (skipped by the one-iteration cases, seconds per call)
  for (auto _ : state) {
    once();
    benchmark::DoNotOptimize(o.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()));
  double visible = 0;  // keys seen by every query, summed
  for (Index i = 0; i < lq; ++i) {
    const Index diag = i + lk - lq;
    visible += double(std::min(lk, diag + 1) - (left < 0 ? 0 : std::max<Index>(0, diag - left)));
  }
  state.counters["flops"] =
      benchmark::Counter(4.0 * kHq * visible * kD, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["workspace_bytes"] = impl == Impl::Materialized || impl == Impl::OneDnn
                                          ? double(lq) * double(lk) * sizeof(float)
                                          : 0.0;
  state.counters["threads"] = threads;
  state.counters["load1"] = load1();
  set_threads(1);
}

// page_size > 0: K and V as pages of page_size rows in a shuffled order (apply_paged).
template <class KV>
void run_decode(benchmark::State& state, Index lk, int threads, Index page_size = 0) {
  set_threads(threads);
  using M = Eigen::Matrix<KV, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const RowMajorF q = RowMajorF::Random(1, kHq * kD);
  const M k = RowMajorF::Random(lk, kHkv * kD).cast<KV>(),
          v = RowMajorF::Random(lk, kHkv * kD).cast<KV>();
  RowMajorF o(1, kHq * kD);
  const sml::MultiHeadAttention mha(sml::AttentionOptions().with_causal(true), kHq, kHkv);
  const Index pages = page_size > 0 ? (lk + page_size - 1) / page_size : 0;
  std::vector<std::int32_t> table(static_cast<std::size_t>(pages));
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), std::mt19937(7));
  M kp(pages * page_size, kHkv * kD), vp(pages * page_size, kHkv * kD);
  for (Index j = 0; j < lk && page_size > 0; ++j) {
    const Index row = table[static_cast<std::size_t>(j / page_size)] * page_size + j % page_size;
    kp.row(row) = k.row(j);
    vp.row(row) = v.row(j);
  }
  const sml::PagedKV<KV> pk(kp.data(), pages, std::max<Index>(page_size, 1), kHkv * kD,
                            table.data(), pages, page_size > 0 ? lk : 0),
      pv(vp.data(), pages, std::max<Index>(page_size, 1), kHkv * kD, table.data(), pages,
         page_size > 0 ? lk : 0);
  auto once = [&] {
    if (page_size > 0)
      mha.apply_paged(q, pk, pv, o);
    else
      mha.apply(q, k, v, o);
  };
  once();
  for (auto _ : state) {
    once();
    benchmark::DoNotOptimize(o.data());
    benchmark::ClobberMemory();
  }
  const std::int64_t bytes = static_cast<std::int64_t>(state.iterations()) * 2 * lk * kHkv * kD
                             * static_cast<std::int64_t>(sizeof(KV));
  state.SetBytesProcessed(bytes);
  state.SetItemsProcessed(bytes);
  state.counters["threads"] = threads;
  state.counters["load1"] = load1();
  set_threads(1);
}

// The read bandwidth: a sum over `bytes` of floats (bytes_per_second = bytes read).
void run_read(benchmark::State& state, Index bytes, int threads) {
  set_threads(threads);
  const Index n = bytes / Index(sizeof(float));
  const Eigen::VectorXf x = Eigen::VectorXf::Random(n);
  const Index parts = threads;
  for (auto _ : state) {
    float total = 0;
#if defined(_OPENMP)
#pragma omp parallel for reduction(+ : total) num_threads(threads)
#endif
    for (Index p = 0; p < parts; ++p)
      total += x.segment(p * n / parts, (p + 1) * n / parts - p * n / parts).sum();
    benchmark::DoNotOptimize(total);
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * n
                          * static_cast<std::int64_t>(sizeof(float)));
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()) * n
                          * static_cast<std::int64_t>(sizeof(float)));
  state.counters["threads"] = threads;
  set_threads(1);
}

#if defined(__AVX512F__)
// The 512-bit FMA rate of this machine in the same run (one thread): 24 independent chains, so
// both FMA pipes stay busy (latency 4, two per cycle). items_per_second = zmm FMAs per second; the
// decoding kernels' FMA-bound bytes per second are this rate times the cache bytes per FMA
// (docs/multi_head_attention.md: 8 for a half cache, 16 for float, Hq / Hkv = 4, d = dv = 128).
void run_fma_rate(benchmark::State& state) {
  constexpr int kChains = 24;
  constexpr std::int64_t kSteps = 1 << 16;
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
  for (auto _ : state) {
    __m512 acc[kChains];
    for (int c = 0; c < kChains; ++c)
      acc[c] = _mm512_set1_ps(float(c));
    for (std::int64_t i = 0; i < kSteps; ++i)
      for (int c = 0; c < kChains; ++c)
        acc[c] = _mm512_fmadd_ps(acc[c], a, b);
    for (int c = 1; c < kChains; ++c)
      acc[0] = _mm512_add_ps(acc[0], acc[c]);
    benchmark::DoNotOptimize(acc[0]);
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()) * kSteps * kChains);
  state.counters["load1"] = load1();
}
#endif

const char* impl_name(Impl impl) {
  switch (impl) {
    case Impl::Mha:
      return "mha";
    case Impl::HeadLoop:
      return "head_loop";
    case Impl::Materialized:
      return "materialized";
    default:
      return "onednn";
  }
}

const bool registered = [] {
  const std::string shape = "/hq32_hkv8_d128";
#if defined(_OPENMP) && defined(SOFTMAXLAB_USE_OPENMP)
  const std::vector<int> thread_counts = {1, 2};
#else
  const std::vector<int> thread_counts = {1};
#endif
  for (int t : thread_counts) {
    const std::string suffix = t == 1 ? "" : "/t" + std::to_string(t);
    for (Index l : {512, 2048, 8192}) {
      for (Impl impl : {Impl::Mha, Impl::HeadLoop, Impl::Materialized, Impl::OneDnn}) {
#if !SOFTMAXLAB_BENCH_ONEDNN
        if (impl == Impl::OneDnn)
          continue;
#endif
        add("mha_prefill/" + std::string(impl_name(impl)) + "/float/" + std::to_string(l) + "x"
                + std::to_string(l) + shape + suffix,
            l * l, t, l >= 8192 ? 1 : 0,
            [=](benchmark::State& s) { run_prefill(s, l, l, -1, impl, t); });
      }
    }
    for (Index lq : {8192, 1024}) {
      for (Index left : {Index(-1), Index(1024)}) {
        // Full causal attention over 8,192 keys takes seconds: one iteration.
        add(std::string("mha_window/") + (left < 0 ? "causal" : "window1024") + "/float/"
                + std::to_string(lq) + "x8192" + shape + suffix,
            lq * 8192, t, left < 0 || lq == 8192 ? 1 : 0,
            [=](benchmark::State& s) { run_prefill(s, lq, 8192, left, Impl::Mha, t); });
      }
    }
#if defined(__AVX512F__)
    if (t == 1)
      add("mha_decode/fma_rate/zmm", 1, 1, 0, run_fma_rate);
#endif
    for (Index lk : {4096, 32768, 131072}) {
      // 128k keys: 512 MiB of half cache (1 GiB float) read per call, a few iterations.
      const int iterations = lk >= 131072 ? 3 : 0;
      add("mha_decode/half/float/1x" + std::to_string(lk) + shape + suffix, lk, t, iterations,
          [=](benchmark::State& s) { run_decode<Eigen::half>(s, lk, t); });
      add("mha_decode/float/float/1x" + std::to_string(lk) + shape + suffix, lk, t, iterations,
          [=](benchmark::State& s) { run_decode<float>(s, lk, t); });
      add("mha_decode/half_paged16/float/1x" + std::to_string(lk) + shape + suffix, lk, t,
          iterations, [=](benchmark::State& s) { run_decode<Eigen::half>(s, lk, t, 16); });
      const Index bytes = 2 * lk * kHkv * kD * 2;  // the half cache's size
      add("mha_decode/read_bandwidth/" + std::to_string(bytes) + suffix, lk, t, iterations,
          [=](benchmark::State& s) { run_read(s, bytes, t); });
    }
  }
  return true;
}();

}  // namespace
