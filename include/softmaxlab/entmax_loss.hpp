// softmaxlab: the Fenchel-Young losses of the entmax family (EntmaxLoss, SparsemaxLoss); the maps
// themselves are in entmax_maps.hpp.
//
// Losses (Fenchel-Young, Blondel, Martins and Niculae 2020): EntmaxLoss(alpha = 1.5, reduction =
// Mean, ignore_index = -100), alpha in (1, 2] (alpha = 1 is CrossEntropyLoss: rejected), and
// SparsemaxLoss(reduction, ignore_index) = EntmaxLoss(2). With the Tsallis entropy
// H_a(p) = (1 - sum_i p_i^a) / (a (a - 1)):
//   loss_n = H_a(y_n) - H_a(q_n) + <y_n - q_n, z_n - max z_n>,    dloss_n / dz_n = y_n - q_n,
// y_n = entmax_a(z_n), q_n the target: a class label (one-hot, H = 0) or a target distribution
// row (N x C, same scalar type). Forms, reductions and labels as CrossEntropyLoss (loss.hpp):
//     double l = loss(logits, targets[, grad][, sml::RowOutputs().with_losses(per_sample)]);
// Mean divides by the counted samples (N for distributions), Sum does not, None returns the sum
// with the per-sample losses in RowOutputs; a label equal to ignore_index gives no loss and a zero
// gradient row. grad may be the logits (in place); no form allocates. The loss is >= 0 and 0
// exactly when y_n = q_n, computed in double from the row's threshold (gradients < 1e-6 relative
// against finite differences, measured 2e-12). A NaN logit gives a NaN loss and gradient row; a
// -inf logit is allowed where the target is 0 (a masked class); a target on a -inf logit gives
// +inf, a row with +inf logits NaN.
//
//
// Errors (std::invalid_argument naming the parameter and value): alpha outside (1, 2] or NaN; as
// CrossEntropyLoss, labels of the wrong length or outside [0, C), targets or grad of the wrong
// shape. Reference: Blondel, Martins and Niculae, "Learning with Fenchel-Young Losses", JMLR 2020;
// semantics of the Python `entmax` package's losses. Tested in tests/test_entmax.cpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>

#include "detail/checks.hpp"
#include "detail/entmax_threshold.hpp"
#include "detail/loss_base.hpp"
#include "entmax_maps.hpp"

namespace softmaxlab {

// The Fenchel-Young loss of alpha-entmax: see the header's doc block. SparsemaxLoss is
// EntmaxLoss(2); EntmaxLoss(1.5) uses the exact 1.5-entmax threshold.
class EntmaxLoss : public detail::LogitsLoss<EntmaxLoss> {
 public:
  // The variant's name, as error messages give it.
  static constexpr const char* name = "EntmaxLoss";
  using detail::LogitsLoss<EntmaxLoss>::default_ignore_index;  // PyTorch's -100

  // The default ignore_index, PyTorch's -100.
  explicit EntmaxLoss(double alpha = 1.5, Reduction reduction = Reduction::Mean,
                      long ignore_index = default_ignore_index)
      : alpha_(check_alpha(alpha)),
        reduction_(detail::check_reduction_or_none("EntmaxLoss: reduction", reduction)),
        ignore_index_(ignore_index) {}

  // The alpha this object was built with.
  double alpha() const { return alpha_; }
  // The reduction this object was built with.
  Reduction reduction() const { return reduction_; }
  // The ignore index this object was built with.
  long ignore_index() const { return ignore_index_; }

  // The call forms (detail::LogitsLoss): loss(logits, targets[, out]) -> the loss;
  // loss(logits, targets, grad[, out]) -> the loss, with dloss/dlogits = w (y - q) in grad.
  using detail::LogitsLoss<EntmaxLoss>::operator();

 private:
  friend class detail::LogitsLoss<EntmaxLoss>;

  static double check_alpha(double alpha) {
    if (!(alpha > 1.0 && alpha <= 2.0)) {
      detail::fail("EntmaxLoss: alpha must be in (1, 2] (alpha = 1 is CrossEntropyLoss), but got ",
                   alpha);
    }
    return alpha;
  }

  template <class Z, class Targets, class G>
  double impl(const Z& z, const Targets& targets, G grad_ptr, const RowOutputs& out) const {
    using Scalar = typename Z::Scalar;
    detail::static_check_scalar<Scalar>();
    constexpr bool has_grad = !std::is_same_v<G, std::nullptr_t>;
    const Index rows = z.rows(), classes = z.cols();
    detail::check_row_outputs(name, out, rows);
    if constexpr (has_grad) {
      if (detail::storage_partially_overlaps(z, *grad_ptr))
        detail::fail(name, ": grad partially overlaps the logits (only exact in-place is allowed)");
    }
    auto grad_row = [&](Index n) {
      if constexpr (has_grad) {
        return detail::slice_span<Scalar>(*grad_ptr, n, true);
      } else {
        return detail::Span<Scalar>{nullptr, 0, 1};
      }
    };
    auto record = [&](Index n, double loss) {
      if (out.losses.data != nullptr)
        out.losses[n] = loss;
      return loss;
    };
    double total = 0;
    if constexpr (detail::is_label_type_v<Targets>) {
      const auto labels = detail::label_span(name, targets);
      const Index counted =
          detail::count_labels(name, labels, rows, classes, ignore_index_, {}).first;
      const double w =
          reduction_ == Reduction::Mean && counted > 0 ? 1.0 / static_cast<double>(counted) : 1.0;
      for (Index n = 0; n < rows; ++n) {
        const long c = static_cast<long>(labels[n]);
        const detail::Span<Scalar> g = grad_row(n);
        if (c == ignore_index_) {
          if constexpr (has_grad)
            detail::fill(g, Scalar(0));
          record(n, 0.0);
          continue;
        }
        const auto q = [c](Index k) {
          return k == c ? 1.0 : 0.0;
        };
        total += record(
            n, detail::fenchel_young_row<Scalar>(
                   alpha_, detail::slice_span<const Scalar>(z, n, true), g, has_grad, q, 0.0, w));
      }
      return total * w;
    } else {
      detail::check_distribution_targets<Scalar>(name, targets, rows, classes);
      return detail::with_storage(targets, [&](const auto& t) {
        if constexpr (has_grad) {
          if (detail::storage_overlaps(t, *grad_ptr))
            detail::fail(name, ": grad must not share storage with the targets");
        }
        const double w = detail::reduction_scale(reduction_, rows);
        for (Index n = 0; n < rows; ++n) {
          const auto tn = detail::slice_span<const Scalar>(t, n, true);
          const auto q = [&](Index k) {
            return static_cast<double>(tn[k]);
          };
          const double h_q = detail::tsallis_entropy(alpha_, classes, q);
          total += record(n, detail::fenchel_young_row<Scalar>(
                                 alpha_, detail::slice_span<const Scalar>(z, n, true), grad_row(n),
                                 has_grad, q, h_q, w));
        }
        return total * w;
      });
    }
  }

  double alpha_;
  Reduction reduction_;
  long ignore_index_;
};

// The sparsemax loss (Martins and Astudillo 2016): EntmaxLoss with alpha = 2.
class SparsemaxLoss : public EntmaxLoss {
 public:
  // The default ignore_index, PyTorch's -100.
  explicit SparsemaxLoss(Reduction reduction = Reduction::Mean,
                         long ignore_index = default_ignore_index)
      : EntmaxLoss(2.0, reduction, ignore_index) {}
};
}  // namespace softmaxlab
