// softmaxlab: GumbelSoftmax, differentiable sampling from a categorical distribution (Jang, Gu and
// Poole, "Categorical Reparameterization with Gumbel-Softmax", ICLR 2017, arXiv 1611.01144; the
// Sparse Concept Bottleneck Models paper uses the soft form, tau = 1, on concept logits).
//
//   soft:  y = softmax((x + g) / tau),   g_i = -log(-log u_i),   u_i ~ Uniform(0, 1) open interval
//   hard:  y = one_hot(argmax_i (x_i + g_i))   (straight-through: a backward pass uses the soft y)
//   sample(x, gen) = argmax_i (x_i + g_i), a draw from softmax(x) (the Gumbel-max trick).
//
// Parameters: tau (temperature) in [2^-100, 2^100], default 1 (the range of Softmax's temperature:
// 1/tau stays finite in float); anything else, NaN included, throws std::invalid_argument naming
// the value. hard, default false.
//
// Random numbers: every call takes a generator by reference, `g(x, gen)`, `g.apply(x, y, gen)`,
// `g.rowwise(X, gen)`, `g.colwise(X, gen)` (the generator-less forms of the other functors do not
// exist here: a Gumbel sample without a generator has no meaning). `gen` is any C++
// UniformRandomBitGenerator; softmaxlab::Philox4x32 (random.hpp) is the fast path, filled in bulk
// on SIMD lanes. Every distribution of length n consumes exactly n 32-bit words (float) or 2n
// (double), whatever its values, so a given generator state always maps to the same noise:
// with Philox4x32 the same seed, stream and position give the same uniforms on every machine.
// (The Gumbel values then go through a vector log whose last bit may differ between instruction
// sets, e.g. with and without FMA.) Other generators: a 32-bit or 64-bit range is used
// directly (the top 32 bits of a 64-bit word); any other range goes through
// std::uniform_int_distribution<std::uint32_t>.
//
// Noise: u = k 2^-23 + 2^-24 (float, k the top 23 bits of a word) or k 2^-52 + 2^-53 (double,
// 52 bits of two words) lies in [2^-24, 1 - 2^-24] (float; double [2^-53, 1 - 2^-53]) exactly:
// never 0 or 1, so g in [-2.8, 16.7] (float) or [-3.6, 36.8] (double) is always finite. Bits ->
// uniform is one integer shift and or into [1, 2) and one exact subtraction, then two logs on
// packets with the lean log of detail/log.hpp (positive normal arguments only, <= 1.9 ulp; on
// AVX-512 float a table form, <= 1.2 ulp), in two passes per chunk (see add_gumbel_noise).
//
// Algorithm (soft): y = x + g written into the output, m = max y (NaN-propagating), then the passes
// of detail/kernels.hpp: e_i = exp((y_i - m) / tau) with a compensated sum, y_i = e_i / sum.
// Subtracting the max of x + g before dividing by tau keeps logits up to +-FLT_MAX with tau = 0.1
// finite: (y_i - m) may overflow to -inf, which exp maps to 0. Hard and sample() skip the exp.
//
// Accuracy: given the noise g that was drawn, the soft sample carries Softmax's error bound on the
// perturbed logits, |y_i - exact| <= 4 eps (1 + |(x_i + g_i - m)/tau|) |exact| plus the rounding of
// x_i + g_i; rows sum to 1 within 2e-6 (float). The distribution of hard samples is that of
// softmax(x) up to the 23 (52) bits of the uniforms (tests/test_gumbel.cpp: chi-square of
// 100,000 hard draws per scalar type and generator path, fixed seeds). Against a long double
// recomputation from the same random words (exact uniforms, exact logs), the test's bound
// 4 (1 + |z_i|) + 8 (max |x + g| + 2 max |g|) / tau eps, z_i = (x_i + g_i - m) / tau, is met with
// a worst ratio of 0.09 (float: 4.5 eps at tau 3; double: 219 eps at tau 0.1, where |z| ~ 400).
//
// Special values, per distribution:
//   - a -inf logit is never drawn: soft 0 exactly, hard 0; a row of only -inf gives all zeros and
//     sample() returns -1;
//   - k > 0 logits equal to +inf: the noise cannot order them; soft gives 1/k to each (like
//     Softmax), hard and sample() pick the first of them;
//   - a NaN anywhere makes the whole output NaN (hard included); sample() returns -1;
//   - an empty input gives an empty output (and consumes no random words).
//
// Errors (std::invalid_argument naming the value or shapes, nothing else is thrown): tau out of
// range (constructor); sample() or the vector forms given a matrix that is not a vector; outputs
// of the wrong shape or partially overlapping the input (exact in-place is allowed); backward
// arguments of different shapes.
//
// Backward (training): g.backward(x, y_soft, dy[, dx]), g.rowwise_backward(X, Y_soft, dY[, dX]),
// g.colwise_backward(...) give the soft sample's vector-Jacobian product
//     dx = y_soft * (dy - <dy, y_soft>) / tau,
// the gradient of y_soft = softmax((x + g) / tau) with the noise g held fixed. In soft mode y_soft
// is the forward output. In hard mode the forward output is the one-hot, and the gradient is
// straight-through: it is the soft sample's, so y_soft must be that same draw's soft sample. It is
// recomputed from the same noise, not stored: the noise is a pure function of the generator's
// state, so copy the generator before the forward call and run the soft form on the copy,
//     Philox4x32 saved = gen;  g_hard.apply(x, y_hard, gen);             // forward
//     GumbelSoftmax(g_hard.tau()).apply(x, y_soft, saved);              // same noise, soft
//     g_hard.backward(x, y_soft, dy, dx);                               // straight-through
// (argmax y_soft is then the hot index of y_hard). A masked logit (y_soft = 0) gets dx = 0.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <type_traits>

#include "detail/backward_base.hpp"
#include "detail/checks.hpp"
#include "detail/functor_base.hpp"
#include "detail/kernels.hpp"
#include "detail/log.hpp"
#include "random.hpp"
#include "softmax.hpp"

namespace softmaxlab {

namespace detail {

// 32-bit words per uniform of the scalar type.
template <class Scalar>
inline constexpr int kWordsPerUniform = std::is_same_v<Scalar, float> ? 1 : 2;

// Next 32-bit word of an arbitrary UniformRandomBitGenerator.
template <class Gen>
std::uint32_t draw_word(Gen& gen) {
  using R = typename Gen::result_type;
  constexpr auto range = static_cast<unsigned long long>(Gen::max() - Gen::min());
  if constexpr (range == 0xFFFFFFFFull) {
    return static_cast<std::uint32_t>(static_cast<R>(gen() - Gen::min()));
  } else if constexpr (range == ~0ull) {
    return static_cast<std::uint32_t>(static_cast<unsigned long long>(gen() - Gen::min()) >> 32);
  } else {
    std::uniform_int_distribution<std::uint32_t> words(0, 0xFFFFFFFFu);
    return words(gen);
  }
}

template <class Gen>
void draw_words(Gen& gen, std::uint32_t* out, Index n) {
  if constexpr (std::is_same_v<Gen, Philox4x32>) {
    gen.fill(out, static_cast<std::size_t>(n));
  } else {
    for (Index i = 0; i < n; ++i)
      out[i] = draw_word(gen);
  }
}

// Words -> numbers in [1, 2) with the top 23 (52) random bits as mantissa: u + (1 - 2^-24) exactly.
inline void words_to_one_two(const std::uint32_t* w, float* v, Index n) {
  for (Index i = 0; i < n; ++i) {
    const std::uint32_t bits = (w[i] >> 9) | 0x3F800000u;
    std::memcpy(v + i, &bits, sizeof bits);
  }
}
inline void words_to_one_two(const std::uint32_t* w, double* v, Index n) {
  for (Index i = 0; i < n; ++i) {
    const std::uint64_t word = (std::uint64_t{w[2 * i + 1]} << 32) | w[2 * i];
    const std::uint64_t bits = (word >> 12) | 0x3FF0000000000000ull;
    std::memcpy(v + i, &bits, sizeof bits);
  }
}

// 1 - 2^-(p+1): subtracting it from 1 + k 2^-p gives k 2^-p + 2^-(p+1) exactly (Sterbenz).
template <class Scalar>
inline constexpr Scalar kOneMinusHalfUlp = Scalar(1)
                                           - std::numeric_limits<Scalar>::epsilon() / Scalar(2);

// -log(v - (1 - 2^-(p+1))) for a packet of [1, 2) values: the exponential E = -log u.
template <class Packet>
EIGEN_STRONG_INLINE Packet exponential_from_one_two(const Packet& v, const Packet& offset) {
  using namespace Eigen::internal;
  return pnegate(plog_positive_normal_u20(psub(v, offset)));
}

// out_i = x_i + g_i for contiguous x, out (out may be x), drawing n uniforms from gen; returns
// max_i out_i, NaN if any out_i is NaN. `words` and `ones` are scratch of kWordsPerUniform * n
// words and n scalars, any alignment (`ones` may be `out`: every pass is elementwise).
// g = -log(E), E = -log u, in two passes over the chunk: fused, each packet's two logs form one
// long dependency chain and the loop ran at about half the instruction throughput; split, every
// packet of a pass is independent.
template <class Scalar, class Gen>
Scalar add_gumbel_noise(const Scalar* x, Scalar* out, Index n, Gen& gen, std::uint32_t* words,
                        Scalar* ones) {
  using namespace Eigen::internal;
  using Packet = PacketOf<Scalar>;
  constexpr int P = kPacketSize<Scalar>;
  const Scalar lowest = -std::numeric_limits<Scalar>::infinity();
  draw_words(gen, words, kWordsPerUniform<Scalar> * n);
  words_to_one_two(words, ones, n);
  const Packet offset = pset1<Packet>(kOneMinusHalfUlp<Scalar>);
  Index j = 0;
  for (; j + P <= n; j += P)
    pstoreu(ones + j, exponential_from_one_two(ploadu<Packet>(ones + j), offset));
  if (j < n)  // padding 1.5: a valid argument for the discarded lanes
    store_partial(
        ones + j, n - j,
        exponential_from_one_two(load_partial<Packet>(ones + j, n - j, Scalar(1.5)), offset));
  Packet m0 = pset1<Packet>(lowest), m1 = m0;
  Index i = 0;
  for (; i + 2 * P <= n; i += 2 * P) {
    const Packet y0 =
        psub(ploadu<Packet>(x + i), plog_positive_normal_u20(ploadu<Packet>(ones + i)));
    const Packet y1 =
        psub(ploadu<Packet>(x + i + P), plog_positive_normal_u20(ploadu<Packet>(ones + i + P)));
    pstoreu(out + i, y0);
    pstoreu(out + i + P, y1);
    m0 = pmax<Eigen::PropagateNaN>(m0, y0);
    m1 = pmax<Eigen::PropagateNaN>(m1, y1);
  }
  for (; i + P <= n; i += P) {
    const Packet y =
        psub(ploadu<Packet>(x + i), plog_positive_normal_u20(ploadu<Packet>(ones + i)));
    pstoreu(out + i, y);
    m0 = pmax<Eigen::PropagateNaN>(m0, y);
  }
  if (i < n) {
    const Packet g =
        pnegate(plog_positive_normal_u20(load_partial<Packet>(ones + i, n - i, Scalar(1))));
    const Packet y = padd(load_partial<Packet>(x + i, n - i, lowest), g);  // padding: -inf
    store_partial(out + i, n - i, y);
    m1 = pmax<Eigen::PropagateNaN>(m1, y);
  }
  alignas(64) Scalar lanes[P];
  pstore(lanes, pmax<Eigen::PropagateNaN>(m0, m1));
  Scalar m = lanes[0];
  for (int k = 1; k < P; ++k)
    m = (m != m || lanes[k] != lanes[k]) ? (m != m ? m : lanes[k]) : std::max(m, lanes[k]);
  return m;
}

// Writes x + g into y in chunks (any strides; y may be x) and returns max(x + g), NaN-propagating.
template <class Scalar, class Gen>
Scalar perturb(const Span<const Scalar>& x, const Span<Scalar>& y, Gen& gen) {
  alignas(64) std::uint32_t words[kWordsPerUniform<Scalar> * kChunk];
  alignas(64) Scalar ones[kChunk];
  Scalar m = -std::numeric_limits<Scalar>::infinity();
  auto chunk = [&](const Scalar* in, Scalar* out, Index n) {
    for (Index start = 0; start < n; start += kChunk) {
      const Index count = std::min(kChunk, n - start);
      const Scalar chunk_max = add_gumbel_noise(in + start, out + start, count, gen, words, ones);
      if (m == m && (chunk_max != chunk_max || chunk_max > m))
        m = chunk_max;  // once NaN, stays NaN
    }
  };
  for_chunks(x, y, chunk);
  return m;
}

// Index of the first entry equal to m (m not NaN), or of the first +inf when m is +inf.
template <class Scalar>
Index first_index_of(const Span<const Scalar>& y, Scalar m) {
  for (Index i = 0; i < y.size; ++i) {
    if (y[i] == m)
      return i;
  }
  return -1;
}

// The Gumbel-max of a 1-D x: the first index of max_i (x_i + g_i) (-1 when every x_i is -inf),
// that maximum, and whether some x_i + g_i is NaN. Draws x.size() uniforms from gen, in order.
template <class Scalar>
struct GumbelArgmax {
  Index index;
  Scalar value;
  bool nan;
};

template <class Xpr, class Gen>
GumbelArgmax<typename Xpr::Scalar> gumbel_argmax(const Xpr& x, Gen& gen) {
  using Scalar = typename Xpr::Scalar;
  static_check_scalar<Scalar>();
  const Index n = x.size();
  alignas(64) Scalar in[kChunk];
  alignas(64) Scalar out[kChunk];
  alignas(64) std::uint32_t words[kWordsPerUniform<Scalar> * kChunk];
  alignas(64) Scalar ones[kChunk];
  GumbelArgmax<Scalar> best{-1, -std::numeric_limits<Scalar>::infinity(), false};
  for (Index start = 0; start < n; start += kChunk) {
    const Index count = std::min(kChunk, n - start);
    for (Index k = 0; k < count; ++k)
      in[k] = x.coeff(start + k);
    add_gumbel_noise(in, out, count, gen, words, ones);
    for (Index k = 0; k < count; ++k) {
      best.nan = best.nan || out[k] != out[k];
      if (out[k] > best.value) {
        best.value = out[k];
        best.index = start + k;
      }
    }
  }
  return best;
}

}  // namespace detail

// Gumbel-softmax sampling: see the header's doc block for the formula, accuracy and special
// values.
class GumbelSoftmax : public detail::DistributionFunctor<GumbelSoftmax>,
                      public detail::BackwardFunctor<GumbelSoftmax> {
  using Base = detail::DistributionFunctor<GumbelSoftmax>;

 public:
  // The variant's name, as error messages give it.
  static constexpr const char* name = "GumbelSoftmax";
  /// The variant's flags (detail::VariantTraits gives their meaning and defaults).
  struct Traits : detail::VariantTraits {
    static constexpr bool backward_reads_input = false;  // the gradient needs the soft sample
  };

  // tau in [2^-100, 2^100] (throws std::invalid_argument naming the value otherwise); hard gives
  // one-hot samples with the soft sample's gradient (straight-through).
  explicit GumbelSoftmax(double tau = 1.0, bool hard = false)
      : tau_(detail::check_temperature("GumbelSoftmax: tau", tau)), hard_(hard) {}

  // The tau this object was built with.
  double tau() const { return tau_; }
  // The hard this object was built with.
  bool hard() const { return hard_; }

  // One sample for the 1-D x; returns a plain object of x's shape and scalar.
  template <class XprX, class Gen>
  typename XprX::PlainObject operator()(const Eigen::DenseBase<XprX>& x, Gen& gen) const {
    static_check_generator<Gen>();
    detail::require_vector(name, x.rows(), x.cols());
    typename XprX::PlainObject y(x.rows(), x.cols());
    this->apply_impl(x, y, gen);
    return y;
  }

  // Writes one sample into y (same length; either orientation); allocation-free; y may be x.
  template <class XprX, class Out, class Gen>
  void apply(const Eigen::DenseBase<XprX>& x, Out&& y, Gen& gen) const {
    detail::static_check_output<Out>();
    static_check_generator<Gen>();
    this->apply_impl(x, y, gen);
  }

  // One independent sample per row (rows drawn in order, each consuming its words in order).
  template <class XprX, class Gen>
  typename XprX::PlainObject rowwise(const Eigen::DenseBase<XprX>& x, Gen& gen) const {
    static_check_generator<Gen>();
    typename XprX::PlainObject y(x.rows(), x.cols());
    this->slices_impl(x, y, true, gen);
    return y;
  }
  // The same, into y (x's shape).
  template <class XprX, class Out, class Gen>
  void rowwise(const Eigen::DenseBase<XprX>& x, Out&& y, Gen& gen) const {
    detail::static_check_output<Out>();
    static_check_generator<Gen>();
    this->slices_impl(x, y, true, gen);
  }

  // One independent sample per column.
  template <class XprX, class Gen>
  typename XprX::PlainObject colwise(const Eigen::DenseBase<XprX>& x, Gen& gen) const {
    static_check_generator<Gen>();
    typename XprX::PlainObject y(x.rows(), x.cols());
    this->slices_impl(x, y, false, gen);
    return y;
  }
  // The same, into y (x's shape).
  template <class XprX, class Out, class Gen>
  void colwise(const Eigen::DenseBase<XprX>& x, Out&& y, Gen& gen) const {
    detail::static_check_output<Out>();
    static_check_generator<Gen>();
    this->slices_impl(x, y, false, gen);
  }

  // One independent sample per 1-D slice along `axis` of the tensor t (tensor.hpp; the slices
  // drawn in the order of sml::along_axis).
  template <class T, class Gen, detail::if_tensor_t<T> = 0>
  auto operator()(const T& t, Index axis, Gen& gen) const {
    static_check_generator<Gen>();
    detail::static_check_tensor_forms<T>();
    return detail::TensorAxisForms<T>::along(*this, t, axis, gen);
  }
  // The same, into y (t's shape).
  template <class T, class Out, class Gen, detail::if_tensor_t<T> = 0>
  void apply(const T& t, Index axis, Out&& y, Gen& gen) const {
    static_check_generator<Gen>();
    detail::static_check_tensor_forms<T>();
    detail::TensorAxisForms<T>::apply(*this, t, axis, std::forward<Out>(y), gen);
  }

  // Without a generator: a compile-time error that says what to pass (the base's generator-less
  // forms make no sense for a sampler).
  template <class XprX>
  typename XprX::PlainObject operator()(const Eigen::DenseBase<XprX>&) const {
    static_check_generator<XprX>();
    return {};
  }
  // A compile-time error: GumbelSoftmax needs a random generator.
  template <class XprX, class XprY>
  void apply(const Eigen::DenseBase<XprX>&, const Eigen::DenseBase<XprY>&) const {
    static_check_generator<XprY>();
  }
  // A compile-time error: GumbelSoftmax needs a random generator.
  template <class XprX>
  typename XprX::PlainObject rowwise(const Eigen::DenseBase<XprX>&) const {
    static_check_generator<XprX>();
    return {};
  }
  // A compile-time error: GumbelSoftmax needs a random generator.
  template <class XprX>
  typename XprX::PlainObject colwise(const Eigen::DenseBase<XprX>&) const {
    static_check_generator<XprX>();
    return {};
  }

  // The Gumbel-max trick: argmax_i (x_i + g_i), an exact draw from softmax(x) (tau plays no part).
  // Returns -1 when nothing can be drawn (every logit -inf, or a NaN present). Allocation-free;
  // consumes the same words as apply() on x.
  template <class XprX, class Gen>
  static Index sample(const Eigen::DenseBase<XprX>& x, Gen& gen) {
    detail::require_vector("GumbelSoftmax::sample", x.rows(), x.cols());
    const auto best = detail::gumbel_argmax(x.derived(), gen);
    return best.nan ? -1 : best.index;
  }

  // A Gumbel-max draw with its log-probability under softmax(x): log p = x_i - m - log sum exp(x -
  // m), m = max x. index = -1 and log_prob = NaN when nothing can be drawn.
  struct Draw {
    // The drawn index, or -1.
    Index index;
    // Its log-probability under softmax(x), or NaN.
    double log_prob;
  };
  // A Gumbel-max draw from the 1-D x with its log-probability (see Draw); allocation-free.
  template <class XprX, class Gen>
  static Draw sample_with_log_prob(const Eigen::DenseBase<XprX>& x, Gen& gen) {
    using Scalar = typename XprX::Scalar;
    const Index index = sample(x, gen);
    if (index < 0)
      return {-1, std::numeric_limits<double>::quiet_NaN()};
    const auto& xd = x.derived();
    Scalar m = -std::numeric_limits<Scalar>::infinity();
    for (Index i = 0; i < xd.size(); ++i)
      m = std::max(m, xd.coeff(i));
    if (m == std::numeric_limits<Scalar>::infinity()) {
      Index k = 0;
      for (Index i = 0; i < xd.size(); ++i)
        k += xd.coeff(i) == m;
      return {index, -std::log(static_cast<double>(k))};
    }
    long double sum = 0;
    for (Index i = 0; i < xd.size(); ++i)
      sum += std::exp(static_cast<long double>(xd.coeff(i)) - m);
    return {index,
            static_cast<double>(static_cast<long double>(xd.coeff(index)) - m - std::log(sum))};
  }

 private:
  friend class detail::DistributionFunctor<GumbelSoftmax>;
  friend class detail::BackwardFunctor<GumbelSoftmax>;

  // Gen must be a random generator, not an Eigen object (f.rowwise(X, Y) without one would
  // otherwise take Y for the generator).
  template <class Gen>
  static constexpr void static_check_generator() {
    static_assert(
        !std::is_base_of_v<Eigen::EigenBase<std::remove_cv_t<Gen>>, std::remove_cv_t<Gen>>,
        "softmaxlab::GumbelSoftmax needs a random generator: call g(x, gen), "
        "g.apply(x, y, gen), g.rowwise(X, gen), g.rowwise(X, Y, gen), g.colwise(X, gen) or "
        "g.colwise(X, Y, gen), gen a UniformRandomBitGenerator such as "
        "softmaxlab::Philox4x32 or std::mt19937");
  }

  template <class Scalar, class Gen>
  void compute(const detail::Span<const Scalar>& x, const detail::Span<Scalar>& y, Gen& gen) const {
    const Scalar m = detail::perturb(x, y, gen);
    const detail::Span<const Scalar> perturbed{y.data, y.size, y.stride};
    if (m != m)
      return detail::fill(y, m);
    if (m == -std::numeric_limits<Scalar>::infinity())
      return detail::fill(y, Scalar(0));
    if (hard_ || m == std::numeric_limits<Scalar>::infinity()) {
      if (hard_) {
        const Index at = detail::first_index_of(perturbed, m);
        detail::fill(y, Scalar(0));
        y[at] = Scalar(1);
        return;
      }
      Index k = 0;
      for (Index i = 0; i < y.size; ++i)
        k += y[i] == m;
      const Scalar share = Scalar(1) / static_cast<Scalar>(k);
      for (Index i = 0; i < y.size; ++i)
        y[i] = y[i] == m ? share : Scalar(0);
      return;
    }
    detail::softmax_regular_row(perturbed, y, m, static_cast<Scalar>(1.0 / tau_), tau_ != 1.0);
  }

  // Backward (see the header's doc block): the softmax backward at temperature tau on the soft
  // sample y, dx = y (dy - <dy, y>) / tau, in soft and hard (straight-through) mode alike.
  template <class Scalar>
  void compute_backward(const detail::Span<const Scalar>& /*x*/,
                        const detail::Span<const Scalar>& y, const detail::Span<const Scalar>& dy,
                        const detail::Span<Scalar>& dx) const {
    detail::softmax_backward(y, dy, dx, tau_);
  }

  double tau_;
  bool hard_;
};

}  // namespace softmaxlab
