// Backward passes and losses of GumbelSoftmax and NormalizedSoftmax: the soft sample's gradient
// (noise held fixed by replaying a copied generator) and the straight-through hard mode,
// NormalizedSoftmax's gradients with respect to E and W through the L2 normalization and every
// margin, the normalized-softmax loss and the Sparse-CBM Gumbel loss: against fourth-order central
// finite differences in double (relative error < 1e-6) and against exact values.
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include <catch2/catch.hpp>

#include <softmaxlab/gumbel.hpp>
#include <softmaxlab/loss.hpp>
#include <softmaxlab/normalized.hpp>
#include <softmaxlab/random.hpp>
#include <softmaxlab/softmax.hpp>

#include "support.hpp"

namespace sml = softmaxlab;
using Index = Eigen::Index;
using Vec = Eigen::VectorXd;
using Mat = Eigen::MatrixXd;
using softmaxlab_test::AllocationGuard;
using softmaxlab_test::fd_relative_error;
using softmaxlab_test::fd_scalar_gradient;

namespace {

const double kInf = std::numeric_limits<double>::infinity();

Mat random_matrix(Index rows, Index cols, unsigned seed, double scale = 1.0) {
  return softmaxlab_test::random_normal(rows, cols, seed, scale);
}

}  // namespace

TEST_CASE("GumbelSoftmax backward: soft sample against finite differences with the noise fixed",
          "[backward][gumbel][fd]") {
  const sml::Philox4x32 start(2024, 7);
  for (double tau : {1.0, 0.5, 2.0}) {
    const sml::GumbelSoftmax g(tau);
    for (int r = 0; r < 4; ++r) {
      Vec x = random_matrix(6 + 4 * r, 1, 10 + r, 2.0);
      if (r == 2)
        x(1) = x(4) = -kInf;  // masked
      if (r == 3)
        x.setConstant(0.5);  // all equal
      const Vec dy = random_matrix(x.size(), 1, 50 + r);
      auto gen = start;
      const Vec y = g(x, gen);
      const Vec dx = g.backward(x, y, dy);
      const Vec fd = fd_scalar_gradient(
          [&](const Vec& v) {
            auto replay = start;
            return dy.dot(g(v, replay));
          },
          x);
      INFO("tau " << tau << ", row " << r);
      CHECK(fd_relative_error(dx, fd, x) < 1e-6);
      for (Index i = 0; i < x.size(); ++i) {
        if (x(i) == -kInf)
          CHECK(dx(i) == 0.0);
      }
    }
  }
}

TEST_CASE("GumbelSoftmax hard mode: straight-through with the soft sample replayed from the noise",
          "[backward][gumbel]") {
  const sml::GumbelSoftmax hard(0.7, true);
  const Mat x = random_matrix(5, 12, 3, 2.0);
  const Mat dy = random_matrix(5, 12, 4);
  sml::Philox4x32 gen(99);
  const sml::Philox4x32 saved = gen;
  const Mat y_hard = hard.rowwise(x, gen);
  auto replay = saved;
  const Mat y_soft = sml::GumbelSoftmax(hard.tau()).rowwise(x, replay);
  for (Index n = 0; n < x.rows(); ++n) {
    Index hot = 0, best = 0;
    y_hard.row(n).maxCoeff(&hot);
    y_soft.row(n).maxCoeff(&best);
    CHECK(hot == best);  // the same noise: the one-hot is the soft sample's argmax
  }
  const Mat dx = hard.rowwise_backward(x, y_soft, dy);
  const Mat expected = sml::Softmax(0.7).rowwise_backward(x, y_soft, dy);
  CHECK((dx - expected).cwiseAbs().maxCoeff() <= 1e-15);
  Mat out(5, 12);
  std::size_t allocations = 0;
  {
    AllocationGuard guard;
    hard.rowwise_backward(x, y_soft, dy, out);
    allocations = guard.allocations();
  }
  CHECK(allocations == 0);
  CHECK(out == dx);
}

TEST_CASE("NormalizedSoftmax backward: dE and dW against finite differences for every margin",
          "[backward][normalized][fd]") {
  const Mat e = random_matrix(6, 4, 21), w = random_matrix(5, 4, 22), dz = random_matrix(6, 5, 23);
  Eigen::VectorXi labels(6);
  labels << 0, 4, 2, 2, 1, 3;
  const std::vector<sml::Margin> margins{sml::Margin::none(),        sml::Margin::cosface(0.35),
                                         sml::Margin::arcface(0.5),  sml::Margin::arcface(1.4),
                                         sml::Margin::sphereface(1), sml::Margin::sphereface(4)};
  for (const auto& margin : margins) {
    const sml::NormalizedSoftmax ns(8.0, margin);
    INFO("margin kind " << static_cast<int>(margin.kind) << ", m = " << margin.m);
    auto dot = [&](const Mat& z) {
      return (dz.array() * z.array()).sum();
    };
    const auto [de, dw] = ns.logits_backward(e, w, labels, dz);
    const Mat fe =
        fd_scalar_gradient([&](const Mat& v) { return dot(ns.logits(v, w, labels)); }, e, 1e-4);
    const Mat fw =
        fd_scalar_gradient([&](const Mat& v) { return dot(ns.logits(e, v, labels)); }, w, 1e-4);
    CHECK(fd_relative_error(de, fe, e) < 1e-6);
    CHECK(fd_relative_error(dw, fw, w) < 1e-6);
    // Through the softmax: P = ns(E, W, labels), upstream dP.
    const Mat p = ns(e, w, labels);
    const auto [de2, dw2] = ns.backward(e, w, labels, p, dz);
    const Mat fe2 =
        fd_scalar_gradient([&](const Mat& v) { return dot(ns(v, w, labels)); }, e, 1e-4);
    const Mat fw2 =
        fd_scalar_gradient([&](const Mat& v) { return dot(ns(e, v, labels)); }, w, 1e-4);
    CHECK(fd_relative_error(de2, fe2, e) < 1e-6);
    CHECK(fd_relative_error(dw2, fw2, w) < 1e-6);
  }
  SECTION("no labels: no margin; a zero embedding gets 0, a NaN one NaN; shapes") {
    const sml::NormalizedSoftmax ns(5.0, sml::Margin::arcface(0.5));
    Mat e0 = e;
    e0.row(2).setZero();
    e0(4, 1) = std::numeric_limits<double>::quiet_NaN();
    const auto [de, dw] = ns.logits_backward(e0, w, dz);
    CHECK(de.row(2).isZero());
    CHECK(de.row(4).array().isNaN().all());
    CHECK(de.row(0).allFinite());
    const auto [de_plain, dw_plain] = sml::NormalizedSoftmax(5.0).logits_backward(e, w, dz);
    const auto [de_nolabel, dw_nolabel] = ns.logits_backward(e, w, dz);
    CHECK(de_plain == de_nolabel);
    CHECK_THROWS_WITH(ns.logits_backward(e, w, Mat(6, 4)), Catch::Contains("dZ"));
  }
}

TEST_CASE("NormalizedSoftmaxLoss: exact value and gradients", "[loss][normalized][fd]") {
  const Mat e = random_matrix(7, 3, 31), w = random_matrix(4, 3, 32);
  const std::vector<int> labels{0, 3, 2, 1, 1, 0, 3};
  const Eigen::VectorXi labels_i = Eigen::Map<const Eigen::VectorXi>(labels.data(), 7);
  for (const auto& margin :
       {sml::Margin::cosface(0.2), sml::Margin::arcface(0.5), sml::Margin::sphereface(2)}) {
    const sml::NormalizedSoftmax head(10.0, margin);
    const sml::NormalizedSoftmaxLoss nsl(head, sml::Reduction::Mean, 0.1);
    INFO("margin kind " << static_cast<int>(margin.kind));
    const double expected =
        sml::CrossEntropyLoss(sml::Reduction::Mean, 0.1)(head.logits(e, w, labels_i), labels);
    CHECK(nsl(e, w, labels) == expected);
    CHECK(nsl(e, w, labels_i) == expected);
    Mat de(7, 3), dw(4, 3);
    CHECK(nsl(e, w, labels, de, dw) == expected);
    const Mat fe = fd_scalar_gradient([&](const Mat& v) { return nsl(v, w, labels); }, e, 1e-4);
    const Mat fw = fd_scalar_gradient([&](const Mat& v) { return nsl(e, v, labels); }, w, 1e-4);
    CHECK(fd_relative_error(de, fe, e) < 1e-6);
    CHECK(fd_relative_error(dw, fw, w) < 1e-6);
  }
  Mat wrong(3, 3), dw(4, 3);
  CHECK_THROWS_WITH(sml::NormalizedSoftmaxLoss()(e, w, labels, wrong, dw), Catch::Contains("dE"));
}

TEST_CASE("SparseCbmGumbelLoss: exact value, gradient, storage forms, parameters",
          "[loss][gumbel][fd]") {
  const Mat x = random_matrix(4, 9, 41, 2.0);
  const sml::Philox4x32 start(5, 1);
  for (double tau : {1.0, 0.4}) {
    const sml::SparseCbmGumbelLoss cbm(tau);
    INFO("tau " << tau);
    // Exact: -mean log of the soft Gumbel sample drawn from the same generator state.
    auto replay = start;
    const Mat y = sml::GumbelSoftmax(tau).rowwise(x, replay);
    const double expected = -y.array().log().mean();
    auto gen = start;
    CHECK(cbm(x, gen) == Approx(expected).epsilon(1e-13));
    Mat grad(4, 9);
    gen = start;
    CHECK(cbm(x, gen, grad) == Approx(expected).epsilon(1e-13));
    const Mat expected_grad = (9 * y.array() - 1) / (36 * tau);
    CHECK((grad - expected_grad).cwiseAbs().maxCoeff() <= 1e-15);
    const Mat fd = fd_scalar_gradient(
        [&](const Mat& v) {
          auto g = start;
          return cbm(v, g);
        },
        x);
    CHECK(fd_relative_error(grad, fd, x) < 1e-6);
    Mat inplace = x;
    gen = start;
    CHECK(cbm(inplace, gen, inplace) == Approx(expected).epsilon(1e-13));
    CHECK((inplace - grad).cwiseAbs().maxCoeff() <= 1e-15);
  }
  const sml::SparseCbmGumbelLoss cbm;
  Mat grad(4, 9);
  auto gen = start;
  std::size_t allocations = 0;
  {
    AllocationGuard guard;
    cbm(x, gen, grad);
    allocations = guard.allocations();
  }
  CHECK(allocations == 0);
  for (double t : {0.0, -1.0, kInf, std::numeric_limits<double>::quiet_NaN()})
    CHECK_THROWS_WITH(sml::SparseCbmGumbelLoss(t), Catch::Contains("SparseCbmGumbelLoss: tau"));
  Mat wrong(3, 9);
  CHECK_THROWS_WITH(cbm(x, gen, wrong), Catch::Contains("grad"));
  CHECK(cbm(Mat(0, 3), gen) == 0.0);
}
