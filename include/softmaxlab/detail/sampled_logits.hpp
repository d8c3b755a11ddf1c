// softmaxlab: the one core behind SampledSoftmaxLoss and NceLoss (sampled_softmax.hpp), as
// TensorFlow's _compute_sampled_logits serves both sampled_softmax_loss and nce_loss: the logits
// of each token's true class and of the shared sampled classes, the log Q correction and the
// removal of accidental hits, then the two row losses, the reduction and the backward to dH, the
// touched rows of dW and of the bias. Also the public SampledLossKind and SampledGradients, which
// sampled_softmax.hpp documents. Nothing here includes a public header.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "checks.hpp"
#include "functor_base.hpp"
#include "loss_base.hpp"
#include "sigmoid.hpp"

namespace softmaxlab {

// Which loss the sampled logits feed: softmax cross-entropy over [true, sampled] (TensorFlow's
// sampled_softmax_loss) or sigmoid cross-entropy with label 1 for the true class and 0 for each
// sampled one (nce_loss).
enum class SampledLossKind { SampledSoftmax, Nce };

// The gradients of a sampled loss (see sampled_softmax.hpp): dH dense N x d; dW and db only on
// the classes the call touched (the true classes and the sampled ones), as a row-indexed sparse
// gradient: rows (ascending, distinct), dW_rows.row(i) = dL/dW.row(rows[i]) and db_rows(i) =
// dL/db(rows[i]) (db_rows is empty when the call had no bias). Every other row of dW and entry of
// db is zero. add_to writes them into dense V x d / V storage (adding, so several calls can
// accumulate).
template <class Scalar>
struct SampledGradients {
  Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> dH;  // N x d
  std::vector<Index> rows;                                   // touched classes
  Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> dW_rows;  // rows x d
  Eigen::Matrix<Scalar, Eigen::Dynamic, 1> db_rows;                                // rows, or empty

  // dW.row(rows[i]) += dW_rows.row(i): dW must be V x d (V > every touched class).
  template <class DW>
  void add_to(DW&& dW) const {
    auto& w = detail::writable_output(std::forward<DW>(dW));
    if (w.cols() != dW_rows.cols() || (!rows.empty() && w.rows() <= rows.back()))
      detail::fail("SampledGradients::add_to: dW must be V x ", dW_rows.cols(), " with V > ",
                   rows.empty() ? Index(-1) : rows.back(), ", but got ", w.rows(), " x ", w.cols());
    for (std::size_t i = 0; i < rows.size(); ++i)
      w.row(rows[i]) += dW_rows.row(static_cast<Index>(i));
  }
  // db(rows[i]) += db_rows(i): db must have V > every touched class entries.
  template <class DB>
  void add_bias_to(DB&& db) const {
    auto& b = detail::writable_output(std::forward<DB>(db));
    if (db_rows.size() != static_cast<Index>(rows.size())
        || (!rows.empty() && b.size() <= rows.back()))
      detail::fail("SampledGradients::add_bias_to: needs a call with a bias and db of V > ",
                   rows.empty() ? Index(-1) : rows.back(), " entries, but got ", b.size());
    for (std::size_t i = 0; i < rows.size(); ++i)
      b(rows[i]) += db_rows(static_cast<Index>(i));
  }
};

namespace detail {

// The logit given to an accidental hit: TensorFlow adds -FLT_MAX to it; we set it to -FLT_MAX
// (the same value for any logit below 1e31 in magnitude), so its probability, its sigmoid and its
// gradient are exactly 0, in float and in double.
inline constexpr double kAccidentalHitLogit =
    -static_cast<double>(std::numeric_limits<float>::max());

// The options of one sampled-loss call.
struct SampledConfig {
  SampledLossKind kind;
  bool subtract_log_q;
  bool remove_accidental_hits;
  Reduction reduction;
};

// log of an expected count; throws for a count that is not finite and > 0.
inline double log_expected_count(const char* fn, const char* what, Index i, double count) {
  if (!(count > 0 && std::isfinite(count)))
    fail(fn, ": ", what, " ", i, " must be finite and > 0 for the log Q correction, but got ",
         count);
  return std::log(count);
}

// The touched classes (true and sampled, ascending, distinct) and the gradients from dL/dz = g.
template <class Scalar, class XH, class XW, class LabelSpan, class RowMatrix>
void sampled_backward(const XH& H, const XW& W, const LabelSpan& labels,
                      const std::vector<Index>& sampled, bool has_bias, const RowMatrix& g,
                      const RowMatrix& ws, SampledGradients<Scalar>& out) {
  const Index n = H.rows(), d = H.cols(), s = static_cast<Index>(sampled.size());
  out.rows.assign(sampled.begin(), sampled.end());
  for (Index i = 0; i < n; ++i)
    out.rows.push_back(static_cast<Index>(labels[i]));
  std::sort(out.rows.begin(), out.rows.end());
  out.rows.erase(std::unique(out.rows.begin(), out.rows.end()), out.rows.end());
  auto slot = [&](Index k) {
    return static_cast<Index>(std::lower_bound(out.rows.begin(), out.rows.end(), k)
                              - out.rows.begin());
  };
  const Index r = static_cast<Index>(out.rows.size());

  // dH = g_0 w_label + G_s W_s; the candidates' part is one GEMM.
  out.dH.resize(n, d);
  out.dH.noalias() = g.rightCols(s) * ws;
  for (Index i = 0; i < n; ++i)
    out.dH.row(i) += g(i, 0) * W.row(static_cast<Index>(labels[i]));

  // dW rows: the candidates' G_s^T H (one GEMM), then each token's true-class row.
  RowMatrix gh(s, d);
  gh.noalias() = g.rightCols(s).transpose() * H;
  out.dW_rows.setZero(r, d);
  for (Index j = 0; j < s; ++j)
    out.dW_rows.row(slot(sampled[static_cast<std::size_t>(j)])) += gh.row(j);
  for (Index i = 0; i < n; ++i)
    out.dW_rows.row(slot(static_cast<Index>(labels[i]))) += g(i, 0) * H.row(i);
  if (has_bias) {
    out.db_rows.setZero(r);
    for (Index j = 0; j < s; ++j)
      out.db_rows(slot(sampled[static_cast<std::size_t>(j)])) += g.col(1 + j).sum();
    for (Index i = 0; i < n; ++i)
      out.db_rows(slot(static_cast<Index>(labels[i]))) += g(i, 0);
  } else {
    out.db_rows.resize(0);
  }
}

// The core: see the header's doc block. sampled / true_ec / sampled_ec: the candidate set and its
// expected counts; bias: V entries or nullptr; grads: nullptr for the loss only.
template <class Scalar, class XH, class XW, class Labels>
double sampled_loss(const char* fn, const SampledConfig& cfg, const XH& H, const XW& W,
                    const Scalar* bias, Index bias_size, const Labels& labels_in,
                    const std::vector<Index>& sampled, const std::vector<double>& true_ec,
                    const std::vector<double>& sampled_ec, SampledGradients<Scalar>* grads,
                    const RowOutputs& out) {
  static_check_scalar<Scalar>();
  using RowMatrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const Index n = H.rows(), d = H.cols(), v = W.rows();
  const Index s = static_cast<Index>(sampled.size());
  if (W.cols() != d)
    fail(fn, ": W must have H's ", d, " columns (W is V x d), but got ", v, " x ", W.cols());
  if (bias != nullptr && bias_size != v)
    fail(fn, ": bias must have one entry per row of W (", v, "), but got ", bias_size);
  const auto labels = label_span(fn, labels_in);
  if (labels.size != n)
    fail(fn, ": labels must have one entry per row of H (", n, "), but got ", labels.size);
  for (Index i = 0; i < n; ++i) {
    const long long c = static_cast<long long>(labels[i]);
    if (c < 0 || c >= static_cast<long long>(v))
      fail(fn, ": label ", c, " of token ", i, " is outside [0, ", v, ")");
  }
  if (s < 1)
    fail(fn, ": num_sampled must be >= 1, but got ", s);
  for (Index j = 0; j < s; ++j) {
    const Index k = sampled[static_cast<std::size_t>(j)];
    if (k < 0 || k >= v)
      fail(fn, ": sampled class ", k, " (candidate ", j, ") is outside [0, ", v, ")");
  }
  if (static_cast<Index>(true_ec.size()) != n)
    fail(fn, ": true_expected_count must have one entry per token (", n, "), but got ",
         true_ec.size());
  if (static_cast<Index>(sampled_ec.size()) != s)
    fail(fn, ": sampled_expected_count must have one entry per candidate (", s, "), but got ",
         sampled_ec.size());
  check_row_outputs(fn, out, n);
  if (n == 0) {  // no token: loss 0, no touched row (and no block of an empty matrix is formed)
    if (grads != nullptr) {
      grads->dH.resize(0, d);
      grads->rows.clear();
      grads->dW_rows.resize(0, d);
      grads->db_rows.resize(0);
    }
    return 0.0;
  }

  // Logits Z (N x (1 + S)): column 0 the true class, columns 1.. the candidates.
  RowMatrix ws(s, d);
  for (Index j = 0; j < s; ++j)
    ws.row(j) = W.row(sampled[static_cast<std::size_t>(j)]);
  RowMatrix z(n, 1 + s);
  z.rightCols(s).noalias() = H * ws.transpose();
  std::vector<double> sampled_shift(static_cast<std::size_t>(s), 0.0);
  for (Index j = 0; j < s; ++j) {
    const std::size_t js = static_cast<std::size_t>(j);
    if (bias != nullptr)
      sampled_shift[js] += static_cast<double>(bias[sampled[js]]);
    if (cfg.subtract_log_q)
      sampled_shift[js] -= log_expected_count(fn, "sampled_expected_count", j, sampled_ec[js]);
  }
  for (Index i = 0; i < n; ++i) {
    const Index c = static_cast<Index>(labels[i]);
    double t = static_cast<double>(H.row(i).dot(W.row(c)));
    if (bias != nullptr)
      t += static_cast<double>(bias[c]);
    if (cfg.subtract_log_q)
      t -= log_expected_count(fn, "true_expected_count", i, true_ec[static_cast<std::size_t>(i)]);
    z(i, 0) = static_cast<Scalar>(t);
    for (Index j = 0; j < s; ++j) {
      const std::size_t js = static_cast<std::size_t>(j);
      z(i, 1 + j) = cfg.remove_accidental_hits && sampled[js] == c
                        ? static_cast<Scalar>(kAccidentalHitLogit)
                        : static_cast<Scalar>(static_cast<double>(z(i, 1 + j)) + sampled_shift[js]);
    }
  }

  // Row losses and, in place of the logits once read, dL/dz scaled by the reduction's weight.
  const bool write_grad = grads != nullptr;
  const double scale = reduction_scale(cfg.reduction, n);
  RowMatrix g(write_grad ? n : 0, write_grad ? 1 + s : 0);
  double total = 0;
  for (Index i = 0; i < n; ++i) {
    double loss = 0;
    if (cfg.kind == SampledLossKind::SampledSoftmax) {
      // LogSoftmax's normalizer over the 1 + S logits, target the true class (entry 0).
      const Span<const Scalar> row{z.row(i).data(), 1 + s, 1};
      const Span<Scalar> grow{write_grad ? g.row(i).data() : nullptr, write_grad ? 1 + s : 0, 1};
      loss = cross_entropy_row(
          row, grow, write_grad, write_grad, [](Index k) { return k == 0 ? 1.0 : 0.0; }, 1.0,
          scale);
    } else {
      // -log sigmoid(z_0) - sum_j log(1 - sigmoid(z_j)) = softplus(-z_0) + sum_j softplus(z_j).
      const double z0 = static_cast<double>(z(i, 0));
      loss = softplus(-z0);
      if (write_grad)
        g(i, 0) = static_cast<Scalar>(scale * (sigmoid(z0) - 1.0));
      for (Index j = 1; j <= s; ++j) {
        const double zj = static_cast<double>(z(i, j));
        loss += softplus(zj);
        if (write_grad)
          g(i, j) = static_cast<Scalar>(scale * sigmoid(zj));
      }
    }
    if (out.losses.data != nullptr)
      out.losses[i] = loss;
    total += loss;
  }
  if (write_grad)
    sampled_backward(H, W, labels, sampled, bias != nullptr, g, ws, *grads);
  return total * scale;
}

}  // namespace detail
}  // namespace softmaxlab
