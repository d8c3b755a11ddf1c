// softmaxlab: the logistic function and its logs in double, for the binary-decision losses
// (NceLoss's terms, HierarchicalSoftmax's path nodes), in the forms that neither overflow nor
// cancel for any argument. Each is within a few double eps; NaN gives NaN.
#pragma once

#include <algorithm>
#include <cmath>

namespace softmaxlab {
namespace detail {

// sigmoid(x) = 1 / (1 + exp(-x)), with no overflowing exp for either sign.
inline double sigmoid(double x) {
  if (x >= 0)
    return 1.0 / (1.0 + std::exp(-x));
  const double e = std::exp(x);
  return e / (1.0 + e);
}

// softplus(x) = log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)).
inline double softplus(double x) {
  return std::max(x, 0.0) + std::log1p(std::exp(-std::abs(x)));
}

// log sigmoid(x) = -softplus(-x) = min(x, 0) - log1p(exp(-|x|)): -inf gives -inf, +inf 0.
inline double log_sigmoid(double x) {
  return std::fmin(x, 0.0) - std::log1p(std::exp(-std::fabs(x)));
}

}  // namespace detail
}  // namespace softmaxlab
