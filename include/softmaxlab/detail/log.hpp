// softmaxlab: vector natural log of positive normal numbers, the two logs of the Gumbel noise.
//
// plog_positive_normal_u20(x) = log(x) for x a positive normal number (no zero, subnormal, inf or NaN
// handling: the Gumbel noise only ever passes u in [2^-24, 1 - 2^-24] or -log u in [5.9e-8, 16.7]
// (float; double: [2^-53, 1 - 2^-53] and [1.1e-16, 36.8])). Dropping the special cases makes it
// about half the instructions of Eigen's plog.
//
// Algorithm: x = m 2^e with m in [sqrt(1/2), sqrt(2)) (exponent and mantissa taken from the bits),
// log m = 2 atanh(s) = 2 (s + s^3/3 + s^5/5 + ...), s = (m - 1) / (m + 1) in [-0.1716, 0.1716]:
// the series is cut after s^9 (float: next term < 3e-9 relative) or s^21 (double: < 1e-18),
// log x = e ln2_hi + (e ln2_lo + log m) with a two-part ln 2.
// Accuracy: max error 1.9 ulp (float: every 29th float in [2^-24, 17], every float near 1) and
// 1.4 ulp (double: 2 million log-uniform points in [2^-53, 40] and a dense grid near 1), in units
// of eps |log x|, against long double (tests/test_gumbel.cpp, "the Gumbel log"). The name carries
// the bound as SLEEF's do: plog_positive_normal_u20, at most 2.0 ulp.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "common.hpp"

namespace softmaxlab {
namespace detail {

template <class Scalar>
struct LogConstants;

template <>
struct LogConstants<float> {
  static constexpr float kLn2Hi = 0x1.62e4p-1f;  // 16 significant bits: e * kLn2Hi is exact
  static constexpr float kLn2Lo = 0x1.7f7d1cp-20f;
  static constexpr int kTerms = 4;  // s^3 .. s^9
  static constexpr float kInvOdd[] = {1.0f / 3, 1.0f / 5, 1.0f / 7, 1.0f / 9};
  static constexpr std::uint32_t kMantissaMask = 0x007FFFFFu;
  static constexpr float kExponentBias = 126.0f;  // biased exponent of x minus this: m in [0.5, 1)
};

template <>
struct LogConstants<double> {
  static constexpr double kLn2Hi = 0x1.62e42feep-1;  // 32 significant bits
  static constexpr double kLn2Lo = 0x1.a39ef35793c76p-33;
  static constexpr int kTerms = 10;  // s^3 .. s^21
  static constexpr double kInvOdd[] = {1.0 / 3,  1.0 / 5,  1.0 / 7,  1.0 / 9,  1.0 / 11,
                                       1.0 / 13, 1.0 / 15, 1.0 / 17, 1.0 / 19, 1.0 / 21};
  static constexpr std::uint64_t kMantissaMask = 0x000FFFFFFFFFFFFFull;
  static constexpr double kExponentBias = 1022.0;
};

// a / b for b in [1.7, 2.5) (here m + 1). AVX float: the 12-bit reciprocal estimate and one Newton
// step on the quotient, q1 = q0 + r (a - b q0) with the residual from an FMA: within ~1.5 ulp,
// and about 3 times the throughput of vdivps. AVX-512 float: the same step from the 14-bit
// estimate (vrcp14ps), within ~0.5 ulp; the 512-bit vdivps issues once per 10 cycles or so and,
// two per element, made the log pair cost more than the rest of GumbelSoftmax. Elsewhere a plain
// division.
template <class Packet>
EIGEN_STRONG_INLINE Packet pdiv_log_range(const Packet& a, const Packet& b) {
  // The alias is used only where a vector path is compiled (unused otherwise, a warning).
  [[maybe_unused]] typedef Eigen::internal::unpacket_traits<Packet> Traits;
#if defined(EIGEN_VECTORIZE_AVX512)
  if constexpr (std::is_same_v<typename Traits::type, float> && Traits::size == 16) {
    const __m512 r = _mm512_rcp14_ps(b);
    const __m512 q0 = _mm512_mul_ps(a, r);
    return _mm512_fmadd_ps(r, _mm512_fnmadd_ps(b, q0, a), q0);
  }
#endif
#if defined(EIGEN_VECTORIZE_AVX) && defined(EIGEN_VECTORIZE_FMA)
  if constexpr (std::is_same_v<typename Traits::type, float> && Traits::size == 8) {
    const __m256 r = _mm256_rcp_ps(b);
    const __m256 q0 = _mm256_mul_ps(a, r);
    return _mm256_fmadd_ps(r, _mm256_fnmadd_ps(b, q0, a), q0);
  }
#endif
  return Eigen::internal::pdiv(a, b);
}

// The biased exponent field of x (x positive) as a floating-point value. Eigen's helper needs an
// integer packet type, which plain scalars (EIGEN_DONT_VECTORIZE builds) do not have.
template <class Packet>
EIGEN_STRONG_INLINE Packet biased_exponent(const Packet& x) {
  if constexpr (Eigen::internal::unpacket_traits<Packet>::size == 1) {
    using Bits = std::conditional_t<sizeof(Packet) == 4, std::uint32_t, std::uint64_t>;
    constexpr int kMantissaBits = std::numeric_limits<Packet>::digits - 1;
    Bits bits;
    std::memcpy(&bits, &x, sizeof bits);
    return static_cast<Packet>(static_cast<int>(bits >> kMantissaBits));
  } else {
    return Eigen::internal::pfrexp_generic_get_biased_exponent(x);
  }
}

// A packet with every lane holding the given bit pattern (Eigen's pset1frombits has no scalar
// form).
template <class Packet, class Bits>
EIGEN_STRONG_INLINE Packet set1_from_bits(Bits bits) {
  if constexpr (Eigen::internal::unpacket_traits<Packet>::size == 1) {
    static_assert(sizeof(Packet) == sizeof(Bits));
    Packet value;
    std::memcpy(&value, &bits, sizeof value);
    return value;
  } else {
    return Eigen::internal::pset1frombits<Packet>(bits);
  }
}

template <class Packet>
EIGEN_STRONG_INLINE Packet plog_positive_normal_u20(const Packet& x) {
  using namespace Eigen::internal;
  using Scalar = typename unpacket_traits<Packet>::type;
  using C = LogConstants<Scalar>;
  const Packet one = pset1<Packet>(Scalar(1));
  // m in [0.5, 1): the mantissa bits with the exponent of 0.5; e = biased exponent - bias.
  const Packet mantissa_bits = set1_from_bits<Packet>(C::kMantissaMask);
  Packet m = por(pand(x, mantissa_bits), pset1<Packet>(Scalar(0.5)));
  Packet e = psub(biased_exponent(x), pset1<Packet>(C::kExponentBias));
  // Move m into [sqrt(1/2), sqrt(2)).
  const Packet small = pcmp_lt(m, pset1<Packet>(Scalar(0.70710678118654752440)));
  m = padd(m, pand(small, m));
  e = psub(e, pand(small, one));
  const Packet s = pdiv_log_range(psub(m, one), padd(m, one));
  const Packet z = pmul(s, s);
  Packet p = pset1<Packet>(C::kInvOdd[C::kTerms - 1]);
  for (int k = C::kTerms - 2; k >= 0; --k)
    p = pmadd(p, z, pset1<Packet>(C::kInvOdd[k]));
  // log m = 2s + 2s z p
  const Packet two_s = padd(s, s);
  const Packet log_m = pmadd(pmul(two_s, z), p, two_s);
  return pmadd(e, pset1<Packet>(C::kLn2Hi), pmadd(e, pset1<Packet>(C::kLn2Lo), log_m));
}

}  // namespace detail
}  // namespace softmaxlab
