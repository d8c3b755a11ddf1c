// softmaxlab: SurfaceFusion, the fusion of two logit sources at the softmax layer (Liu et al.,
// "Understanding and Improving Encoder Layer Fusion in Sequence-to-Sequence Learning", ICLR 2021,
// arXiv 2012.14768): tgt are the decoder's output logits, src the logits read from the encoder's
// embedding layer, over the same vocabulary. Both variants return log-probabilities.
//
//   HardFusion(lambda = 0.8):  y = lambda * log_softmax(tgt) + (1 - lambda) * log_softmax(src)
//     lambda in [0, 1]. As in the paper the result is NOT renormalized: exp(y) is a weighted
//     geometric mean of the two distributions and sums to at most 1 (exactly 1 only when they
//     agree, or lambda is 0 or 1). Apply LogSoftmax to y if a normalized distribution is needed.
//     A weight of exactly 0 drops its term (so lambda = 1 ignores src entirely, masks included).
//   SoftFusion(tau = 1):       y = log_softmax(tgt + log_softmax(tau * src))
//     normalized; tau in [2^-100, 2^100] scales src before its normalization (a temperature 1/tau).
//
// Calls (tgt, src, y, dy and the gradients all have one shape; each row or column is a vector):
//   y = f(tgt, src);  f.apply(tgt, src, y);  Y = f.rowwise(T, S);  f.rowwise(T, S, Y);  colwise
//   auto [dtgt, dsrc] = f.backward(tgt, src, y, dy);  f.backward(tgt, src, y, dy, dtgt, dsrc);
//   f.rowwise_backward(T, S, Y, dY[, dT, dS]);  f.colwise_backward(...)
// The forward forms writing into y never allocate; y may be tgt or src itself, and one of tgt, src
// may be an expression (evaluated into y). The backward forms writing into dtgt and dsrc never
// allocate; their inputs must then be storage, and dtgt, dsrc must not overlap the inputs or each
// other. The forms returning results accept any expressions.
//
// Backward (vector-Jacobian products; the log-softmax backward of softmax.hpp applied twice):
//   Hard: dtgt = lambda (dy - softmax(tgt) sum(dy)),
//         dsrc = (1 - lambda) (dy - softmax(src) sum(dy))
//   Soft: da = dy - exp(y) sum(dy);  dtgt = da;  dsrc = tau (da - softmax(tau src) sum(da))
// where an output entry equal to -inf (masked) is a constant: its dy is left out of the sums, and a
// masked input entry (-inf) gets gradient 0.
//
// Special values: a -inf entry of either input masks that output entry (-inf); SoftFusion masks
// every entry to which log_softmax(tau * src) gives -inf (a -inf src, or a finite one beside a
// +inf src) even where tgt is +inf. NaN in a row of either input makes the output row NaN, and
// the backward's gradient rows NaN, masked entries included; except that HardFusion with a
// weight of exactly 0 drops that input, NaN included. +inf entries follow softmax.hpp's rules
// for each log_softmax. Accuracy: each log_softmax as in softmax.hpp (4 eps (1 + |value|)); the
// fusion adds one rounding per operation (tests/test_fusion.cpp, "fusion: exact values and
// properties", against long double; tests/test_replayed_faults.cpp for the overflowing rows). Overflow: a shifted difference x_i - max that leaves the
// range is scaled first (lambda x_i - lambda max; tau likewise, softmax.hpp's rule), and a
// SoftFusion row where log_softmax(tau src) or tgt + log_softmax(tau src) overflows is computed as
// log_softmax(tgt + tau (src - max src)), equal in exact arithmetic, formed scaled by 2^-k
// (2^-k (1 + 2 tau) <= 1) and normalized at temperature 2^-k (or, when src holds +inf, halved and
// normalized at temperature 1/2), so every output whose exact value fits the scalar type is
// finite (HardFusion(0.5) of tgt = [FLT_MAX, -FLT_MAX], src = [0, 0] gives [-log(2)/2,
// -FLT_MAX]; SoftFusion of tgt = [FLT_MAX, 0], src = [-FLT_MAX, FLT_MAX] gives [-FLT_MAX, 0]).
//
// Outputs (y, dtgt, dsrc): a const Matrix does not compile; pass a Map, Ref or a block (Y.row(i)).
// Errors (std::invalid_argument naming the value or shapes, nothing else is thrown): lambda
// outside [0, 1] or tau outside [2^-100, 2^100] (constructors); tgt, src, y, dy or the gradients
// of different shapes; an output partially overlapping an input, or gradients sharing storage
// with the inputs or each other (see Calls).
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>

#include "detail/backward_base.hpp"
#include "detail/checks.hpp"
#include "detail/functor_base.hpp"
#include "detail/log_normalizer.hpp"
#include "softmax.hpp"

namespace softmaxlab {
namespace detail {

// Two inputs -> one output, and the backward 4 inputs -> 2 outputs, over vectors, rows or columns.
template <class Derived>
class FusionFunctor {
 public:
  template <class XprT, class XprS>
  typename XprT::PlainObject operator()(const Eigen::DenseBase<XprT>& tgt,
                                        const Eigen::DenseBase<XprS>& src) const {
    require_vector(Derived::name, tgt.rows(), tgt.cols());
    typename XprT::PlainObject y(tgt.rows(), tgt.cols());
    with_storage(src, [&](const auto& s) { forward_impl(tgt, s, y, SliceMode::Vector); });
    return y;
  }
  template <class XprT, class XprS, class Out>
  void apply(const Eigen::DenseBase<XprT>& tgt, const Eigen::DenseBase<XprS>& src, Out&& y) const {
    static_check_output<Out>();
    forward_impl(tgt, src, y, SliceMode::Vector);
  }
  template <class XprT, class XprS>
  typename XprT::PlainObject rowwise(const Eigen::DenseBase<XprT>& tgt,
                                     const Eigen::DenseBase<XprS>& src) const {
    typename XprT::PlainObject y(tgt.rows(), tgt.cols());
    with_storage(src, [&](const auto& s) { forward_impl(tgt, s, y, SliceMode::Rows); });
    return y;
  }
  template <class XprT, class XprS, class Out>
  void rowwise(const Eigen::DenseBase<XprT>& tgt, const Eigen::DenseBase<XprS>& src,
               Out&& y) const {
    static_check_output<Out>();
    forward_impl(tgt, src, y, SliceMode::Rows);
  }
  template <class XprT, class XprS>
  typename XprT::PlainObject colwise(const Eigen::DenseBase<XprT>& tgt,
                                     const Eigen::DenseBase<XprS>& src) const {
    typename XprT::PlainObject y(tgt.rows(), tgt.cols());
    with_storage(src, [&](const auto& s) { forward_impl(tgt, s, y, SliceMode::Cols); });
    return y;
  }
  template <class XprT, class XprS, class Out>
  void colwise(const Eigen::DenseBase<XprT>& tgt, const Eigen::DenseBase<XprS>& src,
               Out&& y) const {
    static_check_output<Out>();
    forward_impl(tgt, src, y, SliceMode::Cols);
  }

  // Backward: returns {dtgt, dsrc}.
  template <class XprT, class XprS, class XprY, class XprDy>
  std::pair<typename XprT::PlainObject, typename XprT::PlainObject> backward(
      const Eigen::DenseBase<XprT>& tgt, const Eigen::DenseBase<XprS>& src,
      const Eigen::DenseBase<XprY>& y, const Eigen::DenseBase<XprDy>& dy) const {
    require_vector(Derived::name, tgt.rows(), tgt.cols());
    return backward_alloc(tgt, src, y, dy, SliceMode::Vector);
  }
  template <class XprT, class XprS, class XprY, class XprDy, class OutT, class OutS>
  void backward(const Eigen::DenseBase<XprT>& tgt, const Eigen::DenseBase<XprS>& src,
                const Eigen::DenseBase<XprY>& y, const Eigen::DenseBase<XprDy>& dy, OutT&& dtgt,
                OutS&& dsrc) const {
    static_check_output<OutT>();
    static_check_output<OutS>();
    backward_impl(tgt, src, y, dy, dtgt, dsrc, SliceMode::Vector);
  }
  template <class XprT, class XprS, class XprY, class XprDy>
  std::pair<typename XprT::PlainObject, typename XprT::PlainObject> rowwise_backward(
      const Eigen::DenseBase<XprT>& tgt, const Eigen::DenseBase<XprS>& src,
      const Eigen::DenseBase<XprY>& y, const Eigen::DenseBase<XprDy>& dy) const {
    return backward_alloc(tgt, src, y, dy, SliceMode::Rows);
  }
  template <class XprT, class XprS, class XprY, class XprDy, class OutT, class OutS>
  void rowwise_backward(const Eigen::DenseBase<XprT>& tgt, const Eigen::DenseBase<XprS>& src,
                        const Eigen::DenseBase<XprY>& y, const Eigen::DenseBase<XprDy>& dy,
                        OutT&& dtgt, OutS&& dsrc) const {
    static_check_output<OutT>();
    static_check_output<OutS>();
    backward_impl(tgt, src, y, dy, dtgt, dsrc, SliceMode::Rows);
  }
  template <class XprT, class XprS, class XprY, class XprDy>
  std::pair<typename XprT::PlainObject, typename XprT::PlainObject> colwise_backward(
      const Eigen::DenseBase<XprT>& tgt, const Eigen::DenseBase<XprS>& src,
      const Eigen::DenseBase<XprY>& y, const Eigen::DenseBase<XprDy>& dy) const {
    return backward_alloc(tgt, src, y, dy, SliceMode::Cols);
  }
  template <class XprT, class XprS, class XprY, class XprDy, class OutT, class OutS>
  void colwise_backward(const Eigen::DenseBase<XprT>& tgt, const Eigen::DenseBase<XprS>& src,
                        const Eigen::DenseBase<XprY>& y, const Eigen::DenseBase<XprDy>& dy,
                        OutT&& dtgt, OutS&& dsrc) const {
    static_check_output<OutT>();
    static_check_output<OutS>();
    backward_impl(tgt, src, y, dy, dtgt, dsrc, SliceMode::Cols);
  }

 private:
  const Derived& self() const { return static_cast<const Derived&>(*this); }

  static Index slice_count(Index rows, Index cols, SliceMode mode) {
    return mode == SliceMode::Vector ? 1 : mode == SliceMode::Rows ? rows : cols;
  }

  template <class XprT, class XprS, class XprY>
  void forward_impl(const Eigen::DenseBase<XprT>& tgt_in, const Eigen::DenseBase<XprS>& src_in,
                    const Eigen::DenseBase<XprY>& y_const, SliceMode mode) const {
    using Scalar = typename XprT::Scalar;
    static_check_scalar<Scalar>();
    static_assert(
        std::is_same_v<Scalar,
                       typename XprS::Scalar> && std::is_same_v<Scalar, typename XprY::Scalar>,
        "softmaxlab: tgt, src and y must have the same scalar type");
    static_assert(is_writable_storage_v<XprY>,
                  "softmaxlab: y must be writable storage (Matrix, Array, Map, Ref or a Block of "
                  "one), not an expression");
    static_assert(has_direct_access_v<XprT> || has_direct_access_v<XprS>,
                  "softmaxlab: at most one of tgt and src may be an expression in the forms "
                  "writing into y; evaluate the other first, or use the form returning y");
    const auto& tgt = tgt_in.derived();
    const auto& src = src_in.derived();
    auto& y = const_cast<Eigen::DenseBase<XprY>&>(y_const).derived();
    const char* name = Derived::name;
    if (mode == SliceMode::Vector)
      require_vector(name, tgt.rows(), tgt.cols());
    require_same_shape(name, mode, "src", src.rows(), src.cols(), tgt.rows(), tgt.cols());
    require_same_shape(name, mode, "y", y.rows(), y.cols(), tgt.rows(), tgt.cols());
    if (tgt.size() == 0)
      return;
    constexpr bool one_expression = !has_direct_access_v<XprT> || !has_direct_access_v<XprS>;
    auto check = [&](const auto& in) {
      using In = std::decay_t<decltype(in)>;
      if constexpr (has_direct_access_v<In>) {
        if (one_expression ? storage_overlaps(in, y) : storage_partially_overlaps(in, y))
          fail(name, ": y ",
               one_expression ? "must not share storage with an input when the other "
                                "input is an expression evaluated into y"
                              : "partially overlaps an input (only exact in-place "
                                "is allowed)");
      }
    };
    check(tgt);
    check(src);
    if constexpr (!has_direct_access_v<XprT>) {
      evaluate_into(tgt, y);
    } else if constexpr (!has_direct_access_v<XprS>) {
      evaluate_into(src, y);
    }
    auto span_of = [&](const auto& in, Index i) -> Span<const Scalar> {
      using In = std::decay_t<decltype(in)>;
      if constexpr (has_direct_access_v<In>) {
        return slice_of<const Scalar>(in, i, mode);
      } else {
        const Span<Scalar> s = slice_of<Scalar>(y, i, mode);
        return {s.data, s.size, s.stride};
      }
    };
    for (Index i = 0; i < slice_count(tgt.rows(), tgt.cols(), mode); ++i) {
      self().template compute<Scalar>(span_of(tgt, i), span_of(src, i),
                                      slice_of<Scalar>(y, i, mode));
    }
  }

  template <class XprT, class XprS, class XprY, class XprDy>
  auto backward_alloc(const Eigen::DenseBase<XprT>& tgt, const Eigen::DenseBase<XprS>& src,
                      const Eigen::DenseBase<XprY>& y, const Eigen::DenseBase<XprDy>& dy,
                      SliceMode mode) const {
    using Plain = typename XprT::PlainObject;
    std::pair<Plain, Plain> out{Plain(tgt.rows(), tgt.cols()), Plain(tgt.rows(), tgt.cols())};
    with_storage(tgt, [&](const auto& t) {
      with_storage(src, [&](const auto& s) {
        with_storage(y, [&](const auto& ys) {
          with_storage(dy, [&](const auto& dys) {
            backward_impl(t, s, ys, dys, out.first, out.second, mode);
          });
        });
      });
    });
    return out;
  }

  template <class XprT, class XprS, class XprY, class XprDy, class XprDT, class XprDS>
  void backward_impl(const Eigen::DenseBase<XprT>& tgt_in, const Eigen::DenseBase<XprS>& src_in,
                     const Eigen::DenseBase<XprY>& y_in, const Eigen::DenseBase<XprDy>& dy_in,
                     const Eigen::DenseBase<XprDT>& dt_const,
                     const Eigen::DenseBase<XprDS>& ds_const, SliceMode mode) const {
    using Scalar = typename XprT::Scalar;
    static_check_scalar<Scalar>();
    static_assert(
        std::is_same_v<
            Scalar,
            typename XprS::
                Scalar> && std::is_same_v<Scalar, typename XprY::Scalar> && std::is_same_v<Scalar, typename XprDy::Scalar> && std::is_same_v<Scalar, typename XprDT::Scalar> && std::is_same_v<Scalar, typename XprDS::Scalar>,
        "softmaxlab: tgt, src, y, dy, dtgt and dsrc must have the same scalar type");
    static_assert(is_writable_storage_v<XprDT> && is_writable_storage_v<XprDS>,
                  "softmaxlab: dtgt and dsrc must be writable storage, not expressions");
    static_assert(
        has_direct_access_v<
            XprT> && has_direct_access_v<XprS> && has_direct_access_v<XprY> && has_direct_access_v<XprDy>,
        "softmaxlab: the fusion backward forms writing into dtgt and dsrc take storage "
        "inputs; evaluate expressions first, or use the form returning the gradients");
    const auto& tgt = tgt_in.derived();
    const auto& src = src_in.derived();
    const auto& y = y_in.derived();
    const auto& dy = dy_in.derived();
    auto& dt = const_cast<Eigen::DenseBase<XprDT>&>(dt_const).derived();
    auto& ds = const_cast<Eigen::DenseBase<XprDS>&>(ds_const).derived();
    const char* name = Derived::name;
    if (mode == SliceMode::Vector)
      require_vector(name, tgt.rows(), tgt.cols());
    require_same_shape(name, mode, "src", src.rows(), src.cols(), tgt.rows(), tgt.cols());
    require_same_shape(name, mode, "y", y.rows(), y.cols(), tgt.rows(), tgt.cols());
    require_same_shape(name, mode, "dy", dy.rows(), dy.cols(), tgt.rows(), tgt.cols());
    require_same_shape(name, mode, "dtgt", dt.rows(), dt.cols(), tgt.rows(), tgt.cols());
    require_same_shape(name, mode, "dsrc", ds.rows(), ds.cols(), tgt.rows(), tgt.cols());
    if (tgt.size() == 0)
      return;
    auto check = [&](const auto& in) {
      if (storage_overlaps(in, dt) || storage_overlaps(in, ds))
        fail(name, ": dtgt and dsrc must not share storage with the inputs");
    };
    check(tgt);
    check(src);
    check(y);
    check(dy);
    if (storage_overlaps(dt, ds))
      fail(name, ": dtgt and dsrc must not share storage");
    for (Index i = 0; i < slice_count(tgt.rows(), tgt.cols(), mode); ++i) {
      self().template compute_backward<Scalar>(
          slice_of<const Scalar>(tgt, i, mode), slice_of<const Scalar>(src, i, mode),
          slice_of<const Scalar>(y, i, mode), slice_of<const Scalar>(dy, i, mode),
          slice_of<Scalar>(dt, i, mode), slice_of<Scalar>(ds, i, mode));
    }
  }
};

}  // namespace detail

// Hard SurfaceFusion: see the header's doc block.
class HardFusion : public detail::FusionFunctor<HardFusion> {
 public:
  // The variant's name, as error messages give it.
  static constexpr const char* name = "HardFusion";

  // lambda in [0, 1]; throws std::invalid_argument naming the value otherwise.
  explicit HardFusion(double lambda = 0.8)
      : lambda_(detail::require_in_range("HardFusion: lambda", lambda, 0.0, 1.0, "in [0, 1]")) {}

  // The lambda this object was built with.
  double lambda() const { return lambda_; }

 private:
  friend class detail::FusionFunctor<HardFusion>;

  // w * log_softmax(x)_i, with a zero weight dropping its term (so that 0 * -inf never makes a
  // NaN); a shifted difference x_i - max that overflows is weighted first (LogNormalizer).
  template <class Scalar>
  static Scalar weighted(Scalar w, const detail::LogNormalizer<Scalar>& n, Scalar xi) {
    return w == Scalar(0) ? Scalar(0) : n.weighted_log_p(w, xi);
  }

  template <class Scalar>
  void compute(const detail::Span<const Scalar>& tgt, const detail::Span<const Scalar>& src,
               const detail::Span<Scalar>& y) const {
    const auto nt = detail::LogNormalizer<Scalar>::of(tgt);
    const auto ns = detail::LogNormalizer<Scalar>::of(src);
    const Scalar lt = static_cast<Scalar>(lambda_), ls = static_cast<Scalar>(1.0 - lambda_);
    for (Index i = 0; i < y.size; ++i) {
      const Scalar t = tgt[i], s = src[i];
      y[i] = weighted(lt, nt, t) + weighted(ls, ns, s);
    }
  }

  template <class Scalar>
  void compute_backward(const detail::Span<const Scalar>& tgt,
                        const detail::Span<const Scalar>& src, const detail::Span<const Scalar>& y,
                        const detail::Span<const Scalar>& dy, const detail::Span<Scalar>& dtgt,
                        const detail::Span<Scalar>& dsrc) const {
    const Scalar inf = std::numeric_limits<Scalar>::infinity();
    const Scalar lt = static_cast<Scalar>(lambda_), ls = static_cast<Scalar>(1.0 - lambda_);
    // The upstream gradient of the entries that are not masked outputs, summed per input's mask.
    Scalar sum_t = 0, sum_s = 0;
    for (Index i = 0; i < y.size; ++i) {
      const Scalar g = y[i] == -inf ? Scalar(0) : dy[i];
      if (tgt[i] != -inf)
        sum_t += g;
      if (src[i] != -inf)
        sum_s += g;
    }
    const auto nt = detail::LogNormalizer<Scalar>::of(tgt);
    const auto ns = detail::LogNormalizer<Scalar>::of(src);
    for (Index i = 0; i < y.size; ++i) {
      const Scalar g = y[i] == -inf ? Scalar(0) : dy[i];
      dtgt[i] = lt == Scalar(0) || tgt[i] == -inf ? Scalar(0) : lt * (g - nt.p(tgt[i]) * sum_t);
      dsrc[i] = ls == Scalar(0) || src[i] == -inf ? Scalar(0) : ls * (g - ns.p(src[i]) * sum_s);
    }
  }

  double lambda_;
};

// Soft SurfaceFusion: see the header's doc block.
class SoftFusion : public detail::FusionFunctor<SoftFusion> {
 public:
  // The variant's name, as error messages give it.
  static constexpr const char* name = "SoftFusion";

  // tau in [2^-100, 2^100]; throws std::invalid_argument naming the value otherwise.
  explicit SoftFusion(double tau = 1.0)
      : tau_(detail::require_in_range("SoftFusion: tau", tau, 0x1p-100, 0x1p100,
                                      "in [2^-100, 2^100] (finite, > 0)")) {}

  // The tau this object was built with.
  double tau() const { return tau_; }

 private:
  friend class detail::FusionFunctor<SoftFusion>;

  template <class Scalar>
  void compute(const detail::Span<const Scalar>& tgt, const detail::Span<const Scalar>& src,
               const detail::Span<Scalar>& y) const {
    const auto ns = detail::LogNormalizer<Scalar>::of(src, static_cast<Scalar>(tau_));
    const Scalar inf = std::numeric_limits<Scalar>::infinity();
    // tgt + log_softmax(tau src) can overflow to -inf where the final log-probability fits (its
    // row max is then far below 0), and so can log_softmax(tau src) itself where tgt would bring
    // it back into range.
    bool overflow = false;
    for (Index i = 0; i < y.size; ++i) {
      const Scalar t = tgt[i], sv = src[i], ls = ns.log_p(sv);
      overflow = overflow || (t + ls == -inf && t != -inf && ls != -inf)
                 || (ls == -inf && sv != -inf && ns.kind == detail::RowKind::Regular);
    }
    if (overflow && ns.kind == detail::RowKind::Regular) {
      // Regular src: log_softmax(tau src) = tau (src - m) - c, and the constant c cancels in the
      // outer log_softmax, so y = log_softmax(z), z = tgt + tau (src - m), exactly. z is formed
      // scaled by 2^-k, 2^-k (1 + 2 tau) <= 1 (no finite input overflows there), and normalized
      // at temperature 2^-k, whose differences (u_i - max u) 2^k are formed after the subtraction:
      // every output whose exact value fits is finite.
      const int k = std::max(1, static_cast<int>(std::ceil(std::log2(1.0 + 2.0 * tau_))));
      const Scalar down = static_cast<Scalar>(std::ldexp(1.0, -k));
      const Scalar tau_down = static_cast<Scalar>(std::ldexp(tau_, -k));
      for (Index i = 0; i < y.size; ++i) {
        const Scalar t = tgt[i], sv = src[i];
        y[i] = sv == -inf && t == t ? -inf : t * down + detail::shifted_scaled(sv, ns.m, tau_down);
      }
      const auto nu =
          detail::LogNormalizer<Scalar>::of(detail::Span<const Scalar>{y.data, y.size, y.stride},
                                            static_cast<Scalar>(std::ldexp(1.0, k)));
      for (Index i = 0; i < y.size; ++i)
        y[i] = nu.log_p(y[i]);
      return;
    }
    // Other rows (src with +inf entries) whose tgt + log_softmax(tau src) overflows are formed
    // halved, (t + ls) / 2 = t/2 + ls/2, and normalized by LogSoftmax at temperature 1/2, whose
    // scaled differences cannot overflow.
    const Scalar half = overflow ? Scalar(0.5) : Scalar(1);
    for (Index i = 0; i < y.size; ++i) {
      // An entry src gives probability 0 (-inf, or beside a +inf) is masked even against a +inf
      // tgt (inf - inf would make the whole row NaN); a NaN tgt still poisons the row.
      const Scalar t = tgt[i], ls = ns.log_p(src[i]);
      y[i] = ls == -inf && t == t ? -inf : t * half + ls * half;
    }
    detail::StridedArray<Scalar> a = detail::strided_array(y);
    LogSoftmax(overflow ? 0.5 : 1.0).apply(a, a);
  }

  template <class Scalar>
  void compute_backward(const detail::Span<const Scalar>& /*tgt*/,
                        const detail::Span<const Scalar>& src, const detail::Span<const Scalar>& y,
                        const detail::Span<const Scalar>& dy, const detail::Span<Scalar>& dtgt,
                        const detail::Span<Scalar>& dsrc) const {
    const Scalar inf = std::numeric_limits<Scalar>::infinity();
    const Scalar tau = static_cast<Scalar>(tau_);
    Scalar sum_dy = 0;
    for (Index i = 0; i < y.size; ++i) {
      if (y[i] != -inf)
        sum_dy += dy[i];
    }
    Scalar sum_da = 0;
    for (Index i = 0; i < y.size; ++i) {
      const Scalar da = y[i] == -inf ? Scalar(0) : dy[i] - std::exp(y[i]) * sum_dy;
      dtgt[i] = da;
      if (src[i] != -inf)
        sum_da += da;
    }
    const auto ns = detail::LogNormalizer<Scalar>::of(src, tau);
    for (Index i = 0; i < y.size; ++i) {
      const Scalar s = src[i];
      dsrc[i] = s == -inf ? Scalar(0) : tau * (dtgt[i] - ns.p(s) * sum_da);
    }
  }

  double tau_;
};

}  // namespace softmaxlab
