// softmaxlab: Softmax's batch kernels for contiguous rows (rowwise and colwise when the slices are
// contiguous): the software-pipelined kernel for rows of any length and the register kernel for
// rows of at most four packets, which also reads and writes 16-bit rows (AVX-512) with the
// conversions in registers. Results equal apply() on each row bit for bit (tests/test_short_rows.cpp)
// and, for 16-bit rows, the float results rounded once (tests/test_half_conversions.cpp).
#pragma once

#include <limits>
#include <type_traits>

#include "common.hpp"
#include "kernels.hpp"
#include "scalar_types.hpp"

namespace softmaxlab {
namespace detail {

// inverse_total(sum0, sum1) when sum0 received exactly the packet a and sum1 the packet b (kTwo)
// or nothing: a compensated sum fed once has a zero carry, so its total is the sum of its lanes in
// Wide, added in the same order as total_wide; the same bits without the compensation's
// operations (on rows of 16 to 64 floats they are a fifth of the work).
template <class Scalar, bool kTwo, class Packet>
EIGEN_STRONG_INLINE Scalar single_add_inverse(const Packet& a, const Packet& b) {
#if defined(EIGEN_VECTORIZE_AVX512)
  if constexpr (std::is_same_v<Scalar, float>) {
    const auto wide = [](const __m512& s) {
      return _mm512_add_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(s)),
                           _mm512_cvtps_pd(_mm256_castsi256_ps(
                               _mm512_extracti64x4_epi64(_mm512_castps_si512(s), 1))));
    };
    const __m512d t = kTwo ? _mm512_add_pd(wide(a), wide(b)) : wide(a);
    return static_cast<float>(1.0 / _mm512_reduce_add_pd(t));
  }
#endif
  CompensatedSum<Scalar> sa, sb;
  sa.add(a);
  if constexpr (kTwo)
    sb.add(b);
  return inverse_total(sa, sb);
}

// Softmax of `rows` contiguous rows of length n (row i at x + i ldx, y + i ldy; y may be x, rows
// must not overlap otherwise), the batch kernel of Softmax for contiguous rows of any length:
//   max (packets, one horizontal max), y = exp((x - m) s) kExpScale with the compensated sums
//   (scaled_exp_store_sum), y *= 1 / sum (inverse_total, then scale_packets),
// the same arithmetic per element as the strided path, so results do not depend on the path.
// Short rows are latency bound (two horizontal reductions and a division per row), so the passes
// are software-pipelined over rows: row i's last pass is issued after row i+1's exp pass, when
// its sum is long ready. A NaN beside a finite max makes the sum, hence the factor, NaN: the row
// comes out all NaN without a test. Rows whose max is NaN or +-inf go to special(i), the exact
// path of the functor.
//
// Rows of at most four packets (n <= 64 floats with AVX-512, 32 with AVX2), and rows of exactly
// eight 512-bit packets (128 floats), take softmax_short_rows: the row stays in registers from
// load to store.
//
// 16-bit (or mixed float and 16-bit) rows, In or Out not Scalar (AVX-512 builds, Scalar float):
// the max and exp passes widen x in registers, the exponentials go to `stage` (2 n Scalars: the
// current and the pending row), and the last pass multiplies and rounds once to Out
// (scale_convert_contiguous). The same values as converting the rows to float, running the float
// kernel and rounding back, without the two conversion passes and their stores.
template <bool kScaled, class Scalar, class In, class Out, class Special>
bool softmax_short_rows(const In* x, Index ldx, Out* y, Index ldy, Index rows, Index n, Scalar s,
                        const Special& special);

template <bool kScaled, class Scalar, class In, class Out, class Special>
void softmax_contiguous_rows(const In* x, Index ldx, Out* y, Index ldy, Index rows, Index n,
                             Scalar s, const Special& special, Scalar* stage = nullptr) {
  constexpr bool kSame = std::is_same_v<In, Scalar> && std::is_same_v<Out, Scalar>;
  if (softmax_short_rows<kScaled>(x, ldx, y, ldy, rows, n, s, special))
    return;
  eigen_assert((kSame || stage != nullptr) && "softmax_contiguous_rows: 16-bit rows need a stage");
  const Scalar inf = std::numeric_limits<Scalar>::infinity();
  // Where row i's exponentials are kept until its last pass: y itself, or the stage slot.
  const auto exps = [&](Index i, int slot) -> Scalar* {
    if constexpr (kSame) {
      EIGEN_UNUSED_VARIABLE(slot);
      return y + i * ldy;
    } else {
      EIGEN_UNUSED_VARIABLE(i);
      return stage + slot * n;
    }
  };
  const auto last_pass = [&](Index i, int slot, Scalar inverse) {
    if constexpr (kSame) {
      scale_packets(exps(i, slot), n, inverse);
    } else {
      scale_convert_contiguous(static_cast<const Scalar*>(exps(i, slot)), inverse, y + i * ldy, n);
    }
  };
  CompensatedSum<Scalar> sums[2][2];  // the current and the pending row's sums, by slot
  Index pending = -1;                 // the row whose last pass is due, -1 if none
  int slot = 0;                       // the current row's slot; the pending row has the other
  for (Index i = 0; i < rows; ++i) {
    const In* xi = x + i * ldx;
    const Scalar m = packet_max<Eigen::PropagateFast, In, Scalar>(xi, n);
    if (!(m > -inf && m < inf)) {
      special(i);
      continue;
    }
    CompensatedSum<Scalar>* sum = sums[slot];
    sum[0] = CompensatedSum<Scalar>();
    sum[1] = CompensatedSum<Scalar>();
    scaled_exp_store_sum<kScaled>(xi, exps(i, slot), n, m, s, sum[0], sum[1]);
    if (pending >= 0) {
      const CompensatedSum<Scalar>* done = sums[1 - slot];
      last_pass(pending, 1 - slot, inverse_total(done[0], done[1]));
    }
    pending = i;
    slot = 1 - slot;
  }
  if (pending >= 0) {
    const CompensatedSum<Scalar>* done = sums[1 - slot];
    last_pass(pending, 1 - slot, inverse_total(done[0], done[1]));
  }
}

// The same arithmetic as softmax_contiguous_rows for rows of n <= 4P entries (kFull full packets
// and a partial one when kTail) or of exactly 8P (kFull = 8), bit for bit: the max, the exp of
// each packet (padding lanes -inf, so exp 0), the compensated sums fed in the order the general
// path feeds them (the pairs of each 4-packet iteration; otherwise the full packets one by one
// into the first sum and the tail into the second), and y = e / sum by the same multiply. The row stays in registers from load to store:
// no store and reload of y between the passes and no loop set-up, which on rows of 16 to 64 floats
// cost more than the arithmetic. Each row's last multiply and store are issued one row late, after
// the next row's exp, so the row's chain of reductions and division overlaps the next row's work
// (out-of-order execution alone overlapped it only partly: a batch of 512 x 128 ran 8% faster).
template <bool kScaled, int kFull, bool kTail, class Scalar, class In, class Out, class Special>
void softmax_register_rows(const In* x, Index ldx, Out* y, Index ldy, Index rows, Index n, Scalar s,
                           const Special& special) {
  using namespace Eigen::internal;
  using Packet = PacketOf<Scalar>;
  constexpr int P = kPacketSize<Scalar>;
  constexpr int kCount = kFull + (kTail ? 1 : 0);
  static_assert((kCount >= 1 && kCount <= 4 && (kFull < 4 || !kTail)) || (kFull == 8 && !kTail));
  const Scalar inf = std::numeric_limits<Scalar>::infinity();
  const Index tail = n - kFull * P;
  const Packet ps = pset1<Packet>(s);
  // y = e / sum of a row, issued one row late (after the next row's exp), so that the row's
  // chain of reductions and division overlaps the next row's work in program order too.
  const auto store_row = [&](Out* yi, const Packet(&v)[kCount], Scalar inverse) {
    const Packet factor = pset1<Packet>(inverse);
    int k = 0;
    for (; k + 2 <= kFull; k += 2)
      store_two_packets_as(yi + k * P, pmul(v[k], factor), pmul(v[k + 1], factor));
    if constexpr (kFull % 2 != 0)
      store_packet_as(yi + k * P, pmul(v[k], factor));
    if constexpr (kTail)
      store_partial_as(yi + kFull * P, tail, pmul(v[kFull], factor));
  };
  Packet pending[kCount];
  for (Packet& p : pending)
    p = pset1<Packet>(Scalar(0));  // read only once written; set for GCC's may-be-uninitialized
  Scalar pending_inverse = 0;
  Out* pending_y = nullptr;
  for (Index i = 0; i < rows; ++i) {
    const In* xi = x + i * ldx;
    Packet v[kCount];
    for (int k = 0; k < kFull; ++k)
      v[k] = load_packet_as<Packet>(xi + k * P);
    if constexpr (kTail)
      v[kFull] = load_partial_as<Packet>(xi + kFull * P, tail, -inf);
    Packet vmax = v[0];
    for (int k = 1; k < kCount; ++k)
      vmax = pmax<Eigen::PropagateFast>(vmax, v[k]);
    const Scalar m = predux_max(vmax);
    if (!(m > -inf && m < inf)) {
      special(i);
      continue;
    }
    const Packet pm = pset1<Packet>(m);
    for (int k = 0; k < kCount; ++k)
      v[k] = pexp_nonpositive_scaled(shifted<kScaled>(v[k], pm, ps));
    // With kFull 0, 1 or 4, each of the two compensated sums of the general path receives one
    // packet at most: single_add_inverse gives their inverse total bit for bit, without the
    // compensation's operations.
    Scalar inverse;
    if constexpr (kFull == 8) {
      // Two 4-packet iterations of the general path: the pairs into sum0 and sum1 in turn.
      CompensatedSum<Scalar> sum0, sum1;
      sum0.add(padd(v[0], v[1]));
      sum1.add(padd(v[2], v[3]));
      sum0.add(padd(v[4], v[5]));
      sum1.add(padd(v[6], v[7]));
      inverse = inverse_total(sum0, sum1);
    } else if constexpr (kFull == 4) {
      inverse = single_add_inverse<Scalar, true>(padd(v[0], v[1]), padd(v[2], v[3]));
    } else if constexpr (kFull == 1 && kTail) {
      inverse = single_add_inverse<Scalar, true>(v[0], v[1]);
    } else if constexpr (kFull <= 1) {
      inverse = single_add_inverse<Scalar, false>(v[0], v[0]);
    } else {
      CompensatedSum<Scalar> sum0, sum1;
      for (int k = 0; k < kFull; ++k)
        sum0.add(v[k]);
      if constexpr (kTail)
        sum1.add(v[kFull]);
      inverse = inverse_total(sum0, sum1);
    }
    if (pending_y != nullptr)
      store_row(pending_y, pending, pending_inverse);
    for (int k = 0; k < kCount; ++k)
      pending[k] = v[k];
    pending_inverse = inverse;
    pending_y = y + i * ldy;
  }
  if (pending_y != nullptr)
    store_row(pending_y, pending, pending_inverse);
}

// Dispatches rows of n <= 4P entries (and n = 8P with 512-bit packets) to softmax_register_rows;
// returns false for the other rows.
template <bool kScaled, class Scalar, class In, class Out, class Special>
bool softmax_short_rows(const In* x, Index ldx, Out* y, Index ldy, Index rows, Index n, Scalar s,
                        const Special& special) {
  constexpr int P = kPacketSize<Scalar>;
  if constexpr (P == 1) {
    return false;  // no packets: the general path
  } else {
    if (n > 4 * P) {
      // Rows of exactly eight 512-bit packets (128 floats) also fit the registers (32 of them on
      // AVX-512; not on AVX2's 16): a batch of 512 x 128 went from 2.41 to 2.49 G elements/s
      // (best of 6 interleaved rounds on a shared machine) against the general kernel.
      if constexpr (sizeof(PacketOf<Scalar>) == 64) {
        if (n == 8 * P) {
          softmax_register_rows<kScaled, 8, false>(x, ldx, y, ldy, rows, n, s, special);
          return true;
        }
      }
      return false;
    }
    const auto run = [&](auto full, auto tail) {
      softmax_register_rows<kScaled, decltype(full)::value, decltype(tail)::value>(
          x, ldx, y, ldy, rows, n, s, special);
    };
    using F = std::false_type;
    using T = std::true_type;
    switch ((n / P) * 2 + (n % P != 0 ? 1 : 0)) {
      case 1:
        run(std::integral_constant<int, 0>(), T());
        break;
      case 2:
        run(std::integral_constant<int, 1>(), F());
        break;
      case 3:
        run(std::integral_constant<int, 1>(), T());
        break;
      case 4:
        run(std::integral_constant<int, 2>(), F());
        break;
      case 5:
        run(std::integral_constant<int, 2>(), T());
        break;
      case 6:
        run(std::integral_constant<int, 3>(), F());
        break;
      case 7:
        run(std::integral_constant<int, 3>(), T());
        break;
      default:
        run(std::integral_constant<int, 4>(), F());
        break;
    }
    return true;
  }
}

}  // namespace detail
}  // namespace softmaxlab
