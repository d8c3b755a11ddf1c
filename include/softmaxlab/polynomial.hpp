// softmaxlab: PolynomialSoftmax, softmax with only additions and multiplications after the shift,
// as an encrypted-inference pipeline (CKKS/BFV) computes it: exp and the division are replaced by
// polynomial approximations (the approach of NEXUS, THOR and Cho et al., surveyed in
// Power-Softmax's related work, arXiv 2410.09457).
//
//   t_i = x_i - s                         s = row max (default) or a public bound B >= max x
//   E_i = expapprox(t_i)                  approx/exp.hpp: RepeatedSquaring or Chebyshev, on [-R, 0]
//   y_i = E_i * recip(sum_j E_j)          approx/reciprocal.hpp: Goldschmidt, Newton or exact
//
// Options (PolynomialSoftmaxOptions; the constructor throws std::invalid_argument naming the
// field and value when outside these ranges):
//   exp          ExpMethod::Chebyshev (default) or ::RepeatedSquaring
//   degree       Chebyshev degree n in [1, 10] (default 4)
//   squarings    r in [0, 24] (default 5); RepeatedSquaring needs r >= 1 and R <= 2^r
//   range        R > 0, finite (default 20); Chebyshev needs L = R / 2^r in the table
//                {1, 1.25, 1.5, 1.75} x 2^j, j = -3..5 (e.g. R = 20 with r = 0..7)
//   reciprocal   ReciprocalMethod::Goldschmidt (default), ::Newton or ::Exact (a division: not
//                polynomial, for comparison)
//   iterations   k in [1, 64], or 0 (default) for the fewest with e0^(2^k) <= 2^-26 on the row's
//                range (it depends only on public facts: n, the configuration and the gap)
//   shift        Shift::RowMax (default) or ::PublicBound: t = x - bound, for pipelines that cannot
//                compute a max; the caller promises bound - gap <= max x <= bound
//   bound, gap   PublicBound only: finite; gap in [0, 700] (default: -1 meaning gap = R)
//
// The default (Chebyshev degree 4, r = 5, R = 20, Goldschmidt, auto iterations, row max): per
// element 3 + 5 products and 2 constant products before the sum, one product after; depth
// 1 + 4 + 5 = 10 for exp, k + 1 for the reciprocal (k = 16 at n = 4096), 1 for the final product.
// Max abs error <= 1e-4 against the exact softmax on every row of spread (max - min) <= 20 of any
// length up to 4096: error_bound() promises it a priori (5.5e-5 float, 3.3e-5 double), and the
// tests measure it against the mpmath table (worst 9.0e-6 float, 9.1e-6 double).
// Speed (bench/bench_power_polynomial.cpp, float rows of 4096 in cache, AVX2): about 1.2x the
// tuned Softmax (1.6x the Softmax before its kernel tuning); below the 1.5x target, see
// docs/polynomial.md, "Performance".
//
// Accuracy (tests/test_polynomial.cpp, "every PolynomialSoftmax configuration stays within its
// documented error bound"): error_bound<Scalar>(n) states an a-priori bound on
// max_j |y_j - softmax_j| for rows of n entries whose spread is <= R - gap (row max: gap = 0). With rho, alpha the exp approximation's
// max relative / absolute errors on [-R, 0] (ExpApprox), s_min = e^-gap the smallest possible sum,
// and g_i the relative error of term i: y'_j - y_j = y_j (g_j - gbar) / (1 + gbar), gbar the
// y-weighted mean of g, so
//     bound = (own + others) / (1 - q) + rho_rec + 4u,
//     own    = min(alpha / s_min, rho / 4)                 (y_j (1 - y_j) |g_j|)
//     others = min(rho / 4, (n - 1) alpha / s_min^2)       (y_j sum_{i != j} y_i |g_i|; s_min
//              instead of s_min^2 when s_min < 1),    q = min(rho, n alpha / s_min),
// rho_rec the reciprocal's bound (approx/reciprocal.hpp; exact division: u), u = eps/2.
// For the default that is about rho / 2: 5.6e-5 in float, 3.3e-5 in double.
// Where it degrades (all documented by the bound, and tested):
//   - rows of spread > R: entries below max - R are clipped to -R, each adding up to e^-R to the
//     sum: add n e^-R to the bound (n = 4096, R = 20: 8.4e-6);
//   - RepeatedSquaring: relative error grows like t^2 / 2^(r+1), so it needs r ~ 17 for 1e-4 in
//     double; in float it stalls near 2e-4 (the rounding of the base 1 + t/2^r is raised to the
//     2^r-th power);
//   - pure Chebyshev (r = 0) on a wide range: an absolute error, multiplied by n in the sum; the
//     interpolant can dip below 0 there, so with r = 0 each E_i is clamped at 0 (approx/exp.hpp),
//     which keeps the sum >= E(0) > 0 and every row finite;
//   - a public bound with a large gap: errors scale with e^gap and the reciprocal needs about
//     gap / ln 2 more iterations.
//
// Special values: a NaN anywhere gives a NaN row; -inf entries get exactly 0 (masked) and an
// all -inf row gives all 0; with the row max, k entries at +inf share the mass (1/k each, as
// Softmax); with a public bound, entries above the bound (+inf included) count as the bound.
// An empty input gives an empty output. Rows are finite for finite input, but, being
// approximations, sum to 1 only within error_bound() times n.
//
// Errors (std::invalid_argument naming the field and value or the shapes, nothing else is
// thrown): a configuration outside the ranges above (constructor); an output whose shape differs
// from the input's, or that partially overlaps it (exact in-place is allowed).
//
// Backward (training): f.backward(x, y, dy[, dx]) and the rowwise/colwise forms give the exact
// vector-Jacobian product of the function computed here, not of softmax: with y_i = E(t_i) R(S),
// S = sum_j E(t_j), t_i = x_i - shift,
//   dx_i = (dy_i R + R'(S) sum_j dy_j E_j) E'(t_i),   and, with the row max as shift, the max
//   entry (the first, on ties) also gets -sum_i of those terms (the shift moves with it),
// where E' and R' are the derivatives of the polynomial exp approximation (0 where it clips) and of
// the reciprocal iteration actually run (Goldschmidt, Newton or exact), taken by forward-mode dual
// numbers through the same scalar code (approx::ExpApprox::evaluate_scalar, the iteration
// templates). A public-bound shift is a constant. Masked (-inf) entries get 0; NaN in x or dy
// gives NaN; rows with +inf or only -inf entries (locally constant) and rows whose sum is 0 give 0.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "approx/exp.hpp"
#include "approx/reciprocal.hpp"
#include "detail/backward_base.hpp"
#include "detail/checks.hpp"
#include "detail/functor_base.hpp"
#include "detail/he_kernels.hpp"
#include "detail/kernels.hpp"
#include "softmax.hpp"

namespace softmaxlab {

using approx::ExpMethod;
// What is subtracted before the exp: the row max, or a public bound B >= max x.
enum class Shift { RowMax, PublicBound };

/// The options of PolynomialSoftmax (the header's doc block gives each field's valid range; the
/// constructor of PolynomialSoftmax checks them and throws std::invalid_argument naming the field).
struct PolynomialSoftmaxOptions {
  ExpMethod exp = ExpMethod::Chebyshev;  ///< the exp approximation (approx/exp.hpp)
  int degree = 4;                        ///< Chebyshev degree n in [1, 10]
  int squarings = 5;                     ///< squarings r in [0, 24]
  double range = 20;                     ///< the approximation's range R > 0: exp on [-R, 0]
  ReciprocalMethod reciprocal = ReciprocalMethod::Goldschmidt;  ///< how 1 / sum is formed
  int iterations = 0;           ///< reciprocal iterations k in [1, 64], 0 = automatic
  Shift shift = Shift::RowMax;  ///< subtract the row max, or a public bound
  double bound = 0;             ///< the public bound B (Shift::PublicBound), finite
  double gap = -1;              ///< B - max x at most this, in [0, 700]; negative: the range R

  /// Chebyshev exp of the given degree, squarings and range.
  static PolynomialSoftmaxOptions chebyshev(int degree, int squarings, double range = 20) {
    PolynomialSoftmaxOptions c;
    c.exp = ExpMethod::Chebyshev;
    c.degree = degree;
    c.squarings = squarings;
    c.range = range;
    return c;
  }
  /// Repeated-squaring exp, (1 + t / 2^r)^(2^r), with the given squarings and range.
  static PolynomialSoftmaxOptions repeated_squaring(int squarings, double range = 20) {
    PolynomialSoftmaxOptions c;
    c.exp = ExpMethod::RepeatedSquaring;
    c.degree = 0;
    c.squarings = squarings;
    c.range = range;
    return c;
  }
  /// A copy with the reciprocal method and its iteration count (0 = automatic).
  [[nodiscard]] PolynomialSoftmaxOptions with_reciprocal(ReciprocalMethod method, int k = 0) const {
    PolynomialSoftmaxOptions c = *this;
    c.reciprocal = method;
    c.iterations = k;
    return c;
  }
  /// A copy that shifts by the public bound b (>= every logit) with the gap g (negative: R).
  [[nodiscard]] PolynomialSoftmaxOptions with_public_bound(double b, double g = -1) const {
    PolynomialSoftmaxOptions c = *this;
    c.shift = Shift::PublicBound;
    c.bound = b;
    c.gap = g;
    return c;
  }
};

/// The former name of PolynomialSoftmaxOptions, kept for code written against it: its with_*
/// modify the object in place and return it (PolynomialSoftmaxOptions' return a modified copy).
struct [[deprecated("use softmaxlab::PolynomialSoftmaxOptions")]] PolynomialSoftmaxConfig
    : PolynomialSoftmaxOptions {
  PolynomialSoftmaxConfig() = default;
  /// From the options (what the static factories return).
  PolynomialSoftmaxConfig(const PolynomialSoftmaxOptions& options)  // NOLINT: implicit on purpose
      : PolynomialSoftmaxOptions(options) {}
  /// Sets the reciprocal method in place.
  PolynomialSoftmaxConfig& with_reciprocal(ReciprocalMethod method, int k = 0) {
    reciprocal = method;
    iterations = k;
    return *this;
  }
  /// Sets the public bound in place.
  PolynomialSoftmaxConfig& with_public_bound(double b, double g = -1) {
    shift = Shift::PublicBound;
    bound = b;
    gap = g;
    return *this;
  }
};

// Cost of one row of n entries (HeCost conventions: additions free).
struct PolynomialCost {
  int multiplications_per_element = 0;           // exp products + the final y = E r
  int constant_multiplications_per_element = 0;  // exp's products by public constants
  approx::HeCost exp;                            // the exp approximation alone
  approx::HeCost reciprocal;                     // the once-per-row reciprocal (zero when exact)
  // The reciprocal's iterations k.
  int reciprocal_iterations = 0;
  int depth = 0;  // exp depth + reciprocal depth + 1 (the final product); the sum is additions
  bool polynomial_only = true;  // false with ReciprocalMethod::Exact
};

namespace detail {

// y_i = expapprox(x_i - shift) for contiguous x, y (y may be x), added to `sum`. kMask: -inf
// entries get exactly 0 (rows known to hold no -inf skip the test); kClipTop: t is also clipped at
// 0 (a public shift may lie below an entry). The tail is always masked: its padding lanes are -inf.
template <int kDegree, bool kMask, bool kClipTop, class Scalar>
void poly_exp_store_sum(const Scalar* x, Scalar* y, Index n, Scalar shift,
                        const approx::ExpApprox& e, PairedSum<Scalar>& sum) {
  using namespace Eigen::internal;
  using Packet = PacketOf<Scalar>;
  using approx::ExpApprox;
  constexpr int P = kPacketSize<Scalar>;
  Packet c[kDegree + 1];
  for (int k = 0; k <= kDegree; ++k)
    c[k] = pset1<Packet>(static_cast<Scalar>(e.coefficient(k)));
  const Packet ps = pset1<Packet>(shift);
  const Packet lo = pset1<Packet>(static_cast<Scalar>(-e.range()));
  const Packet scale = pset1<Packet>(static_cast<Scalar>(e.u_scale()));
  const Packet one = pset1<Packet>(Scalar(1));
  const Packet neg_inf = pset1<Packet>(-std::numeric_limits<Scalar>::infinity());
  const int squarings = e.squarings();
  const bool clamp = e.clamp_negative();
  const Packet zero = pzero(one);
  const auto masked = [&](const Packet& p, const Packet& v) {
    return pandnot(p, pcmp_eq(v, neg_inf));  // -inf: exactly 0; NaN kept
  };
  const auto term = [&](const Packet& v, bool mask) {
    Packet p = ExpApprox::evaluate<kDegree, kClipTop>(psub(v, ps), c, lo, scale, one);
    for (int s = 0; s < squarings; ++s)
      p = pmul(p, p);
    if (clamp)
      p = pmax(p, zero);  // r = 0: a plain interpolant may dip below 0 (approx/exp.hpp); NaN kept
    return mask ? masked(p, v) : p;
  };
  PairedSum<Scalar> acc = sum;  // a local copy stays in registers
  Index i = 0;
  for (; i + 4 * P <= n; i += 4 * P) {
    // Four packets at a time, so their squaring chains interleave.
    Packet t[4];
    for (int j = 0; j < 4; ++j)
      t[j] = ExpApprox::evaluate<kDegree, kClipTop>(psub(ploadu<Packet>(x + i + j * P), ps), c, lo,
                                                    scale, one);
    square_repeatedly(t, squarings);
    if (clamp) {
      for (int j = 0; j < 4; ++j)
        t[j] = pmax(t[j], zero);
    }
    if constexpr (kMask) {
      for (int j = 0; j < 4; ++j)
        t[j] = masked(t[j], ploadu<Packet>(x + i + j * P));
    }
    for (int j = 0; j < 4; ++j)
      pstoreu(y + i + j * P, t[j]);
    acc.add4(t[0], t[1], t[2], t[3]);
  }
  for (; i + P <= n; i += P) {
    const Packet v = term(ploadu<Packet>(x + i), kMask);
    pstoreu(y + i, v);
    acc.add1(v);
  }
  if (i < n) {
    const Packet v =
        term(load_partial<Packet>(x + i, n - i, -std::numeric_limits<Scalar>::infinity()), true);
    store_partial(y + i, n - i, v);
    acc.add1(v);
  }
  sum = acc;
}

// Max and min of a row (NaN is not propagated here: callers catch it through the sum, or in the
// special-value branches).
template <class Scalar>
void max_min(const Scalar* x, Index n, Scalar& max_out, Scalar& min_out) {
  using namespace Eigen::internal;
  using Packet = PacketOf<Scalar>;
  constexpr int P = kPacketSize<Scalar>;
  const Scalar inf = std::numeric_limits<Scalar>::infinity();
  Packet a0 = pset1<Packet>(-inf), a1 = a0, a2 = a0, a3 = a0;
  Packet b0 = pset1<Packet>(inf), b1 = b0, b2 = b0, b3 = b0;
  Index i = 0;
  for (; i + 4 * P <= n; i += 4 * P) {
    const Packet v0 = ploadu<Packet>(x + i), v1 = ploadu<Packet>(x + i + P);
    const Packet v2 = ploadu<Packet>(x + i + 2 * P), v3 = ploadu<Packet>(x + i + 3 * P);
    a0 = pmax(a0, v0);
    a1 = pmax(a1, v1);
    a2 = pmax(a2, v2);
    a3 = pmax(a3, v3);
    b0 = pmin(b0, v0);
    b1 = pmin(b1, v1);
    b2 = pmin(b2, v2);
    b3 = pmin(b3, v3);
  }
  for (; i + P <= n; i += P) {
    const Packet v = ploadu<Packet>(x + i);
    a0 = pmax(a0, v);
    b0 = pmin(b0, v);
  }
  if (i < n) {
    a1 = pmax(a1, load_partial<Packet>(x + i, n - i, -inf));
    b1 = pmin(b1, load_partial<Packet>(x + i, n - i, inf));
  }
  max_out = std::max(max_out, predux_max(pmax(pmax(a0, a1), pmax(a2, a3))));
  min_out = std::min(min_out, predux_min(pmin(pmin(b0, b1), pmin(b2, b3))));
}

// A forward-mode dual number v + d eps (eps^2 = 0): enough arithmetic to run the scalar exp
// approximation and the reciprocal iterations of approx/ and get their exact derivatives.
template <class T>
struct Dual {
  T v = 0;
  T d = 0;
  Dual() = default;
  constexpr Dual(T value, T derivative) : v(value), d(derivative) {}
  template <class U, class = std::enable_if_t<std::is_arithmetic_v<U>>>
  explicit constexpr Dual(U value) : v(static_cast<T>(value)) {}
  friend Dual operator+(Dual a, Dual b) { return {a.v + b.v, a.d + b.d}; }
  friend Dual operator-(Dual a, Dual b) { return {a.v - b.v, a.d - b.d}; }
  friend Dual operator*(Dual a, Dual b) { return {a.v * b.v, a.d * b.v + a.v * b.d}; }
  Dual& operator*=(Dual b) { return *this = *this * b; }
  Dual& operator+=(Dual b) { return *this = *this + b; }
  friend bool operator<(Dual a, Dual b) { return a.v < b.v; }
  friend bool operator!=(Dual a, Dual b) { return a.v != b.v; }
};

}  // namespace detail

// PolynomialSoftmax: see the header's doc block.
class PolynomialSoftmax : public detail::DistributionFunctor<PolynomialSoftmax>,
                          public detail::BackwardFunctor<PolynomialSoftmax> {
 public:
  // The variant's name, as error messages give it.
  static constexpr const char* name = "PolynomialSoftmax";
  // Target of the automatic iteration count: e0^(2^k) <= 2^-26.
  static constexpr double kAutoTolerance = 0x1p-26;

  /// Checks the options (std::invalid_argument naming the field and value) and builds the exp
  /// approximation once.
  explicit PolynomialSoftmax(const PolynomialSoftmaxOptions& options = {}) : config_(options) {
    validate();
    exp_ = config_.exp == ExpMethod::Chebyshev
               ? approx::ExpApprox::chebyshev(config_.degree, config_.squarings, config_.range)
               : approx::ExpApprox::repeated_squaring(config_.squarings, config_.range);
    // Per-row work depends on these only: computed once, not per row.
    rho_float_ = std::min(exp_.relative_error(unit_roundoff<float>()), 0.5);
    rho_double_ = std::min(exp_.relative_error(unit_roundoff<double>()), 0.5);
    exp_gap_ = std::exp(-gap());
  }

  /// The options this map was built with.
  const PolynomialSoftmaxOptions& options() const { return config_; }
  /// The former name of options().
  [[deprecated("use options()")]] const PolynomialSoftmaxOptions& config() const { return config_; }
  // The exp approximation built from the options.
  const approx::ExpApprox& exp_approx() const { return exp_; }
  // The gap B - max x the public-bound shift allows: 0 for Shift::RowMax, the range R when the
  // options give a negative gap.
  double gap() const {
    return config_.shift == Shift::RowMax ? 0.0 : (config_.gap < 0 ? config_.range : config_.gap);
  }

  // The range the row sum lies in, for n entries: [s_min (1 - rho), n (1 + rho)].
  template <class Scalar>
  approx::ReciprocalRange reciprocal_range(Index n) const {
    const double rho = std::is_same_v<Scalar, float> ? rho_float_ : rho_double_;
    const double lo = exp_gap_ * (1.0 - rho);
    const double hi = static_cast<double>(n) * (1.0 + rho);
    return approx::ReciprocalRange(lo, hi);
  }

  // The reciprocal iterations used on rows of n entries (the options' count, or the automatic one).
  template <class Scalar>
  int iterations_for(Index n) const {
    if (config_.iterations > 0)
      return config_.iterations;
    return reciprocal_range<Scalar>(n).iterations_for(kAutoTolerance);
  }

  // 1 / s as this map forms the reciprocal of a row sum s > 0 over n kept entries: the options'
  // method, an exact division or Goldschmidt / Newton iterations on the row's public range
  // (reciprocal_range). Shared by the forward and Attention<PolynomialSoftmax>.
  template <class Scalar>
  Scalar reciprocal_of(Scalar s, Index n) const {
    if (config_.reciprocal == ReciprocalMethod::Exact)
      return Scalar(1) / s;
    const approx::ReciprocalRange range = reciprocal_range<Scalar>(n);
    const int k = iterations_for<Scalar>(n);
    const Scalar z0 = static_cast<Scalar>(range.z0);
    return config_.reciprocal == ReciprocalMethod::Goldschmidt
               ? approx::goldschmidt_reciprocal(s, z0, k)
               : approx::newton_reciprocal(s, z0, k);
  }

  // Hand-countable cost of a row of n entries (float iteration count when auto).
  PolynomialCost cost(Index n) const {
    PolynomialCost c;
    c.exp = exp_.cost();
    c.multiplications_per_element = c.exp.multiplications + 1;
    c.constant_multiplications_per_element = c.exp.constant_multiplications;
    if (config_.reciprocal == ReciprocalMethod::Exact) {
      c.polynomial_only = false;
      c.depth = c.exp.depth + 1;
      return c;
    }
    const int k = iterations_for<float>(n);
    c.reciprocal_iterations = k;
    c.reciprocal = config_.reciprocal == ReciprocalMethod::Goldschmidt ? approx::goldschmidt_cost(k)
                                                                       : approx::newton_cost(k);
    c.depth = c.exp.depth + c.reciprocal.depth + 1;
    return c;
  }

  // A-priori bound on max |y - softmax| for rows of n entries within the range (doc block).
  template <class Scalar>
  double error_bound(Index n) const {
    const double u = unit_roundoff<Scalar>();
    const double rho = exp_.relative_error(u);
    const double alpha = exp_.absolute_error(u);
    const double s_min = std::exp(-gap());
    const double n1 = static_cast<double>(n - 1);
    // y'_j - y_j = y_j (g_j - gbar) / (1 + gbar), g the relative errors of the terms, gbar their
    // y-weighted mean: split into the own term and the others' (doc block).
    const double own = std::min(alpha / s_min, rho / 4);
    const double others = std::min(rho / 4, n1 * alpha / (s_min >= 1.0 ? s_min * s_min : s_min));
    const double q = std::min(rho, static_cast<double>(n) * alpha / s_min);
    double rec = u;
    if (config_.reciprocal != ReciprocalMethod::Exact) {
      const int k = iterations_for<Scalar>(n);
      rec = approx::reciprocal_error_bound(reciprocal_range<Scalar>(n), k, u);
    }
    if (q >= 1.0)
      return std::numeric_limits<double>::infinity();
    return (own + others) / (1.0 - q) + rec + 4.0 * u;
  }

 private:
  friend class detail::DistributionFunctor<PolynomialSoftmax>;
  friend class detail::BackwardFunctor<PolynomialSoftmax>;

  template <class Scalar>
  static double unit_roundoff() {
    return std::numeric_limits<Scalar>::epsilon() / 2;
  }

  void validate() const {
    const char* w = "PolynomialSoftmax: ";
    const auto& c = config_;
    if (!(c.range > 0 && std::isfinite(c.range)))
      detail::fail(w, "range must be finite and > 0, but got ", c.range);
    if (c.squarings < 0 || c.squarings > 24)
      detail::fail(w, "squarings must be in [0, 24], but got ", c.squarings);
    if (c.exp == ExpMethod::Chebyshev) {
      if (c.degree < 1 || c.degree > approx::tables::kExpChebyshevMaxDegree)
        detail::fail(w, "Chebyshev degree must be in [1, 10], but got ", c.degree);
      if (approx::ExpApprox::length_index(std::ldexp(c.range, -c.squarings)) < 0) {
        detail::fail(w,
                     "range / 2^squarings must be a tabulated length ({1, 1.25, 1.5, 1.75} x "
                     "2^j, j = -3..5), but got range ",
                     c.range, " and squarings ", c.squarings);
      }
    } else {
      if (c.squarings < 1)
        detail::fail(w, "RepeatedSquaring needs squarings >= 1, but got ", c.squarings);
      if (c.range > std::ldexp(1.0, c.squarings))
        detail::fail(w,
                     "RepeatedSquaring needs range <= 2^squarings = ", std::ldexp(1.0, c.squarings),
                     ", but got range ", c.range);
    }
    if (c.iterations < 0 || c.iterations > 64)
      detail::fail(w, "iterations must be in [0, 64] (0 = auto), but got ", c.iterations);
    if (c.shift == Shift::PublicBound) {
      if (!std::isfinite(c.bound))
        detail::fail(w, "bound must be finite, but got ", c.bound);
      if (c.gap >= 0 || c.gap != c.gap) {
        if (!(c.gap <= 700))
          detail::fail(w, "gap must be in [0, 700] (or negative for gap = range), but got ", c.gap);
      }
    }
  }

  template <class Scalar>
  void compute(const detail::Span<const Scalar>& x, const detail::Span<Scalar>& y) const {
    const Scalar inf = std::numeric_limits<Scalar>::infinity();
    Scalar shift;
    bool mask = true;
    if (config_.shift == Shift::RowMax) {
      Scalar hi = -inf, lo = inf;
      detail::for_chunks(x, [&](const Scalar* in, Index n) { detail::max_min(in, n, hi, lo); });
      if (!(hi > -inf && hi < inf)) {  // all -inf (or NaN-only), or +inf present
        const Scalar m = detail::has_nan(x) ? std::numeric_limits<Scalar>::quiet_NaN() : hi;
        detail::write_special_row<false>(x, y, m);
        return;
      }
      shift = hi;
      mask = lo == -inf;
    } else {
      shift = static_cast<Scalar>(config_.bound);
    }
    detail::PairedSum<Scalar> sum;
    detail::for_chunks(x, y, [&](const Scalar* in, Scalar* out, Index n) {
      if (config_.shift == Shift::PublicBound) {
        dispatch_exp<true, true>(in, out, n, shift, sum);
      } else if (mask) {
        dispatch_exp<true, false>(in, out, n, shift, sum);
      } else {
        dispatch_exp<false, false>(in, out, n, shift, sum);
      }
    });
    const Scalar s = static_cast<Scalar>(sum.total());
    if (s != s)
      return detail::fill(y, std::numeric_limits<Scalar>::quiet_NaN());
    if (s == Scalar(0))
      return detail::fill(y, Scalar(0));
    detail::scale_row(y, static_cast<long double>(reciprocal_of(s, x.size)));
  }

  template <bool kMask, bool kClipTop, class Scalar>
  void dispatch_exp(const Scalar* in, Scalar* out, Index n, Scalar shift,
                    detail::PairedSum<Scalar>& sum) const {
    switch (exp_.method() == ExpMethod::RepeatedSquaring ? 0 : exp_.degree()) {
      case 0:
        return detail::poly_exp_store_sum<0, kMask, kClipTop>(in, out, n, shift, exp_, sum);
      case 1:
        return detail::poly_exp_store_sum<1, kMask, kClipTop>(in, out, n, shift, exp_, sum);
      case 2:
        return detail::poly_exp_store_sum<2, kMask, kClipTop>(in, out, n, shift, exp_, sum);
      case 3:
        return detail::poly_exp_store_sum<3, kMask, kClipTop>(in, out, n, shift, exp_, sum);
      case 4:
        return detail::poly_exp_store_sum<4, kMask, kClipTop>(in, out, n, shift, exp_, sum);
      case 5:
        return detail::poly_exp_store_sum<5, kMask, kClipTop>(in, out, n, shift, exp_, sum);
      case 6:
        return detail::poly_exp_store_sum<6, kMask, kClipTop>(in, out, n, shift, exp_, sum);
      case 7:
        return detail::poly_exp_store_sum<7, kMask, kClipTop>(in, out, n, shift, exp_, sum);
      case 8:
        return detail::poly_exp_store_sum<8, kMask, kClipTop>(in, out, n, shift, exp_, sum);
      case 9:
        return detail::poly_exp_store_sum<9, kMask, kClipTop>(in, out, n, shift, exp_, sum);
      default:
        return detail::poly_exp_store_sum<10, kMask, kClipTop>(in, out, n, shift, exp_, sum);
    }
  }

  // Backward (see the header's doc block): the exact Jacobian of the computed function, by
  // forward-mode dual numbers through the same scalar exp approximation and reciprocal iteration.
  template <class Scalar>
  void compute_backward(const detail::Span<const Scalar>& x,
                        const detail::Span<const Scalar>& /*y*/,
                        const detail::Span<const Scalar>& dy,
                        const detail::Span<Scalar>& dx) const {
    using D = detail::Dual<Scalar>;
    const Scalar inf = std::numeric_limits<Scalar>::infinity();
    bool nan = false;
    for (Index i = 0; i < x.size; ++i)
      nan = nan || x[i] != x[i] || dy[i] != dy[i];
    if (nan)
      return detail::fill(dx, std::numeric_limits<Scalar>::quiet_NaN());
    Scalar shift;
    Index argmax = -1;
    if (config_.shift == Shift::RowMax) {
      Scalar hi = -inf;
      for (Index i = 0; i < x.size; ++i) {
        if (x[i] > hi) {
          hi = x[i];
          argmax = i;
        }
      }
      if (!(hi > -inf && hi < inf))
        return detail::fill(dx, Scalar(0));  // all masked, or +inf entries: locally constant
      shift = hi;
    } else {
      shift = static_cast<Scalar>(config_.bound);
    }
    // E_i and E'(t_i): masked entries (-inf) are exactly 0 with derivative 0, as in the forward.
    auto term = [&](Scalar xi) {
      if (xi == -inf)
        return D{Scalar(0), Scalar(0)};
      return exp_.evaluate_scalar(D{xi - shift, Scalar(1)});
    };
    Scalar sum = 0;
    for (Index i = 0; i < x.size; ++i)
      sum += term(x[i]).v;
    if (sum == Scalar(0))
      return detail::fill(dx, Scalar(0));
    D r;
    const D s{sum, Scalar(1)};
    if (config_.reciprocal == ReciprocalMethod::Exact) {
      r = D{Scalar(1) / sum, -Scalar(1) / (sum * sum)};
    } else {
      const approx::ReciprocalRange range = reciprocal_range<Scalar>(x.size);
      const int k =
          config_.iterations > 0 ? config_.iterations : range.iterations_for(kAutoTolerance);
      const D z0{static_cast<Scalar>(range.z0), Scalar(0)};
      r = config_.reciprocal == ReciprocalMethod::Goldschmidt
              ? approx::goldschmidt_reciprocal(s, z0, k)
              : approx::newton_reciprocal(s, z0, k);
    }
    // y_i = E_i R(S): dL/dE_i = dy_i R + R'(S) sum_j dy_j E_j; dL/dx_i = dL/dE_i E'(t_i), and with
    // the row max as shift, the max entry also receives -sum_i dL/dt_i (t_i = x_i - max x).
    Scalar weighted = 0;
    for (Index i = 0; i < x.size; ++i)
      weighted += dy[i] * term(x[i]).v;
    const Scalar common = r.d * weighted;
    Scalar total = 0;
    for (Index i = 0; i < x.size; ++i) {
      const D e = term(x[i]);
      const Scalar g = (dy[i] * r.v + common) * e.d;
      total += g;
      dx[i] = g;
    }
    if (argmax >= 0)
      dx[argmax] -= total;
  }

  PolynomialSoftmaxOptions config_;
  approx::ExpApprox exp_;
  double rho_float_ = 0, rho_double_ = 0;  // exp's relative error bound, capped at 0.5
  double exp_gap_ = 1;                     // e^-gap: the smallest possible largest term
};

}  // namespace softmaxlab
