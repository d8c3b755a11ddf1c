// softmaxlab: LinearCrossEntropy, the cross-entropy of an output layer computed from the hidden
// states and the classifier without ever forming the N x V logits (Cut Cross-Entropy, Wijmans et
// al., arXiv 2411.09009; Liger-Kernel's FusedLinearCrossEntropy).
//
// What it computes. Hidden states H (N x d, a row per token), classifier W (V x d, a row per
// class), optional bias b (V entries), labels c_n (N entries):
// clang-format off
//     r_nk = h_n . w_k + b_k                         raw logit
//     s_nk = cap * tanh(r_nk / cap)                  with_softcap(cap) (Gemma 2); s = r without it
//     z_nk = s_nk / T                                with_temperature(T), T = 1 by default
//     loss_n = CrossEntropyLoss's loss of the row z_n with its options (ignore_index, label
//              smoothing, class weights, z-loss on lse_n = log sum_k exp z_nk), reduced as it
//              reduces (Mean over the counted class weights, Sum, or None)
//     dL/dr_nk = u_n (A_n p_nk - q_nk) s'(r_nk) / T,  A_n = sum_k q_nk + 2 lambda lse_n,
//              p_n = softmax(z_n), s' = 1 - (s/cap)^2, u_n the reduction's weight of token n
// clang-format on
// dH = (dL/dr) W, dW = (dL/dr)^T H, db = column sums of dL/dr. Reduction::None returns the sum of
// the per-token losses; its gradients are those of sum_n g_n loss_n for a per-token upstream
// gradient g (TokenOutputs::with_upstream; all ones by default).
//
// Call forms (DESIGN.md's contract; `out` is an optional TokenOutputs):
// clang-format off
//     double l = lce(H, W, labels[, out]);                    // loss only
//     double l = lce(H, W, b, labels[, out]);                 // loss only, with a bias
//     double l = lce(H, W, labels, dH, dW[, out]);            // loss and gradients in one call
//     double l = lce(H, W, b, labels, dH, dW, db[, out]);     // with a bias and its gradient
//     out = sml::TokenOutputs().with_lse(s).with_losses(l)    // s, l: N doubles (VectorXd, Map)
//              .with_upstream(g)                              // g: N doubles, Reduction::None only
//              .with_workspace(ws);                           // LinearCrossEntropy::Workspace
// clang-format on
// H, W (and b, dH, dW, db) share one scalar type, float or double (the GEMMs run in it; the
// normalizer and the loss accumulate in double / long double). Any storage order; dH, dW, db must
// be writable storage of H's, W's and b's shapes. labels: an Eigen integer vector with storage
// or a std::vector of integers. Half and bfloat16 inputs are not supported yet (compile error).
//
// Parameters and ranges (std::invalid_argument naming the parameter and value otherwise):
// CrossEntropyLoss's (reduction, label_smoothing in [0, 1), any ignore_index, weight: V finite
// entries >= 0, z_loss finite >= 0); softcap: 0 (off) or finite > 0; temperature in [2^-100,
// 2^100]; block sizes >= 1; gradient filter threshold in [0, 1). Also thrown: labels outside
// [0, V) other than ignore_index, shapes that do not chain, upstream with a reduction other than
// None or of the wrong length, per-token outputs of the wrong length, a gradient sharing storage
// with H, W or b.
//
// Algorithm. Tokens go in blocks of `token_block` rows (default 128) and the vocabulary in blocks
// of `vocab_block` classes (default 2048): Z = H_blk W_blk^T is one GEMM into a block buffer.
// Pass 1 keeps, per token, an online normalizer [max, sum] (single_pass.hpp's exact merge) and
// the label's logit; pass 2 (only when gradients are requested) recomputes each block, turns it
// into dL/dr in place and adds G W_blk to dH and G^T H_blk to dW: four GEMM-sized products in all
// against the materialized path's three, and no N x V array.
// Workspace (the only memory besides the outputs; Workspace::bytes() reports it): per thread one
// token_block x vocab_block buffer, per vocabulary group a token_block x d partial of dH, and
// O(token_block x (groups + V / vocab_block)) scalars of per-token state. At the defaults, d =
// 1024, float: 3.2 MB on one thread, 4.2 MB on two (measured), whatever N and V.
// Threads: with OpenMP opted in (SOFTMAXLAB_USE_OPENMP and -fopenmp, as the rest of the library),
// the vocabulary blocks of each token block are split into kGroups (4) fixed contiguous groups
// run on threads; each group's normalizer and dH partial are merged in group order and dW's rows
// belong to one group, so results are bit-for-bit the same for any thread count (tested in
// tests/test_parallel.cpp). Caveat: built with -fopenmp, Eigen may split a GEMM over threads by
// itself when it runs outside our parallel region (a single group: V <= vocab_block), which can
// change last bits across thread counts; EIGEN_DONT_PARALLELIZE removes that.
// Gradient filtering (Cut Cross-Entropy's, off by default): with_gradient_filter(tau) skips, in
// pass 2, a vocabulary block whose probabilities p_nk are all below tau for every token of the
// token block, unless it holds a counted label or label smoothing is on. The loss and lse are
// unchanged; each skipped gradient entry is below u_n A_n tau / T in magnitude, so dH_n errs by at
// most u_n A_n tau / T sum_skipped |w_k| and dW_k by tau / T sum_n u_n A_n |h_n|.
//
// Accuracy. The logits are float (or double) GEMM results, each within gamma_d sum_i |h_ni w_ki|
// (gamma_d ~ d eps, the GEMM bound) of the exact product; the loss is then computed as
// CrossEntropyLoss computes it (exp in the scalar type, sums in double), so its error is
// CrossEntropyLoss's stated bound plus sum_q times twice the largest logit error. Tested against
// a long double materialized reference with every option (tests/test_linear_cross_entropy.cpp,
// "LinearCrossEntropy matches a long double reference"), against finite differences in double
// ("... gradients match finite differences"), and against GEMM + CrossEntropyLoss + backward GEMMs.
// Special values: a -inf logit (e.g. from a -inf bias entry that masks a class) has probability 0;
// a NaN or +inf logit makes that token's loss, lse and gradient contributions NaN (a NaN input
// never yields a plausible number; unlike CrossEntropyLoss, +inf logits are not given the limit).
// N = 0 gives loss 0 and empty outputs; V = 0 with counted labels throws (no label fits).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "detail/backward_base.hpp"
#include "detail/checks.hpp"
#include "detail/functor_base.hpp"
#include "linear_cross_entropy_outputs.hpp"
#include "loss.hpp"
#include "single_pass.hpp"

namespace softmaxlab {

// The fused output-layer cross-entropy: see the header's doc block.
class LinearCrossEntropy {
 public:
  // The variant's name, as error messages give it.
  static constexpr const char* name = "LinearCrossEntropy";
  static constexpr Index kGroups = 4;  // fixed vocabulary groups: the unit of thread parallelism

  // The scratch memory type (LinearCrossEntropyWorkspace), reusable across calls.
  using Workspace = LinearCrossEntropyWorkspace;

  // The default ignore_index, PyTorch's -100.
  explicit LinearCrossEntropy(Reduction reduction = Reduction::Mean, double label_smoothing = 0.0,
                              long ignore_index = CrossEntropyLoss::default_ignore_index)
      : ce_(reduction, label_smoothing, ignore_index) {}
  // The options of an existing CrossEntropyLoss (reduction, smoothing, ignore_index, weight,
  // z-loss), so the fused and the materialized paths are configured once.
  explicit LinearCrossEntropy(const CrossEntropyLoss& ce) : ce_(ce) {}

  // The cross entropy this object was built with.
  const CrossEntropyLoss& cross_entropy() const { return ce_; }
  // The reduction this object was built with.
  Reduction reduction() const { return ce_.reduction(); }
  // The label smoothing this object was built with.
  double label_smoothing() const { return ce_.label_smoothing(); }
  // The ignore index this object was built with.
  long ignore_index() const { return ce_.ignore_index(); }
  // The weight this object was built with.
  const std::vector<double>& weight() const { return ce_.weight(); }
  // The z loss this object was built with.
  double z_loss() const { return ce_.z_loss(); }
  // The softcap this object was built with.
  double softcap() const { return softcap_; }
  // The temperature this object was built with.
  double temperature() const { return temperature_; }
  // The token block this object was built with.
  Index token_block() const { return token_block_; }
  // The vocab block this object was built with.
  Index vocab_block() const { return vocab_block_; }
  // The gradient filter this object was built with.
  double gradient_filter() const { return filter_; }

  // A copy with this option set (its valid range, and the std::invalid_argument a value outside it
  // throws: the header's doc block).
  [[nodiscard]] LinearCrossEntropy with_reduction(Reduction r) const {
    return with_ce(CrossEntropyLoss(r, label_smoothing(), ignore_index()));
  }
  // A copy with this option set (its valid range, and the std::invalid_argument a value outside it
  // throws: the header's doc block).
  [[nodiscard]] LinearCrossEntropy with_label_smoothing(double eps) const {
    return with_ce(CrossEntropyLoss(reduction(), eps, ignore_index()));
  }
  // A copy with this option set (its valid range, and the std::invalid_argument a value outside it
  // throws: the header's doc block).
  [[nodiscard]] LinearCrossEntropy with_ignore_index(long index) const {
    return with_ce(CrossEntropyLoss(reduction(), label_smoothing(), index));
  }
  // A copy with this option set (its valid range, and the std::invalid_argument a value outside it
  // throws: the header's doc block).
  [[nodiscard]] LinearCrossEntropy with_weight(std::vector<double> w) const {
    LinearCrossEntropy c = *this;
    c.ce_ = ce_.with_weight(std::move(w));
    return c;
  }
  // A copy with this option set (its valid range, and the std::invalid_argument a value outside it
  // throws: the header's doc block).
  [[nodiscard]] LinearCrossEntropy with_z_loss(double lambda) const {
    LinearCrossEntropy c = *this;
    c.ce_ = ce_.with_z_loss(lambda);
    return c;
  }
  // Logit softcap cap * tanh(r / cap) (Gemma 2); 0 turns it off.
  [[nodiscard]] LinearCrossEntropy with_softcap(double cap) const {
    if (!(cap == 0 || (cap > 0 && std::isfinite(cap))))
      detail::fail(name, ": softcap must be 0 (off) or finite and > 0, but got ", cap);
    LinearCrossEntropy c = *this;
    c.softcap_ = cap;
    return c;
  }
  // A copy with this option set (its valid range, and the std::invalid_argument a value outside it
  // throws: the header's doc block).
  [[nodiscard]] LinearCrossEntropy with_temperature(double t) const {
    LinearCrossEntropy c = *this;
    c.temperature_ = detail::check_temperature("LinearCrossEntropy: temperature", t);
    return c;
  }
  // A copy with this option set (its valid range, and the std::invalid_argument a value outside it
  // throws: the header's doc block).
  [[nodiscard]] LinearCrossEntropy with_block_sizes(Index tokens, Index vocab) const {
    if (tokens < 1)
      detail::fail(name, ": token_block must be >= 1, but got ", tokens);
    if (vocab < 1)
      detail::fail(name, ": vocab_block must be >= 1, but got ", vocab);
    LinearCrossEntropy c = *this;
    c.token_block_ = tokens;
    c.vocab_block_ = vocab;
    return c;
  }
  // Cut Cross-Entropy's gradient filtering: see the header's doc block. 0 turns it off.
  [[nodiscard]] LinearCrossEntropy with_gradient_filter(double threshold) const {
    LinearCrossEntropy c = *this;
    c.filter_ = detail::require_in_range("LinearCrossEntropy: gradient filter threshold", threshold,
                                         0.0, std::nextafter(1.0, 0.0), "in [0, 1)");
    return c;
  }

  // The loss only.
  template <class XH, class XW, class Labels,
            class = std::enable_if_t<detail::is_label_type_v<Labels>>>
  double operator()(const Eigen::MatrixBase<XH>& h, const Eigen::MatrixBase<XW>& w,
                    const Labels& labels, const TokenOutputs& out = TokenOutputs()) const {
    return run(h.derived(), w.derived(), no_bias(), labels, nullptr, nullptr, nullptr, out);
  }
  // The loss only, with a bias of V entries.
  template <class XH, class XW, class XB, class Labels,
            class = std::enable_if_t<detail::is_label_type_v<Labels>>>
  double operator()(const Eigen::MatrixBase<XH>& h, const Eigen::MatrixBase<XW>& w,
                    const Eigen::MatrixBase<XB>& b, const Labels& labels,
                    const TokenOutputs& out = TokenOutputs()) const {
    return run(h.derived(), w.derived(), &b.derived(), labels, nullptr, nullptr, nullptr, out);
  }
  // The loss, with dH (N x d) and dW (V x d) written.
  template <class XH, class XW, class Labels, class OutH, class OutW,
            class = std::enable_if_t<detail::is_label_type_v<Labels>>,
            detail::if_output_t<OutH> = 0>
  double operator()(const Eigen::MatrixBase<XH>& h, const Eigen::MatrixBase<XW>& w,
                    const Labels& labels, OutH&& dh, OutW&& dw,
                    const TokenOutputs& out = TokenOutputs()) const {
    return run(h.derived(), w.derived(), no_bias(), labels, &detail::writable_output(dh),
               &detail::writable_output(dw), nullptr, out);
  }
  // The loss, with dH, dW and db (V entries) written.
  template <class XH, class XW, class XB, class Labels, class OutH, class OutW, class OutB,
            class = std::enable_if_t<detail::is_label_type_v<Labels>>>
  double operator()(const Eigen::MatrixBase<XH>& h, const Eigen::MatrixBase<XW>& w,
                    const Eigen::MatrixBase<XB>& b, const Labels& labels, OutH&& dh, OutW&& dw,
                    OutB&& db, const TokenOutputs& out = TokenOutputs()) const {
    return run(h.derived(), w.derived(), &b.derived(), labels, &detail::writable_output(dh),
               &detail::writable_output(dw), &detail::writable_output(db), out);
  }

 private:
  struct NoBias {};  // the bias type of the forms without a bias
  static const NoBias* no_bias() { return nullptr; }

  LinearCrossEntropy with_ce(const CrossEntropyLoss& ce) const {
    LinearCrossEntropy c = *this;
    c.ce_ = ce.with_weight(weight()).with_z_loss(z_loss());
    return c;
  }

  // Per-call constants of the loss.
  struct Setup {
    double eps, uniform, weight_total, u_default;
    long ignore;
    bool none;
  };

  template <class XH, class XW, class XB, class Labels, class PH, class PW, class PB>
  double run(const XH& h, const XW& w, const XB* b, const Labels& labels_in, PH dh, PW dw, PB db,
             const TokenOutputs& out) const {
    using Scalar = typename XH::Scalar;
    detail::static_check_scalar<Scalar>();
    static_assert(std::is_same_v<Scalar, typename XW::Scalar>,
                  "softmaxlab: H and W must have the same scalar type");
    constexpr bool has_grad = !std::is_same_v<PH, std::nullptr_t>;
    constexpr bool has_db = !std::is_same_v<PB, std::nullptr_t>;
    const Index n_tok = h.rows(), d = h.cols(), vocab = w.rows();
    if (w.cols() != d)
      detail::fail(name, ": H (", n_tok, " x ", d, ") and W (", vocab, " x ", w.cols(),
                   ") do not chain: W must have d = ", d, " columns (a row per class)");
    if constexpr (!std::is_same_v<XB, NoBias>) {
      static_assert(std::is_same_v<Scalar, typename XB::Scalar>,
                    "softmaxlab: the bias must have H's scalar type");
      detail::require_vector("LinearCrossEntropy: b", b->rows(), b->cols());
      if (b->size() != vocab)
        detail::fail(name, ": b must have one entry per class (", vocab, "), but got ", b->size());
    }
    if constexpr (has_grad) {
      using DH = std::remove_pointer_t<PH>;
      using DW = std::remove_pointer_t<PW>;
      static_assert(
          std::is_same_v<Scalar,
                         typename DH::Scalar> && std::is_same_v<Scalar, typename DW::Scalar>,
          "softmaxlab: dH and dW must have H's scalar type");
      static_assert(detail::is_writable_storage_v<DH> && detail::is_writable_storage_v<DW>,
                    "softmaxlab: dH and dW must be writable storage, not expressions");
      detail::require_same_shape(name, detail::SliceMode::Rows, "dH", dh->rows(), dh->cols(), n_tok,
                                 d);
      detail::require_same_shape(name, detail::SliceMode::Rows, "dW", dw->rows(), dw->cols(), vocab,
                                 d);
      if constexpr (has_db) {
        using DB = std::remove_pointer_t<PB>;
        static_assert(
            std::is_same_v<Scalar, typename DB::Scalar> && detail::is_writable_storage_v<DB>,
            "softmaxlab: db must be writable storage of H's scalar type");
        detail::require_vector("LinearCrossEntropy: db", db->rows(), db->cols());
        if (db->size() != vocab)
          detail::fail(name, ": db must have one entry per class (", vocab, "), but got ",
                       db->size());
      }
    }
    detail::check_row_outputs(name, out.rows, n_tok);
    const bool none = reduction() == Reduction::None;
    if (out.upstream.data != nullptr) {
      if (!none)
        detail::fail(name, ": upstream is for Reduction::None only, but the reduction is ",
                     static_cast<int>(reduction()));
      if (out.upstream.size != n_tok)
        detail::fail(name, ": upstream must have one entry per token (", n_tok, "), but got ",
                     out.upstream.size);
    }
    const auto& wt = weight();
    if (!wt.empty() && static_cast<Index>(wt.size()) != vocab)
      detail::fail(name, ": weight must have one entry per class (", vocab, "), but got ",
                   wt.size());
    const auto labels = detail::label_span(name, labels_in);
    const auto [counted, weight_sum] =
        detail::count_labels(name, labels, n_tok, vocab, ignore_index(), wt);
    Setup st;
    st.eps = label_smoothing();
    st.uniform = vocab > 0 ? st.eps / static_cast<double>(vocab) : 0.0;
    st.weight_total = 0;
    for (Index k = 0; k < vocab; ++k)
      st.weight_total += wt.empty() ? 1.0 : wt[static_cast<std::size_t>(k)];
    st.ignore = ignore_index();
    st.none = none;
    // CrossEntropyLoss's Mean: divide by the counted class weights; 0 counted gives 0.
    const bool mean = reduction() == Reduction::Mean;
    st.u_default = mean && counted > 0 ? (weight_sum > 0 ? 1.0 / weight_sum : 0.0) : 1.0;

    if constexpr (has_grad) {
      // The gradients are zeroed first and accumulated: they must not share storage with inputs.
      const auto refuse_overlap = [&](const auto& out_grad, const char* grad_name) {
        const auto check = [&](const auto& in, const char* in_name) {
          if constexpr (detail::has_direct_access_v<std::decay_t<decltype(in)>>) {
            if (detail::storage_overlaps(in, out_grad))
              detail::fail(name, ": ", grad_name, " shares storage with ", in_name);
          }
        };
        check(h, "H");
        check(w, "W");
        if constexpr (!std::is_same_v<XB, NoBias>)
          check(*b, "b");
      };
      refuse_overlap(*dh, "dH");
      refuse_overlap(*dw, "dW");
      if constexpr (has_db)
        refuse_overlap(*db, "db");
      dh->setZero();
      dw->setZero();
      if constexpr (has_db)
        db->setZero();
    }
    Workspace local;
    Workspace& ws = out.workspace != nullptr ? *out.workspace : local;
    double total = 0;
    for (Index n0 = 0; n0 < n_tok; n0 += token_block_) {
      const Index nb = std::min(token_block_, n_tok - n0);
      total += token_block<Scalar>(h, w, b, labels, dh, dw, db, out, st, ws, n0, nb);
    }
    return none ? total : total * st.u_default;
  }

  // Applies bias, softcap and temperature to a block of raw logits (columns v0.. of the
  // vocabulary).
  template <class Scalar, class Z, class XB>
  void transform(Z& z, const XB* b, Index v0) const {
    if constexpr (!std::is_same_v<XB, NoBias>) {
      for (Index k = 0; k < z.cols(); ++k)
        z.col(k).array() += b->coeff(v0 + k);
    } else {
      (void)b;
      (void)v0;
    }
    if (softcap_ != 0) {
      const Scalar cap = static_cast<Scalar>(softcap_), inv = static_cast<Scalar>(1.0 / softcap_);
      z.array() = cap * (z.array() * inv).tanh();
    }
    if (temperature_ != 1.0)
      z.array() *= static_cast<Scalar>(1.0 / temperature_);
  }

  // One block of tokens: both passes. Returns the sum of its counted tokens' losses.
  template <class Scalar, class XH, class XW, class XB, class Labels, class PH, class PW, class PB>
  double token_block(const XH& h, const XW& w, const XB* b, const Labels& labels, PH dh, PW dw,
                     PB db, const TokenOutputs& out, const Setup& st, Workspace& ws, Index n0,
                     Index nb) const {
    using Mat = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
    using MapM = Eigen::Map<Mat, 0, Eigen::OuterStride<>>;
    using MapC = Eigen::Map<Eigen::Array<Scalar, Eigen::Dynamic, 1>>;
    using MapD = Eigen::Map<Eigen::ArrayXd>;
    constexpr bool has_grad = !std::is_same_v<PH, std::nullptr_t>;
    const Index d = h.cols(), vocab = w.rows();
    const Index vb = std::max<Index>(1, std::min(vocab_block_, vocab));
    const Index blocks = vocab > 0 ? (vocab + vb - 1) / vb : 0;
    const Index groups = std::min(kGroups, blocks);
    int threads = 1;
#if SOFTMAXLAB_PARALLEL_SLICES
    if (!omp_in_parallel())
      threads = static_cast<int>(std::min<Index>(omp_get_max_threads(), groups));
#endif
    threads = std::max(threads, 1);
    const bool filtering = has_grad && filter_ > 0 && st.eps == 0;
    // Every buffer starts on a 64-byte boundary and every column of a block on one too (leading
    // dimension ld): Eigen peels unaligned heads with scalar code, whose exp differs from the
    // vector exp, so the alignment must not depend on where the allocator put the workspace.
    constexpr Index kAlign = 64 / static_cast<Index>(sizeof(Scalar));
    const Index ld = (nb + kAlign - 1) / kAlign * kAlign, ldd = (nb + 7) / 8 * 8;
    // Scalars: [threads x (ld x vb block, ld block max)][groups x ld x d dH partials][3 x ld]
    std::vector<Scalar>& sbuf = ws.template scalars<Scalar>();
    const Index per_thread = ld * vb + ld;
    const std::size_t need = static_cast<std::size_t>(
        per_thread * threads + (has_grad ? groups * ld * d + 3 * ld : 0) + kAlign);
    if (sbuf.size() < need)
      sbuf.resize(need);
    Scalar* base = aligned(sbuf.data());
    // Doubles: per group the weighted logit sums (ldd) and maxima, per thread the block's sums
    // (ldd), per token the label logit, lse, m, 1/S, u, A, per token and vocabulary block the
    // block max (filtering only).
    const std::size_t nstats = static_cast<std::size_t>(ldd * (groups + threads) + nb * (groups + 6)
                                                        + (filtering ? nb * blocks : 0) + 8);
    if (ws.stats_.size() < nstats)
      ws.stats_.resize(nstats);
    if (ws.sums_.size() < static_cast<std::size_t>(nb * groups))
      ws.sums_.resize(static_cast<std::size_t>(nb * groups));
    double* gzw = aligned(ws.stats_.data());
    double* thread_sums = gzw + ldd * groups;
    double* gmax = thread_sums + ldd * threads;
    double* zc = gmax + nb * groups;
    double* lse = zc + nb;
    double* mrow = lse + nb;
    double* invs = mrow + nb;
    double* urow = invs + nb;
    double* arow = urow + nb;
    double* bmax = arow + nb;
    long double* gsum = ws.sums_.data();
    const auto hb = h.middleRows(n0, nb);
    const auto label_of = [&](Index n) {
      return static_cast<long>(labels[n0 + n]);
    };
    const auto class_weight = [&](Index k) {
      return weight().empty() ? 1.0 : weight()[static_cast<std::size_t>(k)];
    };
    const auto group_range = [&](Index g) {
      return std::make_pair(g * blocks / groups, (g + 1) * blocks / groups);
    };
    const double inf = std::numeric_limits<double>::infinity();
    for (Index n = 0; n < nb; ++n)
      zc[n] = std::numeric_limits<double>::quiet_NaN();

    // Pass 1: per group, an online normalizer per token over the group's blocks, in block order.
    const auto pass1 = [&](Index g, int thread) {
      MapM zfull(base + per_thread * thread, nb, vb, Eigen::OuterStride<>(ld));
      MapC bm(base + per_thread * thread + ld * vb, nb);  // block max per token
      MapD sum(thread_sums + ldd * thread, nb);
      double* m = gmax + g * nb;
      long double* s = gsum + g * nb;
      MapD zw(gzw + g * ldd, nb);
      zw.setZero();
      for (Index n = 0; n < nb; ++n) {
        m[n] = -inf;
        s[n] = 0;
      }
      const auto [first, last] = group_range(g);
      for (Index blk = first; blk < last; ++blk) {
        const Index v0 = blk * vb, vlen = std::min(vb, vocab - v0);
        auto z = zfull.leftCols(vlen);
        z.noalias() = hb * w.middleRows(v0, vlen).transpose();
        transform<Scalar>(z, b, v0);
        bm = z.col(0).array();  // a NaN is caught by the sum below
        for (Index k = 1; k < vlen; ++k)
          bm = bm.max(z.col(k).array());
        sum.setZero();
        for (Index k = 0; k < vlen; ++k)
          sum += (z.col(k).array() - bm).exp().template cast<double>();
        for (Index n = 0; n < nb; ++n) {
          double bmn = static_cast<double>(bm(n));
          long double sn = sum(n);
          if (bmn == -inf)
            sn = 0;  // every logit of the block is -inf: no mass
          else if (sn != sn || bmn == inf)
            bmn = std::numeric_limits<double>::quiet_NaN();
          if (filtering)
            bmax[n * blocks + blk] = bmn;
          detail::merge_normalizer_state<double>(m[n], s[n], bmn, sn, 1.0L);
          const long c = label_of(n);
          if (c >= v0 && c < v0 + vlen)
            zc[n] = static_cast<double>(z(n, c - v0));
        }
        if (st.eps > 0) {
          for (Index k = 0; k < vlen; ++k)
            zw += class_weight(v0 + k) * z.col(k).array().template cast<double>();
        }
      }
    };
    for_groups(groups, threads, pass1);

    // Merge the groups in order, then each token's loss, lse and gradient coefficients.
    double total = 0;
    for (Index n = 0; n < nb; ++n) {
      double m = -inf, zw = 0;
      long double s = 0;
      for (Index g = 0; g < groups; ++g) {
        detail::merge_normalizer_state<double>(m, s, gmax[g * nb + n], gsum[g * nb + n], 1.0L);
        zw += gzw[g * ldd + n];
      }
      const double log_s = static_cast<double>(std::log(s));
      const double l = m != m ? m : (m == -inf ? -inf : m + log_s);
      lse[n] = l;
      mrow[n] = m;
      invs[n] = static_cast<double>(1.0L / s);
      const long c = label_of(n);
      const Index gi = n0 + n;
      if (out.rows.lse.data != nullptr)
        out.rows.lse[gi] = l;
      if (c == st.ignore) {
        urow[n] = arow[n] = 0;
        if (out.rows.losses.data != nullptr)
          out.rows.losses[gi] = 0;
        continue;
      }
      const double wc = class_weight(static_cast<Index>(c));
      const double sum_q = wc * (1.0 - st.eps) + st.uniform * st.weight_total;
      // loss = sum_q log S + w_c (1 - eps)(m - z_c) + eps/V (W_total m - sum_k w_k z_k)
      double loss = sum_q * log_s + wc * (1.0 - st.eps) * (m - zc[n]);
      if (st.eps > 0)
        loss += st.uniform * (st.weight_total * m - zw);
      if (m == -inf)
        loss = inf;  // every class masked
      if (m != m)
        loss = m;
      loss += z_loss() * l * l;
      if (out.rows.losses.data != nullptr)
        out.rows.losses[gi] = loss;
      total += loss;
      urow[n] = st.none ? (out.upstream.data != nullptr ? out.upstream[gi] : 1.0) : st.u_default;
      arow[n] = sum_q + 2.0 * z_loss() * l;
    }
    if constexpr (!has_grad) {
      return total;
    } else {
      // Pass 2: recompute each block, turn it into dL/dr in place, accumulate dH and dW.
      const double inv_t = 1.0 / temperature_;
      Scalar* dh_part = base + per_thread * threads;
      // Per-token coefficients in the scalar type, shared by the groups.
      MapC a(dh_part + groups * ld * d, nb), u(dh_part + groups * ld * d + ld, nb),
          mr(dh_part + groups * ld * d + 2 * ld, nb);
      for (Index n = 0; n < nb; ++n) {
        a(n) = static_cast<Scalar>(urow[n] * arow[n] * invs[n] * inv_t);
        u(n) = static_cast<Scalar>(urow[n] * st.uniform * inv_t);
        mr(n) = static_cast<Scalar>(mrow[n]);
      }
      const auto pass2 = [&](Index g, int thread) {
        MapM zfull(base + per_thread * thread, nb, vb, Eigen::OuterStride<>(ld));
        MapM dhg(dh_part + g * ld * d, nb, d, Eigen::OuterStride<>(ld));
        dhg.setZero();
        const auto [first, last] = group_range(g);
        for (Index blk = first; blk < last; ++blk) {
          const Index v0 = blk * vb, vlen = std::min(vb, vocab - v0);
          if (filtering && skip_block(bmax, blocks, blk, nb, lse, urow, labels, n0, v0, vlen))
            continue;
          auto z = zfull.leftCols(vlen);
          z.noalias() = hb * w.middleRows(v0, vlen).transpose();
          transform<Scalar>(z, b, v0);
          const Scalar cap_t = static_cast<Scalar>(temperature_ / (softcap_ != 0 ? softcap_ : 1));
          for (Index k = 0; k < vlen; ++k) {
            auto zk = z.col(k).array();
            const Scalar sk = static_cast<Scalar>(class_weight(v0 + k));
            if (softcap_ != 0)
              zk = ((zk - mr).exp() * a - u * sk) * (Scalar(1) - (zk * cap_t).square());
            else
              zk = (zk - mr).exp() * a - u * sk;
          }
          for (Index n = 0; n < nb; ++n) {
            const long c = label_of(n);
            if (c == st.ignore) {
              z.row(n).setZero();
            } else if (c >= v0 && c < v0 + vlen) {
              const double sc =
                  softcap_ != 0 ? 1.0 - std::pow(zc[n] * temperature_ / softcap_, 2) : 1.0;
              z(n, c - v0) -=
                  static_cast<Scalar>(urow[n] * class_weight(c) * (1.0 - st.eps) * sc * inv_t);
            }
          }
          dhg.noalias() += z * w.middleRows(v0, vlen);
          dw->middleRows(v0, vlen).noalias() += z.transpose() * hb;
          if constexpr (!std::is_same_v<PB, std::nullptr_t>) {
            for (Index k = 0; k < vlen; ++k)
              db->coeffRef(v0 + k) += z.col(k).sum();
          }
        }
      };
      for_groups(groups, threads, pass2);
      auto dhb = dh->middleRows(n0, nb);
      for (Index g = 0; g < groups; ++g)
        dhb += MapM(dh_part + g * ld * d, nb, d, Eigen::OuterStride<>(ld));
      return total;
    }
  }

  // The first 64-byte boundary at or after p (the buffers carry that much slack).
  template <class T>
  static T* aligned(T* p) {
    const std::size_t a = reinterpret_cast<std::size_t>(p) % 64;
    return a == 0 ? p : reinterpret_cast<T*>(reinterpret_cast<char*>(p) + (64 - a));
  }

  // Whether a vocabulary block's gradient may be dropped: every p_nk < threshold and no counted
  // label in it.
  template <class Labels>
  bool skip_block(const double* bmax, Index blocks, Index blk, Index nb, const double* lse,
                  const double* urow, const Labels& labels, Index n0, Index v0, Index vlen) const {
    for (Index n = 0; n < nb; ++n) {
      if (urow[n] == 0)
        continue;
      const long c = static_cast<long>(labels[n0 + n]);
      if (c >= v0 && c < v0 + vlen)
        return false;
      if (!(std::exp(bmax[n * blocks + blk] - lse[n]) < filter_))
        return false;
    }
    return true;
  }

  // Runs fn(group, thread) for every group: on OpenMP threads when opted in. Each group's work is
  // the same whatever thread runs it.
  template <class Fn>
  static void for_groups(Index groups, int threads, const Fn& fn) {
#if SOFTMAXLAB_PARALLEL_SLICES
    if (threads > 1) {
#pragma omp parallel for schedule(static) num_threads(threads)
      for (Index g = 0; g < groups; ++g)
        fn(g, omp_get_thread_num());
      return;
    }
#endif
    (void)threads;
    for (Index g = 0; g < groups; ++g)
      fn(g, 0);
  }

  CrossEntropyLoss ce_;
  double softcap_ = 0;
  double temperature_ = 1;
  Index token_block_ = 128;
  Index vocab_block_ = 2048;
  double filter_ = 0;
};

}  // namespace softmaxlab
