// Backward passes of PowerSoftmax (every form, exact and Goldschmidt reciprocal) and
// PolynomialSoftmax (the Jacobian of the function it computes: exp approximations, reciprocal
// iterations, the row-max shift, a public bound), against fourth-order central finite differences
// of the forward functor in double (relative error < 1e-6) on random rows and edge rows; the call
// forms and the special rows.
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include <softmaxlab/approx/exp.hpp>
#include <softmaxlab/approx/reciprocal.hpp>
#include <softmaxlab/polynomial.hpp>
#include <softmaxlab/power.hpp>
#include <softmaxlab/softmax.hpp>

#include "support.hpp"

namespace sml = softmaxlab;
using Index = Eigen::Index;
using Vec = Eigen::VectorXd;
using Mat = Eigen::MatrixXd;
using softmaxlab_test::AllocationGuard;
using softmaxlab_test::fd_gradient;
using softmaxlab_test::fd_relative_error;

namespace {

const double kInf = std::numeric_limits<double>::infinity();

Vec random_vec(Index n, unsigned seed, double scale) {
  return softmaxlab_test::random_normal(n, 1, seed, scale);
}

// tie_tolerance: the bound for rows whose max is tied (all equal), where PolynomialSoftmax has a
// kink of the size of its exp approximation's error (the shift follows the first max entry, the
// central difference straddles the kink); 1e-6 everywhere else.
template <class F>
void check_fd(const F& f, const std::vector<std::pair<std::string, Vec>>& rows,
              const std::string& what, double tie_tolerance = 1e-6) {
  unsigned seed = 1;
  for (const auto& [label, x] : rows) {
    const Vec dy = random_vec(x.size(), 500 + seed++, 1.0);
    const Vec dx = f.backward(x, f(x), dy);
    const Vec fd = fd_gradient([&](const Vec& v) { return Vec(f(v)); }, x, dy, 1e-4);
    const double err = fd_relative_error(dx, fd, x);
    INFO(what << ", " << label << ": relative error " << err);
    const bool tied = (x.array() == x.maxCoeff()).count() > 1;
    CHECK(err < (tied ? tie_tolerance : 1e-6));
    for (Index i = 0; i < x.size(); ++i) {
      if (x(i) == -kInf)
        CHECK(dx(i) == 0.0);
    }
  }
}

}  // namespace

TEST_CASE("PowerSoftmax backward matches finite differences, every form", "[backward][power][fd]") {
  std::vector<std::pair<std::string, Vec>> rows;
  for (unsigned r = 0; r < 3; ++r)
    rows.emplace_back("random " + std::to_string(r), random_vec(5 + 4 * r, 10 + r, 1.5));
  Vec with_zero = rows[1].second;
  with_zero(2) = 0;
  rows.emplace_back("a zero entry", with_zero);
  // Dominant, yet not so much that x_i^(p-1) of the others falls below what differences resolve.
  Vec dominant = random_vec(5, 10, 0.375);
  dominant(1) = 1.5;
  rows.emplace_back("dominant entry", dominant);
  rows.emplace_back("all equal", Vec::Constant(6, -0.75));
  for (int p : {2, 4, 8}) {
    for (auto form :
         {sml::PowerForm::Stable, sml::PowerForm::Lipschitz, sml::PowerForm::LengthAgnostic}) {
      check_fd(sml::PowerSoftmax(p, form, 0.05), rows,
               "p " + std::to_string(p) + ", form " + std::to_string(static_cast<int>(form)));
    }
  }
  sml::PowerSoftmaxOptions goldschmidt;
  goldschmidt.reciprocal = sml::ReciprocalMethod::Goldschmidt;
  check_fd(sml::PowerSoftmax(4, goldschmidt), rows, "Goldschmidt reciprocal");
}

TEST_CASE("PolynomialSoftmax backward matches finite differences of the computed function",
          "[backward][polynomial][fd]") {
  std::vector<std::pair<std::string, Vec>> rows;
  for (unsigned r = 0; r < 3; ++r)
    rows.emplace_back("random " + std::to_string(r), random_vec(6 + 5 * r, 20 + r, 3.0));
  Vec masked = rows[2].second;
  masked(0) = masked(5) = -kInf;
  rows.emplace_back("masked entries", masked);
  Vec dominant = rows[0].second * 0.1;
  dominant(3) = 12;
  rows.emplace_back("dominant entry", dominant);
  rows.emplace_back("all equal", Vec::Constant(7, 1.5));
  std::vector<std::pair<std::string, sml::PolynomialSoftmaxOptions>> configs(6);
  configs[0].first = "default (Chebyshev 4, r 5, Goldschmidt)";
  configs[1].first = "Newton";
  configs[1].second.reciprocal = sml::ReciprocalMethod::Newton;
  configs[2].first = "exact reciprocal";
  configs[2].second.reciprocal = sml::ReciprocalMethod::Exact;
  configs[3].first = "Chebyshev 2, r 3";
  configs[3].second = sml::PolynomialSoftmaxOptions::chebyshev(2, 3, 20);
  configs[4].first = "repeated squaring r 6";
  configs[4].second.exp = sml::ExpMethod::RepeatedSquaring;
  configs[4].second.squarings = 6;
  configs[5].first = "public bound 8, gap 10";
  configs[5].second.shift = sml::Shift::PublicBound;
  configs[5].second.bound = 8;
  configs[5].second.gap = 10;
  for (const auto& [label, config] : configs)
    check_fd(sml::PolynomialSoftmax(config), rows, label, 1e-4);

  SECTION("the row max dependence matters: it is not Softmax's gradient") {
    const sml::PolynomialSoftmax f(sml::PolynomialSoftmaxOptions::chebyshev(2, 3, 20));
    const Vec x = rows[0].second, dy = random_vec(x.size(), 77, 1.0);
    const Vec dx = f.backward(x, f(x), dy);
    CHECK((dx - sml::Softmax().backward(x, f(x), dy)).norm() > 1e-3);
  }
}

TEMPLATE_TEST_CASE("power and polynomial backward: forms, no allocation, special rows",
                   "[backward][power][polynomial]", float, double) {
  using V = Eigen::Matrix<TestType, Eigen::Dynamic, 1>;
  using M = Eigen::Matrix<TestType, Eigen::Dynamic, Eigen::Dynamic>;
  const sml::PowerSoftmax pw(4);
  const sml::PolynomialSoftmax poly;
  const M x = M::Random(4, 30) * 3, dy = M::Random(4, 30);
  const M dxp = pw.rowwise_backward(x, pw.rowwise(x), dy);
  const M dxq = poly.colwise_backward(x, poly.colwise(x), dy);
  for (Index i = 0; i < x.rows(); ++i) {
    const V xi = x.row(i).transpose(), dyi = dy.row(i).transpose();
    CHECK((dxp.row(i).transpose() - pw.backward(xi, pw(xi), dyi)).cwiseAbs().maxCoeff() == 0);
  }
  for (Index j = 0; j < x.cols(); ++j) {
    const V xj = x.col(j), dyj = dy.col(j);
    CHECK((dxq.col(j) - poly.backward(xj, poly(xj), dyj)).cwiseAbs().maxCoeff() == 0);
  }
  M out(4, 30);
  const M yp = pw.rowwise(x), yq = poly.rowwise(x);
  std::size_t allocations = 0;
  {
    AllocationGuard guard;
    pw.rowwise_backward(x, yp, dy, out);
    poly.rowwise_backward(x, yq, dy, out);
    allocations = guard.allocations();
  }
  CHECK(allocations == 0);
  V nan_row = V::Ones(5);
  nan_row(2) = std::numeric_limits<TestType>::quiet_NaN();
  CHECK(pw.backward(nan_row, pw(nan_row), V::Ones(5)).array().isNaN().all());
  CHECK(poly.backward(nan_row, poly(nan_row), V::Ones(5)).array().isNaN().all());
  CHECK(pw.backward(V::Zero(5), pw(V::Zero(5)), V::Ones(5)).isZero());
  const V all_masked = V::Constant(5, -std::numeric_limits<TestType>::infinity());
  CHECK(poly.backward(all_masked, poly(all_masked), V::Ones(5)).isZero());
}
