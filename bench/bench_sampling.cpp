// Token sampling per token over vocabularies of 32,000, 128,256 and 256,000 float logits
// (normal, sigma 3): softmaxlab's Sampler against the baseline users write (softmax, std::sort of
// the indices by probability, cumulative sum, cut, draw), and one Softmax pass over the row; and
// top_k_log_softmax (k = 1, 4, 64) against LogSoftmax + std::partial_sort; the chain's stages one
// at a time and llama.cpp's default chain (penalties over 64 tokens, top-k 40, top-p 0.95, min-p
// 0.05, temperature 0.8, llama.cpp's order), and Sampler::verify of k = 4 draft tokens (items =
// the 4 positions) against the same Softmax pass. Self-contained: no bench/common.hpp. Names:
// sampling/<impl>/<setting>/<V>, sampling/stage/<stage>/<V>, sampling/verify/k4/<V>,
// topk_logsoftmax/<impl>/<V>/<k>.
//
//   ./build/bench/bench/softmaxlab_bench --benchmark_filter='^sampling/|^topk_logsoftmax/'
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include <softmaxlab/softmaxlab.hpp>

namespace {

namespace sml = softmaxlab;
using Index = Eigen::Index;
using RowMatrixF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

constexpr Index kRows = 4;  // rows swept in turn, so successive tokens see different logits

RowMatrixF logits(Index cols) {
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0, 3);
  RowMatrixF x(kRows, cols);
  for (Index i = 0; i < x.size(); ++i)
    x.data()[i] = normal(rng);
  return x;
}

struct Setting {
  const char* name;
  double temperature;
  Index top_k;
  double top_p;
  double min_p;
};

const Setting kSettings[] = {
    {"t0.8-k40", 0.8, 40, 1.0, 0.0},
    {"p0.95", 1.0, 0, 0.95, 0.0},
    {"minp0.05", 1.0, 0, 1.0, 0.05},
    {"t0.8-k40-p0.95-minp0.05", 0.8, 40, 0.95, 0.05},
};

// What a user writes without a library: softmax, sort every index by probability, cut, draw.
Index sort_baseline(const Eigen::Ref<const Eigen::RowVectorXf>& x, const Setting& s,
                    Eigen::RowVectorXf& probs, std::vector<Index>& idx, std::mt19937_64& gen) {
  const Index n = x.size();
  sml::Softmax(s.temperature).apply(x, probs);
  idx.resize(static_cast<std::size_t>(n));
  std::iota(idx.begin(), idx.end(), Index(0));
  std::sort(idx.begin(), idx.end(), [&](Index a, Index b) { return probs(a) > probs(b); });
  std::size_t c = idx.size();
  if (s.top_k > 0)
    c = std::min(c, static_cast<std::size_t>(s.top_k));
  double total = 0;
  for (std::size_t j = 0; j < c; ++j)
    total += probs(idx[j]);
  if (s.top_p < 1) {
    double cum = 0;
    std::size_t j = 0;
    while (j < c) {
      cum += probs(idx[j++]) / total;
      if (cum >= s.top_p)
        break;
    }
    c = j;
  }
  if (s.min_p > 0) {
    const double floor = s.min_p * probs(idx[0]);
    std::size_t j = 1;
    while (j < c && probs(idx[j]) >= floor)
      ++j;
    c = j;
  }
  total = 0;
  for (std::size_t j = 0; j < c; ++j)
    total += probs(idx[j]);
  const double target = std::uniform_real_distribution<double>(0, total)(gen);
  double cum = 0;
  for (std::size_t j = 0; j < c; ++j) {
    cum += probs(idx[j]);
    if (cum > target)
      return idx[j];
  }
  return idx[c - 1];
}

void sampler(benchmark::State& state, Setting s) {
  const RowMatrixF x = logits(state.range(0));
  // Temperature first, as the sort baseline computes it (like for like).
  const sml::Sampler sam(sml::SamplerOptions()
                             .with_order(sml::SamplerOptions::temperature_first_order())
                             .with_temperature(s.temperature)
                             .with_top_k(s.top_k)
                             .with_top_p(s.top_p)
                             .with_min_p(s.min_p));
  sml::SamplingWorkspace ws;
  sml::Philox4x32 gen(7);
  Index r = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(sam.sample(x.row(r), gen, ws));
    r = (r + 1) % kRows;
  }
  state.SetItemsProcessed(state.iterations());
}

void baseline(benchmark::State& state, Setting s) {
  const RowMatrixF x = logits(state.range(0));
  Eigen::RowVectorXf probs(x.cols());
  std::vector<Index> idx;
  std::mt19937_64 gen(7);
  Index r = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(sort_baseline(x.row(r), s, probs, idx, gen));
    r = (r + 1) % kRows;
  }
  state.SetItemsProcessed(state.iterations());
}

// A history of 64 tokens for the penalties (llama.cpp's default window).
std::vector<Index> history(Index cols) {
  std::mt19937 rng(3);
  std::uniform_int_distribution<Index> pick(0, cols - 1);
  std::vector<Index> h(64);
  for (auto& t : h)
    t = pick(rng);
  return h;
}

void chain(benchmark::State& state, const sml::SamplerOptions& o) {
  const RowMatrixF x = logits(state.range(0));
  const std::vector<Index> h = history(x.cols());
  const sml::Sampler sam(o);
  sml::SamplingWorkspace ws;
  sml::Philox4x32 gen(7);
  Index r = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(sam.sample(x.row(r), gen, ws, h));
    r = (r + 1) % kRows;
  }
  state.SetItemsProcessed(state.iterations());
}

sml::SamplerOptions llama_default_chain() {
  return sml::SamplerOptions()
      .with_penalties(1.1, 0.0, 0.0, 64)
      .with_top_k(40)
      .with_top_p(0.95)
      .with_min_p(0.05)
      .with_temperature(0.8);
}

// One speculative step: target (k + 1) x V logits, draft k x V probabilities (a draft close to
// the target: 0.8 times the target chain's distribution plus 0.2 times the softmax of noisy
// logits, so that most drafts are accepted and some rejected), drafts drawn from them.
void verify(benchmark::State& state) {
  constexpr Index k = 4;
  const Index v = state.range(0);
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0, 3), noise(0, 0.5f);
  RowMatrixF target(k + 1, v), draft(k, v);
  for (Index i = 0; i < target.size(); ++i)
    target.data()[i] = normal(rng);
  Eigen::VectorXi drafts(k);
  const sml::Sampler sam(llama_default_chain());
  for (Index i = 0; i < k; ++i) {
    Eigen::RowVectorXf noisy = target.row(i);
    for (Index j = 0; j < v; ++j)
      noisy(j) += noise(rng);
    Eigen::RowVectorXf q(v), p(v);
    sml::Softmax(0.8).apply(noisy, q);
    sam.probabilities(target.row(i), p);
    q = 0.8f * p + 0.2f * q;
    q /= q.sum();
    draft.row(i) = q;
    std::discrete_distribution<int> pick(q.data(), q.data() + v);
    drafts(i) = pick(rng);
  }
  sml::SamplingWorkspace ws;
  sml::Philox4x32 gen(7);
  Index accepted = 0;
  for (auto _ : state) {
    const sml::SpeculativeResult res = sam.verify(target, draft, drafts, gen, ws);
    accepted += res.accepted;
    benchmark::DoNotOptimize(res.token);
  }
  state.counters["accepted_per_step"] =
      benchmark::Counter(static_cast<double>(accepted), benchmark::Counter::kAvgIterations);
  state.SetItemsProcessed(state.iterations() * k);
}

void softmax_pass(benchmark::State& state) {
  const RowMatrixF x = logits(state.range(0));
  Eigen::RowVectorXf y(x.cols());
  const sml::Softmax f;
  Index r = 0;
  for (auto _ : state) {
    f.apply(x.row(r), y);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
    r = (r + 1) % kRows;
  }
  state.SetItemsProcessed(state.iterations());
}

void top_k(benchmark::State& state) {
  const RowMatrixF x = logits(state.range(0));
  const Index k = state.range(1);
  Eigen::VectorXi idx(k);
  Eigen::VectorXf lp(k);
  sml::SamplingWorkspace ws;
  Index r = 0;
  for (auto _ : state) {
    sml::top_k_log_softmax(x.row(r), k, idx, lp, ws);
    benchmark::DoNotOptimize(lp.data());
    benchmark::ClobberMemory();
    r = (r + 1) % kRows;
  }
  state.SetItemsProcessed(state.iterations());
}

void top_k_baseline(benchmark::State& state) {
  const RowMatrixF x = logits(state.range(0));
  const Index k = state.range(1);
  Eigen::RowVectorXf y(x.cols());
  std::vector<Index> idx(static_cast<std::size_t>(x.cols()));
  Eigen::VectorXi out_idx(k);
  Eigen::VectorXf lp(k);
  const sml::LogSoftmax f;
  Index r = 0;
  for (auto _ : state) {
    f.apply(x.row(r), y);
    std::iota(idx.begin(), idx.end(), Index(0));
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                      [&](Index a, Index b) { return y(a) > y(b); });
    for (Index j = 0; j < k; ++j) {
      out_idx(j) = static_cast<int>(idx[static_cast<std::size_t>(j)]);
      lp(j) = y(idx[static_cast<std::size_t>(j)]);
    }
    benchmark::DoNotOptimize(lp.data());
    benchmark::ClobberMemory();
    r = (r + 1) % kRows;
  }
  state.SetItemsProcessed(state.iterations());
}

const Index kVocabularies[] = {32000, 128256, 256000};

const bool registered = [] {
  for (const Index v : kVocabularies) {
    const std::string tail;  // Google Benchmark appends the arguments: /<V> (and /<k>)
    benchmark::RegisterBenchmark(("sampling/Softmax/pass" + tail).c_str(), softmax_pass)->Arg(v);
    for (const Setting& s : kSettings) {
      benchmark::RegisterBenchmark(("sampling/Sampler/" + std::string(s.name) + tail).c_str(),
                                   sampler, s)
          ->Arg(v);
      benchmark::RegisterBenchmark(("sampling/sort-baseline/" + std::string(s.name) + tail).c_str(),
                                   baseline, s)
          ->Arg(v);
    }
    if (v == 256000)
      continue;
    benchmark::RegisterBenchmark("sampling/Sampler/llama-default-chain", chain,
                                 llama_default_chain())
        ->Arg(v);
    benchmark::RegisterBenchmark("sampling/verify/k4", verify)->Arg(v);
    std::vector<Index> allowed;
    for (Index t = 0; t < v; t += 97)
      allowed.push_back(t);
    std::vector<std::pair<Index, double>> bias;
    for (Index t = 0; t < 16; ++t)
      bias.emplace_back(t * 1001 % v, t % 2 == 0 ? 1.5 : -1.5);
    const std::pair<const char*, sml::SamplerOptions> stages[] = {
        {"penalties64", sml::SamplerOptions().with_penalties(1.1, 0.1, 0.1, 64)},
        {"logit-bias16", sml::SamplerOptions().with_logit_bias(bias)},
        {"allowed-ids", sml::SamplerOptions().with_allowed_tokens(allowed)},
        {"bool-mask", sml::SamplerOptions().with_token_mask(
                          std::vector<bool>(static_cast<std::size_t>(v), true))},
        {"top-n-sigma1", sml::SamplerOptions().with_top_n_sigma(1.0)},
        {"typical-p0.95", sml::SamplerOptions().with_typical_p(0.95)},
        {"min-p0.05", sml::SamplerOptions().with_min_p(0.05)},
        {"none", sml::SamplerOptions()},
    };
    for (const auto& st : stages)
      benchmark::RegisterBenchmark(("sampling/stage/" + std::string(st.first)).c_str(), chain,
                                   st.second)
          ->Arg(v);
    for (const Index k : {1, 4, 64}) {
      const std::string kk = tail;
      benchmark::RegisterBenchmark(("topk_logsoftmax/top_k_log_softmax" + kk).c_str(), top_k)
          ->Args({v, k});
      benchmark::RegisterBenchmark(("topk_logsoftmax/partial-sort-baseline" + kk).c_str(),
                                   top_k_baseline)
          ->Args({v, k});
    }
  }
  return true;
}();

}  // namespace
