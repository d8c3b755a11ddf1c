// softmaxlab: the sampler's chain: configuration, input preparation (bias, masks), the penalties, DRY, top-n-sigma, the stages in order, and the general (sorting) path. Part of sampler.hpp (included at its end, and
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

// Which stages are on, and whether their order allows the fast paths: [penalties]
// [top-n-sigma] applied to a copy of the row, then top-k, top-p, min-p in this relative order
// with temperature before top-p and min-p or after both (the latter on the heap path only).
inline auto Sampler::configure() -> void {
  const auto in_order = [&](SamplerStage st) {
    return std::find(o_.order().begin(), o_.order().end(), st) != o_.order().end();
  };
  greedy_ = in_order(SamplerStage::Temperature) && o_.temperature() == 0.0;
  temp_ = in_order(SamplerStage::Temperature) && !greedy_ ? o_.temperature() : 1.0;
  penalties_on_ = in_order(SamplerStage::Penalties)
                  && (o_.repeat_penalty() != 1.0 || o_.frequency_penalty() != 0.0
                      || o_.presence_penalty() != 0.0)
                  && o_.penalty_last_n() != 0;
  sigma_on_ = !greedy_ && in_order(SamplerStage::TopNSigma) && o_.top_n_sigma() > 0.0;
  k_ = in_order(SamplerStage::TopK) ? o_.top_k() : 0;
  typical_ = in_order(SamplerStage::TypicalP) ? o_.typical_p() : 1.0;
  p_ = in_order(SamplerStage::TopP) ? o_.top_p() : 1.0;
  minp_ = in_order(SamplerStage::MinP) ? o_.min_p() : 0.0;
  xtc_on_ = in_order(SamplerStage::Xtc) && o_.xtc_probability() > 0.0 && o_.xtc_threshold() <= 0.5;
  mirostat_on_ = o_.mirostat_v2();
  dry_on_ = in_order(SamplerStage::Dry) && o_.dry_multiplier() > 0.0 && o_.dry_last_n() != 0;
  fast_ = true;
  temp_last_ = false;
  if (greedy_)
    return;  // the argmax after the logit stages: the other stages play no part
  std::vector<SamplerStage> seq;
  for (const SamplerStage st : o_.order()) {
    const bool on =
        (st == SamplerStage::Penalties && penalties_on_)
        || (st == SamplerStage::TopNSigma && sigma_on_) || (st == SamplerStage::TopK && k_ > 0)
        || (st == SamplerStage::TypicalP && typical_ < 1.0)
        || (st == SamplerStage::TopP && p_ < 1.0) || (st == SamplerStage::MinP && minp_ > 0.0)
        || (st == SamplerStage::Temperature && temp_ != 1.0) || (st == SamplerStage::Xtc && xtc_on_)
        || (st == SamplerStage::Dry && dry_on_);
    if (on)
      seq.push_back(st);
  }
  std::size_t pos = 0;
  if (pos < seq.size() && seq[pos] == SamplerStage::Penalties)
    ++pos;
  if (pos < seq.size() && seq[pos] == SamplerStage::Dry)
    ++pos;
  if (pos < seq.size() && seq[pos] == SamplerStage::TopNSigma)
    ++pos;
  int last_rank = -1, cuts = 0, cuts_before_t = 0;
  bool seen_t = false;
  for (; pos < seq.size(); ++pos) {
    const SamplerStage st = seq[pos];
    if (st == SamplerStage::Temperature) {
      seen_t = true;
      continue;
    }
    const int rank = st == SamplerStage::TopK   ? 0
                     : st == SamplerStage::TopP ? 1
                     : st == SamplerStage::MinP ? 2
                                                : -1;
    if (rank < 0 || rank < last_rank)
      fast_ = false;
    last_rank = rank;
    if (rank >= 1) {
      ++cuts;
      cuts_before_t += seen_t ? 0 : 1;
    }
  }
  if (seen_t && cuts > 0 && cuts_before_t > 0) {
    if (cuts_before_t < cuts)
      fast_ = false;  // temperature between top-p and min-p
    temp_last_ = true;
    if (!(k_ > 0 && k_ <= kHeapMaxK))
      fast_ = false;  // temperature last beyond the heap path: the general path
  }
  if (mirostat_on_)
    fast_ = false;
}

// The mask's and the bias's token ids against the vocabulary size n.
inline auto Sampler::check_vocabulary(Index n) const -> void {
  if (!o_.has_allowed_tokens() && !o_.token_mask().empty()
      && static_cast<Index>(o_.token_mask().size()) != n) {
    detail::fail("Sampler: token_mask must have one entry per token (V = ", n, "), but has ",
                 o_.token_mask().size());
  }
  for (const Index t : o_.allowed_tokens()) {
    if (t >= n)
      detail::fail("Sampler: allowed token id ", t, " must be < V = ", n);
  }
  for (const auto& e : o_.logit_bias()) {
    if (e.first >= n)
      detail::fail("Sampler: logit_bias token ", e.first, " must be < V = ", n);
  }
}

inline auto Sampler::penalty_window(const TokenHistory& h) const -> Index {
  if (!penalties_on_)
    return 0;
  return o_.penalty_last_n() < 0 ? h.size() : std::min(h.size(), o_.penalty_last_n());
}

// The row the chain reads: x itself, or a copy with the mask, the bias and (on the fast paths)
// the penalties and top-n-sigma applied. The mask and the bias cost O(entries) beyond the copy
// (a boolean mask O(V)); the penalties O(window log window).
template <class XprX>
auto Sampler::prepare(const Eigen::DenseBase<XprX>& x, SamplingWorkspace& ws,
                      const TokenHistory& h) const -> const typename XprX::Scalar* {
  using Scalar = typename XprX::Scalar;
  const Scalar inf = std::numeric_limits<Scalar>::infinity();
  auto& b = ws.buffers<Scalar>();
  const Index n = x.size();
  const Scalar* xs = detail::contiguous_row<Scalar>(x, b.row);
  const bool masked = o_.has_allowed_tokens() || !o_.token_mask().empty();
  const bool penalties = fast_ && penalty_window(h) > 0;
  const bool dry = fast_ && dry_on_ && h.size() > 1;
  const bool sigma = fast_ && sigma_on_;
  b.overlay_on = false;
  if (!masked && o_.logit_bias().empty() && !penalties && !dry && !sigma)
    return xs;
  check_vocabulary(n);
  if (!masked && !sigma && !greedy_ && k_ > 0 && k_ <= kHeapMaxK) {
    // Only sparse stages on the heap path: their few modified logits go to an overlay that
    // the selection reads through patched 64-logit blocks; the row is not copied.
    auto& ov = b.overlay;
    ov.clear();
    const auto at = [&](Index t) -> Scalar& {
      auto it = std::lower_bound(ov.begin(), ov.end(), t,
                                 [](const auto& e, Index v) { return e.first < v; });
      if (it == ov.end() || it->first != t)
        it = ov.insert(it, {t, xs[t]});
      return it->second;
    };
    for (const auto& e : o_.logit_bias()) {
      Scalar& v = at(e.first);
      v = apply_bias(v, e.second);
    }
    if (penalties)
      apply_penalties(at, n, ws, h);
    if (dry)
      apply_dry(at, n, ws, h);
    // Tokens whose logit is +inf or NaN keep the dense path (the Infinity and NaN rules read
    // the row itself).
    bool plain = true;
    for (const auto& e : ov)
      plain = plain && (xs[e.first] == -inf || std::isfinite(xs[e.first]));
    if (plain) {
      b.overlay_on = true;
      return xs;
    }
  }
  if (b.modified.size() < static_cast<std::size_t>(n))
    b.modified.resize(static_cast<std::size_t>(n));
  Scalar* y = b.modified.data();
  if (o_.has_allowed_tokens()) {
    std::fill(y, y + n, -inf);
    for (const Index t : o_.allowed_tokens())
      y[t] = xs[t];
  } else if (!o_.token_mask().empty()) {
    const std::vector<bool>& keep = o_.token_mask();
    for (Index i = 0; i < n; ++i)  // a NaN stays (the row's NaN policy)
      y[i] = keep[static_cast<std::size_t>(i)] || xs[i] != xs[i] ? xs[i] : -inf;
  } else if (y != xs) {
    std::copy(xs, xs + n, y);
  }
  for (const auto& e : o_.logit_bias())
    y[e.first] = apply_bias(y[e.first], e.second);
  const auto dense = [y](Index t) -> Scalar& {
    return y[t];
  };
  if (penalties)
    apply_penalties(dense, n, ws, h);
  if (dry)
    apply_dry(dense, n, ws, h);
  if (sigma)
    top_n_sigma_in_place(y, n);
  return y;
}

// The logit v after a bias b: b = -inf bans (even a +inf logit; a NaN stays).
template <class T>
auto Sampler::apply_bias(T v, double bias) -> T {
  if (bias == -std::numeric_limits<double>::infinity())
    return v != v ? v : -std::numeric_limits<T>::infinity();
  return clamp_finite<T>(static_cast<double>(v) + bias, v);
}

// v, except that a finite input pushed beyond the range of T by a stage stays finite (the
// largest finite value of its sign): a penalty or a bias must not create an infinity.
template <class T>
auto Sampler::clamp_finite(double v, T before) -> T {
  const double big = static_cast<double>(std::numeric_limits<T>::max());
  if (std::isfinite(static_cast<double>(before)) && !(std::fabs(v) <= big) && v == v)
    return static_cast<T>(v > 0 ? big : -big);
  return static_cast<T>(v);
}

// llama.cpp's penalties (llama_sampler_penalties_apply): for each token of count c > 0 in the
// window, z = z <= 0 ? z * repeat : z / repeat, then z -= c * frequency + presence.
// z(t) returns a reference to token t's logit (a dense row, or the sparse overlay).
template <class Z>
auto Sampler::apply_penalties(const Z& z, Index n, SamplingWorkspace& ws,
                              const TokenHistory& h) const -> void {
  using T = std::remove_reference_t<decltype(z(Index(0)))>;
  const Index w = penalty_window(h);
  if (w == 0)
    return;
  std::vector<Index>& t = ws.tokens();
  t.assign(h.data() + (h.size() - w), h.data() + h.size());
  for (std::size_t j = 0; j < t.size(); ++j) {
    if (t[j] < 0 || t[j] >= n)
      detail::fail("Sampler: history token ", t[j], " (", j,
                   "th of the penalty window) must be in [0, V = ", n, ")");
  }
  std::sort(t.begin(), t.end());
  for (std::size_t j = 0; j < t.size();) {
    std::size_t e = j;
    while (e < t.size() && t[e] == t[j])
      ++e;
    const double count = static_cast<double>(e - j);
    T& zt = z(t[j]);
    const T before = zt;
    double v = static_cast<double>(before);
    v = v <= 0 ? v * o_.repeat_penalty() : v / o_.repeat_penalty();
    v -= count * o_.frequency_penalty() + o_.presence_penalty();
    zt = clamp_finite<T>(v, before);
    j = e;
  }
}

// DRY (see SamplerOptions::with_dry): for each position i of the window but the last, the
// length of the match between the window's end and the segment ending at i (stopping at a
// breaker in the end part, or at the window's start), credited to the token h[i + 1]. Cost
// O(w L), L the matched lengths: O(w^2) on a window of one repeated token.
template <class Z>
auto Sampler::apply_dry(const Z& z, Index n, SamplingWorkspace& ws, const TokenHistory& h) const
    -> void {
  using T = std::remove_reference_t<decltype(z(Index(0)))>;
  const Index w = o_.dry_last_n() < 0 ? h.size() : std::min(h.size(), o_.dry_last_n());
  if (w < 2)
    return;
  const Index* t = h.data() + (h.size() - w);
  for (Index j = 0; j < w; ++j) {
    if (t[j] < 0 || t[j] >= n)
      detail::fail("Sampler: history token ", t[j], " (", j,
                   "th of the DRY window) must be in [0, V = ", n, ")");
  }
  const auto& breakers = o_.dry_breakers();
  const auto is_breaker = [&](Index v) {
    return std::binary_search(breakers.begin(), breakers.end(), v);
  };
  std::vector<Index>& best = ws.tokens();  // (token, length) pairs, flattened
  best.clear();
  for (Index i = 0; i + 1 < w; ++i) {
    Index len = 0;
    while (len <= i && t[i - len] == t[w - 1 - len] && !is_breaker(t[w - 1 - len]))
      ++len;
    if (len >= o_.dry_allowed_length()) {
      best.push_back(t[i + 1]);
      best.push_back(len);
    }
  }
  // The longest match per token, then one penalty each.
  for (std::size_t a = 0; a < best.size(); a += 2) {
    const Index token = best[a];
    Index len = best[a + 1];
    bool first = true;
    for (std::size_t c = 0; c < best.size(); c += 2) {
      if (best[c] == token) {
        if (c < a) {
          first = false;
          break;
        }
        len = std::max(len, best[c + 1]);
      }
    }
    if (!first)
      continue;
    T& zt = z(token);
    const T before = zt;
    const double penalty =
        o_.dry_multiplier()
        * std::pow(o_.dry_base(), static_cast<double>(len - o_.dry_allowed_length()));
    zt = clamp_finite<T>(static_cast<double>(before) - penalty, before);
  }
}

// Top-n-sigma (Tang et al. 2024, arXiv 2411.07641; llama.cpp's top_n_sigma): over the finite
// entries, mean and population standard deviation sigma; every entry below max - n sigma
// becomes -inf. Skipped for a row holding a NaN or +inf (their own rules apply).
template <class Scalar>
auto Sampler::top_n_sigma_in_place(Scalar* y, Index n) const -> void {
  const Scalar inf = std::numeric_limits<Scalar>::infinity();
  double sum = 0, mx = -std::numeric_limits<double>::infinity();
  Index count = 0;
  for (Index i = 0; i < n; ++i) {
    if (y[i] != y[i] || y[i] == inf)
      return;
    if (y[i] > -inf) {
      sum += y[i];
      mx = std::max<double>(mx, y[i]);
      ++count;
    }
  }
  if (count <= 1)
    return;
  const double mean = sum / static_cast<double>(count);
  double acc = 0;
  for (Index i = 0; i < n; ++i) {
    if (y[i] > -inf)
      acc += (y[i] - mean) * (y[i] - mean);
  }
  const double threshold = mx - o_.top_n_sigma() * std::sqrt(acc / static_cast<double>(count));
  for (Index i = 0; i < n; ++i) {
    if (static_cast<double>(y[i]) < threshold)
      y[i] = -inf;
  }
}

// Any order of the stages (each applied to the distribution the previous ones left, exactly as
// the doc block states), in double with sorts: O(V log V). The kept set and its weights go
// where the heap path puts them (cand, cand_weight, by decreasing weight), so the Small draw,
// probabilities() and kept_count() serve both.
// One run of the chain; `xtc_cut`: whether XTC removes (its random decision taken). Writes the
// final distribution as (index, probability) sorted by index.
template <class Scalar>
auto Sampler::run_chain(const Scalar* x, Index n, SamplingWorkspace& ws, const TokenHistory& h,
                        bool xtc_cut, std::vector<std::pair<Index, double>>& out) const -> void {
  std::vector<double>& z = ws.chain();
  z.assign(x, x + n);
  std::vector<std::pair<double, Index>>& kept = ws.keyed();
  kept.clear();
  for (Index i = 0; i < n; ++i) {
    if (z[static_cast<std::size_t>(i)] > -std::numeric_limits<double>::infinity())
      kept.emplace_back(0.0, i);
  }
  const auto zi = [&](Index i) -> double& {
    return z[static_cast<std::size_t>(i)];
  };
  const auto z_max = [&] {
    double m = -std::numeric_limits<double>::infinity();
    for (const auto& e : kept)
      m = std::max(m, zi(e.second));
    return m;
  };
  // Keeps the first c entries of `kept` (sorted by the caller's key) plus the following ones
  // whose key equals the c-th's (ties at the boundary are kept).
  const auto cut_sorted = [&](std::size_t c) {
    while (c < kept.size() && kept[c].first == kept[c - 1].first)
      ++c;
    kept.resize(c);
  };
  // The smallest prefix of `kept` (in its current order) whose weight reaches p of the total.
  const auto mass_prefix = [&](double p) {
    const double m = z_max();
    long double total = 0;
    for (const auto& e : kept)
      total += std::exp(zi(e.second) - m);
    long double cum = 0;
    std::size_t c = 0;
    while (c < kept.size()) {
      cum += std::exp(zi(kept[c].second) - m);
      ++c;
      if (cum >= p * total)
        break;
    }
    return c;
  };
  const auto by_key = [](const std::pair<double, Index>& a, const std::pair<double, Index>& c) {
    return a.first < c.first || (a.first == c.first && a.second < c.second);
  };
  for (const SamplerStage st : o_.order()) {
    switch (st) {
      case SamplerStage::Penalties: {
        if (penalty_window(h) == 0)
          break;
        // A kept (finite) logit stays finite (clamp_finite): the kept set is unchanged.
        apply_penalties([&](Index t) -> double& { return zi(t); }, n, ws, h);
        break;
      }
      case SamplerStage::Dry: {
        if (!dry_on_)
          break;
        apply_dry([&](Index t) -> double& { return zi(t); }, n, ws, h);
        break;
      }
      case SamplerStage::Temperature:
        if (temp_ != 1.0) {
          for (const auto& e : kept)
            zi(e.second) = clamp_finite<double>(zi(e.second) / temp_, zi(e.second));
        }
        break;
      case SamplerStage::TopNSigma: {
        if (!sigma_on_ || kept.size() <= 1)
          break;
        long double sum = 0, acc = 0;
        for (const auto& e : kept)
          sum += zi(e.second);
        const long double mean = sum / static_cast<long double>(kept.size());
        for (const auto& e : kept)
          acc += (zi(e.second) - mean) * (zi(e.second) - mean);
        const long double threshold =
            z_max() - o_.top_n_sigma() * std::sqrt(acc / static_cast<long double>(kept.size()));
        kept.erase(std::remove_if(kept.begin(), kept.end(),
                                  [&](const auto& e) {
                                    return static_cast<long double>(zi(e.second)) < threshold;
                                  }),
                   kept.end());
        break;
      }
      case SamplerStage::TopK: {
        if (k_ == 0 || k_ >= static_cast<Index>(kept.size()))
          break;
        for (auto& e : kept)
          e.first = -zi(e.second);
        std::sort(kept.begin(), kept.end(), by_key);
        cut_sorted(static_cast<std::size_t>(k_));
        break;
      }
      case SamplerStage::TypicalP: {
        if (typical_ >= 1.0)
          break;
        // Locally typical sampling (Meister et al. 2023, arXiv 2202.00666): order by
        // |-log q_i - H(q)|, keep the smallest prefix of mass >= typical_p (ties kept).
        const double m = z_max();
        long double total = 0;
        for (const auto& e : kept)
          total += std::exp(zi(e.second) - m);
        const long double log_total = std::log(total);
        long double entropy = 0;
        for (const auto& e : kept) {
          const long double log_q = (zi(e.second) - m) - log_total;
          entropy -= std::exp(log_q) * log_q;
        }
        for (auto& e : kept)
          e.first = static_cast<double>(std::fabs(-((zi(e.second) - m) - log_total) - entropy));
        std::sort(kept.begin(), kept.end(), by_key);
        cut_sorted(mass_prefix(typical_));
        break;
      }
      case SamplerStage::TopP: {
        if (p_ >= 1.0)
          break;
        for (auto& e : kept)
          e.first = -zi(e.second);
        std::sort(kept.begin(), kept.end(), by_key);
        cut_sorted(mass_prefix(p_));
        break;
      }
      case SamplerStage::Xtc: {
        if (!xtc_cut || kept.size() < 2)
          break;
        // Sort by decreasing q (ties by index); the leading tokens with q >= threshold: all but
        // the last of them are removed when there are at least two.
        const double m = z_max();
        long double total = 0;
        for (auto& e : kept) {
          e.first = -zi(e.second);
          total += std::exp(zi(e.second) - m);
        }
        std::sort(kept.begin(), kept.end(), by_key);
        std::size_t above = 0;
        while (above < kept.size()
               && std::exp(zi(kept[above].second) - m) >= o_.xtc_threshold() * total)
          ++above;
        if (above >= 2)
          kept.erase(kept.begin(), kept.begin() + static_cast<std::ptrdiff_t>(above - 1));
        break;
      }
      case SamplerStage::MinP: {
        if (minp_ <= 0.0)
          break;
        const double m = z_max();
        kept.erase(
            std::remove_if(kept.begin(), kept.end(),
                           [&](const auto& e) { return std::exp(zi(e.second) - m) < minp_; }),
            kept.end());
        break;
      }
    }
  }
  const double m = z_max();
  long double total = 0;
  for (const auto& e : kept)
    total += std::exp(zi(e.second) - m);
  out.clear();
  for (const auto& e : kept)
    out.emplace_back(e.second, static_cast<double>(std::exp(zi(e.second) - m) / total));
  std::sort(out.begin(), out.end());
}

// The general path: the chain (twice with XTC, mixed by its probability: the draw's law is
// then exactly llama.cpp's, whose XTC takes its own uniform), then mirostat's truncation. The
// kept set and its weights go where the heap path puts them (cand, cand_weight, by decreasing
// weight), so the Small draw, probabilities() and kept_count() serve both.
template <class Scalar>
auto Sampler::general_plan(const Scalar* x, Index n, SamplingWorkspace& ws, const TokenHistory& h,
                           const MirostatState* mirostat) const -> Plan<Scalar> {
  auto& b = ws.buffers<Scalar>();
  std::vector<std::pair<Index, double>>& dist = ws.branch(0);
  const double pi = xtc_on_ ? o_.xtc_probability() : 0.0;
  run_chain(x, n, ws, h, pi >= 1.0, dist);
  if (pi > 0.0 && pi < 1.0) {
    std::vector<std::pair<Index, double>>& cut = ws.branch(1);
    std::vector<std::pair<Index, double>>& mixed = ws.branch(2);
    run_chain(x, n, ws, h, true, cut);
    mixed.clear();
    std::size_t a = 0, c = 0;
    while (a < dist.size() || c < cut.size()) {
      if (c == cut.size() || (a < dist.size() && dist[a].first < cut[c].first)) {
        mixed.emplace_back(dist[a].first, (1 - pi) * dist[a].second);
        ++a;
      } else if (a == dist.size() || cut[c].first < dist[a].first) {
        mixed.emplace_back(cut[c].first, pi * cut[c].second);
        ++c;
      } else {
        mixed.emplace_back(dist[a].first, (1 - pi) * dist[a].second + pi * cut[c].second);
        ++a;
        ++c;
      }
    }
    dist.swap(mixed);
  }
  // Decreasing weight, ties by index: the draw's order.
  std::sort(dist.begin(), dist.end(), [](const auto& u, const auto& v) {
    return u.second > v.second || (u.second == v.second && u.first < v.first);
  });
  std::size_t count = dist.size();
  if (mirostat_on_ && mirostat != nullptr) {
    // Mirostat v2: keep the tokens of surprise -log2 q <= mu, at least the most probable.
    std::size_t keep = 1;
    while (keep < count && -std::log2(dist[keep].second) <= mirostat->mu)
      ++keep;
    count = keep;
  }
  b.cand.clear();
  b.cand_weight.clear();
  long double total = 0;
  for (std::size_t j = 0; j < count; ++j) {
    b.cand.emplace_back(x[dist[j].first], dist[j].first);
    b.cand_weight.push_back(dist[j].second);
    total += dist[j].second;
  }
  Plan<Scalar> plan;
  plan.kind = Kind::Small;
  plan.count = b.cand.size();
  plan.total = static_cast<double>(total);
  return plan;
}

}  // namespace softmaxlab
