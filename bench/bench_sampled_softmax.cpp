// SampledSoftmaxLoss and NceLoss against the full softmax loss, float, loss and all gradients in
// one call, per token (issue 24, items 3 and 5):
//
//   output_sampled/<impl>/float/N256/d512/V128256[/S<S>]
//     full             Z = H W^T + b (Eigen GEMM, N x V), CrossEntropyLoss(Z, labels, Z) (the
//                      gradient in place), dH = Z W, dW = Z^T H, db = column sums of Z
//     sampled_softmax  draw S unique log-uniform candidates (Philox4x32) and
//                      SampledSoftmaxLoss(H, W, b, labels, candidates, gradients)
//     nce              the same with NceLoss (TensorFlow's defaults: no accidental-hit removal)
//   S in {64, 1024, 8192}: word2vec / TensorFlow tutorials' 64, and the sampled softmaxes of large
//   language models (Jozefowicz et al. 2016 used 8192 of an 800k vocabulary).
//   The model: H uniform in [-1, 1], W uniform in [-6/sqrt(d), 6/sqrt(d)] (logit spread ~2), the
//   bias b_k = log P_zipf(k) and the labels drawn from the same log-uniform distribution, so the
//   classes are sorted by frequency as the sampler assumes. One fixed model for every case.
//   Counters: items_per_second = tokens per second (the report's ratios are per-token speed);
//   loss = the mean over the iterations of the returned loss (Mean over tokens; for the sampled
//   losses a fresh candidate set each iteration); full_loss = the full softmax cross-entropy of the
//   same model and tokens; loss_bias = loss - full_loss (for NCE this compares different losses:
//   shown, not an estimator's bias). The full case takes about a second per iteration: it runs a
//   fixed 2 iterations. Filter with --benchmark_filter='^output_sampled/'.
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <Eigen/Core>

#include <softmaxlab/candidate_sampler.hpp>
#include <softmaxlab/cross_entropy.hpp>
#include <softmaxlab/random.hpp>
#include <softmaxlab/sampled_softmax.hpp>

#include "common.hpp"

namespace {

namespace sml = softmaxlab;
using softmaxlab_bench::Index;

constexpr Index kTokens = 256, kDim = 512, kVocab = 128256;

struct Model {
  Eigen::MatrixXf h, w;
  Eigen::VectorXf b;
  std::vector<int> labels;
  double full_loss = 0;
};

// Built once (W is 263 MB); the full loss by the materialized path.
const Model& model() {
  static const std::unique_ptr<Model> m = [] {
    auto r = std::make_unique<Model>();
    std::srand(24);
    r->h = Eigen::MatrixXf::Random(kTokens, kDim);
    r->w = Eigen::MatrixXf::Random(kVocab, kDim) * (6.0f / std::sqrt(float(kDim)));
    const auto zipf = sml::CandidateSampler::log_uniform(kVocab);
    r->b.resize(kVocab);
    for (Index k = 0; k < kVocab; ++k)
      r->b(k) = static_cast<float>(std::log(zipf.probability(k)));
    sml::Philox4x32 gen(2024);
    for (Index i = 0; i < kTokens; ++i)
      r->labels.push_back(static_cast<int>(zipf.draw(gen)));
    Eigen::MatrixXf z = r->h * r->w.transpose();
    z.rowwise() += r->b.transpose();
    r->full_loss = sml::CrossEntropyLoss()(z, r->labels);
    return r;
  }();
  return *m;
}

// Tokens per second and the loss counters of the header's comment; sum: the losses returned.
void report(benchmark::State& state, double sum, const Model& m) {
  const double mean = sum / static_cast<double>(state.iterations());
  state.SetItemsProcessed(state.iterations() * kTokens);
  state.counters["loss"] = mean;
  state.counters["full_loss"] = m.full_loss;
  state.counters["loss_bias"] = mean - m.full_loss;
}

void run_full(benchmark::State& state) {
  const Model& m = model();
  const sml::CrossEntropyLoss ce;
  Eigen::MatrixXf z(kTokens, kVocab), dh(kTokens, kDim), dw(kVocab, kDim);
  Eigen::VectorXf db(kVocab);
  double sum = 0;
  for (auto _ : state) {
    z.noalias() = m.h * m.w.transpose();
    z.rowwise() += m.b.transpose();
    sum += ce(z, m.labels, z);
    dh.noalias() = z * m.w;
    dw.noalias() = z.transpose() * m.h;
    db = z.colwise().sum().transpose();
    benchmark::DoNotOptimize(dw.data());
    benchmark::DoNotOptimize(db.data());
    benchmark::ClobberMemory();
  }
  report(state, sum, m);
}

template <class Loss>
void run_sampled(benchmark::State& state, Index num_sampled) {
  const Model& m = model();
  const Loss loss(sml::CandidateSampler::log_uniform(kVocab), num_sampled);
  sml::Philox4x32 gen(7);
  sml::SampledGradients<float> g;
  double sum = 0;
  for (auto _ : state) {
    const sml::CandidateSample cs = loss.draw(m.labels, gen);
    sum += loss(m.h, m.w, m.b, m.labels, cs, g);
    benchmark::DoNotOptimize(g.dW_rows.data());
    benchmark::ClobberMemory();
  }
  report(state, sum, m);
}

const bool registered = [] {
  const std::string tail = "/float/N" + std::to_string(kTokens) + "/d" + std::to_string(kDim) + "/V"
                           + std::to_string(kVocab);
  benchmark::RegisterBenchmark(("output_sampled/full" + tail).c_str(), run_full)
      ->Iterations(2)
      ->Unit(benchmark::kMillisecond);
  for (Index s : {Index(64), Index(1024), Index(8192)}) {
    const std::string st = tail + "/S" + std::to_string(s);
    benchmark::RegisterBenchmark(
        ("output_sampled/sampled_softmax" + st).c_str(),
        [s](benchmark::State& state) { run_sampled<sml::SampledSoftmaxLoss>(state, s); })
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("output_sampled/nce" + st).c_str(), [s](benchmark::State& state) {
      run_sampled<sml::NceLoss>(state, s);
    })->Unit(benchmark::kMillisecond);
  }
  return true;
}();

}  // namespace
