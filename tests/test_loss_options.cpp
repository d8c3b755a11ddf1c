// CrossEntropyLoss's training options (loss.hpp): per-class weights with PyTorch's Mean semantics
// (label smoothing included), Reduction::None with per-sample losses, the z-loss lambda * lse^2
// and the per-row log-sum-exp output, against hand-derived values and PyTorch's documented
// formulas evaluated in long double, gradients against finite differences in double.
#include <cmath>
#include <limits>
#include <vector>

#include <catch2/catch.hpp>

#include <softmaxlab/loss.hpp>

#include "support.hpp"

namespace sml = softmaxlab;
using Index = Eigen::Index;
using Mat = Eigen::MatrixXd;
using softmaxlab_test::AllocationGuard;
using softmaxlab_test::fd_relative_error;
using softmaxlab_test::fd_scalar_gradient;

namespace {

const double kInf = std::numeric_limits<double>::infinity();

// log_softmax(z_n)_k and log-sum-exp of row n, in long double.
long double lse_row(const Mat& z, Index n) {
  long double mx = -INFINITY;
  for (Index k = 0; k < z.cols(); ++k)
    mx = std::max<long double>(mx, z(n, k));
  long double sum = 0;
  for (Index k = 0; k < z.cols(); ++k)
    sum += std::exp(static_cast<long double>(z(n, k)) - mx);
  return mx + std::log(sum);
}
long double log_p(const Mat& z, Index n, Index k) {
  return static_cast<long double>(z(n, k)) - lse_row(z, n);
}

// PyTorch's weighted, smoothed cross-entropy with class labels (torch.nn.CrossEntropyLoss docs):
//   l_n = (1 - eps) w_{c_n} (-log p_{n,c_n}) + (eps / C) sum_c w_c (-log p_{n,c}),
//   Mean = sum_n l_n / sum_n w_{c_n} over non-ignored n.
struct TorchReference {
  std::vector<long double> per_sample;
  long double sum = 0, weight_sum = 0;
};
TorchReference torch_labels(const Mat& z, const std::vector<int>& labels,
                            const std::vector<double>& w, double eps, int ignore = -100) {
  TorchReference r;
  const Index C = z.cols();
  for (Index n = 0; n < z.rows(); ++n) {
    const int c = labels[static_cast<std::size_t>(n)];
    if (c == ignore) {
      r.per_sample.push_back(0);
      continue;
    }
    long double smooth = 0;
    for (Index k = 0; k < C; ++k)
      smooth -= w[static_cast<std::size_t>(k)] * log_p(z, n, k);
    const long double l =
        (1 - static_cast<long double>(eps)) * w[static_cast<std::size_t>(c)] * -log_p(z, n, c)
        + eps / static_cast<long double>(C) * smooth;
    r.per_sample.push_back(l);
    r.sum += l;
    r.weight_sum += w[static_cast<std::size_t>(c)];
  }
  return r;
}

}  // namespace

TEST_CASE("cross-entropy class weights: hand-derived values", "[loss][cross_entropy][weight]") {
  // Equal logits: every log p = -log 4. Label 1 (weight 2), eps = 0.1, weights 1..4:
  //   l = 0.9 * 2 log 4 + 0.1 / 4 * (1 + 2 + 3 + 4) log 4 = 2.05 log 4; Mean divides by w_1 = 2.
  const Mat z = Mat::Zero(1, 4);
  const auto ce = sml::CrossEntropyLoss(sml::Reduction::Mean, 0.1).with_weight({1, 2, 3, 4});
  Mat g(1, 4);
  CHECK(ce(z, std::vector<int>{1}, g) == Approx(1.025 * std::log(4.0)).epsilon(1e-15));
  // gradient: (p sum_q - q) / 2 with q_k = w_k (0.9 [k = 1] + 0.025), sum_q = 1.8 + 0.25
  const double sum_q = 2.05;
  const double expected[4] = {(0.25 * sum_q - 0.025) / 2, (0.25 * sum_q - 2 * 0.925) / 2,
                              (0.25 * sum_q - 3 * 0.025) / 2, (0.25 * sum_q - 4 * 0.025) / 2};
  for (int k = 0; k < 4; ++k)
    CHECK(g(0, k) == Approx(expected[k]).epsilon(1e-15));
  // Two samples, no smoothing: weighted mean of the two NLLs, log 4 each -> log 4.
  const auto ce2 = sml::CrossEntropyLoss().with_weight({1, 2, 3, 4});
  CHECK(ce2(Mat::Zero(2, 4), std::vector<int>{0, 3}) == Approx(std::log(4.0)).epsilon(1e-15));
}

TEST_CASE("cross-entropy class weights follow PyTorch's Mean, smoothing and ignore_index",
          "[loss][cross_entropy][weight]") {
  const Mat z = softmaxlab_test::random_normal(7, 5, 31, 2.0);
  const std::vector<int> labels{0, 4, -100, 2, 2, 1, 3};
  const std::vector<double> w{0.5, 2.0, 1.0, 0.0, 3.0};
  for (double eps : {0.0, 0.1, 0.7}) {
    INFO("label smoothing " << eps);
    const TorchReference r = torch_labels(z, labels, w, eps);
    const auto mean = sml::CrossEntropyLoss(sml::Reduction::Mean, eps).with_weight(w);
    const auto sum = sml::CrossEntropyLoss(sml::Reduction::Sum, eps).with_weight(w);
    const auto none = sml::CrossEntropyLoss(sml::Reduction::None, eps).with_weight(w);
    CHECK(mean(z, labels) == Approx(static_cast<double>(r.sum / r.weight_sum)).epsilon(1e-14));
    CHECK(sum(z, labels) == Approx(static_cast<double>(r.sum)).epsilon(1e-14));
    Eigen::VectorXd losses(7);
    CHECK(none(z, labels, sml::RowOutputs().with_losses(losses))
          == Approx(static_cast<double>(r.sum)).epsilon(1e-14));
    for (Index n = 0; n < 7; ++n)
      CHECK(losses(n) == Approx(static_cast<double>(r.per_sample[n])).epsilon(1e-14).margin(0));
    CHECK(losses(2) == 0);
  }
  SECTION("target distributions: weights inside, Mean divides by N") {
    Mat t = softmaxlab_test::random_normal(7, 5, 32, 1.0).array().exp();
    for (Index n = 0; n < 7; ++n)
      t.row(n) /= t.row(n).sum();
    const double eps = 0.2;
    long double total = 0;
    for (Index n = 0; n < 7; ++n) {
      for (Index k = 0; k < 5; ++k) {
        const long double q = (1 - eps) * t(n, k) + eps / 5.0L;
        total -= w[static_cast<std::size_t>(k)] * q * log_p(z, n, k);
      }
    }
    const auto ce = sml::CrossEntropyLoss(sml::Reduction::Mean, eps).with_weight(w);
    CHECK(ce(z, t) == Approx(static_cast<double>(total / 7)).epsilon(1e-14));
  }
}

TEST_CASE("cross-entropy z-loss and log-sum-exp output", "[loss][cross_entropy][z_loss]") {
  const Mat z = softmaxlab_test::random_normal(5, 6, 41, 3.0);
  const std::vector<int> labels{1, 5, -100, 0, 2};
  const double lambda = 1e-2;
  const auto ce = sml::CrossEntropyLoss().with_z_loss(lambda);
  Eigen::VectorXd lse(5), losses(5);
  const double got = ce(z, labels, sml::RowOutputs().with_lse(lse).with_losses(losses));
  long double total = 0;
  for (Index n = 0; n < 5; ++n) {
    const long double l = lse_row(z, n);
    CHECK(lse(n) == Approx(static_cast<double>(l)).epsilon(1e-15));
    if (labels[static_cast<std::size_t>(n)] == -100) {
      CHECK(losses(n) == 0);
      continue;
    }
    const long double ln = -log_p(z, n, labels[static_cast<std::size_t>(n)]) + lambda * l * l;
    CHECK(losses(n) == Approx(static_cast<double>(ln)).epsilon(1e-14));
    total += ln;
  }
  CHECK(got == Approx(static_cast<double>(total / 4)).epsilon(1e-14));
  SECTION("hand-derived: equal logits 0 over 4 classes: lse = log 4") {
    const double l4 = std::log(4.0);
    Mat g(1, 4);
    CHECK(sml::CrossEntropyLoss().with_z_loss(0.5)(Mat::Zero(1, 4), std::vector<int>{0}, g)
          == Approx(l4 + 0.5 * l4 * l4).epsilon(1e-15));
    // d/dz_k = p_k - [k = 0] + 2 * 0.5 * lse * p_k
    CHECK(g(0, 0) == Approx(0.25 - 1 + l4 * 0.25).epsilon(1e-15));
    CHECK(g(0, 1) == Approx(0.25 + l4 * 0.25).epsilon(1e-15));
  }
}

TEST_CASE("cross-entropy options: gradients match finite differences",
          "[loss][cross_entropy][fd]") {
  const Mat z = softmaxlab_test::random_normal(5, 7, 51, 2.0);
  const std::vector<int> labels{3, 0, 6, -100, 3};
  Mat t = softmaxlab_test::random_normal(5, 7, 52, 1.0).array().exp();
  for (Index n = 0; n < 5; ++n)
    t.row(n) /= t.row(n).sum();
  const std::vector<double> w{1.0, 0.5, 2.0, 1.5, 0.25, 3.0, 1.0};
  double worst = 0;
  for (auto reduction : {sml::Reduction::Mean, sml::Reduction::Sum, sml::Reduction::None}) {
    for (double eps : {0.0, 0.15}) {
      const auto ce = sml::CrossEntropyLoss(reduction, eps).with_weight(w).with_z_loss(0.03);
      Mat g(5, 7);
      ce(z, labels, g);
      const Mat fd = fd_scalar_gradient([&](const Mat& v) { return ce(v, labels); }, z);
      worst = std::max(worst, fd_relative_error(g, fd, z));
      ce(z, t, g);
      const Mat fd2 = fd_scalar_gradient([&](const Mat& v) { return ce(v, t); }, z);
      worst = std::max(worst, fd_relative_error(g, fd2, z));
    }
  }
  INFO("worst relative error against finite differences: " << worst);
  CHECK(worst < 1e-6);
}

TEST_CASE("cross-entropy options: forms, no allocation and errors", "[loss][cross_entropy]") {
  const Mat z = softmaxlab_test::random_normal(4, 3, 61, 1.0);
  const Eigen::VectorXi labels = (Eigen::VectorXi(4) << 0, 2, 1, 1).finished();
  const auto ce =
      sml::CrossEntropyLoss(sml::Reduction::None).with_weight({1, 2, 3}).with_z_loss(1e-3);
  Mat g(4, 3), in_place = z;
  Eigen::VectorXd losses(4), lse(4);
  double a = 0, b = 0;
  {
    AllocationGuard guard;
    a = ce(z, labels, g, sml::RowOutputs().with_losses(losses).with_lse(lse));
    b = ce(in_place, labels, in_place);
    CHECK(guard.allocations() == 0);
  }
  CHECK(a == b);
  CHECK(softmaxlab_test::same(g, in_place));
  CHECK(losses.sum() == Approx(a).epsilon(1e-15));
  CHECK_THROWS_WITH(sml::CrossEntropyLoss().with_weight({1, 2})(z, labels),
                    Catch::Contains("weight") && Catch::Contains("3"));
  CHECK_THROWS_WITH(sml::CrossEntropyLoss().with_weight({1, -2, 1}),
                    Catch::Contains("weight") && Catch::Contains("-2"));
  CHECK_THROWS_WITH(sml::CrossEntropyLoss().with_z_loss(-1), Catch::Contains("z_loss"));
  Eigen::VectorXd short_losses(3);
  CHECK_THROWS_WITH(ce(z, labels, sml::RowOutputs().with_losses(short_losses)),
                    Catch::Contains("losses") && Catch::Contains("4"));
  CHECK_THROWS_WITH(sml::CrossEntropyLoss(static_cast<sml::Reduction>(9)),
                    Catch::Contains("reduction") && Catch::Contains("9"));
  SECTION("a zero weight sum gives 0 (PyTorch: NaN), and masked rows give an infinite z-loss") {
    CHECK(sml::CrossEntropyLoss().with_weight({0, 1, 1})(z, std::vector<int>{0, 0, 0, 0}) == 0);
    Mat masked = z;
    masked.row(0).setConstant(-kInf);
    CHECK(std::isinf(sml::CrossEntropyLoss().with_z_loss(1e-3)(masked, labels)));
  }
}
