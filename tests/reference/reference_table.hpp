// Reference tables for the Softmax / LogSoftmax tests.
//
// softmax_f32.ipp and softmax_f64.ipp are written by generate.py (mpmath, 60 digits, exact
// binary inputs); see README.md in this directory. Each .ipp defines, in this namespace,
//   inline const SoftmaxCase<float>  kSoftmaxCasesF32[];   (softmax_f32.ipp)
//   inline const SoftmaxCase<double> kSoftmaxCasesF64[];   (softmax_f64.ipp)
// Iterate with a range-for or std::size().
#pragma once
#include <cstddef>
#include <limits>

namespace softmaxlab_test {

template <class S>
constexpr S kInf = std::numeric_limits<S>::infinity();
template <class S>
constexpr S kNaN = std::numeric_limits<S>::quiet_NaN();

// One row and its exact softmax / log-softmax. The reference values are unevaluated
// double-double pairs: the exact value is hi + lo, hi is the double nearest to it and lo the
// double nearest to (exact - hi). Special values: softmax exactly 0 is hi = lo = 0; a -inf
// log-softmax is hi = -inf, lo = 0; NaN rows have hi = NaN, lo = 0. A log-softmax value whose
// magnitude exceeds the double range (only in huge_mixed_sign_* of the f64 table) is
// hi = -inf, lo = 0 (IEEE round-to-nearest of the exact value).
template <class Scalar>
struct SoftmaxCase {
  const char* name;    // e.g. "uniform_pm1000_n4097"
  double temperature;  // exact; exactly representable in float too
  std::size_t n;
  const Scalar* x;           // n inputs, exactly as generated
  const double* softmax_hi;  // exact softmax as an unevaluated double-double hi+lo
  const double* softmax_lo;
  const double* log_hi;  // exact log-softmax as hi+lo
  const double* log_lo;
};

}  // namespace softmaxlab_test
