// softmaxlab: AdaptiveLogSoftmax, the adaptive softmax of Grave, Joulin, Cisse, Grangier and
// Jegou, "Efficient softmax approximation for GPUs" (ICML 2017), with the semantics of PyTorch's
// torch.nn.AdaptiveLogSoftmaxWithLoss.
//
// What it computes. V classes are split by the cutoffs c_0 < c_1 < ... < c_{K-1} < V into a
// shortlist [0, c_0) and K tail clusters [c_i, c_{i+1}) (c_K = V). For a hidden state h (d):
// clang-format off
//     head     = log_softmax(A h + b)                 A: (c_0 + K) x d, b: c_0 + K (head_bias only)
//     log p(y) = head[y]                              y < c_0 (the shortlist)
//     log p(y) = head[c_0 + i] + log_softmax(O_i P_i h)[y - c_i]      y in cluster i
//                P_i: hidden_i x d, O_i: (c_{i+1} - c_i) x hidden_i, no biases (PyTorch's)
//     hidden_i = floor(d / div_value^(i+1))           Python's float //, as PyTorch (may be 0:
//                                                     the cluster's distribution is then uniform)
//     loss     = mean_n -log p(y_n | h_n),  output_n = log p(y_n | h_n)   (PyTorch's (output, loss))
// clang-format on
// The probabilities of every class sum to 1 (each cluster's softmax sums to 1 and the head's
// cluster entry carries its mass).
//
// Call forms (Scalar float or double, fixed by the parameters; H: N x d, any Eigen matrix of that
// scalar, copied once when not column-major):
// clang-format off
//     sml::AdaptiveLogSoftmax asm_(d, V, {2000, 10000, 50000});  // div_value 4, no head bias
//     auto p = asm_.init_parameters<float>(seed);     // PyTorch's nn.Linear init from Philox
//     asm_.log_prob(p, H, LP);                         // LP: N x V (column-major), every class
//     Eigen::MatrixXf LP = asm_.log_prob(p, H);
//     asm_.predict(p, H, idx);                         // idx: N integers (Eigen vector, std::vector)
//     double l = asm_.loss(p, H, labels);              // mean NLL over the N tokens
//     double l = asm_.loss(p, H, labels, output);      // and output_n = log p(y_n) (N scalars)
//     double l = asm_.backward(p, H, labels, grads, dH);          // gradients of the mean NLL
//     double l = asm_.backward(p, H, labels, grads, dH, upstream);// of sum_n g_n (-output_n)
// clang-format on
// The caller owns the parameters: AdaptiveLogSoftmaxParameters<Scalar> holds them as plain Eigen
// matrices (head, head_bias, tail_projection[i], tail_output[i], PyTorch's layouts: a row per
// output unit), so an optimizer updates them in place; `grads` has the same structure and is
// resized and overwritten. init_parameters draws every weight and bias from U(-1/sqrt(fan_in),
// 1/sqrt(fan_in)) (nn.Linear's default) with Philox4x32(seed, stream = the tensor's position).
//
// Cost: loss and backward compute the head for every token and, per cluster, only the tokens
// whose label is in it (the speed-up over the full softmax): a token of cluster i costs d (c_0 + K)
// + hidden_i (d + size_i) multiply-adds instead of d V. log_prob computes every cluster for every
// token (N x V output). predict uses PyTorch's shortcut: a token whose head argmax is a shortlist
// class needs no tail (every tail class has log p <= its cluster's head entry <= that maximum, and
// ties go to the smaller index, the shortlist's), the others get their full row.
//
// Parameters and ranges (std::invalid_argument naming the value otherwise): in_features >= 1;
// cutoffs non-empty, strictly increasing, each in [1, V - 1] (PyTorch's checks); div_value finite
// and > 0 (default 4). Also thrown: parameters whose shapes do not match the layer, H with other
// than in_features columns, labels outside [0, V) or not one per row (there is no ignore_index,
// as in PyTorch), outputs of the wrong size, an upstream gradient of the wrong length.
//
// Accuracy (tests/test_adaptive_softmax.cpp, "AdaptiveLogSoftmax matches a long double
// reference"): the products are Eigen GEMMs in Scalar (each entry within about d eps sum |a_k b_k|
// of the exact product), each row's log-softmax is LogSoftmax's (4 eps (1 + |exact|)), and the two
// terms of a tail class are added in Scalar (log_prob) or double (loss). Against a long double
// evaluation of the same parameters, |log p - exact| <= 16 eps (1 + |log p|) (float and double,
// d = 12, logits of a few units; worst seen 4.5 eps); the GEMM term grows like d eps times the
// sum of |products| of a logit. Gradients: finite differences in
// double ("... gradients match finite differences"); log p sums to 1 in probability over all V
// ("... rows sum to one"); predict equals the argmax of log_prob ("... predict").
// Special values: a NaN in H or the parameters makes the affected tokens' results NaN (never a
// plausible number); N = 0 gives loss 0 and empty outputs.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "detail/checks.hpp"
#include "detail/output_approx.hpp"
#include "detail/sampling_select.hpp"
#include "random.hpp"
#include "softmax.hpp"

namespace softmaxlab {

// The parameters (or their gradients) of an AdaptiveLogSoftmax, owned by the caller; PyTorch's
// layouts (nn.Linear weights: a row per output unit).
template <class Scalar>
struct AdaptiveLogSoftmaxParameters {
  // A dense column-major matrix of the scalar type.
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  // A dense column vector of the scalar type.
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  Matrix head;                          // (shortlist + n_clusters) x d
  Vector head_bias;                     // shortlist + n_clusters entries; empty without head_bias
  std::vector<Matrix> tail_projection;  // cluster i: hidden_i x d
  std::vector<Matrix> tail_output;      // cluster i: cluster_size(i) x hidden_i
};

// The adaptive softmax (Grave et al. 2017) with PyTorch's AdaptiveLogSoftmaxWithLoss semantics:
// see the header's doc block.
class AdaptiveLogSoftmax {
 public:
  // The variant's name, as error messages give it.
  static constexpr const char* name = "AdaptiveLogSoftmax";
  // The parameter struct for a scalar type.
  template <class Scalar>
  using Parameters = AdaptiveLogSoftmaxParameters<Scalar>;
  // A read-only view of a column-major matrix (H); other storage is copied once to bind.
  template <class Scalar>
  using ConstMatrixRef = Eigen::Ref<const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>>;
  // A writable column-major matrix view (outputs: a MatrixX, a Map or a block).
  template <class Scalar>
  using MatrixRef = Eigen::Ref<Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>>;
  // A read-only vector view (the upstream gradient).
  template <class Scalar>
  using ConstVectorRef = Eigen::Ref<const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>>;

  // in_features d >= 1, n_classes V, cutoffs strictly increasing in [1, V - 1], div_value finite
  // > 0; head_bias adds a bias to the head (PyTorch's default: false). Throws
  // std::invalid_argument naming the offending value.
  AdaptiveLogSoftmax(Index in_features, Index n_classes, std::vector<Index> cutoffs,
                     double div_value = 4.0, bool head_bias = false)
      : d_(in_features), v_(n_classes), div_(div_value), head_bias_(head_bias) {
    if (in_features < 1)
      detail::fail(name, ": in_features must be >= 1, but got ", in_features);
    detail::require_positive_finite("AdaptiveLogSoftmax: div_value", div_value);
    if (cutoffs.empty())
      detail::fail(name,
                   ": cutoffs must hold at least one value in [1, n_classes - 1 = ", n_classes - 1,
                   "], but got none");
    for (std::size_t i = 0; i < cutoffs.size(); ++i) {
      const Index c = cutoffs[i];
      if (c < 1 || c > n_classes - 1)
        detail::fail(name, ": cutoffs[", i, "] must be in [1, n_classes - 1 = ", n_classes - 1,
                     "], but got ", c);
      if (i > 0 && c <= cutoffs[i - 1])
        detail::fail(name, ": cutoffs must be strictly increasing, but cutoffs[", i, "] = ", c,
                     " follows ", cutoffs[i - 1]);
    }
    bounds_ = std::move(cutoffs);
    bounds_.push_back(n_classes);
    for (std::size_t i = 0; i + 1 < bounds_.size(); ++i)
      hidden_.push_back(python_floor_div(static_cast<double>(d_), std::pow(div_, double(i + 1))));
  }

  // d, the width of a hidden state.
  Index in_features() const { return d_; }
  // V, the number of classes.
  Index n_classes() const { return v_; }
  // The cutoffs as given (without V).
  std::vector<Index> cutoffs() const { return {bounds_.begin(), bounds_.end() - 1}; }
  // The divisor of the tail widths.
  double div_value() const { return div_; }
  // Whether the head has a bias.
  bool head_bias() const { return head_bias_; }
  // c_0, the number of shortlist classes.
  Index shortlist_size() const { return bounds_[0]; }
  // K, the number of tail clusters.
  Index n_clusters() const { return static_cast<Index>(bounds_.size()) - 1; }
  // c_0 + K, the head's output width.
  Index head_size() const { return shortlist_size() + n_clusters(); }
  // The first class of tail cluster i (0 <= i < K).
  Index cluster_begin(Index i) const { return bounds_[static_cast<std::size_t>(i)]; }
  // The number of classes of tail cluster i.
  Index cluster_size(Index i) const {
    return bounds_[static_cast<std::size_t>(i) + 1] - bounds_[static_cast<std::size_t>(i)];
  }
  // hidden_i = floor(d / div_value^(i+1)), the projection width of tail cluster i (may be 0).
  Index hidden_size(Index i) const { return hidden_[static_cast<std::size_t>(i)]; }

  // Zero parameters of the layer's shapes.
  template <class Scalar>
  Parameters<Scalar> zero_parameters() const {
    Parameters<Scalar> p;
    p.head.setZero(head_size(), d_);
    p.head_bias.setZero(head_bias_ ? head_size() : 0);
    for (Index i = 0; i < n_clusters(); ++i) {
      p.tail_projection.emplace_back(Parameters<Scalar>::Matrix::Zero(hidden_size(i), d_));
      p.tail_output.emplace_back(Parameters<Scalar>::Matrix::Zero(cluster_size(i), hidden_size(i)));
    }
    return p;
  }
  // PyTorch's nn.Linear initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for every weight and
  // the head bias, from Philox4x32(seed, stream): stream 0 the head, 1 its bias, 2 + 2i cluster
  // i's projection, 3 + 2i its output matrix; each filled row by row. Reproducible everywhere.
  template <class Scalar>
  Parameters<Scalar> init_parameters(std::uint64_t seed) const {
    Parameters<Scalar> p = zero_parameters<Scalar>();
    fill_uniform(p.head, seed, 0, double(d_));
    fill_uniform(p.head_bias, seed, 1, double(d_));
    for (std::size_t i = 0; i < p.tail_output.size(); ++i) {
      fill_uniform(p.tail_projection[i], seed, 2 + 2 * i, double(d_));
      fill_uniform(p.tail_output[i], seed, 3 + 2 * i, double(hidden_[i]));
    }
    return p;
  }

  // Every class's log-probability: out (N x V, column-major storage: a MatrixX, Map or block).
  template <class Scalar>
  void log_prob(const Parameters<Scalar>& p, const detail::non_deduced_t<ConstMatrixRef<Scalar>>& h,
                detail::non_deduced_t<MatrixRef<Scalar>> out) const {
    check(p, h, "log_prob");
    if (out.rows() != h.rows() || out.cols() != v_)
      detail::fail(name, "::log_prob: output must be ", h.rows(), " x ", v_, ", but got ",
                   out.rows(), " x ", out.cols());
    if (h.rows() == 0)
      return;
    full_log_prob(p, h, out);
  }
  // The same, returned as a new N x V matrix.
  template <class Scalar>
  typename Parameters<Scalar>::Matrix log_prob(
      const Parameters<Scalar>& p, const detail::non_deduced_t<ConstMatrixRef<Scalar>>& h) const {
    typename Parameters<Scalar>::Matrix out(h.rows(), v_);
    log_prob(p, h, out);
    return out;
  }

  // The most probable class of each token into out (N integers: an Eigen integer vector or a
  // std::vector), equal to the first argmax of log_prob's row (PyTorch's predict).
  template <class Scalar, class Out>
  void predict(const Parameters<Scalar>& p, const detail::non_deduced_t<ConstMatrixRef<Scalar>>& h,
               Out&& out) const {
    check(p, h, "predict");
    const Index n = h.rows();
    if (static_cast<Index>(out.size()) != n)
      detail::fail(name, "::predict: output must have ", n, " entries, but got ", out.size());
    using Value = std::decay_t<decltype(out[0])>;
    const typename Parameters<Scalar>::Matrix head = head_logits(p, h);
    std::vector<Index> rest;
    for (Index r = 0; r < n; ++r) {
      const Index j = detail::first_argmax(head.transpose(), r);
      if (j < shortlist_size())
        out[r] = static_cast<Value>(j);
      else
        rest.push_back(r);
    }
    if (rest.empty())
      return;
    const typename Parameters<Scalar>::Matrix hr = h(rest, Eigen::all);
    typename Parameters<Scalar>::Matrix lp(hr.rows(), v_);
    full_log_prob(p, ConstMatrixRef<Scalar>(hr), MatrixRef<Scalar>(lp));
    for (std::size_t k = 0; k < rest.size(); ++k)
      out[rest[k]] = static_cast<Value>(detail::first_argmax(lp, static_cast<Index>(k)));
  }

  // The mean negative log-likelihood of the labels (one per row of H, in [0, V)); computes the
  // head and, per cluster, only its labelled tokens.
  template <class Scalar, class Labels>
  double loss(const Parameters<Scalar>& p, const detail::non_deduced_t<ConstMatrixRef<Scalar>>& h,
              const Labels& labels) const {
    return run<Scalar>(p, h, labels, nullptr, nullptr, nullptr, nullptr);
  }
  // The same, writing output_n = log p(y_n | h_n) (N entries) as PyTorch's forward returns it.
  template <class Scalar, class Labels>
  double loss(
      const Parameters<Scalar>& p, const detail::non_deduced_t<ConstMatrixRef<Scalar>>& h,
      const Labels& labels,
      detail::non_deduced_t<Eigen::Ref<Eigen::Matrix<Scalar, Eigen::Dynamic, 1>>> output) const {
    return run<Scalar>(p, h, labels, &output, nullptr, nullptr, nullptr);
  }
  // The mean NLL (returned) and the gradients of every parameter (grads: resized, overwritten)
  // and of H (dH: N x d, overwritten) of the mean NLL, or, with `upstream` (N entries g_n), of
  // sum_n g_n (-output_n) (PyTorch's output.backward(g) negated: pass -g for d/d output).
  template <class Scalar, class Labels>
  double backward(const Parameters<Scalar>& p,
                  const detail::non_deduced_t<ConstMatrixRef<Scalar>>& h, const Labels& labels,
                  Parameters<Scalar>& grads, detail::non_deduced_t<MatrixRef<Scalar>> dh) const {
    return run<Scalar>(p, h, labels, nullptr, &grads, &dh, nullptr);
  }
  // The same with a per-token upstream gradient: gradients of sum_n g_n (-output_n).
  template <class Scalar, class Labels>
  double backward(const Parameters<Scalar>& p,
                  const detail::non_deduced_t<ConstMatrixRef<Scalar>>& h, const Labels& labels,
                  Parameters<Scalar>& grads, detail::non_deduced_t<MatrixRef<Scalar>> dh,
                  const detail::non_deduced_t<ConstVectorRef<Scalar>>& upstream) const {
    return run<Scalar>(p, h, labels, nullptr, &grads, &dh, &upstream);
  }

 private:
  // Python's float floor division a // b for a >= 0, b > 0 (fmod-based, as CPython computes it).
  static Index python_floor_div(double a, double b) {
    const double mod = std::fmod(a, b);
    const double div = (a - mod) / b;
    double floor_div = std::floor(div);
    if (div - floor_div > 0.5)
      floor_div += 1.0;
    return static_cast<Index>(floor_div);
  }

  template <class M>
  static void fill_uniform(M& m, std::uint64_t seed, std::uint64_t stream, double fan_in) {
    Philox4x32 gen(seed, stream);
    const double bound = fan_in > 0 ? 1.0 / std::sqrt(fan_in) : 0.0;
    for (Index r = 0; r < m.rows(); ++r)
      for (Index c = 0; c < m.cols(); ++c)
        m(r, c) = static_cast<typename M::Scalar>((2.0 * detail::uniform53(gen) - 1.0) * bound);
  }

  template <class Scalar>
  void check(const Parameters<Scalar>& p, const ConstMatrixRef<Scalar>& h,
             const char* function) const {
    const auto shape = [&](const char* what, Index rows, Index cols, Index want_rows,
                           Index want_cols) {
      if (rows != want_rows || cols != want_cols)
        detail::fail(name, "::", function, ": ", what, " must be ", want_rows, " x ", want_cols,
                     ", but got ", rows, " x ", cols);
    };
    shape("parameters.head", p.head.rows(), p.head.cols(), head_size(), d_);
    shape("parameters.head_bias", p.head_bias.size(), 1, head_bias_ ? head_size() : 0, 1);
    if (static_cast<Index>(p.tail_projection.size()) != n_clusters()
        || static_cast<Index>(p.tail_output.size()) != n_clusters())
      detail::fail(name, "::", function, ": parameters must hold ", n_clusters(),
                   " tail projections and outputs, but got ", p.tail_projection.size(), " and ",
                   p.tail_output.size());
    for (Index i = 0; i < n_clusters(); ++i) {
      const auto& pr = p.tail_projection[static_cast<std::size_t>(i)];
      const auto& ou = p.tail_output[static_cast<std::size_t>(i)];
      shape("parameters.tail_projection[i]", pr.rows(), pr.cols(), hidden_size(i), d_);
      shape("parameters.tail_output[i]", ou.rows(), ou.cols(), cluster_size(i), hidden_size(i));
    }
    if (h.cols() != d_)
      detail::fail(name, "::", function, ": H must have in_features = ", d_, " columns, but got ",
                   h.cols());
  }

  // The head's logits with a column per token, (c_0 + K) x N: every log-softmax below then runs
  // over contiguous memory (a column of a column-major matrix).
  template <class Scalar>
  typename Parameters<Scalar>::Matrix head_logits(const Parameters<Scalar>& p,
                                                  const ConstMatrixRef<Scalar>& h) const {
    typename Parameters<Scalar>::Matrix z(head_size(), h.rows());
    z.noalias() = p.head * h.transpose();
    if (head_bias_)
      z.colwise() += p.head_bias;
    return z;
  }

  // The N x V log-probabilities of the rows of h into out (shapes checked by the caller).
  template <class Scalar>
  void full_log_prob(const Parameters<Scalar>& p, const ConstMatrixRef<Scalar>& h,
                     MatrixRef<Scalar> out) const {
    const LogSoftmax lsm;
    typename Parameters<Scalar>::Matrix head = head_logits(p, h);
    lsm.colwise(head, head);
    out.leftCols(shortlist_size()) = head.topRows(shortlist_size()).transpose();
    typename Parameters<Scalar>::Matrix hidden, z;
    for (Index i = 0; i < n_clusters(); ++i) {
      const auto k = static_cast<std::size_t>(i);
      hidden.noalias() = p.tail_projection[k] * h.transpose();
      z.noalias() = p.tail_output[k] * hidden;
      lsm.colwise(z, z);
      z.rowwise() += head.row(shortlist_size() + i);
      out.middleCols(cluster_begin(i), cluster_size(i)) = z.transpose();
    }
  }

  // The loss (and, when grads is given, every gradient): the head for all tokens, each cluster
  // for its labelled tokens only. Matrices hold a column per token (see head_logits).
  template <class Scalar, class Labels>
  double run(const Parameters<Scalar>& p, const ConstMatrixRef<Scalar>& h, const Labels& labels,
             Eigen::Ref<Eigen::Matrix<Scalar, Eigen::Dynamic, 1>>* output,
             Parameters<Scalar>* grads, MatrixRef<Scalar>* dh,
             const ConstVectorRef<Scalar>* upstream) const {
    using Matrix = typename Parameters<Scalar>::Matrix;
    const char* function = grads ? "backward" : "loss";
    check(p, h, function);
    const Index n = h.rows();
    const std::vector<Index> y = detail::checked_labels(
        grads ? "AdaptiveLogSoftmax::backward" : "AdaptiveLogSoftmax::loss", labels, n, v_);
    if (output && output->size() != n)
      detail::fail(name, "::loss: output must have ", n, " entries, but got ", output->size());
    if (dh && (dh->rows() != n || dh->cols() != d_))
      detail::fail(name, "::backward: dH must be ", n, " x ", d_, ", but got ", dh->rows(), " x ",
                   dh->cols());
    if (upstream && upstream->size() != n)
      detail::fail(name, "::backward: upstream must have ", n, " entries, but got ",
                   upstream->size());
    if (grads) {
      *grads = zero_parameters<Scalar>();
      dh->setZero();
    }
    if (n == 0)
      return 0.0;

    // The weight of token r in the differentiated sum: g_r, or 1/N for the mean.
    const auto weight = [&](Index r) {
      return upstream ? static_cast<double>((*upstream)[r]) : 1.0 / static_cast<double>(n);
    };
    const LogSoftmax lsm;
    Matrix head = head_logits(p, h);
    lsm.colwise(head, head);
    std::vector<double> log_p(static_cast<std::size_t>(n));
    std::vector<Index> head_target(static_cast<std::size_t>(n));
    std::vector<std::vector<Index>> members(static_cast<std::size_t>(n_clusters()));
    for (Index r = 0; r < n; ++r) {
      const Index c = y[static_cast<std::size_t>(r)];
      Index target = c;
      if (c >= shortlist_size()) {
        const Index i = cluster_of(c);
        members[static_cast<std::size_t>(i)].push_back(r);
        target = shortlist_size() + i;
      }
      head_target[static_cast<std::size_t>(r)] = target;
      log_p[static_cast<std::size_t>(r)] = static_cast<double>(head(target, r));
    }
    if (grads) {
      // d(-log p)/d z = softmax(z) - onehot(target), per token times its weight.
      head = head.array().exp().matrix();
      for (Index r = 0; r < n; ++r) {
        head(head_target[static_cast<std::size_t>(r)], r) -= Scalar(1);
        head.col(r) *= static_cast<Scalar>(weight(r));
      }
      grads->head.noalias() = head * h;
      if (head_bias_)
        grads->head_bias = head.rowwise().sum();
      dh->noalias() = head.transpose() * p.head;
    }
    Matrix hc, hidden, z, dhidden, dhc;
    for (Index i = 0; i < n_clusters(); ++i) {
      const auto k = static_cast<std::size_t>(i);
      const std::vector<Index>& rows = members[k];
      if (rows.empty())
        continue;
      const Index m = static_cast<Index>(rows.size());
      hc = h(rows, Eigen::all);  // m x d, the cluster's tokens
      hidden.noalias() = p.tail_projection[k] * hc.transpose();
      z.noalias() = p.tail_output[k] * hidden;
      lsm.colwise(z, z);
      for (Index r = 0; r < m; ++r) {
        const auto token = static_cast<std::size_t>(rows[static_cast<std::size_t>(r)]);
        log_p[token] += static_cast<double>(z(y[token] - cluster_begin(i), r));
      }
      if (!grads)
        continue;
      z = z.array().exp().matrix();
      for (Index r = 0; r < m; ++r) {
        const Index token = rows[static_cast<std::size_t>(r)];
        z(y[static_cast<std::size_t>(token)] - cluster_begin(i), r) -= Scalar(1);
        z.col(r) *= static_cast<Scalar>(weight(token));
      }
      grads->tail_output[k].noalias() = z * hidden.transpose();
      dhidden.noalias() = p.tail_output[k].transpose() * z;
      grads->tail_projection[k].noalias() = dhidden * hc;
      dhc.noalias() = dhidden.transpose() * p.tail_projection[k];
      for (Index r = 0; r < m; ++r)
        dh->row(rows[static_cast<std::size_t>(r)]) += dhc.row(r);
    }
    double sum = 0;
    for (Index r = 0; r < n; ++r) {
      sum -= log_p[static_cast<std::size_t>(r)];
      if (output)
        (*output)[r] = static_cast<Scalar>(log_p[static_cast<std::size_t>(r)]);
    }
    return sum / static_cast<double>(n);
  }

  // The tail cluster of a class c >= shortlist_size().
  Index cluster_of(Index c) const {
    Index i = 0;
    while (i + 1 < n_clusters() && c >= cluster_begin(i + 1))
      ++i;
    return i;
  }

  Index d_, v_;
  double div_;
  bool head_bias_;
  std::vector<Index> bounds_;  // the cutoffs followed by V
  std::vector<Index> hidden_;  // hidden_i per cluster
};

}  // namespace softmaxlab
