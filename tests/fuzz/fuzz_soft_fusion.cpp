// libFuzzer target: SoftFusion (forward and backward); the contract checked is in fuzz_fusion.hpp.
#include "fuzz_fusion.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  return softmaxlab_fuzz::run_fusion_target<softmaxlab::SoftFusion>(data, size, 1.0);
}
