// softmaxlab: token sampling as inference engines chain it (penalties, logit bias, token masks,
// top-n-sigma, top-k, typical-p, top-p, min-p, temperature; exact draws), exact speculative
// verification, and top-k log-probabilities, without sorting the vocabulary on the common paths.
//
//   Sampler s(SamplerOptions().with_penalties(1.1, 0, 0, 64).with_top_k(40).with_top_p(0.95)
//                 .with_min_p(0.05).with_temperature(0.8));      // llama.cpp's default chain
//   Index t = s.sample(logits, gen[, workspace[, history]]);    // one token of a row of V logits
//   s.probabilities(logits, probs[, workspace[, history]]);     // the exact distribution drawn
//   from s.kept_count(logits[, workspace[, history]]);               // the size of its support
//   s.sample_rowwise(L, gen, tokens[, workspace]);              // one token per row, in order
//   s.sample_rowwise_philox(L, seed, tokens[, first_stream]);   // per-row Philox streams, threads
//   SpeculativeResult r = s.verify(target_logits, draft_probs, draft_tokens, gen[, ws[, history]]);
//   top_k_log_softmax(logits, k, indices, log_probs); top_k_log_softmax_rowwise(L, k, I, LP);
// history: the previous tokens (TokenHistory: a pointer and a count, or a std::vector<Index> or
// Eigen vector of Index), read only by the penalties.
//
// Logit stages, applied first, in this order, to a copy of the row (O(entries) each beyond the
// copy; a boolean mask O(V)):
//   a. token mask: with_token_mask(keep) (bool per token, false = banned) or
//      with_allowed_tokens(ids) (every other token banned): a banned logit becomes -inf (a NaN in
//      a banned entry of a boolean mask stays, so the row still reads as NaN; the allowed-ids form
//      reads only the allowed entries);
//   b. logit bias: with_logit_bias(token, b): x_t += b; b = -inf bans t (even a +inf logit). A
//      finite logit pushed beyond the type's range by a bias or a penalty is clamped to the largest
//      finite value of its sign.
// Chain stages, in the order with_order() gives (default llama_cpp_order(): penalties, DRY,
// top-n-sigma, top-k, typical-p, top-p, min-p, XTC, temperature, the order of llama.cpp's
// common_params_sampling::samplers; temperature_first_order() puts temperature third, after the
// penalties and DRY). A stage left out of the order is not applied. Each acts on the logits z and
// the kept set left by the previous ones; q = softmax(z) over the kept set (exact rules, exact
// arithmetic):
//   - penalties (llama_sampler_penalties_apply's rule): for each token t that occurs c > 0 times
//     among the last penalty_last_n tokens of the history (-1 = all of it): z_t = z_t / repeat if
//     z_t > 0, else z_t * repeat; then z_t -= c * frequency + presence. Cost O(w log w) for a
//     window of w tokens, never a pass over V.
//   - DRY (with_dry; the text-generation-webui sampler as llama.cpp applies it, breakers given as
//     token ids rather than strings): for each token t, L(t) = the longest match between the end
//     of the history window and a segment of it followed by t, no breaker in the matched end;
//     z_t -= multiplier * base^(L(t) - allowed_length) when L(t) >= allowed_length. O(w L).
//   - temperature T: z = z / T. T = 0 means greedy: the first index of the largest logit after
//     the logit stages, the penalties and DRY, probability 1 (the other stages play no part).
//   - top-n-sigma n (Tang et al. 2024, arXiv 2411.07641; llama.cpp's semantics): over the kept
//     tokens, sigma = the population standard deviation of z; keep z >= max z - n sigma.
//   - top-k (k > 0; 0 = off): keep every token whose z is >= the k-th largest z (ties at the
//     boundary kept, so more than k tokens may survive).
//   - typical-p (Meister et al. 2023, arXiv 2202.00666; p in (0, 1], 1 = off): with H the entropy
//     of q, sort the kept tokens by |-log q_i - H| (ties by index); keep the smallest prefix whose
//     mass is >= p, plus the tokens whose score ties the last one's.
//   - top-p (p in (0, 1]; 1 = off): sort the kept tokens by decreasing q; keep the smallest prefix
//     whose sum is >= p, plus every token tied with the last one of that prefix.
//   - min-p (in [0, 1); 0 = off): keep the tokens with q_i >= min_p * max_j q_j.
//   - XTC (llama.cpp's llama_sampler_xtc semantics; probability pi, threshold t <= 0.5): with
//     probability pi, when at least two kept tokens have q >= t, all of them but the least
//     probable (ties by index) are removed. probabilities() returns the exact mixture
//     (1 - pi) q_without + pi q_with of the chain's two outcomes, and the draw takes one token
//     from it (llama.cpp draws XTC's coin with its own generator: the same law).
// Then, when with_mirostat_v2(tau, eta) is set (Basu et al. 2021, arXiv 2007.14966; llama.cpp's
// llama_sampler_mirostat_v2): keep the tokens of surprise -log2 q_i <= mu (at least the most
// probable), mu read from the caller's MirostatState; sample(x, gen, ws, history, state) then
// updates mu -= eta (-log2 q_t - tau) with q_t the drawn token's probability. To reproduce
// llama.cpp's mirostat mode (temperature, then mirostat) leave the other stages off.
// Paths: the fast paths below serve the orders [penalties] [DRY] [top-n-sigma] then top-k, top-p,
// min-p in this relative order, with temperature before top-p and min-p, or after both (llama.cpp's
// order; then on the heap path only: 0 < k <= 1024); penalties, DRY and top-n-sigma run on the copy
// of the row (top-n-sigma: two passes over V). Any other order, typical-p, XTC and mirostat take
// the general path: the stages one by one in double with sorts, O(V log V) (XTC: twice), and
// fast_path() says which.
// Except with typical-p, the token with the largest logit survives every stage, so the kept set is
// never empty; typical-p keeps at least one token. The draw
// is inverse-CDF on one 53-bit uniform u in [0, 1): token t is the first (small path: in order of
// decreasing probability, ties by index; large path: by index) whose cumulative weight exceeds
// u * total. A token to which probabilities() gives 0 (a -inf logit, a banned token, or a weight
// that underflows in the output type) is never drawn, for any u in [0, 1) and any option: the walk
// returns only tokens of positive reported probability, and when rounding leaves u * total beyond
// the running sum it returns the last such token (tests/test_replayed_faults.cpp, "Sampler never
// draws a token of probability 0").
//
// Algorithm (no sort of the vocabulary):
//   - m = max x (NaN-propagating, as Softmax);
//   - top-k with k <= 1024 (the "heap path", named after the streaming heap it used before; the
//     only pass over V is the first): one vectorized pass takes the row max and the max of every
//     block of 64 logits (the max pass of Softmax; no exp, no store of V values). A threshold tau
//     with at least k block maxima >= tau, hence at most the k-th largest logit, is found by
//     bisection on branch-free counts over the V/64 block maxima, and only the blocks whose max is
//     >= tau (about k to 2k of them) are read to gather every logit >= tau, a superset of the
//     top-k set (detail::top_k_candidates states why it is exact). Only those tokens are sorted,
//     the k-th value read off, and exponentiated (in double) and cut by top-p and min-p: the
//     "softmax fused with top-k" of Milakov & Gimelshein (arXiv 1805.02867), where the whole row's
//     normalizer is not needed because top-k renormalizes. Sparse logit stages (bias, penalties,
//     DRY) patch the few blocks they touch instead of copying the row;
//   - otherwise (k = 0 or k > 1024, k-th value from std::nth_element): one pass stores
//     w_i = exp((x_i - m) / T) with the Softmax kernel (detail/kernels.hpp), a histogram of the
//     weights over 2048 buckets of width 1/64 in (m - x_i) / T finds the bucket in which the top-p
//     prefix reaches p, and only that bucket's tokens are sorted. Masses are summed in double (long
//     double for double logits);
//   - temperature last (llama.cpp's order) on the heap path: the candidates are cut on their
//     T = 1 weights, then the kept ones are reweighted at T;
//   - the general path: the stages in order on double logits, with std::sort where a stage needs
//     an order (top-k, typical-p, top-p) and long double sums.
// Cost per token: O(V) with small constants on the fast paths, against O(V log V) for a sort
// (bench_sampling.cpp measures every stage and llama.cpp's default chain).
//
// Accuracy: the kept set is the exact rule's except when a cumulative sum, a min-p ratio, a
// typical-p score or a top-n-sigma threshold lies within a few eps of its boundary (rounding
// decides there). probabilities() is within 4 eps (1 + |z_i - max z|) relative of the exact value
// of the chain applied to the logits after the logit stages, which are held in the logits' type
// (a bias or a penalty rounds the modified logit once: a further relative error of at most
// 0.5 eps |x| / T in the probability); tests/test_sampling.cpp and tests/test_sampler_chain.cpp
// measure it against sort-based long-double implementations and chi-square test the draws.
//
// Random numbers: u is built from two 32-bit words (high word first) of a 32-bit generator such as
// Philox4x32 or std::mt19937, from one word of a 64-bit one (std::mt19937_64), else from
// std::uniform_int_distribution. With Philox4x32 the same seed, stream and position give the same
// u on every machine, hence the same token, except when u * total falls within the weights'
// rounding (a few ulps) of a cumulative boundary, where builds with a different exp (SIMD width,
// libm) may pick the neighbouring token. Each sample() consumes exactly two words (none for
// greedy, NaN or empty rows).
//
// Special values: a NaN anywhere makes sample() return -1 and probabilities() a NaN row; a row of
// only -inf (or an empty row) returns -1 and probabilities 0; k > 0 logits equal to +inf share the
// mass (1/k each, the limit of softmax), the others get 0.
//
// Outputs (probs, tokens, indices, log_probs): a const Matrix does not compile; pass a view/block.
// Errors (std::invalid_argument, naming the parameter and the value): temperature not 0 and not in
// [2^-100, 2^100] (NaN included); top_k < 0; top_p or typical_p not in (0, 1]; min_p not in
// [0, 1); top_n_sigma negative or not finite; repeat_penalty not in [2^-100, 2^100]; frequency or
// presence penalty not finite; penalty_last_n < -1; a logit_bias of +inf or NaN, or a negative
// token id (bias, allowed ids); an order naming a stage twice; at each call: a token mask whose
// size is not V, an allowed id or bias token >= V, a history token of the penalty window outside
// [0, V); verify's arguments (see there); top_k_log_softmax's k < 0; outputs of the wrong size; a
// matrix where a vector is expected.
//
// Allocation: the forms taking a SamplingWorkspace allocate only while the workspace grows to the
// largest vocabulary seen; later calls allocate nothing. The forms without one use a local
// workspace (allocating). A workspace must not be shared by concurrent calls. SamplerOptions
// holds vectors (bias, mask, order): copying options or constructing a Sampler allocates.
//
// Speculative verification: see Sampler::verify (exact; tests/test_sampler_chain.cpp).
//
// References: the stage rules of Hugging Face Transformers' TopK/TopP/MinP/Typical logits
// warpers and llama.cpp's samplers (src/llama-sampling.cpp: penalties, top-n-sigma, typical;
// ties fixed here); Holtzman et al. 2020 (nucleus sampling, arXiv 1904.09751); Nguyen et al. 2024
// (min-p, arXiv 2407.01082); Leviathan et al. 2023 (arXiv 2211.17192) and Chen et al. 2023
// (arXiv 2302.01318) for speculative sampling. Tests: tests/test_sampling.cpp (the original four
// stages, temperature first), tests/test_sampler_chain.cpp (every stage and chains against a
// sort-based long double reference, verify), tests/test_replayed_faults.cpp (zero-probability
// tokens never drawn), tests/test_sampler_topk_selection.cpp (the heap path's top-k selection at
// its boundary cases, verify's draft-row check).
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
#include "detail/kernels.hpp"
#include "random.hpp"

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
  TokenHistory(const Index* tokens, Index size) : data_(tokens), size_(size) {
    if (size < 0 || (size > 0 && tokens == nullptr))
      detail::fail("TokenHistory: size must be >= 0 with non-null tokens, but got ", size);
  }
  template <class C,
            class = std::enable_if_t<std::is_same_v<
                std::remove_cv_t<std::remove_pointer_t<decltype(std::declval<const C&>().data())>>,
                Index>>>
  TokenHistory(const C& tokens)  // NOLINT: implicit, so a container can be passed as it is
      : TokenHistory(tokens.data(), static_cast<Index>(tokens.size())) {}
  const Index* data() const { return data_; }
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

  double temperature() const { return temperature_; }
  Index top_k() const { return top_k_; }
  double top_p() const { return top_p_; }
  double min_p() const { return min_p_; }
  double typical_p() const { return typical_p_; }
  double top_n_sigma() const { return top_n_sigma_; }
  double repeat_penalty() const { return repeat_; }
  double frequency_penalty() const { return frequency_; }
  double presence_penalty() const { return presence_; }
  Index penalty_last_n() const { return last_n_; }
  const std::vector<std::pair<Index, double>>& logit_bias() const { return bias_; }
  const std::vector<bool>& token_mask() const { return mask_; }
  const std::vector<Index>& allowed_tokens() const { return allowed_; }
  bool has_allowed_tokens() const { return has_allowed_; }
  const std::vector<SamplerStage>& order() const { return order_; }
  double dry_multiplier() const { return dry_multiplier_; }
  double dry_base() const { return dry_base_; }
  Index dry_allowed_length() const { return dry_allowed_length_; }
  Index dry_last_n() const { return dry_last_n_; }
  const std::vector<Index>& dry_breakers() const { return dry_breakers_; }  // sorted
  double xtc_probability() const { return xtc_probability_; }
  double xtc_threshold() const { return xtc_threshold_; }
  bool mirostat_v2() const { return mirostat_; }
  double mirostat_tau() const { return mirostat_tau_; }
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
  double mu = 10.0;
  MirostatState() = default;
  explicit MirostatState(double tau) : mu(2 * tau) {}
};

// What Sampler::verify returns: `accepted` draft tokens (a prefix of the drafts, in [0, k]) and
// `token`, the one that follows them (a residual draw at the first rejection, or the bonus token
// drawn from the last target row when all k are accepted); -1 when that target row holds a NaN or
// only -inf.
struct SpeculativeResult {
  Index accepted = 0;
  Index token = -1;
};

// Scratch memory of the sampler and of top_k_log_softmax, reusable across calls and vocabularies.
class SamplingWorkspace {
 public:
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
  template <class Scalar>
  Buffers<Scalar>& buffers() {
    if constexpr (std::is_same_v<Scalar, float>) {
      return f_;
    } else {
      return d_;
    }
  }
  std::vector<double>& histogram() { return histogram_; }
  std::vector<double>& chain() { return chain_; }     // the general path's logits
  std::vector<Index>& tokens() { return tokens_; }    // penalty windows, kept ids
  std::vector<Index>& history() { return history_; }  // verify's history with the drafts
  std::vector<double>& scores() { return scores_; }   // verify's row normalizers
  std::vector<std::pair<double, Index>>& keyed() { return keyed_; }  // the general path's set
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

namespace detail {

// A 53-bit uniform in [0, 1) from any UniformRandomBitGenerator (see the doc block).
template <class Gen>
double uniform53(Gen& gen) {
  using R = typename Gen::result_type;
  constexpr auto range = static_cast<unsigned long long>(Gen::max() - Gen::min());
  std::uint64_t bits;
  if constexpr (range == 0xFFFFFFFFull) {
    const std::uint64_t hi = static_cast<std::uint32_t>(static_cast<R>(gen() - Gen::min()));
    const std::uint64_t lo = static_cast<std::uint32_t>(static_cast<R>(gen() - Gen::min()));
    bits = hi << 32 | lo;
  } else if constexpr (range == ~0ull) {
    bits = static_cast<std::uint64_t>(gen() - Gen::min());
  } else {
    std::uniform_int_distribution<std::uint64_t> words(0, ~std::uint64_t{0});
    bits = words(gen);
  }
  return static_cast<double>(bits >> 11) * 0x1p-53;
}

// Contiguous view of a 1-D Eigen input: its own storage when it has unit stride, else a copy in
// `row` (no allocation once `row` is large enough).
template <class Scalar, class XprX>
const Scalar* contiguous_row(const Eigen::DenseBase<XprX>& x, std::vector<Scalar>& row) {
  if constexpr (has_direct_access_v<XprX>) {
    const auto& xd = x.derived();
    const Index stride = xd.rows() == 1 ? xd.colStride() : xd.rowStride();
    if (stride == 1 || xd.size() <= 1)
      return xd.data();
  }
  if (row.size() < static_cast<std::size_t>(x.size()))
    row.resize(static_cast<std::size_t>(x.size()));
  for (Index i = 0; i < x.size(); ++i)
    row[static_cast<std::size_t>(i)] = x.derived().coeff(i);
  return row.data();
}

inline constexpr Index kSelectBlock = 64;

// The max of each block of kSelectBlock logits (the last block may be shorter) into `out`, and
// the row's max (NaN when the row holds a NaN): one vectorized pass, the max pass of Softmax with
// a stop every 64 logits, that lets the selection passes skip every block that cannot hold a
// candidate. Each block's packets are reduced by predux_max (a few shuffles), not lane by lane:
// the lane loop cost as much as a whole Softmax pass. predux_max may drop a NaN, so the max of a
// block holding a NaN is unspecified; the row's max, accumulated NaN-propagating, reports it, and
// the callers read the block maxima only for rows without NaN.
template <class Scalar>
Scalar block_maxima(const Scalar* x, Index n, std::vector<Scalar>& out) {
  using namespace Eigen::internal;
  using Packet = PacketOf<Scalar>;
  constexpr int P = kPacketSize<Scalar>;
  static_assert(kSelectBlock % (2 * P) == 0, "a block must hold an even number of packets");
  const Index blocks = (n + kSelectBlock - 1) / kSelectBlock;
  out.resize(static_cast<std::size_t>(blocks));
  Packet row = pset1<Packet>(-std::numeric_limits<Scalar>::infinity());
  Index b = 0;
  for (; (b + 1) * kSelectBlock <= n; ++b) {
    const Scalar* xb = x + b * kSelectBlock;
    Packet p0 = ploadu<Packet>(xb), p1 = ploadu<Packet>(xb + P);
    for (Index j = 2 * P; j < kSelectBlock; j += 2 * P) {
      p0 = pmax<Eigen::PropagateNaN>(p0, ploadu<Packet>(xb + j));
      p1 = pmax<Eigen::PropagateNaN>(p1, ploadu<Packet>(xb + j + P));
    }
    const Packet pb = pmax<Eigen::PropagateNaN>(p0, p1);
    row = pmax<Eigen::PropagateNaN>(row, pb);
    out[static_cast<std::size_t>(b)] = predux_max(pb);
  }
  alignas(64) Scalar lanes[P];
  pstore(lanes, row);
  Scalar m = lanes[0];
  for (int k = 1; k < P; ++k)
    m = (lanes[k] != lanes[k] || lanes[k] > m) ? lanes[k] : m;
  if (b < blocks) {
    const Scalar bm = max_propagate_nan(x + b * kSelectBlock, n - b * kSelectBlock);
    out[static_cast<std::size_t>(b)] = bm;
    m = (bm != bm || bm > m) ? bm : m;
  }
  return m;
}

// Offers v to the min-heap of the k largest values seen (heap.front() its smallest).
template <class Scalar>
void offer_to_heap(std::vector<Scalar>& heap, Index k, Scalar v) {
  const auto greater = std::greater<Scalar>();
  if (static_cast<Index>(heap.size()) < k) {
    heap.push_back(v);
    std::push_heap(heap.begin(), heap.end(), greater);
  } else if (v > heap.front()) {
    std::pop_heap(heap.begin(), heap.end(), greater);
    heap.back() = v;
    std::push_heap(heap.begin(), heap.end(), greater);
  }
}

// The k-th largest finite value of x (k >= 1, no NaN), or the smallest finite value when fewer
// than k are finite; -inf when none is. A min-heap of the k largest values; once it is full, a
// block whose max is <= its smallest value is skipped without being read.
template <class Scalar>
Scalar kth_largest(const Scalar* x, Index n, Index k, const std::vector<Scalar>& block_max,
                   std::vector<Scalar>& heap, const Scalar* const* src = nullptr) {
  const Scalar inf = std::numeric_limits<Scalar>::infinity();
  heap.clear();
  if (heap.capacity() < static_cast<std::size_t>(k))
    heap.reserve(static_cast<std::size_t>(k));
  for (Index i = 0, b = 0; i < n; i += kSelectBlock, ++b) {
    const Index end = std::min(n, i + kSelectBlock);
    if (static_cast<Index>(heap.size()) == k
        && block_max[static_cast<std::size_t>(b)] <= heap.front())
      continue;
    const Scalar* xb = src != nullptr ? src[b] : x + i;  // this block's logits
    for (Index j = i; j < end; ++j) {
      const Scalar v = xb[j - i];
      if (v != -inf)
        offer_to_heap(heap, k, v);
    }
  }
  return heap.empty() ? -inf : heap.front();
}

// Appends (x_i, i) for every x_i >= threshold, skipping blocks by their max. src (optional):
// where each block's logits are read (patched blocks of a sparse overlay), else x.
template <class Scalar>
void gather_at_least(const Scalar* x, Index n, Scalar threshold,
                     const std::vector<Scalar>& block_max,
                     std::vector<std::pair<Scalar, Index>>& out,
                     const Scalar* const* src = nullptr) {
  out.clear();
  for (Index i = 0, b = 0; i < n; i += kSelectBlock, ++b) {
    if (block_max[static_cast<std::size_t>(b)] < threshold)
      continue;
    const Index end = std::min(n, i + kSelectBlock);
    const Scalar* xb = src != nullptr ? src[b] : x + i;
    for (Index j = i; j < end; ++j) {
      if (xb[j - i] >= threshold)
        out.emplace_back(xb[j - i], j);
    }
  }
}

// Decreasing logit, then increasing index: a deterministic order of the candidates.
template <class Scalar>
bool by_decreasing_logit(const std::pair<Scalar, Index>& a, const std::pair<Scalar, Index>& b) {
  return a.first > b.first || (a.first == b.first && a.second < b.second);
}

// The number of entries of a >= t, on packets and without branches (the count per lane is exact
// in Scalar below 2^24).
template <class Scalar>
Index count_at_least(const Scalar* a, Index n, Scalar t) {
  using namespace Eigen::internal;
  using Packet = PacketOf<Scalar>;
  constexpr int P = kPacketSize<Scalar>;
  const Packet pt = pset1<Packet>(t), one = pset1<Packet>(Scalar(1));
  Packet acc = pset1<Packet>(Scalar(0));
  Index i = 0;
  for (; i + P <= n; i += P)
    acc = padd(acc, pand(pcmp_le(pt, ploadu<Packet>(a + i)), one));
  Index c = static_cast<Index>(predux(acc));
  for (; i < n; ++i)
    c += a[i] >= t ? 1 : 0;
  return c;
}

// The candidates of top-k in `out`: (x_i, i) for every finite x_i >= the k-th largest finite
// value (every finite x_i when fewer than k are finite), sorted by decreasing logit, then index;
// ties at the k-th value are all kept. k >= 1, no NaN and no +inf in x. Exact, with the block
// maxima as the filter: when at least k block maxima are >= tau, they are k entries at distinct
// positions, so the k-th largest entry is >= tau; and an entry >= tau lies in a block whose max is
// >= tau. Gathering the finite entries >= tau of those blocks therefore yields every entry >= the
// k-th largest, and the k-th of them in decreasing order is the k-th largest of the row. tau is
// found by bisection on the block maxima's counts (branch-free passes over V / kSelectBlock
// values: a selection by comparisons mispredicted a branch per block maximum and cost as much as
// the pass over the row), until at most 2k blocks are >= tau; the gather then reads about k to 2k
// blocks when the large logits are spread over the row, and all of V only when most blocks share
// the same max (e.g. a constant row) or there are fewer than k blocks; then the kept entries
// alone are sorted.
// src (optional): where each block's logits are read.
template <class Scalar>
void top_k_candidates(Index n, Index k, const std::vector<Scalar>& block_max,
                      std::vector<std::pair<Scalar, Index>>& out, const Scalar* x,
                      const Scalar* const* src = nullptr) {
  const Scalar inf = std::numeric_limits<Scalar>::infinity();
  const Scalar* bmax = block_max.data();
  const auto blocks = static_cast<Index>(block_max.size());
  // lo, hi: the smallest finite and the largest block max (packets: -inf lanes read as +inf for
  // the min).
  using namespace Eigen::internal;
  using Packet = PacketOf<Scalar>;
  constexpr int P = kPacketSize<Scalar>;
  const Packet ninf = pset1<Packet>(-inf), pinf = pset1<Packet>(inf);
  Packet pmn = pinf, pmx = ninf;
  Index i0 = 0;
  for (; i0 + P <= blocks; i0 += P) {
    const Packet p = ploadu<Packet>(bmax + i0);
    pmx = pmax(pmx, p);
    pmn = pmin(pmn, pselect(pcmp_eq(p, ninf), pinf, p));
  }
  Scalar lo = predux_min(pmn), hi = predux_max(pmx);
  for (; i0 < blocks; ++i0) {
    lo = bmax[i0] > -inf && bmax[i0] < lo ? bmax[i0] : lo;
    hi = bmax[i0] > hi ? bmax[i0] : hi;
  }
  // Fewer than k finite blocks: every finite entry is a candidate. Else lo keeps count >= k, hi
  // (while above lo) count < k.
  Scalar tau = -inf;
  if (hi > -inf && count_at_least(bmax, blocks, lo) >= k) {
    if (count_at_least(bmax, blocks, hi) >= k) {
      lo = hi;
    } else {
      for (int step = 0; step < 64; ++step) {
        const Scalar mid = lo / 2 + hi / 2;
        if (!(mid > lo && mid < hi))
          break;
        const Index c = count_at_least(bmax, blocks, mid);
        if (c >= k) {
          lo = mid;
          if (c <= 2 * k)
            break;
        } else {
          hi = mid;
        }
      }
    }
    tau = lo;
  }
  // The gather: a packet compare skips the packets of a block without an entry >= tau (a read
  // block holds about one candidate).
  const Packet ptau = pset1<Packet>(tau);
  // The blocks to read are known before any is read: their cache lines are requested first, so
  // that their latencies overlap (the row may have left the cache since block_maxima read it).
  for (Index i = 0, b = 0; i < n; i += kSelectBlock, ++b) {
    const Scalar bm = block_max[static_cast<std::size_t>(b)];
    if (bm < tau || bm == -inf)
      continue;
    const Scalar* xb = src != nullptr ? src[b] : x + i;
    for (std::uintptr_t off = 0; off < kSelectBlock * sizeof(Scalar); off += 64)
      prefetch_read(xb, off);
  }
  out.clear();
  for (Index i = 0, b = 0; i < n; i += kSelectBlock, ++b) {
    const Scalar bm = block_max[static_cast<std::size_t>(b)];
    if (bm < tau || bm == -inf)
      continue;
    const Index end = std::min(n, i + kSelectBlock);
    const Scalar* xb = (src != nullptr ? src[b] : x + i) - i;  // xb[j]: entry j
    for (Index j = i; j < end; j += P) {
      const Index stop = std::min(end, j + P);
      if (stop - j == P && !predux_any(pcmp_le(ptau, ploadu<Packet>(xb + j))))
        continue;
      for (Index l = j; l < stop; ++l) {
        if (xb[l] >= tau && xb[l] > -inf)
          out.emplace_back(xb[l], l);
      }
    }
  }
  // The k-th in decreasing order by nth_element (O(gathered)); after it every entry past k - 1 is
  // <= the k-th value, and those equal to it (ties) join the kept prefix, then only that is sorted
  // (a gather of all V when fewer than k blocks exist, e.g. k = 1024 and V = 32,000).
  if (static_cast<Index>(out.size()) > k) {
    const auto kth_at = out.begin() + (k - 1);
    std::nth_element(out.begin(), kth_at, out.end(), by_decreasing_logit<Scalar>);
    const Scalar kth = kth_at->first;
    out.erase(
        std::partition(kth_at + 1, out.end(), [kth](const auto& e) { return e.first == kth; }),
        out.end());
  }
  std::sort(out.begin(), out.end(), by_decreasing_logit<Scalar>);
}

// verify's check of a draft row in one vectorized pass: returns whether every q_i is in [0, 1] (a
// NaN fails) and sets `sum` to their sum (Kahan-compensated per lane: about one rounding of
// Scalar, where the tolerance checked is 1e-3).
template <class Scalar>
bool probability_row_check(const Scalar* q, Index n, double& sum) {
  using namespace Eigen::internal;
  using Packet = PacketOf<Scalar>;
  constexpr int P = kPacketSize<Scalar>;
  Packet lo = pset1<Packet>(Scalar(0)), hi = lo;
  CompensatedSum<Scalar> s0, s1;
  Index i = 0;
  for (; i + 2 * P <= n; i += 2 * P) {
    const Packet a = ploadu<Packet>(q + i), c = ploadu<Packet>(q + i + P);
    lo = pmin<Eigen::PropagateNaN>(lo, pmin<Eigen::PropagateNaN>(a, c));
    hi = pmax<Eigen::PropagateNaN>(hi, pmax<Eigen::PropagateNaN>(a, c));
    s0.add(a);
    s1.add(c);
  }
  for (; i < n; i += P) {
    const Packet a = load_partial<Packet>(q + i, std::min<Index>(P, n - i), Scalar(0));
    lo = pmin<Eigen::PropagateNaN>(lo, a);
    hi = pmax<Eigen::PropagateNaN>(hi, a);
    s0.add(a);
  }
  alignas(64) Scalar l[P], h[P];
  pstore(l, lo);
  pstore(h, hi);
  bool in_range = true;
  for (int k = 0; k < P; ++k)
    in_range = in_range && l[k] >= 0 && h[k] <= 1;
  sum = static_cast<double>(total_wide(s0, s1));
  return in_range;
}

// Number of leading candidates (sorted by decreasing logit, weights w) that the top-p rule keeps:
// the smallest prefix whose weight reaches p * total, extended over ties of its last logit.
template <class Scalar>
std::size_t top_p_cut(const std::vector<std::pair<Scalar, Index>>& cand,
                      const std::vector<double>& w, std::size_t count, double p, double start,
                      double total) {
  const double target = p * total;
  double cum = start;
  std::size_t c = 0;
  while (c < count) {
    cum += w[c];
    ++c;
    if (cum >= target)
      break;
  }
  while (c < count && cand[c].first == cand[c - 1].first)
    ++c;
  return c;
}

}  // namespace detail

class Sampler {
 public:
  // Buckets of the large path's histogram: width 1/64 in (m - x) / T, the last one open-ended.
  static constexpr int kBuckets = 2048;
  static constexpr double kBucketsPerUnit = 64.0;
  // Largest k handled by the heap path (block maxima; beyond it std::nth_element and the large
  // path).
  static constexpr Index kHeapMaxK = 1024;

  explicit Sampler(const SamplerOptions& options = SamplerOptions()) : o_(options) { configure(); }

  const SamplerOptions& options() const { return o_; }
  // Whether the options' chain runs on the fast paths (no sort of the vocabulary); otherwise the
  // general path applies the stages in order with sorts (see the doc block).
  bool fast_path() const { return fast_; }

  // One token of the row x (the logits of V tokens); `history`: the previous tokens, read by the
  // penalties.
  template <class XprX, class Gen>
  Index sample(const Eigen::DenseBase<XprX>& x, Gen& gen, SamplingWorkspace& ws,
               const TokenHistory& history = TokenHistory()) const {
    using Scalar = typename XprX::Scalar;
    detail::static_check_scalar<Scalar>();
    detail::require_vector("Sampler::sample", x.rows(), x.cols());
    const Scalar* xs = prepare(x, ws, history);
    const Plan<Scalar> plan = make_plan(xs, x.size(), ws, history, nullptr);
    return draw(plan, xs, x.size(), gen, ws);
  }
  // With mirostat v2: draws with the state's mu, then updates it (see with_mirostat_v2).
  template <class XprX, class Gen>
  Index sample(const Eigen::DenseBase<XprX>& x, Gen& gen, SamplingWorkspace& ws,
               const TokenHistory& history, MirostatState& mirostat) const {
    using Scalar = typename XprX::Scalar;
    detail::static_check_scalar<Scalar>();
    detail::require_vector("Sampler::sample", x.rows(), x.cols());
    const Scalar* xs = prepare(x, ws, history);
    const Plan<Scalar> plan = make_plan(xs, x.size(), ws, history, &mirostat);
    const Index t = draw(plan, xs, x.size(), gen, ws);
    if (mirostat_on_ && plan.kind == Kind::Small) {
      const auto& b = ws.buffers<Scalar>();
      for (std::size_t j = 0; j < plan.count; ++j) {
        if (b.cand[j].second == t) {
          const double surprise = -std::log2(b.cand_weight[j] / plan.total);
          mirostat.mu -= o_.mirostat_eta() * (surprise - o_.mirostat_tau());
          break;
        }
      }
    }
    return t;
  }
  template <class XprX, class Gen>
  Index sample(const Eigen::DenseBase<XprX>& x, Gen& gen) const {
    SamplingWorkspace ws;
    return sample(x, gen, ws);
  }

  // probs = the exact distribution sample() draws from (0 outside the kept set).
  template <class XprX, class Out>
  void probabilities(const Eigen::DenseBase<XprX>& x, Out&& probs_out, SamplingWorkspace& ws,
                     const TokenHistory& history = TokenHistory(),
                     const MirostatState* mirostat = nullptr) const {
    using Scalar = typename XprX::Scalar;
    using XprY = detail::output_xpr_t<Out>;
    detail::static_check_scalar<Scalar>();
    static_assert(std::is_same_v<Scalar, typename XprY::Scalar>,
                  "softmaxlab: input and output must have the same scalar type");
    auto& probs = detail::writable_output(std::forward<Out>(probs_out));
    detail::require_vector("Sampler::probabilities", x.rows(), x.cols());
    detail::require_vector("Sampler::probabilities", probs.rows(), probs.cols());
    if (probs.size() != x.size()) {
      detail::fail("Sampler::probabilities: output must have the input's length ", x.size(),
                   ", but got ", probs.rows(), " x ", probs.cols());
    }
    auto& b = ws.buffers<Scalar>();
    const Index n = x.size();
    const Scalar* xs = prepare(x, ws, history);
    const Plan<Scalar> plan = make_plan(xs, n, ws, history, mirostat);
    switch (plan.kind) {
      case Kind::NaN:
        probs.setConstant(std::numeric_limits<Scalar>::quiet_NaN());
        return;
      case Kind::Empty:
        probs.setZero();
        return;
      case Kind::Greedy:
        probs.setZero();
        probs.coeffRef(plan.index) = Scalar(1);
        return;
      case Kind::Infinity: {
        const Scalar share = Scalar(1) / static_cast<Scalar>(plan.count);
        for (Index i = 0; i < n; ++i)
          probs.coeffRef(i) = xs[i] == std::numeric_limits<Scalar>::infinity() ? share : Scalar(0);
        return;
      }
      case Kind::Small:
        probs.setZero();
        for (std::size_t j = 0; j < plan.count; ++j)
          probs.coeffRef(b.cand[j].second) = reported<Scalar>(b.cand_weight[j], plan.total);
        return;
      case Kind::Large:
        for (Index i = 0; i < n; ++i) {
          const Scalar w = b.weight[static_cast<std::size_t>(i)];
          probs.coeffRef(i) =
              plan.kept(xs[i], w) ? reported<Scalar>(double(w), plan.total) : Scalar(0);
        }
        return;
    }
  }
  template <class XprX, class Out>
  void probabilities(const Eigen::DenseBase<XprX>& x, Out&& probs) const {
    SamplingWorkspace ws;
    probabilities(x, std::forward<Out>(probs), ws);
  }
  template <class XprX>
  typename XprX::PlainObject probabilities(const Eigen::DenseBase<XprX>& x) const {
    typename XprX::PlainObject probs(x.rows(), x.cols());
    probabilities(x, probs);
    return probs;
  }

  // tokens(i) = sample(L.row(i), gen): rows drawn in order. tokens: any writable integer vector of
  // L.rows() entries.
  template <class XprL, class Gen, class Out>
  void sample_rowwise(const Eigen::DenseBase<XprL>& logits, Gen& gen, Out&& tokens_out,
                      SamplingWorkspace& ws) const {
    using XprT = detail::output_xpr_t<Out>;
    auto& tokens = detail::writable_output(std::forward<Out>(tokens_out));
    detail::require_vector("Sampler::sample_rowwise: tokens", tokens.rows(), tokens.cols());
    if (tokens.size() != logits.rows()) {
      detail::fail("Sampler::sample_rowwise: tokens must have one entry per row (", logits.rows(),
                   "), but got ", tokens.size());
    }
    for (Index r = 0; r < logits.rows(); ++r)
      tokens.coeffRef(r) = static_cast<typename XprT::Scalar>(sample(logits.row(r), gen, ws));
  }
  template <class XprL, class Gen, class Out>
  void sample_rowwise(const Eigen::DenseBase<XprL>& logits, Gen& gen, Out&& tokens) const {
    SamplingWorkspace ws;
    sample_rowwise(logits, gen, std::forward<Out>(tokens), ws);
  }

  // Exact speculative-decoding verification (Leviathan et al. 2023, arXiv 2211.17192; Chen et al.
  // 2023, arXiv 2302.01318; FlashInfer's chain_speculative_sampling). target_logits: (k + 1) x V
  // logits of the target model at the k draft positions and the one after them (row i conditioned
  // on the history and drafts 0..i-1); draft_probs: k x V, the distributions the draft tokens were
  // drawn from, as given (the draft's own stages applied; each row normalized by its sum here);
  // draft_tokens: k integer entries. With p_i the Sampler's probabilities() of target row i
  // (its stages applied; the penalties see history + drafts 0..i-1): draft token t is accepted
  // with probability min(1, p_i(t) / q_i(t)) (u q < p, one uniform); at the first rejection the
  // next token is drawn from (p_i - q_i)+ normalized (a second uniform) and the result is returned;
  // when all k are accepted the bonus token is sample() of row k. Then the emitted tokens are
  // distributed exactly as successive draws from the p_i (tests/test_sampler_chain.cpp,
  // "verify: emitted tokens follow the target by chi-square"). A token of p_i = 0 is never
  // emitted. Throws std::invalid_argument (naming the argument) for: target_logits without k + 1
  // rows, draft_probs not k x V, a draft token outside [0, V), a negative or non-finite draft
  // probability (or one above 1), a row not summing to 1 within 1e-3, a draft token of draft
  // probability 0, or mirostat v2 on. Random words: two per draft examined, two more for the
  // residual or the bonus draw. Cost per position: the chain's plan of the row (no write of V
  // probabilities; on the heap path one max pass over the row), one vectorized pass over the draft
  // row (its range and sum: detail::probability_row_check), the accept test from p(t) and q(t)
  // alone (O(kept)), and at a rejection (once per call) one pass over the residual's support
  // (the kept set).
  template <class XprT, class XprQ, class XprD, class Gen>
  SpeculativeResult verify(const Eigen::DenseBase<XprT>& target_logits,
                           const Eigen::DenseBase<XprQ>& draft_probs,
                           const Eigen::DenseBase<XprD>& draft_tokens, Gen& gen,
                           SamplingWorkspace& ws,
                           const TokenHistory& history = TokenHistory()) const {
    using Scalar = typename XprT::Scalar;
    detail::static_check_scalar<Scalar>();
    static_assert(std::is_floating_point_v<typename XprQ::Scalar>,
                  "softmaxlab: draft_probs must hold float or double probabilities");
    static_assert(std::is_integral_v<typename XprD::Scalar>,
                  "softmaxlab: draft_tokens must be an integer vector");
    detail::require_vector("Sampler::verify: draft_tokens", draft_tokens.rows(),
                           draft_tokens.cols());
    if (mirostat_on_ && !greedy_) {
      detail::fail(
          "Sampler::verify: mirostat v2 is not supported (its state would change between "
          "the positions); verify with a Sampler without it");
    }
    const Index k = draft_tokens.size();
    const Index n = target_logits.cols();
    if (target_logits.rows() != k + 1) {
      detail::fail("Sampler::verify: target_logits must have k + 1 = ", k + 1,
                   " rows (k = draft_tokens.size()), but got ", target_logits.rows());
    }
    if (draft_probs.rows() != k || draft_probs.cols() != n) {
      detail::fail("Sampler::verify: draft_probs must be k x V = ", k, " x ", n, ", but got ",
                   draft_probs.rows(), " x ", draft_probs.cols());
    }
    std::vector<double>& inv_sum = ws.scores();
    inv_sum.resize(static_cast<std::size_t>(k));
    // The draft rows' check reads float rows as they are and other types as double.
    using QScalar = std::conditional_t<std::is_same_v<typename XprQ::Scalar, float>, float, double>;
    std::vector<QScalar>& qbuf = ws.buffers<QScalar>().row;
    for (Index i = 0; i < k; ++i) {
      const auto t = static_cast<Index>(draft_tokens.derived().coeff(i));
      if (t < 0 || t >= n)
        detail::fail("Sampler::verify: draft_tokens(", i, ") must be in [0, ", n, "), but got ", t);
      const auto q_at = [&](Index c) {
        return static_cast<double>(draft_probs.derived().coeff(i, c));
      };
      // One vectorized pass over the row (its range and sum); a failure is located afterwards.
      double sum = 0;
      const QScalar* qrow = nullptr;
      if constexpr (std::is_same_v<QScalar, typename XprQ::Scalar>) {
        qrow = detail::contiguous_row<QScalar>(draft_probs.derived().row(i), qbuf);
      } else {  // long double probabilities: checked on their double values
        qbuf.resize(static_cast<std::size_t>(n));
        for (Index c = 0; c < n; ++c)
          qbuf[static_cast<std::size_t>(c)] = static_cast<double>(q_at(c));
        qrow = qbuf.data();
      }
      if (!detail::probability_row_check(qrow, n, sum)) {
        for (Index c = 0; c < n; ++c) {
          if (!(q_at(c) >= 0 && q_at(c) <= 1))
            detail::fail("Sampler::verify: draft_probs(", i, ", ", c,
                         ") must be in [0, 1], but got ", q_at(c));
        }
      }
      if (!(std::fabs(sum - 1.0) <= 1e-3)) {
        detail::fail("Sampler::verify: draft_probs row ", i,
                     " must sum to 1 (within 1e-3), but sums to ", static_cast<double>(sum));
      }
      if (!(draft_probs.derived().coeff(i, t) > 0)) {
        detail::fail("Sampler::verify: draft_probs(", i, ", ", t,
                     ") is 0, but the draft drew token ", t, " (draft_tokens(", i, "))");
      }
      inv_sum[static_cast<std::size_t>(i)] = 1.0 / static_cast<double>(sum);
    }
    if (!o_.has_allowed_tokens() && !o_.token_mask().empty())
      check_vocabulary(n);
    // The penalties of row i see the history and drafts 0..i-1 (the last window of them).
    std::vector<Index>& extended = ws.history();
    const bool extend = (penalties_on_ || dry_on_) && k > 0;
    if (extend) {
      // The longest window any history stage reads (-1: all of it).
      const auto window = [&](bool on, Index last_n) {
        return !on ? Index(0) : last_n < 0 ? history.size() : std::min(history.size(), last_n);
      };
      const Index keep =
          std::max(window(penalties_on_, o_.penalty_last_n()), window(dry_on_, o_.dry_last_n()));
      extended.assign(history.data() + (history.size() - keep), history.data() + history.size());
    }
    const auto history_of = [&](Index i) {
      if (!extend)
        return history;
      return TokenHistory(extended.data(), static_cast<Index>(extended.size()) - (k - i));
    };
    if (extend) {
      for (Index i = 0; i < k; ++i)
        extended.push_back(static_cast<Index>(draft_tokens.derived().coeff(i)));
    }
    for (Index i = 0; i < k; ++i) {
      // The plan of row i gives p(t) in O(kept) on the heap and general paths (no write of V
      // probabilities) and the residual's support: (p - q)+ > 0 only where p > 0.
      const TokenHistory hi = history_of(i);
      const Scalar* xs = prepare(target_logits.row(i), ws, hi);
      const Plan<Scalar> plan = make_plan(xs, n, ws, hi, nullptr);
      if (plan.kind == Kind::NaN)
        return {i, -1};
      const auto t = static_cast<Index>(draft_tokens.derived().coeff(i));
      const double scale = inv_sum[static_cast<std::size_t>(i)];
      const double q_t = static_cast<double>(draft_probs.derived().coeff(i, t)) * scale;
      if (detail::uniform53(gen) * q_t < plan_probability(plan, xs, t, ws))
        continue;  // accepted with probability min(1, p(t) / q(t))
      // Rejected: draw from the residual (p - q)+, normalized.
      const auto residual = [&](Index j, double p_j) {
        const double r = p_j - static_cast<double>(draft_probs.derived().coeff(i, j)) * scale;
        return r > 0 ? r : 0.0;
      };
      long double total = 0;
      for_each_support(plan, xs, n, ws, [&](Index j, double p_j) { total += residual(j, p_j); });
      const double target = detail::uniform53(gen) * static_cast<double>(total);
      double cum = 0;
      Index chosen = -1, last = -1, best = -1;
      double best_p = 0;
      for_each_support(plan, xs, n, ws, [&](Index j, double p_j) {
        if (p_j > best_p) {
          best_p = p_j;
          best = j;
        }
        const double r = residual(j, p_j);
        if (chosen >= 0 || !(r > 0))
          return;
        cum += r;
        last = j;
        if (cum > target)
          chosen = j;
      });
      if (chosen >= 0)
        return {i, chosen};
      if (last >= 0)
        return {i, last};  // rounding left target >= cum: the last token of the residual
      // No residual mass: p = q up to rounding, so the rejection itself came from rounding; p's
      // largest entry is then a token the target gives positive probability (-1: empty row).
      return {i, best};
    }
    return {k, sample(target_logits.row(k), gen, ws, history_of(k))};
  }
  template <class XprT, class XprQ, class XprD, class Gen>
  SpeculativeResult verify(const Eigen::DenseBase<XprT>& target_logits,
                           const Eigen::DenseBase<XprQ>& draft_probs,
                           const Eigen::DenseBase<XprD>& draft_tokens, Gen& gen) const {
    SamplingWorkspace ws;
    return verify(target_logits, draft_probs, draft_tokens, gen, ws);
  }

  // tokens(r) = sample(L.row(r), g_r) with g_r = Philox4x32(seed, first_stream + r): each row
  // has its own counter-based stream, so the result is the same for any thread count and any
  // schedule. Rows run on OpenMP threads when SOFTMAXLAB_USE_OPENMP is defined with -fopenmp
  // (one workspace per thread), else in order. No history (the penalties see none). The options'
  // mask and bias are checked against V before any row is drawn.
  template <class XprL, class Out>
  void sample_rowwise_philox(const Eigen::DenseBase<XprL>& logits, std::uint64_t seed,
                             Out&& tokens_out, std::uint64_t first_stream = 0) const {
    using Scalar = typename XprL::Scalar;
    using XprT = detail::output_xpr_t<Out>;
    detail::static_check_scalar<Scalar>();
    auto& tokens = detail::writable_output(std::forward<Out>(tokens_out));
    detail::require_vector("Sampler::sample_rowwise_philox: tokens", tokens.rows(), tokens.cols());
    const Index rows = logits.rows();
    if (tokens.size() != rows) {
      detail::fail("Sampler::sample_rowwise_philox: tokens must have one entry per row (", rows,
                   "), but got ", tokens.size());
    }
    check_vocabulary(logits.cols());
    if (mirostat_on_ && !greedy_) {
      detail::fail(
          "Sampler::sample_rowwise_philox: mirostat v2 needs one MirostatState per "
          "sequence; call sample(row, gen, ws, history, state) per row");
    }
    const auto one_row = [&](Index r, SamplingWorkspace& w) {
      Philox4x32 gen(seed, first_stream + static_cast<std::uint64_t>(r));
      tokens.coeffRef(r) = static_cast<typename XprT::Scalar>(sample(logits.row(r), gen, w));
    };
#if SOFTMAXLAB_PARALLEL_SLICES
    if (rows > 1 && !omp_in_parallel() && omp_get_max_threads() > 1) {
      std::vector<SamplingWorkspace> per_thread(static_cast<std::size_t>(omp_get_max_threads()));
#pragma omp parallel
      {
        SamplingWorkspace& w = per_thread[static_cast<std::size_t>(omp_get_thread_num())];
#pragma omp for schedule(static)
        for (Index r = 0; r < rows; ++r)
          one_row(r, w);
      }
      return;
    }
#endif
    SamplingWorkspace w;
    for (Index r = 0; r < rows; ++r)
      one_row(r, w);
  }

  // Size of the kept set: the number of nonzero entries of probabilities() (masked, -inf and
  // underflowed tokens excluded), for diagnostics and examples; 0 for a NaN or empty row.
  template <class XprX>
  Index kept_count(const Eigen::DenseBase<XprX>& x, SamplingWorkspace& ws,
                   const TokenHistory& history = TokenHistory(),
                   const MirostatState* mirostat = nullptr) const {
    using Scalar = typename XprX::Scalar;
    detail::require_vector("Sampler::kept_count", x.rows(), x.cols());
    auto& b = ws.buffers<Scalar>();
    const Scalar* xs = prepare(x, ws, history);
    const Plan<Scalar> plan = make_plan(xs, x.size(), ws, history, mirostat);
    switch (plan.kind) {
      case Kind::NaN:
      case Kind::Empty:
        return 0;
      case Kind::Greedy:
        return 1;
      case Kind::Infinity:
        return static_cast<Index>(plan.count);
      case Kind::Small: {
        Index c = 0;
        for (std::size_t j = 0; j < plan.count; ++j)
          c += reported<Scalar>(b.cand_weight[j], plan.total) > 0 ? 1 : 0;
        return c;
      }
      case Kind::Large:
        break;
    }
    Index c = 0;
    for (Index i = 0; i < x.size(); ++i) {
      const Scalar w = b.weight[static_cast<std::size_t>(i)];
      c += plan.kept(xs[i], w) && reported<Scalar>(double(w), plan.total) > 0 ? 1 : 0;
    }
    return c;
  }
  template <class XprX>
  Index kept_count(const Eigen::DenseBase<XprX>& x) const {
    SamplingWorkspace ws;
    return kept_count(x, ws);
  }

 private:
  enum class Kind { NaN, Empty, Greedy, Infinity, Small, Large };

  // What make_plan found: the kept set and its total weight.
  //   Greedy: `index`. Infinity: `count` logits equal to +inf. Small: the first `count` entries of
  //   cand / cand_weight, total `total`. Large: x_i >= threshold and weight_i >= min_weight,
  //   weights in the workspace, total `total`.
  template <class Scalar>
  struct Plan {
    Kind kind = Kind::Empty;
    Index index = -1;
    std::size_t count = 0;
    double total = 0;
    Scalar threshold = -std::numeric_limits<Scalar>::infinity();
    Scalar min_weight = 0;
    // x > -inf: the exp kernel clamps its weights to normal numbers, so a -inf logit (masked,
    // banned) has a tiny positive weight and must be excluded by its logit (issue 28).
    bool kept(Scalar x, Scalar w) const {
      return x >= threshold && x > -std::numeric_limits<Scalar>::infinity() && w >= min_weight
             && w > 0;
    }
  };

  // The probability probabilities() reports for a kept weight w of a plan of total `total`. The
  // draw returns only tokens for which this is > 0, so a token reported as 0 (an underflow in the
  // output type included) is never drawn, whatever u and the rounding of the running sum.
  template <class Scalar>
  static Scalar reported(double w, double total) {
    return static_cast<Scalar>(w / total);
  }

  template <class Scalar>
  Plan<Scalar> make_plan(const Scalar* x, Index n, SamplingWorkspace& ws,
                         const TokenHistory& history, const MirostatState* mirostat) const {
    if (mirostat_on_ && mirostat == nullptr && !greedy_) {
      detail::fail(
          "Sampler: mirostat v2 is on: pass its MirostatState to sample(), "
          "probabilities() or kept_count()");
    }
    const Scalar inf = std::numeric_limits<Scalar>::infinity();
    Plan<Scalar> plan;
    if (n == 0)
      return plan;
    const bool small = fast_ && !greedy_ && k_ > 0 && k_ <= kHeapMaxK;
    // The small path's block maxima come with the row max in the same pass.
    Scalar m = small ? detail::block_maxima(x, n, ws.buffers<Scalar>().block_max)
                     : detail::max_propagate_nan(x, n);
    if (small && ws.buffers<Scalar>().overlay_on && m == m)  // a NaN stays (not overlaid)
      m = patch_blocks(x, n, ws);
    if (m != m) {
      plan.kind = Kind::NaN;
      return plan;
    }
    if (m == -inf)
      return plan;  // Empty
    if (greedy_) {
      plan.kind = Kind::Greedy;
      plan.index = static_cast<Index>(std::find(x, x + n, m) - x);
      return plan;
    }
    if (m == inf) {
      plan.kind = Kind::Infinity;
      plan.count = static_cast<std::size_t>(std::count(x, x + n, inf));
      return plan;
    }
    if (!fast_)
      return general_plan(x, n, ws, history, mirostat);
    if (small)
      return small_plan(x, n, m, ws);
    return large_plan(x, n, m, ws);
  }

  // The overlay's blocks: each block holding a modified logit is copied into `patch` with the
  // overlay applied and its max recomputed; block_src points at every block's logits. Returns
  // the row's max (the row holds no NaN: make_plan checked).
  template <class Scalar>
  Scalar patch_blocks(const Scalar* x, Index n, SamplingWorkspace& ws) const {
    auto& b = ws.buffers<Scalar>();
    const auto blocks = b.block_max.size();
    b.block_src.resize(blocks);
    for (std::size_t bl = 0; bl < blocks; ++bl)
      b.block_src[bl] = x + static_cast<Index>(bl) * detail::kSelectBlock;
    std::size_t dirty = 0;
    for (std::size_t e = 0; e < b.overlay.size(); ++e) {
      if (e == 0
          || b.overlay[e].first / detail::kSelectBlock
                 != b.overlay[e - 1].first / detail::kSelectBlock)
        ++dirty;
    }
    b.patch.resize(dirty * static_cast<std::size_t>(detail::kSelectBlock));
    std::size_t slot = 0;
    for (std::size_t e = 0; e < b.overlay.size();) {
      const Index bl = b.overlay[e].first / detail::kSelectBlock;
      const Index start = bl * detail::kSelectBlock;
      const Index len = std::min(detail::kSelectBlock, n - start);
      Scalar* dst = b.patch.data() + slot * static_cast<std::size_t>(detail::kSelectBlock);
      std::copy(x + start, x + start + len, dst);
      for (; e < b.overlay.size() && b.overlay[e].first / detail::kSelectBlock == bl; ++e)
        dst[b.overlay[e].first - start] = b.overlay[e].second;
      // No NaN here (make_plan calls this only for a row without one): the fast max.
      b.block_max[static_cast<std::size_t>(bl)] =
          detail::packet_max<Eigen::PropagateFast>(dst, len);
      b.block_src[static_cast<std::size_t>(bl)] = dst;
      ++slot;
    }
    return detail::packet_max<Eigen::PropagateFast>(b.block_max.data(), static_cast<Index>(blocks));
  }

  // Top-k by the block maxima (detail::top_k_candidates), then only the candidates are weighted,
  // cut and reweighted.
  template <class Scalar>
  Plan<Scalar> small_plan(const Scalar* x, Index n, Scalar m, SamplingWorkspace& ws) const {
    auto& b = ws.buffers<Scalar>();
    const Scalar* const* src = b.overlay_on ? b.block_src.data() : nullptr;
    detail::top_k_candidates(n, k_, b.block_max, b.cand, x, src);
    const std::size_t count = b.cand.size();
    b.cand_weight.resize(count);
    // Temperature last (llama.cpp's order): top-p and min-p cut the T = 1 distribution, then the
    // kept tokens are reweighted at T.
    const double t = temp_last_ ? 1.0 : temp_;
    double total = 0;
    for (std::size_t j = 0; j < count; ++j) {
      b.cand_weight[j] = std::exp((double(b.cand[j].first) - double(m)) / t);
      total += b.cand_weight[j];
    }
    std::size_t c = count;
    if (p_ < 1.0)
      c = detail::top_p_cut(b.cand, b.cand_weight, c, p_, 0.0, total);
    if (minp_ > 0.0) {
      // The first candidate is the max: weight exp(0) = 1, so the rule is w_j >= min_p.
      std::size_t keep = 1;
      while (keep < c && b.cand_weight[keep] >= minp_)
        ++keep;
      c = keep;
    }
    if (temp_last_ && temp_ != 1.0) {
      for (std::size_t j = 0; j < c; ++j)
        b.cand_weight[j] = std::exp((double(b.cand[j].first) - double(m)) / temp_);
    }
    Plan<Scalar> plan;
    plan.kind = Kind::Small;
    plan.count = c;
    long double kept_total = 0;  // long double: the normalizer's error stays far below eps
    for (std::size_t j = 0; j < c; ++j)
      kept_total += b.cand_weight[j];
    plan.total = static_cast<double>(kept_total);
    return plan;
  }

  // Weights of the whole row; top-k (large k) by nth_element, top-p by the histogram.
  template <class Scalar>
  Plan<Scalar> large_plan(const Scalar* x, Index n, Scalar m, SamplingWorkspace& ws) const {
    auto& b = ws.buffers<Scalar>();
    const Scalar inf = std::numeric_limits<Scalar>::infinity();
    const auto un = static_cast<std::size_t>(n);
    if (b.weight.size() < un)
      b.weight.resize(un);
    Scalar* w = b.weight.data();
    Plan<Scalar> plan;
    plan.kind = Kind::Large;
    // Top-k beyond the heap's range: the k-th largest finite value by nth_element on a copy.
    const Index k = k_;
    if (k > 0 && k < n) {
      std::copy(x, x + n, w);
      std::nth_element(w, w + (k - 1), w + n, std::greater<Scalar>());
      plan.threshold = w[k - 1];  // -inf when fewer than k are finite: no restriction
    }
    const Scalar s = static_cast<Scalar>(1.0 / temp_);
    detail::CompensatedSum<Scalar> sum0, sum1;
    if (temp_ != 1.0) {
      detail::scaled_exp_store_sum<true>(x, w, n, m, s, sum0, sum1);
    } else {
      detail::scaled_exp_store_sum<false>(x, w, n, m, s, sum0, sum1);
    }
    double total = static_cast<double>(sum0.total() + sum1.total());
    if (plan.threshold > -inf)
      total = kept_sum(x, w, n, plan);
    if (p_ < 1.0)
      plan.threshold = top_p_threshold(x, w, n, m, s, plan.threshold, total, ws);
    if (minp_ > 0.0)
      plan.min_weight = static_cast<Scalar>(minp_ * double(detail::kExpScale<Scalar>));
    if (p_ < 1.0 || minp_ > 0.0)
      total = kept_sum(x, w, n, plan);
    plan.total = total;
    return plan;
  }

  template <class Scalar>
  static double kept_sum(const Scalar* x, const Scalar* w, Index n, const Plan<Scalar>& plan) {
    // double holds float weights' sums to ~2^-53 at any length; double weights are summed in
    // long double so that the total's error stays far below double's eps at 256k terms.
    using Acc = std::conditional_t<std::is_same_v<Scalar, float>, double, long double>;
    Acc a0 = 0, a1 = 0;
    Index i = 0;
    for (; i + 2 <= n; i += 2) {
      a0 += plan.kept(x[i], w[i]) ? Acc(w[i]) : Acc(0);
      a1 += plan.kept(x[i + 1], w[i + 1]) ? Acc(w[i + 1]) : Acc(0);
    }
    if (i < n)
      a0 += plan.kept(x[i], w[i]) ? Acc(w[i]) : Acc(0);
    return static_cast<double>(a0 + a1);
  }

  // The smallest logit of the top-p prefix over {x_i >= floor}: the histogram of the weights over
  // the buckets of (m - x_i) / T locates the boundary bucket; only its tokens are sorted.
  template <class Scalar>
  Scalar top_p_threshold(const Scalar* x, const Scalar* w, Index n, Scalar m, Scalar s,
                         Scalar floor, double total, SamplingWorkspace& ws) const {
    auto& b = ws.buffers<Scalar>();
    std::vector<double>& hist = ws.histogram();
    hist.assign(kBuckets, 0.0);
    const auto bucket = [&](Scalar xi) {
      const Scalar d = (m - xi) * s * Scalar(kBucketsPerUnit);  // >= 0, monotone in xi
      return d < Scalar(kBuckets - 1) ? static_cast<int>(d) : kBuckets - 1;
    };
    for (Index i = 0; i < n; ++i) {
      if (x[i] >= floor)
        hist[static_cast<std::size_t>(bucket(x[i]))] += double(w[i]);
    }
    const double target = p_ * total;
    double before = 0;
    int boundary = 0;
    int last_nonempty = 0;
    for (; boundary < kBuckets; ++boundary) {
      const double mass = hist[static_cast<std::size_t>(boundary)];
      if (mass > 0)
        last_nonempty = boundary;
      if (before + mass >= target && mass > 0)
        break;
      before += mass;
    }
    if (boundary == kBuckets) {  // rounding left the target just out of reach: keep everything
      boundary = last_nonempty;
      before = 0;
      for (int j = 0; j < boundary; ++j)
        before += hist[static_cast<std::size_t>(j)];
    }
    b.cand.clear();
    for (Index i = 0; i < n; ++i) {
      if (x[i] >= floor && bucket(x[i]) == boundary)
        b.cand.emplace_back(x[i], i);
    }
    std::sort(b.cand.begin(), b.cand.end(), detail::by_decreasing_logit<Scalar>);
    b.cand_weight.resize(b.cand.size());
    for (std::size_t j = 0; j < b.cand.size(); ++j)
      b.cand_weight[j] = double(w[static_cast<std::size_t>(b.cand[j].second)]);
    const std::size_t c =
        detail::top_p_cut(b.cand, b.cand_weight, b.cand.size(), p_, before, total);
    return b.cand[c - 1].first;
  }

  template <class Scalar, class Gen>
  Index draw(const Plan<Scalar>& plan, const Scalar* x, Index n, Gen& gen,
             SamplingWorkspace& ws) const {
    switch (plan.kind) {
      case Kind::NaN:
      case Kind::Empty:
        return -1;
      case Kind::Greedy:
        return plan.index;
      case Kind::Infinity: {
        const double u = detail::uniform53(gen);
        auto pick = static_cast<std::size_t>(u * static_cast<double>(plan.count));
        for (Index i = 0; i < n; ++i) {
          if (x[i] == std::numeric_limits<Scalar>::infinity() && pick-- == 0)
            return i;
        }
        return -1;  // unreachable
      }
      case Kind::Small: {
        const auto& b = ws.buffers<Scalar>();
        const double target = detail::uniform53(gen) * plan.total;
        double cum = 0;
        Index last = -1;
        for (std::size_t j = 0; j < plan.count; ++j) {
          cum += b.cand_weight[j];
          if (reported<Scalar>(b.cand_weight[j], plan.total) > 0) {
            last = b.cand[j].second;
            if (cum > target)
              return last;
          }
        }
        return last;  // rounding left target >= cum: the last token of positive probability
      }
      case Kind::Large: {
        const Scalar* w = ws.buffers<Scalar>().weight.data();
        const double target = detail::uniform53(gen) * plan.total;
        double cum = 0;
        Index last = -1;
        for (Index i = 0; i < n; ++i) {
          if (plan.kept(x[i], w[i])) {
            cum += double(w[i]);
            if (cum > target && reported<Scalar>(double(w[i]), plan.total) > 0)
              return i;
          }
        }
        // Rounding left target >= cum: the last token of positive probability.
        for (Index i = n - 1; i >= 0; --i) {
          if (plan.kept(x[i], w[i]) && reported<Scalar>(double(w[i]), plan.total) > 0) {
            last = i;
            break;
          }
        }
        return last;
      }
    }
    return -1;
  }

  // The probability probabilities() reports for token t under `plan` (as a double).
  template <class Scalar>
  double plan_probability(const Plan<Scalar>& plan, const Scalar* xs, Index t,
                          SamplingWorkspace& ws) const {
    switch (plan.kind) {
      case Kind::NaN:
        return std::numeric_limits<double>::quiet_NaN();
      case Kind::Empty:
        return 0.0;
      case Kind::Greedy:
        return t == plan.index ? 1.0 : 0.0;
      case Kind::Infinity:
        return xs[t] == std::numeric_limits<Scalar>::infinity()
                   ? double(Scalar(1) / static_cast<Scalar>(plan.count))
                   : 0.0;
      case Kind::Small: {
        const auto& b = ws.buffers<Scalar>();
        for (std::size_t j = 0; j < plan.count; ++j) {
          if (b.cand[j].second == t)
            return double(reported<Scalar>(b.cand_weight[j], plan.total));
        }
        return 0.0;
      }
      case Kind::Large: {
        const Scalar w = ws.buffers<Scalar>().weight[static_cast<std::size_t>(t)];
        return plan.kept(xs[t], w) ? double(reported<Scalar>(double(w), plan.total)) : 0.0;
      }
    }
    return 0.0;
  }

  // fn(j, p_j) for every token j that `plan` may give a positive probability (p_j as
  // probabilities() reports it; some may be 0 after rounding), in a fixed order.
  template <class Scalar, class Fn>
  void for_each_support(const Plan<Scalar>& plan, const Scalar* xs, Index n, SamplingWorkspace& ws,
                        const Fn& fn) const {
    const auto& b = ws.buffers<Scalar>();
    switch (plan.kind) {
      case Kind::NaN:
      case Kind::Empty:
        return;
      case Kind::Greedy:
        fn(plan.index, 1.0);
        return;
      case Kind::Infinity:
        for (Index j = 0; j < n; ++j) {
          if (xs[j] == std::numeric_limits<Scalar>::infinity())
            fn(j, double(Scalar(1) / static_cast<Scalar>(plan.count)));
        }
        return;
      case Kind::Small:
        for (std::size_t c = 0; c < plan.count; ++c)
          fn(b.cand[c].second, double(reported<Scalar>(b.cand_weight[c], plan.total)));
        return;
      case Kind::Large:
        for (Index j = 0; j < n; ++j) {
          const Scalar w = b.weight[static_cast<std::size_t>(j)];
          if (plan.kept(xs[j], w))
            fn(j, double(reported<Scalar>(double(w), plan.total)));
        }
        return;
    }
  }

  // Which stages are on, and whether their order allows the fast paths: [penalties]
  // [top-n-sigma] applied to a copy of the row, then top-k, top-p, min-p in this relative order
  // with temperature before top-p and min-p or after both (the latter on the heap path only).
  void configure() {
    const auto in_order = [&](SamplerStage st) {
      return std::find(o_.order().begin(), o_.order().end(), st) != o_.order().end();
    };
    greedy_ = in_order(SamplerStage::Temperature) && o_.temperature() == 0.0;
    temp_ = in_order(SamplerStage::Temperature) && !greedy_ ? o_.temperature() : 1.0;
    penalties_on_ = in_order(SamplerStage::Penalties)
                    && (o_.repeat_penalty() != 1.0 || o_.frequency_penalty() != 0.0
                        || o_.presence_penalty() != 0.0)
                    && o_.penalty_last_n() != 0;
    sigma_on_ = !greedy_ && in_order(SamplerStage::TopNSigma) && o_.top_n_sigma() > 0.0;
    k_ = in_order(SamplerStage::TopK) ? o_.top_k() : 0;
    typical_ = in_order(SamplerStage::TypicalP) ? o_.typical_p() : 1.0;
    p_ = in_order(SamplerStage::TopP) ? o_.top_p() : 1.0;
    minp_ = in_order(SamplerStage::MinP) ? o_.min_p() : 0.0;
    xtc_on_ =
        in_order(SamplerStage::Xtc) && o_.xtc_probability() > 0.0 && o_.xtc_threshold() <= 0.5;
    mirostat_on_ = o_.mirostat_v2();
    dry_on_ = in_order(SamplerStage::Dry) && o_.dry_multiplier() > 0.0 && o_.dry_last_n() != 0;
    fast_ = true;
    temp_last_ = false;
    if (greedy_)
      return;  // the argmax after the logit stages: the other stages play no part
    std::vector<SamplerStage> seq;
    for (const SamplerStage st : o_.order()) {
      const bool on =
          (st == SamplerStage::Penalties && penalties_on_)
          || (st == SamplerStage::TopNSigma && sigma_on_) || (st == SamplerStage::TopK && k_ > 0)
          || (st == SamplerStage::TypicalP && typical_ < 1.0)
          || (st == SamplerStage::TopP && p_ < 1.0) || (st == SamplerStage::MinP && minp_ > 0.0)
          || (st == SamplerStage::Temperature && temp_ != 1.0)
          || (st == SamplerStage::Xtc && xtc_on_) || (st == SamplerStage::Dry && dry_on_);
      if (on)
        seq.push_back(st);
    }
    std::size_t pos = 0;
    if (pos < seq.size() && seq[pos] == SamplerStage::Penalties)
      ++pos;
    if (pos < seq.size() && seq[pos] == SamplerStage::Dry)
      ++pos;
    if (pos < seq.size() && seq[pos] == SamplerStage::TopNSigma)
      ++pos;
    int last_rank = -1, cuts = 0, cuts_before_t = 0;
    bool seen_t = false;
    for (; pos < seq.size(); ++pos) {
      const SamplerStage st = seq[pos];
      if (st == SamplerStage::Temperature) {
        seen_t = true;
        continue;
      }
      const int rank = st == SamplerStage::TopK   ? 0
                       : st == SamplerStage::TopP ? 1
                       : st == SamplerStage::MinP ? 2
                                                  : -1;
      if (rank < 0 || rank < last_rank)
        fast_ = false;
      last_rank = rank;
      if (rank >= 1) {
        ++cuts;
        cuts_before_t += seen_t ? 0 : 1;
      }
    }
    if (seen_t && cuts > 0 && cuts_before_t > 0) {
      if (cuts_before_t < cuts)
        fast_ = false;  // temperature between top-p and min-p
      temp_last_ = true;
      if (!(k_ > 0 && k_ <= kHeapMaxK))
        fast_ = false;  // temperature last beyond the heap path: the general path
    }
    if (mirostat_on_)
      fast_ = false;
  }

  // The mask's and the bias's token ids against the vocabulary size n.
  void check_vocabulary(Index n) const {
    if (!o_.has_allowed_tokens() && !o_.token_mask().empty()
        && static_cast<Index>(o_.token_mask().size()) != n) {
      detail::fail("Sampler: token_mask must have one entry per token (V = ", n, "), but has ",
                   o_.token_mask().size());
    }
    for (const Index t : o_.allowed_tokens()) {
      if (t >= n)
        detail::fail("Sampler: allowed token id ", t, " must be < V = ", n);
    }
    for (const auto& e : o_.logit_bias()) {
      if (e.first >= n)
        detail::fail("Sampler: logit_bias token ", e.first, " must be < V = ", n);
    }
  }

  Index penalty_window(const TokenHistory& h) const {
    if (!penalties_on_)
      return 0;
    return o_.penalty_last_n() < 0 ? h.size() : std::min(h.size(), o_.penalty_last_n());
  }

  // The row the chain reads: x itself, or a copy with the mask, the bias and (on the fast paths)
  // the penalties and top-n-sigma applied. The mask and the bias cost O(entries) beyond the copy
  // (a boolean mask O(V)); the penalties O(window log window).
  template <class XprX>
  const typename XprX::Scalar* prepare(const Eigen::DenseBase<XprX>& x, SamplingWorkspace& ws,
                                       const TokenHistory& h) const {
    using Scalar = typename XprX::Scalar;
    const Scalar inf = std::numeric_limits<Scalar>::infinity();
    auto& b = ws.buffers<Scalar>();
    const Index n = x.size();
    const Scalar* xs = detail::contiguous_row<Scalar>(x, b.row);
    const bool masked = o_.has_allowed_tokens() || !o_.token_mask().empty();
    const bool penalties = fast_ && penalty_window(h) > 0;
    const bool dry = fast_ && dry_on_ && h.size() > 1;
    const bool sigma = fast_ && sigma_on_;
    b.overlay_on = false;
    if (!masked && o_.logit_bias().empty() && !penalties && !dry && !sigma)
      return xs;
    check_vocabulary(n);
    if (!masked && !sigma && !greedy_ && k_ > 0 && k_ <= kHeapMaxK) {
      // Only sparse stages on the heap path: their few modified logits go to an overlay that
      // the selection reads through patched 64-logit blocks; the row is not copied.
      auto& ov = b.overlay;
      ov.clear();
      const auto at = [&](Index t) -> Scalar& {
        auto it = std::lower_bound(ov.begin(), ov.end(), t,
                                   [](const auto& e, Index v) { return e.first < v; });
        if (it == ov.end() || it->first != t)
          it = ov.insert(it, {t, xs[t]});
        return it->second;
      };
      for (const auto& e : o_.logit_bias()) {
        Scalar& v = at(e.first);
        v = apply_bias(v, e.second);
      }
      if (penalties)
        apply_penalties(at, n, ws, h);
      if (dry)
        apply_dry(at, n, ws, h);
      // Tokens whose logit is +inf or NaN keep the dense path (the Infinity and NaN rules read
      // the row itself).
      bool plain = true;
      for (const auto& e : ov)
        plain = plain && (xs[e.first] == -inf || std::isfinite(xs[e.first]));
      if (plain) {
        b.overlay_on = true;
        return xs;
      }
    }
    if (b.modified.size() < static_cast<std::size_t>(n))
      b.modified.resize(static_cast<std::size_t>(n));
    Scalar* y = b.modified.data();
    if (o_.has_allowed_tokens()) {
      std::fill(y, y + n, -inf);
      for (const Index t : o_.allowed_tokens())
        y[t] = xs[t];
    } else if (!o_.token_mask().empty()) {
      const std::vector<bool>& keep = o_.token_mask();
      for (Index i = 0; i < n; ++i)  // a NaN stays (the row's NaN policy)
        y[i] = keep[static_cast<std::size_t>(i)] || xs[i] != xs[i] ? xs[i] : -inf;
    } else if (y != xs) {
      std::copy(xs, xs + n, y);
    }
    for (const auto& e : o_.logit_bias())
      y[e.first] = apply_bias(y[e.first], e.second);
    const auto dense = [y](Index t) -> Scalar& {
      return y[t];
    };
    if (penalties)
      apply_penalties(dense, n, ws, h);
    if (dry)
      apply_dry(dense, n, ws, h);
    if (sigma)
      top_n_sigma_in_place(y, n);
    return y;
  }

  // The logit v after a bias b: b = -inf bans (even a +inf logit; a NaN stays).
  template <class T>
  static T apply_bias(T v, double bias) {
    if (bias == -std::numeric_limits<double>::infinity())
      return v != v ? v : -std::numeric_limits<T>::infinity();
    return clamp_finite<T>(static_cast<double>(v) + bias, v);
  }

  // v, except that a finite input pushed beyond the range of T by a stage stays finite (the
  // largest finite value of its sign): a penalty or a bias must not create an infinity.
  template <class T>
  static T clamp_finite(double v, T before) {
    const double big = static_cast<double>(std::numeric_limits<T>::max());
    if (std::isfinite(static_cast<double>(before)) && !(std::fabs(v) <= big) && v == v)
      return static_cast<T>(v > 0 ? big : -big);
    return static_cast<T>(v);
  }

  // llama.cpp's penalties (llama_sampler_penalties_apply): for each token of count c > 0 in the
  // window, z = z <= 0 ? z * repeat : z / repeat, then z -= c * frequency + presence.
  // z(t) returns a reference to token t's logit (a dense row, or the sparse overlay).
  template <class Z>
  void apply_penalties(const Z& z, Index n, SamplingWorkspace& ws, const TokenHistory& h) const {
    using T = std::remove_reference_t<decltype(z(Index(0)))>;
    const Index w = penalty_window(h);
    if (w == 0)
      return;
    std::vector<Index>& t = ws.tokens();
    t.assign(h.data() + (h.size() - w), h.data() + h.size());
    for (std::size_t j = 0; j < t.size(); ++j) {
      if (t[j] < 0 || t[j] >= n)
        detail::fail("Sampler: history token ", t[j], " (", j,
                     "th of the penalty window) must be in [0, V = ", n, ")");
    }
    std::sort(t.begin(), t.end());
    for (std::size_t j = 0; j < t.size();) {
      std::size_t e = j;
      while (e < t.size() && t[e] == t[j])
        ++e;
      const double count = static_cast<double>(e - j);
      T& zt = z(t[j]);
      const T before = zt;
      double v = static_cast<double>(before);
      v = v <= 0 ? v * o_.repeat_penalty() : v / o_.repeat_penalty();
      v -= count * o_.frequency_penalty() + o_.presence_penalty();
      zt = clamp_finite<T>(v, before);
      j = e;
    }
  }

  // DRY (see SamplerOptions::with_dry): for each position i of the window but the last, the
  // length of the match between the window's end and the segment ending at i (stopping at a
  // breaker in the end part, or at the window's start), credited to the token h[i + 1]. Cost
  // O(w L), L the matched lengths: O(w^2) on a window of one repeated token.
  template <class Z>
  void apply_dry(const Z& z, Index n, SamplingWorkspace& ws, const TokenHistory& h) const {
    using T = std::remove_reference_t<decltype(z(Index(0)))>;
    const Index w = o_.dry_last_n() < 0 ? h.size() : std::min(h.size(), o_.dry_last_n());
    if (w < 2)
      return;
    const Index* t = h.data() + (h.size() - w);
    for (Index j = 0; j < w; ++j) {
      if (t[j] < 0 || t[j] >= n)
        detail::fail("Sampler: history token ", t[j], " (", j,
                     "th of the DRY window) must be in [0, V = ", n, ")");
    }
    const auto& breakers = o_.dry_breakers();
    const auto is_breaker = [&](Index v) {
      return std::binary_search(breakers.begin(), breakers.end(), v);
    };
    std::vector<Index>& best = ws.tokens();  // (token, length) pairs, flattened
    best.clear();
    for (Index i = 0; i + 1 < w; ++i) {
      Index len = 0;
      while (len <= i && t[i - len] == t[w - 1 - len] && !is_breaker(t[w - 1 - len]))
        ++len;
      if (len >= o_.dry_allowed_length()) {
        best.push_back(t[i + 1]);
        best.push_back(len);
      }
    }
    // The longest match per token, then one penalty each.
    for (std::size_t a = 0; a < best.size(); a += 2) {
      const Index token = best[a];
      Index len = best[a + 1];
      bool first = true;
      for (std::size_t c = 0; c < best.size(); c += 2) {
        if (best[c] == token) {
          if (c < a) {
            first = false;
            break;
          }
          len = std::max(len, best[c + 1]);
        }
      }
      if (!first)
        continue;
      T& zt = z(token);
      const T before = zt;
      const double penalty =
          o_.dry_multiplier()
          * std::pow(o_.dry_base(), static_cast<double>(len - o_.dry_allowed_length()));
      zt = clamp_finite<T>(static_cast<double>(before) - penalty, before);
    }
  }

  // Top-n-sigma (Tang et al. 2024, arXiv 2411.07641; llama.cpp's top_n_sigma): over the finite
  // entries, mean and population standard deviation sigma; every entry below max - n sigma
  // becomes -inf. Skipped for a row holding a NaN or +inf (their own rules apply).
  template <class Scalar>
  void top_n_sigma_in_place(Scalar* y, Index n) const {
    const Scalar inf = std::numeric_limits<Scalar>::infinity();
    double sum = 0, mx = -std::numeric_limits<double>::infinity();
    Index count = 0;
    for (Index i = 0; i < n; ++i) {
      if (y[i] != y[i] || y[i] == inf)
        return;
      if (y[i] > -inf) {
        sum += y[i];
        mx = std::max<double>(mx, y[i]);
        ++count;
      }
    }
    if (count <= 1)
      return;
    const double mean = sum / static_cast<double>(count);
    double acc = 0;
    for (Index i = 0; i < n; ++i) {
      if (y[i] > -inf)
        acc += (y[i] - mean) * (y[i] - mean);
    }
    const double threshold = mx - o_.top_n_sigma() * std::sqrt(acc / static_cast<double>(count));
    for (Index i = 0; i < n; ++i) {
      if (static_cast<double>(y[i]) < threshold)
        y[i] = -inf;
    }
  }

  // Any order of the stages (each applied to the distribution the previous ones left, exactly as
  // the doc block states), in double with sorts: O(V log V). The kept set and its weights go
  // where the heap path puts them (cand, cand_weight, by decreasing weight), so the Small draw,
  // probabilities() and kept_count() serve both.
  // One run of the chain; `xtc_cut`: whether XTC removes (its random decision taken). Writes the
  // final distribution as (index, probability) sorted by index.
  template <class Scalar>
  void run_chain(const Scalar* x, Index n, SamplingWorkspace& ws, const TokenHistory& h,
                 bool xtc_cut, std::vector<std::pair<Index, double>>& out) const {
    std::vector<double>& z = ws.chain();
    z.assign(x, x + n);
    std::vector<std::pair<double, Index>>& kept = ws.keyed();
    kept.clear();
    for (Index i = 0; i < n; ++i) {
      if (z[static_cast<std::size_t>(i)] > -std::numeric_limits<double>::infinity())
        kept.emplace_back(0.0, i);
    }
    const auto zi = [&](Index i) -> double& {
      return z[static_cast<std::size_t>(i)];
    };
    const auto z_max = [&] {
      double m = -std::numeric_limits<double>::infinity();
      for (const auto& e : kept)
        m = std::max(m, zi(e.second));
      return m;
    };
    // Keeps the first c entries of `kept` (sorted by the caller's key) plus the following ones
    // whose key equals the c-th's (ties at the boundary are kept).
    const auto cut_sorted = [&](std::size_t c) {
      while (c < kept.size() && kept[c].first == kept[c - 1].first)
        ++c;
      kept.resize(c);
    };
    // The smallest prefix of `kept` (in its current order) whose weight reaches p of the total.
    const auto mass_prefix = [&](double p) {
      const double m = z_max();
      long double total = 0;
      for (const auto& e : kept)
        total += std::exp(zi(e.second) - m);
      long double cum = 0;
      std::size_t c = 0;
      while (c < kept.size()) {
        cum += std::exp(zi(kept[c].second) - m);
        ++c;
        if (cum >= p * total)
          break;
      }
      return c;
    };
    const auto by_key = [](const std::pair<double, Index>& a, const std::pair<double, Index>& c) {
      return a.first < c.first || (a.first == c.first && a.second < c.second);
    };
    for (const SamplerStage st : o_.order()) {
      switch (st) {
        case SamplerStage::Penalties: {
          if (penalty_window(h) == 0)
            break;
          // A kept (finite) logit stays finite (clamp_finite): the kept set is unchanged.
          apply_penalties([&](Index t) -> double& { return zi(t); }, n, ws, h);
          break;
        }
        case SamplerStage::Dry: {
          if (!dry_on_)
            break;
          apply_dry([&](Index t) -> double& { return zi(t); }, n, ws, h);
          break;
        }
        case SamplerStage::Temperature:
          if (temp_ != 1.0) {
            for (const auto& e : kept)
              zi(e.second) = clamp_finite<double>(zi(e.second) / temp_, zi(e.second));
          }
          break;
        case SamplerStage::TopNSigma: {
          if (!sigma_on_ || kept.size() <= 1)
            break;
          long double sum = 0, acc = 0;
          for (const auto& e : kept)
            sum += zi(e.second);
          const long double mean = sum / static_cast<long double>(kept.size());
          for (const auto& e : kept)
            acc += (zi(e.second) - mean) * (zi(e.second) - mean);
          const long double threshold =
              z_max() - o_.top_n_sigma() * std::sqrt(acc / static_cast<long double>(kept.size()));
          kept.erase(std::remove_if(kept.begin(), kept.end(),
                                    [&](const auto& e) {
                                      return static_cast<long double>(zi(e.second)) < threshold;
                                    }),
                     kept.end());
          break;
        }
        case SamplerStage::TopK: {
          if (k_ == 0 || k_ >= static_cast<Index>(kept.size()))
            break;
          for (auto& e : kept)
            e.first = -zi(e.second);
          std::sort(kept.begin(), kept.end(), by_key);
          cut_sorted(static_cast<std::size_t>(k_));
          break;
        }
        case SamplerStage::TypicalP: {
          if (typical_ >= 1.0)
            break;
          // Locally typical sampling (Meister et al. 2023, arXiv 2202.00666): order by
          // |-log q_i - H(q)|, keep the smallest prefix of mass >= typical_p (ties kept).
          const double m = z_max();
          long double total = 0;
          for (const auto& e : kept)
            total += std::exp(zi(e.second) - m);
          const long double log_total = std::log(total);
          long double entropy = 0;
          for (const auto& e : kept) {
            const long double log_q = (zi(e.second) - m) - log_total;
            entropy -= std::exp(log_q) * log_q;
          }
          for (auto& e : kept)
            e.first = static_cast<double>(std::fabs(-((zi(e.second) - m) - log_total) - entropy));
          std::sort(kept.begin(), kept.end(), by_key);
          cut_sorted(mass_prefix(typical_));
          break;
        }
        case SamplerStage::TopP: {
          if (p_ >= 1.0)
            break;
          for (auto& e : kept)
            e.first = -zi(e.second);
          std::sort(kept.begin(), kept.end(), by_key);
          cut_sorted(mass_prefix(p_));
          break;
        }
        case SamplerStage::Xtc: {
          if (!xtc_cut || kept.size() < 2)
            break;
          // Sort by decreasing q (ties by index); the leading tokens with q >= threshold: all but
          // the last of them are removed when there are at least two.
          const double m = z_max();
          long double total = 0;
          for (auto& e : kept) {
            e.first = -zi(e.second);
            total += std::exp(zi(e.second) - m);
          }
          std::sort(kept.begin(), kept.end(), by_key);
          std::size_t above = 0;
          while (above < kept.size()
                 && std::exp(zi(kept[above].second) - m) >= o_.xtc_threshold() * total)
            ++above;
          if (above >= 2)
            kept.erase(kept.begin(), kept.begin() + static_cast<std::ptrdiff_t>(above - 1));
          break;
        }
        case SamplerStage::MinP: {
          if (minp_ <= 0.0)
            break;
          const double m = z_max();
          kept.erase(
              std::remove_if(kept.begin(), kept.end(),
                             [&](const auto& e) { return std::exp(zi(e.second) - m) < minp_; }),
              kept.end());
          break;
        }
      }
    }
    const double m = z_max();
    long double total = 0;
    for (const auto& e : kept)
      total += std::exp(zi(e.second) - m);
    out.clear();
    for (const auto& e : kept)
      out.emplace_back(e.second, static_cast<double>(std::exp(zi(e.second) - m) / total));
    std::sort(out.begin(), out.end());
  }

  // The general path: the chain (twice with XTC, mixed by its probability: the draw's law is
  // then exactly llama.cpp's, whose XTC takes its own uniform), then mirostat's truncation. The
  // kept set and its weights go where the heap path puts them (cand, cand_weight, by decreasing
  // weight), so the Small draw, probabilities() and kept_count() serve both.
  template <class Scalar>
  Plan<Scalar> general_plan(const Scalar* x, Index n, SamplingWorkspace& ws, const TokenHistory& h,
                            const MirostatState* mirostat) const {
    auto& b = ws.buffers<Scalar>();
    std::vector<std::pair<Index, double>>& dist = ws.branch(0);
    const double pi = xtc_on_ ? o_.xtc_probability() : 0.0;
    run_chain(x, n, ws, h, pi >= 1.0, dist);
    if (pi > 0.0 && pi < 1.0) {
      std::vector<std::pair<Index, double>>& cut = ws.branch(1);
      std::vector<std::pair<Index, double>>& mixed = ws.branch(2);
      run_chain(x, n, ws, h, true, cut);
      mixed.clear();
      std::size_t a = 0, c = 0;
      while (a < dist.size() || c < cut.size()) {
        if (c == cut.size() || (a < dist.size() && dist[a].first < cut[c].first)) {
          mixed.emplace_back(dist[a].first, (1 - pi) * dist[a].second);
          ++a;
        } else if (a == dist.size() || cut[c].first < dist[a].first) {
          mixed.emplace_back(cut[c].first, pi * cut[c].second);
          ++c;
        } else {
          mixed.emplace_back(dist[a].first, (1 - pi) * dist[a].second + pi * cut[c].second);
          ++a;
          ++c;
        }
      }
      dist.swap(mixed);
    }
    // Decreasing weight, ties by index: the draw's order.
    std::sort(dist.begin(), dist.end(), [](const auto& u, const auto& v) {
      return u.second > v.second || (u.second == v.second && u.first < v.first);
    });
    std::size_t count = dist.size();
    if (mirostat_on_ && mirostat != nullptr) {
      // Mirostat v2: keep the tokens of surprise -log2 q <= mu, at least the most probable.
      std::size_t keep = 1;
      while (keep < count && -std::log2(dist[keep].second) <= mirostat->mu)
        ++keep;
      count = keep;
    }
    b.cand.clear();
    b.cand_weight.clear();
    long double total = 0;
    for (std::size_t j = 0; j < count; ++j) {
      b.cand.emplace_back(x[dist[j].first], dist[j].first);
      b.cand_weight.push_back(dist[j].second);
      total += dist[j].second;
    }
    Plan<Scalar> plan;
    plan.kind = Kind::Small;
    plan.count = b.cand.size();
    plan.total = static_cast<double>(total);
    return plan;
  }

  SamplerOptions o_;
  // What configure() derived from o_: the effective parameters (neutral for a stage left out of
  // the order) and the path.
  bool greedy_ = false, fast_ = true, temp_last_ = false, penalties_on_ = false, sigma_on_ = false;
  bool xtc_on_ = false, mirostat_on_ = false, dry_on_ = false;
  double temp_ = 1.0, typical_ = 1.0, p_ = 1.0, minp_ = 0.0;
  Index k_ = 0;
};

// The k largest log-probabilities of log_softmax(x), normalized over the whole row:
//   log_probs(j) = x_{i_j} - m - log(sum_i exp(x_i - m)),  indices(j) = i_j,
// i_0, i_1, ... in decreasing order of x, ties by increasing index. indices: any writable integer
// vector of k entries; log_probs: a vector of x's scalar type with k entries. 0 <= k <= x.size(),
// else std::invalid_argument. Accuracy: |error| <= 4 eps (1 + |exact|) (the sum in the Softmax
// kernel's compensated form, the rest in double). Special values: a NaN anywhere gives indices -1
// and NaN log-probabilities; a row of only -inf gives -inf (indices 0, 1, ...); +inf entries share
// the mass (-log count). With a workspace, no allocation once it has grown.
template <class XprX, class OutI, class OutL>
void top_k_log_softmax(const Eigen::DenseBase<XprX>& x, Index k, OutI&& indices_out,
                       OutL&& log_probs_out, SamplingWorkspace& ws) {
  using Scalar = typename XprX::Scalar;
  using XprI = detail::output_xpr_t<OutI>;
  using XprL = detail::output_xpr_t<OutL>;
  detail::static_check_scalar<Scalar>();
  static_assert(std::is_same_v<Scalar, typename XprL::Scalar>,
                "softmaxlab: logits and log_probs must have the same scalar type");
  auto& indices = detail::writable_output(std::forward<OutI>(indices_out));
  auto& log_probs = detail::writable_output(std::forward<OutL>(log_probs_out));
  detail::require_vector("top_k_log_softmax", x.rows(), x.cols());
  const Index n = x.size();
  if (k < 0 || k > n)
    detail::fail("top_k_log_softmax: k must be in [0, ", n, "] (the row length), but got ", k);
  if (indices.size() != k || log_probs.size() != k) {
    detail::fail("top_k_log_softmax: indices and log_probs must have k = ", k, " entries, but got ",
                 indices.size(), " and ", log_probs.size());
  }
  if (k == 0)
    return;
  using IndexScalar = typename XprI::Scalar;
  const Scalar inf = std::numeric_limits<Scalar>::infinity();
  auto& b = ws.buffers<Scalar>();
  const Scalar* xs = detail::contiguous_row<Scalar>(x, b.row);
  const Scalar m = detail::block_maxima(xs, n, b.block_max);  // and the row max
  if (m != m) {
    indices.setConstant(IndexScalar(-1));
    log_probs.setConstant(std::numeric_limits<Scalar>::quiet_NaN());
    return;
  }
  // Candidates: every logit >= the k-th largest finite one (all of them when fewer are finite).
  const Scalar kth = detail::kth_largest(xs, n, k, b.block_max, b.heap);
  detail::gather_at_least(xs, n, static_cast<Index>(b.heap.size()) < k ? -inf : kth, b.block_max,
                          b.cand);
  const auto middle = b.cand.begin() + k;
  std::partial_sort(b.cand.begin(), middle, b.cand.end(), detail::by_decreasing_logit<Scalar>);
  double log_sum = 0;
  Index infinities = 0;
  if (m == inf) {
    infinities = static_cast<Index>(std::count(xs, xs + n, inf));
  } else if (m > -inf) {
    detail::CompensatedSum<Scalar> sum0, sum1;
    detail::scaled_exp_sum<true>(xs, n, m, Scalar(1), sum0, sum1);
    // Remove the kernel's 2^64 scale exactly before the log (not by subtracting 64 log 2 after it,
    // which would cost 44 eps of absolute error).
    log_sum = static_cast<double>(
        std::log(std::ldexp(sum0.total() + sum1.total(), -detail::kExpScaleLog2<Scalar>)));
  }
  for (Index j = 0; j < k; ++j) {
    const auto& c = b.cand[static_cast<std::size_t>(j)];
    indices.coeffRef(j) = static_cast<IndexScalar>(c.second);
    Scalar v;
    if (m == inf) {
      v = c.first == inf ? static_cast<Scalar>(-std::log(double(infinities))) : -inf;
    } else if (m == -inf || c.first == -inf) {
      v = -inf;
    } else {
      v = static_cast<Scalar>((double(c.first) - double(m)) - log_sum);
    }
    log_probs.coeffRef(j) = v;
  }
}
template <class XprX, class OutI, class OutL>
void top_k_log_softmax(const Eigen::DenseBase<XprX>& x, Index k, OutI&& indices, OutL&& log_probs) {
  SamplingWorkspace ws;
  top_k_log_softmax(x, k, std::forward<OutI>(indices), std::forward<OutL>(log_probs), ws);
}

// Row r of Indices / LogProbs (rows x k) = top_k_log_softmax of row r of L.
template <class XprX, class OutI, class OutL>
void top_k_log_softmax_rowwise(const Eigen::DenseBase<XprX>& logits, Index k, OutI&& indices_out,
                               OutL&& log_probs_out, SamplingWorkspace& ws) {
  auto& indices = detail::writable_output(std::forward<OutI>(indices_out));
  auto& log_probs = detail::writable_output(std::forward<OutL>(log_probs_out));
  if (k < 0 || k > logits.cols())
    detail::fail("top_k_log_softmax_rowwise: k must be in [0, ", logits.cols(),
                 "] (the row length), but got ", k);
  if (indices.rows() != logits.rows() || indices.cols() != k || log_probs.rows() != logits.rows()
      || log_probs.cols() != k) {
    detail::fail("top_k_log_softmax_rowwise: indices and log_probs must be ", logits.rows(), " x ",
                 k, ", but got ", indices.rows(), " x ", indices.cols(), " and ", log_probs.rows(),
                 " x ", log_probs.cols());
  }
  for (Index r = 0; r < logits.rows(); ++r)
    top_k_log_softmax(logits.row(r), k, indices.row(r), log_probs.row(r), ws);
}
template <class XprX, class OutI, class OutL>
void top_k_log_softmax_rowwise(const Eigen::DenseBase<XprX>& logits, Index k, OutI&& indices,
                               OutL&& log_probs) {
  SamplingWorkspace ws;
  top_k_log_softmax_rowwise(logits, k, std::forward<OutI>(indices), std::forward<OutL>(log_probs),
                            ws);
}

}  // namespace softmaxlab
