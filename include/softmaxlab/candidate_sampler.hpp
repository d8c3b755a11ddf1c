// softmaxlab: candidate samplers for the sampled output-layer losses (sampled_softmax.hpp): the
// classes a sampled softmax or NCE scores besides the true one, and how often each is expected to
// be drawn (the Q of the log Q correction). TensorFlow's candidate samplers
// (tf.random.log_uniform_candidate_sampler, uniform_candidate_sampler, fixed_unigram_candidate_
// sampler with its `distortion`) and word2vec / fastText's negative-sampling table (unigram counts
// raised to the power 0.75), with TensorFlow's semantics for `unique` and the expected counts.
//
// Base distributions over the classes [0, V) (V = range_max):
// clang-format off
//     log_uniform(V)        P(k) = (log(k + 2) - log(k + 1)) / log(V + 1)   (Zipfian: classes sorted
//                           by decreasing frequency); drawn as k = floor(exp(u log(V + 1))) - 1
//     uniform(V)            P(k) = 1 / V;  drawn as k = floor(u V)
//     unigram(counts, a)    P(k) = c_k^a / sum_j c_j^a (a = 0.75 by default, word2vec's);
//                           drawn by inverse CDF: the first k whose cumulative weight exceeds u W
// clang-format on
// u is uniform in [0, 1) with 53 random bits, from two words of a Philox4x32 (random.hpp).
//
// sample(true_classes, num_sampled, unique, gen) draws num_sampled classes (TensorFlow's
// batch-level sampling: one set shared by every example of the batch):
// clang-format off
//     unique = false   num_sampled independent draws (with replacement); num_tries = num_sampled
//     unique = true    draws until num_sampled distinct classes are found, keeping the first
//                      occurrence of each in draw order; num_tries = the number of draws made
//     expected count   E(k) = P(k) num_sampled                        if num_tries == num_sampled
//                      E(k) = -expm1(num_tries log1p(-P(k)))          otherwise (unique with repeats):
//                            the probability that k occurs among num_tries draws
// clang-format on
// for each true class (true_expected_count) and each sampled class (sampled_expected_count),
// computed in double. The true classes are not avoided (TensorFlow's candidate sampler ops pass
// no avoid set): a sampled class equal to a true one is an "accidental hit" that the loss can
// remove (sampled_softmax.hpp).
//
// Cost: a draw is O(1) (log-uniform, uniform) or O(log V) (unigram, binary search); unique sampling
// needs about sum_{i<S} 1 / (1 - P(first i distinct)) draws, which grows quickly when S nears the
// support of a skewed distribution (coupon collecting: about V log V draws for S = V, uniform).
//
// Randomness: counter-based, so runs reproduce. Each draw takes exactly two 32-bit words of the
// given Philox4x32 (a generator with the same seed, stream and position gives the same classes on
// every machine); nothing else is consumed. No std::random_device anywhere.
//
// Parameters and valid ranges (std::invalid_argument naming the parameter and the value otherwise):
// range_max V >= 1 (log_uniform, uniform); counts: V >= 1 finite entries >= 0 with a positive
// power-weighted total, power finite and >= 0 (0 gives every class weight 1, TensorFlow's
// pow(0, 0) = 1); num_sampled >= 1, and with unique = true at most the number of classes of
// nonzero probability (otherwise the draws could never end); a true class outside [0, V).
//
// Accuracy: P(k) is computed in double (log_uniform by log1p(1 / (k + 1)) / log(V + 1), relative
// error a few eps; unigram c_k^power over a long double total); the drawn distribution equals P
// up to the 2^-53 resolution of u and the rounding of exp (log_uniform, relative ~1e-15 per class)
// or of the double cumulative sums (unigram: absolute ~1e-16 per class).
// The expected counts are the formulas above in double (relative error a few eps against long
// double). Checked in tests/test_sampled_softmax.cpp: "candidate samplers match their
// distributions (chi-square)" (fixed seed, 10^6 draws, statistic below the 0.999 quantile),
// "expected counts match the long double formulas" (relative error < 1e-13) and "unique sampling
// gives distinct classes".
// Source: TensorFlow's candidate samplers (range_sampler, candidate_sampler_ops) and
// candidate_sampling.pdf; Mikolov et al. 2013 (word2vec negative sampling, power 3/4).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "detail/checks.hpp"
#include "detail/common.hpp"
#include "random.hpp"

namespace softmaxlab {

// The candidates sample() draws and their expected counts (see the header's doc block).
struct CandidateSample {
  std::vector<Index> sampled;                  // num_sampled classes in [0, V), in draw order
  std::vector<double> true_expected_count;     // one per true class given to sample()
  std::vector<double> sampled_expected_count;  // one per sampled class
  Index num_tries = 0;                         // draws made (== num_sampled unless unique)
};

// A base distribution over the classes [0, V) and TensorFlow's batch candidate sampling from it:
// see the header's doc block.
class CandidateSampler {
 public:
  // Which base distribution.
  enum class Kind { LogUniform, Uniform, Unigram };
  // The variant's name, as error messages give it.
  static constexpr const char* name = "CandidateSampler";

  // TensorFlow's log_uniform_candidate_sampler over [0, range_max), range_max >= 1.
  static CandidateSampler log_uniform(Index range_max) {
    check_range(range_max);
    CandidateSampler s(Kind::LogUniform, range_max);
    s.log_range_ = std::log(static_cast<double>(range_max) + 1.0);
    return s;
  }
  // TensorFlow's uniform_candidate_sampler over [0, range_max), range_max >= 1.
  static CandidateSampler uniform(Index range_max) {
    check_range(range_max);
    return CandidateSampler(Kind::Uniform, range_max);
  }
  // The unigram-power distribution c_k^power / sum_j c_j^power (word2vec / fastText negative
  // sampling at power 0.75; TensorFlow's fixed_unigram_candidate_sampler with distortion = power).
  // counts: one finite entry >= 0 per class (any container of numbers with size() and []).
  template <class Counts>
  static CandidateSampler unigram(const Counts& counts, double power = 0.75) {
    if (!(power >= 0.0 && std::isfinite(power)))
      detail::fail(name, ": power must be finite and >= 0, but got ", power);
    const Index v = static_cast<Index>(counts.size());
    if (v < 1)
      detail::fail(name, ": counts must have at least one entry, but got ", v);
    CandidateSampler s(Kind::Unigram, v);
    s.cumulative_.resize(static_cast<std::size_t>(v));
    s.weight_.resize(static_cast<std::size_t>(v));
    long double total = 0;
    for (Index k = 0; k < v; ++k) {
      const double c = static_cast<double>(counts[static_cast<std::size_t>(k)]);
      if (!(c >= 0.0 && std::isfinite(c)))
        detail::fail(name, ": counts must be finite and >= 0, but entry ", k, " is ", c);
      const double w = std::pow(c, power);
      s.weight_[static_cast<std::size_t>(k)] = w;
      total += w;
      s.cumulative_[static_cast<std::size_t>(k)] = static_cast<double>(total);
      if (w > 0) {
        s.last_positive_ = k;
        ++s.support_;
      }
    }
    if (!(total > 0 && std::isfinite(static_cast<double>(total))))
      detail::fail(name, ": counts^power must have a finite positive total, but got ",
                   static_cast<double>(total));
    s.total_ = static_cast<double>(total);
    return s;
  }

  // The base distribution this object was built with.
  Kind kind() const { return kind_; }
  // The number of classes V (range_max).
  Index range_max() const { return range_; }
  // The number of classes of nonzero probability (the largest num_sampled for unique sampling).
  Index support() const { return support_; }

  // P(k), the probability of one draw being class k; 0 outside [0, V).
  double probability(Index k) const {
    if (k < 0 || k >= range_)
      return 0.0;
    switch (kind_) {
      case Kind::LogUniform:
        // log(k + 2) - log(k + 1) without cancellation.
        return std::log1p(1.0 / (static_cast<double>(k) + 1.0)) / log_range_;
      case Kind::Uniform:
        return 1.0 / static_cast<double>(range_);
      case Kind::Unigram:
      default:
        return weight_[static_cast<std::size_t>(k)] / total_;
    }
  }

  // One draw from the base distribution, using exactly two words of gen.
  Index draw(Philox4x32& gen) const {
    const std::uint32_t a = gen(), b = gen();
    // 53 random bits: u in [0, 1) on the double grid of step 2^-53.
    const double u = std::ldexp(static_cast<double>((std::uint64_t{a >> 5} << 26) | (b >> 6)), -53);
    Index k = 0;
    switch (kind_) {
      case Kind::LogUniform:
        k = static_cast<Index>(std::exp(u * log_range_)) - 1;
        break;
      case Kind::Uniform:
        k = static_cast<Index>(u * static_cast<double>(range_));
        break;
      case Kind::Unigram:
      default: {
        const double x = u * total_;
        k = static_cast<Index>(std::upper_bound(cumulative_.begin(), cumulative_.end(), x)
                               - cumulative_.begin());
        // u W can round up to W itself; zero-weight classes are never returned.
        return k >= range_ ? last_positive_ : k;
      }
    }
    // Rounding of exp or of u V at the top of the range: clamp to the last class.
    return std::min(std::max<Index>(k, 0), range_ - 1);
  }

  // The expected count of class k among num_sampled candidates drawn in num_tries tries (the doc
  // block's formula, TensorFlow's).
  double expected_count(Index k, Index num_sampled, Index num_tries) const {
    const double p = probability(k);
    if (num_tries == num_sampled)
      return p * static_cast<double>(num_sampled);
    return -std::expm1(static_cast<double>(num_tries) * std::log1p(-p));
  }

  // Draws num_sampled candidates (with replacement, or distinct when unique) and the expected
  // counts of each true class and each candidate. true_classes: any container of integers with
  // size() and [] (std::vector, Eigen integer vector), each in [0, V).
  template <class Labels>
  CandidateSample sample(const Labels& true_classes, Index num_sampled, bool unique,
                         Philox4x32& gen) const {
    check_num_sampled(num_sampled, unique);
    const Index n = static_cast<Index>(true_classes.size());
    for (Index i = 0; i < n; ++i) {
      const long long c = static_cast<long long>(true_classes[i]);
      if (c < 0 || c >= static_cast<long long>(range_))
        detail::fail(name, ": true class ", c, " of entry ", i, " is outside [0, ", range_, ")");
    }
    CandidateSample s;
    s.sampled.reserve(static_cast<std::size_t>(num_sampled));
    if (!unique) {
      for (Index j = 0; j < num_sampled; ++j)
        s.sampled.push_back(draw(gen));
      s.num_tries = num_sampled;
    } else {
      // A bit per class when that is cheap (at most 8 V bits, and draws are the cost anyway).
      std::vector<bool> seen(static_cast<std::size_t>(range_), false);
      while (static_cast<Index>(s.sampled.size()) < num_sampled) {
        const Index k = draw(gen);
        ++s.num_tries;
        if (!seen[static_cast<std::size_t>(k)]) {
          seen[static_cast<std::size_t>(k)] = true;
          s.sampled.push_back(k);
        }
      }
    }
    s.true_expected_count.resize(static_cast<std::size_t>(n));
    for (Index i = 0; i < n; ++i)
      s.true_expected_count[static_cast<std::size_t>(i)] =
          expected_count(static_cast<Index>(true_classes[i]), num_sampled, s.num_tries);
    s.sampled_expected_count.resize(static_cast<std::size_t>(num_sampled));
    for (Index j = 0; j < num_sampled; ++j)
      s.sampled_expected_count[static_cast<std::size_t>(j)] =
          expected_count(s.sampled[static_cast<std::size_t>(j)], num_sampled, s.num_tries);
    return s;
  }

  // Throws unless 1 <= num_sampled, and num_sampled <= support() when unique.
  void check_num_sampled(Index num_sampled, bool unique) const {
    if (num_sampled < 1)
      detail::fail(name, ": num_sampled must be >= 1, but got ", num_sampled);
    if (unique && num_sampled > support_)
      detail::fail(name, ": num_sampled must be <= ", support_,
                   " (the classes of nonzero probability) with unique = true, but got ",
                   num_sampled);
  }

 private:
  CandidateSampler(Kind kind, Index range) : kind_(kind), range_(range), support_(range) {
    if (kind == Kind::Unigram)
      support_ = 0;
  }

  static void check_range(Index range_max) {
    if (range_max < 1)
      detail::fail(name, ": range_max must be >= 1, but got ", range_max);
  }

  Kind kind_;
  Index range_;
  Index support_;
  double log_range_ = 0;            // log(V + 1) (LogUniform)
  std::vector<double> weight_;      // c_k^power (Unigram)
  std::vector<double> cumulative_;  // their running totals, summed in long double (Unigram)
  double total_ = 0;                // their sum (Unigram)
  Index last_positive_ = 0;         // the last class of positive weight (Unigram)
};

}  // namespace softmaxlab
