// LogSumExp: against the exact mpmath tables of tests/reference/ (lse = x_i - log_softmax(x)_i
// with the exact log-softmax), the weighted and signed forms against a long double sum, special
// values, rowwise/colwise, the backward passes against central finite differences in double, size
// errors and no allocation.
// clang-format off
#include "support.hpp"  // first: it configures Eigen (asserts, malloc checks)
// clang-format on

#include <cmath>
#include <limits>
#include <random>

#include <catch2/catch.hpp>

#include <softmaxlab/logsumexp.hpp>

#include "reference/softmax_f32.ipp"
#include "reference/softmax_f64.ipp"

namespace sml = softmaxlab;
using Index = Eigen::Index;
using softmaxlab_test::AllocationGuard;
using softmaxlab_test::Worst;

namespace {

// The exact lse of a table row (temperature 1 only): x_i - log_softmax_i at the first maximum,
// whose log-probability is the smallest in magnitude; NaN/inf rows give NaN/inf.
template <class Scalar>
long double exact_lse(const softmaxlab_test::SoftmaxCase<Scalar>& c) {
  std::size_t best = 0;
  for (std::size_t i = 0; i < c.n; ++i) {
    if (c.x[i] != c.x[i])
      return std::numeric_limits<long double>::quiet_NaN();
    if (c.x[i] > c.x[best])
      best = i;
  }
  const long double xb = c.x[best];
  if (std::isinf(xb))
    return xb;
  return xb - (static_cast<long double>(c.log_hi[best]) + c.log_lo[best]);
}

template <class Scalar, std::size_t N>
void check_table(const softmaxlab_test::SoftmaxCase<Scalar> (&cases)[N], Worst& worst,
                 int& checked) {
  const sml::LogSumExp lse;
  const double eps = std::numeric_limits<Scalar>::epsilon();
  for (const auto& c : cases) {
    if (c.temperature != 1.0)
      continue;
    const Eigen::Map<const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>> x(c.x, Index(c.n));
    const Scalar got = lse(x);
    const long double exact = exact_lse(c);
    INFO(c.name << ": lse " << got << ", exact " << double(exact));
    if (exact != exact) {
      CHECK(got != got);
      continue;
    }
    if (std::isinf(exact)) {
      CHECK(got == static_cast<Scalar>(exact));
      continue;
    }
    ++checked;
    const double err =
        double(std::fabs(static_cast<long double>(got) - exact) / (1 + std::fabs(exact))) / eps;
    worst.update(err, 2.0, [&](std::ostream& o) { o << c.name; });
    // rowwise / colwise of the same data agree bit for bit.
    CHECK(lse.colwise(x)(0) == got);
    CHECK(lse.rowwise(x.transpose())(0) == got);
  }
}

}  // namespace

TEST_CASE("LogSumExp matches the exact reference tables within 2 eps (1 + |lse|)",
          "[logsumexp][reference]") {
  Worst wf, wd;
  int nf = 0, nd = 0;
  check_table(softmaxlab_test::kSoftmaxCasesF32, wf, nf);
  check_table(softmaxlab_test::kSoftmaxCasesF64, wd, nd);
  INFO("float (" << nf << " rows): " << wf.report() << "; double (" << nd
                 << " rows): " << wd.report());
  CHECK(nf > 10);
  CHECK(nd > 10);
  CHECK(wf.ratio <= 1);
  CHECK(wd.ratio <= 1);
}

TEST_CASE("LogSumExp: special values, empty, rowwise/colwise, errors, no allocation",
          "[logsumexp]") {
  const sml::LogSumExp lse;
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  CHECK(lse(Eigen::Vector3f(1, inf, 2)) == inf);
  CHECK(lse(Eigen::Vector3f(-inf, -inf, -inf)) == -inf);
  CHECK(std::isnan(lse(Eigen::Vector3f(1, nan, inf))));
  CHECK(lse(Eigen::VectorXf(0)) == -inf);
  CHECK(lse(Eigen::Vector3d(0, -std::numeric_limits<double>::infinity(), 0))
        == Approx(std::log(2.0)).epsilon(1e-15));
  // An expression and strided slices.
  std::mt19937 rng(3);
  std::normal_distribution<double> normal(0, 4);
  Eigen::MatrixXd X(7, 300);
  for (Index i = 0; i < X.size(); ++i)
    X.data()[i] = normal(rng);
  const Eigen::VectorXd r = lse.rowwise(X);
  const Eigen::RowVectorXd c = lse.colwise(X);
  for (Index i = 0; i < 7; ++i) {
    const Eigen::RowVectorXd row = X.row(i);
    CHECK(r(i) == lse(row));
    long double s = 0;
    const long double m = row.maxCoeff();
    for (Index j = 0; j < 300; ++j)
      s += std::exp(static_cast<long double>(row(j)) - m);
    CHECK(std::fabs(r(i) - double(m + std::log(s))) <= 2e-16 * (1 + std::fabs(r(i))));
  }
  for (Index j = 0; j < 300; ++j)
    CHECK(c(j) == lse(X.col(j)));
  CHECK(lse(X.row(2) * 2.0) == lse(Eigen::RowVectorXd(X.row(2) * 2.0)));
  Eigen::VectorXd out(7);
  {
    AllocationGuard guard;
    lse.rowwise(X, out);
    CHECK(guard.allocations() == 0);
  }
  Eigen::VectorXd wrong(6);
  CHECK_THROWS_AS(lse.rowwise(X, wrong), std::invalid_argument);
  CHECK_THROWS_AS(lse(X), std::invalid_argument);
  CHECK_THROWS_AS(lse.with_sign(Eigen::Vector3d(1, 2, 3), Eigen::Vector2d(1, 1)),
                  std::invalid_argument);
}

TEST_CASE("LogSumExp: weighted and signed forms (SciPy's b= and return_sign=)", "[logsumexp]") {
  const sml::LogSumExp lse;
  const double inf = std::numeric_limits<double>::infinity();
  std::mt19937 rng(11);
  std::normal_distribution<double> normal(0, 3);
  for (int rep = 0; rep < 50; ++rep) {
    Eigen::VectorXd x(40), b(40);
    for (Index i = 0; i < 40; ++i) {
      x(i) = normal(rng);
      b(i) = normal(rng);
    }
    b(5) = 0;
    x(5) = 1e3;  // a zero weight takes no part, whatever its logit
    long double s = 0, s_abs = 0;
    for (Index i = 0; i < 40; ++i) {
      s += static_cast<long double>(b(i)) * std::exp(static_cast<long double>(x(i)));
      s_abs += std::fabs(static_cast<long double>(b(i))) * std::exp(static_cast<long double>(x(i)));
    }
    const auto r = lse.with_sign(x, b);
    CHECK(r.sign == (s > 0 ? 1.0 : -1.0));
    // Absolute error of log|s| within a few eps times the condition number sum|b e^x| / |s|.
    const double cond = double(s_abs / std::fabs(s));
    CHECK(std::fabs(r.value - double(std::log(std::fabs(s))))
          <= 4e-16 * cond * (1 + std::fabs(r.value)));
    if (s < 0) {
      CHECK(std::isnan(lse.weighted(x, b)));
    } else {
      CHECK(lse.weighted(x, b) == r.value);
    }
  }
  // b = 1 is the plain form.
  const Eigen::Vector4d x(0.5, -2, 3, 1);
  CHECK(lse.weighted(x, Eigen::Vector4d::Ones()) == Approx(lse(x)).epsilon(4e-16));
  // Special values.
  CHECK(lse.with_sign(x, Eigen::Vector4d::Zero()).value == -inf);
  CHECK(lse.with_sign(x, Eigen::Vector4d::Zero()).sign == 0);
  CHECK(lse.with_sign(Eigen::Vector2d(1, 1), Eigen::Vector2d(2, -2)).sign == 0);  // exact zero sum
  const auto pos = lse.with_sign(Eigen::Vector3d(inf, 1, inf), Eigen::Vector3d(1, -5, 2));
  CHECK(pos.value == inf);
  CHECK(pos.sign == 1);
  const auto neg = lse.with_sign(Eigen::Vector3d(inf, 1, inf), Eigen::Vector3d(1, 5, -2));
  CHECK(neg.value == inf);
  CHECK(neg.sign == -1);
  CHECK(std::isnan(lse.with_sign(Eigen::Vector2d(inf, inf), Eigen::Vector2d(1, -1)).value));
  CHECK(std::isnan(lse.with_sign(x, Eigen::Vector4d(1, std::nan(""), 1, 1)).value));
}

TEST_CASE("LogSumExp: backward passes against central finite differences", "[logsumexp]") {
  const sml::LogSumExp lse;
  std::mt19937 rng(23);
  std::normal_distribution<double> normal(0, 2);
  Eigen::VectorXd x(12), b(12);
  for (Index i = 0; i < 12; ++i) {
    x(i) = normal(rng);
    b(i) = normal(rng);
  }
  const double g = 0.7, h = 1e-6;
  Eigen::VectorXd dx(12), db(12);
  lse.backward(x, g, dx);
  for (Index i = 0; i < 12; ++i) {
    Eigen::VectorXd xp = x, xm = x;
    xp(i) += h;
    xm(i) -= h;
    CHECK(dx(i) == Approx(g * (lse(xp) - lse(xm)) / (2 * h)).epsilon(1e-7).margin(1e-9));
  }
  lse.weighted_backward(x, b, g, dx, db);
  for (Index i = 0; i < 12; ++i) {
    Eigen::VectorXd xp = x, xm = x, bp = b, bm = b;
    xp(i) += h;
    xm(i) -= h;
    bp(i) += h;
    bm(i) -= h;
    CHECK(dx(i)
          == Approx(g * (lse.with_sign(xp, b).value - lse.with_sign(xm, b).value) / (2 * h))
                 .epsilon(1e-6)
                 .margin(1e-8));
    CHECK(db(i)
          == Approx(g * (lse.with_sign(x, bp).value - lse.with_sign(x, bm).value) / (2 * h))
                 .epsilon(1e-6)
                 .margin(1e-8));
  }
  // Rowwise: row i scaled by G(i); a -inf entry gets 0.
  Eigen::MatrixXd X(3, 5);
  X << 1, 2, 3, 4, 5, 0, -std::numeric_limits<double>::infinity(), 1, 0, 2, -1, -1, -1, -1, -1;
  const Eigen::Vector3d G(1, 2, -3);
  Eigen::MatrixXd dX(3, 5);
  lse.rowwise_backward(X, G, dX);
  for (Index i = 0; i < 3; ++i) {
    Eigen::VectorXd d(5);
    lse.backward(X.row(i).transpose(), G(i), d);
    CHECK((dX.row(i).transpose() - d).cwiseAbs().maxCoeff() <= 1e-15);
  }
  CHECK(dX(1, 1) == 0);
  CHECK(dX.row(2).sum() == Approx(-3).epsilon(1e-14));
}
