// The sampler chain (penalties, logit bias, token masks, top-n-sigma, typical-p, top-k, top-p,
// min-p, temperature, in any order) and exact speculative verification:
//   - probabilities() of every stage alone and of chains in several orders against an
//     independent sort-based long double implementation of the documented rules, written here;
//   - chi-square of draws against probabilities(), on the fast and the general path;
//   - Sampler::verify: the emitted tokens follow the target's distribution at every position by
//     chi-square (drafts that put mass where the target has none included), the acceptance rate
//     is sum_j min(p_j, q_j), and every bad argument throws naming it;
//   - sample_rowwise_philox equals per-row Philox draws (so it cannot depend on the threads);
//   - bad options throw naming the option and the value.
// clang-format off
#include "support.hpp"  // first: it configures Eigen (asserts, malloc checks)
// clang-format on

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include <softmaxlab/random.hpp>
#include <softmaxlab/sampling.hpp>

namespace sml = softmaxlab;
using Index = Eigen::Index;
using Stage = sml::SamplerStage;
using LD = long double;
using softmaxlab_test::Worst;

namespace {

// Everything the reference needs, mirrored into SamplerOptions by options_of().
struct Chain {
  double temperature = 1;
  Index top_k = 0;
  double top_p = 1, min_p = 0, typical_p = 1, top_n_sigma = 0;
  double repeat = 1, frequency = 0, presence = 0;
  Index last_n = 64;
  std::vector<std::pair<Index, double>> bias;
  std::vector<bool> mask;      // empty: none
  std::vector<Index> allowed;  // used when use_allowed
  bool use_allowed = false;
  double dry_multiplier = 0, dry_base = 1.75;
  Index dry_allowed = 2, dry_last_n = -1;
  std::vector<Index> dry_breakers;
  double xtc_probability = 0, xtc_threshold = 0.1;
  bool mirostat = false;
  double tau = 3, eta = 0.1, mu = 4.5;  // mirostat v2: the state's mu for probabilities()
  std::vector<Stage> order = sml::SamplerOptions::llama_cpp_order();
  std::string name;
};

sml::SamplerOptions options_of(const Chain& c) {
  sml::SamplerOptions o =
      sml::SamplerOptions()
          .with_order(c.order)
          .with_temperature(c.temperature)
          .with_top_k(c.top_k)
          .with_top_p(c.top_p)
          .with_min_p(c.min_p)
          .with_typical_p(c.typical_p)
          .with_top_n_sigma(c.top_n_sigma)
          .with_penalties(c.repeat, c.frequency, c.presence, c.last_n)
          .with_logit_bias(c.bias)
          .with_xtc(c.xtc_probability, c.xtc_threshold)
          .with_dry(c.dry_multiplier, c.dry_base, c.dry_allowed, c.dry_last_n, c.dry_breakers);
  if (c.mirostat)
    o = o.with_mirostat_v2(c.tau, c.eta);
  if (c.use_allowed)
    o = o.with_allowed_tokens(c.allowed);
  else if (!c.mask.empty())
    o = o.with_token_mask(c.mask);
  return o;
}

struct Reference {
  std::vector<LD> q;
  std::vector<LD> z;  // the final logits (after temperature), for the error scale
  bool ambiguous = false;
};

// The documented rules, one after the other, in long double on a boolean kept set. `tol`: a cut
// whose boundary lies within tol (relative) of its threshold is marked ambiguous (rounding decides
// there, legitimately).
Reference reference_branch(const std::vector<double>& x, const Chain& c,
                           const std::vector<Index>& hist, LD tol, bool xtc_cut) {
  const std::size_t n = x.size();
  const LD inf = std::numeric_limits<LD>::infinity();
  Reference r;
  std::vector<LD> z(x.begin(), x.end());
  if (c.use_allowed) {
    std::vector<bool> ok(n, false);
    for (Index t : c.allowed)
      ok[static_cast<std::size_t>(t)] = true;
    for (std::size_t i = 0; i < n; ++i)
      z[i] = ok[i] ? z[i] : -inf;
  } else if (!c.mask.empty()) {
    for (std::size_t i = 0; i < n; ++i)
      z[i] = c.mask[i] ? z[i] : -inf;
  }
  for (const auto& [t, b] : c.bias)
    z[static_cast<std::size_t>(t)] += b;
  std::vector<bool> kept(n);
  for (std::size_t i = 0; i < n; ++i)
    kept[i] = z[i] > -inf;
  const auto has = [&](Stage s) {
    return std::find(c.order.begin(), c.order.end(), s) != c.order.end();
  };
  auto penalize = [&] {
    const std::size_t w =
        c.last_n < 0 ? hist.size() : std::min(hist.size(), static_cast<std::size_t>(c.last_n));
    std::vector<int> count(n, 0);
    for (std::size_t j = hist.size() - w; j < hist.size(); ++j)
      ++count[static_cast<std::size_t>(hist[j])];
    for (std::size_t i = 0; i < n; ++i) {
      if (count[i] == 0)
        continue;
      z[i] = z[i] <= 0 ? z[i] * c.repeat : z[i] / c.repeat;
      z[i] -= count[i] * c.frequency + c.presence;
    }
  };
  // DRY by its definition: L(v) = the largest L such that some segment h[i-L+1..i] of the window
  // equals the window's last L tokens (none of them a breaker) and is followed by v.
  auto dry = [&] {
    const std::size_t w = c.dry_last_n < 0
                              ? hist.size()
                              : std::min(hist.size(), static_cast<std::size_t>(c.dry_last_n));
    const std::size_t start = hist.size() - w, end = hist.size();
    std::vector<Index> longest(n, 0);
    for (std::size_t i = start; i + 1 < end; ++i) {
      for (std::size_t len = 1; i + 1 >= start + len; ++len) {
        bool breaker = false;
        for (std::size_t m = end - len; m < end; ++m)
          breaker = breaker
                    || std::find(c.dry_breakers.begin(), c.dry_breakers.end(), hist[m])
                           != c.dry_breakers.end();
        if (breaker
            || !std::equal(hist.begin() + static_cast<std::ptrdiff_t>(i + 1 - len),
                           hist.begin() + static_cast<std::ptrdiff_t>(i + 1),
                           hist.begin() + static_cast<std::ptrdiff_t>(end - len)))
          break;
        const auto v = static_cast<std::size_t>(hist[i + 1]);
        longest[v] = std::max(longest[v], static_cast<Index>(len));
      }
    }
    for (std::size_t v = 0; v < n; ++v) {
      if (longest[v] >= c.dry_allowed)
        z[v] -= c.dry_multiplier * std::pow(LD(c.dry_base), LD(longest[v] - c.dry_allowed));
    }
  };
  auto zmax = [&] {
    LD m = -inf;
    for (std::size_t i = 0; i < n; ++i)
      m = kept[i] ? std::max(m, z[i]) : m;
    return m;
  };
  auto probs = [&] {
    const LD m = zmax();
    std::vector<LD> q(n, 0);
    LD s = 0;
    for (std::size_t i = 0; i < n; ++i)
      s += kept[i] ? (q[i] = std::exp(z[i] - m)) : 0;
    for (auto& v : q)
      v /= s;
    return q;
  };
  // Keeps the prefix of `order` (indices of kept tokens sorted by key) reaching mass p, plus the
  // tokens whose key ties the last one.
  auto mass_cut = [&](const std::vector<std::size_t>& order, const std::vector<LD>& key, LD p) {
    const std::vector<LD> q = probs();
    LD cum = 0;
    std::size_t j = 0;
    for (; j < order.size(); ++j) {
      const LD before = cum;
      cum += q[order[j]];
      if (std::fabs(cum - p) <= tol || std::fabs(before - p) <= tol)
        r.ambiguous = true;
      if (cum >= p)
        break;
    }
    j = std::min(j, order.size() - 1);
    const LD last = key[order[j]];
    std::vector<bool> keep(n, false);
    for (std::size_t a = 0; a < order.size(); ++a)
      keep[order[a]] = a <= j || key[order[a]] == last;
    kept = keep;
  };
  auto sorted_by = [&](const std::vector<LD>& key) {
    std::vector<std::size_t> order;
    for (std::size_t i = 0; i < n; ++i)
      if (kept[i])
        order.push_back(i);
    std::stable_sort(order.begin(), order.end(),
                     [&](std::size_t a, std::size_t b) { return key[a] < key[b]; });
    return order;
  };
  if (c.temperature == 0 && has(Stage::Temperature)) {  // greedy after the logit stages
    for (const Stage s : c.order) {
      if (s == Stage::Penalties)
        penalize();
      if (s == Stage::Dry && c.dry_multiplier > 0)
        dry();
    }
    std::size_t best = 0;
    for (std::size_t i = 0; i < n; ++i)
      best = kept[i] && (!kept[best] || z[i] > z[best]) ? i : best;
    r.q.assign(n, 0);
    r.q[best] = 1;
    r.z = z;
    return r;
  }
  for (const Stage s : c.order) {
    if (s == Stage::Penalties) {
      penalize();
    } else if (s == Stage::Dry && c.dry_multiplier > 0) {
      dry();
    } else if (s == Stage::Temperature) {
      for (auto& v : z)
        v /= c.temperature;
    } else if (s == Stage::TopNSigma && c.top_n_sigma > 0) {
      LD sum = 0, cnt = 0, acc = 0;
      for (std::size_t i = 0; i < n; ++i)
        if (kept[i])
          sum += z[i], cnt += 1;
      if (cnt <= 1)
        continue;
      const LD mean = sum / cnt;
      for (std::size_t i = 0; i < n; ++i)
        if (kept[i])
          acc += (z[i] - mean) * (z[i] - mean);
      const LD sigma = std::sqrt(acc / cnt);
      const LD thr = zmax() - c.top_n_sigma * sigma;
      for (std::size_t i = 0; i < n; ++i) {
        if (kept[i] && std::fabs(z[i] - thr) <= tol * (1 + std::fabs(thr)))
          r.ambiguous = true;
        kept[i] = kept[i] && z[i] >= thr;
      }
    } else if (s == Stage::TopK && c.top_k > 0) {
      std::vector<LD> neg(n);
      for (std::size_t i = 0; i < n; ++i)
        neg[i] = -z[i];
      const auto order = sorted_by(neg);
      if (static_cast<std::size_t>(c.top_k) >= order.size())
        continue;
      const LD kth = z[order[static_cast<std::size_t>(c.top_k) - 1]];
      for (std::size_t i = 0; i < n; ++i)
        kept[i] = kept[i] && z[i] >= kth;
    } else if (s == Stage::TypicalP && c.typical_p < 1) {
      const std::vector<LD> q = probs();
      LD h = 0;
      for (std::size_t i = 0; i < n; ++i)
        if (kept[i] && q[i] > 0)
          h -= q[i] * std::log(q[i]);
      std::vector<LD> score(n, inf);
      for (std::size_t i = 0; i < n; ++i)
        if (kept[i])
          score[i] = std::fabs(-std::log(q[i]) - h);
      mass_cut(sorted_by(score), score, c.typical_p);
    } else if (s == Stage::TopP && c.top_p < 1) {
      std::vector<LD> neg(n);
      for (std::size_t i = 0; i < n; ++i)
        neg[i] = -z[i];
      mass_cut(sorted_by(neg), neg, c.top_p);
    } else if (s == Stage::Xtc && xtc_cut) {
      // Leading tokens (by decreasing q, ties by index) with q >= threshold: all but the last of
      // them go when there are at least two.
      const std::vector<LD> q = probs();
      std::vector<LD> neg(n);
      for (std::size_t i = 0; i < n; ++i)
        neg[i] = -q[i];
      const auto order = sorted_by(neg);
      std::size_t above = 0;
      for (std::size_t i : order) {
        if (std::fabs(q[i] - c.xtc_threshold) <= tol * c.xtc_threshold)
          r.ambiguous = true;
      }
      while (above < order.size() && q[order[above]] >= c.xtc_threshold)
        ++above;
      if (above >= 2) {
        for (std::size_t a = 0; a + 1 < above; ++a)
          kept[order[a]] = false;
      }
    } else if (s == Stage::MinP && c.min_p > 0) {
      const LD m = zmax();
      for (std::size_t i = 0; i < n; ++i) {
        const LD ratio = std::exp(z[i] - m);
        if (kept[i] && std::fabs(ratio - c.min_p) <= tol * c.min_p)
          r.ambiguous = true;
        kept[i] = kept[i] && ratio >= c.min_p;
      }
    }
  }
  r.q = probs();
  r.z = z;
  return r;
}

// The chain with XTC's two outcomes mixed by its probability, then mirostat's truncation at mu.
Reference reference(const std::vector<double>& x, const Chain& c, const std::vector<Index>& hist,
                    LD tol) {
  const bool xtc = c.xtc_probability > 0 && c.xtc_threshold <= 0.5 && c.temperature != 0
                   && std::find(c.order.begin(), c.order.end(), Stage::Xtc) != c.order.end();
  Reference r = reference_branch(x, c, hist, tol, xtc && c.xtc_probability >= 1);
  if (xtc && c.xtc_probability < 1) {
    const Reference cut = reference_branch(x, c, hist, tol, true);
    for (std::size_t i = 0; i < x.size(); ++i)
      r.q[i] = (1 - c.xtc_probability) * r.q[i] + c.xtc_probability * cut.q[i];
    r.ambiguous = r.ambiguous || cut.ambiguous;
  }
  if (c.mirostat && c.temperature != 0) {
    std::vector<std::size_t> order(x.size());
    std::iota(order.begin(), order.end(), std::size_t(0));
    std::stable_sort(order.begin(), order.end(),
                     [&](std::size_t a, std::size_t b) { return r.q[a] > r.q[b]; });
    LD total = r.q[order[0]];
    std::size_t keep = 1;
    for (; keep < order.size() && r.q[order[keep]] > 0; ++keep) {
      const LD surprise = -std::log2(r.q[order[keep]]);
      if (std::fabs(surprise - c.mu) <= tol * c.mu)
        r.ambiguous = true;
      if (surprise > c.mu)
        break;
      total += r.q[order[keep]];
    }
    for (std::size_t j = 0; j < order.size(); ++j)
      r.q[order[j]] = j < keep ? r.q[order[j]] / total : 0;
  }
  return r;
}

std::vector<double> random_logits(std::size_t n, bool ties, std::mt19937& rng) {
  std::normal_distribution<double> normal(0.0, 2.5);
  std::vector<double> x(n);
  for (auto& v : x)
    v = ties ? std::round(normal(rng) * 4) / 4 : normal(rng);
  return x;
}

// The chains under test: each stage alone, then chains in llama.cpp's order, temperature first,
// and scrambled orders (which run on the general path).
std::vector<Chain> chains(std::size_t n) {
  std::vector<Chain> out;
  const auto add = [&](Chain c, const char* name) {
    c.name = name;
    c.allowed.erase(std::remove_if(c.allowed.begin(), c.allowed.end(),
                                   [&](Index t) { return t >= static_cast<Index>(n); }),
                    c.allowed.end());
    out.push_back(c);
  };
  Chain c;
  add(c, "plain");
  c = Chain();
  c.repeat = 1.3, c.frequency = 0.2, c.presence = 0.4, c.last_n = 16;
  add(c, "penalties alone");
  c = Chain();
  c.bias = {{1, 2.5}, {5, -1.25}, {7, -std::numeric_limits<double>::infinity()}, {1, 0.5}};
  add(c, "logit bias alone");
  c = Chain();
  c.mask.assign(n, true);
  for (std::size_t i = 0; i < n; i += 3)
    c.mask[i] = false;
  add(c, "boolean mask alone");
  c = Chain();
  c.use_allowed = true;
  c.allowed = {2, 4, 8, 16, 32, 64, 65, 66, 100};
  add(c, "allowed ids alone");
  c = Chain();
  c.top_n_sigma = 1.0;
  add(c, "top-n-sigma alone");
  c = Chain();
  c.typical_p = 0.6;
  add(c, "typical-p alone");
  c = Chain();
  c.top_k = 40;
  add(c, "top-k alone");
  c = Chain();
  c.top_p = 0.9;
  add(c, "top-p alone");
  c = Chain();
  c.min_p = 0.05;
  add(c, "min-p alone");
  c = Chain();
  c.temperature = 0.7;
  add(c, "temperature alone");
  c = Chain();
  c.temperature = 0;
  c.repeat = 1.5, c.last_n = 8;
  add(c, "greedy after penalties");
  // llama.cpp's default chain (penalties over 64 tokens, top-k 40, top-p 0.95, min-p 0.05, T 0.8)
  c = Chain();
  c.repeat = 1.1, c.frequency = 0.05, c.presence = 0.1;
  c.top_k = 40, c.top_p = 0.95, c.min_p = 0.05, c.temperature = 0.8;
  add(c, "llama.cpp default chain (fast, temperature last)");
  c.bias = {{0, 3.0}, {2, -std::numeric_limits<double>::infinity()}, {45, 1.5}, {3, -0.5}};
  add(c, "default chain with a bias (fast: sparse overlay, no copy of the row)");
  c.bias.clear();
  c.top_n_sigma = 1.5;
  add(c, "default chain with top-n-sigma (fast)");
  c.top_n_sigma = 0;
  c.typical_p = 0.9;
  add(c, "default chain with typical-p (general)");
  c.typical_p = 1;
  c.top_k = 0;
  add(c, "default chain without top-k (general: temperature last on the large path)");
  c.top_k = 40;
  c.order = sml::SamplerOptions::temperature_first_order();
  add(c, "temperature first (fast)");
  c.top_k = 0;
  add(c, "temperature first, no top-k (fast, histogram)");
  c.top_k = 40;
  c.bias = {{3, 1.5}, {9, -0.75}};
  c.mask.assign(n, true);
  for (std::size_t i = 1; i < n; i += 4)
    c.mask[i] = false;
  add(c, "bias, mask and penalties, temperature first");
  c.order = {Stage::Temperature, Stage::MinP, Stage::TopP, Stage::Penalties, Stage::TopK};
  add(c, "scrambled order (general)");
  c.order = {Stage::TopP, Stage::Temperature, Stage::TopNSigma, Stage::TypicalP, Stage::MinP};
  c.top_n_sigma = 2, c.typical_p = 0.95;
  add(c, "scrambled order 2 (general)");
  c = Chain();
  c.xtc_probability = 0.5, c.xtc_threshold = 0.05;
  add(c, "XTC alone (probability 0.5)");
  c.xtc_probability = 1, c.xtc_threshold = 0.02;
  add(c, "XTC always");
  c.top_k = 40, c.min_p = 0.02, c.temperature = 0.7, c.xtc_probability = 0.3;
  add(c, "top-k, min-p, XTC, temperature (general)");
  c = Chain();
  c.dry_multiplier = 0.8;
  add(c, "DRY alone");
  c.dry_breakers = {15, 30};
  c.dry_allowed = 3, c.dry_last_n = 50, c.dry_base = 2;
  add(c, "DRY with breakers, window 50");
  c.repeat = 1.1, c.top_k = 40, c.top_p = 0.95, c.min_p = 0.05, c.temperature = 0.8;
  add(c, "llama.cpp default chain with DRY (fast)");
  c.order = {Stage::TopK, Stage::Dry, Stage::Temperature, Stage::TopP};
  add(c, "DRY after top-k (general)");
  c = Chain();
  c.mirostat = true;
  add(c, "mirostat v2 alone (mu 4.5)");
  c.temperature = 0.8, c.mu = 6;
  add(c, "temperature, mirostat v2 (mu 6)");
  c = Chain();
  c.use_allowed = true;
  c.allowed = {0, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89};
  c.repeat = 0.8, c.frequency = -0.3, c.top_k = 5, c.min_p = 0.01, c.temperature = 1.4;
  add(c, "allowed ids with a boosting penalty");
  return out;
}

template <class Scalar>
void check_chains_against_reference() {
  const LD eps = std::numeric_limits<Scalar>::epsilon();
  const LD tol = std::is_same_v<Scalar, float> ? 2e-5L : 1e-10L;
  std::mt19937 rng(2025);
  Worst worst;
  int compared = 0, ambiguous = 0;
  sml::SamplingWorkspace ws;
  for (const std::size_t n : {std::size_t(120), std::size_t(3000)}) {
    for (const bool ties : {false, true}) {
      for (int rep = 0; rep < 3; ++rep) {
        std::vector<double> xd = random_logits(n, ties, rng);
        xd[7 % n] = -std::numeric_limits<double>::infinity();
        std::vector<Scalar> xs(xd.begin(), xd.end());
        std::vector<double> x(xs.begin(), xs.end());  // the exact values the sampler sees
        std::vector<Index> hist;
        std::uniform_int_distribution<Index> pick(0, 20);
        for (int j = 0; j < 60; ++j)
          hist.push_back(pick(rng) * 3 % static_cast<Index>(n));
        for (int j = 20; j < 35; ++j)  // a repeated stretch, so that DRY finds long matches
          hist.push_back(hist[static_cast<std::size_t>(j)]);
        for (const Chain& c : chains(n)) {
          const sml::Sampler s(options_of(c));
          const Reference ref = reference(x, c, hist, tol);
          if (ref.ambiguous) {
            ++ambiguous;
            continue;
          }
          ++compared;
          const Eigen::Map<const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>> xv(
              xs.data(), static_cast<Index>(n));
          Eigen::Matrix<Scalar, Eigen::Dynamic, 1> p(static_cast<Index>(n));
          sml::MirostatState state;
          state.mu = c.mu;
          s.probabilities(xv, p, ws, hist, c.mirostat ? &state : nullptr);
          LD zmax = -INFINITY;
          for (std::size_t i = 0; i < n; ++i)
            zmax = ref.q[i] > 0 ? std::max(zmax, ref.z[i]) : zmax;
          const LD t = c.temperature > 0 ? c.temperature : 1;
          LD xmax = 0;
          for (double v : x)
            xmax = std::isfinite(v) ? std::max<LD>(xmax, std::fabs(v)) : xmax;
          Index support = 0;
          for (std::size_t i = 0; i < n; ++i) {
            const auto ii = static_cast<Index>(i);
            INFO(c.name << " (fast path: " << s.fast_path() << "), n = " << n << ", ties = " << ties
                        << ", token " << i << ": got " << p(ii) << ", reference "
                        << static_cast<double>(ref.q[i]));
            support += p(ii) > 0 ? 1 : 0;
            // Below Scalar's normal range the computed probability may legitimately flush to 0
            // (a heavily penalized token): only the support above it is compared.
            if (ref.q[i] == 0) {
              REQUIRE(p(ii) == 0);  // outside the kept set
              continue;
            }
            if (ref.q[i] < std::numeric_limits<Scalar>::min()) {
              CHECK(p(ii) < std::numeric_limits<Scalar>::min());
              continue;
            }
            REQUIRE(p(ii) > 0);
            // The weights' bound (Softmax's 4 eps (1 + |z - max z|)) plus the rounding of the
            // modified logits (bias, penalties) to Scalar, scaled by 1 / T.
            const LD bound = 8 * (1 + std::fabs(ref.z[i] - zmax) + 4 * xmax / t);
            const LD err = std::fabs(static_cast<LD>(p(ii)) - ref.q[i]) / ref.q[i] / eps;
            worst.update(static_cast<double>(err), static_cast<double>(bound),
                         [&](auto& o) { o << c.name << ", n = " << n << ", token " << i; });
          }
          CHECK(s.kept_count(xv, ws, hist, c.mirostat ? &state : nullptr) == support);
        }
      }
    }
  }
  INFO("compared " << compared << " rows x chains, skipped " << ambiguous
                   << " with a boundary within rounding; worst " << worst.report());
  CHECK(worst.ratio <= 1);
  CHECK(compared > 10 * ambiguous);
}

// Pearson's chi-square of observed counts against probabilities p (cells with p = 0 must be
// empty; cells expected below 5 pooled). Returns {statistic, degrees of freedom}.
std::pair<double, int> chi_square(const std::vector<long>& count, const std::vector<double>& p,
                                  long draws, long& outside) {
  double chi2 = 0, pooled_e = 0, pooled_o = 0;
  int cells = 0;
  outside = 0;
  for (std::size_t i = 0; i < p.size(); ++i) {
    if (p[i] == 0) {
      outside += count[i];
      continue;
    }
    const double e = p[i] * double(draws);
    if (e < 5) {
      pooled_e += e;
      pooled_o += double(count[i]);
      continue;
    }
    chi2 += (double(count[i]) - e) * (double(count[i]) - e) / e;
    ++cells;
  }
  if (pooled_e > 0) {
    chi2 += (pooled_o - pooled_e) * (pooled_o - pooled_e) / pooled_e;
    ++cells;
  }
  return {chi2, cells - 1};
}

// Chi-square at p = 1e-6 is below dof + 7 sqrt(2 dof) + 12 for the degrees of freedom used here.
bool chi_square_passes(double chi2, int dof) {
  return chi2 < dof + 7 * std::sqrt(2.0 * dof) + 12;
}

using softmaxlab_test::FixedWord;

template <class F>
std::string message(F&& f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "(no exception)";
}

}  // namespace

TEST_CASE("Sampler chain: every stage and chain against the long double reference (double)",
          "[sampling][chain]") {
  check_chains_against_reference<double>();
}

TEST_CASE("Sampler chain: every stage and chain against the long double reference (float)",
          "[sampling][chain]") {
  check_chains_against_reference<float>();
}

TEST_CASE("Sampler chain: the fast paths are taken where the doc block says", "[sampling][chain]") {
  const auto fast = [](const sml::SamplerOptions& o) {
    return sml::Sampler(o).fast_path();
  };
  const sml::SamplerOptions llama = sml::SamplerOptions()
                                        .with_penalties(1.1, 0, 0, 64)
                                        .with_top_k(40)
                                        .with_top_p(0.95)
                                        .with_min_p(0.05)
                                        .with_temperature(0.8);
  CHECK(fast(llama));
  CHECK(fast(llama.with_top_n_sigma(1)));
  CHECK(!fast(llama.with_typical_p(0.9)));
  CHECK(!fast(llama.with_top_k(0)));  // temperature last needs the heap path
  CHECK(fast(llama.with_top_k(0).with_order(sml::SamplerOptions::temperature_first_order())));
  CHECK(fast(llama.with_temperature(1).with_top_k(0)));  // T = 1: the order is immaterial
  CHECK(!fast(llama.with_order({Stage::TopP, Stage::TopK, Stage::Temperature})));
}

TEST_CASE("Sampler chain: chi-square of draws against probabilities()", "[sampling][chain]") {
  std::mt19937 rng(11);
  std::vector<double> x = random_logits(50, true, rng);
  x[4] = -std::numeric_limits<double>::infinity();
  const Eigen::Map<const Eigen::VectorXd> xv(x.data(), 50);
  const std::vector<Index> hist = {1, 2, 2, 3, 10, 10, 10, 17};
  std::uint64_t seed = 40;
  for (const Chain& c : chains(50)) {
    if (c.temperature == 0)
      continue;
    const sml::Sampler s(options_of(c));
    sml::SamplingWorkspace ws;
    Eigen::VectorXd p(50);
    sml::MirostatState state;
    state.mu = c.mu;
    s.probabilities(xv, p, ws, hist, c.mirostat ? &state : nullptr);
    std::vector<long> count(50, 0);
    sml::Philox4x32 gen(seed++);
    const long draws = 100000;
    for (long d = 0; d < draws; ++d) {
      sml::MirostatState fresh = state;  // the same mu for every draw: one distribution
      const Index t = c.mirostat ? s.sample(xv, gen, ws, hist, fresh) : s.sample(xv, gen, ws, hist);
      ++count[static_cast<std::size_t>(t)];
    }
    long outside = 0;
    const auto [chi2, dof] =
        chi_square(count, std::vector<double>(p.data(), p.data() + 50), draws, outside);
    INFO(c.name << ": chi2 = " << chi2 << " with " << dof << " degrees of freedom");
    CHECK(outside == 0);
    if (dof >= 1)
      CHECK(chi_square_passes(chi2, dof));
  }
}

TEST_CASE("Sampler chain: masked and banned tokens are never drawn, for any u",
          "[sampling][chain]") {
  // Issue 28's rule through the chain: a token given probability 0 by the mask, a -inf bias or a
  // cut is never drawn, including at u = 0 and u = 1 - 2^-53.
  std::mt19937 rng(3);
  std::vector<float> x(300);
  for (auto& v : x)
    v = static_cast<float>(std::normal_distribution<double>(0, 2)(rng));
  const Eigen::Map<const Eigen::VectorXf> xv(x.data(), 300);
  for (Chain c : chains(300)) {
    c.bias.emplace_back(0, -std::numeric_limits<double>::infinity());
    c.bias.emplace_back(299, -std::numeric_limits<double>::infinity());
    if (c.mirostat)
      continue;  // covered by the reference test (its probabilities need the state)
    const sml::Sampler s(options_of(c));
    const Eigen::VectorXf p = s.probabilities(xv);
    for (const std::uint64_t u53 : {std::uint64_t{0}, std::uint64_t{1}, (std::uint64_t{1} << 52),
                                    (std::uint64_t{1} << 53) - 1, (std::uint64_t{1} << 53) - 2}) {
      FixedWord gen{u53 << 11};
      const Index t = s.sample(xv, gen);
      INFO(c.name << ": u = " << double(u53) * 0x1p-53 << " drew " << t);
      REQUIRE(t >= 0);
      CHECK(p(t) > 0);
    }
  }
}

TEST_CASE("verify: emitted tokens follow the target by chi-square", "[sampling][speculative]") {
  // Target rows p_i (the Sampler's stages applied) and draft rows q_i that differ from them,
  // including mass on tokens the target excludes (a -inf logit, tokens cut by top-k). Drafts are
  // drawn from q_i independently per position, so the token emitted at position j, over the
  // trials that reach j, must follow p_j exactly, whatever happened before it.
  const Index V = 10, k = 3;
  Eigen::MatrixXd target(k + 1, V);
  target << 1.0, 0.5, -0.3, 2.0, 0.0, 0.1, 0.0, -2.0, 1.2, 0.7,  //
      0.2, 1.5, 0.3, -0.5, 0.9, -1.0, 2.2, 0.0, 0.4, -3.0,       //
      -0.4, 0.0, 0.8, 0.8, 1.1, 2.5, -1.5, 0.6, -0.2, 0.3,       //
      0.5, -0.5, 1.0, -1.0, 1.5, -1.5, 2.0, -2.0, 0.0, 0.25;
  target(0, 4) = -std::numeric_limits<double>::infinity();
  Eigen::MatrixXd draft(k, V);
  draft << 0.05, 0.05, 0.1, 0.1, 0.3, 0.1, 0.1, 0.1, 0.05, 0.05,  // 0.3 on the -inf token
      0.3, 0.02, 0.08, 0.1, 0.1, 0.1, 0.05, 0.05, 0.1, 0.1,       //
      0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1;
  for (const auto& named :
       {std::make_pair(std::string("top-k 6, T 0.7 (fast)"),
                       sml::SamplerOptions().with_top_k(6).with_temperature(0.7)),
        std::make_pair(
            std::string("top-p 0.9, typical-p 0.95, T 1.3 (general)"),
            sml::SamplerOptions().with_top_p(0.9).with_typical_p(0.95).with_temperature(1.3))}) {
    const sml::Sampler s(named.second);
    sml::SamplingWorkspace ws;
    std::vector<std::vector<double>> p(static_cast<std::size_t>(k + 1));
    for (Index i = 0; i <= k; ++i) {
      Eigen::VectorXd row(V);
      s.probabilities(target.row(i), row, ws);
      p[static_cast<std::size_t>(i)].assign(row.data(), row.data() + V);
    }
    std::vector<std::discrete_distribution<int>> q;
    for (Index i = 0; i < k; ++i) {
      std::vector<double> w(static_cast<std::size_t>(V));
      for (Index j = 0; j < V; ++j)
        w[static_cast<std::size_t>(j)] = draft(i, j);
      q.emplace_back(w.begin(), w.end());
    }
    std::mt19937_64 draft_rng(77);
    sml::Philox4x32 gen(2302);
    const long trials = 200000;
    std::vector<std::vector<long>> count(static_cast<std::size_t>(k + 1),
                                         std::vector<long>(static_cast<std::size_t>(V), 0));
    std::vector<long> reached(static_cast<std::size_t>(k + 1), 0);
    long accepted_first = 0;
    Eigen::VectorXi drafts(k);
    for (long trial = 0; trial < trials; ++trial) {
      for (Index i = 0; i < k; ++i)
        drafts(i) = q[static_cast<std::size_t>(i)](draft_rng);
      const sml::SpeculativeResult r = s.verify(target, draft, drafts, gen, ws);
      REQUIRE(r.accepted >= 0);
      REQUIRE(r.accepted <= k);
      REQUIRE(r.token >= 0);
      accepted_first += r.accepted >= 1 ? 1 : 0;
      for (Index j = 0; j <= r.accepted; ++j) {
        const Index t = j < r.accepted ? drafts(j) : r.token;
        ++count[static_cast<std::size_t>(j)][static_cast<std::size_t>(t)];
        ++reached[static_cast<std::size_t>(j)];
      }
    }
    for (Index j = 0; j <= k; ++j) {
      long outside = 0;
      const auto [chi2, dof] =
          chi_square(count[static_cast<std::size_t>(j)], p[static_cast<std::size_t>(j)],
                     reached[static_cast<std::size_t>(j)], outside);
      INFO(named.first << ", position " << j << ": " << reached[static_cast<std::size_t>(j)]
                       << " emitted, chi2 = " << chi2 << " with " << dof << " dof");
      CHECK(outside == 0);  // never a token the target gives 0
      CHECK(reached[static_cast<std::size_t>(j)] > 1000);
      CHECK(chi_square_passes(chi2, dof));
    }
    // Acceptance at the first position: probability sum_j min(p_j, q_j) (binomial, 6 sigma).
    double alpha = 0;
    for (Index j = 0; j < V; ++j)
      alpha += std::min(p[0][static_cast<std::size_t>(j)], draft(0, j));
    const double sd = std::sqrt(trials * alpha * (1 - alpha));
    INFO(named.first << ": accepted first " << accepted_first << ", expected " << trials * alpha);
    CHECK(std::fabs(accepted_first - trials * alpha) < 6 * sd);
  }
}

TEST_CASE("verify: a draft equal to the target is always accepted; greedy targets",
          "[sampling][speculative]") {
  const Index V = 6, k = 4;
  std::mt19937 rng(5);
  Eigen::MatrixXf target(k + 1, V);
  for (Index i = 0; i < target.size(); ++i)
    target(i) = static_cast<float>(std::normal_distribution<double>(0, 1)(rng));
  const sml::Sampler s(sml::SamplerOptions().with_top_k(4));
  Eigen::MatrixXf draft(k, V);
  for (Index i = 0; i < k; ++i) {
    Eigen::VectorXf row(V);
    s.probabilities(target.row(i), row);
    draft.row(i) = row.transpose();
  }
  sml::Philox4x32 gen(1);
  Eigen::VectorXi drafts(k);
  for (int trial = 0; trial < 200; ++trial) {
    for (Index i = 0; i < k; ++i) {
      Index t = trial % V;  // a token of the draft's support
      while (draft(i, t) == 0)
        t = (t + 1) % V;
      drafts(i) = static_cast<int>(t);
    }
    const auto r = s.verify(target, draft, drafts, gen);
    CHECK(r.accepted == k);  // q = p: min(1, p / q) = 1 on the support
    CHECK(r.token >= 0);
  }
  // Greedy target: the emitted token is the argmax, whatever the draft.
  const sml::Sampler greedy(sml::SamplerOptions().with_temperature(0));
  Eigen::MatrixXf uniform = Eigen::MatrixXf::Constant(k, V, 1.0f / V);
  for (Index i = 0; i < k; ++i)
    drafts(i) = static_cast<int>(i % V);
  const auto r = greedy.verify(target, uniform, drafts, gen);
  Index argmax;
  target.row(r.accepted).maxCoeff(&argmax);
  CHECK(r.token == argmax);
  for (Index j = 0; j < r.accepted; ++j) {
    target.row(j).maxCoeff(&argmax);
    CHECK(drafts(j) == argmax);
  }
}

TEST_CASE("verify: bad arguments throw, naming them", "[sampling][speculative]") {
  const sml::Sampler s;
  sml::Philox4x32 gen;
  const Eigen::MatrixXd target = Eigen::MatrixXd::Zero(3, 5);
  const Eigen::MatrixXd draft = Eigen::MatrixXd::Constant(2, 5, 0.2);
  Eigen::VectorXi drafts(2);
  drafts << 1, 2;
  CHECK(s.verify(target, draft, drafts, gen).token >= 0);
  CHECK_THAT(message([&] { s.verify(Eigen::MatrixXd::Zero(2, 5), draft, drafts, gen); }),
             Catch::Contains("target_logits") && Catch::Contains("k + 1 = 3"));
  CHECK_THAT(message([&] { s.verify(target, Eigen::MatrixXd::Constant(2, 4, 0.25), drafts, gen); }),
             Catch::Contains("draft_probs must be k x V = 2 x 5"));
  Eigen::VectorXi bad = drafts;
  bad(1) = 5;
  CHECK_THAT(message([&] { s.verify(target, draft, bad, gen); }),
             Catch::Contains("draft_tokens(1)") && Catch::Contains("got 5"));
  bad(1) = -1;
  CHECK_THAT(message([&] { s.verify(target, draft, bad, gen); }),
             Catch::Contains("draft_tokens(1)"));
  Eigen::MatrixXd q = draft;
  q(1, 3) = -0.1;
  CHECK_THAT(message([&] { s.verify(target, q, drafts, gen); }),
             Catch::Contains("draft_probs(1, 3)") && Catch::Contains("-0.1"));
  q(1, 3) = std::numeric_limits<double>::quiet_NaN();
  CHECK_THAT(message([&] { s.verify(target, q, drafts, gen); }),
             Catch::Contains("draft_probs(1, 3)"));
  q = draft * 0.5;
  CHECK_THAT(message([&] { s.verify(target, q, drafts, gen); }),
             Catch::Contains("draft_probs row 0 must sum to 1"));
  q = draft;
  q(0, 1) = 0;
  q(0, 0) = 0.4;
  CHECK_THAT(message([&] { s.verify(target, q, drafts, gen); }),
             Catch::Contains("draft_probs(0, 1) is 0"));
  // k = 0: just the bonus token.
  const auto r =
      s.verify(Eigen::MatrixXd::Zero(1, 5), Eigen::MatrixXd(0, 5), Eigen::VectorXi(0), gen);
  CHECK(r.accepted == 0);
  CHECK(r.token >= 0);
  CHECK(r.token < 5);
  // A NaN target row gives token -1 at that position.
  Eigen::MatrixXd nan_target = target;
  nan_target(0, 2) = std::numeric_limits<double>::quiet_NaN();
  const auto rn = s.verify(nan_target, draft, drafts, gen);
  CHECK(rn.accepted == 0);
  CHECK(rn.token == -1);
}

TEST_CASE("verify: penalties see the history and the drafts before each row",
          "[sampling][speculative]") {
  // With a presence penalty large enough to ban a repeated token in effect, a draft that repeats
  // the previous draft is (almost surely) rejected at its position, and the token emitted at a
  // rejection is never the penalized one.
  const Index V = 4, k = 2;
  const Eigen::MatrixXd target = Eigen::MatrixXd::Zero(k + 1, V);
  const Eigen::MatrixXd draft = Eigen::MatrixXd::Constant(k, V, 0.25);
  const sml::Sampler s(sml::SamplerOptions().with_penalties(1, 0, 100, 64));
  sml::Philox4x32 gen(9);
  sml::SamplingWorkspace ws;
  const std::vector<Index> hist = {3};
  Eigen::VectorXi drafts(k);
  drafts << 1, 1;
  for (int trial = 0; trial < 500; ++trial) {
    const auto r = s.verify(target, draft, drafts, gen, ws, hist);
    REQUIRE(r.accepted <= 1);  // the second 1 repeats the first draft: p = e^-100 / ...
    CHECK(r.token != 3);       // in the history: penalized at every position
    if (r.accepted == 1)
      CHECK(r.token != 1);
  }
}

TEST_CASE("sample_rowwise_philox: row r is sample(L.row(r), Philox4x32(seed, stream + r))",
          "[sampling][batched]") {
  std::mt19937 rng(21);
  Eigen::MatrixXf L(37, 500);  // column-major: strided rows
  for (Index i = 0; i < L.size(); ++i)
    L(i) = static_cast<float>(std::normal_distribution<double>(0, 2)(rng));
  const sml::Sampler s(
      sml::SamplerOptions().with_top_k(40).with_top_p(0.95).with_min_p(0.05).with_temperature(0.8));
  Eigen::VectorXi a(37), b(37);
  s.sample_rowwise_philox(L, 123, a, 1000);
  s.sample_rowwise_philox(L, 123, b, 1000);
  CHECK(a == b);
  for (Index r = 0; r < 37; ++r) {
    sml::Philox4x32 gen(123, 1000 + static_cast<std::uint64_t>(r));
    CHECK(a(r) == s.sample(L.row(r), gen));
  }
  Eigen::VectorXi wrong(3);
  CHECK_THAT(message([&] { s.sample_rowwise_philox(L, 1, wrong); }), Catch::Contains("tokens"));
  const sml::Sampler masked(sml::SamplerOptions().with_token_mask(std::vector<bool>(10, true)));
  CHECK_THAT(message([&] { masked.sample_rowwise_philox(L, 1, a); }),
             Catch::Contains("token_mask") && Catch::Contains("V = 500"));
}

TEST_CASE("Sampler chain: bad options throw, naming the option and the value",
          "[sampling][chain]") {
  using O = sml::SamplerOptions;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  CHECK_THAT(message([] { (void)O().with_typical_p(0); }), Catch::Contains("typical_p"));
  CHECK_THAT(message([] { (void)O().with_typical_p(1.5); }), Catch::Contains("1.5"));
  CHECK_THAT(message([&] { (void)O().with_top_n_sigma(-1); }), Catch::Contains("top_n_sigma"));
  CHECK_THAT(message([&] { (void)O().with_top_n_sigma(nan); }), Catch::Contains("top_n_sigma"));
  CHECK_THAT(message([&] { (void)O().with_top_n_sigma(inf); }), Catch::Contains("top_n_sigma"));
  CHECK_THAT(message([] { (void)O().with_penalties(0, 0, 0); }), Catch::Contains("repeat_penalty"));
  CHECK_THAT(message([&] { (void)O().with_penalties(1, nan, 0); }),
             Catch::Contains("frequency_penalty"));
  CHECK_THAT(message([&] { (void)O().with_penalties(1, 0, inf); }),
             Catch::Contains("presence_penalty"));
  CHECK_THAT(message([] { (void)O().with_penalties(1, 0, 0, -2); }),
             Catch::Contains("penalty_last_n") && Catch::Contains("-2"));
  CHECK_THAT(message([] { (void)O().with_logit_bias(-1, 0.5); }),
             Catch::Contains("logit_bias token") && Catch::Contains("-1"));
  CHECK_THAT(message([&] { (void)O().with_logit_bias(3, inf); }), Catch::Contains("logit_bias"));
  CHECK_THAT(message([&] { (void)O().with_logit_bias(3, nan); }), Catch::Contains("logit_bias"));
  CHECK_THAT(message([] {
               (void)O().with_allowed_tokens({1, -4});
             }),
             Catch::Contains("allowed token") && Catch::Contains("-4"));
  CHECK_THAT(message([&] { (void)O().with_dry(nan); }), Catch::Contains("dry_multiplier"));
  CHECK_THAT(message([] { (void)O().with_dry(0.8, 0.5); }),
             Catch::Contains("dry_base") && Catch::Contains("0.5"));
  CHECK_THAT(message([] { (void)O().with_dry(0.8, 1.75, 0); }),
             Catch::Contains("dry_allowed_length"));
  CHECK_THAT(message([] { (void)O().with_dry(0.8, 1.75, 2, -3); }), Catch::Contains("dry_last_n"));
  CHECK_THAT(message([] {
               (void)O().with_dry(0.8, 1.75, 2, -1, {4, -2});
             }),
             Catch::Contains("breaker") && Catch::Contains("-2"));
  CHECK_THAT(message([] { (void)O().with_xtc(1.5, 0.1); }),
             Catch::Contains("xtc_probability") && Catch::Contains("1.5"));
  CHECK_THAT(message([&] { (void)O().with_xtc(0.5, nan); }), Catch::Contains("xtc_threshold"));
  CHECK_THAT(message([] { (void)O().with_mirostat_v2(0, 0.1); }), Catch::Contains("mirostat_tau"));
  CHECK_THAT(message([] { (void)O().with_mirostat_v2(5, -0.1); }),
             Catch::Contains("mirostat_eta") && Catch::Contains("-0.1"));
  CHECK_THAT(message([] {
               (void)O().with_order({Stage::TopK, Stage::TopP, Stage::TopK});
             }),
             Catch::Contains("order") && Catch::Contains("twice"));
  // Checked against V at the call.
  const Eigen::VectorXd x = Eigen::VectorXd::Zero(8);
  sml::Philox4x32 gen;
  CHECK_THAT(message([&] {
               sml::Sampler(O().with_token_mask(std::vector<bool>(7, true))).sample(x, gen);
             }),
             Catch::Contains("token_mask") && Catch::Contains("V = 8"));
  CHECK_THAT(message([&] {
               sml::Sampler(O().with_allowed_tokens({2, 8})).sample(x, gen);
             }),
             Catch::Contains("allowed token id 8"));
  CHECK_THAT(message([&] { sml::Sampler(O().with_logit_bias(9, 1.0)).sample(x, gen); }),
             Catch::Contains("logit_bias token 9"));
  sml::SamplingWorkspace ws;
  const std::vector<Index> hist = {1, 8};
  CHECK_THAT(message([&] { sml::Sampler(O().with_penalties(1.2, 0, 0)).sample(x, gen, ws, hist); }),
             Catch::Contains("history token 8"));
  // Copies: a with_* call leaves its source unchanged.
  const O base = O().with_top_k(5);
  const O changed = base.with_top_k(7);
  CHECK(base.top_k() == 5);
  CHECK(changed.top_k() == 7);
}

TEST_CASE("Mirostat v2: the state's mu moves by eta (surprise - tau) after each draw",
          "[sampling][chain]") {
  // llama.cpp's update: mu -= eta (-log2 q_t - tau), q_t the drawn token's probability in the
  // truncated distribution, which probabilities() with the same state reports.
  std::mt19937 rng(8);
  std::vector<double> x = random_logits(200, false, rng);
  const Eigen::Map<const Eigen::VectorXd> xv(x.data(), 200);
  const double tau = 4, eta = 0.2;
  const sml::Sampler s(sml::SamplerOptions().with_mirostat_v2(tau, eta));
  sml::MirostatState state(tau);
  CHECK(state.mu == 2 * tau);
  sml::SamplingWorkspace ws;
  sml::Philox4x32 gen(5);
  Eigen::VectorXd p(200);
  for (int step = 0; step < 50; ++step) {
    s.probabilities(xv, p, ws, {}, &state);
    const double before = state.mu;
    const Index t = s.sample(xv, gen, ws, {}, state);
    REQUIRE(p(t) > 0);
    const double expected = before - eta * (-std::log2(p(t)) - tau);
    INFO("step " << step << ": token " << t << ", q " << p(t) << ", mu " << before << " -> "
                 << state.mu);
    CHECK(std::fabs(state.mu - expected) <= 1e-12 * (1 + std::fabs(expected)));
  }
  // Without a state, mirostat refuses to guess one.
  CHECK_THAT(message([&] { s.probabilities(xv, p, ws); }), Catch::Contains("MirostatState"));
  sml::Philox4x32 g;
  CHECK_THAT(message([&] {
               s.verify(Eigen::MatrixXd::Zero(1, 200), Eigen::MatrixXd(0, 200), Eigen::VectorXi(0),
                        g);
             }),
             Catch::Contains("Sampler::verify: mirostat"));
  Eigen::VectorXi tokens(2);
  CHECK_THAT(message([&] { s.sample_rowwise_philox(Eigen::MatrixXd::Zero(2, 200), 1, tokens); }),
             Catch::Contains("sample_rowwise_philox: mirostat"));
}
