// Softmax over a vocabulary sharded across workers (threads here; servers in a real system).
//
// A language model's output layer over 1,000,000 tokens is split into 8 shards of 125,000 logits,
// each owned by one worker. No worker ever sees the whole row:
//   1. each worker builds the OnlineNormalizer [max, sum] of its shard (one read of its logits);
//   2. the 8 states (two numbers each) are exchanged and merged: [m1,d1] (+) [m2,d2] =
//      [M, d1 exp(m1 - M) + d2 exp(m2 - M)], in any order;
//   3. each worker writes the probabilities of its own shard from the merged state.
// The program prints the merged log-sum-exp (the log of the partition function, e.g. for a loss)
// and the largest difference from a one-shot Softmax over the whole row, and fails (exit 1) if the
// sharded result is off by more than the accuracy policy allows.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <thread>
#include <vector>

#include <Eigen/Core>

#include <softmaxlab/softmaxlab.hpp>

namespace sml = softmaxlab;

int main() {
  const Eigen::Index vocabulary = 1000000;
  const int shards = 8;
  const Eigen::Index shard_size = vocabulary / shards;

  // Logits of a peaked distribution: mostly N(0, 2), a few hundred strong candidates.
  Eigen::VectorXf logits(vocabulary);
  std::mt19937 gen(2026);
  std::normal_distribution<float> noise(0.0f, 2.0f);
  for (Eigen::Index i = 0; i < vocabulary; ++i)
    logits(i) = noise(gen);
  std::uniform_int_distribution<Eigen::Index> token(0, vocabulary - 1);
  for (int k = 0; k < 300; ++k)
    logits(token(gen)) += 12.0f;

  // 1. Each worker: the normalizer of its shard.
  std::vector<sml::OnlineNormalizer<float>> states(shards);
  std::vector<std::thread> workers;
  for (int s = 0; s < shards; ++s) {
    workers.emplace_back([&, s] { states[s].update(logits.segment(s * shard_size, shard_size)); });
  }
  for (auto& w : workers)
    w.join();
  workers.clear();
  for (int s = 0; s < shards; ++s) {
    std::printf("shard %d: max %9.5f  sum exp(x - max) %14.6f\n", s,
                static_cast<double>(states[s].max()), states[s].sum());
  }

  // 2. Exchange and merge the states (here: in reverse order, to show order does not matter).
  sml::OnlineNormalizer<float> merged;
  for (int s = shards - 1; s >= 0; --s)
    merged.merge(states[s]);

  // 3. Each worker writes its shard's probabilities from the merged state.
  Eigen::VectorXf sharded(vocabulary);
  for (int s = 0; s < shards; ++s) {
    workers.emplace_back([&, s] {
      merged.write(logits.segment(s * shard_size, shard_size),
                   sharded.segment(s * shard_size, shard_size));
    });
  }
  for (auto& w : workers)
    w.join();

  // The one-shot reference and an independent long double log-sum-exp.
  const Eigen::VectorXf one_shot = sml::Softmax()(logits);
  const long double m = logits.maxCoeff();
  long double d = 0;
  for (Eigen::Index i = 0; i < vocabulary; ++i)
    d += std::exp(static_cast<long double>(logits(i)) - m);
  const double lse_exact = static_cast<double>(m + std::log(d));

  // Both results are within 4 eps (1 + |x_i - max|) of the exact value, so they differ by at most
  // twice that: `worst` is the largest difference as a fraction of this allowance (<= 1 passes).
  double max_abs = 0, max_rel_eps = 0, worst = 0;
  const double eps = std::numeric_limits<float>::epsilon();
  const double row_max = static_cast<double>(m);
  for (Eigen::Index i = 0; i < vocabulary; ++i) {
    const double a = sharded(i), b = one_shot(i);
    max_abs = std::max(max_abs, std::fabs(a - b));
    if (b > std::numeric_limits<float>::min()) {
      const double rel = std::fabs(a - b) / (eps * b);
      max_rel_eps = std::max(max_rel_eps, rel);
      worst = std::max(worst, rel / (8.0 * (1.0 + std::fabs(logits(i) - row_max))));
    }
  }
  const double total = sharded.cast<double>().sum();
  std::printf("\nvocabulary %lld in %d shards\n", static_cast<long long>(vocabulary), shards);
  std::printf("merged: max %.6f, log-sum-exp %.9f (long double reference %.9f)\n",
              static_cast<double>(merged.max()), merged.log_sum_exp(), lse_exact);
  std::printf("sharded vs one-shot Softmax: max |difference| %.3g, max relative %.3f eps\n",
              max_abs, max_rel_eps);
  std::printf("sum of the sharded probabilities - 1: %.3g\n", total - 1.0);
  Eigen::Index best = 0;
  sharded.maxCoeff(&best);
  std::printf("most likely token %lld, p = %.6f (one-shot %.6f)\n", static_cast<long long>(best),
              static_cast<double>(sharded(best)), static_cast<double>(one_shot(best)));

  const bool ok =
      worst <= 1.0 && std::fabs(total - 1.0) <= 2e-6
      && std::fabs(merged.log_sum_exp() - lse_exact) <= 4 * eps * (1 + std::fabs(lse_exact));
  std::printf("%s\n", ok ? "OK: sharded softmax matches one-shot within the accuracy policy"
                         : "FAILED: sharded softmax differs beyond the accuracy policy");
  return ok ? 0 : 1;
}
