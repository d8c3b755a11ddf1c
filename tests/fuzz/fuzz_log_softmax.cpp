// libFuzzer target: LogSoftmax with arbitrary temperatures, shapes, storage forms and float/double
// bit patterns. Invalid temperatures must throw std::invalid_argument (and nothing else); every
// output must satisfy the row rules of fuzz_common.hpp.
#include "fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace softmaxlab_fuzz;
  return run_functor_target<softmaxlab::LogSoftmax>(
      data, size, Output::LogProbabilities,
      [](Bytes& bytes) { return softmaxlab::LogSoftmax(bytes.parameter(1.0)); });
}
