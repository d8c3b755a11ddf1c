// Backward passes of Softmax and LogSoftmax: every vector-Jacobian product against central finite
// differences of the forward functor in double precision (relative error < 1e-6 of the gradient's
// largest entry) on random rows and on edge rows (masked entries, a dominant entry, all equal),
// then the call forms of detail/backward_base.hpp: rowwise/colwise, strided rows, expressions, in
// place, no allocation, shape errors, empty inputs, special values.
#include <cmath>
#include <limits>
#include <random>
#include <string>

#include <catch2/catch.hpp>

#include <softmaxlab/softmax.hpp>

#include "support.hpp"

namespace sml = softmaxlab;
using Index = Eigen::Index;
using Vec = Eigen::VectorXd;
using Mat = Eigen::MatrixXd;
using softmaxlab_test::AllocationGuard;
using softmaxlab_test::fd_gradient;
using softmaxlab_test::fd_relative_error;

namespace {

const double kInf = std::numeric_limits<double>::infinity();

// The rows every backward is checked on: random, masked entries, a dominant entry (by 12
// temperatures: the others get ~e^-12, where finite differences still resolve them), all equal.
std::vector<std::pair<std::string, Vec>> test_rows(double t = 1.0) {
  std::mt19937 gen(20240611);
  std::normal_distribution<double> normal(0.0, 2.0);
  std::vector<std::pair<std::string, Vec>> rows;
  for (int r = 0; r < 4; ++r) {
    Vec x(5 + 6 * r);
    for (Index i = 0; i < x.size(); ++i)
      x(i) = normal(gen);
    rows.emplace_back("random row " + std::to_string(r), x);
  }
  Vec masked = rows[1].second;
  masked(0) = masked(4) = masked(7) = -kInf;
  rows.emplace_back("masked entries", masked);
  Vec dominant = rows[0].second * 0.1;
  dominant(2) = 12.0 * t;
  rows.emplace_back("dominant entry", dominant);
  rows.emplace_back("all equal", Vec::Constant(9, 0.75));
  return rows;
}

Vec random_dy(Index n, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  Vec dy(n);
  for (Index i = 0; i < n; ++i)
    dy(i) = u(gen);
  return dy;
}

template <class F>
void check_backward_against_fd(const F& f) {
  for (double t : {1.0, 0.5, 3.0}) {
    const F g(t);
    unsigned seed = 1;
    for (const auto& [label, x] : test_rows(t)) {
      const Vec dy = random_dy(x.size(), seed++);
      const Vec y = g(x);
      const Vec dx = g.backward(x, y, dy);
      const Vec fd = fd_gradient([&](const Vec& v) { return Vec(g(v)); }, x, dy);
      INFO(F::name << " T = " << t << ", " << label);
      for (Index i = 0; i < x.size(); ++i) {
        if (x(i) == -kInf)
          CHECK(dx(i) == 0.0);  // a mask is a constant
      }
      const double err = fd_relative_error(dx, fd, x);
      INFO("relative error " << err);
      CHECK(err < 1e-6);
    }
  }
  (void)f;
}

}  // namespace

TEST_CASE("Softmax and LogSoftmax backward match finite differences in double", "[backward][fd]") {
  check_backward_against_fd(sml::Softmax());
  check_backward_against_fd(sml::LogSoftmax());
}

TEST_CASE("Softmax backward: closed form on a tiny row, and LogSoftmax excludes masked dy",
          "[backward]") {
  // y = (1/2, 1/2): J = [[1/4, -1/4], [-1/4, 1/4]], so dx = (dy0 - dy1) / 4 * (1, -1).
  const Vec x = Vec::Zero(2);
  Vec dy(2);
  dy << 3.0, 1.0;
  const Vec dx = sml::Softmax().backward(x, sml::Softmax()(x), dy);
  CHECK(dx(0) == 0.5);
  CHECK(dx(1) == -0.5);
  // Temperature 2 halves it.
  const Vec dx2 = sml::Softmax(2.0).backward(x, sml::Softmax(2.0)(x), dy);
  CHECK(dx2(0) == 0.25);

  // LogSoftmax with a masked entry whose dy is huge: it must not leak into the other entries.
  Vec xm(3);
  xm << 0.0, -kInf, 0.0;
  Vec dym(3);
  dym << 1.0, 1e300, 0.0;
  const sml::LogSoftmax g;
  const Vec dxm = g.backward(xm, g(xm), dym);
  CHECK(dxm(0) == 0.5);
  CHECK(dxm(1) == 0.0);
  CHECK(dxm(2) == -0.5);
}

TEMPLATE_TEST_CASE("float backward agrees with double", "[backward]", float, double) {
  using V = Eigen::Matrix<TestType, Eigen::Dynamic, 1>;
  const Vec x = Vec::LinSpaced(300, -8, 8).array().sin() * 6;
  const Vec dy = random_dy(x.size(), 7);
  const V xf = x.cast<TestType>(), dyf = dy.cast<TestType>();
  const sml::Softmax f(0.7);
  const sml::LogSoftmax g(0.7);
  const Vec ref_f = f.backward(x, f(x), dy);
  const Vec ref_g = g.backward(x, g(x), dy);
  const Vec got_f = f.backward(xf, f(xf), dyf).template cast<double>();
  const Vec got_g = g.backward(xf, g(xf), dyf).template cast<double>();
  const double eps = std::numeric_limits<TestType>::epsilon();
  // Softmax: error scale max|y| * max|dy| / T; LogSoftmax: (|dy_i| + sum|dy| * y_i) / T.
  CHECK((got_f - ref_f).cwiseAbs().maxCoeff() <= 64 * eps * f(x).maxCoeff() / 0.7);
  CHECK((got_g - ref_g).cwiseAbs().maxCoeff() <= 64 * eps * dy.cwiseAbs().sum() / 0.7);
}

TEMPLATE_TEST_CASE("rowwise/colwise backward equal per-vector calls on strided slices",
                   "[backward][forms]", float, double) {
  using V = Eigen::Matrix<TestType, Eigen::Dynamic, 1>;
  using M = Eigen::Matrix<TestType, Eigen::Dynamic, Eigen::Dynamic>;
  using RM = Eigen::Matrix<TestType, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const M x = M::Random(6, 41) * 5;
  const M dy = M::Random(6, 41);
  const sml::Softmax f(1.3);
  const sml::LogSoftmax g;
  const M y = f.rowwise(x);
  const M dx = f.rowwise_backward(x, y, dy);  // rows of a column-major matrix: strided
  const M lyc = g.colwise(x);
  const M ldxc = g.colwise_backward(x, lyc, dy);
  for (Index i = 0; i < x.rows(); ++i) {
    const V xi = x.row(i).transpose(), dyi = dy.row(i).transpose();
    const V expected = f.backward(xi, f(xi), dyi);
    for (Index j = 0; j < x.cols(); ++j)
      CHECK(dx(i, j) == Approx(expected(j)).margin(1e-6));
  }
  for (Index j = 0; j < x.cols(); ++j) {
    const V xj = x.col(j), dyj = dy.col(j);
    const V expected = g.backward(xj, g(xj), dyj);
    CHECK((ldxc.col(j) - expected).cwiseAbs().maxCoeff() <= 1e-5);
  }
  SECTION("row-major storage, output blocks and Map with inner stride") {
    const RM xr = x, yr = y, dyr = dy;
    RM out(6, 41);
    f.rowwise_backward(xr, yr, dyr, out);
    CHECK((M(out) - dx).cwiseAbs().maxCoeff() <= 1e-6);
    M big = M::Zero(8, 41);
    f.rowwise_backward(x, y, dy, big.middleRows(1, 6));
    CHECK((big.middleRows(1, 6) - dx).cwiseAbs().maxCoeff() == 0);
    V storage = V::Zero(3 * 41);
    Eigen::Map<V, 0, Eigen::InnerStride<3>> strided(storage.data(), 41);
    f.backward(x.row(2), y.row(2), dy.row(2), strided);
    CHECK((strided - dx.row(2).transpose()).cwiseAbs().maxCoeff() == 0);
  }
  SECTION("in place: dx may be dy or y") {
    M inplace = dy;
    f.rowwise_backward(x, y, inplace, inplace);
    CHECK((inplace - dx).cwiseAbs().maxCoeff() == 0);
    M y_then_dx = y;
    f.rowwise_backward(x, y_then_dx, dy, y_then_dx);
    CHECK((y_then_dx - dx).cwiseAbs().maxCoeff() == 0);
  }
  SECTION("an expression input is evaluated into dx; the returning form takes any") {
    M out(6, 41);
    f.rowwise_backward(x, y, dy * TestType(2), out);
    CHECK((out - 2 * dx).cwiseAbs().maxCoeff() <= 1e-5);
    const M two = f.rowwise_backward(x * TestType(1), y.array() * TestType(1), dy * TestType(2));
    CHECK((two - 2 * dx).cwiseAbs().maxCoeff() <= 1e-5);
    CHECK_THROWS_WITH(f.rowwise_backward(x, out, dy * TestType(2), out),
                      Catch::Contains("must not share storage"));
  }
}

TEMPLATE_TEST_CASE("the backward forms writing into dx never allocate", "[backward][forms]", float,
                   double) {
  using V = Eigen::Matrix<TestType, Eigen::Dynamic, 1>;
  using M = Eigen::Matrix<TestType, Eigen::Dynamic, Eigen::Dynamic>;
  const sml::Softmax f;
  const sml::LogSoftmax g(2.0);
  const V x = V::Random(2000) * 10;
  const V y = f(x), ly = g(x), dy = V::Random(2000);
  V dx(2000);
  const M xm = M::Random(7, 300), dym = M::Random(7, 300);
  const M ym = f.rowwise(xm), lym = g.colwise(xm);
  M dxm(7, 300);
  std::size_t allocations = 0;
  {
    AllocationGuard guard;
    f.backward(x, y, dy, dx);
    g.backward(x, ly, dy, dx);
    f.backward(x, y, dy * TestType(3), dx);
    f.rowwise_backward(xm, ym, dym, dxm);
    g.colwise_backward(xm, lym, dym, dxm);
    f.backward(xm.row(3), ym.row(3), dym.row(3), dxm.row(3));
    allocations = guard.allocations();
  }
  CHECK(allocations == 0);
}

TEST_CASE("backward shape errors, empty inputs and special values", "[backward][special]") {
  const sml::Softmax f;
  const sml::LogSoftmax g;
  const Eigen::VectorXf x = Eigen::VectorXf::Ones(5), y = f(x);
  Eigen::VectorXf wrong(4), dx(5);
  CHECK_THROWS_WITH(f.backward(x, y, wrong, dx),
                    Catch::Contains("dy") && Catch::Contains("length 5") && Catch::Contains("4"));
  CHECK_THROWS_WITH(f.backward(x, y, y, wrong), Catch::Contains("dx"));
  const Eigen::MatrixXf m = Eigen::MatrixXf::Ones(3, 4);
  Eigen::MatrixXf out(4, 3);
  CHECK_THROWS_WITH(f.rowwise_backward(m, m, m, out),
                    Catch::Contains("3 x 4") && Catch::Contains("4 x 3"));
  CHECK_THROWS_WITH(f.backward(m, m, m), Catch::Contains("1-D"));
  Eigen::VectorXf v = Eigen::VectorXf::LinSpaced(10, 0, 1);
  CHECK_THROWS_WITH(f.backward(v.head(6), v.head(6), v.head(6), v.tail(6)),
                    Catch::Contains("overlaps"));
  CHECK(f.backward(Eigen::VectorXf(), Eigen::VectorXf(), Eigen::VectorXf()).size() == 0);
  CHECK(
      g.rowwise_backward(Eigen::MatrixXd(0, 3), Eigen::MatrixXd(0, 3), Eigen::MatrixXd(0, 3)).rows()
      == 0);

  // All masked: zero gradient. NaN in y: NaN row.
  const Vec masked = Vec::Constant(4, -kInf);
  const Vec dy = Vec::Ones(4);
  CHECK(f.backward(masked, sml::Softmax()(masked), dy).isZero());
  CHECK(g.backward(masked, sml::LogSoftmax()(masked), dy).isZero());
  Vec with_nan = Vec::Zero(4);
  with_nan(2) = std::numeric_limits<double>::quiet_NaN();
  CHECK(f.backward(with_nan, sml::Softmax()(with_nan), dy).array().isNaN().all());
  CHECK(g.backward(with_nan, sml::LogSoftmax()(with_nan), dy).array().isNaN().all());
  // +inf entries: the formula at y (two +inf entries share 1/2 each; the rest is masked).
  Vec two_inf = Vec::Zero(4);
  two_inf(0) = two_inf(3) = kInf;
  Vec dy2(4);
  dy2 << 1, 5, 7, 0;
  const Vec d = sml::Softmax().backward(two_inf, sml::Softmax()(two_inf), dy2);
  CHECK(d(0) == 0.25);
  CHECK(d(1) == 0.0);
  CHECK(d(3) == -0.25);
}
