// softmaxlab: NormalizedSoftmaxLoss, the cross-entropy of NormalizedSoftmax's margin logits.
//
// NormalizedSoftmaxLoss(head = NormalizedSoftmax(), reduction = Mean, label_smoothing = 0): the
// cross-entropy of the normalized-softmax logits s cos(e_n, w_c) with the head's margin (CosFace,
// ArcFace or SphereFace) on each target (Zhai and Wu, arXiv 1811.12649), with its gradients with
// respect to the embeddings E (N x D) and the class weights W (C x D), through the margin and the
// L2 normalizations (NormalizedSoftmax::logits_backward):
//     double l = nsl(E, W, labels);            double l = nsl(E, W, labels, dE, dW);
//
// Accuracy, outputs and errors: as every loss, see loss.hpp's doc block (the losses' umbrella).
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "cross_entropy.hpp"
#include "detail/checks.hpp"
#include "detail/loss_base.hpp"
#include "normalized.hpp"

namespace softmaxlab {

// The normalized-softmax loss: see the header's doc block.
class NormalizedSoftmaxLoss {
 public:
  // The variant's name, as error messages give it.
  static constexpr const char* name = "NormalizedSoftmaxLoss";

  // reduction and label_smoothing as CrossEntropyLoss's; throws std::invalid_argument naming the
  // value otherwise.
  explicit NormalizedSoftmaxLoss(NormalizedSoftmax head = NormalizedSoftmax(),
                                 Reduction reduction = Reduction::Mean,
                                 double label_smoothing = 0.0)
      : head_(head), ce_(reduction, label_smoothing) {}

  // The head this object was built with.
  const NormalizedSoftmax& head() const { return head_; }

  // The loss only. labels: an Eigen integer vector or a std::vector of integers.
  template <class XprE, class XprW, class Labels>
  double operator()(const Eigen::DenseBase<XprE>& e, const Eigen::DenseBase<XprW>& w,
                    const Labels& labels) const {
    return with_eigen_labels(labels, [&](const auto& l) { return ce_(head_.logits(e, w, l), l); });
  }

  // The loss, with dE (N x D) and dW (C x D) written. Allocates the logits and the products.
  template <class XprE, class XprW, class Labels, class OutDE, class OutDW>
  double operator()(const Eigen::DenseBase<XprE>& e, const Eigen::DenseBase<XprW>& w,
                    const Labels& labels, OutDE&& de_out, OutDW&& dw_out) const {
    auto& de = detail::writable_output(std::forward<OutDE>(de_out));
    auto& dw = detail::writable_output(std::forward<OutDW>(dw_out));
    detail::require_same_shape(name, detail::SliceMode::Rows, "dE", de.rows(), de.cols(), e.rows(),
                               e.cols());
    detail::require_same_shape(name, detail::SliceMode::Rows, "dW", dw.rows(), dw.cols(), w.rows(),
                               w.cols());
    return with_eigen_labels(labels, [&](const auto& l) {
      auto z = head_.logits(e, w, l);
      const double loss = ce_(z, l, z);  // z becomes dloss/dlogits
      auto grads = head_.logits_backward(e, w, l, z);
      de = grads.first;
      dw = grads.second;
      return loss;
    });
  }

 private:
  template <class Labels, class Fn>
  static double with_eigen_labels(const Labels& labels, Fn&& fn) {
    if constexpr (detail::is_std_vector<Labels>::value) {
      using Int = typename Labels::value_type;
      const Eigen::Map<const Eigen::Matrix<Int, Eigen::Dynamic, 1>> map(
          labels.data(), static_cast<Index>(labels.size()));
      return fn(map);
    } else {
      return fn(labels.derived());
    }
  }

  NormalizedSoftmax head_;
  CrossEntropyLoss ce_;
};

}  // namespace softmaxlab
