// softmaxlab: NormalizedSoftmax, classification on the hypersphere (Zhai and Wu, "Classification
// is a Strong Baseline for Deep Metric Learning", arXiv 1811.12649; hyperspherical embeddings for
// novel classes, arXiv 2102.03243), with the CosFace, ArcFace and SphereFace target margins.
//
//   logits(E, W)(n, c) = s cos(e_n, w_c) = s <e_n / |e_n|, w_c / |w_c|>
//   ns(E, W)           = row-wise softmax of the logits (rows sum to 1)
// E holds N embeddings (N x D, one per row), W holds C class weights (C x D). With labels
// y (N integers in [0, C)) the target logit of row n, at t = angle(e_n, w_{y_n}), becomes
//   CosFace (Wang et al. 2018):    s (cos t - m),              m in [0, 1]
//   ArcFace (Deng et al. 2019):    s cos(t + m) while t + m <= pi, else s (cos t - m sin m)
//                                  (insightface's fallback: cos(t + m) stops decreasing past pi,
//                                  the linear continuation keeps the target logit monotone in t),
//                                  m in [0, pi/2]
//   SphereFace (Liu et al. 2017):  s psi(t), psi(t) = (-1)^k cos(m t) - 2k on [k pi/m, (k+1) pi/m],
//                                  integer m in [1, 8] (the angular margin on normalized logits;
//                                  the paper's lambda annealing is left to the caller)
// and every other logit stays s cos. Without labels there is no margin (inference).
//
// Parameters: scale s in [2^-100, 2^100] (default 20, temperature 0.05; the cap keeps s cos
// finite in float, where a larger s made 0 * inf = NaN logits); margins within the ranges
// above. Anything else throws std::invalid_argument naming the value. Labels outside [0, C) or of
// the wrong length throw, as do E and W with different numbers of columns (D), a dZ or dP that is
// not N x C, and prototypes() with num_classes < 1 or a class without embeddings. Nothing else is
// thrown; NaN and inf inputs are not errors (see below).
//
// Zero and non-finite rows: a row of E or W whose norm is 0 normalizes to the zero vector (as
// torch.nn.functional.normalize does): its cosines are 0, so an all-zero embedding gets logits 0
// and uniform probabilities 1/C, and an all-zero class weight gets logit 0 from every embedding.
// A row holding inf or NaN has no direction: every cosine it takes part in is NaN (a NaN in a row
// of E makes that row's probabilities NaN, as everywhere in softmaxlab). Norms are computed without
// overflow or underflow for every finite input (float: in double; double: a row whose plain sum
// of squares leaves the normal range is scaled by a power of two first, exactly, so a subnormal
// row keeps its direction: [1e-320, 0, 1e-320] against (1, 0, 0) gives s / sqrt(2) within
// (D + 2) eps, where dividing by its 11-bit subnormal norm gave a cosine error of 1e-4).
//
// Results: logits and probabilities are row-major N x C matrices (NormalizedSoftmax::RowMatrix),
// so each row, one embedding's distribution, is contiguous; they convert to any Eigen matrix.
//
// Cost: normalizing E and W (N + C) D in column sweeps, then one matrix product (2 N C D flops,
// Eigen's GEMM), then the softmax. bench/bench_gumbel_normalized.cpp measures it beside a plain
// GEMM of the same shape. Accuracy: each cosine is a D-term dot product of unit vectors, error <=
// ~(D + 2) eps absolute (typically ~sqrt(D) eps); tests/test_normalized.cpp compares with long
// double.
//
// Novel classes (arXiv 2102.03243): prototypes(E, labels, C) = the normalized mean of the
// normalized embeddings of each class; classify(E, P) = index of the highest cosine per row.
//
// Backward (training): ns.logits_backward(E, W[, labels], dZ) and ns.backward(E, W[, labels], P,
// dP) return {dE, dW}, the gradients through the margin and through both L2 normalizations,
//   d x = (d x^ - x^ <d x^, x^>) / |x|  per row (x^ = x / |x|; a zero row gets 0, a non-finite
//   NaN).
// A target logit s psi(t) contributes s dZ (-psi'(t)) q / (|q| |e|) to dE (q = w^ - cos t e^, the
// part of w^ orthogonal to e^, |q| = sin t) and likewise to dW: CosFace and no margin -psi' = sin
// t, ArcFace sin(t + m) (sin t in its linear fallback), SphereFace (-1)^k m sin(m t). sin t is
// taken from q itself, never as sqrt(1 - cos^2) of a rounded cosine, so the gradient keeps its
// accuracy as t -> 0 and t -> pi: against long double at t from 1e-12 to pi - 1e-8, the
// gradient's large component is within 1e-15 relative, and the small one (of size |h| sin t)
// carries an absolute error of about |h| eps / sin t from the rounded unit vectors, so the
// norm-wise relative error stays below ~sqrt(eps) = 1.5e-8 (measured worst 1e-8 at t = 1.5e-8).
// The forward target logit takes t from the same vectors (atan2(sin t, cos t), never acos of a
// rounded product). At t exactly 0 or pi (the margin's kink) the target's gradient term is 0.
// Subnormal and huge rows (double) are scaled by a power of two before they are normalized, so
// their cosines keep the accuracy above, forward and backward.
// NormalizedSoftmaxLoss (loss.hpp) is the cross-entropy on these logits with its gradients.
//
// Scalar types: E and W may each be Eigen::half, Eigen::bfloat16, float or double (a
// static_assert names any other type), and may differ. The math runs in float (double when E or
// W is double) on exactly widened copies of E and W (and dZ, P, dP): NormalizedSoftmax is not a
// DistributionFunctor (row norms and a GEMM over two matrices, not one span in and one out), so
// it stages whole matrices, (N + C) D elements of the compute type, as its float path already
// allocates its normalized copies. Logits and probabilities come back in E's type, rounded once:
// the probabilities through Softmax's staged rowwise form (float logits in, 16-bit out). dE comes
// back in E's type, dW in W's, each the compute-type gradient rounded once.
// Accuracy in 16-bit (tests/test_half_precision.cpp, against a long-double evaluation on the
// widened inputs, rounded once): |p - exact| <= 1 ulp of the output type + the float computation's
// eps_f (2 s (D + 2) + 4 (1 + 2 s + m s)) |exact| (cosines within (D + 2) eps_f, Softmax's bound);
// measured worst 0.50 ulp in half and bfloat16 (s = 20, D = 64, C = 37, with and without CosFace).
#pragma once

#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>

#include "detail/checks.hpp"
#include "detail/common.hpp"
#include "detail/row_geometry.hpp"
#include "detail/scalar_types.hpp"
#include "softmax.hpp"

namespace softmaxlab {

// The target-class margin of NormalizedSoftmax.
struct Margin {
  // The margin's family.
  enum class Kind { None, CosFace, ArcFace, SphereFace };
  // Which margin.
  Kind kind = Kind::None;
  // Its parameter m (CosFace [0, 1], ArcFace [0, pi/2], SphereFace an integer in [1, 8]).
  double m = 0;

  // No margin.
  static Margin none() { return {}; }
  // CosFace: cos t - m.
  static Margin cosface(double m) { return {Kind::CosFace, m}; }
  // ArcFace: cos(t + m), with the linear fallback past pi - m.
  static Margin arcface(double m) { return {Kind::ArcFace, m}; }
  // SphereFace: the monotone extension of cos(m t).
  static Margin sphereface(int m) { return {Kind::SphereFace, static_cast<double>(m)}; }
};

namespace detail {

inline Margin check_margin(const Margin& margin) {
  constexpr double pi = 3.14159265358979323846;
  switch (margin.kind) {
    case Margin::Kind::None:
      break;
    case Margin::Kind::CosFace:
      require_in_range("NormalizedSoftmax: CosFace margin m", margin.m, 0.0, 1.0, "in [0, 1]");
      break;
    case Margin::Kind::ArcFace:
      require_in_range("NormalizedSoftmax: ArcFace margin m", margin.m, 0.0, pi / 2,
                       "in [0, pi/2]");
      break;
    case Margin::Kind::SphereFace:
      require_in_range("NormalizedSoftmax: SphereFace margin m", margin.m, 1.0, 8.0,
                       "an integer in [1, 8]");
      if (margin.m != std::floor(margin.m))
        fail("NormalizedSoftmax: SphereFace margin m must be an integer in [1, 8], but got ",
             margin.m);
      break;
  }
  return margin;
}

// psi(t), the margin applied at the target angle t, given as sin t >= 0 and cos t (both from the
// vectors, see TargetGeometry): the new cosine-like value (the logit divided by s). Near t = pi the
// cosines are taken at delta = pi - t = atan2(sin t, -cos t), accurate where t itself is not.
inline double apply_margin(const Margin& margin, double sin_t, double cos_t) {
  constexpr double pi = 3.14159265358979323846;
  if (cos_t != cos_t || sin_t != sin_t)
    return cos_t + sin_t;
  const double m = margin.m;
  const bool near_pi = cos_t < 0;
  const double t = std::atan2(sin_t, cos_t), delta = std::atan2(sin_t, -cos_t);
  switch (margin.kind) {
    case Margin::Kind::None:
      return cos_t;
    case Margin::Kind::CosFace:
      return cos_t - m;
    case Margin::Kind::ArcFace:
      if (near_pi ? delta < m : t + m > pi)
        return cos_t - m * std::sin(m);  // the linear fallback past pi - m
      return near_pi ? -std::cos(delta - m) : std::cos(t + m);
    case Margin::Kind::SphereFace: {
      const int mi = static_cast<int>(m);
      const int k = std::min(mi - 1, static_cast<int>(std::floor(t * mi / pi)));
      // cos(m t) = cos(m pi - m delta) = (-1)^m cos(m delta)
      const double cos_mt =
          near_pi ? ((mi % 2 == 0) ? 1.0 : -1.0) * std::cos(mi * delta) : std::cos(mi * t);
      return ((k % 2 == 0) ? 1.0 : -1.0) * cos_mt - 2.0 * k;
    }
  }
  return cos_t;
}

// -d psi / dt at the angle t between a normalized embedding and its target class weight, given as
// sin t >= 0 and cos t (both from the vectors, see target_margin_backward): ArcFace sin(t + m) (sin
// t in the linear fallback past pi - m), SphereFace (-1)^k m sin(m t), CosFace and no margin sin t.
// Near t = pi the sines are taken at delta = pi - t = atan2(sin t, -cos t), which is accurate where
// t itself is not (t + m = pi - (delta - m); m t = m pi - m delta).
inline double margin_sine(const Margin& margin, double sin_t, double cos_t) {
  constexpr double pi = 3.14159265358979323846;
  const double m = margin.m;
  const bool near_pi = cos_t < 0;
  const double t = std::atan2(sin_t, cos_t), delta = std::atan2(sin_t, -cos_t);
  switch (margin.kind) {
    case Margin::Kind::None:
    case Margin::Kind::CosFace:
      return sin_t;
    case Margin::Kind::ArcFace:
      if (near_pi ? delta < m : t + m > pi)
        return sin_t;  // the linear fallback: psi = cos t - m sin m
      return near_pi ? std::sin(delta - m) : std::sin(t + m);
    case Margin::Kind::SphereFace: {
      const int mi = static_cast<int>(m);
      const int k = std::min(mi - 1, static_cast<int>(std::floor(t * mi / pi)));
      // sin(m t) = sin(m pi - m delta) = (-1)^(m + 1) sin(m delta)
      const double sin_mt =
          near_pi ? ((mi % 2 == 0) ? -1.0 : 1.0) * std::sin(mi * delta) : std::sin(mi * t);
      return ((k % 2 == 0) ? 1.0 : -1.0) * mi * sin_mt;
    }
  }
  return sin_t;
}

// Adds the gradient of one target logit s psi(t) to the rows dE_e and dW_w:
//   d/de = gt (-psi'(t)) q / (|q| |e|),   d/dw = gt (-psi'(t)) p / (|p| |w|),
// with gt = s dZ: sin t divides only the direction it was measured on. At t = 0 or pi exactly the
// direction is undefined (the margin's kink): that term is 0. Zero rows get nothing; non-finite
// rows are NaN already (normalize_rows_backward).
template <class RowE, class RowW, class OutE, class OutW>
void target_margin_backward(const Margin& margin, double gt, const RowE& e, const RowW& w,
                            OutE&& de, OutW&& dw) {
  using Scalar = typename std::decay_t<OutE>::Scalar;
  const TargetGeometry<RowE, RowW> g(e, w);
  if (!g.has_directions() || g.cos_t != g.cos_t)
    return;
  const double h = gt * margin_sine(margin, g.sin_t, g.cos_t);
  const double sp = g.p.norm(), sq = g.q.norm();
  if (sq > 0) {
    for (Index j = 0; j < de.size(); ++j)
      de(j) += static_cast<Scalar>(std::ldexp(h * g.q(j) / (sq * g.ne.norm), -g.ne.exponent));
  }
  if (sp > 0) {
    for (Index j = 0; j < dw.size(); ++j)
      dw(j) += static_cast<Scalar>(std::ldexp(h * g.p(j) / (sp * g.nw.norm), -g.nw.exponent));
  }
}

}  // namespace detail

// Normalized softmax with optional target margins: see the header's doc block.
class NormalizedSoftmax {
 public:
  // The variant's name, as error messages give it.
  static constexpr const char* name = "NormalizedSoftmax";

  // scale s in [2^-100, 2^100], margin within its range (see Margin); throws std::invalid_argument
  // naming the value otherwise.
  explicit NormalizedSoftmax(double scale = 20.0, Margin margin = Margin::none())
      : scale_(detail::require_in_range("NormalizedSoftmax: scale", scale, 0x1p-100, 0x1p100,
                                        "in [2^-100, 2^100] (finite, > 0)")),  // s fits a float
        margin_(detail::check_margin(margin)) {}

  // The scale this object was built with.
  double scale() const { return scale_; }
  // The margin this object was built with.
  const Margin& margin() const { return margin_; }

  // Each row of X divided by its norm and multiplied by `factor` (zero rows stay zero, rows with
  // inf or NaN become NaN). Column-major result; norms from one vectorized pass over X.
  template <class XprX>
  static Eigen::Matrix<typename XprX::Scalar, Eigen::Dynamic, Eigen::Dynamic> normalized_rows(
      const Eigen::DenseBase<XprX>& x, double factor = 1.0) {
    using Scalar = typename XprX::Scalar;
    detail::static_check_scalar<Scalar>();
    constexpr double nan = std::numeric_limits<double>::quiet_NaN();
    // Column-major copy, then column sweeps: every pass below is a contiguous, vectorized loop
    // (a row-wise reduction over a column-major matrix would stride through memory).
    Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> out = x;
    if (out.size() == 0)
      return out;  // no rows, or D = 0 (every row the zero vector; Eigen's row blocks of an empty
                   // matrix are UB)
    Eigen::Matrix<double, Eigen::Dynamic, 1> scale =
        Eigen::Matrix<double, Eigen::Dynamic, 1>::Zero(out.rows());
    // Sums of squares in double: for float inputs they cannot overflow or underflow.
    for (Index j = 0; j < out.cols(); ++j)
      scale += out.col(j).template cast<double>().cwiseAbs2();
    for (Index i = 0; i < scale.size(); ++i) {
      const double sq = scale(i);
      if constexpr (std::is_same_v<Scalar, float>) {
        scale(i) = !(sq <= std::numeric_limits<double>::max()) ? nan  // inf or NaN inside
                   : sq == 0                                   ? 0.0
                                                               : factor / std::sqrt(sq);
      } else {
        if (sq >= std::numeric_limits<double>::min() && sq <= std::numeric_limits<double>::max()) {
          scale(i) = factor / std::sqrt(sq);
          continue;
        }
        // Zero, tiny, huge or non-finite: the row on its own, scaled by a power of two first
        // (exact; a subnormal norm would keep only a few significant bits, and 1 / it overflows).
        auto row = out.row(i);
        const detail::RowNorm n = detail::row_norm(row);
        if (n.norm != n.norm) {
          row.setConstant(nan);
        } else if (n.norm != 0) {
          row = detail::unit_row(row, n) * factor;
        }
        scale(i) = 1.0;
      }
    }
    for (Index j = 0; j < out.cols(); ++j) {
      if constexpr (std::is_same_v<Scalar, float>) {
        out.col(j) = (out.col(j).template cast<double>().array() * scale.array())
                         .template cast<float>()
                         .matrix();
      } else {
        out.col(j).array() *= scale.array();
      }
    }
    return out;
  }

  // Logits and probabilities are row-major: each row (one embedding's distribution) contiguous.
  template <class Scalar>
  using RowMatrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

  // {dE, dW}: dE in E's scalar type, dW in W's (the same type unless E and W are mixed).
  template <class XprE, class XprW>
  using Gradients = std::pair<Eigen::Matrix<typename XprE::Scalar, Eigen::Dynamic, Eigen::Dynamic>,
                              Eigen::Matrix<typename XprW::Scalar, Eigen::Dynamic, Eigen::Dynamic>>;

  // s cos(e_n, w_c), N x C, no margin.
  template <class XprE, class XprW>
  RowMatrix<typename XprE::Scalar> logits(const Eigen::DenseBase<XprE>& e,
                                          const Eigen::DenseBase<XprW>& w) const {
    check_inputs(e, w);
    if constexpr (!same_compute_v<XprE, XprW>) {
      return round_matrix<typename XprE::Scalar>(
          logits(widen<XprE, XprW>(e), widen<XprE, XprW>(w)));
    } else {
      return logits_same(e, w);
    }
  }

  // Logits with the margin on each row's target class labels(n).
  template <class XprE, class XprW, class XprL>
  RowMatrix<typename XprE::Scalar> logits(const Eigen::DenseBase<XprE>& e,
                                          const Eigen::DenseBase<XprW>& w,
                                          const Eigen::DenseBase<XprL>& labels) const {
    check_inputs(e, w);
    if constexpr (!same_compute_v<XprE, XprW>) {
      return round_matrix<typename XprE::Scalar>(
          logits(widen<XprE, XprW>(e), widen<XprE, XprW>(w), labels));
    } else {
      return logits_same(e, w, labels);
    }
  }

  // Row-wise probabilities softmax(s cos), N x C (margin on the targets when labels are given).
  // 16-bit or mixed E and W: the logits in the compute type, then Softmax's staged rowwise form
  // rounds each probability once to E's type.
  template <class XprE, class XprW>
  RowMatrix<typename XprE::Scalar> operator()(const Eigen::DenseBase<XprE>& e,
                                              const Eigen::DenseBase<XprW>& w) const {
    check_inputs(e, w);
    if constexpr (!same_compute_v<XprE, XprW>) {
      const auto z = logits(widen<XprE, XprW>(e), widen<XprE, XprW>(w));
      RowMatrix<typename XprE::Scalar> out(z.rows(), z.cols());
      Softmax(1.0).rowwise(z, out);
      return out;
    } else {
      auto out = logits(e, w);
      Softmax(1.0).rowwise(out, out);
      return out;
    }
  }
  // With class labels (one per row of E, in [0, C)): the margin applied at each row's label;
  // returns P (N x C).
  template <class XprE, class XprW, class XprL>
  RowMatrix<typename XprE::Scalar> operator()(const Eigen::DenseBase<XprE>& e,
                                              const Eigen::DenseBase<XprW>& w,
                                              const Eigen::DenseBase<XprL>& labels) const {
    check_inputs(e, w);
    if constexpr (!same_compute_v<XprE, XprW>) {
      const auto z = logits(widen<XprE, XprW>(e), widen<XprE, XprW>(w), labels);
      RowMatrix<typename XprE::Scalar> out(z.rows(), z.cols());
      Softmax(1.0).rowwise(z, out);
      return out;
    } else {
      auto out = logits(e, w, labels);
      Softmax(1.0).rowwise(out, out);
      return out;
    }
  }

 private:
  template <class XprE, class XprW>
  RowMatrix<typename XprE::Scalar> logits_same(const Eigen::DenseBase<XprE>& e,
                                               const Eigen::DenseBase<XprW>& w) const {
    using Scalar = typename XprE::Scalar;
    RowMatrix<Scalar> out(e.rows(), w.rows());
    if (out.size() == 0)
      return out;
    // The scale rides on the normalized embeddings, so the product gives s cos directly.
    const auto en = normalized_rows(e, scale_);
    const auto wn = normalized_rows(w);
    // The row-major N x C result is the column-major C x N matrix W_n E_n^T.
    Eigen::Map<Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>>(out.data(), w.rows(),
                                                                      e.rows())
        .noalias() = wn * en.transpose();
    return out;
  }

  template <class XprE, class XprW, class XprL>
  RowMatrix<typename XprE::Scalar> logits_same(const Eigen::DenseBase<XprE>& e,
                                               const Eigen::DenseBase<XprW>& w,
                                               const Eigen::DenseBase<XprL>& labels) const {
    using Scalar = typename XprE::Scalar;
    check_labels(labels, e.rows(), w.rows());
    auto out = logits_same(e, w);
    if (margin_.kind == Margin::Kind::None)
      return out;
    const auto& ed = e.derived();
    const auto& wd = w.derived();
    for (Index n = 0; n < out.rows(); ++n) {
      const Index c = static_cast<Index>(labels.derived().coeff(n));
      if (e.cols() == 0) {  // zero features: cosine 0 (no row blocks of empty matrices)
        out(n, c) = static_cast<Scalar>(scale_ * detail::apply_margin(margin_, 1.0, 0.0));
        continue;
      }
      // The angle from the vectors themselves (not acos of the rounded product), so the margin
      // keeps its accuracy near t = 0 and t = pi.
      const detail::TargetGeometry<decltype(ed.row(n)), decltype(wd.row(c))> g(ed.row(n),
                                                                               wd.row(c));
      out(n, c) = static_cast<Scalar>(scale_ * detail::apply_margin(margin_, g.sin_t, g.cos_t));
    }
    return out;
  }

 public:
  // Class prototypes for novel classes: row c = normalized mean of the normalized embeddings
  // labelled c. Every class in [0, num_classes) needs at least one embedding.
  template <class XprE, class XprL>
  static Eigen::Matrix<typename XprE::Scalar, Eigen::Dynamic, Eigen::Dynamic> prototypes(
      const Eigen::DenseBase<XprE>& e, const Eigen::DenseBase<XprL>& labels, Index num_classes) {
    using Scalar = typename XprE::Scalar;
    if constexpr (!detail::is_supported_scalar_v<Scalar>) {
      detail::static_check_storage_scalars<Scalar, Scalar>();
      return prototypes(e.derived().template cast<float>().eval(), labels, num_classes)
          .template cast<Scalar>();
    } else {
      return prototypes_same(e, labels, num_classes);
    }
  }

 private:
  template <class XprE, class XprL>
  static Eigen::Matrix<typename XprE::Scalar, Eigen::Dynamic, Eigen::Dynamic> prototypes_same(
      const Eigen::DenseBase<XprE>& e, const Eigen::DenseBase<XprL>& labels, Index num_classes) {
    using Scalar = typename XprE::Scalar;
    if (num_classes < 1)
      detail::fail("NormalizedSoftmax::prototypes: num_classes must be >= 1, but got ",
                   num_classes);
    check_labels(labels, e.rows(), num_classes);
    const auto en = normalized_rows(e);
    Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic> sums =
        Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic>::Zero(num_classes, e.cols());
    Eigen::Matrix<Index, Eigen::Dynamic, 1> counts =
        Eigen::Matrix<Index, Eigen::Dynamic, 1>::Zero(num_classes);
    for (Index n = 0; n < en.rows(); ++n) {
      const Index c = static_cast<Index>(labels.derived().coeff(n));
      if (en.cols() > 0)
        sums.row(c) += en.row(n).template cast<double>();
      ++counts(c);
    }
    for (Index c = 0; c < num_classes; ++c) {
      if (counts(c) == 0)
        detail::fail("NormalizedSoftmax::prototypes: class ", c, " has no labelled embedding");
    }
    return normalized_rows(sums).template cast<Scalar>();
  }

 public:
  // For each row of E, the index of the prototype (row of P) with the highest cosine; -1 for a
  // row whose cosines are NaN.
  template <class XprE, class XprP>
  static Eigen::Matrix<Index, Eigen::Dynamic, 1> classify(const Eigen::DenseBase<XprE>& e,
                                                          const Eigen::DenseBase<XprP>& p) {
    check_inputs(e, p);
    if constexpr (!same_compute_v<XprE, XprP>) {
      return classify(widen<XprE, XprP>(e), widen<XprE, XprP>(p));
    } else {
      return classify_same(e, p);
    }
  }

 private:
  template <class XprE, class XprP>
  static Eigen::Matrix<Index, Eigen::Dynamic, 1> classify_same(const Eigen::DenseBase<XprE>& e,
                                                               const Eigen::DenseBase<XprP>& p) {
    const auto cosines = (normalized_rows(e) * normalized_rows(p).transpose()).eval();
    Eigen::Matrix<Index, Eigen::Dynamic, 1> out(e.rows());
    for (Index n = 0; n < e.rows(); ++n) {
      Index best = -1;
      for (Index c = 0; c < cosines.cols(); ++c) {
        const auto v = cosines(n, c);
        if (v != v) {
          best = -1;
          break;
        }
        if (best < 0 || v > cosines(n, best))
          best = c;
      }
      out(n) = best;
    }
    return out;
  }

 public:
  // ---- Backward (training) ------------------------------------------------------------------
  // Gradients with respect to E (N x D) and W (C x D), returned as {dE, dW}, through the L2
  // normalization of both and, when labels are given, the margin on each row's target logit:
  //   dcos = s dZ (times d margin / d cos at the targets),  dE^ = dcos W^,  dW^ = dcos^T E^,
  //   dE_n = (dE^_n - E^_n <dE^_n, E^_n>) / |E_n|  (and likewise for W); zero rows get 0.
  // logits_backward takes dZ = dL/dlogits (N x C); backward takes the probabilities P = ns(E, W
  // [, labels]) and dP = dL/dP and goes through the row-wise softmax first.
  // 16-bit or mixed E, W (and dZ, P, dP of any storage type): computed in the compute type of E
  // and W (float, double when either is double), dE rounded once to E's type, dW to W's.
  template <class XprE, class XprW, class XprG>
  Gradients<XprE, XprW> logits_backward(const Eigen::DenseBase<XprE>& e,
                                        const Eigen::DenseBase<XprW>& w,
                                        const Eigen::DenseBase<XprG>& dz) const {
    check_inputs(e, w);
    if constexpr (!same_compute_v<XprE, XprW, XprG>) {
      return round_gradients<XprE, XprW>(
          logits_backward(widen<XprE, XprW>(e), widen<XprE, XprW>(w), widen<XprE, XprW>(dz)));
    } else {
      return logits_backward_impl(e, w, static_cast<const Eigen::VectorXi*>(nullptr), dz);
    }
  }
  // The gradient of the margin logits dz (N x C) taken back to E and W (see the header's doc
  // block).
  template <class XprE, class XprW, class XprL, class XprG>
  Gradients<XprE, XprW> logits_backward(const Eigen::DenseBase<XprE>& e,
                                        const Eigen::DenseBase<XprW>& w,
                                        const Eigen::DenseBase<XprL>& labels,
                                        const Eigen::DenseBase<XprG>& dz) const {
    check_inputs(e, w);
    if constexpr (!same_compute_v<XprE, XprW, XprG>) {
      return round_gradients<XprE, XprW>(logits_backward(widen<XprE, XprW>(e), widen<XprE, XprW>(w),
                                                         labels, widen<XprE, XprW>(dz)));
    } else {
      check_labels(labels, e.rows(), w.rows());
      return logits_backward_impl(e, w, &labels.derived(), dz);
    }
  }
  // The gradients of E and W from the probabilities P and their cotangent dP (no margin).
  template <class XprE, class XprW, class XprP, class XprDP>
  Gradients<XprE, XprW> backward(const Eigen::DenseBase<XprE>& e, const Eigen::DenseBase<XprW>& w,
                                 const Eigen::DenseBase<XprP>& p,
                                 const Eigen::DenseBase<XprDP>& dp) const {
    return backward_through_softmax(e, w, static_cast<const Eigen::VectorXi*>(nullptr), p, dp);
  }
  // The same with class labels (the margin at each row's label).
  template <class XprE, class XprW, class XprL, class XprP, class XprDP>
  Gradients<XprE, XprW> backward(const Eigen::DenseBase<XprE>& e, const Eigen::DenseBase<XprW>& w,
                                 const Eigen::DenseBase<XprL>& labels,
                                 const Eigen::DenseBase<XprP>& p,
                                 const Eigen::DenseBase<XprDP>& dp) const {
    return backward_through_softmax(e, w, &labels.derived(), p, dp);
  }

 private:
  // backward's two forms (labels null: none): dZ from the row-wise softmax backward of (P, dP),
  // then logits_backward, in the compute type for 16-bit or mixed arguments.
  template <class XprE, class XprW, class L, class XprP, class XprDP>
  Gradients<XprE, XprW> backward_through_softmax(const Eigen::DenseBase<XprE>& e,
                                                 const Eigen::DenseBase<XprW>& w, const L* labels,
                                                 const Eigen::DenseBase<XprP>& p,
                                                 const Eigen::DenseBase<XprDP>& dp) const {
    check_inputs(e, w);
    auto from_dz = [&](const auto& ec, const auto& wc, const auto& dz) {
      if (labels == nullptr)
        return logits_backward(ec, wc, dz);
      return logits_backward(ec, wc, *labels, dz);
    };
    if constexpr (!same_compute_v<XprE, XprW, XprP, XprDP>) {
      const auto pc = widen<XprE, XprW>(p);
      return round_gradients<XprE, XprW>(
          from_dz(widen<XprE, XprW>(e), widen<XprE, XprW>(w),
                  Softmax(1.0).rowwise_backward(pc, pc, widen<XprE, XprW>(dp))));
    } else {
      return from_dz(e, w, Softmax(1.0).rowwise_backward(p, p, dp));
    }
  }

  template <class XprE, class XprW, class L, class XprG>
  Gradients<XprE, XprW> logits_backward_impl(const Eigen::DenseBase<XprE>& e,
                                             const Eigen::DenseBase<XprW>& w, const L* labels,
                                             const Eigen::DenseBase<XprG>& dz) const {
    using Scalar = typename XprE::Scalar;
    using Mat = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
    static_assert(std::is_same_v<Scalar, typename XprG::Scalar>,
                  "softmaxlab: dZ must have the embeddings' scalar type");
    check_inputs(e, w);
    if (dz.rows() != e.rows() || dz.cols() != w.rows()) {
      detail::fail(name, ": dZ must be N x C = ", e.rows(), " x ", w.rows(), ", but got ",
                   dz.rows(), " x ", dz.cols());
    }
    if (e.cols() == 0)  // zero features: the gradients are empty (and rows must not be sliced)
      return {Mat(e.rows(), 0), Mat(w.rows(), 0)};
    const Mat en = normalized_rows(e), wn = normalized_rows(w);
    Mat g = dz.derived().template cast<Scalar>() * static_cast<Scalar>(scale_);
    // Margin targets leave the products: their gradient is added on its own below, in the form
    // that stays accurate as the angle goes to 0 or pi.
    const bool margins = labels != nullptr && margin_.kind != Margin::Kind::None;
    Eigen::Matrix<double, Eigen::Dynamic, 1> target_g;
    if (margins) {
      target_g.resize(g.rows());
      for (Index n = 0; n < g.rows(); ++n) {
        const Index c = static_cast<Index>(labels->coeff(n));
        target_g(n) = static_cast<double>(dz.derived().coeff(n, c)) * scale_;
        g(n, c) = dz.derived().coeff(n, c) != dz.derived().coeff(n, c) ? g(n, c) : Scalar(0);
      }
    }
    Mat de_hat = g * wn, dw_hat = g.transpose() * en;
    std::pair<Mat, Mat> out{Mat(e.rows(), e.cols()), Mat(w.rows(), w.cols())};
    detail::normalize_rows_backward(e.derived(), en, de_hat, out.first);
    detail::normalize_rows_backward(w.derived(), wn, dw_hat, out.second);
    if (margins) {
      const auto& ed = e.derived();
      const auto& wd = w.derived();
      for (Index n = 0; n < g.rows(); ++n) {
        const Index c = static_cast<Index>(labels->coeff(n));
        detail::target_margin_backward(margin_, target_g(n), ed.row(n), wd.row(c), out.first.row(n),
                                       out.second.row(c));
      }
    }
    return out;
  }

  // Whether every argument already has the compute type of E and W (float or double): then the
  // float/double code runs on them directly; otherwise they are widened first (see widen).
  template <class XprE, class XprW, class... More>
  static constexpr bool same_compute_v =
      detail::is_supported_scalar_v<typename XprE::Scalar>&& std::is_same_v<
          typename XprW::Scalar,
          typename XprE::
              Scalar> && (std::is_same_v<typename More::Scalar, typename XprE::Scalar> && ...);

  // 16-bit and mixed inputs: a plain copy in the compute type of E and W (exact: every storage
  // type widens exactly to float, float to double; a double argument beside float E and W is
  // rounded to float, as the distribution functors' staging does). NormalizedSoftmax is not a
  // DistributionFunctor (two matrices, row norms and a GEMM, not a span in and a span out), so
  // it stages whole matrices; its softmax then rounds once to the output type in Softmax's staged
  // rowwise form.
  template <class XprE, class XprW, class X>
  static Eigen::Matrix<detail::compute_scalar_t<typename XprE::Scalar, typename XprW::Scalar>,
                       Eigen::Dynamic, Eigen::Dynamic>
  widen(const Eigen::DenseBase<X>& x) {
    using C = detail::compute_scalar_t<typename XprE::Scalar, typename XprW::Scalar>;
    detail::static_check_storage_scalars<typename X::Scalar, C>();
    return x.derived().template cast<C>();
  }
  template <class Out, class M>
  static RowMatrix<Out> round_matrix(const M& m) {
    return m.template cast<Out>();
  }
  template <class XprE, class XprW, class G>
  static Gradients<XprE, XprW> round_gradients(const G& g) {
    return {g.first.template cast<typename XprE::Scalar>(),
            g.second.template cast<typename XprW::Scalar>()};
  }

  template <class XprE, class XprW>
  static void check_inputs(const Eigen::DenseBase<XprE>& e, const Eigen::DenseBase<XprW>& w) {
    detail::static_check_storage_scalars<typename XprE::Scalar, typename XprW::Scalar>();
    if (e.cols() != w.cols()) {
      detail::fail(name, ": embeddings (", e.rows(), " x ", e.cols(), ") and class weights (",
                   w.rows(), " x ", w.cols(), ") must have the same number of columns");
    }
  }

  template <class XprL>
  static void check_labels(const Eigen::DenseBase<XprL>& labels, Index rows, Index classes) {
    static_assert(std::is_integral_v<typename XprL::Scalar>, "softmaxlab: labels must be integers");
    if (labels.size() != rows) {
      detail::fail(name, ": expected one label per embedding (", rows, "), but got ",
                   labels.size());
    }
    for (Index n = 0; n < rows; ++n) {
      const auto label = labels.derived().coeff(n);
      if (label < 0 || static_cast<Index>(label) >= classes) {
        detail::fail(name, ": label of row ", n, " must be in [0, ", classes, "), but got ",
                     static_cast<long long>(label));
      }
    }
  }

  double scale_;
  Margin margin_;
};

}  // namespace softmaxlab
