// PyTorch's ATen softmax as a peer (Debian: libtorch-dev), float only, one thread
// (at::set_num_threads(1)). Built when SOFTMAXLAB_BENCH_ATEN is ON. ATen picks its kernels at run
// time by CPU capability (DEFAULT, AVX2 or AVX512; the environment variable ATEN_CPU_CAPABILITY
// overrides it); the report names the capability that ran. Each batch is one
// at::_softmax_out over dim 1 of a rows x n tensor wrapping the suite's buffers (no copy), as a
// libtorch user calls torch::softmax(x, 1) with a preallocated output. Registered on every float
// case: the suite's lengths and the short-row batches.
#if SOFTMAXLAB_BENCH_ATEN

#include <string>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <torch/version.h>

#include "common.hpp"

namespace {

using softmaxlab_bench::Index;

softmaxlab_bench::BatchFn<float> make_aten(Index, Index) {
  return [](const float* x, float* y, Index rows, Index n) {
    at::set_num_threads(1);
    const auto options = at::TensorOptions().dtype(at::kFloat);
    const at::Tensor input = at::from_blob(const_cast<float*>(x), {rows, n}, options);
    at::Tensor output = at::from_blob(y, {rows, n}, options);
    at::_softmax_out(output, input, 1, false);
  };
}

const bool aten_registered = softmaxlab_bench::register_kernel<float>("aten", make_aten)
                             && softmaxlab_bench::register_short_rows<float>("aten", make_aten);

// The "CPU capability usage: ..." line of at::show_config(), the kernel set ATen dispatches to
// (libtorch 1.13 exports no other way to ask).
std::string capability() {
  const std::string config = at::show_config();
  const std::string key = "CPU capability usage: ";
  const auto pos = config.find(key);
  if (pos == std::string::npos)
    return "unknown";
  const auto start = pos + key.size();
  return config.substr(start, config.find('\n', start) - start);
}

const bool aten_context = [] {
  softmaxlab_bench::context_providers().push_back([] {
    at::set_num_threads(1);
    return std::pair<std::string, std::string>(
        "aten", std::string("PyTorch ") + TORCH_VERSION + " ATen _softmax, CPU capability "
                    + capability() + ", " + std::to_string(at::get_num_threads()) + " thread(s)");
  });
  return true;
}();

}  // namespace

#endif  // SOFTMAXLAB_BENCH_ATEN
