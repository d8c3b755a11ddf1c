// softmaxlab: sampling the next token from a linear output layer without forming the N x V logits:
// LinearHeadSampler draws token n from the Sampler's distribution of the logits
// clang-format off
//   z_n = softcap(H_n W^T + b)         H: N x d hidden states, W: V x d classifier, b: V bias
//   softcap(r) = cap * tanh(r * (1 / cap))   (with_softcap(cap), Gemma 2; LinearCrossEntropy's)
// clang-format on
// with the Sampler's options (sampler.hpp: temperature, top-k, top-p, min-p, top-n-sigma,
// typical-p, XTC and their order), block by block over the vocabulary.
//
// Call forms:
// clang-format off
//   LinearHeadSampler head(SamplerOptions().with_top_k(40).with_temperature(0.8));
//   head.sample(H, W, seed, tokens[, first_stream]);                 // N integer tokens
//   head.sample(H, W, b, seed, tokens[, first_stream]);              // b: V (or empty = none)
//   head.sample(H, W, b, seed, tokens, log_probs, ws[, first_stream]); // + log p(token), reuse ws
//   head.probabilities(H, W, b, n, probs);                           // token n's distribution (V)
//   head.path();  head.workspace_bytes(N, V[, scalar_bytes[, threads[, d]]]); // path, memory
// clang-format on
//
// Paths (path() says which; each gives the distribution of Sampler::probabilities on the
// materialized logits z, the Sampler's rules for NaN, -inf and +inf rows included):
//   - GumbelMax: no truncation stage on (temperature only). The exact Gumbel-max trick over
//     vocabulary blocks: for a block of B classes (default 2048) the logits of a tile of tokens
//     come from one GEMM, are scaled by 1/T, and get the noise g = -log(-log u) with u from
//     Philox4x32(seed, first_stream + n) at position c (c the class; two words per double), i.e.
//     keyed by (seed, token, class): the token does not depend on the block size or the thread
//     count (only the logits' GEMM rounding may differ with the block shape, which can change
//     the token only when two perturbed scores are within that rounding). The running argmax of
//     z/T + g is kept, first index on ties; log p(token) from an online log-sum-exp over the
//     blocks (LogNormalizer per block, merged exactly), computed only when asked for. A +inf
//     logit: the Gumbel-max over the +inf entries alone (uniform among them, as the Sampler).
//     T = 0 (greedy): the first index of the largest logit, no noise.
//   - TopK: top-k on and before every other truncation stage in the order (temperature may be
//     anywhere): a running candidate set per token (every logit >= the current k-th largest of
//     the candidates, compacted by nth_element when it passes max(2k, k + 1024) entries; ties at
//     the k-th value kept), then the Sampler itself runs on the candidate logits in index order
//     (top-p, min-p, typical-p, XTC, temperature as its chain defines them: after top-k they see
//     only the kept set, so the result is the full row's). For k <= 1024 the distribution and
//     even the token equal Sampler::sample_rowwise_philox(z, seed, tokens, first_stream)
//     bit for bit when the logits are bit-identical; beyond, within the Sampler's stated 4 eps.
//   - TopPMinP: top-p and/or min-p without top-k (temperature anywhere in the order: first, last
//     or between them). One pass over W with a running candidate set per token: class i can be
//     kept only if
// clang-format off
//       top-p (cutting the whole row, at temperature t):  z_i > t (log Z_seen + log((1 - p) / V))
//       min-p (or top-p after min-p):                      z_i >= m_seen + t log(min_p)
//                                                          (z_i >= m_seen + t log((1 - p) / V))
// clang-format on
//     (a kept class has q_i > (1 - p) / V: the classes ranked at or after it hold > 1 - p; and
//     q_i <= exp(z_i / t) / Z_seen; detail/head_candidates.hpp), less a margin of 1e-4 t +
//     1e-6 |bound| in z and (1 - p) taken as 0.999 (1 - p) - 1e-6, so rounding never drops a
//     class the Sampler keeps. The bounds only rise, so dropped classes never return; the buffer
//     is compacted when it passes max(2048, 2 x its last size). The whole row's log-sum-exp of
//     z / t (LogNormalizer per block, merged exactly, as GumbelMax) gives top-p its normalizer:
//     the chain then runs on the candidates (in double, the Sampler's rules: sort by decreasing
//     z, smallest prefix of mass >= p Z_full, ties kept; min-p on exp(z - max)), and one 53-bit
//     uniform from Philox4x32(seed, first_stream + n) walks the kept weights in the Sampler's
//     order (by class on its fast path, else by decreasing weight), so the token equals
//     sample_rowwise_philox's on bit-identical logits except when u lands within the two
//     computations' rounding of the weights (a few ulps of the logits' type) of a cumulative
//     boundary (the tests find them equal on every draw).
//     Cap: a row whose candidates still exceed max(4096, V / 16) after a compaction stops
//     collecting and falls back to RowTiles for that row alone (one more GEMV over W); so does
//     top-p with 1 - p <= 1e-6 (the bound is then void). Flat rows (logits within a few units)
//     fall back: their nucleus really is a large part of V.
//   - RowTiles: any other chain (typical-p, top-n-sigma or XTC without a top-k before them: they
//     need whole-row statistics, the entropy, the standard deviation or the sorted row, which no
//     bound on single logits captures; top-k after top-p or min-p): a tile of up to `token_tile`
//     rows (default 16) of z is materialized (tile x V, not N x V) and Sampler::sample draws each
//     row with Philox4x32(seed, first_stream + n): the tokens equal sample_rowwise_philox's.
//
// Parameters and ranges: H (N x d) and W (V x d) of one scalar type, float, double, Eigen::half
// or Eigen::bfloat16; b of that type or the compute type (double for double, float otherwise);
// any Eigen expression (read by blocks of rows). Half and bfloat16: float accumulation, as
// LinearCrossEntropy: the tile's rows of H are widened once per tile and W's rows in chunks of
// at most 512 KB of float inside each block (detail::lce_widen), so W is never copied; the
// result is the float path's on the widened values (widening is exact). b: V entries, or 0 entries for no bias; an entry
// -inf bans its class (it is never drawn; a +inf logit plus a -inf bias gives NaN, the row's
// rule then applies). softcap: 0 (off) or finite > 0. block size >= 1, token tile >= 1. tokens:
// an integer vector of N entries; log_probs: a floating vector of N entries (double).
// Unsupported options (std::invalid_argument at construction, naming the option): the penalties
// and DRY (they need a history per token: use Sampler::sample on materialized rows), mirostat v2
// (a state per sequence), the sparse logit bias and the token masks (pass them through b: add the
// bias, put -inf at banned classes).
// Errors (std::invalid_argument, naming the parameter and value): H and W with different d, b not
// of size V or 0, tokens or log_probs not of N entries, a bad softcap, block size or tile.
//
// Results: tokens(n) in [0, V), or -1 when z_n holds a NaN or only -inf (or V = 0), as the
// Sampler. log_probs(n) = log of the probability of tokens(n) under the distribution drawn from
// (the Sampler's probabilities, in double): 0 for greedy, -log(count) for +inf logits, NaN where
// the token is -1.
//
// Accuracy: the logits carry the GEMM's rounding (d eps sum_k |h_k w_k| at worst). Given the
// logits, TopPMinP's probabilities are within 4 eps (1 + |z_i - max z| / T) relative of the exact
// chain, the Sampler's bound (double arithmetic, long double sums; the same kept set except
// within rounding of a boundary, as the Sampler; tested against Sampler::probabilities at twice
// the bound, the sum of both errors); TopK and RowTiles are the Sampler's (exact rules, 4 eps (1 + |z_i - max z|) relative
// for the probabilities); GumbelMax draws exactly from softmax(z/T) up to the 23 (52) bits of
// the uniforms and the <= 1.9 ulp logs (gumbel.hpp); the scaling z/T rounds once in the logits'
// type, so its probabilities() and log p are within 4 eps (1 + |z_i/T| + max |z/T|) (relative,
// resp. absolute) of softmax(z/T) in exact arithmetic.
// tests/test_linear_head_sampling.cpp: chi-square of GumbelMax draws, TopK and RowTiles equal to
// the Sampler's bit for bit on exact data, block-size independence, bans, NaN, errors, allocations.
// tests/test_linear_head_top_p.cpp: TopPMinP's tokens equal sample_rowwise_philox's and its
// probabilities within the bound above of Sampler::probabilities (nine chains, two data sets),
// chi-square of its draws, the cap's fallback; half and bfloat16 against float (the allocation
// test of test_linear_head_sampling.cpp covers TopPMinP).
//
// Workspace (Workspace::bytes(); workspace_bytes(N, V) bounds it): per thread a tile x B
// logit block and the noise scratch of B classes (GumbelMax), plus per token of the tile a
// candidate buffer of at most max(2k, k + 1024) + B entries (TopK) or 2 cap + B entries
// (TopPMinP, cap = max(4096, V / 16); 16 bytes each, plus a fallback row of V logits), or a
// tile x V row block plus the Sampler's workspace of V (RowTiles); half and bfloat16 add the
// widened tile of H (tile x d floats) and one W chunk (<= 512 KB). Nothing proportional to N x V. With a Workspace
// passed in, later calls of the same shapes allocate nothing on the GumbelMax, TopK and TopPMinP
// paths (Eigen's GEMM packs its operands on the stack up to 128 KB, beyond on the heap).
// Threads: with SOFTMAXLAB_USE_OPENMP and -fopenmp, token tiles run on OpenMP threads (the result
// does not depend on the thread count: every token has its own Philox stream).
// Performance: one pass over W per token tile, the materialized path's GEMM work without the N x V
// logits' write and re-read; bench/bench_linear_head_sampling.cpp (head_sampling/), N = 16.
//
// References: the Gumbel-max trick (Gumbel 1954; Maddison, Tarlow and Minka 2014, "A* sampling");
// fused top-k softmax (Milakov and Gimelshein 2018, arXiv 1805.02867); the logit softcap of
// Gemma 2 and Apple's Cut Cross-Entropy (linear_cross_entropy's logits).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "../detail/checks.hpp"
#include "../detail/common.hpp"
#include "../detail/functor_base.hpp"
#include "../detail/head_candidates.hpp"
#include "../detail/kernels.hpp"
#include "../detail/log_normalizer.hpp"
#include "../detail/normalizer_merge.hpp"
#include "../detail/scalar_types.hpp"
#include "../gumbel.hpp"
#include "../random.hpp"
#include "../sampler.hpp"
#include "../sampler_options.hpp"
#include "linear_head_workspace.hpp"

namespace softmaxlab {

// Samples next tokens from softcap(H W^T + b) with the Sampler's options; see the doc block.
class LinearHeadSampler {
 public:
  // Which algorithm the options select (see the doc block).
  enum class Path { GumbelMax, TopK, TopPMinP, RowTiles };
  // Default vocabulary block (classes per GEMM block).
  static constexpr Index kDefaultBlock = 2048;
  // Default token tile (tokens per GEMM block; the tile's rows share each pass over W).
  static constexpr Index kDefaultTile = 16;
  // The scratch memory type.
  using Workspace = LinearHeadWorkspace;

  // Validates the options (see the doc block for the unsupported ones) and selects the path.
  explicit LinearHeadSampler(const SamplerOptions& options = SamplerOptions()) : sampler_(options) {
    const SamplerOptions& o = options;
    const auto on = [&](SamplerStage st) {
      return std::find(o.order().begin(), o.order().end(), st) != o.order().end();
    };
    if (on(SamplerStage::Penalties)
        && (o.repeat_penalty() != 1.0 || o.frequency_penalty() != 0.0
            || o.presence_penalty() != 0.0)
        && o.penalty_last_n() != 0)
      detail::fail("LinearHeadSampler: the penalties need a history per token (repeat ",
                   o.repeat_penalty(), ", frequency ", o.frequency_penalty(), ", presence ",
                   o.presence_penalty(), "); use Sampler::sample on materialized rows");
    if (on(SamplerStage::Dry) && o.dry_multiplier() > 0.0 && o.dry_last_n() != 0)
      detail::fail("LinearHeadSampler: DRY needs a history per token (dry_multiplier ",
                   o.dry_multiplier(), "); use Sampler::sample on materialized rows");
    if (o.mirostat_v2())
      detail::fail("LinearHeadSampler: mirostat v2 needs a state per sequence; use Sampler");
    if (!o.logit_bias().empty())
      detail::fail("LinearHeadSampler: logit_bias (", o.logit_bias().size(),
                   " entries) is not supported; add it to the head's bias b");
    if (!o.token_mask().empty() || o.has_allowed_tokens())
      detail::fail(
          "LinearHeadSampler: token masks are not supported; put -inf in the head's "
          "bias b at the banned classes");
    greedy_ = on(SamplerStage::Temperature) && o.temperature() == 0.0;
    const double t = on(SamplerStage::Temperature) && !greedy_ ? o.temperature() : 1.0;
    inv_t_ = 1.0 / t;
    k_ = on(SamplerStage::TopK) ? o.top_k() : 0;
    const auto cut_on = [&](SamplerStage st) {
      switch (st) {
        case SamplerStage::TopNSigma:
          return o.top_n_sigma() > 0.0;
        case SamplerStage::TypicalP:
          return o.typical_p() < 1.0;
        case SamplerStage::TopP:
          return o.top_p() < 1.0;
        case SamplerStage::MinP:
          return o.min_p() > 0.0;
        case SamplerStage::Xtc:
          return o.xtc_probability() > 0.0 && o.xtc_threshold() <= 0.5;
        default:
          return false;
      }
    };
    bool any_cut = false, cut_before_k = false, seen_k = false, whole_row = false;
    chain_.temperature = t;  // top-p and min-p: only when their stage is in the order
    for (const SamplerStage st : o.order()) {
      seen_k = seen_k || (st == SamplerStage::TopK && k_ > 0);
      if (cut_on(st)) {
        any_cut = true;
        cut_before_k = cut_before_k || !seen_k;
        whole_row = whole_row || (st != SamplerStage::TopP && st != SamplerStage::MinP);
        if (st == SamplerStage::TopP)
          chain_.top_p = o.top_p();
        if (st == SamplerStage::MinP)
          chain_.min_p = o.min_p();
        chain_.add(st == SamplerStage::TopP ? detail::HeadCut::TopP : detail::HeadCut::MinP);
      } else if (st == SamplerStage::Temperature && t != 1.0) {
        chain_.add(detail::HeadCut::Temperature);
      }
    }
    if (greedy_ || (k_ == 0 && !any_cut))
      path_ = Path::GumbelMax;
    else if (k_ > 0 && !cut_before_k)
      path_ = Path::TopK;
    else if (k_ == 0 && !whole_row)
      path_ = Path::TopPMinP;
    else
      path_ = Path::RowTiles;
  }

  // The Sampler options this object was built with.
  const SamplerOptions& options() const { return sampler_.options(); }
  // The path the options select.
  Path path() const { return path_; }
  // The softcap this object was built with (0 = off).
  double softcap() const { return softcap_; }
  // The vocabulary block this object was built with.
  Index block_size() const { return block_; }
  // The token tile this object was built with.
  Index token_tile() const { return tile_; }

  // Logit softcap cap * tanh(r / cap) (Gemma 2, LinearCrossEntropy's); 0 turns it off.
  [[nodiscard]] LinearHeadSampler with_softcap(double cap) const {
    if (!(cap == 0 || (cap > 0 && std::isfinite(cap))))
      detail::fail("LinearHeadSampler: softcap must be 0 (off) or finite and > 0, but got ", cap);
    LinearHeadSampler s = *this;
    s.softcap_ = cap;
    return s;
  }
  // Classes per GEMM block (>= 1; default 2048): the workspace's size, not the result's.
  [[nodiscard]] LinearHeadSampler with_block_size(Index classes) const {
    return with_count("block_size", &LinearHeadSampler::block_, classes);
  }
  // Tokens per GEMM tile (>= 1; default 16): each tile reads W once.
  [[nodiscard]] LinearHeadSampler with_token_tile(Index tokens) const {
    return with_count("token_tile", &LinearHeadSampler::tile_, tokens);
  }

  // tokens(n) drawn from row n's distribution (no bias).
  template <class XH, class XW, class Out>
  void sample(const Eigen::MatrixBase<XH>& h, const Eigen::MatrixBase<XW>& w, std::uint64_t seed,
              Out&& tokens, std::uint64_t first_stream = 0) const {
    const Eigen::Matrix<typename XH::Scalar, Eigen::Dynamic, 1> none;
    Workspace ws;
    run(h, w, none, seed, tokens, static_cast<Eigen::VectorXd*>(nullptr), ws, first_stream);
  }
  // The same with a bias b (V entries, or 0 for none).
  template <class XH, class XW, class XB, class Out>
  void sample(const Eigen::MatrixBase<XH>& h, const Eigen::MatrixBase<XW>& w,
              const Eigen::MatrixBase<XB>& b, std::uint64_t seed, Out&& tokens,
              std::uint64_t first_stream = 0) const {
    Workspace ws;
    run(h, w, b, seed, tokens, static_cast<Eigen::VectorXd*>(nullptr), ws, first_stream);
  }
  // The same, also writing log p(token) into log_probs (N doubles), with a reusable workspace.
  template <class XH, class XW, class XB, class Out, class OutL>
  void sample(const Eigen::MatrixBase<XH>& h, const Eigen::MatrixBase<XW>& w,
              const Eigen::MatrixBase<XB>& b, std::uint64_t seed, Out&& tokens, OutL&& log_probs,
              Workspace& ws, std::uint64_t first_stream = 0) const {
    auto& lp = detail::writable_output(std::forward<OutL>(log_probs));
    detail::require_vector("LinearHeadSampler: log_probs", lp.rows(), lp.cols());
    if (lp.size() != h.rows())
      detail::fail("LinearHeadSampler: log_probs must have N = ", h.rows(), " entries, but got ",
                   lp.size());
    run(h, w, b, seed, tokens, &lp, ws, first_stream);
  }

  // probs = the distribution token n is drawn from (V entries), computed by this object's path
  // (the debug entry point the tests compare with Sampler::probabilities).
  template <class XH, class XW, class XB, class Out>
  void probabilities(const Eigen::MatrixBase<XH>& h, const Eigen::MatrixBase<XW>& w,
                     const Eigen::MatrixBase<XB>& b, Index n, Out&& probs_out) const {
    using Scalar = detail::compute_scalar_t<typename XH::Scalar>;
    auto& probs = detail::writable_output(std::forward<Out>(probs_out));
    const Index v = w.rows();
    check_shapes(h, w, b);
    if (n < 0 || n >= h.rows())
      detail::fail("LinearHeadSampler::probabilities: token ", n, " must be in [0, N = ", h.rows(),
                   ")");
    detail::require_vector("LinearHeadSampler::probabilities", probs.rows(), probs.cols());
    if (probs.size() != v)
      detail::fail("LinearHeadSampler::probabilities: probs must have V = ", v,
                   " entries, but got ", probs.size());
    Workspace ws;
    auto& slot = ws.slots<Scalar>(1)[0];
    probs.setZero();
    with_rows(h, n, 1, slot, [&](const auto& hr) { probabilities_row(hr, w, b, probs, slot); });
  }

  // Bytes of the workspace for N tokens, V classes (d does not enter: H and W are read in place)
  // on `threads` threads (0: as many as sample() would use), for float (scalar_bytes 4), double
  // (8), or half and bfloat16 (2: then d, the hidden size, sizes the widened tile of H): an upper
  // bound of bytes().
  std::size_t workspace_bytes(Index n, Index v, std::size_t scalar_bytes = sizeof(float),
                              Index threads = 0, Index d = 0) const {
    if (threads <= 0) {
      threads = 1;
#if SOFTMAXLAB_PARALLEL_SLICES
      if (n > tile_ && !omp_in_parallel())
        threads = omp_get_max_threads();
#endif
    }
    const auto nt = static_cast<std::size_t>(std::min(tile_, std::max<Index>(n, 1)));
    const auto bl = static_cast<std::size_t>(std::min(block_, std::max<Index>(v, 1)));
    const auto uv = static_cast<std::size_t>(v);
    std::size_t per = 0;
    if (scalar_bytes == 2) {  // half, bfloat16: float compute, the widened H tile and W chunk
      scalar_bytes = sizeof(float);
      per = scalar_bytes * (nt * static_cast<std::size_t>(std::max<Index>(d, 0)) + (1u << 17));
    }
    if (path_ == Path::GumbelMax) {
      per += scalar_bytes * (nt * bl + 2 * bl) + 4 * 2 * bl;
    } else if (path_ == Path::TopK) {
      const auto k = static_cast<std::size_t>(k_);
      const std::size_t cap = std::max(2 * k, k + 1024) + bl;
      per += scalar_bytes * nt * bl + nt * cap * (scalar_bytes + sizeof(Index)) * 2
             + 2 * scalar_bytes * cap;
    } else if (path_ == Path::TopPMinP) {
      // Per token a candidate buffer (capacity <= 2 cap + B) and its state; the chain's
      // scratch on <= cap candidates; a fallback row of V logits, the Sampler's scratch of V.
      const std::size_t cap = candidate_cap(v), pair = sizeof(std::pair<double, Index>);
      per += scalar_bytes * (std::max(nt * bl, uv) + 3 * uv)
             + nt * ((2 * cap + bl) * pair + sizeof(detail::HeadCutState))
             + (2 * cap + bl) * (2 * sizeof(double) + sizeof(std::pair<double, std::size_t>));
    } else {
      per += scalar_bytes * (nt * uv + 3 * uv);  // rows, and the Sampler's weights and probs
    }
    return per * static_cast<std::size_t>(threads);
  }

 private:
  // One token's running state on the GumbelMax path.
  template <class Scalar>
  struct State {
    Index index = -1;
    Scalar best = -std::numeric_limits<Scalar>::infinity();  // best perturbed score
    Scalar best_z = 0;                                       // its z / T
    bool nan = false, inf_mode = false;
    Index inf_count = 0;
    Scalar lse_m = -std::numeric_limits<Scalar>::infinity();  // online lse of z / T
    long double lse_s = 0;
  };

  Sampler sampler_;
  Path path_ = Path::GumbelMax;
  bool greedy_ = false;
  double inv_t_ = 1.0;
  Index k_ = 0;
  detail::HeadCutChain chain_;  // the TopPMinP path's chain
  double softcap_ = 0;
  Index block_ = kDefaultBlock;
  Index tile_ = kDefaultTile;

  // A copy with the count `member` set to value (>= 1).
  LinearHeadSampler with_count(const char* name, Index LinearHeadSampler::*member,
                               Index value) const {
    if (value < 1)
      detail::fail("LinearHeadSampler: ", name, " must be >= 1, but got ", value);
    LinearHeadSampler s = *this;
    s.*member = value;
    return s;
  }

  // probabilities() of the single row hr (in the compute type).
  template <class XH, class XW, class XB, class P, class Scalar>
  void probabilities_row(const XH& hr, const Eigen::MatrixBase<XW>& w,
                         const Eigen::MatrixBase<XB>& b, P& probs,
                         LinearHeadWorkspace::Slot<Scalar>& slot) const;

  template <class XH, class XW, class XB>
  static void check_shapes(const Eigen::MatrixBase<XH>& h, const Eigen::MatrixBase<XW>& w,
                           const Eigen::MatrixBase<XB>& b) {
    using Scalar = typename XH::Scalar;
    using C = detail::compute_scalar_t<Scalar>;
    static_assert(detail::is_storage_scalar_v<Scalar>,
                  "softmaxlab: LinearHeadSampler takes float, double, Eigen::half or "
                  "Eigen::bfloat16 H");
    static_assert(std::is_same_v<Scalar, typename XW::Scalar>,
                  "softmaxlab: H and W must have the same scalar type");
    static_assert(
        std::is_same_v<Scalar, typename XB::Scalar> || std::is_same_v<C, typename XB::Scalar>,
        "softmaxlab: b must have H's scalar type or the compute type (float for 16-bit H)");
    if (h.cols() != w.cols())
      detail::fail("LinearHeadSampler: H (", h.rows(), " x ", h.cols(), ") and W (", w.rows(),
                   " x ", w.cols(), ") must have the same d");
    if (b.size() != 0) {
      detail::require_vector("LinearHeadSampler: b", b.rows(), b.cols());
      if (b.size() != w.rows())
        detail::fail("LinearHeadSampler: b must have V = ", w.rows(), " entries or none, but got ",
                     b.size());
    }
  }

  // The logits of the rows of hr (compute type) for classes [c0, c0 + len), in slot.z's storage
  // as a row-major nt x len matrix: the GEMM (W widened by chunks for 16-bit), bias, softcap.
  template <class XH, class XW, class XB, class Scalar>
  Eigen::Map<Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> logits_block(
      const XH& hr, const Eigen::MatrixBase<XW>& w, const Eigen::MatrixBase<XB>& b, Index c0,
      Index len, LinearHeadWorkspace::Slot<Scalar>& slot) const {
    const Index nt = hr.rows();
    if (slot.z.size() < nt * len)
      slot.z.resize(nt, len);
    Eigen::Map<Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> z(
        slot.z.data(), nt, len);
    detail::head_gemm(hr, w.derived(), c0, len, z, slot.wide);
    if (b.size() != 0) {
      for (Index j = 0; j < len; ++j)
        z.col(j).array() += static_cast<Scalar>(b.coeff(c0 + j));
    }
    if (softcap_ != 0) {
      const Scalar cap = static_cast<Scalar>(softcap_), inv = static_cast<Scalar>(1.0 / softcap_);
      z.array() = cap * (z.array() * inv).tanh();
    }
    return z;
  }

  // fn(hr) with the rows [n0, n0 + nt) of h in the compute type: the rows themselves, or (half,
  // bfloat16) their copy widened once into slot.hwide.
  template <class XH, class Scalar, class Fn>
  static void with_rows(const Eigen::MatrixBase<XH>& h, Index n0, Index nt,
                        LinearHeadWorkspace::Slot<Scalar>& slot, const Fn& fn) {
    if constexpr (std::is_same_v<typename XH::Scalar, Scalar>) {
      fn(h.derived().middleRows(n0, nt));
    } else {
      const Index d = h.cols();
      if (slot.hwide.size() < static_cast<std::size_t>(nt * d))
        slot.hwide.resize(static_cast<std::size_t>(nt * d));
      constexpr int order = XH::IsRowMajor ? Eigen::RowMajor : Eigen::ColMajor;
      Eigen::Map<Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, order>> hw(slot.hwide.data(),
                                                                                  nt, d);
      detail::lce_widen<Scalar>(h.derived().middleRows(n0, nt), hw);
      fn(hw);
    }
  }

  // fn(c0, len) for each vocabulary block, slot.z holding its logits (rows of stride len).
  template <class XH, class XW, class XB, class Scalar, class Fn>
  void for_each_block(const XH& hr, const Eigen::MatrixBase<XW>& w, const Eigen::MatrixBase<XB>& b,
                      LinearHeadWorkspace::Slot<Scalar>& slot, const Fn& fn) const {
    const Index v = w.rows();
    for (Index c0 = 0; c0 < v; c0 += block_) {
      const Index len = std::min(block_, v - c0);
      logits_block(hr, w, b, c0, len, slot);
      fn(c0, len);
    }
  }

  // The GumbelMax path over the rows of hr (tokens n0.. of the call): states st[0..rows).
  // `lse`: also the online log-sum-exp; `draw`: add the noise (else only the lse, for
  // probabilities()).
  template <class XH, class XW, class XB, class Scalar>
  void gumbel_tile(const XH& hr, const Eigen::MatrixBase<XW>& w, const Eigen::MatrixBase<XB>& b,
                   std::uint64_t stream0, const std::uint64_t* seed,
                   LinearHeadWorkspace::Slot<Scalar>& slot, State<Scalar>* st, bool lse,
                   bool draw) const;

  // The TopK path's candidates of the rows of hr into slot.cand[r]; nan[r] for a NaN row.
  template <class XH, class XW, class XB, class Scalar>
  void topk_tile(const XH& hr, const Eigen::MatrixBase<XW>& w, const Eigen::MatrixBase<XB>& b,
                 LinearHeadWorkspace::Slot<Scalar>& slot, bool* nan) const;

  // Keeps the entries >= the k-th largest value (ties kept); returns that value (-inf when
  // there are k or fewer).
  template <class Scalar>
  static Scalar compact(std::vector<std::pair<Scalar, Index>>& c, std::size_t k) {
    if (c.size() <= k)
      return -std::numeric_limits<Scalar>::infinity();
    std::nth_element(c.begin(), c.begin() + static_cast<std::ptrdiff_t>(k - 1), c.end(),
                     [](const auto& a, const auto& e) { return a.first > e.first; });
    const Scalar kth = c[k - 1].first;
    c.erase(std::remove_if(c.begin(), c.end(), [kth](const auto& e) { return e.first < kth; }),
            c.end());
    return kth;
  }

  // Sorts the candidates by class and writes their logits into slot.row; returns their count.
  template <class Scalar>
  static Index candidate_row(std::vector<std::pair<Scalar, Index>>& c,
                             LinearHeadWorkspace::Slot<Scalar>& slot) {
    std::sort(c.begin(), c.end(), [](const auto& a, const auto& e) { return a.second < e.second; });
    slot.row.resize(c.size());
    for (std::size_t j = 0; j < c.size(); ++j)
      slot.row[j] = c[j].first;
    return static_cast<Index>(c.size());
  }
  template <class Scalar>
  static Eigen::Map<const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>> row_map(
      LinearHeadWorkspace::Slot<Scalar>& slot, Index c) {
    return Eigen::Map<const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>>(slot.row.data(), c);
  }

  // The full logit rows of hr (rows x V, in slot.z's storage).
  template <class XH, class XW, class XB, class Scalar>
  auto materialize(const XH& hr, const Eigen::MatrixBase<XW>& w, const Eigen::MatrixBase<XB>& b,
                   LinearHeadWorkspace::Slot<Scalar>& slot) const {
    return logits_block(hr, w, b, 0, w.rows(), slot);
  }

  // One tile of tokens [n0, n0 + nt).
  template <class XH, class XW, class XB, class T, class L, class Scalar>
  void tile(const Eigen::MatrixBase<XH>& h, const Eigen::MatrixBase<XW>& w,
            const Eigen::MatrixBase<XB>& b, std::uint64_t seed, T& tokens, L* lp, Index n0,
            Index nt, std::uint64_t first_stream, LinearHeadWorkspace::Slot<Scalar>& slot) const {
    with_rows(h, n0, nt, slot, [&](const auto& hr) {
      tile_rows(hr, w, b, seed, tokens, lp, n0, first_stream, slot);
    });
  }

  // tile() on the tile's rows hr in the compute type.
  template <class XH, class XW, class XB, class T, class L, class Scalar>
  void tile_rows(const XH& hr, const Eigen::MatrixBase<XW>& w, const Eigen::MatrixBase<XB>& b,
                 std::uint64_t seed, T& tokens, L* lp, Index n0, std::uint64_t first_stream,
                 LinearHeadWorkspace::Slot<Scalar>& slot) const;

  // The TopPMinP path's candidates of the rows of hr into slot.cand[r] (sorted by class), the
  // per-row state into slot.cut[r] (see detail/head_candidates.hpp for the drop rule).
  template <class XH, class XW, class XB, class Scalar>
  void cut_tile(const XH& hr, const Eigen::MatrixBase<XW>& w, const Eigen::MatrixBase<XB>& b,
                LinearHeadWorkspace::Slot<Scalar>& slot) const;

  // The chain's weights on the candidates c of a row of state st (slot.weight); their sum.
  template <class Scalar>
  long double chain_weights(const std::vector<std::pair<Scalar, Index>>& c,
                            const detail::HeadCutState& st,
                            LinearHeadWorkspace::Slot<Scalar>& slot) const {
    // Scratch sized by the buffer's capacity, not the row's count: bytes() then does not depend
    // on the data.
    slot.y.reserve(c.capacity());
    slot.weight.reserve(c.capacity());
    slot.order.reserve(c.capacity());
    return detail::head_chain_weights(chain_, c, st.lse(), slot.y, slot.weight, slot.order);
  }

  // The TopPMinP path's cap on a row's candidates (after a compaction) for V classes: beyond it
  // the row falls back to RowTiles.
  static std::size_t candidate_cap(Index v) {
    return std::max<std::size_t>(4096, static_cast<std::size_t>(v) / 16);
  }

  template <class XH, class XW, class XB, class Out, class L>
  void run(const Eigen::MatrixBase<XH>& h, const Eigen::MatrixBase<XW>& w,
           const Eigen::MatrixBase<XB>& b, std::uint64_t seed, Out&& tokens_out, L* lp,
           Workspace& ws, std::uint64_t first_stream) const {
    using Scalar = detail::compute_scalar_t<typename XH::Scalar>;
    auto& tokens = detail::writable_output(std::forward<Out>(tokens_out));
    check_shapes(h, w, b);
    detail::require_vector("LinearHeadSampler: tokens", tokens.rows(), tokens.cols());
    const Index n = h.rows();
    if (tokens.size() != n)
      detail::fail("LinearHeadSampler: tokens must have N = ", n, " entries, but got ",
                   tokens.size());
    if (n == 0)
      return;
    if (w.rows() == 0) {
      for (Index r = 0; r < n; ++r) {
        tokens.coeffRef(r) = static_cast<typename std::decay_t<decltype(tokens)>::Scalar>(-1);
        if (lp != nullptr)
          lp->coeffRef(r) = std::numeric_limits<double>::quiet_NaN();
      }
      return;
    }
    const Index tiles = (n + tile_ - 1) / tile_;
#if SOFTMAXLAB_PARALLEL_SLICES
    if (tiles > 1 && !omp_in_parallel() && omp_get_max_threads() > 1) {
      auto& slots = ws.slots<Scalar>(static_cast<std::size_t>(omp_get_max_threads()));
#pragma omp parallel for schedule(static)
      for (Index i = 0; i < tiles; ++i) {
        tile(h, w, b, seed, tokens, lp, i * tile_, std::min(tile_, n - i * tile_), first_stream,
             slots[static_cast<std::size_t>(omp_get_thread_num())]);
      }
      return;
    }
#endif
    auto& slot = ws.slots<Scalar>(1)[0];
    for (Index i = 0; i < tiles; ++i)
      tile(h, w, b, seed, tokens, lp, i * tile_, std::min(tile_, n - i * tile_), first_stream,
           slot);
  }
};

}  // namespace softmaxlab

#include "linear_head_paths.hpp"
