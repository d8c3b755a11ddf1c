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
// H and W share one scalar type: float, double, Eigen::half or Eigen::bfloat16. The compute type C
// is double for double and float otherwise: the GEMMs run in C, the normalizer and the loss
// accumulate in double / long double. dH, dW and db are C (float for 16-bit inputs: float
// accumulation, and dW accumulates over the token blocks, which 16-bit storage could not do
// without rounding at every step); b has H's scalar type or C. 16-bit inputs are widened inside
// the kernel: each token block of H once (token_block x d floats), W in chunks of at most 512 KB
// of float per thread, a vocabulary block being one chunk (F16C / AVX-512 conversions of detail/scalar_types.hpp); no copy of W or H
// is made. Any storage order; dH, dW, db must be writable storage of H's, W's and b's shapes.
// labels: an Eigen integer vector with storage or a std::vector of integers. The
// vocabulary-parallel form over MPI (W sharded by rows) is mpi::VocabParallelLinearCrossEntropy
// (mpi_linear_cross_entropy.hpp), on this kernel (detail/lce_kernels.hpp).
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
// of `vocab_block` classes (default 1024): Z = H_blk W_blk^T is one GEMM into a block buffer.
// Pass 1 keeps, per token, an online normalizer [max, sum] (single_pass.hpp's exact merge) and
// the label's logit; pass 2 (only when gradients are requested) recomputes each block, turns it
// into dL/dr in place and adds G W_blk to dH and G^T H_blk to dW: four GEMM-sized products in all
// against the materialized path's three, and no N x V array.
// Workspace (the only memory besides the outputs; Workspace::bytes() reports it and equals
// workspace_bytes(N, d, V, threads, gradients), the formula the buffers are sized by): per thread
// one token_block x vocab_block buffer, per vocabulary group after the first a token_block x d
// partial of dH (the first group adds into dH itself), and O(token_block x (groups + V /
// vocab_block)) scalars of per-token state. 16-bit inputs add the widened H block (token_block x
// d floats) and per thread a W chunk (at most 512 KB of float), and their vocabulary blocks are
// one chunk wide. At the defaults, d = 1024: float 1.07 MB on one thread, 1.59 MB on two; half and
// bfloat16 1.66 MB and 2.25 MB, whatever N and V (0.2% to 0.43% of the N x V float logits at
// N = 4096, V = 32,000; tested). Eigen's GEMM packing buffers (about 0.9 MB per thread, allocated
// by Eigen inside each product) come on top in the resident set: docs/output_layer.md has the
// measured peaks.
// Threads: with OpenMP opted in (SOFTMAXLAB_USE_OPENMP and -fopenmp, as the rest of the library),
// the vocabulary blocks of each token block are split into kGroups (2) fixed contiguous groups
// run on threads (so at most 2 threads work on a call: each more group would cost a dH partial);
// each group's normalizer and dH partial are merged in group order and dW's rows belong to one
// group, so results are bit-for-bit the same for any thread count (tested in
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
// Half and bfloat16: widening is exact, so the bound is the float bound on the rounded inputs;
// tests/test_linear_cross_entropy_16bit.cpp ("LinearCrossEntropy on half and bfloat16 equals
// float on the rounded values") checks loss, lse, per-token losses, dH, dW and db against the
// float call on the same values within twice that bound (measured worst ratio 3e-6).
// Special values: a -inf logit (e.g. from a -inf bias entry that masks a class) has probability 0;
// a NaN or +inf logit makes that token's loss, lse and gradient contributions NaN (a NaN input
// never yields a plausible number; unlike CrossEntropyLoss, +inf logits are not given the limit).
// N = 0 gives loss 0 and empty outputs; V = 0 with counted labels throws (no label fits).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <functional>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "detail/backward_base.hpp"
#include "detail/checks.hpp"
#include "detail/functor_base.hpp"
#include "detail/lce_kernels.hpp"
#include "detail/scalar_types.hpp"
#include "linear_cross_entropy_outputs.hpp"
#include "loss.hpp"
#include "single_pass.hpp"

namespace softmaxlab {

namespace mpi {
class VocabParallelLinearCrossEntropy;  // mpi_linear_cross_entropy.hpp
}  // namespace mpi

// The fused output-layer cross-entropy: see the header's doc block.
class LinearCrossEntropy {
 public:
  // The variant's name, as error messages give it.
  static constexpr const char* name = "LinearCrossEntropy";
  static constexpr Index kGroups = detail::kLceGroups;  // fixed vocabulary groups (threads)

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

  // The bytes a Workspace holds after a call on n_tokens x d inputs of type Scalar (float, double,
  // Eigen::half or Eigen::bfloat16) and V = vocab classes with this object's options, on `threads`
  // threads (OpenMP; at most kGroups are used; 1 without OpenMP), with gradients or the loss only:
  // the formula the kernel sizes its buffers by, so Workspace::bytes() equals it. Independent of
  // N beyond one token block; grows with V only by O(token_block x V / vocab_block) doubles when
  // gradient filtering is on. Throws std::invalid_argument for a negative size or threads < 1.
  template <class Scalar>
  std::size_t workspace_bytes(Index n_tokens, Index d, Index vocab, int threads,
                              bool gradients) const {
    detail::static_check_storage_scalars<Scalar, Scalar>();
    using C = detail::compute_scalar_t<Scalar>;
    if (n_tokens < 0 || d < 0 || vocab < 0)
      detail::fail(name, ": workspace_bytes needs sizes >= 0, but got N = ", n_tokens, ", d = ", d,
                   ", V = ", vocab);
    if (threads < 1)
      detail::fail(name, ": workspace_bytes needs threads >= 1, but got ", threads);
    if (n_tokens == 0)
      return 0;
    const bool filtering = gradients && filter_ > 0 && label_smoothing() == 0;
    return detail::lce_layout<C, !std::is_same_v<Scalar, C>>(std::min(token_block_, n_tokens), d,
                                                             vocab, vocab_block_, threads,
                                                             gradients, filtering, true)
        .template bytes<C>();
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
  friend class mpi::VocabParallelLinearCrossEntropy;  // calls run() on its shard
  using NoBias = detail::LceNoBias;                   // the bias type of the forms without one
  static const NoBias* no_bias() { return nullptr; }

  LinearCrossEntropy with_ce(const CrossEntropyLoss& ce) const {
    LinearCrossEntropy c = *this;
    c.ce_ = ce.with_weight(weight()).with_z_loss(z_loss());
    return c;
  }

  // The one-process form: W holds the whole vocabulary.
  template <class XH, class XW, class XB, class Labels, class PH, class PW, class PB>
  double run(const XH& h, const XW& w, const XB* b, const Labels& labels, PH dh, PW dw, PB db,
             const TokenOutputs& out) const {
    return run_shard(name, h, w, b, labels, dh, dw, db, out, 0, w.rows(), detail::LceOneShard());
  }

  // The kernel of both forms: W (and b, dW, db) hold the classes [begin, begin + W.rows()) of a
  // vocabulary of `vocab` classes; labels and class weights are global; combine merges the
  // shards' normalizers and dH (detail/lce_kernels.hpp). fn names the caller in errors.
  template <class XH, class XW, class XB, class Labels, class PH, class PW, class PB, class Combine>
  double run_shard(const char* fn, const XH& h, const XW& w, const XB* b, const Labels& labels_in,
                   PH dh, PW dw, PB db, const TokenOutputs& out, Index begin, Index vocab,
                   const Combine& combine) const {
    using Scalar = typename XH::Scalar;
    detail::static_check_storage_scalars<Scalar, Scalar>();
    using C = detail::compute_scalar_t<Scalar>;  // float for half and bfloat16
    static_assert(std::is_same_v<Scalar, typename XW::Scalar>,
                  "softmaxlab: H and W must have the same scalar type");
    constexpr bool has_grad = !std::is_same_v<PH, std::nullptr_t>;
    constexpr bool has_db = !std::is_same_v<PB, std::nullptr_t>;
    const Index n_tok = h.rows(), d = h.cols(), local = w.rows();
    if (w.cols() != d)
      detail::fail(fn, ": H (", n_tok, " x ", d, ") and W (", local, " x ", w.cols(),
                   ") do not chain: W must have d = ", d, " columns (a row per class)");
    if constexpr (!std::is_same_v<XB, NoBias>) {
      static_assert(
          std::is_same_v<Scalar, typename XB::Scalar> || std::is_same_v<C, typename XB::Scalar>,
          "softmaxlab: the bias must have H's scalar type or float (double for double)");
      detail::require_vector("LinearCrossEntropy: b", b->rows(), b->cols());
      if (b->size() != local)
        detail::fail(fn, ": b must have one entry per class (", local, "), but got ", b->size());
    }
    if constexpr (has_grad) {
      using DH = std::remove_pointer_t<PH>;
      using DW = std::remove_pointer_t<PW>;
      static_assert(
          std::is_same_v<C, typename DH::Scalar> && std::is_same_v<C, typename DW::Scalar>,
          "softmaxlab: dH and dW must be float for float, half and bfloat16 inputs, "
          "double for double");
      static_assert(detail::is_writable_storage_v<DH> && detail::is_writable_storage_v<DW>,
                    "softmaxlab: dH and dW must be writable storage, not expressions");
      detail::require_same_shape(fn, detail::SliceMode::Rows, "dH", dh->rows(), dh->cols(), n_tok,
                                 d);
      detail::require_same_shape(fn, detail::SliceMode::Rows, "dW", dw->rows(), dw->cols(), local,
                                 d);
      if constexpr (has_db) {
        using DB = std::remove_pointer_t<PB>;
        static_assert(std::is_same_v<C, typename DB::Scalar> && detail::is_writable_storage_v<DB>,
                      "softmaxlab: db must be writable storage of dW's scalar type");
        detail::require_vector("LinearCrossEntropy: db", db->rows(), db->cols());
        if (db->size() != local)
          detail::fail(fn, ": db must have one entry per class (", local, "), but got ",
                       db->size());
      }
    }
    detail::check_row_outputs(fn, out.rows, n_tok);
    const bool none = reduction() == Reduction::None;
    if (out.upstream.data != nullptr) {
      if (!none)
        detail::fail(fn, ": upstream is for Reduction::None only, but the reduction is ",
                     static_cast<int>(reduction()));
      if (out.upstream.size != n_tok)
        detail::fail(fn, ": upstream must have one entry per token (", n_tok, "), but got ",
                     out.upstream.size);
    }
    const auto& wt = weight();
    if (!wt.empty() && static_cast<Index>(wt.size()) != vocab)
      detail::fail(fn, ": weight must have one entry per class (", vocab, "), but got ", wt.size());
    const auto labels = detail::label_span(fn, labels_in);
    const auto [counted, weight_sum] =
        detail::count_labels(fn, labels, n_tok, vocab, ignore_index(), wt);
    detail::LceSetup st;
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
    st.z_loss = z_loss();
    st.softcap = softcap_;
    st.temperature = temperature_;
    st.filter = filter_;
    st.weight = &wt;
    st.token_block = token_block_;
    st.vocab_block = vocab_block_;
    st.class_begin = begin;
    st.lse = out.rows.lse;
    st.losses = out.rows.losses;
    st.upstream = out.upstream;

    if constexpr (has_grad) {
      // The gradients are zeroed first and accumulated: they must not share storage with inputs.
      // Byte ranges, as the gradients may be float for 16-bit inputs.
      const auto overlaps = [](const auto& x, const auto& y) {
        if (x.size() == 0 || y.size() == 0)
          return false;
        const auto bytes = [](const auto& m) {
          const char* first = reinterpret_cast<const char*>(m.data());
          const char* last = reinterpret_cast<const char*>(detail::last_coefficient(m));
          return std::make_pair(first, last + sizeof(*m.data()));
        };
        const auto [x0, x1] = bytes(x);
        const auto [y0, y1] = bytes(y);
        return std::less<const char*>()(x0, y1) && std::less<const char*>()(y0, x1);
      };
      const auto refuse_overlap = [&](const auto& out_grad, const char* grad_name) {
        const auto check = [&](const auto& in, const char* in_name) {
          using In = std::decay_t<decltype(in)>;
          if constexpr (detail::has_direct_access_v<In>) {
            if (overlaps(in, out_grad))
              detail::fail(fn, ": ", grad_name, " shares storage with ", in_name);
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
    Workspace local_ws;
    Workspace& ws = out.workspace != nullptr ? *out.workspace : local_ws;
    double total = 0;
    for (Index n0 = 0; n0 < n_tok; n0 += token_block_) {
      const Index nb = std::min(token_block_, n_tok - n0);
      total +=
          detail::lce_token_block<C>(h, w, b, labels, dh, dw, db, st, ws.buffers_, combine, n0, nb);
    }
    return none ? total : total * st.u_default;
  }

  CrossEntropyLoss ce_;
  double softcap_ = 0;
  double temperature_ = 1;
  Index token_block_ = 128;
  Index vocab_block_ = 1024;
  double filter_ = 0;
};

}  // namespace softmaxlab
