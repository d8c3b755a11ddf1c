// softmaxlab: the sampler's options and state (sampler.hpp): SamplerStage, TokenHistory,
// SamplerOptions (every with_* returns a modified copy), MirostatState, SpeculativeResult and
// SamplingWorkspace. The stages' semantics, ranges and errors are in sampler.hpp's doc block;
// tests/test_sampler_chain.cpp and tests/test_sampling.cpp check them.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <type_traits>
#include <utility>
#include <vector>

#include "detail/checks.hpp"
#include "detail/common.hpp"
#include "detail/functor_base.hpp"

namespace softmaxlab {

// The stages of the chain whose order the caller chooses (SamplerOptions::with_order). A stage not
// in the order is not applied, whatever its parameter.
enum class SamplerStage { Penalties, TopNSigma, TopK, TypicalP, TopP, MinP, Temperature, Xtc, Dry };

// Previous tokens of the sequence, oldest first (the penalties read the last penalty_last_n of
// them). A view: the caller keeps the tokens alive during the call. Built from a pointer and a
// count or from any contiguous container of Index (std::vector<Index>, Eigen::Matrix<Index, ...>).
class TokenHistory {
 public:
  TokenHistory() = default;
  // The previous tokens: a pointer and a count (not copied).
  TokenHistory(const Index* tokens, Index size) : data_(tokens), size_(size) {
    if (size < 0 || (size > 0 && tokens == nullptr))
      detail::fail("TokenHistory: size must be >= 0 with non-null tokens, but got ", size);
  }
  template <class C,
            class = std::enable_if_t<std::is_same_v<
                std::remove_cv_t<std::remove_pointer_t<decltype(std::declval<const C&>().data())>>,
                Index>>>
  // The same from a container with data() and size() (std::vector<Index>, an Eigen vector of
  // Index).
  TokenHistory(const C& tokens)  // NOLINT: implicit, so a container can be passed as it is
      : TokenHistory(tokens.data(), static_cast<Index>(tokens.size())) {}
  // The data this object was built with.
  const Index* data() const { return data_; }
  // The size this object was built with.
  Index size() const { return size_; }

 private:
  const Index* data_ = nullptr;
  Index size_ = 0;
};

// The sampler's configuration. Each with_* validates its value (std::invalid_argument naming the
// option and the value) and returns a modified copy, so chains such as
// SamplerOptions().with_top_k(40).with_top_p(0.95) read as before. A bare `o.with_top_k(40);`
// statement, which used to modify o, would now leave o unchanged: the setters are [[nodiscard]],
// so the compiler warns about it (assign the result: o = o.with_top_k(40)).
class SamplerOptions {
 public:
  SamplerOptions() = default;

  // 0 = greedy; otherwise in [2^-100, 2^100] (Softmax's range).
  [[nodiscard]] SamplerOptions with_temperature(double t) const {
    if (t != 0.0)
      detail::check_temperature("SamplerOptions: temperature (or exactly 0 for greedy)", t);
    return set(&SamplerOptions::temperature_, t);
  }
  // 0 = off.
  [[nodiscard]] SamplerOptions with_top_k(Index k) const {
    if (k < 0)
      detail::fail("SamplerOptions: top_k must be >= 0 (0 = off), but got ", k);
    return set(&SamplerOptions::top_k_, k);
  }
  // 1 = off.
  [[nodiscard]] SamplerOptions with_top_p(double p) const {
    check_mass("SamplerOptions: top_p", p);
    return set(&SamplerOptions::top_p_, p);
  }
  // 0 = off.
  [[nodiscard]] SamplerOptions with_min_p(double p) const {
    detail::require_in_range("SamplerOptions: min_p", p, 0.0, std::nextafter(1.0, 0.0),
                             "in [0, 1) (0 = off)");
    return set(&SamplerOptions::min_p_, p);
  }
  // Locally typical sampling's mass, in (0, 1]; 1 = off.
  [[nodiscard]] SamplerOptions with_typical_p(double p) const {
    check_mass("SamplerOptions: typical_p", p);
    return set(&SamplerOptions::typical_p_, p);
  }
  // Top-n-sigma's n: keep z >= max z - n sigma; finite, >= 0 (0 = off).
  [[nodiscard]] SamplerOptions with_top_n_sigma(double n) const {
    detail::require_in_range("SamplerOptions: top_n_sigma", n, 0.0,
                             std::numeric_limits<double>::max(), "finite and >= 0 (0 = off)");
    return set(&SamplerOptions::top_n_sigma_, n);
  }
  // llama.cpp's penalties over the last `last_n` tokens of the history (-1 = all of it):
  // repeat in [2^-100, 2^100] (1 = off), frequency and presence finite (0 = off).
  [[nodiscard]] SamplerOptions with_penalties(double repeat, double frequency, double presence,
                                              Index last_n = 64) const {
    detail::check_temperature("SamplerOptions: repeat_penalty", repeat);
    detail::require_in_range("SamplerOptions: frequency_penalty", frequency,
                             std::numeric_limits<double>::lowest(),
                             std::numeric_limits<double>::max(), "finite");
    detail::require_in_range("SamplerOptions: presence_penalty", presence,
                             std::numeric_limits<double>::lowest(),
                             std::numeric_limits<double>::max(), "finite");
    if (last_n < -1)
      detail::fail(
          "SamplerOptions: penalty_last_n must be >= -1 (-1 = the whole history), but got ",
          last_n);
    SamplerOptions o = *this;
    o.repeat_ = repeat;
    o.frequency_ = frequency;
    o.presence_ = presence;
    o.last_n_ = last_n;
    return o;
  }
  // Adds `bias` to the logit of `token` (entries for one token add up). bias finite or -inf (a
  // ban); token >= 0 (and < V, checked at each call).
  [[nodiscard]] SamplerOptions with_logit_bias(Index token, double bias) const {
    if (token < 0)
      detail::fail("SamplerOptions: logit_bias token must be >= 0, but got ", token);
    if (!(bias < std::numeric_limits<double>::infinity()))
      detail::fail("SamplerOptions: logit_bias must be finite or -inf, but got ", bias,
                   " for token ", token);
    SamplerOptions o = *this;
    o.bias_.emplace_back(token, bias);
    return o;
  }
  // Replaces the whole sparse bias (token, bias) list; the same rules per entry.
  [[nodiscard]] SamplerOptions with_logit_bias(
      const std::vector<std::pair<Index, double>>& entries) const {
    SamplerOptions o = *this;
    o.bias_.clear();
    for (const auto& e : entries)
      o = o.with_logit_bias(e.first, e.second);
    return o;
  }
  // The allowed-token mask as a grammar produces it: keep[i] false bans token i. Its size must be
  // the vocabulary's (checked at each call). An empty vector removes the mask.
  [[nodiscard]] SamplerOptions with_token_mask(std::vector<bool> keep) const {
    SamplerOptions o = *this;
    o.mask_ = std::move(keep);
    o.allowed_.clear();
    o.has_allowed_ = false;
    return o;
  }
  // The allowed-token mask as a list of allowed ids (each >= 0, < V checked at each call); every
  // other token is banned. Replaces a boolean mask.
  [[nodiscard]] SamplerOptions with_allowed_tokens(std::vector<Index> ids) const {
    for (const Index t : ids) {
      if (t < 0)
        detail::fail("SamplerOptions: allowed token ids must be >= 0, but got ", t);
    }
    SamplerOptions o = *this;
    o.allowed_ = std::move(ids);
    o.has_allowed_ = true;
    o.mask_.clear();
    return o;
  }
  // The without token mask this object was built with.
  SamplerOptions without_token_mask() const {
    SamplerOptions o = *this;
    o.mask_.clear();
    o.allowed_.clear();
    o.has_allowed_ = false;
    return o;
  }
  // XTC, "exclude top choices" (llama.cpp's llama_sampler_init_xtc): with probability
  // `probability`, when at least two kept tokens have q >= threshold, every one of them but the
  // least probable is removed. probability in [0, 1] (0 = off), threshold in [0, 1] (> 0.5 = off,
  // as llama.cpp: two tokens cannot both exceed it).
  [[nodiscard]] SamplerOptions with_xtc(double probability, double threshold) const {
    detail::require_in_range("SamplerOptions: xtc_probability", probability, 0.0, 1.0,
                             "in [0, 1] (0 = off)");
    detail::require_in_range("SamplerOptions: xtc_threshold", threshold, 0.0, 1.0,
                             "in [0, 1] (> 0.5 = off)");
    SamplerOptions o = *this;
    o.xtc_probability_ = probability;
    o.xtc_threshold_ = threshold;
    return o;
  }
  // Mirostat v2 (Basu et al. 2021, arXiv 2007.14966; llama.cpp's llama_sampler_init_mirostat_v2):
  // after the chain, keep the tokens of surprise -log2 q_i <= mu (at least the most probable),
  // draw, then mu -= eta (-log2 q_t - tau) with q_t the drawn token's probability. mu is the
  // caller's MirostatState, passed to sample() and probabilities(). tau finite > 0 (target
  // surprise, bits), eta in [0, 1] (learning rate).
  [[nodiscard]] SamplerOptions with_mirostat_v2(double tau, double eta) const {
    detail::require_positive_finite("SamplerOptions: mirostat_tau", tau);
    detail::require_in_range("SamplerOptions: mirostat_eta", eta, 0.0, 1.0, "in [0, 1]");
    SamplerOptions o = *this;
    o.mirostat_ = true;
    o.mirostat_tau_ = tau;
    o.mirostat_eta_ = eta;
    return o;
  }
  // DRY, "don't repeat yourself" (the text-generation-webui sampler as llama.cpp's
  // llama_sampler_dry applies it, with sequence breakers given as token ids): for each token t,
  // L(t) = the longest match between the end of the history window and a segment of the window
  // followed by t, without a breaker in the matched end; if L(t) >= allowed_length, z_t -=
  // multiplier * base^(L(t) - allowed_length). multiplier finite >= 0 (0 = off), base finite >= 1,
  // allowed_length >= 1, last_n >= -1 (-1 = the whole history), breaker ids >= 0.
  [[nodiscard]] SamplerOptions with_dry(double multiplier, double base = 1.75,
                                        Index allowed_length = 2, Index last_n = -1,
                                        std::vector<Index> breakers = {}) const {
    detail::require_in_range("SamplerOptions: dry_multiplier", multiplier, 0.0,
                             std::numeric_limits<double>::max(), "finite and >= 0 (0 = off)");
    detail::require_in_range("SamplerOptions: dry_base", base, 1.0,
                             std::numeric_limits<double>::max(), "finite and >= 1");
    if (allowed_length < 1)
      detail::fail("SamplerOptions: dry_allowed_length must be >= 1, but got ", allowed_length);
    if (last_n < -1)
      detail::fail("SamplerOptions: dry_last_n must be >= -1 (-1 = the whole history), but got ",
                   last_n);
    for (const Index t : breakers) {
      if (t < 0)
        detail::fail("SamplerOptions: dry breaker token ids must be >= 0, but got ", t);
    }
    SamplerOptions o = *this;
    o.dry_multiplier_ = multiplier;
    o.dry_base_ = base;
    o.dry_allowed_length_ = allowed_length;
    o.dry_last_n_ = last_n;
    std::sort(breakers.begin(), breakers.end());
    o.dry_breakers_ = std::move(breakers);
    return o;
  }
  // The chain's order: each stage at most once; a stage left out is not applied.
  [[nodiscard]] SamplerOptions with_order(const std::vector<SamplerStage>& order) const {
    for (std::size_t a = 0; a < order.size(); ++a) {
      if (static_cast<int>(order[a]) < 0 || static_cast<int>(order[a]) > 8)
        detail::fail("SamplerOptions: order holds an unknown stage ", static_cast<int>(order[a]));
      for (std::size_t b = 0; b < a; ++b) {
        if (order[a] == order[b])
          detail::fail("SamplerOptions: order names stage ", static_cast<int>(order[a]),
                       " twice (at positions ", b, " and ", a, ")");
      }
    }
    return set(&SamplerOptions::order_, order);
  }
  // llama.cpp's default order (common_params_sampling::samplers): penalties, DRY, top-n-sigma,
  // top-k, typical-p, top-p, min-p, XTC, temperature. The default.
  static std::vector<SamplerStage> llama_cpp_order() {
    return {SamplerStage::Penalties, SamplerStage::Dry,      SamplerStage::TopNSigma,
            SamplerStage::TopK,      SamplerStage::TypicalP, SamplerStage::TopP,
            SamplerStage::MinP,      SamplerStage::Xtc,      SamplerStage::Temperature};
  }
  // Temperature first (Hugging Face's warper order, and this library's before the chain existed):
  // penalties, DRY, temperature, top-n-sigma, top-k, typical-p, top-p, min-p, XTC.
  static std::vector<SamplerStage> temperature_first_order() {
    return {SamplerStage::Penalties, SamplerStage::Dry,  SamplerStage::Temperature,
            SamplerStage::TopNSigma, SamplerStage::TopK, SamplerStage::TypicalP,
            SamplerStage::TopP,      SamplerStage::MinP, SamplerStage::Xtc};
  }

  // The temperature this object was built with.
  double temperature() const { return temperature_; }
  // The top k this object was built with.
  Index top_k() const { return top_k_; }
  // The top p this object was built with.
  double top_p() const { return top_p_; }
  // The min p this object was built with.
  double min_p() const { return min_p_; }
  // The typical p this object was built with.
  double typical_p() const { return typical_p_; }
  // The top n sigma this object was built with.
  double top_n_sigma() const { return top_n_sigma_; }
  // The repeat penalty this object was built with.
  double repeat_penalty() const { return repeat_; }
  // The frequency penalty this object was built with.
  double frequency_penalty() const { return frequency_; }
  // The presence penalty this object was built with.
  double presence_penalty() const { return presence_; }
  // The penalty last n this object was built with.
  Index penalty_last_n() const { return last_n_; }
  // The logit bias this object was built with.
  const std::vector<std::pair<Index, double>>& logit_bias() const { return bias_; }
  // The token mask this object was built with.
  const std::vector<bool>& token_mask() const { return mask_; }
  // The allowed tokens this object was built with.
  const std::vector<Index>& allowed_tokens() const { return allowed_; }
  // The has allowed tokens this object was built with.
  bool has_allowed_tokens() const { return has_allowed_; }
  // The order this object was built with.
  const std::vector<SamplerStage>& order() const { return order_; }
  // The dry multiplier this object was built with.
  double dry_multiplier() const { return dry_multiplier_; }
  // The dry base this object was built with.
  double dry_base() const { return dry_base_; }
  // The dry allowed length this object was built with.
  Index dry_allowed_length() const { return dry_allowed_length_; }
  // The dry last n this object was built with.
  Index dry_last_n() const { return dry_last_n_; }
  // The dry breakers this object was built with.
  const std::vector<Index>& dry_breakers() const { return dry_breakers_; }  // sorted
  // The xtc probability this object was built with.
  double xtc_probability() const { return xtc_probability_; }
  // The xtc threshold this object was built with.
  double xtc_threshold() const { return xtc_threshold_; }
  // The mirostat v2 this object was built with.
  bool mirostat_v2() const { return mirostat_; }
  // The mirostat tau this object was built with.
  double mirostat_tau() const { return mirostat_tau_; }
  // The mirostat eta this object was built with.
  double mirostat_eta() const { return mirostat_eta_; }

 private:
  double temperature_ = 1.0;
  Index top_k_ = 0;
  double top_p_ = 1.0;
  double min_p_ = 0.0;
  double typical_p_ = 1.0;
  double top_n_sigma_ = 0.0;
  double repeat_ = 1.0;
  double frequency_ = 0.0;
  double presence_ = 0.0;
  Index last_n_ = 64;
  std::vector<std::pair<Index, double>> bias_;
  std::vector<bool> mask_;
  std::vector<Index> allowed_;
  bool has_allowed_ = false;
  double dry_multiplier_ = 0.0;
  double dry_base_ = 1.75;
  Index dry_allowed_length_ = 2;
  Index dry_last_n_ = -1;
  std::vector<Index> dry_breakers_;
  double xtc_probability_ = 0.0;
  double xtc_threshold_ = 0.1;
  // A copy with one member changed: the body of every single-value with_*.
  template <class T, class V>
  SamplerOptions set(T SamplerOptions::*member, V&& value) const {
    SamplerOptions o = *this;
    o.*member = std::forward<V>(value);
    return o;
  }
  // A probability mass cut (top-p, typical-p): in (0, 1], 1 = off.
  static void check_mass(const char* what, double p) {
    detail::require_in_range(what, p, std::nextafter(0.0, 1.0), 1.0, "in (0, 1] (1 = off)");
  }
  bool mirostat_ = false;
  double mirostat_tau_ = 5.0;
  double mirostat_eta_ = 0.1;
  std::vector<SamplerStage> order_ = llama_cpp_order();
};

// Mirostat v2's state, carried by the caller from token to token: mu starts at 2 tau.
struct MirostatState {
  // The running surprise threshold (10 by default, 2 tau from a target).
  double mu = 10.0;
  MirostatState() = default;
  // tau the target surprise; mu starts at 2 tau.
  explicit MirostatState(double tau) : mu(2 * tau) {}
};

// What Sampler::verify returns: `accepted` draft tokens (a prefix of the drafts, in [0, k]) and
// `token`, the one that follows them (a residual draw at the first rejection, or the bonus token
// drawn from the last target row when all k are accepted); -1 when that target row holds a NaN or
// only -inf.
struct SpeculativeResult {
  // The number of draft tokens accepted.
  Index accepted = 0;
  // The token drawn after them: the residual's or the bonus draw.
  Index token = -1;
};

// Scratch memory of the sampler and of top_k_log_softmax, reusable across calls and vocabularies.
class SamplingWorkspace {
 public:
  // The scratch buffers of one scalar type.
  template <class Scalar>
  struct Buffers {
    std::vector<Scalar> row;                        // a contiguous copy of a strided input
    std::vector<Scalar> weight;                     // exp((x_i - m) / T) * 2^64 (large path)
    std::vector<Scalar> heap;                       // the k largest values (min-heap)
    std::vector<Scalar> block_max;                  // the max of each block of kSelectBlock logits
    std::vector<std::pair<Scalar, Index>> cand;     // candidates (logit, index)
    std::vector<double> cand_weight;                // their weights (small path)
    std::vector<Scalar> modified;                   // the row after the logit stages
    std::vector<std::pair<Index, Scalar>> overlay;  // sparse logit stages: (token, new logit)
    bool overlay_on = false;                        // prepare() chose the overlay for this row
    std::vector<Scalar> patch;                      // the overlay's blocks, patched
    std::vector<const Scalar*> block_src;           // where each block's logits are read
  };
  // Internal scratch of the sampler (grown on first use, then reused).
  template <class Scalar>
  Buffers<Scalar>& buffers() {
    if constexpr (std::is_same_v<Scalar, float>) {
      return f_;
    } else {
      return d_;
    }
  }
  // Internal scratch of the sampler (grown on first use, then reused).
  std::vector<double>& histogram() { return histogram_; }
  // Internal scratch of the sampler (grown on first use, then reused).
  std::vector<double>& chain() { return chain_; }  // the general path's logits
  // Internal scratch of the sampler (grown on first use, then reused).
  std::vector<Index>& tokens() { return tokens_; }  // penalty windows, kept ids
  // Internal scratch of the sampler (grown on first use, then reused).
  std::vector<Index>& history() { return history_; }  // verify's history with the drafts
  // Internal scratch of the sampler (grown on first use, then reused).
  std::vector<double>& scores() { return scores_; }  // verify's row normalizers
  // Internal scratch of the sampler (grown on first use, then reused).
  std::vector<std::pair<double, Index>>& keyed() { return keyed_; }  // the general path's set
  // Internal scratch of the sampler (grown on first use, then reused).
  std::vector<std::pair<Index, double>>& branch(int i) { return branch_[i]; }  // XTC's branches

 private:
  std::vector<std::pair<Index, double>> branch_[3];
  std::vector<std::pair<double, Index>> keyed_;
  std::vector<double> chain_;
  std::vector<Index> tokens_;
  std::vector<Index> history_;
  std::vector<double> scores_;
  Buffers<float> f_;
  Buffers<double> d_;
  std::vector<double> histogram_;
};

}  // namespace softmaxlab
