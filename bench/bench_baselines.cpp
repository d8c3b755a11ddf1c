// The peers every softmaxlab variant is measured against, in the same binary and run:
//   scalar_exp  a plain loop: max, then y = std::exp(x - max) summed, then y *= 1 / sum;
//   eigen_expr  the plain Eigen expression `y = (x - x.maxCoeff()).exp(); y /= y.sum();` per row;
//   eigen_rowwise  the same on a whole short-row batch as one rowwise expression;
//   onednn      oneDNN's softmax_v2 forward, softmax_accurate, one thread, float only (oneDNN has
//   no
//               f64 softmax on CPU); built when SOFTMAXLAB_BENCH_ONEDNN is ON;
//   stream      the memory bound of a two-pass softmax: per row one read (a max) and one read plus
//               one write (y = x * max), the least traffic any softmax needs without holding the
//               row in cache.
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <unordered_map>

#include <Eigen/Core>

#if SOFTMAXLAB_BENCH_ONEDNN
#include <oneapi/dnnl/dnnl.hpp>
#endif
#if defined(_OPENMP)
#include <omp.h>
#endif

#include "common.hpp"

namespace {

using softmaxlab_bench::Index;

template <class Scalar>
using ConstArray = Eigen::Map<const Eigen::Array<Scalar, Eigen::Dynamic, 1>>;
template <class Scalar>
using Array = Eigen::Map<Eigen::Array<Scalar, Eigen::Dynamic, 1>>;

const bool scalar_registered = softmaxlab_bench::register_batch(
    "scalar_exp",
    [](const auto* x, auto* y, Index rows, Index n) {
      using Scalar = std::remove_cv_t<std::remove_pointer_t<decltype(y)>>;
      for (Index r = 0; r < rows; ++r) {
        const Scalar* xr = x + r * n;
        Scalar* yr = y + r * n;
        Scalar m = -std::numeric_limits<Scalar>::infinity();
        for (Index i = 0; i < n; ++i)
          m = std::max(m, xr[i]);
        Scalar sum = 0;
        for (Index i = 0; i < n; ++i) {
          yr[i] = std::exp(xr[i] - m);
          sum += yr[i];
        }
        const Scalar inverse = Scalar(1) / sum;
        for (Index i = 0; i < n; ++i)
          yr[i] *= inverse;
      }
    },
    true);

const bool eigen_registered = softmaxlab_bench::register_batch(
    "eigen_expr",
    [](const auto* x, auto* y, Index rows, Index n) {
      using Scalar = std::remove_cv_t<std::remove_pointer_t<decltype(y)>>;
      for (Index r = 0; r < rows; ++r) {
        const ConstArray<Scalar> xr(x + r * n, n);
        Array<Scalar> yr(y + r * n, n);
        yr = (xr - xr.maxCoeff()).exp();
        yr /= yr.sum();
      }
    },
    true);

// The whole batch as one rowwise Eigen expression (short-row batches only): what a user of Eigen
// writes for a batch of rows.
const bool eigen_rowwise_registered = softmaxlab_bench::register_short_rows<float>(
    "eigen_rowwise", [](Index, Index) -> softmaxlab_bench::BatchFn<float> {
      return [](const float* x, float* y, Index rows, Index n) {
        using Rows =
            Eigen::Map<const Eigen::Array<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>;
        using RowsOut =
            Eigen::Map<Eigen::Array<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>;
        const Rows xs(x, rows, n);
        RowsOut ys(y, rows, n);
        ys = (xs.colwise() - xs.rowwise().maxCoeff()).exp();
        ys.colwise() /= ys.rowwise().sum();
      };
    });

const bool stream_registered =
    softmaxlab_bench::register_batch("stream", [](const auto* x, auto* y, Index rows, Index n) {
      using Scalar = std::remove_cv_t<std::remove_pointer_t<decltype(y)>>;
      for (Index r = 0; r < rows; ++r) {
        const ConstArray<Scalar> xr(x + r * n, n);
        Array<Scalar> yr(y + r * n, n);
        yr = xr * xr.maxCoeff();
      }
    });

#if SOFTMAXLAB_BENCH_ONEDNN

std::string threads() {
#if defined(_OPENMP)
  return "OpenMP, " + std::to_string(omp_get_max_threads()) + " thread(s)";
#else
  return "threads not controlled (no OpenMP in this build)";
#endif
}

// One primitive per batch shape (rows x n, one softmax per row), memory objects rebound per batch.
struct OneDnnSoftmax {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  dnnl::softmax_v2_forward primitive;
  dnnl::memory src, dst;
  std::unordered_map<int, dnnl::memory> args;

  OneDnnSoftmax(Index rows, Index n) {
    const dnnl::memory::desc md({rows, n}, dnnl::memory::data_type::f32,
                                dnnl::memory::format_tag::ab);
    const dnnl::softmax_v2_forward::desc desc(dnnl::prop_kind::forward_inference,
                                              dnnl::algorithm::softmax_accurate, md, md, 1);
    const dnnl::softmax_v2_forward::primitive_desc pd(desc, engine);
    primitive = dnnl::softmax_v2_forward(pd);
    src = dnnl::memory(md, engine, DNNL_MEMORY_NONE);
    dst = dnnl::memory(md, engine, DNNL_MEMORY_NONE);
    args = {{DNNL_ARG_SRC, src}, {DNNL_ARG_DST, dst}};
  }
  void operator()(const float* x, float* y) {
    src.set_data_handle(const_cast<float*>(x));
    dst.set_data_handle(y);
    primitive.execute(stream, args);
    stream.wait();
  }
};

softmaxlab_bench::BatchFn<float> make_onednn(Index rows, Index n) {
  auto softmax = std::make_shared<OneDnnSoftmax>(rows, n);
  return [softmax](const float* x, float* y, Index, Index) {
    (*softmax)(x, y);
  };
}

// The whole batch is one primitive call (oneDNN's own batching), also for the short rows.
const bool onednn_registered =
    softmaxlab_bench::register_kernel<float>("onednn", make_onednn)
    && softmaxlab_bench::register_short_rows<float>("onednn", make_onednn);

const bool onednn_context = [] {
  softmaxlab_bench::context_providers().push_back([] {
    const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
    const dnnl::memory::desc md({1, 1000}, dnnl::memory::data_type::f32,
                                dnnl::memory::format_tag::ab);
    const dnnl::softmax_v2_forward::desc desc(dnnl::prop_kind::forward_inference,
                                              dnnl::algorithm::softmax_accurate, md, md, 1);
    const dnnl::softmax_v2_forward::primitive_desc pd(desc, engine);
    const dnnl_version_t* v = dnnl_version();
    return std::pair<std::string, std::string>(
        "onednn", std::to_string(v->major) + "." + std::to_string(v->minor) + "."
                      + std::to_string(v->patch) + " " + pd.impl_info_str() + ", " + threads());
  });
  return true;
}();

#endif

}  // namespace
