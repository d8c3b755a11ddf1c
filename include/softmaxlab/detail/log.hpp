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
// the bound as SLEEF's do: plog_positive_normal_u20, at most 2.0 ulp. AVX-512 float takes a
// table form instead (plog_table16 below): 1.19 ulp worst over every float in [2^-24, 17].
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

#if defined(EIGEN_VECTORIZE_AVX512)
// AVX-512 float: a 32-entry table instead of the division. x = 2^k z with z in [0.734375,
// 1.46875) cut into 32 intervals by the top 5 bits of z's bits minus 0.734375's; invc ~ 1 / (the
// interval's centre) as a float and logc = -log(invc) (scripts/gen_log_table.py, mpmath), so
// log x = k ln2 + logc + log1p(z invc - 1) with |r| = |z invc - 1| <= 2^-6 (one FMA, exact up to
// its rounding). The two intervals that touch 1 use invc = 1, logc = 0: r = z - 1 exactly
// (Sterbenz) and log x near 1 carries no cancellation. log1p(r) = r + r^2 (-1/2 + r/3 - r^2/4 +
// r^3/5), truncation < 2^-27 relative for |r| <= 2^-5. Both lookups are one vpermi2ps each
// (the table in two registers). 17 instructions against the division form's 28, within the
// same 1.9 ulp (tests/test_gumbel.cpp, "the Gumbel log").
struct LogTable16f {
  alignas(64) static constexpr float kInvC[32] = {
      0x1.58ed24p+0f, 0x1.51d07ep+0f, 0x1.4afd6ap+0f, 0x1.446f86p+0f, 0x1.3e22ccp+0f,
      0x1.381382p+0f, 0x1.323e34p+0f, 0x1.2c9fb4p+0f, 0x1.27350cp+0f, 0x1.21fb78p+0f,
      0x1.1cf06ap+0f, 0x1.181182p+0f, 0x1.135c82p+0f, 0x1.0ecf56p+0f, 0x1.0a6810p+0f,
      0x1.0624dep+0f, 0x1p+0f,        0x1p+0f,        0x1.e9131ap-1f, 0x1.dae608p-1f,
      0x1.cd8568p-1f, 0x1.c0e070p-1f, 0x1.b4e81cp-1f, 0x1.a98ef6p-1f, 0x1.9ec8eap-1f,
      0x1.948b10p-1f, 0x1.8acb90p-1f, 0x1.818182p-1f, 0x1.78a4c8p-1f, 0x1.702e06p-1f,
      0x1.681682p-1f, 0x1.605816p-1f};
  alignas(64) static constexpr float kLogC[32] = {-0x1.314f20p-2f,
                                                  -0x1.1bf994p-2f,
                                                  -0x1.071386p-2f,
                                                  -0x1.e530eep-3f,
                                                  -0x1.bd0874p-3f,
                                                  -0x1.95a5b2p-3f,
                                                  -0x1.6f0124p-3f,
                                                  -0x1.4913d2p-3f,
                                                  -0x1.23d716p-3f,
                                                  -0x1.fe8912p-4f,
                                                  -0x1.b6ac7cp-4f,
                                                  -0x1.700d3ep-4f,
                                                  -0x1.2aa058p-4f,
                                                  -0x1.ccb726p-5f,
                                                  -0x1.466adap-5f,
                                                  -0x1.849286p-6f,
                                                  0.0f,
                                                  0.0f,
                                                  0x1.77459cp-5f,
                                                  0x1.341d74p-4f,
                                                  0x1.a926d8p-4f,
                                                  0x1.0d77e8p-3f,
                                                  0x1.44d2b4p-3f,
                                                  0x1.7ab890p-3f,
                                                  0x1.af3c92p-3f,
                                                  0x1.e27076p-3f,
                                                  0x1.0a3250p-2f,
                                                  0x1.22941ep-2f,
                                                  0x1.3a64c6p-2f,
                                                  0x1.51aad8p-2f,
                                                  0x1.686c80p-2f,
                                                  0x1.7eaf84p-2f};
};

EIGEN_STRONG_INLINE __m512 plog_table16(const __m512 x) {
  const __m512i bits = _mm512_castps_si512(x);
  const __m512i t = _mm512_sub_epi32(bits, _mm512_set1_epi32(0x3F3C0000));  // bits of 0.734375
  const __m512 k = _mm512_cvtepi32_ps(_mm512_srai_epi32(t, 23));
  const __m512 z = _mm512_castsi512_ps(_mm512_sub_epi32(
      bits, _mm512_and_si512(t, _mm512_set1_epi32(static_cast<int>(0xFF800000u)))));
  const __m512i index = _mm512_srli_epi32(t, 18);  // vpermi2ps reads the low 5 bits
  const __m512 inv_c = _mm512_permutex2var_ps(_mm512_load_ps(LogTable16f::kInvC), index,
                                              _mm512_load_ps(LogTable16f::kInvC + 16));
  const __m512 log_c = _mm512_permutex2var_ps(_mm512_load_ps(LogTable16f::kLogC), index,
                                              _mm512_load_ps(LogTable16f::kLogC + 16));
  const __m512 r = _mm512_fmsub_ps(z, inv_c, _mm512_set1_ps(1.0f));
  const __m512 r2 = _mm512_mul_ps(r, r);
  __m512 p = _mm512_fmadd_ps(r, _mm512_set1_ps(0.2f), _mm512_set1_ps(-0.25f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 3));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(-0.5f));
  const __m512 hi = _mm512_fmadd_ps(k, _mm512_set1_ps(LogConstants<float>::kLn2Hi), log_c);
  const __m512 lo = _mm512_fmadd_ps(k, _mm512_set1_ps(LogConstants<float>::kLn2Lo), r);
  return _mm512_add_ps(hi, _mm512_fmadd_ps(r2, p, lo));
}
#endif

template <class Packet>
EIGEN_STRONG_INLINE Packet plog_positive_normal_u20(const Packet& x) {
  using namespace Eigen::internal;
  using Scalar = typename unpacket_traits<Packet>::type;
#if defined(EIGEN_VECTORIZE_AVX512)
  if constexpr (std::is_same_v<Scalar, float> && unpacket_traits<Packet>::size == 16)
    return plog_table16(x);
#endif
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
