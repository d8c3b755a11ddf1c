// softmaxlab: what every loss shares (loss.hpp and its parts): Reduction, RowOutputs, the label
// and reduction checks, the logits-loss base LogitsLoss (the call forms, shapes, overlaps and
// in-place rules of CrossEntropyLoss and the entmax losses) and the cross-entropy row kernels on
// the log-normalizer. The public names Reduction and RowOutputs are documented here; the rules
// are stated in loss.hpp's doc block and checked by tests/test_loss.cpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "backward_base.hpp"
#include "checks.hpp"
#include "functor_base.hpp"
#include "log_normalizer.hpp"

namespace softmaxlab {

// How a loss turns its per-sample losses into the one double it returns. Mean: their sum divided
// by the number of counted samples (or, with class weights, by the counted samples' weights); the
// gradient is divided alike. Sum: their sum. None: no reduction, PyTorch's 'none': each sample's
// loss and gradient row are its own (nothing is divided), the per-sample losses are read through
// RowOutputs::with_losses, and the call still returns one double, their plain sum (the number Sum
// returns). tests/test_loss.cpp checks the three.
enum class Reduction {
  Mean,  // the mean over the counted samples (PyTorch's default)
  Sum,   // the sum
  None   // per-sample losses in RowOutputs; the call returns their sum
};

// Optional per-row outputs of a loss call, each a double vector with storage (VectorXd, a Map, a
// segment) of N entries, or not requested: `losses` receives each sample's loss before the
// reduction (0 for an ignored sample), `lse` each row's log-sum-exp (CrossEntropyLoss only).
struct RowOutputs {
  detail::Span<double> losses{nullptr, 0, 1};  // each sample's loss, or none
  detail::Span<double> lse{nullptr, 0, 1};     // each row's log-sum-exp, or none

  // A copy that writes each sample's loss (before the reduction) into v (N doubles).
  template <class Out>
  [[nodiscard]] RowOutputs with_losses(Out&& v) const {
    RowOutputs r = *this;
    r.losses = span_of(detail::writable_output(std::forward<Out>(v)));
    return r;
  }
  // A copy that writes each row's log-sum-exp into v (N doubles; CrossEntropyLoss only).
  template <class Out>
  [[nodiscard]] RowOutputs with_lse(Out&& v) const {
    RowOutputs r = *this;
    r.lse = span_of(detail::writable_output(std::forward<Out>(v)));
    return r;
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
  // The default ignore_index of every logits loss, PyTorch's -100.
  static constexpr long default_ignore_index = -100;

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

}  // namespace softmaxlab
