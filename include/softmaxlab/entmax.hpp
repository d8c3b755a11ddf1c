// softmaxlab: sparse alternatives to softmax (sparsemax, 1.5-entmax, alpha-entmax) and their
// Fenchel-Young losses.
//
//   Sparsemax:   y = argmin_{p in simplex} ||p - x||^2,  y_i = max(x_i - tau, 0)
//   Entmax15:    y_i = max(x_i / 2 - tau, 0)^2                      (alpha = 1.5)
//   Entmax(a):   y_i = max((a - 1) x_i - tau, 0)^(1 / (a - 1))      (1 < a <= 2)
// with the threshold tau the unique number that makes sum_i y_i = 1. Every map is shift-invariant
// (x + c gives the same y) and sparse: entries below the threshold get exactly 0. Shapes: any 1-D
// row (vector, row, column, strided), rowwise / colwise batches, as every functor (functor_base).
//
// Parameters: Entmax(alpha) takes alpha in [1, 2]. alpha = 1 is the limit softmax: Entmax(1)
// computes Softmax (and its backward) exactly. alpha outside [1, 2] or NaN throws
// std::invalid_argument naming the value. Entmax(2) computes Sparsemax exactly (same support and
// values); Entmax(1.5) is 1.5-entmax, computed by the bisection below (the tests check it against
// Entmax15).
//
// Algorithms (per row; m = max x, computed in double from the row's exact values):
//   Sparsemax and Entmax15 are exact: with d_i = (x_i - m) s (s = 1 or 1/2), the threshold solves
//   f(t) = sum_i max(d_i - t, 0)^k = 1 (k = 1 or 2) and lies in [-1, 0). The max pass keeps
//   the per-lane maxima of its packet accumulators (entries at distinct positions): the threshold
//   of any subset of entries is a lower bound of the row's, so theirs gives a start t0 far closer
//   than -1. The candidates d_i > t0 are copied into the output's storage (when the output is not
//   the input; packets without one cost a compare); then each step computes over the candidates the
//   count, sum and sum of squares of d_i - t > 0, solves the equation restricted to that support
//   exactly (linear or quadratic, in double) and accepts the root if every member of the support
//   lies above it (then it is the threshold: Michelot's / Condat's support test). Otherwise t
//   advances by a step that never passes the threshold (Michelot's step for k = 1, Newton's on the
//   convex f for k = 2) and candidates at or below t are dropped. In place (y is x) the same steps
//   sweep the whole row. Expected cost: three sweeps of the row (max, filter, output) plus a few of
//   the candidates; worst case O(n * support) for adversarial rows. Results do not depend on the
//   layout (strided rows gather the same packets) nor on in-place use.
//   Sparsemax's support is decided exactly, once: entry i is in it iff sum_j max(x_j - x_i, 0) < 1
//   (the threshold's defining sum at x_i), a sign computed without rounding (detail::ExactSum, a
//   fixed-point accumulator) for the entries within the threshold's error bound of it (ties such
//   as double(0.1) on the threshold of [0.1, 0.2, 0.3, 0.4, 0.5], and near-ties); the others are
//   decided by the computed threshold, which cannot misplace them. Members get y_i >= the smallest
//   positive Scalar, the rest exactly 0, so the backward's support {y > 0} is this exact support
//   (the entmax package's definition). Cost: nothing measurable when y is not x (the output pass
//   also checks for entries in doubt, and is redone when it finds one), one compare sweep in
//   place; a row with entries in doubt adds a sweep and an exact sum per distinct doubtful value
//   tried, nearest first (usually one). Float rows of 1,000 to 32,000: within the noise of the
//   rounded-support code (shared machine).
//   Entmax15's weight sqrt(y) vanishes at the support's edge, so its gradient is continuous there
//   and its support is the rounded one.
//   Entmax(alpha), 1 < alpha < 2: bisection on t in [-1, -n^(1 - alpha)] (f >= 1 and f <= 1 at
//   the ends) until the bracket cannot be split in double (at most 200 halvings, about 60 in
//   practice); y_i = max(d_i - t, 0)^(1 / (alpha - 1)) then divided by its sum, so the row sums to
//   1 within rounding and entries at or below t are exactly 0. The power is formed in the log
//   domain, (gap_i / T)^p = exp(p log1p(d_i / T)) with T = -t, p = 1 / (alpha - 1): pow(gap_i, p)
//   would amplify the rounding of gap_i (about eps T, as gap_i -> T when alpha -> 1) by p.
//
// Accuracy (tests/test_entmax.cpp against the mpmath table tests/reference/entmax_table.ipp,
// written by tests/reference/generate_entmax.py from the exact inputs):
//   Sparsemax, Entmax15, float:  |y_i - exact| <= 2 eps (|exact| + 2^-24): the threshold is
//     computed in double from the exact inputs, the output as (x_i - hi) - lo with hi + lo = m +
//     tau exact, rounded once (measured worst 1.43 eps);
//   Sparsemax, Entmax15, double: |y_i - exact| <= 4 eps (|exact| + 1), absolute on an output of
//     scale 1: x_i - m and the threshold's sums carry a few roundings (measured worst 0.29 eps);
//   Entmax(alpha): |y_i - exact| <= 2 eps (float) or 1e-12 (double) absolute for every alpha in
//     (1, 2], the threshold bracketed to double resolution (measured worst 0.33 eps float, 0.5 eps
//     double). Near alpha = 1 the bound does not degrade: z_i = (x_i - m)(alpha - 1) / T carries
//     a few relative roundings, so the exponent p log1p(z_i) is within a few double eps of
//     (1 + |x_i - m|), y_i within that relative error, i.e. a few eps absolute (y_i |x_i - m| <=
//     1/e); T's own error (about eps, double resolution) moves the exponent by about |x_i - m|
//     eps. As alpha -> 1 the map and its error tend to Softmax's. Measured worst absolute error for
//     alpha - 1 from 2^-52 to 0.9, rows of 2 to 300: 2.8e-8 float (its rounding), 3.1e-16 double,
//     where pow(gap, p) gave 3.0e-6 at alpha = 1 + 1e-12 and 0.06 at 1 + 2^-52 (tests/
//     test_replayed_faults.cpp, "deep-spin/entmax#24: Entmax stays within its bound as alpha
//     approaches 1", against a long-double log-domain reference).
//   Sparsemax's support at ties: exact, forward and backward (tests/test_replayed_faults.cpp,
//     "keras#23425: Sparsemax decides its support exactly at ties, forward and backward alike").
// Rows sum to 1 within 2e-6 (float, any length) and (8 + k / 4) eps in double for a support of k
// entries (the threshold's sums over the support are plain double sums: measured k / 8 eps on rows
// of k equal entries, k = 300 to 1e5; 1e-14 on the reference rows, n <= 300).
//
// Special values, row by row (as Softmax): a NaN anywhere gives a NaN row; a -inf entry gets
// exactly 0, a row of only -inf gives all 0; k > 0 entries at +inf share the mass, 1/k each, 0
// elsewhere (the limit of the map as those entries grow together); a row of one finite element
// gives 1; an empty input gives an empty output.
//
// Backward (vector-Jacobian products, reading only y and dy): with the weights g_i = y_i^(2 -
// alpha) on the support (y_i > 0) and 0 elsewhere,
//   dx = g * dy - g * (sum_j g_j dy_j / sum_j g_j)
// (Peters, Niculae and Martins 2019, eq. 10): sparsemax's g is the support indicator (dx is dy
// projected onto the support's tangent space), 1.5-entmax's g = sqrt(y). Entmax(1) uses softmax's
// backward. Entries outside the support get exactly 0. Sparsemax's g jumps at the support's edge,
// which is why its forward decides the support exactly: the keras#23425 row gives [0, -0.774102917,
// 0.499551765, 0.969791834, -0.695240682], the exact gradient.
//
// Losses (Fenchel-Young, Blondel, Martins and Niculae 2020): EntmaxLoss(alpha = 1.5, reduction =
// Mean, ignore_index = -100), alpha in (1, 2] (alpha = 1 is CrossEntropyLoss: rejected), and
// SparsemaxLoss(reduction, ignore_index) = EntmaxLoss(2). With the Tsallis entropy
// H_a(p) = (1 - sum_i p_i^a) / (a (a - 1)):
//   loss_n = H_a(y_n) - H_a(q_n) + <y_n - q_n, z_n - max z_n>,    dloss_n / dz_n = y_n - q_n,
// y_n = entmax_a(z_n), q_n the target: a class label (one-hot, H = 0) or a target distribution
// row (N x C, same scalar type). Forms, reductions and labels as CrossEntropyLoss (loss.hpp):
//     double l = loss(logits, targets[, grad][, sml::RowOutputs().with_losses(per_sample)]);
// Mean divides by the counted samples (N for distributions), Sum does not, None returns the sum
// with the per-sample losses in RowOutputs; a label equal to ignore_index gives no loss and a zero
// gradient row. grad may be the logits (in place); no form allocates. The loss is >= 0 and 0
// exactly when y_n = q_n, computed in double from the row's threshold (gradients < 1e-6 relative
// against finite differences, measured 2e-12). A NaN logit gives a NaN loss and gradient row; a
// -inf logit is allowed where the target is 0 (a masked class); a target on a -inf logit gives
// +inf, a row with +inf logits NaN.
//
// Outputs (y, dx, the losses' grad): a const Matrix does not compile; pass a Map, Ref or Y.row(i).
// Errors (std::invalid_argument naming the parameter and value): alpha outside [1, 2] or NaN
// (EntmaxLoss: outside (1, 2]);
// outputs of the wrong shape or partially overlapping the input; for the losses as
// CrossEntropyLoss (labels of the wrong length or outside [0, C), targets of the wrong shape).
//
// References: Martins and Astudillo, "From Softmax to Sparsemax", ICML 2016; Peters, Niculae and
// Martins, "Sparse Sequence-to-Sequence Models", ACL 2019 (entmax); Blondel, Martins and Niculae,
// "Learning with Fenchel-Young Losses", JMLR 2020; Condat, "Fast projection onto the simplex and
// the l1 ball", Math. Prog. 2016. Semantics follow the Python `entmax` package (sparsemax,
// entmax15, entmax_bisect and their losses); the code is our own.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>

#include "detail/backward_base.hpp"
#include "detail/checks.hpp"
#include "detail/exact_sum.hpp"
#include "detail/functor_base.hpp"
#include "detail/kernels.hpp"
#include "loss.hpp"
#include "softmax.hpp"

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

}  // namespace detail

// Sparsemax: see the header's doc block.
class Sparsemax : public detail::DistributionFunctor<Sparsemax>,
                  public detail::BackwardFunctor<Sparsemax> {
 public:
  static constexpr const char* name = "Sparsemax";
  static constexpr bool backward_reads_input = false;
  static constexpr double alpha = 2.0;

 private:
  friend class detail::DistributionFunctor<Sparsemax>;
  friend class detail::BackwardFunctor<Sparsemax>;

  template <class Scalar>
  void compute(const detail::Span<const Scalar>& x, const detail::Span<Scalar>& y) const {
    Scalar lanes[detail::kLaneMaxima<Scalar>];
    int lane_count = 0;
    const Scalar m_s = detail::max_with_lanes(x, lanes, lane_count);
    if (detail::write_special_row<false>(x, y, m_s))
      return;
    const double m = static_cast<double>(m_s);
    const double tau = detail::sparse_row_threshold<1>(x, y, m_s, lanes, lane_count, 1.0);
    const std::pair<Scalar, Scalar> shift = detail::split_shift<Scalar>(m, tau);
    const Scalar hi = shift.first, lo = shift.second;
    // The support decided exactly (ties included), then each value from the threshold: members
    // get at least the smallest positive Scalar, so the backward's {y > 0} is this support. Not
    // in place, the output pass also looks for entries in doubt and is redone if it finds one;
    // in place, a compare sweep looks first.
    const detail::DoubtWindow<Scalar> w = detail::sparsemax_doubt_window<Scalar>(x.size, m, tau);
    if (x.data != y.data) {
      if (detail::sparsemax_output(x, y, w.plain_cut(), hi, lo, w))
        detail::sparsemax_output(x, y, detail::sparsemax_exact_cut(x, w), hi, lo, w);
    } else {
      const Scalar cut =
          detail::any_in_window(x, w) ? detail::sparsemax_exact_cut(x, w) : w.plain_cut();
      detail::sparsemax_output(x, y, cut, hi, lo, w);
    }
  }

  template <class Scalar>
  void compute_backward(const detail::Span<const Scalar>& /*x*/,
                        const detail::Span<const Scalar>& y, const detail::Span<const Scalar>& dy,
                        const detail::Span<Scalar>& dx) const {
    detail::entmax_backward(y, dy, dx, [](double) { return 1.0; });
  }
};

// 1.5-entmax: see the header's doc block.
class Entmax15 : public detail::DistributionFunctor<Entmax15>,
                 public detail::BackwardFunctor<Entmax15> {
 public:
  static constexpr const char* name = "Entmax15";
  static constexpr bool backward_reads_input = false;
  static constexpr double alpha = 1.5;

 private:
  friend class detail::DistributionFunctor<Entmax15>;
  friend class detail::BackwardFunctor<Entmax15>;

  template <class Scalar>
  void compute(const detail::Span<const Scalar>& x, const detail::Span<Scalar>& y) const {
    Scalar lanes[detail::kLaneMaxima<Scalar>];
    int lane_count = 0;
    const Scalar m_s = detail::max_with_lanes(x, lanes, lane_count);
    if (detail::write_special_row<false>(x, y, m_s))
      return;
    const double m = static_cast<double>(m_s);
    const double tau = detail::sparse_row_threshold<2>(x, y, m_s, lanes, lane_count, 0.5);
    // y = ((x - m) / 2 - tau)^2 = (((x - hi) - lo) / 2)^2 with hi + lo = m + 2 tau
    const std::pair<Scalar, Scalar> shift = detail::split_shift<Scalar>(m, 2.0 * tau);
    const Scalar hi = shift.first, lo = shift.second;
    detail::with_arrays(
        [&](auto xa, auto ya) { ya = (((xa - hi) - lo) * Scalar(0.5)).max(Scalar(0)).square(); }, x,
        y);
  }

  template <class Scalar>
  void compute_backward(const detail::Span<const Scalar>& /*x*/,
                        const detail::Span<const Scalar>& y, const detail::Span<const Scalar>& dy,
                        const detail::Span<Scalar>& dx) const {
    detail::entmax_backward(y, dy, dx, [](double v) { return std::sqrt(v); });
  }
};

// alpha-entmax by bisection: see the header's doc block.
class Entmax : public detail::DistributionFunctor<Entmax>, public detail::BackwardFunctor<Entmax> {
 public:
  static constexpr const char* name = "Entmax";
  static constexpr bool backward_reads_input = false;

  explicit Entmax(double alpha = 1.5)
      : alpha_(detail::require_in_range("Entmax: alpha", alpha, 1.0, 2.0, "in [1, 2]")) {}

  double alpha() const { return alpha_; }

 private:
  friend class detail::DistributionFunctor<Entmax>;
  friend class detail::BackwardFunctor<Entmax>;

  template <class Scalar>
  void compute(const detail::Span<const Scalar>& x, const detail::Span<Scalar>& y) const {
    if (alpha_ == 1.0) {
      Softmax().apply(detail::strided_array(x), detail::strided_array(y));
      return;
    }
    if (alpha_ == 2.0) {  // sparsemax, with its exact support (the backward's weights jump there)
      Sparsemax().apply(detail::strided_array(x), detail::strided_array(y));
      return;
    }
    const Scalar m_s = detail::max_propagate_nan(x);
    if (detail::write_special_row<false>(x, y, m_s))
      return;
    const double m = static_cast<double>(m_s);
    const double s = alpha_ - 1.0, p = 1.0 / s;
    const bool in_place = x.data == y.data;
    const double tau =
        detail::bisect_threshold(x, in_place ? detail::Span<Scalar>{nullptr, 0, 1} : y, m, s, p);
    const detail::EntmaxWeight weight{m, s, p, -tau};
    double sum = 0;
    for (Index i = 0; i < x.size; ++i)
      sum += weight(static_cast<double>(x[i]));
    // Normalized in double and rounded once; y[i] is written after x[i]'s last read (in place).
    const double inv = 1.0 / sum;
    for (Index i = 0; i < x.size; ++i)
      y[i] = static_cast<Scalar>(weight(static_cast<double>(x[i])) * inv);
  }

  template <class Scalar>
  void compute_backward(const detail::Span<const Scalar>& /*x*/,
                        const detail::Span<const Scalar>& y, const detail::Span<const Scalar>& dy,
                        const detail::Span<Scalar>& dx) const {
    if (alpha_ == 1.0)
      return detail::softmax_backward(y, dy, dx, 1.0);
    const double e = 2.0 - alpha_;
    detail::entmax_backward(y, dy, dx, [e](double v) { return std::pow(v, e); });
  }

  double alpha_;
};

namespace detail {

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

// The Fenchel-Young loss of alpha-entmax: see the header's doc block. SparsemaxLoss is
// EntmaxLoss(2); EntmaxLoss(1.5) uses the exact 1.5-entmax threshold.
class EntmaxLoss : public detail::LogitsLoss<EntmaxLoss> {
 public:
  static constexpr const char* name = "EntmaxLoss";
  static constexpr long default_ignore_index = -100;

  explicit EntmaxLoss(double alpha = 1.5, Reduction reduction = Reduction::Mean,
                      long ignore_index = default_ignore_index)
      : alpha_(check_alpha(alpha)),
        reduction_(detail::check_reduction_or_none("EntmaxLoss: reduction", reduction)),
        ignore_index_(ignore_index) {}

  double alpha() const { return alpha_; }
  Reduction reduction() const { return reduction_; }
  long ignore_index() const { return ignore_index_; }

  // The call forms (detail::LogitsLoss): loss(logits, targets[, out]) -> the loss;
  // loss(logits, targets, grad[, out]) -> the loss, with dloss/dlogits = w (y - q) in grad.
  using detail::LogitsLoss<EntmaxLoss>::operator();

 private:
  friend class detail::LogitsLoss<EntmaxLoss>;

  static double check_alpha(double alpha) {
    if (!(alpha > 1.0 && alpha <= 2.0)) {
      detail::fail("EntmaxLoss: alpha must be in (1, 2] (alpha = 1 is CrossEntropyLoss), but got ",
                   alpha);
    }
    return alpha;
  }

  template <class Z, class Targets, class G>
  double impl(const Z& z, const Targets& targets, G grad_ptr, const RowOutputs& out) const {
    using Scalar = typename Z::Scalar;
    detail::static_check_scalar<Scalar>();
    constexpr bool has_grad = !std::is_same_v<G, std::nullptr_t>;
    const Index rows = z.rows(), classes = z.cols();
    detail::check_row_outputs(name, out, rows);
    if constexpr (has_grad) {
      if (detail::storage_partially_overlaps(z, *grad_ptr))
        detail::fail(name, ": grad partially overlaps the logits (only exact in-place is allowed)");
    }
    auto grad_row = [&](Index n) {
      if constexpr (has_grad) {
        return detail::slice_span<Scalar>(*grad_ptr, n, true);
      } else {
        return detail::Span<Scalar>{nullptr, 0, 1};
      }
    };
    auto record = [&](Index n, double loss) {
      if (out.losses.data != nullptr)
        out.losses[n] = loss;
      return loss;
    };
    double total = 0;
    if constexpr (detail::is_label_type_v<Targets>) {
      const auto labels = detail::label_span(name, targets);
      const Index counted =
          detail::count_labels(name, labels, rows, classes, ignore_index_, {}).first;
      const double w =
          reduction_ == Reduction::Mean && counted > 0 ? 1.0 / static_cast<double>(counted) : 1.0;
      for (Index n = 0; n < rows; ++n) {
        const long c = static_cast<long>(labels[n]);
        const detail::Span<Scalar> g = grad_row(n);
        if (c == ignore_index_) {
          if constexpr (has_grad)
            detail::fill(g, Scalar(0));
          record(n, 0.0);
          continue;
        }
        const auto q = [c](Index k) {
          return k == c ? 1.0 : 0.0;
        };
        total += record(
            n, detail::fenchel_young_row<Scalar>(
                   alpha_, detail::slice_span<const Scalar>(z, n, true), g, has_grad, q, 0.0, w));
      }
      return total * w;
    } else {
      static_assert(std::is_base_of_v<Eigen::DenseBase<Targets>, Targets>,
                    "softmaxlab: targets must be class labels (an Eigen integer vector or a "
                    "std::vector) or an Eigen matrix of target distributions");
      static_assert(std::is_same_v<Scalar, typename Targets::Scalar>,
                    "softmaxlab: target distributions must have the logits' scalar type");
      detail::require_same_shape(name, detail::SliceMode::Rows, "targets", targets.rows(),
                                 targets.cols(), rows, classes);
      return detail::with_storage(targets, [&](const auto& t) {
        if constexpr (has_grad) {
          if (detail::storage_overlaps(t, *grad_ptr))
            detail::fail(name, ": grad must not share storage with the targets");
        }
        const double w =
            reduction_ == Reduction::Mean && rows > 0 ? 1.0 / static_cast<double>(rows) : 1.0;
        for (Index n = 0; n < rows; ++n) {
          const auto tn = detail::slice_span<const Scalar>(t, n, true);
          const auto q = [&](Index k) {
            return static_cast<double>(tn[k]);
          };
          const double h_q = detail::tsallis_entropy(alpha_, classes, q);
          total += record(n, detail::fenchel_young_row<Scalar>(
                                 alpha_, detail::slice_span<const Scalar>(z, n, true), grad_row(n),
                                 has_grad, q, h_q, w));
        }
        return total * w;
      });
    }
  }

  double alpha_;
  Reduction reduction_;
  long ignore_index_;
};

// The sparsemax loss (Martins and Astudillo 2016): EntmaxLoss with alpha = 2.
class SparsemaxLoss : public EntmaxLoss {
 public:
  explicit SparsemaxLoss(Reduction reduction = Reduction::Mean,
                         long ignore_index = default_ignore_index)
      : EntmaxLoss(2.0, reduction, ignore_index) {}
};

}  // namespace softmaxlab
