// HierarchicalSoftmax (hierarchical_softmax.hpp): the Huffman tree (a hand-built fastText example,
// its tie rule, optimality against an independent priority-queue Huffman cost, a valid prefix
// code), log-probabilities against a long double reference computed here along the paths, rows
// summing to one, the loss against the gathered log_prob, gradients (dense and sparse) against
// finite differences in double, the top-k tree search against brute force over all classes
// (ties included), extreme logits, errors and the empty batch.
#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>
#include <queue>
#include <set>
#include <stdexcept>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>

#include <softmaxlab/hierarchical_softmax.hpp>

#include "support.hpp"

namespace sml = softmaxlab;
using Index = Eigen::Index;
using softmaxlab_test::fd_relative_error;
using softmaxlab_test::fd_scalar_gradient;
using softmaxlab_test::random_normal;
using softmaxlab_test::Worst;
using LD = long double;
template <class Scalar>
using RowMajor = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

namespace {

// Zipfian counts: count(c) = floor(1e6 / (c + 1)), in a scrambled class order.
std::vector<long> zipf_counts(Index v) {
  std::vector<long> counts(static_cast<std::size_t>(v));
  for (Index c = 0; c < v; ++c)
    counts[std::size_t((c * 7919) % v)] = static_cast<long>(1000000 / (c + 1));
  return counts;
}

// log p(c | h) in long double along the tree's path: sum of log sigma(+-w_j . h).
template <class MatW, class MatH>
LD reference_log_prob(const sml::HierarchicalSoftmax& hs, const MatW& w, const MatH& h, Index n,
                      Index c) {
  const std::vector<Index> nodes = hs.path(c);
  const std::vector<std::uint8_t> codes = hs.code(c);
  LD s = 0;
  for (std::size_t t = 0; t < nodes.size(); ++t) {
    LD z = 0;
    for (Index j = 0; j < w.cols(); ++j)
      z += LD(w(nodes[t], j)) * LD(h(n, j));
    if (!codes[t])
      z = -z;
    s += -std::log1p(std::exp(-z));  // log sigma(z), fine for the |z| of these tests
  }
  return s;
}

// The optimal (Huffman) weighted path length sum_c count_c depth_c, by the textbook priority-queue
// construction: any optimal prefix code has this cost.
double huffman_cost(const std::vector<long>& counts) {
  std::priority_queue<double, std::vector<double>, std::greater<double>> q;
  for (long c : counts)
    q.push(double(c));
  double cost = 0;
  while (q.size() > 1) {
    const double a = q.top();
    q.pop();
    const double b = q.top();
    q.pop();
    cost += a + b;
    q.push(a + b);
  }
  return cost;
}

template <class Scalar>
void check_reference(bool row_major) {
  const Index v = 300, d = 16, n = 23;
  const sml::HierarchicalSoftmax hs(zipf_counts(v));
  const Eigen::Matrix<Scalar, -1, -1> wc = random_normal(v - 1, d, 3, 0.5).cast<Scalar>();
  const RowMajor<Scalar> wr = wc;
  const Eigen::Matrix<Scalar, -1, -1> h = random_normal(n, d, 4, 1.0).cast<Scalar>();
  Eigen::MatrixXd lp(n, v);
  if (row_major)
    hs.log_prob(wr, h, lp);
  else
    hs.log_prob(wc, h, lp);
  const double eps = std::numeric_limits<Scalar>::epsilon();
  Worst worst, worst_single;
  Index max_depth = 0;
  for (Index c = 0; c < v; ++c)
    max_depth = std::max(max_depth, hs.depth(c));
  // The header's bound: (depth + d) eps (1 + |log p|).
  for (Index r = 0; r < n; ++r)
    for (Index c = 0; c < v; ++c) {
      const LD exact = reference_log_prob(hs, wc, h, r, c);
      const double allowed = double(hs.depth(c) + d);
      const double scale = eps * double(1 + std::fabs(exact));
      worst.update(double(std::fabs(LD(lp(r, c)) - exact)) / scale, allowed,
                   [&](auto& s) { s << "token " << r << ", class " << c; });
      const double single = row_major ? hs.log_prob(wr, h.row(r), c) : hs.log_prob(wc, h.row(r), c);
      worst_single.update(double(std::fabs(LD(single) - exact)) / scale, allowed,
                          [&](auto& s) { s << "token " << r << ", class " << c; });
    }
  INFO("V " << v << ", depth <= " << max_depth << "; all classes: " << worst.report()
            << "; one class: " << worst_single.report());
  CHECK(worst.ratio <= 1.0);
  CHECK(worst_single.ratio <= 1.0);

  // The loss and its outputs: the gathered log-probabilities (same bound), averaged.
  std::vector<int> y(static_cast<std::size_t>(n));
  for (Index r = 0; r < n; ++r)
    y[std::size_t(r)] = static_cast<int>((r * 37) % v);
  std::vector<double> out(static_cast<std::size_t>(n));
  const double loss = row_major ? hs.loss(wr, h, y, out) : hs.loss(wc, h, y, out);
  LD mean = 0;
  Worst worst_loss;
  for (Index r = 0; r < n; ++r) {
    const LD exact = reference_log_prob(hs, wc, h, r, y[std::size_t(r)]);
    mean -= exact / LD(n);
    worst_loss.update(
        double(std::fabs(LD(out[std::size_t(r)]) - exact)) / (eps * double(1 + std::fabs(exact))),
        double(hs.depth(y[std::size_t(r)]) + d), [&](auto& s) { s << "token " << r; });
  }
  INFO(worst_loss.report());
  CHECK(worst_loss.ratio <= 1.0);
  CHECK(std::fabs(LD(loss) - mean) <= LD(max_depth + d) * eps * (1 + std::fabs(mean)));
}

}  // namespace

TEST_CASE("HierarchicalSoftmax builds fastText's Huffman tree", "[hierarchical_softmax]") {
  // By hand, fastText's two-queue construction on counts 4, 3, 2, 1: merge {3, 2} -> node 0
  // (count 3); the leaf of count 3 ties node 0, and the inner node is taken first -> node 1 =
  // {node 0, class 1}; root node 2 = {class 0, node 1}. Second pick = right child = code 1.
  const sml::HierarchicalSoftmax hs(std::vector<int>{4, 3, 2, 1});
  using Nodes = std::vector<Index>;
  using Codes = std::vector<std::uint8_t>;
  CHECK(hs.n_inner_nodes() == 3);
  CHECK(hs.path(0) == Nodes{2});
  CHECK(hs.code(0) == Codes{0});
  CHECK(hs.path(1) == Nodes{2, 1});
  CHECK(hs.code(1) == Codes{1, 1});
  CHECK(hs.path(2) == Nodes{2, 1, 0});
  CHECK(hs.code(2) == Codes{1, 0, 1});
  CHECK(hs.path(3) == Nodes{2, 1, 0});
  CHECK(hs.code(3) == Codes{1, 0, 0});
  // The same counts in another class order: the same tree, classes relabelled.
  const sml::HierarchicalSoftmax perm(Eigen::Vector4d(2, 4, 1, 3));
  CHECK(perm.code(1) == Codes{0});
  CHECK(perm.code(3) == Codes{1, 1});
  CHECK(perm.code(0) == Codes{1, 0, 1});
  CHECK(perm.code(2) == Codes{1, 0, 0});
  // Equal counts: ordered by class index (class 0 is the largest), deterministic.
  const sml::HierarchicalSoftmax equal(std::vector<int>{1, 1, 1, 1});
  const sml::HierarchicalSoftmax equal2(std::vector<int>{1, 1, 1, 1});
  for (Index c = 0; c < 4; ++c) {
    CHECK(equal.depth(c) == 2);
    CHECK(equal.code(c) == equal2.code(c));
  }
  // One class: no inner node, an empty path.
  const sml::HierarchicalSoftmax one(std::vector<int>{7});
  CHECK(one.n_inner_nodes() == 0);
  CHECK(one.depth(0) == 0);

  // Zipfian counts (with zeros): an optimal, complete prefix code.
  for (Index v : {Index(2), Index(3), Index(17), Index(1000), Index(4097)}) {
    std::vector<long> counts = zipf_counts(v);
    counts[std::size_t(v / 2)] = 0;
    const sml::HierarchicalSoftmax t(counts);
    double cost = 0;
    std::set<std::vector<std::uint8_t>> codes;
    std::vector<int> seen(std::size_t(v - 1), 0);
    double kraft = 0;
    for (Index c = 0; c < v; ++c) {
      cost += double(counts[std::size_t(c)]) * double(t.depth(c));
      codes.insert(t.code(c));
      kraft += std::ldexp(1.0, -int(t.depth(c)));
      for (Index j : t.path(c))
        seen[std::size_t(j)] = 1;
      CHECK(t.path(c).front() == v - 2);  // the root is the last inner node
    }
    INFO("V " << v);
    CHECK(cost == huffman_cost(counts));
    CHECK(static_cast<Index>(codes.size()) == v);  // distinct codes
    CHECK(kraft == 1.0);                           // a complete binary tree
    CHECK(std::accumulate(seen.begin(), seen.end(), 0) == v - 1);
  }
}

TEST_CASE("HierarchicalSoftmax matches a long double reference", "[hierarchical_softmax]") {
  for (bool row_major : {true, false}) {
    INFO("row-major W " << row_major);
    check_reference<double>(row_major);
    check_reference<float>(row_major);
  }
}

TEST_CASE("HierarchicalSoftmax sums to one", "[hierarchical_softmax]") {
  for (Index v : {Index(2), Index(1000), Index(5000)}) {
    const sml::HierarchicalSoftmax hs(zipf_counts(v));
    const RowMajor<double> w = random_normal(v - 1, 16, 7, 1.0);
    const Eigen::MatrixXd h = random_normal(5, 16, 8, 1.0);
    const Eigen::MatrixXd lp = [&] {
      Eigen::MatrixXd m(5, v);
      hs.log_prob(w, h, m);
      return m;
    }();
    double worst = 0;
    for (Index r = 0; r < 5; ++r) {
      LD s = 0;
      for (Index c = 0; c < v; ++c)
        s += std::exp(LD(lp(r, c)));
      worst = std::max(worst, double(std::fabs(s - 1)));
    }
    INFO("V " << v << ": worst |sum p - 1| = " << worst / std::numeric_limits<double>::epsilon()
              << " eps");
    CHECK(worst <= 1e-12);
  }
}

TEST_CASE("HierarchicalSoftmax gradients match finite differences", "[hierarchical_softmax]") {
  const Index v = 13, d = 5, n = 9;
  const sml::HierarchicalSoftmax hs(zipf_counts(v));
  const Eigen::MatrixXd w = random_normal(v - 1, d, 11, 0.8);
  const Eigen::MatrixXd h = random_normal(n, d, 12, 1.0);
  const std::vector<int> y{0, 1, 5, 12, 7, 7, 3, 9, 11};
  const Eigen::VectorXd g = random_normal(n, 1, 13, 1.0);
  const std::vector<double> upstream(g.data(), g.data() + n);
  for (bool use_upstream : {false, true}) {
    INFO("upstream " << use_upstream);
    const auto objective = [&](const Eigen::MatrixXd& ww, const Eigen::MatrixXd& hh) {
      if (!use_upstream)
        return hs.loss(ww, hh, y);
      std::vector<double> out(static_cast<std::size_t>(n));
      hs.loss(ww, hh, y, out);
      double s = 0;
      for (Index r = 0; r < n; ++r)
        s -= upstream[std::size_t(r)] * out[std::size_t(r)];
      return s;
    };
    const std::vector<double> none;
    const std::vector<double>& u = use_upstream ? upstream : none;
    Eigen::MatrixXd dh(n, d), dw(v - 1, d), dh2(n, d);
    const double l = hs.backward(w, h, y, dh, dw, u);
    CHECK(l == hs.loss(w, h, y));
    const Eigen::MatrixXd fd_h =
        fd_scalar_gradient([&](const Eigen::MatrixXd& x) { return objective(w, x); }, h);
    const Eigen::MatrixXd fd_w =
        fd_scalar_gradient([&](const Eigen::MatrixXd& x) { return objective(x, h); }, w);
    const double err_h = fd_relative_error(dh, fd_h, h), err_w = fd_relative_error(dw, fd_w, w);
    INFO("dH relative error " << err_h << ", dW relative error " << err_w);
    CHECK(err_h <= 1e-8);
    CHECK(err_w <= 1e-8);

    // The sparse gradient: exactly the nodes on the labels' paths, the dense rows there, and
    // the dense gradient zero elsewhere.
    sml::HierarchicalSoftmaxGradient<double> sparse;
    CHECK(hs.backward(w, h, y, dh2, sparse, u) == l);
    CHECK(dh2 == dh);
    std::set<Index> touched;
    for (int c : y)
      for (Index j : hs.path(c))
        touched.insert(j);
    CHECK(std::vector<Index>(touched.begin(), touched.end()) == sparse.nodes);
    Eigen::MatrixXd rebuilt = Eigen::MatrixXd::Zero(v - 1, d);
    sparse.scatter_add(rebuilt, 1.0);
    CHECK(rebuilt == dw);
  }
}

TEST_CASE("HierarchicalSoftmax top-k predict is exact", "[hierarchical_softmax]") {
  const Index v = 500, d = 8, n = 40;
  const sml::HierarchicalSoftmax hs(zipf_counts(v));
  for (double scale : {0.3, 3.0}) {  // flat and peaked distributions
    const RowMajor<double> w = random_normal(v - 1, d, 21, scale);
    const RowMajor<double> h = random_normal(n, d, 22, 1.0);
    for (Index k : {Index(1), Index(3), Index(10), v}) {
      Eigen::Matrix<long, -1, -1> idx(n, k);
      Eigen::MatrixXd lp(n, k);
      hs.predict(w, h, k, idx, lp);
      Index mismatches = 0;
      double worst = 0;
      for (Index r = 0; r < n; ++r) {
        // Brute force over every class in long double, best first, ties by index.
        std::vector<std::pair<LD, Index>> all;
        for (Index c = 0; c < v; ++c)
          all.emplace_back(reference_log_prob(hs, w, h, r, c), c);
        std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) {
          return a.first > b.first || (a.first == b.first && a.second < b.second);
        });
        for (Index t = 0; t < k; ++t) {
          mismatches += idx(r, t) != all[std::size_t(t)].second;
          worst = std::max(worst, double(std::fabs(LD(lp(r, t)) - all[std::size_t(t)].first)));
        }
      }
      INFO("scale " << scale << ", k " << k << ": worst log-prob error " << worst);
      CHECK(mismatches == 0);
      CHECK(worst <= 1e-12);
    }
  }
  // Ties: W = 0 gives p = 2^-depth, so classes of equal depth tie exactly; predict orders them by
  // index, as the brute force does.
  const RowMajor<float> w0 = RowMajor<float>::Zero(v - 1, d);
  const RowMajor<float> h0 = RowMajor<float>::Ones(2, d);
  Eigen::MatrixXi idx(2, 50);
  Eigen::MatrixXf lp(2, 50);
  hs.predict(w0, h0, 50, idx, lp);
  std::vector<Index> order(static_cast<std::size_t>(v));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](Index a, Index b) { return hs.depth(a) < hs.depth(b); });
  for (Index t = 0; t < 50; ++t) {
    CHECK(idx(0, t) == order[std::size_t(t)]);
    CHECK(lp(0, t) == static_cast<float>(-double(hs.depth(order[std::size_t(t)])) * std::log(2.0)));
  }
}

TEST_CASE("HierarchicalSoftmax is stable for large logits", "[hierarchical_softmax]") {
  const sml::HierarchicalSoftmax hs(std::vector<int>{5, 4, 3, 2, 1});
  RowMajor<double> w = random_normal(4, 3, 31, 1.0);
  const RowMajor<double> h = random_normal(1, 3, 32, 1000.0);  // |z| in the thousands
  for (Index c = 0; c < 5; ++c) {
    const double lp = hs.log_prob(w, h.row(0), c);
    LD exact = 0;
    const auto nodes = hs.path(c);
    const auto codes = hs.code(c);
    for (std::size_t t = 0; t < nodes.size(); ++t) {
      const LD z = LD(w.row(nodes[t]).dot(h.row(0))) * (codes[t] ? 1 : -1);
      exact += z < 0 ? z - std::log1p(std::exp(z)) : -std::log1p(std::exp(-z));
    }
    CHECK(std::isfinite(lp));
    CHECK(std::fabs(LD(lp) - exact) <= 1e-12L * (1 + std::fabs(exact)));
  }
  Eigen::MatrixXd dh(1, 3), dw(4, 3);
  CHECK(std::isfinite(hs.backward(w, h, std::vector<int>{4}, dh, dw)));
  CHECK(dh.allFinite());
  CHECK(dw.allFinite());
}

TEST_CASE("HierarchicalSoftmax rejects bad parameters and shapes", "[hierarchical_softmax]") {
  using Catch::Contains;
  CHECK_THROWS_WITH(sml::HierarchicalSoftmax(std::vector<int>{}), Contains("counts"));
  CHECK_THROWS_WITH(sml::HierarchicalSoftmax(std::vector<int>{3, -1}),
                    Contains("counts[1]") && Contains("-1"));
  CHECK_THROWS_AS(sml::HierarchicalSoftmax(std::vector<double>{1, std::nan("")}),
                  std::invalid_argument);
  CHECK_THROWS_AS(sml::HierarchicalSoftmax(std::vector<double>{INFINITY, 1}),
                  std::invalid_argument);
  const sml::HierarchicalSoftmax hs(std::vector<int>{3, 2, 1});
  const Eigen::MatrixXd w = Eigen::MatrixXd::Zero(2, 4), h = Eigen::MatrixXd::Zero(2, 4);
  const std::vector<int> y{0, 2};
  CHECK_THROWS_WITH(hs.loss(Eigen::MatrixXd::Zero(3, 4), h, y), Contains("W must be"));
  CHECK_THROWS_WITH(hs.loss(w, Eigen::MatrixXd::Zero(2, 5), y), Contains("W must be"));
  CHECK_THROWS_WITH(hs.loss(w, h, std::vector<int>{0, 3}), Contains("label 3"));
  CHECK_THROWS_WITH(hs.loss(w, h, std::vector<int>{0}), Contains("one entry per row"));
  CHECK_THROWS_WITH(hs.log_prob(w, h.row(0), 3), Contains("class 3"));
  CHECK_THROWS_WITH(hs.path(-1), Contains("class -1"));
  std::vector<double> out(3);
  CHECK_THROWS_WITH(hs.loss(w, h, y, out), Contains("output"));
  Eigen::MatrixXd lp_bad(2, 2);
  CHECK_THROWS_WITH(hs.log_prob(w, h, lp_bad), Contains("2 x 3"));
  Eigen::MatrixXd dh(2, 4), dw(2, 4), dw_bad(3, 4), dh_bad(1, 4);
  CHECK_THROWS_WITH(hs.backward(w, h, y, dh, dw_bad), Contains("dW"));
  CHECK_THROWS_WITH(hs.backward(w, h, y, dh_bad, dw), Contains("dH"));
  CHECK_THROWS_WITH(hs.backward(w, h, y, dh, dw, std::vector<double>{1}), Contains("upstream"));
  Eigen::MatrixXi idx(2, 2);
  Eigen::MatrixXd lp(2, 2);
  CHECK_THROWS_WITH(hs.predict(w, h, 0, idx, lp), Contains("k must be"));
  Eigen::MatrixXi idx4(2, 4);
  Eigen::MatrixXd lp4(2, 4);
  CHECK_THROWS_WITH(hs.predict(w, h, 4, idx4, lp4), Contains("but got 4"));
  CHECK_THROWS_WITH(hs.predict(w, h, 1, idx, lp), Contains("indices"));
}

TEST_CASE("HierarchicalSoftmax on an empty batch", "[hierarchical_softmax]") {
  const sml::HierarchicalSoftmax hs(std::vector<int>{3, 2, 1});
  const RowMajor<float> w = RowMajor<float>::Ones(2, 4), h(0, 4);
  const std::vector<int> y;
  CHECK(hs.loss(w, h, y) == 0.0);
  Eigen::MatrixXf lp(0, 3);
  hs.log_prob(w, h, lp);
  Eigen::MatrixXf dh(0, 4), dw = Eigen::MatrixXf::Ones(2, 4);
  CHECK(hs.backward(w, h, y, dh, dw) == 0.0);
  CHECK(dw.isZero(0));
  sml::HierarchicalSoftmaxGradient<float> sparse;
  CHECK(hs.backward(w, h, y, dh, sparse) == 0.0);
  CHECK(sparse.nodes.empty());
  Eigen::MatrixXi idx(0, 2);
  Eigen::MatrixXf top(0, 2);
  hs.predict(w, h, 2, idx, top);
}
