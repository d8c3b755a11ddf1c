// softmaxlab: the exact sign of a sum of doubles (a fixed-point superaccumulator).
//
// ExactSum holds sum_k v_k for any finite doubles v_k without rounding: every double is an
// integer times 2^-1074 below 2^1024, so the sum is an integer number of 2^-1074 units, kept in
// 32-bit digits (int64 limbs, carries deferred) from 2^-1074 up to past 2^1064 (2^40 terms of
// DBL_MAX). sign() is exact. Used where a decision must not depend on rounding: Sparsemax's
// support at ties with its threshold (entmax.hpp). Cost: three limb additions per term.
#pragma once

#include <cmath>
#include <cstdint>

namespace softmaxlab {
namespace detail {

class ExactSum {
 public:
  // Adds v (finite; NaN or inf are the caller's to exclude).
  void add(double v) {
    if (v == 0)
      return;
    int e = 0;
    const double f = std::frexp(v, &e);  // v = f 2^e, 1/2 <= |f| < 1
    // v = mant 2^(e - 53) with |mant| < 2^53; in units of 2^-1074 the offset is e - 53 + 1074.
    std::uint64_t mant = static_cast<std::uint64_t>(std::fabs(std::ldexp(f, 53)));
    int shift = e - 53 + 1074;
    if (shift < 0) {  // subnormal: the low bits of mant are zero, so the shift is exact
      mant >>= -shift;
      shift = 0;
    }
    const int index = shift / 32, offset = shift % 32;
    const std::uint64_t low_bits = (std::uint64_t(1) << (32 - offset)) - 1;
    const std::uint64_t rest = mant >> (32 - offset);
    const std::int64_t sign = v < 0 ? -1 : 1;
    limb_[index] += sign * static_cast<std::int64_t>((mant & low_bits) << offset);
    limb_[index + 1] += sign * static_cast<std::int64_t>(rest & 0xffffffffu);
    limb_[index + 2] += sign * static_cast<std::int64_t>(rest >> 32);
    if (++pending_ == kCarryEvery)
      normalize();
  }

  // -1, 0 or +1: the sign of the exact sum.
  int sign() {
    normalize();
    if (limb_[kLimbs - 1] != 0)
      return limb_[kLimbs - 1] < 0 ? -1 : 1;
    for (int i = 0; i < kLimbs - 1; ++i)
      if (limb_[i] != 0)
        return 1;
    return 0;
  }

 private:
  // Every limb but the top one into [0, 2^32); the top one keeps the sign.
  void normalize() {
    std::int64_t carry = 0;
    for (int i = 0; i < kLimbs - 1; ++i) {
      const std::int64_t v = limb_[i] + carry;
      carry = v >= 0 ? v / (std::int64_t(1) << 32) : -((-v + 0xffffffffll) >> 32);
      limb_[i] = v - carry * (std::int64_t(1) << 32);
    }
    limb_[kLimbs - 1] += carry;
    pending_ = 0;
  }

  // 2^-1074 .. 2^(32 * 70 - 1074) = 2^1166: DBL_MAX's 2^1024 with 2^142 to spare for the count.
  static constexpr int kLimbs = 70;
  // Each addition changes a limb by less than 2^32: carry before 2^30 of them can reach 2^62.
  static constexpr int kCarryEvery = 1 << 30;
  std::int64_t limb_[kLimbs] = {};
  int pending_ = 0;
};

}  // namespace detail
}  // namespace softmaxlab
