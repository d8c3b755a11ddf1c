// Sparse distributions of entmax.hpp: Sparsemax, Entmax15 and Entmax(alpha) against the exact
// mpmath table (reference/entmax_table.ipp, written by reference/generate_entmax.py), their
// properties (support, sum, shift invariance, the meeting points alpha = 2, 1.5 and 1), special
// values, storage forms, backward passes against finite differences in double, and the
// Fenchel-Young losses.
#include <algorithm>
#include <cmath>
#include <iostream>
#include <limits>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include <softmaxlab/entmax_loss.hpp>
#include <softmaxlab/entmax_maps.hpp>
#include <softmaxlab/loss.hpp>
#include <softmaxlab/softmax.hpp>

#include "reference/reference_table.hpp"
#include "support.hpp"

namespace softmaxlab_test {

template <class Scalar>
struct EntmaxCase {
  const char* name;
  double alpha;
  int n;
  const Scalar* x;
  const double* y;  // exact output rounded to double
};

#include "reference/entmax_table.ipp"

}  // namespace softmaxlab_test

namespace sml = softmaxlab;
using Index = Eigen::Index;
using softmaxlab_test::AllocationGuard;
using softmaxlab_test::fd_gradient;
using softmaxlab_test::fd_relative_error;
using softmaxlab_test::fd_scalar_gradient;
using softmaxlab_test::same;
using softmaxlab_test::Worst;

namespace {

const double kInf = std::numeric_limits<double>::infinity();
const double kNaN = std::numeric_limits<double>::quiet_NaN();

template <class Scalar>
using Vec = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

template <class Scalar>
const auto& cases() {
  if constexpr (std::is_same_v<Scalar, float>) {
    return softmaxlab_test::kEntmaxCasesF32;
  } else {
    return softmaxlab_test::kEntmaxCasesF64;
  }
}

// |y - exact| in units of eps * (|exact| + floor): relative for large entries, absolute (scaled by
// `floor`, the output's scale being 1) for small ones.
template <class Scalar>
double error_eps(Scalar y, double exact, double floor) {
  const long double eps = std::numeric_limits<Scalar>::epsilon();
  return static_cast<double>(std::fabs(static_cast<long double>(y) - exact)
                             / (eps * (std::fabs(exact) + floor)));
}

// Checks y against case c: -inf inputs exactly 0, every entry within bound eps (|exact| + floor).
template <class Scalar>
void check_case(const softmaxlab_test::EntmaxCase<Scalar>& c, const Vec<Scalar>& y, const char* how,
                double bound, double floor, Worst& worst) {
  for (int i = 0; i < c.n; ++i) {
    const auto at = [&](std::ostream& s) {
      s << how << " " << c.name << " alpha " << c.alpha << " [" << i << "]: x = " << c.x[i]
        << ", y = " << y(i) << ", exact = " << c.y[i];
    };
    if (c.x[i] == -std::numeric_limits<Scalar>::infinity()) {
      worst.update(y(i) == 0 ? 0.0 : kInf, bound, at);
      continue;
    }
    worst.update(error_eps(y(i), c.y[i], floor), bound, at);
  }
}

// Sparsemax / Entmax15 of the case, by the functor matching alpha.
template <class Scalar>
Vec<Scalar> exact_map(double alpha, const Vec<Scalar>& x) {
  return alpha == 2.0 ? Vec<Scalar>(sml::Sparsemax()(x)) : Vec<Scalar>(sml::Entmax15()(x));
}

template <class Scalar>
Vec<Scalar> inputs(const softmaxlab_test::EntmaxCase<Scalar>& c) {
  return Eigen::Map<const Vec<Scalar>>(c.x, c.n);
}

}  // namespace

TEMPLATE_TEST_CASE("Sparsemax and Entmax15 match the exact mpmath thresholds",
                   "[entmax][reference]", float, double) {
  using Scalar = TestType;
  // float: the threshold is computed in double from exact inputs, then one output rounding;
  // double: x - m and the threshold carry a few absolute roundings (output scale 1).
  const bool is_float = std::is_same_v<Scalar, float>;
  const double bound = is_float ? 2.0 : 4.0;
  const double floor = is_float ? 0x1p-24 : 1.0;
  Worst worst;
  int checked = 0;
  for (const auto& c : cases<Scalar>()) {
    if (std::string(c.name).rfind("bisect", 0) == 0)
      continue;
    const Vec<Scalar> x = inputs(c);
    check_case(c, exact_map<Scalar>(c.alpha, x), "apply", bound, floor, worst);
    Vec<Scalar> in_place = x;  // the in-place path sweeps the whole row
    if (c.alpha == 2.0) {
      sml::Sparsemax().apply(in_place, in_place);
    } else {
      sml::Entmax15().apply(in_place, in_place);
    }
    check_case(c, in_place, "in place", bound, floor, worst);
    ++checked;
  }
  std::cout << "entmax table (" << (is_float ? "float" : "double") << ", " << checked
            << " cases): " << worst.report() << "\n";
  INFO(worst.report());
  CHECK(checked >= 20);
  CHECK(worst.ratio <= 1.0);
}

TEMPLATE_TEST_CASE("Entmax(alpha) bisection matches the high-precision reference",
                   "[entmax][reference]", float, double) {
  using Scalar = TestType;
  const bool is_float = std::is_same_v<Scalar, float>;
  // absolute error: 2 eps (float) or 1e-12 (double) on an output of scale 1
  const double bound = is_float ? 2.0 : 1e-12 / std::numeric_limits<double>::epsilon();
  Worst worst;
  for (const auto& c : cases<Scalar>()) {
    const Vec<Scalar> x = inputs(c);
    const Vec<Scalar> y = sml::Entmax(c.alpha)(x);
    for (int i = 0; i < c.n; ++i) {
      const double err =
          std::fabs(static_cast<double>(y(i)) - c.y[i]) / std::numeric_limits<Scalar>::epsilon();
      worst.update(err, bound, [&](std::ostream& s) {
        s << c.name << " alpha " << c.alpha << " [" << i << "]: y = " << y(i)
          << ", exact = " << c.y[i];
      });
      if (c.y[i] == 0 && !(c.x[i] > -kInf))
        CHECK(y(i) == 0);
    }
  }
  std::cout << "entmax bisection (" << (is_float ? "float" : "double")
            << ", absolute): " << worst.report() << "\n";
  INFO(worst.report());
  CHECK(worst.ratio <= 1.0);
}

TEST_CASE("sparse maps: support, sum, shift invariance and the meeting points",
          "[entmax][properties]") {
  const Eigen::MatrixXd X = softmaxlab_test::random_normal(20, 300, 7, 1.5);
  for (Index r = 0; r < X.rows(); ++r) {
    const Eigen::VectorXd x = X.row(r).transpose();
    const Eigen::VectorXd sp = sml::Sparsemax()(x);
    const Eigen::VectorXd e15 = sml::Entmax15()(x);
    // sums to one, non-negative, sparse: support entries are the largest inputs
    CHECK(std::fabs(sp.sum() - 1) <= 1e-14);
    CHECK(std::fabs(e15.sum() - 1) <= 1e-14);
    CHECK(sp.minCoeff() >= 0);
    CHECK((sp.array() > 0).count() < x.size());
    CHECK((e15.array() > 0).count() >= (sp.array() > 0).count());
    // sparsemax: y_i = x_i - tau on the support, so x_i - y_i is one constant there
    double tau_lo = kInf, tau_hi = -kInf, below = -kInf;
    for (Index i = 0; i < x.size(); ++i) {
      if (sp(i) > 0) {
        tau_lo = std::min(tau_lo, x(i) - sp(i));
        tau_hi = std::max(tau_hi, x(i) - sp(i));
      } else {
        below = std::max(below, x(i));
      }
    }
    CHECK(tau_hi - tau_lo <= 1e-14);
    CHECK(below <= tau_hi + 1e-14);
    // shift invariance: a power-of-two shift keeps the inputs exact
    const Eigen::VectorXd shifted = (x.array() + 64.0).matrix();
    CHECK((sml::Sparsemax()(shifted) - sp).cwiseAbs().maxCoeff() <= 1e-13);
    CHECK((sml::Entmax15()(shifted) - e15).cwiseAbs().maxCoeff() <= 1e-13);
    // meeting points: alpha = 2 is sparsemax, 1.5 is Entmax15, 1 is Softmax (bitwise)
    CHECK((sml::Entmax(2.0)(x) - sp).cwiseAbs().maxCoeff() <= 1e-12);
    CHECK((sml::Entmax(1.5)(x) - e15).cwiseAbs().maxCoeff() <= 1e-12);
    CHECK(same(sml::Entmax(1.0)(x), sml::Softmax()(x)));
  }
  SECTION("alpha -> 1 approaches softmax, the gap shrinking with alpha - 1") {
    const Eigen::VectorXd x = X.row(0).transpose().head(40);
    const Eigen::VectorXd soft = sml::Softmax()(x);
    double previous = kInf;
    for (double alpha : {1.2, 1.05, 1.01, 1.001}) {
      const double gap = (sml::Entmax(alpha)(x) - soft).cwiseAbs().maxCoeff();
      INFO("alpha = " << alpha << ": max |entmax - softmax| = " << gap);
      CHECK(gap < previous);
      previous = gap;
    }
    CHECK(previous <= 2e-3);
  }
  SECTION("float rows sum to one within 2e-6 at long lengths") {
    for (Index n : {4096, 100000}) {
      const Eigen::VectorXf x = (softmaxlab_test::random_normal(n, 1, 11, 0.01)).cast<float>();
      const Eigen::VectorXf sp = sml::Sparsemax()(x);
      const Eigen::VectorXf e15 = sml::Entmax15()(x);
      INFO("n = " << n << ", support " << (sp.array() > 0).count());
      CHECK(std::fabs(sp.cast<double>().sum() - 1) <= 2e-6);
      CHECK(std::fabs(e15.cast<double>().sum() - 1) <= 2e-6);
    }
  }
}

TEMPLATE_TEST_CASE("sparse maps: special values", "[entmax][special]", float, double) {
  using Scalar = TestType;
  const Scalar inf = std::numeric_limits<Scalar>::infinity();
  const Scalar nan = std::numeric_limits<Scalar>::quiet_NaN();
  auto each = [](auto&& check) {
    check(sml::Sparsemax(), "Sparsemax");
    check(sml::Entmax15(), "Entmax15");
    check(sml::Entmax(1.3), "Entmax(1.3)");
  };
  each([&](const auto& f, const char* what) {
    INFO(what);
    Vec<Scalar> x(4);
    x << Scalar(1), nan, Scalar(0), Scalar(2);
    CHECK(f(x).array().isNaN().all());
    x << -inf, Scalar(0.5), -inf, Scalar(0.25);
    Vec<Scalar> y = f(x);
    CHECK(y(0) == 0);
    CHECK(y(2) == 0);
    CHECK(std::fabs(static_cast<double>(y.sum()) - 1) <= 1e-6);
    x.setConstant(-inf);
    CHECK((f(x).array() == 0).all());
    x << inf, Scalar(3), inf, -inf;
    y = f(x);
    CHECK(y(0) == Scalar(0.5));
    CHECK(y(2) == Scalar(0.5));
    CHECK(y(1) == 0);
    CHECK(y(3) == 0);
    Vec<Scalar> one(1);
    one << std::numeric_limits<Scalar>::max();
    CHECK(f(one)(0) == 1);
    one << Scalar(-1e-30);
    CHECK(f(one)(0) == 1);
    const Vec<Scalar> empty(0);
    CHECK(f(empty).size() == 0);
    // huge finite values: only the entries at the max share the mass
    x << std::numeric_limits<Scalar>::max(), -std::numeric_limits<Scalar>::max(),
        std::numeric_limits<Scalar>::max(), Scalar(0);
    y = f(x);
    const double eps = std::numeric_limits<Scalar>::epsilon();
    CHECK(std::fabs(static_cast<double>(y(0)) - 0.5) <= eps);
    CHECK(std::fabs(static_cast<double>(y(2)) - 0.5) <= eps);
    CHECK(y(1) == 0);
  });
}

TEST_CASE("Entmax rejects alpha outside [1, 2] naming the value", "[entmax][errors]") {
  for (double alpha : {0.999, 2.001, -1.0, kNaN, kInf}) {
    INFO("alpha = " << alpha);
    CHECK_THROWS_AS(sml::Entmax(alpha), std::invalid_argument);
  }
  CHECK_THROWS_WITH(sml::Entmax(2.5), Catch::Contains("alpha") && Catch::Contains("2.5"));
  CHECK_NOTHROW(sml::Entmax(1.0));
  CHECK_NOTHROW(sml::Entmax(2.0));
  Eigen::VectorXd x(3), y(4);
  x << 1, 2, 3;
  CHECK_THROWS_AS(sml::Sparsemax().apply(x, y), std::invalid_argument);
}

TEMPLATE_TEST_CASE("sparse maps: storage forms, in place and no allocation", "[entmax][forms]",
                   float, double) {
  using Scalar = TestType;
  using Mat = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  const Mat X = softmaxlab_test::random_normal(6, 200, 3, 1.0).cast<Scalar>();
  auto each = [](auto&& check) {
    check(sml::Sparsemax());
    check(sml::Entmax15());
    check(sml::Entmax(1.7));
  };
  each([&](const auto& f) {
    const Mat R = f.rowwise(X);  // strided rows of a column-major matrix
    const Mat C = f.colwise(Mat(X.transpose()));
    CHECK(same(R, Mat(C.transpose())));
    for (Index r = 0; r < X.rows(); ++r) {
      const Vec<Scalar> xr = X.row(r).transpose();
      Vec<Scalar> y(xr.size()), in_place = xr;
      {
        AllocationGuard guard;
        f.apply(xr, y);
        f.apply(in_place, in_place);
        CHECK(guard.allocations() == 0);
      }
      CHECK(same(y, Vec<Scalar>(R.row(r).transpose())));
      CHECK(same(y, in_place));
    }
  });
}

namespace {

// A row whose entries all stay at least `margin` away from the threshold (finite differences of
// step 2h must not cross a kink), checked from the output: the gap of an entry is
// (alpha - 1) x_i - tau, recovered from the support as (alpha - 1) x_i - y_i^(alpha - 1).
bool clear_of_kinks(const Eigen::VectorXd& x, const Eigen::VectorXd& y, double alpha,
                    double margin) {
  double tau = -kInf;
  for (Index i = 0; i < x.size(); ++i) {
    if (y(i) > 0)
      tau = (alpha - 1) * x(i) - std::pow(y(i), alpha - 1);
  }
  for (Index i = 0; i < x.size(); ++i) {
    if (std::fabs((alpha - 1) * x(i) - tau) < margin)
      return false;
  }
  return true;
}

}  // namespace

TEST_CASE("sparse maps: backward matches finite differences in double", "[entmax][backward][fd]") {
  Worst worst;
  auto check = [&](const auto& f, double alpha, const char* what) {
    int used = 0;
    for (unsigned seed = 1; used < 6 && seed < 60; ++seed) {
      const Eigen::VectorXd x = softmaxlab_test::random_normal(12, 1, seed, 1.0);
      const Eigen::VectorXd y = f(x);
      if (!clear_of_kinks(x, y, alpha, 0.02))
        continue;
      ++used;
      const Eigen::VectorXd dy = softmaxlab_test::random_normal(12, 1, 100 + seed, 1.0);
      const Eigen::VectorXd dx = f.backward(x, y, dy);
      const Eigen::VectorXd fd = fd_gradient([&](const Eigen::VectorXd& v) { return f(v); }, x, dy);
      const double err = fd_relative_error(dx, fd, x);
      worst.update(err, 1e-6, [&](std::ostream& s) { s << what << " seed " << seed; });
      // outside the support the gradient is exactly 0
      for (Index i = 0; i < x.size(); ++i) {
        if (y(i) == 0)
          CHECK(dx(i) == 0);
      }
    }
    INFO(what);
    CHECK(used == 6);
  };
  check(sml::Sparsemax(), 2.0, "Sparsemax");
  check(sml::Entmax15(), 1.5, "Entmax15");
  check(sml::Entmax(1.3), 1.3, "Entmax(1.3)");
  check(sml::Entmax(1.8), 1.8, "Entmax(1.8)");
  std::cout << "entmax backward vs finite differences: " << worst.report() << "\n";
  INFO(worst.report());
  CHECK(worst.ratio <= 1.0);
  SECTION("Entmax(1) uses softmax's backward") {
    const Eigen::VectorXd x = softmaxlab_test::random_normal(9, 1, 5, 1.0);
    const Eigen::VectorXd dy = softmaxlab_test::random_normal(9, 1, 6, 1.0);
    const Eigen::VectorXd y = sml::Softmax()(x);
    CHECK(same(sml::Entmax(1.0).backward(x, y, dy), sml::Softmax().backward(x, y, dy)));
  }
  SECTION("NaN in y gives a NaN row") {
    Eigen::VectorXd y(3), dy(3);
    y << 0.5, kNaN, 0.5;
    dy << 1, 2, 3;
    CHECK(sml::Sparsemax().backward(y, y, dy).array().isNaN().all());
  }
}

// ---------------------------------------------------------------------------------------------
// Fenchel-Young losses

namespace {

// The sparsemax loss in Martins and Astudillo's closed form (2016, eq. 17), for label c:
//   L = -z_c + 1/2 sum_{j in S} (z_j^2 - tau^2) + 1/2, from a sort-based threshold in long double.
long double sparsemax_loss_reference(const Eigen::VectorXd& z, int c) {
  std::vector<long double> s(z.data(), z.data() + z.size());
  std::sort(s.rbegin(), s.rend());
  long double cum = 0, tau = 0;
  for (std::size_t k = 0; k < s.size(); ++k) {
    cum += s[k];
    const long double t = (cum - 1) / static_cast<long double>(k + 1);
    if (s[k] > t)
      tau = t;
  }
  long double acc = 0;
  for (Index j = 0; j < z.size(); ++j) {
    if (z(j) > tau)
      acc += static_cast<long double>(z(j)) * z(j) - tau * tau;
  }
  return -static_cast<long double>(z(c)) + acc / 2 + 0.5L;
}

}  // namespace

TEST_CASE("Fenchel-Young losses: exact values", "[entmax][loss]") {
  // Hand-derived: z = (0.5, 0.2, -1): tau = -0.15, y = (0.65, 0.35, 0);
  // label 2: H(y) + <y - e_2, z> = (1 - 0.65^2 - 0.35^2) / 2 + 1.395 = 1.6225.
  Eigen::MatrixXd z(1, 3);
  z << 0.5, 0.2, -1;
  CHECK(sml::SparsemaxLoss()(z, std::vector<int>{2}) == Approx(1.6225).epsilon(1e-15));
  // The loss vanishes exactly where the prediction equals the target.
  z << 3, 0, -1;
  CHECK(sml::SparsemaxLoss()(z, std::vector<int>{0}) == 0);
  CHECK(sml::EntmaxLoss(1.5)(z, std::vector<int>{0}) == Approx(0).margin(1e-15));
  const Eigen::MatrixXd X = softmaxlab_test::random_normal(8, 9, 17, 1.5);
  std::vector<int> labels;
  long double sum = 0;
  for (Index n = 0; n < X.rows(); ++n) {
    labels.push_back(static_cast<int>(n % 9));
    sum += sparsemax_loss_reference(X.row(n).transpose(), labels.back());
  }
  CHECK(sml::SparsemaxLoss(sml::Reduction::Sum)(X, labels)
        == Approx(static_cast<double>(sum)).epsilon(1e-14));
  CHECK(sml::SparsemaxLoss()(X, labels) == Approx(static_cast<double>(sum / 8)).epsilon(1e-14));
  SECTION("a target distribution equal to the prediction gives 0; losses are >= 0") {
    for (double alpha : {1.2, 1.5, 2.0}) {
      const sml::EntmaxLoss loss(alpha, sml::Reduction::None);
      const Eigen::MatrixXd Y = sml::Entmax(alpha).rowwise(X);
      Eigen::VectorXd per(8);
      loss(X, Y, sml::RowOutputs().with_losses(per));
      INFO("alpha " << alpha);
      CHECK(per.cwiseAbs().maxCoeff() <= 1e-13);
      loss(X, labels, sml::RowOutputs().with_losses(per));
      CHECK(per.minCoeff() >= 0);
    }
  }
}

TEST_CASE("Fenchel-Young losses: gradients y - q match finite differences", "[entmax][loss][fd]") {
  const Eigen::MatrixXd z = softmaxlab_test::random_normal(5, 7, 23, 1.0);
  const std::vector<int> labels{3, 0, 6, -100, 3};
  Eigen::MatrixXd t = softmaxlab_test::random_normal(5, 7, 24, 1.0).array().exp();
  for (Index n = 0; n < 5; ++n)
    t.row(n) /= t.row(n).sum();
  Worst worst;
  for (double alpha : {2.0, 1.5, 1.3}) {
    for (auto reduction : {sml::Reduction::Mean, sml::Reduction::Sum, sml::Reduction::None}) {
      const sml::EntmaxLoss loss(alpha, reduction);
      Eigen::MatrixXd g(5, 7);
      loss(z, labels, g);
      const Eigen::MatrixXd fd =
          fd_scalar_gradient([&](const Eigen::MatrixXd& v) { return loss(v, labels); }, z);
      worst.update(fd_relative_error(g, fd, z), 1e-6,
                   [&](std::ostream& s) { s << "labels, alpha " << alpha; });
      CHECK(g.row(3).isZero(0));  // ignored sample
      loss(z, t, g);
      const Eigen::MatrixXd fd2 =
          fd_scalar_gradient([&](const Eigen::MatrixXd& v) { return loss(v, t); }, z);
      worst.update(fd_relative_error(g, fd2, z), 1e-6,
                   [&](std::ostream& s) { s << "distributions, alpha " << alpha; });
    }
  }
  std::cout << "Fenchel-Young loss gradients vs finite differences: " << worst.report() << "\n";
  INFO(worst.report());
  CHECK(worst.ratio <= 1.0);
}

TEMPLATE_TEST_CASE("Fenchel-Young losses: forms, special values and errors", "[entmax][loss]",
                   float, double) {
  using Scalar = TestType;
  using Mat = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  const Mat z = softmaxlab_test::random_normal(4, 6, 29, 1.0).cast<Scalar>();
  const Eigen::VectorXi labels = (Eigen::VectorXi(4) << 0, 5, 1, 1).finished();
  const sml::EntmaxLoss loss(1.5);
  Mat g(4, 6), in_place = z;
  double a = 0, b = 0;
  {
    AllocationGuard guard;
    a = loss(z, labels, g);
    b = loss(in_place, labels, in_place);
    CHECK(guard.allocations() == 0);
  }
  CHECK(a == b);
  CHECK(same(g, in_place));
  // the gradient rows are y - q (Mean: divided by N), so they sum to 0
  CHECK(static_cast<double>(g.rowwise().sum().cwiseAbs().maxCoeff()) <= 1e-6);
  // a masked class (-inf) without target is allowed; a NaN row gives NaN
  Mat masked = z;
  masked(0, 3) = -std::numeric_limits<Scalar>::infinity();
  CHECK(std::isfinite(loss(masked, labels)));
  masked(1, 2) = std::numeric_limits<Scalar>::quiet_NaN();
  CHECK(std::isnan(loss(masked, labels, g)));
  CHECK(g.row(1).array().isNaN().all());
  CHECK_THROWS_WITH(sml::EntmaxLoss(1.0), Catch::Contains("alpha") && Catch::Contains("1"));
  CHECK_THROWS_WITH(sml::EntmaxLoss(2.5), Catch::Contains("alpha") && Catch::Contains("2.5"));
  CHECK_THROWS_WITH(loss(z, std::vector<int>{0, 1, 7, 0}),
                    Catch::Contains("label 7") && Catch::Contains("[0, 6)"));
  CHECK_THROWS_WITH(loss(z, Mat(3, 6)), Catch::Contains("targets"));
}

// Fuzz finding (fuzz_entmax): a double Entmax15 row of 913 equal entries (and one far below) gave
// 1/913 (1 + 1.4e-12) each, summing to 1 + 1.4e-12: the threshold's quadratic was solved once from
// far below, where its discriminant cancels. Rows of k equal entries must give exactly 1/k within
// the documented per-entry bound, whatever k.
TEMPLATE_TEST_CASE("Sparsemax and Entmax15: long rows of equal entries give 1/k",
                   "[entmax][regression]", float, double) {
  using Scalar = TestType;
  using Vec = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  const double eps = std::numeric_limits<Scalar>::epsilon();
  double worst = 0;
  for (const Index k : {Index(300), Index(913), Index(4096), Index(100000)}) {
    for (const double level : {0.0, 2.5, -1e4}) {
      Vec x = Vec::Constant(k + 3, static_cast<Scalar>(level));
      x(1) = static_cast<Scalar>(level - 1e30);  // far below: 0
      x(2) = -std::numeric_limits<Scalar>::infinity();
      x(k + 2) = static_cast<Scalar>(level - 5.0);  // below the threshold for every k here
      const Vec ys = sml::Sparsemax()(x);
      const Vec ye = sml::Entmax15()(x);
      for (const Vec* y : {&ys, &ye}) {
        long double sum = 0;
        for (Index i = 0; i < y->size(); ++i) {
          sum += (*y)(i);
          const bool support = i != 1 && i != 2 && i != k + 2;
          const double want = support ? 1.0 / static_cast<double>(k) : 0.0;
          const double err = std::fabs(static_cast<double>((*y)(i)) - want) / (eps * (want + 1));
          worst = std::max(worst, err);
        }
        INFO("k " << k << ", level " << level << ", sum - 1 = " << static_cast<double>(sum - 1));
        // Float outputs round a double threshold once; double ones carry the threshold's plain
        // double sums over the support: the documented (8 + k / 4) eps (measured k / 8).
        const double sum_bound = std::is_same_v<Scalar, float> ? 8 * eps : (8 + k / 4.0) * eps;
        CHECK(std::fabs(static_cast<double>(sum) - 1.0) <= sum_bound);
      }
    }
  }
  std::cout << "Sparsemax/Entmax15 rows of k equal entries, "
            << (std::is_same_v<Scalar, float> ? "float" : "double") << ": worst " << worst
            << " eps (|y| + 1) (bound 4)\n";
  CHECK(worst <= 4);
}
