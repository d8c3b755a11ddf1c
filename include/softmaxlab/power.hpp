// softmaxlab: PowerSoftmax, the encryption-friendly softmax of Power-Softmax (Zimerman et al.,
// "Power-Softmax: Towards Secure LLM Inference over Encrypted Data", arXiv 2410.09457): exp is
// replaced by an even power, so only products remain (plus one reciprocal per row).
//
//   Stable (default):  y_j = x_j^p / sum_i x_i^p
//   Lipschitz:         y_j = x_j^p / (eps + sum_i x_i^p)
//   LengthAgnostic:    y_j = (x_j^p / n) / (eps + (1/n) sum_i x_i^p)
//                          = x_j^p / (n eps + sum_i x_i^p)
//
// Parameters (the constructor throws std::invalid_argument naming the value otherwise):
//   p      even integer in [2, 64] (default 4). Odd, zero or negative p makes no distribution;
//          the cap 64 keeps (x / c)^p and its row sum inside float's range (see Algorithm).
//   form   PowerForm::Stable, ::Lipschitz or ::LengthAgnostic.
//   eps    Lipschitz / LengthAgnostic only: finite, > 0 (default 1e-6). Stable ignores it.
//   reciprocal  ReciprocalMethod::Exact (default: one correctly rounded division per row) or
//          ::Goldschmidt (polynomial only, as an encrypted pipeline must; see below), with
//          `iterations` k in [1, 64], or 0 (default) for the fewest that reach the scalar's
//          unit roundoff u on the row's range.
//
// Algorithm: three passes over a row, on Eigen packets. (1) c = max |x_i|. (2) z_i = x_i 2^-e
// with 2^(e-1) <= c < 2^e, so max |z_i| is in [1, 2) and the scaling is exact; z_i^p by repeated
// squaring (p = 4: two products; p = 6, 8: three), stored into y and summed with block-compensated
// per-lane sums (detail/he_kernels.hpp). Dividing by a power of two of c instead of c itself gives
// the same result (the formula is homogeneous of degree 0) with one rounding fewer; nothing
// overflows, whatever the input (near FLT_MAX included), and no z^p that matters underflows (the
// sum is >= 1). (3) y_i *= 1 / D, D = S (+ eps 2^(p e') or n eps 2^(p e'), the eps rescaled exactly
// in long double).
//
// Accuracy (tests/test_power.cpp against the mpmath tables of tests/reference/):
// with exact division, every form has relative error <= (2p + 4) eps (eps of the scalar type),
// measured relative to max(|exact|, smallest normal) as for Softmax (measured worst: 1.4, 2.2,
// 2.9, 4.1 eps for p = 2, 4, 6, 8, float and double alike). With Goldschmidt the
// reciprocal adds its own bound (approx/reciprocal.hpp): the range of D is [1, n 2^p] (plus eps'
// at both ends for the eps forms), i.e. l = 1 / (n 2^p), and the error becomes
//     (2p + 4) eps + (e0 + 2u)^(2^k) + (2k + 2) u,   e0 = (1 - l) / (1 + l);
// k = 0 (auto) picks the fewest iterations with e0^(2^k) <= u: about log2(n 2^p ln(1/u) / 2),
// e.g. 18 for n = 1000, p = 4 in float. Limit: auto stops at 64, and e0 is computed in double,
// where it rounds to 1 once n 2^p reaches about 2^54 (p >= 54 with any n, p = 46 with n = 1000):
// such rows get 64 iterations that have not converged, and their result is not a
// distribution (p = 60, n = 932: a row summing to 0.034). Use Exact there. The sum of a row is 1
// within a few eps (Stable).
//
// Special values, row by row (all forms unless stated):
//   - a NaN anywhere makes the whole row NaN;
//   - +inf and -inf both have x^p = +inf: the k infinite entries share the mass, 1/k each, 0
//     elsewhere (the limit of the formula; -inf is NOT a mask here, see masked());
//   - an all-zero row: Stable gives the uniform 1/n (the limit of the formula as the row shrinks
//     to 0); Lipschitz and LengthAgnostic give all 0 (0 / eps, exactly their formula);
//   - an empty input gives an empty output.
//
// Errors (std::invalid_argument naming the value or shapes, nothing else is thrown): p, eps or
// iterations out of range (constructor); an output or mask whose length differs from the input's;
// an output that partially overlaps the input (exact in-place is allowed).
//
// Speed (docs/power.md, "Performance"; AVX-512, float, in cache): PowerSoftmax(4) with exact
// division 1.75x / 2.0x / 1.87x Softmax at n = 1,000 / 4,096 / 32,000 (rowwise batches pipeline
// the rows; the bound at 1,000 and 32,000 is the passes' memory traffic, docs/benchmarks.md).
// Rows over 32 KiB recompute the powers in the last pass instead of storing them.
//
// Masking: f.apply_masked(x, mask, y) and f.masked(x, mask) use the paper's multiplicative 0/1
// mask: y_j = m_j x_j^p / sum_i m_i x_i^p, m_j = (mask_j != 0). A masked entry gets exactly 0 and
// is ignored entirely (a NaN or inf under a zero mask does not reach the row); all entries masked
// gives all 0; kept entries that are all zero share the mass uniformly (Stable).
//
// Backward (training): f.backward(x, y, dy[, dx]) and the rowwise/colwise forms give the
// vector-Jacobian product of y_j = x_j^p / D, D = sum_i x_i^p + eps' (eps' = 0, eps or n eps by
// form):  dx_i = p x_i^(p-1) (dy_i - <dy, y>) / D, in long double on the forward's power-of-two
// scaling (so nothing overflows), every form. With the Goldschmidt reciprocal the backward
// differentiates the exact-reciprocal function, which the forward matches within the
// reciprocal's stated bound. Rows with a NaN (in x or dy) give NaN; all-zero rows and rows with
// infinite entries (where the function is locally constant or undefined) give 0. The masked forms
// have no backward of their own: they equal the unmasked function of the kept entries, so take
// the backward on those (masked entries get 0).
#pragma once

#include <cmath>
#include <limits>
#include <type_traits>

#include "approx/reciprocal.hpp"
#include "detail/backward_base.hpp"
#include "detail/checks.hpp"
#include "detail/functor_base.hpp"
#include "detail/he_kernels.hpp"
#include "detail/kernels.hpp"

namespace softmaxlab {

// The three forms of the header's doc block.
enum class PowerForm { Stable, Lipschitz, LengthAgnostic };
/// The former name of ReciprocalMethod (PowerSoftmax takes its Exact and Goldschmidt).
using PowerReciprocal [[deprecated("use softmaxlab::ReciprocalMethod")]] = ReciprocalMethod;

// The options of PowerSoftmax beyond p (valid ranges in the header's doc block).
struct PowerSoftmaxOptions {
  // Stable, Lipschitz or LengthAgnostic.
  PowerForm form = PowerForm::Stable;
  double eps = 1e-6;  // Lipschitz / LengthAgnostic
  // Exact or Goldschmidt (Newton throws std::invalid_argument).
  ReciprocalMethod reciprocal = ReciprocalMethod::Exact;
  int iterations = 0;  // Goldschmidt: 0 = auto (fewest reaching the scalar's unit roundoff)
};

namespace detail {

// z^p for z = x * s (s1 * s2 when kTwo), p even; kP = 0 means p at run time.
template <int kP, class Packet>
EIGEN_STRONG_INLINE Packet even_power(const Packet& z, int p) {
  using Eigen::internal::pmul;
  const Packet w = pmul(z, z);
  if constexpr (kP == 2) {
    EIGEN_UNUSED_VARIABLE(p);
    return w;
  } else if constexpr (kP == 4) {
    EIGEN_UNUSED_VARIABLE(p);
    return pmul(w, w);
  } else if constexpr (kP == 6) {
    EIGEN_UNUSED_VARIABLE(p);
    return pmul(pmul(w, w), w);
  } else if constexpr (kP == 8) {
    EIGEN_UNUSED_VARIABLE(p);
    const Packet w2 = pmul(w, w);
    return pmul(w2, w2);
  } else {
    int q = p / 2;
    Packet base = w;
    Packet result = Eigen::internal::pset1<Packet>(1);
    bool first = true;
    while (q > 0) {
      if (q & 1) {
        result = first ? base : pmul(result, base);
        first = false;
      }
      q >>= 1;
      if (q > 0)
        base = pmul(base, base);
    }
    return result;
  }
}

// The row passes over the powers z_i^p, z_i = x_i s (s1 s2 when kTwo), of contiguous x:
//   StoreSum:   y_i = z_i^p, added to *sum (rows up to 32 KiB);
//   Sum:        only added to *sum (longer rows, whose powers are recomputed rather than
//               stored and re-read: in L2 the stored powers were a third of the traffic);
//   ScaleStore: y_i = z_i^p f1 (f2 when kTwoF), the final pass of the longer rows.
// y may be x.
enum class PowerPass { StoreSum, Sum, ScaleStore };

template <int kP, bool kTwo, PowerPass kPass, bool kTwoF = false, class Scalar>
void power_pass(const Scalar* x, Scalar* y, Index n, Scalar s1, Scalar s2, int p,
                PairedSum<Scalar>* sum, Scalar f1 = Scalar(1), Scalar f2 = Scalar(1)) {
  using namespace Eigen::internal;
  using Packet = PacketOf<Scalar>;
  constexpr int P = kPacketSize<Scalar>;
  constexpr bool kStore = kPass != PowerPass::Sum;
  constexpr bool kAdd = kPass != PowerPass::ScaleStore;
  const Packet ps1 = pset1<Packet>(s1), ps2 = pset1<Packet>(s2);
  const Packet pf1 = pset1<Packet>(f1), pf2 = pset1<Packet>(f2);
  const auto term = [&](const Packet& v) {
    Packet z = pmul(v, ps1);
    if constexpr (kTwo)
      z = pmul(z, ps2);
    Packet e = even_power<kP>(z, p);
    if constexpr (kPass == PowerPass::ScaleStore) {
      e = pmul(e, pf1);
      if constexpr (kTwoF)
        e = pmul(e, pf2);
    }
    return e;
  };
  PairedSum<Scalar> acc;  // in registers for the loop
  if constexpr (kAdd)
    acc = *sum;
  Index i = 0;
  for (; i + 4 * P <= n; i += 4 * P) {
    const Packet e0 = term(ploadu<Packet>(x + i));
    const Packet e1 = term(ploadu<Packet>(x + i + P));
    const Packet e2 = term(ploadu<Packet>(x + i + 2 * P));
    const Packet e3 = term(ploadu<Packet>(x + i + 3 * P));
    if constexpr (kStore) {
      pstoreu(y + i, e0);
      pstoreu(y + i + P, e1);
      pstoreu(y + i + 2 * P, e2);
      pstoreu(y + i + 3 * P, e3);
    }
    if constexpr (kAdd)
      acc.add4(e0, e1, e2, e3);
  }
  for (; i + P <= n; i += P) {
    const Packet e = term(ploadu<Packet>(x + i));
    if constexpr (kStore)
      pstoreu(y + i, e);
    if constexpr (kAdd)
      acc.add1(e);
  }
  if (i < n) {
    const Packet e = term(load_partial<Packet>(x + i, n - i, Scalar(0)));  // 0^p = 0
    if constexpr (kStore)
      store_partial(y + i, n - i, e);
    if constexpr (kAdd)
      acc.add1(e);
  }
  if constexpr (kAdd)
    *sum = acc;
}

}  // namespace detail

// PowerSoftmax: see the header's doc block for the formulas, accuracy and special values.
class PowerSoftmax : public detail::DistributionFunctor<PowerSoftmax>,
                     public detail::BackwardFunctor<PowerSoftmax> {
 public:
  // The variant's name, as error messages give it.
  static constexpr const char* name = "PowerSoftmax";
  /// The variant's flags (detail::VariantTraits gives their meaning and defaults).
  struct Traits : detail::VariantTraits {
    static constexpr bool contiguous_rows_kernel = true;  // rowwise/colwise: compute_rows
  };
  // The default eps of the Lipschitz and LengthAgnostic forms.
  static constexpr double kDefaultEps = 1e-6;

  // p an even integer in [2, 64]; throws std::invalid_argument naming the value when p or an option
  // is outside its range.
  explicit PowerSoftmax(int p = 4, const PowerSoftmaxOptions& options = {})
      : p_(p), options_(options) {
    validate();
  }
  // The default eps of the Lipschitz and LengthAgnostic forms.
  PowerSoftmax(int p, PowerForm form, double eps = kDefaultEps) : p_(p) {
    options_.form = form;
    options_.eps = eps;
    validate();
  }

  // The p this object was built with.
  int p() const { return p_; }
  // The form this object was built with.
  PowerForm form() const { return options_.form; }
  // The eps this object was built with.
  double eps() const { return options_.eps; }
  // The reciprocal this object was built with.
  ReciprocalMethod reciprocal() const { return options_.reciprocal; }
  // The options this object was built with.
  const PowerSoftmaxOptions& options() const { return options_; }

  // The range [lo, hi] of the denominator after the exact power-of-two scaling, for a row of n
  // entries and the rescaled eps' (0 for Stable): [1 + eps', n 2^p + eps'].
  approx::ReciprocalRange reciprocal_range(Index n, long double eps_scaled = 0) const {
    const double e = static_cast<double>(eps_scaled);
    const double hi = std::ldexp(static_cast<double>(n), p_) + e;
    return approx::ReciprocalRange((1.0 + e) / hi, 1.0);
  }

  // Iterations the Goldschmidt mode uses on a row of n entries (Stable form, eps' = 0).
  template <class Scalar>
  int iterations_for(Index n) const {
    if (options_.iterations > 0)
      return options_.iterations;
    return reciprocal_range(n).iterations_for(std::numeric_limits<Scalar>::epsilon() / 2);
  }

  // y = PowerSoftmax(x) over the entries with mask != 0; masked entries get 0 (doc block).
  template <class XprX, class XprM, class Out>
  void apply_masked(const Eigen::DenseBase<XprX>& x, const Eigen::DenseBase<XprM>& mask,
                    Out&& y) const {
    detail::static_check_output<Out>();
    detail::require_vector(name, mask.rows(), mask.cols());
    if (mask.size() != x.size()) {
      detail::fail(name, ": mask must have the input's length ", x.size(), ", but got ",
                   mask.rows(), " x ", mask.cols());
    }
    MaskRef<XprM> m{mask.derived()};
    apply_impl(x, y, m);
  }
  // The same with a mask of x's shape (nonzero = kept), returned as a plain object of x's shape.
  template <class XprX, class XprM>
  typename XprX::PlainObject masked(const Eigen::DenseBase<XprX>& x,
                                    const Eigen::DenseBase<XprM>& mask) const {
    detail::require_vector(name, x.rows(), x.cols());
    typename XprX::PlainObject y(x.rows(), x.cols());
    apply_masked(x, mask, y);
    return y;
  }

 private:
  friend class detail::DistributionFunctor<PowerSoftmax>;
  friend class detail::BackwardFunctor<PowerSoftmax>;

  template <class XprM>
  struct MaskRef {
    const XprM& mask;
    bool keep(Index i) const { return mask.coeff(i) != typename XprM::Scalar(0); }
  };

  void validate() const {
    if (p_ < 2 || p_ > 64 || p_ % 2 != 0) {
      detail::fail("PowerSoftmax: p must be an even integer in [2, 64], but got ", p_);
    }
    if (options_.form != PowerForm::Stable)
      detail::require_positive_finite("PowerSoftmax: eps", options_.eps);
    if (options_.reciprocal == ReciprocalMethod::Newton)
      detail::fail(
          "PowerSoftmax: reciprocal must be ReciprocalMethod::Exact or ::Goldschmidt, but "
          "got ReciprocalMethod::Newton");
    if (options_.reciprocal == ReciprocalMethod::Goldschmidt
        && (options_.iterations < 0 || options_.iterations > 64)) {
      detail::fail("PowerSoftmax: iterations must be in [0, 64] (0 = auto), but got ",
                   options_.iterations);
    }
  }

  // Rows whose max |x| is 0, +inf, or that hold a NaN.
  template <class Scalar>
  bool special_row(const detail::Span<const Scalar>& x, const detail::Span<Scalar>& y,
                   Scalar c) const {
    if (c > Scalar(0) && c < std::numeric_limits<Scalar>::infinity())
      return false;
    if (detail::has_nan(x)) {
      detail::fill(y, std::numeric_limits<Scalar>::quiet_NaN());
    } else if (c == Scalar(0)) {
      detail::fill(y, options_.form == PowerForm::Stable ? Scalar(1) / Scalar(x.size) : Scalar(0));
    } else {
      Index k = 0;
      for (Index i = 0; i < x.size; ++i)
        k += std::isinf(x[i]);
      const Scalar share = Scalar(1) / Scalar(k);
      for (Index i = 0; i < x.size; ++i)
        y[i] = std::isinf(x[i]) ? share : Scalar(0);
    }
    return true;
  }

  template <class Scalar>
  void compute(const detail::Span<const Scalar>& x, const detail::Span<Scalar>& y) const {
    const Scalar c = detail::max_abs(x);
    if (special_row(x, y, c))
      return;
    regular_row(x, y, c, x.size);
  }

  template <class Scalar, class Mask>
  void compute(const detail::Span<const Scalar>& x, const detail::Span<Scalar>& y,
               Mask& mask) const {
    Index kept = 0;
    for (Index i = 0; i < x.size; ++i) {
      const bool keep = mask.keep(i);
      y[i] = keep ? x[i] : Scalar(0);
      kept += keep;
    }
    const detail::Span<const Scalar> xm{y.data, y.size, y.stride};
    const Scalar c = detail::max_abs(xm);
    if (c == Scalar(0) && !detail::has_nan(xm)) {
      const Scalar zero_row =
          options_.form == PowerForm::Stable && kept > 0 ? Scalar(1) / Scalar(kept) : Scalar(0);
      for (Index i = 0; i < x.size; ++i)
        y[i] = mask.keep(i) ? zero_row : Scalar(0);
      return;
    }
    if (special_row(xm, y, c))
      return;
    // LengthAgnostic uses the number of kept entries as n.
    regular_row(xm, y, c, kept);
  }

  // The exact power-of-two scaling z = x s1 (s2 when two) of a row whose max |x_i| is c (finite,
  // positive): 2^(e-1) <= c < 2^e, s1 s2 = 2^(1-e), in two factors when 2^(1-e) overflows.
  template <class Scalar>
  struct Scaling {
    int shift;
    bool two;
    Scalar s1, s2;
    explicit Scaling(Scalar c) {
      int e = 0;
      std::frexp(c, &e);
      shift = 1 - e;
      two = shift > std::numeric_limits<Scalar>::max_exponent - 1;
      s1 = two ? std::ldexp(Scalar(1), 64) : std::ldexp(Scalar(1), shift);
      s2 = two ? std::ldexp(Scalar(1), shift - 64) : Scalar(1);
    }
  };

  // Whether a row of n entries stores its powers while summing them (rows up to 32 KiB; see
  // regular_row).
  template <class Scalar>
  static bool stores_powers(Index n) {
    return n * static_cast<Index>(sizeof(Scalar)) <= 32 * 1024;
  }

  // `count` contiguous rows of length n (row i at x + i ldx, y + i ldy; y may be x), from
  // rowwise/colwise. In the default form (Stable, exact division) rows that store their powers
  // are software-pipelined: row i's last pass (y *= 1 / S) is issued after row i+1's power pass,
  // when its sum is long ready, so the reductions and the division of one row overlap the next
  // row's passes (at n = 1,000 they were a third of the row's time). Every other row takes
  // compute(). The same arithmetic as compute(), row by row, bit for bit.
  template <class Scalar>
  void compute_rows(const Scalar* x, Index ldx, Scalar* y, Index ldy, Index count, Index n) const {
    using Wide = typename detail::CompensatedSum<Scalar>::Wide;
    const auto row = [&](Index i) {
      compute<Scalar>(detail::Span<const Scalar>{x + i * ldx, n, 1},
                      detail::Span<Scalar>{y + i * ldy, n, 1});
    };
    if (options_.form != PowerForm::Stable || options_.reciprocal != ReciprocalMethod::Exact
        || !stores_powers<Scalar>(n)) {
      for (Index i = 0; i < count; ++i)
        row(i);
      return;
    }
    Index pending = -1;  // the row whose last pass is due, -1 if none
    Wide pending_r = 0;
    const auto finish_pending = [&] {
      if (pending >= 0)
        detail::scale_row(detail::Span<Scalar>{y + pending * ldy, n, 1}, pending_r);
      pending = -1;
    };
    for (Index i = 0; i < count; ++i) {
      const Scalar* xi = x + i * ldx;
      Scalar* yi = y + i * ldy;
      const Scalar c = detail::max_abs(xi, n);
      if (!(c > Scalar(0) && c < std::numeric_limits<Scalar>::infinity())) {
        row(i);
        continue;
      }
      const Scaling<Scalar> z(c);
      detail::PairedSum<Scalar> sum;
      with_power(z.two, [&](auto kp, auto ktwo) {
        detail::power_pass<decltype(kp)::value, decltype(ktwo)::value, detail::PowerPass::StoreSum>(
            xi, yi, n, z.s1, z.s2, p_, &sum);
      });
      const Wide total = sum.total_wide();
      finish_pending();
      if (total != total) {
        detail::fill(detail::Span<Scalar>{yi, n, 1}, std::numeric_limits<Scalar>::quiet_NaN());
        continue;
      }
      pending = i;
      pending_r = Wide(1) / total;
    }
    finish_pending();
  }

  template <class Scalar>
  void regular_row(const detail::Span<const Scalar>& x, const detail::Span<Scalar>& y, Scalar c,
                   Index n) const {
    const Scaling<Scalar> z(c);
    const int shift = z.shift;
    const bool two = z.two;
    const Scalar s1 = z.s1, s2 = z.s2;

    // Rows beyond L1 (more than 32 KiB): the powers are summed, then recomputed with the factor
    // (three reads, one write; at 32,000 floats 1.27x faster). Shorter rows store them while
    // summing and scale in place, which wins in L1 (4,096 floats: 1.1x). The choice depends on
    // the length only, so a row gives the same bits in every layout (strided rows are staged
    // through for_chunks by both forms; the compiler may contract the sum's products
    // differently in the two kernels, so they need not agree with each other).
    const bool recompute = !stores_powers<Scalar>(x.size);
    detail::PairedSum<Scalar> sum;
    if (recompute) {
      detail::for_chunks(x, [&](const Scalar* in, Index count) {
        with_power(two, [&](auto kp, auto ktwo) {
          detail::power_pass<decltype(kp)::value, decltype(ktwo)::value, detail::PowerPass::Sum>(
              in, static_cast<Scalar*>(nullptr), count, s1, s2, p_, &sum);
        });
      });
    } else {
      detail::for_chunks(x, y, [&](const Scalar* in, Scalar* out, Index count) {
        with_power(two, [&](auto kp, auto ktwo) {
          detail::power_pass<decltype(kp)::value, decltype(ktwo)::value,
                             detail::PowerPass::StoreSum>(in, out, count, s1, s2, p_, &sum);
        });
      });
    }
    // The default form (Stable, exact reciprocal) stays in the sum's Wide type, double for float
    // rows: s = sum z^p lies in [2^-p, n] (the largest |z| is in [1/2, 1)), so 1 / s needs
    // neither long double's range nor its precision, and its x87 round trip was a fifth of a
    // row of 1,000 floats. The other forms need long double's range for eps' below.
    using Wide = typename detail::CompensatedSum<Scalar>::Wide;
    if (options_.form == PowerForm::Stable && options_.reciprocal == ReciprocalMethod::Exact) {
      const Wide total = sum.total_wide();
      if (total != total) {
        detail::fill(y, std::numeric_limits<Scalar>::quiet_NaN());
        return;
      }
      return scale_powers(x, y, recompute, two, s1, s2, Wide(1) / total);
    }
    const long double s = sum.total();
    if (s != s) {
      detail::fill(y, std::numeric_limits<Scalar>::quiet_NaN());
      return;
    }
    // eps' = eps 2^(p shift) (x^p = z^p 2^(-p shift)); long double keeps 15 exponent bits,
    // beyond them eps' is 0 or inf, which gives the right limit.
    long double eps_scaled = 0;
    if (options_.form != PowerForm::Stable) {
      const long long ex = static_cast<long long>(p_) * shift;
      eps_scaled = ex > 20000 ? std::numeric_limits<long double>::infinity()
                   : ex < -20000
                       ? 0.0L
                       : std::ldexp(static_cast<long double>(options_.eps), static_cast<int>(ex));
      if (options_.form == PowerForm::LengthAgnostic)
        eps_scaled *= static_cast<long double>(n);
    }
    const long double d = s + eps_scaled;
    long double r;
    if (!(d < std::numeric_limits<long double>::infinity())) {
      r = 0;
    } else if (options_.reciprocal == ReciprocalMethod::Exact) {
      r = 1.0L / d;
    } else {
      // Polynomial-only: a = D / hi in [l, 1], 1/D = (1/a) / hi with hi public.
      const long double hi = std::ldexp(static_cast<long double>(x.size), p_) + eps_scaled;
      const approx::ReciprocalRange range(static_cast<double>((1.0L + eps_scaled) / hi), 1.0);
      const int k = options_.iterations > 0
                        ? options_.iterations
                        : range.iterations_for(std::numeric_limits<Scalar>::epsilon() / 2);
      const Scalar a = static_cast<Scalar>(d / hi);
      const Scalar inv = approx::goldschmidt_reciprocal(a, static_cast<Scalar>(range.z0), k);
      r = static_cast<long double>(inv) / hi;
    }
    scale_powers(x, y, recompute, two, s1, s2, r);
  }

  // y = z^p r: y holds the powers (scaled in place), or, for the rows that recompute them, the
  // powers of x are computed again with the factor.
  template <class Scalar, class Wide>
  void scale_powers(const detail::Span<const Scalar>& x, const detail::Span<Scalar>& y,
                    bool recompute, bool two, Scalar s1, Scalar s2, Wide r) const {
    if (!recompute) {
      detail::scale_row(y, r);
      return;
    }
    const detail::ScaleFactors<Scalar> f(r);
    detail::for_chunks(x, y, [&](const Scalar* in, Scalar* out, Index count) {
      with_power(two, [&](auto kp, auto ktwo) {
        if (f.two)
          detail::power_pass<decltype(kp)::value, decltype(ktwo)::value,
                             detail::PowerPass::ScaleStore, true>(
              in, out, count, s1, s2, p_, static_cast<detail::PairedSum<Scalar>*>(nullptr), f.f1,
              f.f2);
        else
          detail::power_pass<decltype(kp)::value, decltype(ktwo)::value,
                             detail::PowerPass::ScaleStore, false>(
              in, out, count, s1, s2, p_, static_cast<detail::PairedSum<Scalar>*>(nullptr), f.f1,
              f.f2);
      });
    });
  }

  // fn(integral_constant kP, integral_constant kTwo) with p and the two-step scaling as
  // compile-time constants (kP = 0: p at run time, also whenever kTwo).
  template <class Fn>
  void with_power(bool two, Fn&& fn) const {
    using std::integral_constant;
    if (two)
      return fn(integral_constant<int, 0>{}, integral_constant<bool, true>{});
    switch (p_) {
      case 2:
        return fn(integral_constant<int, 2>{}, integral_constant<bool, false>{});
      case 4:
        return fn(integral_constant<int, 4>{}, integral_constant<bool, false>{});
      case 6:
        return fn(integral_constant<int, 6>{}, integral_constant<bool, false>{});
      case 8:
        return fn(integral_constant<int, 8>{}, integral_constant<bool, false>{});
      default:
        return fn(integral_constant<int, 0>{}, integral_constant<bool, false>{});
    }
  }

  // Backward (see the header's doc block): dx_i = p x_i^(p-1) (dy_i - <dy, y>) / D, evaluated in
  // long double on the same power-of-two scaling as the forward pass.
  template <class Scalar>
  void compute_backward(const detail::Span<const Scalar>& x,
                        const detail::Span<const Scalar>& /*y*/,
                        const detail::Span<const Scalar>& dy,
                        const detail::Span<Scalar>& dx) const {
    bool nan = false;
    for (Index i = 0; i < x.size; ++i)
      nan = nan || x[i] != x[i] || dy[i] != dy[i];
    if (nan)
      return detail::fill(dx, std::numeric_limits<Scalar>::quiet_NaN());
    const Scalar c = detail::max_abs(x);
    if (!(c > Scalar(0) && c < std::numeric_limits<Scalar>::infinity()))
      return detail::fill(dx, Scalar(0));  // zero row or infinite entries: locally constant
    int e = 0;
    std::frexp(c, &e);
    const int shift = 1 - e;
    long double sum = 0;
    for (Index i = 0; i < x.size; ++i)
      sum += std::pow(std::ldexp(static_cast<long double>(x[i]), shift), p_);
    long double eps_scaled = 0;
    if (options_.form != PowerForm::Stable) {
      const long long ex = static_cast<long long>(p_) * shift;
      eps_scaled = ex > 20000 ? std::numeric_limits<long double>::infinity()
                   : ex < -20000
                       ? 0.0L
                       : std::ldexp(static_cast<long double>(options_.eps), static_cast<int>(ex));
      if (options_.form == PowerForm::LengthAgnostic)
        eps_scaled *= static_cast<long double>(x.size);
    }
    const long double d = sum + eps_scaled;
    if (!(d < std::numeric_limits<long double>::infinity()))
      return detail::fill(dx, Scalar(0));
    long double dot = 0;  // <dy, y>
    for (Index i = 0; i < x.size; ++i)
      dot += static_cast<long double>(dy[i])
             * std::pow(std::ldexp(static_cast<long double>(x[i]), shift), p_) / d;
    for (Index i = 0; i < x.size; ++i) {
      const long double z = std::ldexp(static_cast<long double>(x[i]), shift);
      const long double slope = p_ * std::ldexp(std::pow(z, p_ - 1), shift) / d;
      dx[i] = static_cast<Scalar>(slope * (static_cast<long double>(dy[i]) - dot));
    }
  }

  int p_;
  PowerSoftmaxOptions options_;
};

}  // namespace softmaxlab
