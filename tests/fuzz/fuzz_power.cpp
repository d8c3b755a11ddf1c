// libFuzzer target: PowerSoftmax with arbitrary p, form, eps, reciprocal mode and iteration count,
// shapes, storage forms and float/double bit patterns. Invalid parameters must throw
// std::invalid_argument (and nothing else). Rows follow power.hpp's rules: +-inf entries share the
// mass (x^p = +inf), NaN makes the row NaN, Stable rows sum to one and eps forms to at most one.
// Goldschmidt with a caller-chosen iteration count is an approximation with its own documented
// bound, so only the exact and the automatic (unit-roundoff) reciprocals are held to the sums,
// the latter where power.hpp says it converges.
#include <softmaxlab/power.hpp>

#include "fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace softmaxlab_fuzz;
  namespace sml = softmaxlab;
  Bytes head(data, size);
  const std::uint8_t choice = head.take<std::uint8_t>();
  const int p = (choice & 0x80) ? head.take<std::int8_t>() : 2 * (1 + (choice & 3));
  sml::PowerSoftmaxOptions options;
  options.form = static_cast<sml::PowerForm>((choice >> 2) % 3);
  options.eps = head.parameter(1e-6);
  options.reciprocal =
      (choice & 0x20) ? sml::ReciprocalMethod::Goldschmidt : sml::ReciprocalMethod::Exact;
  options.iterations = (choice & 0x40) ? head.take<std::int8_t>() : 0;
  Rules rules(Output::Probabilities);
  rules.any_infinity_shares = true;
  rules.sum_is_one = options.form == sml::PowerForm::Stable;
  rules.slack_eps = 2.0 * std::abs(p) + 4;  // the documented relative error bound
  // The automatic count is held to the sums only where it converges (power.hpp: not beyond
  // n 2^p ~ 2^54, where e0 rounds to 1 in double); rows here have up to 5 x 1100 entries.
  const bool auto_converges =
      p < 2 || p > 64
      || sml::approx::ReciprocalRange(1.0 / std::ldexp(5500.0, p), 1.0).truncation_error(64)
             <= std::numeric_limits<double>::epsilon() / 2;
  rules.approximate = options.reciprocal == sml::ReciprocalMethod::Goldschmidt
                      && (options.iterations != 0 || !auto_converges);
  return run_functor_target<sml::PowerSoftmax>(
      head, rules, [&](Bytes&) { return sml::PowerSoftmax(p, options); });
}
