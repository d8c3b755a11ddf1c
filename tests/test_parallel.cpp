// rowwise/colwise over large batches give bit-for-bit the results of one apply() per slice, and,
// when built with OpenMP and SOFTMAXLAB_USE_OPENMP (the softmaxlab_tests_openmp executable),
// the same bits for every thread count. In the ordinary test build this checks the sequential path.
#include <cstring>
#include <vector>

#include <catch2/catch.hpp>

#include <softmaxlab/softmaxlab.hpp>

#include "support.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace sml = softmaxlab;
using Index = Eigen::Index;

namespace {

template <class M>
bool same_bits(const M& a, const M& b) {
  return a.rows() == b.rows() && a.cols() == b.cols()
         && std::memcmp(a.data(), b.data(), sizeof(typename M::Scalar) * a.size()) == 0;
}

template <class F, class M>
void check_batches(const F& f, const M& X) {
  // one apply per row / per column: the sequential reference
  M rows_ref(X.rows(), X.cols()), cols_ref(X.rows(), X.cols());
  for (Index i = 0; i < X.rows(); ++i)
    f.apply(X.row(i), rows_ref.row(i));
  for (Index j = 0; j < X.cols(); ++j)
    f.apply(X.col(j), cols_ref.col(j));
  std::vector<int> thread_counts{1};
#if defined(_OPENMP)
  thread_counts = {1, 2, 3, 4};
#endif
  for (int threads : thread_counts) {
#if defined(_OPENMP)
    omp_set_num_threads(threads);
#endif
    INFO("threads " << threads);
    M y(X.rows(), X.cols());
    f.rowwise(X, y);
    CHECK(same_bits(y, rows_ref));
    f.colwise(X, y);
    CHECK(same_bits(y, cols_ref));
    CHECK(same_bits(M(f.rowwise(X * 2)), M(f.rowwise(M(X * 2)))));  // expression path
  }
}

}  // namespace

TEST_CASE("rowwise/colwise batches are deterministic: bitwise equal to per-slice apply",
          "[parallel]") {
  INFO("parallel slices in this build: " << sml::detail::kParallelSlices);
  const Eigen::MatrixXf X = Eigen::MatrixXf::Random(300, 1000) * 20.0f;
  const Eigen::MatrixXd Xd = Eigen::MatrixXd::Random(257, 300) * 20.0;
  check_batches(sml::Softmax(), X);
  check_batches(sml::LogSoftmax(0.5), X);
  check_batches(sml::SinglePassSoftmax(), X);
  check_batches(sml::Softmax(2.0), Xd);
  check_batches(sml::SinglePassSoftmax(), Xd);
}
