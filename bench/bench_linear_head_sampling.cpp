// LinearHeadSampler (next-token sampling from the output layer without the N x V logits) against
// the materialized path, float:
//
//   head_sampling/<impl>/<chain>/float/N<N>/d<d>/V<V>
//     fused         sml::LinearHeadSampler(options).sample(H, W, seed, tokens, ws) (vocabulary
//                   blocks of 2048 classes, one token tile of 16)
//     materialized  Z = H W^T (Eigen GEMM, N x V floats), then
//                   Sampler(options).sample_rowwise_philox(Z, seed, tokens)
//   chains: temperature (T = 0.8 alone: the fused path is the exact Gumbel-max) and llama-default
//   (top-k 40, top-p 0.95, min-p 0.05, T = 0.8: the fused path keeps a running top-k set).
//   Shapes: N = 16 tokens (a decoding batch), d = 1024, V = 128,256 (issue 24): W is 525 MB, so
//   both paths are bound by one read of W per call. Run with a short minimum time, e.g.
//     softmaxlab_bench --benchmark_filter='^head_sampling/' --benchmark_min_time=0.05
//   Items: tokens. Counters: workspace_bytes (fused: LinearHeadSampler::Workspace::bytes();
//   materialized: the N V floats of Z), logits_bytes (N V floats), load1 (shared machine).
#include <cstdint>
#include <string>
#include <vector>

#include <Eigen/Core>

#include <softmaxlab/sampling/linear_head.hpp>

#include "common.hpp"

namespace {

namespace sml = softmaxlab;
using softmaxlab_bench::Index;

sml::SamplerOptions chain_options(bool llama) {
  const auto o = sml::SamplerOptions().with_temperature(0.8);
  return llama ? o.with_top_k(40).with_top_p(0.95).with_min_p(0.05) : o;
}

void run_head(benchmark::State& state, Index n, Index d, Index v, bool fused, bool llama) {
  // Hidden states and classifier of a trained-looking head: logits of a few units. The same
  // inputs for every case (Eigen's Random draws from std::rand).
  std::srand(24);
  const Eigen::MatrixXf h = Eigen::MatrixXf::Random(n, d);
  const Eigen::MatrixXf w = Eigen::MatrixXf::Random(v, d) * (8.0f / static_cast<float>(d));
  const sml::SamplerOptions options = chain_options(llama);
  const sml::LinearHeadSampler head(options);
  const sml::Sampler sampler(options);
  sml::LinearHeadSampler::Workspace ws;
  const Eigen::VectorXf no_bias;
  Eigen::VectorXi tokens(n);
  Eigen::VectorXd log_probs(n);
  Eigen::MatrixXf z;
  std::uint64_t seed = 1;
  auto once = [&] {
    if (fused) {
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
  for (bool llama : {false, true}) {
    for (bool fused : {true, false}) {
      softmaxlab_bench::Case c;
      c.name = std::string("head_sampling/") + (fused ? "fused" : "materialized") + "/"
               + (llama ? "llama-default" : "temperature") + "/float/N" + std::to_string(n) + "/d"
               + std::to_string(d) + "/V" + std::to_string(v);
      c.type_rank = 0;
      c.n = n * v;
      c.cache = softmaxlab_bench::Cache::Out;
      c.run = [=](benchmark::State& state) {
        run_head(state, n, d, v, fused, llama);
      };
      softmaxlab_bench::registry().push_back(std::move(c));
    }
  }
  return true;
}();

}  // namespace
