// gumbel_sampling: what GumbelSoftmax draws. Prints (1) the empirical frequencies of 100,000 hard
// draws next to softmax(logits), (2) one soft sample as the temperature tau anneals from 5 to
// 0.01 (same random words each time), (3) hard versus soft on the same noise, and (4) masking and
// reproducibility with the counter-based generator Philox4x32.
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

#include <softmaxlab/softmaxlab.hpp>

namespace sml = softmaxlab;

int main() {
  Eigen::VectorXf logits(6);
  logits << 1.0f, 2.5f, -0.5f, 0.0f, 2.0f, -2.0f;
  const Eigen::VectorXf p = sml::Softmax()(logits);
  const Eigen::Index k = logits.size();

  // (1) Hard draws, one per row of a batch, with a fixed seed.
  const Eigen::Index draws = 100000;
  Eigen::MatrixXf batch = logits.transpose().replicate(draws, 1);
  sml::Philox4x32 gen(2024);
  const Eigen::MatrixXf one_hot = sml::GumbelSoftmax(1.0, /*hard=*/true).rowwise(batch, gen);
  const Eigen::RowVectorXf freq = one_hot.colwise().sum() / static_cast<float>(draws);
  double chi2 = 0;
  std::printf("(1) %ld hard draws (tau = 1, Philox4x32 seed 2024) against softmax(logits)\n",
              static_cast<long>(draws));
  std::printf("    class  logit   softmax   frequency   (freq - p) / sigma\n");
  for (Eigen::Index i = 0; i < k; ++i) {
    const double sigma = std::sqrt(p(i) * (1 - p(i)) / draws);
    chi2 += (freq(i) - p(i)) * (freq(i) - p(i)) * draws / p(i);
    std::printf("    %5ld  %5.2f   %.5f   %.5f     %+.2f\n", static_cast<long>(i), logits(i), p(i),
                freq(i), (freq(i) - p(i)) / sigma);
  }
  std::printf("    chi-square %.2f with %ld degrees of freedom (5%% critical value 11.07)\n\n",
              chi2, static_cast<long>(k - 1));

  // (2) Annealing: the same words (a copy of the generator) through ever lower temperatures.
  std::printf("(2) one soft sample as tau anneals (same Gumbel noise every time)\n");
  std::printf("    tau     sample                                              max     entropy\n");
  const sml::Philox4x32 start(7);
  for (double tau : {5.0, 2.0, 1.0, 0.5, 0.1, 0.01}) {
    sml::Philox4x32 g = start;
    const Eigen::VectorXf y = sml::GumbelSoftmax(tau)(logits, g);
    double entropy = 0;
    for (Eigen::Index i = 0; i < k; ++i)
      entropy -= y(i) > 0 ? y(i) * std::log(y(i)) : 0.0;
    std::printf("    %-6g [", tau);
    for (Eigen::Index i = 0; i < k; ++i)
      std::printf("%.4f%s", y(i), i + 1 < k ? " " : "]");
    std::printf("   %.4f  %.4f\n", y.maxCoeff(), entropy);
  }
  std::printf("    high tau: close to uniform (entropy -> log %ld = %.4f); low tau: one-hot\n\n",
              static_cast<long>(k), std::log(static_cast<double>(k)));

  // (3) Hard versus soft on the same noise: the hard one-hot sits at the soft sample's argmax.
  std::printf("(3) hard versus soft on the same noise (tau = 0.5)\n");
  int agree = 0;
  const int trials = 1000;
  for (int t = 0; t < trials; ++t) {
    sml::Philox4x32 a(100 + t), b(100 + t);
    const Eigen::VectorXf soft = sml::GumbelSoftmax(0.5)(logits, a);
    const Eigen::VectorXf hard = sml::GumbelSoftmax(0.5, true)(logits, b);
    Eigen::Index soft_at, hard_at;
    soft.maxCoeff(&soft_at);
    hard.maxCoeff(&hard_at);
    agree += soft_at == hard_at;
    if (t < 3) {
      std::printf("    soft [");
      for (Eigen::Index i = 0; i < k; ++i)
        std::printf("%.3f%s", soft(i), i + 1 < k ? " " : "]");
      std::printf("  hard [");
      for (Eigen::Index i = 0; i < k; ++i)
        std::printf("%g%s", hard(i), i + 1 < k ? " " : "]");
      std::printf("\n");
    }
  }
  std::printf("    argmax(soft) == argmax(hard) in %d of %d trials (the straight-through pair)\n\n",
              agree, trials);

  // (4) Masking and reproducibility; sample() returns the index (the Gumbel-max trick).
  Eigen::VectorXf masked = logits;
  masked(1) = masked(4) = -std::numeric_limits<float>::infinity();
  sml::Philox4x32 m(1);
  std::vector<int> counts(static_cast<std::size_t>(k), 0);
  for (int t = 0; t < 10000; ++t)
    ++counts[static_cast<std::size_t>(sml::GumbelSoftmax::sample(masked, m))];
  std::printf("(4) classes 1 and 4 masked (-inf): counts over 10,000 sample() calls:");
  for (int c : counts)
    std::printf(" %d", c);
  sml::Philox4x32 s1(42, /*stream=*/3), s2(42, 3);
  const bool same =
      (sml::GumbelSoftmax()(logits, s1).array() == sml::GumbelSoftmax()(logits, s2).array()).all();
  std::printf("\n    same seed and stream, same sample: %s\n", same ? "yes" : "NO");
  // Any C++ generator works too.
  std::mt19937 mt(5);
  const auto draw = sml::GumbelSoftmax::sample_with_log_prob(logits, mt);
  std::printf("    with std::mt19937: drew class %ld, log p = %.4f (softmax p = %.4f)\n",
              static_cast<long>(draw.index), draw.log_prob, p(draw.index));
  return (chi2 < 20.5 && same && counts[1] == 0 && counts[4] == 0) ? 0 : 1;
}
