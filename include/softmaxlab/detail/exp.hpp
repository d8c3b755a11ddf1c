// softmaxlab: vector exp of non-positive arguments, the inner loop of every softmax.
//
// pexp_nonpositive_u11(x) = exp(x) for x <= 0 (including -inf, which gives exactly +0), on Eigen
// packets or plain scalars. Softmax only ever needs exp(x - max) <= 1, so the kernel drops the
// overflow handling of a general exp and keeps what Eigen's pexp lacks for this use: Eigen 3.4
// clamps its argument at about -88.7 (float) / -709.8 (double), so exp(-inf) returns ~3e-39 instead
// of 0, and masked entries would get a small but non-zero probability.
//
// Algorithm ("rr2-p6" for float, "rr2-p11" for double, in XNNPACK's naming):
//   n = round(x / ln2), r = x - n*ln2_hi - n*ln2_lo (two-constant Cody-Waite reduction),
//   exp(r) = 1 + r + r^2 q(r) on |r| <= ln2/2, q a degree-4 (float) / degree-9 (double) Chebyshev
//   fit whose coefficients come from scripts/gen_exp_poly.py (mpmath; max relative error of the
//   rounded polynomial 0.094 eps float, 0.11 eps double),
//   exp(x) = exp(r) * 2^n, scaled in two steps (2^(n+64) then 2^-64 for float) so that results in
//   the subnormal range are rounded once.
// Arguments below -104 (float) / -746 (double) give +0, as the exact result rounds to 0 there.
// Accuracy: max error 1.07 ulp over every non-positive float, 1.06 ulp on a dense double grid
// (tests/test_softmax.cpp, "the exp kernel is within 1.1 ulp, exact at 0 and -inf, NaN in NaN
// out"; subnormal results: error in units of the smallest subnormal). The packet kernel's name
// carries that bound as SLEEF's do: pexp_nonpositive_u11, at most 1.1 ulp.
// NaN input gives NaN.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "common.hpp"

namespace softmaxlab {
namespace detail {

template <class Scalar>
struct ExpConstants;

template <>
struct ExpConstants<float> {
  static constexpr float kLog2e = 0x1.715476p+0f;
  static constexpr float kLn2Hi = 0x1.62e4p-1f;  // 16 significant bits: n * kLn2Hi is exact
  static constexpr float kLn2Lo = 0x1.7f7d1cp-20f;
  static constexpr float kLowest = -104.0f;  // exp(-104) < smallest subnormal / 2
  // x * log2e rounds to -191 = -(127 + 64): the magic-number path's 2^(n + 64) has a zero
  // exponent field there, i.e. is +0.0 (exp_times_2p64).
  static constexpr float kZeroClamp = -132.375f;
  // q(r) = (exp(r) - 1 - r) / r^2, lowest degree first
  static constexpr float kQ[] = {0x1p-1f, 0x1.5554d4p-3f, 0x1.555514p-5f, 0x1.121582p-7f,
                                 0x1.6d1b1cp-10f};
};

template <>
struct ExpConstants<double> {
  static constexpr double kLog2e = 0x1.71547652b82fep+0;
  static constexpr double kLn2Hi = 0x1.62e42feep-1;  // 32 significant bits
  static constexpr double kLn2Lo = 0x1.a39ef35793c76p-33;
  static constexpr double kLowest = -746.0;
  static constexpr double kZeroClamp = -753.5;  // x * log2e rounds to -1087 = -(1023 + 64)
  static constexpr double kQ[] = {
      0x1.0000000000001p-1,  0x1.5555555555556p-3,  0x1.555555555394cp-5,  0x1.1111111110871p-7,
      0x1.6c16c17a1c437p-10, 0x1.a01a01a8ba744p-13, 0x1.a019b31890abfp-16, 0x1.71de0a0471800p-19,
      0x1.289876a2dbdc0p-22, 0x1.af4134720f354p-26};
};

// exp(r) - 1 = r + r^2 q(r) for |r| <= ~0.35, Horner on q.
template <class Packet, class Scalar>
EIGEN_STRONG_INLINE Packet exp_reduced_poly_minus_one(const Packet& r) {
  using Eigen::internal::pmadd;
  using Eigen::internal::pmul;
  using Eigen::internal::pset1;
  constexpr auto& q = ExpConstants<Scalar>::kQ;
  constexpr int degree = static_cast<int>(sizeof(q) / sizeof(q[0])) - 1;
  Packet acc = pset1<Packet>(q[degree]);
  for (int k = degree - 1; k >= 0; --k)
    acc = pmadd(acc, r, pset1<Packet>(q[k]));
  const Packet r2 = pmul(r, r);
  return pmadd(r2, acc, r);
}

// exp(r) for |r| <= ~0.35: 1 + (r + r^2 q), one rounding in the last addition.
template <class Packet, class Scalar>
EIGEN_STRONG_INLINE Packet exp_reduced_poly(const Packet& r) {
  return Eigen::internal::padd(exp_reduced_poly_minus_one<Packet, Scalar>(r),
                               Eigen::internal::pset1<Packet>(Scalar(1)));
}

// Scalar form: the same reduction and polynomial, with std::ldexp for the scaling.
template <class Scalar>
inline Scalar exp_nonpositive_scalar(Scalar x) {
  using C = ExpConstants<Scalar>;
  if (x != x)
    return x;
  if (x < C::kLowest)
    return Scalar(0);
  const Scalar n = std::nearbyint(x * C::kLog2e);
  Scalar r = std::fma(n, -C::kLn2Hi, x);
  r = std::fma(n, -C::kLn2Lo, r);
  return std::ldexp(exp_reduced_poly<Scalar, Scalar>(r), static_cast<int>(n));
}

// 2^(n + 64) from t = x * log2e + magic, where adding the magic constant left the biased integer
// n + 64 + bias in t's low mantissa bits: shifting them into the exponent field gives the power of
// two. Float uses Eigen's integer packets; double needs 64-bit lane shifts, which Eigen 3.4 does
// not wrap, so they come from the intrinsics of the compiled instruction set (AVX2, AVX-512, SSE2).
template <class Packet>
EIGEN_STRONG_INLINE Packet exponent_from_magic_f32(const Packet& t) {
  using namespace Eigen::internal;
  using PacketI = typename unpacket_traits<Packet>::integer_packet;
  return preinterpret<Packet>(plogical_shift_left<23>(preinterpret<PacketI>(t)));
}
#if defined(EIGEN_VECTORIZE_AVX512)
EIGEN_STRONG_INLINE __m512d exponent_from_magic_f64(const __m512d& t) {
  return _mm512_castsi512_pd(_mm512_slli_epi64(_mm512_castpd_si512(t), 52));
}
#endif
#if defined(EIGEN_VECTORIZE_AVX2)
EIGEN_STRONG_INLINE __m256d exponent_from_magic_f64(const __m256d& t) {
  return _mm256_castsi256_pd(_mm256_slli_epi64(_mm256_castpd_si256(t), 52));
}
#endif
#if defined(EIGEN_VECTORIZE_SSE2)
EIGEN_STRONG_INLINE __m128d exponent_from_magic_f64(const __m128d& t) {
  return _mm_castsi128_pd(_mm_slli_epi64(_mm_castpd_si128(t), 52));
}
#endif
// aarch64 NEON: the same shift on float64x2_t (Eigen's Packet2d), so NEON double takes the
// magic-number path too and gives the x86 results bit for bit (Eigen 3.4 has no pround for NEON
// double).
#if defined(EIGEN_VECTORIZE_NEON) && EIGEN_ARCH_ARM64 && !EIGEN_APPLE_DOUBLE_NEON_BUG
#define SOFTMAXLAB_NEON_F64_SHIFT 1
EIGEN_STRONG_INLINE float64x2_t exponent_from_magic_f64(const float64x2_t& t) {
  return vreinterpretq_f64_s64(vshlq_n_s64(vreinterpretq_s64_f64(t), 52));
}
#endif

// Which double packet widths (lanes) have exponent_from_magic_f64 in this build.
template <int kLanes>
inline constexpr bool kF64ShiftLanes = false;
#if defined(EIGEN_VECTORIZE_AVX512)
template <>
inline constexpr bool kF64ShiftLanes<8> = true;
#endif
#if defined(EIGEN_VECTORIZE_AVX2)
template <>
inline constexpr bool kF64ShiftLanes<4> = true;
#endif
#if defined(EIGEN_VECTORIZE_SSE2) || defined(SOFTMAXLAB_NEON_F64_SHIFT)
template <>
inline constexpr bool kF64ShiftLanes<2> = true;
#endif

// Whether pexp_nonpositive_u11 has the magic-number path for this packet (every float packet; double
// packets with 64-bit lane shifts). Without it, double falls back to Eigen's pldexp.
template <class Packet>
inline constexpr bool kMagicExp =
    Eigen::internal::unpacket_traits<Packet>::size > 1
    && (std::is_same_v<typename Eigen::internal::unpacket_traits<Packet>::type,
                       float> || kF64ShiftLanes<Eigen::internal::unpacket_traits<Packet>::size>);

// exp(x) * 2^64 for x <= 0 on the magic-number path, with p and 2^(n + 64) multiplied exactly:
// a normal number for x >= kLowest (n + 64 >= -86 for float, >= -1012 for double), and exactly 0
// where exp(x) < 2^-150 (2^-1075) would round every softmax result to 0 anyway: x < kLowest on
// AVX-512, x <= kZeroClamp elsewhere (between the two, a tiny value the final scaling rounds to 0).
// An exact 0 matters for speed: a tiny stored value makes the final scaling underflow, which
// costs a microcode assist per element on x86 cores (a row masked with -inf ran 6x slower).
template <class Packet>
EIGEN_STRONG_INLINE Packet exp_times_2p64(const Packet& x_in) {
  using namespace Eigen::internal;
  using Scalar = typename unpacket_traits<Packet>::type;
  using C = ExpConstants<Scalar>;
  constexpr bool kFloat = std::is_same_v<Scalar, float>;
  // Adding 1.5 * 2^23 (2^52) rounds x/ln2 to an integer in the low mantissa bits; the extra
  // 191 = 127 + 64 (1087 = 1023 + 64) makes those bits the biased exponent of 2^(n + 64).
  const Packet magic = pset1<Packet>(kFloat ? Scalar(0x1.8p23 + 191.0) : Scalar(0x1.8p52 + 1087.0));
#if defined(EIGEN_VECTORIZE_AVX512)
  if constexpr (sizeof(Packet) == 64) {
    // AVX-512: vscalefps/pd multiplies by 2^n from n as a float, without the shift into the
    // exponent field; 2^64 moves into the polynomial's last step, fma(v, 2^64, 2^64) =
    // 2^64 (v + 1) with the same single rounding as v + 1. The clamp becomes a mask (one compare,
    // as the max was): lanes below kLowest are zeroed by the scalef itself; the unordered
    // compare keeps NaN lanes, whose NaN the arithmetic carries through.
    const Packet x = x_in;
    const Packet t = pmadd(x, pset1<Packet>(C::kLog2e), magic);
    const Packet n = psub(t, magic);
    Packet r = pmadd(n, pset1<Packet>(-C::kLn2Hi), x);
    r = pmadd(n, pset1<Packet>(-C::kLn2Lo), r);
    const Packet v = exp_reduced_poly_minus_one<Packet, Scalar>(r);
    const Packet two64 = pset1<Packet>(Scalar(0x1p64));
    if constexpr (kFloat) {
      const __mmask16 keep = _mm512_cmp_ps_mask(x, pset1<Packet>(C::kLowest), _CMP_NLT_UQ);
      return _mm512_maskz_scalef_ps(keep, pmadd(v, two64, two64), n);
    } else {
      const __mmask8 keep = _mm512_cmp_pd_mask(x, pset1<Packet>(C::kLowest), _CMP_NLT_UQ);
      return _mm512_maskz_scalef_pd(keep, pmadd(v, two64, two64), n);
    }
  }
#endif
  // Eigen's pmax(a, b) returns a when a is NaN, so NaN survives the clamp.
  const Packet x = pmax(x_in, pset1<Packet>(C::kZeroClamp));
  const Packet t = pmadd(x, pset1<Packet>(C::kLog2e), magic);
  const Packet n = psub(t, magic);
  Packet r = pmadd(n, pset1<Packet>(-C::kLn2Hi), x);
  r = pmadd(n, pset1<Packet>(-C::kLn2Lo), r);
  const Packet p = exp_reduced_poly<Packet, Scalar>(r);
  if constexpr (kFloat) {
    return pmul(p, exponent_from_magic_f32(t));
  } else {
    return pmul(p, exponent_from_magic_f64(t));
  }
}

// Round to nearest (ties to even) for |x| < 2^22 (float) / 2^51 (double): adding and subtracting
// 1.5 * 2^mantissa_bits. Not every Eigen 3.4 back end has pround for every packet (NEON double has
// none); the exact rounding of the add is safe because config.hpp refuses -ffast-math.
template <class Packet>
EIGEN_STRONG_INLINE Packet pround_small(const Packet& x) {
  using namespace Eigen::internal;
  using Scalar = typename unpacket_traits<Packet>::type;
  const Packet magic =
      pset1<Packet>(std::is_same_v<Scalar, float> ? Scalar(0x1.8p23) : Scalar(0x1.8p52));
  return psub(padd(x, magic), magic);
}

template <class Packet>
EIGEN_STRONG_INLINE Packet pexp_nonpositive_u11(const Packet& x_in) {
  using namespace Eigen::internal;
  using Scalar = typename unpacket_traits<Packet>::type;
  using C = ExpConstants<Scalar>;
  if constexpr (unpacket_traits<Packet>::size == 1) {
    return exp_nonpositive_scalar<Scalar>(x_in);
  } else if constexpr (kMagicExp<Packet>) {
    // The one rounding into the subnormal range happens here.
    return pmul(exp_times_2p64(x_in), pset1<Packet>(Scalar(0x1p-64)));
  } else {
    const Packet x = pmax(x_in, pset1<Packet>(C::kLowest));
    const Packet n = pround_small(pmul(x, pset1<Packet>(C::kLog2e)));
    Packet r = pmadd(n, pset1<Packet>(-C::kLn2Hi), x);
    r = pmadd(n, pset1<Packet>(-C::kLn2Lo), r);
    // Eigen's pldexp splits 2^n into factors, so subnormal results are rounded once.
    return pldexp(exp_reduced_poly<Packet, Scalar>(r), n);
  }
}

// exp(x) * kExpScale for x <= 0, kExpScale = 2^64: the product of pexp_nonpositive_u11 before its final
// multiply by 2^-64 (so pexp_nonpositive_u11(x) is exactly pexp_nonpositive_scaled(x) * 2^-64), always
// a normal number, never rounded in the subnormal range. The softmax kernels store and sum these
// scaled values and fold 2^-64 into their final scaling, which then rounds a subnormal result once
// and saves one multiply per element.
template <class Scalar>
inline constexpr Scalar kExpScale = Scalar(0x1p64);
template <class Scalar>
inline constexpr int kExpScaleLog2 = 64;

template <class Packet>
EIGEN_STRONG_INLINE Packet pexp_nonpositive_scaled(const Packet& x_in) {
  using namespace Eigen::internal;
  using Scalar = typename unpacket_traits<Packet>::type;
  if constexpr (kMagicExp<Packet>) {
    return exp_times_2p64(x_in);
  } else {
    return pmul(pexp_nonpositive_u11(x_in), pset1<Packet>(kExpScale<Scalar>));
  }
}

}  // namespace detail
}  // namespace softmaxlab
