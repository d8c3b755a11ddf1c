// Regression tests for the findings of the libFuzzer targets (tests/fuzz): each case is the
// minimal form of a fuzzer's reproducer, with what the header promises for it. Under the
// sanitizer build (scripts/test.sh sanitize) they also guard against the undefined behaviour the
// fuzzers reported.
// clang-format off
#include "support.hpp"  // first: it configures Eigen (asserts, malloc checks)
// clang-format on

#include <cmath>
#include <limits>
#include <stdexcept>

#include <catch2/catch.hpp>

#include <softmaxlab/fusion.hpp>
#include <softmaxlab/loss.hpp>
#include <softmaxlab/normalized.hpp>
#include <softmaxlab/random.hpp>
#include <softmaxlab/softmax.hpp>

namespace sml = softmaxlab;

// fuzz_normalized: embeddings and class weights with D = 0 columns made normalized_rows and the
// backward take row blocks of an N x 0 matrix (a null pointer plus an offset: UBSan's "applying
// non-zero offset to null pointer"). Every row of a D = 0 matrix is the zero vector, so the
// header's zero-row rules apply: logits 0, uniform probabilities, zero gradients.
TEMPLATE_TEST_CASE("NormalizedSoftmax with zero-dimensional embeddings", "[regression][normalized]",
                   float, double) {
  using Mat = Eigen::Matrix<TestType, Eigen::Dynamic, Eigen::Dynamic>;
  const Mat e(3, 0), w(4, 0);
  const sml::NormalizedSoftmax ns(10.0, sml::Margin::arcface(0.5));
  const Eigen::VectorXi labels = (Eigen::VectorXi(3) << 0, 3, 1).finished();
  const auto z = ns.logits(e, w, labels);
  REQUIRE(z.rows() == 3);
  REQUIRE(z.cols() == 4);
  for (Eigen::Index n = 0; n < 3; ++n) {
    for (Eigen::Index c = 0; c < 4; ++c) {
      // cos = 0 everywhere; the target gets ArcFace's margin at t = pi/2: s cos(pi/2 + m).
      const double want = c == labels(n) ? 10.0 * std::cos(3.14159265358979323846 / 2 + 0.5) : 0.0;
      CHECK(static_cast<double>(z(n, c)) == Approx(want).margin(1e-5));
    }
  }
  const auto p = ns(e, w);
  CHECK((p.array() == TestType(0.25)).all());
  const Mat dz = Mat::Ones(3, 4);
  const auto grads = ns.logits_backward(e, w, labels, dz);
  CHECK(grads.first.rows() == 3);
  CHECK(grads.first.cols() == 0);
  CHECK(grads.second.rows() == 4);
  CHECK(grads.second.cols() == 0);
  const Eigen::VectorXi classes = (Eigen::VectorXi(3) << 0, 1, 0).finished();
  const Mat protos = sml::NormalizedSoftmax::prototypes(e, classes, 2);
  CHECK(protos.rows() == 2);
  CHECK(protos.cols() == 0);
  const Eigen::Matrix<Eigen::Index, Eigen::Dynamic, 1> cls = sml::NormalizedSoftmax::classify(e, w);
  CHECK((cls.array() == 0).all());  // all cosines 0: the first class
}

// fuzz_soft_fusion: a +inf tgt entry where src is -inf gave inf + (-inf) = NaN, and the whole row
// NaN; fusion.hpp says a -inf entry of either input masks that output entry. Likewise an entry
// that src's log_softmax sends to -inf (beside a +inf src entry) is masked against a +inf tgt.
TEMPLATE_TEST_CASE("SoftFusion masks a -inf src entry against a +inf tgt entry",
                   "[regression][fusion]", float, double) {
  using Vec = Eigen::Matrix<TestType, Eigen::Dynamic, 1>;
  const TestType inf = std::numeric_limits<TestType>::infinity();
  const sml::SoftFusion soft(1.0);
  const Vec y = soft((Vec(2) << inf, 0).finished(), (Vec(2) << -inf, 0).finished());
  CHECK(y(0) == -inf);
  CHECK(y(1) == 0);
  const Vec y2 = soft((Vec(3) << inf, 1, 0).finished(), (Vec(3) << 0, inf, 0).finished());
  CHECK(y2(0) == -inf);
  CHECK(y2(1) == 0);
  CHECK(y2(2) == -inf);
  const Vec y3 = soft((Vec(2) << std::numeric_limits<TestType>::quiet_NaN(), 0).finished(),
                      (Vec(2) << -inf, 0).finished());
  CHECK(std::isnan(y3(0)));  // a NaN tgt still makes the row NaN
  CHECK(std::isnan(y3(1)));
  const auto g = soft.backward((Vec(2) << inf, 0).finished(), (Vec(2) << -inf, 0).finished(), y,
                               (Vec(2) << 1, 1).finished());
  CHECK(g.first(0) == 0);
  CHECK(g.second(0) == 0);
  CHECK(std::isfinite(g.first(1)));
}

// fuzz_cross_entropy, fuzz_sparse_cbm_gumbel_loss: logits with N > 0 rows and no columns made
// detail::slice_span offset the null data pointer of the empty matrix (UBSan: applying non-zero
// offset to null pointer). Empty rows hold no terms: the losses are 0 and nothing is written.
TEMPLATE_TEST_CASE("Losses on N x 0 logits", "[regression][loss]", float, double) {
  using Mat = Eigen::Matrix<TestType, Eigen::Dynamic, Eigen::Dynamic>;
  const Mat z(3, 0), t(3, 0);
  Mat grad(3, 0);
  const sml::CrossEntropyLoss ce;
  CHECK(ce(z, t) == 0);
  CHECK(ce(z, t, grad) == 0);
  const Eigen::VectorXi ignored = Eigen::VectorXi::Constant(3, -100);
  CHECK(ce(z, ignored, grad) == 0);
  sml::Philox4x32 gen(1);
  const sml::SparseCbmGumbelLoss cbm;
  CHECK(cbm(z, gen) == 0);
  CHECK(cbm(z, gen, grad) == 0);
}

// fuzz_cross_entropy: an expression over a 1 x C dynamic (column-major) matrix, evaluated into the
// output by detail::evaluate_into, was written with the element stride as the column stride
// times C (a heap-buffer-overflow under ASan, wrong values without it): the vector case assumed
// the elements step along the plain type's inner dimension, which a 1 x C column-major matrix's
// do not.
TEMPLATE_TEST_CASE("Expressions over a one-row dynamic matrix", "[regression][loss][softmax]",
                   float, double) {
  using Mat = Eigen::Matrix<TestType, Eigen::Dynamic, Eigen::Dynamic>;
  Mat z(1, 19);
  for (Eigen::Index k = 0; k < 19; ++k)
    z(0, k) = static_cast<TestType>(k % 5) - 2;
  const Mat t = Mat::Constant(1, 19, TestType(1) / 19);
  const sml::CrossEntropyLoss ce(sml::Reduction::Sum);
  Mat g_plain(1, 19), g_expression(1, 19);
  const double plain = ce(z, t, g_plain);
  const double from_expression = ce(z * TestType(1), t, g_expression);
  CHECK(from_expression == Approx(plain).epsilon(1e-6));
  for (Eigen::Index k = 0; k < 19; ++k)
    CHECK(static_cast<double>(g_expression(0, k)) == Approx(g_plain(0, k)).margin(1e-6));
  Mat y(1, 19);
  sml::Softmax().apply(z * TestType(1), y);
  const Mat y_plain = sml::Softmax()(z);
  for (Eigen::Index k = 0; k < 19; ++k)
    CHECK(static_cast<double>(y(0, k)) == Approx(y_plain(0, k)).margin(1e-6));
}

// fuzz_sparse_cbm_gumbel_loss: a finite tau below 1 / DBL_MAX (or below 1 / FLT_MAX for float
// logits) made the scale 1 / tau infinite and the loss NaN for finite logits, where loss.hpp
// promises a finite loss. tau now has Softmax's temperature range [2^-100, 2^100], as
// GumbelSoftmax's tau does; outside it the constructor throws std::invalid_argument.
TEST_CASE("SparseCbmGumbelLoss keeps 1 / tau finite", "[regression][loss]") {
  CHECK_THROWS_AS(sml::SparseCbmGumbelLoss(1e-300), std::invalid_argument);
  CHECK_THROWS_AS(sml::SparseCbmGumbelLoss(1e-40), std::invalid_argument);
  CHECK_THROWS_AS(sml::SparseCbmGumbelLoss(0x1p101), std::invalid_argument);
  const Eigen::MatrixXf x = (Eigen::MatrixXf(2, 3) << 1, -2, 0.5, 3, 3, -1).finished();
  for (double tau : {0x1p-100, 0x1p100}) {
    sml::Philox4x32 gen(5);
    const double loss = sml::SparseCbmGumbelLoss(tau)(x, gen);
    CHECK(std::isfinite(loss));
    CHECK(loss >= 0);
  }
}

// fuzz_normalized: a scale s past FLT_MAX (finite as a double) overflowed the float embeddings
// scaled by s to inf, and an all-zero class weight then got 0 * inf = NaN logits instead of the
// 0 normalized.hpp promises. s now has the range of an inverse temperature, [2^-100, 2^100]
// (so s cos fits a float); outside it the constructor throws std::invalid_argument.
TEST_CASE("NormalizedSoftmax scale fits a float", "[regression][normalized]") {
  CHECK_THROWS_AS(sml::NormalizedSoftmax(1e300), std::invalid_argument);
  CHECK_THROWS_AS(sml::NormalizedSoftmax(1e-300), std::invalid_argument);
  const sml::NormalizedSoftmax ns(0x1p100);
  const Eigen::MatrixXf e = (Eigen::MatrixXf(1, 3) << -8, 0.5f, 1.5f).finished();
  const Eigen::MatrixXf w = (Eigen::MatrixXf(2, 3) << 0, 0, 0, 1, 2, 3).finished();
  const auto z = ns.logits(e, w);
  CHECK(z(0, 0) == 0);  // the zero class weight
  CHECK(std::isfinite(z(0, 1)));
}
