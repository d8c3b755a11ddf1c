// softmaxlab: SampledSoftmaxLoss and NceLoss, the output-layer losses that score only the true
// class and a few sampled classes instead of all V (TensorFlow's tf.nn.sampled_softmax_loss and
// tf.nn.nce_loss; Jean et al. 2015, "On using very large target vocabulary for neural machine
// translation"; Gutmann and Hyvarinen 2010 and Mnih and Teh 2012 for NCE; word2vec's negative
// sampling is NCE with the unigram^0.75 sampler and subtract_log_q off).
//
// What it computes. Hidden states H (N x d, a row per token), classifier W (V x d, a row per
// class), optional bias b (V), one true class c_n per token (num_true = 1: TensorFlow's num_true > 1
// is not supported), and one set of S = num_sampled candidates s_1..s_S shared by the batch with
// their expected counts (candidate_sampler.hpp, or given by the caller):
// clang-format off
//     t_n  = h_n . w_{c_n} + b_{c_n} - log Etrue_n          the true logit (log Q correction)
//     u_nj = h_n . w_{s_j} + b_{s_j} - log Esampled_j       the sampled logits
//     u_nj = -FLT_MAX   if remove_accidental_hits and s_j == c_n
//     SampledSoftmaxLoss: loss_n = -log softmax([t_n, u_n1, ..., u_nS])_0
//     NceLoss:            loss_n = -log sigmoid(t_n) - sum_j log(1 - sigmoid(u_nj))
//                                = softplus(-t_n) + sum_j softplus(u_nj)
// clang-format on
// with the log terms dropped when subtract_log_q is off. The loss is reduced over the N tokens:
// Reduction::Mean (default; TensorFlow returns the per-example losses, which users average), Sum,
// or None (the call returns the sum; per-token losses through RowOutputs::with_losses). With the
// log Q correction and S -> V distinct candidates, the sampled softmax loss tends to the full
// softmax cross-entropy (tested; see Accuracy).
//
// Call forms (`l` a SampledSoftmaxLoss or NceLoss, `gen` a Philox4x32, `out` an optional
// RowOutputs, `cs` a CandidateSample, `g` a SampledGradients<Scalar>):
// clang-format off
//     sml::SampledSoftmaxLoss l(sml::CandidateSampler::log_uniform(V), /*num_sampled=*/64);
//     double x = l(H, W, labels, gen[, out]);           // draws the candidates from gen
//     double x = l(H, W, b, labels, gen[, out]);        // with a bias
//     sml::CandidateSample cs = l.draw(labels, gen);    // the same draw, kept
//     double x = l(H, W, labels, cs[, out]);            // given candidates and expected counts
//     double x = l(H, W, b, labels, cs[, out]);
//     double x = l(H, W, labels, cs, g[, out]);         // loss and gradients
//     double x = l(H, W, b, labels, cs, g[, out]);      //   g.db_rows too
// clang-format on
// The gradient form: g.dH (N x d, dense) and the row-indexed sparse dW / db of SampledGradients
// (only the true and sampled classes' rows are nonzero: g.rows ascending and distinct, g.dW_rows
// and g.db_rows one row / entry per touched class; g.add_to(dW) and g.add_bias_to(db) add them to
// dense storage). With Reduction::None the gradients are those of the sum of the per-token losses.
// The expected counts are constants (no gradient), as in TensorFlow.
// H, W (and b) share one scalar type, float or double; the logits and the GEMMs run in it, the
// losses are accumulated in double. Any storage order; b a column vector (VectorXf, Map, segment).
// labels: a std::vector of integers or an Eigen integer vector with storage.
//
// Options (with_* return a modified copy): with_num_sampled(S), with_unique(bool) (default true,
// TensorFlow's samplers in these losses), with_subtract_log_q(bool) (default true),
// with_remove_accidental_hits(bool) (default true for SampledSoftmaxLoss, false for NceLoss:
// TensorFlow's defaults), with_reduction(r), with_sampler(CandidateSampler).
//
// Parameters and ranges (std::invalid_argument naming the parameter and value otherwise):
// num_sampled >= 1, and <= the sampler's support (classes of nonzero probability) when unique;
// reduction Mean, Sum or None; W with H's d columns; b with V entries; labels with N entries in
// [0, V); the drawing forms need a sampler whose range_max is V; given candidates in [0, V), with
// one true expected count per token and one sampled expected count per candidate, each finite and
// > 0 when subtract_log_q is on (a true class of probability 0 under the sampler has no log Q).
//
// Accuracy. The logits are GEMM results in the scalar type (each within ~d eps sum_i |h_i w_i|);
// the sampled softmax row loss is LogSoftmax's normalizer over the 1 + S logits (CrossEntropyLoss's
// row kernel: 4 eps (1 + |log p|) in the scalar type), NCE's log-sigmoid terms softplus(x) =
// max(x, 0) + log1p(exp(-|x|)) in double (a few double eps, no overflow for any finite logit).
// Tested in tests/test_sampled_softmax.cpp against a long double computation from the same
// candidates ("sampled losses match a long double reference": relative error < 1e-12 in double,
// < 2e-5 in float), gradients against finite differences in double ("... gradients match finite
// differences": relative < 1e-6, measured 6e-12), and the estimator ("sampled softmax approaches
// the full softmax loss"): with unique log-uniform candidates, S = V - 1 of V = 64 classes and the
// log Q correction, the mean over 200 draws is within 1% of the full softmax cross-entropy
// (measured 0.2%; at S = 8 it is off by 50%: the estimator is biased for small S, consistent as
// S -> V); the uniform sampler with S = V gives the full loss within 1e-9 relative.
// Special values: an accidental hit's logit is -FLT_MAX (TensorFlow adds -FLT_MAX), so its
// probability, sigmoid and gradient are exactly 0; a NaN anywhere in a token's logits makes its
// loss NaN; +-inf logits follow LogSoftmax's rules (sampled softmax) or the limits of softplus
// (NCE). N = 0 gives 0 and empty gradients.
// Cost: one N x S x d GEMM forward, two more for the gradients, plus O(N d) for the true classes;
// memory O(N S + S d) for the logits and the gathered candidate rows: no N x V array.
// Measured (bench/bench_sampled_softmax.cpp, float, N = 256, d = 512, V = 128,256, with gradients):
// per token 117x faster than the full softmax loss at S = 1,024, 12.7x at S = 8,192 (CPU time on a
// shared machine; docs/sampled_softmax.md has the table and the loss's bias).
#pragma once

#include <type_traits>
#include <utility>

#include "candidate_sampler.hpp"
#include "detail/checks.hpp"
#include "detail/loss_base.hpp"
#include "detail/sampled_logits.hpp"
#include "random.hpp"

namespace softmaxlab {

// SampledSoftmaxLoss (K = SampledSoftmax) and NceLoss (K = Nce): see the header's doc block.
template <SampledLossKind K>
class BasicSampledLoss {
 public:
  // The variant's name, as error messages give it.
  static constexpr const char* name =
      K == SampledLossKind::SampledSoftmax ? "SampledSoftmaxLoss" : "NceLoss";

  // Candidates from `sampler`, num_sampled of them per call (>= 1; <= sampler.support() since
  // unique is on by default).
  BasicSampledLoss(CandidateSampler sampler, Index num_sampled,
                   Reduction reduction = Reduction::Mean)
      : sampler_(std::move(sampler)),
        num_sampled_(num_sampled),
        reduction_(detail::check_reduction_or_none("reduction", reduction)) {
    sampler_.check_num_sampled(num_sampled_, unique_);
  }

  // The sampler this object was built with.
  const CandidateSampler& sampler() const { return sampler_; }
  // The number of candidates per call.
  Index num_sampled() const { return num_sampled_; }
  // Whether the candidates are distinct.
  bool unique() const { return unique_; }
  // Whether the logits get the log Q correction.
  bool subtract_log_q() const { return subtract_log_q_; }
  // Whether a candidate equal to the true class is removed.
  bool remove_accidental_hits() const { return remove_hits_; }
  // The reduction this object was built with.
  Reduction reduction() const { return reduction_; }

  // A copy with this option set (ranges: the header's doc block).
  [[nodiscard]] BasicSampledLoss with_num_sampled(Index num_sampled) const {
    sampler_.check_num_sampled(num_sampled, unique_);
    BasicSampledLoss r = *this;
    r.num_sampled_ = num_sampled;
    return r;
  }
  // A copy with this option set.
  [[nodiscard]] BasicSampledLoss with_unique(bool unique) const {
    sampler_.check_num_sampled(num_sampled_, unique);
    BasicSampledLoss r = *this;
    r.unique_ = unique;
    return r;
  }
  // A copy with this option set.
  [[nodiscard]] BasicSampledLoss with_subtract_log_q(bool on) const {
    BasicSampledLoss r = *this;
    r.subtract_log_q_ = on;
    return r;
  }
  // A copy with this option set.
  [[nodiscard]] BasicSampledLoss with_remove_accidental_hits(bool on) const {
    BasicSampledLoss r = *this;
    r.remove_hits_ = on;
    return r;
  }
  // A copy with this option set.
  [[nodiscard]] BasicSampledLoss with_reduction(Reduction reduction) const {
    BasicSampledLoss r = *this;
    r.reduction_ = detail::check_reduction_or_none("reduction", reduction);
    return r;
  }
  // A copy with this option set.
  [[nodiscard]] BasicSampledLoss with_sampler(CandidateSampler sampler) const {
    sampler.check_num_sampled(num_sampled_, unique_);
    BasicSampledLoss r = *this;
    r.sampler_ = std::move(sampler);
    return r;
  }

  // Draws this loss's candidates and their expected counts for `labels` from gen.
  template <class Labels>
  CandidateSample draw(const Labels& labels, Philox4x32& gen) const {
    return sampler_.sample(labels, num_sampled_, unique_, gen);
  }

  // Loss with candidates drawn from gen.
  template <class XH, class XW, class Labels>
  double operator()(const Eigen::MatrixBase<XH>& H, const Eigen::MatrixBase<XW>& W,
                    const Labels& labels, Philox4x32& gen, const RowOutputs& out = {}) const {
    check_range(W.rows());
    return (*this)(H, W, labels, draw(labels, gen), out);
  }
  // Loss with a bias, candidates drawn from gen.
  template <class XH, class XW, class XB, class Labels>
  double operator()(const Eigen::MatrixBase<XH>& H, const Eigen::MatrixBase<XW>& W,
                    const Eigen::MatrixBase<XB>& b, const Labels& labels, Philox4x32& gen,
                    const RowOutputs& out = {}) const {
    check_range(W.rows());
    return (*this)(H, W, b, labels, draw(labels, gen), out);
  }
  // Loss with given candidates.
  template <class XH, class XW, class Labels>
  double operator()(const Eigen::MatrixBase<XH>& H, const Eigen::MatrixBase<XW>& W,
                    const Labels& labels, const CandidateSample& cs,
                    const RowOutputs& out = {}) const {
    return run<typename XH::Scalar>(H.derived(), W.derived(), nullptr, 0, labels, cs, nullptr, out);
  }
  // Loss with a bias and given candidates.
  template <class XH, class XW, class XB, class Labels>
  double operator()(const Eigen::MatrixBase<XH>& H, const Eigen::MatrixBase<XW>& W,
                    const Eigen::MatrixBase<XB>& b, const Labels& labels, const CandidateSample& cs,
                    const RowOutputs& out = {}) const {
    using Scalar = typename XH::Scalar;
    const Eigen::Ref<const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>> bias(b.derived());
    return run<Scalar>(H.derived(), W.derived(), bias.data(), bias.size(), labels, cs, nullptr,
                       out);
  }
  // Loss and gradients with given candidates.
  template <class XH, class XW, class Labels, class Scalar>
  double operator()(const Eigen::MatrixBase<XH>& H, const Eigen::MatrixBase<XW>& W,
                    const Labels& labels, const CandidateSample& cs, SampledGradients<Scalar>& g,
                    const RowOutputs& out = {}) const {
    return run<Scalar>(H.derived(), W.derived(), nullptr, 0, labels, cs, &g, out);
  }
  // Loss and gradients (db too) with a bias and given candidates.
  template <class XH, class XW, class XB, class Labels, class Scalar>
  double operator()(const Eigen::MatrixBase<XH>& H, const Eigen::MatrixBase<XW>& W,
                    const Eigen::MatrixBase<XB>& b, const Labels& labels, const CandidateSample& cs,
                    SampledGradients<Scalar>& g, const RowOutputs& out = {}) const {
    const Eigen::Ref<const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>> bias(b.derived());
    return run<Scalar>(H.derived(), W.derived(), bias.data(), bias.size(), labels, cs, &g, out);
  }

 private:
  void check_range(Index v) const {
    if (sampler_.range_max() != v)
      detail::fail(name, ": the sampler's range_max (", sampler_.range_max(),
                   ") must be W's number of rows V, but got V = ", v);
  }

  template <class Scalar, class XH, class XW, class Labels>
  double run(const XH& H, const XW& W, const Scalar* bias, Index bias_size, const Labels& labels,
             const CandidateSample& cs, SampledGradients<Scalar>* g, const RowOutputs& out) const {
    static_assert(
        std::is_same_v<typename XH::Scalar, Scalar> && std::is_same_v<typename XW::Scalar, Scalar>,
        "softmaxlab: H, W, the bias and the gradients must share one scalar type");
    const detail::SampledConfig cfg{K, subtract_log_q_, remove_hits_, reduction_};
    return detail::sampled_loss<Scalar>(name, cfg, H, W, bias, bias_size, labels, cs.sampled,
                                        cs.true_expected_count, cs.sampled_expected_count, g, out);
  }

  CandidateSampler sampler_;
  Index num_sampled_;
  Reduction reduction_;
  bool unique_ = true;
  bool subtract_log_q_ = true;
  bool remove_hits_ = K == SampledLossKind::SampledSoftmax;
};

// TensorFlow's sampled_softmax_loss: softmax cross-entropy over [true, sampled] logits.
using SampledSoftmaxLoss = BasicSampledLoss<SampledLossKind::SampledSoftmax>;
// TensorFlow's nce_loss: sigmoid cross-entropy, label 1 for the true class, 0 for each sample.
using NceLoss = BasicSampledLoss<SampledLossKind::Nce>;

}  // namespace softmaxlab
