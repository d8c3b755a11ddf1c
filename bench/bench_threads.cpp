// Threads: Softmax rowwise over a 4096 x 1000 float batch on 1 and 2 OpenMP threads, named
// softmax/softmax_t<k>/float/threads/1000, and one row of 2^24 through SinglePassSoftmax (apply on
// one thread, apply_split in 2 pieces on 2 threads), softmax/single_pass_t<k>/float/threads/2^24.
// The suite is built with SOFTMAXLAB_USE_OPENMP when OpenMP is found (bench/CMakeLists.txt), so
// this is the library's own parallel rowwise (for_each_slice over blocks of rows); main() keeps
// every other case on one thread, and each thread case sets its thread count for the call and
// restores 1 after.
#if defined(_OPENMP) && defined(SOFTMAXLAB_USE_OPENMP)

#include <omp.h>

#include <string>

#include <softmaxlab/single_pass.hpp>
#include <softmaxlab/softmax.hpp>

#include "common.hpp"

namespace {

using softmaxlab_bench::Index;

bool register_threads(int threads) {
  softmaxlab_bench::Case c;
  c.name = "softmax/softmax_t" + std::to_string(threads) + "/float/threads/1000";
  c.type_rank = 0;
  c.n = 1000;
  c.cache = softmaxlab_bench::Cache::Threads;
  c.run = [threads](benchmark::State& state) {
    omp_set_num_threads(threads);
    softmaxlab_bench::run_case<float>(state, 1000, softmaxlab_bench::Cache::Threads,
                                      [](Index, Index) -> softmaxlab_bench::BatchFn<float> {
                                        return [](const float* x, float* y, Index rows, Index n) {
                                          softmaxlab::Softmax().rowwise(
                                              softmaxlab_bench::ConstRows<float>(x, rows, n),
                                              softmaxlab_bench::Rows<float>(y, rows, n));
                                        };
                                      });
    state.counters["threads"] = threads;
    omp_set_num_threads(1);
  };
  softmaxlab_bench::registry().push_back(std::move(c));
  return true;
}

// One row of 2^24: SinglePassSoftmax's apply (t1) against apply_split in 2 pieces on 2 threads.
bool register_split(int threads) {
  constexpr Index n = Index(1) << 24;
  softmaxlab_bench::Case c;
  c.name =
      "softmax/single_pass_t" + std::to_string(threads) + "/float/threads/" + std::to_string(n);
  c.type_rank = 0;
  c.n = n;
  c.cache = softmaxlab_bench::Cache::Threads;
  c.run = [threads](benchmark::State& state) {
    omp_set_num_threads(threads);
    softmaxlab_bench::run_case<float>(state, n, softmaxlab_bench::Cache::Threads,
                                      [threads](Index, Index) -> softmaxlab_bench::BatchFn<float> {
                                        return
                                            [threads](const float* x, float* y, Index, Index len) {
                                              const softmaxlab::SinglePassSoftmax f;
                                              const Eigen::Map<const Eigen::VectorXf> xs(x, len);
                                              Eigen::Map<Eigen::VectorXf> ys(y, len);
                                              if (threads == 1) {
                                                f.apply(xs, ys);
                                              } else {
                                                f.apply_split(xs, ys, threads);
                                              }
                                            };
                                      });
    state.counters["threads"] = threads;
    omp_set_num_threads(1);
  };
  softmaxlab_bench::registry().push_back(std::move(c));
  return true;
}

const bool threads_registered =
    register_threads(1) && register_threads(2) && register_split(1) && register_split(2);

}  // namespace

#endif
