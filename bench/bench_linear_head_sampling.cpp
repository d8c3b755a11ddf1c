// LinearHeadSampler (next-token sampling from the output layer without the N x V logits) against
// the materialized path, float:
//
//   head_sampling/<impl>/<chain>/float/N<N>/d<d>/V<V>
//     fused         sml::LinearHeadSampler(options).sample(H, W, seed, tokens, ws) (vocabulary
//                   blocks of 2048 classes, one token tile of 16)
//     materialized  Z = H W^T (Eigen GEMM, N x V floats), then
//                   Sampler(options).sample_rowwise_philox(Z, seed, tokens)
//   chains: temperature (T = 0.8 alone: the fused path is the exact Gumbel-max), llama-default
//   (top-k 40, top-p 0.95, min-p 0.05, T = 0.8: the fused path keeps a running top-k set) and
//   top-p (top-p 0.95, T = 0.8 last, no top-k: the TopPMinP path's running candidate set; the
//   materialized Sampler takes its general, sorting path for this order). The top-p rows use a
//   peaked head (logit standard deviation 6, as a trained model's next-token logits, where the
//   nucleus holds tens to hundreds of classes); on flat logits (the other rows' spread, ~0.1)
//   the nucleus is most of V and the fused path falls back to RowTiles by design.
//   16-bit: head_sampling/fused/{temperature,top-p}/{half,bf16}/...: H and W stored in half or
//   bfloat16 (the float rows' values rounded), W widened by 512 KB chunks inside the pass; the
//   baseline is the float materialized row of the chain (GEMM on a float copy of W kept by the
//   caller).
//   Shapes: N = 16 tokens (a decoding batch), d = 1024, V = 128,256 (issue 24): W is 525 MB, so
//   both paths are bound by one read of W per call. Run with a short minimum time, e.g.
//     softmaxlab_bench --benchmark_filter='^head_sampling/' --benchmark_min_time=0.05
//   Items: tokens. Counters: workspace_bytes (fused: LinearHeadSampler::Workspace::bytes();
//   materialized: the N V floats of Z), logits_bytes (N V floats), load1 (shared machine).
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include <Eigen/Core>

#include <softmaxlab/sampling/linear_head.hpp>

#include "common.hpp"

namespace {

namespace sml = softmaxlab;
using softmaxlab_bench::Index;

enum class Chain { Temperature, Llama, TopP };

const char* chain_name(Chain c) {
  return c == Chain::Temperature ? "temperature" : c == Chain::Llama ? "llama-default" : "top-p";
}

sml::SamplerOptions chain_options(Chain c) {
  const auto o = sml::SamplerOptions().with_temperature(0.8);
  return c == Chain::Temperature ? o
         : c == Chain::Llama     ? o.with_top_k(40).with_top_p(0.95).with_min_p(0.05)
                                 : o.with_top_p(0.95);
}

// T: the storage type of H and W (float, Eigen::half, Eigen::bfloat16).
template <class T>
void run_head(benchmark::State& state, Index n, Index d, Index v, bool fused, Chain chain) {
  // Hidden states and classifier: uniform entries, logits of standard deviation 8 / (3 sqrt d)
  // (~0.08), or 6 for the top-p chain (a peaked head). The same inputs for every case of a
  // chain (Eigen's Random draws from std::rand).
  std::srand(24);
  Eigen::MatrixXf h = Eigen::MatrixXf::Random(n, d);
  const float scale = chain == Chain::TopP ? 18.0f / std::sqrt(static_cast<float>(d))
                                           : 8.0f / static_cast<float>(d);
  Eigen::MatrixXf w = Eigen::MatrixXf::Random(v, d) * scale;
  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> h16, w16;
  if constexpr (!std::is_same_v<T, float>) {  // the 16-bit copies only (the float W freed)
    h16 = h.cast<T>();
    w16 = w.cast<T>();
    w.resize(0, 0);
  }
  const Eigen::Matrix<T, Eigen::Dynamic, 1> no_bias16;
  const sml::SamplerOptions options = chain_options(chain);
  const sml::LinearHeadSampler head(options);
  const sml::Sampler sampler(options);
  sml::LinearHeadSampler::Workspace ws;
  const Eigen::VectorXf no_bias;
  Eigen::VectorXi tokens(n);
  Eigen::VectorXd log_probs(n);
  Eigen::MatrixXf z;
  std::uint64_t seed = 1;
  auto once = [&] {
    if (fused && !std::is_same_v<T, float>) {
      head.sample(h16, w16, no_bias16, seed, tokens, log_probs, ws);
    } else if (fused) {
      head.sample(h, w, no_bias, seed, tokens, log_probs, ws);
    } else {
      z.resize(n, v);
      z.noalias() = h * w.transpose();
      sampler.sample_rowwise_philox(z, seed, tokens);
    }
    ++seed;
  };
  once();  // warm-up: page faults, the workspace
  for (auto _ : state) {
    once();
    benchmark::DoNotOptimize(tokens.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()) * n);
  state.counters["workspace_bytes"] =
      fused ? double(ws.bytes()) : double(n) * double(v) * sizeof(float);
  state.counters["logits_bytes"] = double(n) * double(v) * sizeof(float);
  state.counters["load1"] = softmaxlab_bench::load_average();
}

const bool registered = [] {
  const Index n = 16, d = 1024, v = 128256;
  const auto add = [&](const char* impl, Chain chain, const char* type, int rank, auto run) {
    // (type_rank 0 for the 16-bit rows too, as bench_linear_cross_entropy.cpp's)
    softmaxlab_bench::Case c;
    c.name = std::string("head_sampling/") + impl + "/" + chain_name(chain) + "/" + type + "/N"
             + std::to_string(n) + "/d" + std::to_string(d) + "/V" + std::to_string(v);
    c.type_rank = rank;
    c.n = n * v;
    c.cache = softmaxlab_bench::Cache::Out;
    c.run = run;
    softmaxlab_bench::registry().push_back(std::move(c));
  };
  for (Chain chain : {Chain::Temperature, Chain::Llama, Chain::TopP}) {
    for (bool fused : {true, false}) {
      add(fused ? "fused" : "materialized", chain, "float", 0,
          [=](benchmark::State& state) { run_head<float>(state, n, d, v, fused, chain); });
    }
  }
  for (Chain chain : {Chain::Temperature, Chain::TopP}) {
    add("fused", chain, "half", 0,
        [=](benchmark::State& state) { run_head<Eigen::half>(state, n, d, v, true, chain); });
    add("fused", chain, "bf16", 0,
        [=](benchmark::State& state) { run_head<Eigen::bfloat16>(state, n, d, v, true, chain); });
  }
  return true;
}();

}  // namespace
