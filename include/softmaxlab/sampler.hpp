// softmaxlab: token sampling as inference engines chain it (penalties, logit bias, token masks,
// top-n-sigma, top-k, typical-p, top-p, min-p, temperature; exact draws), exact speculative
// verification, and top-k log-probabilities, without sorting the vocabulary on the common paths.
//
//   Sampler s(SamplerOptions().with_penalties(1.1, 0, 0, 64).with_top_k(40).with_top_p(0.95)
//                 .with_min_p(0.05).with_temperature(0.8));      // llama.cpp's default chain
//   Index t = s.sample(logits, gen[, workspace[, history]]);    // one token of a row of V logits
//   s.probabilities(logits, probs[, workspace[, history]]);     // the distribution drawn from
//   s.kept_count(logits[, workspace[, history]]);               // the size of its support
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
#include "detail/sampling_select.hpp"
#include "random.hpp"
#include "sampler_options.hpp"

namespace softmaxlab {

// The sampler: the options' chain applied to a row of logits, exact draws and probabilities,
// kept_count and speculative verify; see the header's doc block.
class Sampler {
 public:
  // Buckets of the large path's histogram: width 1/64 in (m - x) / T, the last one open-ended.
  static constexpr int kBuckets = 2048;
  // Buckets per unit of (m - x) / T.
  static constexpr double kBucketsPerUnit = 64.0;
  // Largest k handled by the heap path (block maxima; beyond it std::nth_element and the large
  // path).
  static constexpr Index kHeapMaxK = 1024;

  // Builds the chain from the options (each value was validated when it was set).
  explicit Sampler(const SamplerOptions& options = SamplerOptions()) : o_(options) { configure(); }

  // The options this object was built with.
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
  // The same with a workspace of its own (it allocates).
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
  // The same with a workspace of its own (it allocates).
  template <class XprX, class Out>
  void probabilities(const Eigen::DenseBase<XprX>& x, Out&& probs) const {
    SamplingWorkspace ws;
    probabilities(x, std::forward<Out>(probs), ws);
  }
  // The same with a workspace of its own (it allocates).
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
  // The same with a workspace of its own (it allocates).
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
                           const TokenHistory& history = TokenHistory()) const;
  // The same with a workspace of its own (it allocates).
  template <class XprT, class XprQ, class XprD, class Gen>
  SpeculativeResult verify(const Eigen::DenseBase<XprT>& target_logits,
                           const Eigen::DenseBase<XprQ>& draft_probs,
                           const Eigen::DenseBase<XprD>& draft_tokens, Gen& gen) const;

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
  // The same with a workspace of its own (it allocates).
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
  static Scalar reported(double w, double total);

  template <class Scalar>
  Plan<Scalar> make_plan(const Scalar* x, Index n, SamplingWorkspace& ws,
                         const TokenHistory& history, const MirostatState* mirostat) const;

  // The overlay's blocks: each block holding a modified logit is copied into `patch` with the
  // overlay applied and its max recomputed; block_src points at every block's logits. Returns
  // the row's max (the row holds no NaN: make_plan checked).
  template <class Scalar>
  Scalar patch_blocks(const Scalar* x, Index n, SamplingWorkspace& ws) const;

  // Top-k by the block maxima (detail::top_k_candidates), then only the candidates are weighted,
  // cut and reweighted.
  template <class Scalar>
  Plan<Scalar> small_plan(const Scalar* x, Index n, Scalar m, SamplingWorkspace& ws) const;

  // Weights of the whole row; top-k (large k) by nth_element, top-p by the histogram.
  template <class Scalar>
  Plan<Scalar> large_plan(const Scalar* x, Index n, Scalar m, SamplingWorkspace& ws) const;

  template <class Scalar>
  static double kept_sum(const Scalar* x, const Scalar* w, Index n, const Plan<Scalar>& plan);

  // The smallest logit of the top-p prefix over {x_i >= floor}: the histogram of the weights over
  // the buckets of (m - x_i) / T locates the boundary bucket; only its tokens are sorted.
  template <class Scalar>
  Scalar top_p_threshold(const Scalar* x, const Scalar* w, Index n, Scalar m, Scalar s,
                         Scalar floor, double total, SamplingWorkspace& ws) const;

  template <class Scalar, class Gen>
  Index draw(const Plan<Scalar>& plan, const Scalar* x, Index n, Gen& gen,
             SamplingWorkspace& ws) const;

  // The probability probabilities() reports for token t under `plan` (as a double).
  template <class Scalar>
  double plan_probability(const Plan<Scalar>& plan, const Scalar* xs, Index t,
                          SamplingWorkspace& ws) const;

  // fn(j, p_j) for every token j that `plan` may give a positive probability (p_j as
  // probabilities() reports it; some may be 0 after rounding), in a fixed order.
  template <class Scalar, class Fn>
  void for_each_support(const Plan<Scalar>& plan, const Scalar* xs, Index n, SamplingWorkspace& ws,
                        const Fn& fn) const;

  // Which stages are on, and whether their order allows the fast paths: [penalties]
  // [top-n-sigma] applied to a copy of the row, then top-k, top-p, min-p in this relative order
  // with temperature before top-p and min-p or after both (the latter on the heap path only).
  void configure();

  // The mask's and the bias's token ids against the vocabulary size n.
  void check_vocabulary(Index n) const;

  Index penalty_window(const TokenHistory& h) const;

  // The row the chain reads: x itself, or a copy with the mask, the bias and (on the fast paths)
  // the penalties and top-n-sigma applied. The mask and the bias cost O(entries) beyond the copy
  // (a boolean mask O(V)); the penalties O(window log window).
  template <class XprX>
  const typename XprX::Scalar* prepare(const Eigen::DenseBase<XprX>& x, SamplingWorkspace& ws,
                                       const TokenHistory& h) const;

  // The logit v after a bias b: b = -inf bans (even a +inf logit; a NaN stays).
  template <class T>
  static T apply_bias(T v, double bias);

  // v, except that a finite input pushed beyond the range of T by a stage stays finite (the
  // largest finite value of its sign): a penalty or a bias must not create an infinity.
  template <class T>
  static T clamp_finite(double v, T before);

  // llama.cpp's penalties (llama_sampler_penalties_apply): for each token of count c > 0 in the
  // window, z = z <= 0 ? z * repeat : z / repeat, then z -= c * frequency + presence.
  // z(t) returns a reference to token t's logit (a dense row, or the sparse overlay).
  template <class Z>
  void apply_penalties(const Z& z, Index n, SamplingWorkspace& ws, const TokenHistory& h) const;

  // DRY (see SamplerOptions::with_dry): for each position i of the window but the last, the
  // length of the match between the window's end and the segment ending at i (stopping at a
  // breaker in the end part, or at the window's start), credited to the token h[i + 1]. Cost
  // O(w L), L the matched lengths: O(w^2) on a window of one repeated token.
  template <class Z>
  void apply_dry(const Z& z, Index n, SamplingWorkspace& ws, const TokenHistory& h) const;

  // Top-n-sigma (Tang et al. 2024, arXiv 2411.07641; llama.cpp's top_n_sigma): over the finite
  // entries, mean and population standard deviation sigma; every entry below max - n sigma
  // becomes -inf. Skipped for a row holding a NaN or +inf (their own rules apply).
  template <class Scalar>
  void top_n_sigma_in_place(Scalar* y, Index n) const;

  // Any order of the stages (each applied to the distribution the previous ones left, exactly as
  // the doc block states), in double with sorts: O(V log V). The kept set and its weights go
  // where the heap path puts them (cand, cand_weight, by decreasing weight), so the Small draw,
  // probabilities() and kept_count() serve both.
  // One run of the chain; `xtc_cut`: whether XTC removes (its random decision taken). Writes the
  // final distribution as (index, probability) sorted by index.
  template <class Scalar>
  void run_chain(const Scalar* x, Index n, SamplingWorkspace& ws, const TokenHistory& h,
                 bool xtc_cut, std::vector<std::pair<Index, double>>& out) const;

  // The general path: the chain (twice with XTC, mixed by its probability: the draw's law is
  // then exactly llama.cpp's, whose XTC takes its own uniform), then mirostat's truncation. The
  // kept set and its weights go where the heap path puts them (cand, cand_weight, by decreasing
  // weight), so the Small draw, probabilities() and kept_count() serve both.
  template <class Scalar>
  Plan<Scalar> general_plan(const Scalar* x, Index n, SamplingWorkspace& ws, const TokenHistory& h,
                            const MirostatState* mirostat) const;

  SamplerOptions o_;
  // What configure() derived from o_: the effective parameters (neutral for a stage left out of
  // the order) and the path.
  bool greedy_ = false, fast_ = true, temp_last_ = false, penalties_on_ = false, sigma_on_ = false;
  bool xtc_on_ = false, mirostat_on_ = false, dry_on_ = false;
  double temp_ = 1.0, typical_ = 1.0, p_ = 1.0, minp_ = 0.0;
  Index k_ = 0;
};

}  // namespace softmaxlab

// The out-of-line members of Sampler, one concern each (they include this header first).
#include "sampling/chain.hpp"
#include "sampling/plan.hpp"
#include "sampling/verify.hpp"
