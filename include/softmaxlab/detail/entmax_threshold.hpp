// softmaxlab: the threshold solvers of the entmax family (entmax_maps.hpp, entmax_loss.hpp): the
// exact sort-free threshold of Sparsemax and Entmax15 with Sparsemax's exactly decided support,
// the bisection of alpha-entmax, the family's backward, and the per-row form the Fenchel-Young
// losses need (EntmaxRow, the Tsallis entropy). The algorithms and their accuracy are stated in
// entmax_maps.hpp's doc block and checked by tests/test_entmax.cpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>

#include "backward_base.hpp"
#include "checks.hpp"
#include "exact_sum.hpp"
#include "functor_base.hpp"
#include "kernels.hpp"
#include "softmax_rows.hpp"

namespace softmaxlab {
namespace detail {

// Count, sum and sum of squares of the gaps g = (v_j - m) s - t > 0 over a row of raw values v, and
// the smallest such gap: what one step of the threshold search needs.
struct GapMoments {
  Index count = 0;
  double s1 = 0, s2 = 0;
  double min_gap = std::numeric_limits<double>::infinity();
};

template <class Scalar>
GapMoments gap_moments(const Span<const Scalar>& v, double m, double s, double t) {
  GapMoments g;
  for (Index j = 0; j < v.size; ++j) {
    const double gap = (static_cast<double>(v[j]) - m) * s - t;
    if (gap > 0) {
      ++g.count;
      g.s1 += gap;
      g.s2 += gap * gap;
      g.min_gap = std::min(g.min_gap, gap);
    }
  }
  return g;
}

// Copies the entries v_j with (v_j - m) s > t to the front of `to` (which may be v's storage, the
// copy never overtakes the reading) and returns their number.
template <class Scalar>
Index keep_above(const Span<const Scalar>& v, const Span<Scalar>& to, double m, double s,
                 double t) {
  Index k = 0;
  for (Index j = 0; j < v.size; ++j) {
    const Scalar vj = v[j];
    to[k] = vj;  // branch-free compaction
    k += (static_cast<double>(vj) - m) * s > t;
  }
  return k;
}

// Bit j is set when lane j of x is >= floor (x holds no NaN). x86 reads the compare's sign bits
// directly; elsewhere the compare's all-ones lanes (NaN as floating point) are found through the
// stack.
template <class Packet>
EIGEN_STRONG_INLINE unsigned lanes_at_least(const Packet& x, const Packet& floor) {
  using namespace Eigen::internal;
  using Scalar = typename unpacket_traits<Packet>::type;
  constexpr int P = unpacket_traits<Packet>::size;
  alignas(64) Scalar lanes[P];
  pstore(lanes, pcmp_le(floor, x));
  unsigned bits = 0;
  for (int k = 0; k < P; ++k)
    bits |= static_cast<unsigned>(lanes[k] != lanes[k]) << k;
  return bits;
}
#if defined(EIGEN_VECTORIZE_AVX512)
EIGEN_STRONG_INLINE unsigned lanes_at_least(const Eigen::internal::Packet16f& x,
                                            const Eigen::internal::Packet16f& floor) {
  return _mm512_cmp_ps_mask(x, floor, _CMP_GE_OQ);
}
EIGEN_STRONG_INLINE unsigned lanes_at_least(const Eigen::internal::Packet8d& x,
                                            const Eigen::internal::Packet8d& floor) {
  return _mm512_cmp_pd_mask(x, floor, _CMP_GE_OQ);
}
#endif
#if defined(EIGEN_VECTORIZE_AVX)
EIGEN_STRONG_INLINE unsigned lanes_at_least(const Eigen::internal::Packet8f& x,
                                            const Eigen::internal::Packet8f& floor) {
  return static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(x, floor, _CMP_GE_OQ)));
}
EIGEN_STRONG_INLINE unsigned lanes_at_least(const Eigen::internal::Packet4d& x,
                                            const Eigen::internal::Packet4d& floor) {
  return static_cast<unsigned>(_mm256_movemask_pd(_mm256_cmp_pd(x, floor, _CMP_GE_OQ)));
}
#endif

// Index of the lowest set bit of bits != 0.
inline int lowest_bit(unsigned bits) {
#if defined(__GNUC__) || defined(__clang__)
  return __builtin_ctz(bits);
#else
  int k = 0;
  while (!(bits & 1u)) {
    bits >>= 1;
    ++k;
  }
  return k;
#endif
}

// Copies the entries x_i >= floor to the front of `to` (not x's storage) and returns their number:
// the first, widest filter, on packets (a packet without a candidate, the common case, costs one
// compare; one with candidates visits only them).
template <class Scalar>
Index keep_at_least(const Span<const Scalar>& x, const Span<Scalar>& to, Scalar floor) {
  using namespace Eigen::internal;
  using Packet = PacketOf<Scalar>;
  constexpr int P = kPacketSize<Scalar>;
  Index k = 0, i = 0;
  if (x.contiguous() && to.contiguous()) {
    const Packet pf = pset1<Packet>(floor);
    const Scalar* in = x.data;
    Scalar* out = to.data;
    for (; i + P <= x.size; i += P) {
      for (unsigned bits = lanes_at_least(ploadu<Packet>(in + i), pf); bits != 0; bits &= bits - 1)
        out[k++] = in[i + lowest_bit(bits)];
    }
  }
  for (; i < x.size; ++i) {
    const Scalar xi = x[i];
    to[k] = xi;
    k += xi >= floor;
  }
  return k;
}

// The largest Scalar at or below the double v (a safe floor for a candidate filter).
template <class Scalar>
Scalar scalar_floor(double v) {
  const Scalar r = static_cast<Scalar>(v);
  return static_cast<double>(r) <= v ? r
                                     : std::nextafter(r, -std::numeric_limits<Scalar>::infinity());
}

// c = a + b as an unevaluated pair hi + lo, exact (TwoSum), rounded to Scalar: the output passes
// compute (x_i - hi) - lo, whose first difference is exact or rounded relative to the result.
template <class Scalar>
std::pair<Scalar, Scalar> split_shift(double a, double b) {
  const double hi = a + b;
  const double bb = hi - a;
  const double lo = (a - (hi - bb)) + (b - bb);
  const Scalar hs = static_cast<Scalar>(hi);
  return {hs, static_cast<Scalar>((hi - static_cast<double>(hs)) + lo)};
}

// The row's max (NaN-propagating) and, for a row of at least four packets, the per-lane maxima of
// its packet accumulators: one packet of entries of the row at distinct positions (lane j holds the
// largest entry at positions j mod P outside the tail), whose own threshold is a lower bound of the
// row's (a subset's threshold never exceeds the whole row's), so the candidate filter can start far
// closer than m - 1/s.
template <class Scalar>
inline constexpr int kLaneMaxima = 4 * kPacketSize<Scalar>;

template <class Scalar>
Scalar max_with_lanes(const Span<const Scalar>& x, Scalar* lanes, int& lane_count) {
  using namespace Eigen::internal;
  using Packet = PacketOf<Scalar>;
  constexpr int P = kPacketSize<Scalar>;
  if (x.size < 4 * P) {
    const Scalar m = max_propagate_nan(x);
    lanes[0] = m;
    lane_count = 1;
    return m;
  }
  // Strided rows gather each packet through the stack, so every layout meets the same lanes (the
  // result does not depend on the layout).
  const auto load = [&](Index i) -> Packet {
    if (x.stride == 1)
      return ploadu<Packet>(x.data + i);
    alignas(64) Scalar buf[P];
    for (int k = 0; k < P; ++k)
      buf[k] = x[i + k];
    return pload<Packet>(buf);
  };
  const Index n = x.size;
  Packet m0 = load(0), m1 = load(P), m2 = load(2 * P), m3 = load(3 * P);
  Index i = 4 * P;
  for (; i + 4 * P <= n; i += 4 * P) {
    m0 = pmax<Eigen::PropagateNaN>(m0, load(i));
    m1 = pmax<Eigen::PropagateNaN>(m1, load(i + P));
    m2 = pmax<Eigen::PropagateNaN>(m2, load(i + 2 * P));
    m3 = pmax<Eigen::PropagateNaN>(m3, load(i + 3 * P));
  }
  // One packet of lanes (each the max of its 4 accumulators' lanes): fewer, tighter entries.
  pstoreu(lanes, pmax<Eigen::PropagateNaN>(pmax<Eigen::PropagateNaN>(m0, m1),
                                           pmax<Eigen::PropagateNaN>(m2, m3)));
  lane_count = P;
  Scalar m = lanes[0];
  for (int k = 0; k < P; ++k)
    m = (lanes[k] != lanes[k] || lanes[k] > m) ? lanes[k] : m;
  for (; i < n; ++i) {  // the tail: only the max
    const Scalar xi = x[i];
    m = (xi != xi || xi > m) ? xi : m;
  }
  return m;
}

// The threshold t (in the shifted frame d = (x - m) s) with sum_i max(d_i - t, 0)^kPower = 1, for
// a row whose max m is finite; kPower 1 is sparsemax, 2 is 1.5-entmax (s = 1/2). `scratch` is
// y's storage when y is not x (candidates are copied there), else empty. See the header's doc
// block for the algorithm.
template <int kPower, class Scalar>
double sparse_threshold(const Span<const Scalar>& x, const Span<Scalar>& scratch, double m,
                        double s, double t = -1.0) {
  static_assert(kPower == 1 || kPower == 2, "sparse_threshold: kPower is 1 or 2");
  // t: a lower bound of the threshold (f(t) >= 1); -1 always is, the max entry having d = 0.
  Span<const Scalar> v = x;
  // The candidates d_i >= -1 (and no -inf or too-small entry) go to the scratch storage.
  const bool compact = scratch.data != nullptr;
  if (compact) {
    const Index k = keep_at_least(x, scratch, scalar_floor<Scalar>(m + t / s));
    v = Span<const Scalar>{scratch.data, k, scratch.stride};
  }
  constexpr int kMaxSteps = 200;  // far beyond what any row needs: a guard against rounding loops
  bool polished = false;
  for (int step = 0;; ++step) {
    const GapMoments g = gap_moments(v, m, s, t);
    if (g.count == 0)
      return t;  // cannot happen in exact arithmetic (t < threshold < 0 = max d)
    const double k = static_cast<double>(g.count);
    double root;  // the exact threshold if the support is {d > t}, relative to t
    double advance;
    if constexpr (kPower == 1) {
      root = (g.s1 - 1.0) / k;
      advance = root;  // Michelot: never passes the threshold
    } else {
      const double excess = g.s2 - 1.0;  // f(t) - 1 >= 0
      const double disc = g.s1 * g.s1 - k * excess;
      root = disc >= 0 ? excess / (g.s1 + std::sqrt(disc))  // the smaller root, cancellation-free
                       : std::numeric_limits<double>::infinity();
      advance = excess / (2.0 * g.s1);  // Newton on the convex decreasing f
    }
    if (g.min_gap >= root) {
      if (polished)
        return t + root;
      // One more step from the accepted root, over the same candidates: far from the threshold
      // the quadratic's discriminant s1^2 - k (s2 - 1) cancels (relative error ~ k eps: a fuzzed
      // Entmax15 row of 913 equal entries summed to 1 + 1.4e-12); next to it, it does not.
      polished = true;
      t += root;
      continue;
    }
    if (!(advance > 0) || step == kMaxSteps)
      return std::isfinite(root) ? t + root : t + advance;
    t += advance;
    if (compact) {
      const Index k2 = keep_above(v, scratch, m, s, t);
      v = Span<const Scalar>{scratch.data, k2, scratch.stride};
    }
  }
}

// The threshold of a Regular row for Sparsemax (kPower 1, s = 1) or Entmax15 (kPower 2, s = 1/2),
// started from the lane maxima's threshold; the output y serves as scratch unless it is x.
template <int kPower, class Scalar>
double sparse_row_threshold(const Span<const Scalar>& x, const Span<Scalar>& y, Scalar m_s,
                            const Scalar* lanes, int lane_count, double s) {
  const double m = static_cast<double>(m_s);
  double t0 = -1.0;
  if (lane_count > 1) {
    Scalar copy[kLaneMaxima<Scalar>];
    t0 = sparse_threshold<kPower, Scalar>(Span<const Scalar>{lanes, lane_count, 1},
                                          Span<Scalar>{copy, lane_count, 1}, m, s);
    t0 = std::max(-1.0, std::nextafter(t0, -2.0));  // below the subset's root whatever its rounding
  }
  const bool in_place = x.data == y.data;
  return sparse_threshold<kPower>(x, in_place ? Span<Scalar>{nullptr, 0, 1} : y, m, s, t0);
}

// Bisection for alpha-entmax: the threshold t in the shifted frame d = (x - m)(alpha - 1) with
// sum_i max(d_i - t, 0)^p = 1, p = 1 / (alpha - 1).
template <class Scalar>
double bisect_threshold(const Span<const Scalar>& x, const Span<Scalar>& scratch, double m,
                        double s, double p) {
  Span<const Scalar> v = x;
  if (scratch.data != nullptr) {
    const Index k = keep_at_least(x, scratch, scalar_floor<Scalar>(m - 1.0 / s));
    v = Span<const Scalar>{scratch.data, k, scratch.stride};
  }
  const auto f = [&](double t) {
    double sum = 0;
    for (Index j = 0; j < v.size; ++j) {
      const double gap = (static_cast<double>(v[j]) - m) * s - t;
      if (gap > 0)
        sum += std::pow(gap, p);
    }
    return sum;
  };
  double lo = -1.0;                                              // f(lo) >= 1
  double hi = -std::pow(static_cast<double>(x.size), -1.0 / p);  // f(hi) <= 1
  for (int i = 0; i < 200; ++i) {
    const double mid = 0.5 * (lo + hi);
    if (mid <= lo || mid >= hi)
      break;
    (f(mid) >= 1.0 ? lo : hi) = mid;
  }
  return lo;
}

// The unnormalized alpha-entmax weight of an entry x_i, (gap_i / T)^p with gap_i = (x_i - m) s + T,
// T = -tau > 0 (the threshold), s = alpha - 1, p = 1 / s: formed as exp(p log1p(z)), z = (x_i - m)
// s / T in (-1, 0], never as pow(gap, p). The gap, near T for small s, would carry a rounding of
// eps T that the power amplifies by p (3e-6 at alpha = 1 + 1e-12), where z's rounding is relative
// to z itself: p log1p(z) is then within a few eps of (1 + |x_i - m| / T), whatever alpha, and
// tends to (x_i - m) / T, softmax's exponent, as alpha -> 1. Weights lie in [0, 1], 1 at the max.
struct EntmaxWeight {
  double m, s, p, t;
  double operator()(double xi) const {
    const double z = (xi - m) * s / t;
    return z > -1.0 ? std::exp(p * std::log1p(z)) : 0.0;
  }
};

// Sparsemax's support decided exactly: the entry x_i is in the support {x_i > tau} exactly when
// f(x_i) = sum_j max(x_j - x_i, 0) < 1 (f is strictly decreasing below the max and f(tau) = 1), a
// sign that ExactSum decides without rounding. Entries outside the doubt window [lo, hi] around
// c = m + tau (the computed threshold in x's frame, widened by its error bound) are decided by the
// comparison with c alone: the computed threshold cannot misplace them. Entries inside it (ties,
// and near-ties) are decided by the exact test.
template <class Scalar>
struct DoubtWindow {
  Scalar lo, hi;  // entries in [lo, hi] are in doubt
  double c;       // m + tau
  Scalar plain_cut() const { return std::nextafter(lo, -std::numeric_limits<Scalar>::infinity()); }
};

template <class Scalar>
DoubtWindow<Scalar> sparsemax_doubt_window(Index n, double m, double tau) {
  const double eps = std::numeric_limits<double>::epsilon();
  // The threshold's error: its sums over up to n gaps of size <= 1 in the shifted frame, the
  // shift m + tau, and for float the rounding of that shift to a float pair (hi, lo). Generous:
  // a wider window only sends more entries to the exact test.
  const double delta = 64 * eps * static_cast<double>(n + 2) + 4 * eps * std::fabs(m)
                       + (std::is_same_v<Scalar, float> ? 0x1p-44 * (std::fabs(m) + 1) : 0.0);
  const double c = m + tau;
  return {scalar_floor<Scalar>(c - delta), -scalar_floor<Scalar>(-(c + delta)), c};
}

// The exact support of a row with entries in doubt: returns cut, the support being exactly
// {x_i > cut}. Doubtful values are tried nearest to c first (usually one is enough): one found
// in the support puts every larger value in it, one found out every smaller one out.
template <class Scalar>
Scalar sparsemax_exact_cut(const Span<const Scalar>& x, const DoubtWindow<Scalar>& w) {
  const Scalar inf = std::numeric_limits<Scalar>::infinity();
  Scalar out_max = -inf, in_min = inf;
  for (;;) {
    bool found = false;
    Scalar best = 0;
    double best_distance = 0;
    for (Index i = 0; i < x.size; ++i) {
      const Scalar v = x[i];
      if (v >= w.lo && v <= w.hi && v > out_max && v < in_min) {
        const double distance = std::fabs(static_cast<double>(v) - w.c);
        if (!found || distance < best_distance) {
          found = true;
          best = v;
          best_distance = distance;
        }
      }
    }
    if (!found)
      break;
    ExactSum f;  // f(best) - 1
    f.add(-1.0);
    const double b = static_cast<double>(best);
    for (Index j = 0; j < x.size; ++j) {
      const Scalar v = x[j];
      if (v > best) {
        f.add(static_cast<double>(v));
        f.add(-b);
      }
    }
    (f.sign() < 0 ? in_min : out_max) = best;
  }
  return out_max >= w.lo ? out_max : w.plain_cut();
}

// Sparsemax's output pass: y_i = max((x_i - hi) - lo, smallest positive Scalar) for x_i > cut (the
// support), 0 elsewhere; on packets for contiguous rows, the same operations one by one otherwise
// (every layout gives the same bits). y may be x. Returns whether some x_i lies in the doubt
// window (read in the same sweep, so a row without doubt costs no extra sweep).
template <class Scalar>
bool sparsemax_output(const Span<const Scalar>& x, const Span<Scalar>& y, Scalar cut, Scalar hi,
                      Scalar lo, const DoubtWindow<Scalar>& w) {
  using namespace Eigen::internal;
  using Packet = PacketOf<Scalar>;
  constexpr int P = kPacketSize<Scalar>;
  const Scalar tiny = std::numeric_limits<Scalar>::denorm_min();
  Index i = 0;
  bool doubt = false;
  if (x.contiguous() && y.contiguous()) {
    const Packet pcut = pset1<Packet>(cut), phi = pset1<Packet>(hi), plo = pset1<Packet>(lo),
                 ptiny = pset1<Packet>(tiny), zero = pzero(pcut), wlo = pset1<Packet>(w.lo),
                 whi = pset1<Packet>(w.hi);
    Packet in_window = zero;
    // Locals: through the spans, every store to y (a Scalar*) may alias their members, and the
    // compiler then reloads them after each store (measured 1.5x the pass's time).
    const Scalar* in = x.data;
    Scalar* out = y.data;
    const Index n = x.size;
    for (; i + P <= n; i += P) {
      const Packet v = ploadu<Packet>(in + i);
      in_window = por(in_window, pand(pcmp_le(wlo, v), pcmp_le(v, whi)));
      const Packet value = pmax(psub(psub(v, phi), plo), ptiny);
      pstoreu(out + i, pselect(pcmp_lt(pcut, v), value, zero));
    }
    doubt = predux_any(in_window);
  }
  for (; i < x.size; ++i) {
    const Scalar v = x[i];
    doubt = doubt || (v >= w.lo && v <= w.hi);
    y[i] = v > cut ? std::max((v - hi) - lo, tiny) : Scalar(0);
  }
  return doubt;
}

// Whether some x_i lies in the doubt window: one compare sweep on packets (contiguous rows), for
// the in-place output, which must know the support before it overwrites x.
template <class Scalar>
bool any_in_window(const Span<const Scalar>& x, const DoubtWindow<Scalar>& w) {
  using namespace Eigen::internal;
  using Packet = PacketOf<Scalar>;
  constexpr int P = kPacketSize<Scalar>;
  Index i = 0;
  bool any = false;
  if (x.contiguous()) {
    const Packet wlo = pset1<Packet>(w.lo), whi = pset1<Packet>(w.hi);
    Packet acc = pzero(wlo);
    for (; i + P <= x.size; i += P) {
      const Packet v = ploadu<Packet>(x.data + i);
      acc = por(acc, pand(pcmp_le(wlo, v), pcmp_le(v, whi)));
    }
    any = predux_any(acc);
  }
  for (; i < x.size && !any; ++i)
    any = x[i] >= w.lo && x[i] <= w.hi;
  return any;
}

// dx = g dy - g (<g, dy> / sum g), g_i = weight(y_i) on the support (y_i > 0), 0 elsewhere: the
// entmax family's backward (Peters et al. 2019). dx may be y or dy.
template <class Scalar, class Weight>
void entmax_backward(const Span<const Scalar>& y, const Span<const Scalar>& dy,
                     const Span<Scalar>& dx, const Weight& weight) {
  double sum_g = 0, sum_g_dy = 0;
  bool nan = false;
  for (Index i = 0; i < y.size; ++i) {
    const Scalar yi = y[i];
    nan = nan || yi != yi;
    if (yi > 0) {
      const double g = weight(static_cast<double>(yi));
      sum_g += g;
      sum_g_dy += g * static_cast<double>(dy[i]);
    }
  }
  if (nan || sum_g_dy != sum_g_dy)  // a NaN in y or on the support's dy: the whole row
    return fill(dx, std::numeric_limits<Scalar>::quiet_NaN());
  const double mean = sum_g > 0 ? sum_g_dy / sum_g : 0.0;
  for (Index i = 0; i < y.size; ++i) {
    const Scalar yi = y[i];
    dx[i] = yi > 0 ? static_cast<Scalar>(weight(static_cast<double>(yi))
                                         * (static_cast<double>(dy[i]) - mean))
                   : Scalar(0);
  }
}

// One row of the entmax family as the losses need it: the threshold of a Regular row (shifted
// frame d = (x - m)(alpha - 1)), then y_i from x_i alone, so a loss can read x_i and write its
// gradient into the same storage (in place) in one sweep. alpha in (1, 2].
template <class Scalar>
struct EntmaxRow {
  double alpha, m, tau, inv_sum = 1;

  EntmaxRow(double a, const Span<const Scalar>& x, Scalar max) : alpha(a), m(max), tau(0) {
    const Span<Scalar> none{nullptr, 0, 1};
    const Scalar lanes[1] = {max};  // no lane maxima: the search starts from m - 1/s
    if (alpha == 2.0) {
      tau = sparse_row_threshold<1>(x, none, max, lanes, 1, 1.0);
    } else if (alpha == 1.5) {
      tau = sparse_row_threshold<2>(x, none, max, lanes, 1, 0.5);
    } else {
      tau = bisect_threshold(x, none, m, alpha - 1.0, 1.0 / (alpha - 1.0));
      double sum = 0;
      for (Index i = 0; i < x.size; ++i)
        sum += unnormalized(x[i]);
      inv_sum = 1.0 / sum;
    }
  }
  double unnormalized(Scalar xi) const {
    if (alpha != 2.0 && alpha != 1.5)  // Entmax's weights (EntmaxWeight), accurate near alpha = 1
      return EntmaxWeight{m, alpha - 1.0, 1.0 / (alpha - 1.0), -tau}(static_cast<double>(xi));
    const double gap = (static_cast<double>(xi) - m) * (alpha - 1.0) - tau;
    if (!(gap > 0))
      return 0.0;
    return alpha == 2.0 ? gap : gap * gap;
  }
  double y(Scalar xi) const { return unnormalized(xi) * inv_sum; }
};

// (1 - sum_i p_i^alpha) / (alpha (alpha - 1)) for one term p_i (summed by the caller from the
// constant): the Tsallis entropy's per-entry part, -p^alpha / (alpha (alpha - 1)).
inline double tsallis_term(double alpha, double p) {
  if (!(p > 0))
    return 0.0;
  const double pa = alpha == 2.0 ? p * p : alpha == 1.5 ? p * std::sqrt(p) : std::pow(p, alpha);
  return -pa / (alpha * (alpha - 1.0));
}

// The Fenchel-Young loss of one row against target q (q(k) in double, summing to ~1, and
// h_q = H_alpha(q)): H(y) - H(q) + <y - q, z - m>; writes g_k = w (y_k - q_k) when write_grad (g
// may be z: each g_k is written after the last read of z_k).
template <class Scalar, class Q>
double fenchel_young_row(double alpha, const Span<const Scalar>& z, const Span<Scalar>& g,
                         bool write_grad, const Q& q, double h_q, double w) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  const Scalar m = max_propagate_nan(z);
  const RowKind kind = classify(m);
  if (kind != RowKind::Regular) {
    // NaN row: NaN; all -inf or +inf entries: the limit is infinite or undefined
    const Index k_inf = kind == RowKind::PositiveInfinity ? count_positive_infinity(z) : 0;
    double loss = kind == RowKind::AllMasked ? inf : nan;
    for (Index k = 0; k < z.size; ++k) {
      const Scalar zk = z[k];
      const double yk =
          kind == RowKind::NaN ? nan
          : kind == RowKind::PositiveInfinity && zk == std::numeric_limits<Scalar>::infinity()
              ? 1.0 / static_cast<double>(k_inf)
              : 0.0;
      if (write_grad)
        g[k] = static_cast<Scalar>(w * (yk - q(k)));
    }
    return loss;
  }
  const EntmaxRow<Scalar> row(alpha, z, m);
  double h_y = 1.0 / (alpha * (alpha - 1.0)), inner = 0;
  for (Index k = 0; k < z.size; ++k) {
    const Scalar zk = z[k];
    const double yk = row.y(zk), qk = q(k);
    h_y += tsallis_term(alpha, yk);
    if (yk != qk)  // 0 * (-inf) is 0: a masked class without target or mass
      inner += (yk - qk) * (static_cast<double>(zk) - row.m);
    if (write_grad)
      g[k] = static_cast<Scalar>(w * (yk - qk));
  }
  return h_y - h_q + inner;
}

// The Tsallis entropy H_alpha(q) of a target row.
template <class Q>
double tsallis_entropy(double alpha, Index size, const Q& q) {
  double h = 1.0 / (alpha * (alpha - 1.0));
  for (Index k = 0; k < size; ++k)
    h += tsallis_term(alpha, q(k));
  return h;
}

}  // namespace detail
}  // namespace softmaxlab
