// token_sampling: next-token sampling over a synthetic vocabulary of 128,256 logits (a language
// model's last layer: a few strongly preferred tokens over a normal background). For each setting
// (temperature, top-k, top-p, min-p, applied in that order) prints the size of the kept set, the
// probability of the most likely token, ten draws with a fixed Philox4x32 seed, and the time per
// token of softmaxlab's Sampler against the baseline users write (softmax, std::sort of every
// index by probability, cumulative sum, draw). Then the five best tokens with their exact
// log-probabilities from top_k_log_softmax.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <vector>

#include <softmaxlab/softmaxlab.hpp>

namespace sml = softmaxlab;
using Index = Eigen::Index;

namespace {

struct Setting {
  const char* name;
  double temperature;
  Index top_k;
  double top_p;
  double min_p;
};

// The hand-written sampler: softmax, full sort, cut, draw.
Index sort_baseline(const Eigen::VectorXf& x, const Setting& s, Eigen::VectorXf& probs,
                    std::vector<Index>& idx, std::mt19937_64& gen) {
  if (s.temperature == 0) {
    Index best;
    x.maxCoeff(&best);
    return best;
  }
  sml::Softmax(s.temperature).apply(x, probs);
  idx.resize(static_cast<std::size_t>(x.size()));
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
    std::size_t j = 1;
    while (j < c && probs(idx[j]) >= s.min_p * probs(idx[0]))
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

template <class Fn>
double microseconds_per_call(int calls, Fn&& fn) {
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < calls; ++i)
    fn();
  const std::chrono::duration<double, std::micro> elapsed =
      std::chrono::steady_clock::now() - start;
  return elapsed.count() / calls;
}

}  // namespace

int main() {
  const Index vocabulary = 128256;
  std::mt19937 rng(14);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  Eigen::VectorXf logits(vocabulary);
  for (Index i = 0; i < vocabulary; ++i)
    logits(i) = normal(rng);
  // A handful of plausible continuations well above the background.
  const Index favourites[] = {464, 1820, 279, 5112, 902, 77, 31000};
  const float boost[] = {13.0f, 12.5f, 12.0f, 11.0f, 11.0f, 10.0f, 9.0f};
  for (int j = 0; j < 7; ++j)
    logits(favourites[j]) = boost[j];

  const Setting settings[] = {
      {"greedy (temperature 0)", 0.0, 0, 1.0, 0.0},
      {"temperature 1 (no truncation)", 1.0, 0, 1.0, 0.0},
      {"temperature 0.8, top-k 40", 0.8, 40, 1.0, 0.0},
      {"top-p 0.95", 1.0, 0, 0.95, 0.0},
      {"min-p 0.05", 1.0, 0, 1.0, 0.05},
      {"temperature 0.8, top-k 40, top-p 0.95, min-p 0.05", 0.8, 40, 0.95, 0.05},
  };

  std::printf("Vocabulary of %ld synthetic logits (normal background, 7 favoured tokens).\n",
              static_cast<long>(vocabulary));
  std::printf("Stages: temperature, top-k, top-p, min-p; ties at each boundary are kept.\n\n");
  sml::SamplingWorkspace ws;
  Eigen::VectorXf probs(vocabulary);
  std::vector<Index> idx;
  std::mt19937_64 baseline_gen(1);
  for (const Setting& s : settings) {
    const sml::Sampler sampler(sml::SamplerOptions()
                                   .with_temperature(s.temperature)
                                   .with_top_k(s.top_k)
                                   .with_top_p(s.top_p)
                                   .with_min_p(s.min_p));
    sampler.probabilities(logits, probs, ws);
    std::printf("%s\n", s.name);
    std::printf("  kept tokens: %ld   largest probability: %.4f   (sum %.7f)\n",
                static_cast<long>(sampler.kept_count(logits, ws)), double(probs.maxCoeff()),
                double(probs.sum()));
    sml::Philox4x32 gen(2026, 14);
    std::printf("  ten draws (Philox4x32 seed 2026, stream 14):");
    for (int d = 0; d < 10; ++d)
      std::printf(" %ld", static_cast<long>(sampler.sample(logits, gen, ws)));
    std::printf("\n");
    Index sink = 0;
    const double ours =
        microseconds_per_call(200, [&] { sink += sampler.sample(logits, gen, ws); });
    const double theirs = microseconds_per_call(
        5, [&] { sink += sort_baseline(logits, s, probs, idx, baseline_gen); });
    std::printf("  per token: Sampler %.1f us, sort baseline %.1f us (%.1fx)%s\n\n", ours, theirs,
                theirs / ours, sink == -1 ? " " : "");
  }

  Eigen::VectorXi best(5);
  Eigen::VectorXf log_probs(5);
  sml::top_k_log_softmax(logits, 5, best, log_probs, ws);
  std::printf("top_k_log_softmax, k = 5 (normalized over all %ld tokens):\n",
              static_cast<long>(vocabulary));
  for (Index j = 0; j < 5; ++j)
    std::printf("  token %6d  logit %6.2f  log p %9.5f  p %.5f\n", best(j), double(logits(best(j))),
                double(log_probs(j)), std::exp(double(log_probs(j))));
  return 0;
}
