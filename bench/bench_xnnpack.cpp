// XNNPACK's softmax as a peer (Debian: libxnnpack-dev, libpthreadpool-dev), float only, one thread
// (no pthreadpool: the operator runs on the calling thread). Built when SOFTMAXLAB_BENCH_XNNPACK is
// ON. One operator per row length, created outside the timed loop; each batch is one
// setup + run of the operator over all its rows (XNNPACK's own batching), as TensorFlow Lite
// calls it. Registered on every float case: the suite's lengths and the short-row batches.
#if SOFTMAXLAB_BENCH_XNNPACK

#include <xnnpack.h>

#include <memory>
#include <stdexcept>
#include <string>

#include "common.hpp"

namespace {

using softmaxlab_bench::Index;

void check(xnn_status status, const char* what) {
  if (status != xnn_status_success)
    throw std::runtime_error(std::string("XNNPACK: ") + what + " failed");
}

struct XnnpackSoftmax {
  xnn_operator_t op = nullptr;

  explicit XnnpackSoftmax(Index n) {
    check(xnn_initialize(nullptr), "xnn_initialize");
    const auto channels = static_cast<size_t>(n);
    check(xnn_create_softmax_nc_f32(channels, channels, channels, 0, &op),
          "xnn_create_softmax_nc_f32");
  }
  ~XnnpackSoftmax() { xnn_delete_operator(op); }
  XnnpackSoftmax(const XnnpackSoftmax&) = delete;
  XnnpackSoftmax& operator=(const XnnpackSoftmax&) = delete;

  void operator()(const float* x, float* y, Index rows) {
    check(xnn_setup_softmax_nc_f32(op, static_cast<size_t>(rows), x, y, nullptr),
          "xnn_setup_softmax_nc_f32");
    check(xnn_run_operator(op, nullptr), "xnn_run_operator");
  }
};

softmaxlab_bench::BatchFn<float> make_xnnpack(Index, Index n) {
  auto softmax = std::make_shared<XnnpackSoftmax>(n);
  return [softmax](const float* x, float* y, Index rows, Index) {
    (*softmax)(x, y, rows);
  };
}

const bool xnnpack_registered =
    softmaxlab_bench::register_kernel<float>("xnnpack", make_xnnpack)
    && softmaxlab_bench::register_short_rows<float>("xnnpack", make_xnnpack);

const bool xnnpack_context = [] {
  softmaxlab_bench::context_providers().push_back([] {
    return std::pair<std::string, std::string>(
        "xnnpack",
        "Debian libxnnpack-dev (softmax_nc_f32, no thread pool: one thread; kernels chosen at run "
        "time for this CPU)");
  });
  return true;
}();

}  // namespace

#endif
