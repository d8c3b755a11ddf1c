// softmaxlab: what a LinearCrossEntropy call (linear_cross_entropy.hpp) takes besides its operands:
// TokenOutputs, the optional per-token outputs and inputs (each with_* returns a modified copy),
// and LinearCrossEntropyWorkspace, the reusable scratch memory. Their semantics are in
// linear_cross_entropy.hpp's doc block; tests/test_linear_cross_entropy.cpp checks them.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "detail/checks.hpp"
#include "detail/functor_base.hpp"
#include "detail/lce_kernels.hpp"
#include "detail/loss_base.hpp"
#include "single_pass.hpp"

namespace softmaxlab {

class LinearCrossEntropy;

// Reusable scratch memory: pass it with TokenOutputs::with_workspace to make repeated calls of
// one shape allocation-free (it grows to the largest call seen and keeps its size).
class LinearCrossEntropyWorkspace {
 public:
  // The bytes this object holds (its buffers' capacity).
  std::size_t bytes() const { return buffers_.bytes(); }

 private:
  friend class LinearCrossEntropy;
  detail::LceBuffers buffers_;
};

// Optional per-token outputs and inputs of a LinearCrossEntropy call: see the header's doc block.
struct TokenOutputs {
  RowOutputs rows;                                     // losses and lse (N doubles each)
  detail::Span<const double> upstream{nullptr, 0, 1};  // N doubles, Reduction::None only
  LinearCrossEntropyWorkspace* workspace = nullptr;    // reused scratch memory

  // A copy with this option set (its valid range, and the std::invalid_argument a value outside it
  // throws: the header's doc block).
  template <class Out>
  [[nodiscard]] TokenOutputs with_losses(Out&& v) const {
    TokenOutputs t = *this;
    t.rows = t.rows.with_losses(std::forward<Out>(v));
    return t;
  }
  // A copy with this option set (its valid range, and the std::invalid_argument a value outside it
  // throws: the header's doc block).
  template <class Out>
  [[nodiscard]] TokenOutputs with_lse(Out&& v) const {
    TokenOutputs t = *this;
    t.rows = t.rows.with_lse(std::forward<Out>(v));
    return t;
  }
  // A copy with this option set (its valid range, and the std::invalid_argument a value outside it
  // throws: the header's doc block).
  template <class Xpr>
  [[nodiscard]] TokenOutputs with_upstream(const Eigen::DenseBase<Xpr>& g) const {
    static_assert(std::is_same_v<typename Xpr::Scalar, double> && detail::has_direct_access_v<Xpr>,
                  "softmaxlab: upstream must be a double vector with storage (VectorXd, Map)");
    detail::require_vector("LinearCrossEntropy: upstream", g.rows(), g.cols());
    TokenOutputs t = *this;
    t.upstream = detail::vector_span<const double>(g.derived());
    return t;
  }
  // A copy with this option set (its valid range, and the std::invalid_argument a value outside it
  // throws: the header's doc block).
  [[nodiscard]] TokenOutputs with_workspace(LinearCrossEntropyWorkspace& ws) const {
    TokenOutputs t = *this;
    t.workspace = &ws;
    return t;
  }
};

}  // namespace softmaxlab
