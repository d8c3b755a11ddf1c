// softmaxlab: sparse alternatives to softmax (sparsemax, 1.5-entmax, alpha-entmax); their
// Fenchel-Young losses are in entmax_loss.hpp.
//
//   Sparsemax:   y = argmin_{p in simplex} ||p - x||^2,  y_i = max(x_i - tau, 0)
//   Entmax15:    y_i = max(x_i / 2 - tau, 0)^2                      (alpha = 1.5)
//   Entmax(a):   y_i = max((a - 1) x_i - tau, 0)^(1 / (a - 1))      (1 < a <= 2)
// with the threshold tau the unique number that makes sum_i y_i = 1. Every map is shift-invariant
// (x + c gives the same y) and sparse: entries below the threshold get exactly 0. Shapes: any 1-D
// row (vector, row, column, strided), rowwise / colwise batches, as every functor (functor_base).
//
// Parameters: Entmax(alpha) takes alpha in [1, 2]. alpha = 1 is the limit softmax: Entmax(1)
// computes Softmax (and its backward) exactly. alpha outside [1, 2] or NaN throws
// std::invalid_argument naming the value. Entmax(2) computes Sparsemax exactly (same support and
// values); Entmax(1.5) is 1.5-entmax, computed by the bisection below (the tests check it against
// Entmax15).
//
// Algorithms (per row; m = max x, computed in double from the row's exact values):
//   Sparsemax and Entmax15 are exact: with d_i = (x_i - m) s (s = 1 or 1/2), the threshold solves
//   f(t) = sum_i max(d_i - t, 0)^k = 1 (k = 1 or 2) and lies in [-1, 0). The max pass keeps
//   the per-lane maxima of its packet accumulators (entries at distinct positions): the threshold
//   of any subset of entries is a lower bound of the row's, so theirs gives a start t0 far closer
//   than -1. The candidates d_i > t0 are copied into the output's storage (when the output is not
//   the input; packets without one cost a compare); then each step computes over the candidates the
//   count, sum and sum of squares of d_i - t > 0, solves the equation restricted to that support
//   exactly (linear or quadratic, in double) and accepts the root if every member of the support
//   lies above it (then it is the threshold: Michelot's / Condat's support test). Otherwise t
//   advances by a step that never passes the threshold (Michelot's step for k = 1, Newton's on the
//   convex f for k = 2) and candidates at or below t are dropped. In place (y is x) the same steps
//   sweep the whole row. Expected cost: three sweeps of the row (max, filter, output) plus a few of
//   the candidates; worst case O(n * support) for adversarial rows. Results do not depend on the
//   layout (strided rows gather the same packets) nor on in-place use.
//   Sparsemax's support is decided exactly, once: entry i is in it iff sum_j max(x_j - x_i, 0) < 1
//   (the threshold's defining sum at x_i), a sign computed without rounding (detail::ExactSum, a
//   fixed-point accumulator) for the entries within the threshold's error bound of it (ties such
//   as double(0.1) on the threshold of [0.1, 0.2, 0.3, 0.4, 0.5], and near-ties); the others are
//   decided by the computed threshold, which cannot misplace them. Members get y_i >= the smallest
//   positive Scalar, the rest exactly 0, so the backward's support {y > 0} is this exact support
//   (the entmax package's definition). Cost: nothing measurable when y is not x (the output pass
//   also checks for entries in doubt, and is redone when it finds one), one compare sweep in
//   place; a row with entries in doubt adds a sweep and an exact sum per distinct doubtful value
//   tried, nearest first (usually one). Float rows of 1,000 to 32,000: within the noise of the
//   rounded-support code (shared machine).
//   Entmax15's weight sqrt(y) vanishes at the support's edge, so its gradient is continuous there
//   and its support is the rounded one.
//   Entmax(alpha), 1 < alpha < 2: bisection on t in [-1, -n^(1 - alpha)] (f >= 1 and f <= 1 at
//   the ends) until the bracket cannot be split in double (at most 200 halvings, about 60 in
//   practice); y_i = max(d_i - t, 0)^(1 / (alpha - 1)) then divided by its sum, so the row sums to
//   1 within rounding and entries at or below t are exactly 0. The power is formed in the log
//   domain, (gap_i / T)^p = exp(p log1p(d_i / T)) with T = -t, p = 1 / (alpha - 1): pow(gap_i, p)
//   would amplify the rounding of gap_i (about eps T, as gap_i -> T when alpha -> 1) by p.
//
// Accuracy (tests/test_entmax.cpp against the mpmath table tests/reference/entmax_table.ipp,
// written by tests/reference/generate_entmax.py from the exact inputs):
//   Sparsemax, Entmax15, float:  |y_i - exact| <= 2 eps (|exact| + 2^-24): the threshold is
//     computed in double from the exact inputs, the output as (x_i - hi) - lo with hi + lo = m +
//     tau exact, rounded once (measured worst 1.43 eps);
//   Sparsemax, Entmax15, double: |y_i - exact| <= 4 eps (|exact| + 1), absolute on an output of
//     scale 1: x_i - m and the threshold's sums carry a few roundings (measured worst 0.29 eps);
//   Entmax(alpha): |y_i - exact| <= 2 eps (float) or 1e-12 (double) absolute for every alpha in
//     (1, 2], the threshold bracketed to double resolution (measured worst 0.33 eps float, 0.5 eps
//     double). Near alpha = 1 the bound does not degrade: z_i = (x_i - m)(alpha - 1) / T carries
//     a few relative roundings, so the exponent p log1p(z_i) is within a few double eps of
//     (1 + |x_i - m|), y_i within that relative error, i.e. a few eps absolute (y_i |x_i - m| <=
//     1/e); T's own error (about eps, double resolution) moves the exponent by about |x_i - m|
//     eps. As alpha -> 1 the map and its error tend to Softmax's. Measured worst absolute error for
//     alpha - 1 from 2^-52 to 0.9, rows of 2 to 300: 2.8e-8 float (its rounding), 3.1e-16 double,
//     where pow(gap, p) gave 3.0e-6 at alpha = 1 + 1e-12 and 0.06 at 1 + 2^-52 (tests/
//     test_replayed_faults.cpp, "deep-spin/entmax#24: Entmax stays within its bound as alpha
//     approaches 1", against a long-double log-domain reference).
//   Sparsemax's support at ties: exact, forward and backward (tests/test_replayed_faults.cpp,
//     "keras#23425: Sparsemax decides its support exactly at ties, forward and backward alike").
// Rows sum to 1 within 2e-6 (float, any length) and (8 + k / 4) eps in double for a support of k
// entries (the threshold's sums over the support are plain double sums: measured k / 8 eps on rows
// of k equal entries, k = 300 to 1e5; 1e-14 on the reference rows, n <= 300).
//
// Special values, row by row (as Softmax): a NaN anywhere gives a NaN row; a -inf entry gets
// exactly 0, a row of only -inf gives all 0; k > 0 entries at +inf share the mass, 1/k each, 0
// elsewhere (the limit of the map as those entries grow together); a row of one finite element
// gives 1; an empty input gives an empty output.
//
// Backward (vector-Jacobian products, reading only y and dy): with the weights g_i = y_i^(2 -
// alpha) on the support (y_i > 0) and 0 elsewhere,
//   dx = g * dy - g * (sum_j g_j dy_j / sum_j g_j)
// (Peters, Niculae and Martins 2019, eq. 10): sparsemax's g is the support indicator (dx is dy
// projected onto the support's tangent space), 1.5-entmax's g = sqrt(y). Entmax(1) uses softmax's
// backward. Entries outside the support get exactly 0. Sparsemax's g jumps at the support's edge,
// which is why its forward decides the support exactly: the keras#23425 row gives [0, -0.774102917,
// 0.499551765, 0.969791834, -0.695240682], the exact gradient.
//
// Outputs (y, dx, the losses' grad): a const Matrix does not compile; pass a Map, Ref or Y.row(i).
// Errors (std::invalid_argument naming the parameter and value): alpha outside [1, 2] or NaN
// (EntmaxLoss: outside (1, 2]);
// outputs of the wrong shape or partially overlapping the input; for the losses as
// CrossEntropyLoss (labels of the wrong length or outside [0, C), targets of the wrong shape).
//
// References: Martins and Astudillo, "From Softmax to Sparsemax", ICML 2016; Peters, Niculae and
// Martins, "Sparse Sequence-to-Sequence Models", ACL 2019 (entmax); Blondel, Martins and Niculae,
// "Learning with Fenchel-Young Losses", JMLR 2020; Condat, "Fast projection onto the simplex and
// the l1 ball", Math. Prog. 2016. Semantics follow the Python `entmax` package (sparsemax,
// entmax15, entmax_bisect and their losses); the code is our own.
#pragma once

#include <algorithm>
#include <cmath>
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>

#include "detail/backward_base.hpp"
#include "detail/checks.hpp"
#include "detail/entmax_threshold.hpp"
#include "detail/functor_base.hpp"
#include "softmax.hpp"

namespace softmaxlab {

// Sparsemax (kPower = 1) and 1.5-entmax (kPower = 2): the two maps whose threshold is found
// exactly (see the header's doc block), one class; they differ only in the power of the gap,
// y_i = max(d_i - tau, 0)^kPower with d = x - m (Sparsemax) or (x - m) / 2 (Entmax15), and in the
// backward's weights (the support indicator, sqrt(y)). Use the names Sparsemax and Entmax15.
template <int kPower>
class ExactEntmax : public detail::DistributionFunctor<ExactEntmax<kPower>>,
                    public detail::BackwardFunctor<ExactEntmax<kPower>> {
  static_assert(kPower == 1 || kPower == 2, "ExactEntmax: kPower is 1 (Sparsemax) or 2 (Entmax15)");

 public:
  /// The variant's name in error messages: "Sparsemax" or "Entmax15".
  static constexpr const char* name = kPower == 1 ? "Sparsemax" : "Entmax15";
  /// The variant's flags (detail::VariantTraits gives their meaning and defaults).
  struct Traits : detail::VariantTraits {
    static constexpr bool backward_reads_input = false;  // the backward reads only y and dy
  };
  /// The entmax alpha of this map: 2 (Sparsemax) or 1.5 (Entmax15).
  static constexpr double alpha = kPower == 1 ? 2.0 : 1.5;

 private:
  friend class detail::DistributionFunctor<ExactEntmax>;
  friend class detail::BackwardFunctor<ExactEntmax>;

  template <class Scalar>
  void compute(const detail::Span<const Scalar>& x, const detail::Span<Scalar>& y) const {
    Scalar lanes[detail::kLaneMaxima<Scalar>];
    int lane_count = 0;
    const Scalar m_s = detail::max_with_lanes(x, lanes, lane_count);
    if (detail::write_special_row<false>(x, y, m_s))
      return;
    const double m = static_cast<double>(m_s);
    constexpr double kScale = kPower == 1 ? 1.0 : 0.5;
    const double tau = detail::sparse_row_threshold<kPower>(x, y, m_s, lanes, lane_count, kScale);
    if constexpr (kPower == 1) {
      const std::pair<Scalar, Scalar> shift = detail::split_shift<Scalar>(m, tau);
      const Scalar hi = shift.first, lo = shift.second;
      // The support decided exactly (ties included), then each value from the threshold: members
      // get at least the smallest positive Scalar, so the backward's {y > 0} is this support. Not
      // in place, the output pass also looks for entries in doubt and is redone if it finds one;
      // in place, a compare sweep looks first.
      const detail::DoubtWindow<Scalar> w = detail::sparsemax_doubt_window<Scalar>(x.size, m, tau);
      if (x.data != y.data) {
        if (detail::sparsemax_output(x, y, w.plain_cut(), hi, lo, w))
          detail::sparsemax_output(x, y, detail::sparsemax_exact_cut(x, w), hi, lo, w);
      } else {
        const Scalar cut =
            detail::any_in_window(x, w) ? detail::sparsemax_exact_cut(x, w) : w.plain_cut();
        detail::sparsemax_output(x, y, cut, hi, lo, w);
      }
    } else {
      // y = ((x - m) / 2 - tau)^2 = (((x - hi) - lo) / 2)^2 with hi + lo = m + 2 tau
      const std::pair<Scalar, Scalar> shift = detail::split_shift<Scalar>(m, 2.0 * tau);
      const Scalar hi = shift.first, lo = shift.second;
      detail::with_arrays(
          [&](auto xa, auto ya) { ya = (((xa - hi) - lo) * Scalar(0.5)).max(Scalar(0)).square(); },
          x, y);
    }
  }

  template <class Scalar>
  void compute_backward(const detail::Span<const Scalar>& /*x*/,
                        const detail::Span<const Scalar>& y, const detail::Span<const Scalar>& dy,
                        const detail::Span<Scalar>& dx) const {
    if constexpr (kPower == 1) {
      detail::entmax_backward(y, dy, dx, [](double) { return 1.0; });
    } else {
      detail::entmax_backward(y, dy, dx, [](double v) { return std::sqrt(v); });
    }
  }
};

/// Sparsemax (Martins and Astudillo 2016): see entmax_maps.hpp's doc block.
using Sparsemax = ExactEntmax<1>;
/// 1.5-entmax (Peters, Niculae and Martins 2019), exact threshold: see entmax_maps.hpp.
using Entmax15 = ExactEntmax<2>;

// alpha-entmax by bisection: see the header's doc block.
class Entmax : public detail::DistributionFunctor<Entmax>, public detail::BackwardFunctor<Entmax> {
 public:
  // The variant's name, as error messages give it.
  static constexpr const char* name = "Entmax";
  /// The variant's flags (detail::VariantTraits gives their meaning and defaults).
  struct Traits : detail::VariantTraits {
    static constexpr bool backward_reads_input = false;  // the backward reads only y and dy
  };

  // alpha in [1, 2]; throws std::invalid_argument naming the value otherwise (NaN included).
  explicit Entmax(double alpha = 1.5)
      : alpha_(detail::require_in_range("Entmax: alpha", alpha, 1.0, 2.0, "in [1, 2]")) {}

  // The alpha this object was built with.
  double alpha() const { return alpha_; }

 private:
  friend class detail::DistributionFunctor<Entmax>;
  friend class detail::BackwardFunctor<Entmax>;

  template <class Scalar>
  void compute(const detail::Span<const Scalar>& x, const detail::Span<Scalar>& y) const {
    if (alpha_ == 1.0) {
      Softmax().apply(detail::strided_array(x), detail::strided_array(y));
      return;
    }
    if (alpha_ == 2.0) {  // sparsemax, with its exact support (the backward's weights jump there)
      Sparsemax().apply(detail::strided_array(x), detail::strided_array(y));
      return;
    }
    const Scalar m_s = detail::max_propagate_nan(x);
    if (detail::write_special_row<false>(x, y, m_s))
      return;
    const double m = static_cast<double>(m_s);
    const double s = alpha_ - 1.0, p = 1.0 / s;
    const bool in_place = x.data == y.data;
    const double tau =
        detail::bisect_threshold(x, in_place ? detail::Span<Scalar>{nullptr, 0, 1} : y, m, s, p);
    const detail::EntmaxWeight weight{m, s, p, -tau};
    double sum = 0;
    for (Index i = 0; i < x.size; ++i)
      sum += weight(static_cast<double>(x[i]));
    // Normalized in double and rounded once; y[i] is written after x[i]'s last read (in place).
    const double inv = 1.0 / sum;
    for (Index i = 0; i < x.size; ++i)
      y[i] = static_cast<Scalar>(weight(static_cast<double>(x[i])) * inv);
  }

  template <class Scalar>
  void compute_backward(const detail::Span<const Scalar>& /*x*/,
                        const detail::Span<const Scalar>& y, const detail::Span<const Scalar>& dy,
                        const detail::Span<Scalar>& dx) const {
    if (alpha_ == 1.0)
      return detail::softmax_backward(y, dy, dx, 1.0);
    const double e = 2.0 - alpha_;
    detail::entmax_backward(y, dy, dx, [e](double v) { return std::pow(v, e); });
  }

  double alpha_;
};
}  // namespace softmaxlab
