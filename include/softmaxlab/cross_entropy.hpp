// softmaxlab: CrossEntropyLoss, cross-entropy from logits with its gradient. Rows are samples:
// logits and outputs are N x C (N samples, C classes), labels have N entries.
//
// CrossEntropyLoss(reduction = Mean, label_smoothing = 0, ignore_index = -100)
//   (reduction: Mean, Sum or None)
//   From logits z through a fused log-softmax (never log of a softmax):
//     loss_n = -sum_k q_nk log_softmax(z_n)_k,      dloss_n/dz_n = p_n * sum_k q_nk - q_n,
//   p_n = softmax(z_n). Targets are either class labels c_n (Eigen integer vector with storage, or
//   std::vector<int>), q_nk = (1 - eps) [k = c_n] + eps / C, or a target distribution matrix t
//   (N x C, same scalar as z), q_nk = (1 - eps) t_nk + eps / C. eps = label_smoothing in [0, 1).
//   A label equal to ignore_index contributes no loss and a zero gradient row, and is not counted
//   by the Mean reduction; any other label outside [0, C) throws std::invalid_argument.
//   Reduction::Mean divides by the number of counted samples (N for distributions; 0 counted gives
//   loss 0 and a zero gradient), Reduction::Sum does not divide.
//   Terms with q_nk = 0 count as 0 even where z_nk = -inf (0 log 0 = 0), so masked classes work
//   without smoothing; with eps > 0 the smoothing mass lands on every class, masked ones included,
//   and the loss is +inf (as in PyTorch). A NaN logit makes the loss NaN and its gradient row NaN.
//   The loss is accumulated in double. Forms:
//     double loss = ce(logits, targets);          // no allocation when logits have storage
//     double loss = ce(logits, targets, grad);    // grad = dloss/dlogits (N x C), no allocation;
//                                                 // grad may be logits itself (in place), and
//                                                 // an expression logits is evaluated into grad
//   Training options (PyTorch / PaLM semantics), set on a copy:
//     ce.with_weight({w_0, ..., w_{C-1}})   per-class weights (finite, >= 0), PyTorch's `weight`:
//       labels: loss_n = -sum_k w_k q_nk log p_nk, i.e. (1 - eps) w_c (-log p_c) + (eps / C)
//       sum_k w_k (-log p_k), and Mean divides by sum_n w_{c_n} over the counted samples (the
//       smoothing term included, as torch.nn.functional.cross_entropy does); a zero weight sum
//       gives 0 (PyTorch: NaN). Target distributions: q_nk = w_k ((1 - eps) t_nk + eps / C) and
//       Mean divides by N (PyTorch's rule for probabilities).
//     ce.with_z_loss(lambda)                adds lambda * lse_n^2 to each counted sample's loss
//       (lse_n = log sum_k exp z_nk; PaLM, ST-MoE), gradient 2 lambda lse_n softmax(z_n); it
//       shares the sample's reduction (with weights: the same denominator). A row of only -inf
//       (lse = -inf) or with +inf gives an infinite z-loss.
//     Reduction::None                       no reduction: the call returns the sum of the
//       per-sample losses and grad holds each sample's own gradient.
//     double loss = ce(logits, targets[, grad], sml::RowOutputs().with_losses(l).with_lse(s));
//       l (N, double): each sample's loss before the reduction (z-loss included, 0 if ignored);
//       s (N, double): each row's log-sum-exp (also for ignored samples), so the caller need not
//       recompute it. Neither allocates. The lse costs one more read of the row when requested.
//
// Accuracy, outputs and errors: as every loss, see loss.hpp's doc block (the losses' umbrella).
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "detail/checks.hpp"
#include "detail/loss_base.hpp"

namespace softmaxlab {

// Cross-entropy from logits: see the header's doc block.
class CrossEntropyLoss : public detail::LogitsLoss<CrossEntropyLoss> {
 public:
  // The variant's name, as error messages give it.
  static constexpr const char* name = "CrossEntropyLoss";
  using detail::LogitsLoss<CrossEntropyLoss>::default_ignore_index;  // PyTorch's -100

  // reduction Mean, Sum or None, label_smoothing in [0, 1); throws std::invalid_argument naming the
  // value otherwise.
  explicit CrossEntropyLoss(Reduction reduction = Reduction::Mean, double label_smoothing = 0.0,
                            long ignore_index = default_ignore_index)
      : reduction_(detail::check_reduction_or_none("CrossEntropyLoss: reduction", reduction)),
        label_smoothing_(detail::require_in_range("CrossEntropyLoss: label_smoothing",
                                                  label_smoothing, 0.0, std::nextafter(1.0, 0.0),
                                                  "in [0, 1)")),
        ignore_index_(ignore_index) {}

  // The reduction this object was built with.
  Reduction reduction() const { return reduction_; }
  // The label smoothing this object was built with.
  double label_smoothing() const { return label_smoothing_; }
  // The ignore index this object was built with.
  long ignore_index() const { return ignore_index_; }
  // The weight this object was built with.
  const std::vector<double>& weight() const { return weight_; }
  // The z loss this object was built with.
  double z_loss() const { return z_loss_; }

  // A copy with per-class weights (PyTorch's `weight`: C entries, finite, >= 0; empty = none).
  [[nodiscard]] CrossEntropyLoss with_weight(std::vector<double> weight) const {
    CrossEntropyLoss c = *this;
    c.weight_ = detail::check_class_weights("CrossEntropyLoss: weight", std::move(weight));
    return c;
  }
  // A copy with the z-loss lambda * lse^2 added to every counted sample (finite, >= 0; 0 = off).
  [[nodiscard]] CrossEntropyLoss with_z_loss(double lambda) const {
    CrossEntropyLoss c = *this;
    if (!(lambda >= 0 && std::isfinite(lambda)))
      detail::fail("CrossEntropyLoss: z_loss must be finite and >= 0, but got ", lambda);
    c.z_loss_ = lambda;
    return c;
  }

  // Boolean mask (bool, N x C, true = kept): entries where keep is false behave exactly as -inf
  // logits (a masked target class gives +inf, a row with nothing kept +inf unless ignored; their
  // gradient entries are 0), and -inf is never written into the logits. The masked logits are
  // staged in grad, which then receives dloss/dlogits as in operator()(logits, targets, grad);
  // no allocation. grad may be logits itself; it must not share storage with matrix targets.
  template <class XprZ, class XprK, class Targets, class OutG>
  double apply_masked(const Eigen::DenseBase<XprZ>& logits, const Eigen::DenseBase<XprK>& keep,
                      const Targets& targets, OutG&& grad_out) const {
    using Scalar = typename XprZ::Scalar;
    using XprG = detail::output_xpr_t<OutG>;
    static_assert(std::is_same_v<typename XprK::Scalar, bool>,
                  "softmaxlab: a boolean mask must have scalar type bool (true = kept)");
    static_assert(detail::is_writable_storage_v<XprG>,
                  "softmaxlab: grad must be writable storage (Matrix, Array, Map, Ref or a Block "
                  "of one), not an expression");
    auto& grad = detail::writable_output(std::forward<OutG>(grad_out));
    detail::require_same_shape(name, detail::SliceMode::Rows, "keep", keep.rows(), keep.cols(),
                               logits.rows(), logits.cols());
    detail::require_same_shape(name, detail::SliceMode::Rows, "grad", grad.rows(), grad.cols(),
                               logits.rows(), logits.cols());
    if constexpr (!detail::is_label_type_v<Targets>) {
      if (detail::storage_overlaps(targets.derived(), grad))
        detail::fail(name,
                     "::apply_masked: grad must not share storage with the targets (the "
                     "masked logits are staged in grad)");
    }
    if constexpr (detail::has_direct_access_v<XprZ>) {
      if (detail::storage_partially_overlaps(logits.derived(), grad))
        detail::fail(name, ": grad partially overlaps the logits (only exact in-place is allowed)");
    }
    const Scalar inf = std::numeric_limits<Scalar>::infinity();
    for (Index k = 0; k < logits.cols(); ++k) {
      for (Index n = 0; n < logits.rows(); ++n)
        grad.coeffRef(n, k) = keep.derived().coeff(n, k) ? logits.derived().coeff(n, k) : -inf;
    }
    return impl(grad, targets, &grad);
  }

  // The loss only, with a boolean mask: allocates one N x C matrix for the masked logits (use the
  // form with grad to avoid it).
  template <class XprZ, class XprK, class Targets>
  double masked(const Eigen::DenseBase<XprZ>& logits, const Eigen::DenseBase<XprK>& keep,
                const Targets& targets) const {
    using Scalar = typename XprZ::Scalar;
    static_assert(std::is_same_v<typename XprK::Scalar, bool>,
                  "softmaxlab: a boolean mask must have scalar type bool (true = kept)");
    detail::require_same_shape(name, detail::SliceMode::Rows, "keep", keep.rows(), keep.cols(),
                               logits.rows(), logits.cols());
    const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> z =
        keep.derived().select(logits.derived(), -std::numeric_limits<Scalar>::infinity());
    return impl(z, targets, static_cast<std::nullptr_t>(nullptr));
  }

  // The call forms (detail::LogitsLoss): ce(logits, targets[, out]) -> the loss;
  // ce(logits, targets, grad[, out]) -> the loss, with dloss/dlogits written into grad.
  using detail::LogitsLoss<CrossEntropyLoss>::operator();

 private:
  friend class detail::LogitsLoss<CrossEntropyLoss>;

  template <class Z, class Targets, class G>
  double impl(const Z& z, const Targets& targets, G grad_ptr,
              const RowOutputs& out = RowOutputs()) const {
    using Scalar = typename Z::Scalar;
    detail::static_check_scalar<Scalar>();
    constexpr bool has_grad = !std::is_same_v<G, std::nullptr_t>;
    const Index rows = z.rows(), classes = z.cols();
    const double eps = label_smoothing_;
    const double uniform = classes > 0 ? eps / static_cast<double>(classes) : 0.0;
    detail::check_row_outputs(name, out, rows);
    if (!weight_.empty() && static_cast<Index>(weight_.size()) != classes) {
      detail::fail(name, ": weight must have one entry per class (", classes, "), but got ",
                   weight_.size());
    }
    const auto class_weight = [&](Index k) {
      return weight_.empty() ? 1.0 : weight_[static_cast<std::size_t>(k)];
    };
    double weight_total = 0;  // sum_k w_k: the smoothing mass's weight
    for (Index k = 0; k < classes; ++k)
      weight_total += class_weight(k);
    // Per row, before the row's cross-entropy (which may overwrite z in place): the log-sum-exp,
    // when the z-loss or the lse output needs it; returns the z-loss's gradient coefficient
    // 2 lambda lse (added to sum_q: g_k = w (p_k (sum_q + 2 lambda lse) - q_k)).
    const bool need_lse = z_loss_ != 0 || out.lse.data != nullptr;
    const auto row_lse = [&](Index n) {
      const auto zn = detail::slice_span<const Scalar>(z, n, true);
      const auto norm = detail::LogNormalizer<Scalar>::of(zn);
      const double inf = std::numeric_limits<double>::infinity();
      switch (norm.kind) {
        case detail::RowKind::Regular:
          return static_cast<double>(norm.m) + static_cast<double>(norm.log_sum);
        case detail::RowKind::NaN:
          return std::numeric_limits<double>::quiet_NaN();
        case detail::RowKind::AllMasked:
          return -inf;
        case detail::RowKind::PositiveInfinity:
          return inf;
      }
      return std::numeric_limits<double>::quiet_NaN();
    };
    // The extras of one counted row: z-loss term (returned) and the per-row outputs.
    const auto finish_row = [&](Index n, double row_loss, double lse) {
      const double zl = z_loss_ != 0 ? z_loss_ * lse * lse : 0.0;
      if (out.losses.data != nullptr)
        out.losses[n] = row_loss + zl;
      if (out.lse.data != nullptr)
        out.lse[n] = lse;
      return row_loss + zl;
    };

    // Where the gradient may hold the exp terms: only if it shares no storage with the inputs.
    bool store_terms = has_grad;
    if constexpr (has_grad) {
      if (detail::storage_partially_overlaps(z, *grad_ptr))
        detail::fail(name, ": grad partially overlaps the logits (only exact in-place is allowed)");
      if (detail::storage_overlaps(z, *grad_ptr))
        store_terms = false;
    }
    auto grad_row = [&](Index n) {
      if constexpr (has_grad) {
        return detail::slice_span<Scalar>(*grad_ptr, n, true);
      } else {
        return detail::Span<Scalar>{nullptr, 0, 1};
      }
    };

    double total = 0;
    if constexpr (detail::is_label_type_v<Targets>) {
      const auto labels = detail::label_span(name, targets);
      // PyTorch's Mean: divide by the counted samples' class weights (their number without
      // weights), smoothing term included; 0 counted (or a zero weight sum) gives 0.
      const auto [counted, weight_sum] =
          detail::count_labels(name, labels, rows, classes, ignore_index_, weight_);
      const double w = reduction_ == Reduction::Mean && counted > 0 && weight_sum > 0
                           ? 1.0 / weight_sum
                           : (reduction_ == Reduction::Mean && counted > 0 ? 0.0 : 1.0);
      for (Index n = 0; n < rows; ++n) {
        const long c = static_cast<long>(labels[n]);
        const detail::Span<Scalar> g = grad_row(n);
        if (c == ignore_index_) {
          if constexpr (has_grad)
            detail::fill(g, Scalar(0));
          if (out.losses.data != nullptr)
            out.losses[n] = 0;
          if (out.lse.data != nullptr)
            out.lse[n] = row_lse(n);
          continue;
        }
        // loss_n = -sum_k w_k q_k log p_k, q_k = (1 - eps) [k = c] + eps / C (PyTorch)
        const auto q = [&](Index k) {
          return class_weight(k) * ((k == c ? 1.0 - eps : 0.0) + uniform);
        };
        const double sum_q =
            weight_.empty() ? 1.0 : class_weight(c) * (1.0 - eps) + uniform * weight_total;
        const double lse = need_lse ? row_lse(n) : 0.0;
        const double row_loss = detail::cross_entropy_row<Scalar>(
            detail::slice_span<const Scalar>(z, n, true), g, has_grad, store_terms, q,
            sum_q + 2.0 * z_loss_ * lse, w);
        total += finish_row(n, row_loss, lse);
      }
      return total * w;
    } else {
      detail::check_distribution_targets<Scalar>(name, targets, rows, classes);
      return detail::with_storage(targets, [&](const auto& t) {
        if constexpr (has_grad) {
          if (detail::storage_partially_overlaps(t, *grad_ptr))
            detail::fail(name, ": grad partially overlaps the targets");
          if (detail::storage_overlaps(t, *grad_ptr))
            store_terms = false;
        }
        // PyTorch: with target probabilities Mean divides by N, weights or not.
        const double w = detail::reduction_scale(reduction_, rows);
        for (Index n = 0; n < rows; ++n) {
          const auto tn = detail::slice_span<const Scalar>(t, n, true);
          const auto q = [&](Index k) {
            return class_weight(k) * ((1.0 - eps) * static_cast<double>(tn[k]) + uniform);
          };
          double sum_q = 0;
          for (Index k = 0; k < classes; ++k)
            sum_q += q(k);
          const double lse = need_lse ? row_lse(n) : 0.0;
          const double row_loss = detail::cross_entropy_row<Scalar>(
              detail::slice_span<const Scalar>(z, n, true), grad_row(n), has_grad, store_terms, q,
              sum_q + 2.0 * z_loss_ * lse, w);
          total += finish_row(n, row_loss, lse);
        }
        return total * w;
      });
    }
  }

  Reduction reduction_;
  double label_smoothing_;
  long ignore_index_;
  std::vector<double> weight_;  // empty: no class weights
  double z_loss_ = 0;
};

}  // namespace softmaxlab
