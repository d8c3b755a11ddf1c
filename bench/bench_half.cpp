// Half-precision rows (issue 13): softmaxlab's Softmax and SinglePassSoftmax on Eigen::half and
// Eigen::bfloat16 rows (half in, half out) against
//   - the same functors on float rows of the same lengths (element rate),
//   - the naive route a user would write: x.cast<float>(), the plain Eigen softmax expression into
//     a preallocated float row, .cast<half>() back,
//   - oneDNN's f16 / bf16 softmax where this machine's oneDNN implements it (otherwise the case
//     reports "not implemented on this ISA").
//
// Names: half/<impl>/<half|bf16|float>/<incache|outcache>/<n>. incache: 65536 elements of input
// and output per iteration (rows of length n, swept every iteration: 128 KiB each for half, 256 KiB
// for float); outcache: two rows' worth of 2^25 elements (64 MiB of half input, 128 MiB of float),
// one batch of about 2^18 elements (at least one row) per iteration, so each row comes from memory.
// items_per_second counts elements: the targets compare it across types.
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <softmaxlab/single_pass.hpp>
#include <softmaxlab/softmax.hpp>

#include "common.hpp"

#if defined(SOFTMAXLAB_BENCH_ONEDNN)
#include <oneapi/dnnl/dnnl.hpp>
#endif

namespace {

namespace sml = softmaxlab;
using Index = Eigen::Index;
template <class S>
using RowMajorOf = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class S>
using RowsOf = Eigen::Map<RowMajorOf<S>>;
template <class S>
using ConstRowsOf = Eigen::Map<const RowMajorOf<S>>;

template <class S>
const char* short_name() {
  if constexpr (std::is_same_v<S, Eigen::half>) {
    return "half";
  } else if constexpr (std::is_same_v<S, Eigen::bfloat16>) {
    return "bf16";
  } else {
    return "float";
  }
}

constexpr Index kInCacheElements = Index(1) << 16;
constexpr Index kOutOfCacheElements = Index(1) << 25;
constexpr Index kOutOfCacheBatch = Index(1) << 18;

// Input and output rows of one case, uniform logits in [-10, 10] rounded to S.
template <class S>
struct Workload {
  std::vector<S> x, y;
  Index n, rows_per_batch, batches;
  Workload(Index n_, bool in_cache) : n(n_) {
    const Index total =
        in_cache ? std::max(kInCacheElements, n) : std::max(kOutOfCacheElements, 2 * n);
    rows_per_batch = in_cache ? total / n : std::max<Index>(1, kOutOfCacheBatch / n);
    batches = total / (rows_per_batch * n);
    x.resize(static_cast<std::size_t>(batches * rows_per_batch * n));
    y.resize(x.size());
    std::mt19937 gen(13);
    std::uniform_real_distribution<float> u(-10.0f, 10.0f);
    for (auto& v : x)
      v = static_cast<S>(u(gen));
  }
  template <class Fn>
  void run(benchmark::State& state, Fn&& fn) {
    Index b = 0;
    for (auto _ : state) {
      const Index offset = b * rows_per_batch * n;
      fn(ConstRowsOf<S>(x.data() + offset, rows_per_batch, n),
         RowsOf<S>(y.data() + offset, rows_per_batch, n));
      benchmark::ClobberMemory();
      b = (b + 1) % batches;
    }
    state.SetItemsProcessed(state.iterations() * rows_per_batch * n);
  }
};

template <class S, class F>
void register_functor(const char* impl, F f) {
  for (Index n :
       {Index(64), Index(1000), Index(4096), Index(32000), Index(1) << 20, Index(1) << 24}) {
    for (bool in_cache : {true, false}) {
      if (in_cache && n > kInCacheElements)
        continue;
      const std::string name = std::string("half/") + impl + "/" + short_name<S>() + "/"
                               + (in_cache ? "incache/" : "outcache/") + std::to_string(n);
      benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& state) {
        Workload<S> w(n, in_cache);
        w.run(state, [&](const auto& x, const auto& y) { f(x, y); });
      })->Unit(n >= (Index(1) << 20) ? benchmark::kMillisecond : benchmark::kMicrosecond);
    }
  }
}

// The naive route: convert the row to float, Eigen's expression, convert back.
template <class S>
struct Naive {
  std::shared_ptr<Eigen::ArrayXf> e = std::make_shared<Eigen::ArrayXf>();
  template <class X, class Y>
  void operator()(const X& x, Y& y) const {
    e->resize(x.cols());
    for (Index r = 0; r < x.rows(); ++r) {
      const float m = x.row(r).template cast<float>().maxCoeff();
      *e = (x.row(r).template cast<float>().array().transpose() - m).exp();
      y.row(r) = (*e / e->sum()).transpose().template cast<S>();
    }
  }
};

#if defined(SOFTMAXLAB_BENCH_ONEDNN)
template <class S>
void register_onednn() {
  const auto dt =
      std::is_same_v<S, Eigen::half> ? dnnl::memory::data_type::f16 : dnnl::memory::data_type::bf16;
  for (Index n :
       {Index(64), Index(1000), Index(4096), Index(32000), Index(1) << 20, Index(1) << 24}) {
    for (bool in_cache : {true, false}) {
      if (in_cache && n > kInCacheElements)
        continue;
      const std::string name = std::string("half/onednn/") + short_name<S>() + "/"
                               + (in_cache ? "incache/" : "outcache/") + std::to_string(n);
      benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& state) {
        Workload<S> w(n, in_cache);
        try {
          const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
          dnnl::stream stream(engine);
          const dnnl::memory::desc md({w.rows_per_batch, n}, dt, dnnl::memory::format_tag::ab);
          const dnnl::softmax_v2_forward::desc desc(dnnl::prop_kind::forward_inference,
                                                    dnnl::algorithm::softmax_accurate, md, md, 1);
          const dnnl::softmax_v2_forward::primitive_desc pd(desc, engine);
          const std::string impl = pd.impl_info_str();
          if (impl.find("ref") != std::string::npos) {
            state.SkipWithError(
                ("not implemented on this ISA (oneDNN falls back to " + impl + ")").c_str());
            return;
          }
          dnnl::softmax_v2_forward primitive(pd);
          dnnl::memory src(md, engine, DNNL_MEMORY_NONE), dst(md, engine, DNNL_MEMORY_NONE);
          w.run(state, [&](const auto& x, const auto& y) {
            src.set_data_handle(const_cast<void*>(static_cast<const void*>(x.data())));
            dst.set_data_handle(const_cast<void*>(static_cast<const void*>(y.data())));
            primitive.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DST, dst}});
            stream.wait();
          });
        } catch (const dnnl::error& e) {
          state.SkipWithError((std::string("not implemented on this ISA: ") + e.what()).c_str());
        }
      })->Unit(n >= (Index(1) << 20) ? benchmark::kMillisecond : benchmark::kMicrosecond);
    }
  }
}
#endif

template <class S>
void register_type() {
  register_functor<S>("softmax",
                      [](const auto& x, const auto& y) { sml::Softmax().rowwise(x, y); });
  register_functor<S>("single_pass",
                      [](const auto& x, const auto& y) { sml::SinglePassSoftmax().rowwise(x, y); });
  if constexpr (!std::is_same_v<S, float>) {
    register_functor<S>("naive", [naive = Naive<S>()](const auto& x, auto y) { naive(x, y); });
#if defined(SOFTMAXLAB_BENCH_ONEDNN)
    register_onednn<S>();
#endif
  }
}

const bool registered = [] {
  register_type<float>();
  register_type<Eigen::half>();
  register_type<Eigen::bfloat16>();
  return true;
}();

}  // namespace
