// softmaxlab: AttentionSoftmax, the fused score softmax of inference engines (ggml's
// soft_max_ext): scale, softcap, additive mask times a slope, and a sink, in Softmax's passes.
//
// AttentionSoftmax(o): y = softmax(t), t_i = cap(scale x_i) + m mask_i, the sink z joining:
//   y_i = exp(t_i - M) / (sum_j exp(t_j - M) + exp(z - M)),   M = max(max_j t_j, z).
// Forms: f(x), f.apply(x, y), f.rowwise(X[, Y]), f.colwise(X[, Y]) (DistributionFunctor, no
// mask), f.apply_masked(x, mask, y), f.rowwise_masked(S, M, P) (M: S's shape, or one row
// broadcast over every row). The mask is storage of x's scalar, or of Eigen::half or
// Eigen::bfloat16 beside float x, or of float beside double x (detail::mask_scalar_ok_v; ggml's f16
// masks): converted exactly per stack chunk of the row, so the result is bit for bit the call on
// the converted mask (tests/test_attention_mask_types.cpp, "AttentionSoftmax: a half, bfloat16 or
// float mask gives the bits of the converted mask"). Three passes over the row, as Softmax:
// (1) t_i written into y while the max is taken (the pre-operations are fused into the max pass,
// never an extra sweep); (2) exp(t_i - M) in place, summed with Softmax's compensated sums;
// (3) y *= 1 / (sum + exp(z - M)). Backward: f.backward(x, y, dy[, dx]) and the row/column forms,
// dx_i = scale cap'(scale x_i) y_i (dy_i - <dy, y>), cap'(s) = 1 - tanh^2(s / c) (1 without a
// cap); the same for the masked forms (the mask is a constant).
// Accuracy (tests/test_attention.cpp, against long-double evaluations of the exact transformed
// scores T_i = cap(scale x_i) + m mask_i): relative error of y_i
//   <= eps (4 (1 + |T_i - M|) + d_i + max_j d_j),   d_j = |scale x_j| + |m mask_j| + 2|T_j| + 2
// (eps of the scalar type): Softmax's bound on the transformed scores plus the rounding of the
// scores themselves (scale and slope rounded to the scalar, one product each, the cap's tanh
// within 2 eps, one addition) and its effect on the normalizer (a weighted mean, at most the max).
// Measured worst (rows of 1 to 4097, N(0, 8^2) scores, 10% masked, every option): 0.27 of the
// bound (18.7 eps) in float, 0.18 (11.9 eps) in double.
//
// Special values, overflow, outputs, errors, threads and sources: attention.hpp's doc block.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>

#include "attention_options.hpp"
#include "detail/attention_score.hpp"
#include "detail/backward_base.hpp"
#include "detail/checks.hpp"
#include "detail/functor_base.hpp"
#include "softmax.hpp"

namespace softmaxlab {

// The fused attention score softmax: see the header's doc block.
class AttentionSoftmax : public detail::DistributionFunctor<AttentionSoftmax>,
                         public detail::BackwardFunctor<AttentionSoftmax> {
 public:
  // The variant's name, as error messages give it.
  static constexpr const char* name = "AttentionSoftmax";
  /// The variant's flags (detail::VariantTraits gives their meaning and defaults).
  struct Traits : detail::VariantTraits {
    static constexpr bool backward_reads_input = true;  // the cap's derivative reads x
  };

  // Refuses causal, a window and ALiBi from positions (a row has no query position):
  // std::invalid_argument naming the value.
  explicit AttentionSoftmax(const AttentionOptions& options = {}) : options_(options) {
    if (options.causal())
      detail::fail(name,
                   ": causal must be false (a row has no query position; use a mask), but "
                   "got true");
    if (options.has_window() || options.has_alibi())
      detail::fail(name,
                   ": a window or ALiBi from positions needs MultiHeadAttention (a row "
                   "has no query position), but got window (",
                   options.window_left(), ", ", options.window_right(), ") and alibi max_bias ",
                   options.alibi_max_bias());
  }

  // The options this object was built with.
  const AttentionOptions& options() const { return options_; }

  // y = softmax(cap(scale x) + m mask) with the sink: x, mask 1-D of one length (either
  // orientation), mask storage of x's scalar (or half/bfloat16 beside float x, float beside double
  // x); y as for apply(); y may be x, not the mask.
  template <class XprX, class XprM, class Out>
  void apply_masked(const Eigen::DenseBase<XprX>& x, const Eigen::DenseBase<XprM>& mask,
                    Out&& y_out) const {
    using Scalar = typename XprX::Scalar;
    using XprY = detail::output_xpr_t<Out>;
    auto& y = detail::writable_output(std::forward<Out>(y_out));
    check_mask_type<XprX, XprM>();
    detail::require_vector(name, mask.rows(), mask.cols());
    if (mask.size() != x.size()) {
      detail::fail(name, ": mask must have the input's length ", x.size(), ", but got ",
                   mask.rows(), " x ", mask.cols());
    }
    using MaskScalar = typename XprM::Scalar;
    detail::Span<const MaskScalar> ms = detail::vector_span<const MaskScalar>(mask.derived());
    using C = detail::compute_scalar_t<Scalar, typename XprY::Scalar>;
    if constexpr (detail::is_mixed_v<Scalar, typename XprY::Scalar> && !std::is_same_v<Scalar, C>) {
      // 16-bit or mixed scores: the mask is converted to the compute type with the row (a stack
      // buffer for rows up to the stage size, a heap workspace beyond).
      constexpr Index kCap = detail::kStageElements<C>;
      auto run = [&](C* buffer) {
        detail::load_as(ms, buffer);
        detail::Span<const C> mc{buffer, ms.size, 1};
        apply_impl(x, y, mc);
      };
      if (ms.size <= kCap) {
        alignas(64) C buffer[kCap];
        run(buffer);
      } else {
        Eigen::Matrix<C, Eigen::Dynamic, 1> work(ms.size);
        run(work.data());
      }
    } else {
      apply_impl(x, y, ms);
    }
  }
  // softmax of the transformed scores with the mask (x's shape), returned as a plain object of x's
  // shape.
  template <class XprX, class XprM>
  typename XprX::PlainObject masked(const Eigen::DenseBase<XprX>& x,
                                    const Eigen::DenseBase<XprM>& mask) const {
    typename XprX::PlainObject y(x.rows(), x.cols());
    apply_masked(x, mask, y);
    return y;
  }

  // Each row of S with its mask row: M has S's shape, or is one row broadcast over every row.
  template <class XprS, class XprM, class Out>
  void rowwise_masked(const Eigen::DenseBase<XprS>& s, const Eigen::DenseBase<XprM>& mask,
                      Out&& p_out) const {
    using XprP = detail::output_xpr_t<Out>;
    auto& p = detail::writable_output(std::forward<Out>(p_out));
    if constexpr (detail::is_mixed_v<typename XprS::Scalar, typename XprP::Scalar>) {
      // 16-bit or mixed scalars: row by row through apply_masked's staged path.
      check_mask_type<XprS, XprM>();
      static_check_io<XprS, XprP>();
      detail::require_same_size("AttentionSoftmax::rowwise_masked", s.rows(), s.cols(), p.rows(),
                                p.cols());
      const bool broadcast_rows = mask.rows() == 1 && s.rows() != 1;
      if (!((mask.rows() == s.rows() || broadcast_rows) && mask.cols() == s.cols())) {
        detail::fail(name, ": rowwise_masked needs a mask of shape ", s.rows(), " x ", s.cols(),
                     " or 1 x ", s.cols(), ", but got ", mask.rows(), " x ", mask.cols());
      }
      for (Index i = 0; i < s.rows(); ++i)
        apply_masked(s.derived().row(i), mask.derived().row(broadcast_rows ? 0 : i), p.row(i));
    } else {
      rowwise_masked_same(s, mask, p);
    }
  }

 private:
  template <class XprS, class XprM, class XprP>
  void rowwise_masked_same(const Eigen::DenseBase<XprS>& s, const Eigen::DenseBase<XprM>& mask,
                           const Eigen::DenseBase<XprP>& p_const) const {
    using Scalar = typename XprS::Scalar;
    using MaskScalar = typename XprM::Scalar;
    check_mask_type<XprS, XprM>();
    static_check_io<XprS, XprP>();
    auto& p = const_cast<Eigen::DenseBase<XprP>&>(p_const).derived();
    detail::require_same_size("AttentionSoftmax::rowwise_masked", s.rows(), s.cols(), p.rows(),
                              p.cols());
    const bool broadcast = mask.rows() == 1 && s.rows() != 1;
    if (!((mask.rows() == s.rows() || broadcast) && mask.cols() == s.cols())) {
      detail::fail(name, ": rowwise_masked needs a mask of shape ", s.rows(), " x ", s.cols(),
                   " or 1 x ", s.cols(), ", but got ", mask.rows(), " x ", mask.cols());
    }
    if (s.size() == 0)
      return;
    const auto& md = mask.derived();
    auto mask_row = [&](Index i) {
      return detail::slice_span<const MaskScalar>(md, broadcast ? 0 : i, true);
    };
    if constexpr (detail::has_direct_access_v<XprS>) {
      const auto& sd = s.derived();
      const bool same_layout = sd.rowStride() == p.rowStride() && sd.colStride() == p.colStride();
      if (detail::matrices_partially_overlap<Scalar>(sd.data(), detail::last_coefficient(sd),
                                                     p.data(), detail::last_coefficient(p),
                                                     same_layout)) {
        detail::fail(name,
                     ": output partially overlaps the input (only exact in-place is "
                     "allowed)");
      }
      detail::for_each_slice<detail::kParallelSlices>(s.rows(), s.cols(), [&](Index i) {
        compute<Scalar>(detail::slice_span<const Scalar>(sd, i, true),
                        detail::slice_span<Scalar>(p, i, true), mask_row(i));
      });
    } else {
      detail::evaluate_into(s, p);
      detail::for_each_slice<detail::kParallelSlices>(s.rows(), s.cols(), [&](Index i) {
        const detail::Span<Scalar> ps = detail::slice_span<Scalar>(p, i, true);
        compute<Scalar>(detail::Span<const Scalar>{ps.data, ps.size, ps.stride}, ps, mask_row(i));
      });
    }
  }

 public:
  // Each row of S with the mask M (S's shape, or one row for every row), returned as a plain object
  // of S's shape.
  template <class XprS, class XprM>
  typename XprS::PlainObject rowwise_masked(const Eigen::DenseBase<XprS>& s,
                                            const Eigen::DenseBase<XprM>& mask) const {
    typename XprS::PlainObject p(s.rows(), s.cols());
    rowwise_masked(s, mask, p);
    return p;
  }

 private:
  friend class detail::DistributionFunctor<AttentionSoftmax>;
  friend class detail::BackwardFunctor<AttentionSoftmax>;

  template <class XprX, class XprM>
  static void check_mask_type() {
    static_assert(detail::mask_scalar_ok_v<typename XprX::Scalar, typename XprM::Scalar>,
                  "softmaxlab: the mask must have the input's scalar type, or Eigen::half or "
                  "Eigen::bfloat16 beside float scores, or float beside double scores");
    static_assert(detail::has_direct_access_v<XprM>,
                  "softmaxlab: the mask must be storage (Matrix, Array, Map, Ref or a Block of "
                  "one); evaluate an expression first");
  }

  template <class Scalar>
  detail::ScoreTransform<Scalar> transform() const {
    detail::ScoreTransform<Scalar> f;
    f.scale = static_cast<Scalar>(options_.scale_or(1.0));
    f.slope = static_cast<Scalar>(options_.mask_slope());
    f.cap = static_cast<Scalar>(options_.softcap());
    return f;
  }

  template <class Scalar>
  void compute(const detail::Span<const Scalar>& x, const detail::Span<Scalar>& y) const {
    compute<Scalar>(x, y, detail::Span<const Scalar>{nullptr, 0, 1});
  }

  template <class Scalar, class MaskScalar>
  void compute(const detail::Span<const Scalar>& x, const detail::Span<Scalar>& y,
               const detail::Span<const MaskScalar>& mask) const {
    const detail::ScoreTransform<Scalar> f = transform<Scalar>();
    const Scalar z = static_cast<Scalar>(options_.sink());
    // Pass 1: the transformed scores into y, and their max. In place, only the max: an irregular
    // row needs x again; a regular one is transformed once more.
    const bool in_place = x.data == y.data;
    const detail::ScoreMax<Scalar> r = in_place ? detail::transform_scores<false>(x, mask, y, f)
                                                : detail::transform_scores<true>(x, mask, y, f);
    if (r.nan || r.overflow || !(std::abs(r.max) < std::numeric_limits<Scalar>::infinity()))
      return detail::attention_irregular_row(x, mask, y, f, options_.has_sink(), z);
    if (in_place)
      detail::transform_scores<true>(x, mask, y, f);
    const detail::Span<const Scalar> t{y.data, y.size, y.stride};
    // Passes 2 and 3: Softmax's, with the sink in the max and the sum.
    Scalar m = r.max;
    long double sink_term = 0;
    if (options_.has_sink()) {
      m = std::max(m, z);
      sink_term =
          std::ldexp(std::exp(static_cast<long double>(z) - m), detail::kExpScaleLog2<Scalar>);
    }
    const long double sum = detail::scaled_exp_pass<true>(t, y, m, Scalar(1), false) + sink_term;
    const Scalar inverse = detail::reciprocal<Scalar>(sum);
    if (y.contiguous()) {
      detail::scale_in_place(y.data, y.size, inverse);
    } else {
      for (Index i = 0; i < y.size; ++i)
        y[i] *= inverse;
    }
  }

  template <class Scalar>
  void compute_backward(const detail::Span<const Scalar>& x, const detail::Span<const Scalar>& y,
                        const detail::Span<const Scalar>& dy,
                        const detail::Span<Scalar>& dx) const {
    const Scalar scale = static_cast<Scalar>(options_.scale_or(1.0));
    const double c = options_.softcap();
    const Scalar inv_c = c > 0 ? static_cast<Scalar>(1.0 / c) : Scalar(0);
    detail::with_arrays(
        [&](auto xa, auto ya, auto dya, auto dxa) {
          const Scalar s = (ya * dya).sum();
          if (c > 0) {
            dxa = ya * (dya - s) * scale * (Scalar(1) - (xa * (scale * inv_c)).tanh().square());
          } else {
            dxa = ya * (dya - s) * scale;
          }
        },
        x, y, dy, dx);
  }

  AttentionOptions options_;
};

}  // namespace softmaxlab
