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
// overflow or underflow for every finite input (float: in double; double: Eigen's stableNorm when
// the plain sum of squares leaves the normal range).
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
// dP) return {dE, dW}, the gradients through the margin (d psi / d cos at each target: CosFace 1,
// ArcFace sin(t + m) / sin t, 1 in its linear fallback, SphereFace (-1)^k m sin(m t) / sin t, with
// their limits at |cos| = 1) and through both L2 normalizations,
//   d x = (d x^ - x^ <d x^, x^>) / |x|  per row (x^ = x / |x|; a zero row gets 0, a non-finite
//   NaN).
// NormalizedSoftmaxLoss (loss.hpp) is the cross-entropy on these logits with its gradients.
#pragma once

#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>

#include "detail/checks.hpp"
#include "detail/common.hpp"
#include "softmax.hpp"

namespace softmaxlab {

// The target-class margin of NormalizedSoftmax.
struct Margin {
  enum class Kind { None, CosFace, ArcFace, SphereFace };
  Kind kind = Kind::None;
  double m = 0;

  static Margin none() { return {}; }
  static Margin cosface(double m) { return {Kind::CosFace, m}; }
  static Margin arcface(double m) { return {Kind::ArcFace, m}; }
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

// The margin applied to the target cosine c (clamped to [-1, 1]); returns the new cosine-like
// value (the logit divided by s).
inline double apply_margin(const Margin& margin, double c) {
  constexpr double pi = 3.14159265358979323846;
  if (c != c)
    return c;
  c = std::min(1.0, std::max(-1.0, c));
  const double m = margin.m;
  switch (margin.kind) {
    case Margin::Kind::None:
      return c;
    case Margin::Kind::CosFace:
      return c - m;
    case Margin::Kind::ArcFace: {
      const double t = std::acos(c);
      return t + m <= pi ? std::cos(t + m) : c - m * std::sin(m);
    }
    case Margin::Kind::SphereFace: {
      const double t = std::acos(c);
      const int mi = static_cast<int>(m);
      const int k = std::min(mi - 1, static_cast<int>(std::floor(t * mi / pi)));
      return ((k % 2 == 0) ? 1.0 : -1.0) * std::cos(mi * t) - 2.0 * k;
    }
  }
  return c;
}

// d apply_margin(margin, c) / dc at the clamped cosine c, for the backward pass. ArcFace:
// sin(t + m) / sin t (1 in the linear fallback past pi - m); SphereFace: (-1)^k m sin(m t) / sin t,
// whose limit at t = 0 and t = pi is m^2. At |c| = 1 ArcFace's derivative is infinite; sin t is
// floored at 1e-8 there.
inline double margin_derivative(const Margin& margin, double c) {
  constexpr double pi = 3.14159265358979323846;
  if (c != c)
    return c;
  c = std::min(1.0, std::max(-1.0, c));
  const double m = margin.m;
  const double t = std::acos(c);
  const double sin_t = std::sqrt(std::max(0.0, 1.0 - c * c));
  switch (margin.kind) {
    case Margin::Kind::None:
    case Margin::Kind::CosFace:
      return 1.0;
    case Margin::Kind::ArcFace:
      return t + m <= pi ? std::sin(t + m) / std::max(sin_t, 1e-8) : 1.0;
    case Margin::Kind::SphereFace: {
      const int mi = static_cast<int>(m);
      if (sin_t < 1e-8)
        return static_cast<double>(mi) * mi;
      const int k = std::min(mi - 1, static_cast<int>(std::floor(t * mi / pi)));
      return ((k % 2 == 0) ? 1.0 : -1.0) * mi * std::sin(mi * t) / sin_t;
    }
  }
  return 1.0;
}

// The backward of x -> x / |x| row by row: dx = (dxn - xn <dxn, xn>) / |x|, with xn = x / |x|;
// a zero row gets 0 (the forward maps a neighbourhood of it to no direction: its gradient is taken
// as 0, as for a constant), a row with inf or NaN gets NaN.
template <class Row>
double backward_row_norm(const Row& row) {
  if (!row.allFinite())
    return std::numeric_limits<double>::quiet_NaN();
  const double sq = row.template cast<double>().squaredNorm();
  if (sq >= std::numeric_limits<double>::min() && sq <= std::numeric_limits<double>::max())
    return std::sqrt(sq);
  return static_cast<double>(row.stableNorm());  // zero, or a double row outside the normal range
}

template <class X, class Xn, class D, class Out>
void normalize_rows_backward(const X& x, const Xn& xn, const D& d, Out& out) {
  using Scalar = typename Out::Scalar;
  if (x.size() == 0)
    return;  // D = 0 (or no rows): nothing to write (Eigen's row blocks of an empty matrix are UB)
  for (Index i = 0; i < x.rows(); ++i) {
    const double norm = backward_row_norm(x.row(i));
    if (norm != norm) {
      out.row(i).setConstant(std::numeric_limits<Scalar>::quiet_NaN());
    } else if (norm == 0) {
      out.row(i).setZero();
    } else {
      const auto xd = xn.row(i).template cast<double>();
      const auto dd = d.row(i).template cast<double>();
      out.row(i) = ((dd - xd * xd.dot(dd)) / norm).template cast<Scalar>();
    }
  }
}

}  // namespace detail

// Normalized softmax with optional target margins: see the header's doc block.
class NormalizedSoftmax {
 public:
  static constexpr const char* name = "NormalizedSoftmax";

  explicit NormalizedSoftmax(double scale = 20.0, Margin margin = Margin::none())
      : scale_(detail::require_in_range("NormalizedSoftmax: scale", scale, 0x1p-100, 0x1p100,
                                        "in [2^-100, 2^100] (finite, > 0)")),  // s fits a float
        margin_(detail::check_margin(margin)) {}

  double scale() const { return scale_; }
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
        // Zero, tiny, huge or non-finite: the row on its own, dividing (1 / a subnormal norm
        // would overflow).
        auto row = out.row(i);
        if (!row.allFinite()) {
          row.setConstant(nan);
        } else if (const double norm = row.stableNorm(); norm != 0) {
          row = (row / norm) * factor;
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

  // s cos(e_n, w_c), N x C, no margin.
  template <class XprE, class XprW>
  RowMatrix<typename XprE::Scalar> logits(const Eigen::DenseBase<XprE>& e,
                                          const Eigen::DenseBase<XprW>& w) const {
    using Scalar = typename XprE::Scalar;
    check_inputs(e, w);
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

  // Logits with the margin on each row's target class labels(n).
  template <class XprE, class XprW, class XprL>
  RowMatrix<typename XprE::Scalar> logits(const Eigen::DenseBase<XprE>& e,
                                          const Eigen::DenseBase<XprW>& w,
                                          const Eigen::DenseBase<XprL>& labels) const {
    using Scalar = typename XprE::Scalar;
    check_labels(labels, e.rows(), w.rows());
    auto out = logits(e, w);
    if (margin_.kind == Margin::Kind::None)
      return out;
    for (Index n = 0; n < out.rows(); ++n) {
      const Index c = static_cast<Index>(labels.derived().coeff(n));
      const double cosine = static_cast<double>(out(n, c)) / scale_;
      out(n, c) = static_cast<Scalar>(scale_ * detail::apply_margin(margin_, cosine));
    }
    return out;
  }

  // Row-wise probabilities softmax(s cos), N x C (margin on the targets when labels are given).
  template <class XprE, class XprW>
  RowMatrix<typename XprE::Scalar> operator()(const Eigen::DenseBase<XprE>& e,
                                              const Eigen::DenseBase<XprW>& w) const {
    auto out = logits(e, w);
    Softmax(1.0).rowwise(out, out);
    return out;
  }
  template <class XprE, class XprW, class XprL>
  RowMatrix<typename XprE::Scalar> operator()(const Eigen::DenseBase<XprE>& e,
                                              const Eigen::DenseBase<XprW>& w,
                                              const Eigen::DenseBase<XprL>& labels) const {
    auto out = logits(e, w, labels);
    Softmax(1.0).rowwise(out, out);
    return out;
  }

  // Class prototypes for novel classes: row c = normalized mean of the normalized embeddings
  // labelled c. Every class in [0, num_classes) needs at least one embedding.
  template <class XprE, class XprL>
  static Eigen::Matrix<typename XprE::Scalar, Eigen::Dynamic, Eigen::Dynamic> prototypes(
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

  // For each row of E, the index of the prototype (row of P) with the highest cosine; -1 for a
  // row whose cosines are NaN.
  template <class XprE, class XprP>
  static Eigen::Matrix<Index, Eigen::Dynamic, 1> classify(const Eigen::DenseBase<XprE>& e,
                                                          const Eigen::DenseBase<XprP>& p) {
    check_inputs(e, p);
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

  // ---- Backward (training) ------------------------------------------------------------------
  // Gradients with respect to E (N x D) and W (C x D), returned as {dE, dW}, through the L2
  // normalization of both and, when labels are given, the margin on each row's target logit:
  //   dcos = s dZ (times d margin / d cos at the targets),  dE^ = dcos W^,  dW^ = dcos^T E^,
  //   dE_n = (dE^_n - E^_n <dE^_n, E^_n>) / |E_n|  (and likewise for W); zero rows get 0.
  // logits_backward takes dZ = dL/dlogits (N x C); backward takes the probabilities P = ns(E, W
  // [, labels]) and dP = dL/dP and goes through the row-wise softmax first.
  template <class XprE, class XprW, class XprG>
  std::pair<Eigen::Matrix<typename XprE::Scalar, Eigen::Dynamic, Eigen::Dynamic>,
            Eigen::Matrix<typename XprE::Scalar, Eigen::Dynamic, Eigen::Dynamic>>
  logits_backward(const Eigen::DenseBase<XprE>& e, const Eigen::DenseBase<XprW>& w,
                  const Eigen::DenseBase<XprG>& dz) const {
    return logits_backward_impl(e, w, static_cast<const Eigen::VectorXi*>(nullptr), dz);
  }
  template <class XprE, class XprW, class XprL, class XprG>
  std::pair<Eigen::Matrix<typename XprE::Scalar, Eigen::Dynamic, Eigen::Dynamic>,
            Eigen::Matrix<typename XprE::Scalar, Eigen::Dynamic, Eigen::Dynamic>>
  logits_backward(const Eigen::DenseBase<XprE>& e, const Eigen::DenseBase<XprW>& w,
                  const Eigen::DenseBase<XprL>& labels, const Eigen::DenseBase<XprG>& dz) const {
    check_labels(labels, e.rows(), w.rows());
    return logits_backward_impl(e, w, &labels.derived(), dz);
  }
  template <class XprE, class XprW, class XprP, class XprDP>
  std::pair<Eigen::Matrix<typename XprE::Scalar, Eigen::Dynamic, Eigen::Dynamic>,
            Eigen::Matrix<typename XprE::Scalar, Eigen::Dynamic, Eigen::Dynamic>>
  backward(const Eigen::DenseBase<XprE>& e, const Eigen::DenseBase<XprW>& w,
           const Eigen::DenseBase<XprP>& p, const Eigen::DenseBase<XprDP>& dp) const {
    return logits_backward(e, w, Softmax(1.0).rowwise_backward(p, p, dp));
  }
  template <class XprE, class XprW, class XprL, class XprP, class XprDP>
  std::pair<Eigen::Matrix<typename XprE::Scalar, Eigen::Dynamic, Eigen::Dynamic>,
            Eigen::Matrix<typename XprE::Scalar, Eigen::Dynamic, Eigen::Dynamic>>
  backward(const Eigen::DenseBase<XprE>& e, const Eigen::DenseBase<XprW>& w,
           const Eigen::DenseBase<XprL>& labels, const Eigen::DenseBase<XprP>& p,
           const Eigen::DenseBase<XprDP>& dp) const {
    return logits_backward(e, w, labels, Softmax(1.0).rowwise_backward(p, p, dp));
  }

 private:
  template <class XprE, class XprW, class L, class XprG>
  std::pair<Eigen::Matrix<typename XprE::Scalar, Eigen::Dynamic, Eigen::Dynamic>,
            Eigen::Matrix<typename XprE::Scalar, Eigen::Dynamic, Eigen::Dynamic>>
  logits_backward_impl(const Eigen::DenseBase<XprE>& e, const Eigen::DenseBase<XprW>& w,
                       const L* labels, const Eigen::DenseBase<XprG>& dz) const {
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
    if (labels != nullptr && margin_.kind != Margin::Kind::None) {
      for (Index n = 0; n < g.rows(); ++n) {
        const Index c = static_cast<Index>(labels->coeff(n));
        const double cosine =  // (D = 0: zero rows, cosine 0; no row blocks of empty matrices)
            e.cols() == 0
                ? 0.0
                : en.row(n).template cast<double>().dot(wn.row(c).template cast<double>());
        g(n, c) *= static_cast<Scalar>(detail::margin_derivative(margin_, cosine));
      }
    }
    Mat de_hat = g * wn, dw_hat = g.transpose() * en;
    std::pair<Mat, Mat> out{Mat(e.rows(), e.cols()), Mat(w.rows(), w.cols())};
    detail::normalize_rows_backward(e.derived(), en, de_hat, out.first);
    detail::normalize_rows_backward(w.derived(), wn, dw_hat, out.second);
    return out;
  }

  template <class XprE, class XprW>
  static void check_inputs(const Eigen::DenseBase<XprE>& e, const Eigen::DenseBase<XprW>& w) {
    static_assert(std::is_same_v<typename XprE::Scalar, typename XprW::Scalar>,
                  "softmaxlab: embeddings and class weights must have the same scalar type");
    detail::static_check_scalar<typename XprE::Scalar>();
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
