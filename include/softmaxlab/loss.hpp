// softmaxlab: training losses with their gradients. Rows are samples: logits and outputs are
// N x C (N samples, C classes), labels have N entries.
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
// L2SvmLoss(penalty C = 1), the L2-SVM output layer of GRU-SVM (Agarap 2017, arXiv 1709.03082):
//     loss = 0.5 ||W||^2 + C sum_{n,k} max(0, 1 - y_nk o_nk)^2,   o = X W + 1 b^T,
//   labels one-vs-rest: y_nk = +1 if k = c_n, else -1; prediction argmax_k o_nk. C finite > 0.
//     double h = svm.hinge(o, labels[, d_o]);     // C sum max(0, 1 - y o)^2 and its gradient
//                                                 //   d_o = -2 C y max(0, 1 - y o); no allocation
//     double l = svm(X, W, b, labels[, dW, db]);  // the whole layer: X N x D, W D x K, b K;
//                                                 //   dW = W + X^T d_o, db = sum_n d_o
//     Eigen::VectorXi c = L2SvmLoss::predict(o);  // = argmax_rows(o)
//
// argmax_rows(scores): the index of each row's largest entry (the first on ties; -1 for a row that
// holds a NaN or has no entries).
//
// NormalizedSoftmaxLoss(head = NormalizedSoftmax(), reduction = Mean, label_smoothing = 0): the
// cross-entropy of the normalized-softmax logits s cos(e_n, w_c) with the head's margin (CosFace,
// ArcFace or SphereFace) on each target (Zhai and Wu, arXiv 1811.12649), with its gradients with
// respect to the embeddings E (N x D) and the class weights W (C x D), through the margin and the
// L2 normalizations (NormalizedSoftmax::logits_backward):
//     double l = nsl(E, W, labels);            double l = nsl(E, W, labels, dE, dW);
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
// Accuracy: every log-probability of a loss is computed in double (the difference z_i - max from
// the logits, the log of the sum from its long double value), so for float logits it is exact but
// for the sum's rounding and never overflows (CrossEntropyLoss of the float row [FLT_MAX, -FLT_MAX]
// with label 1 is the finite 2 FLT_MAX); double logits get LogSoftmax's rules (4 eps (1 + |log p|),
// and a difference beyond DBL_MAX is +inf: the loss 2 DBL_MAX is beyond the double it is returned
// in). Every probability in a gradient is Softmax's; the losses are accumulated in double, so a
// loss's relative error is that of its terms plus about N C double roundings (a sum whose terms
// are near DBL_MAX, from logits near DBL_MAX in double, may become +inf before the Mean divides
// it).
// The gradients are checked against fourth-order finite differences in double
// (tests/test_loss.cpp, tests/test_backward_gumbel_normalized.cpp: relative error < 1e-6,
// measured ~1e-11).
//
// Outputs (grad, dW, db, dE, d_o, RowOutputs): a const Matrix does not compile; pass a view/block.
// Errors (std::invalid_argument naming the parameter and value or the shapes, nothing else is
// thrown): a reduction, label_smoothing, penalty or tau out of range (constructors); labels of the
// wrong length or outside [0, C) (other than ignore_index); targets, gradients or parameters of
// the wrong shape; a gradient that partially overlaps the logits or targets (exact in-place on
// the logits is allowed). Non-finite logits are not errors: see each loss for its result.
#pragma once

#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "detail/backward_base.hpp"
#include "detail/checks.hpp"
#include "detail/functor_base.hpp"
#include "detail/log_normalizer.hpp"
#include "gumbel.hpp"
#include "normalized.hpp"
#include "softmax.hpp"

namespace softmaxlab {

enum class Reduction { Mean, Sum, None };

// Optional per-row outputs of a loss call, each a double vector with storage (VectorXd, a Map, a
// segment) of N entries, or not requested: `losses` receives each sample's loss before the
// reduction (0 for an ignored sample), `lse` each row's log-sum-exp (CrossEntropyLoss only).
struct RowOutputs {
  detail::Span<double> losses{nullptr, 0, 1};
  detail::Span<double> lse{nullptr, 0, 1};

  template <class Out>
  RowOutputs& with_losses(Out&& v) {
    losses = span_of(detail::writable_output(std::forward<Out>(v)));
    return *this;
  }
  template <class Out>
  RowOutputs& with_lse(Out&& v) {
    lse = span_of(detail::writable_output(std::forward<Out>(v)));
    return *this;
  }

 private:
  template <class Xpr>
  static detail::Span<double> span_of(Eigen::DenseBase<Xpr>& v) {
    static_assert(std::is_same_v<typename Xpr::Scalar, double>,
                  "softmaxlab: per-row loss outputs are double vectors");
    static_assert(detail::is_writable_storage_v<Xpr>,
                  "softmaxlab: per-row loss outputs must be writable storage (VectorXd, Map, "
                  "segment)");
    detail::require_vector("RowOutputs", v.rows(), v.cols());
    auto& d = v.derived();
    if (d.size() == 0)
      return {nullptr, 0, 1};
    return detail::vector_span<double>(d);
  }
};

namespace detail {

template <class T>
struct is_std_vector : std::false_type {};
template <class T, class A>
struct is_std_vector<std::vector<T, A>> : std::true_type {};

template <class T, class = void>
struct is_eigen_integer_vector : std::false_type {};
template <class T>
struct is_eigen_integer_vector<T, std::enable_if_t<std::is_base_of_v<Eigen::DenseBase<T>, T>>>
    : std::is_integral<typename T::Scalar> {};

template <class T>
inline constexpr bool is_label_type_v =
    is_std_vector<T>::value || is_eigen_integer_vector<T>::value;

// Class labels as a strided span: a std::vector of integers or an Eigen integer vector with
// storage (VectorXi, a Map, a segment).
template <class L>
auto label_span(const char* function, const L& labels) {
  if constexpr (is_std_vector<L>::value) {
    using Int = typename L::value_type;
    static_assert(std::is_integral_v<Int>, "softmaxlab: labels must be integers");
    return Span<const Int>{labels.data(), static_cast<Index>(labels.size()), 1};
  } else {
    using Int = typename L::Scalar;
    static_assert(has_direct_access_v<L>,
                  "softmaxlab: labels must be an Eigen integer vector with storage (VectorXi, Map, "
                  "segment) or a std::vector; evaluate an expression first");
    require_vector(function, labels.rows(), labels.cols());
    return vector_span<const Int>(labels);
  }
}

inline Reduction check_reduction(const char* what, Reduction r) {
  if (r != Reduction::Mean && r != Reduction::Sum)
    fail(what, " must be Reduction::Mean or Reduction::Sum, but got ", static_cast<int>(r));
  return r;
}

// The losses that return per-sample values (CrossEntropyLoss, SparsemaxLoss, EntmaxLoss) also
// accept Reduction::None: the call returns the sum, the per-sample values go to RowOutputs.
inline Reduction check_reduction_or_none(const char* what, Reduction r) {
  if (r != Reduction::Mean && r != Reduction::Sum && r != Reduction::None)
    fail(what, " must be Reduction::Mean, Sum or None, but got ", static_cast<int>(r));
  return r;
}

// A requested per-row output must have one entry per row.
inline void check_row_outputs(const char* function, const RowOutputs& out, Index rows) {
  if (out.losses.data != nullptr && out.losses.size != rows)
    fail(function, ": losses must have one entry per row (", rows, "), but got ", out.losses.size);
  if (out.lse.data != nullptr && out.lse.size != rows)
    fail(function, ": lse must have one entry per row (", rows, "), but got ", out.lse.size);
}

// The call forms of a loss over N x C logits with class labels or target distributions, written
// once for CrossEntropyLoss and the Fenchel-Young losses (entmax.hpp). Derived provides, privately
// (befriending this base), `static constexpr const char* name` and
//   template <class Z, class Targets, class G>
//   double impl(const Z& z, const Targets& targets, G grad, const RowOutputs& out) const;
// with z storage, and G std::nullptr_t (the loss only) or a pointer to the gradient's storage.
template <class Derived>
class LogitsLoss {
 public:
  // The loss only (no allocation when the logits have storage), with the per-row outputs
  // requested in `out`. targets: labels (integer vector / std::vector) or an N x C distribution.
  template <class XprZ, class Targets>
  double operator()(const Eigen::DenseBase<XprZ>& logits, const Targets& targets,
                    const RowOutputs& out = RowOutputs()) const {
    if constexpr (is_16bit_v<typename XprZ::Scalar>) {
      // 16-bit logits (and targets): computed in float on a converted copy (an allocation).
      const FloatMatrix z = logits.derived().template cast<float>();
      return with_float_targets(targets, [&](const auto& t) {
        return self().impl(z, t, static_cast<std::nullptr_t>(nullptr), out);
      });
    } else {
      return with_storage(logits, [&](const auto& z) {
        return self().impl(z, targets, static_cast<std::nullptr_t>(nullptr), out);
      });
    }
  }

  // The loss, and dloss/dlogits written into grad (N x C; may be the logits themselves; an
  // expression's logits are evaluated into grad). No allocation.
  template <class XprZ, class Targets, class OutG, if_output_t<OutG> = 0>
  double operator()(const Eigen::DenseBase<XprZ>& logits, const Targets& targets, OutG&& grad_out,
                    const RowOutputs& out = RowOutputs()) const {
    using Scalar = typename XprZ::Scalar;
    using XprG = output_xpr_t<OutG>;
    static_assert(std::is_same_v<Scalar, typename XprG::Scalar>,
                  "softmaxlab: logits and grad must have the same scalar type");
    static_assert(is_writable_storage_v<XprG>,
                  "softmaxlab: grad must be writable storage (Matrix, Array, Map, Ref or a Block "
                  "of one), not an expression");
    auto& grad = writable_output(std::forward<OutG>(grad_out));
    require_same_shape(Derived::name, SliceMode::Rows, "grad", grad.rows(), grad.cols(),
                       logits.rows(), logits.cols());
    if constexpr (is_16bit_v<Scalar>) {
      // 16-bit logits: the loss and gradient in float on a converted copy, the gradient rounded
      // once into grad (allocations: the copy).
      FloatMatrix z = logits.derived().template cast<float>();
      const double loss =
          with_float_targets(targets, [&](const auto& t) { return self().impl(z, t, &z, out); });
      grad = z.template cast<Scalar>();
      return loss;
    } else if constexpr (has_direct_access_v<XprZ>) {
      return self().impl(logits.derived(), targets, &grad, out);
    } else {
      if constexpr (!is_label_type_v<Targets>) {
        if (storage_overlaps(targets.derived(), grad))
          fail(Derived::name,
               ": grad must not share storage with the targets when the logits are an expression "
               "(they are evaluated into grad)");
      }
      evaluate_into(logits, grad);
      return self().impl(grad, targets, &grad, out);
    }
  }

 private:
  using FloatMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic>;
  template <class S>
  static constexpr bool is_16bit_v =
      std::is_same_v<S, Eigen::half> || std::is_same_v<S, Eigen::bfloat16>;

  // Calls fn with the targets, converted to a float matrix when they are a 16-bit distribution.
  template <class Targets, class Fn>
  static double with_float_targets(const Targets& targets, Fn&& fn) {
    if constexpr (!is_label_type_v<Targets>) {
      if constexpr (is_16bit_v<typename Targets::Scalar>) {
        const FloatMatrix t = targets.derived().template cast<float>();
        return fn(t);
      } else {
        return fn(targets);
      }
    } else {
      return fn(targets);
    }
  }

  const Derived& self() const { return static_cast<const Derived&>(*this); }
};

// The factor a reduction applies to the sum over `count` samples: 1 / count for Mean (0 samples:
// 1, the sum being 0), 1 for Sum and None.
inline double reduction_scale(Reduction r, Index count) {
  return r == Reduction::Mean && count > 0 ? 1.0 / static_cast<double>(count) : 1.0;
}

// The checks every loss makes of a target-distribution matrix (as opposed to class labels): an
// Eigen matrix of the logits' scalar type with the logits' shape N x C.
template <class Scalar, class Targets>
void check_distribution_targets(const char* name, const Targets& targets, Index rows,
                                Index classes) {
  static_assert(std::is_base_of_v<Eigen::DenseBase<Targets>, Targets>,
                "softmaxlab: targets must be class labels (an Eigen integer vector or a "
                "std::vector) or an Eigen matrix of target distributions");
  static_assert(std::is_same_v<Scalar, typename Targets::Scalar>,
                "softmaxlab: target distributions must have the logits' scalar type");
  require_same_shape(name, SliceMode::Rows, "targets", targets.rows(), targets.cols(), rows,
                     classes);
}

// Class weights (PyTorch's `weight`): finite and >= 0; empty means none.
inline std::vector<double> check_class_weights(const char* what, std::vector<double> w) {
  for (std::size_t k = 0; k < w.size(); ++k) {
    if (!(w[k] >= 0 && std::isfinite(w[k])))
      fail(what, " must be finite and >= 0, but entry ", k, " is ", w[k]);
  }
  return w;
}

// Validates class labels against C classes (an ignore_index label is skipped) and returns how
// many samples count and the sum of their class weights (their number without weights).
template <class Labels>
std::pair<Index, double> count_labels(const char* function, const Labels& labels, Index rows,
                                      Index classes, long ignore_index,
                                      const std::vector<double>& weight) {
  if (labels.size != rows) {
    fail(function, ": labels must have one entry per row of the logits (", rows, "), but got ",
         labels.size);
  }
  Index counted = 0;
  double weight_sum = 0;
  for (Index n = 0; n < rows; ++n) {
    const long c = static_cast<long>(labels[n]);
    if (c == ignore_index)
      continue;
    if (c < 0 || c >= classes) {
      fail(function, ": label ", c, " of sample ", n, " is outside [0, ", classes,
           ") and is not the ignore_index ", ignore_index);
    }
    ++counted;
    weight_sum += weight.empty() ? 1.0 : weight[static_cast<std::size_t>(c)];
  }
  return {counted, weight_sum};
}

// The cross-entropy terms of one row given its normalizer n: returns -sum_k q(k) n.log_p_wide(z_k)
// (0 log 0 = 0) and, when write_grad, writes g_k = w (p_k sum_q - q(k)); `stored`: g holds the
// exp terms of a Regular row (LogNormalizer::of with store). mpi.hpp calls it on a shard with the
// normalizer of the whole row.
template <class Scalar, class Q>
double cross_entropy_terms(const Span<const Scalar>& z, const Span<Scalar>& g, bool write_grad,
                           bool stored, const LogNormalizer<Scalar>& n, const Q& q, double sum_q,
                           double w) {
  double loss = 0;
  for (Index k = 0; k < z.size; ++k) {
    const Scalar zk = z[k];
    const double qk = q(k);
    if (qk != 0)
      loss -= qk * n.log_p_wide(zk);
    if (write_grad) {
      const double p = stored ? static_cast<double>(g[k]) * n.inv_stored_sum : n.p(zk);
      g[k] = static_cast<Scalar>(w * (p * sum_q - qk));
    }
  }
  return n.kind == RowKind::NaN ? std::numeric_limits<double>::quiet_NaN() : loss;
}

// One sample of the cross-entropy: returns -sum_k q(k) log_softmax(z)_k (0 log 0 = 0) and, when
// write_grad, writes g_k = w (p_k sum_q - q(k)). store_terms: g does not share storage with z or
// the targets, so the exp terms can be kept there (one exp per entry instead of two).
template <class Scalar, class Q>
double cross_entropy_row(const Span<const Scalar>& z, const Span<Scalar>& g, bool write_grad,
                         bool store_terms, const Q& q, double sum_q, double w) {
  const auto n =
      LogNormalizer<Scalar>::of(z, Scalar(1), store_terms ? g : Span<Scalar>{nullptr, 0, 1});
  const bool stored = store_terms && n.kind == RowKind::Regular;
  return cross_entropy_terms(z, g, write_grad, stored, n, q, sum_q, w);
}

}  // namespace detail

// argmax of each row: see the header's doc block.
template <class Xpr>
Eigen::VectorXi argmax_rows(const Eigen::DenseBase<Xpr>& scores) {
  const auto& s = scores.derived();
  Eigen::VectorXi out(s.rows());
  for (Index n = 0; n < s.rows(); ++n) {
    int best = s.cols() > 0 ? 0 : -1;
    for (Index k = 0; k < s.cols(); ++k) {
      const auto v = s.coeff(n, k);
      if (v != v) {
        best = -1;
        break;
      }
      if (v > s.coeff(n, best))
        best = static_cast<int>(k);
    }
    out(n) = best;
  }
  return out;
}

// Cross-entropy from logits: see the header's doc block.
class CrossEntropyLoss : public detail::LogitsLoss<CrossEntropyLoss> {
 public:
  static constexpr const char* name = "CrossEntropyLoss";
  static constexpr long default_ignore_index = -100;

  explicit CrossEntropyLoss(Reduction reduction = Reduction::Mean, double label_smoothing = 0.0,
                            long ignore_index = default_ignore_index)
      : reduction_(detail::check_reduction_or_none("CrossEntropyLoss: reduction", reduction)),
        label_smoothing_(detail::require_in_range("CrossEntropyLoss: label_smoothing",
                                                  label_smoothing, 0.0, std::nextafter(1.0, 0.0),
                                                  "in [0, 1)")),
        ignore_index_(ignore_index) {}

  Reduction reduction() const { return reduction_; }
  double label_smoothing() const { return label_smoothing_; }
  long ignore_index() const { return ignore_index_; }
  const std::vector<double>& weight() const { return weight_; }
  double z_loss() const { return z_loss_; }

  // A copy with per-class weights (PyTorch's `weight`: C entries, finite, >= 0; empty = none).
  CrossEntropyLoss with_weight(std::vector<double> weight) const {
    CrossEntropyLoss c = *this;
    c.weight_ = detail::check_class_weights("CrossEntropyLoss: weight", std::move(weight));
    return c;
  }
  // A copy with the z-loss lambda * lse^2 added to every counted sample (finite, >= 0; 0 = off).
  CrossEntropyLoss with_z_loss(double lambda) const {
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

// The L2-SVM output layer of GRU-SVM: see the header's doc block.
class L2SvmLoss {
 public:
  static constexpr const char* name = "L2SvmLoss";

  explicit L2SvmLoss(double penalty = 1.0)
      : penalty_(detail::require_positive_finite("L2SvmLoss: penalty", penalty)) {}

  double penalty() const { return penalty_; }

  // C sum_{n,k} max(0, 1 - y_nk o_nk)^2 over the outputs o (N x K).
  template <class XprO, class Labels>
  double hinge(const Eigen::DenseBase<XprO>& o, const Labels& labels) const {
    return hinge_impl(o.derived(), labels, static_cast<std::nullptr_t>(nullptr));
  }

  // The same, and its gradient d_o = -2 C y max(0, 1 - y o) written into d_o (N x K; may be o).
  template <class XprO, class Labels, class OutD>
  double hinge(const Eigen::DenseBase<XprO>& o, const Labels& labels, OutD&& d_o_out) const {
    using XprD = detail::output_xpr_t<OutD>;
    static_assert(detail::is_writable_storage_v<XprD>,
                  "softmaxlab: d_o must be writable storage, not an expression");
    static_assert(std::is_same_v<typename XprO::Scalar, typename XprD::Scalar>,
                  "softmaxlab: o and d_o must have the same scalar type");
    auto& d_o = detail::writable_output(std::forward<OutD>(d_o_out));
    detail::require_same_shape(name, detail::SliceMode::Rows, "d_o", d_o.rows(), d_o.cols(),
                               o.rows(), o.cols());
    return hinge_impl(o.derived(), labels, &d_o);
  }

  // The whole layer, o = X W + 1 b^T: 0.5 ||W||^2 + hinge(o). Allocates o.
  template <class XprX, class XprW, class XprB, class Labels>
  double operator()(const Eigen::MatrixBase<XprX>& x, const Eigen::MatrixBase<XprW>& w,
                    const Eigen::MatrixBase<XprB>& b, const Labels& labels) const {
    check_layer_shapes(x, w, b);
    const auto o = outputs(x, w, b);
    return 0.5 * static_cast<double>(w.squaredNorm()) + hinge(o, labels);
  }

  // The same, with dW = W + X^T d_o and db = sum_n d_o written (shapes of W and b). Allocates o.
  template <class XprX, class XprW, class XprB, class Labels, class OutDW, class OutDB>
  double operator()(const Eigen::MatrixBase<XprX>& x, const Eigen::MatrixBase<XprW>& w,
                    const Eigen::MatrixBase<XprB>& b, const Labels& labels, OutDW&& dw_out,
                    OutDB&& db_out) const {
    check_layer_shapes(x, w, b);
    auto& dw = detail::writable_output(std::forward<OutDW>(dw_out));
    auto& db = detail::writable_output(std::forward<OutDB>(db_out));
    detail::require_same_shape(name, detail::SliceMode::Rows, "dW", dw.rows(), dw.cols(), w.rows(),
                               w.cols());
    detail::require_vector(name, db.rows(), db.cols());
    if (db.size() != w.cols())
      detail::fail(name, ": db must have one entry per class (", w.cols(), "), but got ",
                   db.size());
    auto o = outputs(x, w, b);
    const double loss = 0.5 * static_cast<double>(w.squaredNorm()) + hinge(o, labels, o);
    dw = w;
    dw.noalias() += x.transpose() * o;
    if (db.rows() == 1) {
      db = o.colwise().sum();
    } else {
      db = o.colwise().sum().transpose();
    }
    return loss;
  }

  // The predicted class of each row of o: argmax_rows(o).
  template <class XprO>
  static Eigen::VectorXi predict(const Eigen::DenseBase<XprO>& o) {
    return argmax_rows(o);
  }

 private:
  template <class XprX, class XprW, class XprB>
  static void check_layer_shapes(const Eigen::MatrixBase<XprX>& x, const Eigen::MatrixBase<XprW>& w,
                                 const Eigen::MatrixBase<XprB>& b) {
    if (x.cols() != w.rows()) {
      detail::fail(name, ": X (", x.rows(), " x ", x.cols(), ") and W (", w.rows(), " x ", w.cols(),
                   ") do not chain: X's columns must equal W's rows");
    }
    detail::require_vector(name, b.rows(), b.cols());
    if (b.size() != w.cols())
      detail::fail(name, ": b must have one entry per class (", w.cols(), "), but got ", b.size());
  }

  template <class XprX, class XprW, class XprB>
  static auto outputs(const Eigen::MatrixBase<XprX>& x, const Eigen::MatrixBase<XprW>& w,
                      const Eigen::MatrixBase<XprB>& b) {
    using Scalar = typename XprX::Scalar;
    Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> o = x * w;
    for (Index k = 0; k < o.cols(); ++k)
      o.col(k).array() += b(k);
    return o;
  }

  template <class O, class Labels, class D>
  double hinge_impl(const O& o_in, const Labels& labels_in, D d_o) const {
    using Scalar = typename O::Scalar;
    detail::static_check_scalar<Scalar>();
    constexpr bool has_grad = !std::is_same_v<D, std::nullptr_t>;
    const auto labels = detail::label_span(name, labels_in);
    const Index rows = o_in.rows(), classes = o_in.cols();
    if (labels.size != rows) {
      detail::fail(name, ": labels must have one entry per row of o (", rows, "), but got ",
                   labels.size);
    }
    for (Index n = 0; n < rows; ++n) {
      const long c = static_cast<long>(labels[n]);
      if (c < 0 || c >= classes)
        detail::fail(name, ": label ", c, " of sample ", n, " is outside [0, ", classes, ")");
    }
    return detail::with_storage(o_in, [&](const auto& o) {
      if constexpr (has_grad) {
        if (detail::storage_partially_overlaps(o, *d_o))
          detail::fail(name, ": d_o partially overlaps o (only exact in-place is allowed)");
      }
      double total = 0;
      for (Index n = 0; n < rows; ++n) {
        const long c = static_cast<long>(labels[n]);
        for (Index k = 0; k < classes; ++k) {
          const double y = k == c ? 1.0 : -1.0;
          const double margin = std::max(0.0, 1.0 - y * static_cast<double>(o(n, k)));
          const double value = static_cast<double>(o(n, k));
          total += margin * margin;
          if constexpr (has_grad)
            (*d_o)(n, k) = static_cast<Scalar>(-2.0 * penalty_ * y * margin);
          if (value != value)  // max(0, NaN) above would hide a NaN output
            total = std::numeric_limits<double>::quiet_NaN();
          if constexpr (has_grad) {
            if (value != value)
              (*d_o)(n, k) = static_cast<Scalar>(value);
          }
        }
      }
      return penalty_ * total;
    });
  }

  double penalty_;
};

// The normalized-softmax loss: see the header's doc block.
class NormalizedSoftmaxLoss {
 public:
  static constexpr const char* name = "NormalizedSoftmaxLoss";

  explicit NormalizedSoftmaxLoss(NormalizedSoftmax head = NormalizedSoftmax(),
                                 Reduction reduction = Reduction::Mean,
                                 double label_smoothing = 0.0)
      : head_(head), ce_(reduction, label_smoothing) {}

  const NormalizedSoftmax& head() const { return head_; }

  // The loss only. labels: an Eigen integer vector or a std::vector of integers.
  template <class XprE, class XprW, class Labels>
  double operator()(const Eigen::DenseBase<XprE>& e, const Eigen::DenseBase<XprW>& w,
                    const Labels& labels) const {
    return with_eigen_labels(labels, [&](const auto& l) { return ce_(head_.logits(e, w, l), l); });
  }

  // The loss, with dE (N x D) and dW (C x D) written. Allocates the logits and the products.
  template <class XprE, class XprW, class Labels, class OutDE, class OutDW>
  double operator()(const Eigen::DenseBase<XprE>& e, const Eigen::DenseBase<XprW>& w,
                    const Labels& labels, OutDE&& de_out, OutDW&& dw_out) const {
    auto& de = detail::writable_output(std::forward<OutDE>(de_out));
    auto& dw = detail::writable_output(std::forward<OutDW>(dw_out));
    detail::require_same_shape(name, detail::SliceMode::Rows, "dE", de.rows(), de.cols(), e.rows(),
                               e.cols());
    detail::require_same_shape(name, detail::SliceMode::Rows, "dW", dw.rows(), dw.cols(), w.rows(),
                               w.cols());
    return with_eigen_labels(labels, [&](const auto& l) {
      auto z = head_.logits(e, w, l);
      const double loss = ce_(z, l, z);  // z becomes dloss/dlogits
      auto grads = head_.logits_backward(e, w, l, z);
      de = grads.first;
      dw = grads.second;
      return loss;
    });
  }

 private:
  template <class Labels, class Fn>
  static double with_eigen_labels(const Labels& labels, Fn&& fn) {
    if constexpr (detail::is_std_vector<Labels>::value) {
      using Int = typename Labels::value_type;
      const Eigen::Map<const Eigen::Matrix<Int, Eigen::Dynamic, 1>> map(
          labels.data(), static_cast<Index>(labels.size()));
      return fn(map);
    } else {
      return fn(labels.derived());
    }
  }

  NormalizedSoftmax head_;
  CrossEntropyLoss ce_;
};

// The Sparse-CBM Gumbel loss: see the header's doc block.
class SparseCbmGumbelLoss {
 public:
  static constexpr const char* name = "SparseCbmGumbelLoss";

  explicit SparseCbmGumbelLoss(double tau = 1.0)
      : tau_(detail::check_temperature("SparseCbmGumbelLoss: tau", tau)) {}  // 1/tau finite

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
