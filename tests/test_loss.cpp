// Losses of loss.hpp: CrossEntropyLoss and L2SvmLoss against exact values (hand-computed constants
// and a direct long double evaluation of the formulas), every gradient against fourth-order
// central finite differences in double (relative error < 1e-6), the storage forms (in place,
// expressions, strided, no allocation), special values and bad parameters.
#include <cmath>
#include <limits>
#include <random>
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
const double kNaN = std::numeric_limits<double>::quiet_NaN();

Mat random_matrix(Index rows, Index cols, unsigned seed, double scale = 2.0) {
  return softmaxlab_test::random_normal(rows, cols, seed, scale);
}

// The cross-entropy of one row, straight from the formula in long double.
long double reference_ce_row(const Mat& z, Index n, const std::vector<long double>& q) {
  long double mx = -INFINITY;
  for (Index k = 0; k < z.cols(); ++k)
    mx = std::max<long double>(mx, z(n, k));
  long double sum = 0;
  for (Index k = 0; k < z.cols(); ++k)
    sum += std::exp(static_cast<long double>(z(n, k)) - mx);
  long double loss = 0;
  for (Index k = 0; k < z.cols(); ++k) {
    if (q[k] != 0)
      loss -= q[k] * (static_cast<long double>(z(n, k)) - mx - std::log(sum));
  }
  return loss;
}

std::vector<long double> label_q(Index classes, int label, double eps) {
  std::vector<long double> q(classes, eps / static_cast<long double>(classes));
  q[label] += 1 - static_cast<long double>(eps);
  return q;
}

}  // namespace

TEST_CASE("cross-entropy: exact values", "[loss][cross_entropy]") {
  SECTION("equal logits: log C for any label; gradient 1/C - onehot") {
    const Mat z = Mat::Zero(1, 4);
    Mat g(1, 4);
    const double loss = sml::CrossEntropyLoss()(z, std::vector<int>{2}, g);
    CHECK(loss == Approx(std::log(4.0)).epsilon(1e-15));
    CHECK(g(0, 0) == 0.25);
    CHECK(g(0, 2) == -0.75);
  }
  SECTION("labels, smoothing, ignore_index, Mean and Sum against the long double formula") {
    const Mat z = random_matrix(6, 5, 11);
    const Eigen::VectorXi labels = (Eigen::VectorXi(6) << 0, 4, -100, 2, 2, 1).finished();
    for (double eps : {0.0, 0.1, 0.9}) {
      long double sum = 0;
      for (Index n = 0; n < 6; ++n) {
        if (labels(n) != -100)
          sum += reference_ce_row(z, n, label_q(5, labels(n), eps));
      }
      INFO("label smoothing " << eps);
      const sml::CrossEntropyLoss mean(sml::Reduction::Mean, eps);
      const sml::CrossEntropyLoss total(sml::Reduction::Sum, eps);
      CHECK(mean(z, labels) == Approx(static_cast<double>(sum / 5)).epsilon(1e-14));
      CHECK(total(z, labels) == Approx(static_cast<double>(sum)).epsilon(1e-14));
    }
  }
  SECTION("target distributions, with smoothing") {
    const Mat z = random_matrix(3, 4, 12);
    Mat t = random_matrix(3, 4, 13).array().abs();
    t.col(1).setZero();
    for (Index n = 0; n < 3; ++n)
      t.row(n) /= t.row(n).sum();
    for (double eps : {0.0, 0.2}) {
      long double sum = 0;
      for (Index n = 0; n < 3; ++n) {
        std::vector<long double> q(4);
        for (Index k = 0; k < 4; ++k)
          q[k] = (1 - static_cast<long double>(eps)) * t(n, k) + eps / 4.0L;
        sum += reference_ce_row(z, n, q);
      }
      INFO("label smoothing " << eps);
      CHECK(sml::CrossEntropyLoss(sml::Reduction::Mean, eps)(z, t)
            == Approx(static_cast<double>(sum / 3)).epsilon(1e-14));
    }
  }
  SECTION("a distribution target equal to a one-hot gives the label's loss") {
    const Mat z = random_matrix(2, 3, 14);
    Mat t = Mat::Zero(2, 3);
    t(0, 1) = t(1, 2) = 1;
    Mat g1(2, 3), g2(2, 3);
    const sml::CrossEntropyLoss ce;
    CHECK(ce(z, t, g1) == Approx(ce(z, std::vector<int>{1, 2}, g2)).epsilon(1e-15));
    CHECK((g1 - g2).cwiseAbs().maxCoeff() <= 1e-16);
  }
}

TEST_CASE("cross-entropy gradients match finite differences", "[loss][cross_entropy][fd]") {
  const Mat z = random_matrix(5, 7, 21);
  const std::vector<int> labels{3, 0, 6, -1, 3};
  Mat t = random_matrix(5, 7, 22).array().exp();
  for (Index n = 0; n < 5; ++n)
    t.row(n) /= t.row(n).sum();
  Mat masked = z;
  masked(0, 1) = masked(2, 4) = -kInf;  // never the label
  for (auto reduction : {sml::Reduction::Mean, sml::Reduction::Sum}) {
    for (double eps : {0.0, 0.15}) {
      const sml::CrossEntropyLoss ce(reduction, eps, -1);
      INFO("reduction " << static_cast<int>(reduction) << ", smoothing " << eps);
      Mat g(5, 7);
      ce(z, labels, g);
      auto fd = fd_scalar_gradient([&](const Mat& v) { return ce(v, labels); }, z);
      CHECK(fd_relative_error(g, fd, z) < 1e-6);
      CHECK(g.row(3).isZero());  // ignored sample
      ce(z, t, g);
      fd = fd_scalar_gradient([&](const Mat& v) { return ce(v, t); }, z);
      CHECK(fd_relative_error(g, fd, z) < 1e-6);
      if (eps == 0.0) {  // with smoothing a masked class makes the loss infinite
        ce(masked, labels, g);
        fd = fd_scalar_gradient([&](const Mat& v) { return ce(v, labels); }, masked);
        CHECK(fd_relative_error(g, fd, masked) < 1e-6);
        CHECK(g(0, 1) == 0.0);
        CHECK(g(2, 4) == 0.0);
      }
    }
  }
}

TEMPLATE_TEST_CASE("cross-entropy storage forms: in place, expressions, strided, no allocation",
                   "[loss][cross_entropy][forms]", float, double) {
  using M = Eigen::Matrix<TestType, Eigen::Dynamic, Eigen::Dynamic>;
  using RM = Eigen::Matrix<TestType, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const M z = random_matrix(8, 600, 31, 4.0).cast<TestType>();
  Eigen::VectorXi labels(8);
  labels << 5, 17, 599, 0, 42, 42, 300, 1;
  const sml::CrossEntropyLoss ce(sml::Reduction::Mean, 0.05);
  M g(8, 600);
  const double loss = ce(z, labels, g);
  CHECK(ce(z, labels) == Approx(loss).epsilon(1e-12));
  // Each gradient row sums to 0 (p sums to 1, q sums to 1).
  CHECK(g.rowwise().sum().cwiseAbs().maxCoeff() <= 1e-6);
  // Against the double computation.
  Mat gd(8, 600);
  const double loss_d = ce(z.template cast<double>(), labels, gd);
  const double eps = std::numeric_limits<TestType>::epsilon();
  CHECK(std::fabs(loss - loss_d) <= 16 * eps * loss_d);
  CHECK((g.template cast<double>() - gd).cwiseAbs().maxCoeff() <= 16 * eps / 8);

  SECTION("in place and from an expression (exp recomputed per entry: last-bit differences)") {
    M inplace = z;
    CHECK(ce(inplace, labels, inplace) == loss);
    CHECK((inplace - g).cwiseAbs().maxCoeff() <= 4 * eps);
    M out(8, 600);
    CHECK(ce(z * TestType(1), labels, out) == loss);
    CHECK((out - g).cwiseAbs().maxCoeff() <= 4 * eps);
  }
  SECTION("row-major storage and a block output") {
    const RM zr = z;
    RM gr(8, 600);
    CHECK(ce(zr, labels, gr) == Approx(loss).epsilon(1e-12));
    CHECK((M(gr) - g).cwiseAbs().maxCoeff() <= 4 * eps);
    M big = M::Zero(10, 600);
    ce(z, labels, big.middleRows(1, 8));
    CHECK(big.middleRows(1, 8) == g);
  }
  SECTION("no allocation with storage inputs (labels as VectorXi or std::vector)") {
    const std::vector<int> vlabels(labels.data(), labels.data() + labels.size());
    M t = M::Zero(8, 600);
    t.col(3).setOnes();
    std::size_t allocations = 0;
    {
      AllocationGuard guard;
      ce(z, labels, g);
      ce(z, vlabels, g);
      ce(z, t, g);
      ce(z, labels);
      ce(z * TestType(2), labels, g);
      allocations = guard.allocations();
    }
    CHECK(allocations == 0);
  }
}

TEST_CASE("cross-entropy special values, shapes and bad parameters", "[loss][cross_entropy]") {
  const sml::CrossEntropyLoss ce;
  Mat z = random_matrix(3, 4, 41);
  Mat g(3, 4);
  SECTION("NaN logit: NaN loss, NaN gradient row") {
    z(1, 2) = kNaN;
    CHECK(std::isnan(ce(z, std::vector<int>{0, 1, 2}, g)));
    CHECK(g.row(1).array().isNaN().all());
    CHECK(g.row(0).allFinite());
  }
  SECTION("masked label: infinite loss; all ignored: 0 and a zero gradient") {
    z(0, 3) = -kInf;
    CHECK(ce(z, std::vector<int>{3, 0, 0}) == kInf);
    CHECK(ce(z, std::vector<int>{-100, -100, -100}, g) == 0.0);
    CHECK(g.isZero());
    CHECK(sml::CrossEntropyLoss(sml::Reduction::Mean, 0.1)(z, std::vector<int>{0, 0, 0}) == kInf);
  }
  SECTION("empty batch") {
    CHECK(ce(Mat(0, 4), std::vector<int>{}) == 0.0);
  }
  SECTION("errors name the parameter and the value") {
    CHECK_THROWS_WITH(ce(z, std::vector<int>{0, 4, 1}),
                      Catch::Contains("label 4") && Catch::Contains("sample 1"));
    CHECK_THROWS_WITH(ce(z, std::vector<int>{0, 1}), Catch::Contains("labels")
                                                         && Catch::Contains("(3)")
                                                         && Catch::Contains("got 2"));
    Mat wrong(4, 3);
    CHECK_THROWS_WITH(ce(z, std::vector<int>{0, 1, 2}, wrong),
                      Catch::Contains("grad") && Catch::Contains("4 x 3"));
    CHECK_THROWS_WITH(ce(z, Mat(3, 5)), Catch::Contains("targets"));
    for (double eps : {-0.1, 1.0, kNaN}) {
      INFO("smoothing " << eps);
      CHECK_THROWS_WITH(sml::CrossEntropyLoss(sml::Reduction::Mean, eps),
                        Catch::Contains("label_smoothing"));
    }
    CHECK_THROWS_WITH(sml::CrossEntropyLoss(static_cast<sml::Reduction>(7)),
                      Catch::Contains("reduction") && Catch::Contains("7"));
    Mat overlap = Mat::Zero(4, 4);
    CHECK_THROWS_WITH(ce(overlap.topRows(3), std::vector<int>{0, 0, 0}, overlap.bottomRows(3)),
                      Catch::Contains("overlaps"));
  }
}

TEST_CASE("L2-SVM: exact values, gradients against finite differences, prediction", "[loss][svm]") {
  SECTION("hinge by hand") {
    // y = (+1, -1, -1); margins max(0, 1 - y o) = (0.5, 0, 1.3); C = 2.
    Mat o(1, 3);
    o << 0.5, -2.0, 0.3;
    Mat d(1, 3);
    const sml::L2SvmLoss svm(2.0);
    CHECK(svm.hinge(o, std::vector<int>{0}, d) == Approx(2.0 * (0.25 + 1.69)).epsilon(1e-15));
    CHECK(d(0, 0) == -2.0);
    CHECK(d(0, 1) == 0.0);
    CHECK(d(0, 2) == Approx(5.2).epsilon(1e-15));
  }
  SECTION("hinge and layer gradients against finite differences") {
    const Mat x = random_matrix(9, 4, 51);
    const Mat w = random_matrix(4, 3, 52, 0.5);
    const Eigen::VectorXd b = random_matrix(3, 1, 53, 0.5);
    const Eigen::VectorXi labels = (Eigen::VectorXi(9) << 0, 1, 2, 2, 1, 0, 0, 2, 1).finished();
    const sml::L2SvmLoss svm(0.7);
    const Mat o = x * w;
    Mat d_o(9, 3);
    svm.hinge(o, labels, d_o);
    auto fd_o = fd_scalar_gradient([&](const Mat& v) { return svm.hinge(v, labels); }, o);
    CHECK(fd_relative_error(d_o, fd_o, o) < 1e-6);

    Mat dw(4, 3);
    Eigen::VectorXd db(3);
    const double loss = svm(x, w, b, labels, dw, db);
    Mat ob = o;
    for (Index k = 0; k < 3; ++k)
      ob.col(k).array() += b(k);
    CHECK(loss == Approx(0.5 * w.squaredNorm() + svm.hinge(ob, labels)).epsilon(1e-15));
    CHECK(svm(x, w, b, labels) == loss);
    auto fd_w = fd_scalar_gradient([&](const Mat& v) { return svm(x, v, b, labels); }, w);
    CHECK(fd_relative_error(dw, fd_w, w) < 1e-6);
    const Eigen::VectorXd fd_b =
        fd_scalar_gradient([&](const Eigen::VectorXd& v) { return svm(x, w, v, labels); }, b);
    CHECK(fd_relative_error(db, fd_b, b) < 1e-6);
  }
  SECTION("in place hinge gradient, no allocation") {
    const Mat o = random_matrix(5, 4, 54);
    const std::vector<int> labels{0, 1, 2, 3, 0};
    const sml::L2SvmLoss svm;
    Mat d(5, 4);
    const double h = svm.hinge(o, labels, d);
    Mat inplace = o;
    std::size_t allocations = 0;
    {
      AllocationGuard guard;
      CHECK(svm.hinge(inplace, labels, inplace) == h);
      allocations = guard.allocations();
    }
    CHECK(allocations == 0);
    CHECK(inplace == d);
  }
  SECTION("prediction: argmax, first on ties, -1 for NaN rows") {
    Mat o(4, 3);
    o << 0, 2, 1,    //
        5, 5, -1,    //
        0, kNaN, 9,  //
        -kInf, -3, -kInf;
    const Eigen::VectorXi c = sml::L2SvmLoss::predict(o);
    CHECK(c(0) == 1);
    CHECK(c(1) == 0);
    CHECK(c(2) == -1);
    CHECK(c(3) == 1);
    Mat nan_out = o;
    Mat d(4, 3);
    CHECK(std::isnan(sml::L2SvmLoss().hinge(nan_out, std::vector<int>{0, 0, 0, 0}, d)));
    CHECK(std::isnan(d(2, 1)));
  }
  SECTION("bad parameters and shapes") {
    for (double c : {0.0, -1.0, kNaN, kInf}) {
      INFO("penalty " << c);
      CHECK_THROWS_WITH(sml::L2SvmLoss(c), Catch::Contains("L2SvmLoss: penalty"));
    }
    const Mat o = Mat::Zero(2, 3);
    CHECK_THROWS_WITH(sml::L2SvmLoss().hinge(o, std::vector<int>{0, 3}),
                      Catch::Contains("label 3"));
    CHECK_THROWS_WITH(sml::L2SvmLoss()(Mat::Zero(2, 4), Mat::Zero(3, 3), Eigen::VectorXd::Zero(3),
                                       std::vector<int>{0, 1}),
                      Catch::Contains("do not chain"));
    CHECK_THROWS_WITH(sml::L2SvmLoss()(Mat::Zero(2, 3), Mat::Zero(3, 3), Eigen::VectorXd::Zero(2),
                                       std::vector<int>{0, 1}),
                      Catch::Contains("b must have"));
  }
}
