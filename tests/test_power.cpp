// PowerSoftmax: the three forms against the exact mpmath tables (tests/reference/power_*.ipp, p in
// {2, 4, 6, 8}, float and double, exact division and Goldschmidt), then the policy: parameters,
// special values, masking, empty rows, no allocation, rowwise/colwise = per-vector.
#include <cmath>
#include <iostream>
#include <limits>
#include <random>
#include <type_traits>

#include <catch2/catch.hpp>

#include <softmaxlab/power.hpp>

#include "reference/power_f32.ipp"
#include "reference/power_f64.ipp"
#include "support.hpp"

namespace sml = softmaxlab;
using Index = Eigen::Index;
using softmaxlab_test::PowerCase;
using softmaxlab_test::Worst;

namespace {

template <class Scalar>
using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

const sml::PowerForm kForms[] = {sml::PowerForm::Stable, sml::PowerForm::Lipschitz,
                                 sml::PowerForm::LengthAgnostic};
const char* const kFormNames[] = {"Stable", "Lipschitz", "LengthAgnostic"};

struct Summary {
  std::string what;
  Worst worst;
  ~Summary() { std::cout << what << ": " << worst.report() << "\n"; }
  void add(const Worst& w) {
    if (!(w.ratio <= worst.ratio))
      worst = w;
  }
};

// Checks one table row for one form and p; `extra_eps` widens the bound (Goldschmidt).
template <class Scalar>
Worst check_case(const PowerCase<Scalar>& c, int form, int pi, const sml::PowerSoftmax& f,
                 double bound) {
  const Vector<Scalar> x = Eigen::Map<const Vector<Scalar>>(c.x, static_cast<Index>(c.n));
  const Vector<Scalar> y = f(x);
  const double* hi = c.hi[form][pi];
  const double* lo = c.lo[form][pi];
  Worst worst;
  for (std::size_t i = 0; i < c.n; ++i) {
    const auto at = [&](std::ostream& s) {
      s << c.name << "[" << i << "] " << kFormNames[form] << " p = " << f.p() << ": x = " << c.x[i]
        << ", y = " << y(i) << ", exact = " << hi[i];
    };
    if (std::isnan(hi[i])) {
      worst.update(std::isnan(y(i)) ? 0.0 : INFINITY, 1.0, at);
    } else if (hi[i] == 0 && lo[i] == 0) {
      worst.update(y(i) == 0 ? 0.0 : INFINITY, 1.0, at);  // exact zeros stay exact
    } else {
      worst.update(softmaxlab_test::relative_error_eps(y(i), hi[i], lo[i]), bound, at);
    }
  }
  return worst;
}

template <class Scalar, std::size_t N>
void check_table(const PowerCase<Scalar> (&table)[N], const char* type) {
  for (int form = 0; form < 3; ++form) {
    for (int pi = 0; pi < 4; ++pi) {
      const int p = softmaxlab_test::kPowerValues[pi];
      Summary summary{std::string("PowerSoftmax ") + kFormNames[form] + " p=" + std::to_string(p)
                          + " " + type + " (exact division)",
                      {}};
      for (const auto& c : table) {
        const sml::PowerSoftmax f(p, kForms[form], c.eps);
        const Worst w = check_case(c, form, pi, f, 2.0 * p + 4.0);
        INFO(w.report());
        CHECK(w.ratio <= 1.0);
        summary.add(w);
      }
    }
  }
}

}  // namespace

TEST_CASE("PowerSoftmax matches the exact tables within (2p + 4) eps in every form",
          "[power][reference]") {
  SECTION("float") {
    check_table(softmaxlab_test::kPowerCasesF32, "float");
  }
  SECTION("double") {
    check_table(softmaxlab_test::kPowerCasesF64, "double");
  }
}

namespace {

template <class Scalar, std::size_t N>
void check_goldschmidt(const PowerCase<Scalar> (&table)[N], int iterations) {
  const double eps = std::numeric_limits<Scalar>::epsilon();
  for (int form = 0; form < 3; ++form) {
    for (int pi = 0; pi < 4; ++pi) {
      const int p = softmaxlab_test::kPowerValues[pi];
      for (const auto& c : table) {
        sml::PowerSoftmaxOptions o;
        o.form = kForms[form];
        o.eps = c.eps;
        o.reciprocal = sml::ReciprocalMethod::Goldschmidt;
        o.iterations = iterations;
        const sml::PowerSoftmax f(p, o);
        // The documented bound: (2p + 4) eps + e0^(2^k) + (2k + 2) u over the row's range. The
        // range is widest for the Stable form (eps' = 0), so its e0 bounds every form's.
        // With auto iterations each form stops once its own truncation is <= u, with at most
        // the Stable form's k (its range is the widest).
        const auto range = f.reciprocal_range(static_cast<Index>(c.n));
        const int k =
            iterations > 0 ? iterations : f.iterations_for<Scalar>(static_cast<Index>(c.n));
        const double trunc = iterations > 0 ? range.truncation_error(k) : eps / 2;
        const double extra = (trunc + (2.0 * k + 2.0) * eps / 2) / eps;
        const Worst w = check_case(c, form, pi, f, 2.0 * p + 4.0 + extra);
        INFO(w.report() << " (k = " << k << ")");
        CHECK(w.ratio <= 1.0);
      }
    }
  }
}

}  // namespace

TEST_CASE("PowerSoftmax with the Goldschmidt reciprocal stays within its documented bound",
          "[power][reference][goldschmidt]") {
  SECTION("auto iterations: float and double") {
    check_goldschmidt(softmaxlab_test::kPowerCasesF32, 0);
    check_goldschmidt(softmaxlab_test::kPowerCasesF64, 0);
  }
  SECTION("few iterations: the truncation term dominates and the bound still holds") {
    check_goldschmidt(softmaxlab_test::kPowerCasesF32, 12);
    check_goldschmidt(softmaxlab_test::kPowerCasesF64, 20);
  }
  SECTION("auto iterations reach the exact-division accuracy class") {
    const sml::PowerSoftmax f(
        4, {sml::PowerForm::Stable, 1e-6, sml::ReciprocalMethod::Goldschmidt, 0});
    const int k = f.iterations_for<float>(1000);
    // l = 1 / (1000 * 16): k = ceil(log2(ln(2^24) / (2 l))) = 18 (hand count).
    CHECK(k == 18);
    const double trunc = f.reciprocal_range(1000).truncation_error(k);
    CHECK(trunc <= std::numeric_limits<float>::epsilon() / 2);
    CHECK(f.reciprocal_range(1000).truncation_error(k - 1)
          > std::numeric_limits<float>::epsilon() / 2);
  }
}

TEST_CASE("PowerSoftmax parameters: odd, zero, negative or too large p, bad eps, bad iterations",
          "[power][parameters]") {
  for (int p : {0, -2, -4, 1, 3, 5, 7, 65, 66, 100}) {
    INFO("p = " << p);
    CHECK_THROWS_AS(sml::PowerSoftmax(p), std::invalid_argument);
  }
  CHECK_THROWS_WITH(sml::PowerSoftmax(3), Catch::Contains("p") && Catch::Contains("3"));
  for (double eps : {0.0, -1.0, std::nan(""), double(INFINITY)}) {
    CHECK_THROWS_AS(sml::PowerSoftmax(4, sml::PowerForm::Lipschitz, eps), std::invalid_argument);
    CHECK_THROWS_AS(sml::PowerSoftmax(4, sml::PowerForm::LengthAgnostic, eps),
                    std::invalid_argument);
    CHECK_NOTHROW(sml::PowerSoftmax(4, sml::PowerForm::Stable, eps));  // Stable ignores eps
  }
  CHECK_THROWS_WITH(sml::PowerSoftmax(4, sml::PowerForm::Lipschitz, -1.0),
                    Catch::Contains("eps") && Catch::Contains("-1"));
  sml::PowerSoftmaxOptions o;
  o.reciprocal = sml::ReciprocalMethod::Goldschmidt;
  for (int k : {-1, 65}) {
    o.iterations = k;
    CHECK_THROWS_WITH(sml::PowerSoftmax(4, o), Catch::Contains("iterations"));
  }
  // the one reciprocal enum: PowerSoftmax takes Exact and Goldschmidt, and names Newton
  o.iterations = 0;
  o.reciprocal = sml::ReciprocalMethod::Newton;
  CHECK_THROWS_WITH(sml::PowerSoftmax(4, o),
                    Catch::Contains("reciprocal") && Catch::Contains("Newton"));
  // defaults and accessors
  const sml::PowerSoftmax f;
  CHECK(f.p() == 4);
  CHECK(f.form() == sml::PowerForm::Stable);
  CHECK(sml::PowerSoftmax(6).p() == 6);
  for (int p = 2; p <= 64; p += 2)
    CHECK_NOTHROW(sml::PowerSoftmax(p));
}

TEMPLATE_TEST_CASE("PowerSoftmax special values on contiguous and strided rows", "[power][special]",
                   float, double) {
  using S = TestType;
  using Mat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;  // column-major: rows are strided
  const S inf = std::numeric_limits<S>::infinity();
  const S nan = std::numeric_limits<S>::quiet_NaN();
  const S big = std::numeric_limits<S>::max();
  Mat x(6, 37);
  x.setZero();
  for (Index j = 0; j < 37; ++j) {
    x(0, j) = S(0.1) * S(j - 18);                      // regular
    x(1, j) = j == 20 ? nan : S(j);                    // NaN
    x(2, j) = 0;                                       // all zero
    x(3, j) = j == 3 ? inf : (j == 30 ? -inf : S(j));  // two infinities share the mass
    x(4, j) = j % 2 ? big : -big;                      // near the top of the range: no overflow
    x(5, j) = j == 7 ? nan : (j == 8 ? inf : 0);       // NaN wins over inf and zeros
  }
  for (int form = 0; form < 3; ++form) {
    const sml::PowerSoftmax f(4, kForms[form], 1e-3);
    INFO(kFormNames[form]);
    for (int strided = 0; strided < 2; ++strided) {
      Mat y(6, 37);
      if (strided) {
        f.rowwise(x, y);
      } else {
        for (Index i = 0; i < 6; ++i) {
          const Vector<S> row = x.row(i).transpose();
          y.row(i) = f(row).transpose();
        }
      }
      CHECK(y.row(0).allFinite());
      CHECK(y.row(1).array().isNaN().all());
      CHECK(y.row(5).array().isNaN().all());
      const S zero_value = form == 0 ? S(1) / S(37) : S(0);
      CHECK((y.row(2).array() == zero_value).all());
      CHECK(y(3, 3) == S(0.5));
      CHECK(y(3, 30) == S(0.5));
      CHECK(y.row(3).sum() == S(1));
      // +-MAX: every |x| equal, so every entry gets 1/37 (within the bound) in Stable
      if (form == 0) {
        const S eps = std::numeric_limits<S>::epsilon();
        CHECK(((y.row(4).array() - S(1) / S(37)).abs() <= 12 * eps / 37).all());
      }
      CHECK(y.row(4).allFinite());
    }
  }
}

TEMPLATE_TEST_CASE(
    "PowerSoftmax policy: empty in and out, wrong output sizes throw, long rows sum to one",
    "[power][policy]", float, double) {
  using S = TestType;
  const sml::PowerSoftmax f;
  const Vector<S> empty;
  CHECK(f(empty).size() == 0);
  Vector<S> out;
  f.apply(empty, out);
  Vector<S> bad(3);
  CHECK_THROWS_AS(f.apply(Vector<S>::Ones(4), bad), std::invalid_argument);
  CHECK_THROWS_AS(f.masked(Vector<S>::Ones(4), Eigen::VectorXi::Ones(3)), std::invalid_argument);
  // a long row sums to 1 (paired compensated sums)
  std::mt19937 gen(7);
  std::normal_distribution<S> normal;
  Vector<S> x(1 << 20);
  for (Index i = 0; i < x.size(); ++i)
    x(i) = normal(gen);
  const Vector<S> y = f(x);
  const long double sum = y.template cast<long double>().sum();
  CHECK(std::fabs(static_cast<double>(sum - 1)) <= (std::is_same_v<S, float> ? 2e-6 : 1e-14));
}

TEST_CASE("PowerSoftmax apply and apply_masked allocate nothing, in place and strided",
          "[power][allocation]") {
  Eigen::MatrixXf X = Eigen::MatrixXf::Random(16, 100);
  Eigen::MatrixXf Y(16, 100);
  Eigen::VectorXf v = Eigen::VectorXf::Random(1000), w(1000);
  Eigen::VectorXi mask = Eigen::VectorXi::Ones(1000);
  mask.head(10).setZero();
  sml::PowerSoftmaxOptions o;
  o.reciprocal = sml::ReciprocalMethod::Goldschmidt;
  const sml::PowerSoftmax f(4), g(8, o), h(6, sml::PowerForm::LengthAgnostic, 1e-3);
  softmaxlab_test::AllocationGuard guard;
  f.apply(v, w);
  g.apply(v, w);
  h.apply(v * 2.0f, w);  // an expression: evaluated into w
  f.apply(w, w);         // in place
  f.apply_masked(v, mask, w);
  f.rowwise(X, Y);  // strided rows
  g.colwise(X, Y);
  f.apply(X.row(3), Y.row(3));
  CHECK(guard.allocations() == 0);
}

TEST_CASE("PowerSoftmax rowwise and colwise match the per-vector results exactly",
          "[power][functor]") {
  const Eigen::MatrixXd X = Eigen::MatrixXd::Random(9, 41) * 5;
  for (int form = 0; form < 3; ++form) {
    const sml::PowerSoftmax f(6, kForms[form], 0.5);
    const Eigen::MatrixXd R = f.rowwise(X);
    const Eigen::MatrixXd C = f.colwise(X);
    for (Index i = 0; i < X.rows(); ++i) {
      const Eigen::VectorXd row = X.row(i).transpose();
      CHECK((R.row(i).transpose() - f(row)).cwiseAbs().maxCoeff() == 0.0);
    }
    for (Index j = 0; j < X.cols(); ++j) {
      const Eigen::VectorXd col = X.col(j);
      CHECK((C.col(j) - f(col)).cwiseAbs().maxCoeff() == 0.0);
    }
  }
}

TEST_CASE("PowerSoftmax masked form: y = m x^p / sum m x^p, masked entries exactly 0",
          "[power][mask]") {
  Eigen::VectorXd x(8);
  x << 1, -2, 3, std::nan(""), 0.5, INFINITY, -1, 2;
  Eigen::Matrix<bool, Eigen::Dynamic, 1> keep(8);
  keep << true, true, true, false, true, false, false, true;
  const sml::PowerSoftmax f(2);
  const Eigen::VectorXd y = f.masked(x, keep);
  // NaN and inf sit under a zero mask: they are ignored
  const double s = 1 + 4 + 9 + 0.25 + 4;
  const double expect[] = {1 / s, 4 / s, 9 / s, 0, 0.25 / s, 0, 0, 4 / s};
  for (Index i = 0; i < 8; ++i) {
    INFO("i = " << i);
    CHECK(y(i) == Approx(expect[i]).epsilon(1e-15));
    if (!keep(i))
      CHECK(y(i) == 0.0);
  }
  // the same as the unmasked function on the kept entries
  Eigen::VectorXd kept(5);
  kept << 1, -2, 3, 0.5, 2;
  const Eigen::VectorXd ref = f(kept);
  CHECK(y(0) == ref(0));
  CHECK(y(7) == ref(4));
  // all masked: zeros; kept entries all zero: uniform over the kept ones (Stable)
  CHECK((f.masked(x, Eigen::VectorXi::Zero(8)).array() == 0).all());
  Eigen::VectorXd z = Eigen::VectorXd::Zero(8);
  z(3) = 5;
  Eigen::VectorXi m = Eigen::VectorXi::Ones(8);
  m(3) = 0;
  const Eigen::VectorXd u = f.masked(z, m);
  CHECK(u(3) == 0.0);
  CHECK(u(0) == 1.0 / 7);
  // LengthAgnostic uses the kept count as n: (x^p / n) / (eps + mean) over kept entries
  const sml::PowerSoftmax la(2, sml::PowerForm::LengthAgnostic, 0.25);
  const Eigen::VectorXd yl = la.masked(x, keep);
  CHECK(yl(2) == Approx(9 / (5 * 0.25 + s)).epsilon(1e-15));
  // a NaN under a kept entry makes the row NaN
  keep(3) = true;
  CHECK(f.masked(x, keep).array().isNaN().all());
}

// Rows beyond 32 KiB take the recompute path (powers summed, then recomputed with the factor).
// Contiguous, strided and in-place rows must give the same bits, and the (2p + 4) eps bound must
// hold against a long double recomputation.
TEMPLATE_TEST_CASE("PowerSoftmax long rows: every layout gives the same bits, within the bound",
                   "[power][long]", float, double) {
  using Scalar = TestType;
  std::mt19937 rng(17);
  std::normal_distribution<double> normal(0.0, 3.0);
  const double eps = std::numeric_limits<Scalar>::epsilon();
  for (const Index n : {Index(20000), Index(100003)}) {
    // min / 16: subnormal entries, whose power-of-two shift exceeds the exponent range and is
    // applied in two steps (kTwo).
    const double tiny = static_cast<double>(std::numeric_limits<Scalar>::min()) / 16;
    for (const double scale : {1.0, tiny}) {
      Vector<Scalar> x(n);
      for (Index i = 0; i < n; ++i)
        x(i) = static_cast<Scalar>(normal(rng) * scale);
      // A strided copy of the row: column 1 of an n x 2 row-major matrix (stride 2).
      Eigen::Matrix<Scalar, Eigen::Dynamic, 2, Eigen::RowMajor> strided(n, 2);
      strided.col(0).setZero();
      strided.col(1) = x;
      for (int form = 0; form < 3; ++form) {
        for (const int p : {2, 4, 6, 10}) {
          const sml::PowerSoftmax f(p, kForms[form], 0.25);
          Vector<Scalar> y(n);
          f.apply(x, y);
          Vector<Scalar> ys(n);
          f.apply(strided.col(1), ys);
          Vector<Scalar> inplace = x;
          f.apply(inplace, inplace);
          INFO("n = " << n << ", scale " << scale << ", " << kFormNames[form] << ", p = " << p);
          CHECK((y.array() == ys.array()).all());
          CHECK((y.array() == inplace.array()).all());
          // Long double reference on the same power-of-two scaling (eps scaled as the header
          // documents: eps' = eps 2^(p shift), times n for LengthAgnostic).
          const long double c = x.cwiseAbs().maxCoeff();
          int e = 0;
          std::frexp(c, &e);
          const int shift = 1 - e;
          long double sum = 0;
          for (Index i = 0; i < n; ++i)
            sum += std::pow(std::ldexp(static_cast<long double>(x(i)), shift), p);
          long double eps_scaled = 0;
          if (form > 0)
            eps_scaled = std::ldexp(0.25L, p * shift) * (form == 2 ? n : 1);
          Worst worst;
          for (Index i = 0; i < n; ++i) {
            const long double exact =
                std::pow(std::ldexp(static_cast<long double>(x(i)), shift), p) / (sum + eps_scaled);
            const long double floor = std::numeric_limits<Scalar>::min();
            const double err = static_cast<double>(std::fabs(y(i) - exact)
                                                   / (std::max(std::fabs(exact), floor) * eps));
            worst.update(err, 2.0 * p + 4.0, [&](std::ostream& s) {
              s << "x[" << i << "] = " << x(i) << ", y = " << y(i) << ", exact = " << exact;
            });
          }
          INFO(worst.report());
          CHECK(worst.ratio <= 1.0);
        }
      }
    }
  }
}

// The batch kernel of contiguous rows (compute_rows: the default form's rows are pipelined, the
// last pass of one row issued after the next row's power pass) against apply() on each row, bit
// for bit, with rows of special values between regular ones, in place and through colwise; rows
// over 32 KiB (float 9,000) and the other forms take the per-row path.
TEMPLATE_TEST_CASE("PowerSoftmax rowwise batches equal apply() row by row, bit for bit",
                   "[power][functor]", float, double) {
  using S = TestType;
  using RowMajor = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const S nan = std::numeric_limits<S>::quiet_NaN(), inf = std::numeric_limits<S>::infinity();
  std::mt19937 gen(22);
  std::normal_distribution<S> normal(0, 3);
  for (const Index n : {Index(1), Index(17), Index(64), Index(1000), Index(4096), Index(9000)}) {
    const Index rows = 7;
    RowMajor x(rows, n);
    for (Index i = 0; i < x.size(); ++i)
      x.data()[i] = normal(gen);
    x(1, n / 2) = nan;                                      // NaN beside finite values
    x.row(3).setZero();                                     // all zero
    x(4, 0) = inf;                                          // one infinity
    x(5, n - 1) = std::numeric_limits<S>::max();            // near the top of the range
    x.row(6) *= std::numeric_limits<S>::denorm_min() * 64;  // tiny: the two-factor scaling
    for (const auto& f : {sml::PowerSoftmax(4), sml::PowerSoftmax(6),
                          sml::PowerSoftmax(4, sml::PowerForm::Lipschitz, 1e-3)}) {
      RowMajor expected(rows, n);
      for (Index i = 0; i < rows; ++i) {
        const Vector<S> xi = x.row(i).transpose();
        expected.row(i) = f(xi).transpose();
      }
      RowMajor y(rows, n);
      f.rowwise(x, y);
      RowMajor in_place = x;
      f.rowwise(in_place, in_place);
      const Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic> xt = x.transpose();
      Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic> yt(n, rows);
      f.colwise(xt, yt);
      Index wrong = 0;
      for (Index i = 0; i < rows; ++i) {
        for (Index k = 0; k < n; ++k) {
          const S e = expected(i, k);
          const auto same = [&](S v) {
            return v == e || (v != v && e != e);
          };
          wrong += !same(y(i, k)) + !same(in_place(i, k)) + !same(yt(k, i));
        }
      }
      INFO("n = " << n << ", p = " << f.p() << ": " << wrong << " entries differ from apply()");
      CHECK(wrong == 0);
    }
  }
}
