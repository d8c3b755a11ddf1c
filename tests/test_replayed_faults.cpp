// Regression tests for the faults found by replaying other libraries' bug reports on softmaxlab
// (issue #11): each case is the failing input with its right value computed here, independently of
// the code under test, in long double (whose 64-bit significand and 15-bit exponent hold every
// intermediate exactly enough: the references below are within 1e-15 relative of the truth).
//   1. shifted differences x_i - max that overflow before a temperature, tau or weight scales
//      them back into range (log forms, the normalizer's log output, fusions, losses);
//   2. margin gradients of NormalizedSoftmax as the target angle goes to 0 or pi;
//   3. subnormal (and huge) embeddings and class weights, forward and backward;
//   and, from a second round (issue 28), an attention sink lost on a row with no visible key,
//   Sparsemax's support at ties, Entmax near alpha = 1, LogSoftmax's backward at overflow and its
//   bound on long rows, and a sampler that drew tokens of probability 0.
// clang-format off
#include "support.hpp"  // first: it configures Eigen (asserts, malloc checks)
// clang-format on

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <iostream>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>

#include <softmaxlab/attention.hpp>
#include <softmaxlab/entmax_maps.hpp>
#include <softmaxlab/fusion.hpp>
#include <softmaxlab/loss.hpp>
#include <softmaxlab/normalized.hpp>
#include <softmaxlab/random.hpp>
#include <softmaxlab/sampling.hpp>
#include <softmaxlab/single_pass.hpp>
#include <softmaxlab/softmax.hpp>

namespace sml = softmaxlab;

namespace {

using LD = long double;

template <class Scalar>
using Vec = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

// log_softmax(x / T) in long double: support/softmax_reference.hpp.
std::vector<LD> reference_log_softmax(const std::vector<LD>& x, LD temperature) {
  return softmaxlab_test::exact_log_softmax(x, temperature);
}

// |y - exact| within LogSoftmax's bound 4 eps (1 + |exact|), where exact is rounded to Scalar
// (an exact value beyond the range must come out as that infinity).
template <class Scalar>
void check_log_value(Scalar y, LD exact, const char* what, int i) {
  const LD rounded = static_cast<Scalar>(exact);
  INFO(what << "[" << i << "]: got " << y << ", exact " << static_cast<double>(exact));
  if (std::isinf(rounded)) {
    CHECK(y == static_cast<Scalar>(rounded));
    return;
  }
  REQUIRE(std::isfinite(y));
  const LD eps = std::numeric_limits<Scalar>::epsilon();
  const LD err = std::fabs(static_cast<LD>(y) - exact) / (eps * (1 + std::fabs(exact)));
  INFO("error " << static_cast<double>(err) << " eps (bound 4)");
  CHECK(err <= 4);
}

}  // namespace

// ---- 1. Shifted differences that overflow before they are scaled ----------------------------

TEMPLATE_TEST_CASE("LogSoftmax of (max, -max): the scaled difference fits although x - m does not",
                   "[regression][softmax]", float, double) {
  using Scalar = TestType;
  const Scalar big = std::numeric_limits<Scalar>::max();
  const std::vector<LD> x{big, -big};
  // Both ends of the temperature range [2^-100, 2^100], and values between.
  for (double t : {0x1p-100, 0.5, 1.0, 2.0, 3.0, 1e10, 0x1p100}) {
    const auto exact = reference_log_softmax(x, static_cast<LD>(t));
    const sml::LogSoftmax f(t);
    Vec<Scalar> v(2);
    v << big, -big;
    const Vec<Scalar> y = f(v);
    for (int i = 0; i < 2; ++i)
      check_log_value(y(i), exact[i], "LogSoftmax vector", i);

    // Rowwise and colwise (a strided row of a column-major matrix), and in place.
    Eigen::Matrix<Scalar, 3, 2> rows;
    rows << big, -big, Scalar(1), Scalar(2), big, -big;
    const Eigen::Matrix<Scalar, 3, 2> r = f.rowwise(rows);
    const Eigen::Matrix<Scalar, 2, 3> c = f.colwise(rows.transpose().eval());
    f.rowwise(rows, rows);
    for (int i = 0; i < 2; ++i) {
      check_log_value(r(0, i), exact[i], "LogSoftmax rowwise", i);
      check_log_value(r(2, i), exact[i], "LogSoftmax rowwise", i);
      check_log_value(c(i, 0), exact[i], "LogSoftmax colwise", i);
      check_log_value(rows(0, i), exact[i], "LogSoftmax in place", i);
    }

    // The normalizer's log output, over two chunks merged.
    sml::OnlineNormalizer<Scalar> a(t), b(t);
    a.update(v.head(1));
    b.update(v.tail(1));
    a.merge(b);
    Vec<Scalar> out(2);
    a.write_log(v.head(1), out.head(1));
    a.write_log(v.tail(1), out.tail(1));
    for (int i = 0; i < 2; ++i)
      check_log_value(out(i), exact[i], "OnlineNormalizer::write_log", i);
    CHECK(a.log_sum_exp() == Approx(static_cast<double>(big / static_cast<LD>(t))));
  }
}

TEMPLATE_TEST_CASE("HardFusion weighs an overflowing shifted difference before it is formed",
                   "[regression][fusion]", float, double) {
  using Scalar = TestType;
  const Scalar big = std::numeric_limits<Scalar>::max();
  for (double lambda : {0.5, 0.25}) {
    Vec<Scalar> tgt(2), src(2);
    tgt << big, -big;
    src << Scalar(0), Scalar(0);
    const auto lt = reference_log_softmax({big, -big}, 1);
    const auto ls = reference_log_softmax({0, 0}, 1);
    const Vec<Scalar> y = sml::HardFusion(lambda)(tgt, src);
    for (int i = 0; i < 2; ++i) {
      const LD exact = static_cast<LD>(lambda) * lt[i] + (1 - static_cast<LD>(lambda)) * ls[i];
      check_log_value(y(i), exact, "HardFusion", i);
    }
  }
}

TEMPLATE_TEST_CASE("SoftFusion renormalizes overflowing shifted differences exactly",
                   "[regression][fusion]", float, double) {
  using Scalar = TestType;
  const Scalar big = std::numeric_limits<Scalar>::max();
  // y = log_softmax(tgt + log_softmax(tau src)), all in long double.
  auto reference = [](const std::vector<LD>& tgt, const std::vector<LD>& src, LD tau) {
    auto ls = reference_log_softmax(src, 1 / tau);
    std::vector<LD> z;
    for (std::size_t i = 0; i < tgt.size(); ++i)
      z.push_back(tgt[i] + ls[i]);
    return reference_log_softmax(z, 1);
  };
  struct Case {
    std::vector<LD> tgt, src;
    double tau;
  };
  const std::vector<Case> cases{
      {{0, 0}, {big, -big}, 0.5},                // the inner difference overflows
      {{-big / 2, -big / 2}, {big, -big}, 0.5},  // and tgt + log_softmax(tau src) too
      {{-big / 2, -big / 2, 0}, {big, -big, 0}, 0.25},
      // log_softmax(tau src) itself beyond the range, brought back by tgt: finite outputs
      {{big, 0}, {-big, big}, 1.0},                                 // [-big, 0]
      {{big, big / 2, 0}, {-big, -big / 2, big}, 0.5},              // [-log 2, -big / 4, -log 2]
      {{0, big}, {std::ldexp(big, -99), 0}, std::ldexp(1.0, 100)},  // k = 102: [0, -big]
      {{big, -big, 0, -INFINITY}, {-big, big, 0, 0}, 1.0},          // one masked by tgt
  };
  for (const Case& c : cases) {
    const auto exact = reference(c.tgt, c.src, static_cast<LD>(c.tau));
    const auto n = static_cast<Eigen::Index>(c.tgt.size());
    Vec<Scalar> tgt(n), src(n);
    for (Eigen::Index i = 0; i < n; ++i) {
      tgt(i) = static_cast<Scalar>(c.tgt[i]);
      src(i) = static_cast<Scalar>(c.src[i]);
    }
    const Vec<Scalar> y = sml::SoftFusion(c.tau)(tgt, src);
    for (Eigen::Index i = 0; i < n; ++i)
      check_log_value(y(i), exact[i], "SoftFusion", static_cast<int>(i));
    // In place on tgt gives the same bits.
    sml::SoftFusion(c.tau).apply(tgt, src, tgt);
    CHECK(softmaxlab_test::same(tgt, y));
  }
}

TEST_CASE("CrossEntropyLoss of float (FLT_MAX, -FLT_MAX) is the finite double 2 FLT_MAX",
          "[regression][loss]") {
  const float big = std::numeric_limits<float>::max();
  Eigen::MatrixXf z(2, 2);
  z << big, -big, -big, big;
  const std::vector<int> labels{1, 1};
  // Row 0: -log_softmax = 2 FLT_MAX at the label; row 1: 0. Sum and mean in double.
  const LD exact_sum = 2 * static_cast<LD>(big);
  CHECK(sml::CrossEntropyLoss(sml::Reduction::Sum)(z, labels)
        == Approx(static_cast<double>(exact_sum)).epsilon(1e-15));
  CHECK(sml::CrossEntropyLoss()(z, labels)
        == Approx(static_cast<double>(exact_sum / 2)).epsilon(1e-15));
  // The gradient is Softmax's: exact one-hot differences.
  Eigen::MatrixXf g(2, 2);
  const sml::CrossEntropyLoss sum_loss(sml::Reduction::Sum);
  CHECK(sum_loss(z, labels, g) == Approx(static_cast<double>(exact_sum)).epsilon(1e-15));
  CHECK(g(0, 0) == 1.0f);
  CHECK(g(0, 1) == -1.0f);
  CHECK(g(1, 0) == 0.0f);
  CHECK(g(1, 1) == 0.0f);
  // Double logits: the documented limit, the loss 2 DBL_MAX is beyond double.
  Eigen::MatrixXd zd(1, 2);
  zd << std::numeric_limits<double>::max(), -std::numeric_limits<double>::max();
  CHECK(sml::CrossEntropyLoss()(zd, std::vector<int>{1})
        == std::numeric_limits<double>::infinity());
}

TEST_CASE("SparseCbmGumbelLoss at tau = 2^100 of (FLT_MAX, -FLT_MAX) is finite",
          "[regression][loss]") {
  const float big = std::numeric_limits<float>::max();
  Eigen::MatrixXf x(1, 2);
  x << big, -big;
  // The Gumbel noise (|g| < 40) vanishes against FLT_MAX (half an ulp is 2^103), so the perturbed
  // row is x itself: loss = (0 + 2 FLT_MAX / tau) / 2, gradient (K y - 1) / (N K tau), y = (1, 0).
  const LD tau = 0x1p100L;
  sml::Philox4x32 gen(7);
  Eigen::MatrixXf g(1, 2);
  const double loss = sml::SparseCbmGumbelLoss(0x1p100)(x, gen, g);
  CHECK(loss == Approx(static_cast<double>(static_cast<LD>(big) / tau)).epsilon(1e-15));
  CHECK(g(0, 0) == Approx(static_cast<double>(1 / (2 * tau))).epsilon(1e-6));
  CHECK(g(0, 1) == Approx(static_cast<double>(-1 / (2 * tau))).epsilon(1e-6));
}

// ---- 2. Margin gradients as the target angle goes to 0 and pi -------------------------------

namespace {

constexpr LD kPi = 3.141592653589793238462643383279502884L;

// -psi'(t) of each margin, straight from the header's formulas, in long double. Near pi the sines
// are taken at delta = pi - t (given separately, exact from the inputs): long double's pi and t
// carry an absolute error of ~1e-19, which near pi would otherwise dominate the reference.
LD minus_psi_prime(const sml::Margin& margin, LD t, LD delta) {
  const LD m = static_cast<LD>(margin.m);
  const bool near_pi = t > kPi / 2;
  const LD sin_t = near_pi ? std::sin(delta) : std::sin(t);
  switch (margin.kind) {
    case sml::Margin::Kind::None:
    case sml::Margin::Kind::CosFace:
      return sin_t;
    case sml::Margin::Kind::ArcFace:
      if (t + m > kPi)
        return sin_t;
      return near_pi ? std::sin(delta - m) : std::sin(t + m);  // sin(t + m) = sin(delta - m)
    case sml::Margin::Kind::SphereFace: {
      const int mi = static_cast<int>(margin.m);
      const int k = std::min(mi - 1, static_cast<int>(std::floor(t * mi / kPi)));
      // sin(m t) = sin(m pi - m delta) = -(-1)^m sin(m delta)
      const LD sin_mt = near_pi ? (mi % 2 == 0 ? -1 : 1) * std::sin(mi * delta) : std::sin(mi * t);
      return ((k % 2 == 0) ? 1 : -1) * mi * sin_mt;
    }
  }
  return 0;
}

// max_i |got_i - want_i| / max_i |want_i| (the norm-wise relative error of the gradient tests).
template <class A, class B>
double normwise_error(const A& got, const B& want) {
  LD err = 0, scale = 0;
  for (Eigen::Index i = 0; i < want.size(); ++i) {
    err = std::max(err, std::fabs(static_cast<LD>(got(i)) - want(i)));
    scale = std::max(scale, std::fabs(want(i)));
  }
  return static_cast<double>(err / scale);
}

}  // namespace

TEST_CASE("NormalizedSoftmax margin gradients keep their accuracy as theta -> 0 and theta -> pi",
          "[regression][normalized]") {
  const double s = 30;
  const std::vector<sml::Margin> margins{sml::Margin::arcface(0.5),  sml::Margin::arcface(0.0),
                                         sml::Margin::cosface(0.35), sml::Margin::sphereface(2),
                                         sml::Margin::sphereface(3), sml::Margin::sphereface(4)};
  const std::vector<LD> angles{1e-12L, 1e-9L,       1.5e-8L,     1e-7L,      0.3L,
                               2.0L,   kPi - 1e-4L, kPi - 1e-6L, kPi - 1e-8L};
  // The component along the gradient's direction (the large one) must be exact to 1e-12; the
  // small one, of size |h| sin t or |h| sin(pi - t), carries an absolute error of about |h| eps /
  // sin t from the rounded unit vectors, so the norm-wise error is at most about sqrt(eps).
  double worst = 0, worst_main = 0;
  for (const auto& margin : margins) {
    const sml::NormalizedSoftmax ns(s, margin);
    for (LD t0 : angles) {
      // E = (cos t, sin t) as doubles, W = (1, 0), label 0, dZ = 1 on the target logit.
      Eigen::MatrixXd e(1, 2), w(1, 2), dz(1, 1);
      e << static_cast<double>(std::cos(t0)), static_cast<double>(std::sin(t0));
      w << 1.0, 0.0;
      dz << 1.0;
      const Eigen::VectorXi labels = Eigen::VectorXi::Zero(1);
      const auto [de, dw] = ns.logits_backward(e, w, labels, dz);
      // The exact gradient at the binary inputs: t = atan2(e_y, e_x), |e| = hypot.
      const LD ex = e(0, 0), ey = e(0, 1), norm = std::hypot(ex, ey);
      const LD t = std::atan2(ey, ex), h = s * minus_psi_prime(margin, t, std::atan2(ey, -ex));
      // d/de = h q / (|q| |e|), q / |q| = (sin t, -cos t); d/dw = h (0, 1) (|w| = 1).
      Eigen::Matrix<LD, 1, 2> want_e, want_w;
      want_e << h * std::sin(t) / norm, -h * std::cos(t) / norm;
      want_w << 0, h;
      const double err_e = normwise_error(de, want_e), err_w = normwise_error(dw, want_w);
      INFO("margin kind " << static_cast<int>(margin.kind) << " m = " << margin.m
                          << ", t = " << static_cast<double>(t) << ": dE = (" << de(0, 0) << ", "
                          << de(0, 1) << "), want (" << static_cast<double>(want_e(0)) << ", "
                          << static_cast<double>(want_e(1)) << "); errors " << err_e << ", "
                          << err_w);
      const double main_e =
          static_cast<double>(std::fabs(de(0, 1) - want_e(1)) / std::fabs(want_e(1)));
      CHECK(main_e < 1e-12);
      CHECK(err_e < 2e-8);
      CHECK(err_w < 1e-12);
      worst = std::max({worst, err_e, err_w});
      worst_main = std::max(worst_main, main_e);
    }
  }
  std::cout << "margin gradients near theta = 0 and pi: worst norm-wise relative error " << worst
            << " (bound 2e-8), worst relative error of the main component " << worst_main
            << " (bound 1e-12)\n";
}

TEST_CASE("NormalizedSoftmaxLoss gradients with ArcFace at theta = 1e-9", "[regression][loss]") {
  // Two classes, W = I, label 0, E = (cos t, sin t): the loss goes through the same target path.
  // s = 2 keeps both probabilities away from 0 and 1, so dL/dz = p - onehot carries no
  // cancellation of its own and the test measures the margin path alone.
  const double s = 2, m = 0.5;
  const LD t0 = 1e-9L;
  Eigen::MatrixXd e(1, 2), w = Eigen::MatrixXd::Identity(2, 2);
  e << static_cast<double>(std::cos(t0)), static_cast<double>(std::sin(t0));
  const Eigen::VectorXi labels = Eigen::VectorXi::Zero(1);
  const sml::NormalizedSoftmaxLoss loss(sml::NormalizedSoftmax(s, sml::Margin::arcface(m)));
  Eigen::MatrixXd de(1, 2), dw(2, 2);
  const double value = loss(e, w, labels, de, dw);
  // Exact: z0 = s cos(t + m), z1 = s sin t; dL/dz = softmax(z) - (1, 0) (Mean over one sample).
  const LD ex = e(0, 0), ey = e(0, 1), norm = std::hypot(ex, ey), t = std::atan2(ey, ex);
  const LD z0 = s * std::cos(t + m), z1 = s * std::sin(t);
  const LD mx = std::max(z0, z1), lse = mx + std::log(std::exp(z0 - mx) + std::exp(z1 - mx));
  const LD d0 = std::exp(z0 - lse) - 1, d1 = std::exp(z1 - lse);
  CHECK(value == Approx(static_cast<double>(lse - z0)).epsilon(1e-14));
  // dE = d0 s sin(t + m) (sin t, -cos t) / |e| + d1 s (w1^ - sin t e^) / |e|, e^ = (cos t, sin t).
  Eigen::Matrix<LD, 1, 2> want_e, want_w0, want_w1;
  want_e << (d0 * s * std::sin(t + m) * std::sin(t) + d1 * s * (0 - std::sin(t) * std::cos(t)))
                / norm,
      (-d0 * s * std::sin(t + m) * std::cos(t) + d1 * s * (1 - std::sin(t) * std::sin(t))) / norm;
  // dW0 = d0 s sin(t + m) (0, 1); dW1 = d1 s (e^ - sin t w1^) = d1 s (cos t, 0).
  want_w0 << 0, d0 * s * std::sin(t + m);
  want_w1 << d1 * s * std::cos(t), 0;
  const Eigen::RowVector2d dw0 = dw.row(0), dw1 = dw.row(1);
  INFO("dE = (" << de(0, 0) << ", " << de(0, 1) << ")");
  CHECK(normwise_error(de, want_e) < 2e-8);
  CHECK(std::fabs(de(0, 1) - want_e(1)) / std::fabs(want_e(1)) < 1e-12);
  CHECK(normwise_error(dw0, want_w0) < 1e-12);
  CHECK(normwise_error(dw1, want_w1) < 1e-12);
}

// ---- 3. Subnormal and huge embeddings --------------------------------------------------------

TEST_CASE("NormalizedSoftmax keeps the direction of subnormal embeddings and class weights",
          "[regression][normalized]") {
  const double tiny = 1e-320;
  Eigen::MatrixXd e(2, 3), w(2, 3);
  e << tiny, 0, tiny,         // subnormal
      0x1p1000, 0x1p1000, 0;  // huge: the squares overflow
  w << 1, 0, 0,               //
      0, tiny, 0;
  const sml::NormalizedSoftmax ns(10);
  const auto z = ns.logits(e, w);
  // Exact cosines of the binary inputs, in long double: the entries are exact multiples, so
  // e0 = tiny (1, 0, 1), e1 = 2^1000 (1, 1, 0), w0 = (1, 0, 0), w1 = tiny (0, 1, 0).
  const LD r2 = std::sqrt(2.0L);
  const LD want[2][2] = {{10 / r2, 0}, {10 / r2, 10 / r2}};
  for (int n = 0; n < 2; ++n) {
    for (int c = 0; c < 2; ++c) {
      INFO("logit (" << n << ", " << c << ") = " << z(n, c));
      const LD err = std::fabs(static_cast<LD>(z(n, c)) - want[n][c])
                     / (10 * std::numeric_limits<double>::epsilon());
      CHECK(err <= 5);  // (D + 2) eps of the cosine, times s
    }
  }
  // Float: subnormal floats (their squares are normal in double).
  Eigen::MatrixXf ef(1, 3), wf(1, 3);
  ef << 1e-44f, 0, 1e-44f;
  wf << 1e-45f, 0, 0;
  CHECK(ns.logits(ef, wf)(0, 0) == Approx(10 / std::sqrt(2.0)).epsilon(4e-7));
}

TEST_CASE("NormalizedSoftmax gradients scale exactly with tiny and subnormal embeddings",
          "[regression][normalized]") {
  // x / |x| is invariant to x -> 2^k x, so its gradient scales by 2^-k: dE(2^k E) = 2^-k dE(E).
  const sml::NormalizedSoftmax ns(16, sml::Margin::arcface(0.3));
  Eigen::MatrixXd e(2, 3), w(3, 3), dz(2, 3);
  e << 3, -12, 5, 20, 1, -7;  // integers: exact after scaling by 2^k, even 2^-1074
  w << 1, 0.5, -0.25, -0.5, 1, 0.75, 0.2, 0.3, -1;
  dz << 0.25, -0.5, 0.125, -1, 0.5, 0.75;
  const Eigen::VectorXi labels = (Eigen::VectorXi(2) << 1, 2).finished();
  const auto [de, dw] = ns.logits_backward(e, w, labels, dz);
  // k = -1000: the sums of squares underflow (slow path); k = -1074 (with dZ scaled by 2^-1000 to
  // keep the gradient in range): subnormal entries.
  for (int k : {-1000, -1074}) {
    const int dz_shift = k == -1074 ? -1000 : 0;
    const Eigen::MatrixXd ek = e.unaryExpr([k](double v) { return std::ldexp(v, k); });
    const Eigen::MatrixXd dzk =
        dz.unaryExpr([dz_shift](double v) { return std::ldexp(v, dz_shift); });
    const auto [dek, dwk] = ns.logits_backward(ek, w, labels, dzk);
    double worst = 0;
    for (Eigen::Index i = 0; i < de.size(); ++i) {
      const double want = std::ldexp(de(i), -k + dz_shift);
      worst = std::max(
          worst, std::fabs(dek(i) - want) / std::ldexp(de.cwiseAbs().maxCoeff(), -k + dz_shift));
    }
    double worst_w = 0;
    for (Eigen::Index i = 0; i < dw.size(); ++i) {
      const double want = std::ldexp(dw(i), dz_shift);
      worst_w = std::max(worst_w,
                         std::fabs(dwk(i) - want) / std::ldexp(dw.cwiseAbs().maxCoeff(), dz_shift));
    }
    INFO("k = " << k << ": norm-wise relative differences " << worst << " (dE), " << worst_w
                << " (dW)");
    CHECK(worst < 1e-14);
    CHECK(worst_w < 1e-14);
  }
}

// ---- Issue 28: replayed reports and the PyTorch differential run ----------------------------
// Each case replays the reported input and other inputs of the same kind, against values computed
// here in long double (or exactly, on dyadic inputs).

namespace {

// Attention with a sink in long double: O = sum_j w_j V_j / L, lse = M + log L, w_j = exp(t_j - M),
// L = sum_j w_j + exp(z - M), M = max(max_j t_j, z), t_ij = scale q_i.k_j + mask_ij (-inf: left
// out). A row with no visible key has O = 0 and lse = log exp(z) = z.
template <class S>
void reference_sink_attention(const Eigen::Matrix<S, -1, -1>& q, const Eigen::Matrix<S, -1, -1>& k,
                              const Eigen::Matrix<S, -1, -1>& v,
                              const Eigen::Matrix<S, -1, -1>& mask, LD scale, LD z,
                              Eigen::Matrix<LD, -1, -1>& o, Eigen::Matrix<LD, -1, 1>& lse) {
  o.setZero(q.rows(), v.cols());
  lse.resize(q.rows());
  for (Eigen::Index i = 0; i < q.rows(); ++i) {
    std::vector<LD> t(static_cast<std::size_t>(k.rows()));
    LD top = z;
    for (Eigen::Index j = 0; j < k.rows(); ++j) {
      LD dot = 0;
      for (Eigen::Index c = 0; c < q.cols(); ++c)
        dot += static_cast<LD>(q(i, c)) * static_cast<LD>(k(j, c));
      const LD m = mask(i, j);
      t[static_cast<std::size_t>(j)] = std::isinf(m) ? -INFINITY : scale * dot + m;
      top = std::max(top, t[static_cast<std::size_t>(j)]);
    }
    LD sum = std::exp(z - top);
    for (Eigen::Index j = 0; j < k.rows(); ++j) {
      const LD w = std::exp(t[static_cast<std::size_t>(j)] - top);
      sum += w;
      for (Eigen::Index c = 0; c < v.cols(); ++c)
        o(i, c) += w * static_cast<LD>(v(j, c));
    }
    o.row(i) /= sum;
    lse(i) = top + std::log(sum);
  }
}

}  // namespace

TEMPLATE_TEST_CASE(
    "FlashAttention#2752: a sink on a query row with no visible key keeps its mass in lse and "
    "merge_attention",
    "[regression][attention]", float, double) {
  using S = TestType;
  using M = Eigen::Matrix<S, -1, -1>;
  using V = Eigen::Matrix<S, -1, 1>;
  const S inf = std::numeric_limits<S>::infinity();
  const LD eps = std::numeric_limits<S>::epsilon();
  const LD z = 0.5L;
  const sml::Attention<> attn(sml::AttentionOptions().with_sink(0.5).with_scale(0.25));
  // The report: one query row whose mask is -inf across every key; O = 0, lse = z (not -inf).
  const Eigen::Index lq = 5, lk = 9, d = 4, dv = 3;
  M q(lq, d), k(lk, d), v(lk, dv);
  for (Eigen::Index i = 0; i < q.size(); ++i)
    q(i) = static_cast<S>(std::sin(0.7 * static_cast<double>(i) + 0.3));
  for (Eigen::Index i = 0; i < k.size(); ++i)
    k(i) = static_cast<S>(std::cos(1.3 * static_cast<double>(i)));
  for (Eigen::Index i = 0; i < v.size(); ++i)
    v(i) = static_cast<S>(std::sin(2.1 * static_cast<double>(i) + 1));
  M mask = M::Zero(lq, lk);
  mask.row(2).setConstant(-inf);
  M o(lq, dv);
  V lse(lq);
  attn.apply_masked(q, k, v, mask, o, lse);
  CHECK(o.row(2).isZero(0));
  CHECK(lse(2) == S(0.5));
  // Lk = 0: every row holds the sink alone.
  M o0(lq, dv);
  V l0(lq);
  attn.apply(q, M(0, d), M(0, dv), o0, l0);
  CHECK(o0.isZero(0));
  CHECK((l0.array() == S(0.5)).all());
  // Causal rows that see no key (Lq > Lk), with and without a sink.
  const sml::Attention<> causal(
      sml::AttentionOptions().with_sink(0.5).with_scale(0.25).with_causal(true));
  M oc(lq, dv);
  V lc(lq);
  causal.apply(q, k.topRows(3), v.topRows(3), oc, lc);
  CHECK(oc.topRows(2).isZero(0));
  CHECK((lc.head(2).array() == S(0.5)).all());
  sml::Attention<>(sml::AttentionOptions().with_causal(true))
      .apply(q, k.topRows(3), v.topRows(3), oc, lc);
  CHECK((lc.head(2).array() == -inf).all());

  // Split-K: keys [0, 4) hold the sink, keys [4, 9) do not. Rows 1 and 3 see none of the first
  // part's keys, row 4 none of the second's, row 2 none at all; merged, every row must be the
  // unsplit attention with the sink. Also the sink given to an empty part (Lk = 0).
  mask(1, 0) = mask(1, 1) = mask(1, 2) = mask(1, 3) = -inf;
  mask(3, 0) = mask(3, 1) = mask(3, 2) = mask(3, 3) = -inf;
  for (Eigen::Index j = 4; j < lk; ++j)
    mask(4, j) = -inf;
  mask(0, 5) = S(-1.5);
  Eigen::Matrix<LD, -1, -1> o_ref;
  Eigen::Matrix<LD, -1, 1> l_ref;
  reference_sink_attention<S>(q, k, v, mask, 0.25L, z, o_ref, l_ref);
  const sml::Attention<> plain(sml::AttentionOptions().with_scale(0.25));
  M o1(lq, dv), o2(lq, dv), om(lq, dv), oe(lq, dv), oe_merged(lq, dv);
  V l1(lq), l2(lq), lm(lq), le(lq), le_merged(lq);
  attn.apply_masked(q, k.topRows(4), v.topRows(4), M(mask.leftCols(4)), o1, l1);
  plain.apply_masked(q, k.bottomRows(5), v.bottomRows(5), M(mask.rightCols(5)), o2, l2);
  sml::merge_attention(o1, l1, o2, l2, om, lm);
  plain.apply_masked(q, k, v, mask, oe, le);  // every key, no sink
  attn.apply(q, M(0, d), M(0, dv), o0, l0);   // the sink alone
  sml::merge_attention(o0, l0, oe, le, oe_merged, le_merged);
  const LD vmax = static_cast<LD>(v.cwiseAbs().maxCoeff());
  LD worst_o = 0, worst_l = 0;
  for (Eigen::Index i = 0; i < lq; ++i) {
    for (const auto* pair : {&om, &oe_merged}) {
      for (Eigen::Index c = 0; c < dv; ++c)
        worst_o = std::max(
            worst_o, std::fabs(static_cast<LD>((*pair)(i, c)) - o_ref(i, c)) / (eps * (1 + vmax)));
    }
    for (const auto* l : {&lm, &le_merged})
      worst_l = std::max(worst_l, std::fabs(static_cast<LD>((*l)(i)) - l_ref(i)) / (eps * (1 + z)));
  }
  INFO("merged partials: O worst " << static_cast<double>(worst_o)
                                   << " eps (1 + max|V|), lse worst "
                                   << static_cast<double>(worst_l) << " eps (1 + |z|)");
  CHECK(worst_o <= 8);
  CHECK(worst_l <= 8);
  CHECK(om.row(2).isZero(0));
  CHECK(lm(2) == S(0.5));
  // The backward of a row with no visible key is 0 (lse = z recomputes zero weights).
  M dq(lq, d), dk(lk, d), dvv(lk, dv);
  attn.backward_masked(q, k, v, mask, om, lm, M::Ones(lq, dv), dq, dk, dvv);
  CHECK(dq.row(2).isZero(0));
  CHECK(dq.allFinite());
  CHECK(dk.allFinite());
  CHECK(dvv.allFinite());
}

TEST_CASE("FlashAttention#2752: 16-bit attention with a sink gives lse = z on an empty row",
          "[regression][attention][half]") {
  using H = Eigen::half;
  using MH = Eigen::Matrix<H, -1, -1>;
  const sml::Attention<> attn(sml::AttentionOptions().with_sink(0.5));
  MH q = MH::Constant(3, 4, H(0.25)), k = MH::Constant(6, 4, H(0.5)), v = MH::Constant(6, 2, H(1));
  MH mask = MH::Zero(3, 6);
  mask.row(1).setConstant(H(-std::numeric_limits<float>::infinity()));
  MH o(3, 2);
  Eigen::VectorXf lse(3);
  attn.apply_masked(q, k, v, mask, o, lse);
  CHECK(lse(1) == 0.5f);
  CHECK(static_cast<float>(o(1, 0)) == 0.0f);
  CHECK(std::isfinite(lse(0)));
}

namespace {

// Exact sparsemax support of a row of dyadic values (few enough bits that every sum and product
// below is exact in long double): sorted descending, the support is the top k for the largest k
// with 1 + k x_(k) > sum_{j <= k} x_(j); tau = (sum_{j <= k} x_(j) - 1) / k.
std::vector<LD> exact_sparsemax(const std::vector<LD>& x, LD& tau) {
  std::vector<LD> sorted = x;
  std::sort(sorted.begin(), sorted.end(), std::greater<LD>());
  LD sum = 0, support_sum = 0;
  std::size_t support = 0;
  for (std::size_t j = 0; j < sorted.size(); ++j) {
    sum += sorted[j];
    if (1 + static_cast<LD>(j + 1) * sorted[j] > sum) {
      support = j + 1;
      support_sum = sum;
    }
  }
  tau = (support_sum - 1) / static_cast<LD>(support);
  std::vector<LD> y;
  for (LD v : x)
    y.push_back(v > tau ? v - tau : 0);
  return y;
}

}  // namespace

TEMPLATE_TEST_CASE(
    "keras#23425: Sparsemax decides its support exactly at ties, forward and backward alike",
    "[regression][entmax]", float, double) {
  using S = TestType;
  using V = Vec<S>;
  const LD eps = std::numeric_limits<S>::epsilon();
  std::vector<std::pair<std::string, std::vector<LD>>> rows;
  if (std::is_same_v<S, double>) {
    // The report: double(0.1) lies exactly on the threshold of [0.1, 0.2, 0.3, 0.4, 0.5].
    rows.push_back({"keras#23425", {0.1, 0.2, 0.3, 0.4, 0.5}});
  } else {
    rows.push_back({"keras#23425 in float", {0.1f, 0.2f, 0.3f, 0.4f, 0.5f}});
  }
  // Constructed ties: a support a_1..a_k of multiples of 2^-12 with k a power of two, so tau =
  // (sum a - 1) / k is dyadic; then entries at tau, one ulp below, one ulp above (which joins
  // the support and moves tau up by less than that ulp, pushing the ties out), and far below.
  std::mt19937 gen(28);
  std::uniform_int_distribution<int> units(0, 4096);
  for (int k : {1, 2, 4, 8}) {
    for (int variant = 0; variant < 4; ++variant) {
      std::vector<LD> a;
      LD sum = 0;
      for (int j = 0; j < k; ++j) {
        a.push_back(0.5L + std::ldexp(static_cast<LD>(units(gen)), -12));
        sum += a.back();
      }
      const LD tau = (sum - 1) / k;
      if (!(tau < *std::min_element(a.begin(), a.end())))
        continue;
      const S t = static_cast<S>(tau);
      REQUIRE(static_cast<LD>(t) == tau);
      std::vector<LD> row = a;
      for (int r = 0; r <= variant; ++r)
        row.push_back(tau);  // ties
      row.push_back(std::nextafter(t, -std::numeric_limits<S>::infinity()));
      row.push_back(tau - 3);
      if (variant % 2 == 1)
        row.push_back(std::nextafter(t, std::numeric_limits<S>::infinity()));
      // shuffled, so that no layout puts the ties in one place
      std::shuffle(row.begin(), row.end(), gen);
      rows.push_back(
          {"constructed k " + std::to_string(k) + " variant " + std::to_string(variant), row});
      // Shifted by a large power of two: the same support (x - m is exact there).
      std::vector<LD> shifted;
      for (LD v : row)
        shifted.push_back(v + 64);
      rows.push_back({"shifted by 64, k " + std::to_string(k), shifted});
    }
  }
  LD worst = 0, worst_dx = 0;
  for (const auto& [name, values] : rows) {
    const Eigen::Index n = static_cast<Eigen::Index>(values.size());
    V x(n), dy(n);
    std::vector<LD> xl;
    for (Eigen::Index i = 0; i < n; ++i) {
      x(i) = static_cast<S>(values[static_cast<std::size_t>(i)]);
      xl.push_back(static_cast<LD>(x(i)));
      dy(i) = static_cast<S>(std::cos(1 + 2 * static_cast<double>(i)));
    }
    LD tau = 0;
    const std::vector<LD> exact = exact_sparsemax(xl, tau);
    // The exact gradient on the support {exact y > 0}: dx = dy - mean over the support.
    LD mean = 0;
    int support = 0;
    for (Eigen::Index i = 0; i < n; ++i) {
      if (exact[static_cast<std::size_t>(i)] > 0) {
        mean += dy(i);
        ++support;
      }
    }
    mean /= support;
    // Every form: vector, in place, a strided row (rowwise of a column-major matrix), Entmax(2).
    Eigen::Matrix<S, -1, -1> rows_in(3, n);
    rows_in.setZero();
    rows_in.row(1) = x.transpose();
    const Eigen::Matrix<S, -1, -1> rows_out = sml::Sparsemax().rowwise(rows_in);
    V in_place = x;
    sml::Sparsemax().apply(in_place, in_place);
    const std::vector<std::pair<const char*, V>> outputs = {
        {"vector", sml::Sparsemax()(x)},
        {"in place", in_place},
        {"rowwise", rows_out.row(1).transpose()},
        {"Entmax(2)", sml::Entmax(2.0)(x)}};
    for (const auto& [form, y] : outputs) {
      INFO(name << ", " << form << ": tau = " << static_cast<double>(tau));
      for (Eigen::Index i = 0; i < n; ++i) {
        const LD e = exact[static_cast<std::size_t>(i)];
        INFO("entry " << i << ": x = " << x(i) << ", y = " << y(i) << ", exact "
                      << static_cast<double>(e));
        CHECK((y(i) > 0) == (e > 0));  // the support, exactly
        worst = std::max(worst, std::fabs(static_cast<LD>(y(i)) - e) / (eps * (1 + e)));
      }
      const V dx = sml::Sparsemax().backward(x, y, dy);
      const V dx2 = sml::Entmax(2.0).backward(x, y, dy);
      for (Eigen::Index i = 0; i < n; ++i) {
        const LD want = exact[static_cast<std::size_t>(i)] > 0 ? dy(i) - mean : 0;
        CHECK(softmaxlab_test::same(V(dx.segment(i, 1)), V(dx2.segment(i, 1))));
        worst_dx = std::max(worst_dx, std::fabs(static_cast<LD>(dx(i)) - want) / eps);
      }
    }
  }
  INFO("forward worst " << static_cast<double>(worst) << " eps (1 + |exact|), backward worst "
                        << static_cast<double>(worst_dx) << " eps");
  CHECK(worst <= 4);
  CHECK(worst_dx <= 4);
  // The report's gradient, as stated there.
  if (std::is_same_v<S, double>) {
    Eigen::VectorXd x(5), dy(5), want(5);
    x << 0.1, 0.2, 0.3, 0.4, 0.5;
    for (int i = 0; i < 5; ++i)
      dy(i) = std::cos(1 + 2 * i);
    want << 0, -0.774102917, 0.499551765, 0.969791834, -0.695240682;
    const Eigen::VectorXd y = sml::Sparsemax()(x);
    CHECK(y(0) == 0.0);
    CHECK((sml::Sparsemax().backward(x, y, dy) - want).cwiseAbs().maxCoeff() < 1e-9);
  }
}

namespace {

// alpha-entmax in long double, in the log domain: T in [n^-s, 1] solves p log T + log sum_i
// exp(p log1p(s d_i / T)) = 0 (that is, sum_i (s d_i + T)^p = 1, d_i = x_i - max x, s = alpha - 1,
// p = 1 / s), by bisection to long double resolution; y_i = exp(p log1p(s d_i / T)) / sum.
std::vector<LD> reference_entmax(const std::vector<LD>& x, LD alpha) {
  const LD m = *std::max_element(x.begin(), x.end());
  const LD s = alpha - 1, p = 1 / s;
  const auto weights = [&](LD t, LD& sum) {
    std::vector<LD> w;
    sum = 0;
    for (LD v : x) {
      const LD zz = (v - m) * s / t;
      w.push_back(zz > -1 ? std::exp(p * std::log1p(zz)) : 0);
      sum += w.back();
    }
    return w;
  };
  LD lo = std::pow(static_cast<LD>(x.size()), -s), hi = 1;  // G(lo) <= 0 <= G(hi)
  for (int i = 0; i < 400; ++i) {
    const LD mid = (lo + hi) / 2;
    if (mid <= lo || mid >= hi)
      break;
    LD sum = 0;
    weights(mid, sum);
    (p * std::log(mid) + std::log(sum) >= 0 ? hi : lo) = mid;
  }
  LD sum = 0;
  std::vector<LD> w = weights(hi, sum);
  for (LD& v : w)
    v /= sum;
  return w;
}

}  // namespace

TEMPLATE_TEST_CASE("deep-spin/entmax#24: Entmax stays within its bound as alpha approaches 1",
                   "[regression][entmax]", float, double) {
  using S = TestType;
  const double bound = std::is_same_v<S, float> ? 2 * std::numeric_limits<float>::epsilon() : 1e-12;
  std::mt19937 gen(24);
  std::normal_distribution<double> normal(0.0, 2.0);
  double worst = 0;
  std::string where;
  for (double alpha : {1 + 0x1p-52, 1 + 1e-12, 1 + 1e-9, 1 + 1e-6, 1 + 1e-3, 1.1, 1.5, 1.9}) {
    for (Eigen::Index n : {2, 64, 300}) {
      Vec<S> x(n);
      std::vector<LD> xl;
      for (Eigen::Index i = 0; i < n; ++i) {
        x(i) = static_cast<S>(normal(gen));
        xl.push_back(x(i));
      }
      const std::vector<LD> exact = reference_entmax(xl, alpha);
      const Vec<S> y = sml::Entmax(alpha)(x);
      for (Eigen::Index i = 0; i < n; ++i) {
        const double err = static_cast<double>(
            std::fabs(static_cast<LD>(y(i)) - exact[static_cast<std::size_t>(i)]));
        if (!(err <= worst)) {
          worst = err;
          std::ostringstream at;
          at << "alpha - 1 = " << alpha - 1 << ", n " << n;
          where = at.str();
        }
      }
      // The reference itself: near alpha = 1 the map is softmax to O(alpha - 1).
      if (alpha - 1 <= 1e-9) {
        const Eigen::VectorXd soft = sml::Softmax()(x.template cast<double>());
        for (Eigen::Index i = 0; i < n; ++i)
          CHECK(std::fabs(static_cast<double>(exact[static_cast<std::size_t>(i)]) - soft(i))
                < 1e-7);
      }
    }
  }
  std::cout << "Entmax near alpha = 1, " << (sizeof(S) == 4 ? "float" : "double")
            << ": worst absolute error " << worst << " (bound " << bound << ") at " << where
            << "\n";
  CHECK(worst <= bound);
}

TEMPLATE_TEST_CASE(
    "PyTorch differential run: LogSoftmax's backward keeps the gradient of an overflowed "
    "log-probability",
    "[regression][softmax][backward]", float, double) {
  using S = TestType;
  using V = Vec<S>;
  const S big = std::numeric_limits<S>::max(), inf = std::numeric_limits<S>::infinity();
  struct Case {
    const char* what;
    double t;
    std::vector<S> x, dy, want;
  };
  const std::vector<Case> cases = {
      // The run's input: y = [0, -inf], yet x_1 is finite, not masked.
      {"[max, -max]", 1.0, {big, -big}, {0, 1}, {-1, 1}},
      {"T = 0.5, [3/4 max, 1]", 0.5, {big / 4 * 3, 1}, {0, 1}, {-2, 2}},
      // Beside a masked entry (x = -inf: dx = 0 and its dy left out of the sum).
      {"[max, -inf, -max]", 1.0, {big, -inf, -big}, {0, 5, 1}, {-1, 0, 1}},
      // +inf entries: the finite entries keep dx_i = dy_i, the sum holds every unmasked dy.
      {"[inf, 1, inf, -inf]", 1.0, {inf, 1, inf, -inf}, {1, 2, 3, 7}, {-2, 2, 0, 0}},
      {"T = 2, [inf, 1, inf]", 2.0, {inf, 1, inf}, {1, 2, 3}, {-1, 1, 0}}};
  for (const Case& c : cases) {
    INFO(c.what);
    const Eigen::Index n = static_cast<Eigen::Index>(c.x.size());
    const V x = Eigen::Map<const V>(c.x.data(), n), dy = Eigen::Map<const V>(c.dy.data(), n),
            want = Eigen::Map<const V>(c.want.data(), n);
    const sml::LogSoftmax f(c.t);
    const V y = f(x);
    CHECK(softmaxlab_test::same(f.backward(x, y, dy), want));
    // rowwise on a strided row, colwise, and in place (dx = x)
    Eigen::Matrix<S, -1, -1> xs(2, n), ys(2, n), ds(2, n);
    xs << x.transpose(), x.transpose();
    ys << y.transpose(), y.transpose();
    ds << dy.transpose(), dy.transpose();
    const Eigen::Matrix<S, -1, -1> r = f.rowwise_backward(xs, ys, ds);
    CHECK(softmaxlab_test::same(V(r.row(1).transpose()), want));
    const Eigen::Matrix<S, -1, -1> cw = f.colwise_backward(
        Eigen::Matrix<S, -1, -1>(xs.transpose()), Eigen::Matrix<S, -1, -1>(ys.transpose()),
        Eigen::Matrix<S, -1, -1>(ds.transpose()));
    CHECK(softmaxlab_test::same(V(cw.col(0)), want));
    V in_place = x;
    f.backward(in_place, y, dy, in_place);
    CHECK(softmaxlab_test::same(in_place, want));
  }
}

namespace {

// LogSoftmax's backward on one long row against long double from the same y and dy: the error of
// every entry against the header's bound
// eps (2 |dy_i - p_i S| + 4 p_i |S|) / T + (n eps_d)^2 p_i A / T, eps_d = 2^-52.
template <class Scalar>
void log_softmax_backward_bound(Eigen::Index n, double temperature, bool biased, unsigned seed,
                                softmaxlab_test::Worst& worst) {
  using V = Vec<Scalar>;
  std::mt19937 gen(seed);
  std::normal_distribution<double> normal(0.0, 3.0);
  std::uniform_real_distribution<double> u(biased ? 0.0 : -1.0, 1.0);
  V x(n), dy(n);
  for (Eigen::Index i = 0; i < n; ++i) {
    x(i) = static_cast<Scalar>(normal(gen));
    dy(i) = static_cast<Scalar>(u(gen));
  }
  for (Eigen::Index i = 0; i < n; i += 97)
    x(i) = -std::numeric_limits<Scalar>::infinity();  // masked: left out of S
  const sml::LogSoftmax f(temperature);
  const V y = f(x);
  const V dx = f.backward(x, y, dy);
  // S and A over the unmasked entries, S compensated in long double.
  LD s = 0, carry = 0, a = 0;
  for (Eigen::Index i = 0; i < n; ++i) {
    if (std::isinf(x(i)))
      continue;
    const LD v = dy(i), t = s + v;
    carry += std::fabs(s) >= std::fabs(v) ? (s - t) + v : (v - t) + s;
    s = t;
    a += std::fabs(v);
  }
  s += carry;
  const LD eps = std::numeric_limits<Scalar>::epsilon();
  for (Eigen::Index i = 0; i < n; ++i) {
    if (std::isinf(x(i))) {
      CHECK(dx(i) == 0);
      continue;
    }
    const LD p = std::exp(static_cast<LD>(y(i)));
    const LD exact = (dy(i) - p * s) / temperature;
    const LD bound = eps * (2 * std::fabs(dy(i) - p * s) + 4 * p * std::fabs(s)) / temperature
                     + std::pow(static_cast<LD>(n) * 0x1p-52L, 2) * p * a / temperature;
    const LD err = std::fabs(static_cast<LD>(dx(i)) - exact);
    worst.update(
        static_cast<double>(err / eps), static_cast<double>(bound / eps), [&](std::ostream& o) {
          o << "n " << n << ", T " << temperature << (biased ? ", dy >= 0" : "") << ", entry " << i;
        });
  }
}

}  // namespace

TEMPLATE_TEST_CASE(
    "PyTorch differential run: LogSoftmax's backward within its stated bound on long rows",
    "[regression][softmax][backward]", float, double) {
  // The run measured 2.5 to 12 times 16 eps of the old scale (|dy_i| + max|dy|) / T on rows of
  // 1,000 to 4,096 and 42 times at 100,000: the plain sum of dy, whose error grows with n.
  softmaxlab_test::Worst worst;
  unsigned seed = 11;
  for (Eigen::Index n : {1000, 4096, 100000}) {
    for (double t : {1.0, 0.7}) {
      for (bool biased : {false, true})
        log_softmax_backward_bound<TestType>(n, t, biased, seed++, worst);
    }
  }
  std::cout << "LogSoftmax backward, " << (sizeof(TestType) == 4 ? "float" : "double") << ": "
            << worst.report() << "\n";
  CHECK(worst.ratio <= 1.0);
}

// ---- Issue 28, item 2: the sampler drew tokens of probability 0 -----------------------------

namespace {

using softmaxlab_test::FixedWord;

FixedWord fixed_u(std::uint64_t u53) {
  return FixedWord{u53 << 11};
}

template <class Scalar>
void check_never_draws_zero(const std::vector<Scalar>& row, const sml::SamplerOptions& o,
                            const char* what) {
  const sml::Sampler s(o);
  Vec<Scalar> x = Eigen::Map<const Vec<Scalar>>(row.data(), Eigen::Index(row.size()));
  const Vec<Scalar> p = s.probabilities(x);
  Eigen::Index support = 0;
  for (Eigen::Index i = 0; i < p.size(); ++i)
    support += p(i) > 0 ? 1 : 0;
  INFO(what << " V = " << row.size() << " T = " << o.temperature() << " top_k = " << o.top_k()
            << " top_p = " << o.top_p() << " min_p = " << o.min_p());
  CHECK(s.kept_count(x) == support);  // the support of probabilities(), masked tokens excluded
  const std::uint64_t top = (std::uint64_t{1} << 53) - 1;
  std::vector<std::uint64_t> us = {0, 1, 2, top, top - 1, top - 2, top / 2, top / 3};
  std::mt19937_64 rng(28);
  for (int j = 0; j < 200; ++j)
    us.push_back(rng() >> 11);
  for (std::uint64_t u : us) {
    FixedWord gen = fixed_u(u);
    const Eigen::Index t = s.sample(x, gen);
    INFO("u = " << static_cast<double>(u) * 0x1p-53 << " drew " << t);
    REQUIRE(t >= 0);
    REQUIRE(t < x.size());
    CHECK(p(t) > 0);
  }
}

}  // namespace

TEMPLATE_TEST_CASE("Sampler never draws a token of probability 0, for any u in [0, 1)",
                   "[regression][sampling]", float, double) {
  // Replays pytorch/pytorch#48841 (multinomial drew a zero-probability category) and
  // TransformerLens#1347 (sampling returned a token masked to -inf): the u = 0 draw on [-inf, 0]
  // returned the -inf token (the exp kernel's clamped weight is positive), and on the top-k path
  // u just below 1 fell through to the last candidate whatever its weight. The exact rule: the
  // token drawn always has probabilities() > 0, and kept_count() counts exactly those tokens.
  using S = TestType;
  const S inf = std::numeric_limits<S>::infinity();
  const S big = std::numeric_limits<S>::max();
  const std::vector<std::vector<S>> rows = {
      {-inf, 0},
      {0, -inf},
      {-inf, -inf, 0, -inf, 1},
      {-inf, 1, -inf, 0, -inf},
      {0, -200, -inf, -1000, 0},          // underflowing weights beside masked ones
      {-big, big, -inf, 0},               // a finite logit whose probability underflows
      {3, -inf, 3, -30000, -inf, 2.5, 3}  // ties, a mask and an underflow
  };
  std::vector<sml::SamplerOptions> options;
  for (double t : {1.0, 0.01, 7.0}) {
    for (Eigen::Index k : {Eigen::Index(0), Eigen::Index(1), Eigen::Index(2), Eigen::Index(3),
                           Eigen::Index(40), Eigen::Index(1025)}) {
      for (double p : {1.0, 0.5, 0.999}) {
        for (double mp : {0.0, 1e-30, 0.3})
          options.push_back(
              sml::SamplerOptions().with_temperature(t).with_top_k(k).with_top_p(p).with_min_p(mp));
      }
    }
  }
  for (const auto& row : rows) {
    for (const auto& o : options)
      check_never_draws_zero(row, o, "row");
  }
  // The reported case of the histogram path: V = 5, three masked, top_k = 1025 kept 5.
  const Vec<S> x = (Vec<S>(5) << -inf, 1, -inf, 2, -inf).finished();
  CHECK(sml::Sampler(sml::SamplerOptions().with_top_k(1025)).kept_count(x) == 2);
  // A longer row with most tokens masked: both paths (k = 0 and k = 40) and large V.
  std::vector<S> long_row(5000, -inf);
  std::mt19937 rng(48841);
  std::normal_distribution<double> normal(0.0, 3.0);
  for (std::size_t i = 0; i < long_row.size(); i += 7)
    long_row[i] = static_cast<S>(normal(rng));
  for (Eigen::Index k : {Eigen::Index(0), Eigen::Index(40), Eigen::Index(2000)})
    check_never_draws_zero(long_row, sml::SamplerOptions().with_top_k(k).with_top_p(0.9),
                           "long masked row");
}
