// Random and chosen inputs of the tests, reproducible across runs and platforms' libstdc++:
// normal matrices from mt19937, random logit rows with masked (-inf) entries, and FixedWord, the
// generator that drives a sampler at a chosen uniform.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include <Eigen/Core>

namespace softmaxlab_test {

// A rows x cols matrix of independent N(0, scale^2) draws from mt19937(seed), in storage order:
// the random rows and cotangents of the gradient tests, reproducible across runs and platforms'
// libstdc++.
inline Eigen::MatrixXd random_normal(Eigen::Index rows, Eigen::Index cols, unsigned seed,
                                     double scale) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> normal(0.0, scale);
  Eigen::MatrixXd m(rows, cols);
  for (Eigen::Index i = 0; i < m.size(); ++i)
    m(i) = normal(gen);
  return m;
}

// A row of n logits drawn uniformly from [-range, range] with mt19937(seed), each entry masked
// (-inf) with probability masked_fraction: the random rows of the property tests.
template <class Scalar>
Eigen::Matrix<Scalar, Eigen::Dynamic, 1> random_logits(Eigen::Index n, unsigned seed,
                                                       double range = 10,
                                                       double masked_fraction = 0) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> value(-range, range), coin(0.0, 1.0);
  Eigen::Matrix<Scalar, Eigen::Dynamic, 1> x(n);
  for (Eigen::Index i = 0; i < n; ++i) {
    const double v = value(gen);
    x(i) = coin(gen) < masked_fraction ? -std::numeric_limits<Scalar>::infinity()
                                       : static_cast<Scalar>(v);
  }
  return x;
}

// A 64-bit "generator" that always returns the same word, to drive a sampler at a chosen uniform:
// samplers take the word's top 53 bits, so FixedWord{u53 << 11} gives u = u53 * 2^-53 exactly,
// from 0 to 1 - 2^-53.
struct FixedWord {
  using result_type = std::uint64_t;
  std::uint64_t word;
  static constexpr result_type min() { return 0; }
  static constexpr result_type max() { return ~result_type{0}; }
  result_type operator()() const { return word; }
};

}  // namespace softmaxlab_test
