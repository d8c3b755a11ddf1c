// SurfaceFusion (fusion.hpp): hard and soft fusion against exact values and properties, both
// backward passes against fourth-order central finite differences in double (relative error
// < 1e-6) on random rows and edge rows (masked entries in either input, a dominant entry, all
// equal), the call forms (rowwise/colwise, strided, in place, expressions, no allocation), shapes
// and bad parameters.
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include <softmaxlab/fusion.hpp>
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

Vec random_vec(Index n, unsigned seed, double scale = 2.0) {
  return softmaxlab_test::random_normal(n, 1, seed, scale);
}

struct Case {
  std::string label;
  Vec tgt, src;
};

std::vector<Case> cases() {
  std::vector<Case> out;
  for (unsigned r = 0; r < 3; ++r)
    out.push_back({"random " + std::to_string(r), random_vec(6 + 5 * r, 10 + r),
                   random_vec(6 + 5 * r, 20 + r)});
  Case masked{"masked entries in tgt and src", random_vec(9, 31), random_vec(9, 32)};
  masked.tgt(1) = masked.tgt(5) = -kInf;
  masked.src(5) = masked.src(7) = -kInf;
  out.push_back(masked);
  Case dominant{"dominant entry", random_vec(8, 33, 0.1), random_vec(8, 34, 0.1)};
  dominant.tgt(3) = 10;
  dominant.src(6) = 10;
  out.push_back(dominant);
  out.push_back({"all equal", Vec::Constant(7, 0.5), Vec::Constant(7, -1.25)});
  return out;
}

// Checks f.backward against finite differences of <dy, f(tgt, src)> in tgt and in src.
template <class F>
void check_fusion_fd(const F& f, const std::string& what) {
  unsigned seed = 100;
  for (const auto& c : cases()) {
    const Vec y = f(c.tgt, c.src);
    const Vec dy = random_vec(y.size(), seed++, 1.0);
    const auto [dtgt, dsrc] = f.backward(c.tgt, c.src, y, dy);
    auto dot = [&](const Vec& out) {
      double s = 0;
      for (Index i = 0; i < out.size(); ++i) {
        if (std::isfinite(out(i)))
          s += dy(i) * out(i);
      }
      return s;
    };
    const Vec fd_t = fd_scalar_gradient([&](const Vec& t) { return dot(f(t, c.src)); }, c.tgt);
    const Vec fd_s = fd_scalar_gradient([&](const Vec& s) { return dot(f(c.tgt, s)); }, c.src);
    INFO(what << ", " << c.label);
    const double et = fd_relative_error(dtgt, fd_t, c.tgt);
    const double es = fd_relative_error(dsrc, fd_s, c.src);
    INFO("relative errors: dtgt " << et << ", dsrc " << es);
    CHECK(et < 1e-6);
    CHECK(es < 1e-6);
    for (Index i = 0; i < y.size(); ++i) {
      if (c.tgt(i) == -kInf)
        CHECK(dtgt(i) == 0.0);
      if (c.src(i) == -kInf)
        CHECK(dsrc(i) == 0.0);
    }
  }
}

}  // namespace

TEST_CASE("fusion: exact values and properties", "[fusion]") {
  Vec tgt(2), src(2);
  tgt << 0.0, 0.0;
  src << 0.0, std::log(3.0);
  SECTION("hard: lambda log_softmax(tgt) + (1 - lambda) log_softmax(src), not renormalized") {
    const Vec y = sml::HardFusion()(tgt, src);
    const long double l2 = std::log(2.0L);
    CHECK(y(0) == Approx(static_cast<double>(-0.8L * l2 + 0.2L * std::log(0.25L))).epsilon(1e-15));
    CHECK(y(1) == Approx(static_cast<double>(-0.8L * l2 + 0.2L * std::log(0.75L))).epsilon(1e-15));
    CHECK(y.array().exp().sum() < 1.0);  // a weighted geometric mean
    const Vec a = random_vec(11, 1), b = random_vec(11, 2);
    CHECK(sml::HardFusion(1.0)(a, b) == sml::LogSoftmax()(a));
    CHECK(sml::HardFusion(0.0)(a, b) == sml::LogSoftmax()(b));
    Vec b_masked = b;
    b_masked(3) = -kInf;
    CHECK(sml::HardFusion(1.0)(a, b_masked) == sml::LogSoftmax()(a));  // zero weight: dropped
  }
  SECTION("soft: log_softmax(tgt + log_softmax(tau src)), normalized") {
    const Vec y = sml::SoftFusion()(tgt, src);
    CHECK(y(0) == Approx(std::log(0.25)).epsilon(1e-15));
    CHECK(y(1) == Approx(std::log(0.75)).epsilon(1e-15));
    const Vec y2 = sml::SoftFusion(2.0)(tgt, src);  // softmax(0, 2 log 3) = (1/10, 9/10)
    CHECK(y2(0) == Approx(std::log(0.1)).epsilon(1e-15));
    CHECK(y2(1) == Approx(std::log(0.9)).epsilon(1e-15));
    const Vec a = random_vec(300, 3, 5.0), b = random_vec(300, 4, 5.0);
    CHECK(sml::SoftFusion(0.7)(a, b).array().exp().sum() == Approx(1.0).epsilon(1e-14));
  }
  SECTION("special values") {
    const Vec a = random_vec(5, 5), b = random_vec(5, 6);
    Vec am = a;
    am(2) = -kInf;
    CHECK(sml::HardFusion()(am, b)(2) == -kInf);
    CHECK(sml::SoftFusion()(b, am)(2) == -kInf);
    CHECK(std::isfinite(sml::SoftFusion()(b, am)(1)));
    Vec an = a;
    an(4) = std::numeric_limits<double>::quiet_NaN();
    CHECK(sml::HardFusion()(a, an).array().isNaN().all());
    CHECK(sml::SoftFusion()(an, b).array().isNaN().all());
    CHECK(sml::SoftFusion()(a, an).array().isNaN().all());
  }
}

TEST_CASE("fusion backward matches finite differences in double", "[fusion][fd]") {
  for (double lambda : {0.8, 0.3, 1.0})
    check_fusion_fd(sml::HardFusion(lambda), "hard, lambda " + std::to_string(lambda));
  for (double tau : {1.0, 0.5, 2.0})
    check_fusion_fd(sml::SoftFusion(tau), "soft, tau " + std::to_string(tau));
}

TEMPLATE_TEST_CASE("fusion forms: rowwise/colwise, strided, in place, expressions, no allocation",
                   "[fusion][forms]", float, double) {
  using V = Eigen::Matrix<TestType, Eigen::Dynamic, 1>;
  using M = Eigen::Matrix<TestType, Eigen::Dynamic, Eigen::Dynamic>;
  const M t = M::Random(5, 33) * 4, s = M::Random(5, 33) * 4, dy = M::Random(5, 33);
  const sml::HardFusion hard;
  const sml::SoftFusion soft(1.5);
  const M yh = hard.rowwise(t, s);  // rows of column-major matrices: strided
  const M ys = soft.colwise(t, s);
  const auto [dth, dsh] = hard.rowwise_backward(t, s, yh, dy);
  const auto [dts, dss] = soft.colwise_backward(t, s, ys, dy);
  const TestType tol = 64 * std::numeric_limits<TestType>::epsilon();
  for (Index i = 0; i < t.rows(); ++i) {
    const V ti = t.row(i).transpose(), si = s.row(i).transpose(), dyi = dy.row(i).transpose();
    const V yi = hard(ti, si);
    CHECK((yh.row(i).transpose() - yi).cwiseAbs().maxCoeff() <= tol);
    const auto [a, b] = hard.backward(ti, si, yi, dyi);
    CHECK((dth.row(i).transpose() - a).cwiseAbs().maxCoeff() <= tol);
    CHECK((dsh.row(i).transpose() - b).cwiseAbs().maxCoeff() <= tol);
  }
  for (Index j = 0; j < t.cols(); ++j) {
    const V tj = t.col(j), sj = s.col(j), dyj = dy.col(j);
    const V yj = soft(tj, sj);
    CHECK((ys.col(j) - yj).cwiseAbs().maxCoeff() <= tol);
    const auto [a, b] = soft.backward(tj, sj, yj, dyj);
    CHECK((dts.col(j) - a).cwiseAbs().maxCoeff() <= tol);
    CHECK((dss.col(j) - b).cwiseAbs().maxCoeff() <= tol);
  }
  SECTION("in place (y is tgt or src) and from an expression") {
    M inplace = t;
    hard.rowwise(inplace, s, inplace);
    CHECK(inplace == yh);
    M src_then_y = s;
    soft.colwise(t, src_then_y, src_then_y);
    CHECK(src_then_y == ys);
    M out(5, 33);
    soft.colwise(t * TestType(1), s, out);
    CHECK(out == ys);
    CHECK_THROWS_WITH(soft.colwise(t * TestType(1), out, out), Catch::Contains("share storage"));
  }
  SECTION("the forms writing into their outputs never allocate") {
    M y(5, 33), dt(5, 33), ds(5, 33);
    std::size_t allocations = 0;
    {
      AllocationGuard guard;
      hard.rowwise(t, s, y);
      hard.rowwise_backward(t, s, y, dy, dt, ds);
      soft.colwise(t, s * TestType(2), y);
      soft.colwise_backward(t, s, ys, dy, dt, ds);
      soft.apply(t.row(1), s.row(1), y.row(1));
      soft.backward(t.row(1), s.row(1), ys.row(1), dy.row(1), dt.row(1), ds.row(1));
      allocations = guard.allocations();
    }
    CHECK(allocations == 0);
  }
}

TEST_CASE("fusion shapes, overlaps and bad parameters", "[fusion][parameters]") {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (double l : {-0.1, 1.5, nan}) {
    INFO("lambda " << l);
    CHECK_THROWS_WITH(sml::HardFusion(l), Catch::Contains("HardFusion: lambda"));
  }
  for (double t : {0.0, -1.0, nan, kInf, 1e-40}) {
    INFO("tau " << t);
    CHECK_THROWS_WITH(sml::SoftFusion(t), Catch::Contains("SoftFusion: tau"));
  }
  CHECK(sml::HardFusion().lambda() == 0.8);
  CHECK(sml::SoftFusion().tau() == 1.0);
  const Vec a = Vec::Zero(4), b = Vec::Zero(5);
  CHECK_THROWS_WITH(sml::HardFusion()(a, b), Catch::Contains("src") && Catch::Contains("4"));
  Vec y(3);
  CHECK_THROWS_WITH(sml::SoftFusion().apply(a, a, y), Catch::Contains("y"));
  Vec d1(4), d2(4);
  CHECK_THROWS_WITH(sml::SoftFusion().backward(a, a, a, a, d1, d1),
                    Catch::Contains("must not share storage"));
  Vec dy = Vec::Ones(4);
  CHECK_THROWS_WITH(sml::SoftFusion().backward(a, a, a, dy, dy, d2),
                    Catch::Contains("must not share storage"));
  CHECK(sml::HardFusion()(Vec(), Vec()).size() == 0);
  CHECK(sml::SoftFusion().rowwise(Mat(0, 3), Mat(0, 3)).rows() == 0);
}
