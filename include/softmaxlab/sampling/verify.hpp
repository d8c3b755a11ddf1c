// softmaxlab: the sampler's speculative verification (Leviathan et al. 2023; Chen et al. 2023): accept each draft token with min(1, p/q), else draw from the residual. Part of sampler.hpp (included at its end, and
// including it first), split out so that each concern has its own header.
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

#include "../sampler.hpp"

namespace softmaxlab {

// Exact speculative-decoding verification (Leviathan et al. 2023, arXiv 2211.17192; Chen et al.
// 2023, arXiv 2302.01318; FlashInfer's chain_speculative_sampling). target_logits: (k + 1) x V
// logits of the target model at the k draft positions and the one after them (row i conditioned
// on the history and drafts 0..i-1); draft_probs: k x V, the distributions the draft tokens were
// drawn from, as given (the draft's own stages applied; each row normalized by its sum here);
// draft_tokens: k integer entries. With p_i the Sampler's probabilities() of target row i
// (its stages applied; the penalties see history + drafts 0..i-1): draft token t is accepted
// with probability min(1, p_i(t) / q_i(t)) (u q < p, one uniform); at the first rejection the
// next token is drawn from (p_i - q_i)+ normalized (a second uniform) and the result is returned;
// when all k are accepted the bonus token is sample() of row k. Then the emitted tokens are
// distributed exactly as successive draws from the p_i (tests/test_sampler_chain.cpp,
// "verify: emitted tokens follow the target by chi-square"). A token of p_i = 0 is never
// emitted. Throws std::invalid_argument (naming the argument) for: target_logits without k + 1
// rows, draft_probs not k x V, a draft token outside [0, V), a negative or non-finite draft
// probability (or one above 1), a row not summing to 1 within 1e-3, a draft token of draft
// probability 0, or mirostat v2 on. Random words: two per draft examined, two more for the
// residual or the bonus draw. Cost per position: the chain's plan of the row (no write of V
// probabilities; on the heap path one max pass over the row), one vectorized pass over the draft
// row (its range and sum: detail::probability_row_check), the accept test from p(t) and q(t)
// alone (O(kept)), and at a rejection (once per call) one pass over the residual's support
// (the kept set).
template <class XprT, class XprQ, class XprD, class Gen>
auto Sampler::verify(const Eigen::DenseBase<XprT>& target_logits,
                     const Eigen::DenseBase<XprQ>& draft_probs,
                     const Eigen::DenseBase<XprD>& draft_tokens, Gen& gen, SamplingWorkspace& ws,
                     const TokenHistory& history) const -> SpeculativeResult {
  using Scalar = typename XprT::Scalar;
  detail::static_check_scalar<Scalar>();
  static_assert(std::is_floating_point_v<typename XprQ::Scalar>,
                "softmaxlab: draft_probs must hold float or double probabilities");
  static_assert(std::is_integral_v<typename XprD::Scalar>,
                "softmaxlab: draft_tokens must be an integer vector");
  detail::require_vector("Sampler::verify: draft_tokens", draft_tokens.rows(), draft_tokens.cols());
  if (mirostat_on_ && !greedy_) {
    detail::fail(
        "Sampler::verify: mirostat v2 is not supported (its state would change between "
        "the positions); verify with a Sampler without it");
  }
  const Index k = draft_tokens.size();
  const Index n = target_logits.cols();
  if (target_logits.rows() != k + 1) {
    detail::fail("Sampler::verify: target_logits must have k + 1 = ", k + 1,
                 " rows (k = draft_tokens.size()), but got ", target_logits.rows());
  }
  if (draft_probs.rows() != k || draft_probs.cols() != n) {
    detail::fail("Sampler::verify: draft_probs must be k x V = ", k, " x ", n, ", but got ",
                 draft_probs.rows(), " x ", draft_probs.cols());
  }
  std::vector<double>& inv_sum = ws.scores();
  inv_sum.resize(static_cast<std::size_t>(k));
  // The draft rows' check reads float rows as they are and other types as double.
  using QScalar = std::conditional_t<std::is_same_v<typename XprQ::Scalar, float>, float, double>;
  std::vector<QScalar>& qbuf = ws.buffers<QScalar>().row;
  for (Index i = 0; i < k; ++i) {
    const auto t = static_cast<Index>(draft_tokens.derived().coeff(i));
    if (t < 0 || t >= n)
      detail::fail("Sampler::verify: draft_tokens(", i, ") must be in [0, ", n, "), but got ", t);
    const auto q_at = [&](Index c) {
      return static_cast<double>(draft_probs.derived().coeff(i, c));
    };
    // One vectorized pass over the row (its range and sum); a failure is located afterwards.
    double sum = 0;
    const QScalar* qrow = nullptr;
    if constexpr (std::is_same_v<QScalar, typename XprQ::Scalar>) {
      qrow = detail::contiguous_row<QScalar>(draft_probs.derived().row(i), qbuf);
    } else {  // long double probabilities: checked on their double values
      qbuf.resize(static_cast<std::size_t>(n));
      for (Index c = 0; c < n; ++c)
        qbuf[static_cast<std::size_t>(c)] = static_cast<double>(q_at(c));
      qrow = qbuf.data();
    }
    if (!detail::probability_row_check(qrow, n, sum)) {
      for (Index c = 0; c < n; ++c) {
        if (!(q_at(c) >= 0 && q_at(c) <= 1))
          detail::fail("Sampler::verify: draft_probs(", i, ", ", c, ") must be in [0, 1], but got ",
                       q_at(c));
      }
    }
    if (!(std::fabs(sum - 1.0) <= 1e-3)) {
      detail::fail("Sampler::verify: draft_probs row ", i,
                   " must sum to 1 (within 1e-3), but sums to ", static_cast<double>(sum));
    }
    if (!(draft_probs.derived().coeff(i, t) > 0)) {
      detail::fail("Sampler::verify: draft_probs(", i, ", ", t, ") is 0, but the draft drew token ",
                   t, " (draft_tokens(", i, "))");
    }
    inv_sum[static_cast<std::size_t>(i)] = 1.0 / static_cast<double>(sum);
  }
  if (!o_.has_allowed_tokens() && !o_.token_mask().empty())
    check_vocabulary(n);
  // The penalties of row i see the history and drafts 0..i-1 (the last window of them).
  std::vector<Index>& extended = ws.history();
  const bool extend = (penalties_on_ || dry_on_) && k > 0;
  if (extend) {
    // The longest window any history stage reads (-1: all of it).
    const auto window = [&](bool on, Index last_n) {
      return !on ? Index(0) : last_n < 0 ? history.size() : std::min(history.size(), last_n);
    };
    const Index keep =
        std::max(window(penalties_on_, o_.penalty_last_n()), window(dry_on_, o_.dry_last_n()));
    extended.assign(history.data() + (history.size() - keep), history.data() + history.size());
  }
  const auto history_of = [&](Index i) {
    if (!extend)
      return history;
    return TokenHistory(extended.data(), static_cast<Index>(extended.size()) - (k - i));
  };
  if (extend) {
    for (Index i = 0; i < k; ++i)
      extended.push_back(static_cast<Index>(draft_tokens.derived().coeff(i)));
  }
  for (Index i = 0; i < k; ++i) {
    // The plan of row i gives p(t) in O(kept) on the heap and general paths (no write of V
    // probabilities) and the residual's support: (p - q)+ > 0 only where p > 0.
    const TokenHistory hi = history_of(i);
    const Scalar* xs = prepare(target_logits.row(i), ws, hi);
    const Plan<Scalar> plan = make_plan(xs, n, ws, hi, nullptr);
    if (plan.kind == Kind::NaN)
      return {i, -1};
    const auto t = static_cast<Index>(draft_tokens.derived().coeff(i));
    const double scale = inv_sum[static_cast<std::size_t>(i)];
    const double q_t = static_cast<double>(draft_probs.derived().coeff(i, t)) * scale;
    if (detail::uniform53(gen) * q_t < plan_probability(plan, xs, t, ws))
      continue;  // accepted with probability min(1, p(t) / q(t))
    // Rejected: draw from the residual (p - q)+, normalized.
    const auto residual = [&](Index j, double p_j) {
      const double r = p_j - static_cast<double>(draft_probs.derived().coeff(i, j)) * scale;
      return r > 0 ? r : 0.0;
    };
    long double total = 0;
    for_each_support(plan, xs, n, ws, [&](Index j, double p_j) { total += residual(j, p_j); });
    const double target = detail::uniform53(gen) * static_cast<double>(total);
    double cum = 0;
    Index chosen = -1, last = -1, best = -1;
    double best_p = 0;
    for_each_support(plan, xs, n, ws, [&](Index j, double p_j) {
      if (p_j > best_p) {
        best_p = p_j;
        best = j;
      }
      const double r = residual(j, p_j);
      if (chosen >= 0 || !(r > 0))
        return;
      cum += r;
      last = j;
      if (cum > target)
        chosen = j;
    });
    if (chosen >= 0)
      return {i, chosen};
    if (last >= 0)
      return {i, last};  // rounding left target >= cum: the last token of the residual
    // No residual mass: p = q up to rounding, so the rejection itself came from rounding; p's
    // largest entry is then a token the target gives positive probability (-1: empty row).
    return {i, best};
  }
  return {k, sample(target_logits.row(k), gen, ws, history_of(k))};
}

template <class XprT, class XprQ, class XprD, class Gen>
auto Sampler::verify(const Eigen::DenseBase<XprT>& target_logits,
                     const Eigen::DenseBase<XprQ>& draft_probs,
                     const Eigen::DenseBase<XprD>& draft_tokens, Gen& gen) const
    -> SpeculativeResult {
  SamplingWorkspace ws;
  return verify(target_logits, draft_probs, draft_tokens, gen, ws);
}

}  // namespace softmaxlab
