// PolynomialSoftmax and its building blocks (approx/exp.hpp, approx/reciprocal.hpp): every
// tabulated exp approximation and the reciprocal iterations against their documented bounds (the
// error curves versus degree, squarings and iterations are checked, not just printed); every
// configuration against the exact softmax of tests/reference/polynomial_softmax.ipp (mpmath); the
// cost report against hand counts; then the policy (parameters, NaN, empty, no allocation,
// rowwise/colwise = per-vector).
#include <cmath>
#include <iostream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include <softmaxlab/polynomial.hpp>

#include "reference/polynomial_softmax.ipp"
#include "support.hpp"

namespace sml = softmaxlab;
namespace approx = softmaxlab::approx;
using Index = Eigen::Index;
using sml::PolynomialSoftmaxOptions;

namespace {

template <class Scalar>
using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

template <class Scalar>
double unit_roundoff() {
  return std::numeric_limits<Scalar>::epsilon() / 2;
}

// Max relative error of the reciprocal iteration over [lo, hi] (log-spaced samples, both ends).
template <class Scalar, class Fn>
double reciprocal_max_error(double lo, double hi, const approx::ReciprocalRange& range, int k,
                            Fn fn) {
  double worst = 0;
  const int points = 301;
  for (int i = 0; i < points; ++i) {
    const double s_d = lo * std::pow(hi / lo, static_cast<double>(i) / (points - 1));
    const Scalar s = static_cast<Scalar>(s_d);
    if (s < lo || s > hi)
      continue;
    const Scalar r = fn(s, static_cast<Scalar>(range.z0), k);
    const long double exact = 1.0L / static_cast<long double>(s);
    worst = std::max(worst, static_cast<double>(std::fabs((r - exact) / exact)));
  }
  return worst;
}

template <class Scalar>
void check_reciprocals() {
  const double u = unit_roundoff<Scalar>();
  for (double hi : {16.0, 4096.0, 1e6}) {
    const approx::ReciprocalRange range(1.0, hi);
    double previous_bound = INFINITY;
    const int k_auto = range.iterations_for(u);
    for (int k = 1; k <= k_auto + 2; ++k) {
      const double bound = approx::reciprocal_error_bound(range, k, u);
      const double g = reciprocal_max_error<Scalar>(
          1.0, hi, range, k,
          [](Scalar s, Scalar z0, int kk) { return approx::goldschmidt_reciprocal(s, z0, kk); });
      const double nw = reciprocal_max_error<Scalar>(
          1.0, hi, range, k,
          [](Scalar s, Scalar z0, int kk) { return approx::newton_reciprocal(s, z0, kk); });
      INFO("range [1, " << hi << "], k = " << k << ": Goldschmidt " << g << ", Newton " << nw
                        << ", bound " << bound);
      CHECK(g <= bound);
      CHECK(nw <= bound);
      // the curve: the bound falls with k until the rounding term takes over
      CHECK(bound <= previous_bound + 2 * u);
      previous_bound = bound;
      // quadratic convergence is real, not only a bound: while far from the rounding floor the
      // measured error is within 2x of e0^(2^k) (it is attained near the ends of the range)
      if (range.truncation_error(k) > 1e3 * u) {
        CHECK(g >= 0.5 * range.truncation_error(k));
      }
    }
    // at the automatic count the truncation is below u
    CHECK(range.truncation_error(k_auto) <= u);
    CHECK(range.truncation_error(k_auto - 1) > u);
  }
}

}  // namespace

TEST_CASE("Goldschmidt and Newton reciprocals meet e0^(2^k) + (2k + 2) u on their range",
          "[approx][reciprocal]") {
  SECTION("float") {
    check_reciprocals<float>();
  }
  SECTION("double") {
    check_reciprocals<double>();
  }
  SECTION("hand counts: [1, 4096] needs 16 iterations for 2^-26, costs") {
    const approx::ReciprocalRange range(1.0, 4096.0);
    // l = 1/4096, e0 = (1 - l)/(1 + l); e0^(2^k) <= 2^-26 <=> 2^k >= 26 ln 2 / -ln e0 = 36906.
    CHECK(range.iterations_for(0x1p-26) == 16);
    const approx::HeCost g = approx::goldschmidt_cost(16), nw = approx::newton_cost(16);
    CHECK(g.multiplications == 30);
    CHECK(g.constant_multiplications == 2);
    CHECK(g.depth == 17);
    CHECK(nw.multiplications == 30);
    CHECK(nw.depth == 32);
  }
}

namespace {

// Max relative and absolute error of the scalar evaluation over a 2001-point grid of [-R, 0]. The
// relative error counts only where exp(t) is inside the scalar's normal range (exp(-112) is not a
// float); below it the absolute error is what the bounds promise.
template <class Scalar>
std::pair<double, double> exp_errors(const approx::ExpApprox& e) {
  double rel = 0, ab = 0;
  const int points = 2000;
  for (int i = 0; i <= points; ++i) {
    const Scalar t = static_cast<Scalar>(-e.range() * i / points);
    const long double exact = std::exp(static_cast<long double>(t));
    const long double got = e.evaluate_scalar<Scalar>(t);
    const long double d = std::fabs(got - exact);
    ab = std::max(ab, static_cast<double>(d));
    if (exact >= std::numeric_limits<Scalar>::min() * 0x1p24L)
      rel = std::max(rel, static_cast<double>(d / exact));
  }
  return {rel, ab};
}

template <class Scalar>
void check_exp_tables() {
  const double u = unit_roundoff<Scalar>();
  int checked = 0;
  for (int l = 0; l < approx::tables::kExpChebyshevLengths; ++l) {
    const double L = approx::tables::kExpChebyshevLength[l];
    for (int r : {0, 2, 5}) {
      double previous_bound = INFINITY;
      for (int n = 1; n <= approx::tables::kExpChebyshevMaxDegree; ++n) {
        const approx::ExpApprox e = approx::ExpApprox::chebyshev(n, r, std::ldexp(L, r));
        const auto [rel, ab] = exp_errors<Scalar>(e);
        const double rb = e.relative_error(u), ab_bound = e.absolute_error(u);
        INFO("Chebyshev degree " << n << ", L = " << L << ", r = " << r << ": rel " << rel
                                 << " (bound " << rb << "), abs " << ab << " (bound " << ab_bound
                                 << ")");
        CHECK(rel <= rb);
        CHECK(ab <= ab_bound);
        // error curve versus degree: falls until the evaluation-rounding floor (where the bound
        // is meaningful, < 1)
        if (previous_bound < 1)
          CHECK(rb <= previous_bound * 1.0001 + 64 * u * std::ldexp(1.0, r) * std::exp(L));
        previous_bound = rb;
        ++checked;
      }
    }
  }
  CHECK(checked == 3 * 10 * approx::tables::kExpChebyshevLengths);
  double previous_bound = INFINITY;
  for (int r = 5; r <= 20; ++r) {
    const approx::ExpApprox e = approx::ExpApprox::repeated_squaring(r, 20);
    const auto [rel, ab] = exp_errors<Scalar>(e);
    INFO("RepeatedSquaring r = " << r << ": rel " << rel << " (bound " << e.relative_error(u)
                                 << "), abs " << ab << " (bound " << e.absolute_error(u) << ")");
    CHECK(rel <= e.relative_error(u));
    CHECK(ab <= e.absolute_error(u));
    // abs error ~ 0.27 / 2^r: halves with each squaring until rounding (2^(r+1) u) dominates
    CHECK(e.absolute_error(u) <= previous_bound * 0.55 + std::ldexp(8.0, r) * u);
    previous_bound = e.absolute_error(u);
  }
}

}  // namespace

TEST_CASE("every tabulated exp approximation meets its documented relative and absolute bounds",
          "[approx][exp]") {
  SECTION("float") {
    check_exp_tables<float>();
  }
  SECTION("double") {
    check_exp_tables<double>();
  }
  SECTION("the table's own errors: degree curve and spot values") {
    // L = 0.625 (the default's interval): degree 4 is within 2^-18 relative (x 32 after the
    // squarings: 6.6e-5), degree 5 within 2^-24
    const int l = approx::ExpApprox::length_index(0.625);
    REQUIRE(l >= 0);
    CHECK(approx::tables::kExpChebyshev[l][3].rel < 0x1p-18);
    CHECK(approx::tables::kExpChebyshev[l][4].rel < 0x1p-24);
    CHECK(approx::tables::kExpChebyshev[l][2].rel > 0x1p-14);
    for (int n = 1; n < 8; ++n)  // strictly falling well above double rounding
      CHECK(approx::tables::kExpChebyshev[l][n].rel < approx::tables::kExpChebyshev[l][n - 1].rel);
  }
}

namespace {

struct Named {
  std::string name;
  PolynomialSoftmaxOptions config;
};

std::vector<Named> configurations() {
  using RM = sml::ReciprocalMethod;
  std::vector<Named> out;
  out.push_back({"default (Chebyshev 4, r 5, R 20, Goldschmidt auto)", {}});
  out.push_back({"Chebyshev 5, r 5", PolynomialSoftmaxOptions::chebyshev(5, 5)});
  out.push_back({"Chebyshev 4, r 6", PolynomialSoftmaxOptions::chebyshev(4, 6)});
  out.push_back({"Chebyshev 6, r 4", PolynomialSoftmaxOptions::chebyshev(6, 4)});
  out.push_back({"Chebyshev 7, r 3", PolynomialSoftmaxOptions::chebyshev(7, 3)});
  out.push_back({"Chebyshev 3, r 4 (coarse)", PolynomialSoftmaxOptions::chebyshev(3, 4)});
  out.push_back({"Chebyshev 10, r 0 (plain, wide)", PolynomialSoftmaxOptions::chebyshev(10, 0)});
  out.push_back({"Chebyshev 8, r 1", PolynomialSoftmaxOptions::chebyshev(8, 1)});
  out.push_back({"RepeatedSquaring 8", PolynomialSoftmaxOptions::repeated_squaring(8)});
  out.push_back({"RepeatedSquaring 12", PolynomialSoftmaxOptions::repeated_squaring(12)});
  out.push_back({"RepeatedSquaring 17", PolynomialSoftmaxOptions::repeated_squaring(17)});
  out.push_back(
      {"default exp, Newton auto", PolynomialSoftmaxOptions().with_reciprocal(RM::Newton)});
  out.push_back(
      {"default exp, exact division", PolynomialSoftmaxOptions().with_reciprocal(RM::Exact)});
  out.push_back({"default exp, Goldschmidt k = 10 (truncated)",
                 PolynomialSoftmaxOptions().with_reciprocal(RM::Goldschmidt, 10)});
  out.push_back({"default exp, Newton k = 12 (truncated)",
                 PolynomialSoftmaxOptions().with_reciprocal(RM::Newton, 12)});
  return out;
}

struct RowError {
  double max_abs = 0;
  std::string where;
};

template <class Scalar>
bool check_row(const softmaxlab_test::SoftmaxRow& c, const sml::PolynomialSoftmax& f, double bound,
               RowError& err) {
  const Vector<Scalar> x =
      Eigen::Map<const Vector<float>>(c.x, static_cast<Index>(c.n)).template cast<Scalar>();
  const Vector<Scalar> y = f(x);
  bool ok = true;
  double worst = 0;
  for (std::size_t i = 0; i < c.n; ++i) {
    const double ref = c.softmax[i];
    if (std::isnan(ref)) {
      ok = ok && std::isnan(y(i));
      continue;
    }
    if (ref == 0 && std::isinf(c.x[i])) {
      ok = ok && y(i) == 0;  // masked -inf: exactly 0
      continue;
    }
    const double d = std::fabs(static_cast<double>(y(i)) - ref);
    if (!(d <= worst)) {
      worst = d;
      if (!(d <= err.max_abs)) {
        err.max_abs = d;
        err.where = std::string(c.name) + "[" + std::to_string(i) + "]";
      }
    }
  }
  return ok && worst <= bound;
}

// The spread of a reference row (finite entries).
double spread(const softmaxlab_test::SoftmaxRow& c) {
  double hi = -INFINITY, lo = INFINITY;
  for (std::size_t i = 0; i < c.n; ++i) {
    if (std::isfinite(c.x[i])) {
      hi = std::max(hi, static_cast<double>(c.x[i]));
      lo = std::min(lo, static_cast<double>(c.x[i]));
    }
  }
  return hi >= lo ? hi - lo : 0;
}

template <class Scalar>
void check_configurations() {
  const char* type = std::is_same_v<Scalar, float> ? "float" : "double";
  for (const auto& named : configurations()) {
    const sml::PolynomialSoftmax f(named.config);
    RowError err;
    double worst_ratio = 0;
    for (const auto& c : softmaxlab_test::kPolynomialSoftmaxCases) {
      const Index n = static_cast<Index>(c.n);
      double bound = f.error_bound<Scalar>(n);
      const double R = named.config.range;
      if (spread(c) > R)  // documented degradation: clipped entries add up to n e^-R
        bound += static_cast<double>(n) * std::exp(-R)
                 * (1 + f.exp_approx().relative_error(unit_roundoff<Scalar>()));
      RowError row;
      const bool ok = check_row<Scalar>(c, f, bound, row);
      INFO(named.name << " " << type << ", " << c.name << ": max abs error " << row.max_abs
                      << " at " << row.where << ", bound " << bound);
      CHECK(ok);
      if (row.max_abs > err.max_abs)
        err = row;
      worst_ratio = std::max(worst_ratio, row.max_abs / bound);
    }
    std::cout << "PolynomialSoftmax " << named.name << " " << type << ": max abs error "
              << err.max_abs << " at " << err.where << " (n = 4096 bound "
              << f.error_bound<Scalar>(4096) << ", worst error/bound " << worst_ratio << ")\n";
  }
}

}  // namespace

TEST_CASE("every PolynomialSoftmax configuration stays within its documented error bound",
          "[polynomial][reference]") {
  SECTION("float") {
    check_configurations<float>();
  }
  SECTION("double") {
    check_configurations<double>();
  }
}

TEMPLATE_TEST_CASE(
    "the default PolynomialSoftmax is within 1e-4 of softmax on rows of spread <= 20",
    "[polynomial][reference][default]", float, double) {
  const sml::PolynomialSoftmax f;
  double worst = 0;
  std::string where;
  int rows = 0;
  for (const auto& c : softmaxlab_test::kPolynomialSoftmaxCases) {
    if (spread(c) > 20)
      continue;
    RowError err;
    CHECK(check_row<TestType>(c, f, 1e-4, err));
    if (err.max_abs > worst) {
      worst = err.max_abs;
      where = err.where;
    }
    ++rows;
  }
  INFO("worst " << worst << " at " << where);
  CHECK(rows == 29);
  CHECK(worst <= 1e-4);
  // and the a-priori bound itself promises it at every length up to 4096
  for (Index n : {1, 16, 1000, 4096})
    CHECK(f.error_bound<TestType>(n) <= 1e-4);
  std::cout << "PolynomialSoftmax default "
            << (std::is_same_v<TestType, float> ? "float" : "double") << ": max abs error " << worst
            << " at " << where << " over " << rows << " rows of spread <= 20\n";
}

TEMPLATE_TEST_CASE("PolynomialSoftmax with a public bound: the shift needs no max",
                   "[polynomial][public]", float, double) {
  // The caller knows max x <= B and max x >= B - gap; here B = max + 3, gap 3, and R = 24 covers
  // the spread plus the gap (L = 24 / 2^5 = 0.75).
  for (const auto& c : softmaxlab_test::kPolynomialSoftmaxCases) {
    const double s = spread(c);
    const std::string name = c.name;
    if (s > 20 || s == 0 || name.find("nan") != std::string::npos
        || name.find("posinf") != std::string::npos)
      continue;
    double hi = -INFINITY;
    for (std::size_t i = 0; i < c.n; ++i)
      if (std::isfinite(c.x[i]))
        hi = std::max(hi, static_cast<double>(c.x[i]));
    auto config = PolynomialSoftmaxOptions::chebyshev(5, 5, 24).with_public_bound(hi + 3, 3);
    const sml::PolynomialSoftmax f(config);
    RowError err;
    const double bound = f.error_bound<TestType>(static_cast<Index>(c.n));
    INFO(c.name << ": bound " << bound);
    CHECK(check_row<TestType>(c, f, bound, err));
    INFO("max abs error " << err.max_abs << " at " << err.where);
    CHECK(err.max_abs <= 1e-4);
  }
  // entries above the bound count as the bound
  const sml::PolynomialSoftmax f(PolynomialSoftmaxOptions().with_public_bound(0.0, 5));
  Vector<TestType> x(3);
  x << 1, 0, INFINITY;
  const Vector<TestType> y = f(x);
  CHECK(y(0) == y(1));
  CHECK(y(0) == y(2));
}

TEST_CASE("PolynomialSoftmax cost report matches hand counts", "[polynomial][cost]") {
  SECTION("default at n = 4096") {
    // exp: u = 1 + t (2/R) [const, depth 1]; Horner: c4 u [const, depth 2] + 3 products
    // [depth 5]; 5 squarings [depth 10]: 8 products, 2 constant products.
    // sum: additions. reciprocal on [1 - rho, 4096 (1 + rho)]: k = 16 Goldschmidt iterations:
    // D0 = S z0 [const], N1 = z0 F0 [const], then D1..D15 and N2..N16: 30 products, depth 17.
    // y = E N: 1 product per element, depth max(10, 10 + 17) + 1 = 28.
    const sml::PolynomialCost c = sml::PolynomialSoftmax().cost(4096);
    CHECK(c.exp.multiplications == 8);
    CHECK(c.exp.constant_multiplications == 2);
    CHECK(c.exp.depth == 10);
    CHECK(c.multiplications_per_element == 9);
    CHECK(c.constant_multiplications_per_element == 2);
    CHECK(c.reciprocal_iterations == 16);
    CHECK(c.reciprocal.multiplications == 30);
    CHECK(c.reciprocal.constant_multiplications == 2);
    CHECK(c.reciprocal.depth == 17);
    CHECK(c.depth == 28);
    CHECK(c.polynomial_only);
  }
  SECTION("RepeatedSquaring r = 8, Newton k = 6, n = 100") {
    // exp: 1 + t/256 [const, depth 1], 8 squarings [depth 9]: 8 products, 1 constant.
    // Newton from y0 = z0: y1 = z0 (2 - S z0) [2 const, depth 2], y2..y6: 2 products each,
    // depth +2 each: 10 products, depth 12. y = E y6: depth 9 + 12 + 1 = 22.
    const auto cfg = PolynomialSoftmaxOptions::repeated_squaring(8).with_reciprocal(
        sml::ReciprocalMethod::Newton, 6);
    const sml::PolynomialCost c = sml::PolynomialSoftmax(cfg).cost(100);
    CHECK(c.exp.multiplications == 8);
    CHECK(c.exp.constant_multiplications == 1);
    CHECK(c.exp.depth == 9);
    CHECK(c.multiplications_per_element == 9);
    CHECK(c.reciprocal_iterations == 6);
    CHECK(c.reciprocal.multiplications == 10);
    CHECK(c.reciprocal.constant_multiplications == 2);
    CHECK(c.reciprocal.depth == 12);
    CHECK(c.depth == 22);
  }
  SECTION("Chebyshev degree 1, r = 0, exact division: not polynomial-only") {
    // p(u) = c0 + c1 u: u [const], c1 u [const]: 0 products, depth 2; y = E / S: the division
    // is not counted as a polynomial, the final product is.
    const auto cfg = PolynomialSoftmaxOptions::chebyshev(1, 0, 1.0).with_reciprocal(
        sml::ReciprocalMethod::Exact);
    const sml::PolynomialCost c = sml::PolynomialSoftmax(cfg).cost(10);
    CHECK(c.exp.multiplications == 0);
    CHECK(c.exp.constant_multiplications == 2);
    CHECK(c.exp.depth == 2);
    CHECK(c.multiplications_per_element == 1);
    CHECK(c.depth == 3);
    CHECK_FALSE(c.polynomial_only);
  }
}

TEST_CASE("PolynomialSoftmax rejects bad configurations naming the field and value",
          "[polynomial][parameters]") {
  using C = PolynomialSoftmaxOptions;
  CHECK_THROWS_WITH(sml::PolynomialSoftmax(C::chebyshev(0, 5)),
                    Catch::Contains("degree") && Catch::Contains("0"));
  CHECK_THROWS_WITH(sml::PolynomialSoftmax(C::chebyshev(11, 5)), Catch::Contains("degree"));
  CHECK_THROWS_WITH(sml::PolynomialSoftmax(C::chebyshev(5, -1)), Catch::Contains("squarings"));
  CHECK_THROWS_WITH(sml::PolynomialSoftmax(C::chebyshev(5, 25)), Catch::Contains("squarings"));
  CHECK_THROWS_WITH(sml::PolynomialSoftmax(C::chebyshev(5, 5, 21)),
                    Catch::Contains("tabulated") && Catch::Contains("21"));
  CHECK_THROWS_WITH(sml::PolynomialSoftmax(C::chebyshev(5, 5, -20)), Catch::Contains("range"));
  CHECK_THROWS_WITH(sml::PolynomialSoftmax(C::chebyshev(5, 5, std::nan(""))),
                    Catch::Contains("range"));
  CHECK_THROWS_WITH(sml::PolynomialSoftmax(C::repeated_squaring(4, 20)),
                    Catch::Contains("2^squarings") && Catch::Contains("20"));
  CHECK_THROWS_WITH(sml::PolynomialSoftmax(C::repeated_squaring(0, 1)),
                    Catch::Contains("squarings"));
  CHECK_THROWS_WITH(sml::PolynomialSoftmax(C().with_reciprocal(sml::ReciprocalMethod::Newton, 65)),
                    Catch::Contains("iterations") && Catch::Contains("65"));
  CHECK_THROWS_WITH(sml::PolynomialSoftmax(C().with_public_bound(INFINITY)),
                    Catch::Contains("bound"));
  CHECK_THROWS_WITH(sml::PolynomialSoftmax(C().with_public_bound(0, std::nan(""))),
                    Catch::Contains("gap"));
  CHECK_THROWS_WITH(sml::PolynomialSoftmax(C().with_public_bound(0, 800)), Catch::Contains("gap"));
  CHECK_NOTHROW(sml::PolynomialSoftmax());
  // the building blocks check their own parameters
  CHECK_THROWS_WITH(approx::ExpApprox::chebyshev(11, 5, 20), Catch::Contains("degree"));
  CHECK_THROWS_WITH(approx::ExpApprox::chebyshev(4, 5, 21), Catch::Contains("tabulated"));
  CHECK_THROWS_WITH(approx::ExpApprox::repeated_squaring(4, 20), Catch::Contains("range"));
  CHECK(approx::ExpApprox().relative_error(0x1p-24)
        == approx::ExpApprox::chebyshev(4, 5, 20).relative_error(0x1p-24));
  CHECK_NOTHROW(sml::PolynomialSoftmax(C::chebyshev(5, 7, 20)));  // L = 0.15625
  CHECK_NOTHROW(sml::PolynomialSoftmax(C::repeated_squaring(5, 32)));
}

TEMPLATE_TEST_CASE("PolynomialSoftmax policy: NaN row, masks, empty, sizes, sums to one",
                   "[polynomial][policy]", float, double) {
  using S = TestType;
  using Mat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;
  const S inf = std::numeric_limits<S>::infinity();
  for (const auto& cfg :
       {PolynomialSoftmaxOptions(), PolynomialSoftmaxOptions::repeated_squaring(12),
        PolynomialSoftmaxOptions().with_public_bound(40.0, 60)}) {
    const sml::PolynomialSoftmax f(cfg);
    Mat x(4, 45);  // column-major: rows are strided
    for (Index j = 0; j < 45; ++j) {
      x(0, j) = S(0.3) * S(j % 17);
      x(1, j) = j == 44 ? std::numeric_limits<S>::quiet_NaN() : S(j % 5);
      x(2, j) = -inf;
      x(3, j) = j == 9 ? std::numeric_limits<S>::quiet_NaN() : -inf;
    }
    const Mat y = f.rowwise(x);
    CHECK(std::fabs(static_cast<double>(y.row(0).sum()) - 1) <= 1e-5);
    CHECK(y.row(1).array().isNaN().all());
    CHECK((y.row(2).array() == 0).all());
    CHECK(y.row(3).array().isNaN().all());
    // the same through the contiguous path, and colwise on the transpose
    const Mat c = f.colwise(Mat(x.transpose()));
    for (Index i = 0; i < 4; ++i) {
      const Vector<S> row = x.row(i).transpose();
      const Vector<S> v = f(row);
      CHECK(((v - y.row(i).transpose()).array().abs() == 0 || v.array().isNaN()).all());
      CHECK(((v - c.col(i)).array().abs() == 0 || v.array().isNaN()).all());
    }
  }
  const sml::PolynomialSoftmax f;
  const Vector<S> empty;
  CHECK(f(empty).size() == 0);
  Vector<S> bad(2);
  CHECK_THROWS_AS(f.apply(Vector<S>::Zero(3), bad), std::invalid_argument);
  // a long row: the probabilities sum to 1 within 2e-6 (float)
  std::mt19937 gen(11);
  std::uniform_real_distribution<S> uni(-10, 10);
  Vector<S> x(1 << 20);
  for (Index i = 0; i < x.size(); ++i)
    x(i) = uni(gen);
  const Vector<S> y = f(x);
  const long double sum = y.template cast<long double>().sum();
  INFO("sum - 1 = " << static_cast<double>(sum - 1));
  CHECK(std::fabs(static_cast<double>(sum - 1)) <= 2e-6);
}

TEST_CASE("PolynomialSoftmax apply allocates nothing (contiguous, strided, in place)",
          "[polynomial][allocation]") {
  Eigen::MatrixXf X = Eigen::MatrixXf::Random(16, 300) * 5;
  Eigen::MatrixXf Y(16, 300);
  Eigen::VectorXd v = Eigen::VectorXd::Random(777), w(777);
  const sml::PolynomialSoftmax f, g(PolynomialSoftmaxOptions::repeated_squaring(10).with_reciprocal(
                                      sml::ReciprocalMethod::Newton));
  softmaxlab_test::AllocationGuard guard;
  f.apply(v, w);
  g.apply(v * 3.0, w);
  f.apply(w, w);
  f.rowwise(X, Y);
  g.colwise(X, Y);
  CHECK(guard.allocations() == 0);
}

namespace {

// A scalar that counts what the HE cost model counts: products of two non-constant values,
// products with a constant, and the multiplicative depth (additions are free). Running the real
// scalar algorithms on it checks cost() against the code, beyond the hand counts above.
struct Tracked {
  double v = 0;
  int depth = 0;
  bool constant = true;
  static inline int products = 0;
  static inline int constant_products = 0;

  Tracked() = default;
  Tracked(double value) : v(value) {}  // NOLINT: constants convert implicitly, as literals do
  static Tracked variable(double value) {
    Tracked t(value);
    t.constant = false;
    return t;
  }
  friend Tracked operator*(const Tracked& a, const Tracked& b) {
    Tracked r(a.v * b.v);
    r.constant = a.constant && b.constant;
    if (!r.constant) {
      (a.constant || b.constant ? constant_products : products) += 1;
      r.depth = std::max(a.depth, b.depth) + 1;
    }
    return r;
  }
  friend Tracked operator+(const Tracked& a, const Tracked& b) {
    Tracked r(a.v + b.v);
    r.constant = a.constant && b.constant;
    r.depth = std::max(a.depth, b.depth);
    return r;
  }
  friend Tracked operator-(const Tracked& a, const Tracked& b) {
    Tracked r(a.v - b.v);
    r.constant = a.constant && b.constant;
    r.depth = std::max(a.depth, b.depth);
    return r;
  }
  Tracked& operator*=(const Tracked& b) { return *this = *this * b; }
  friend bool operator<(const Tracked& a, const Tracked& b) { return a.v < b.v; }
  friend bool operator!=(const Tracked& a, const Tracked& b) { return a.v != b.v; }
  static void reset() { products = constant_products = 0; }
};

}  // namespace

TEST_CASE("PolynomialSoftmax cost report matches the operations the algorithms perform",
          "[polynomial][cost]") {
  const auto gs = sml::ReciprocalMethod::Goldschmidt;
  const auto nt = sml::ReciprocalMethod::Newton;
  const PolynomialSoftmaxOptions configs[] = {
      PolynomialSoftmaxOptions(),
      PolynomialSoftmaxOptions::chebyshev(1, 0, 1.0).with_reciprocal(gs, 1),
      PolynomialSoftmaxOptions::chebyshev(7, 3).with_reciprocal(nt, 9),
      PolynomialSoftmaxOptions::chebyshev(10, 2).with_reciprocal(gs, 5),
      PolynomialSoftmaxOptions::repeated_squaring(8).with_reciprocal(nt, 6),
      PolynomialSoftmaxOptions::repeated_squaring(17).with_reciprocal(gs, 3),
  };
  for (const auto& cfg : configs) {
    const sml::PolynomialSoftmax f(cfg);
    const sml::PolynomialCost c = f.cost(4096);
    INFO("degree " << cfg.degree << ", r " << cfg.squarings << ", k " << c.reciprocal_iterations);
    // exp of one element (t = -1 lies inside every range; the clip costs nothing)
    Tracked::reset();
    const Tracked e = f.exp_approx().evaluate_scalar<Tracked>(Tracked::variable(-1.0));
    CHECK(Tracked::products == c.exp.multiplications);
    CHECK(Tracked::constant_products == c.exp.constant_multiplications);
    CHECK(e.depth == c.exp.depth);
    // the sum (additions) and the reciprocal, from the public z0
    Tracked::reset();
    const Tracked s = e + e + e;
    const Tracked z0(f.reciprocal_range<double>(4096).z0);
    const Tracked r = cfg.reciprocal == gs
                          ? approx::goldschmidt_reciprocal(s, z0, c.reciprocal_iterations)
                          : approx::newton_reciprocal(s, z0, c.reciprocal_iterations);
    CHECK(Tracked::products == c.reciprocal.multiplications);
    CHECK(Tracked::constant_products == c.reciprocal.constant_multiplications);
    CHECK(r.depth - s.depth == c.reciprocal.depth);
    // the final product
    Tracked::reset();
    const Tracked y = e * r;
    CHECK(Tracked::products == c.multiplications_per_element - c.exp.multiplications);
    CHECK(y.depth == c.depth);
  }
}

// Fuzz finding (fuzz_polynomial, CI of 2026-11-30): Chebyshev degree 1, r = 0, R = 20 dips below 0
// for t < -16, so a row with one large entry and many far below summed to < 0 and the Newton
// reciprocal diverged: finite input gave -inf. With r = 0 the exp approximation is clamped at 0.
TEMPLATE_TEST_CASE(
    "PolynomialSoftmax: a plain Chebyshev exp (r = 0) below 0 is clamped, rows stay "
    "finite",
    "[polynomial][regression]", float, double) {
  using Scalar = TestType;
  using Vec = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  for (const auto& [degree, range] :
       {std::pair<int, double>{1, 20.0}, {3, 20.0}, {10, 20.0}, {1, 1.0}, {2, 40.0}}) {
    const approx::ExpApprox e = approx::ExpApprox::chebyshev(degree, 0, range);
    // The clamp itself: never below 0 anywhere on [-R, 0] (and beyond, where t is clipped).
    double lowest = 1;
    for (int k = 0; k <= 4000; ++k) {
      const Scalar t = static_cast<Scalar>(-1.5 * range * k / 4000.0);
      lowest = std::min(lowest, static_cast<double>(e.evaluate_scalar(t)));
    }
    INFO("Chebyshev degree " << degree << ", R " << range << ": lowest E " << lowest);
    CHECK(lowest >= 0);
    for (const auto method : {sml::ReciprocalMethod::Newton, sml::ReciprocalMethod::Goldschmidt,
                              sml::ReciprocalMethod::Exact}) {
      const sml::PolynomialSoftmax f(
          PolynomialSoftmaxOptions::chebyshev(degree, 0, range).with_reciprocal(method));
      for (const Index n : {Index(17), Index(1000), Index(4096)}) {
        // One entry far above the rest (the fuzz row), and a row spread evenly over [-3R, 0].
        Vec far = Vec::Constant(n, Scalar(0.5));
        far(2) = Scalar(3.9e32);
        Vec spread(n);
        for (Index i = 0; i < n; ++i)
          spread(i) = static_cast<Scalar>(-3.0 * range * static_cast<double>(i) / (n - 1));
        for (const Vec* x : {&far, &spread}) {
          const Vec y = f(*x);
          INFO("n " << n << ", method " << static_cast<int>(method) << ", y min " << y.minCoeff()
                    << ", max " << y.maxCoeff());
          CHECK(y.allFinite());
          CHECK(y.minCoeff() >= 0);
          const Vec dx = f.backward(*x, y, Vec::LinSpaced(n, -1, 1));
          CHECK(dx.allFinite());
        }
        // The far entry keeps the largest share (E is increasing on [-R, 0] up to its error).
        const Vec y = f(far);
        CHECK(y(2) == y.maxCoeff());
        CHECK(y(2) > 0);
      }
    }
  }
}
