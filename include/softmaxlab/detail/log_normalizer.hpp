// softmaxlab: the log-normalizer of one row, for code that needs log_softmax(x)_i and softmax(x)_i
// one entry at a time (fused losses, SurfaceFusion) without writing a whole row first.
//
// LogNormalizer<Scalar>::of(x, s) reads the row twice (max, then sum of exp((x_i - m) s)) with the
// kernels of softmax_rows.hpp and then gives, for any entry x_i of that row,
//   log_p(x_i) = (x_i - m) s - log(sum)     (LogSoftmax with temperature 1/s, same rounding order)
//   p(x_i)     = exp((x_i - m) s) / sum     (Softmax)
// following the special-value rules of softmax.hpp: NaN row -> NaN; all -inf -> log_p = -inf, p =
// 0; k entries at +inf -> -log k and 1/k there, -inf and 0 elsewhere. The shifted difference
// x_i - m is scaled without overflowing first (shifted_scaled in kernels.hpp). log_p_wide gives
// log_p in double for the losses, which accumulate in double: for float logits the difference is
// then exact and never overflows (a float row [FLT_MAX, -FLT_MAX] has the finite log-probability
// -2 FLT_MAX); for double logits it is log_p's value, -inf where the true value is below -DBL_MAX.
#pragma once

#include <cmath>
#include <limits>
#include <type_traits>

#include "softmax_rows.hpp"

namespace softmaxlab {
namespace detail {

template <class Scalar>
struct LogNormalizer {
  RowKind kind = RowKind::Regular;
  Scalar m = 0;               // row max
  Scalar s = 1;               // scale (1 / temperature)
  Scalar log_sum = 0;         // log sum_j exp((x_j - m) s)   (Regular)
  double log_sum_wide = 0;    // the same, rounded to double
  Scalar inv_sum = 1;         // 1 / that sum                 (Regular)
  Scalar inv_stored_sum = 1;  // 1 / the sum of the stored terms (they carry kExpScale<Scalar>)
  Scalar log_k = 0;           // log of the number of +inf entries (PositiveInfinity)
  Scalar inv_k = 1;
  long double sum = 0;  // the sum itself (Regular), or the number of +inf entries

  // With `store` non-empty, the terms exp((x_i - m) s) * kExpScale<Scalar> of a Regular row are
  // also written there (same length as x; p(i) is then store[i] * inv_stored_sum).
  static LogNormalizer of(const Span<const Scalar>& x, Scalar s = Scalar(1),
                          const Span<Scalar>& store = Span<Scalar>{nullptr, 0, 1}) {
    LogNormalizer n;
    n.s = s;
    n.m = max_propagate_nan(x);
    n.kind = classify(n.m);
    if (n.kind == RowKind::PositiveInfinity) {
      const Index k = count_positive_infinity(x);
      n.sum = static_cast<long double>(k);
      n.log_k = static_cast<Scalar>(std::log(double(k)));
      n.inv_k = Scalar(1) / Scalar(k);
    } else if (n.kind == RowKind::Regular) {
      const bool scaled = s != Scalar(1);
      const long double scaled_sum = store.data != nullptr
                                         ? scaled_exp_pass<true>(x, store, n.m, s, scaled)
                                         : scaled_exp_pass<false>(x, store, n.m, s, scaled);
      const long double sum = std::ldexp(scaled_sum, -kExpScaleLog2<Scalar>);
      n.sum = sum;
      n.log_sum = static_cast<Scalar>(std::log(sum));
      n.log_sum_wide = static_cast<double>(std::log(sum));
      n.inv_sum = static_cast<Scalar>(1.0L / sum);
      n.inv_stored_sum = static_cast<Scalar>(1.0L / scaled_sum);
    }
    return n;
  }

  // The same from a row's [max m, sum of exp((x_j - m) s)] (for +inf m: the number of +inf entries)
  // computed elsewhere, e.g. merged from shards by mpi.hpp.
  static LogNormalizer from_state(Scalar m, long double sum, Scalar s = Scalar(1)) {
    LogNormalizer n;
    n.s = s;
    n.m = m;
    n.kind = classify(m);
    n.sum = sum;
    if (n.kind == RowKind::PositiveInfinity) {
      n.log_k = static_cast<Scalar>(std::log(sum));
      n.inv_k = static_cast<Scalar>(1.0L / sum);
    } else if (n.kind == RowKind::Regular) {
      n.log_sum = static_cast<Scalar>(std::log(sum));
      n.log_sum_wide = static_cast<double>(std::log(sum));
      n.inv_sum = static_cast<Scalar>(1.0L / sum);
      n.inv_stored_sum = static_cast<Scalar>(std::ldexp(1.0L / sum, -kExpScaleLog2<Scalar>));
    }
    return n;
  }

  Scalar shifted(Scalar xi) const { return s == Scalar(1) ? xi - m : shifted_scaled(xi, m, s); }

  Scalar log_p(Scalar xi) const { return log_p_as<Scalar>(xi); }
  double log_p_wide(Scalar xi) const { return log_p_as<double>(xi); }

  // w log_p(xi) for a weight w in (0, 1] (HardFusion's lambda): where xi - m overflows but the
  // weighted value fits, formed by the rule of shifted_scaled.
  Scalar weighted_log_p(Scalar w, Scalar xi) const {
    const Scalar inf = std::numeric_limits<Scalar>::infinity();
    if (kind == RowKind::Regular && s == Scalar(1) && xi != -inf && xi - m == -inf)
      return shifted_scaled(xi, m, w) - w * log_sum;
    return w * log_p(xi);
  }

  // log_p computed in Out (Scalar or double): the difference and the subtraction of log(sum).
  template <class Out>
  Out log_p_as(Scalar xi) const {
    const Out inf = std::numeric_limits<Out>::infinity();
    switch (kind) {
      case RowKind::Regular: {
        const Out d = s == Scalar(1) ? Out(xi) - Out(m) : shifted_scaled<Out>(xi, m, s);
        return d - (std::is_same_v<Out, Scalar> ? Out(log_sum) : Out(log_sum_wide));
      }
      case RowKind::NaN:
        return Out(m);
      case RowKind::AllMasked:
        return -inf;
      case RowKind::PositiveInfinity:
        return xi == std::numeric_limits<Scalar>::infinity() ? -Out(log_k) : -inf;
    }
    return Out(m);
  }

  Scalar p(Scalar xi) const {
    switch (kind) {
      case RowKind::Regular:
        return std::exp(shifted(xi)) * inv_sum;
      case RowKind::NaN:
        return m;
      case RowKind::AllMasked:
        return Scalar(0);
      case RowKind::PositiveInfinity:
        return xi == std::numeric_limits<Scalar>::infinity() ? inv_k : Scalar(0);
    }
    return m;
  }
};

}  // namespace detail
}  // namespace softmaxlab
