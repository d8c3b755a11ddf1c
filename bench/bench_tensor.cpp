// Softmax over each axis of a [32, 16, 128, 128] float tensor (row-major, as PyTorch lays out
// [batch, heads, Lq, Lk] scores; 32 MiB in, 32 MiB out, so every pass streams from memory):
//   tensor/sml_axis/float/axis<k>     sml::Softmax()(t, k) into a preallocated tensor (apply)
//   tensor/rowwise/float/axis3        the same data as a [65536 x 128] row-major Map, rowwise
//                                     (the innermost axis's reference: the target is >= 0.95x)
//   tensor/eigen_expr/float/axis<k>   the plain Eigen::Tensor expression over that axis:
//                                     e = (t - max(t, k) broadcast).exp(); y = e / sum(e, k)
//                                     broadcast (targets: outer axes >= 3x this, and >= 0.7x the
//                                     innermost axis's element rate)
// items_per_second counts tensor elements, so the rates compare directly.
#include <random>
#include <string>

#include <softmaxlab/softmax.hpp>
#include <softmaxlab/tensor.hpp>

#include "common.hpp"

namespace {

namespace sml = softmaxlab;
using softmaxlab_bench::Index;
using Tensor4 = Eigen::Tensor<float, 4, Eigen::RowMajor, Index>;

enum class Impl { Axis, Rowwise, EigenExpr };

const char* impl_name(Impl impl) {
  switch (impl) {
    case Impl::Axis:
      return "sml_axis";
    case Impl::Rowwise:
      return "rowwise";
    default:
      return "eigen_expr";
  }
}

// Logits uniform in [-10, 10], as the rest of the suite.
const Tensor4& input() {
  static const Tensor4 t = [] {
    Tensor4 x(32, 16, 128, 128);
    std::mt19937 gen(2026);
    std::uniform_real_distribution<float> u(-10.0f, 10.0f);
    for (Index i = 0; i < x.size(); ++i)
      x.data()[i] = u(gen);
    return x;
  }();
  return t;
}

void run_tensor(benchmark::State& state, int axis, Impl impl) {
  const Tensor4& x = input();
  Tensor4 y(x.dimensions());
  const sml::Softmax f;
  const Index n = x.dimension(axis);
  Eigen::array<Index, 1> reduced{axis};
  Eigen::array<Index, 4> kept = x.dimensions(), spread{1, 1, 1, 1};
  kept[axis] = 1;
  spread[axis] = n;
  const auto step = [&] {
    switch (impl) {
      case Impl::Axis:
        f.apply(x, axis, y);
        break;
      case Impl::Rowwise: {
        const Eigen::Map<
            const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>
            xm(x.data(), x.size() / n, n);
        Eigen::Map<Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> ym(
            y.data(), y.size() / n, n);
        f.rowwise(xm, ym);
        break;
      }
      case Impl::EigenExpr:
        y = (x - x.maximum(reduced).reshape(kept).broadcast(spread)).exp();
        y = y / y.sum(reduced).reshape(kept).broadcast(spread);
        break;
    }
  };
  step();  // page faults of y
  for (auto _ : state) {
    step();
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()) * x.size());
  state.counters["axis"] = axis;
  state.counters["n"] = static_cast<double>(n);
}

const bool registered = [] {
  for (int axis = 0; axis < 4; ++axis) {
    for (Impl impl : {Impl::Axis, Impl::Rowwise, Impl::EigenExpr}) {
      if (impl == Impl::Rowwise && axis != 3)
        continue;  // rowwise sees the slices of the contiguous axis only
      softmaxlab_bench::Case c;
      c.name = std::string("tensor/") + impl_name(impl) + "/float/32x16x128x128/axis"
               + std::to_string(axis);
      c.type_rank = 0;
      c.n = Index(1) << 23;  // ordered after the suite's rows (8 Mi elements per call)
      c.cache = softmaxlab_bench::Cache::Out;
      c.run = [=](benchmark::State& state) {
        run_tensor(state, axis, impl);
      };
      softmaxlab_bench::registry().push_back(std::move(c));
    }
  }
  return true;
}();

}  // namespace
