// Reference tables for the PowerSoftmax and PolynomialSoftmax tests, written by
// generate_power_polynomial.py (mpmath, exact binary inputs; see README_power_polynomial.md).
//   power_f32.ipp / power_f64.ipp:  inline const PowerCase<float|double> kPowerCasesF32|F64[]
//   polynomial_softmax.ipp:         inline const SoftmaxRow kPolynomialSoftmaxCases[]
#pragma once
#include <cstddef>

#include "reference_table.hpp"

namespace softmaxlab_test {

// PowerSoftmax forms in table order, and the powers in table order.
inline constexpr int kPowerForms = 3;  // 0 Stable, 1 Lipschitz, 2 LengthAgnostic
inline constexpr int kPowerValues[] = {2, 4, 6, 8};

// One row and its exact PowerSoftmax, y = hi + lo (double-double), for every form and p.
// Special values: exact 0 is hi = lo = 0; NaN rows are hi = NaN, lo = 0.
template <class Scalar>
struct PowerCase {
  const char* name;
  std::size_t n;
  const Scalar* x;
  double eps;  // the eps of the Lipschitz and LengthAgnostic forms (exact)
  const double* hi[kPowerForms][4];
  const double* lo[kPowerForms][4];
};

// One float row and its exact softmax rounded to double.
struct SoftmaxRow {
  const char* name;
  std::size_t n;
  const float* x;
  const double* softmax;
};

}  // namespace softmaxlab_test
