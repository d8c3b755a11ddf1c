// softmaxlab: L2SvmLoss, the L2-SVM output layer, and argmax_rows. Rows are samples.
//
// L2SvmLoss(penalty C = 1), the L2-SVM output layer of GRU-SVM (Agarap 2017, arXiv 1709.03082):
//     loss = 0.5 ||W||^2 + C sum_{n,k} max(0, 1 - y_nk o_nk)^2,   o = X W + 1 b^T,
//   labels one-vs-rest: y_nk = +1 if k = c_n, else -1; prediction argmax_k o_nk. C finite > 0.
//     double h = svm.hinge(o, labels[, d_o]);     // C sum max(0, 1 - y o)^2 and its gradient
//                                                 //   d_o = -2 C y max(0, 1 - y o); no allocation
//     double l = svm(X, W, b, labels[, dW, db]);  // the whole layer: X N x D, W D x K, b K;
//                                                 //   dW = W + X^T d_o, db = sum_n d_o
//     Eigen::VectorXi c = L2SvmLoss::predict(o);  // = argmax_rows(o)
//
// argmax_rows(scores): the index of each row's largest entry (the first on ties; -1 for a row that
// holds a NaN or has no entries).
//
// Accuracy, outputs and errors: as every loss, see loss.hpp's doc block (the losses' umbrella).
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "detail/checks.hpp"
#include "detail/loss_base.hpp"

namespace softmaxlab {

// argmax of each row: see the header's doc block.
template <class Xpr>
Eigen::VectorXi argmax_rows(const Eigen::DenseBase<Xpr>& scores) {
  const auto& s = scores.derived();
  Eigen::VectorXi out(s.rows());
  for (Index n = 0; n < s.rows(); ++n) {
    int best = s.cols() > 0 ? 0 : -1;
    for (Index k = 0; k < s.cols(); ++k) {
      const auto v = s.coeff(n, k);
      if (v != v) {
        best = -1;
        break;
      }
      if (v > s.coeff(n, best))
        best = static_cast<int>(k);
    }
    out(n) = best;
  }
  return out;
}

// The L2-SVM output layer of GRU-SVM: see the header's doc block.
class L2SvmLoss {
 public:
  // The variant's name, as error messages give it.
  static constexpr const char* name = "L2SvmLoss";

  // penalty C finite and > 0; throws std::invalid_argument naming the value otherwise.
  explicit L2SvmLoss(double penalty = 1.0)
      : penalty_(detail::require_positive_finite("L2SvmLoss: penalty", penalty)) {}

  // The penalty this object was built with.
  double penalty() const { return penalty_; }

  // C sum_{n,k} max(0, 1 - y_nk o_nk)^2 over the outputs o (N x K).
  template <class XprO, class Labels>
  double hinge(const Eigen::DenseBase<XprO>& o, const Labels& labels) const {
    return hinge_impl(o.derived(), labels, static_cast<std::nullptr_t>(nullptr));
  }

  // The same, and its gradient d_o = -2 C y max(0, 1 - y o) written into d_o (N x K; may be o).
  template <class XprO, class Labels, class OutD>
  double hinge(const Eigen::DenseBase<XprO>& o, const Labels& labels, OutD&& d_o_out) const {
    using XprD = detail::output_xpr_t<OutD>;
    static_assert(detail::is_writable_storage_v<XprD>,
                  "softmaxlab: d_o must be writable storage, not an expression");
    static_assert(std::is_same_v<typename XprO::Scalar, typename XprD::Scalar>,
                  "softmaxlab: o and d_o must have the same scalar type");
    auto& d_o = detail::writable_output(std::forward<OutD>(d_o_out));
    detail::require_same_shape(name, detail::SliceMode::Rows, "d_o", d_o.rows(), d_o.cols(),
                               o.rows(), o.cols());
    return hinge_impl(o.derived(), labels, &d_o);
  }

  // The whole layer, o = X W + 1 b^T: 0.5 ||W||^2 + hinge(o). Allocates o.
  template <class XprX, class XprW, class XprB, class Labels>
  double operator()(const Eigen::MatrixBase<XprX>& x, const Eigen::MatrixBase<XprW>& w,
                    const Eigen::MatrixBase<XprB>& b, const Labels& labels) const {
    check_layer_shapes(x, w, b);
    const auto o = outputs(x, w, b);
    return 0.5 * static_cast<double>(w.squaredNorm()) + hinge(o, labels);
  }

  // The same, with dW = W + X^T d_o and db = sum_n d_o written (shapes of W and b). Allocates o.
  template <class XprX, class XprW, class XprB, class Labels, class OutDW, class OutDB>
  double operator()(const Eigen::MatrixBase<XprX>& x, const Eigen::MatrixBase<XprW>& w,
                    const Eigen::MatrixBase<XprB>& b, const Labels& labels, OutDW&& dw_out,
                    OutDB&& db_out) const {
    check_layer_shapes(x, w, b);
    auto& dw = detail::writable_output(std::forward<OutDW>(dw_out));
    auto& db = detail::writable_output(std::forward<OutDB>(db_out));
    detail::require_same_shape(name, detail::SliceMode::Rows, "dW", dw.rows(), dw.cols(), w.rows(),
                               w.cols());
    detail::require_vector(name, db.rows(), db.cols());
    if (db.size() != w.cols())
      detail::fail(name, ": db must have one entry per class (", w.cols(), "), but got ",
                   db.size());
    auto o = outputs(x, w, b);
    const double loss = 0.5 * static_cast<double>(w.squaredNorm()) + hinge(o, labels, o);
    dw = w;
    dw.noalias() += x.transpose() * o;
    if (db.rows() == 1) {
      db = o.colwise().sum();
    } else {
      db = o.colwise().sum().transpose();
    }
    return loss;
  }

  // The predicted class of each row of o: argmax_rows(o).
  template <class XprO>
  static Eigen::VectorXi predict(const Eigen::DenseBase<XprO>& o) {
    return argmax_rows(o);
  }

 private:
  template <class XprX, class XprW, class XprB>
  static void check_layer_shapes(const Eigen::MatrixBase<XprX>& x, const Eigen::MatrixBase<XprW>& w,
                                 const Eigen::MatrixBase<XprB>& b) {
    if (x.cols() != w.rows()) {
      detail::fail(name, ": X (", x.rows(), " x ", x.cols(), ") and W (", w.rows(), " x ", w.cols(),
                   ") do not chain: X's columns must equal W's rows");
    }
    detail::require_vector(name, b.rows(), b.cols());
    if (b.size() != w.cols())
      detail::fail(name, ": b must have one entry per class (", w.cols(), "), but got ", b.size());
  }

  template <class XprX, class XprW, class XprB>
  static auto outputs(const Eigen::MatrixBase<XprX>& x, const Eigen::MatrixBase<XprW>& w,
                      const Eigen::MatrixBase<XprB>& b) {
    using Scalar = typename XprX::Scalar;
    Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> o = x * w;
    for (Index k = 0; k < o.cols(); ++k)
      o.col(k).array() += b(k);
    return o;
  }

  template <class O, class Labels, class D>
  double hinge_impl(const O& o_in, const Labels& labels_in, D d_o) const {
    using Scalar = typename O::Scalar;
    detail::static_check_scalar<Scalar>();
    constexpr bool has_grad = !std::is_same_v<D, std::nullptr_t>;
    const auto labels = detail::label_span(name, labels_in);
    const Index rows = o_in.rows(), classes = o_in.cols();
    if (labels.size != rows) {
      detail::fail(name, ": labels must have one entry per row of o (", rows, "), but got ",
                   labels.size);
    }
    for (Index n = 0; n < rows; ++n) {
      const long c = static_cast<long>(labels[n]);
      if (c < 0 || c >= classes)
        detail::fail(name, ": label ", c, " of sample ", n, " is outside [0, ", classes, ")");
    }
    return detail::with_storage(o_in, [&](const auto& o) {
      if constexpr (has_grad) {
        if (detail::storage_partially_overlaps(o, *d_o))
          detail::fail(name, ": d_o partially overlaps o (only exact in-place is allowed)");
      }
      double total = 0;
      for (Index n = 0; n < rows; ++n) {
        const long c = static_cast<long>(labels[n]);
        for (Index k = 0; k < classes; ++k) {
          const double y = k == c ? 1.0 : -1.0;
          const double margin = std::max(0.0, 1.0 - y * static_cast<double>(o(n, k)));
          const double value = static_cast<double>(o(n, k));
          total += margin * margin;
          if constexpr (has_grad)
            (*d_o)(n, k) = static_cast<Scalar>(-2.0 * penalty_ * y * margin);
          if (value != value)  // max(0, NaN) above would hide a NaN output
            total = std::numeric_limits<double>::quiet_NaN();
          if constexpr (has_grad) {
            if (value != value)
              (*d_o)(n, k) = static_cast<Scalar>(value);
          }
        }
      }
      return penalty_ * total;
    });
  }

  double penalty_;
};

}  // namespace softmaxlab
