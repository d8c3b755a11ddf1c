// libFuzzer target: PolynomialSoftmax (row-max shift) with arbitrary exp method, degree, squarings,
// range, reciprocal method and iterations, on arbitrary shapes, storage forms and bit patterns.
// Invalid configurations must throw std::invalid_argument (and nothing else). The values are
// approximations (their bounds are tested in tests/test_polynomial.cpp); here every row must keep
// the exact rules: NaN row, masked entries exactly 0, +inf entries sharing the mass, and finite
// output for finite input.
#include <softmaxlab/polynomial.hpp>

#include "fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace softmaxlab_fuzz;
  namespace sml = softmaxlab;
  Bytes head(data, size);
  const std::uint8_t choice = head.take<std::uint8_t>();
  const int degree = head.take<std::int8_t>();
  const int squarings = head.take<std::int8_t>();
  const double range = head.parameter(20.0);
  sml::PolynomialSoftmaxOptions config =
      (choice & 1) ? sml::PolynomialSoftmaxOptions::repeated_squaring(squarings, range)
                   : sml::PolynomialSoftmaxOptions::chebyshev(degree, squarings, range);
  config = config.with_reciprocal(static_cast<sml::ReciprocalMethod>((choice >> 1) % 3),
                                  (choice & 0x10) ? head.take<std::int8_t>() : 0);
  if (choice & 0x20)
    config = sml::PolynomialSoftmaxOptions();  // the default, most of the time
  Rules rules(Output::Probabilities);
  rules.approximate = true;
  return run_functor_target<sml::PolynomialSoftmax>(
      head, rules, [&](Bytes&) { return sml::PolynomialSoftmax(config); });
}
