// Attention and AttentionSoftmax against the materialized forms, float, one thread.
//
//   attention/<impl>/float/<Lq>x<Lk>/d<d>   O = softmax(Q K^T / sqrt(d)) V, dv = d:
//     flash              sml::Attention<> (key/value blocks, online normalizer; workspace
//                        Bq x Bk = 64 x 128 floats, 32 KiB, whatever Lk)
//     eigen_materialized S = Q K^T * scale (Eigen GEMM), then the plain Eigen softmax expression
//                        on S's rows, then O = S V (Eigen GEMM): Lq x Lk floats of scores
//     sml_materialized   the same with softmaxlab's Softmax rowwise on S
//   Shapes: Lq = Lk in {128, 1024, 4096}, d in {64, 128}; decode Lq = 1, Lk in {4096, 32768,
//   131072}, d = 128. Counters: workspace_bytes (flash: the stack block; materialized: the score
//   matrix), flops (4 Lq Lk d).
//   attention_softmax/<impl>/float/rows64/<n>   64 rows of n scores with a full additive mask and
//   a scale: fused (sml::AttentionSoftmax::rowwise_masked) against eigen_expr, the plain
//   expression t = x * s + mask; y = exp(t - max t); y /= sum y.
// Run only these: softmaxlab_bench --benchmark_filter='^attention'
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>

#include <Eigen/Core>

#include <softmaxlab/attention.hpp>

#include "common.hpp"

namespace {

namespace sml = softmaxlab;
using softmaxlab_bench::Index;
using RowMajorF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

struct AttentionWorkload {
  RowMajorF q, k, v, o, s;
  AttentionWorkload(Index lq, Index lk, Index d, bool materialize)
      : q(RowMajorF::Random(lq, d)),
        k(RowMajorF::Random(lk, d)),
        v(RowMajorF::Random(lk, d)),
        o(lq, d),
        s(materialize ? lq : 0, materialize ? lk : 0) {
    q *= 2.0f;
    k *= 2.0f;
  }
};

enum class Impl { Flash, EigenMaterialized, SmlMaterialized };

void run_attention(benchmark::State& state, Index lq, Index lk, Index d, Impl impl) {
  AttentionWorkload w(lq, lk, d, impl != Impl::Flash);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const sml::Attention<> flash;
  const sml::Softmax softmax;
  auto once = [&] {
    switch (impl) {
      case Impl::Flash:
        flash.apply(w.q, w.k, w.v, w.o);
        break;
      case Impl::EigenMaterialized: {
        w.s.noalias() = w.q * w.k.transpose();
        w.s *= scale;
        auto a = w.s.array();
        a = (a.colwise() - a.rowwise().maxCoeff()).exp();
        a.colwise() /= a.rowwise().sum();
        w.o.noalias() = w.s * w.v;
        break;
      }
      case Impl::SmlMaterialized:
        w.s.noalias() = w.q * w.k.transpose();
        w.s *= scale;
        softmax.rowwise(w.s, w.s);
        w.o.noalias() = w.s * w.v;
        break;
    }
  };
  once();  // warm-up: page faults of the score matrix
  for (auto _ : state) {
    once();
    benchmark::DoNotOptimize(w.o.data());
    benchmark::ClobberMemory();
  }
  const double workspace = impl == Impl::Flash
                               ? double(sml::detail::kAttentionMaxBlockQ
                                        * sml::detail::kAttentionMaxBlockK * sizeof(float))
                               : double(lq * lk * sizeof(float));
  state.counters["workspace_bytes"] = workspace;
  state.counters["flops"] = benchmark::Counter(4.0 * double(lq) * double(lk) * double(d),
                                               benchmark::Counter::kIsIterationInvariantRate);
}

const char* impl_name(Impl impl) {
  switch (impl) {
    case Impl::Flash:
      return "flash";
    case Impl::EigenMaterialized:
      return "eigen_materialized";
    default:
      return "sml_materialized";
  }
}

void register_attention(Index lq, Index lk, Index d) {
  for (Impl impl : {Impl::Flash, Impl::EigenMaterialized, Impl::SmlMaterialized}) {
    softmaxlab_bench::Case c;
    c.name = std::string("attention/") + impl_name(impl) + "/float/" + std::to_string(lq) + "x"
             + std::to_string(lk) + "/d" + std::to_string(d);
    c.type_rank = 0;
    c.n = lq * lk;
    c.cache = softmaxlab_bench::Cache::In;
    c.run = [=](benchmark::State& state) {
      run_attention(state, lq, lk, d, impl);
    };
    softmaxlab_bench::registry().push_back(std::move(c));
  }
}

void run_attention_softmax(benchmark::State& state, Index n, bool fused) {
  const Index rows = 64;
  const RowMajorF x = RowMajorF::Random(rows, n) * 20.0f;
  RowMajorF mask = RowMajorF::Random(rows, n);
  for (Index i = 0; i < mask.size(); i += 11)
    mask(i) = -std::numeric_limits<float>::infinity();
  RowMajorF y(rows, n);
  const float s = 0.125f;
  const sml::AttentionSoftmax f(sml::AttentionOptions().with_scale(s));
  for (auto _ : state) {
    if (fused) {
      f.rowwise_masked(x, mask, y);
    } else {
      for (Index r = 0; r < rows; ++r) {
        auto yr = y.row(r).array();
        yr = x.row(r).array() * s + mask.row(r).array();
        yr = (yr - yr.maxCoeff()).exp();
        yr /= yr.sum();
      }
    }
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()) * rows * n);
}

void register_attention_softmax(Index n) {
  for (bool fused : {true, false}) {
    softmaxlab_bench::Case c;
    c.name = std::string("attention_softmax/") + (fused ? "fused" : "eigen_expr") + "/float/rows64/"
             + std::to_string(n);
    c.type_rank = 0;
    c.n = n;
    c.cache = softmaxlab_bench::Cache::In;
    c.run = [=](benchmark::State& state) {
      run_attention_softmax(state, n, fused);
    };
    softmaxlab_bench::registry().push_back(std::move(c));
  }
}

const bool registered = [] {
  for (Index n : {128, 1024, 4096})
    for (Index d : {64, 128})
      register_attention(n, n, d);
  for (Index lk : {4096, 32768, 131072})
    register_attention(1, lk, 128);
  for (Index n : {128, 1024, 4096})
    register_attention_softmax(n);
  return true;
}();

}  // namespace
