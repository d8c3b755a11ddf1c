// softmaxlab: the sampler's plans on the fast paths: the kept set of the chain (greedy, +inf, small and large supports), its probabilities, and the exact draw. Part of sampler.hpp (included at its end, and
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

// The probability probabilities() reports for a kept weight w of a plan of total `total`. The
// draw returns only tokens for which this is > 0, so a token reported as 0 (an underflow in the
// output type included) is never drawn, whatever u and the rounding of the running sum.
template <class Scalar>
auto Sampler::reported(double w, double total) -> Scalar {
  return static_cast<Scalar>(w / total);
}

template <class Scalar>
auto Sampler::make_plan(const Scalar* x, Index n, SamplingWorkspace& ws,
                        const TokenHistory& history, const MirostatState* mirostat) const
    -> Plan<Scalar> {
  if (mirostat_on_ && mirostat == nullptr && !greedy_) {
    detail::fail(
        "Sampler: mirostat v2 is on: pass its MirostatState to sample(), "
        "probabilities() or kept_count()");
  }
  const Scalar inf = std::numeric_limits<Scalar>::infinity();
  Plan<Scalar> plan;
  if (n == 0)
    return plan;
  const bool small = fast_ && !greedy_ && k_ > 0 && k_ <= kHeapMaxK;
  // The small path's block maxima come with the row max in the same pass.
  Scalar m = small ? detail::block_maxima(x, n, ws.buffers<Scalar>().block_max)
                   : detail::max_propagate_nan(x, n);
  if (small && ws.buffers<Scalar>().overlay_on && m == m)  // a NaN stays (not overlaid)
    m = patch_blocks(x, n, ws);
  if (m != m) {
    plan.kind = Kind::NaN;
    return plan;
  }
  if (m == -inf)
    return plan;  // Empty
  if (greedy_) {
    plan.kind = Kind::Greedy;
    plan.index = static_cast<Index>(std::find(x, x + n, m) - x);
    return plan;
  }
  if (m == inf) {
    plan.kind = Kind::Infinity;
    plan.count = static_cast<std::size_t>(std::count(x, x + n, inf));
    return plan;
  }
  if (!fast_)
    return general_plan(x, n, ws, history, mirostat);
  if (small)
    return small_plan(x, n, m, ws);
  return large_plan(x, n, m, ws);
}

// The overlay's blocks: each block holding a modified logit is copied into `patch` with the
// overlay applied and its max recomputed; block_src points at every block's logits. Returns
// the row's max (the row holds no NaN: make_plan checked).
template <class Scalar>
auto Sampler::patch_blocks(const Scalar* x, Index n, SamplingWorkspace& ws) const -> Scalar {
  auto& b = ws.buffers<Scalar>();
  const auto blocks = b.block_max.size();
  b.block_src.resize(blocks);
  for (std::size_t bl = 0; bl < blocks; ++bl)
    b.block_src[bl] = x + static_cast<Index>(bl) * detail::kSelectBlock;
  std::size_t dirty = 0;
  for (std::size_t e = 0; e < b.overlay.size(); ++e) {
    if (e == 0
        || b.overlay[e].first / detail::kSelectBlock
               != b.overlay[e - 1].first / detail::kSelectBlock)
      ++dirty;
  }
  b.patch.resize(dirty * static_cast<std::size_t>(detail::kSelectBlock));
  std::size_t slot = 0;
  for (std::size_t e = 0; e < b.overlay.size();) {
    const Index bl = b.overlay[e].first / detail::kSelectBlock;
    const Index start = bl * detail::kSelectBlock;
    const Index len = std::min(detail::kSelectBlock, n - start);
    Scalar* dst = b.patch.data() + slot * static_cast<std::size_t>(detail::kSelectBlock);
    std::copy(x + start, x + start + len, dst);
    for (; e < b.overlay.size() && b.overlay[e].first / detail::kSelectBlock == bl; ++e)
      dst[b.overlay[e].first - start] = b.overlay[e].second;
    // No NaN here (make_plan calls this only for a row without one): the fast max.
    b.block_max[static_cast<std::size_t>(bl)] = detail::packet_max<Eigen::PropagateFast>(dst, len);
    b.block_src[static_cast<std::size_t>(bl)] = dst;
    ++slot;
  }
  return detail::packet_max<Eigen::PropagateFast>(b.block_max.data(), static_cast<Index>(blocks));
}

// Top-k by the block maxima (detail::top_k_candidates), then only the candidates are weighted,
// cut and reweighted.
template <class Scalar>
auto Sampler::small_plan(const Scalar* x, Index n, Scalar m, SamplingWorkspace& ws) const
    -> Plan<Scalar> {
  auto& b = ws.buffers<Scalar>();
  const Scalar* const* src = b.overlay_on ? b.block_src.data() : nullptr;
  detail::top_k_candidates(n, k_, b.block_max, b.cand, x, src);
  const std::size_t count = b.cand.size();
  b.cand_weight.resize(count);
  // Temperature last (llama.cpp's order): top-p and min-p cut the T = 1 distribution, then the
  // kept tokens are reweighted at T.
  const double t = temp_last_ ? 1.0 : temp_;
  double total = 0;
  for (std::size_t j = 0; j < count; ++j) {
    b.cand_weight[j] = std::exp((double(b.cand[j].first) - double(m)) / t);
    total += b.cand_weight[j];
  }
  std::size_t c = count;
  if (p_ < 1.0)
    c = detail::top_p_cut(b.cand, b.cand_weight, c, p_, 0.0, total);
  if (minp_ > 0.0) {
    // The first candidate is the max: weight exp(0) = 1, so the rule is w_j >= min_p.
    std::size_t keep = 1;
    while (keep < c && b.cand_weight[keep] >= minp_)
      ++keep;
    c = keep;
  }
  if (temp_last_ && temp_ != 1.0) {
    for (std::size_t j = 0; j < c; ++j)
      b.cand_weight[j] = std::exp((double(b.cand[j].first) - double(m)) / temp_);
  }
  Plan<Scalar> plan;
  plan.kind = Kind::Small;
  plan.count = c;
  long double kept_total = 0;  // long double: the normalizer's error stays far below eps
  for (std::size_t j = 0; j < c; ++j)
    kept_total += b.cand_weight[j];
  plan.total = static_cast<double>(kept_total);
  return plan;
}

// Weights of the whole row; top-k (large k) by nth_element, top-p by the histogram.
template <class Scalar>
auto Sampler::large_plan(const Scalar* x, Index n, Scalar m, SamplingWorkspace& ws) const
    -> Plan<Scalar> {
  auto& b = ws.buffers<Scalar>();
  const Scalar inf = std::numeric_limits<Scalar>::infinity();
  const auto un = static_cast<std::size_t>(n);
  if (b.weight.size() < un)
    b.weight.resize(un);
  Scalar* w = b.weight.data();
  Plan<Scalar> plan;
  plan.kind = Kind::Large;
  // Top-k beyond the heap's range: the k-th largest finite value by nth_element on a copy.
  const Index k = k_;
  if (k > 0 && k < n) {
    std::copy(x, x + n, w);
    std::nth_element(w, w + (k - 1), w + n, std::greater<Scalar>());
    plan.threshold = w[k - 1];  // -inf when fewer than k are finite: no restriction
  }
  const Scalar s = static_cast<Scalar>(1.0 / temp_);
  detail::CompensatedSum<Scalar> sum0, sum1;
  if (temp_ != 1.0) {
    detail::scaled_exp_store_sum<true>(x, w, n, m, s, sum0, sum1);
  } else {
    detail::scaled_exp_store_sum<false>(x, w, n, m, s, sum0, sum1);
  }
  double total = static_cast<double>(sum0.total() + sum1.total());
  if (plan.threshold > -inf)
    total = kept_sum(x, w, n, plan);
  if (p_ < 1.0)
    plan.threshold = top_p_threshold(x, w, n, m, s, plan.threshold, total, ws);
  if (minp_ > 0.0)
    plan.min_weight = static_cast<Scalar>(minp_ * double(detail::kExpScale<Scalar>));
  if (p_ < 1.0 || minp_ > 0.0)
    total = kept_sum(x, w, n, plan);
  plan.total = total;
  return plan;
}

template <class Scalar>
auto Sampler::kept_sum(const Scalar* x, const Scalar* w, Index n, const Plan<Scalar>& plan)
    -> double {
  // double holds float weights' sums to ~2^-53 at any length; double weights are summed in
  // long double so that the total's error stays far below double's eps at 256k terms.
  using Acc = std::conditional_t<std::is_same_v<Scalar, float>, double, long double>;
  Acc a0 = 0, a1 = 0;
  Index i = 0;
  for (; i + 2 <= n; i += 2) {
    a0 += plan.kept(x[i], w[i]) ? Acc(w[i]) : Acc(0);
    a1 += plan.kept(x[i + 1], w[i + 1]) ? Acc(w[i + 1]) : Acc(0);
  }
  if (i < n)
    a0 += plan.kept(x[i], w[i]) ? Acc(w[i]) : Acc(0);
  return static_cast<double>(a0 + a1);
}

// The smallest logit of the top-p prefix over {x_i >= floor}: the histogram of the weights over
// the buckets of (m - x_i) / T locates the boundary bucket; only its tokens are sorted.
template <class Scalar>
auto Sampler::top_p_threshold(const Scalar* x, const Scalar* w, Index n, Scalar m, Scalar s,
                              Scalar floor, double total, SamplingWorkspace& ws) const -> Scalar {
  auto& b = ws.buffers<Scalar>();
  std::vector<double>& hist = ws.histogram();
  hist.assign(kBuckets, 0.0);
  const auto bucket = [&](Scalar xi) {
    const Scalar d = (m - xi) * s * Scalar(kBucketsPerUnit);  // >= 0, monotone in xi
    return d < Scalar(kBuckets - 1) ? static_cast<int>(d) : kBuckets - 1;
  };
  for (Index i = 0; i < n; ++i) {
    if (x[i] >= floor)
      hist[static_cast<std::size_t>(bucket(x[i]))] += double(w[i]);
  }
  const double target = p_ * total;
  double before = 0;
  int boundary = 0;
  int last_nonempty = 0;
  for (; boundary < kBuckets; ++boundary) {
    const double mass = hist[static_cast<std::size_t>(boundary)];
    if (mass > 0)
      last_nonempty = boundary;
    if (before + mass >= target && mass > 0)
      break;
    before += mass;
  }
  if (boundary == kBuckets) {  // rounding left the target just out of reach: keep everything
    boundary = last_nonempty;
    before = 0;
    for (int j = 0; j < boundary; ++j)
      before += hist[static_cast<std::size_t>(j)];
  }
  b.cand.clear();
  for (Index i = 0; i < n; ++i) {
    if (x[i] >= floor && bucket(x[i]) == boundary)
      b.cand.emplace_back(x[i], i);
  }
  std::sort(b.cand.begin(), b.cand.end(), detail::by_decreasing_logit<Scalar>);
  b.cand_weight.resize(b.cand.size());
  for (std::size_t j = 0; j < b.cand.size(); ++j)
    b.cand_weight[j] = double(w[static_cast<std::size_t>(b.cand[j].second)]);
  const std::size_t c = detail::top_p_cut(b.cand, b.cand_weight, b.cand.size(), p_, before, total);
  return b.cand[c - 1].first;
}

template <class Scalar, class Gen>
auto Sampler::draw(const Plan<Scalar>& plan, const Scalar* x, Index n, Gen& gen,
                   SamplingWorkspace& ws) const -> Index {
  switch (plan.kind) {
    case Kind::NaN:
    case Kind::Empty:
      return -1;
    case Kind::Greedy:
      return plan.index;
    case Kind::Infinity: {
      const double u = detail::uniform53(gen);
      auto pick = static_cast<std::size_t>(u * static_cast<double>(plan.count));
      for (Index i = 0; i < n; ++i) {
        if (x[i] == std::numeric_limits<Scalar>::infinity() && pick-- == 0)
          return i;
      }
      return -1;  // unreachable
    }
    case Kind::Small: {
      const auto& b = ws.buffers<Scalar>();
      const double target = detail::uniform53(gen) * plan.total;
      double cum = 0;
      Index last = -1;
      for (std::size_t j = 0; j < plan.count; ++j) {
        cum += b.cand_weight[j];
        if (reported<Scalar>(b.cand_weight[j], plan.total) > 0) {
          last = b.cand[j].second;
          if (cum > target)
            return last;
        }
      }
      return last;  // rounding left target >= cum: the last token of positive probability
    }
    case Kind::Large: {
      const Scalar* w = ws.buffers<Scalar>().weight.data();
      const double target = detail::uniform53(gen) * plan.total;
      double cum = 0;
      Index last = -1;
      for (Index i = 0; i < n; ++i) {
        if (plan.kept(x[i], w[i])) {
          cum += double(w[i]);
          if (cum > target && reported<Scalar>(double(w[i]), plan.total) > 0)
            return i;
        }
      }
      // Rounding left target >= cum: the last token of positive probability.
      for (Index i = n - 1; i >= 0; --i) {
        if (plan.kept(x[i], w[i]) && reported<Scalar>(double(w[i]), plan.total) > 0) {
          last = i;
          break;
        }
      }
      return last;
    }
  }
  return -1;
}

// The probability probabilities() reports for token t under `plan` (as a double).
template <class Scalar>
auto Sampler::plan_probability(const Plan<Scalar>& plan, const Scalar* xs, Index t,
                               SamplingWorkspace& ws) const -> double {
  switch (plan.kind) {
    case Kind::NaN:
      return std::numeric_limits<double>::quiet_NaN();
    case Kind::Empty:
      return 0.0;
    case Kind::Greedy:
      return t == plan.index ? 1.0 : 0.0;
    case Kind::Infinity:
      return xs[t] == std::numeric_limits<Scalar>::infinity()
                 ? double(Scalar(1) / static_cast<Scalar>(plan.count))
                 : 0.0;
    case Kind::Small: {
      const auto& b = ws.buffers<Scalar>();
      for (std::size_t j = 0; j < plan.count; ++j) {
        if (b.cand[j].second == t)
          return double(reported<Scalar>(b.cand_weight[j], plan.total));
      }
      return 0.0;
    }
    case Kind::Large: {
      const Scalar w = ws.buffers<Scalar>().weight[static_cast<std::size_t>(t)];
      return plan.kept(xs[t], w) ? double(reported<Scalar>(double(w), plan.total)) : 0.0;
    }
  }
  return 0.0;
}

// fn(j, p_j) for every token j that `plan` may give a positive probability (p_j as
// probabilities() reports it; some may be 0 after rounding), in a fixed order.
template <class Scalar, class Fn>
auto Sampler::for_each_support(const Plan<Scalar>& plan, const Scalar* xs, Index n,
                               SamplingWorkspace& ws, const Fn& fn) const -> void {
  const auto& b = ws.buffers<Scalar>();
  switch (plan.kind) {
    case Kind::NaN:
    case Kind::Empty:
      return;
    case Kind::Greedy:
      fn(plan.index, 1.0);
      return;
    case Kind::Infinity:
      for (Index j = 0; j < n; ++j) {
        if (xs[j] == std::numeric_limits<Scalar>::infinity())
          fn(j, double(Scalar(1) / static_cast<Scalar>(plan.count)));
      }
      return;
    case Kind::Small:
      for (std::size_t c = 0; c < plan.count; ++c)
        fn(b.cand[c].second, double(reported<Scalar>(b.cand_weight[c], plan.total)));
      return;
    case Kind::Large:
      for (Index j = 0; j < n; ++j) {
        const Scalar w = b.weight[static_cast<std::size_t>(j)];
        if (plan.kept(xs[j], w))
          fn(j, double(reported<Scalar>(double(w), plan.total)));
      }
      return;
  }
}

}  // namespace softmaxlab
