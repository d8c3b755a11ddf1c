// softmaxlab: the internals of LinearHeadSampler's TopPMinP path (sampling/linear_head.hpp, whose
// doc block states the rules and bounds) and its 16-bit GEMM: which logits can still reach the
// final kept set of a top-p / min-p / temperature chain while the vocabulary is streamed, the
// chain itself on the surviving candidates with the whole row's normalizer, and the logits of a
// vocabulary block from half or bfloat16 H and W widened to float by parts.
//
// Why the drop rule is exact (q = softmax(z / t) over the whole row at the temperature t in force
// at the cut; m the row max, Z = sum_j exp(z_j / t)):
// clang-format off
//   top-p keeps i  =>  the classes ranked at or after i hold > (1 - p) of the mass, and there
//                      are at most V of them, each of q <= q_i       =>  q_i > (1 - p) / V
//                  =>  z_i > t (log Z + log((1 - p) / V))  >=  t (log Z_seen + log((1 - p) / V))
//   min-p keeps i  =>  exp((z_i - m) / t) >= min_p                  =>  z_i >= m + t log(min_p)
// clang-format on
// (Z_seen: the sum over the classes read so far, <= Z; the running max <= m.) When top-p follows
// min-p it cuts the min-p set, whose normalizer is >= exp(m / t), so its bound uses m instead of
// log Z. The bounds only rise while the row is read, so a dropped class never returns.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "common.hpp"
#include "lce_kernels.hpp"
#include "sampling_select.hpp"
#include "scalar_types.hpp"

namespace softmaxlab {
namespace detail {

// One stage of a top-p / min-p chain, in the Sampler's order.
enum class HeadCut : unsigned char { Temperature, TopP, MinP };

// A chain of temperature, top-p and min-p (each at most once), and its candidate bounds.
struct HeadCutChain {
  HeadCut stage[3] = {HeadCut::Temperature, HeadCut::Temperature, HeadCut::Temperature};
  int count = 0;
  double temperature = 1, top_p = 1, min_p = 0;
  double t_top_p = 1, t_min_p = 1;  // the temperature in force at each cut
  bool top_p_first = false;         // top-p cuts the whole row: it needs the row's normalizer

  // Appends a stage (the caller passes only the stages that are on).
  void add(HeadCut s) {
    stage[count++] = s;
    bool seen_t = false, seen_cut = false;
    for (int i = 0; i < count; ++i) {
      if (stage[i] == HeadCut::Temperature)
        seen_t = true;
      if (stage[i] == HeadCut::TopP) {
        t_top_p = seen_t ? temperature : 1.0;
        top_p_first = !seen_cut;
        seen_cut = true;
      }
      if (stage[i] == HeadCut::MinP) {
        t_min_p = seen_t ? temperature : 1.0;
        seen_cut = true;
      }
    }
  }

  // The smallest logit that may still be kept, given the running max m of the raw logits and
  // the running log-sum-exp lse of z / t_top_p (both over the classes read so far), for V
  // classes; minus a margin (1e-4 t absolute and 1e-6 relative in z, a 1e-3 relative loss of
  // (1 - p)) that covers the Sampler's rounding of its weights and sums. -inf: keep everything.
  double threshold(double m, double lse, Index v) const {
    const double inf = std::numeric_limits<double>::infinity();
    if (m == inf)
      return inf;  // +inf logits take all the mass
    if (m == -inf)
      return -inf;
    double bound = -inf, t = 1;
    const double tail = 0.999 * (1.0 - top_p) - 1e-6;  // (1 - p), less the sums' rounding
    if (top_p < 1.0 && tail > 0) {
      const double log_tail = std::log(tail / static_cast<double>(std::max<Index>(v, 1)));
      bound = top_p_first ? t_top_p * (lse + log_tail) : m + t_top_p * log_tail;
      t = t_top_p;
    }
    if (min_p > 0.0) {
      const double b = m + t_min_p * std::log(min_p);
      if (b > bound) {
        bound = b;
        t = t_min_p;
      }
    }
    return bound == -inf ? -inf : bound - 1e-4 * t - 1e-6 * std::fabs(bound);
  }
};

// The per-token state of the candidate pass.
struct HeadCutState {
  double m = -std::numeric_limits<double>::infinity();      // running max of the raw logits
  double lse_m = -std::numeric_limits<double>::infinity();  // running lse of z / t: max part
  long double lse_s = 0;                                    // and sum part
  double threshold = -std::numeric_limits<double>::infinity();
  std::size_t trigger = 0;  // the candidate count that triggers a compaction
  bool nan = false, overflow = false;
  double lse() const { return lse_s > 0 ? lse_m + static_cast<double>(std::log(lse_s)) : lse_m; }
};

// The chain's final weights on the candidates c (sorted by class; their logits, +inf included
// when the row has one): weight[j] (0 when cut), returning their sum. `lse` is the whole row's
// log-sum-exp of z / t_top_p (used when top-p cuts first). In double with long double sums, the
// stage rules of Sampler's general path (ties at the top-p boundary kept). A row with +inf
// logits: weight 1 on each of them (the Sampler's rule).
template <class Scalar>
long double head_chain_weights(const HeadCutChain& ch,
                               const std::vector<std::pair<Scalar, Index>>& c, double lse,
                               std::vector<double>& y, std::vector<double>& weight,
                               std::vector<std::pair<double, std::size_t>>& order) {
  const double inf = std::numeric_limits<double>::infinity();
  const std::size_t n = c.size();
  y.resize(n);
  weight.assign(n, 0.0);
  bool any_inf = false;
  for (std::size_t j = 0; j < n; ++j) {
    y[j] = static_cast<double>(c[j].first);
    any_inf = any_inf || y[j] == inf;
  }
  if (any_inf) {
    long double count = 0;
    for (std::size_t j = 0; j < n; ++j) {
      weight[j] = y[j] == inf ? 1.0 : 0.0;
      count += weight[j];
    }
    return count;
  }
  const auto y_max = [&] {
    double m = -inf;
    for (std::size_t j = 0; j < n; ++j)
      m = std::max(m, y[j]);
    return m;
  };
  for (int s = 0; s < ch.count; ++s) {
    switch (ch.stage[s]) {
      case HeadCut::Temperature:
        for (std::size_t j = 0; j < n; ++j)
          y[j] /= ch.temperature;
        break;
      case HeadCut::TopP: {
        const double m = y_max();
        order.clear();
        long double total = 0;
        for (std::size_t j = 0; j < n; ++j) {
          if (y[j] > -inf) {
            order.emplace_back(-y[j], j);
            total += std::exp(y[j] - m);
          }
        }
        if (ch.top_p_first)  // the whole row's normalizer, not the candidates'
          total = std::exp(static_cast<long double>(lse) - m);
        std::sort(order.begin(), order.end());  // decreasing logit, ties by class
        long double cum = 0;
        std::size_t keep = 0;
        while (keep < order.size()) {
          cum += std::exp(y[order[keep].second] - m);
          ++keep;
          if (cum >= ch.top_p * total)
            break;
        }
        while (keep < order.size() && order[keep].first == order[keep - 1].first)
          ++keep;
        for (std::size_t r = keep; r < order.size(); ++r)
          y[order[r].second] = -inf;
        break;
      }
      case HeadCut::MinP: {
        const double m = y_max();
        for (std::size_t j = 0; j < n; ++j) {
          if (std::exp(y[j] - m) < ch.min_p)
            y[j] = -inf;
        }
        break;
      }
    }
  }
  const double m = y_max();
  long double total = 0;
  for (std::size_t j = 0; j < n; ++j) {
    weight[j] = m > -inf ? std::exp(y[j] - m) : 0.0;
    total += weight[j];
  }
  return total;
}

// The position in c of the token drawn from `weight` (total `total`) with one 53-bit uniform of
// gen (two words, as Sampler::sample): in class order when `by_class` (the Sampler's fast path
// walks the row so), else by decreasing weight, ties by class (its general path); a weight
// whose probability rounds to 0 in Scalar is never drawn. -1 when nothing has weight.
template <class Scalar, class Gen>
std::ptrdiff_t head_chain_draw(const std::vector<double>& weight, long double total, bool by_class,
                               Gen& gen, std::vector<std::pair<double, std::size_t>>& order) {
  if (!(total > 0))
    return -1;
  order.clear();
  for (std::size_t j = 0; j < weight.size(); ++j) {
    if (weight[j] > 0)
      order.emplace_back(by_class ? 0.0 : -weight[j], j);
  }
  if (!by_class)
    std::sort(order.begin(), order.end());  // decreasing weight, ties by class (no allocation)
  // By class: the weights and their sum (the fast path's total); else the probabilities and
  // their sum in draw order (the general path's).
  long double sum = 0;
  for (const auto& e : order)
    sum += by_class ? weight[e.second] : static_cast<double>(weight[e.second] / total);
  const double target = uniform53(gen) * static_cast<double>(sum);
  double cum = 0;
  std::ptrdiff_t last = -1;
  for (const auto& e : order) {
    const double w = by_class ? weight[e.second] : static_cast<double>(weight[e.second] / total);
    cum += w;
    if (static_cast<Scalar>(weight[e.second] / total) > Scalar(0)) {
      last = static_cast<std::ptrdiff_t>(e.second);
      if (cum > target)
        return last;
    }
  }
  return last;  // rounding left target >= cum: the last token of positive probability
}

// z (nt x len, row-major, any outer stride) = hr W[c0 : c0 + len]^T: directly for float and
// double, else W's rows widened to the compute type C in chunks of at most 512 KB (into `wide`)
// by lce_widen's conversion, so no copy of W is made.
template <class XH, class XW, class Z, class C>
void head_gemm(const XH& hr, const XW& w, Index c0, Index len, Z&& z, std::vector<C>& wide) {
  using In = typename XW::Scalar;
  if constexpr (std::is_same_v<In, C>) {
    z.noalias() = hr * w.middleRows(c0, len).transpose();
  } else {
    const Index d = w.cols();
    const Index chunk =
        std::max<Index>(1, std::min<Index>(len, (Index(1) << 17) / std::max<Index>(d, 1)));
    if (wide.size() < static_cast<std::size_t>(chunk * d))
      wide.resize(static_cast<std::size_t>(chunk * d));
    constexpr int order = XW::IsRowMajor ? Eigen::RowMajor : Eigen::ColMajor;
    for (Index j = 0; j < len; j += chunk) {
      const Index c = std::min(chunk, len - j);
      Eigen::Map<Eigen::Matrix<C, Eigen::Dynamic, Eigen::Dynamic, order>> wc(wide.data(), c, d);
      lce_widen<C>(w.middleRows(c0 + j, c), wc);
      z.middleCols(j, c).noalias() = hr * wc.transpose();
    }
  }
}

}  // namespace detail
}  // namespace softmaxlab
