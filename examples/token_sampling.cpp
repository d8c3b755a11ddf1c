// token_sampling: next-token sampling over a synthetic vocabulary of 128,256 logits (a language
// model's last layer: a few strongly preferred tokens over a normal background). For each setting
// (temperature, top-k, top-p, min-p, applied in that order) prints the size of the kept set, the
// probability of the most likely token, ten draws with a fixed Philox4x32 seed, and the time per
// token of softmaxlab's Sampler against the baseline users write (softmax, std::sort of every
// index by probability, cumulative sum, draw). Then the five best tokens with their exact
// log-probabilities from top_k_log_softmax. Then decoding with llama.cpp's default chain
// (repetition penalty over the last 64 tokens, top-k 40, top-p 0.95, min-p 0.05, temperature 0.8,
// llama.cpp's order) on a toy model whose logits depend on the previous token, and one speculative
// step: a noisier draft model proposes 4 tokens, Sampler::verify accepts a prefix and emits the
// next token; over 1,000 such steps from one context the first emitted token's frequencies match
// the target chain's probabilities, whatever the draft.
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
  std::printf(
      "Stages: temperature, top-k, top-p, min-p (temperature first, as the baseline);\n"
      "ties at each boundary are kept.\n\n");
  sml::SamplingWorkspace ws;
  Eigen::VectorXf probs(vocabulary);
  std::vector<Index> idx;
  std::mt19937_64 baseline_gen(1);
  for (const Setting& s : settings) {
    const sml::Sampler sampler(sml::SamplerOptions()
                                   .with_order(sml::SamplerOptions::temperature_first_order())
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

  // ---- Decoding with llama.cpp's chain, then one speculative step ----
  // The toy model: the background logits, plus a bonus of 3 for the favourites that "follow" the
  // previous token (a fixed pseudo-random relation), so the context matters.
  const auto model = [&](const std::vector<Index>& context, Eigen::VectorXf& out) {
    out = logits;
    const Index last = context.empty() ? 0 : context.back();
    for (int j = 0; j < 7; ++j) {
      if ((last * 31 + j) % 3 == 0)
        out(favourites[j]) += 3.0f;
    }
  };
  const sml::Sampler chain(sml::SamplerOptions()
                               .with_penalties(1.3, 0.0, 0.0, 64)
                               .with_top_k(40)
                               .with_top_p(0.95)
                               .with_min_p(0.05)
                               .with_temperature(0.8));
  std::printf(
      "\nDecoding 16 tokens with llama.cpp's default chain (repeat penalty 1.3 over 64 "
      "tokens,\ntop-k 40, top-p 0.95, min-p 0.05, temperature 0.8; order penalties, "
      "top-k, top-p, min-p, temperature):\n ");
  std::vector<Index> context;
  Eigen::VectorXf row(vocabulary);
  sml::Philox4x32 decode_gen(7, 0);
  for (int t = 0; t < 16; ++t) {
    model(context, row);
    context.push_back(chain.sample(row, decode_gen, ws, context));
    std::printf(" %ld", static_cast<long>(context.back()));
  }
  std::printf(
      "\n  (each token of the last 64 has its positive logit divided by 1.3: a favourite"
      " that was\n  emitted competes at a lower logit while it stays in the window)\n");

  // One speculative step of k = 4: the draft model sees the logits plus noise and samples with
  // temperature 1.2 and top-k 64 (its own stages); the target rows are the model's logits after
  // the context and the drafts so far.
  constexpr Index k = 4;
  const sml::Sampler draft_sampler(sml::SamplerOptions().with_top_k(64).with_temperature(1.2));
  std::normal_distribution<float> noise(0.0f, 1.0f);
  Eigen::MatrixXf target(k + 1, vocabulary), draft_probs(k, vocabulary);
  Eigen::VectorXi drafts(k);
  const auto speculative_step = [&](sml::Philox4x32& gen) {
    std::vector<Index> c = context;
    for (Index i = 0; i < k; ++i) {
      model(c, row);
      target.row(i) = row.transpose();
      for (int j = 0; j < 7; ++j)
        row(favourites[j]) += noise(rng);
      Eigen::VectorXf q(vocabulary);
      draft_sampler.probabilities(row, q, ws);
      draft_probs.row(i) = q.transpose();
      drafts(i) = static_cast<int>(draft_sampler.sample(row, gen, ws));
      c.push_back(drafts(i));
    }
    model(c, row);
    target.row(k) = row.transpose();
    return chain.verify(target, draft_probs, drafts, gen, ws, context);
  };
  sml::Philox4x32 spec_gen(11, 0);
  const sml::SpeculativeResult r = speculative_step(spec_gen);
  std::printf("\nSpeculative step: drafts %d %d %d %d -> %ld accepted, then token %ld\n", drafts(0),
              drafts(1), drafts(2), drafts(3), static_cast<long>(r.accepted),
              static_cast<long>(r.token));
  // Exactness in numbers: over 1,000 steps, the first emitted token against the chain's p.
  Eigen::VectorXf p(vocabulary);
  model(context, row);
  chain.probabilities(row, p, ws, context);
  std::vector<long> first(static_cast<std::size_t>(vocabulary), 0);
  long accepted = 0;
  const int steps = 1000;
  for (int s = 0; s < steps; ++s) {
    const sml::SpeculativeResult res = speculative_step(spec_gen);
    ++first[static_cast<std::size_t>(res.accepted > 0 ? drafts(0) : res.token)];
    accepted += res.accepted;
  }
  std::printf("Over %d speculative steps: %.2f draft tokens accepted per step; first token:\n",
              steps, double(accepted) / steps);
  for (int j = 0; j < 7; ++j) {
    const Index t = favourites[j];
    if (p(t) > 0 || first[static_cast<std::size_t>(t)] > 0)
      std::printf("  token %6ld  target p %.3f  emitted %.3f\n", static_cast<long>(t), double(p(t)),
                  double(first[static_cast<std::size_t>(t)]) / steps);
  }
  return 0;
}
