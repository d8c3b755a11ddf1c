// The approximate output layers against the full softmax loss, float, one thread, per token
// (issue 24's target: >= 5x faster per token at V = 128k):
//
//   output_approx/<impl>/<loss|train>/float/N<N>/d<d>/V<V>
//     full          Z = H W^T (Eigen GEMM, N x V floats) and CrossEntropyLoss(Z, labels); train:
//                   the gradient written into Z, then dH = Z W and dW = Z^T H (Eigen GEMMs)
//     adaptive      sml::AdaptiveLogSoftmax with PyTorch's example cutoffs {2000, 10000, 50000},
//                   div_value 4 (tail widths 128, 32, 8 at d = 512): loss; train: backward
//     hierarchical  sml::HierarchicalSoftmax over the Huffman tree of Zipfian counts, W row-major
//                   (V - 1) x d: loss; train: backward with the sparse gradient of W
//   Labels: Zipfian, class c drawn with probability proportional to 1 / (c + 1) (the frequency
//   order the adaptive softmax's cutoffs assume), the same for every case; hierarchical counts
//   are the expected counts of that distribution. d = 512, V = 128256, N = 256 (loss) and
//   N = 64 (train). One `full` loss iteration is a 256 x 512 x 128256 GEMM (about 34 GFLOP; 0.7 s
//   of CPU on the project's machine), a train iteration three GEMMs of N = 64; run
//   only this family with a short minimum time:
//     softmaxlab_bench --benchmark_filter='^output_approx/' --benchmark_min_time=0.05
//   Counters: items_per_second = tokens per second (the report's ratios are per token);
//   loss = the mean loss of the last call; mean_depth (hierarchical: the labels' mean path
//   length); tail_fraction (adaptive: tokens whose label is outside the shortlist); load1.
//   The three losses are different models' losses on the same data (different parameters, not
//   trained), so their values are not comparable: this benchmark measures time, not bias.
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <Eigen/Core>

#include <softmaxlab/adaptive_softmax.hpp>
#include <softmaxlab/hierarchical_softmax.hpp>
#include <softmaxlab/loss.hpp>
#include <softmaxlab/random.hpp>

#include "common.hpp"

namespace {

namespace sml = softmaxlab;
using softmaxlab_bench::Index;
using RowMajorF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// n labels drawn from P(c) ~ 1 / (c + 1), c < v, by inverting the cumulative sum (Philox words).
std::vector<int> zipf_labels(Index n, Index v) {
  std::vector<double> cdf(static_cast<std::size_t>(v));
  double s = 0;
  for (Index c = 0; c < v; ++c)
    cdf[std::size_t(c)] = (s += 1.0 / double(c + 1));
  sml::Philox4x32 gen(24, 4);
  std::vector<int> y(static_cast<std::size_t>(n));
  for (auto& label : y) {
    const double u = (double(gen()) + 0.5) * 0x1p-32 * s;
    label = static_cast<int>(std::lower_bound(cdf.begin(), cdf.end(), u) - cdf.begin());
  }
  return y;
}

enum class Impl { Full, Adaptive, Hierarchical };

void run_case(benchmark::State& state, Impl impl, bool train, Index n, Index d, Index v) {
  std::srand(24);
  const Eigen::MatrixXf h = Eigen::MatrixXf::Random(n, d);
  const std::vector<int> labels = zipf_labels(n, v);
  double loss = 0;
  std::function<void()> once;
  // Every implementation's state lives here so `once` can refer to it.
  Eigen::MatrixXf w, z, dh(n, d), dw;
  const sml::CrossEntropyLoss ce;
  const sml::AdaptiveLogSoftmax adaptive(d, v, {2000, 10000, 50000}, 4.0);
  sml::AdaptiveLogSoftmaxParameters<float> params, grads;
  std::vector<double> counts(static_cast<std::size_t>(v));
  for (Index c = 0; c < v; ++c)
    counts[std::size_t(c)] = std::floor(1e9 / double(c + 1));
  const sml::HierarchicalSoftmax tree(impl == Impl::Hierarchical ? counts
                                                                 : std::vector<double>{1.0});
  RowMajorF w_tree, h_rows, dh_rows;
  sml::HierarchicalSoftmaxGradient<float> tree_grad;
  switch (impl) {
    case Impl::Full:
      w = Eigen::MatrixXf::Random(v, d) * (4.0f / static_cast<float>(d));
      dw.resize(v, d);
      once = [&] {
        z.resize(n, v);
        z.noalias() = h * w.transpose();
        if (!train) {
          loss = ce(z, labels);
          return;
        }
        loss = ce(z, labels, z);
        dh.noalias() = z * w;
        dw.noalias() = z.transpose() * h;
      };
      break;
    case Impl::Adaptive:
      params = adaptive.init_parameters<float>(24);
      once = [&] {
        loss = train ? adaptive.backward(params, h, labels, grads, dh)
                     : adaptive.loss(params, h, labels);
      };
      break;
    case Impl::Hierarchical:
      w_tree = RowMajorF::Random(v - 1, d) * (1.0f / static_cast<float>(d));
      h_rows = h;
      dh_rows.resize(n, d);
      once = [&] {
        loss = train ? tree.backward(w_tree, h_rows, labels, dh_rows, tree_grad)
                     : tree.loss(w_tree, h_rows, labels);
      };
      break;
  }
  once();  // warm-up: page faults, buffers
  for (auto _ : state) {
    once();
    benchmark::DoNotOptimize(loss);
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * n);
  state.counters["loss"] = loss;
  state.counters["load1"] = softmaxlab_bench::load_average();
  if (impl == Impl::Hierarchical) {
    double depth = 0;
    for (int c : labels)
      depth += double(tree.depth(c));
    state.counters["mean_depth"] = depth / double(n);
  }
  if (impl == Impl::Adaptive) {
    double tail = 0;
    for (int c : labels)
      tail += c >= adaptive.shortlist_size();
    state.counters["tail_fraction"] = tail / double(n);
  }
}

const bool registered = [] {
  const Index d = 512, v = 128256;
  for (bool train : {false, true}) {
    const Index n = train ? 64 : 256;  // the full train case is three GEMMs: keep it near 0.5 s
    for (Impl impl : {Impl::Full, Impl::Adaptive, Impl::Hierarchical}) {
      const char* impl_name = impl == Impl::Full       ? "full"
                              : impl == Impl::Adaptive ? "adaptive"
                                                       : "hierarchical";
      softmaxlab_bench::Case c;
      c.name = std::string("output_approx/") + impl_name + (train ? "/train" : "/loss") + "/float/N"
               + std::to_string(n) + "/d" + std::to_string(d) + "/V" + std::to_string(v);
      c.type_rank = 0;
      c.n = n * v;
      c.cache = softmaxlab_bench::Cache::Out;
      c.run = [=](benchmark::State& state) {
        run_case(state, impl, train, n, d, v);
      };
      softmaxlab_bench::registry().push_back(std::move(c));
    }
  }
  return true;
}();

}  // namespace
