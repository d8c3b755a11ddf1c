// softmaxlab: the storage scalar types (Eigen::half, Eigen::bfloat16, float, double), the type the
// math runs in for a pair of them, and the conversions between storage and that type.
//
// The variants' kernels are written for float and double only (is_supported_scalar_v). Inputs and
// outputs may be any of the four storage types, and may differ: the math runs in
// compute_scalar_t<In, Out>, double when either side is double and float otherwise, and the result
// is rounded once to the output type on the store. Conversions use Eigen's packet conversions
// where Eigen has them (F16C vcvtph2ps/vcvtps2ph for half under AVX, the AVX2 shift for bfloat16;
// both round to nearest even, as the scalar conversions do); a scalar loop elsewhere (SSE2-only,
// EIGEN_DONT_VECTORIZE, NEON), with the same results.
#pragma once

#include <algorithm>
#include <type_traits>

#include "common.hpp"

// F16C (vcvtph2ps / vcvtps2ph) for half <-> float, when the compiler targets it and vectorization
// is not switched off.
#if defined(__F16C__) && defined(__AVX__) && !defined(EIGEN_DONT_VECTORIZE)
#include <immintrin.h>
#define SOFTMAXLAB_F16C 1
#else
#define SOFTMAXLAB_F16C 0
#endif
// The 16-lane conversions (masked tails need BW and VL for 16-bit lanes).
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) \
    && !defined(EIGEN_DONT_VECTORIZE)
#include <immintrin.h>
#define SOFTMAXLAB_AVX512_CONVERT 1
#else
#define SOFTMAXLAB_AVX512_CONVERT 0
#endif

namespace softmaxlab {
namespace detail {

template <class Scalar>
inline constexpr bool is_storage_scalar_v =
    is_supported_scalar_v<
        Scalar> || std::is_same_v<Scalar, Eigen::half> || std::is_same_v<Scalar, Eigen::bfloat16>;

// Eigen::half or Eigen::bfloat16.
template <class T>
inline constexpr bool is_16bit_v = is_storage_scalar_v<T> && !is_supported_scalar_v<T>;

// Whether In -> Out needs the staged path (a conversion on the way in or out).
template <class In, class Out>
inline constexpr bool is_mixed_v = !(std::is_same_v<In, Out> && is_supported_scalar_v<In>);

// The type the math runs in: double when either side is double, else float.
template <class In, class Out = In>
using compute_scalar_t =
    std::conditional_t<std::is_same_v<In, double> || std::is_same_v<Out, double>, double, float>;

// A compile-time error for any other pair; the instantiation (in the compiler's message) names the
// two types.
template <class In, class Out>
constexpr void static_check_storage_scalars() {
  static_assert(
      is_storage_scalar_v<In>,
      "softmaxlab: the input scalar must be Eigen::half, Eigen::bfloat16, float or double");
  static_assert(is_storage_scalar_v<Out>,
                "softmaxlab: the output scalar must be Eigen::half, Eigen::bfloat16, float or "
                "double");
}

// Bytes of stack a staged row may use: rows up to kStageBytes / sizeof(compute type) elements
// (16384 in float) are converted whole into a stack buffer and computed there.
inline constexpr Index kStageBytes = Index(64) << 10;
template <class C>
inline constexpr Index kStageElements = kStageBytes / Index(sizeof(C));

// Softmax's fused 16-bit path stages a whole row of up to 128 KiB of the compute type (32768
// floats, so a 32,000-entry vocabulary row has its exponentials computed once): Eigen's own limit
// for stack temporaries (EIGEN_STACK_ALLOCATION_LIMIT). Longer rows are streamed and compute exp
// twice.
inline constexpr Index kFusedStageBytes = Index(128) << 10;
template <class C>
inline constexpr Index kFusedStageElements = kFusedStageBytes / Index(sizeof(C));

// Elements per chunk of the streamed (long-row) passes: 8 KiB of float, an L1-resident block.
inline constexpr Index kConvertChunk = 2048;

// One element: through float for the 16-bit types (exact when widening; double -> half rounds via
// float, a double rounding that stays within the output's half-ulp plus 2^-29 relative).
template <class To, class From>
EIGEN_STRONG_INLINE To convert_scalar(const From& v) {
  if constexpr (std::is_same_v<To, From>) {
    return v;
  } else if constexpr (std::is_same_v<From, Eigen::half> || std::is_same_v<From, Eigen::bfloat16>) {
    return static_cast<To>(static_cast<float>(v));
  } else {
    return static_cast<To>(v);
  }
}

#if SOFTMAXLAB_AVX512_CONVERT
// The first `count` lanes of 16 (count in 1..16).
inline __mmask16 lanes_below(Index count) {
  return static_cast<__mmask16>((1u << count) - 1u);
}

// 16 half or bfloat16 values to float (exact). Half: the 512-bit vcvtph2ps; bfloat16: a shift.
template <class From>
EIGEN_STRONG_INLINE __m512 widen16(const From* from, __mmask16 m = 0xFFFF) {
  const __m256i h = _mm256_maskz_loadu_epi16(m, from);
  if constexpr (std::is_same_v<From, Eigen::half>) {
    return _mm512_cvtph_ps(h);
  } else {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
}

// 16 floats rounded to half or bfloat16 and stored (lanes of m). Both round to nearest even, as
// the scalar conversions do. Half: the 512-bit vcvtps2ph. bfloat16: rounding on the bits, a NaN to
// the scalar conversion's quiet NaN 0x7FC0 with its sign. vcvtneps2bf16 (AVX512-BF16) treats a
// subnormal input as zero and keeps a NaN's payload, which the scalar conversion does not: it runs
// only on vectors with neither.
template <class To>
EIGEN_STRONG_INLINE void narrow16_store(To* to, __m512 v, __mmask16 m = 0xFFFF) {
  __m256i h;
  if constexpr (std::is_same_v<To, Eigen::half>) {
    h = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#if defined(__AVX512BF16__) && defined(__AVX512DQ__)
  } else if (_mm512_fpclass_ps_mask(v, 0xA1) == 0) {
    // No NaN (classes 0x01, 0x80) and no subnormal (0x20) among the lanes: vcvtneps2bf16 rounds
    // the rest to nearest even exactly as the bit rounding below, in one instruction.
    h = reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v));
#endif
  } else {
    const __m512i u = _mm512_castps_si512(v);
    const __m512i high = _mm512_srli_epi32(u, 16);
    const __m512i odd = _mm512_and_si512(high, _mm512_set1_epi32(1));
    const __m512i rounded = _mm512_srli_epi32(
        _mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF))), 16);
    const __m512i quiet = _mm512_or_si512(_mm512_and_si512(high, _mm512_set1_epi32(0x8000)),
                                          _mm512_set1_epi32(0x7FC0));
    h = _mm512_cvtepi32_epi16(
        _mm512_mask_mov_epi32(rounded, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), quiet));
  }
  _mm256_mask_storeu_epi16(to, m, h);
}
#endif

#if SOFTMAXLAB_AVX512_CONVERT
// 32 floats, lo then hi, rounded to half or bfloat16 and stored: as narrow16_store twice, the same
// bits. bfloat16 with AVX512-BF16: one vcvtne2ps2bf16 for both packets when neither holds a NaN or
// a subnormal (narrow16_store's check); one packet at a time with its check cost 3.3 cycles per
// packet in L1, 1.7x vcvtps2ph's half, and the pair 2.7.
template <class To>
EIGEN_STRONG_INLINE void narrow32_store(To* to, __m512 lo, __m512 hi) {
#if defined(__AVX512BF16__) && defined(__AVX512DQ__)
  if constexpr (std::is_same_v<To, Eigen::bfloat16>) {
    if ((_mm512_fpclass_ps_mask(lo, 0xA1) | _mm512_fpclass_ps_mask(hi, 0xA1)) == 0) {
      _mm512_storeu_si512(to, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo)));
      return;
    }
  }
#endif
  narrow16_store(to, lo);
  narrow16_store(to + 16, hi);
}
#endif

// to[k] = from[k] for k < n, contiguous, one rounding per element (none when widening).
template <class To, class From>
void convert_contiguous(const From* from, To* to, Index n) {
  using namespace Eigen::internal;
  Index k = 0;
  if constexpr (std::is_same_v<From, To>) {
    std::copy(from, from + n, to);
    return;
  }
#if SOFTMAXLAB_AVX512_CONVERT
  // 16 lanes, the tail through masked loads and stores (no staging copy).
  if constexpr (std::is_same_v<To, float> && is_16bit_v<From>) {
    for (; k + 16 <= n; k += 16)
      _mm512_storeu_ps(to + k, widen16(from + k));
    if (k < n)
      _mm512_mask_storeu_ps(to + k, lanes_below(n - k), widen16(from + k, lanes_below(n - k)));
    return;
  }
  if constexpr (std::is_same_v<From, float> && is_16bit_v<To>) {
    for (; k + 16 <= n; k += 16)
      narrow16_store(to + k, _mm512_loadu_ps(from + k));
    if (k < n) {
      const __mmask16 m = lanes_below(n - k);
      narrow16_store(to + k, _mm512_maskz_loadu_ps(m, from + k), m);
    }
    return;
  }
#endif
#if SOFTMAXLAB_F16C
  // F16C directly: Eigen 3.4 enables its own F16C path (EIGEN_HAS_FP16_C) only under clang, and
  // its fallback converts one element at a time with integer code. The tail goes through one
  // padded 8-lane conversion, so every element meets the same instruction.
  if constexpr (std::is_same_v<From, Eigen::half> && std::is_same_v<To, float>) {
    for (; k + 8 <= n; k += 8) {
      _mm256_storeu_ps(
          to + k, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(from + k))));
    }
    if (k < n) {
      alignas(16) Eigen::half in[8] = {};
      alignas(32) float out[8];
      std::copy(from + k, from + n, in);
      _mm256_store_ps(out, _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(in))));
      std::copy(out, out + (n - k), to + k);
    }
    return;
  }
  if constexpr (std::is_same_v<From, float> && std::is_same_v<To, Eigen::half>) {
    constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    for (; k + 8 <= n; k += 8) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(to + k),
                       _mm256_cvtps_ph(_mm256_loadu_ps(from + k), kRound));
    }
    if (k < n) {
      alignas(32) float in[8] = {};
      alignas(16) Eigen::half out[8];
      std::copy(from + k, from + n, in);
      _mm_store_si128(reinterpret_cast<__m128i*>(out), _mm256_cvtps_ph(_mm256_load_ps(in), kRound));
      std::copy(out, out + (n - k), to + k);
    }
    return;
  }
#endif
#if defined(EIGEN_VECTORIZE_AVX2)
  if constexpr (std::is_same_v<From, Eigen::bfloat16> && std::is_same_v<To, float>) {
    for (; k + 8 <= n; k += 8)
      pstoreu(to + k, Bf16ToF32(ploadu<Packet8bf>(from + k)));
  }
  if constexpr (std::is_same_v<From, float> && std::is_same_v<To, Eigen::bfloat16>) {
    for (; k + 8 <= n; k += 8)
      pstoreu(to + k, F32ToBf16(ploadu<Packet8f>(from + k)));
  }
#endif
  for (; k < n; ++k)
    to[k] = convert_scalar<To>(from[k]);
}

// to[k] = from[k] * factor rounded once to To, for k < n: the last pass of a staged 16-bit row,
// the product and the narrowing fused. The same product as scale_in_place (one multiplication in
// From), then the same rounding as convert_contiguous.
template <class To, class From>
void scale_convert_contiguous(const From* from, From factor, To* to, Index n) {
  Index k = 0;
#if SOFTMAXLAB_AVX512_CONVERT
  if constexpr (std::is_same_v<From, float> && is_16bit_v<To>) {
    const __m512 f = _mm512_set1_ps(factor);
    if constexpr (std::is_same_v<To, Eigen::bfloat16>) {
      // Pairs: one conversion for two packets (narrow32_store). Not for half, which it gains
      // nothing and whose n = 1,000 rows ran 7% slower with the 32-lane loop.
      for (; k + 32 <= n; k += 32) {
        narrow32_store(to + k, _mm512_mul_ps(_mm512_loadu_ps(from + k), f),
                       _mm512_mul_ps(_mm512_loadu_ps(from + k + 16), f));
      }
    }
    for (; k + 16 <= n; k += 16)
      narrow16_store(to + k, _mm512_mul_ps(_mm512_loadu_ps(from + k), f));
    if (k < n) {
      const __mmask16 m = lanes_below(n - k);
      narrow16_store(to + k, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, from + k), f), m);
    }
    return;
  }
#endif
  // Elsewhere: the products in blocks, then the vector conversion of convert_contiguous (F16C,
  // Eigen's packets), as scale_in_place followed by convert_strided did before this was fused.
  alignas(64) From block[256];
  for (; k < n; k += 256) {
    const Index count = std::min<Index>(256, n - k);
    for (Index i = 0; i < count; ++i)
      block[i] = from[k + i] * factor;
    convert_contiguous(static_cast<const From*>(block), to + k, count);
  }
}

// Strided forms (stride in elements): the contiguous kernel when both strides are 1.
template <class To, class From>
void convert_strided(const From* from, Index from_stride, To* to, Index to_stride, Index n) {
  if (from_stride == 1 && to_stride == 1) {
    convert_contiguous(from, to, n);
    return;
  }
  for (Index k = 0; k < n; ++k)
    to[k * to_stride] = convert_scalar<To>(from[k * from_stride]);
}

// A span of storage type From into a contiguous buffer of To, and back.
template <class To, class From>
void load_as(const Span<const From>& x, To* buffer) {
  convert_strided(x.data, x.stride, buffer, Index(1), x.size);
}
template <class From, class To>
void store_as(const From* buffer, const Span<To>& y) {
  convert_strided(buffer, Index(1), y.data, y.stride, y.size);
}

// Runs fn(const C* x, C* y, Index count) over a row in chunks converted from In and back to Out
// (kConvertChunk elements, on the stack); fn must be elementwise. x and y may be the same memory
// (each chunk is read before it is written).
template <class C, class In, class Out, class Fn>
void for_chunks_as(const Span<const In>& x, const Span<Out>& y, Fn&& fn) {
  alignas(64) C in[kConvertChunk];
  alignas(64) C out[kConvertChunk];
  for (Index start = 0; start < x.size; start += kConvertChunk) {
    const Index count = std::min(kConvertChunk, x.size - start);
    convert_strided(x.data + start * x.stride, x.stride, in, Index(1), count);
    fn(static_cast<const C*>(in), static_cast<C*>(out), count);
    convert_strided(static_cast<const C*>(out), Index(1), y.data + start * y.stride, y.stride,
                    count);
  }
}

// Read-only form: fn(const C* x, Index count).
template <class C, class In, class Fn>
void for_chunks_as(const Span<const In>& x, Fn&& fn) {
  alignas(64) C in[kConvertChunk];
  for (Index start = 0; start < x.size; start += kConvertChunk) {
    const Index count = std::min(kConvertChunk, x.size - start);
    convert_strided(x.data + start * x.stride, x.stride, in, Index(1), count);
    fn(static_cast<const C*>(in), count);
  }
}

}  // namespace detail
}  // namespace softmaxlab
