// softmaxlab: attention. AttentionSoftmax, the fused score softmax of inference engines (ggml's
// soft_max_ext), and Attention, exact flash-style attention on the online normalizer, forward
// and backward.
//
// AttentionOptions (validated when set; std::invalid_argument naming the parameter and value):
//   with_scale(s)       in [2^-100, 2^100]. Default: 1 in AttentionSoftmax, 1/sqrt(d) in
//                       Attention. (Scale, softcap and slope are bounded as temperatures are, so
//                       that each stays a normal float and its reciprocal finite: a double 1e-300
//                       would round to 0 in float and make 0 * inf a NaN.)
//   with_causal(b)      Attention only: key j is visible to query i iff j <= i + Lk - Lq
//                       (bottom-right aligned, as KV-cache decoding needs).
//   with_softcap(c)     0 = off (default), else in [2^-100, 2^100]: cap(s) = c tanh(s / c).
//   with_mask_slope(m)  in [2^-100, 2^100] (default 1): the additive mask is multiplied by m
//   (ggml's
//                       ALiBi form: the mask holds the position bias, m the per-head slope, see
//                       alibi_slope()).
//   with_window(l, r), with_alibi(max_bias): MultiHeadAttention only (multi_head_attention.hpp;
//                       Attention and AttentionSoftmax throw if they are set).
//   with_sink(z)        in [-2^100, 2^100]: a logit that joins the max and the sum but has no
//   output
//                       (gpt-oss-style attention sinks).
// alibi_slope(max_bias, head, n_head): ggml's per-head slope, m0^(h+1) for h < 2^floor(log2 n)
// and m1^(2(h - 2^floor(log2 n)) + 1) above, m0 = 2^(-max_bias / 2^floor(log2 n)),
// m1 = 2^(-max_bias / 2 / 2^floor(log2 n)); 1 when max_bias = 0. max_bias finite >= 0,
// 0 <= head < n_head.
//
// AttentionSoftmax(o): y = softmax(t), t_i = cap(scale x_i) + m mask_i, the sink z joining:
//   y_i = exp(t_i - M) / (sum_j exp(t_j - M) + exp(z - M)),   M = max(max_j t_j, z).
// Forms: f(x), f.apply(x, y), f.rowwise(X[, Y]), f.colwise(X[, Y]) (DistributionFunctor, no
// mask), f.apply_masked(x, mask, y), f.rowwise_masked(S, M, P) (M: S's shape, or one row
// broadcast over every row; mask storage of x's scalar). Three passes over the row, as Softmax:
// (1) t_i written into y while the max is taken (the pre-operations are fused into the max pass,
// never an extra sweep); (2) exp(t_i - M) in place, summed with Softmax's compensated sums;
// (3) y *= 1 / (sum + exp(z - M)). Backward: f.backward(x, y, dy[, dx]) and the row/column forms,
// dx_i = scale cap'(scale x_i) y_i (dy_i - <dy, y>), cap'(s) = 1 - tanh^2(s / c) (1 without a
// cap); the same for the masked forms (the mask is a constant).
// Accuracy (tests/test_attention.cpp, against long-double evaluations of the exact transformed
// scores T_i = cap(scale x_i) + m mask_i): relative error of y_i
//   <= eps (4 (1 + |T_i - M|) + d_i + max_j d_j),   d_j = |scale x_j| + |m mask_j| + 2|T_j| + 2
// (eps of the scalar type): Softmax's bound on the transformed scores plus the rounding of the
// scores themselves (scale and slope rounded to the scalar, one product each, the cap's tanh
// within 2 eps, one addition) and its effect on the normalizer (a weighted mean, at most the max).
// Measured worst (rows of 1 to 4097, N(0, 8^2) scores, 10% masked, every option): 0.27 of the
// bound (18.7 eps) in float, 0.18 (11.9 eps) in double.
//
// Attention<Weight = Softmax>(o[, weight]): for one head, Q Lq x d, K Lk x d, V Lk x dv,
//   O = softmax(cap(scale Q K^T) + m mask) V   (sink and causal mask as above, row by row),
// computed flash-style (FlashAttention-2's loop order): for each block of Bq query rows, key/value
// blocks of Bk rows in turn: S = Q_b K_b^T (one Eigen GEMM into a Bq x Bk stack buffer), the
// score transform fused into the row-max pass, then per query row the running max m, sum l and
// the output accumulator (O's own rows) rescaled by exp(m_old - m_new) when the max grows (the
// online normalizer of single_pass.hpp, extended with the value accumulator), P = exp(S - m) in
// place, O_b += P V_b (one GEMM). The Lq x Lk matrix is never formed: the workspace is the stack
// buffer, Bq Bk scalars (64 x 128 by default, 32 KiB float), plus Bq maxima and sums,
// independent of Lk; the accumulator is O itself.
//   attn(Q, K, V) -> O;  attn.apply(Q, K, V, O[, lse]);  attn.apply_masked(Q, K, V, mask, O[, lse])
//   lse_i = log(sum_j exp(t_ij) + exp(z)): the per-query log-sum-exp of the transformed scores,
//   for every row (a row with no visible key: lse_i = z, or -inf without a sink);
//   merge_attention(O1, lse1, O2, lse2, O, lse) combines two partials over disjoint key sets
//   exactly (split-K decoding, sequence parallelism; give the sink to one partial only, which may
//   be one whose keys are all masked for a query, or empty).
//   attn.backward(Q, K, V, O, lse, dO, dQ, dK, dV) (and backward_masked with the mask): the
//   gradients by recomputation of P from lse (FlashAttention-2, Dao 2023, Algorithm 2),
//   D_i = <dO_i, O_i>, dS = P (dO V^T - D), through the cap and the scale.
// Q, K, V: Eigen objects of float or double with storage (plain, Map, Ref, Block); any other
// expression is evaluated into a temporary first. apply with float or double storage inputs does
// not allocate (tested at d = dv = 64; Eigen's GEMM packs its blocks on the stack while they stay
// under EIGEN_STACK_ALLOCATION_LIMIT, 128 KiB, i.e. for moderate d and dv). with_block_sizes(bq,
// bk) sets smaller blocks (1..64, 1..128), which changes only the rounding.
// Half precision: Q, K, V and the mask may also be Eigen::half or Eigen::bfloat16 (one type In for
// the four), O any of {half, bfloat16, float, double} (type Out; f(Q, K, V) returns In), lse of
// type Out or, beside a 16-bit Out, float (FlashAttention's convention: the backward rebuilds its
// weights from lse, so keep it in float). The pass runs in float (double when In or Out is double)
// on exactly widened copies, and this form allocates them: float copies of K and V, Lk (d + dv)
// elements, made once; then per query block (Bq rows) a float copy of its Q rows, its mask rows (Bq
// Lk: the caller's mask, never the whole Lq x Lk again) and its O and lse, Bq (d + Lk + dv + 1)
// elements, rounded once to Out. The Lq x Lk scores are still never formed, and the float result is
// bit-for-bit the float forward's. Accuracy (test_half_precision.cpp, against the long-double
// materialized form on the widened inputs): |O_ik - exact| <= the float bound below + 1/2 ulp of
// Out; measured worst 0.50 ulp of half and of bfloat16 (Lq 37, Lk 300, d 32, causal and masked).
// backward and backward_masked take the same types: In for Q, K, V and the mask, Out for O and
// dO, lse as in the forward, and one type G of the four for dQ, dK and dV; float inside, double
// when In, Out or G is double (any other scalar: a static_assert naming the accepted types). They
// allocate, in elements of that type: K and V widened once and dK, dV accumulated over every query
// block, 2 Lk (d + dv); per query block copies of its Q, O, dO, lse and mask rows and its dQ,
// Bq (2 d + 2 dv + Lk + 1).
// dQ is rounded to G once per block, dK and dV once at the end: the result is bit-for-bit the
// float backward on the widened (column-major) inputs, rounded once.
// Backward accuracy (test_half_precision.cpp, against the long-double materialized gradient on
// the widened inputs and the O given; every type; no softcap, slope 1): per entry of dX (X = Q,
// K, V),
//   |dX - exact| <= kappa_X mag_X + 1/2 ulp of G,
//   kappa_X = eps (rho + dv + 3 + n_X) + (e^eta - 1),
// mag_dV = P^T |dO|, mag_dQ = scale A |K|, mag_dK = scale A^T |Q|, A = P (|dO| |V|^T +
// rowsum(|dO| |O|)); rho = max_ij (d scale sum_k |q_ik k_jk| + 2 |t_ij| + |t_ij - lse_i| +
// 2 |mask_ij| + 4) bounds the relative error of each recomputed weight, dv + 3 that of dP, D and
// dS, n_dQ = Bk + ceil(Lk / Bk) and n_dK = n_dV = Bq + ceil(Lq / Bq) the accumulations; eta =
// max_i |lse_i - exact lse_i|: P is recomputed from the lse given, which scales row i of P by
// e^(exact - lse_i). A 16-bit lse is off by up to 1/2 ulp of Out (2^-9 in half, 2^-6 in bfloat16
// for lse in [4, 8)), and that term dominates. Measured worst (Lq 37, Lk 70, d = dv = 16, causal
// and masked, blocks 64 x 128 and 7 x 5): 4.2 ulp of half (0.66 of the bound at worst), 3.8 ulp of
// bfloat16 (0.83) with O, lse and dO in the 16-bit type; 0.50 ulp of half (0.92) with half Q, K,
// V and gradients but O, lse and dO in float (the forward's Out = float), and also with half O and
// dO beside a float lse ("half precision: a float lse beside a half O keeps the backward within
// half an ulp"): keep lse in float when the gradients matter. The float backward: worst 6.0 ulp
// of float, double 6 ulp (ratios at most 0.023 and 0.015).
// Accuracy (tests/test_attention.cpp, against a long-double materialized reference on the same
// inputs): per entry, |O_ik - exact| <= eps max|V| (2 rho + Bk + 2 ceil(Lk / Bk) + 4), where rho =
// max_j (4 (1 + |t_ij - M_i|) + d_j) bounds the relative error of each weight as above (d_j now
// with the score's dot product: + d |scale| sum_k |q_ik k_jk| / eps ulps) and the rest is the float
// accumulation of P V (Bk terms per GEMM, one rescale and one addition per key block). Measured
// worst (random N(0,1) Q, K, V, sigma(V) = 2, shapes up to Lq 200, Lk 2000, d 64, every option,
// default and 7 x 5 blocks): 7.6 eps float, 8.4 eps double, 0.12 of the tested 8 eps (1 + max|V|).
//
// Attention<PowerSoftmax>(o, PowerSoftmax(p)): w_ij = t_ij^p / sum_j t_ij^p (Stable form; Power-
// Softmax, Zimerman et al., arXiv 2410.09457) online: the running scale of a row is a power of two
// 2^e >= max |t| (as PowerSoftmax scales rows), so the rescale (2^e_old / 2^e_new)^p when it grows
// is exact; weights (t 2^-e)^p by repeated squaring; one exact division per row at the end.
// Rows whose visible scores are all 0 give the mean of their values (the formula's limit), +-inf
// scores share the mass, masked keys (-inf in the scaled mask, causal) are left out. No sink, no
// lse, no backward for this weight. Measured worst against the exact plaintext (long double):
// 11.4 eps float, 12.8 eps double (p = 2, 4, 8).
//
// Attention<PolynomialSoftmax>(o, PolynomialSoftmax(config)), config.shift = Shift::PublicBound:
// what an encrypted pipeline computes, online without a max (nothing to rescale): w_ij =
// E(t_ij - B) / sum_j E(t_ij - B), E the configured polynomial exp (approx/exp.hpp, clipped to
// [-R, 0]: scores above B count as B), then the configured reciprocal of each row's sum (its range
// from the number of visible keys). Masked keys are left out; a row with none gives zeros. No
// sink, no lse, no backward. Against the plaintext pipeline (materialized scores, then
// PolynomialSoftmax, then P V): 2.1e-7 in float (Lk = 300); against exact softmax attention
// 1.1e-5, the approximation's own error.
//
// Special values (both classes): a -inf entry of x (or of the mask) is masked out: exactly 0
// weight, softcap or not; a row with every entry masked gives zeros, even with a sink, which then
// takes all the mass (Attention: a query row with no visible key, all masked, causal or Lk = 0,
// gives a zero output row and lse = z with a sink, the sink's own log-sum-exp, -inf without one,
// so that merge_attention keeps the sink's mass whichever partial holds it; tests "Attention:
// special values and shapes" and, in tests/test_replayed_faults.cpp, "FlashAttention#2752: a sink
// on a query row with no visible key keeps its mass in lse and merge_attention"); +inf entries of
// x or the mask share the mass (with a softcap, cap(+inf) = c is finite: the limit of the formula);
// a NaN anywhere in a row (input or mask) makes the row NaN (Attention: a NaN in the query row's
// scores); an empty input gives an empty output.
// Overflow: in AttentionSoftmax a finite x_i or mask_i whose scale x_i, m mask_i or score
// overflows the scalar type is not +-inf: pass 1 flags the row and it is recomputed in double,
// scaled by 2^-102 for double data (no finite input overflows there), its weights those of the
// exact scores (x = [FLT_MAX, FLT_MAX / 2] at scale 4 gives [1, 0], not [1/2, 1/2]; a row whose
// scores all overflow to -inf is a softmax, not a masked row; 4 FLT_MAX - 4 FLT_MAX is 0). In
// place, pass 1 only takes the max so that such a row still has its input, and the scores are
// formed in a second sweep. Attention forms its scores in the scalar type with Eigen's GEMM: a
// dot product that overflows is +-inf there, the caller's to avoid (scale Q first).
//
// Outputs (O, lse, dQ, dK, dV, P, y): a const Matrix does not compile; pass a Map, Ref or block.
// Errors (std::invalid_argument naming the parameter, value or shapes): options out of range;
// outputs or masks of the wrong shape; Q and K with different d, K and V with different Lk; an
// output that overlaps an input; Attention<Softmax> with a temperature other than 1 (fold it into
// the scale); Attention<PowerSoftmax> with a sink or a form other than Stable;
// Attention<PolynomialSoftmax> with a sink or the RowMax shift; block sizes out of range.
//
// Threads: with OpenMP and SOFTMAXLAB_USE_OPENMP, Attention spreads its query blocks over the
// threads; every query block is computed by the same code whatever thread runs it, so the result
// is bit-for-bit the same for any thread count. rowwise/rowwise_masked spread rows likewise.
//
// Speed (bench/bench_attention.cpp, float, one thread, median CPU time, GCC AVX2 build on a shared
// AVX-512 EPYC; README "Attention" has the commands): Attention 1.28x / 1.32x / 1.11x the
// materialized Eigen form (GEMM, Eigen softmax expression, GEMM) at Lq = Lk = 4096 / 1024 / 128,
// d = 64, 1.55x at 16384 (where that form needs 1 GiB of scores, Attention 32 KiB); 0.4x oneDNN's
// AVX-512 matmul + softmax + matmul; decode (Lq = 1) on par. AttentionSoftmax with mask and
// scale: 3.5x the plain Eigen expression on rows of 1024 and 4096.
//
// Sources: ggml (llama.cpp) ggml_compute_forward_soft_max_f32 (scale, mask times ALiBi slope,
// sinks) and flash_attn_ext (running max/sum/accumulator, softcap); Milakov & Gimelshein,
// arXiv 1805.02867 (online normalizer); Dao, "FlashAttention-2", arXiv 2307.08691.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>

#include "detail/backward_base.hpp"
#include "detail/checks.hpp"
#include "detail/functor_base.hpp"
#include "detail/kernels.hpp"
#include "detail/scalar_types.hpp"
#include "polynomial.hpp"
#include "power.hpp"
#include "softmax.hpp"

namespace softmaxlab {

// The options of AttentionSoftmax and Attention: see the header's doc block.
class AttentionOptions {
 public:
  AttentionOptions with_scale(double scale) const {
    AttentionOptions o = *this;
    o.scale_ = detail::require_in_range("AttentionOptions: scale", scale, 0x1p-100, 0x1p100,
                                        "in [2^-100, 2^100] (finite, > 0)");
    return o;
  }
  AttentionOptions with_causal(bool causal) const {
    AttentionOptions o = *this;
    o.causal_ = causal;
    return o;
  }
  AttentionOptions with_softcap(double softcap) const {
    if (!(softcap == 0.0 || (softcap >= 0x1p-100 && softcap <= 0x1p100)))
      detail::fail("AttentionOptions: softcap must be 0 (off) or in [2^-100, 2^100], but got ",
                   softcap);
    AttentionOptions o = *this;
    o.softcap_ = softcap;
    return o;
  }
  AttentionOptions with_mask_slope(double slope) const {
    AttentionOptions o = *this;
    o.mask_slope_ = detail::require_in_range("AttentionOptions: mask_slope", slope, 0x1p-100,
                                             0x1p100, "in [2^-100, 2^100] (finite, > 0)");
    return o;
  }
  AttentionOptions with_sink(double sink) const {
    if (!(sink >= -0x1p100 && sink <= 0x1p100))
      detail::fail("AttentionOptions: sink must be in [-2^100, 2^100] (finite), but got ", sink);
    AttentionOptions o = *this;
    o.has_sink_ = true;
    o.sink_ = sink;
    return o;
  }

  // MultiHeadAttention only (multi_head_attention.hpp): key j is visible to query i iff
  // i + Lk - Lq - left <= j <= i + Lk - Lq + right; -1 = unbounded on that side.
  [[nodiscard]] AttentionOptions with_window(Index left, Index right) const {
    if (left < -1)
      detail::fail("AttentionOptions: window left must be >= -1 (-1 = unbounded), but got ", left);
    if (right < -1)
      detail::fail("AttentionOptions: window right must be >= -1 (-1 = unbounded), but got ",
                   right);
    AttentionOptions o = *this;
    o.window_left_ = left;
    o.window_right_ = right;
    return o;
  }
  // MultiHeadAttention only: ALiBi from positions, slope of head h = alibi_slope(max_bias, h, Hq),
  // bias -slope |j - (i + Lk - Lq)|. max_bias finite, >= 0; 0 = off.
  [[nodiscard]] AttentionOptions with_alibi(double max_bias) const {
    if (!(max_bias >= 0.0 && max_bias <= 0x1p100))
      detail::fail("AttentionOptions: alibi max_bias must be in [0, 2^100] (0 = off), but got ",
                   max_bias);
    AttentionOptions o = *this;
    o.alibi_max_bias_ = max_bias;
    return o;
  }

  bool has_scale() const { return scale_ > 0; }
  double scale_or(double fallback) const { return has_scale() ? scale_ : fallback; }
  bool causal() const { return causal_; }
  double softcap() const { return softcap_; }
  double mask_slope() const { return mask_slope_; }
  bool has_sink() const { return has_sink_; }
  double sink() const { return sink_; }
  Index window_left() const { return window_left_; }
  Index window_right() const { return window_right_; }
  bool has_window() const { return window_left_ >= 0 || window_right_ >= 0; }
  double alibi_max_bias() const { return alibi_max_bias_; }
  bool has_alibi() const { return alibi_max_bias_ > 0; }

 private:
  double scale_ = 0;  // 0: not set (the default of each class applies)
  bool causal_ = false;
  double softcap_ = 0;
  double mask_slope_ = 1;
  bool has_sink_ = false;
  double sink_ = 0;
  Index window_left_ = -1;  // -1: unbounded
  Index window_right_ = -1;
  double alibi_max_bias_ = 0;  // 0: no ALiBi
};

// ggml's ALiBi slope of head `head` among `n_head` heads for max_bias (see the doc block).
inline double alibi_slope(double max_bias, int head, int n_head) {
  if (!(max_bias >= 0.0 && std::isfinite(max_bias)))
    detail::fail("alibi_slope: max_bias must be finite and >= 0, but got ", max_bias);
  if (n_head < 1)
    detail::fail("alibi_slope: n_head must be >= 1, but got ", n_head);
  if (head < 0 || head >= n_head)
    detail::fail("alibi_slope: head must be in [0, n_head = ", n_head, "), but got ", head);
  if (max_bias == 0.0)
    return 1.0;
  const int n_log2 = 1 << static_cast<int>(std::floor(std::log2(static_cast<double>(n_head))));
  const double m0 = std::exp2(-max_bias / n_log2);
  const double m1 = std::exp2(-max_bias / 2.0 / n_log2);
  return head < n_log2 ? std::pow(m0, head + 1) : std::pow(m1, 2 * (head - n_log2) + 1);
}

namespace detail {

// The score transform t = cap(scale s) + slope mask in the scalar type, and the row state it
// reports: the max of t and whether the row (scores or mask) held a NaN.
template <class Scalar>
struct ScoreTransform {
  Scalar scale = 1;
  Scalar slope = 1;
  Scalar cap = 0;  // 0: no softcap
  bool has_cap() const { return cap != Scalar(0); }
};

template <class Scalar>
struct ScoreMax {
  Scalar max = -std::numeric_limits<Scalar>::infinity();
  bool nan = false;       // a NaN in the scores or the mask
  bool overflow = false;  // an unmasked score -inf or NaN: it overflowed the scalar type
  void add(const ScoreMax& o) {
    max = std::max(max, o.max);
    nan = nan || o.nan;
    overflow = overflow || o.overflow;
  }
};

// c tanh(s / c) on a packet: Eigen's ptanh where it is vectorized (float), std::tanh per lane
// otherwise.
template <class Packet>
EIGEN_STRONG_INLINE Packet softcap_packet(const Packet& s, const Packet& c, const Packet& inv_c) {
  using namespace Eigen::internal;
  using Scalar = typename unpacket_traits<Packet>::type;
  constexpr int P = unpacket_traits<Packet>::size;
  if constexpr (P > 1 && packet_traits<Scalar>::HasTanh) {
    return pmul(c, ptanh(pmul(s, inv_c)));
  } else {
    alignas(64) Scalar lanes[P];
    pstore(lanes, pmul(s, inv_c));
    for (int k = 0; k < P; ++k)
      lanes[k] = std::tanh(lanes[k]);
    return pmul(c, pload<Packet>(lanes));
  }
}

// y_i = cap(scale x_i) + slope mask_i for contiguous x, mask (kMask), y (y may be x; kStore
// false: y is not written, only the max is taken), with -inf in x or in the mask giving exactly
// -inf (masked). Returns the max of y, the NaN flag (a NaN in x or the mask) and the overflow
// flag (an unmasked score that came out -inf or NaN: a finite product overflowed).
template <bool kStore, bool kMask, bool kCap, class Scalar>
ScoreMax<Scalar> transform_scores_contiguous(const Scalar* x, const Scalar* mask, Scalar* y,
                                             Index n, const ScoreTransform<Scalar>& f) {
  using namespace Eigen::internal;
  using Packet = PacketOf<Scalar>;
  constexpr int P = kPacketSize<Scalar>;
  const Scalar inf = std::numeric_limits<Scalar>::infinity();
  const Packet scale = pset1<Packet>(f.scale), slope = pset1<Packet>(f.slope);
  const Packet cap = pset1<Packet>(f.cap), inv_cap = pset1<Packet>(kCap ? Scalar(1) / f.cap : 1);
  const Packet minus_inf = pset1<Packet>(-inf);
  Packet pmax_acc = minus_inf;
  Packet ok = ptrue(minus_inf);
  Packet regular = ok;
  auto step = [&](const Packet& xp, const Packet& mp) {
    Packet t = pmul(xp, scale);
    if constexpr (kCap)
      t = softcap_packet(t, cap, inv_cap);
    Packet masked = pcmp_eq(xp, minus_inf);
    if constexpr (kMask) {
      t = padd(t, pmul(mp, slope));
      // The mask itself, not m * mask: a finite mask entry whose product overflowed is a score.
      masked = por(masked, pcmp_eq(mp, minus_inf));
    } else {
      EIGEN_UNUSED_VARIABLE(mp);
    }
    // x and the mask, not t: a vectorized tanh may clamp a NaN.
    Packet notnan = pcmp_eq(xp, xp);
    if constexpr (kMask)
      notnan = pand(notnan, pcmp_eq(mp, mp));
    ok = pand(ok, notnan);
    // An unmasked score that is -inf or NaN overflowed (an entry at -inf is masked). Tested on
    // the score, whatever the compiler contracts: fma(x, scale, -inf) is -inf where x scale
    // overflows, and m mask + x scale may be finite in exact arithmetic.
    regular = pand(regular, por(masked, pcmp_lt(minus_inf, t)));
    t = pselect(masked, minus_inf, t);
    pmax_acc = pmax(pmax_acc, t);
    return t;
  };
  const Packet zero = pset1<Packet>(Scalar(0));
  Index i = 0;
  for (; i + P <= n; i += P) {
    const Packet mp = kMask ? ploadu<Packet>(mask + i) : zero;
    const Packet t = step(ploadu<Packet>(x + i), mp);
    if constexpr (kStore)
      pstoreu(y + i, t);
  }
  if (i < n) {  // padding lanes: x = -inf, mask 0 (masked, not NaN)
    const Packet mp = kMask ? load_partial<Packet>(mask + i, n - i, Scalar(0)) : zero;
    const Packet t = step(load_partial<Packet>(x + i, n - i, -inf), mp);
    if constexpr (kStore)
      store_partial(y + i, n - i, t);
  }
  alignas(64) Scalar lanes[P], oks[P], regulars[P];
  pstore(lanes, pmax_acc);
  pstore(oks, ok);
  pstore(regulars, regular);
  ScoreMax<Scalar> r;
  for (int k = 0; k < P; ++k) {
    r.max = std::max(r.max, lanes[k]);
    // true lanes are all-ones bit patterns, lanes that met a NaN (an overflow) all-zeros
    std::conditional_t<std::is_same_v<Scalar, float>, std::uint32_t, std::uint64_t> bits;
    std::memcpy(&bits, &oks[k], sizeof(bits));
    r.nan = r.nan || bits == 0;
    std::memcpy(&bits, &regulars[k], sizeof(bits));
    r.overflow = r.overflow || bits == 0;
  }
  return r;
}

// The transform on spans: x, y (same length, y may be x; kStore false: y is not written) and mask
// (size 0: no mask), strided or not (strided ones are staged through stack chunks, as for_chunks
// does).
template <bool kStore, class Scalar>
ScoreMax<Scalar> transform_scores(const Span<const Scalar>& x, const Span<const Scalar>& mask,
                                  const Span<Scalar>& y, const ScoreTransform<Scalar>& f) {
  const bool has_mask = mask.size != 0;
  auto run = [&](const Scalar* in, const Scalar* m, Scalar* out, Index n) {
    if (has_mask) {
      return f.has_cap() ? transform_scores_contiguous<kStore, true, true>(in, m, out, n, f)
                         : transform_scores_contiguous<kStore, true, false>(in, m, out, n, f);
    }
    return f.has_cap() ? transform_scores_contiguous<kStore, false, true>(in, m, out, n, f)
                       : transform_scores_contiguous<kStore, false, false>(in, m, out, n, f);
  };
  if (x.contiguous() && y.contiguous() && (!has_mask || mask.contiguous()))
    return run(x.data, mask.data, y.data, x.size);
  ScoreMax<Scalar> r;
  alignas(64) Scalar in[kChunk];
  alignas(64) Scalar m[kChunk];
  alignas(64) Scalar out[kChunk];
  for (Index start = 0; start < x.size; start += kChunk) {
    const Index count = std::min(kChunk, x.size - start);
    for (Index k = 0; k < count; ++k)
      in[k] = x[start + k];
    if (has_mask) {
      for (Index k = 0; k < count; ++k)
        m[k] = mask[start + k];
    }
    r.add(run(in, m, out, count));
    if constexpr (kStore) {
      for (Index k = 0; k < count; ++k)
        y[start + k] = out[k];
    }
  }
  return r;
}

// The rows pass 1 flags as irregular (a NaN, no finite max: +inf scores, every score -inf) are
// settled here exactly, whatever overflowed in the scalar type. Each score is recomputed in
// double as u_i = 2^-k t_i (k = 102 for double scalars, so that no finite x_i or mask_i overflows
// whatever the scale and slope, both <= 2^100; 0 for float, whose scores fit a double as they
// are), and y = softmax(2^k u) with the sink 2^-k z, each 2^k (u_i - M) formed after the
// subtraction, as Softmax applies its temperature. Then: a NaN in x or the mask -> NaN row; +inf
// scores (x_i = +inf without a cap, mask_i = +inf) share the mass; every entry masked (-inf in x
// or the mask) -> zeros, even with a sink; otherwise finite scores, however large, get their exact
// weights: a finite x_i whose scale x_i overflowed the scalar is not +inf. Reads x and the mask
// three times and writes y only in the last (y may be x). Rare rows, scalar code.
template <class Scalar>
void attention_irregular_row(const Span<const Scalar>& x, const Span<const Scalar>& mask,
                             const Span<Scalar>& y, const ScoreTransform<Scalar>& f, bool has_sink,
                             Scalar sink) {
  constexpr int k = std::is_same_v<Scalar, double> ? 102 : 0;
  const double inf = std::numeric_limits<double>::infinity();
  const bool has_mask = mask.size != 0;
  const double scale = static_cast<double>(f.scale), cap = static_cast<double>(f.cap);
  const double scaled_cap = std::ldexp(cap, -k), scaled_slope = std::ldexp(double(f.slope), -k);
  const double scaled_scale = std::ldexp(scale, -k);
  // u_i, or -inf for a masked entry (NaNs were ruled out first).
  auto score = [&](Index i) {
    const double xi = static_cast<double>(x[i]);
    const double mi = has_mask ? static_cast<double>(mask[i]) : 0.0;
    if (xi == -inf || mi == -inf)
      return -inf;
    const double s = f.has_cap() ? scaled_cap * std::tanh(scale * xi / cap) : scaled_scale * xi;
    return s + scaled_slope * mi;  // no inf - inf: only x = +inf (no cap) or mask = +inf is +inf
  };
  double top = -inf;
  Index infinite = 0;
  for (Index i = 0; i < x.size; ++i) {
    if (std::isnan(x[i]) || (has_mask && std::isnan(mask[i])))
      return fill(y, std::numeric_limits<Scalar>::quiet_NaN());
    const double u = score(i);
    infinite += u == inf;
    top = std::max(top, u);
  }
  if (top == -inf)
    return fill(y, Scalar(0));  // every entry masked: zeros, even with a sink
  if (infinite > 0) {
    const Scalar share = Scalar(1) / Scalar(infinite);
    for (Index i = 0; i < x.size; ++i)
      y[i] = score(i) == inf ? share : Scalar(0);
    return;
  }
  const double z = std::ldexp(static_cast<double>(sink), -k);
  const double m = has_sink ? std::max(top, z) : top;
  auto weight = [&](double u) {
    return std::exp(std::ldexp(u - m, k));
  };
  long double sum = has_sink ? weight(z) : 0.0;
  for (Index i = 0; i < x.size; ++i)
    sum += weight(score(i));
  const double inverse = static_cast<double>(1.0L / sum);
  for (Index i = 0; i < x.size; ++i)
    y[i] = static_cast<Scalar>(weight(score(i)) * inverse);
}

}  // namespace detail

// The fused attention score softmax: see the header's doc block.
class AttentionSoftmax : public detail::DistributionFunctor<AttentionSoftmax>,
                         public detail::BackwardFunctor<AttentionSoftmax> {
 public:
  static constexpr const char* name = "AttentionSoftmax";
  /// The variant's flags (detail::VariantTraits gives their meaning and defaults).
  struct Traits : detail::VariantTraits {
    static constexpr bool backward_reads_input = true;  // the cap's derivative reads x
  };

  explicit AttentionSoftmax(const AttentionOptions& options = {}) : options_(options) {
    if (options.causal())
      detail::fail(name,
                   ": causal must be false (a row has no query position; use a mask), but "
                   "got true");
    if (options.has_window() || options.has_alibi())
      detail::fail(name,
                   ": a window or ALiBi from positions needs MultiHeadAttention (a row "
                   "has no query position), but got window (",
                   options.window_left(), ", ", options.window_right(), ") and alibi max_bias ",
                   options.alibi_max_bias());
  }

  const AttentionOptions& options() const { return options_; }

  // y = softmax(cap(scale x) + m mask) with the sink: x, mask 1-D of one length (either
  // orientation), mask storage of x's scalar; y as for apply(); y may be x, not the mask.
  template <class XprX, class XprM, class Out>
  void apply_masked(const Eigen::DenseBase<XprX>& x, const Eigen::DenseBase<XprM>& mask,
                    Out&& y_out) const {
    using Scalar = typename XprX::Scalar;
    using XprY = detail::output_xpr_t<Out>;
    auto& y = detail::writable_output(std::forward<Out>(y_out));
    check_mask_type<XprX, XprM>();
    detail::require_vector(name, mask.rows(), mask.cols());
    if (mask.size() != x.size()) {
      detail::fail(name, ": mask must have the input's length ", x.size(), ", but got ",
                   mask.rows(), " x ", mask.cols());
    }
    detail::Span<const Scalar> ms = detail::vector_span<const Scalar>(mask.derived());
    using C = detail::compute_scalar_t<Scalar, typename XprY::Scalar>;
    if constexpr (detail::is_mixed_v<Scalar, typename XprY::Scalar> && !std::is_same_v<Scalar, C>) {
      // 16-bit or mixed scores: the mask is converted to the compute type with the row (a stack
      // buffer for rows up to the stage size, a heap workspace beyond).
      constexpr Index kCap = detail::kStageElements<C>;
      auto run = [&](C* buffer) {
        detail::load_as(ms, buffer);
        detail::Span<const C> mc{buffer, ms.size, 1};
        apply_impl(x, y, mc);
      };
      if (ms.size <= kCap) {
        alignas(64) C buffer[kCap];
        run(buffer);
      } else {
        Eigen::Matrix<C, Eigen::Dynamic, 1> work(ms.size);
        run(work.data());
      }
    } else {
      apply_impl(x, y, ms);
    }
  }
  template <class XprX, class XprM>
  typename XprX::PlainObject masked(const Eigen::DenseBase<XprX>& x,
                                    const Eigen::DenseBase<XprM>& mask) const {
    typename XprX::PlainObject y(x.rows(), x.cols());
    apply_masked(x, mask, y);
    return y;
  }

  // Each row of S with its mask row: M has S's shape, or is one row broadcast over every row.
  template <class XprS, class XprM, class Out>
  void rowwise_masked(const Eigen::DenseBase<XprS>& s, const Eigen::DenseBase<XprM>& mask,
                      Out&& p_out) const {
    using XprP = detail::output_xpr_t<Out>;
    auto& p = detail::writable_output(std::forward<Out>(p_out));
    if constexpr (detail::is_mixed_v<typename XprS::Scalar, typename XprP::Scalar>) {
      // 16-bit or mixed scalars: row by row through apply_masked's staged path.
      check_mask_type<XprS, XprM>();
      static_check_io<XprS, XprP>();
      detail::require_same_size("AttentionSoftmax::rowwise_masked", s.rows(), s.cols(), p.rows(),
                                p.cols());
      const bool broadcast_rows = mask.rows() == 1 && s.rows() != 1;
      if (!((mask.rows() == s.rows() || broadcast_rows) && mask.cols() == s.cols())) {
        detail::fail(name, ": rowwise_masked needs a mask of shape ", s.rows(), " x ", s.cols(),
                     " or 1 x ", s.cols(), ", but got ", mask.rows(), " x ", mask.cols());
      }
      for (Index i = 0; i < s.rows(); ++i)
        apply_masked(s.derived().row(i), mask.derived().row(broadcast_rows ? 0 : i), p.row(i));
    } else {
      rowwise_masked_same(s, mask, p);
    }
  }

 private:
  template <class XprS, class XprM, class XprP>
  void rowwise_masked_same(const Eigen::DenseBase<XprS>& s, const Eigen::DenseBase<XprM>& mask,
                           const Eigen::DenseBase<XprP>& p_const) const {
    using Scalar = typename XprS::Scalar;
    check_mask_type<XprS, XprM>();
    static_check_io<XprS, XprP>();
    auto& p = const_cast<Eigen::DenseBase<XprP>&>(p_const).derived();
    detail::require_same_size("AttentionSoftmax::rowwise_masked", s.rows(), s.cols(), p.rows(),
                              p.cols());
    const bool broadcast = mask.rows() == 1 && s.rows() != 1;
    if (!((mask.rows() == s.rows() || broadcast) && mask.cols() == s.cols())) {
      detail::fail(name, ": rowwise_masked needs a mask of shape ", s.rows(), " x ", s.cols(),
                   " or 1 x ", s.cols(), ", but got ", mask.rows(), " x ", mask.cols());
    }
    if (s.size() == 0)
      return;
    const auto& md = mask.derived();
    auto mask_row = [&](Index i) {
      return detail::slice_span<const Scalar>(md, broadcast ? 0 : i, true);
    };
    if constexpr (detail::has_direct_access_v<XprS>) {
      const auto& sd = s.derived();
      const bool same_layout = sd.rowStride() == p.rowStride() && sd.colStride() == p.colStride();
      if (detail::matrices_partially_overlap<Scalar>(sd.data(), detail::last_coefficient(sd),
                                                     p.data(), detail::last_coefficient(p),
                                                     same_layout)) {
        detail::fail(name,
                     ": output partially overlaps the input (only exact in-place is "
                     "allowed)");
      }
      detail::for_each_slice<detail::kParallelSlices>(s.rows(), s.cols(), [&](Index i) {
        compute<Scalar>(detail::slice_span<const Scalar>(sd, i, true),
                        detail::slice_span<Scalar>(p, i, true), mask_row(i));
      });
    } else {
      detail::evaluate_into(s, p);
      detail::for_each_slice<detail::kParallelSlices>(s.rows(), s.cols(), [&](Index i) {
        const detail::Span<Scalar> ps = detail::slice_span<Scalar>(p, i, true);
        compute<Scalar>(detail::Span<const Scalar>{ps.data, ps.size, ps.stride}, ps, mask_row(i));
      });
    }
  }

 public:
  template <class XprS, class XprM>
  typename XprS::PlainObject rowwise_masked(const Eigen::DenseBase<XprS>& s,
                                            const Eigen::DenseBase<XprM>& mask) const {
    typename XprS::PlainObject p(s.rows(), s.cols());
    rowwise_masked(s, mask, p);
    return p;
  }

 private:
  friend class detail::DistributionFunctor<AttentionSoftmax>;
  friend class detail::BackwardFunctor<AttentionSoftmax>;

  template <class XprX, class XprM>
  static void check_mask_type() {
    static_assert(std::is_same_v<typename XprX::Scalar, typename XprM::Scalar>,
                  "softmaxlab: the mask must have the input's scalar type");
    static_assert(detail::has_direct_access_v<XprM>,
                  "softmaxlab: the mask must be storage (Matrix, Array, Map, Ref or a Block of "
                  "one); evaluate an expression first");
  }

  template <class Scalar>
  detail::ScoreTransform<Scalar> transform() const {
    detail::ScoreTransform<Scalar> f;
    f.scale = static_cast<Scalar>(options_.scale_or(1.0));
    f.slope = static_cast<Scalar>(options_.mask_slope());
    f.cap = static_cast<Scalar>(options_.softcap());
    return f;
  }

  template <class Scalar>
  void compute(const detail::Span<const Scalar>& x, const detail::Span<Scalar>& y) const {
    compute<Scalar>(x, y, detail::Span<const Scalar>{nullptr, 0, 1});
  }

  template <class Scalar>
  void compute(const detail::Span<const Scalar>& x, const detail::Span<Scalar>& y,
               const detail::Span<const Scalar>& mask) const {
    const detail::ScoreTransform<Scalar> f = transform<Scalar>();
    const Scalar z = static_cast<Scalar>(options_.sink());
    // Pass 1: the transformed scores into y, and their max. In place, only the max: an irregular
    // row needs x again; a regular one is transformed once more.
    const bool in_place = x.data == y.data;
    const detail::ScoreMax<Scalar> r = in_place ? detail::transform_scores<false>(x, mask, y, f)
                                                : detail::transform_scores<true>(x, mask, y, f);
    if (r.nan || r.overflow || !(std::abs(r.max) < std::numeric_limits<Scalar>::infinity()))
      return detail::attention_irregular_row(x, mask, y, f, options_.has_sink(), z);
    if (in_place)
      detail::transform_scores<true>(x, mask, y, f);
    const detail::Span<const Scalar> t{y.data, y.size, y.stride};
    // Passes 2 and 3: Softmax's, with the sink in the max and the sum.
    Scalar m = r.max;
    long double sink_term = 0;
    if (options_.has_sink()) {
      m = std::max(m, z);
      sink_term =
          std::ldexp(std::exp(static_cast<long double>(z) - m), detail::kExpScaleLog2<Scalar>);
    }
    const long double sum = detail::scaled_exp_pass<true>(t, y, m, Scalar(1), false) + sink_term;
    const Scalar inverse = detail::reciprocal<Scalar>(sum);
    if (y.contiguous()) {
      detail::scale_in_place(y.data, y.size, inverse);
    } else {
      for (Index i = 0; i < y.size; ++i)
        y[i] *= inverse;
    }
  }

  template <class Scalar>
  void compute_backward(const detail::Span<const Scalar>& x, const detail::Span<const Scalar>& y,
                        const detail::Span<const Scalar>& dy,
                        const detail::Span<Scalar>& dx) const {
    const Scalar scale = static_cast<Scalar>(options_.scale_or(1.0));
    const double c = options_.softcap();
    const Scalar inv_c = c > 0 ? static_cast<Scalar>(1.0 / c) : Scalar(0);
    detail::with_arrays(
        [&](auto xa, auto ya, auto dya, auto dxa) {
          const Scalar s = (ya * dya).sum();
          if (c > 0) {
            dxa = ya * (dya - s) * scale * (Scalar(1) - (xa * (scale * inv_c)).tanh().square());
          } else {
            dxa = ya * (dya - s) * scale;
          }
        },
        x, y, dy, dx);
  }

  AttentionOptions options_;
};

namespace detail {

// The scalar type lse may have beside O's: O's own, or float when O is 16-bit (FlashAttention's
// convention: a 16-bit lse is off by up to 2^-9 (half) or 2^-6 (bfloat16) near 8, and every
// weight the backward rebuilds from it inherits that error).
template <class Out, class L>
inline constexpr bool lse_scalar_ok_v =
    std::is_same_v<L, Out> || (std::is_same_v<L, float> && is_16bit_v<Out>);

// Query and key block sizes of Attention: the default and the largest (the stack workspace is
// kAttentionMaxBlockQ x kAttentionMaxBlockK scalars, two of them in the backward pass).
inline constexpr Index kAttentionMaxBlockQ = 64;
inline constexpr Index kAttentionMaxBlockK = 128;

template <class Scalar>
using RowMajorMatrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Everything a query block needs besides the matrices.
template <class Scalar>
struct AttentionPlan {
  ScoreTransform<Scalar> transform;
  bool causal = false;
  bool has_sink = false;
  Scalar sink = 0;
  Index block_q = kAttentionMaxBlockQ;
  Index block_k = kAttentionMaxBlockK;
};

// One past the last key any query row of [i0, i0 + bq) sees (causal: j <= i + Lk - Lq).
inline Index attention_key_end(Index i0, Index bq, Index lq, Index lk, bool causal) {
  if (!causal)
    return lk;
  return std::clamp<Index>(i0 + bq + lk - lq, 0, lk);
}

// Number of keys of the block [j0, j0 + nk) that query row i sees.
inline Index attention_visible(Index i, Index j0, Index nk, Index lq, Index lk, bool causal) {
  if (!causal)
    return nk;
  return std::clamp<Index>(i + lk - lq - j0 + 1, 0, nk);
}

// The mask entries of query row i for keys [j0, j0 + n) (size 0 when there is no mask).
template <class Scalar, class MaskM>
Span<const Scalar> attention_mask_span(const MaskM* mask, Index i, Index j0, Index n) {
  if (mask == nullptr || n == 0)
    return {nullptr, 0, 1};
  Span<const Scalar> m = slice_span<const Scalar>(*mask, i, true);
  return {m.data + j0 * m.stride, n, m.stride};
}

// The key/value block loop of query rows [i0, i0 + bq), shared by the forward passes and the
// backward pass: for each block of keys [j0, j0 + nk) up to the last one these rows see (causal),
// S = Q_b K_j^T (one GEMM into `scores`, bq x nk row-major), then fn(j0, nk, S).
template <class Scalar, class QM, class KM, class Fn>
void for_each_key_block(const QM& q, const KM& k, Index i0, Index bq,
                        const AttentionPlan<Scalar>& plan, Scalar* scores, const Fn& fn) {
  const auto qb = q.middleRows(i0, bq);
  const Index key_end = attention_key_end(i0, bq, q.rows(), k.rows(), plan.causal);
  for (Index j0 = 0; j0 < key_end; j0 += plan.block_k) {
    const Index nk = std::min(plan.block_k, key_end - j0);
    Eigen::Map<RowMajorMatrix<Scalar>> s(scores, bq, nk);
    s.noalias() = qb * k.middleRows(j0, nk).transpose();
    fn(j0, nk, s);
  }
}

// The flash forward pass of query rows [i0, i0 + bq): O rows and lse entries (lse.size == 0:
// none), softmax weights.
template <class Scalar, class QM, class KM, class VM, class MaskM, class OM>
void attention_forward_block(const QM& q, const KM& k, const VM& v, const MaskM* mask, OM& o,
                             const Span<Scalar>& lse, Index i0, Index bq,
                             const AttentionPlan<Scalar>& plan) {
  const Scalar inf = std::numeric_limits<Scalar>::infinity();
  const Index lq = q.rows(), lk = k.rows();
  alignas(64) Scalar buffer[kAttentionMaxBlockQ * kAttentionMaxBlockK];
  Scalar running_max[kAttentionMaxBlockQ];
  long double running_sum[kAttentionMaxBlockQ];
  bool nan_row[kAttentionMaxBlockQ];
  for (Index r = 0; r < bq; ++r) {
    running_max[r] = -inf;
    running_sum[r] = 0;
    nan_row[r] = false;
  }
  auto ob = o.middleRows(i0, bq);
  ob.setZero();
  for_each_key_block(q, k, i0, bq, plan, buffer, [&](Index j0, Index nk, auto& s) {
    for (Index r = 0; r < bq; ++r) {
      Scalar* row = buffer + r * nk;
      const Index visible = attention_visible(i0 + r, j0, nk, lq, lk, plan.causal);
      std::fill(row + visible, row + nk, Scalar(0));  // keys this query does not see: weight 0
      ScoreMax<Scalar> sm;
      if (visible > 0) {
        sm = transform_scores<true>(Span<const Scalar>{row, visible, 1},
                                    attention_mask_span<Scalar>(mask, i0 + r, j0, visible),
                                    Span<Scalar>{row, visible, 1}, plan.transform);
      }
      nan_row[r] = nan_row[r] || sm.nan;
      const Scalar m_old = running_max[r];
      const Scalar m_new = std::max(m_old, sm.max);
      if (nan_row[r] || m_new == -inf) {  // nothing to add (the NaN row is written at the end)
        std::fill(row, row + visible, Scalar(0));
        continue;
      }
      if (m_new == inf) {  // only +inf scores carry mass, one each
        if (m_old != inf) {
          ob.row(r).setZero();
          running_sum[r] = 0;
        }
        Index count = 0;
        for (Index j = 0; j < visible; ++j) {
          const bool at_inf = row[j] == inf;
          count += at_inf;
          row[j] = at_inf ? Scalar(1) : Scalar(0);
        }
        running_sum[r] += count;
      } else {
        if (m_new > m_old && m_old != -inf) {
          // The max grew: rescale what was accumulated (the online normalizer's merge).
          const Scalar alpha =
              static_cast<Scalar>(std::exp(static_cast<long double>(m_old) - m_new));
          ob.row(r) *= alpha;
          running_sum[r] *= alpha;
        }
        running_sum[r] += exp_shift_store_sum(row, visible, m_new);
      }
      running_max[r] = m_new;
    }
    ob.noalias() += s * v.middleRows(j0, nk);
  });
  for (Index r = 0; r < bq; ++r) {
    const Scalar m = running_max[r];
    Scalar row_lse;
    if (nan_row[r]) {
      ob.row(r).setConstant(std::numeric_limits<Scalar>::quiet_NaN());
      row_lse = std::numeric_limits<Scalar>::quiet_NaN();
    } else if (m == -inf) {
      // No visible key (every key masked, causal, or Lk = 0): the output is 0 (the sink has no
      // value) and lse is the log-sum-exp of the sink alone, z, so merge_attention gives this
      // partial the sink's mass; -inf without a sink.
      ob.row(r).setZero();
      row_lse = plan.has_sink ? plan.sink : -inf;
    } else if (m == inf) {
      ob.row(r) *= static_cast<Scalar>(1.0L / running_sum[r]);
      row_lse = inf;
    } else {
      long double top = m, sum = running_sum[r], factor = 1;
      if (plan.has_sink) {
        top = std::max<long double>(m, plan.sink);
        factor = std::exp(static_cast<long double>(m) - top);
        sum = sum * factor + std::exp(static_cast<long double>(plan.sink) - top);
      }
      ob.row(r) *= static_cast<Scalar>(factor / sum);
      row_lse = static_cast<Scalar>(top + std::log(sum));
    }
    if (lse.size != 0)
      lse[i0 + r] = row_lse;
  }
}

// z^p for an even p >= 2 by repeated squaring.
template <class Scalar>
Scalar even_power(Scalar z, int p) {
  Scalar base = z * z, result = 1;
  for (int e = p / 2; e > 0; e >>= 1) {
    if (e & 1)
      result *= base;
    base *= base;
  }
  return result;
}

// The flash forward pass of query rows [i0, i0 + bq) with Power-Softmax weights (Stable form):
// w_ij = t_ij^p / sum_j t_ij^p. The running scale is a power of two 2^e_i >= max_j |t_ij| (as
// PowerSoftmax scales its rows), so the rescale when it grows, (2^e_old / 2^e_new)^p, is exact.
// A row's state is one of: all visible scores zero so far (uniform weights, the formula's limit),
// a finite scale 2^e, or infinite scores seen (they share the mass). Masked keys (-inf in the
// scaled mask, causal) are left out.
template <class Scalar, class QM, class KM, class VM, class MaskM, class OM>
void attention_forward_block_power(const QM& q, const KM& k, const VM& v, const MaskM* mask, OM& o,
                                   Index i0, Index bq, const AttentionPlan<Scalar>& plan, int p) {
  const Scalar inf = std::numeric_limits<Scalar>::infinity();
  const Scalar nan = std::numeric_limits<Scalar>::quiet_NaN();
  constexpr int kEmpty = -2, kZero = -1, kFinite = 0, kInfinite = 1;  // row modes, in order
  const Index lq = q.rows(), lk = k.rows();
  const ScoreTransform<Scalar>& f = plan.transform;
  alignas(64) Scalar buffer[kAttentionMaxBlockQ * kAttentionMaxBlockK];
  int mode[kAttentionMaxBlockQ], exponent[kAttentionMaxBlockQ];
  long double running_sum[kAttentionMaxBlockQ];
  bool nan_row[kAttentionMaxBlockQ];
  for (Index r = 0; r < bq; ++r) {
    mode[r] = kEmpty;
    exponent[r] = 0;
    running_sum[r] = 0;
    nan_row[r] = false;
  }
  auto ob = o.middleRows(i0, bq);
  ob.setZero();
  for_each_key_block(q, k, i0, bq, plan, buffer, [&](Index j0, Index nk, auto& s) {
    for (Index r = 0; r < bq; ++r) {
      Scalar* row = buffer + r * nk;
      const Index visible = attention_visible(i0 + r, j0, nk, lq, lk, plan.causal);
      const Span<const Scalar> ms = attention_mask_span<Scalar>(mask, i0 + r, j0, visible);
      std::fill(row + visible, row + nk, Scalar(0));
      // The transformed scores; masked keys become NaN here (NaN inputs were flagged first).
      Scalar top = 0;
      bool any = false;
      for (Index j = 0; j < visible; ++j) {
        Scalar t = f.scale * row[j];
        if (f.has_cap())
          t = f.cap * std::tanh(t / f.cap);
        if (ms.size != 0) {
          const Scalar mm = f.slope * ms[j];
          if (mm != mm || t != t) {
            nan_row[r] = true;
          } else if (mm == -inf) {
            row[j] = nan;  // masked
            continue;
          }
          t += mm;
        }
        nan_row[r] = nan_row[r] || t != t;
        row[j] = t;
        top = std::max(top, std::fabs(t));
        any = true;
      }
      if (nan_row[r] || !any) {
        std::fill(row, row + visible, Scalar(0));
        continue;
      }
      int new_mode = top == inf ? kInfinite : top == 0 ? kZero : kFinite;
      int e = 0;
      if (new_mode == kFinite)
        std::frexp(top, &e);  // 2^(e-1) <= top < 2^e
      if (new_mode < mode[r] || (new_mode == kFinite && mode[r] == kFinite && e < exponent[r])) {
        // This block's entries are negligible next to what was seen: they use the row's level.
        new_mode = mode[r];
        e = exponent[r];
      }
      if (new_mode > mode[r]) {  // a higher mode: what was accumulated has weight 0 in the limit
        ob.row(r).setZero();
        running_sum[r] = 0;
      } else if (new_mode == kFinite && e > exponent[r]) {
        const Scalar factor = std::ldexp(Scalar(1), p * (exponent[r] - e));  // exact or 0
        ob.row(r) *= factor;
        running_sum[r] *= factor;
      }
      mode[r] = new_mode;
      exponent[r] = e;
      long double sum = 0;
      for (Index j = 0; j < visible; ++j) {
        const Scalar t = row[j];
        Scalar w = 0;
        if (t == t) {
          if (new_mode == kInfinite) {
            w = std::fabs(t) == inf ? Scalar(1) : Scalar(0);
          } else if (new_mode == kZero) {
            w = 1;
          } else {
            w = even_power(std::ldexp(t, -e), p);
          }
        }
        row[j] = w;
        sum += w;
      }
      running_sum[r] += sum;
    }
    ob.noalias() += s * v.middleRows(j0, nk);
  });
  for (Index r = 0; r < bq; ++r) {
    if (nan_row[r]) {
      ob.row(r).setConstant(nan);
    } else if (mode[r] == kEmpty) {
      ob.row(r).setZero();
    } else {
      ob.row(r) *= static_cast<Scalar>(1.0L / running_sum[r]);
    }
  }
}

// The forward pass of query rows [i0, i0 + bq) with PolynomialSoftmax weights and a public-bound
// shift (what an encrypted pipeline computes: no max, so nothing to rescale): w_ij =
// E(t_ij - B) / sum_j E(t_ij - B), E the configured polynomial exp (clipped to [-R, 0], so scores
// above B count as B), the configured reciprocal of the sum (range from the number of visible
// keys) at the end. Masked keys are left out.
template <class Scalar, class QM, class KM, class VM, class MaskM, class OM>
void attention_forward_block_polynomial(const QM& q, const KM& k, const VM& v, const MaskM* mask,
                                        OM& o, Index i0, Index bq,
                                        const AttentionPlan<Scalar>& plan,
                                        const PolynomialSoftmax& weight) {
  const Scalar inf = std::numeric_limits<Scalar>::infinity();
  const Index lq = q.rows(), lk = k.rows();
  const ScoreTransform<Scalar>& f = plan.transform;
  const Scalar bound = static_cast<Scalar>(weight.options().bound);
  const approx::ExpApprox& e = weight.exp_approx();
  alignas(64) Scalar buffer[kAttentionMaxBlockQ * kAttentionMaxBlockK];
  long double running_sum[kAttentionMaxBlockQ];
  Index kept[kAttentionMaxBlockQ];
  bool nan_row[kAttentionMaxBlockQ];
  for (Index r = 0; r < bq; ++r) {
    running_sum[r] = 0;
    kept[r] = 0;
    nan_row[r] = false;
  }
  auto ob = o.middleRows(i0, bq);
  ob.setZero();
  for_each_key_block(q, k, i0, bq, plan, buffer, [&](Index j0, Index nk, auto& s) {
    for (Index r = 0; r < bq; ++r) {
      Scalar* row = buffer + r * nk;
      const Index visible = attention_visible(i0 + r, j0, nk, lq, lk, plan.causal);
      const Span<const Scalar> ms = attention_mask_span<Scalar>(mask, i0 + r, j0, visible);
      std::fill(row + visible, row + nk, Scalar(0));
      long double sum = 0;
      for (Index j = 0; j < visible; ++j) {
        Scalar t = f.scale * row[j];
        if (f.has_cap())
          t = f.cap * std::tanh(t / f.cap);
        const bool masked_score = t == -inf;
        if (ms.size != 0)
          t = f.slope * ms[j] == -inf ? -inf : t + f.slope * ms[j];
        if (t != t) {
          nan_row[r] = true;
          row[j] = 0;
          continue;
        }
        if (masked_score || t == -inf) {
          row[j] = 0;
          continue;
        }
        row[j] = e.evaluate_scalar<Scalar>(t - bound);
        sum += row[j];
        ++kept[r];
      }
      running_sum[r] += sum;
    }
    ob.noalias() += s * v.middleRows(j0, nk);
  });
  for (Index r = 0; r < bq; ++r) {
    const Scalar sum = static_cast<Scalar>(running_sum[r]);
    if (nan_row[r] || sum != sum) {
      ob.row(r).setConstant(std::numeric_limits<Scalar>::quiet_NaN());
    } else if (kept[r] == 0 || sum == Scalar(0)) {
      ob.row(r).setZero();
    } else {
      Scalar reciprocal;
      const PolynomialSoftmaxOptions& c = weight.options();
      if (c.reciprocal == ReciprocalMethod::Exact) {
        reciprocal = Scalar(1) / sum;
      } else {
        const approx::ReciprocalRange range = weight.reciprocal_range<Scalar>(kept[r]);
        const int iterations = weight.iterations_for<Scalar>(kept[r]);
        const Scalar z0 = static_cast<Scalar>(range.z0);
        reciprocal = c.reciprocal == ReciprocalMethod::Goldschmidt
                         ? approx::goldschmidt_reciprocal(sum, z0, iterations)
                         : approx::newton_reciprocal(sum, z0, iterations);
      }
      ob.row(r) *= reciprocal;
    }
  }
}

// The backward pass (FlashAttention-2's recomputation) of query rows [i0, i0 + bq): adds their
// terms to dQ's rows (zeroed by the caller), to dK and to dV.
template <class Scalar, class QM, class KM, class VM, class MaskM, class OM, class LM, class DOM,
          class DQ, class DK, class DV>
void attention_backward_block(const QM& q, const KM& k, const VM& v, const MaskM* mask, const OM& o,
                              const LM& lse, const DOM& dout, DQ& dq, DK& dk, DV& dv, Index i0,
                              Index bq, const AttentionPlan<Scalar>& plan) {
  const Scalar inf = std::numeric_limits<Scalar>::infinity();
  const Index lq = q.rows(), lk = k.rows();
  alignas(64) Scalar p_buffer[kAttentionMaxBlockQ * kAttentionMaxBlockK];
  alignas(64) Scalar ds_buffer[kAttentionMaxBlockQ * kAttentionMaxBlockK];
  Scalar delta[kAttentionMaxBlockQ];
  const ScoreTransform<Scalar>& f = plan.transform;
  for (Index r = 0; r < bq; ++r)
    delta[r] = dout.row(i0 + r).cwiseProduct(o.row(i0 + r)).sum();
  const auto qb = q.middleRows(i0, bq);
  const auto dob = dout.middleRows(i0, bq);
  for_each_key_block(q, k, i0, bq, plan, p_buffer, [&](Index j0, Index nk, auto& p) {
    Eigen::Map<RowMajorMatrix<Scalar>> ds(ds_buffer, bq, nk);
    ds.noalias() = dob * v.middleRows(j0, nk).transpose();  // dP
    for (Index r = 0; r < bq; ++r) {
      const Index visible = attention_visible(i0 + r, j0, nk, lq, lk, plan.causal);
      const Span<const Scalar> ms = attention_mask_span<Scalar>(mask, i0 + r, j0, visible);
      const Scalar row_lse = lse[i0 + r];
      for (Index j = 0; j < nk; ++j) {
        Scalar weight = 0, slope_of_cap = 1;
        if (j < visible) {
          const Scalar pre = f.scale * p(r, j);
          const Scalar capped = f.has_cap() ? f.cap * std::tanh(pre / f.cap) : pre;
          if (f.has_cap())
            slope_of_cap = Scalar(1) - (capped / f.cap) * (capped / f.cap);
          Scalar t = capped;
          if (ms.size != 0) {
            const Scalar mm = f.slope * ms[j];
            t = mm == -inf ? -inf : t + mm;
          }
          if (pre == -inf)
            t = -inf;
          if (row_lse != row_lse || t != t) {
            weight = std::numeric_limits<Scalar>::quiet_NaN();
          } else if (row_lse != -inf && row_lse != inf && t != -inf) {
            weight = std::exp(t - row_lse);
          }  // masked keys, all-masked rows and +inf rows (locally constant): 0
        }
        p(r, j) = weight;
        ds(r, j) =
            weight == 0 ? Scalar(0) : weight * (ds(r, j) - delta[r]) * slope_of_cap * f.scale;
      }
    }
    dv.middleRows(j0, nk).noalias() += p.transpose() * dob;
    dq.middleRows(i0, bq).noalias() += ds * k.middleRows(j0, nk);
    dk.middleRows(j0, nk).noalias() += ds.transpose() * qb;
  });
}

// The backward pass, sequential: dQ, dK, dV are overwritten.
template <class Scalar, class QM, class KM, class VM, class MaskM, class OM, class LM, class DOM,
          class DQ, class DK, class DV>
void attention_backward(const QM& q, const KM& k, const VM& v, const MaskM* mask, const OM& o,
                        const LM& lse, const DOM& dout, DQ& dq, DK& dk, DV& dv,
                        const AttentionPlan<Scalar>& plan) {
  dq.setZero();
  dk.setZero();
  dv.setZero();
  for (Index i0 = 0; i0 < q.rows(); i0 += plan.block_q) {
    attention_backward_block(q, k, v, mask, o, lse, dout, dq, dk, dv, i0,
                             std::min(plan.block_q, q.rows() - i0), plan);
  }
}

// The 16-bit and mixed-type paths of Attention, forward and backward: the float (or double) code
// on exactly widened copies. K and V are widened to C once (Lk (d + dv) elements); then each query
// block [i0, i0 + n) goes to fn(i0, n, Q_b, K_b, V_b, mask_b) as an attention problem of its
// own: its Q rows and mask rows widened (n (d + lk_b) elements, mask_b null without a mask), with
// the first lk_b keys it sees (causal: j < i0 + n + Lk - Lq; the bottom-right rule on n queries and
// lk_b keys is then exactly j <= i + Lk - Lq). The float code meets the same key blocks in the same
// order as on the whole problem, so its results are bit-for-bit those of the float call on the
// widened inputs. kParallel: the blocks may run on several threads (the forward); otherwise in
// order (the backward accumulates dK and dV).
template <class C, bool kParallel, class XQ, class XK, class XV, class XM, class Fn>
void for_each_widened_query_block(const XQ& q, const XK& k_in, const XV& v_in, const XM* mask,
                                  Index block, bool causal, const Fn& fn) {
  using M = Eigen::Matrix<C, Eigen::Dynamic, Eigen::Dynamic>;
  const Index lq = q.rows(), lk = k_in.rows();
  const M k = k_in.template cast<C>();
  const M v = v_in.template cast<C>();
  const Index blocks = (lq + block - 1) / block;
  for_each_slice<kParallel>(blocks, block * (lk + 1) * (q.cols() + v.cols() + 1), [&](Index b) {
    const Index i0 = b * block, n = std::min(block, lq - i0);
    const Index lk_b = attention_key_end(i0, n, lq, lk, causal);
    const M qb = q.middleRows(i0, n).template cast<C>();
    const auto kb = k.topRows(lk_b);
    const auto vb = v.topRows(lk_b);
    if (mask != nullptr) {
      const M mb = mask->block(i0, 0, n, lk_b).template cast<C>();
      fn(i0, n, qb, kb, vb, &mb);
    } else {
      fn(i0, n, qb, kb, vb, static_cast<const M*>(nullptr));
    }
  });
}

template <class A, class B>
void require_no_overlap(const char* function, const char* out, const char* in, const A& a,
                        const B& b) {
  if constexpr (has_direct_access_v<B>) {
    if (storage_overlaps(a, b))
      fail(function, ": ", out, " must not overlap the input ", in);
  }
}

}  // namespace detail

// Flash-style attention for one head: see the header's doc block.
template <class Weight = Softmax>
class Attention {
  static_assert(
      std::is_same_v<
          Weight,
          Softmax> || std::is_same_v<Weight, PowerSoftmax> || std::is_same_v<Weight, PolynomialSoftmax>,
      "softmaxlab: Attention supports the Softmax, PowerSoftmax and PolynomialSoftmax "
      "weights");
  static constexpr bool kSoftmax = std::is_same_v<Weight, Softmax>;

 public:
  static constexpr const char* name = "Attention";

  explicit Attention(const AttentionOptions& options = {}, const Weight& weight = Weight())
      : options_(options), weight_(weight) {
    if (options.has_window() || options.has_alibi())
      detail::fail(name,
                   ": a window or ALiBi from positions needs MultiHeadAttention, but got "
                   "window (",
                   options.window_left(), ", ", options.window_right(), ") and alibi max_bias ",
                   options.alibi_max_bias());
    if constexpr (kSoftmax) {
      if (weight.temperature() != 1.0) {
        detail::fail(name,
                     ": the Softmax weight's temperature must be 1 (fold it into the scale), "
                     "but got ",
                     weight.temperature());
      }
    } else if constexpr (std::is_same_v<Weight, PolynomialSoftmax>) {
      if (weight.options().shift != Shift::PublicBound)
        detail::fail(name,
                     ": the PolynomialSoftmax weight must use Shift::PublicBound (online, "
                     "no max), but got Shift::RowMax");
      if (options.has_sink())
        detail::fail(name, ": a sink needs the Softmax weight, but got sink ", options.sink(),
                     " with PolynomialSoftmax");
    } else {
      if (weight.form() != PowerForm::Stable)
        detail::fail(name, ": the PowerSoftmax weight must have the Stable form, but got form ",
                     static_cast<int>(weight.form()));
      if (options.has_sink())
        detail::fail(name, ": a sink needs the Softmax weight, but got sink ", options.sink(),
                     " with PowerSoftmax");
    }
  }

  const AttentionOptions& options() const { return options_; }
  const Weight& weight() const { return weight_; }
  Index block_q() const { return block_q_; }
  Index block_k() const { return block_k_; }

  // Query and key block sizes (1 to 64 and 1 to 128; the defaults are the largest). The result
  // depends on them only through the rounding of the accumulation.
  Attention& with_block_sizes(Index block_q, Index block_k) {
    if (block_q < 1 || block_q > detail::kAttentionMaxBlockQ)
      detail::fail(name, ": block_q must be in [1, ", detail::kAttentionMaxBlockQ, "], but got ",
                   block_q);
    if (block_k < 1 || block_k > detail::kAttentionMaxBlockK)
      detail::fail(name, ": block_k must be in [1, ", detail::kAttentionMaxBlockK, "], but got ",
                   block_k);
    block_q_ = block_q;
    block_k_ = block_k;
    return *this;
  }

  // O = attention(Q, K, V), Lq x dv.
  template <class XQ, class XK, class XV>
  Eigen::Matrix<typename XQ::Scalar, Eigen::Dynamic, Eigen::Dynamic> operator()(
      const Eigen::DenseBase<XQ>& q, const Eigen::DenseBase<XK>& k,
      const Eigen::DenseBase<XV>& v) const {
    Eigen::Matrix<typename XQ::Scalar, Eigen::Dynamic, Eigen::Dynamic> o(q.rows(), v.cols());
    apply(q, k, v, o);
    return o;
  }

  template <class XQ, class XK, class XV, class OutO>
  void apply(const Eigen::DenseBase<XQ>& q, const Eigen::DenseBase<XK>& k,
             const Eigen::DenseBase<XV>& v, OutO&& o) const {
    detail::static_check_output<OutO>();
    forward(q, k, v, static_cast<const NoMask<XQ>*>(nullptr), o,
            static_cast<NoLse<detail::output_xpr_t<OutO>>*>(nullptr));
  }
  template <class XQ, class XK, class XV, class OutO, class OutL>
  void apply(const Eigen::DenseBase<XQ>& q, const Eigen::DenseBase<XK>& k,
             const Eigen::DenseBase<XV>& v, OutO&& o, OutL&& lse) const {
    detail::static_check_output<OutO>();
    detail::static_check_output<OutL>();
    static_assert(kSoftmax && sizeof(XQ) > 0,
                  "softmaxlab: the log-sum-exp output needs the Softmax weight");
    forward(q, k, v, static_cast<const NoMask<XQ>*>(nullptr), o, &lse.derived());
  }
  // mask: Lq x Lk additive (times the mask slope), storage of Q's scalar.
  template <class XQ, class XK, class XV, class XM, class OutO>
  void apply_masked(const Eigen::DenseBase<XQ>& q, const Eigen::DenseBase<XK>& k,
                    const Eigen::DenseBase<XV>& v, const Eigen::DenseBase<XM>& mask,
                    OutO&& o) const {
    detail::static_check_output<OutO>();
    forward(q, k, v, &mask.derived(), o, static_cast<NoLse<detail::output_xpr_t<OutO>>*>(nullptr));
  }
  template <class XQ, class XK, class XV, class XM, class OutO, class OutL>
  void apply_masked(const Eigen::DenseBase<XQ>& q, const Eigen::DenseBase<XK>& k,
                    const Eigen::DenseBase<XV>& v, const Eigen::DenseBase<XM>& mask, OutO&& o,
                    OutL&& lse) const {
    detail::static_check_output<OutO>();
    detail::static_check_output<OutL>();
    static_assert(kSoftmax && sizeof(XQ) > 0,
                  "softmaxlab: the log-sum-exp output needs the Softmax weight");
    forward(q, k, v, &mask.derived(), o, &lse.derived());
  }

  // dQ, dK, dV of <dO, O> from the forward's O and lse (see the doc block); sequential.
  template <class XQ, class XK, class XV, class XO, class XL, class XdO, class OutQ, class OutK,
            class OutV>
  void backward(const Eigen::DenseBase<XQ>& q, const Eigen::DenseBase<XK>& k,
                const Eigen::DenseBase<XV>& v, const Eigen::DenseBase<XO>& o,
                const Eigen::DenseBase<XL>& lse, const Eigen::DenseBase<XdO>& dout, OutQ&& dq,
                OutK&& dk, OutV&& dv) const {
    detail::static_check_output<OutQ>();
    detail::static_check_output<OutK>();
    detail::static_check_output<OutV>();
    backward_impl(q, k, v, static_cast<const NoMask<XQ>*>(nullptr), o, lse, dout, dq, dk, dv);
  }
  template <class XQ, class XK, class XV, class XM, class XO, class XL, class XdO, class OutQ,
            class OutK, class OutV>
  void backward_masked(const Eigen::DenseBase<XQ>& q, const Eigen::DenseBase<XK>& k,
                       const Eigen::DenseBase<XV>& v, const Eigen::DenseBase<XM>& mask,
                       const Eigen::DenseBase<XO>& o, const Eigen::DenseBase<XL>& lse,
                       const Eigen::DenseBase<XdO>& dout, OutQ&& dq, OutK&& dk, OutV&& dv) const {
    detail::static_check_output<OutQ>();
    detail::static_check_output<OutK>();
    detail::static_check_output<OutV>();
    backward_impl(q, k, v, &mask.derived(), o, lse, dout, dq, dk, dv);
  }

 private:
  template <class XQ>
  using NoMask = Eigen::Matrix<typename XQ::Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  template <class XO>
  using NoLse = Eigen::Matrix<typename XO::Scalar, Eigen::Dynamic, 1>;

  template <class Scalar>
  detail::AttentionPlan<Scalar> plan(Index d) const {
    detail::AttentionPlan<Scalar> p;
    const double scale = options_.scale_or(d > 0 ? 1.0 / std::sqrt(static_cast<double>(d)) : 1.0);
    p.transform.scale = static_cast<Scalar>(scale);
    p.transform.slope = static_cast<Scalar>(options_.mask_slope());
    p.transform.cap = static_cast<Scalar>(options_.softcap());
    p.causal = options_.causal();
    p.has_sink = options_.has_sink();
    p.sink = static_cast<Scalar>(options_.sink());
    p.block_q = block_q_;
    p.block_k = block_k_;
    return p;
  }

  template <class XQ, class XK, class XV>
  static void check_qkv(const XQ& q, const XK& k, const XV& v) {
    using Scalar = typename XQ::Scalar;
    detail::static_check_storage_scalars<Scalar, Scalar>();
    static_assert(
        std::is_same_v<Scalar, typename XK::Scalar> && std::is_same_v<Scalar, typename XV::Scalar>,
        "softmaxlab: Q, K and V must have the same scalar type");
    if (q.cols() != k.cols()) {
      detail::fail(name, ": Q and K must have the same number of columns d, but got Q ", q.rows(),
                   " x ", q.cols(), " and K ", k.rows(), " x ", k.cols());
    }
    if (k.rows() != v.rows()) {
      detail::fail(name, ": K and V must have the same number of rows Lk, but got K ", k.rows(),
                   " x ", k.cols(), " and V ", v.rows(), " x ", v.cols());
    }
  }

  template <class Out>
  static void check_output(const char* what, const Out& out, Index rows, Index cols) {
    if (out.rows() != rows || out.cols() != cols) {
      detail::fail(name, ": ", what, " must be ", rows, " x ", cols, ", but got ", out.rows(),
                   " x ", out.cols());
    }
  }

  template <class XL>
  static void check_lse(const XL& lse, Index lq) {
    if (!((lse.rows() == 1 || lse.cols() == 1) && lse.size() == lq)) {
      detail::fail(name, ": lse must be a vector of Lq = ", lq, " entries, but got ", lse.rows(),
                   " x ", lse.cols());
    }
  }

  template <class XQ, class XK, class XV, class XM, class XO, class XL>
  void forward(const Eigen::DenseBase<XQ>& q_in, const Eigen::DenseBase<XK>& k_in,
               const Eigen::DenseBase<XV>& v_in, const XM* mask, const Eigen::DenseBase<XO>& o_in,
               const XL* lse_in) const {
    if constexpr (detail::is_mixed_v<typename XQ::Scalar, typename XO::Scalar>) {
      forward_staged(q_in, k_in, v_in, mask, o_in, lse_in);
    } else {
      forward_same(q_in, k_in, v_in, mask, o_in, lse_in);
    }
  }

  // 16-bit or mixed types (In = Q's, K's, V's and the mask's scalar, Out = O's and lse's): the
  // float forward pass (double when In or Out is double) on exactly widened copies, O and lse
  // rounded once to Out. The Lq x Lk scores are never formed.
  template <class XQ, class XK, class XV, class XM, class XO, class XL>
  void forward_staged(const Eigen::DenseBase<XQ>& q_in, const Eigen::DenseBase<XK>& k_in,
                      const Eigen::DenseBase<XV>& v_in, const XM* mask,
                      const Eigen::DenseBase<XO>& o_in, const XL* lse_in) const {
    using In = typename XQ::Scalar;
    using Out = typename XO::Scalar;
    using C = detail::compute_scalar_t<In, Out>;
    using M = Eigen::Matrix<C, Eigen::Dynamic, Eigen::Dynamic>;
    using V = Eigen::Matrix<C, Eigen::Dynamic, 1>;
    detail::static_check_storage_scalars<In, Out>();
    static_assert(std::is_same_v<In, typename XM::Scalar>,
                  "softmaxlab: the mask must have Q's scalar type");
    static_assert(detail::lse_scalar_ok_v<Out, typename XL::Scalar>,
                  "softmaxlab: lse must have O's scalar type, or float when O is Eigen::half or "
                  "Eigen::bfloat16");
    auto& o = const_cast<Eigen::DenseBase<XO>&>(o_in).derived();
    if (!check_forward(q_in, k_in, v_in, mask, o, lse_in))
      return;
    // Each query block solved as an attention problem of its own by the float code on widened
    // copies (detail::for_each_widened_query_block), O and lse rounded once to Out.
    detail::for_each_widened_query_block<C, true>(
        q_in.derived(), k_in.derived(), v_in.derived(), mask, block_q_, options_.causal(),
        [&](Index i0, Index n, const auto& qb, const auto& kb, const auto& vb, const auto* mb) {
          M ob(n, v_in.cols());
          V lb(lse_in != nullptr ? n : 0);
          forward_same(qb, kb, vb, mb, ob, lse_in != nullptr ? &lb : static_cast<V*>(nullptr));
          o.middleRows(i0, n) = ob.template cast<Out>();
          if (lse_in != nullptr) {
            auto& lse_out = const_cast<XL&>(*lse_in);
            for (Index r = 0; r < n; ++r)
              lse_out.coeffRef(i0 + r) = detail::convert_scalar<typename XL::Scalar>(lb(r));
          }
        });
  }

  // The forward's argument checks, one place for the float/double and the 16-bit paths: storage,
  // shapes of Q, K, V, O, lse and the mask, and overlaps. Returns whether there is work.
  template <class XQ, class XK, class XV, class XM, class XO, class XL>
  static bool check_forward(const Eigen::DenseBase<XQ>& q, const Eigen::DenseBase<XK>& k,
                            const Eigen::DenseBase<XV>& v, const XM* mask, const XO& o,
                            const XL* lse) {
    static_assert(detail::is_writable_storage_v<XO> && detail::is_writable_storage_v<XL>,
                  "softmaxlab: O and lse must be writable storage (Matrix, Map, Ref or a Block)");
    static_assert(detail::has_direct_access_v<XM>,
                  "softmaxlab: the mask must be storage; evaluate an expression first");
    check_qkv(q.derived(), k.derived(), v.derived());
    const Index lq = q.rows(), lk = k.rows();
    check_output("O", o, lq, v.cols());
    if (lse != nullptr)
      check_lse(*lse, lq);
    if (mask != nullptr)
      check_output("mask", *mask, lq, lk);
    // O is written after every read, but stay strict (O of another scalar type cannot overlap).
    if constexpr (std::is_same_v<typename XQ::Scalar, typename XO::Scalar>) {
      detail::require_no_overlap(name, "O", "Q", o, q.derived());
      detail::require_no_overlap(name, "O", "K", o, k.derived());
      detail::require_no_overlap(name, "O", "V", o, v.derived());
    }
    if (lse != nullptr && lq > 0) {
      // (a float lse beside a 16-bit O is other storage)
      if constexpr (detail::has_direct_access_v<
                        XL> && std::is_same_v<typename XL::Scalar, typename XO::Scalar>)
        detail::require_no_overlap(name, "lse", "O", *lse, o);
    }
    return !(lq == 0 || (o.cols() == 0 && lse == nullptr));
  }

  template <class XQ, class XK, class XV, class XM, class XO, class XL>
  void forward_same(const Eigen::DenseBase<XQ>& q_in, const Eigen::DenseBase<XK>& k_in,
                    const Eigen::DenseBase<XV>& v_in, const XM* mask,
                    const Eigen::DenseBase<XO>& o_in, const XL* lse_in) const {
    using Scalar = typename XQ::Scalar;
    static_assert(
        std::is_same_v<
            Scalar,
            typename XO::
                Scalar> && std::is_same_v<Scalar, typename XM::Scalar> && std::is_same_v<Scalar, typename XL::Scalar>,
        "softmaxlab: O, lse and the mask must have Q's scalar type");
    auto& o = const_cast<Eigen::DenseBase<XO>&>(o_in).derived();
    if (!check_forward(q_in, k_in, v_in, mask, o, lse_in))
      return;
    const Index lq = q_in.rows(), lk = k_in.rows();
    detail::Span<Scalar> lse{nullptr, 0, 1};
    if (lse_in != nullptr)
      lse = detail::vector_span<Scalar>(const_cast<XL&>(*lse_in));
    const detail::AttentionPlan<Scalar> p = plan<Scalar>(q_in.cols());
    detail::with_storage(q_in, [&](const auto& q) {
      detail::with_storage(k_in, [&](const auto& k) {
        detail::with_storage(v_in, [&](const auto& v) {
          const Index blocks = (lq + p.block_q - 1) / p.block_q;
          detail::for_each_slice<detail::kParallelSlices>(
              blocks, p.block_q * (lk + 1) * (q.cols() + v.cols() + 1), [&](Index b) {
                const Index i0 = b * p.block_q;
                if constexpr (kSoftmax) {
                  detail::attention_forward_block(q, k, v, mask, o, lse, i0,
                                                  std::min(p.block_q, lq - i0), p);
                } else if constexpr (std::is_same_v<Weight, PolynomialSoftmax>) {
                  detail::attention_forward_block_polynomial(
                      q, k, v, mask, o, i0, std::min(p.block_q, lq - i0), p, weight_);
                } else {
                  detail::attention_forward_block_power(
                      q, k, v, mask, o, i0, std::min(p.block_q, lq - i0), p, weight_.p());
                }
              });
        });
      });
    });
  }

  // The backward's type rules (the forward's, extended): Q, K, V and the mask of one type In, O
  // and dO of one type Out, lse of type Out or float beside a 16-bit Out (lse_scalar_ok_v), dQ, dK
  // and dV of one type G, each of {half, bfloat16, float, double}; float inside, double when any of
  // them is double.
  template <class XQ, class XK, class XV, class XM, class XO, class XL, class XdO, class XdQ,
            class XdK, class XdV>
  void backward_impl(const Eigen::DenseBase<XQ>& q_in, const Eigen::DenseBase<XK>& k_in,
                     const Eigen::DenseBase<XV>& v_in, const XM* mask,
                     const Eigen::DenseBase<XO>& o_in, const Eigen::DenseBase<XL>& lse_in,
                     const Eigen::DenseBase<XdO>& dout_in, const Eigen::DenseBase<XdQ>& dq_in,
                     const Eigen::DenseBase<XdK>& dk_in, const Eigen::DenseBase<XdV>& dv_in) const {
    using In = typename XQ::Scalar;
    using Out = typename XO::Scalar;
    using G = typename XdQ::Scalar;
    static_assert(kSoftmax && sizeof(XQ) > 0,
                  "softmaxlab: Attention::backward needs the Softmax weight");
    constexpr bool kStorageScalars =
        detail::is_storage_scalar_v<
            In> && detail::is_storage_scalar_v<Out> && detail::is_storage_scalar_v<G>;
    static_assert(kStorageScalars,
                  "softmaxlab: Attention::backward takes Eigen::half, Eigen::bfloat16, float or "
                  "double (Q, K, V, mask; O, lse, dO; dQ, dK, dV)");
    static_assert(
        std::is_same_v<
            In,
            typename XK::
                Scalar> && std::is_same_v<In, typename XV::Scalar> && std::is_same_v<In, typename XM::Scalar>,
        "softmaxlab: K, V and the mask of Attention::backward must have Q's scalar type");
    static_assert(std::is_same_v<Out, typename XdO::Scalar>,
                  "softmaxlab: dO of Attention::backward must have O's scalar type");
    static_assert(detail::lse_scalar_ok_v<Out, typename XL::Scalar>,
                  "softmaxlab: lse of Attention::backward must have O's scalar type, or float when "
                  "O is Eigen::half or Eigen::bfloat16");
    static_assert(
        std::is_same_v<G, typename XdK::Scalar> && std::is_same_v<G, typename XdV::Scalar>,
        "softmaxlab: dK and dV of Attention::backward must have dQ's scalar type");
    static_assert(
        detail::is_writable_storage_v<
            XdQ> && detail::is_writable_storage_v<XdK> && detail::is_writable_storage_v<XdV>,
        "softmaxlab: dQ, dK and dV must be writable storage");
    static_assert(detail::has_direct_access_v<XM>,
                  "softmaxlab: the mask must be storage; evaluate an expression first");
    if constexpr (kStorageScalars) {
      check_qkv(q_in.derived(), k_in.derived(), v_in.derived());
      const Index lq = q_in.rows(), lk = k_in.rows(), d = q_in.cols(), dv_cols = v_in.cols();
      auto& dq = const_cast<Eigen::DenseBase<XdQ>&>(dq_in).derived();
      auto& dk = const_cast<Eigen::DenseBase<XdK>&>(dk_in).derived();
      auto& dv = const_cast<Eigen::DenseBase<XdV>&>(dv_in).derived();
      check_output("O", o_in, lq, dv_cols);
      check_output("dO", dout_in, lq, dv_cols);
      check_lse(lse_in, lq);
      check_output("dQ", dq, lq, d);
      check_output("dK", dk, lk, d);
      check_output("dV", dv, lk, dv_cols);
      if (mask != nullptr)
        check_output("mask", *mask, lq, lk);
      // Only outputs of an input's scalar type can share its storage.
      auto no_overlap = [&](const char* out_name, const auto& out) {
        if constexpr (std::is_same_v<G, In>) {
          detail::require_no_overlap(name, out_name, "Q", out, q_in.derived());
          detail::require_no_overlap(name, out_name, "K", out, k_in.derived());
          detail::require_no_overlap(name, out_name, "V", out, v_in.derived());
        }
        if constexpr (std::is_same_v<G, Out>) {
          detail::require_no_overlap(name, out_name, "O", out, o_in.derived());
          detail::require_no_overlap(name, out_name, "dO", out, dout_in.derived());
        }
      };
      no_overlap("dQ", dq);
      no_overlap("dK", dk);
      no_overlap("dV", dv);
      if constexpr (detail::is_mixed_v<In, Out> || detail::is_mixed_v<In, G>) {
        backward_staged(q_in, k_in, v_in, mask, o_in, lse_in, dout_in, dq, dk, dv);
      } else {
        const detail::AttentionPlan<In> p = plan<In>(d);
        detail::with_storage(q_in, [&](const auto& q) {
          detail::with_storage(k_in, [&](const auto& k) {
            detail::with_storage(v_in, [&](const auto& v) {
              detail::with_storage(o_in, [&](const auto& o) {
                detail::with_storage(dout_in, [&](const auto& dout) {
                  detail::with_storage(lse_in, [&](const auto& lse) {
                    detail::attention_backward(q, k, v, mask, o, lse, dout, dq, dk, dv, p);
                  });
                });
              });
            });
          });
        });
      }
    }
  }

  // 16-bit or mixed types: the float backward (double when any type is double) on exactly
  // widened copies, query block by query block in order (detail::for_each_widened_query_block),
  // with the block's O, dO and lse rows widened beside its Q and mask rows; dQ rounded once per
  // block, dK and dV accumulated in C over every block and rounded once at the end.
  template <class XQ, class XK, class XV, class XM, class XO, class XL, class XdO, class DQ,
            class DK, class DV>
  void backward_staged(const Eigen::DenseBase<XQ>& q_in, const Eigen::DenseBase<XK>& k_in,
                       const Eigen::DenseBase<XV>& v_in, const XM* mask,
                       const Eigen::DenseBase<XO>& o_in, const Eigen::DenseBase<XL>& lse_in,
                       const Eigen::DenseBase<XdO>& dout_in, DQ& dq, DK& dk, DV& dv) const {
    using G = typename DQ::Scalar;
    using C = detail::compute_scalar_t<detail::compute_scalar_t<typename XQ::Scalar, G>,
                                       typename XO::Scalar>;
    using M = Eigen::Matrix<C, Eigen::Dynamic, Eigen::Dynamic>;
    using V = Eigen::Matrix<C, Eigen::Dynamic, 1>;
    const Index lk = k_in.rows(), d = q_in.cols();
    M dk_c = M::Zero(lk, d), dv_c = M::Zero(lk, v_in.cols());
    const detail::AttentionPlan<C> p = plan<C>(d);
    detail::with_storage(o_in, [&](const auto& o) {
      detail::with_storage(dout_in, [&](const auto& dout) {
        detail::for_each_widened_query_block<C, false>(
            q_in.derived(), k_in.derived(), v_in.derived(), mask, p.block_q, p.causal,
            [&](Index i0, Index n, const auto& qb, const auto& kb, const auto& vb, const auto* mb) {
              const M ob = o.middleRows(i0, n).template cast<C>();
              const M dob = dout.middleRows(i0, n).template cast<C>();
              V lb(n);
              for (Index r = 0; r < n; ++r)
                lb(r) = detail::convert_scalar<C>(lse_in.derived().coeff(i0 + r));
              M dqb = M::Zero(n, d);
              auto dkb = dk_c.topRows(kb.rows());
              auto dvb = dv_c.topRows(kb.rows());
              detail::attention_backward_block(qb, kb, vb, mb, ob, lb, dob, dqb, dkb, dvb, 0, n, p);
              dq.middleRows(i0, n) = dqb.template cast<G>();
            });
      });
    });
    dk = dk_c.template cast<G>();
    dv = dv_c.template cast<G>();
  }

  AttentionOptions options_;
  Weight weight_;
  Index block_q_ = detail::kAttentionMaxBlockQ;
  Index block_k_ = detail::kAttentionMaxBlockK;
};

// Merges two attention partials over disjoint key sets of the same queries (see the doc block):
// O = (exp(lse1 - M) O1 + exp(lse2 - M) O2) / L, lse = M + log L, L = exp(lse1 - M) +
// exp(lse2 - M), M = max(lse1, lse2), row by row, in long double. A partial with lse = -inf
// (no visible key and no sink) contributes nothing; a partial holding only the sink (lse = z, a
// zero row) contributes its mass exp(z) and no value; both -inf gives zeros and -inf; a NaN lse
// gives a NaN row; two +inf partials (whose mass split the lse does not record) give a NaN row; one
// +inf partial wins. O may be O1 or O2 (exactly), and lse lse1 or lse2.
template <class XO1, class XL1, class XO2, class XL2, class OutO, class OutL>
void merge_attention(const Eigen::DenseBase<XO1>& o1, const Eigen::DenseBase<XL1>& lse1,
                     const Eigen::DenseBase<XO2>& o2, const Eigen::DenseBase<XL2>& lse2,
                     OutO&& o_out, OutL&& lse_out) {
  using XO = detail::output_xpr_t<OutO>;
  using XL = detail::output_xpr_t<OutL>;
  using Scalar = typename XO::Scalar;
  constexpr const char* fn = "merge_attention";
  static_assert(detail::is_writable_storage_v<XO> && detail::is_writable_storage_v<XL>,
                "softmaxlab: O and lse must be writable storage");
  auto& o = detail::writable_output(std::forward<OutO>(o_out));
  auto& lse = detail::writable_output(std::forward<OutL>(lse_out));
  const Index rows = o1.rows(), cols = o1.cols();
  if (o2.rows() != rows || o2.cols() != cols || o.rows() != rows || o.cols() != cols) {
    detail::fail(fn, ": O1, O2 and O must have one shape, but got ", rows, " x ", cols, ", ",
                 o2.rows(), " x ", o2.cols(), " and ", o.rows(), " x ", o.cols());
  }
  auto check_lse = [&](const char* what, Index r, Index c) {
    if (!((r == 1 || c == 1) && r * c == rows))
      detail::fail(fn, ": ", what, " must be a vector of ", rows, " entries, but got ", r, " x ",
                   c);
  };
  check_lse("lse1", lse1.rows(), lse1.cols());
  check_lse("lse2", lse2.rows(), lse2.cols());
  check_lse("lse", lse.rows(), lse.cols());
  const long double inf = std::numeric_limits<long double>::infinity();
  const Scalar nan = std::numeric_limits<Scalar>::quiet_NaN();
  for (Index i = 0; i < rows; ++i) {
    const long double a = static_cast<long double>(lse1.derived().coeff(i));
    const long double b = static_cast<long double>(lse2.derived().coeff(i));
    long double wa = 0, wb = 0, out_lse;
    if (a != a || b != b || (a == inf && b == inf)) {
      wa = wb = nan;
      out_lse = nan;
    } else if (a == -inf && b == -inf) {
      out_lse = -inf;
    } else if (a == inf || b == inf) {
      wa = a == inf ? 1 : 0;
      wb = 1 - wa;
      out_lse = inf;
    } else {
      const long double m = std::max(a, b);
      const long double ea = std::exp(a - m), eb = std::exp(b - m), sum = ea + eb;
      wa = ea / sum;
      wb = eb / sum;
      out_lse = m + std::log(sum);
    }
    for (Index j = 0; j < cols; ++j) {
      const long double x1 = o1.derived().coeff(i, j), x2 = o2.derived().coeff(i, j);
      // A partial with no weight contributes nothing, even a NaN or inf it may hold.
      const long double v = (wa == 0 ? 0.0L : wa * x1) + (wb == 0 ? 0.0L : wb * x2);
      o.coeffRef(i, j) = static_cast<Scalar>(wa != wa ? static_cast<long double>(nan) : v);
    }
    lse.coeffRef(i) = static_cast<Scalar>(out_lse);
  }
}

}  // namespace softmaxlab
