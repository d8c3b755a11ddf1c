// softmaxlab: the row passes shared by the softmax-family kernels, on Eigen packets.
//
// Each pass works on contiguous memory. Strided rows (a row of a column-major matrix) go through
// small stack buffers in chunks (`for_chunks`), so every element meets the same packet code and
// nothing is allocated. Tails shorter than a packet are padded into one packet for the same reason:
// the last elements of a row are computed exactly like the others.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "common.hpp"
#include "exp.hpp"
#include "scalar_types.hpp"

namespace softmaxlab {
namespace detail {

template <class Scalar>
using PacketOf = typename Eigen::internal::packet_traits<Scalar>::type;

template <class Scalar>
inline constexpr int kPacketSize = Eigen::internal::unpacket_traits<PacketOf<Scalar>>::size;

// Elements per chunk when a strided row is staged through the stack (2 KiB of floats).
inline constexpr Index kChunk = 512;

#if defined(EIGEN_VECTORIZE_AVX512)
// The mask of the first n < 16 lanes.
EIGEN_STRONG_INLINE __mmask16 tail_mask(Index n) {
  return static_cast<__mmask16>((1u << static_cast<unsigned>(n)) - 1u);
}
#endif

// Loads the n < packet-size trailing elements, filling the other lanes with `fill`.
template <class Packet, class Scalar>
EIGEN_STRONG_INLINE Packet load_partial(const Scalar* x, Index n, Scalar fill) {
#if defined(EIGEN_VECTORIZE_AVX512)
  // Masked loads: the lanes past n are never read (no fault), and no store-to-load round trip
  // through a stack buffer, which cost more than the arithmetic on rows of 16 to 64 entries.
  if constexpr (std::is_same_v<Scalar, float> && sizeof(Packet) == 64) {
    return _mm512_mask_loadu_ps(_mm512_set1_ps(fill), tail_mask(n), x);
  } else if constexpr (std::is_same_v<Scalar, double> && sizeof(Packet) == 64) {
    return _mm512_mask_loadu_pd(_mm512_set1_pd(fill), static_cast<__mmask8>(tail_mask(n)), x);
  }
#endif
  alignas(64) Scalar buf[kPacketSize<Scalar>];
  for (int k = 0; k < kPacketSize<Scalar>; ++k)
    buf[k] = k < n ? x[k] : fill;
  return Eigen::internal::pload<Packet>(buf);
}

template <class Packet, class Scalar>
EIGEN_STRONG_INLINE void store_partial(Scalar* y, Index n, const Packet& p) {
#if defined(EIGEN_VECTORIZE_AVX512)
  if constexpr (std::is_same_v<Scalar, float> && sizeof(Packet) == 64) {
    _mm512_mask_storeu_ps(y, tail_mask(n), p);
    return;
  } else if constexpr (std::is_same_v<Scalar, double> && sizeof(Packet) == 64) {
    _mm512_mask_storeu_pd(y, static_cast<__mmask8>(tail_mask(n)), p);
    return;
  }
#endif
  alignas(64) Scalar buf[kPacketSize<Scalar>];
  Eigen::internal::pstore(buf, p);
  for (Index k = 0; k < n; ++k)
    y[k] = buf[k];
}

// Packets of the compute type Scalar loaded from, and stored to, a storage type: Scalar itself, or
// on AVX-512 with float a 16-bit type converted in registers (scalar_types.hpp), so that short
// 16-bit rows run the register kernel without a staging copy. The same values as converting first.
template <class Packet, class In>
EIGEN_STRONG_INLINE Packet load_packet_as(const In* x) {
  if constexpr (std::is_same_v<In, typename Eigen::internal::unpacket_traits<Packet>::type>) {
    return Eigen::internal::ploadu<Packet>(x);
  } else {
#if SOFTMAXLAB_AVX512_CONVERT
    static_assert(sizeof(Packet) == 64 && is_16bit_v<In>);
    return widen16(x);
#else
    static_assert(sizeof(In) == 0, "16-bit packets need the AVX-512 conversions");
#endif
  }
}
template <class Packet, class In, class Scalar>
EIGEN_STRONG_INLINE Packet load_partial_as(const In* x, Index n, Scalar fill) {
  if constexpr (std::is_same_v<In, Scalar>) {
    return load_partial<Packet>(x, n, fill);
  } else {
#if SOFTMAXLAB_AVX512_CONVERT
    const __mmask16 m = lanes_below(n);
    return _mm512_mask_blend_ps(m, _mm512_set1_ps(fill), widen16(x, m));
#else
    static_assert(sizeof(In) == 0, "16-bit packets need the AVX-512 conversions");
#endif
  }
}
template <class Out, class Packet>
EIGEN_STRONG_INLINE void store_packet_as(Out* y, const Packet& p) {
  if constexpr (std::is_same_v<Out, typename Eigen::internal::unpacket_traits<Packet>::type>) {
    Eigen::internal::pstoreu(y, p);
  } else {
#if SOFTMAXLAB_AVX512_CONVERT
    narrow16_store(y, p);
#else
    static_assert(sizeof(Out) == 0, "16-bit packets need the AVX-512 conversions");
#endif
  }
}
template <class Out, class Packet>
EIGEN_STRONG_INLINE void store_partial_as(Out* y, Index n, const Packet& p) {
  if constexpr (std::is_same_v<Out, typename Eigen::internal::unpacket_traits<Packet>::type>) {
    store_partial(y, n, p);
  } else {
#if SOFTMAXLAB_AVX512_CONVERT
    narrow16_store(y, p, lanes_below(n));
#else
    static_assert(sizeof(Out) == 0, "16-bit packets need the AVX-512 conversions");
#endif
  }
}

// Two packets stored to y and y + P: as store_packet_as twice, the same bits (bfloat16 with
// AVX512-BF16: one conversion for both, narrow32_store).
template <class Out, class Packet>
EIGEN_STRONG_INLINE void store_two_packets_as(Out* y, const Packet& lo, const Packet& hi) {
  if constexpr (std::is_same_v<Out, typename Eigen::internal::unpacket_traits<Packet>::type>) {
    Eigen::internal::pstoreu(y, lo);
    Eigen::internal::pstoreu(y + Eigen::internal::unpacket_traits<Packet>::size, hi);
  } else {
#if SOFTMAXLAB_AVX512_CONVERT
    narrow32_store(y, lo, hi);
#else
    static_assert(sizeof(Out) == 0, "16-bit packets need the AVX-512 conversions");
#endif
  }
}

// Max of a contiguous row on four packet accumulators. kNaN = Eigen::PropagateNaN: a NaN anywhere
// gives NaN. kNaN = Eigen::PropagateFast: NaN ignored or not as the packet max happens to treat
// it (the fast path of softmax_contiguous_rows, which sends rows whose max is not finite to the
// exact special-value path and detects a NaN beside a finite max by its NaN sum). x may be of a
// 16-bit storage type In (AVX-512 builds, float packets; see load_packet_as): the max of the
// widened values, read without a staging copy.
template <int kNaN, class In, class Scalar = compute_scalar_t<In>>
EIGEN_STRONG_INLINE Scalar packet_max(const In* x, Index n) {
  using namespace Eigen::internal;
  using Packet = PacketOf<Scalar>;
  constexpr int P = kPacketSize<Scalar>;
  const Scalar lowest = -std::numeric_limits<Scalar>::infinity();
  Packet m0 = pset1<Packet>(lowest), m1 = m0, m2 = m0, m3 = m0;
  Index i = 0;
  for (; i + 4 * P <= n; i += 4 * P) {
    m0 = pmax<kNaN>(m0, load_packet_as<Packet>(x + i));
    m1 = pmax<kNaN>(m1, load_packet_as<Packet>(x + i + P));
    m2 = pmax<kNaN>(m2, load_packet_as<Packet>(x + i + 2 * P));
    m3 = pmax<kNaN>(m3, load_packet_as<Packet>(x + i + 3 * P));
  }
  for (; i + P <= n; i += P)
    m0 = pmax<kNaN>(m0, load_packet_as<Packet>(x + i));
  if (i < n)
    m1 = pmax<kNaN>(m1, load_partial_as<Packet>(x + i, n - i, lowest));
  m0 = pmax<kNaN>(pmax<kNaN>(m0, m1), pmax<kNaN>(m2, m3));
  if constexpr (kNaN == Eigen::PropagateFast) {
    return predux_max(m0);
  } else {
    alignas(64) Scalar lanes[P];
    pstore(lanes, m0);
    Scalar m = lanes[0];
    for (int k = 1; k < P; ++k)
      m = (lanes[k] != lanes[k] || lanes[k] > m) ? lanes[k] : m;
    return m != m ? m : std::max(m, lowest);
  }
}

template <class Scalar>
Scalar max_propagate_nan(const Scalar* x, Index n) {
  return packet_max<Eigen::PropagateNaN>(x, n);
}

// Kahan-compensated sum kept per packet lane. Summands are non-negative, so the compensated sum's
// relative error is about one rounding whatever the row length (2^24 floats included), where a
// plain running sum would lose ~sqrt(n) roundings.
template <class Scalar>
struct CompensatedSum {
  using Packet = PacketOf<Scalar>;
  Packet sum = Eigen::internal::pset1<Packet>(Scalar(0));
  Packet carry = Eigen::internal::pset1<Packet>(Scalar(0));

  EIGEN_STRONG_INLINE void add(const Packet& v) {
    using namespace Eigen::internal;
    const Packet y = psub(v, carry);
    const Packet t = padd(sum, y);
    carry = psub(psub(t, sum), y);
    sum = t;
  }
  // The type the lanes are combined in: double for float lanes, long double for double lanes.
  using Wide = std::conditional_t<std::is_same_v<Scalar, float>, double, long double>;

  // Lanes are combined in Wide: a handful of additions, off the hot path.
  Wide total_wide() const {
    constexpr int P = kPacketSize<Scalar>;
    alignas(64) Scalar s[P], c[P];
    Eigen::internal::pstore(s, sum);
    Eigen::internal::pstore(c, carry);
    if constexpr (std::is_same_v<Scalar, float>) {
      // float lanes: double holds each s - c exactly and the few additions lose ~2^-50 relative,
      // far below float's eps; two chains halve the latency (this runs once per row). No long
      // double here: its x87 round trip cost more than the whole exp pass of a short row.
      double acc[2] = {0, 0};
      for (int k = 0; k < P; ++k)
        acc[k % 2] += static_cast<double>(s[k]) - static_cast<double>(c[k]);
      return acc[0] + acc[1];
    } else {
      long double acc = 0;
      for (int k = 0; k < P; ++k)
        acc += static_cast<long double>(s[k]) - c[k];
      return acc;
    }
  }
  long double total() const { return static_cast<long double>(total_wide()); }
};

// a.total_wide() + b.total_wide(), the total of two compensated sums in Wide.
template <class Scalar>
EIGEN_STRONG_INLINE typename CompensatedSum<Scalar>::Wide total_wide(
    const CompensatedSum<Scalar>& a, const CompensatedSum<Scalar>& b) {
  return a.total_wide() + b.total_wide();
}
#if defined(EIGEN_VECTORIZE_AVX) && !defined(EIGEN_VECTORIZE_AVX512)
// 8 float lanes (AVX): the same differences s - c, exact in double, added on double packets
// (about 20 instructions where the lane loops take about 100: on rows of 16 to 64 floats they
// cost as much as the exp pass).
template <>
EIGEN_STRONG_INLINE double total_wide(const CompensatedSum<float>& a,
                                      const CompensatedSum<float>& b) {
  const auto wide_difference = [](const __m256& s, const __m256& c) {
    const __m256d lo = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(s)),
                                     _mm256_cvtps_pd(_mm256_castps256_ps128(c)));
    const __m256d hi = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(s, 1)),
                                     _mm256_cvtps_pd(_mm256_extractf128_ps(c, 1)));
    return _mm256_add_pd(lo, hi);
  };
  const __m256d t = _mm256_add_pd(wide_difference(a.sum, a.carry), wide_difference(b.sum, b.carry));
  return Eigen::internal::predux(t);
}
#endif

#if defined(EIGEN_VECTORIZE_AVX512)
// 16 float lanes (AVX-512): the same differences s - c, exact in double, added on two 8-lane
// double packets, where the lane loop (a store, 16 conversions and a dependent chain of adds) cost
// as much as the exp pass on rows of 16 to 64 entries.
template <>
EIGEN_STRONG_INLINE double total_wide(const CompensatedSum<float>& a,
                                      const CompensatedSum<float>& b) {
  const auto wide_difference = [](const __m512& s, const __m512& c) {
    const __m512d lo = _mm512_sub_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(s)),
                                     _mm512_cvtps_pd(_mm512_castps512_ps256(c)));
    const __m512d hi = _mm512_sub_pd(
        _mm512_cvtps_pd(_mm256_castsi256_ps(_mm512_extracti64x4_epi64(_mm512_castps_si512(s), 1))),
        _mm512_cvtps_pd(_mm256_castsi256_ps(_mm512_extracti64x4_epi64(_mm512_castps_si512(c), 1))));
    return _mm512_add_pd(lo, hi);
  };
  return _mm512_reduce_add_pd(
      _mm512_add_pd(wide_difference(a.sum, a.carry), wide_difference(b.sum, b.carry)));
}
#endif

// 1 / (a + b) of two compensated sums, rounded once to Scalar from Wide (double for float).
template <class Scalar>
EIGEN_STRONG_INLINE Scalar inverse_total(const CompensatedSum<Scalar>& a,
                                         const CompensatedSum<Scalar>& b) {
  using Wide = typename CompensatedSum<Scalar>::Wide;
  return static_cast<Scalar>(Wide(1) / total_wide(a, b));
}

// The shifted, scaled argument d = (x - m) * s of exp. kScaled = false skips the multiply (T = 1).
template <bool kScaled, class Packet>
EIGEN_STRONG_INLINE Packet shifted(const Packet& x, const Packet& m, const Packet& s) {
  using namespace Eigen::internal;
  if constexpr (kScaled) {
    return pmul(psub(x, m), s);
  } else {
    EIGEN_UNUSED_VARIABLE(s);
    return psub(x, m);
  }
}

// The fused middle pass of softmax ("raddstore-expminusmax" in XNNPACK's naming), tuned:
// y_i = exp((x_i - m) * s) * kExpScale (see exp.hpp: for float the 2^-64 of the exp is left to the
// caller's final scaling) for contiguous x, y (y may be x); adds every y_i to `sum0`/`sum1`.
// Four packets per iteration; the terms are added in pairs before the per-lane Kahan sums: one
// rounding of a sum of two non-negative terms is at most eps/2 relative to each term, so the
// compensated total stays within about eps/2 + one rounding, with 2.5 instead of 4 additions per
// packet.
// The sums are accumulated in locals and written back once: through the references, every store
// to y (a Scalar*) may alias them, and GCC then kept them in memory (a load and a store of each
// sum per iteration). With 4 packets per iteration that was not on the loop's bottleneck: the
// time in L1 did not change measurably (0.96-1.04 cycles per element before and after).
// x may be of a 16-bit storage type In (AVX-512 builds, float packets): each packet is widened in
// registers as it is loaded, the same values as a converted copy without its store and reload.
template <bool kScaled, class Scalar, class In>
void scaled_exp_store_sum(const In* x, Scalar* y, Index n, Scalar m, Scalar s,
                          CompensatedSum<Scalar>& sum0_out, CompensatedSum<Scalar>& sum1_out) {
  using namespace Eigen::internal;
  using Packet = PacketOf<Scalar>;
  constexpr int P = kPacketSize<Scalar>;
  const Packet pm = pset1<Packet>(m), ps = pset1<Packet>(s);
  CompensatedSum<Scalar> sum0 = sum0_out, sum1 = sum1_out;
  Index i = 0;
  for (; i + 4 * P <= n; i += 4 * P) {
    const Packet e0 =
        pexp_nonpositive_scaled(shifted<kScaled>(load_packet_as<Packet>(x + i), pm, ps));
    const Packet e1 =
        pexp_nonpositive_scaled(shifted<kScaled>(load_packet_as<Packet>(x + i + P), pm, ps));
    const Packet e2 =
        pexp_nonpositive_scaled(shifted<kScaled>(load_packet_as<Packet>(x + i + 2 * P), pm, ps));
    const Packet e3 =
        pexp_nonpositive_scaled(shifted<kScaled>(load_packet_as<Packet>(x + i + 3 * P), pm, ps));
    pstoreu(y + i, e0);
    pstoreu(y + i + P, e1);
    pstoreu(y + i + 2 * P, e2);
    pstoreu(y + i + 3 * P, e3);
    sum0.add(padd(e0, e1));
    sum1.add(padd(e2, e3));
  }
  for (; i + P <= n; i += P) {
    const Packet e =
        pexp_nonpositive_scaled(shifted<kScaled>(load_packet_as<Packet>(x + i), pm, ps));
    pstoreu(y + i, e);
    sum0.add(e);
  }
  if (i < n) {
    const Scalar masked = -std::numeric_limits<Scalar>::infinity();  // padding lanes give exp = 0
    const Packet e = pexp_nonpositive_scaled(
        shifted<kScaled>(load_partial_as<Packet>(x + i, n - i, masked), pm, ps));
    store_partial(y + i, n - i, e);
    sum1.add(e);
  }
  sum0_out = sum0;
  sum1_out = sum1;
}

// Asks for the cache line at address a + offset to be loaded for reading. Integer arithmetic on
// the address: it may lie past the end of the array (a prefetch never faults), where pointer
// arithmetic would be undefined.
EIGEN_STRONG_INLINE void prefetch_read(const void* a, std::uintptr_t offset) {
#if defined(__GNUC__) || defined(__clang__)
  __builtin_prefetch(reinterpret_cast<const void*>(reinterpret_cast<std::uintptr_t>(a) + offset));
#else
  (void)a;
  (void)offset;
#endif
}

// Adds exp((x_i - m) * s) * kExpScale to the sums without storing (log-softmax, normalizers).
// kPrefetchBytes > 0: also prefetches the row kPrefetchBytes ahead, one cache line per 64 bytes
// read. The online normalizer passes its block size, so the next block streams in from memory
// while this one is computed from L1: on a 2^24 float row its update pass went from about 2.0 to
// 1.3 cycles per element (the exp pass's own cost), where max-then-exp per block had serialized
// the memory reads and the arithmetic.
template <bool kScaled, std::uintptr_t kPrefetchBytes = 0, class Scalar>
void scaled_exp_sum(const Scalar* x, Index n, Scalar m, Scalar s, CompensatedSum<Scalar>& sum0_out,
                    CompensatedSum<Scalar>& sum1_out) {
  using namespace Eigen::internal;
  using Packet = PacketOf<Scalar>;
  constexpr int P = kPacketSize<Scalar>;
  const Packet pm = pset1<Packet>(m), ps = pset1<Packet>(s);
  CompensatedSum<Scalar> sum0 = sum0_out, sum1 = sum1_out;  // locals: see scaled_exp_store_sum
  Index i = 0;
  for (; i + 4 * P <= n; i += 4 * P) {
    if constexpr (kPrefetchBytes > 0) {
      // One prefetch per 64-byte line this iteration reads (at least one: SSE2, NEON and
      // unvectorized builds read less per iteration).
      constexpr std::uintptr_t kIterationBytes = 4 * P * sizeof(Scalar);
      for (std::uintptr_t b = 0; b < kIterationBytes || b == 0; b += 64)
        prefetch_read(x + i, kPrefetchBytes + b);
    }
    const Packet e0 = pexp_nonpositive_scaled(shifted<kScaled>(ploadu<Packet>(x + i), pm, ps));
    const Packet e1 = pexp_nonpositive_scaled(shifted<kScaled>(ploadu<Packet>(x + i + P), pm, ps));
    const Packet e2 =
        pexp_nonpositive_scaled(shifted<kScaled>(ploadu<Packet>(x + i + 2 * P), pm, ps));
    const Packet e3 =
        pexp_nonpositive_scaled(shifted<kScaled>(ploadu<Packet>(x + i + 3 * P), pm, ps));
    sum0.add(padd(e0, e1));
    sum1.add(padd(e2, e3));
  }
  for (; i + P <= n; i += P)
    sum0.add(pexp_nonpositive_scaled(shifted<kScaled>(ploadu<Packet>(x + i), pm, ps)));
  if (i < n) {
    const Scalar masked = -std::numeric_limits<Scalar>::infinity();
    sum1.add(pexp_nonpositive_scaled(
        shifted<kScaled>(load_partial<Packet>(x + i, n - i, masked), pm, ps)));
  }
  sum0_out = sum0;
  sum1_out = sum1;
}

// y_i = exp((x_i - m) * s) * kExpScale * factor for contiguous x, y (y may be x): the output pass
// of the online normalizer (factor = 2^-64 / sum for float).
template <bool kScaled, class Scalar>
void scaled_exp_scale_store(const Scalar* x, Scalar* y, Index n, Scalar m, Scalar s,
                            Scalar factor) {
  using namespace Eigen::internal;
  using Packet = PacketOf<Scalar>;
  constexpr int P = kPacketSize<Scalar>;
  const Packet pm = pset1<Packet>(m), ps = pset1<Packet>(s), pf = pset1<Packet>(factor);
  Index i = 0;
  for (; i + 2 * P <= n; i += 2 * P) {
    const Packet e0 = pexp_nonpositive_scaled(shifted<kScaled>(ploadu<Packet>(x + i), pm, ps));
    const Packet e1 = pexp_nonpositive_scaled(shifted<kScaled>(ploadu<Packet>(x + i + P), pm, ps));
    pstoreu(y + i, pmul(e0, pf));
    pstoreu(y + i + P, pmul(e1, pf));
  }
  for (; i + P <= n; i += P) {
    pstoreu(y + i,
            pmul(pexp_nonpositive_scaled(shifted<kScaled>(ploadu<Packet>(x + i), pm, ps)), pf));
  }
  if (i < n) {
    const Scalar masked = -std::numeric_limits<Scalar>::infinity();
    const Packet e = pexp_nonpositive_scaled(
        shifted<kScaled>(load_partial<Packet>(x + i, n - i, masked), pm, ps));
    store_partial(y + i, n - i, pmul(e, pf));
  }
}

// Non-temporal (streaming) stores: outputs far larger than the last-level cache are written around
// the caches, which saves the read-for-ownership of every output line. `to` must be aligned to the
// packet size. Other packet types fall back to an ordinary aligned store.
template <class Scalar, class Packet>
EIGEN_STRONG_INLINE void pstream(Scalar* to, const Packet& p) {
  Eigen::internal::pstore(to, p);
}
#if defined(EIGEN_VECTORIZE_AVX512)
EIGEN_STRONG_INLINE void pstream(float* to, const __m512& p) {
  _mm512_stream_ps(to, p);
}
EIGEN_STRONG_INLINE void pstream(double* to, const __m512d& p) {
  _mm512_stream_pd(to, p);
}
#endif
#if defined(EIGEN_VECTORIZE_AVX)
EIGEN_STRONG_INLINE void pstream(float* to, const __m256& p) {
  _mm256_stream_ps(to, p);
}
EIGEN_STRONG_INLINE void pstream(double* to, const __m256d& p) {
  _mm256_stream_pd(to, p);
}
#endif
#if defined(EIGEN_VECTORIZE_SSE2)
EIGEN_STRONG_INLINE void pstream(float* to, const __m128& p) {
  _mm_stream_ps(to, p);
}
EIGEN_STRONG_INLINE void pstream(double* to, const __m128d& p) {
  _mm_stream_pd(to, p);
}
inline void stream_fence() {
  _mm_sfence();
}
#else
inline void stream_fence() {}
#endif

// Outputs at least this large are written with streaming stores by the online normalizer's output
// pass: half of a 32 MiB L3, so what is written would not stay in cache for a reader anyway.
inline constexpr Index kStreamingStoreBytes = Index(16) << 20;

// scaled_exp_scale_store with streaming stores for the packet-aligned middle of y (y != x).
template <bool kScaled, class Scalar>
void scaled_exp_scale_stream(const Scalar* x, Scalar* y, Index n, Scalar m, Scalar s,
                             Scalar factor) {
  using namespace Eigen::internal;
  using Packet = PacketOf<Scalar>;
  constexpr int P = kPacketSize<Scalar>;
  constexpr auto kAlign = static_cast<std::uintptr_t>(P * sizeof(Scalar));
  const auto misalign = reinterpret_cast<std::uintptr_t>(y) % kAlign;
  if (misalign % sizeof(Scalar) != 0) {  // not even element-aligned: no streaming
    scaled_exp_scale_store<kScaled>(x, y, n, m, s, factor);
    return;
  }
  const Index head = std::min<Index>(
      n, misalign == 0 ? 0 : static_cast<Index>((kAlign - misalign) / sizeof(Scalar)));
  scaled_exp_scale_store<kScaled>(x, y, head, m, s, factor);
  const Packet pm = pset1<Packet>(m), ps = pset1<Packet>(s), pf = pset1<Packet>(factor);
  Index i = head;
  for (; i + 2 * P <= n; i += 2 * P) {
    const Packet e0 = pexp_nonpositive_scaled(shifted<kScaled>(ploadu<Packet>(x + i), pm, ps));
    const Packet e1 = pexp_nonpositive_scaled(shifted<kScaled>(ploadu<Packet>(x + i + P), pm, ps));
    pstream(y + i, pmul(e0, pf));
    pstream(y + i + P, pmul(e1, pf));
  }
  stream_fence();
  scaled_exp_scale_store<kScaled>(x + i, y + i, n - i, m, s, factor);
}

// y_i *= factor on unaligned packets, without the alignment peeling of an Eigen Map: for rows in
// L1, where the peeling's scalar head and tail cost more than they save.
template <class Scalar>
EIGEN_STRONG_INLINE void scale_packets(Scalar* y, Index n, Scalar factor) {
  using namespace Eigen::internal;
  using Packet = PacketOf<Scalar>;
  constexpr int P = kPacketSize<Scalar>;
  const Packet pf = pset1<Packet>(factor);
  Index i = 0;
  for (; i + 2 * P <= n; i += 2 * P) {
    pstoreu(y + i, pmul(ploadu<Packet>(y + i), pf));
    pstoreu(y + i + P, pmul(ploadu<Packet>(y + i + P), pf));
  }
  for (; i + P <= n; i += P)
    pstoreu(y + i, pmul(ploadu<Packet>(y + i), pf));
  for (; i < n; ++i)
    y[i] *= factor;
}

// (x - m) * s for an entry x of a row whose max m is finite, without the overflow of x - m: the
// difference leaves the range (|x - m| > max) only when m >= 2^103 (float) or 2^970 (double), and
// then the scaled value may still fit when s < 1. It is formed as x s - m s there: two products of
// opposite signs, so no cancellation and a relative error <= 2 eps. Elsewhere (x - m) * s, the
// order that keeps the cancellation of x near m exact. Where x - m overflows, exp of the scaled
// value is 0 for every allowed s >= 2^-100 (|x - m| s > 2^28), so only the log forms need this.
template <class Scalar>
EIGEN_STRONG_INLINE Scalar shifted_scaled(Scalar x, Scalar m, Scalar s) {
  const Scalar inf = std::numeric_limits<Scalar>::infinity();
  const Scalar d = x - m;
  if (d != -inf || x == -inf)
    return d * s;
  return x * s - m * s;
}

// Whether x - m can overflow for some finite x of a row with max m (lowest - m overflows).
template <class Scalar>
bool shift_may_overflow(Scalar m) {
  return std::numeric_limits<Scalar>::lowest() - m == -std::numeric_limits<Scalar>::infinity();
}

// y_i = (x_i - m) * s - offset (log-softmax's last pass).
template <bool kScaled, class Scalar>
void shift_scale_offset(const Scalar* x, Scalar* y, Index n, Scalar m, Scalar s, Scalar offset) {
  using namespace Eigen::internal;
  using Packet = PacketOf<Scalar>;
  constexpr int P = kPacketSize<Scalar>;
  const Packet pm = pset1<Packet>(m), ps = pset1<Packet>(s), po = pset1<Packet>(offset);
  Index i = 0;
  for (; i + P <= n; i += P)
    pstoreu(y + i, psub(shifted<kScaled>(ploadu<Packet>(x + i), pm, ps), po));
  for (; i < n; ++i)
    y[i] = shifted<kScaled>(x[i], m, s) - offset;
}

// y_i *= factor.
template <class Scalar>
void scale_in_place(Scalar* y, Index n, Scalar factor) {
  Eigen::Map<Eigen::Array<Scalar, Eigen::Dynamic, 1>>(y, n) *= factor;
}

// p_i = exp(t_i - m) in place over contiguous t (m finite), returning sum_i p_i (the flash
// attention forms' weights).
template <class Scalar>
long double exp_shift_store_sum(Scalar* t, Index n, Scalar m) {
  CompensatedSum<Scalar> sum0, sum1;
  scaled_exp_store_sum<false>(t, t, n, m, Scalar(1), sum0, sum1);
  // The kernel keeps exp * 2^64 (always normal); scale back exactly but for subnormal results.
  scale_in_place(t, n, Scalar(1) / kExpScale<Scalar>);
  return std::ldexp(sum0.total() + sum1.total(), -kExpScaleLog2<Scalar>);
}

// Runs fn(const Scalar* x, Scalar* y, Index count) over the row in contiguous pieces: the whole row
// at once when x and y are contiguous, else chunks staged through stack buffers (read x, call,
// write y). fn must be elementwise (chunk boundaries must not matter).
template <class Scalar, class Fn>
void for_chunks(const Span<const Scalar>& x, const Span<Scalar>& y, Fn&& fn) {
  if (x.contiguous() && y.contiguous()) {
    fn(x.data, y.data, x.size);
    return;
  }
  alignas(64) Scalar in[kChunk];
  alignas(64) Scalar out[kChunk];
  for (Index start = 0; start < x.size; start += kChunk) {
    const Index count = std::min(kChunk, x.size - start);
    for (Index k = 0; k < count; ++k)
      in[k] = x[start + k];
    fn(in, out, count);
    for (Index k = 0; k < count; ++k)
      y[start + k] = out[k];
  }
}

// Runs fn(const Scalar* x, Index count) over the row in contiguous pieces (read-only passes).
template <class Scalar, class Fn>
void for_chunks(const Span<const Scalar>& x, Fn&& fn) {
  if (x.contiguous()) {
    fn(x.data, x.size);
    return;
  }
  alignas(64) Scalar in[kChunk];
  for (Index start = 0; start < x.size; start += kChunk) {
    const Index count = std::min(kChunk, x.size - start);
    for (Index k = 0; k < count; ++k)
      in[k] = x[start + k];
    fn(in, count);
  }
}

template <class Scalar>
Scalar max_propagate_nan(const Span<const Scalar>& x) {
  Scalar m = -std::numeric_limits<Scalar>::infinity();
  for_chunks(x, [&](const Scalar* data, Index count) {
    const Scalar chunk_max = max_propagate_nan(data, count);
    if (chunk_max != chunk_max || chunk_max > m)
      m = chunk_max;
  });
  return m;
}

template <class Scalar>
void fill(const Span<Scalar>& y, Scalar value) {
  for (Index i = 0; i < y.size; ++i)
    y[i] = value;
}

}  // namespace detail
}  // namespace softmaxlab
