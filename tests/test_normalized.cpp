// NormalizedSoftmax: parameter checks; logits and probabilities against long double values computed
// here from the exact binary inputs (rows of wildly different norms included); invariance to the
// norms of E and W; each margin against hand-derived values (ArcFace's fallback included); zero
// and non-finite rows; prototype classification of novel classes on a synthetic clustered set.
// clang-format off
#include "support.hpp"  // first: it configures Eigen (asserts, malloc checks)
// clang-format on

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include <catch2/catch.hpp>

#include <softmaxlab/normalized.hpp>
#include <softmaxlab/softmax.hpp>

namespace sml = softmaxlab;
using Index = Eigen::Index;

namespace {

constexpr double kPi = 3.14159265358979323846;

// s cos(e_n, w_c) in long double, straight from the definition.
template <class Mat>
Eigen::Matrix<long double, Eigen::Dynamic, Eigen::Dynamic> exact_logits(const Mat& e, const Mat& w,
                                                                        long double s) {
  using LMat = Eigen::Matrix<long double, Eigen::Dynamic, Eigen::Dynamic>;
  LMat el = e.template cast<long double>(), wl = w.template cast<long double>();
  for (Index i = 0; i < el.rows(); ++i)
    el.row(i) /= std::sqrt(el.row(i).squaredNorm());
  for (Index i = 0; i < wl.rows(); ++i)
    wl.row(i) /= std::sqrt(wl.row(i).squaredNorm());
  return s * el * wl.transpose();
}

// Rows scaled by 2^k, k spread over [-lo, hi]: norms from tiny to huge.
template <class Mat>
void spread_norms(Mat& m, int lo, int hi, std::mt19937& rng) {
  std::uniform_int_distribution<int> k(-lo, hi);
  for (Index i = 0; i < m.rows(); ++i)
    m.row(i) *= std::ldexp(typename Mat::Scalar(1), k(rng));
}

}  // namespace

TEST_CASE("bad scale and margins throw std::invalid_argument naming the value",
          "[normalized][parameters]") {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  for (double s : {0.0, -1.0, nan, inf}) {
    INFO("scale " << s);
    CHECK_THROWS_AS(sml::NormalizedSoftmax(s), std::invalid_argument);
  }
  CHECK_THROWS_WITH(sml::NormalizedSoftmax(-3.5),
                    Catch::Contains("NormalizedSoftmax: scale") && Catch::Contains("-3.5"));
  CHECK_THROWS_WITH(sml::NormalizedSoftmax(20, sml::Margin::cosface(1.5)),
                    Catch::Contains("CosFace margin") && Catch::Contains("1.5"));
  CHECK_THROWS_WITH(sml::NormalizedSoftmax(20, sml::Margin::arcface(-0.1)),
                    Catch::Contains("ArcFace margin") && Catch::Contains("-0.1"));
  CHECK_THROWS_AS(sml::NormalizedSoftmax(20, sml::Margin::arcface(nan)), std::invalid_argument);
  CHECK_THROWS_WITH(sml::NormalizedSoftmax(20, sml::Margin::sphereface(9)),
                    Catch::Contains("SphereFace margin") && Catch::Contains("9"));
  sml::Margin fractional = sml::Margin::sphereface(2);
  fractional.m = 2.5;
  CHECK_THROWS_WITH(sml::NormalizedSoftmax(20, fractional), Catch::Contains("2.5"));
  CHECK(sml::NormalizedSoftmax().scale() == 20);

  const sml::NormalizedSoftmax ns;
  Eigen::MatrixXf e(3, 4), w(5, 3);
  e.setRandom();
  w.setRandom();
  CHECK_THROWS_WITH(ns.logits(e, w), Catch::Contains("same number of columns"));
  Eigen::MatrixXf w4 = Eigen::MatrixXf::Random(5, 4);
  Eigen::VectorXi labels(3);
  labels << 0, 5, 1;
  CHECK_THROWS_WITH(ns.logits(e, w4, labels),
                    Catch::Contains("label of row 1") && Catch::Contains("got 5"));
  CHECK_THROWS_AS(ns.logits(e, w4, Eigen::VectorXi::Zero(2)), std::invalid_argument);
}

TEMPLATE_TEST_CASE("logits and probabilities against long double, norms from tiny to huge",
                   "[normalized][accuracy]", float, double) {
  using Mat = Eigen::Matrix<TestType, Eigen::Dynamic, Eigen::Dynamic>;
  const Index n = 37, c = 23, d = 61;
  const double eps = std::numeric_limits<TestType>::epsilon();
  std::mt19937 rng(9);
  Mat e = Mat::Random(n, d), w = Mat::Random(c, d);
  // float: 2^-60..2^60, whose squares leave float's range; double: 2^-600..2^600.
  const int span = std::is_same_v<TestType, float> ? 60 : 600;
  spread_norms(e, span, span, rng);
  spread_norms(w, span, span, rng);
  softmaxlab_test::Worst logit_worst, prob_worst;
  for (double s : {1.0, 20.0, 64.0}) {
    const sml::NormalizedSoftmax ns(s);
    const Mat logits = ns.logits(e, w);
    const Mat probs = ns(e, w);
    const auto exact = exact_logits(e, w, s);
    REQUIRE(logits.rows() == n);
    REQUIRE(logits.cols() == c);
    for (Index i = 0; i < n; ++i) {
      // Logits: absolute error in units of s eps; a D-term dot product of unit vectors.
      for (Index j = 0; j < c; ++j) {
        const double err = static_cast<double>(std::fabs(logits(i, j) - exact(i, j)) / (s * eps));
        logit_worst.update(err, double(d + 2), [&](std::ostream& o) {
          o << "s " << s << " (" << i << ", " << j << ") got " << logits(i, j) << " exact "
            << static_cast<double>(exact(i, j));
        });
      }
      // Probabilities: exact softmax of the exact logits. The logits' absolute error delta moves
      // each probability by a relative 2 delta at most; Softmax's own bound comes on top.
      const long double m = exact.row(i).maxCoeff();
      const long double sum = (exact.row(i).array() - m).exp().sum();
      for (Index j = 0; j < c; ++j) {
        const long double p = std::exp(exact(i, j) - m) / sum;
        const double arg = static_cast<double>(m - exact(i, j));
        const double err = softmaxlab_test::relative_error_eps(
            probs(i, j), static_cast<double>(p), static_cast<double>(p - static_cast<double>(p)));
        prob_worst.update(err, 4 * (1 + arg) + 2 * s * (d + 2), [&](std::ostream& o) {
          o << "s " << s << " (" << i << ", " << j << ") got " << probs(i, j) << " exact "
            << static_cast<double>(p);
        });
      }
      CHECK(std::fabs(probs.row(i).template cast<double>().sum() - 1) < 2e-6);
    }
  }
  INFO("logits: " << logit_worst.report() << " (units of s eps)");
  INFO("probabilities: " << prob_worst.report());
  CHECK(logit_worst.ratio <= 1);
  CHECK(prob_worst.ratio <= 1);
}

TEMPLATE_TEST_CASE("invariant to the norms of the rows of E and W", "[normalized][invariance]",
                   float, double) {
  using Mat = Eigen::Matrix<TestType, Eigen::Dynamic, Eigen::Dynamic>;
  const Mat e = Mat::Random(20, 33), w = Mat::Random(11, 33);
  const sml::NormalizedSoftmax ns(16);
  const Mat base = ns.logits(e, w);
  // Powers of two: normalization undoes them exactly, so the logits are bit-identical.
  std::mt19937 rng(4);
  Mat e2 = e, w2 = w;
  spread_norms(e2, 30, 30, rng);
  spread_norms(w2, 30, 30, rng);
  CHECK((ns.logits(e2, w2).array() == base.array()).all());
  // Arbitrary positive factors: equal within a few roundings.
  Mat e3 = e, w3 = w;
  std::uniform_real_distribution<double> factor(1e-3, 1e3);
  for (Index i = 0; i < e3.rows(); ++i)
    e3.row(i) *= static_cast<TestType>(factor(rng));
  for (Index i = 0; i < w3.rows(); ++i)
    w3.row(i) *= static_cast<TestType>(factor(rng));
  const TestType diff = (ns.logits(e3, w3) - base).cwiseAbs().maxCoeff();
  INFO("max logit change " << diff << " (s eps = " << 16 * std::numeric_limits<TestType>::epsilon()
                           << ")");
  CHECK(diff <= 8 * 16 * std::numeric_limits<TestType>::epsilon());
  CHECK(((ns(e3, w3) - ns(e, w)).cwiseAbs().array() <= 1e-5).all());
}

TEMPLATE_TEST_CASE("margins on the target class against hand-derived values",
                   "[normalized][margin]", float, double) {
  using Mat = Eigen::Matrix<TestType, Eigen::Dynamic, Eigen::Dynamic>;
  // Embedding n sits at angle a_n from class 0's weight (1, 0); class 1's weight is (0, 1).
  const std::vector<double> angles = {kPi / 3, kPi / 6, 2 * kPi / 3, 2.9, 0.0};
  const Index n = static_cast<Index>(angles.size());
  Mat e(n, 2), w(2, 2);
  for (Index i = 0; i < n; ++i) {
    e(i, 0) = static_cast<TestType>(3 * std::cos(angles[static_cast<std::size_t>(i)]));
    e(i, 1) = static_cast<TestType>(3 * std::sin(angles[static_cast<std::size_t>(i)]));
  }
  w << 2, 0, 0, 5;
  Eigen::VectorXi target = Eigen::VectorXi::Zero(n);
  const double tol = 64 * std::numeric_limits<TestType>::epsilon();
  auto check_targets = [&](const sml::NormalizedSoftmax& ns, const std::vector<double>& expected) {
    const Mat plain = ns.logits(e, w);
    const Mat with = ns.logits(e, w, target);
    for (Index i = 0; i < n; ++i) {
      INFO("angle " << angles[static_cast<std::size_t>(i)]);
      CHECK(std::fabs(with(i, 0) - expected[static_cast<std::size_t>(i)]) <= tol * ns.scale());
      CHECK(with(i, 1) == plain(i, 1));  // other classes keep s cos
    }
  };
  // The angles as used (cos and sin of the rounded inputs) differ from the nominal ones by an
  // ulp or so; tol covers that.
  SECTION("CosFace s (cos t - m), s = 30, m = 0.35") {
    check_targets(sml::NormalizedSoftmax(30, sml::Margin::cosface(0.35)),
                  {30 * (0.5 - 0.35), 30 * (std::sqrt(3.0) / 2 - 0.35), 30 * (-0.5 - 0.35),
                   30 * (std::cos(2.9) - 0.35), 30 * (1 - 0.35)});
  }
  SECTION("ArcFace s cos(t + m), falling back to s (cos t - m sin m) past t = pi - m") {
    // m = 0.5: pi/3 + 0.5 = 1.5472 -> cos = 0.0235 6; pi/6 + 0.5 -> cos(1.0236) = 0.5203;
    // 2pi/3 + 0.5 = 2.5944 < pi: cos = -0.8529; t = 2.9 > pi - 0.5 = 2.6416: the fallback
    // cos(2.9) - 0.5 sin(0.5) = -0.9710 - 0.2397; t = 0: cos(0.5).
    check_targets(sml::NormalizedSoftmax(64, sml::Margin::arcface(0.5)),
                  {64 * std::cos(kPi / 3 + 0.5), 64 * std::cos(kPi / 6 + 0.5),
                   64 * std::cos(2 * kPi / 3 + 0.5), 64 * (std::cos(2.9) - 0.5 * std::sin(0.5)),
                   64 * std::cos(0.5)});
    // The fallback branch keeps the target logit below the no-margin one and monotone.
    const sml::NormalizedSoftmax ns(64, sml::Margin::arcface(0.5));
    const Mat with = ns.logits(e, w, target), plain = ns.logits(e, w);
    CHECK((with.col(0).array() < plain.col(0).array()).all());
  }
  SECTION("SphereFace psi(t) = (-1)^k cos(m t) - 2k, m = 4 and m = 2") {
    // m = 4: pi/3 lies in [pi/4, pi/2] (k = 1): -cos(4pi/3) - 2 = 0.5 - 2 = -1.5;
    //        pi/6 in [0, pi/4] (k = 0): cos(2pi/3) = -0.5;
    //        2pi/3 in [pi/2, 3pi/4] (k = 2): cos(8pi/3) - 4 = -0.5 - 4 = -4.5;
    //        2.9 in [3pi/4, pi] (k = 3): -cos(11.6) - 6; 0: cos 0 = 1.
    check_targets(sml::NormalizedSoftmax(10, sml::Margin::sphereface(4)),
                  {10 * -1.5, 10 * -0.5, 10 * -4.5, 10 * (-std::cos(4 * 2.9) - 6), 10 * 1.0});
    // m = 2: pi/3 (k = 0): cos(2pi/3) = -0.5; pi/6: cos(pi/3) = 0.5; 2pi/3 (k = 1):
    //        -cos(4pi/3) - 2 = -1.5; 2.9 (k = 1): -cos(5.8) - 2; 0: 1.
    check_targets(sml::NormalizedSoftmax(10, sml::Margin::sphereface(2)),
                  {10 * -0.5, 10 * 0.5, 10 * -1.5, 10 * (-std::cos(5.8) - 2), 10 * 1.0});
  }
  SECTION("no margin: labels change nothing; probabilities use the margined logits") {
    const sml::NormalizedSoftmax ns(20);
    CHECK((ns.logits(e, w, target).array() == ns.logits(e, w).array()).all());
    const sml::NormalizedSoftmax cos_face(20, sml::Margin::cosface(0.2));
    const Mat p = cos_face(e, w, target);
    const Mat expected = sml::Softmax().rowwise(cos_face.logits(e, w, target));
    CHECK(((p - expected).cwiseAbs().array() == 0).all());
  }
}

TEMPLATE_TEST_CASE("zero rows give cosine 0, non-finite rows give NaN", "[normalized][special]",
                   float, double) {
  using Mat = Eigen::Matrix<TestType, Eigen::Dynamic, Eigen::Dynamic>;
  Mat e = Mat::Random(4, 6), w = Mat::Random(5, 6);
  e.row(1).setZero();
  w.row(3).setZero();
  e(2, 4) = std::numeric_limits<TestType>::infinity();
  const sml::NormalizedSoftmax ns(20);
  const Mat logits = ns.logits(e, w);
  const Mat probs = ns(e, w);
  CHECK((logits.row(1).array() == 0).all());
  CHECK(((probs.row(1).array() - TestType(0.2)).abs() <= 1e-6).all());  // uniform over 5 classes
  CHECK(logits(0, 3) == 0);
  CHECK(logits(3, 3) == 0);
  CHECK(logits.row(2).array().isNaN().all());
  CHECK(probs.row(2).array().isNaN().all());
  CHECK(std::isfinite(logits(0, 0)));
  CHECK(std::isfinite(probs(3, 2)));
  // An empty problem gives an empty result.
  CHECK(ns.logits(Mat(0, 6), w).size() == 0);
  // Tiny but non-zero rows still have a direction (no underflow to a zero norm).
  Mat tiny = e.topRows(1) * (std::numeric_limits<TestType>::denorm_min() * TestType(1 << 20));
  CHECK(((ns.logits(tiny, w) - ns.logits(e.topRows(1), w)).cwiseAbs().array() <= 0.01).all());
}

TEST_CASE("prototype classification of novel classes on a synthetic clustered set",
          "[normalized][prototypes]") {
  // Ten unseen classes: unit centers in 64 dims, samples = center + Gaussian noise of norm ~0.8,
  // scaled by random norms (the direction is what matters). Five labelled shots per class.
  const Index classes = 10, dims = 64, shots = 5, queries = 100;
  std::mt19937 rng(2021);
  std::normal_distribution<float> normal(0, 1);
  std::uniform_real_distribution<float> norm(0.5f, 5.0f);
  Eigen::MatrixXf centers(classes, dims);
  for (Index c = 0; c < classes; ++c) {
    for (Index k = 0; k < dims; ++k)
      centers(c, k) = normal(rng);
    centers.row(c).normalize();
  }
  auto draw = [&](Index per_class, Eigen::MatrixXf& x, Eigen::VectorXi& labels) {
    x.resize(classes * per_class, dims);
    labels.resize(classes * per_class);
    for (Index c = 0; c < classes; ++c) {
      for (Index i = 0; i < per_class; ++i) {
        const Index r = c * per_class + i;
        for (Index k = 0; k < dims; ++k)
          x(r, k) = centers(c, k) + 0.1f * normal(rng);
        x.row(r) *= norm(rng);
        labels(r) = static_cast<int>(c);
      }
    }
  };
  Eigen::MatrixXf support, query;
  Eigen::VectorXi support_labels, query_labels;
  draw(shots, support, support_labels);
  draw(queries, query, query_labels);

  const Eigen::MatrixXf protos =
      sml::NormalizedSoftmax::prototypes(support, support_labels, classes);
  REQUIRE(protos.rows() == classes);
  CHECK(((protos.rowwise().norm().array() - 1).abs() < 1e-6f).all());
  // Each prototype points close to its class center.
  for (Index c = 0; c < classes; ++c)
    CHECK(protos.row(c).dot(centers.row(c)) > 0.9f);

  const auto predicted = sml::NormalizedSoftmax::classify(query, protos);
  Index correct = 0;
  for (Index i = 0; i < query.rows(); ++i)
    correct += predicted(i) == query_labels(i);
  const double accuracy = double(correct) / double(query.rows());
  INFO("prototype accuracy " << accuracy << " on " << query.rows() << " queries");
  CHECK(accuracy > 0.95);

  // classify() agrees with the argmax of the normalized-softmax probabilities.
  const Eigen::MatrixXf probs = sml::NormalizedSoftmax(20)(query, protos);
  for (Index i = 0; i < query.rows(); ++i) {
    Index at;
    probs.row(i).maxCoeff(&at);
    REQUIRE(at == predicted(i));
  }

  // Errors name what is wrong.
  Eigen::VectorXi missing = support_labels;
  for (Index i = 0; i < missing.size(); ++i)
    missing(i) = missing(i) == 7 ? 6 : missing(i);
  CHECK_THROWS_WITH(sml::NormalizedSoftmax::prototypes(support, missing, classes),
                    Catch::Contains("class 7"));
  CHECK_THROWS_AS(sml::NormalizedSoftmax::prototypes(support, support_labels, 0),
                  std::invalid_argument);
}
