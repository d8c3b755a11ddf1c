// softmaxlab: row passes shared by PowerSoftmax and PolynomialSoftmax, on Eigen packets.
//
// The terms these variants sum are cheap to compute (a few products each), so the summation must
// not become the bottleneck: `PairedSum` adds four packets as a balanced tree, adds 8 such sums
// plainly into a block sum, and feeds each block into one per-lane Kahan-compensated accumulator.
// The relative error stays about 11 roundings (u = eps/2) whatever the row length (terms are
// non-negative), with one compensated step, whose chain is long, per 32 packets.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>

#include "common.hpp"
#include "kernels.hpp"

namespace softmaxlab {
namespace detail {

template <class Scalar>
struct PairedSum {
  using Packet = PacketOf<Scalar>;
  static constexpr int kBlock = 8;  // plain additions between two compensated ones
  CompensatedSum<Scalar> acc;
  Packet block = Eigen::internal::pset1<Packet>(Scalar(0));
  int count = 0;

  // Four packets at once: summed as a balanced tree into the block sum.
  EIGEN_STRONG_INLINE void add4(const Packet& p0, const Packet& p1, const Packet& p2,
                                const Packet& p3) {
    using Eigen::internal::padd;
    add1(padd(padd(p0, p1), padd(p2, p3)));
  }
  EIGEN_STRONG_INLINE void add1(const Packet& p) {
    block = Eigen::internal::padd(block, p);
    if (++count == kBlock) {
      acc.add(block);
      block = Eigen::internal::pset1<Packet>(Scalar(0));
      count = 0;
    }
  }
  // The total in CompensatedSum's Wide type (double for float lanes), the lanes combined on
  // packets (total_wide of two sums): the lane loop and an x87 round trip cost a fifth of a
  // PowerSoftmax row of 1,000 floats.
  typename CompensatedSum<Scalar>::Wide total_wide() const {
    CompensatedSum<Scalar> all = acc;
    all.add(block);
    return detail::total_wide(all, CompensatedSum<Scalar>());
  }
  long double total() const { return static_cast<long double>(total_wide()); }
};

// p = p^(2^count) for four packets, their chains interleaved and unrolled (up to 8 squarings
// without a loop counter in the dependency chain; more loop in blocks of 8).
template <class Packet>
EIGEN_STRONG_INLINE void square_repeatedly(Packet (&p)[4], int count) {
  using Eigen::internal::pmul;
  const auto sq = [&] {
    p[0] = pmul(p[0], p[0]);
    p[1] = pmul(p[1], p[1]);
    p[2] = pmul(p[2], p[2]);
    p[3] = pmul(p[3], p[3]);
  };
  for (; count > 8; count -= 8) {
    sq();
    sq();
    sq();
    sq();
    sq();
    sq();
    sq();
    sq();
  }
  switch (count) {
    case 8:
      sq();
      [[fallthrough]];
    case 7:
      sq();
      [[fallthrough]];
    case 6:
      sq();
      [[fallthrough]];
    case 5:
      sq();
      [[fallthrough]];
    case 4:
      sq();
      [[fallthrough]];
    case 3:
      sq();
      [[fallthrough]];
    case 2:
      sq();
      [[fallthrough]];
    case 1:
      sq();
      [[fallthrough]];
    default:
      break;
  }
}

// max |x_i| over contiguous x; NaN inputs are not propagated here (callers detect NaN through the
// sum, or in their special-value branches).
template <class Scalar>
Scalar max_abs(const Scalar* x, Index n) {
  using namespace Eigen::internal;
  using Packet = PacketOf<Scalar>;
  constexpr int P = kPacketSize<Scalar>;
  Packet m0 = pset1<Packet>(Scalar(0)), m1 = m0, m2 = m0, m3 = m0;
  Index i = 0;
  for (; i + 4 * P <= n; i += 4 * P) {
    m0 = pmax(m0, pabs(ploadu<Packet>(x + i)));
    m1 = pmax(m1, pabs(ploadu<Packet>(x + i + P)));
    m2 = pmax(m2, pabs(ploadu<Packet>(x + i + 2 * P)));
    m3 = pmax(m3, pabs(ploadu<Packet>(x + i + 3 * P)));
  }
  for (; i + P <= n; i += P)
    m0 = pmax(m0, pabs(ploadu<Packet>(x + i)));
  if (i < n)
    m1 = pmax(m1, pabs(load_partial<Packet>(x + i, n - i, Scalar(0))));
  return predux_max(pmax(pmax(m0, m1), pmax(m2, m3)));
}

template <class Scalar>
Scalar max_abs(const Span<const Scalar>& x) {
  Scalar m = 0;
  for_chunks(x, [&](const Scalar* data, Index count) { m = std::max(m, max_abs(data, count)); });
  return m;
}

template <class Scalar>
bool has_nan(const Span<const Scalar>& x) {
  for (Index i = 0; i < x.size; ++i)
    if (x[i] != x[i])
      return true;
  return false;
}

// y_i = x_i * f1 (* f2 when kTwo): the final normalization, in place allowed.
template <bool kTwo, class Scalar>
void scale_by(const Scalar* x, Scalar* y, Index n, Scalar f1, Scalar f2) {
  using namespace Eigen::internal;
  using Packet = PacketOf<Scalar>;
  constexpr int P = kPacketSize<Scalar>;
  const Packet p1 = pset1<Packet>(f1), p2 = pset1<Packet>(f2);
  Index i = 0;
  const auto op = [&](const Packet& v) {
    if constexpr (kTwo) {
      return pmul(pmul(v, p1), p2);
    } else {
      return pmul(v, p1);
    }
  };
  for (; i + 4 * P <= n; i += 4 * P) {
    pstoreu(y + i, op(ploadu<Packet>(x + i)));
    pstoreu(y + i + P, op(ploadu<Packet>(x + i + P)));
    pstoreu(y + i + 2 * P, op(ploadu<Packet>(x + i + 2 * P)));
    pstoreu(y + i + 3 * P, op(ploadu<Packet>(x + i + 3 * P)));
  }
  for (; i + P <= n; i += P)
    pstoreu(y + i, op(ploadu<Packet>(x + i)));
  if (i < n)
    store_partial(y + i, n - i, op(load_partial<Packet>(x + i, n - i, Scalar(0))));
}

// The positive factor r (long double, or double for float rows) as the scalar factors scale_by
// applies: f1 = r, or, when r is below the scalar's normal range, f1 = r 2^64 and f2 = 2^-64
// (two = true), so a subnormal factor never costs the significand of the product.
template <class Scalar>
struct ScaleFactors {
  bool two;
  Scalar f1, f2;
  template <class Wide>
  explicit ScaleFactors(Wide r)
      : two(r < static_cast<Wide>(std::numeric_limits<Scalar>::min()) * Wide(0x1p40)),
        f1(static_cast<Scalar>(two ? r * Wide(0x1p64) : r)),
        f2(two ? Scalar(0x1p-64) : Scalar(1)) {}
};

// Multiplies y (in place) by r, exactly as if by one rounding of y * r (see ScaleFactors).
template <class Scalar, class Wide>
void scale_row(const Span<Scalar>& y, Wide r) {
  const ScaleFactors<Scalar> f(r);
  const Span<const Scalar> in{y.data, y.size, y.stride};
  for_chunks(in, y, [&](const Scalar* a, Scalar* b, Index n) {
    if (f.two) {
      scale_by<true>(a, b, n, f.f1, f.f2);
    } else {
      scale_by<false>(a, b, n, f.f1, f.f2);
    }
  });
}

}  // namespace detail
}  // namespace softmaxlab
