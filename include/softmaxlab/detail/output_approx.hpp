// softmaxlab: internals shared by the approximate output layers (adaptive_softmax.hpp and
// hierarchical_softmax.hpp): a non-deduced parameter alias, label reading and validation, the
// first-index argmax (the stable log-sigmoid is in sigmoid.hpp).
#pragma once

#include <cmath>
#include <limits>
#include <vector>

#include "checks.hpp"
#include "loss_base.hpp"
#include "sigmoid.hpp"

namespace softmaxlab {
namespace detail {

// Stops template argument deduction on a parameter, so a MatrixXf binds to an Eigen::Ref whose
// scalar type another argument fixes.
template <class T>
struct non_deduced {
  using type = T;
};
template <class T>
using non_deduced_t = typename non_deduced<T>::type;

// Labels (a std::vector or an Eigen integer vector) copied to Index after checking that there is
// one per row and each lies in [0, classes): neither layer has an ignore_index (PyTorch's
// AdaptiveLogSoftmaxWithLoss and fastText have none), so no value is skipped.
template <class Labels>
std::vector<Index> checked_labels(const char* function, const Labels& labels, Index rows,
                                  Index classes) {
  const auto span = label_span(function, labels);
  static const std::vector<double> no_weight;
  count_labels(function, span, rows, classes, std::numeric_limits<long>::min(), no_weight);
  std::vector<Index> out(static_cast<std::size_t>(rows));
  for (Index n = 0; n < rows; ++n)
    out[static_cast<std::size_t>(n)] = static_cast<Index>(span[n]);
  return out;
}

// The first index of the largest entry of row `r` of `x` (torch.argmax's rule: a NaN counts as the
// largest, the first NaN wins). An empty row gives 0.
template <class Xpr>
Index first_argmax(const Xpr& x, Index r) {
  Index best = 0;
  for (Index j = 1; j < x.cols(); ++j) {
    const auto v = x(r, j), b = x(r, best);
    if (b != b)
      break;
    if (v > b || v != v)
      best = j;
  }
  return best;
}

}  // namespace detail
}  // namespace softmaxlab
