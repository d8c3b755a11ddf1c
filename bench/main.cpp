// softmaxlab_bench's main: registers the recorded cases of every bench/bench_*.cpp with Google
// Benchmark in (type, n, cache) order (see common.hpp), records the machine in the JSON context,
// and runs them. Everything runs on one thread: oneDNN's OpenMP runtime is limited to one thread.
#include <algorithm>
#include <fstream>
#include <string>

#include <Eigen/Core>

#include <benchmark/benchmark.h>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "common.hpp"

namespace {

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      return colon == std::string::npos ? line : line.substr(colon + 2);
    }
  }
  return "unknown";
}

const char* simd() {
#if defined(EIGEN_VECTORIZE_AVX512)
  return "AVX-512";
#elif defined(EIGEN_VECTORIZE_AVX2) && defined(EIGEN_VECTORIZE_FMA)
  return "AVX2+FMA";
#elif defined(EIGEN_VECTORIZE_AVX)
  return "AVX";
#elif defined(EIGEN_VECTORIZE_SSE2)
  return "SSE2";
#elif defined(EIGEN_VECTORIZE_NEON)
  return "NEON";
#else
  return "none";
#endif
}

}  // namespace

int main(int argc, char** argv) {
#if defined(_OPENMP)
  omp_set_num_threads(1);  // oneDNN (Debian's build uses OpenMP) runs on one thread
#endif
  auto cases = softmaxlab_bench::registry();
  std::stable_sort(cases.begin(), cases.end(), [](const auto& a, const auto& b) {
    if (a.type_rank != b.type_rank)
      return a.type_rank < b.type_rank;
    if (a.n != b.n)
      return a.n < b.n;
    return a.cache < b.cache;
  });
  for (const auto& c : cases) {
    auto* b = benchmark::RegisterBenchmark(c.name.c_str(), c.run);
    b->Unit(c.n >= (softmaxlab_bench::Index(1) << 20) ? benchmark::kMillisecond
                                                      : benchmark::kMicrosecond);
    if (c.cache == softmaxlab_bench::Cache::Threads)
      b->UseRealTime();  // several threads: wall time, not the main thread's CPU time
    if (c.iterations > 0)
      b->Iterations(c.iterations);
  }
  benchmark::AddCustomContext("cpu_model", cpu_model());
  benchmark::AddCustomContext("simd", simd());
  benchmark::AddCustomContext("threads", "1");
  for (const auto& provider : softmaxlab_bench::context_providers()) {
    const auto [key, value] = provider();
    benchmark::AddCustomContext(key, value);
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv))
    return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
