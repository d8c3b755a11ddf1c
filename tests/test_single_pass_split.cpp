// SinglePassSoftmax::apply_split: one row in pieces merged through the online normalizer (the
// parallel form for huge rows). parts = 1 is apply() bit for bit; any parts agrees with apply()
// within the policy's bound, sums to one, keeps the special-value rules, is the same on every
// call (deterministic), never allocates, and rejects parts outside [1, 64].
#include <cmath>
#include <limits>
#include <random>

#include <catch2/catch.hpp>

#include <softmaxlab/single_pass.hpp>

#include "support.hpp"

namespace sml = softmaxlab;
using Index = Eigen::Index;

TEMPLATE_TEST_CASE("SinglePassSoftmax apply_split matches apply for every split",
                   "[single_pass][split]", float, double) {
  using Vec = Eigen::Matrix<TestType, Eigen::Dynamic, 1>;
  const TestType eps = std::numeric_limits<TestType>::epsilon();
  std::mt19937 gen(17);
  std::uniform_real_distribution<double> u(-30.0, 30.0);
  for (Index n : {1, 5, 64, 1000, 100003}) {
    Vec x(n);
    for (Index i = 0; i < n; ++i)
      x(i) = static_cast<TestType>(u(gen));
    for (double t : {1.0, 0.5}) {
      const sml::SinglePassSoftmax f(t);
      Vec whole(n), one(n);
      f.apply(x, whole);
      f.apply_split(x, one, 1);
      CHECK((one.array() == whole.array()).all());
      for (Index parts : {2, 3, 7, 64}) {
        INFO("n = " << n << ", T = " << t << ", parts = " << parts);
        Vec y(n), again(n);
        f.apply_split(x, y, parts);
        f.apply_split(x, again, parts);
        CHECK((y.array() == again.array()).all());
        double worst = 0;
        for (Index i = 0; i < n; ++i) {
          const double rel = std::abs(double(y(i)) - double(whole(i))) / double(whole(i));
          worst = std::max(worst, rel / double(eps));
        }
        CHECK(worst <= 8.0);  // both within 4 eps of the exact values: at most 8 eps apart
        CHECK(std::abs(y.template cast<double>().sum() - 1.0) <= 1e-5);
      }
    }
  }
}

TEST_CASE("SinglePassSoftmax apply_split keeps the special-value rules and checks parts",
          "[single_pass][split]") {
  const float inf = std::numeric_limits<float>::infinity();
  const sml::SinglePassSoftmax f;
  Eigen::VectorXf x = Eigen::VectorXf::LinSpaced(100, -5.0f, 5.0f), y(100);
  x(10) = -inf;
  x(90) = inf;
  x(95) = inf;
  f.apply_split(x, y, 4);
  CHECK(y(10) == 0.0f);
  CHECK(y(90) == 0.5f);
  CHECK(y(95) == 0.5f);
  CHECK(y(50) == 0.0f);
  x(40) = std::numeric_limits<float>::quiet_NaN();
  f.apply_split(x, y, 4);
  CHECK(y.array().isNaN().all());
  x.setConstant(-inf);
  f.apply_split(x, y, 3);
  CHECK((y.array() == 0.0f).all());
  {
    softmaxlab_test::AllocationGuard guard;
    f.apply_split(x, x, 5);  // in place
    CHECK(guard.allocations() == 0);
  }
  CHECK_THROWS_AS(f.apply_split(x, y, 0), std::invalid_argument);
  CHECK_THROWS_WITH(f.apply_split(x, y, 65), Catch::Contains("parts") && Catch::Contains("65"));
}
