// softmaxlab: SinglePassSoftmax and OnlineNormalizer: softmax that reads its input once to build
// the normalizer and once more to write, and a normalizer state that merges exactly across chunks,
// threads and machines.
//
//   SinglePassSoftmax(T): y_i = exp(x_i/T - m) / d,   m = max_j x_j/T,   d = sum_j exp(x_j/T - m)
// (the same result as Softmax(T), within the same accuracy policy).
//   apply_split(x, y, parts): one row in `parts` in [1, 64] contiguous pieces, a normalizer per
// piece (OpenMP threads when opted in), merged in piece order: deterministic for a given `parts`
// whatever the thread count; parts = 1 is apply(); parts outside [1, 64]: std::invalid_argument.
//
// The online normalizer (Milakov & Gimelshein, "Online normalizer calculation for softmax",
// arXiv 1805.02867) is a state [m, d]: m the running max, d = sum exp((x_j - m)/T) over the
// elements seen so far. States merge with
//   [m1, d1] (+) [m2, d2] = [M, d1 exp((m1 - M)/T) + d2 exp((m2 - M)/T)],   M = max(m1, m2),
// which is associative and commutative, so a row may be split into any chunks, processed in any
// order or on any machine, and combined. Edge-MoE's single-exp update (arXiv 2305.18691) adds an
// element with one exp: if x > m then d = d exp(m - x) + 1, m = x, else d += exp(x - m).
//
// Our update applies that single-exp rule per block of up to 8 KiB of the chunk (kept in L1), not
// per element: the block's max b is read first; if b > m, d = d exp((m - b)/T) and m = b (one exp
// per block); then d += sum exp((x_j - m)/T) over the block, with the exp kernel and the per-lane
// Kahan-compensated sum of Softmax. So the row still crosses memory once, every element costs one
// exp (never two), all lanes share one max (no per-lane merges), and d is as accurate as Softmax's
// sum: an element-wise running rescale would add one rounding per max increase (up to n of them on
// an ascending row). d is kept in long double between blocks.
//
// Out-of-cache rows: two passes over memory (read; read + write) instead of Softmax's three (read;
// read + write; read + write); outputs of 16 MiB or more are written with streaming
// (non-temporal) stores, which skip the read-for-ownership of each output line. The two-pass
// (mantissa, exponent) algorithm of Dukhan & Ablavatski (arXiv 2001.04438) has the same memory
// traffic and needs an extra exponent rescale per element, so this one-exp-per-element form is the
// one kept.
//
// OnlineNormalizer<Scalar>(T = 1):
//   update(chunk)         adds a 1-D chunk (any dense Eigen expression), returns *this;
//   merge(other)          combines two states (same temperature, else std::invalid_argument);
//   max()                 m = max x_j (the raw max, not divided by T);
//   sum()                 d = sum exp((x_j - m)/T), in double (at least 1 once a finite x is seen);
//   log_sum_exp()         log sum exp(x_j / T) = m/T + log d, in double;
//   write(chunk, y)       y_i = exp((x_i - m)/T) / d for a chunk that went into the state;
//   write_log(chunk, y)   y_i = (x_i - m)/T - log d (log-probabilities);
//   count()               number of elements seen;
//   exact_sum(), from_state(max, sum, count, T)   the state's parts and back (for transports:
//                         mpi.hpp carries states between processes with them).
// update, merge and write never allocate. write(chunk, y) may write in place (y is chunk).
//
// Parameters: temperature T in [2^-100, 2^100] (default 1), else std::invalid_argument naming the
// value, as for Softmax.
//
// Accuracy (tests/test_single_pass.cpp, against the mpmath tables of tests/reference/):
//   |y_i - exact| <= 4 eps (1 + |x_i/T - m|) |exact|   (write_log: 4 eps (1 + |exact|)),
// the policy of Softmax, for the whole row and for any split into chunks and merges.
//
// Eigen::half / Eigen::bfloat16: OnlineNormalizer<half> and <bfloat16> keep their state and
// arithmetic in float (max() returns the input type); SinglePassSoftmax of 16-bit or mixed types is
// within 1 ulp of the output type (tests/test_half_precision.cpp), as Softmax.
//
// Special values (the same rules as Softmax):
//   - a -inf entry gets exactly 0: it is masked out; a row of only -inf gives all 0, never NaN;
//   - k > 0 entries equal to +inf share the mass: 1/k each, 0 elsewhere (the state is m = +inf,
//     d = k; no inf - inf is ever formed);
//   - a NaN anywhere makes the whole row NaN (the state's max is NaN, and stays NaN on merges);
//   - an empty input gives an empty output; an empty state has m = -inf, d = 0.
//
// Outputs (y of apply_split, write, write_log): a const Matrix does not compile; pass a view/block.
// Errors (std::invalid_argument naming the value or shapes, nothing else is thrown): a
// temperature out of range; merging states of different temperatures; write/write_log into an
// output whose length differs from the chunk's, or that partially overlaps it; the shape errors of
// Softmax for SinglePassSoftmax's forms.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>

#include "detail/backward_base.hpp"
#include "detail/checks.hpp"
#include "detail/functor_base.hpp"
#include "detail/kernels.hpp"
#include "detail/normalizer_merge.hpp"
#include "detail/scalar_types.hpp"
#include "softmax.hpp"

namespace softmaxlab {

namespace detail {

// Elements per block of the normalizer's update: 8 KiB, so the block's max pass and exp pass both
// read it from L1.
template <class Scalar>
inline constexpr Index kNormalizerBlock = Index(8192) / Index(sizeof(Scalar));

}  // namespace detail

// The online softmax normalizer [max, sum] of a row seen in chunks: see the header's doc block.
template <class Scalar>
class OnlineNormalizer {
  static_assert(detail::is_storage_scalar_v<Scalar>,
                "softmaxlab: OnlineNormalizer<Scalar> needs Eigen::half, Eigen::bfloat16, float or "
                "double");

 public:
  // The type the state and the arithmetic use: float for the 16-bit types (and float), double for
  // double.
  using Real = detail::compute_scalar_t<Scalar>;

  // The variant's name, as error messages give it.
  static constexpr const char* name = "OnlineNormalizer";

  // Throws std::invalid_argument naming the value when temperature is outside [2^-100, 2^100] (NaN
  // included).
  explicit OnlineNormalizer(double temperature = 1.0)
      : temperature_(detail::check_temperature("OnlineNormalizer: temperature", temperature)),
        scale_(static_cast<Real>(1.0 / temperature)) {}

  // The temperature this object was built with.
  double temperature() const { return temperature_; }

  // Adds the elements of a 1-D chunk (any dense Eigen expression; strided views are fine).
  template <class Xpr>
  OnlineNormalizer& update(const Eigen::DenseBase<Xpr>& chunk) {
    static_assert(std::is_same_v<typename Xpr::Scalar, Scalar>,
                  "softmaxlab: OnlineNormalizer<Scalar>::update needs a chunk of the same scalar");
    detail::require_vector(name, chunk.rows(), chunk.cols());
    if constexpr (detail::has_direct_access_v<Xpr> && std::is_same_v<Scalar, Real>) {
      update_span(detail::vector_span<const Real>(chunk.derived()));
    } else if constexpr (detail::has_direct_access_v<Xpr>) {
      // 16-bit chunks: converted to float block by block on the stack.
      detail::for_chunks_as<Real>(detail::vector_span<const Scalar>(chunk.derived()),
                                  [&](const Real* in, Index n) {
                                    update_span(detail::Span<const Real>{in, n, 1});
                                  });
    } else {
      // An expression: evaluated piecewise into a stack buffer, never into the heap.
      alignas(64) Real buffer[detail::kChunk];
      const auto& x = chunk.derived();
      const Index n = x.size();
      const bool is_row = x.rows() == 1;
      for (Index start = 0; start < n; start += detail::kChunk) {
        const Index count = std::min(detail::kChunk, n - start);
        for (Index k = 0; k < count; ++k)
          buffer[k] =
              detail::convert_scalar<Real>(is_row ? x.coeff(0, start + k) : x.coeff(start + k, 0));
        update_span(detail::Span<const Real>{buffer, count, 1});
      }
    }
    return *this;
  }

  // Combines another state into this one: the result is the state of both inputs together.
  OnlineNormalizer& merge(const OnlineNormalizer& other) {
    if (other.temperature_ != temperature_) {
      detail::fail(name, ": merge needs the same temperature, but got ", other.temperature_,
                   " and ", temperature_);
    }
    count_ += other.count_;
    detail::merge_normalizer_state(max_, sum_, other.max_, other.sum_,
                                   static_cast<long double>(temperature_));
    return *this;
  }

  // The running max of the raw inputs: -inf for an empty or fully masked state, NaN after a NaN.
  Scalar max() const { return detail::convert_scalar<Scalar>(max_); }

  // d = sum_j exp((x_j - max)/T) (for a +inf max: the number of +inf entries); NaN after a NaN.
  double sum() const {
    return is_nan() ? std::numeric_limits<double>::quiet_NaN() : static_cast<double>(sum_);
  }

  // log sum_j exp(x_j / T): -inf when empty or fully masked, +inf with a +inf entry, NaN after a
  // NaN.
  double log_sum_exp() const {
    const Real inf = std::numeric_limits<Real>::infinity();
    if (is_nan())
      return std::numeric_limits<double>::quiet_NaN();
    if (max_ == -inf || max_ == inf)
      return static_cast<double>(max_);
    return static_cast<double>(static_cast<long double>(max_) / temperature_ + std::log(sum_));
  }

  // Number of elements that went into the state (updates and merges).
  Index count() const { return count_; }

  // The sum as it is kept (long double), for transports that carry the state exactly (mpi.hpp).
  long double exact_sum() const { return sum_; }

  // A state from its parts, as max(), exact_sum() and count() of some state at this temperature
  // gave them (mpi.hpp rebuilds merged states this way). Throws std::invalid_argument for a
  // negative sum or count, or a temperature out of range.
  static OnlineNormalizer from_state(Scalar max, long double sum, Index count,
                                     double temperature = 1.0) {
    OnlineNormalizer state(temperature);
    if (!(sum >= 0) && max == max)
      detail::fail(name, ": from_state needs a sum >= 0, but got ", static_cast<double>(sum));
    if (count < 0)
      detail::fail(name, ": from_state needs a count >= 0, but got ", count);
    state.max_ = detail::convert_scalar<Real>(max);
    state.sum_ = sum;
    state.count_ = count;
    return state;
  }

  // y_i = exp((x_i - max)/T) / sum for a chunk that went into this state (y may be the chunk).
  template <class XprX, class OutY>
  void write(const Eigen::DenseBase<XprX>& chunk, OutY&& y) const {
    detail::static_check_output<OutY>();
    write_impl<false>(chunk, y);
  }

  // y_i = (x_i - max)/T - log(sum): the log-probabilities of a chunk that went into this state
  // (with LogSoftmax's rule for a difference x_i - max that overflows, softmax.hpp).
  template <class XprX, class OutY>
  void write_log(const Eigen::DenseBase<XprX>& chunk, OutY&& y) const {
    detail::static_check_output<OutY>();
    write_impl<true>(chunk, y);
  }

  // The same, on spans (used by SinglePassSoftmax; y may be x).
  template <bool kLog>
  void write_span(const detail::Span<const Real>& x, const detail::Span<Real>& y) const {
    const Real inf = std::numeric_limits<Real>::infinity();
    // A +inf max: sum_ holds the number of +inf entries of the whole row (x may be a chunk).
    if (detail::write_special_row<kLog>(x, y, max_, max_ == inf ? static_cast<Index>(sum_) : -1))
      return;
    const bool scaled = temperature_ != 1.0;
    const Real m = max_, s = scale_;
    if constexpr (kLog) {
      detail::log_softmax_last_pass(x, y, m, s, scaled, static_cast<Real>(std::log(sum_)));
    } else {
      // The kernel's exp carries a factor kExpScale (2^64 for float); the inverse removes it.
      const Real inverse = detail::reciprocal<Real>(std::ldexp(sum_, detail::kExpScaleLog2<Real>));
      const bool stream = x.contiguous() && y.contiguous() && x.data != y.data
                          && y.size * Index(sizeof(Real)) >= detail::kStreamingStoreBytes;
      if (stream) {
        if (scaled) {
          detail::scaled_exp_scale_stream<true>(x.data, y.data, y.size, m, s, inverse);
        } else {
          detail::scaled_exp_scale_stream<false>(x.data, y.data, y.size, m, s, inverse);
        }
        return;
      }
      detail::for_chunks(x, y, [&](const Real* in, Real* out, Index n) {
        if (scaled) {
          detail::scaled_exp_scale_store<true>(in, out, n, m, s, inverse);
        } else {
          detail::scaled_exp_scale_store<false>(in, out, n, m, s, inverse);
        }
      });
    }
  }

  // Adds a span (used by SinglePassSoftmax and update()).
  void update_span(const detail::Span<const Real>& x) {
    count_ += x.size;
    if (is_nan() || x.size == 0)
      return;
    constexpr Index kBlock = detail::kNormalizerBlock<Real>;
    if (x.contiguous()) {
      for (Index start = 0; start < x.size && !is_nan(); start += kBlock)
        update_block(x.data + start, std::min(kBlock, x.size - start));
      return;
    }
    // A strided span is staged block by block (8 KiB on the stack), so its blocks, and so every
    // rounding of the state, are those of the same row stored contiguously.
    alignas(64) Real buffer[kBlock];
    for (Index start = 0; start < x.size && !is_nan(); start += kBlock) {
      const Index count = std::min(kBlock, x.size - start);
      for (Index k = 0; k < count; ++k)
        buffer[k] = x[start + k];
      update_block(buffer, count);
    }
  }

 private:
  bool is_nan() const { return max_ != max_; }

  // exp((from - to)/T) for from <= to, both finite, in long double (off the hot path: once per
  // block whose max raises the state's).
  long double rescale(Real from, Real to) const {
    return std::exp((static_cast<long double>(from) - static_cast<long double>(to))
                    / static_cast<long double>(temperature_));
  }

  // One block (contiguous, in L1): the single-exp online update at block granularity.
  void update_block(const Real* x, Index n) {
    const Real inf = std::numeric_limits<Real>::infinity();
    const Real block_max = detail::max_propagate_nan(x, n);
    if (block_max != block_max) {
      max_ = block_max;
      return;
    }
    if (block_max == -inf || max_ == inf) {
      if (block_max == inf)
        sum_ += static_cast<long double>(count_infinities(x, n));
      return;  // a masked block adds nothing; after +inf only +inf entries count
    }
    if (block_max == inf) {
      max_ = inf;
      sum_ = static_cast<long double>(count_infinities(x, n));
      return;
    }
    if (block_max > max_) {
      sum_ = max_ == -inf ? 0.0L : sum_ * rescale(max_, block_max);
      max_ = block_max;
    }
    detail::CompensatedSum<Real> sum0, sum1;
    // Prefetch the next block (contiguous rows) while this one is summed from L1.
    constexpr auto kNext =
        static_cast<std::uintptr_t>(detail::kNormalizerBlock<Real> * sizeof(Real));
    if (temperature_ != 1.0) {
      detail::scaled_exp_sum<true, kNext>(x, n, max_, scale_, sum0, sum1);
    } else {
      detail::scaled_exp_sum<false, kNext>(x, n, max_, scale_, sum0, sum1);
    }
    sum_ += std::ldexp(sum0.total() + sum1.total(), -detail::kExpScaleLog2<Real>);
  }

  static Index count_infinities(const Real* x, Index n) {
    Index k = 0;
    for (Index i = 0; i < n; ++i)
      k += x[i] == std::numeric_limits<Real>::infinity();
    return k;
  }

  template <bool kLog, class XprX, class XprY>
  void write_impl(const Eigen::DenseBase<XprX>& chunk,
                  const Eigen::DenseBase<XprY>& y_const) const {
    using Out = typename XprY::Scalar;
    static_assert(std::is_same_v<typename XprX::Scalar, Scalar>,
                  "softmaxlab: OnlineNormalizer<Scalar>::write needs chunks of the same scalar");
    detail::static_check_storage_scalars<Scalar, Out>();
    static_assert(detail::is_writable_storage_v<XprY>,
                  "softmaxlab: the output must be writable storage (Matrix, Array, Map, Ref or a "
                  "Block of one), not an expression");
    auto& y = const_cast<Eigen::DenseBase<XprY>&>(y_const).derived();
    detail::require_vector(name, chunk.rows(), chunk.cols());
    detail::require_vector(name, y.rows(), y.cols());
    if (chunk.size() != y.size()) {
      detail::fail(name, ": output must have the chunk's length ", chunk.size(), ", but got ",
                   y.rows(), " x ", y.cols());
    }
    if (chunk.size() == 0)
      return;
    if constexpr (!std::is_same_v<Scalar, Real> || !std::is_same_v<Out, Real>) {
      // 16-bit or mixed: the chunk converted to Real in pieces, one rounding into y.
      auto write_as = [&](const auto& xs) {
        detail::for_chunks_as<Real>(
            xs, detail::vector_span<Out>(y), [&](const Real* in, Real* out, Index n) {
              write_span<kLog>(detail::Span<const Real>{in, n, 1}, detail::Span<Real>{out, n, 1});
            });
      };
      if constexpr (detail::has_direct_access_v<XprX>) {
        write_as(detail::vector_span<const Scalar>(chunk.derived()));
      } else {
        const typename XprX::PlainObject plain = chunk.derived();
        write_as(detail::vector_span<const Scalar>(plain));
      }
      return;
    } else {
      const detail::Span<Real> ys = detail::vector_span<Real>(y);
      if constexpr (detail::has_direct_access_v<XprX>) {
        const auto xs = detail::vector_span<const Real>(chunk.derived());
        if (detail::partially_overlap(xs, ys))
          detail::fail(name,
                       ": output partially overlaps the chunk (only exact in-place is allowed)");
        write_span<kLog>(xs, ys);
      } else {
        detail::evaluate_into(chunk, y);
        write_span<kLog>(detail::Span<const Real>{ys.data, ys.size, ys.stride}, ys);
      }
    }
  }

  double temperature_;
  Real scale_;
  Real max_ = -std::numeric_limits<Real>::infinity();
  long double sum_ = 0;
  Index count_ = 0;
};

// Softmax through the online normalizer: one read of the row for [max, sum], one read and write
// for the output. Same results as Softmax within the policy; see the header's doc block.
class SinglePassSoftmax : public detail::DistributionFunctor<SinglePassSoftmax>,
                          public detail::BackwardFunctor<SinglePassSoftmax> {
 public:
  // The variant's name, as error messages give it.
  static constexpr const char* name = "SinglePassSoftmax";
  /// The variant's flags (detail::VariantTraits gives their meaning and defaults).
  struct Traits : detail::VariantTraits {
    static constexpr bool backward_reads_input = false;  // the gradient needs only y and dy
    static constexpr bool streams_long_rows = true;      // long 16-bit/mixed rows: compute_streamed
  };

  // Throws std::invalid_argument naming the value when temperature is outside [2^-100, 2^100] (NaN
  // included).
  explicit SinglePassSoftmax(double temperature = 1.0)
      : temperature_(detail::check_temperature("SinglePassSoftmax: temperature", temperature)) {}

  // The temperature this object was built with.
  double temperature() const { return temperature_; }

  // Most pieces apply_split takes.
  static constexpr Index kMaxParts = 64;

  // One long row split into `parts` contiguous pieces (parts in [1, kMaxParts], else
  // std::invalid_argument): one normalizer per piece, the states merged in piece order, then each
  // piece written with the merged state. With OpenMP opt-in (SOFTMAXLAB_USE_OPENMP, see
  // functor_base.hpp) the pieces run on threads; the result depends on `parts` only, never on the
  // thread count, and parts = 1 is apply(). Same contract, bounds and special values as apply().
  template <class XprX, class OutY>
  void apply_split(const Eigen::DenseBase<XprX>& x, OutY&& y, Index parts) const {
    detail::static_check_output<OutY>();
    if (parts < 1 || parts > kMaxParts)
      detail::fail(name, ": parts must be in [1, 64], but got ", parts);
    this->apply_impl(x, y, parts);
  }

 private:
  friend class detail::DistributionFunctor<SinglePassSoftmax>;
  friend class detail::BackwardFunctor<SinglePassSoftmax>;

  // apply_split's pieces: [j n / k, (j + 1) n / k) of the row, k = min(parts, n).
  template <class Scalar>
  void compute(const detail::Span<const Scalar>& x, const detail::Span<Scalar>& y,
               Index& parts) const {
    const Index k = std::min(parts, x.size);
    const auto piece = [&](Index j, auto span) {
      const Index begin = j * x.size / k, end = (j + 1) * x.size / k;
      return decltype(span){span.data + begin * span.stride, end - begin, span.stride};
    };
    OnlineNormalizer<Scalar> states[kMaxParts];
#if SOFTMAXLAB_PARALLEL_SLICES
#pragma omp parallel for schedule(static) if (k > 1 && !omp_in_parallel())
#endif
    for (Index j = 0; j < k; ++j) {
      states[j] = OnlineNormalizer<Scalar>(temperature_);
      states[j].update_span(piece(j, x));
    }
    for (Index j = 1; j < k; ++j)
      states[0].merge(states[j]);
#if SOFTMAXLAB_PARALLEL_SLICES
#pragma omp parallel for schedule(static) if (k > 1 && !omp_in_parallel())
#endif
    for (Index j = 0; j < k; ++j)
      states[0].template write_span<false>(piece(j, x), piece(j, y));
  }

  // Backward: the same function as Softmax, so the same vector-Jacobian product,
  // dx = y (dy - <dy, y>) / T (softmax.hpp's backward section states the rules).
  template <class Scalar>
  void compute_backward(const detail::Span<const Scalar>& /*x*/,
                        const detail::Span<const Scalar>& y, const detail::Span<const Scalar>& dy,
                        const detail::Span<Scalar>& dx) const {
    detail::softmax_backward(y, dy, dx, temperature_);
  }

  template <class Scalar>
  void compute(const detail::Span<const Scalar>& x, const detail::Span<Scalar>& y) const {
    OnlineNormalizer<Scalar> normalizer(temperature_);
    normalizer.update_span(x);
    normalizer.template write_span<false>(x, y);
  }

  // Long rows of 16-bit or mixed scalars: the same two reads, on chunks converted to C.
  template <class C, class In, class Out>
  void compute_streamed(const detail::Span<const In>& x, const detail::Span<Out>& y) const {
    OnlineNormalizer<C> normalizer(temperature_);
    detail::for_chunks_as<C>(x, [&](const C* in, Index n) {
      normalizer.update_span(detail::Span<const C>{in, n, 1});
    });
    detail::for_chunks_as<C>(x, y, [&](const C* in, C* out, Index n) {
      normalizer.template write_span<false>(detail::Span<const C>{in, n, 1},
                                            detail::Span<C>{out, n, 1});
    });
  }

  double temperature_;
};

}  // namespace softmaxlab
