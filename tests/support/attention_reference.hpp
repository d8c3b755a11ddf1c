// The materialized attention reference in long double, shared by the attention tests: for each
// query row i, the scores t_ij (from the caller's callable: scale, softcap, mask, causal and
// window rules are the test's own; -inf marks a key that is not visible or masked) and an optional
// sink z give
//   M = max(max_j t_ij, z),  l_i = sum_j exp(t_ij - M) + exp(z - M),
//   O_i = sum_j exp(t_ij - M) v_j / l_i,  lse_i = M + log l_i;
// a row with no visible key gets O_i = 0 and lse_i = z (the sink's own log-sum-exp), or -inf
// without a sink. Every operation in long double (64-bit significand on x86).
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include <Eigen/Core>

namespace softmaxlab_test {

struct AttentionReference {
  Eigen::Matrix<long double, Eigen::Dynamic, Eigen::Dynamic> o;  // Lq x dv
  Eigen::Matrix<long double, Eigen::Dynamic, 1> lse;             // Lq
};

// lq query rows against the values v (Lk x dv, long double); score(i, j) gives t_ij.
template <class Score>
AttentionReference materialized_attention(
    Eigen::Index lq, const Eigen::Matrix<long double, Eigen::Dynamic, Eigen::Dynamic>& v,
    const Score& score, bool has_sink = false, long double sink = 0) {
  const long double inf = std::numeric_limits<long double>::infinity();
  const Eigen::Index lk = v.rows();
  AttentionReference r{
      Eigen::Matrix<long double, Eigen::Dynamic, Eigen::Dynamic>::Zero(lq, v.cols()),
      Eigen::Matrix<long double, Eigen::Dynamic, 1>(lq)};
  std::vector<long double> t(static_cast<std::size_t>(lk));
  for (Eigen::Index i = 0; i < lq; ++i) {
    long double top = -inf;
    for (Eigen::Index j = 0; j < lk; ++j) {
      t[static_cast<std::size_t>(j)] = score(i, j);
      top = std::max(top, t[static_cast<std::size_t>(j)]);
    }
    if (top == -inf) {  // no visible key: log(exp(z)) = z with a sink, else log 0
      r.lse(i) = has_sink ? sink : -inf;
      continue;
    }
    if (has_sink)
      top = std::max(top, sink);
    long double sum = has_sink ? std::exp(sink - top) : 0.0L;
    for (Eigen::Index j = 0; j < lk; ++j) {
      const long double tj = t[static_cast<std::size_t>(j)];
      if (tj == -inf)
        continue;
      const long double w = std::exp(tj - top);
      sum += w;
      r.o.row(i) += w * v.row(j);
    }
    r.o.row(i) /= sum;
    r.lse(i) = top + std::log(sum);
  }
  return r;
}

}  // namespace softmaxlab_test
