// softmaxlab: LogSumExp, the log-normalizer of softmax as a function of its own, with SciPy's and
// JAX's weighted and signed forms and the backward pass.
//
//   lse(x)                = log sum_i exp(x_i) = m + log sum_i exp(x_i - m),   m = max x
//   lse.weighted(x, b)    = log sum_i b_i exp(x_i)        (NaN when the sum is negative)
//   lse.with_sign(x, b)   = {log |s|, sign(s)},  s = sum_i b_i exp(x_i)   (SciPy's return_sign)
//
//   sml::LogSumExp lse;
//   float v = lse(x);                         // x: any 1-D dense Eigen expression, float or double
//   Eigen::VectorXf r = lse.rowwise(X);       // one value per row (X.rows() entries)
//   Eigen::RowVectorXf c = lse.colwise(X);    // one value per column
//   lse.rowwise(X, r); lse.colwise(X, c);     // into given vectors, no allocation
//   lse.backward(x, g, dx);                   // dx = g softmax(x)       (d lse / dx = softmax(x))
//   lse.rowwise_backward(X, G, dX);           // row i: dX.row(i) = G(i) softmax(X.row(i))
//   lse.weighted_backward(x, b, g, dx, db);   // gradients of log|s| for the weighted form
//
// Algorithm: the two reads of Softmax's normalizer (detail/kernels.hpp): the NaN-propagating max,
// then the compensated sum of exp(x_i - m) by the packet exp kernel; lse = m + log(sum) evaluated
// in long double and rounded once. The weighted form sums b_i exp(x_i - m) in long double, m the
// max over the entries with b_i != 0 (SciPy's choice).
//
// Accuracy (tests/test_logsumexp.cpp against the mpmath tables of tests/reference/, lse = x_i -
// log_softmax(x)_i): |lse - exact| <= 2 eps (1 + |exact|), eps of the scalar type. Weighted form:
// absolute error of log|s| within a few eps times sum_i |b_i| exp(x_i) / |s| (cancellation in s
// is the input's condition number, not the algorithm's).
//
// Special values: a NaN anywhere (in x, or in b) gives NaN; +inf entries give +inf (weighted: the
// sign of the sum of their weights; NaN if those weights cancel); a row of only -inf, an empty row,
// or (weighted) only zero weights give -inf (sign 0); entries with b_i = 0 take no part. Backward:
// softmax's rules (-inf entries get 0, NaN rows NaN, +inf entries share g).
//
// Outputs (out, dx, db): a const Matrix does not compile; pass a Map, Ref or a block (Y.row(i)).
// Errors (std::invalid_argument naming the function and the shapes): a matrix where a vector is
// expected; outputs and weights of the wrong size.
//
// Reference: scipy.special.logsumexp (b=, return_sign=), jax.nn.logsumexp; Blanchard, Higham and
// Higham, "Accurately computing the log-sum-exp and softmax functions" (IMA J. Numer. Anal. 2021).
#pragma once

#include <cmath>
#include <limits>
#include <utility>

#include "detail/checks.hpp"
#include "detail/functor_base.hpp"
#include "softmax.hpp"

namespace softmaxlab {

// The result of LogSumExp::signed_lse: log |sum_i s_i exp(x_i)| and the sign of the sum.
template <class Scalar>
struct SignedLogSumExp {
  Scalar value;  // log |sum b_i exp(x_i)|
  Scalar sign;   // +1, -1, or 0 when the sum is 0 (NaN when value is NaN)
};

// log sum_i exp(x_i) of a 1-D input, of each row or of each column: see the header's doc block.
class LogSumExp {
 public:
  // The variant's name, as error messages give it.
  static constexpr const char* name = "LogSumExp";

  template <class XprX>
  typename XprX::Scalar operator()(const Eigen::DenseBase<XprX>& x) const {
    using Scalar = typename XprX::Scalar;
    detail::static_check_scalar<Scalar>();
    detail::require_vector(name, x.rows(), x.cols());
    if constexpr (detail::has_direct_access_v<XprX>) {
      return of(detail::vector_span<const Scalar>(x.derived()));
    } else {
      const typename XprX::PlainObject copy = x;  // an expression: evaluated once
      return of(detail::vector_span<const Scalar>(copy));
    }
  }

  // The log-sum-exp of each row of X, as a column vector (X.rows() entries).
  template <class XprX>
  Eigen::Matrix<typename XprX::Scalar, Eigen::Dynamic, 1> rowwise(
      const Eigen::DenseBase<XprX>& x) const {
    Eigen::Matrix<typename XprX::Scalar, Eigen::Dynamic, 1> out(x.rows());
    rowwise(x, out);
    return out;
  }
  // The same, into out (X.rows() entries).
  template <class XprX, class Out>
  void rowwise(const Eigen::DenseBase<XprX>& x, Out&& out) const {
    detail::static_check_output<Out>();
    slices(x, out, true);
  }
  // The log-sum-exp of each column of X, as a row vector (X.cols() entries).
  template <class XprX>
  Eigen::Matrix<typename XprX::Scalar, 1, Eigen::Dynamic> colwise(
      const Eigen::DenseBase<XprX>& x) const {
    Eigen::Matrix<typename XprX::Scalar, 1, Eigen::Dynamic> out(x.cols());
    colwise(x, out);
    return out;
  }
  // The same, into out (X.cols() entries).
  template <class XprX, class Out>
  void colwise(const Eigen::DenseBase<XprX>& x, Out&& out) const {
    detail::static_check_output<Out>();
    slices(x, out, false);
  }

  // log sum b_i exp(x_i) and its sign (SciPy's return_sign=True).
  template <class XprX, class XprB>
  SignedLogSumExp<typename XprX::Scalar> with_sign(const Eigen::DenseBase<XprX>& x,
                                                   const Eigen::DenseBase<XprB>& b) const {
    using Scalar = typename XprX::Scalar;
    detail::static_check_scalar<Scalar>();
    check_weights(x, b);
    const Scalar inf = std::numeric_limits<Scalar>::infinity();
    const Scalar nan = std::numeric_limits<Scalar>::quiet_NaN();
    const Index n = x.size();
    Scalar m = -inf;
    for (Index i = 0; i < n; ++i) {
      const Scalar xi = x.derived().coeff(i), bi = static_cast<Scalar>(b.derived().coeff(i));
      if (xi != xi || bi != bi)
        return {nan, nan};
      if (bi != Scalar(0) && xi > m)
        m = xi;
    }
    if (m == -inf)
      return {-inf, Scalar(0)};
    long double s = 0;
    for (Index i = 0; i < n; ++i) {
      const Scalar xi = x.derived().coeff(i), bi = static_cast<Scalar>(b.derived().coeff(i));
      if (bi == Scalar(0))
        continue;
      if (m == inf) {
        s += xi == inf ? static_cast<long double>(bi) : 0.0L;  // only +inf entries count
      } else {
        s += static_cast<long double>(bi) * std::exp(static_cast<long double>(xi) - m);
      }
    }
    if (m == inf)
      return s == 0 ? SignedLogSumExp<Scalar>{nan, nan}
                    : SignedLogSumExp<Scalar>{inf, s > 0 ? Scalar(1) : Scalar(-1)};
    if (s == 0)
      return {-inf, Scalar(0)};
    return {static_cast<Scalar>(static_cast<long double>(m) + std::log(std::fabs(s))),
            s > 0 ? Scalar(1) : Scalar(-1)};
  }

  // log sum b_i exp(x_i); NaN when the sum is negative (SciPy without return_sign).
  template <class XprX, class XprB>
  typename XprX::Scalar weighted(const Eigen::DenseBase<XprX>& x,
                                 const Eigen::DenseBase<XprB>& b) const {
    const auto r = with_sign(x, b);
    return r.sign < 0 ? std::numeric_limits<typename XprX::Scalar>::quiet_NaN() : r.value;
  }

  // dx = g softmax(x): the vector-Jacobian product of lse at x. dx may be x.
  template <class XprX, class Out>
  void backward(const Eigen::DenseBase<XprX>& x, double g, Out&& dx) const {
    auto& d = detail::writable_output(std::forward<Out>(dx));
    Softmax().apply(x, d);
    d *= static_cast<typename XprX::Scalar>(g);
  }
  // Row i: dX.row(i) = G(i) softmax(X.row(i)); G has X.rows() entries.
  template <class XprX, class XprG, class Out>
  void rowwise_backward(const Eigen::DenseBase<XprX>& x, const Eigen::DenseBase<XprG>& g,
                        Out&& dx) const {
    detail::require_vector("LogSumExp::rowwise_backward: G", g.rows(), g.cols());
    if (g.size() != x.rows())
      detail::fail("LogSumExp::rowwise_backward: G must have one entry per row (", x.rows(),
                   "), but got ", g.size());
    auto& d = detail::writable_output(std::forward<Out>(dx));
    Softmax().rowwise(x, d);
    for (Index i = 0; i < x.rows(); ++i)
      d.row(i) *= static_cast<typename XprX::Scalar>(g.derived().coeff(i));
  }
  // Gradients of value = log|s| (s = sum b_i exp(x_i)) times g: dx_i = g sign b_i exp(x_i - value),
  // db_i = g sign exp(x_i - value). NaN when value is NaN; zeros when s = 0 or all weights are 0.
  template <class XprX, class XprB, class OutDx, class OutDb>
  void weighted_backward(const Eigen::DenseBase<XprX>& x, const Eigen::DenseBase<XprB>& b, double g,
                         OutDx&& dx_out, OutDb&& db_out) const {
    using Scalar = typename XprX::Scalar;
    auto& dx = detail::writable_output(std::forward<OutDx>(dx_out));
    auto& db = detail::writable_output(std::forward<OutDb>(db_out));
    if (dx.size() != x.size() || db.size() != x.size())
      detail::fail("LogSumExp::weighted_backward: dx and db must have x's length ", x.size(),
                   ", but got ", dx.size(), " and ", db.size());
    const auto r = with_sign(x, b);
    const Scalar inf = std::numeric_limits<Scalar>::infinity();
    for (Index i = 0; i < x.size(); ++i) {
      const Scalar xi = x.derived().coeff(i), bi = static_cast<Scalar>(b.derived().coeff(i));
      long double w;  // exp(x_i - value) sign g
      if (r.value != r.value) {
        w = std::numeric_limits<long double>::quiet_NaN();
      } else if (r.sign == 0) {
        w = 0;
      } else if (r.value == inf) {
        // the limit: only +inf entries carry the gradient, shared by weight
        long double total = 0;
        for (Index j = 0; j < x.size(); ++j)
          total += x.derived().coeff(j) == inf ? static_cast<long double>(b.derived().coeff(j)) : 0;
        w = xi == inf ? r.sign * g / std::fabs(total) : 0.0L;
      } else {
        w = std::exp(static_cast<long double>(xi) - r.value) * r.sign * g;
      }
      dx.coeffRef(i) = static_cast<Scalar>(w * bi);
      db.coeffRef(i) = static_cast<Scalar>(w);
    }
  }

 private:
  template <class XprX, class XprB>
  static void check_weights(const Eigen::DenseBase<XprX>& x, const Eigen::DenseBase<XprB>& b) {
    detail::require_vector("LogSumExp::with_sign", x.rows(), x.cols());
    detail::require_vector("LogSumExp::with_sign: b", b.rows(), b.cols());
    if (b.size() != x.size())
      detail::fail("LogSumExp::with_sign: b must have x's length ", x.size(), ", but got ",
                   b.size());
  }

  // lse of one slice: m + log(sum exp(x - m)) with Softmax's max and compensated exp-sum kernels.
  template <class Scalar>
  static Scalar of(const detail::Span<const Scalar>& x) {
    using detail::RowKind;
    const Scalar inf = std::numeric_limits<Scalar>::infinity();
    if (x.size == 0)
      return -inf;
    const Scalar m = detail::max_propagate_nan(x);
    switch (detail::classify(m)) {
      case RowKind::NaN:
      case RowKind::AllMasked:
      case RowKind::PositiveInfinity:
        return m;  // NaN, -inf, +inf
      case RowKind::Regular:
        break;
    }
    const long double scaled = detail::scaled_exp_pass<false>(
        x, detail::Span<Scalar>{nullptr, 0, 1}, m, Scalar(1), /*scaled=*/false);
    return static_cast<Scalar>(static_cast<long double>(m)
                               + std::log(std::ldexp(scaled, -detail::kExpScaleLog2<Scalar>)));
  }

  template <class XprX, class XprY>
  void slices(const Eigen::DenseBase<XprX>& x, const Eigen::DenseBase<XprY>& out_const,
              bool along_rows) const {
    using Scalar = typename XprX::Scalar;
    detail::static_check_scalar<Scalar>();
    static_assert(std::is_same_v<Scalar, typename XprY::Scalar>,
                  "softmaxlab: input and output must have the same scalar type");
    auto& out = const_cast<Eigen::DenseBase<XprY>&>(out_const).derived();
    const Index count = along_rows ? x.rows() : x.cols();
    detail::require_vector(along_rows ? "LogSumExp::rowwise" : "LogSumExp::colwise", out.rows(),
                           out.cols());
    if (out.size() != count)
      detail::fail(along_rows ? "LogSumExp::rowwise" : "LogSumExp::colwise",
                   ": output must have one entry per slice (", count, "), but got ", out.rows(),
                   " x ", out.cols());
    if constexpr (detail::has_direct_access_v<XprX>) {
      const auto& xd = x.derived();
      for (Index i = 0; i < count; ++i)
        out.coeffRef(i) = of(detail::slice_span<const Scalar>(xd, i, along_rows));
    } else {
      const typename XprX::PlainObject copy = x;  // an expression: evaluated once
      for (Index i = 0; i < count; ++i)
        out.coeffRef(i) = of(detail::slice_span<const Scalar>(copy, i, along_rows));
    }
  }
};

}  // namespace softmaxlab
