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

// to[k] = from[k] for k < n, contiguous, one rounding per element (none when widening).
template <class To, class From>
void convert_contiguous(const From* from, To* to, Index n) {
  using namespace Eigen::internal;
  Index k = 0;
  if constexpr (std::is_same_v<From, To>) {
    std::copy(from, from + n, to);
    return;
  }
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
