// softmaxlab benchmarks: the shared workloads, naming and registration of the suite.
//
// Every benchmark of the suite is named
//     softmax/<impl>/<float|double>/<incache|outcache>/<n>
// so scripts/bench_report.py can group them: <impl> is a softmaxlab variant (softmax, log_softmax,
// single_pass, power4, ...) or a baseline (scalar_exp, eigen_expr, onednn, xnnpack, stream), n is
// the row length, one of kLengths = {64, 1000, 4096, 32000, 2^20, 2^24}; the short-row batches
// (cache `batch`, n in kShortLengths = {16, ..., 512}) are registered only by the kernels that opt
// in through register_short_rows (Softmax and the peers).
//
// Workloads (row-major, each row one distribution, values uniform in [-10, 10]):
//   incache   the rows fit a 256 KiB input buffer and a 256 KiB output buffer (together the 512 KiB
//             L2 of one Zen3 core); every iteration sweeps all of them, so they stay in cache.
//             Only lengths whose row fits the buffer (n * sizeof(Scalar) <= 256 KiB) have this
//             case.
//   batch     as incache, for short rows: N x n with N n sizeof(Scalar) = 256 KiB (4096 x 16 floats
//             to 128 x 512), one rowwise call per iteration (attention and classifier heads).
//   threads   one batch of 4096 rows (4096 x 1000: 16 MiB of floats in, as many out), rowwise on
//             1 and 2 OpenMP threads, and one row of 2^24 (SinglePassSoftmax: apply on one thread,
//             apply_split in 2 pieces on 2 threads) (bench_threads.cpp).
//   outcache  64 MiB of input rows and as many output rows (twice this machine's 32 MiB L3); every
//             iteration processes the next batch of rows (about 256 KiB, at least one row), so each
//             row comes from memory. One row of 2^24 doubles is 128 MiB.
// One iteration = one batch of `rows` rows of length n. Counters: items_per_second counts elements
// (rows x n per iteration); bytes_per_second counts 3 n sizeof(Scalar) per row, the two reads and
// one write of the memory-stream baseline: for `stream` it is the achieved bandwidth, for the
// others the bandwidth they would need to sustain if they were bound by that traffic.
//
// Adding a benchmark for a variant (in a new bench/bench_<variant>.cpp):
//
//   #include "common.hpp"
//   // A functor with rowwise(X, Y) (every softmaxlab functor), float and double, all lengths:
//   static const bool registered = softmaxlab_bench::register_functor("power4",
//   sml::PowerSoftmax(4));
//   // Anything else: a generic kernel over one batch of rows (x, y row-major, `rows` x `n`):
//   static const bool registered2 = softmaxlab_bench::register_batch(
//       "gumbel", [gen = Rng()](const auto* x, auto* y, Index rows, Index n) mutable { ... });
//
// Registration only records the cases; bench/main.cpp registers them with Google Benchmark
// ordered by (type, n, cache), so consecutive benchmarks share one workload and the 64-128 MiB
// buffers are generated once per case, not once per benchmark.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include <benchmark/benchmark.h>

namespace softmaxlab_bench {

using Index = Eigen::Index;

// Row lengths of the suite.
inline constexpr Index kLengths[] = {64, 1000, 4096, 32000, Index(1) << 20, Index(1) << 24};
// Row lengths of the short-row batches.
inline constexpr Index kShortLengths[] = {16, 32, 64, 128, 256, 512};

enum class Cache { In, Out, Batch, Threads };

inline const char* cache_name(Cache c) {
  switch (c) {
    case Cache::In:
      return "incache";
    case Cache::Out:
      return "outcache";
    case Cache::Batch:
      return "batch";
    case Cache::Threads:
      return "threads";
  }
  return "?";
}

// The thread cases: one batch of kThreadRows rows (4096 x 1000 floats, 16 MiB in, 16 MiB out).
inline constexpr Index kThreadRows = 4096;

template <class Scalar>
const char* type_name() {
  return std::is_same_v<Scalar, float> ? "float" : "double";
}

inline constexpr Index kInCacheBytes = Index(256) << 10;    // per buffer (input, output)
inline constexpr Index kBatchBytes = Index(256) << 10;      // out of cache: input bytes per batch
inline constexpr Index kOutOfCacheBytes = Index(64) << 20;  // out of cache: input bytes in all

// Row-major views of one batch, the form every kernel receives.
template <class Scalar>
using RowMajor = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class Scalar>
using ConstRows = Eigen::Map<const RowMajor<Scalar>>;
template <class Scalar>
using Rows = Eigen::Map<RowMajor<Scalar>>;

// The input and output rows of one (type, n, cache) case.
template <class Scalar>
struct Workload {
  Index n = 0;
  Cache cache = Cache::In;
  Index rows = 0;     // rows per batch (per iteration)
  Index batches = 0;  // batches in the buffers; iteration i uses batch i % batches
  Eigen::Array<Scalar, Eigen::Dynamic, 1> x, y;

  const Scalar* x_batch(Index b) const { return x.data() + b * rows * n; }
  Scalar* y_batch(Index b) { return y.data() + b * rows * n; }
};

// Whether the case exists: in-cache cases need one row to fit the in-cache buffer.
template <class Scalar>
bool has_case(Index n, Cache cache) {
  if (cache == Cache::Batch)
    return n <= 512;
  if (cache == Cache::Threads)
    return true;
  return cache == Cache::Out || n * Index(sizeof(Scalar)) <= kInCacheBytes;
}

template <class Scalar>
std::unique_ptr<Workload<Scalar>> make_workload(Index n, Cache cache) {
  auto w = std::make_unique<Workload<Scalar>>();
  const Index row_bytes = n * Index(sizeof(Scalar));
  w->n = n;
  w->cache = cache;
  if (cache == Cache::Threads) {
    w->rows = n >= (Index(1) << 20) ? 1 : kThreadRows;  // a long row: one row (apply_split)
    w->batches = 1;
  } else if (cache != Cache::Out) {
    w->rows = std::max<Index>(1, kInCacheBytes / row_bytes);
    w->batches = 1;
  } else {
    w->rows = std::max<Index>(1, kBatchBytes / row_bytes);
    w->batches = std::max<Index>(1, kOutOfCacheBytes / (w->rows * row_bytes));
  }
  const Index total = w->rows * w->batches * n;
  w->x.resize(total);
  w->y.setZero(total);  // touches every page before timing
  std::uint64_t state = 0x9E3779B97F4A7C15ull ^ static_cast<std::uint64_t>(n);
  for (Index i = 0; i < total; ++i) {  // splitmix64, uniform in [-10, 10)
    std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    w->x[i] = static_cast<Scalar>(static_cast<double>(z >> 11) * 0x1p-53 * 20.0 - 10.0);
  }
  return w;
}

// The current workload of each scalar type; making one frees the other type's, so the suite holds
// at most one case's buffers (at most 256 MiB).
template <class Scalar>
std::unique_ptr<Workload<Scalar>>& workload_slot() {
  static std::unique_ptr<Workload<Scalar>> slot;
  return slot;
}

template <class Scalar>
Workload<Scalar>& workload(Index n, Cache cache) {
  auto& slot = workload_slot<Scalar>();
  if (!slot || slot->n != n || slot->cache != cache) {
    slot.reset();
    if constexpr (std::is_same_v<Scalar, float>) {
      workload_slot<double>().reset();
    } else {
      workload_slot<float>().reset();
    }
    slot = make_workload<Scalar>(n, cache);
  }
  return *slot;
}

// A kernel processes one batch: rows x n, row-major, y written (y never aliases x here).
template <class Scalar>
using BatchFn = std::function<void(const Scalar* x, Scalar* y, Index rows, Index n)>;

// Builds the kernel for a batch shape, outside the timed loop (oneDNN creates its primitive here).
template <class Scalar>
using BatchFactory = std::function<BatchFn<Scalar>(Index rows, Index n)>;

// One recorded case; bench/main.cpp turns them into Google Benchmark benchmarks.
struct Case {
  std::string name;
  int type_rank;  // 0 float, 1 double
  Index n;
  Cache cache;
  std::function<void(benchmark::State&)> run;
  int iterations = 0;  // > 0: a fixed iteration count (heavy cases, seconds per call)
};

// Process measurements shared by the memory-reporting cases (attention, linear cross-entropy).
// /proc/self/status field in bytes (VmRSS, VmHWM), -1 when unavailable.
inline double status_bytes(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const std::string key = std::string(field) + ":";
  while (std::getline(in, line)) {
    if (line.rfind(key, 0) == 0)
      return 1024.0 * std::strtod(line.c_str() + key.size(), nullptr);  // "  1234 kB"
  }
  return -1;
}

// Resets the peak resident set (VmHWM) to the current one; false when the kernel does not allow.
inline bool reset_peak_rss() {
  std::ofstream out("/proc/self/clear_refs");
  out << "5";
  out.flush();
  return static_cast<bool>(out);
}

inline double process_cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}

inline double load_average() {
  std::ifstream in("/proc/loadavg");
  double load = -1;
  in >> load;
  return load;
}

inline std::vector<Case>& registry() {
  static std::vector<Case> cases;
  return cases;
}

// Extra key/value pairs for the JSON "context" (e.g. which oneDNN kernel runs), computed by main()
// before the run.
inline std::vector<std::function<std::pair<std::string, std::string>()>>& context_providers() {
  static std::vector<std::function<std::pair<std::string, std::string>()>> providers;
  return providers;
}

template <class Scalar>
void run_case(benchmark::State& state, Index n, Cache cache, const BatchFactory<Scalar>& make) {
  Workload<Scalar>& w = workload<Scalar>(n, cache);
  BatchFn<Scalar> kernel = make(w.rows, n);
  // Warm-up over every batch: page faults, oneDNN's first-call work, caches for in-cache cases.
  for (Index b = 0; b < w.batches; ++b)
    kernel(w.x_batch(b), w.y_batch(b), w.rows, n);
  Index b = 0;
  for (auto _ : state) {
    kernel(w.x_batch(b), w.y_batch(b), w.rows, n);
    benchmark::DoNotOptimize(w.y.data());
    benchmark::ClobberMemory();
    if (++b == w.batches)
      b = 0;
  }
  const auto elements = static_cast<std::int64_t>(state.iterations()) * w.rows * n;
  state.SetItemsProcessed(elements);
  state.SetBytesProcessed(elements * 3 * static_cast<std::int64_t>(sizeof(Scalar)));
  state.counters["n"] = static_cast<double>(n);
  state.counters["rows"] = static_cast<double>(w.rows);
}

// Records softmax/<impl>/<type>/<cache>/<n> for every length (and cache case) of the suite.
template <class Scalar>
bool register_kernel(const std::string& impl, BatchFactory<Scalar> make) {
  for (Index n : kLengths) {
    for (Cache cache : {Cache::In, Cache::Out}) {
      if (!has_case<Scalar>(n, cache))
        continue;
      Case c;
      c.name = "softmax/" + impl + "/" + type_name<Scalar>() + "/" + cache_name(cache) + "/"
               + std::to_string(n);
      c.type_rank = std::is_same_v<Scalar, float> ? 0 : 1;
      c.n = n;
      c.cache = cache;
      c.run = [n, cache, make](benchmark::State& state) {
        run_case<Scalar>(state, n, cache, make);
      };
      registry().push_back(std::move(c));
    }
  }
  return true;
}

// Records softmax/<impl>/<type>/batch/<n> for the short-row lengths (kShortLengths).
template <class Scalar>
bool register_short_rows(const std::string& impl, BatchFactory<Scalar> make) {
  for (Index n : kShortLengths) {
    Case c;
    c.name = "softmax/" + impl + "/" + type_name<Scalar>() + "/batch/" + std::to_string(n);
    c.type_rank = std::is_same_v<Scalar, float> ? 0 : 1;
    c.n = n;
    c.cache = Cache::Batch;
    c.run = [n, make](benchmark::State& state) {
      run_case<Scalar>(state, n, Cache::Batch, make);
    };
    registry().push_back(std::move(c));
  }
  return true;
}

// A generic batch kernel `fn(const Scalar* x, Scalar* y, Index rows, Index n)` (a generic lambda),
// for float and double. Each case gets its own copy of fn.
// With short_rows, also the short-row batches (float).
template <class Fn>
bool register_batch(const std::string& impl, Fn fn, bool short_rows = false) {
  register_kernel<float>(impl, [fn](Index, Index) { return BatchFn<float>(fn); });
  register_kernel<double>(impl, [fn](Index, Index) { return BatchFn<double>(fn); });
  if (short_rows)
    register_short_rows<float>(impl, [fn](Index, Index) { return BatchFn<float>(fn); });
  return true;
}

// A softmaxlab functor (anything with rowwise(X, Y)), for float and double: each batch is one
// rowwise call on row-major maps, i.e. apply() on every contiguous row.
template <class Functor>
bool register_functor(const std::string& impl, Functor f, bool short_rows = false) {
  return register_batch(
      impl,
      [f](const auto* x, auto* y, Index rows, Index n) {
        using Scalar = std::remove_cv_t<std::remove_pointer_t<decltype(y)>>;
        f.rowwise(ConstRows<Scalar>(x, rows, n), Rows<Scalar>(y, rows, n));
      },
      short_rows);
}

}  // namespace softmaxlab_bench
