// libFuzzer target: Sparsemax, Entmax15 and Entmax(alpha) with arbitrary alpha, shapes, storage
// forms and float/double bit patterns. An alpha outside [1, 2] must throw std::invalid_argument
// (and nothing else); every row must keep entmax.hpp's rules: NaN row, -inf entries exactly 0,
// +inf entries sharing the mass, and rows summing to 1 (2e-6 float, 1e-12 double).
#include <softmaxlab/entmax.hpp>

#include "fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace softmaxlab_fuzz;
  namespace sml = softmaxlab;
  Bytes head(data, size);
  const std::uint8_t choice = head.take<std::uint8_t>();
  const Rules rules(Output::Probabilities);
  switch (choice % 3) {
    case 0:
      return run_functor_target<sml::Sparsemax>(head, rules,
                                                [](Bytes&) { return sml::Sparsemax(); });
    case 1:
      return run_functor_target<sml::Entmax15>(head, rules, [](Bytes&) { return sml::Entmax15(); });
    default:
      return run_functor_target<sml::Entmax>(
          head, rules, [](Bytes& bytes) { return sml::Entmax(bytes.parameter(1.25)); });
  }
}
