// rowwise/colwise over large batches give bit-for-bit the results of one apply() per slice, and,
// when built with OpenMP and SOFTMAXLAB_USE_OPENMP (the softmaxlab_tests_openmp executable),
// the same bits for every thread count. In the ordinary test build this checks the sequential path.
#include <cstring>
#include <vector>

#include <catch2/catch.hpp>

#include <softmaxlab/attention.hpp>
#include <softmaxlab/linear_cross_entropy.hpp>
#include <softmaxlab/single_pass.hpp>
#include <softmaxlab/softmax.hpp>

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

// Runs fn once per thread count (1 to 4 with OpenMP, else 1), with OpenMP set to that count.
template <class Fn>
void for_thread_counts(const Fn& fn) {
  std::vector<int> thread_counts{1};
#if defined(_OPENMP)
  thread_counts = {1, 2, 3, 4};
#endif
  for (int threads : thread_counts) {
#if defined(_OPENMP)
    omp_set_num_threads(threads);
#endif
    INFO("threads " << threads);
    fn();
  }
}

template <class F, class M>
void check_batches(const F& f, const M& X) {
  // one apply per row / per column: the sequential reference
  M rows_ref(X.rows(), X.cols()), cols_ref(X.rows(), X.cols());
  for (Index i = 0; i < X.rows(); ++i)
    f.apply(X.row(i), rows_ref.row(i));
  for (Index j = 0; j < X.cols(); ++j)
    f.apply(X.col(j), cols_ref.col(j));
  for_thread_counts([&] {
    M y(X.rows(), X.cols());
    f.rowwise(X, y);
    CHECK(same_bits(y, rows_ref));
    f.colwise(X, y);
    CHECK(same_bits(y, cols_ref));
    CHECK(same_bits(M(f.rowwise(X * 2)), M(f.rowwise(M(X * 2)))));  // expression path
  });
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

TEST_CASE("Attention and AttentionSoftmax: bitwise the same for every thread count",
          "[parallel][attention]") {
  const Eigen::MatrixXf q = Eigen::MatrixXf::Random(300, 64);
  const Eigen::MatrixXf k = Eigen::MatrixXf::Random(500, 64) * 3.0f;
  const Eigen::MatrixXf v = Eigen::MatrixXf::Random(500, 48);
  const Eigen::MatrixXf mask = Eigen::MatrixXf::Random(300, 500);
  const Eigen::MatrixXf s = Eigen::MatrixXf::Random(300, 500) * 30.0f;
  const sml::Attention<> attn(
      sml::AttentionOptions().with_causal(true).with_softcap(20).with_sink(0.5));
  const sml::AttentionSoftmax fs(sml::AttentionOptions().with_scale(0.3).with_mask_slope(0.5));
  // The sequential references: Attention computed with one thread, AttentionSoftmax row by row.
#if defined(_OPENMP)
  omp_set_num_threads(1);
#endif
  Eigen::MatrixXf o_ref(300, 48), p_ref(300, 500);
  Eigen::VectorXf lse_ref(300);
  attn.apply_masked(q, k, v, mask, o_ref, lse_ref);
  for (Index i = 0; i < 300; ++i)
    fs.apply_masked(s.row(i), mask.row(i), p_ref.row(i));
  for_thread_counts([&] {
    Eigen::MatrixXf o(300, 48), p(300, 500);
    Eigen::VectorXf lse(300);
    attn.apply_masked(q, k, v, mask, o, lse);
    CHECK(same_bits(o, o_ref));
    CHECK(same_bits(lse, lse_ref));
    fs.rowwise_masked(s, mask, p);
    CHECK(same_bits(p, p_ref));
  });
}

TEST_CASE("LinearCrossEntropy gives the same bits for every thread count",
          "[parallel][linear_cross_entropy]") {
  // Vocabulary groups are fixed (LinearCrossEntropy::kGroups) and merged in order, and each dW row
  // belongs to one group: loss, lse, dH, dW and db must not depend on the thread count.
  const Eigen::MatrixXf h = Eigen::MatrixXf::Random(200, 32) * 2.0f;
  const Eigen::MatrixXf w = Eigen::MatrixXf::Random(1000, 32);
  const Eigen::VectorXf b = Eigen::VectorXf::Random(1000);
  std::vector<int> labels(200);
  for (Index i = 0; i < 200; ++i)
    labels[i] = static_cast<int>((i * 37) % 1000);
  labels[7] = -100;
  const auto lce = sml::LinearCrossEntropy(sml::Reduction::Mean, 0.1)
                       .with_z_loss(1e-3)
                       .with_softcap(10)
                       .with_block_sizes(64, 96);
#if defined(_OPENMP)
  omp_set_num_threads(1);
#endif
  Eigen::MatrixXf dh_ref(200, 32), dw_ref(1000, 32);
  Eigen::VectorXf db_ref(1000);
  Eigen::VectorXd lse_ref(200);
  const double l_ref =
      lce(h, w, b, labels, dh_ref, dw_ref, db_ref, sml::TokenOutputs().with_lse(lse_ref));
  for_thread_counts([&] {
    Eigen::MatrixXf dh(200, 32), dw(1000, 32);
    Eigen::VectorXf db(1000);
    Eigen::VectorXd lse(200);
    const double l = lce(h, w, b, labels, dh, dw, db, sml::TokenOutputs().with_lse(lse));
    CHECK(l == l_ref);
    CHECK(same_bits(dh, dh_ref));
    CHECK(same_bits(dw, dw_ref));
    CHECK(same_bits(db, db_ref));
    CHECK(same_bits(lse, lse_ref));
  });
}
