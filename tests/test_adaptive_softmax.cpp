// AdaptiveLogSoftmax (adaptive_softmax.hpp): every class's log-probability against a long double
// reference computed here from the definitions (PyTorch's AdaptiveLogSoftmaxWithLoss), rows that
// sum to one, the loss and per-token outputs against the gathered log_prob, gradients against
// finite differences in double, predict against the argmax of log_prob, PyTorch's tail widths,
// that the loss reads only the labelled clusters, initialisation, errors and the empty batch.
#include <cmath>
#include <limits>
#include <stdexcept>
#include <vector>

#include <catch2/catch.hpp>

#include <softmaxlab/adaptive_softmax.hpp>

#include "support.hpp"

namespace sml = softmaxlab;
using Index = Eigen::Index;
using softmaxlab_test::fd_relative_error;
using softmaxlab_test::fd_scalar_gradient;
using softmaxlab_test::random_normal;
using softmaxlab_test::Worst;
using LD = long double;

namespace {

// Parameters drawn from N(0, scale^2) (init_parameters' U(+-1/sqrt(fan_in)) gives logits too
// small to exercise the exp's range).
template <class Scalar>
sml::AdaptiveLogSoftmaxParameters<Scalar> random_parameters(const sml::AdaptiveLogSoftmax& a,
                                                            unsigned seed, double scale) {
  auto p = a.zero_parameters<Scalar>();
  p.head = random_normal(p.head.rows(), p.head.cols(), seed, scale).template cast<Scalar>();
  if (a.head_bias())
    p.head_bias = random_normal(p.head_bias.size(), 1, seed + 1, scale).template cast<Scalar>();
  for (std::size_t i = 0; i < p.tail_output.size(); ++i) {
    const auto& pr = p.tail_projection[i];
    const auto& ou = p.tail_output[i];
    p.tail_projection[i] = random_normal(pr.rows(), pr.cols(), seed + 2 + unsigned(2 * i), scale)
                               .template cast<Scalar>();
    p.tail_output[i] = random_normal(ou.rows(), ou.cols(), seed + 3 + unsigned(2 * i), scale)
                           .template cast<Scalar>();
  }
  return p;
}

// log p(c | h_n) for every n and c in long double, by explicit loops over the definitions.
template <class Scalar, class MatH>
std::vector<std::vector<LD>> reference_log_prob(const sml::AdaptiveLogSoftmax& a,
                                                const sml::AdaptiveLogSoftmaxParameters<Scalar>& p,
                                                const MatH& h) {
  const auto log_softmax = [](std::vector<LD> z) {
    LD m = -std::numeric_limits<LD>::infinity();
    for (LD v : z)
      m = std::max(m, v);
    LD s = 0;
    for (LD v : z)
      s += std::exp(v - m);
    for (LD& v : z)
      v = v - m - std::log(s);
    return z;
  };
  std::vector<std::vector<LD>> out;
  const Index d = a.in_features();
  for (Index n = 0; n < h.rows(); ++n) {
    std::vector<LD> head(static_cast<std::size_t>(a.head_size()));
    for (Index k = 0; k < a.head_size(); ++k) {
      LD z = a.head_bias() ? LD(p.head_bias(k)) : 0;
      for (Index j = 0; j < d; ++j)
        z += LD(p.head(k, j)) * LD(h(n, j));
      head[std::size_t(k)] = z;
    }
    head = log_softmax(head);
    std::vector<LD> row(head.begin(), head.begin() + a.shortlist_size());
    for (Index i = 0; i < a.n_clusters(); ++i) {
      const auto& pr = p.tail_projection[std::size_t(i)];
      const auto& ou = p.tail_output[std::size_t(i)];
      std::vector<LD> hidden(std::size_t(pr.rows()), 0), z(std::size_t(ou.rows()), 0);
      for (Index t = 0; t < pr.rows(); ++t)
        for (Index j = 0; j < d; ++j)
          hidden[std::size_t(t)] += LD(pr(t, j)) * LD(h(n, j));
      for (Index c = 0; c < ou.rows(); ++c)
        for (Index t = 0; t < ou.cols(); ++t)
          z[std::size_t(c)] += LD(ou(c, t)) * hidden[std::size_t(t)];
      z = log_softmax(z);
      for (LD v : z)
        row.push_back(head[std::size_t(a.shortlist_size() + i)] + v);
    }
    out.push_back(row);
  }
  return out;
}

std::vector<int> spread_labels(Index n, Index v) {
  std::vector<int> y(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i)
    y[std::size_t(i)] = static_cast<int>((i * 7 + 3) % v);
  return y;
}

template <class Scalar>
void check_against_reference(bool head_bias) {
  const sml::AdaptiveLogSoftmax a(12, 50, {10, 25, 40}, 2.0, head_bias);  // hidden 6, 3, 1
  const auto p = random_parameters<Scalar>(a, 11, 0.8);
  const Eigen::Matrix<Scalar, -1, -1> h = random_normal(37, 12, 5, 1.0).cast<Scalar>();
  const auto ref = reference_log_prob(a, p, h);
  const Eigen::Matrix<Scalar, -1, -1> lp = a.log_prob(p, h);
  const double eps = std::numeric_limits<Scalar>::epsilon();
  // The header's stated 16 eps (1 + |log p|) at these shapes (GEMM rounding of the logits,
  // LogSoftmax's 4 eps (1 + |exact|), the sum of the two terms).
  const double allowed = 16.0;
  Worst worst;
  for (Index n = 0; n < h.rows(); ++n)
    for (Index c = 0; c < a.n_classes(); ++c) {
      const LD exact = ref[std::size_t(n)][std::size_t(c)];
      const double err = double(std::fabs(LD(lp(n, c)) - exact) / (eps * (1 + std::fabs(exact))));
      worst.update(err, allowed, [&](auto& s) { s << "token " << n << ", class " << c; });
    }
  INFO(worst.report());
  CHECK(worst.ratio <= 1.0);

  // loss and output: the gathered log-probabilities (output within the same bound), mean NLL.
  const std::vector<int> y = spread_labels(h.rows(), a.n_classes());
  Eigen::Matrix<Scalar, -1, 1> output(h.rows());
  const double loss = a.loss(p, h, y, output);
  LD mean = 0;
  Worst worst_out;
  for (Index n = 0; n < h.rows(); ++n) {
    const LD exact = ref[std::size_t(n)][std::size_t(y[std::size_t(n)])];
    mean -= exact / LD(h.rows());
    const double err = double(std::fabs(LD(output(n)) - exact) / (eps * (1 + std::fabs(exact))));
    worst_out.update(err, allowed, [&](auto& s) { s << "token " << n; });
  }
  INFO(worst_out.report());
  CHECK(worst_out.ratio <= 1.0);
  const double loss_err = double(std::fabs(LD(loss) - mean) / (eps * (1 + std::fabs(mean))));
  INFO("loss error " << loss_err << " eps");
  CHECK(loss_err <= allowed);
  CHECK(a.loss(p, h, y) == loss);
}

}  // namespace

TEST_CASE("AdaptiveLogSoftmax matches a long double reference", "[adaptive_softmax]") {
  for (bool bias : {false, true}) {
    INFO("head_bias " << bias);
    check_against_reference<double>(bias);
    check_against_reference<float>(bias);
  }
}

TEST_CASE("AdaptiveLogSoftmax rows sum to one", "[adaptive_softmax]") {
  const sml::AdaptiveLogSoftmax a(32, 2000, {100, 500, 1200}, 4.0, true);
  const auto p = random_parameters<double>(a, 3, 0.5);
  const Eigen::MatrixXd h = random_normal(9, 32, 4, 1.0);
  const Eigen::MatrixXd lp = a.log_prob(p, h);
  double worst = 0;
  for (Index n = 0; n < h.rows(); ++n) {
    LD s = 0;
    for (Index c = 0; c < a.n_classes(); ++c)
      s += std::exp(LD(lp(n, c)));
    worst = std::max(worst, double(std::fabs(s - 1)));
  }
  INFO("worst |sum p - 1| " << worst / std::numeric_limits<double>::epsilon() << " eps");
  CHECK(worst <= 1e-13);

  const auto pf = random_parameters<float>(a, 3, 0.5);
  const Eigen::MatrixXf lpf = a.log_prob(pf, Eigen::MatrixXf(h.cast<float>()));
  double worst_f = 0;
  for (Index n = 0; n < h.rows(); ++n) {
    LD s = 0;
    for (Index c = 0; c < a.n_classes(); ++c)
      s += std::exp(LD(lpf(n, c)));
    worst_f = std::max(worst_f, double(std::fabs(s - 1)));
  }
  INFO("float: worst |sum p - 1| " << worst_f / std::numeric_limits<float>::epsilon() << " eps");
  CHECK(worst_f <= 2e-6);
}

TEST_CASE("AdaptiveLogSoftmax gradients match finite differences", "[adaptive_softmax]") {
  for (bool bias : {false, true}) {
    for (bool upstream : {false, true}) {
      INFO("head_bias " << bias << ", upstream " << upstream);
      const sml::AdaptiveLogSoftmax a(6, 20, {5, 12}, 2.0, bias);  // hidden 3, 1
      const auto p = random_parameters<double>(a, 21, 0.7);
      const Eigen::MatrixXd h = random_normal(7, 6, 22, 1.0);
      const std::vector<int> y{0, 4, 5, 11, 12, 19, 7};  // shortlist and both clusters
      const Eigen::VectorXd g = random_normal(7, 1, 23, 1.0);
      // The differentiated objective, from loss's per-token outputs.
      const auto objective = [&](const sml::AdaptiveLogSoftmaxParameters<double>& q,
                                 const Eigen::MatrixXd& x) {
        if (!upstream)
          return a.loss(q, x, y);
        Eigen::VectorXd out(x.rows());
        a.loss(q, x, y, out);
        return -g.dot(out);
      };
      auto grads = a.zero_parameters<double>();
      Eigen::MatrixXd dh(7, 6);
      const double l =
          upstream ? a.backward(p, h, y, grads, dh, g) : a.backward(p, h, y, grads, dh);
      CHECK(l == a.loss(p, h, y));
      Worst worst;
      const auto check = [&](const char* what, const auto& got, const auto& fd, const auto& x) {
        const double err = fd_relative_error(got, fd, x);
        worst.update(err, 1e-7, [&](auto& s) { s << what; });
      };
      {
        const Eigen::MatrixXd fd =
            fd_scalar_gradient([&](const Eigen::MatrixXd& x) { return objective(p, x); }, h);
        check("dH", dh, fd, h);
      }
      {
        const Eigen::MatrixXd fd = fd_scalar_gradient(
            [&](const Eigen::MatrixXd& w) {
              auto q = p;
              q.head = w;
              return objective(q, h);
            },
            p.head);
        check("head", grads.head, fd, p.head);
      }
      if (bias) {
        const Eigen::VectorXd fd = fd_scalar_gradient(
            [&](const Eigen::VectorXd& b) {
              auto q = p;
              q.head_bias = b;
              return objective(q, h);
            },
            p.head_bias);
        check("head_bias", grads.head_bias, fd, p.head_bias);
      } else {
        CHECK(grads.head_bias.size() == 0);
      }
      for (std::size_t i = 0; i < p.tail_output.size(); ++i) {
        const Eigen::MatrixXd fdp = fd_scalar_gradient(
            [&](const Eigen::MatrixXd& w) {
              auto q = p;
              q.tail_projection[i] = w;
              return objective(q, h);
            },
            p.tail_projection[i]);
        check("tail_projection", grads.tail_projection[i], fdp, p.tail_projection[i]);
        const Eigen::MatrixXd fdo = fd_scalar_gradient(
            [&](const Eigen::MatrixXd& w) {
              auto q = p;
              q.tail_output[i] = w;
              return objective(q, h);
            },
            p.tail_output[i]);
        check("tail_output", grads.tail_output[i], fdo, p.tail_output[i]);
      }
      INFO(worst.report());
      CHECK(worst.ratio <= 1.0);
    }
  }
}

TEST_CASE("AdaptiveLogSoftmax predict is the argmax of log_prob", "[adaptive_softmax]") {
  for (double cluster_bias : {0.0, 3.0}) {
    const sml::AdaptiveLogSoftmax a(16, 300, {40, 120}, 4.0, true);
    auto p = random_parameters<float>(a, 31, 0.6);
    // A larger head entry for the clusters sends part of the tokens through the tail branch.
    p.head_bias.tail(2).array() += static_cast<float>(cluster_bias);
    const Eigen::MatrixXf h = random_normal(400, 16, 32, 1.0).cast<float>();
    const Eigen::MatrixXf lp = a.log_prob(p, h);
    Eigen::VectorXi got(h.rows());
    std::vector<long> got_long(static_cast<std::size_t>(h.rows()));
    a.predict(p, h, got);
    a.predict(p, h, got_long);
    Index tail = 0, mismatches = 0;
    for (Index n = 0; n < h.rows(); ++n) {
      Index best = 0;
      for (Index c = 1; c < a.n_classes(); ++c)
        if (lp(n, c) > lp(n, best))
          best = c;
      mismatches += (got(n) != best) + (got_long[std::size_t(n)] != best);
      tail += best >= a.shortlist_size();
    }
    INFO("cluster bias " << cluster_bias << ": " << tail << " of " << h.rows()
                         << " tokens predict a tail class");
    CHECK(mismatches == 0);
    if (cluster_bias > 0) {
      CHECK(tail > 0);
      CHECK(tail < h.rows());
    }
  }
}

TEST_CASE("AdaptiveLogSoftmax tail widths follow PyTorch", "[adaptive_softmax]") {
  const sml::AdaptiveLogSoftmax a(512, 128256, {2000, 10000, 50000});
  CHECK(a.head_size() == 2003);
  CHECK(a.hidden_size(0) == 128);
  CHECK(a.hidden_size(1) == 32);
  CHECK(a.hidden_size(2) == 8);
  CHECK(a.cluster_size(2) == 78256);
  const sml::AdaptiveLogSoftmax b(10, 30, {5, 10, 20}, 3.0);  // 10 // 3, 10 // 9, 10 // 27
  CHECK(b.hidden_size(0) == 3);
  CHECK(b.hidden_size(1) == 1);
  CHECK(b.hidden_size(2) == 0);
  const sml::AdaptiveLogSoftmax c(5, 30, {5}, 2.5);  // Python: 5 // 2.5 == 2.0
  CHECK(c.hidden_size(0) == 2);

  // A zero-width projection: the cluster's distribution is uniform.
  const auto p = random_parameters<double>(b, 41, 1.0);
  const Eigen::MatrixXd h = random_normal(3, 10, 42, 1.0);
  const Eigen::MatrixXd lp = b.log_prob(p, h);
  const auto ref = reference_log_prob(b, p, h);
  for (Index n = 0; n < 3; ++n)
    for (Index c2 = 20; c2 < 30; ++c2) {
      CHECK(std::fabs(lp(n, c2) - lp(n, 20)) == 0.0);
      CHECK(std::fabs(LD(lp(n, c2)) - ref[std::size_t(n)][std::size_t(c2)]) < 1e-13);
    }
}

TEST_CASE("AdaptiveLogSoftmax loss reads only the labelled clusters", "[adaptive_softmax]") {
  const sml::AdaptiveLogSoftmax a(8, 60, {10, 30}, 2.0);  // hidden 4, 2
  auto p = random_parameters<double>(a, 51, 0.5);
  const Eigen::MatrixXd h = random_normal(5, 8, 52, 1.0);
  const std::vector<int> y{0, 3, 12, 29, 9};  // the shortlist and cluster 0 only
  const double before = a.loss(p, h, y);
  p.tail_output[1].setConstant(std::numeric_limits<double>::quiet_NaN());
  p.tail_projection[1].setConstant(std::numeric_limits<double>::quiet_NaN());
  CHECK(a.loss(p, h, y) == before);
  auto grads = a.zero_parameters<double>();
  Eigen::MatrixXd dh(5, 8);
  CHECK(a.backward(p, h, y, grads, dh) == before);
  CHECK(grads.tail_output[1].isZero(0));
  CHECK(dh.allFinite());
  // ...while log_prob covers every class, so the NaN cluster shows there.
  const Eigen::MatrixXd lp = a.log_prob(p, h);
  CHECK(std::isnan(lp(0, 45)));
  CHECK(!std::isnan(lp(0, 15)));
}

TEST_CASE("AdaptiveLogSoftmax init_parameters is nn.Linear's and reproducible",
          "[adaptive_softmax]") {
  const sml::AdaptiveLogSoftmax a(64, 1000, {100, 400}, 4.0, true);
  const auto p = a.init_parameters<double>(7), q = a.init_parameters<double>(7),
             r = a.init_parameters<double>(8);
  CHECK(p.head == q.head);
  CHECK(p.tail_output[1] == q.tail_output[1]);
  CHECK(p.head != r.head);
  CHECK(p.head.cwiseAbs().maxCoeff() <= 1.0 / 8.0);
  CHECK(p.head_bias.cwiseAbs().maxCoeff() <= 1.0 / 8.0);
  CHECK(p.tail_output[0].cwiseAbs().maxCoeff() <= 1.0 / 4.0);  // fan_in 16
  CHECK(p.tail_output[1].cwiseAbs().maxCoeff() <= 1.0 / 2.0);  // fan_in 4
  // U(-b, b): mean near 0, variance near b^2 / 3 over the 103 x 64 head.
  const double mean = p.head.mean();
  const double var = (p.head.array() - mean).square().mean();
  CHECK(std::fabs(mean) < 0.01 / 8.0 * 8);
  CHECK(std::fabs(var / (1.0 / 64 / 3) - 1) < 0.05);
  CHECK(a.init_parameters<float>(7).head == p.head.cast<float>());
}

TEST_CASE("AdaptiveLogSoftmax rejects bad parameters and shapes", "[adaptive_softmax]") {
  using Catch::Contains;
  CHECK_THROWS_WITH(sml::AdaptiveLogSoftmax(0, 10, {5}), Contains("in_features") && Contains("0"));
  CHECK_THROWS_WITH(sml::AdaptiveLogSoftmax(4, 10, {}), Contains("cutoffs"));
  CHECK_THROWS_WITH(sml::AdaptiveLogSoftmax(4, 10, {0}), Contains("cutoffs[0]"));
  CHECK_THROWS_WITH(sml::AdaptiveLogSoftmax(4, 10, {10}), Contains("but got 10"));
  CHECK_THROWS_WITH(sml::AdaptiveLogSoftmax(4, 10, {5, 5}), Contains("cutoffs[1] = 5"));
  CHECK_THROWS_WITH(sml::AdaptiveLogSoftmax(4, 10, {6, 3}), Contains("strictly increasing"));
  CHECK_THROWS_WITH(sml::AdaptiveLogSoftmax(4, 10, {5}, 0.0), Contains("div_value"));
  CHECK_THROWS_WITH(sml::AdaptiveLogSoftmax(4, 10, {5}, -2.0), Contains("-2"));
  CHECK_THROWS_AS(sml::AdaptiveLogSoftmax(4, 10, {5}, std::nan("")), std::invalid_argument);
  CHECK_THROWS_AS(sml::AdaptiveLogSoftmax(4, 10, {5}, INFINITY), std::invalid_argument);

  const sml::AdaptiveLogSoftmax a(4, 10, {3, 6});
  auto p = a.zero_parameters<double>();
  const Eigen::MatrixXd h = Eigen::MatrixXd::Zero(2, 4);
  const std::vector<int> y{1, 9};
  CHECK_THROWS_WITH(a.loss(p, h, std::vector<int>{1, 10}), Contains("label 10"));
  CHECK_THROWS_WITH(a.loss(p, h, std::vector<int>{-1, 0}), Contains("label -1"));
  CHECK_THROWS_WITH(a.loss(p, h, std::vector<int>{1}), Contains("one entry per row"));
  CHECK_THROWS_WITH(a.loss(p, Eigen::MatrixXd::Zero(2, 5), y), Contains("in_features"));
  Eigen::VectorXd out3(3);
  CHECK_THROWS_WITH(a.loss(p, h, y, out3), Contains("output"));
  Eigen::MatrixXd lp_bad(2, 9);
  CHECK_THROWS_WITH(a.log_prob(p, h, lp_bad), Contains("2 x 10"));
  Eigen::VectorXi idx_bad(3);
  CHECK_THROWS_AS(a.predict(p, h, idx_bad), std::invalid_argument);
  auto grads = a.zero_parameters<double>();
  Eigen::MatrixXd dh(2, 4), dh_bad(3, 4);
  CHECK_THROWS_WITH(a.backward(p, h, y, grads, dh_bad), Contains("dH"));
  CHECK_THROWS_WITH(a.backward(p, h, y, grads, dh, Eigen::VectorXd::Ones(3)), Contains("upstream"));
  auto wrong = p;
  wrong.tail_output[1].resize(4, 1);
  CHECK_THROWS_WITH(a.loss(wrong, h, y), Contains("tail_output"));
  wrong = p;
  wrong.head_bias.resize(5);
  CHECK_THROWS_WITH(a.loss(wrong, h, y), Contains("head_bias"));
  wrong = p;
  wrong.tail_projection.pop_back();
  CHECK_THROWS_WITH(a.loss(wrong, h, y), Contains("tail projections"));
}

TEST_CASE("AdaptiveLogSoftmax on an empty batch", "[adaptive_softmax]") {
  const sml::AdaptiveLogSoftmax a(4, 10, {3, 6}, 2.0, true);
  const auto p = a.init_parameters<float>(1);
  const Eigen::MatrixXf h(0, 4);
  const std::vector<int> y;
  CHECK(a.loss(p, h, y) == 0.0);
  CHECK(a.log_prob(p, h).rows() == 0);
  Eigen::VectorXi idx(0);
  a.predict(p, h, idx);
  auto grads = a.init_parameters<float>(2);
  Eigen::MatrixXf dh(0, 4);
  CHECK(a.backward(p, h, y, grads, dh) == 0.0);
  CHECK(grads.head.isZero(0));
  CHECK(grads.tail_output[1].isZero(0));
}
