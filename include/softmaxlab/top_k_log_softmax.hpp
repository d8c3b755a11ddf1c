// softmaxlab: top_k_log_softmax and top_k_log_softmax_rowwise, the k largest log-probabilities of a
// row (or of each row) without sorting the vocabulary. Formula, accuracy, special values: the doc
// comment of the first form below; tested in tests/test_sampling.cpp ("top_k_log_softmax" cases).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <type_traits>
#include <utility>
#include <vector>

#include "detail/checks.hpp"
#include "detail/common.hpp"
#include "detail/functor_base.hpp"
#include "detail/kernels.hpp"
#include "detail/sampling_select.hpp"
#include "sampler_options.hpp"

namespace softmaxlab {

// The k largest log-probabilities of log_softmax(x), normalized over the whole row:
//   log_probs(j) = x_{i_j} - m - log(sum_i exp(x_i - m)),  indices(j) = i_j,
// i_0, i_1, ... in decreasing order of x, ties by increasing index. indices: any writable integer
// vector of k entries; log_probs: a vector of x's scalar type with k entries. 0 <= k <= x.size(),
// else std::invalid_argument. Accuracy: |error| <= 4 eps (1 + |exact|) (the sum in the Softmax
// kernel's compensated form, the rest in double). Special values: a NaN anywhere gives indices -1
// and NaN log-probabilities; a row of only -inf gives -inf (indices 0, 1, ...); +inf entries share
// the mass (-log count). With a workspace, no allocation once it has grown.
template <class XprX, class OutI, class OutL>
void top_k_log_softmax(const Eigen::DenseBase<XprX>& x, Index k, OutI&& indices_out,
                       OutL&& log_probs_out, SamplingWorkspace& ws) {
  using Scalar = typename XprX::Scalar;
  using XprI = detail::output_xpr_t<OutI>;
  using XprL = detail::output_xpr_t<OutL>;
  detail::static_check_scalar<Scalar>();
  static_assert(std::is_same_v<Scalar, typename XprL::Scalar>,
                "softmaxlab: logits and log_probs must have the same scalar type");
  auto& indices = detail::writable_output(std::forward<OutI>(indices_out));
  auto& log_probs = detail::writable_output(std::forward<OutL>(log_probs_out));
  detail::require_vector("top_k_log_softmax", x.rows(), x.cols());
  const Index n = x.size();
  if (k < 0 || k > n)
    detail::fail("top_k_log_softmax: k must be in [0, ", n, "] (the row length), but got ", k);
  if (indices.size() != k || log_probs.size() != k) {
    detail::fail("top_k_log_softmax: indices and log_probs must have k = ", k, " entries, but got ",
                 indices.size(), " and ", log_probs.size());
  }
  if (k == 0)
    return;
  using IndexScalar = typename XprI::Scalar;
  const Scalar inf = std::numeric_limits<Scalar>::infinity();
  auto& b = ws.buffers<Scalar>();
  const Scalar* xs = detail::contiguous_row<Scalar>(x, b.row);
  const Scalar m = detail::block_maxima(xs, n, b.block_max);  // and the row max
  if (m != m) {
    indices.setConstant(IndexScalar(-1));
    log_probs.setConstant(std::numeric_limits<Scalar>::quiet_NaN());
    return;
  }
  // Candidates: every logit >= the k-th largest finite one (all of them when fewer are finite).
  const Scalar kth = detail::kth_largest(xs, n, k, b.block_max, b.heap);
  detail::gather_at_least(xs, n, static_cast<Index>(b.heap.size()) < k ? -inf : kth, b.block_max,
                          b.cand);
  const auto middle = b.cand.begin() + k;
  std::partial_sort(b.cand.begin(), middle, b.cand.end(), detail::by_decreasing_logit<Scalar>);
  double log_sum = 0;
  Index infinities = 0;
  if (m == inf) {
    infinities = static_cast<Index>(std::count(xs, xs + n, inf));
  } else if (m > -inf) {
    detail::CompensatedSum<Scalar> sum0, sum1;
    detail::scaled_exp_sum<true>(xs, n, m, Scalar(1), sum0, sum1);
    // Remove the kernel's 2^64 scale exactly before the log (not by subtracting 64 log 2 after it,
    // which would cost 44 eps of absolute error).
    log_sum = static_cast<double>(
        std::log(std::ldexp(sum0.total() + sum1.total(), -detail::kExpScaleLog2<Scalar>)));
  }
  for (Index j = 0; j < k; ++j) {
    const auto& c = b.cand[static_cast<std::size_t>(j)];
    indices.coeffRef(j) = static_cast<IndexScalar>(c.second);
    Scalar v;
    if (m == inf) {
      v = c.first == inf ? static_cast<Scalar>(-std::log(double(infinities))) : -inf;
    } else if (m == -inf || c.first == -inf) {
      v = -inf;
    } else {
      v = static_cast<Scalar>((double(c.first) - double(m)) - log_sum);
    }
    log_probs.coeffRef(j) = v;
  }
}
// The same with a workspace of its own (it allocates).
template <class XprX, class OutI, class OutL>
void top_k_log_softmax(const Eigen::DenseBase<XprX>& x, Index k, OutI&& indices, OutL&& log_probs) {
  SamplingWorkspace ws;
  top_k_log_softmax(x, k, std::forward<OutI>(indices), std::forward<OutL>(log_probs), ws);
}

// Row r of Indices / LogProbs (rows x k) = top_k_log_softmax of row r of L.
template <class XprX, class OutI, class OutL>
void top_k_log_softmax_rowwise(const Eigen::DenseBase<XprX>& logits, Index k, OutI&& indices_out,
                               OutL&& log_probs_out, SamplingWorkspace& ws) {
  auto& indices = detail::writable_output(std::forward<OutI>(indices_out));
  auto& log_probs = detail::writable_output(std::forward<OutL>(log_probs_out));
  if (k < 0 || k > logits.cols())
    detail::fail("top_k_log_softmax_rowwise: k must be in [0, ", logits.cols(),
                 "] (the row length), but got ", k);
  if (indices.rows() != logits.rows() || indices.cols() != k || log_probs.rows() != logits.rows()
      || log_probs.cols() != k) {
    detail::fail("top_k_log_softmax_rowwise: indices and log_probs must be ", logits.rows(), " x ",
                 k, ", but got ", indices.rows(), " x ", indices.cols(), " and ", log_probs.rows(),
                 " x ", log_probs.cols());
  }
  for (Index r = 0; r < logits.rows(); ++r)
    top_k_log_softmax(logits.row(r), k, indices.row(r), log_probs.row(r), ws);
}
// The same with a workspace of its own (it allocates).
template <class XprX, class OutI, class OutL>
void top_k_log_softmax_rowwise(const Eigen::DenseBase<XprX>& logits, Index k, OutI&& indices,
                               OutL&& log_probs) {
  SamplingWorkspace ws;
  top_k_log_softmax_rowwise(logits, k, std::forward<OutI>(indices), std::forward<OutL>(log_probs),
                            ws);
}

}  // namespace softmaxlab
