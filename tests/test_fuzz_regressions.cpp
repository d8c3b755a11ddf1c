// Regression tests for the findings of the libFuzzer targets (tests/fuzz): each case is the
// minimal form of a fuzzer's reproducer, with what the header promises for it. Under the
// sanitizer build (scripts/test.sh sanitize) they also guard against the undefined behaviour the
// fuzzers reported.
// clang-format off
#include "support.hpp"  // first: it configures Eigen (asserts, malloc checks)
// clang-format on

#include <cmath>
#include <limits>

#include <catch2/catch.hpp>

#include <softmaxlab/softmaxlab.hpp>

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
