// Softmax and LogSoftmax properties beyond the reference tables: parameter checks, masking and the
// +inf/NaN rules on every storage path, sums to one at length 2^24, invariances, and the exp kernel
// against long double over whole float ranges.
#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include <catch2/catch.hpp>

#include <softmaxlab/detail/exp.hpp>
#include <softmaxlab/softmax.hpp>

#include "support.hpp"

namespace sml = softmaxlab;
using Index = Eigen::Index;

TEST_CASE("bad temperatures throw std::invalid_argument naming the parameter and value",
          "[softmax][parameters]") {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  for (double t : {0.0, -1.0, -0.0, nan, inf, 1e-40, 1e40}) {
    INFO("temperature " << t);
    CHECK_THROWS_AS(sml::Softmax(t), std::invalid_argument);
    CHECK_THROWS_AS(sml::LogSoftmax(t), std::invalid_argument);
  }
  CHECK_THROWS_WITH(sml::Softmax(-2.5),
                    Catch::Contains("Softmax: temperature") && Catch::Contains("-2.5"));
  CHECK_THROWS_WITH(sml::LogSoftmax(0.0),
                    Catch::Contains("LogSoftmax: temperature") && Catch::Contains("got 0"));
  CHECK(sml::Softmax(0x1p-100).temperature() == 0x1p-100);
  CHECK(sml::LogSoftmax(0x1p100).temperature() == 0x1p100);
}

// The special-value rules, checked on a contiguous vector and on a strided row (both paths).
TEMPLATE_TEST_CASE("masking, +inf and NaN rules hold on contiguous and strided rows",
                   "[softmax][special]", float, double) {
  using Vec = Eigen::Matrix<TestType, Eigen::Dynamic, 1>;
  using Mat = Eigen::Matrix<TestType, Eigen::Dynamic, Eigen::Dynamic>;
  const TestType inf = std::numeric_limits<TestType>::infinity();
  const TestType nan = std::numeric_limits<TestType>::quiet_NaN();
  const Index n = 1029;  // odd: exercises the packet tail
  auto run_both = [&](const Vec& x, auto&& check) {
    const sml::Softmax f;
    const sml::LogSoftmax g;
    check(f(x), g(x));
    Mat m = Mat::Zero(3, n);
    m.row(1) = x.transpose();
    const Mat fm = f.rowwise(m), gm = g.rowwise(m);
    check(Vec(fm.row(1).transpose()), Vec(gm.row(1).transpose()));
  };
  Vec x = Vec::LinSpaced(n, -20, 20);

  SECTION("-inf entries get exactly 0 (log: -inf), the rest still sums to 1") {
    for (Index i = 0; i < n; i += 3)
      x(i) = -inf;
    run_both(x, [&](const Vec& y, const Vec& ly) {
      for (Index i = 0; i < n; ++i) {
        if (i % 3 == 0) {
          REQUIRE(y(i) == 0);
          REQUIRE(ly(i) == -inf);
        } else {
          REQUIRE(y(i) > 0);
          REQUIRE(std::isfinite(ly(i)));
        }
      }
      CHECK(std::fabs(static_cast<double>(y.template cast<long double>().sum()) - 1) < 1e-6);
    });
  }
  SECTION("a row of only -inf gives zeros (log: -inf), never NaN") {
    x.setConstant(-inf);
    run_both(x, [&](const Vec& y, const Vec& ly) {
      CHECK((y.array() == 0).all());
      CHECK((ly.array() == -inf).all());
    });
  }
  SECTION("+inf entries share the mass equally") {
    x(5) = inf;
    x(700) = inf;
    x(1028) = inf;
    x(9) = -inf;
    run_both(x, [&](const Vec& y, const Vec& ly) {
      for (Index i = 0; i < n; ++i) {
        const bool at_inf = i == 5 || i == 700 || i == 1028;
        REQUIRE(y(i) == (at_inf ? TestType(1) / 3 : TestType(0)));
        REQUIRE(ly(i) == (at_inf ? static_cast<TestType>(-std::log(3.0)) : -inf));
      }
    });
  }
  SECTION("a NaN anywhere makes the whole row NaN") {
    for (Index pos : {Index(0), Index(517), n - 1}) {
      Vec z = x;
      z(pos) = nan;
      z(3) = inf;  // NaN wins over +inf and -inf
      z(4) = -inf;
      run_both(z, [&](const Vec& y, const Vec& ly) {
        CHECK(y.array().isNaN().all());
        CHECK(ly.array().isNaN().all());
      });
    }
  }
}

TEST_CASE("a float row of 2^24 entries sums to 1 within 2e-6", "[softmax][summation]") {
  const Index n = Index(1) << 24;
  Eigen::VectorXf x(n);
  std::mt19937 gen(7);
  std::normal_distribution<float> normal(0.0f, 4.0f);
  for (Index i = 0; i < n; ++i)
    x(i) = normal(gen);
  Eigen::VectorXf y(n);
  sml::Softmax().apply(x, y);
  const long double sum = y.cast<long double>().sum();
  INFO("sum - 1 = " << static_cast<double>(sum - 1));
  CHECK(std::fabs(static_cast<double>(sum - 1)) <= 2e-6);
  // All-equal entries: every probability is 1/n; the compensated sum keeps it within 1 ulp.
  x.setConstant(2.5f);
  sml::Softmax().apply(x, y);
  const float expected = 1.0f / static_cast<float>(n);
  CHECK(((y.array() - expected).abs() <= expected * std::numeric_limits<float>::epsilon()).all());
  // LogSoftmax: exp of the outputs also sums to one.
  x.setLinSpaced(-30, 30);
  sml::LogSoftmax().apply(x, y);
  const long double log_sum = y.cast<long double>().array().exp().sum();
  CHECK(std::fabs(static_cast<double>(log_sum - 1)) <= 2e-6);
}

TEMPLATE_TEST_CASE(
    "shifting the logits leaves the distribution unchanged; temperature T acts as x/T",
    "[softmax][invariance]", float, double) {
  using Vec = Eigen::Matrix<TestType, Eigen::Dynamic, 1>;
  const TestType eps = std::numeric_limits<TestType>::epsilon();
  // Integer-valued logits and a power-of-two shift and temperature: x + c and x / T are exact, so
  // the results must agree to the accuracy bound (here |x - m| <= 64).
  Vec x(200);
  for (Index i = 0; i < x.size(); ++i)
    x(i) = static_cast<TestType>((i * 37) % 65);
  const Vec y = sml::Softmax()(x);
  const Vec shifted = sml::Softmax()((x.array() + TestType(1024)).matrix());
  const Vec tempered = sml::Softmax(4.0)((x * TestType(4)).eval());
  const double bound = 2 * 4.0 * (1 + 64);  // two results, each within 4 eps (1 + |x - m|)
  const double shift_err = ((shifted - y).cwiseAbs().cwiseQuotient(y)).maxCoeff() / eps;
  const double temp_err = ((tempered - y).cwiseAbs().cwiseQuotient(y)).maxCoeff() / eps;
  INFO("shift: " << shift_err << " eps, temperature: " << temp_err << " eps, bound " << bound);
  CHECK(shift_err <= bound);
  CHECK(temp_err <= bound);
  // log-softmax and log of softmax agree
  const Vec ly = sml::LogSoftmax()(x);
  CHECK((ly.array().exp() - y.array()).abs().maxCoeff() <= 8 * eps);
}

namespace {

// Max error of pexp_nonpositive_u11 in ulps of the result (absolute in units of the smallest subnormal
// below the normal range) over the given float bit patterns, against long double exp.
template <class Scalar, class Next>
double exp_kernel_max_ulp(Scalar first, Index count, Next next, Scalar& worst_x) {
  using Packet = sml::detail::PacketOf<Scalar>;
  constexpr int P = sml::detail::kPacketSize<Scalar>;
  alignas(64) Scalar in[P];
  alignas(64) Scalar out[P];
  double worst = 0;
  Scalar x = first;
  for (Index i = 0; i < count; i += P) {
    for (int k = 0; k < P; ++k, x = next(x))
      in[k] = x;
    Eigen::internal::pstore(out,
                            sml::detail::pexp_nonpositive_u11(Eigen::internal::pload<Packet>(in)));
    for (int k = 0; k < P; ++k) {
      const long double exact = std::exp(static_cast<long double>(in[k]));
      const int digits = std::numeric_limits<Scalar>::digits;
      const int min_exp = std::numeric_limits<Scalar>::min_exponent;
      const int e = std::max(
          std::ilogb(std::max(exact, static_cast<long double>(std::numeric_limits<Scalar>::min()))),
          min_exp - 1);
      const long double ulp = std::ldexp(1.0L, e - digits + 1);
      const double err = static_cast<double>(std::fabs(out[k] - exact) / ulp);
      if (err > worst) {
        worst = err;
        worst_x = in[k];
      }
    }
  }
  return worst;
}

}  // namespace

TEST_CASE("the exp kernel is within 1.1 ulp, exact at 0 and -inf, NaN in NaN out", "[exp]") {
  SECTION("float: every 61st float in [-104, 0] (about 18 million inputs)") {
    const auto next = [](float v) {
      std::uint32_t bits;
      std::memcpy(&bits, &v, sizeof bits);
      bits += 61;
      std::memcpy(&v, &bits, sizeof bits);
      return v;
    };
    // from -0 (0x80000000) towards -104 (0xc2d00000) by bit pattern
    const Index count = (0xc2d00000u - 0x80000000u) / 61;
    float worst_x = 0;
    const double worst = exp_kernel_max_ulp<float>(-0.0f, count, next, worst_x);
    INFO("worst " << worst << " ulp at x = " << worst_x);
    CHECK(worst <= 1.1);
  }
  SECTION("double: 8 million points spread over [-746, 0]") {
    const double step = 746.0 / (1 << 23);
    double worst_x = 0;
    const double worst = exp_kernel_max_ulp<double>(
        -1e-9, Index(1) << 23, [&](double v) { return v - step * 0.999999; }, worst_x);
    INFO("worst " << worst << " ulp at x = " << worst_x);
    CHECK(worst <= 1.1);
  }
  SECTION("special values") {
    using P = sml::detail::PacketOf<float>;
    alignas(64) float out[sml::detail::kPacketSize<float>];
    const auto eval = [&](float v) {
      Eigen::internal::pstore(out, sml::detail::pexp_nonpositive_u11(Eigen::internal::pset1<P>(v)));
      return out[0];
    };
    CHECK(eval(0.0f) == 1.0f);
    CHECK(eval(-0.0f) == 1.0f);
    CHECK(eval(-std::numeric_limits<float>::infinity()) == 0.0f);
    CHECK(eval(-105.0f) == 0.0f);
    CHECK(std::isnan(eval(std::numeric_limits<float>::quiet_NaN())));
    CHECK(sml::detail::exp_nonpositive_scalar(-std::numeric_limits<double>::infinity()) == 0.0);
    CHECK(sml::detail::exp_nonpositive_scalar(0.0) == 1.0);
  }
  SECTION("the scaled exp the kernels store is +0 exactly far below the max, NaN stays NaN") {
    // A tiny stored value instead rounds to 0 only in the final scaling, whose underflow costs a
    // microcode assist per element on x86 (a row masked with -inf ran 6x slower).
    const auto scaled = [](auto v) {
      using S = decltype(v);
      using P = sml::detail::PacketOf<S>;
      alignas(64) S out[sml::detail::kPacketSize<S>];
      Eigen::internal::pstore(out,
                              sml::detail::pexp_nonpositive_scaled(Eigen::internal::pset1<P>(v)));
      return out[0];
    };
    for (const float v : {-std::numeric_limits<float>::infinity(),
                          std::numeric_limits<float>::lowest(), -1e30f, -140.0f}) {
      INFO("float x = " << v);
      CHECK(scaled(v) == 0.0f);
      CHECK_FALSE(std::signbit(scaled(v)));
    }
    for (const double v : {-std::numeric_limits<double>::infinity(),
                           std::numeric_limits<double>::lowest(), -1e300, -760.0}) {
      INFO("double x = " << v);
      CHECK(scaled(v) == 0.0);
      CHECK_FALSE(std::signbit(scaled(v)));
    }
    CHECK(std::isnormal(scaled(-100.0f)));  // exp(-100) 2^64: kept, normal
    CHECK(std::isnormal(scaled(-740.0)));
    CHECK(std::isnan(scaled(std::numeric_limits<float>::quiet_NaN())));
    CHECK(std::isnan(scaled(std::numeric_limits<double>::quiet_NaN())));
  }
}
