// softmaxlab: the row engine of Softmax and LogSoftmax (softmax.hpp), shared by every variant that
// computes a softmax row (single_pass.hpp, gumbel.hpp, logsumexp.hpp, the fused losses through
// log_normalizer.hpp, entmax.hpp's special rows): the special-value policy of one row
// (RowKind, write_special_row), the scaled exp-and-sum pass, the regular and log row functions, the
// 16-bit/mixed staged and streamed rows and the two backward passes. The formulas, accuracy and
// special values are stated in softmax.hpp's doc block; tests/test_softmax.cpp and
// tests/test_softmax_reference.cpp check them.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>

#include "backward_base.hpp"
#include "checks.hpp"
#include "functor_base.hpp"
#include "kernels.hpp"
#include "scalar_types.hpp"

namespace softmaxlab {
namespace detail {

enum class RowKind { Regular, NaN, AllMasked, PositiveInfinity };

template <class Scalar>
RowKind classify(Scalar max) {
  if (max != max)
    return RowKind::NaN;
  if (max == -std::numeric_limits<Scalar>::infinity())
    return RowKind::AllMasked;
  if (max == std::numeric_limits<Scalar>::infinity())
    return RowKind::PositiveInfinity;
  return RowKind::Regular;
}

// Writes `at_inf` where x is +inf and `elsewhere` at every other entry (x and y may alias).
template <class Scalar>
void fill_by_infinity(const Span<const Scalar>& x, const Span<Scalar>& y, Scalar at_inf,
                      Scalar elsewhere) {
  const Scalar inf = std::numeric_limits<Scalar>::infinity();
  for (Index i = 0; i < x.size; ++i)
    y[i] = x[i] == inf ? at_inf : elsewhere;
}

template <class Scalar>
Index count_positive_infinity(const Span<const Scalar>& x) {
  Index k = 0;
  for (Index i = 0; i < x.size; ++i)
    k += x[i] == std::numeric_limits<Scalar>::infinity();
  return k;
}

// The special-value policy of softmax and log-softmax rows (softmax.hpp's doc block, "Special
// values"), in one place: what a fully masked row holds (0, or -inf in the log form) and what each
// of k entries at +inf holds (1/k, or -log k).
template <bool kLog, class Scalar>
struct SpecialValues {
  static Scalar masked() { return kLog ? -std::numeric_limits<Scalar>::infinity() : Scalar(0); }
  static Scalar at_infinity(Index k) {
    return kLog ? static_cast<Scalar>(-std::log(double(k))) : Scalar(1) / static_cast<Scalar>(k);
  }
};

// Writes the row y of a row x whose max is m when m is NaN (all NaN), -inf (all masked) or +inf
// (the k entries at +inf share the mass, masked elsewhere) and returns true; returns false, writing
// nothing, for a finite m. k is the number of +inf entries of the whole row when x is only a chunk
// of it (single_pass.hpp), counted from x when negative. Shared by every softmax-like map
// (Softmax, LogSoftmax, the streamed rows, SinglePassSoftmax, PolynomialSoftmax, the sparse maps).
template <bool kLog, class Scalar>
bool write_special_row(const Span<const Scalar>& x, const Span<Scalar>& y, Scalar m, Index k = -1) {
  using Values = SpecialValues<kLog, Scalar>;
  switch (classify(m)) {
    case RowKind::NaN:
      fill(y, m);
      return true;
    case RowKind::AllMasked:
      fill(y, Values::masked());
      return true;
    case RowKind::PositiveInfinity:
      if (k < 0)
        k = count_positive_infinity(x);
      fill_by_infinity(x, y, Values::at_infinity(k), Values::masked());
      return true;
    case RowKind::Regular:
      break;
  }
  return false;
}

// 1 / sum rounded to Scalar: through double for float (x87's long double division sits on the
// critical path of short rows; double already gives a correctly rounded float but for double
// rounding, an error far below the policy).
template <class Scalar>
Scalar reciprocal(long double sum) {
  if constexpr (std::is_same_v<Scalar, float>) {
    return static_cast<float>(1.0 / static_cast<double>(sum));
  } else {
    return static_cast<Scalar>(1.0L / sum);
  }
}

// Sum of the terms exp((x_i - m) * s) * kExpScale<Scalar> over the row, storing them into y when
// kStore; the sum is >= kExpScale (the max term is exp(0)).
template <bool kStore, class Scalar>
long double scaled_exp_pass(const Span<const Scalar>& x, const Span<Scalar>& y, Scalar m, Scalar s,
                            bool scaled) {
  CompensatedSum<Scalar> sum0, sum1;
  if constexpr (kStore) {
    if (scaled) {
      for_chunks(x, y, [&](const Scalar* in, Scalar* out, Index n) {
        scaled_exp_store_sum<true>(in, out, n, m, s, sum0, sum1);
      });
    } else {
      for_chunks(x, y, [&](const Scalar* in, Scalar* out, Index n) {
        scaled_exp_store_sum<false>(in, out, n, m, s, sum0, sum1);
      });
    }
  } else {
    EIGEN_UNUSED_VARIABLE(y);
    if (scaled) {
      for_chunks(x,
                 [&](const Scalar* in, Index n) { scaled_exp_sum<true>(in, n, m, s, sum0, sum1); });
    } else {
      for_chunks(
          x, [&](const Scalar* in, Index n) { scaled_exp_sum<false>(in, n, m, s, sum0, sum1); });
    }
  }
  return sum0.total() + sum1.total();
}

// y = softmax((x - m) * s) for a row whose max m is finite (RowKind::Regular); y may alias x.
// `scaled` is false when s == 1 (the multiply is skipped). Shared by Softmax and GumbelSoftmax.
template <class Scalar>
void softmax_regular_row(const Span<const Scalar>& x, const Span<Scalar>& y, Scalar m, Scalar s,
                         bool scaled) {
  // y holds exp(..) * kExpScale and sum their total (>= kExpScale: the max term is exp(0)), so
  // this one multiply also removes the scale, rounding subnormal results once.
  CompensatedSum<Scalar> sum0, sum1;
  if (x.contiguous() && y.contiguous()) {
    // The common case, without chunk staging (short rows: this is most of the per-row cost).
    if (scaled) {
      scaled_exp_store_sum<true>(x.data, y.data, x.size, m, s, sum0, sum1);
    } else {
      scaled_exp_store_sum<false>(x.data, y.data, x.size, m, s, sum0, sum1);
    }
    scale_packets(y.data, y.size, inverse_total(sum0, sum1));
    return;
  }
  for_chunks(x, y, [&](const Scalar* in, Scalar* out, Index n) {
    if (scaled) {
      scaled_exp_store_sum<true>(in, out, n, m, s, sum0, sum1);
    } else {
      scaled_exp_store_sum<false>(in, out, n, m, s, sum0, sum1);
    }
  });
  const Scalar inverse = inverse_total(sum0, sum1);
  if (y.contiguous()) {
    scale_packets(y.data, y.size, inverse);
  } else {
    for (Index i = 0; i < y.size; ++i)
      y[i] *= inverse;
  }
}

// y_i = (x_i - m) s - log_sum for a row whose max m is finite: the last pass of every log-softmax
// (LogSoftmax, OnlineNormalizer::write_log); y may alias x. A row whose shifted differences can
// overflow (m >= 2^103 in float) while the scale may bring them back (s != 1) takes the exact rule
// of shifted_scaled entry by entry; it is rare enough that a scalar loop serves it.
template <class Scalar>
void log_softmax_last_pass(const Span<const Scalar>& x, const Span<Scalar>& y, Scalar m, Scalar s,
                           bool scaled, Scalar log_sum) {
  if (scaled && shift_may_overflow(m)) {
    for (Index i = 0; i < x.size; ++i)
      y[i] = shifted_scaled(x[i], m, s) - log_sum;
    return;
  }
  for_chunks(x, y, [&](const Scalar* in, Scalar* out, Index n) {
    if (scaled) {
      shift_scale_offset<true>(in, out, n, m, s, log_sum);
    } else {
      shift_scale_offset<false>(in, out, n, m, s, log_sum);
    }
  });
}

// Softmax (kLog false) or log-softmax of one row of storage type In into Out, computed in C in
// converted chunks (scalar_types.hpp): the long-row path of the 16-bit and mixed types. Three reads
// of x (max, sum, output) and one write, nothing the row's size in memory; the same kernels and
// roundings as the float path, then one rounding to Out.
template <bool kLog, class C, class In, class Out>
void softmax_row_streamed(const Span<const In>& x, const Span<Out>& y, double temperature) {
  const C inf = std::numeric_limits<C>::infinity();
  C m = -inf;
  for_chunks_as<C>(x, [&](const C* in, Index n) {
    const C chunk_max = max_propagate_nan(in, n);
    if (chunk_max != chunk_max || chunk_max > m)
      m = chunk_max;
  });
  auto fill_as = [&](C value) {
    for_chunks_as<C>(x, y, [&](const C*, C* out, Index n) { std::fill(out, out + n, value); });
  };
  using Values = SpecialValues<kLog, C>;
  switch (classify(m)) {
    case RowKind::NaN:
      return fill_as(m);
    case RowKind::AllMasked:
      return fill_as(Values::masked());
    case RowKind::PositiveInfinity: {
      Index k = 0;
      for_chunks_as<C>(x, [&](const C* in, Index n) {
        k += count_positive_infinity(Span<const C>{in, n, 1});
      });
      return for_chunks_as<C>(x, y, [&](const C* in, C* out, Index n) {
        fill_by_infinity(Span<const C>{in, n, 1}, Span<C>{out, n, 1}, Values::at_infinity(k),
                         Values::masked());
      });
    }
    case RowKind::Regular:
      break;
  }
  const C s = static_cast<C>(1.0 / temperature);
  const bool scaled = temperature != 1.0;
  CompensatedSum<C> sum0, sum1;
  for_chunks_as<C>(x, [&](const C* in, Index n) {
    if (scaled) {
      scaled_exp_sum<true>(in, n, m, s, sum0, sum1);
    } else {
      scaled_exp_sum<false>(in, n, m, s, sum0, sum1);
    }
  });
  const long double total = sum0.total() + sum1.total();
  if constexpr (kLog) {
    const C log_sum = static_cast<C>(std::log(std::ldexp(total, -kExpScaleLog2<C>)));
    for_chunks_as<C>(x, y, [&](const C* in, C* out, Index n) {
      log_softmax_last_pass(Span<const C>{in, n, 1}, Span<C>{out, n, 1}, m, s, scaled, log_sum);
    });
  } else {
    const C inverse = reciprocal<C>(total);
    for_chunks_as<C>(x, y, [&](const C* in, C* out, Index n) {
      if (scaled) {
        scaled_exp_scale_store<true>(in, out, n, m, s, inverse);
      } else {
        scaled_exp_scale_store<false>(in, out, n, m, s, inverse);
      }
    });
  }
}

// Softmax of one row of storage type In into Out that fits the stack stage (scalar_types.hpp),
// with the conversions fused into the passes: each chunk is converted into the stage and its max
// taken while it is in L1; exp is stored and summed in place; each chunk is scaled and rounded to
// Out while in L1. The same kernels and roundings as the float path, then one rounding to Out.
// Rows with a NaN or an infinite max take softmax_row_streamed.
template <class C, class In, class Out>
void softmax_row_staged(const Span<const In>& x, const Span<Out>& y, double temperature) {
  constexpr Index kCap = kFusedStageElements<C>;
  alignas(64) C stage[kCap];
  const Index n = x.size;
  C m = -std::numeric_limits<C>::infinity();
  for (Index start = 0; start < n; start += kConvertChunk) {
    const Index count = std::min(kConvertChunk, n - start);
    convert_strided(x.data + start * x.stride, x.stride, stage + start, Index(1), count);
    m = std::max(m, packet_max<Eigen::PropagateFast>(static_cast<const C*>(stage + start), count));
  }
  // The fast max may miss a NaN: a NaN beside a finite max shows in the sum instead. Either way
  // the row takes the exact special-value path (x has not been written yet).
  if (!(m > -std::numeric_limits<C>::infinity() && m < std::numeric_limits<C>::infinity()))
    return softmax_row_streamed<false, C>(x, y, temperature);
  const C s = static_cast<C>(1.0 / temperature);
  CompensatedSum<C> sum0, sum1;
  if (temperature != 1.0) {
    scaled_exp_store_sum<true>(stage, stage, n, m, s, sum0, sum1);
  } else {
    scaled_exp_store_sum<false>(stage, stage, n, m, s, sum0, sum1);
  }
  const long double total = sum0.total() + sum1.total();
  if (total != total)
    return softmax_row_streamed<false, C>(x, y, temperature);
  const C inverse = reciprocal<C>(total);
  for (Index start = 0; start < n; start += kConvertChunk) {
    const Index count = std::min(kConvertChunk, n - start);
    if (y.stride == 1) {
      scale_convert_contiguous(static_cast<const C*>(stage + start), inverse, y.data + start,
                               count);
    } else {
      scale_in_place(stage + start, count, inverse);
      convert_strided(static_cast<const C*>(stage + start), Index(1), y.data + start * y.stride,
                      y.stride, count);
    }
  }
}

// dx = y (dy - <dy, y>) / T for one distribution: the softmax backward, shared by every variant
// that computes softmax (Softmax, SinglePassSoftmax, the soft Gumbel sample). dx may be y or dy.
template <class Scalar>
void softmax_backward(const Span<const Scalar>& y, const Span<const Scalar>& dy,
                      const Span<Scalar>& dx, double temperature) {
  const Scalar inverse_t = static_cast<Scalar>(1.0 / temperature);
  const bool scaled = temperature != 1.0;
  with_arrays(
      [&](auto ya, auto dya, auto dxa) {
        const Scalar s = (ya * dya).sum();
        if (scaled) {
          dxa = ya * (dya - s) * inverse_t;
        } else {
          dxa = ya * (dya - s);
        }
      },
      y, dy, dx);
}

// dx_i = (dy_i - exp(y_i) s) (* inverse_t when scaled), 0 where x_i = -inf, over contiguous
// arrays (dx may be x, y or dy): packets, the tail padded into one packet, so every entry meets
// the same code (exp: pexp_nonpositive_u11, 1.07 ulp, exactly 0 at -inf).
template <class Scalar>
void log_softmax_backward_pass(const Scalar* x, const Scalar* y, const Scalar* dy, Scalar* dx,
                               Index n, Scalar s, Scalar inverse_t, bool scaled) {
  using namespace Eigen::internal;
  using Packet = PacketOf<Scalar>;
  constexpr int P = kPacketSize<Scalar>;
  const Packet ps = pset1<Packet>(s), pt = pset1<Packet>(inverse_t),
               minus_inf = pset1<Packet>(-std::numeric_limits<Scalar>::infinity()),
               zero = pzero(ps);
  const auto entry = [&](const Packet& xv, const Packet& yv, const Packet& dyv) {
    Packet r = psub(dyv, pmul(pexp_nonpositive_u11(yv), ps));
    if (scaled)
      r = pmul(r, pt);
    return pselect(pcmp_eq(xv, minus_inf), zero, r);
  };
  Index i = 0;
  for (; i + P <= n; i += P)
    pstoreu(dx + i, entry(ploadu<Packet>(x + i), ploadu<Packet>(y + i), ploadu<Packet>(dy + i)));
  if (i < n) {
    const Index rest = n - i;
    store_partial(dx + i, rest,
                  entry(load_partial<Packet>(x + i, rest, Scalar(0)),
                        load_partial<Packet>(y + i, rest, Scalar(0)),
                        load_partial<Packet>(dy + i, rest, Scalar(0))));
  }
}

}  // namespace detail
}  // namespace softmaxlab
