// softmaxlab/approx: polynomial-only approximations of exp(t) for t in [-R, 0], the building block
// that replaces the exp of a softmax under homomorphic encryption (after the shift t = x - max or
// t = x - B, every argument is <= 0).
//
//   RepeatedSquaring(r):        exp(t) ~ (1 + t / 2^r)^(2^r),  t clipped to [-R, 0], R <= 2^r.
//       One product by the constant 2^-r, then r squarings.
//   Chebyshev(degree n, r, R):  exp(t) ~ p(u)^(2^r),  u = 1 + 2 t / R in [-1, 1], t clipped to
//       [-R, 0]. p is the degree-n Chebyshev interpolant of exp(L (u - 1) / 2), L = R / 2^r, i.e.
//       of exp(t / 2^r), evaluated by Horner in u; the r squarings undo the division by 2^r.
//       Coefficients: approx/exp_chebyshev_table.hpp, written by the committed generator
//       tests/reference/generate_power_polynomial.py (mpmath) for degrees 1..10 and
//       L in {1, 1.25, 1.5, 1.75} x 2^j, j = -3..5; with r = 0 this is a plain Chebyshev
//       interpolant on [-R, 0].
//
// Clipping is the plaintext guard of a range an encrypted pipeline must promise (no comparison
// exists there); inside the range it changes nothing. NaN propagates.
//
// Sign: with r >= 1 the result is a square, so it is >= 0. With r = 0 a plain Chebyshev interpolant
// on a wide range (odd degrees, or R large for the degree) dips below 0 where exp(t) is below its
// absolute error; a softmax whose terms sum to <= 0 would send the reciprocal iteration to inf. So
// with r = 0 the result is clamped at 0 (clamp_negative(); plaintext only, like the clipping). The
// clamp only moves values toward exp(t) > 0, so every bound below still holds.
//
// Error (ExpApprox::relative_error(), absolute_error(): a-priori bounds, tested against long
// double exp in tests/test_polynomial.cpp for every tabulated configuration):
//   RepeatedSquaring: rel(t) = 1 - (1 + t/N)^N e^-t (N = 2^r) grows with |t|: rel(-R) bounds it;
//     the absolute error peaks near t = -2 at about 0.27 / N.
//   Chebyshev: with rho_p the tabulated max relative error of p (exact arithmetic) and
//     rho_eval = (2n + 2) u sum|c_i| e^L the Horner rounding (u = eps/2 of the scalar type),
//     rel <= (1 + rho_p + rho_eval)^(2^r) (1 + u)^(2^r) - 1 + 2 (R + 1) u
//     (the last term: the roundings of t and u, scaled by the condition number |t| <= R of exp).
//
// Cost per element (HeCost; additions free):
//   RepeatedSquaring(r):     r products, 1 constant product, depth r + 1.
//   Chebyshev(n, r):         (n - 1) + r products, 2 constant products (2/R scaling, c_n u),
//                            depth 1 + n + r.
//
// Errors: the factories (ExpApprox::repeated_squaring, ::chebyshev) throw std::invalid_argument
// naming the value for a degree, squaring count or range outside the ranges above; evaluation
// never throws (NaN in, NaN out; -inf and anything below -R clip to -R, +inf and t > 0 to 0).
#pragma once

#include <algorithm>
// clang-format off
#include "../detail/common.hpp"  // before Eigen: see detail/config.hpp
// clang-format on

#include <cmath>
#include <limits>
#include <string>

#include <Eigen/Core>

#include "../detail/checks.hpp"
#include "exp_chebyshev_table.hpp"
#include "reciprocal.hpp"

namespace softmaxlab {
namespace approx {

// The exp approximations: (1 + t / 2^r)^(2^r), or a Chebyshev polynomial on [-L, 0] squared r
// times.
enum class ExpMethod { RepeatedSquaring, Chebyshev };

// A validated exp approximation on [-R, 0]. Construct through the factories (they throw
// std::invalid_argument on parameters outside the documented ranges; see polynomial.hpp).
class ExpApprox {
 public:
  // The default of PolynomialSoftmax: Chebyshev degree 4, r = 5, R = 20.
  ExpApprox() : entry_(&tables::kExpChebyshev[length_index(0.625)][3]) {}

  // The method this object was built with.
  ExpMethod method() const { return method_; }
  // The degree this object was built with.
  int degree() const { return degree_; }
  // The squarings this object was built with.
  int squarings() const { return squarings_; }
  // The range this object was built with.
  double range() const { return range_; }
  // The polynomial's interval length L = R / 2^r (Chebyshev).
  double length() const { return std::ldexp(range_, -squarings_); }
  // Coefficient i of p(u) (Chebyshev; i <= degree).
  double coefficient(int i) const { return entry_ ? entry_->c[i] : 0.0; }

  // Index of L in the table, or -1.
  static int length_index(double length) {
    for (int l = 0; l < tables::kExpChebyshevLengths; ++l)
      if (tables::kExpChebyshevLength[l] == length)
        return l;
    return -1;
  }

  // Max relative / absolute error over t in [-R, 0] for the scalar type with unit roundoff u.
  double relative_error(double u) const {
    const double n2r = std::ldexp(1.0, squarings_);
    if (method_ == ExpMethod::RepeatedSquaring) {
      // (1 + t/N)^N e^-t decreases from 1 as |t| grows: its value at -R bounds the error.
      const long double N = n2r;
      const long double base = 1.0L - static_cast<long double>(range_) / N;
      const long double at_r =
          base <= 0 ? 0.0L : std::exp(N * std::log(base) + static_cast<long double>(range_));
      const double trunc = static_cast<double>(1.0L - at_r);
      return trunc + rounding_growth(u) + 2.0 * (range_ + 1.0) * u;
    }
    const double rho_eval = (2.0 * degree_ + 2.0) * u * entry_->sum_abs * std::exp(length());
    const double one = std::log1p(entry_->rel + rho_eval);
    return std::expm1(n2r * (one + std::log1p(u))) + 2.0 * (range_ + 1.0) * u;
  }

  double absolute_error(double u) const {
    const double n2r = std::ldexp(1.0, squarings_);
    if (method_ == ExpMethod::RepeatedSquaring) {
      // max over t of e^t - (1 + t/N)^N, on a fine grid (plus a margin), in long double.
      const long double N = n2r;
      long double worst = 0;
      const int points = 4000;
      for (int i = 0; i <= points; ++i) {
        const long double t = -static_cast<long double>(range_) * i / points;
        const long double base = 1.0L + t / N;
        const long double approx = base <= 0 ? 0.0L : std::exp(N * std::log(base));
        worst = std::max(worst, std::exp(t) - approx);
      }
      return static_cast<double>(worst) * 1.01 + rounding_growth(u) + 2.0 * (range_ + 1.0) * u;
    }
    const double abs_eval = (2.0 * degree_ + 2.0) * u * entry_->sum_abs;
    const double rel = relative_error(u);
    const double via_abs =
        1.01 * n2r * (entry_->abs + abs_eval) * std::max(1.0, 1.0 + rel) + 2.0 * (range_ + 1.0) * u;
    return std::min(rel, via_abs);
  }

  // The cost this object was built with.
  HeCost cost() const {
    if (method_ == ExpMethod::RepeatedSquaring)
      return {squarings_, 1, squarings_ + 1};
    return {degree_ - 1 + squarings_, 2, 1 + degree_ + squarings_};
  }

  // The polynomial part of exp for a packet of arguments t = x - shift (any sign; clipped to
  // [-R, 0]); the caller squares the result squarings() times. NaN propagates.
  template <int kDegree, bool kClipTop = true, class Packet>
  static EIGEN_STRONG_INLINE Packet evaluate(const Packet& t_in, const Packet* coefficients,
                                             const Packet& lo, const Packet& scale,
                                             const Packet& one) {
    using namespace Eigen::internal;
    // pmax(a, b) / pmin(a, b) return a when either is NaN: the NaN of t survives the clips.
    Packet t = pmax(t_in, lo);
    if constexpr (kClipTop)
      t = pmin(t, pzero(t));
    const Packet u = pmadd(t, scale, one);
    if constexpr (kDegree == 0) {
      EIGEN_UNUSED_VARIABLE(coefficients);
      return u;  // RepeatedSquaring: the base 1 + t/2^r
    } else {
      Packet p = pmadd(coefficients[kDegree], u, coefficients[kDegree - 1]);
      for (int i = kDegree - 2; i >= 0; --i)
        p = pmadd(p, u, coefficients[i]);
      return p;
    }
  }

  // The scale of u: 2/R (Chebyshev) or 2^-r (RepeatedSquaring); the lower clip -R.
  double u_scale() const {
    return method_ == ExpMethod::Chebyshev ? 2.0 / range_ : std::ldexp(1.0, -squarings_);
  }

  // True where evaluate() and the squarings may end below 0 (r = 0): the caller clamps at 0.
  bool clamp_negative() const { return squarings_ == 0; }

  // Scalar reference of the same computation (used by tests and scalar tails), squarings and the
  // clamp at 0 (r = 0) included.
  template <class Scalar>
  Scalar evaluate_scalar(Scalar t) const {
    if (t != t)
      return t;
    t = std::min(std::max(t, static_cast<Scalar>(-range_)), Scalar(0));
    const Scalar u = t * static_cast<Scalar>(u_scale()) + Scalar(1);
    Scalar p = u;
    if (method_ == ExpMethod::Chebyshev) {
      p = static_cast<Scalar>(entry_->c[degree_]);
      for (int i = degree_ - 1; i >= 0; --i)
        p = p * u + static_cast<Scalar>(entry_->c[i]);
    }
    for (int i = 0; i < squarings_; ++i)
      p = p * p;
    if (clamp_negative() && p < Scalar(0))
      return Scalar(0);  // derivative 0 there, as where t is clipped
    return p;
  }

  // Throws std::invalid_argument unless 1 <= squarings <= 24 and 0 < range <= 2^squarings.
  static ExpApprox repeated_squaring(int squarings, double range) {
    if (squarings < 1 || squarings > 24)
      detail::fail("ExpApprox: squarings must be in [1, 24], but got ", squarings);
    if (!(range > 0 && range <= std::ldexp(1.0, squarings)))
      detail::fail("ExpApprox: range must be in (0, 2^squarings], but got ", range);
    ExpApprox e;
    e.method_ = ExpMethod::RepeatedSquaring;
    e.degree_ = 0;
    e.squarings_ = squarings;
    e.range_ = range;
    return e;
  }

  // Throws std::invalid_argument unless 1 <= degree <= 10, 0 <= squarings <= 24 and
  // L = range / 2^squarings is tabulated.
  static ExpApprox chebyshev(int degree, int squarings, double range) {
    if (degree < 1 || degree > tables::kExpChebyshevMaxDegree)
      detail::fail("ExpApprox: Chebyshev degree must be in [1, 10], but got ", degree);
    if (squarings < 0 || squarings > 24)
      detail::fail("ExpApprox: squarings must be in [0, 24], but got ", squarings);
    if (!(range > 0) || length_index(std::ldexp(range, -squarings)) < 0)
      detail::fail("ExpApprox: range / 2^squarings must be a tabulated length, but got range ",
                   range, " and squarings ", squarings);
    ExpApprox e;
    e.method_ = ExpMethod::Chebyshev;
    e.degree_ = degree;
    e.squarings_ = squarings;
    e.range_ = range;
    e.entry_ = &tables::kExpChebyshev[length_index(e.length())][degree - 1];
    return e;
  }

 private:
  // Rounding growth of r squarings of a value near 1 (relative): (1 + u)^(2^r) - 1 plus the base.
  double rounding_growth(double u) const {
    return std::expm1(std::ldexp(1.0, squarings_) * 2.0 * std::log1p(u));
  }

  ExpMethod method_ = ExpMethod::Chebyshev;
  int degree_ = 4;
  int squarings_ = 5;
  double range_ = 20;
  const tables::ExpChebyshevEntry* entry_ = nullptr;
};

}  // namespace approx
}  // namespace softmaxlab
