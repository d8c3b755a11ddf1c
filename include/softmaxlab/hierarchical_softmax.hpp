// softmaxlab: HierarchicalSoftmax, the hierarchical softmax over a Huffman tree of the classes
// (Morin and Bengio 2005; Mikolov, Sutskever, Chen, Corrado and Dean, "Distributed
// representations of words and phrases and their compositionality", NIPS 2013) with the semantics
// of fastText's HierarchicalSoftmaxLoss (loss.cc: the tree, the loss and its gradient, predict's
// pruned tree search).
//
// What it computes. A binary tree has the V classes as leaves and V - 1 inner nodes, inner node j
// holding a vector w_j (row j of W, (V - 1) x d). A class c is reached from the root by a path of
// (node j, code b) pairs, b = 1 for the right child; with sigma the logistic function,
// clang-format off
//     log p(c | h) = sum_{(j, b) on the path of c} log sigma(s_b w_j . h),   s_1 = +1, s_0 = -1
//     loss         = mean_n -log p(y_n | h_n)            (fastText's per-example loss, averaged)
//     d(-log p)/dz_j = sigma(z_j) - b,  z_j = w_j . h:  dH_n += g w_j,  dW_j += g h_n
// clang-format on
// Since sigma(z) + sigma(-z) = 1 at every node, the V leaf probabilities sum to 1 exactly.
// log sigma is evaluated as min(z, 0) - log1p(exp(-|z|)) in double (no overflow, no cancellation;
// fastText uses tables with +-8 clipping, which this class does not reproduce).
//
// The tree (Huffman, from class counts, fastText's buildTree): classes are ordered by count,
// largest first, ties by smaller class index first; the two-queue Huffman construction then
// repeatedly merges the two smallest of (the next unmerged leaf, the oldest unmerged inner node),
// taking the inner node when their counts tie (fastText's strict `<`); the second node taken
// becomes the right child (code 1). The construction is deterministic: the same counts give the
// same tree everywhere; with counts already in descending order it is fastText's tree. Code length
// of class c is its depth; frequent classes get short paths (expected depth within 1 of the counts'
// entropy in bits).
//
// Call forms (W: (V - 1) x d, H: N x d, one scalar type, float or double; any Eigen storage, but
// row-major W and H (fastText's layout) make each node's dot product one contiguous read):
// clang-format off
//     sml::HierarchicalSoftmax hs(counts);           // counts: V >= 1 finite values >= 0
//     double lp = hs.log_prob(W, h, c);              // h: d entries (a vector or a row of H)
//     hs.log_prob(W, H, LP);                         // LP: N x V, every class (one GEMM H W^T)
//     double l = hs.loss(W, H, labels[, output]);    // mean NLL; output_n = log p(y_n) (N doubles)
//     double l = hs.backward(W, H, labels, dH, dW);  // dH: N x d, dW: (V-1) x d dense, overwritten
//     double l = hs.backward(W, H, labels, dH, g);   // g: HierarchicalSoftmaxGradient, the rows of
//                                                    //    dW on the labels' paths only (sparse)
//     (both with an optional last argument upstream: N doubles, gradients of sum_n u_n (-log p_n))
//     hs.predict(W, H, k, idx, lp);                  // idx, lp: N x k, the k most probable classes
//                                                    //   per token, best first, ties by index
// clang-format on
// The caller owns W; fastText initializes it to zero (every class then has probability 2^-depth).
//
// Cost: loss and backward compute one dot product of length d per node on each label's path
// (depth ~ log2 V for balanced counts, smaller for frequent classes) and touch only those rows of
// W; the dense backward also zeroes (V - 1) x d. predict searches the tree best-first (the more
// probable child first, from an explicit stack) and prunes a subtree as soon as its log-probability
// (an upper bound on its leaves', since log sigma <= 0) falls below the k-th best found: exact, and
// it visits a few paths per token when the distribution is peaked (fastText's dfs with a heap).
// log_prob over all classes computes every node for every token (one GEMM, N x (V - 1)).
//
// Parameters and ranges (std::invalid_argument naming the value otherwise): counts non-empty,
// finite and >= 0; W with V - 1 rows and H's columns; labels in [0, V), one per row of H (no
// ignore_index, as fastText); k in [1, V]; outputs of the wrong shape; an upstream gradient of the
// wrong length.
//
// Accuracy (tests/test_hierarchical_softmax.cpp): against a long double evaluation of the same W
// and H, |log p - exact| <= (depth + d) eps (1 + |log p|) with eps of the scalar type (the dot
// products' rounding dominates; test "HierarchicalSoftmax matches a long double reference"); the
// V probabilities sum to 1 within 1e-12 in double ("... sums to one"); gradients against finite
// differences in double ("... gradients"); predict equals a brute-force top-k over all classes
// ("... top-k predict is exact").
// Special values: a NaN in h or on the path gives NaN; an infinite dot product gives the limit
// (log sigma(+inf) = 0, log sigma(-inf) = -inf); V = 1 gives an empty tree, log p = 0; N = 0 gives
// loss 0 and empty outputs.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "detail/checks.hpp"
#include "detail/functor_base.hpp"
#include "detail/output_approx.hpp"

namespace softmaxlab {

// The gradient of W restricted to the rows a batch's paths touch (a sparse row gradient, as
// PyTorch's sparse embedding gradients): row i of `rows` is dL/dW.row(nodes[i]); nodes ascending.
template <class Scalar>
struct HierarchicalSoftmaxGradient {
  std::vector<Index> nodes;  // the touched inner nodes, ascending
  Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> rows;  // nodes.size() x d

  // W.row(nodes[i]) += alpha rows.row(i) for every i (an SGD step is alpha = -learning rate).
  template <class Out>
  void scatter_add(Out&& w, Scalar alpha) const {
    for (std::size_t i = 0; i < nodes.size(); ++i)
      w.row(nodes[i]) += alpha * rows.row(static_cast<Index>(i));
  }
};

namespace detail {
template <class T>
struct is_sparse_gradient : std::false_type {};
template <class S>
struct is_sparse_gradient<HierarchicalSoftmaxGradient<S>> : std::true_type {};
}  // namespace detail

// The hierarchical softmax over a Huffman tree (fastText's HierarchicalSoftmaxLoss): see the
// header's doc block.
class HierarchicalSoftmax {
 public:
  // The variant's name, as error messages give it.
  static constexpr const char* name = "HierarchicalSoftmax";

  // The Huffman tree of V = counts.size() classes (a std::vector or an Eigen vector of any
  // arithmetic type; every count finite and >= 0, V >= 1).
  template <class Counts>
  explicit HierarchicalSoftmax(const Counts& counts) {
    const Index v = static_cast<Index>(counts.size());
    if (v < 1)
      detail::fail(name, ": counts must hold at least one class, but got none");
    std::vector<double> c(static_cast<std::size_t>(v));
    for (Index i = 0; i < v; ++i) {
      c[static_cast<std::size_t>(i)] = static_cast<double>(counts[i]);
      if (!(c[static_cast<std::size_t>(i)] >= 0) || !std::isfinite(c[static_cast<std::size_t>(i)]))
        detail::fail(name, ": counts[", i, "] must be finite and >= 0, but got ",
                     c[static_cast<std::size_t>(i)]);
    }
    build(c);
  }

  // V, the number of classes (leaves).
  Index n_classes() const { return v_; }
  // V - 1, the number of inner nodes (rows of W).
  Index n_inner_nodes() const { return v_ - 1; }
  // The depth (code length) of class c.
  Index depth(Index c) const { return offset(c + 1) - offset(c); }
  // The inner nodes on the path of class c, root first (depth(c) entries).
  std::vector<Index> path(Index c) const {
    check_class(c);
    return {path_nodes_.begin() + offset(c), path_nodes_.begin() + offset(c + 1)};
  }
  // The binary code of class c, root first: 1 where the path goes to the right child.
  std::vector<std::uint8_t> code(Index c) const {
    check_class(c);
    return {path_codes_.begin() + offset(c), path_codes_.begin() + offset(c + 1)};
  }

  // log p(c | h) for one hidden state h (d entries: a vector or a row of H).
  template <class XprW, class XprH>
  double log_prob(const Eigen::MatrixBase<XprW>& w, const Eigen::MatrixBase<XprH>& h,
                  Index c) const {
    check_w(w, h.size(), "log_prob");
    detail::require_vector("HierarchicalSoftmax::log_prob", h.rows(), h.cols());
    check_class(c);
    double s = 0;
    for (Index t = offset(c); t < offset(c + 1); ++t)
      s += node_log_sigmoid(w, h, t);
    return s;
  }

  // Every class's log-probability: out (N x V, writable: a Matrix, Map, Ref or block).
  template <class XprW, class XprH, class Out,
            std::enable_if_t<
                std::is_base_of_v<Eigen::DenseBase<std::decay_t<Out>>, std::decay_t<Out>>, int> = 0>
  void log_prob(const Eigen::MatrixBase<XprW>& w, const Eigen::MatrixBase<XprH>& h,
                Out&& out) const {
    using Scalar = typename XprW::Scalar;
    detail::static_check_output<Out>();
    check_w(w, h.cols(), "log_prob");
    if (out.rows() != h.rows() || out.cols() != v_)
      detail::fail(name, "::log_prob: output must be ", h.rows(), " x ", v_, ", but got ",
                   out.rows(), " x ", out.cols());
    if (h.rows() == 0)
      return;
    Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> z(h.rows(), v_ - 1);
    if (v_ > 1)
      z.noalias() = h * w.transpose();
    std::vector<double> score(static_cast<std::size_t>(2 * v_ - 1));
    for (Index n = 0; n < h.rows(); ++n) {
      // Parents have larger indices than their children: one descending sweep from the root.
      score[static_cast<std::size_t>(2 * v_ - 2)] = 0.0;
      for (Index j = v_ - 2; j >= 0; --j) {
        const double s = score[static_cast<std::size_t>(v_ + j)];
        const double zj = static_cast<double>(z(n, j));
        score[static_cast<std::size_t>(left_[static_cast<std::size_t>(j)])] =
            s + detail::log_sigmoid(-zj);
        score[static_cast<std::size_t>(right_[static_cast<std::size_t>(j)])] =
            s + detail::log_sigmoid(zj);
      }
      for (Index c = 0; c < v_; ++c)
        out(n, c) =
            static_cast<typename std::decay_t<Out>::Scalar>(score[static_cast<std::size_t>(c)]);
    }
  }

  // The mean negative log-likelihood of the labels (one per row of H, in [0, V)).
  template <class XprW, class XprH, class Labels>
  double loss(const Eigen::MatrixBase<XprW>& w, const Eigen::MatrixBase<XprH>& h,
              const Labels& labels) const {
    return run(w, h, labels, static_cast<double*>(nullptr), nullptr, NoMatrix{}, NoMatrix{});
  }
  // The same, writing output_n = log p(y_n | h_n) into output (N entries: Eigen vector of
  // doubles or std::vector<double>).
  template <class XprW, class XprH, class Labels, class Output>
  double loss(const Eigen::MatrixBase<XprW>& w, const Eigen::MatrixBase<XprH>& h,
              const Labels& labels, Output& output) const {
    if (static_cast<Index>(output.size()) != h.rows())
      detail::fail(name, "::loss: output must have ", h.rows(), " entries, but got ",
                   output.size());
    return run(w, h, labels, output.data(), nullptr, NoMatrix{}, NoMatrix{});
  }

  // The mean NLL (returned) and its gradients: dH (N x d) and the dense dW ((V - 1) x d, zeroed
  // first: O(V d)), both overwritten. With upstream (N doubles u_n): gradients of
  // sum_n u_n (-log p(y_n | h_n)).
  template <class XprW, class XprH, class Labels, class OutH, class OutW,
            std::enable_if_t<!detail::is_sparse_gradient<std::decay_t<OutW>>::value, int> = 0>
  double backward(const Eigen::MatrixBase<XprW>& w, const Eigen::MatrixBase<XprH>& h,
                  const Labels& labels, OutH&& dh, OutW&& dw,
                  const std::vector<double>& upstream = {}) const {
    detail::static_check_output<OutH>();
    detail::static_check_output<OutW>();
    if (dw.rows() != v_ - 1 || dw.cols() != h.cols())
      detail::fail(name, "::backward: dW must be ", v_ - 1, " x ", h.cols(), ", but got ",
                   dw.rows(), " x ", dw.cols());
    dw.setZero();
    return run(w, h, labels, static_cast<double*>(nullptr), &upstream, dh, dw);
  }
  // The same with the sparse gradient of W: only the rows on the labels' paths (grad: resized,
  // overwritten), no O(V d) work.
  template <class XprW, class XprH, class Labels, class OutH>
  double backward(const Eigen::MatrixBase<XprW>& w, const Eigen::MatrixBase<XprH>& h,
                  const Labels& labels, OutH&& dh,
                  HierarchicalSoftmaxGradient<typename XprW::Scalar>& grad,
                  const std::vector<double>& upstream = {}) const {
    detail::static_check_output<OutH>();
    return run(w, h, labels, static_cast<double*>(nullptr), &upstream, dh, grad);
  }

  // The k most probable classes of each token (k in [1, V]): indices (N x k, integers) and their
  // log-probabilities (N x k), best first, equal log-probabilities by smaller class index. Exact:
  // equal to the top k of log_prob's row.
  template <class XprW, class XprH, class OutI, class OutP>
  void predict(const Eigen::MatrixBase<XprW>& w, const Eigen::MatrixBase<XprH>& h, Index k,
               OutI&& indices, OutP&& log_probs) const {
    detail::static_check_output<OutI>();
    detail::static_check_output<OutP>();
    check_w(w, h.cols(), "predict");
    if (k < 1 || k > v_)
      detail::fail(name, "::predict: k must be in [1, V = ", v_, "], but got ", k);
    if (indices.rows() != h.rows() || indices.cols() != k || log_probs.rows() != h.rows()
        || log_probs.cols() != k)
      detail::fail(name, "::predict: indices and log_probs must be ", h.rows(), " x ", k,
                   ", but got ", indices.rows(), " x ", indices.cols(), " and ", log_probs.rows(),
                   " x ", log_probs.cols());
    using Idx = typename std::decay_t<OutI>::Scalar;
    using Lp = typename std::decay_t<OutP>::Scalar;
    std::vector<std::pair<double, Index>> heap;
    std::vector<std::pair<Index, double>> stack;
    // a before b: a more probable, or as probable with a smaller class index.
    const auto better = [](const std::pair<double, Index>& a, const std::pair<double, Index>& b) {
      return a.first > b.first || (a.first == b.first && a.second < b.second);
    };
    for (Index n = 0; n < h.rows(); ++n) {
      heap.clear();
      stack.assign(1, {2 * v_ - 2, 0.0});
      while (!stack.empty()) {
        const auto [node, s] = stack.back();
        stack.pop_back();
        // Every leaf below has log p <= s: prune when s is below the k-th best (equality may
        // still win by index).
        if (static_cast<Index>(heap.size()) == k && s < heap.front().first)
          continue;
        if (node < v_) {
          const std::pair<double, Index> leaf{s, node};
          if (static_cast<Index>(heap.size()) < k) {
            heap.push_back(leaf);
            std::push_heap(heap.begin(), heap.end(), better);
          } else if (better(leaf, heap.front())) {
            std::pop_heap(heap.begin(), heap.end(), better);
            heap.back() = leaf;
            std::push_heap(heap.begin(), heap.end(), better);
          }
          continue;
        }
        const Index j = node - v_;
        const double z = static_cast<double>(w.row(j).dot(h.row(n)));
        const double sl = s + detail::log_sigmoid(-z), sr = s + detail::log_sigmoid(z);
        const Index l = left_[static_cast<std::size_t>(j)], r = right_[static_cast<std::size_t>(j)];
        // The more probable child last, so it is searched first (best-first order).
        if (sr >= sl) {
          stack.emplace_back(l, sl);
          stack.emplace_back(r, sr);
        } else {
          stack.emplace_back(r, sr);
          stack.emplace_back(l, sl);
        }
      }
      std::sort(heap.begin(), heap.end(), better);
      for (Index t = 0; t < k; ++t) {
        indices(n, t) = static_cast<Idx>(heap[static_cast<std::size_t>(t)].second);
        log_probs(n, t) = static_cast<Lp>(heap[static_cast<std::size_t>(t)].first);
      }
    }
  }

 private:
  struct NoMatrix {};

  Index offset(Index c) const { return path_offset_[static_cast<std::size_t>(c)]; }

  void check_class(Index c) const {
    if (c < 0 || c >= v_)
      detail::fail(name, ": class ", c, " is outside [0, ", v_, ")");
  }

  template <class XprW>
  void check_w(const Eigen::MatrixBase<XprW>& w, Index d, const char* function) const {
    if (w.rows() != v_ - 1 || w.cols() != d)
      detail::fail(name, "::", function, ": W must be (V - 1) x d = ", v_ - 1, " x ", d,
                   ", but got ", w.rows(), " x ", w.cols());
  }

  // log sigma(+-w_j . h) of step t of a path.
  template <class XprW, class XprH>
  double node_log_sigmoid(const Eigen::MatrixBase<XprW>& w, const Eigen::MatrixBase<XprH>& h,
                          Index t) const {
    const Index j = path_nodes_[static_cast<std::size_t>(t)];
    double z;
    if constexpr (XprH::ColsAtCompileTime == 1)
      z = static_cast<double>(w.row(j).dot(h.transpose()));
    else
      z = static_cast<double>(w.row(j).dot(h));
    return detail::log_sigmoid(path_codes_[static_cast<std::size_t>(t)] ? z : -z);
  }

  // fastText's buildTree on the classes ordered by count (largest first, ties by index), with
  // the paths stored root first.
  void build(const std::vector<double>& counts) {
    v_ = static_cast<Index>(counts.size());
    const auto vs = static_cast<std::size_t>(v_);
    std::vector<Index> order(vs);
    for (std::size_t i = 0; i < vs; ++i)
      order[i] = static_cast<Index>(i);
    std::stable_sort(order.begin(), order.end(), [&](Index a, Index b) {
      return counts[std::size_t(a)] > counts[std::size_t(b)];
    });
    const std::size_t nodes = 2 * vs - 1;
    std::vector<double> count(nodes, std::numeric_limits<double>::infinity());
    std::vector<Index> parent(nodes, -1);
    std::vector<std::uint8_t> binary(nodes, 0);
    left_.assign(vs - 1, -1);
    right_.assign(vs - 1, -1);
    for (std::size_t i = 0; i < vs; ++i)
      count[i] = counts[i];
    Index leaf = v_ - 1, inner = v_;  // leaf walks `order` from its smallest count upward
    for (Index i = v_; i < 2 * v_ - 1; ++i) {
      Index pick[2];
      for (Index& p : pick) {
        if (leaf >= 0 && count[std::size_t(order[std::size_t(leaf)])] < count[std::size_t(inner)]) {
          p = order[std::size_t(leaf--)];
        } else {
          p = inner++;
        }
      }
      count[std::size_t(i)] = count[std::size_t(pick[0])] + count[std::size_t(pick[1])];
      left_[std::size_t(i - v_)] = pick[0];
      right_[std::size_t(i - v_)] = pick[1];
      parent[std::size_t(pick[0])] = i;
      parent[std::size_t(pick[1])] = i;
      binary[std::size_t(pick[1])] = 1;
    }
    path_offset_.assign(vs + 1, 0);
    path_nodes_.clear();
    path_codes_.clear();
    std::vector<Index> nodes_up;
    std::vector<std::uint8_t> codes_up;
    for (Index c = 0; c < v_; ++c) {
      nodes_up.clear();
      codes_up.clear();
      for (Index t = c; parent[std::size_t(t)] >= 0; t = parent[std::size_t(t)]) {
        nodes_up.push_back(parent[std::size_t(t)] - v_);
        codes_up.push_back(binary[std::size_t(t)]);
      }
      path_nodes_.insert(path_nodes_.end(), nodes_up.rbegin(), nodes_up.rend());
      path_codes_.insert(path_codes_.end(), codes_up.rbegin(), codes_up.rend());
      path_offset_[std::size_t(c) + 1] = static_cast<Index>(path_nodes_.size());
    }
  }

  // The loss and, when gradients are requested (dh not NoMatrix), dH and dW (dense, already
  // zeroed) or the sparse gradient.
  template <class XprW, class XprH, class Labels, class DH, class DW>
  double run(const Eigen::MatrixBase<XprW>& w, const Eigen::MatrixBase<XprH>& h,
             const Labels& labels, double* output, const std::vector<double>* upstream, DH&& dh,
             DW&& dw) const {
    using Scalar = typename XprW::Scalar;
    static_assert(std::is_same_v<Scalar, typename XprH::Scalar>,
                  "softmaxlab::HierarchicalSoftmax: W and H must share one scalar type");
    constexpr bool grads = !std::is_same_v<std::decay_t<DH>, NoMatrix>;
    constexpr bool sparse = detail::is_sparse_gradient<std::decay_t<DW>>::value;
    const char* function = grads ? "HierarchicalSoftmax::backward" : "HierarchicalSoftmax::loss";
    check_w(w, h.cols(), grads ? "backward" : "loss");
    const Index n = h.rows(), d = h.cols();
    const std::vector<Index> y = detail::checked_labels(function, labels, n, v_);
    if (upstream && !upstream->empty() && static_cast<Index>(upstream->size()) != n)
      detail::fail(function, ": upstream must have ", n, " entries, but got ", upstream->size());
    std::vector<Index> slot;  // sparse: node -> row of grad.rows
    if constexpr (grads) {
      if (dh.rows() != n || dh.cols() != d)
        detail::fail(function, ": dH must be ", n, " x ", d, ", but got ", dh.rows(), " x ",
                     dh.cols());
      dh.setZero();
      if constexpr (sparse) {
        slot.assign(static_cast<std::size_t>(v_ > 1 ? v_ - 1 : 0), -1);
        dw.nodes.clear();
        for (Index r = 0; r < n; ++r)
          for (Index t = offset(y[std::size_t(r)]); t < offset(y[std::size_t(r)] + 1); ++t)
            slot[std::size_t(path_nodes_[std::size_t(t)])] = 0;
        for (Index j = 0; j < v_ - 1; ++j)
          if (slot[std::size_t(j)] == 0) {
            slot[std::size_t(j)] = static_cast<Index>(dw.nodes.size());
            dw.nodes.push_back(j);
          }
        dw.rows.setZero(static_cast<Index>(dw.nodes.size()), d);
      }
    }
    double sum = 0;
    for (Index r = 0; r < n; ++r) {
      const Index c = y[std::size_t(r)];
      const double u = (upstream && !upstream->empty()) ? (*upstream)[std::size_t(r)]
                                                        : 1.0 / static_cast<double>(n);
      double lp = 0;
      for (Index t = offset(c); t < offset(c + 1); ++t) {
        const Index j = path_nodes_[std::size_t(t)];
        const double z = static_cast<double>(w.row(j).dot(h.row(r)));
        const bool b = path_codes_[std::size_t(t)] != 0;
        lp += detail::log_sigmoid(b ? z : -z);
        if constexpr (grads) {
          const auto g = static_cast<Scalar>(u * (detail::sigmoid(z) - (b ? 1.0 : 0.0)));
          dh.row(r) += g * w.row(j);
          if constexpr (sparse)
            dw.rows.row(slot[std::size_t(j)]) += g * h.row(r);
          else
            dw.row(j) += g * h.row(r);
        }
      }
      if (output)
        output[r] = lp;
      sum -= lp;
    }
    return n == 0 ? 0.0 : sum / static_cast<double>(n);
  }

  Index v_ = 0;
  std::vector<Index> left_, right_;       // children of inner node j (tree indices)
  std::vector<Index> path_offset_;        // class c's path: [path_offset_[c], path_offset_[c+1])
  std::vector<Index> path_nodes_;         // inner node indices (rows of W), root first
  std::vector<std::uint8_t> path_codes_;  // 1: right child (sigma(+z)), 0: left (sigma(-z))
};

}  // namespace softmaxlab
