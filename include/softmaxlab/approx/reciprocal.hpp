// softmaxlab/approx: polynomial-only reciprocals (Goldschmidt and Newton iterations), the building
// block that replaces the division of a softmax under homomorphic encryption, where only additions
// and multiplications exist.
//
// Both compute 1/s for s in a known range [lo, hi] (0 < lo <= hi; in an encrypted pipeline the
// range comes from public facts such as the row length, never from the data). The input is scaled
// into the iterations' convergence range by the public constant z0 = c0 / hi, c0 = 2 / (1 + l),
// l = lo / hi, which centres a = s z0 on 1:
//     a = s z0 in [2l/(1+l), 2/(1+l)],   |1 - a| <= e0 = (1 - l) / (1 + l) < 1.
//   Goldschmidt: D_0 = s z0, N_0 = z0; F_i = 2 - D_i, N_{i+1} = N_i F_i, D_{i+1} = D_i F_i.
//                N_k -> 1/s. The two products of an iteration are independent: depth 1 per step.
//   Newton:      y_0 = z0;  y_{i+1} = y_i (2 - s y_i). Two dependent products: depth 2 per step.
// In exact arithmetic both give 1/s (1 - e) with |e| <= e0^(2^k) after k iterations (quadratic
// convergence; the iterates coincide). In floating point both stay within a few roundings of that:
// Goldschmidt's N_k / D_k keeps the ratio 1/s up to one rounding per product (F_i's own rounding
// cancels, it multiplies both), Newton is self-correcting. The stated bound, tested in
// tests/test_polynomial.cpp, is
//     |r - 1/s| / (1/s) <= (e0 + 2u)^(2^k) + (2k + 2) u,     u = eps / 2 of the scalar type
// (the 2u: the first residual 1 - s z0 is computed from the rounded z0 and s z0).
// Iterations needed: e0^(2^k) <= tol  <=>  k >= log2(ln(tol) / ln(e0)); for l = 1/n (a softmax
// sum in [1, n]) that is about log2(n ln(1/tol) / 2): n = 4096, tol = 2^-26 -> k = 16.
//
// Cost (per reciprocal; additions free; a "constant" product has a public operand):
//   Goldschmidt, k >= 1: 2(k - 1) products, 2 constant products, depth k + 1 above s.
//   Newton,      k >= 1: 2(k - 1) products, 2 constant products, depth 2k above s.
//
// Valid input: finite 0 < lo <= hi, s in [lo, hi], k >= 0. These are inner-loop building blocks
// and do not check: the functors that use them (PowerSoftmax, PolynomialSoftmax) derive the range
// themselves and validate their configurations. Outside it e0 >= 1 and the iterations do not
// converge; NaN in s gives NaN.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>

#include "../detail/config.hpp"

namespace softmaxlab {

/// How a softmax-like map forms 1 / sum: one correctly rounded division (Exact), or the
/// polynomial-only Goldschmidt or Newton iterations of approx/reciprocal.hpp (as an encrypted
/// pipeline must). The one reciprocal-method enum of the library: PolynomialSoftmax takes all
/// three, PowerSoftmax Exact and Goldschmidt (it throws std::invalid_argument on Newton).
enum class ReciprocalMethod { Exact, Goldschmidt, Newton };

namespace approx {

// Multiplication counts and multiplicative depth of a polynomial-only computation. Additions and
// subtractions are free (as in CKKS/BFV); "constant" products multiply by a public value (they
// still consume a level in CKKS, so they count toward the depth).
struct HeCost {
  int multiplications = 0;           // ciphertext x ciphertext
  int constant_multiplications = 0;  // ciphertext x public constant
  int depth = 0;                     // longest chain of products (either kind)
};

// The public scaling of a reciprocal on [lo, hi]: z0 = c0 / hi and the initial error bound e0.
struct ReciprocalRange {
  double z0;  // initial guess / scaling constant
  double e0;  // |1 - s z0| <= e0 for every s in [lo, hi]

  // The scaling for s in [lo, hi], finite 0 < lo <= hi (not checked: an inner-loop building block).
  ReciprocalRange(double lo, double hi) {
    const double l = lo / hi;
    z0 = 2.0 / ((1.0 + l) * hi);
    e0 = (1.0 - l) / (1.0 + l);
  }

  // Error bound of k iterations in exact arithmetic: e0^(2^k).
  double truncation_error(int k) const {
    double e = e0;
    for (int i = 0; i < k && e > 0; ++i)
      e *= e;
    return e;
  }

  // Fewest iterations (>= 1) with e0^(2^k) <= tol, at most `max_iterations`.
  int iterations_for(double tol, int max_iterations = 64) const {
    int k = 1;
    while (k < max_iterations && truncation_error(k) > tol)
      ++k;
    return k;
  }
};

// 1/s by k >= 1 Goldschmidt iterations, with s scaled by the public z0 (see ReciprocalRange).
template <class Scalar>
Scalar goldschmidt_reciprocal(Scalar s, Scalar z0, int k) {
  Scalar d = s * z0;
  Scalar f = Scalar(2) - d;
  Scalar n = z0 * f;
  for (int i = 1; i < k; ++i) {
    d *= f;
    f = Scalar(2) - d;
    n *= f;
  }
  return n;
}

// 1/s by k >= 1 Newton iterations from y_0 = z0.
template <class Scalar>
Scalar newton_reciprocal(Scalar s, Scalar z0, int k) {
  Scalar y = z0;
  for (int i = 0; i < k; ++i)
    y = y * (Scalar(2) - s * y);
  return y;
}

// The stated relative error bound of either iteration, k iterations, unit roundoff u. The first
// residual 1 - s z0 is itself rounded (z0 and s z0 in the scalar type), so e0 enters as e0 + 2u.
inline double reciprocal_error_bound(const ReciprocalRange& range, int k, double u) {
  double e = std::min(range.e0 + 2.0 * u, 1.0);
  for (int i = 0; i < k && e > 0; ++i)
    e *= e;
  return e + (2.0 * k + 2.0) * u;
}

// Costs of the two iterations (see the doc block), k >= 1.
inline HeCost goldschmidt_cost(int k) {
  return {2 * (k - 1), 2, k + 1};
}
// The cost of k >= 1 Newton iterations.
inline HeCost newton_cost(int k) {
  return {2 * (k - 1), 2, 2 * k};
}

}  // namespace approx
}  // namespace softmaxlab
