// softmaxlab: the score transform of AttentionSoftmax and Attention (attention_softmax.hpp,
// flash_attention.hpp): t = cap(scale x) + slope mask fused into the row-max pass, the packet
// softcap, the irregular rows recomputed in double. The formulas and bounds are stated in
// attention_softmax.hpp's doc block and checked by tests/test_attention.cpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>

#include "backward_base.hpp"
#include "checks.hpp"
#include "functor_base.hpp"
#include "kernels.hpp"
#include "scalar_types.hpp"
#include "softmax_rows.hpp"

namespace softmaxlab {
namespace detail {

// The additive mask's scalar types beside scores of type S (issue 23; ggml keeps f16 masks beside
// f32 scores): S itself, Eigen::half or Eigen::bfloat16 beside float, float beside double. Each
// converts exactly to S, so a call with such a mask gives the bits of the same call on the mask
// converted to S; the conversion happens per row or per key block, never as a whole copy.
template <class S, class M>
inline constexpr bool mask_scalar_ok_v =
    std::is_same_v<S, M> || (std::is_same_v<S, float> && is_16bit_v<M>)
    || (std::is_same_v<S, double> && std::is_same_v<M, float>);

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
// (size 0: no mask; of Scalar or a type mask_scalar_ok_v accepts), strided or not (strided ones,
// and a mask of another type, are staged through stack chunks, as for_chunks does; the mask is
// converted exactly there).
template <bool kStore, class Scalar, class MaskScalar>
ScoreMax<Scalar> transform_scores(const Span<const Scalar>& x, const Span<const MaskScalar>& mask,
                                  const Span<Scalar>& y, const ScoreTransform<Scalar>& f) {
  static_assert(mask_scalar_ok_v<Scalar, MaskScalar>, "softmaxlab: unsupported mask scalar");
  const bool has_mask = mask.size != 0;
  auto run = [&](const Scalar* in, const Scalar* m, Scalar* out, Index n) {
    if (has_mask) {
      return f.has_cap() ? transform_scores_contiguous<kStore, true, true>(in, m, out, n, f)
                         : transform_scores_contiguous<kStore, true, false>(in, m, out, n, f);
    }
    return f.has_cap() ? transform_scores_contiguous<kStore, false, true>(in, m, out, n, f)
                       : transform_scores_contiguous<kStore, false, false>(in, m, out, n, f);
  };
  if constexpr (std::is_same_v<MaskScalar, Scalar>) {
    if (x.contiguous() && y.contiguous() && (!has_mask || mask.contiguous()))
      return run(x.data, mask.data, y.data, x.size);
  }
  ScoreMax<Scalar> r;
  alignas(64) Scalar in[kChunk];
  alignas(64) Scalar m[kChunk];
  alignas(64) Scalar out[kChunk];
  for (Index start = 0; start < x.size; start += kChunk) {
    const Index count = std::min(kChunk, x.size - start);
    for (Index k = 0; k < count; ++k)
      in[k] = x[start + k];
    if (has_mask)
      convert_strided(mask.data + start * mask.stride, mask.stride, m, Index(1), count);
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
template <class Scalar, class MaskScalar>
void attention_irregular_row(const Span<const Scalar>& x, const Span<const MaskScalar>& mask,
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
    const double mi = has_mask ? convert_scalar<double>(mask[i]) : 0.0;
    if (xi == -inf || mi == -inf)
      return -inf;
    const double s = f.has_cap() ? scaled_cap * std::tanh(scale * xi / cap) : scaled_scale * xi;
    return s + scaled_slope * mi;  // no inf - inf: only x = +inf (no cap) or mask = +inf is +inf
  };
  double top = -inf;
  Index infinite = 0;
  for (Index i = 0; i < x.size; ++i) {
    if (std::isnan(x[i]) || (has_mask && std::isnan(convert_scalar<double>(mask[i]))))
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
}  // namespace softmaxlab
