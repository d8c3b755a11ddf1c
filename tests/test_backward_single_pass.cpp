// SinglePassSoftmax backward: the same function as Softmax, so the same gradient (bit for bit,
// given the same y), and finite differences in double.
#include <cmath>
#include <limits>

#include <catch2/catch.hpp>

#include <softmaxlab/single_pass.hpp>
#include <softmaxlab/softmax.hpp>

#include "support.hpp"

namespace sml = softmaxlab;
using Vec = Eigen::VectorXd;

TEST_CASE("SinglePassSoftmax backward equals Softmax backward and finite differences",
          "[backward][single_pass][fd]") {
  for (double t : {1.0, 0.6}) {
    const sml::SinglePassSoftmax f(t);
    Vec x = Vec::LinSpaced(23, -4, 5).array().sin() * 3;
    x(4) = -std::numeric_limits<double>::infinity();
    const Vec dy = Vec::LinSpaced(23, -1, 1).array().cos();
    const Vec y = f(x);
    const Vec dx = f.backward(x, y, dy);
    CHECK(dx == sml::Softmax(t).backward(x, y, dy));
    CHECK(dx(4) == 0.0);
    const Vec fd = softmaxlab_test::fd_gradient([&](const Vec& v) { return Vec(f(v)); }, x, dy);
    CHECK(softmaxlab_test::fd_relative_error(dx, fd, x) < 1e-6);
    Eigen::MatrixXd m = Eigen::MatrixXd::Random(3, 40), dm = Eigen::MatrixXd::Random(3, 40);
    const Eigen::MatrixXd ym = f.rowwise(m);
    Eigen::MatrixXd out(3, 40);
    std::size_t allocations = 0;
    {
      softmaxlab_test::AllocationGuard guard;
      f.rowwise_backward(m, ym, dm, out);
      allocations = guard.allocations();
    }
    CHECK(allocations == 0);
    CHECK(out == sml::Softmax(t).rowwise_backward(m, ym, dm));
  }
}
