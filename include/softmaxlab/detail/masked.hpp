// softmaxlab: boolean masks (true = kept) for the exp-based functors, JAX's `where=`: a masked
// entry behaves exactly as a -inf logit, without -inf ever being written into the caller's input.
// The masked row is staged in the caller's output (y_i = keep_i ? x_i : -inf) and the functor then
// runs in place there, so nothing is allocated and every special-value rule of the functor applies
// unchanged: masked entries get 0 (log form -inf), a row with no kept entry gives zeros (log form
// -inf), and a NaN in a masked entry takes no part.
#pragma once

#include <limits>
#include <type_traits>
#include <utility>

#include "checks.hpp"
#include "functor_base.hpp"

namespace softmaxlab {
namespace detail {

template <class XprK>
constexpr void static_check_mask() {
  static_assert(std::is_same_v<typename XprK::Scalar, bool>,
                "softmaxlab: a boolean mask must have scalar type bool (true = kept)");
}

// y = f(x with the entries where keep is false replaced by -inf), for 1-D x, keep, y.
template <class F, class XprX, class XprK, class Out>
void apply_masked(const F& f, const char* function, const Eigen::DenseBase<XprX>& x,
                  const Eigen::DenseBase<XprK>& keep, Out&& y_out) {
  using Scalar = typename XprX::Scalar;
  using XprY = output_xpr_t<Out>;
  static_check_mask<XprK>();
  static_assert(is_writable_storage_v<XprY>, "softmaxlab: the output must be writable storage");
  auto& y = writable_output(std::forward<Out>(y_out));
  require_vector(function, x.rows(), x.cols());
  require_vector(function, keep.rows(), keep.cols());
  require_vector(function, y.rows(), y.cols());
  if (keep.size() != x.size() || y.size() != x.size()) {
    fail(function, ": mask and output must have the input's length ", x.size(), ", but got ",
         keep.size(), " and ", y.size());
  }
  if constexpr (has_direct_access_v<XprX>) {
    if (x.size() > 0
        && partially_overlap(vector_span<const Scalar>(x.derived()), vector_span<Scalar>(y))) {
      fail(function, ": output partially overlaps the input (only exact in-place is allowed)");
    }
  }
  const Scalar inf = std::numeric_limits<Scalar>::infinity();
  for (Index i = 0; i < x.size(); ++i)
    y.coeffRef(i) = keep.derived().coeff(i) ? x.derived().coeff(i) : -inf;
  f.apply(y, y);
}

// Y = f.rowwise(X masked by Keep); Keep has X's shape.
template <class F, class XprX, class XprK, class Out>
void rowwise_masked(const F& f, const char* function, const Eigen::DenseBase<XprX>& x,
                    const Eigen::DenseBase<XprK>& keep, Out&& y_out) {
  using Scalar = typename XprX::Scalar;
  using XprY = output_xpr_t<Out>;
  static_check_mask<XprK>();
  static_assert(is_writable_storage_v<XprY>, "softmaxlab: the output must be writable storage");
  auto& y = writable_output(std::forward<Out>(y_out));
  require_same_size(function, x.rows(), x.cols(), keep.rows(), keep.cols());
  require_same_size(function, x.rows(), x.cols(), y.rows(), y.cols());
  if constexpr (has_direct_access_v<XprX>) {
    if (x.size() > 0) {
      const auto& xd = x.derived();
      const bool same_layout = xd.rowStride() == y.rowStride() && xd.colStride() == y.colStride();
      if (matrices_partially_overlap<Scalar>(xd.data(), last_coefficient(xd), y.data(),
                                             last_coefficient(y), same_layout)) {
        fail(function, ": output partially overlaps the input (only exact in-place is allowed)");
      }
    }
  }
  const Scalar inf = std::numeric_limits<Scalar>::infinity();
  for (Index j = 0; j < x.cols(); ++j) {
    for (Index i = 0; i < x.rows(); ++i)
      y.coeffRef(i, j) = keep.derived().coeff(i, j) ? x.derived().coeff(i, j) : -inf;
  }
  f.rowwise(y, y);
}

}  // namespace detail
}  // namespace softmaxlab
