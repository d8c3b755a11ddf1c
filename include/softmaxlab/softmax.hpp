// softmaxlab: Softmax and LogSoftmax, the exact reference every other variant is measured against.
//
//   Softmax(T):    y_i = exp(x_i/T - m) / sum_j exp(x_j/T - m),   m = max_j x_j/T
//   LogSoftmax(T): y_i = x_i/T - m - log(sum_j exp(x_j/T - m))
//
// Parameters: temperature T in [2^-100, 2^100] (default 1); anything else, NaN included, throws
// std::invalid_argument naming the value. The range keeps 1/T finite in float and makes the
// shifted argument (x_i - max x) / T exact enough that no overflow can change a result.
//
// Algorithm: three passes over a row, on Eigen packets (SSE/AVX/AVX-512/NEON as compiled):
//   1. m = max x (NaN-propagating);
//   2. e_i = exp((x_i - m) / T) with the kernel of detail/exp.hpp, stored into y, summed in pairs
//      and then with a per-lane Kahan-compensated sum (LogSoftmax: summed only); for float e_i is
//      kept scaled by 2^64 (always normal), which saves the exp a multiply;
//   3. y_i = e_i * (1 / sum) (LogSoftmax: y_i = (x_i - m) / T - log(sum)); the scale cancels, and
//      subnormal results are rounded once.
// Computing (x_i - m) / T rather than x_i/T - m/T keeps the cancellation exact: the result's
// error then grows only with |x_i/T - m|, the condition number of exp.
// Overflowing differences: x_i - m leaves the range (|x_i - m| > the largest finite value) only
// when m >= 2^103 (float) or 2^970 (double). Softmax needs no care there (exp of the scaled value
// is 0 for every T <= 2^100), but LogSoftmax's (x_i - m) / T may still fit when T > 1: such a row
// forms it as x_i/T - m/T, two products of opposite signs (no cancellation, within the bound
// below). So LogSoftmax(2) of the float row [FLT_MAX, -FLT_MAX] is [0, -FLT_MAX], and -inf only
// where the exact value is itself beyond the range (tests/test_replayed_faults.cpp, both ends of
// the temperature range).
//
// Accuracy (tests/test_softmax.cpp against the mpmath tables of tests/reference/):
//   Softmax:    |y_i - exact| <= 4 eps (1 + |x_i/T - m|) |exact|,
//   LogSoftmax: |y_i - exact| <= 4 eps (1 + |exact|),
// with eps of the scalar type and, for results below the smallest normal number, |exact| replaced
// by that number (subnormal results carry an absolute error of a few subnormal steps). Each row's
// probabilities sum to 1 within 2e-6 (float) at any length up to 2^24.
// Eigen::half / Eigen::bfloat16 and mixed input/output types (tests/test_half_precision.cpp, mpmath
// tables of exact half/bf16 inputs): computed in float (double when either side is double) and
// rounded once: Softmax within 1 ulp of the output type (half subnormals: 1 unit of 2^-24),
// LogSoftmax within 1 ulp plus 4 float eps (1 + |exact|); a row of 2^20 half entries sums to 1
// within 2^-10; a float input written to a half output never gives inf or NaN.
//
// Special values, row by row:
//   - a -inf entry gets exactly 0 (LogSoftmax: -inf): it is masked out;
//   - a row of only -inf gives all 0 (LogSoftmax: all -inf), never NaN;
//   - k > 0 entries equal to +inf share the mass: 1/k each, 0 elsewhere (the limit of the formula;
//     LogSoftmax: -log k and -inf);
//   - a NaN anywhere makes the whole row NaN;
//   - an empty input gives an empty output.
//
// Errors: every failure throws std::invalid_argument with a message naming the function, the
// parameter and the value or shapes: a temperature out of range (constructor); an output whose
// shape differs from the input's; an output that partially overlaps the input (exact in-place,
// y being x, is allowed); rowwise/colwise outputs of the wrong shape. Nothing else is thrown,
// and no input value (NaN, inf, subnormal, +-FLT_MAX) is an error.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "detail/backward_base.hpp"
#include "detail/checks.hpp"
#include "detail/functor_base.hpp"
#include "detail/masked.hpp"
#include "detail/row_batch.hpp"
#include "detail/softmax_rows.hpp"

namespace softmaxlab {

// Softmax with temperature: see the header's doc block for the formula, accuracy and special
// values.
class Softmax : public detail::DistributionFunctor<Softmax>,
                public detail::BackwardFunctor<Softmax> {
 public:
  // The variant's name, as error messages give it.
  static constexpr const char* name = "Softmax";
  /// The variant's flags (detail::VariantTraits gives their meaning and defaults).
  struct Traits : detail::VariantTraits {
    static constexpr bool backward_reads_input = false;   // the gradient needs only y and dy
    static constexpr bool contiguous_rows_kernel = true;  // rowwise/colwise: compute_rows
    static constexpr bool streams_long_rows = true;  // long 16-bit/mixed rows: compute_streamed
    static constexpr bool fuses_conversions = true;  // and every length, in its own passes
    static constexpr Index rows_mixed = detail::kRowsBlockElements;  // compute_rows_mixed
  };

  // Throws std::invalid_argument naming the value when temperature is outside [2^-100, 2^100] (NaN
  // included).
  explicit Softmax(double temperature = 1.0)
      : temperature_(detail::check_temperature("Softmax: temperature", temperature)) {}

  // The temperature this object was built with.
  double temperature() const { return temperature_; }

  // Boolean mask (bool scalars, true = kept; JAX's where=): entries where keep is false behave
  // exactly as -inf logits, and no -inf is written into x. y as in apply(); y may be x.
  template <class XprX, class XprK, class Out>
  void apply_masked(const Eigen::DenseBase<XprX>& x, const Eigen::DenseBase<XprK>& keep,
                    Out&& y) const {
    detail::apply_masked(*this, "Softmax::apply_masked", x, keep, std::forward<Out>(y));
  }
  // Each row of X with the mask Keep (X's shape) into Y (X's shape); Y may be X.
  template <class XprX, class XprK, class Out>
  void rowwise_masked(const Eigen::DenseBase<XprX>& x, const Eigen::DenseBase<XprK>& keep,
                      Out&& y) const {
    detail::rowwise_masked(*this, "Softmax::rowwise_masked", x, keep, std::forward<Out>(y));
  }

 private:
  friend class detail::DistributionFunctor<Softmax>;
  friend class detail::BackwardFunctor<Softmax>;

  template <class C, class In, class Out>
  void compute_streamed(const detail::Span<const In>& x, const detail::Span<Out>& y) const {
    if (x.size <= detail::kFusedStageElements<C>) {
      detail::softmax_row_staged<C>(x, y, temperature_);
    } else {
      detail::softmax_row_streamed<false, C>(x, y, temperature_);
    }
  }

  template <class Scalar>
  void compute(const detail::Span<const Scalar>& x, const detail::Span<Scalar>& y) const {
    const Scalar m = detail::max_propagate_nan(x);
    if (detail::write_special_row<false>(x, y, m))
      return;
    detail::softmax_regular_row(x, y, m, static_cast<Scalar>(1.0 / temperature_),
                                temperature_ != 1.0);
  }

  // `count` contiguous slices of length n (slice i at x + i ldx, y + i ldy), from rowwise/colwise:
  // the pipelined batch kernel, with compute() for rows of special values. Same results as
  // compute() row by row.
  template <class Scalar>
  void compute_rows(const Scalar* x, Index ldx, Scalar* y, Index ldy, Index count, Index n) const {
    const auto special = [&](Index i) {
      compute<Scalar>(detail::Span<const Scalar>{x + i * ldx, n, 1},
                      detail::Span<Scalar>{y + i * ldy, n, 1});
    };
    const auto s = static_cast<Scalar>(1.0 / temperature_);
    if (temperature_ != 1.0) {
      detail::softmax_contiguous_rows<true>(x, ldx, y, ldy, count, n, s, special);
    } else {
      detail::softmax_contiguous_rows<false>(x, ldx, y, ldy, count, n, s, special);
    }
  }

  // The same for contiguous 16-bit (or mixed float and 16-bit) rows of n <= kRowsBlockElements
  // entries, computed in float with the conversions in registers (AVX-512 builds; see
  // DistributionFunctor::slices_mixed): the float results rounded once, as the staged path gives.
  // Rows of special values take compute_mixed, the exact path of the 16-bit types.
  template <class In, class Out>
  void compute_rows_mixed(const In* x, Index ldx, Out* y, Index ldy, Index count, Index n) const {
    const auto special = [&](Index i) {
      this->compute_mixed(detail::Span<const In>{x + i * ldx, n, 1},
                          detail::Span<Out>{y + i * ldy, n, 1});
    };
    const auto s = static_cast<float>(1.0 / temperature_);
    // The exponentials of the current and the pending row (the rows of at most four packets stay
    // in registers and do not touch it).
    alignas(64) float stage[2 * detail::kRowsBlockElements];
    eigen_assert(n <= detail::kRowsBlockElements);
    if (temperature_ != 1.0) {
      detail::softmax_contiguous_rows<true>(x, ldx, y, ldy, count, n, s, special, stage);
    } else {
      detail::softmax_contiguous_rows<false>(x, ldx, y, ldy, count, n, s, special, stage);
    }
  }

  template <class Scalar>
  void compute_backward(const detail::Span<const Scalar>& x, const detail::Span<const Scalar>& y,
                        const detail::Span<const Scalar>& dy, const detail::Span<Scalar>& dx) const;

  double temperature_;
};

// Log-softmax with temperature: see the header's doc block.
class LogSoftmax : public detail::DistributionFunctor<LogSoftmax>,
                   public detail::BackwardFunctor<LogSoftmax> {
 public:
  // The variant's name, as error messages give it.
  static constexpr const char* name = "LogSoftmax";
  // The backward reads x: a masked entry is x_i = -inf, not y_i = -inf (a finite x_i whose
  // log-probability overflows the output type also has y_i = -inf, and keeps its gradient).
  /// The variant's flags (detail::VariantTraits gives their meaning and defaults).
  struct Traits : detail::VariantTraits {
    // The backward reads x: a masked entry is x_i = -inf.
    static constexpr bool backward_reads_input = true;
    static constexpr bool streams_long_rows = true;  // long 16-bit/mixed rows: compute_streamed
  };

  // Throws std::invalid_argument naming the value when temperature is outside [2^-100, 2^100] (NaN
  // included).
  explicit LogSoftmax(double temperature = 1.0)
      : temperature_(detail::check_temperature("LogSoftmax: temperature", temperature)) {}

  // The temperature this object was built with.
  double temperature() const { return temperature_; }

  // Boolean mask (bool scalars, true = kept; JAX's where=): entries where keep is false behave
  // exactly as -inf logits, and no -inf is written into x. y as in apply(); y may be x.
  template <class XprX, class XprK, class Out>
  void apply_masked(const Eigen::DenseBase<XprX>& x, const Eigen::DenseBase<XprK>& keep,
                    Out&& y) const {
    detail::apply_masked(*this, "LogSoftmax::apply_masked", x, keep, std::forward<Out>(y));
  }
  // Each row of X with the mask Keep (X's shape) into Y (X's shape); Y may be X.
  template <class XprX, class XprK, class Out>
  void rowwise_masked(const Eigen::DenseBase<XprX>& x, const Eigen::DenseBase<XprK>& keep,
                      Out&& y) const {
    detail::rowwise_masked(*this, "LogSoftmax::rowwise_masked", x, keep, std::forward<Out>(y));
  }

 private:
  friend class detail::DistributionFunctor<LogSoftmax>;
  friend class detail::BackwardFunctor<LogSoftmax>;

  template <class C, class In, class Out>
  void compute_streamed(const detail::Span<const In>& x, const detail::Span<Out>& y) const {
    detail::softmax_row_streamed<true, C>(x, y, temperature_);
  }

  template <class Scalar>
  void compute(const detail::Span<const Scalar>& x, const detail::Span<Scalar>& y) const {
    const Scalar m = detail::max_propagate_nan(x);
    if (detail::write_special_row<true>(x, y, m))
      return;
    const Scalar s = static_cast<Scalar>(1.0 / temperature_);
    const bool scaled = temperature_ != 1.0;
    const long double sum = std::ldexp(detail::scaled_exp_pass<false>(x, y, m, s, scaled),
                                       -detail::kExpScaleLog2<Scalar>);
    detail::log_softmax_last_pass(x, y, m, s, scaled, static_cast<Scalar>(std::log(sum)));
  }

  template <class Scalar>
  void compute_backward(const detail::Span<const Scalar>& x, const detail::Span<const Scalar>& y,
                        const detail::Span<const Scalar>& dy, const detail::Span<Scalar>& dx) const;

  double temperature_;
};

// ---------------------------------------------------------------------------------------------
// Backward passes (vector-Jacobian products, see detail/backward_base.hpp for the call forms).
//
//   Softmax:    dx = y * (dy - <dy, y>) / T
//   LogSoftmax: dx_i = (dy_i - p_i S) / T,  p_i = exp(y_i),  S = sum_{j unmasked} dy_j
//
// Softmax reads only y and dy (x is shape-checked). LogSoftmax reads x, y and dy: a masked entry
// is x_i = -inf (the forward's contract), a constant: it gets dx_i = 0 and its dy_i is left out of
// S. A finite x_i whose log-probability overflows the output (float [FLT_MAX, -FLT_MAX] gives
// y = [0, -inf]) is not masked: p_i = 0 and dx_i = dy_i / T (PyTorch's value, and the exact one;
// tests/test_replayed_faults.cpp, "the PyTorch differential run"). A Softmax entry with y_i = 0
// gets dx_i = 0 either way. Rows with +inf entries use the same formulas at y (the limit with
// those entries equal: in the log form the finite entries keep dx_i = dy_i / T). NaN in y gives a
// NaN row (Softmax) or NaN entries (LogSoftmax: where y is NaN, all of them for the forward's NaN
// row); NaN in dy gives a NaN row (except, in the log form, at a masked entry).
// Softmax accuracy: a few eps relative to max |dy| * max |y| / T per entry.
// LogSoftmax accuracy, against the exact value from the given y and dy (p_i = exp(y_i) exactly),
// with eps of the scalar type, eps_d = 2^-52 (double's), A = sum_{j unmasked} |dy_j|, n the row
// length (n eps_d < 1/100):
//   |dx_i - exact| <= eps (2 |dy_i - p_i S| + 4 p_i |S|) / T + (n eps_d)^2 p_i A / T.
// Derivation (u = eps / 2, every rounding relative and at most u unless said): S is summed with
// Neumaier's compensated sum in double (float terms are exact in double) on four chains whose
// eight parts are summed likewise, with error at most u_d |S| + (gamma_n^2 + gamma_8^2) A,
// gamma_n = n u_d / (1 - n u_d) (Ogita, Rump and Oishi 2005, Sum2, the same algorithm with
// TwoSum), then rounded once to the scalar: S' = S (1 + s) + r, |s| <= u +
// u_d, |r| <= (n eps_d)^2 A / 3.9; p'_i = exp(y_i) (1 + e), |e| <= 1.07 ulp <= 2.2u
// (detail/exp.hpp, pexp_nonpositive_u11: y_i <= 0 for LogSoftmax's output); q = p'_i S' (1 + d1);
// dx'_i = (dy_i - q)(1 + d2)(1 + d3)(1 + d4), d3 the rounding of 1 / T (0 when T = 1), d2 and d4
// those of the subtraction and the scaling. So |dx'_i - exact| T <= |p_i S - q| + |dy_i - q|
// (3u + O(u^2)), |p_i S - q| <= p_i |S| (4.2u + u_d + O(u^2)) + p_i |r| (1 + 4u), and |dy_i - q|
// <= |dy_i - p_i S| + |p_i S - q|: the terms in eps above, with room for the O(u^2) parts. The
// relative error of dx_i is therefore small unless dy_i ~ p_i S cancel. The compensated S is what
// keeps the bound independent of n: a plain sum adds up to ~n eps A p_i (measured 42 x 16 eps of
// the old scale (|dy_i| + max|dy|) / T at n = 100,000, as PyTorch's float path). p_i below the
// smallest normal number add an absolute error of a few subnormal steps times |S|. Tested on rows
// of 1,000 to 100,000 against long double (tests/test_replayed_faults.cpp, "PyTorch differential
// run: LogSoftmax's backward within its stated bound on long rows": measured worst 0.50 of the
// bound, 1.07 eps float, 0.70 eps double).

template <class Scalar>
void Softmax::compute_backward(const detail::Span<const Scalar>& /*x*/,
                               const detail::Span<const Scalar>& y,
                               const detail::Span<const Scalar>& dy,
                               const detail::Span<Scalar>& dx) const {
  detail::softmax_backward(y, dy, dx, temperature_);
}

template <class Scalar>
void LogSoftmax::compute_backward(const detail::Span<const Scalar>& x,
                                  const detail::Span<const Scalar>& y,
                                  const detail::Span<const Scalar>& dy,
                                  const detail::Span<Scalar>& dx) const {
  const Scalar inf = std::numeric_limits<Scalar>::infinity();
  const Scalar inverse_t = static_cast<Scalar>(1.0 / temperature_);
  // S over the unmasked entries (x_i > -inf, NaN included), Neumaier's compensated sum in double
  // on four chains (entry i on chain i mod 4, so any layout sums alike; four chains for
  // throughput), whose eight parts are summed the same way: the error is about one rounding of
  // S plus O(n^2 u_d^2) A, whatever n (see the bound above). Every read of the row happens before
  // dx is written (dx may be x, y or dy).
  const auto add = [](double& sum, double& carry, double v) {
    const double t = sum + v;
    carry += std::fabs(sum) >= std::fabs(v) ? (sum - t) + v : (v - t) + sum;
    sum = t;
  };
  double sums[4] = {0, 0, 0, 0}, carries[4] = {0, 0, 0, 0};
  for (Index i = 0; i < x.size; ++i) {
    if (x[i] != -inf)
      add(sums[i & 3], carries[i & 3], static_cast<double>(dy[i]));
  }
  double sum = 0, carry = 0;
  for (int k = 0; k < 4; ++k)
    add(sum, carry, sums[k]);
  for (int k = 0; k < 4; ++k)
    add(sum, carry, carries[k]);
  // (an infinite dy makes a carry NaN: the plain sum is then the limit)
  const Scalar s = static_cast<Scalar>(std::isfinite(sum) ? sum + carry : sum);
  const bool scaled = temperature_ != 1.0;
  if (x.contiguous() && y.contiguous() && dy.contiguous() && dx.contiguous()) {
    detail::log_softmax_backward_pass(x.data, y.data, dy.data, dx.data, x.size, s, inverse_t,
                                      scaled);
    return;
  }
  // Strided rows through stack chunks, so every entry meets the same packet code.
  constexpr Index kChunk = detail::kChunk;
  alignas(64) Scalar bx[kChunk], by[kChunk], bdy[kChunk];
  for (Index i0 = 0; i0 < x.size; i0 += kChunk) {
    const Index n = std::min(kChunk, x.size - i0);
    for (Index i = 0; i < n; ++i) {
      bx[i] = x[i0 + i];
      by[i] = y[i0 + i];
      bdy[i] = dy[i0 + i];
    }
    detail::log_softmax_backward_pass(bx, by, bdy, bdy, n, s, inverse_t, scaled);
    for (Index i = 0; i < n; ++i)
      dx[i0 + i] = bdy[i];
  }
}

}  // namespace softmaxlab
