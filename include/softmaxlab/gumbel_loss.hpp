// softmaxlab: SparseCbmGumbelLoss, the Gumbel loss of Sparse-CBM.
//
// SparseCbmGumbelLoss(tau = 1), the Gumbel loss of Sparse-CBM ("Sparse Concept Bottleneck Models:
// Gumbel Tricks in Contrastive Learning", 2024), as the issue states it: the mean over every entry
// of -log gumbel_softmax(x, tau), tau in [2^-100, 2^100] (so 1/tau stays finite), for concept
// logits x (N x K, a fresh Gumbel sample per row drawn from `gen` as GumbelSoftmax does, so the
// same generator state gives the same noise):
//     loss = -(1 / (N K)) sum_{n,i} log softmax((x_n + g_n) / tau)_i,
//     dloss/dx_ni = (K y_ni - 1) / (N K tau),   y_n = softmax((x_n + g_n) / tau)
//   (the noise is held fixed: the reparameterization gradient). The log is taken in the log
//   domain (never log of a rounded probability), so the loss is finite for finite logits whose
//   spread divided by tau fits the scalar type; a -inf logit makes it +inf, a NaN one NaN.
//     double l = cbm(logits, gen);          // allocates one row of scratch
//     double l = cbm(logits, gen, grad);    // grad N x K, may be the logits; no allocation
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
#include "gumbel.hpp"

namespace softmaxlab {

// The Sparse-CBM Gumbel loss: see the header's doc block.
class SparseCbmGumbelLoss {
 public:
  // The variant's name, as error messages give it.
  static constexpr const char* name = "SparseCbmGumbelLoss";

  // tau in [2^-100, 2^100]; throws std::invalid_argument naming the value otherwise.
  explicit SparseCbmGumbelLoss(double tau = 1.0)
      : tau_(detail::check_temperature("SparseCbmGumbelLoss: tau", tau)) {}  // 1/tau finite

  // The tau this object was built with.
  double tau() const { return tau_; }

  // The loss only (allocates one row of scratch for the perturbed logits).
  template <class XprZ, class Gen>
  double operator()(const Eigen::DenseBase<XprZ>& logits, Gen& gen) const {
    using Scalar = typename XprZ::Scalar;
    Eigen::Matrix<Scalar, Eigen::Dynamic, 1> row(logits.cols());
    return detail::with_storage(logits, [&](const auto& z) {
      double total = 0;
      for (Index n = 0; n < z.rows(); ++n) {
        const detail::Span<Scalar> r = detail::vector_span<Scalar>(row);
        total += row_loss<Scalar>(detail::slice_span<const Scalar>(z, n, true), r, gen, false, 0.0);
      }
      return z.size() > 0 ? total / static_cast<double>(z.size()) : 0.0;
    });
  }

  // The loss, and dloss/dlogits written into grad (N x K; may be the logits); no allocation.
  template <class XprZ, class Gen, class OutG>
  double operator()(const Eigen::DenseBase<XprZ>& logits, Gen& gen, OutG&& grad_out) const {
    using Scalar = typename XprZ::Scalar;
    using XprG = detail::output_xpr_t<OutG>;
    static_assert(std::is_same_v<Scalar, typename XprG::Scalar>,
                  "softmaxlab: logits and grad must have the same scalar type");
    static_assert(detail::is_writable_storage_v<XprG>,
                  "softmaxlab: grad must be writable storage, not an expression");
    auto& grad = detail::writable_output(std::forward<OutG>(grad_out));
    detail::require_same_shape(name, detail::SliceMode::Rows, "grad", grad.rows(), grad.cols(),
                               logits.rows(), logits.cols());
    if (logits.size() == 0)
      return 0.0;
    const double w = 1.0 / static_cast<double>(logits.size());
    auto run = [&](const auto& z) {
      double total = 0;
      for (Index n = 0; n < z.rows(); ++n) {
        total += row_loss<Scalar>(detail::slice_span<const Scalar>(z, n, true),
                                  detail::slice_span<Scalar>(grad, n, true), gen, true, w);
      }
      return total * w;
    };
    if constexpr (detail::has_direct_access_v<XprZ>) {
      if (detail::storage_partially_overlaps(logits.derived(), grad))
        detail::fail(name, ": grad partially overlaps the logits (only exact in-place is allowed)");
      return run(logits.derived());
    } else {
      detail::evaluate_into(logits, grad);
      return run(grad);
    }
  }

 private:
  // -sum_i log softmax((x + g) / tau)_i over one row; the perturbed logits go to `out` (which may
  // be x), then, when write_grad, out_i = w (k p_i - 1) / tau.
  template <class Scalar, class Gen>
  double row_loss(const detail::Span<const Scalar>& x, const detail::Span<Scalar>& out, Gen& gen,
                  bool write_grad, double w) const {
    detail::perturb(x, out, gen);
    const detail::Span<const Scalar> z{out.data, out.size, out.stride};
    const auto norm = detail::LogNormalizer<Scalar>::of(z, static_cast<Scalar>(1.0 / tau_));
    double loss = 0;
    const double k = static_cast<double>(x.size);
    for (Index i = 0; i < x.size; ++i) {
      const Scalar zi = z[i];
      loss -= norm.log_p_wide(zi);
      if (write_grad)
        out[i] = static_cast<Scalar>(w * (k * static_cast<double>(norm.p(zi)) - 1.0) / tau_);
    }
    return loss;
  }

  double tau_;
};

}  // namespace softmaxlab
