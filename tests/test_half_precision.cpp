// Eigen::half and Eigen::bfloat16 in and out of the distribution functors (issue 13): accuracy in
// ulps of the output type against the exact mpmath tables of tests/reference/softmax_half.ipp,
// sums, the bf16 uniform row, special values, mixed input/output types, no allocation, backward
// passes and the online normalizer.
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include <softmaxlab/attention.hpp>
#include <softmaxlab/entmax_loss.hpp>
#include <softmaxlab/entmax_maps.hpp>
#include <softmaxlab/gumbel.hpp>
#include <softmaxlab/loss.hpp>
#include <softmaxlab/normalized.hpp>
#include <softmaxlab/polynomial.hpp>
#include <softmaxlab/power.hpp>
#include <softmaxlab/single_pass.hpp>
#include <softmaxlab/softmax.hpp>

#include "reference/softmax_half.ipp"
#include "support.hpp"

namespace sml = softmaxlab;
using softmaxlab_test::AllocationGuard;
using softmaxlab_test::HalfCase;
using H = Eigen::half;
using B = Eigen::bfloat16;

namespace {

template <class S>
using Vec = Eigen::Matrix<S, Eigen::Dynamic, 1>;

// Significand bits (hidden bit included) and smallest normal exponent of each output type.
template <class S>
struct Format;
template <>
struct Format<H> {
  static constexpr int p = 11, emin = -14;
  static constexpr const char* name = "half";
};
template <>
struct Format<B> {
  static constexpr int p = 8, emin = -126;
  static constexpr const char* name = "bfloat16";
};
template <>
struct Format<float> {
  static constexpr int p = 24, emin = -126;
  static constexpr const char* name = "float";
};
template <>
struct Format<double> {
  static constexpr int p = 53, emin = -1022;
  static constexpr const char* name = "double";
};

// One ulp of type S at the exact value v: 2^(max(floor(log2 |v|), emin) - p + 1), so that results
// in the subnormal range are measured in units of the smallest subnormal.
template <class S>
long double ulp_at(long double v) {
  int e = Format<S>::emin;
  if (v != 0) {
    int ev = 0;
    std::frexp(static_cast<double>(std::fabs(v)), &ev);  // |v| = f 2^ev, f in [0.5, 1)
    e = std::max(ev - 1, Format<S>::emin);
  }
  return std::ldexp(1.0L, e - Format<S>::p + 1);
}

template <class S>
double as_double(S v) {
  return static_cast<double>(static_cast<float>(v));
}
template <>
double as_double<double>(double v) {
  return v;
}

template <class S>
Vec<S> inputs_of(const HalfCase& c) {
  Vec<S> x(static_cast<Eigen::Index>(c.n));
  for (std::size_t i = 0; i < c.n; ++i)
    x[static_cast<Eigen::Index>(i)] = static_cast<S>(c.x[i]);  // exact: the values are of S
  return x;
}

// Error of y against the exact value in ulps of Out (specials must match exactly).
template <class Out>
double ulp_error(Out y, double exact) {
  const double v = as_double(y);
  if (std::isnan(exact))
    return std::isnan(v) ? 0 : std::numeric_limits<double>::infinity();
  // an exact value beyond Out's range rounds to +-inf (half: |v| >= 65520)
  const long double overflow =
      std::ldexp(2.0L - std::ldexp(1.0L, -Format<Out>::p), Format<Out>::p == 11  ? 15
                                                           : Format<Out>::p == 8 ? 127
                                                                                 : 1023);
  if (std::isinf(exact) || (Format<Out>::p <= 11 && std::fabs(exact) >= overflow))
    return std::isinf(v) && (v > 0) == (exact > 0) ? 0 : std::numeric_limits<double>::infinity();
  if (!std::isfinite(v))
    return std::numeric_limits<double>::infinity();
  return static_cast<double>(std::fabs(static_cast<long double>(v) - exact) / ulp_at<Out>(exact));
}

// Runs a functor In -> Out over every case and tracks the worst error / bound; bound(exact) in ulps
// of Out.
template <class In, class Out, class F, class Bound>
softmaxlab_test::Worst check_cases(const HalfCase* cases, std::size_t count, const F& f,
                                   bool log_form, const Bound& bound_ulps, const char* what) {
  softmaxlab_test::Worst worst;
  for (std::size_t k = 0; k < count; ++k) {
    const HalfCase& c = cases[k];
    const auto g = f(c.temperature);
    const Vec<In> x = inputs_of<In>(c);
    Vec<Out> y(x.size());
    g.apply(x, y);
    // rowwise of a one-row matrix and colwise of a column: the same path per slice
    Eigen::Matrix<Out, 1, Eigen::Dynamic> yr(x.size());
    g.rowwise(x.transpose(), yr);
    for (Eigen::Index i = 0; i < x.size(); ++i) {
      const double exact = log_form ? c.log_softmax[i] : c.softmax[i];
      const double allowed = bound_ulps(exact);
      for (Out v : {y[i], yr[i]}) {
        worst.update(ulp_error(v, exact), allowed, [&](std::ostream& s) {
          s << what << " " << c.name << "[" << i << "] x=" << c.x[i] << " exact=" << exact
            << " got=" << as_double(v);
        });
      }
    }
  }
  return worst;
}

template <class In, class Out>
void softmax_within_one_ulp(const HalfCase* cases, std::size_t count) {
  const auto one_ulp = [](double) {
    return 1.0;
  };
  for (int which = 0; which < 2; ++which) {
    softmaxlab_test::Worst w;
    if (which == 0) {
      w = check_cases<In, Out>(
          cases, count, [](double t) { return sml::Softmax(t); }, false, one_ulp, "Softmax");
    } else {
      w = check_cases<In, Out>(
          cases, count, [](double t) { return sml::SinglePassSoftmax(t); }, false, one_ulp,
          "SinglePassSoftmax");
    }
    INFO(Format<In>::name << " -> " << Format<Out>::name << ": worst " << w.error
                          << " ulp (bound 1): " << w.where);
    CHECK(w.ratio <= 1.0);
    WARN(Format<In>::name << " -> " << Format<Out>::name << (which ? " SinglePass" : " Softmax")
                          << " worst " << w.error << " ulp of the output (bound 1)");
  }
}

// LogSoftmax: one ulp of Out plus Softmax's absolute term (4 float eps, the float computation's
// error on a log-probability of magnitude <= 1, growing with it).
template <class In, class Out>
void log_softmax_within_bound(const HalfCase* cases, std::size_t count) {
  const auto bound = [](double exact) {
    const long double abs_term = 4.0L * std::numeric_limits<float>::epsilon()
                                 * (1.0L + (std::isfinite(exact) ? std::fabs(exact) : 0.0));
    return static_cast<double>(1.0L + abs_term / ulp_at<Out>(exact));
  };
  const softmaxlab_test::Worst w = check_cases<In, Out>(
      cases, count, [](double t) { return sml::LogSoftmax(t); }, true, bound, "LogSoftmax");
  INFO(Format<In>::name << " -> " << Format<Out>::name << ": worst " << w.error << " ulp (bound "
                        << w.bound << "): " << w.where);
  CHECK(w.ratio <= 1.0);
  WARN(Format<In>::name << " -> " << Format<Out>::name << " LogSoftmax worst " << w.error
                        << " ulp of the output (bound there " << w.bound << ")");
}

}  // namespace

TEST_CASE("half precision: Softmax and SinglePassSoftmax within 1 ulp of the output type",
          "[half][reference]") {
  using softmaxlab_test::kHalfCasesBF16;
  using softmaxlab_test::kHalfCasesF16;
  SECTION("half in, half out") {
    softmax_within_one_ulp<H, H>(kHalfCasesF16, std::size(kHalfCasesF16));
  }
  SECTION("bfloat16 in, bfloat16 out") {
    softmax_within_one_ulp<B, B>(kHalfCasesBF16, std::size(kHalfCasesBF16));
  }
  SECTION("float in, half out; half in, bfloat16 out; bfloat16 in, half out") {
    softmax_within_one_ulp<float, H>(kHalfCasesF16, std::size(kHalfCasesF16));
    softmax_within_one_ulp<H, B>(kHalfCasesF16, std::size(kHalfCasesF16));
    softmax_within_one_ulp<B, H>(kHalfCasesBF16, std::size(kHalfCasesBF16));
  }
  SECTION("double in, half out (computed in double)") {
    softmax_within_one_ulp<double, H>(kHalfCasesF16, std::size(kHalfCasesF16));
  }
}

TEST_CASE("half precision: LogSoftmax within 1 ulp of the output type plus 4 float eps",
          "[half][reference]") {
  using softmaxlab_test::kHalfCasesBF16;
  using softmaxlab_test::kHalfCasesF16;
  log_softmax_within_bound<H, H>(kHalfCasesF16, std::size(kHalfCasesF16));
  log_softmax_within_bound<B, B>(kHalfCasesBF16, std::size(kHalfCasesBF16));
  log_softmax_within_bound<float, H>(kHalfCasesF16, std::size(kHalfCasesF16));
  log_softmax_within_bound<H, B>(kHalfCasesF16, std::size(kHalfCasesF16));
}

TEST_CASE("half precision: half in, float or double out keeps the wider type's accuracy",
          "[half][reference]") {
  using softmaxlab_test::kHalfCasesF16;
  // float out: the float policy, 4 eps (1 + |x/T - m|) relative (subnormal floor); double out: the
  // computation runs in double, so the error is double-sized (checked against 1e-6 float eps).
  for (const HalfCase& c : kHalfCasesF16) {
    const Vec<H> x = inputs_of<H>(c);
    Vec<float> yf(x.size());
    Vec<double> yd(x.size());
    sml::Softmax(c.temperature).apply(x, yf);
    sml::Softmax(c.temperature).apply(x, yd);
    double m = -std::numeric_limits<double>::infinity();
    for (std::size_t i = 0; i < c.n; ++i)
      m = std::max(m, static_cast<double>(c.x[i]) / c.temperature);
    for (Eigen::Index i = 0; i < x.size(); ++i) {
      const double exact = c.softmax[i];
      const double d = std::isfinite(c.x[i]) ? std::fabs(c.x[i] / c.temperature - m) : 0;
      const double scale = std::max(std::fabs(exact), double(std::numeric_limits<float>::min()));
      INFO(c.name << "[" << i << "] exact " << exact << " float " << yf[i] << " double " << yd[i]);
      CHECK(std::fabs(yf[i] - exact)
            <= 4 * std::numeric_limits<float>::epsilon() * (1 + d) * scale);
      CHECK(std::fabs(yd[i] - exact)
            <= 1e-6 * std::numeric_limits<float>::epsilon() * (1 + d) * scale);
    }
  }
}

TEST_CASE("half precision: a row of 2^20 half entries sums to 1 within 2^-10", "[half]") {
  // The mean probability is 2^-20, so most outputs are half subnormals (step 2^-24), each rounded
  // to nearest: the rounding errors cancel on average. Logits of spread 1 keep every entry above
  // half the smallest subnormal; with a much wider spread the mass of the entries below it is lost
  // by any correctly rounded output (about 0.003 at spread 3), which no softmax can avoid.
  const Eigen::Index n = Eigen::Index(1) << 20;
  std::mt19937 gen(1313);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Vec<H> x(n);
  for (Eigen::Index i = 0; i < n; ++i)
    x[i] = static_cast<H>(normal(gen));
  Vec<H> y(n);
  for (int which = 0; which < 2; ++which) {
    if (which == 0) {
      sml::Softmax().apply(x, y);
    } else {
      sml::SinglePassSoftmax().apply(x, y);
    }
    double sum = 0;
    for (Eigen::Index i = 0; i < n; ++i)
      sum += as_double(y[i]);
    INFO((which ? "SinglePassSoftmax" : "Softmax") << " sum " << sum);
    CHECK(std::fabs(sum - 1.0) <= std::ldexp(1.0, -10));
    WARN((which ? "SinglePassSoftmax" : "Softmax")
         << ": 2^20 half entries sum to 1 " << (sum >= 1 ? "+ " : "- ") << std::fabs(sum - 1.0)
         << " (bound 2^-10)");
  }
}

TEST_CASE("half precision: a uniform row of 512 bfloat16 gives exactly 2^-9 each", "[half]") {
  // A bf16 running sum stalls at 256 (256 + 1 rounds back to 256): summing in bf16 would give
  // 1/256. The float accumulator gives the exact 512.
  for (float v : {0.0f, 1.5f, -37.0f, 1e30f}) {
    const Vec<B> x = Vec<B>::Constant(512, static_cast<B>(v));
    Vec<B> y(512);
    sml::Softmax().apply(x, y);
    Vec<B> z(512);
    sml::SinglePassSoftmax().apply(x, z);
    for (Eigen::Index i = 0; i < 512; ++i) {
      INFO("value " << v << " entry " << i);
      REQUIRE(as_double(y[i]) == std::ldexp(1.0, -9));
      REQUIRE(as_double(z[i]) == std::ldexp(1.0, -9));
    }
    Vec<B> l(512);
    sml::LogSoftmax().apply(x, l);
    // -log 512 = -6.238..., within one bf16 ulp (2^-5 there)
    CHECK(std::fabs(as_double(l[0]) + 9 * std::log(2.0)) <= std::ldexp(1.0, -5));
  }
}

TEST_CASE("half precision: special values and masking are unchanged", "[half]") {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  auto to_h = [](std::initializer_list<float> v) {
    Vec<H> x(static_cast<Eigen::Index>(v.size()));
    Eigen::Index i = 0;
    for (float f : v)
      x[i++] = static_cast<H>(f);
    return x;
  };
  const sml::Softmax softmax;
  const sml::LogSoftmax log_softmax;
  const sml::SinglePassSoftmax single;
  SECTION("-inf entries get exactly 0 (log: -inf); an all -inf row gives zeros") {
    const Vec<H> x = to_h({1.0f, -inf, 2.0f, -inf});
    Vec<H> y = softmax(x), z = single(x), l = log_softmax(x);
    CHECK(as_double(y[1]) == 0.0);
    CHECK(as_double(z[3]) == 0.0);
    CHECK(as_double(l[1]) == -double(inf));
    const Vec<H> masked = to_h({-inf, -inf, -inf});
    y = softmax(masked);
    l = log_softmax(masked);
    for (int i = 0; i < 3; ++i) {
      CHECK(as_double(y[i]) == 0.0);
      CHECK(as_double(l[i]) == -double(inf));
    }
  }
  SECTION("+inf entries share the mass; NaN makes the row NaN") {
    const Vec<H> x = to_h({inf, 1.0f, inf, 65504.0f});
    const Vec<H> y = softmax(x), z = single(x);
    CHECK(as_double(y[0]) == 0.5);
    CHECK(as_double(y[2]) == 0.5);
    CHECK(as_double(y[3]) == 0.0);
    CHECK(as_double(z[0]) == 0.5);
    const Vec<B> yb = softmax(to_h({1.0f, nan, 2.0f}).cast<float>().cast<B>().eval());
    for (int i = 0; i < 3; ++i)
      CHECK(std::isnan(as_double(yb[i])));
  }
  SECTION("the boolean mask works on half rows") {
    const Vec<H> x = to_h({1.0f, 2.0f, 3.0f});
    Eigen::Array<bool, Eigen::Dynamic, 1> keep(3);
    keep << true, false, true;
    Vec<H> y(3);
    softmax.apply_masked(x, keep, y);
    CHECK(as_double(y[1]) == 0.0);
    CHECK(std::fabs(as_double(y[0]) + as_double(y[2]) - 1.0) <= 0x1p-11);
  }
  SECTION("float in, half out never turns a finite probability into inf or NaN") {
    const float big = std::numeric_limits<float>::max();
    for (const std::vector<float>& row :
         {std::vector<float>{big, -big, 0.0f, 1e30f}, std::vector<float>{1e20f, 1e20f, -1e20f},
          std::vector<float>{1e-30f, -1e-30f, 7e4f, 7e4f}}) {
      const Eigen::Map<const Vec<float>> x(row.data(), static_cast<Eigen::Index>(row.size()));
      Vec<H> y(x.size()), z(x.size());
      softmax.apply(x, y);
      single.apply(x, z);
      for (Eigen::Index i = 0; i < x.size(); ++i) {
        CHECK(std::isfinite(as_double(y[i])));
        CHECK(std::isfinite(as_double(z[i])));
        CHECK(as_double(y[i]) >= 0.0);
        CHECK(as_double(y[i]) <= 1.0);
      }
    }
  }
  SECTION("empty in, empty out") {
    const Vec<H> x(0);
    Vec<B> y(0);
    softmax.apply(x, y);
    CHECK(softmax(x).size() == 0);
  }
  SECTION("a wrong output size throws") {
    const Vec<H> x = to_h({1.0f, 2.0f});
    Vec<B> y(3);
    CHECK_THROWS_AS(softmax.apply(x, y), std::invalid_argument);
  }
}

TEST_CASE("half precision: every pair of input and output types, float or double inside",
          "[half]") {
  // The row is exact in every type (multiples of 1/8 in [-6, 6]); the reference is long double.
  Vec<double> xd(37);
  for (Eigen::Index i = 0; i < xd.size(); ++i)
    xd[i] = std::ldexp(double((i * 29) % 97 - 48), -3);
  long double m = xd.maxCoeff(), sum = 0;
  for (Eigen::Index i = 0; i < xd.size(); ++i)
    sum += std::exp(static_cast<long double>(xd[i]) - m);
  auto exact = [&](Eigen::Index i) {
    return std::exp(static_cast<long double>(xd[i]) - m) / sum;
  };
  auto run = [&](auto in_tag, auto out_tag) {
    using In = decltype(in_tag);
    using Out = decltype(out_tag);
    const Vec<In> x = xd.cast<float>().template cast<In>();
    Vec<Out> y(x.size());
    sml::Softmax().apply(x, y);
    // computed in double when either side is double, so then only the output's rounding counts
    const bool in_double = std::is_same_v<In, double> || std::is_same_v<Out, double>;
    const long double compute_eps =
        in_double ? std::numeric_limits<double>::epsilon() : std::numeric_limits<float>::epsilon();
    for (Eigen::Index i = 0; i < x.size(); ++i) {
      const long double e = exact(i);
      const long double allowed =
          (std::is_same_v<Out, double> || std::is_same_v<Out, float> ? 0.5L : 1.0L) * ulp_at<Out>(e)
          + 8 * compute_eps * (1 + 12) * e;
      INFO(Format<In>::name << " -> " << Format<Out>::name << " [" << i << "]");
      CHECK(std::fabs(static_cast<long double>(as_double(y[i])) - e) <= allowed);
    }
  };
  auto for_outputs = [&](auto in_tag) {
    run(in_tag, H());
    run(in_tag, B());
    run(in_tag, 0.0f);
    run(in_tag, 0.0);
  };
  for_outputs(H());
  for_outputs(B());
  for_outputs(0.0f);
  for_outputs(0.0);
  // f(x) keeps x's scalar type
  const Vec<B> xb = xd.cast<float>().cast<B>();
  const auto yb = sml::Softmax()(xb);
  STATIC_REQUIRE(std::is_same_v<std::decay_t<decltype(yb)>, Vec<B>>);
}

TEST_CASE("half precision: apply, rowwise and colwise do not allocate", "[half][allocation]") {
  for (Eigen::Index n :
       {Eigen::Index(1), Eigen::Index(100), Eigen::Index(16384), Eigen::Index(40000)}) {
    const Vec<H> x = Vec<float>::LinSpaced(n, -5.0f, 5.0f).cast<H>();
    const Vec<float> xf = x.cast<float>();
    Vec<H> y(n);
    Vec<B> yb(n);
    Eigen::Matrix<H, Eigen::Dynamic, Eigen::Dynamic> X = x.transpose().replicate(2, 1);
    Eigen::Matrix<H, Eigen::Dynamic, Eigen::Dynamic> Y(2, n), Yc(n, 2);
    const Eigen::Matrix<H, Eigen::Dynamic, Eigen::Dynamic> Xc = X.transpose();
    AllocationGuard guard;
    sml::Softmax().apply(x, y);
    sml::LogSoftmax().apply(x, yb);
    sml::SinglePassSoftmax().apply(xf, y);
    sml::Softmax().rowwise(X, Y);
    sml::Softmax().colwise(Xc, Yc);
    sml::SinglePassSoftmax().apply(y, y);  // in place
    CHECK(guard.allocations() == 0);
  }
  // the other variants: no allocation for rows up to the 16384-entry stack stage
  const Vec<H> x = Vec<float>::LinSpaced(5000, -5.0f, 5.0f).cast<H>();
  Vec<H> y(5000);
  const sml::PowerSoftmax power(4);
  const sml::PolynomialSoftmax poly;
  AllocationGuard guard;
  power.apply(x, y);
  poly.apply(x, y);
  CHECK(guard.allocations() == 0);
}

TEST_CASE("half precision: the other variants give their float result rounded once",
          "[half][variants]") {
  // Rows up to 16384 entries run the variant's own float code on the converted row, so the half
  // (bf16) output is exactly the float output rounded to nearest: the float tests bound the rest.
  std::mt19937 gen(77);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  Vec<float> xf(300);
  for (Eigen::Index i = 0; i < xf.size(); ++i)
    xf[i] = normal(gen);
  const Vec<H> xh = xf.cast<H>();
  const Vec<float> xe = xh.cast<float>();  // the exact half values, as float
  auto same_as_rounded_float = [&](const auto& f, const char* what) {
    Vec<float> yf(xe.size());
    f.apply(xe, yf);
    Vec<H> yh(xe.size());
    f.apply(xh, yh);
    Vec<B> yb(xe.size());
    f.apply(xh, yb);
    for (Eigen::Index i = 0; i < xe.size(); ++i) {
      INFO(what << " [" << i << "] float " << yf[i]);
      CHECK(as_double(yh[i]) == as_double(static_cast<H>(yf[i])));
      CHECK(as_double(yb[i]) == as_double(static_cast<B>(yf[i])));
    }
  };
  same_as_rounded_float(sml::PowerSoftmax(4), "PowerSoftmax(4)");
  same_as_rounded_float(sml::PolynomialSoftmax(), "PolynomialSoftmax");
  same_as_rounded_float(sml::Sparsemax(), "Sparsemax");
  same_as_rounded_float(sml::Entmax15(), "Entmax15");
  same_as_rounded_float(sml::AttentionSoftmax(sml::AttentionOptions().with_scale(0.5)),
                        "AttentionSoftmax");
  SECTION("GumbelSoftmax with the same generator state") {
    const sml::GumbelSoftmax g(0.7);
    std::mt19937 g1(5), g2(5);
    Vec<float> yf(xe.size());
    Vec<H> yh(xe.size());
    g.apply(xe, yf, g1);
    g.apply(xh, yh, g2);
    for (Eigen::Index i = 0; i < xe.size(); ++i)
      CHECK(as_double(yh[i]) == as_double(static_cast<H>(yf[i])));
  }
}

TEST_CASE("half precision: backward passes in half and bfloat16", "[half][backward]") {
  std::mt19937 gen(99);
  std::normal_distribution<float> normal(0.0f, 1.5f);
  for (Eigen::Index n : {Eigen::Index(7), Eigen::Index(1000)}) {
    Vec<float> xf(n), dyf(n);
    for (Eigen::Index i = 0; i < n; ++i) {
      xf[i] = normal(gen);
      dyf[i] = normal(gen);
    }
    const Vec<H> x = xf.cast<H>(), dy = dyf.cast<H>();
    auto check = [&](const auto& f, const char* what) {
      const Vec<H> y = f(x);
      // reference: the double backward of the same (exact) half values
      const Vec<double> yd = y.template cast<float>().template cast<double>();
      const Vec<double> dyd = dy.template cast<float>().template cast<double>();
      const Vec<double> xd = x.template cast<float>().template cast<double>();
      const Vec<double> ref = f.backward(xd, yd, dyd);
      Vec<H> dx(n);
      f.backward(x, y, dy, dx);
      Vec<B> dxb(n);
      f.backward(x, y, dy, dxb);  // mixed: half in, bf16 out
      const double scale = dyd.cwiseAbs().maxCoeff() * std::max(1.0, yd.cwiseAbs().maxCoeff());
      for (Eigen::Index i = 0; i < n; ++i) {
        INFO(what << " n=" << n << " [" << i << "] ref " << ref[i] << " half " << as_double(dx[i]));
        CHECK(std::fabs(as_double(dx[i]) - ref[i])
              <= static_cast<double>(ulp_at<H>(ref[i])) + 16 * 0x1p-24 * n * scale);
        CHECK(std::fabs(as_double(dxb[i]) - ref[i])
              <= static_cast<double>(ulp_at<B>(ref[i])) + 16 * 0x1p-24 * n * scale);
      }
      // rowwise form on a two-row matrix, into half
      Eigen::Matrix<H, 2, Eigen::Dynamic> X(2, n), Y(2, n), DY(2, n), DX(2, n);
      X << x.transpose(), x.transpose();
      Y << y.transpose(), y.transpose();
      DY << dy.transpose(), dy.transpose();
      f.rowwise_backward(X, Y, DY, DX);
      for (Eigen::Index i = 0; i < n; ++i)
        CHECK(as_double(DX(1, i)) == as_double(dx[i]));
    };
    check(sml::Softmax(), "Softmax");
    check(sml::LogSoftmax(), "LogSoftmax");
    check(sml::SinglePassSoftmax(), "SinglePassSoftmax");
    check(sml::PowerSoftmax(4), "PowerSoftmax");
  }
}

TEST_CASE("half precision: OnlineNormalizer<half> and <bfloat16> accumulate in float", "[half]") {
  using softmaxlab_test::kHalfCasesF16;
  for (const HalfCase& c : kHalfCasesF16) {
    const Vec<H> x = inputs_of<H>(c);
    const Eigen::Index n = x.size();
    sml::OnlineNormalizer<H> a(c.temperature), b(c.temperature);
    a.update(x.head(n / 2));
    b.update(x.tail(n - n / 2));
    a.merge(b);
    Vec<H> y(n);
    a.write(x, y);
    softmaxlab_test::Worst w;
    for (Eigen::Index i = 0; i < n; ++i) {
      w.update(ulp_error(y[i], c.softmax[i]), 1.0,
               [&](std::ostream& s) { s << c.name << "[" << i << "]"; });
    }
    INFO("worst " << w.error << " ulp at " << w.where);
    CHECK(w.ratio <= 1.0);
    CHECK(std::is_same_v<decltype(a.max()), H>);
    if (n > 0 && std::isfinite(as_double(a.max())))
      CHECK(as_double(a.max()) == as_double(x.template cast<float>().maxCoeff()));
  }
  // a bf16 state over a uniform row of 512: the float sum does not stall
  sml::OnlineNormalizer<B> u;
  for (int k = 0; k < 512; ++k)
    u.update(Vec<B>::Constant(1, B(2.0f)));
  CHECK(u.sum() == 512.0);
}

TEST_CASE("half precision: losses take half and bfloat16 logits, computed in float",
          "[half][loss]") {
  // The loss of 16-bit logits is the float loss of the same (exact) values; the gradient is the
  // float gradient rounded once.
  std::mt19937 gen(3);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  Eigen::MatrixXf zf(6, 11);
  for (Eigen::Index i = 0; i < zf.size(); ++i)
    zf.data()[i] = normal(gen);
  const Eigen::Matrix<H, Eigen::Dynamic, Eigen::Dynamic> zh = zf.cast<H>();
  const Eigen::MatrixXf ze = zh.cast<float>();
  const std::vector<int> labels{0, 3, 10, 5, 5, 1};
  auto check = [&](const auto& loss, const char* what) {
    Eigen::MatrixXf gf(6, 11);
    const double lf = loss(ze, labels, gf);
    Eigen::Matrix<H, Eigen::Dynamic, Eigen::Dynamic> gh(6, 11);
    const double lh = loss(zh, labels, gh);
    INFO(what << ": float " << lf << " half " << lh);
    CHECK(lh == lf);
    CHECK(loss(zh, labels) == lf);
    for (Eigen::Index i = 0; i < gf.size(); ++i)
      CHECK(as_double(gh.data()[i]) == as_double(static_cast<H>(gf.data()[i])));
  };
  check(sml::CrossEntropyLoss(), "CrossEntropyLoss");
  check(sml::SparsemaxLoss(), "SparsemaxLoss");
  check(sml::EntmaxLoss(1.5), "EntmaxLoss(1.5)");
  const Eigen::Matrix<B, Eigen::Dynamic, Eigen::Dynamic> zb = zf.cast<B>();
  CHECK(sml::CrossEntropyLoss()(zb, labels)
        == sml::CrossEntropyLoss()(zb.cast<float>().eval(), labels));
}

TEST_CASE("half precision: AttentionSoftmax with a half mask", "[half][attention]") {
  // The 16-bit result is the float result on the same (exact) scores and mask, rounded once.
  std::mt19937 gen(8);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  Eigen::MatrixXf sf(4, 50), mf(4, 50);
  for (Eigen::Index i = 0; i < sf.size(); ++i) {
    sf.data()[i] = normal(gen);
    mf.data()[i] = (i % 7 == 3) ? -std::numeric_limits<float>::infinity() : normal(gen);
  }
  using MH = Eigen::Matrix<H, Eigen::Dynamic, Eigen::Dynamic>;
  const MH sh = sf.cast<H>(), mh = mf.cast<H>();
  const Eigen::MatrixXf se = sh.cast<float>(), me = mh.cast<float>();
  const sml::AttentionSoftmax f(sml::AttentionOptions().with_scale(0.5).with_softcap(30.0));
  Eigen::MatrixXf pf(4, 50);
  f.rowwise_masked(se, me, pf);
  MH ph(4, 50);
  f.rowwise_masked(sh, mh, ph);
  Vec<H> row(50);
  f.apply_masked(sh.row(2).transpose(), mh.row(2).transpose(), row);
  for (Eigen::Index i = 0; i < pf.size(); ++i)
    CHECK(as_double(ph.data()[i]) == as_double(static_cast<H>(pf.data()[i])));
  for (Eigen::Index j = 0; j < 50; ++j) {
    CHECK(as_double(row[j]) == as_double(ph(2, j)));
    if (std::isinf(me(2, j)))
      CHECK(as_double(row[j]) == 0.0);
  }
}

namespace {

// A matrix of any accepted scalar in long double (16-bit values widen exactly).
template <class M>
Eigen::Matrix<long double, Eigen::Dynamic, Eigen::Dynamic> widen_long_double(const M& x) {
  Eigen::Matrix<long double, Eigen::Dynamic, Eigen::Dynamic> out(x.rows(), x.cols());
  for (Eigen::Index i = 0; i < x.rows(); ++i)
    for (Eigen::Index j = 0; j < x.cols(); ++j)
      out(i, j) = static_cast<long double>(as_double(x(i, j)));
  return out;
}

// NormalizedSoftmax in long double on the exact (widened) 16-bit inputs: softmax of s cos, the
// target logit of row n s (cos - m) when CosFace labels are given.
template <class ME, class MW>
Eigen::Matrix<long double, Eigen::Dynamic, Eigen::Dynamic> normalized_reference(
    const ME& e, const MW& w, double s, const std::vector<int>* labels, double m) {
  using LMat = Eigen::Matrix<long double, Eigen::Dynamic, Eigen::Dynamic>;
  const LMat el = widen_long_double(e), wl = widen_long_double(w);
  LMat p(el.rows(), wl.rows());
  for (Eigen::Index n = 0; n < el.rows(); ++n) {
    const long double ne = std::sqrt(el.row(n).squaredNorm());
    long double top = -std::numeric_limits<long double>::infinity();
    for (Eigen::Index c = 0; c < wl.rows(); ++c) {
      const long double nw = std::sqrt(wl.row(c).squaredNorm());
      long double cosine = (ne == 0 || nw == 0) ? 0.0L : el.row(n).dot(wl.row(c)) / (ne * nw);
      if (labels != nullptr && (*labels)[static_cast<std::size_t>(n)] == c)
        cosine -= m;
      p(n, c) = s * cosine;
      top = std::max(top, p(n, c));
    }
    long double sum = 0;
    for (Eigen::Index c = 0; c < wl.rows(); ++c)
      sum += (p(n, c) = std::exp(p(n, c) - top));
    p.row(n) /= sum;
  }
  return p;
}

// Worst error in ulps of Out of NormalizedSoftmax on 16-bit (or mixed) E and W, against the
// long-double reference: 1 ulp (the final rounding, the result's ulp may be the next binade's)
// plus the float computation's relative error eps_f (2 s (D + 2) + 4 (1 + 2 s + m s)): each
// cosine within (D + 2) eps_f absolute, scaled by s, in the numerator and the normalizer, and
// Softmax's own 4 eps (1 + |z - max|), |z - max| <= s (2 + m).
template <class SE, class SW>
softmaxlab_test::Worst normalized_worst(Eigen::Index rows, Eigen::Index classes, Eigen::Index d,
                                        double s, bool with_margin, unsigned seed) {
  using Out = SE;
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Eigen::MatrixXf ef(rows, d), wf(classes, d);
  for (Eigen::Index i = 0; i < ef.size(); ++i)
    ef.data()[i] = normal(gen);
  for (Eigen::Index i = 0; i < wf.size(); ++i)
    wf.data()[i] = normal(gen);
  ef.row(1).setZero();  // an all-zero embedding: uniform probabilities
  const Eigen::Matrix<SE, Eigen::Dynamic, Eigen::Dynamic> e = ef.cast<SE>();
  const Eigen::Matrix<SW, Eigen::Dynamic, Eigen::Dynamic> w = wf.cast<SW>();
  std::vector<int> labels(static_cast<std::size_t>(rows));
  Eigen::VectorXi label_vec(rows);
  for (Eigen::Index n = 0; n < rows; ++n)
    label_vec(n) = labels[static_cast<std::size_t>(n)] = static_cast<int>((n * 7) % classes);
  const double m = with_margin ? 0.35 : 0.0;
  const sml::NormalizedSoftmax ns(s, with_margin ? sml::Margin::cosface(m) : sml::Margin::none());
  const auto p = with_margin ? ns(e, w, label_vec) : ns(e, w);
  CHECK(std::is_same_v<typename std::decay_t<decltype(p)>::Scalar, Out>);
  const auto exact = normalized_reference(e, w, s, with_margin ? &labels : nullptr, m);
  const long double rel_f =
      std::numeric_limits<float>::epsilon() * (2.0L * s * (d + 2) + 4.0L * (1 + 2 * s + m * s));
  softmaxlab_test::Worst worst;
  for (Eigen::Index n = 0; n < rows; ++n) {
    for (Eigen::Index c = 0; c < classes; ++c) {
      const long double x = exact(n, c);
      const double bound = static_cast<double>(1.0L + rel_f * x / ulp_at<Out>(x));
      worst.update(ulp_error(p(n, c), static_cast<double>(x)), bound, [&](std::ostream& o) {
        o << "(" << n << ", " << c << ") exact " << static_cast<double>(x) << " got "
          << as_double(p(n, c));
      });
    }
    // property: each row sums to 1 within the rounding of its entries (1/2 ulp each, relative
    // 2^-p) plus the float error
    double sum = 0;
    for (Eigen::Index c = 0; c < classes; ++c)
      sum += as_double(p(n, c));
    INFO("row " << n << " sums to " << sum);
    CHECK(std::fabs(sum - 1.0) <= std::ldexp(1.0, 1 - Format<Out>::p) + 1e-6);
  }
  return worst;
}

}  // namespace

TEST_CASE("half precision: NormalizedSoftmax within 1 ulp of the output plus the float error",
          "[half][normalized]") {
  auto run = [](auto tag_e, auto tag_w, bool margin, const char* what) {
    using SE = decltype(tag_e);
    using SW = decltype(tag_w);
    const softmaxlab_test::Worst w = normalized_worst<SE, SW>(9, 37, 64, 20.0, margin, 41);
    INFO(what << ": worst " << w.error << " ulp (bound there " << w.bound << ") at " << w.where);
    CHECK(w.ratio <= 1.0);
    WARN("NormalizedSoftmax " << what << (margin ? " CosFace" : "") << ": worst " << w.error
                              << " ulp of " << Format<SE>::name << " (bound there " << w.bound
                              << ")");
  };
  run(H(), H(), false, "half E, half W");
  run(H(), H(), true, "half E, half W");
  run(B(), B(), false, "bfloat16 E, bfloat16 W");
  run(B(), B(), true, "bfloat16 E, bfloat16 W");
  run(H(), float(), false, "half E, float W");
  run(B(), H(), true, "bfloat16 E, half W");
  run(float(), H(), false, "float E, half W");
}

TEST_CASE("half precision: NormalizedSoftmax 16-bit results are the float results rounded once",
          "[half][normalized]") {
  // Forward and backward on 16-bit E, W (and P, dP) run the float code on the widened values:
  // every output is that float output rounded once to E's (dE) or W's (dW) type.
  std::mt19937 gen(12);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Eigen::MatrixXf ef(5, 16), wf(11, 16), dpf(5, 11);
  for (Eigen::Index i = 0; i < ef.size(); ++i)
    ef.data()[i] = normal(gen);
  for (Eigen::Index i = 0; i < wf.size(); ++i)
    wf.data()[i] = normal(gen);
  for (Eigen::Index i = 0; i < dpf.size(); ++i)
    dpf.data()[i] = normal(gen);
  using MH = Eigen::Matrix<H, Eigen::Dynamic, Eigen::Dynamic>;
  using MB = Eigen::Matrix<B, Eigen::Dynamic, Eigen::Dynamic>;
  const MH eh = ef.cast<H>(), wh = wf.cast<H>(), dph = dpf.cast<H>();
  const Eigen::MatrixXf ee = eh.cast<float>(), we = wh.cast<float>(), dpe = dph.cast<float>();
  Eigen::VectorXi labels(5);
  labels << 3, 0, 10, 3, 7;
  const sml::NormalizedSoftmax ns(16.0, sml::Margin::arcface(0.4));
  auto same = [](const auto& got, const auto& ref, const char* what) {
    using G = typename std::decay_t<decltype(got)>::Scalar;
    REQUIRE(got.rows() == ref.rows());
    REQUIRE(got.cols() == ref.cols());
    for (Eigen::Index i = 0; i < ref.rows(); ++i)
      for (Eigen::Index j = 0; j < ref.cols(); ++j) {
        INFO(what << " (" << i << ", " << j << ") float " << ref(i, j));
        CHECK(as_double(got(i, j)) == as_double(static_cast<G>(ref(i, j))));
      }
  };
  same(ns.logits(eh, wh, labels), ns.logits(ee, we, labels), "logits");
  same(ns(eh, wh, labels), ns(ee, we, labels), "probabilities");
  const auto pf = ns(ee, we, labels);
  const MH ph = pf.cast<H>();
  const Eigen::MatrixXf pe = ph.cast<float>();
  const auto gh = ns.backward(eh, wh, labels, ph, dph);
  const auto gf = ns.backward(ee, we, labels, pe, dpe);
  same(gh.first, gf.first, "backward dE");
  same(gh.second, gf.second, "backward dW");
  const auto lh = ns.logits_backward(eh, wh, dph);
  const auto lf = ns.logits_backward(ee, we, dpe);
  same(lh.first, lf.first, "logits_backward dE");
  same(lh.second, lf.second, "logits_backward dW");
  // mixed: bfloat16 E, half W -> dE in bfloat16, dW in half
  const MB eb = ef.cast<B>();
  const auto gm = ns.logits_backward(eb, wh, dph);
  const auto gmf = ns.logits_backward(eb.cast<float>().eval(), we, dpe);
  CHECK(std::is_same_v<std::decay_t<decltype(gm.first)>::Scalar, B>);
  CHECK(std::is_same_v<std::decay_t<decltype(gm.second)>::Scalar, H>);
  same(gm.first, gmf.first, "mixed dE");
  same(gm.second, gmf.second, "mixed dW");
  // prototypes and classify
  Eigen::VectorXi cls(5);
  cls << 0, 1, 0, 2, 1;
  const MH proto = sml::NormalizedSoftmax::prototypes(eh, cls, 3);
  same(proto, sml::NormalizedSoftmax::prototypes(ee, cls, 3), "prototypes");
  CHECK(sml::NormalizedSoftmax::classify(eh, proto)
        == sml::NormalizedSoftmax::classify(ee, proto.cast<float>().eval()));
}

namespace {

// Attention in long double, materialized, on the widened inputs: O = softmax(scale Q K^T + mask)
// V with the causal rule j <= i + Lk - Lq; lse per query (tests/support/attention_reference.hpp).
using AttentionExact = softmaxlab_test::AttentionReference;

template <class MQ, class MM>
AttentionExact attention_reference(const MQ& q, const MQ& k, const MQ& v, const MM* mask,
                                   bool causal) {
  using LMat = Eigen::Matrix<long double, Eigen::Dynamic, Eigen::Dynamic>;
  const LMat ql = widen_long_double(q), kl = widen_long_double(k), vl = widen_long_double(v);
  const Eigen::Index lq = q.rows(), lk = k.rows();
  const long double scale = 1.0L / std::sqrt(static_cast<long double>(q.cols()));
  const long double inf = std::numeric_limits<long double>::infinity();
  const auto score = [&](Eigen::Index i, Eigen::Index j) -> long double {
    if (causal && j > i + lk - lq)
      return -inf;
    const long double m = mask ? static_cast<long double>(as_double((*mask)(i, j))) : 0.0L;
    return m == -inf ? -inf : scale * ql.row(i).dot(kl.row(j)) + m;
  };
  return softmaxlab_test::materialized_attention(lq, vl, score);
}

// Worst error of 16-bit (or mixed) Attention in ulps of Out against the reference. Bound: the
// float bound tests/test_attention.cpp checks, 8 eps_f (1 + max|V|), plus half an ulp of Out (the
// one final rounding); lse: half an ulp of Out plus 64 eps_f (1 + |lse|).
template <class In, class Out>
void attention_16bit_within_bound(bool causal, bool masked, Eigen::Index bq, Eigen::Index bk,
                                  unsigned seed) {
  const Eigen::Index lq = 37, lk = 300, d = 32, dv = 16;
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  using MI = Eigen::Matrix<In, Eigen::Dynamic, Eigen::Dynamic>;
  auto random = [&](Eigen::Index r, Eigen::Index c, float sigma) {
    Eigen::MatrixXf m(r, c);
    for (Eigen::Index i = 0; i < m.size(); ++i)
      m.data()[i] = sigma * normal(gen);
    return MI(m.cast<In>());
  };
  const MI q = random(lq, d, 1.0f), k = random(lk, d, 1.0f), v = random(lk, dv, 2.0f);
  MI mask = random(lq, lk, 1.0f);
  for (Eigen::Index i = 0; i < mask.size(); ++i) {
    if (i % 10 == 3)
      mask.data()[i] = static_cast<In>(-std::numeric_limits<float>::infinity());
  }
  mask.row(5).setConstant(static_cast<In>(-std::numeric_limits<float>::infinity()));
  sml::Attention<> attn(sml::AttentionOptions().with_causal(causal));
  attn = attn.with_block_sizes(bq, bk);
  Eigen::Matrix<Out, Eigen::Dynamic, Eigen::Dynamic> o(lq, dv);
  Eigen::Matrix<Out, Eigen::Dynamic, 1> lse(lq);
  if (masked)
    attn.apply_masked(q, k, v, mask, o, lse);
  else
    attn.apply(q, k, v, o, lse);
  const AttentionExact exact = attention_reference(q, k, v, masked ? &mask : nullptr, causal);
  double max_v = 0;
  for (Eigen::Index i = 0; i < v.size(); ++i)
    max_v = std::max(max_v, std::fabs(as_double(v.data()[i])));
  const long double eps_f = std::numeric_limits<float>::epsilon();
  const long double float_bound = 8 * eps_f * (1 + max_v);
  softmaxlab_test::Worst worst, worst_lse;
  for (Eigen::Index i = 0; i < lq; ++i) {
    for (Eigen::Index c = 0; c < dv; ++c) {
      const long double x = exact.o(i, c);
      const long double u = ulp_at<Out>(x);
      const double bound =
          static_cast<double>((float_bound + 0.5L * ulp_at<Out>(std::fabs(x) + float_bound)) / u);
      worst.update(ulp_error(o(i, c), static_cast<double>(x)), bound, [&](std::ostream& s) {
        s << "O(" << i << ", " << c << ") exact " << static_cast<double>(x) << " got "
          << as_double(o(i, c));
      });
    }
    const long double l = exact.lse(i);
    if (std::isinf(l)) {
      CHECK(as_double(lse(i)) == static_cast<double>(l));
      continue;
    }
    const long double u = ulp_at<Out>(l);
    const double bound = static_cast<double>(0.5L + 64 * eps_f * (1 + std::fabs(l)) / u);
    worst_lse.update(ulp_error(lse(i), static_cast<double>(l)), bound,
                     [&](std::ostream& s) { s << "lse(" << i << ")"; });
  }
  const char* what = causal ? (masked ? "causal, masked" : "causal") : (masked ? "masked" : "");
  INFO(Format<In>::name << " -> " << Format<Out>::name << " " << what << " blocks " << bq << "x"
                        << bk << ": O worst " << worst.error << " ulp (bound there " << worst.bound
                        << ") at " << worst.where << "; lse worst " << worst_lse.error
                        << " ulp (bound " << worst_lse.bound << ")");
  CHECK(worst.ratio <= 1.0);
  CHECK(worst_lse.ratio <= 1.0);
  WARN("Attention " << Format<In>::name << " -> " << Format<Out>::name << " " << what
                    << ": O worst " << worst.error << " ulp of the output (bound there "
                    << worst.bound << "), lse worst " << worst_lse.error << " ulp");
  // every key masked: a zero row and lse = -inf (row 5 of the mask)
  if (masked) {
    for (Eigen::Index c = 0; c < dv; ++c)
      CHECK(as_double(o(5, c)) == 0.0);
  }
}

}  // namespace

TEST_CASE(
    "half precision: Attention on half and bfloat16 Q, K, V within the float bound plus "
    "half an ulp",
    "[half][attention]") {
  attention_16bit_within_bound<H, H>(false, false, 64, 128, 1);
  attention_16bit_within_bound<H, H>(true, true, 64, 128, 2);
  attention_16bit_within_bound<B, B>(false, true, 64, 128, 3);
  attention_16bit_within_bound<B, B>(true, false, 7, 5, 4);
  attention_16bit_within_bound<H, float>(false, true, 64, 128, 5);
  attention_16bit_within_bound<float, H>(true, true, 64, 128, 6);
  attention_16bit_within_bound<H, B>(false, false, 7, 5, 7);
}

TEST_CASE(
    "half precision: Attention in 16-bit is the float forward on the widened inputs, "
    "rounded once",
    "[half][attention]") {
  std::mt19937 gen(21);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Eigen::MatrixXf qf(9, 8), kf(20, 8), vf(20, 5);
  for (Eigen::MatrixXf* m : {&qf, &kf, &vf})
    for (Eigen::Index i = 0; i < m->size(); ++i)
      m->data()[i] = normal(gen);
  using MH = Eigen::Matrix<H, Eigen::Dynamic, Eigen::Dynamic>;
  const MH q = qf.cast<H>(), k = kf.cast<H>(), v = vf.cast<H>();
  const Eigen::MatrixXf qe = q.cast<float>(), ke = k.cast<float>(), ve = v.cast<float>();
  const sml::Attention<> attn(sml::AttentionOptions().with_softcap(5.0).with_sink(0.5));
  const Eigen::MatrixXf of = attn(qe, ke, ve);
  const MH oh = attn(q, k, v);
  for (Eigen::Index i = 0; i < of.size(); ++i)
    CHECK(as_double(oh.data()[i]) == as_double(static_cast<H>(of.data()[i])));
  SECTION("causal with Lq > Lk (early queries see no key), small blocks, a mask, lse") {
    sml::Attention<> causal(sml::AttentionOptions().with_causal(true));
    causal = causal.with_block_sizes(4, 3);
    const MH k6 = k.topRows(6), v6 = v.topRows(6);  // Lq 9 > Lk 6: queries 0..2 see nothing
    MH mask = MH::Zero(9, 6);
    mask(7, 1) = H(-std::numeric_limits<float>::infinity());
    mask(4, 0) = H(1.5f);
    const Eigen::MatrixXf me = mask.cast<float>(), k6e = k6.cast<float>(), v6e = v6.cast<float>();
    Eigen::MatrixXf of2(9, 5);
    Eigen::VectorXf lf(9);
    causal.apply_masked(qe, k6e, v6e, me, of2, lf);
    MH oh2(9, 5);
    Eigen::Matrix<H, Eigen::Dynamic, 1> lh(9);
    causal.apply_masked(q, k6, v6, mask, oh2, lh);
    for (Eigen::Index i = 0; i < 9; ++i) {
      INFO("row " << i);
      CHECK(as_double(lh(i)) == as_double(static_cast<H>(lf(i))));
      for (Eigen::Index c = 0; c < 5; ++c)
        CHECK(as_double(oh2(i, c)) == as_double(static_cast<H>(of2(i, c))));
    }
    CHECK(std::isinf(as_double(lh(0))));
  }
  SECTION("a NaN in a query row makes that output row NaN") {
    MH qn = q;
    qn(3, 2) = H(std::numeric_limits<float>::quiet_NaN());
    const MH on = attn(qn, k, v);
    for (Eigen::Index c = 0; c < on.cols(); ++c) {
      CHECK(std::isnan(as_double(on(3, c))));
      CHECK(as_double(on(2, c)) == as_double(oh(2, c)));
    }
  }
  SECTION("shapes are checked, empty in gives empty out") {
    MH wrong(9, 4);
    CHECK_THROWS_AS(attn.apply(q, k, v, wrong), std::invalid_argument);
    const MH none(0, 8);
    MH out(0, 5);
    attn.apply(none, k, v, out);
    CHECK(out.size() == 0);
  }
}

namespace {

// Random Q, K, V, dO and an additive mask (every tenth entry -inf, row 5 all -inf) for the 16-bit
// backward tests, in float, to be rounded to the input types.
struct BackwardProblem {
  Eigen::MatrixXf q, k, v, dout, mask;
};

BackwardProblem backward_problem(Eigen::Index lq, Eigen::Index lk, Eigen::Index d, Eigen::Index dv,
                                 unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto random = [&](Eigen::Index r, Eigen::Index c, float sigma) {
    Eigen::MatrixXf m(r, c);
    for (Eigen::Index i = 0; i < m.size(); ++i)
      m.data()[i] = sigma * normal(gen);
    return m;
  };
  BackwardProblem p{random(lq, d, 1.0f), random(lk, d, 1.0f), random(lk, dv, 2.0f),
                    random(lq, dv, 1.0f), random(lq, lk, 1.0f)};
  const float inf = std::numeric_limits<float>::infinity();
  for (Eigen::Index i = 0; i < p.mask.size(); ++i) {
    if (i % 10 == 3)
      p.mask.data()[i] = -inf;
  }
  p.mask.row(5).setConstant(-inf);
  return p;
}

template <class S>
using Mat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;

// Backward on In inputs (Q, K, V, mask), O and dO of Out and lse of L (Out, or float beside a
// 16-bit Out) from the 16-bit forward, gradients in G; returns the forward's outputs and the
// gradients.
template <class In, class Out, class G, class L = Out>
struct BackwardRun {
  Mat<In> q, k, v, mask;
  Mat<Out> o, dout;
  Eigen::Matrix<L, Eigen::Dynamic, 1> lse;
  Mat<G> dq, dk, dv;
};

template <class In, class Out, class G, class L = Out>
BackwardRun<In, Out, G, L> run_backward(const sml::Attention<>& attn, const BackwardProblem& p,
                                        bool masked) {
  BackwardRun<In, Out, G, L> r{p.q.cast<In>(),
                               p.k.cast<In>(),
                               p.v.cast<In>(),
                               p.mask.cast<In>(),
                               Mat<Out>(p.q.rows(), p.v.cols()),
                               p.dout.cast<Out>(),
                               Eigen::Matrix<L, Eigen::Dynamic, 1>(p.q.rows()),
                               Mat<G>(p.q.rows(), p.q.cols()),
                               Mat<G>(p.k.rows(), p.k.cols()),
                               Mat<G>(p.k.rows(), p.v.cols())};
  if (masked) {
    attn.apply_masked(r.q, r.k, r.v, r.mask, r.o, r.lse);
    attn.backward_masked(r.q, r.k, r.v, r.mask, r.o, r.lse, r.dout, r.dq, r.dk, r.dv);
  } else {
    attn.apply(r.q, r.k, r.v, r.o, r.lse);
    attn.backward(r.q, r.k, r.v, r.o, r.lse, r.dout, r.dq, r.dk, r.dv);
  }
  return r;
}

// The 16-bit (or mixed) backward against the float (double when any type is double) backward on
// the widened inputs, its dQ, dK, dV rounded once to G: equal bit for bit.
template <class In, class Out, class G, class L = Out>
void backward_16bit_is_float_rounded(const sml::AttentionOptions& options, bool masked,
                                     Eigen::Index bq, Eigen::Index bk, unsigned seed,
                                     Eigen::Index lq = 37, Eigen::Index lk = 70) {
  using C = std::conditional_t<
      std::is_same_v<In, double> || std::is_same_v<Out, double> || std::is_same_v<G, double>,
      double, float>;
  sml::Attention<> attn(options);
  attn = attn.with_block_sizes(bq, bk);
  const BackwardProblem p = backward_problem(lq, lk, 16, 16, seed);
  const BackwardRun<In, Out, G, L> r = run_backward<In, Out, G, L>(attn, p, masked);
  const Mat<C> q = r.q.template cast<C>(), k = r.k.template cast<C>(), v = r.v.template cast<C>();
  const Mat<C> mask = r.mask.template cast<C>(), o = r.o.template cast<C>();
  const Mat<C> dout = r.dout.template cast<C>();
  const Eigen::Matrix<C, Eigen::Dynamic, 1> lse = r.lse.template cast<C>();
  Mat<C> dq(q.rows(), q.cols()), dk(k.rows(), k.cols()), dv(v.rows(), v.cols());
  if (masked)
    attn.backward_masked(q, k, v, mask, o, lse, dout, dq, dk, dv);
  else
    attn.backward(q, k, v, o, lse, dout, dq, dk, dv);
  auto same = [&](const Mat<G>& got, const Mat<C>& ref, const char* what) {
    Eigen::Index mismatches = 0;
    for (Eigen::Index i = 0; i < ref.rows(); ++i)
      for (Eigen::Index j = 0; j < ref.cols(); ++j) {
        const double g = as_double(got(i, j)), f = as_double(static_cast<G>(ref(i, j)));
        if (!(g == f || (std::isnan(g) && std::isnan(f)))) {
          if (mismatches++ == 0)
            UNSCOPED_INFO(what << " (" << i << ", " << j << ") got " << g << ", float rounded "
                               << f);
        }
      }
    INFO(Format<In>::name << " in, " << Format<Out>::name << " O, " << Format<G>::name
                          << " gradients, blocks " << bq << "x" << bk
                          << (options.causal() ? ", causal" : "") << (masked ? ", masked" : ""));
    CHECK(mismatches == 0);
  };
  same(r.dq, dq, "dQ");
  same(r.dk, dk, "dK");
  same(r.dv, dv, "dV");
  CHECK(dq.allFinite());
  if (masked) {  // row 5 sees no key: zero gradient
    for (Eigen::Index c = 0; c < dq.cols(); ++c)
      CHECK(as_double(r.dq(5, c)) == 0.0);
  }
}

}  // namespace

TEST_CASE(
    "half precision: Attention backward in 16-bit is the float backward on the widened inputs, "
    "rounded once",
    "[half][attention]") {
  const sml::AttentionOptions plain;
  const sml::AttentionOptions causal = plain.with_causal(true);
  for (const bool masked : {false, true}) {
    for (const sml::AttentionOptions& o : {plain, causal}) {
      backward_16bit_is_float_rounded<H, H, H>(o, masked, 64, 128, 31);
      backward_16bit_is_float_rounded<B, B, B>(o, masked, 64, 128, 32);
      backward_16bit_is_float_rounded<H, H, H>(o, masked, 7, 5, 33);
      backward_16bit_is_float_rounded<B, B, B>(o, masked, 7, 5, 34);
    }
  }
  // the other options, mixed types, double inside
  const sml::AttentionOptions capped =
      causal.with_softcap(3.0).with_sink(0.25).with_scale(0.4).with_mask_slope(0.5);
  backward_16bit_is_float_rounded<H, H, H>(capped, true, 7, 5, 35);
  backward_16bit_is_float_rounded<B, B, B>(capped, false, 64, 128, 36);
  backward_16bit_is_float_rounded<H, float, H>(causal, true, 7, 5, 37);
  backward_16bit_is_float_rounded<B, B, float>(plain, true, 64, 128, 38);
  backward_16bit_is_float_rounded<float, float, H>(causal, false, 7, 5, 39);
  backward_16bit_is_float_rounded<H, H, double>(causal, true, 7, 5, 40);
  backward_16bit_is_float_rounded<double, H, B>(plain, true, 64, 128, 41);
  // causal with Lq > Lk: the first queries see no key (lse -inf, zero gradient rows)
  backward_16bit_is_float_rounded<H, H, H>(causal, true, 7, 5, 42, 45, 30);
  backward_16bit_is_float_rounded<B, B, B>(causal, false, 64, 128, 43, 45, 30);
  SECTION("a NaN in a query row makes that dQ row NaN, and dK, dV NaN where it reaches") {
    const sml::Attention<> attn;
    const BackwardProblem p = backward_problem(9, 20, 16, 16, 44);
    BackwardRun<H, H, H> r = run_backward<H, H, H>(attn, p, false);
    r.dout(3, 2) = H(std::numeric_limits<float>::quiet_NaN());
    attn.backward(r.q, r.k, r.v, r.o, r.lse, r.dout, r.dq, r.dk, r.dv);
    for (Eigen::Index c = 0; c < r.dq.cols(); ++c) {
      CHECK(std::isnan(as_double(r.dq(3, c))));
      CHECK(std::isfinite(as_double(r.dq(2, c))));
    }
    CHECK(std::isnan(as_double(r.dv(0, 2))));
    CHECK(std::isfinite(as_double(r.dv(0, 1))));
  }
  SECTION("shapes are checked, empty in gives empty or zero out") {
    const sml::Attention<> attn;
    const BackwardProblem p = backward_problem(9, 20, 16, 16, 45);
    BackwardRun<H, H, H> r = run_backward<H, H, H>(attn, p, false);
    Mat<H> wrong(9, 15);
    CHECK_THROWS_AS(attn.backward(r.q, r.k, r.v, r.o, r.lse, r.dout, wrong, r.dk, r.dv),
                    std::invalid_argument);
    Eigen::Matrix<float, Eigen::Dynamic, 1> lse_short(8);
    Eigen::MatrixXf of = r.o.cast<float>(), dof = r.dout.cast<float>();
    CHECK_THROWS_AS(attn.backward(r.q, r.k, r.v, of, lse_short, dof, r.dq, r.dk, r.dv),
                    std::invalid_argument);
    const Mat<H> none(0, 16), none_o(0, 16);
    const Eigen::Matrix<H, Eigen::Dynamic, 1> none_lse(0);
    Mat<H> dq0(0, 16);
    attn.backward(none, r.k, r.v, none_o, none_lse, none_o, dq0, r.dk, r.dv);
    CHECK(r.dk.cast<float>().cwiseAbs().maxCoeff() == 0.0f);
    CHECK(r.dv.cast<float>().cwiseAbs().maxCoeff() == 0.0f);
  }
}

namespace {

// The gradient of <dO, O> in long double on the exact (widened) inputs, materialized:
// P = softmax(scale Q K^T + mask) (causal: j <= i + Lk - Lq), dV = P^T dO, dP = dO V^T,
// dS = P * (dP - rowsum(dO * O)), dQ = scale dS K, dK = scale dS^T Q, with the O given (the
// forward's 16-bit output). Also the magnitudes the float error scales with: A = P * (|dO| |V|^T
// + rowsum(|dO| * |O|)), |dQ| <= scale A |K|, |dK| <= scale A^T |Q|, |dV| <= P^T |dO|; the
// per-entry relative error factor rho of the recomputed P (see the test below) and the exact lse.
struct BackwardExact {
  using LMat = Eigen::Matrix<long double, Eigen::Dynamic, Eigen::Dynamic>;
  LMat dq, dk, dv, mag_dq, mag_dk, mag_dv;
  Eigen::Matrix<long double, Eigen::Dynamic, 1> lse;
  long double rho = 0;
};

template <class MI, class MO>
BackwardExact attention_backward_reference(const MI& q_in, const MI& k_in, const MI& v_in,
                                           const MI* mask_in, const MO& o_in, const MO& dout_in,
                                           bool causal) {
  using LMat = BackwardExact::LMat;
  const LMat q = widen_long_double(q_in), k = widen_long_double(k_in), v = widen_long_double(v_in);
  const LMat o = widen_long_double(o_in), dout = widen_long_double(dout_in);
  const Eigen::Index lq = q.rows(), lk = k.rows(), d = q.cols();
  const long double scale = 1.0L / std::sqrt(static_cast<long double>(d));
  const long double inf = std::numeric_limits<long double>::infinity();
  LMat t = LMat::Constant(lq, lk, -inf), mask_abs = LMat::Zero(lq, lk), dot_abs(lq, lk);
  BackwardExact r;
  r.lse.resize(lq);
  for (Eigen::Index i = 0; i < lq; ++i) {
    long double top = -inf;
    for (Eigen::Index j = 0; j < lk; ++j) {
      dot_abs(i, j) = q.row(i).cwiseAbs().dot(k.row(j).cwiseAbs());
      const long double m = mask_in ? static_cast<long double>(as_double((*mask_in)(i, j))) : 0.0L;
      if ((causal && j > i + lk - lq) || m == -inf)
        continue;
      mask_abs(i, j) = std::fabs(m);
      t(i, j) = scale * q.row(i).dot(k.row(j)) + m;
      top = std::max(top, t(i, j));
    }
    long double sum = 0;
    for (Eigen::Index j = 0; top != -inf && j < lk; ++j)
      sum += std::exp(t(i, j) - top);
    r.lse(i) = top == -inf ? -inf : top + std::log(sum);
  }
  LMat p = LMat::Zero(lq, lk);
  for (Eigen::Index i = 0; i < lq; ++i) {
    if (r.lse(i) == -inf)
      continue;
    for (Eigen::Index j = 0; j < lk; ++j) {
      if (t(i, j) == -inf)
        continue;
      p(i, j) = std::exp(t(i, j) - r.lse(i));
      r.rho = std::max(r.rho, d * scale * dot_abs(i, j) + 2 * std::fabs(t(i, j))
                                  + std::fabs(t(i, j) - r.lse(i)) + 2 * mask_abs(i, j) + 4);
    }
  }
  const Eigen::Matrix<long double, Eigen::Dynamic, 1> delta = dout.cwiseProduct(o).rowwise().sum();
  const Eigen::Matrix<long double, Eigen::Dynamic, 1> delta_abs =
      dout.cwiseAbs().cwiseProduct(o.cwiseAbs()).rowwise().sum();
  const LMat ds = p.cwiseProduct((dout * v.transpose()).colwise() - delta);
  const LMat a = p.cwiseProduct((dout.cwiseAbs() * v.cwiseAbs().transpose()).colwise() + delta_abs);
  r.dv = p.transpose() * dout;
  r.dq = scale * ds * k;
  r.dk = scale * ds.transpose() * q;
  r.mag_dv = p.transpose() * dout.cwiseAbs();
  r.mag_dq = scale * a * k.cwiseAbs();
  r.mag_dk = scale * a.transpose() * q.cwiseAbs();
  return r;
}

// Worst error of the 16-bit backward's dQ, dK, dV in ulps of G against the long-double gradient.
// Bound, per entry of dX with magnitude mag (above): kappa_X mag + 1/2 ulp of G at |exact| +
// kappa_X mag (the one final rounding), kappa_X = eps_C (rho + dv + 3 + n_X) + (e^eta - 1):
//   eps_C rho: P recomputed from lse in C, relative error of each weight (the score's dot product
//     d scale sum|q k| eps, the scale and mask roundings, exp(t - lse) within |t - lse| + 2 eps);
//   dv + 3: dP and D = rowsum(dO O) (dv-term dot products), dS's subtraction and products;
//   n_X: the accumulation, Bk + ceil(Lk / Bk) terms for dQ, Bq + ceil(Lq / Bq) for dK and dV;
//   eta = max_i |lse_i - exact lse_i|: the given lse (Out, rounded by the forward) scales row i of
//     the recomputed P by e^(exact - lse_i) exactly.
template <class In, class Out, class G, class L = Out>
void backward_16bit_within_bound(bool causal, bool masked, Eigen::Index bq, Eigen::Index bk,
                                 unsigned seed) {
  using C = std::conditional_t<
      std::is_same_v<In, double> || std::is_same_v<Out, double> || std::is_same_v<G, double>,
      double, float>;
  const Eigen::Index lq = 37, lk = 70, d = 16, dv = 16;
  sml::Attention<> attn(sml::AttentionOptions().with_causal(causal));
  attn = attn.with_block_sizes(bq, bk);
  const BackwardProblem p = backward_problem(lq, lk, d, dv, seed);
  const BackwardRun<In, Out, G, L> r = run_backward<In, Out, G, L>(attn, p, masked);
  const BackwardExact exact =
      attention_backward_reference(r.q, r.k, r.v, masked ? &r.mask : nullptr, r.o, r.dout, causal);
  long double eta = 0;
  for (Eigen::Index i = 0; i < lq; ++i) {
    if (std::isinf(exact.lse(i))) {
      CHECK(as_double(r.lse(i)) == static_cast<double>(exact.lse(i)));
      continue;
    }
    eta = std::max(eta, std::fabs(static_cast<long double>(as_double(r.lse(i))) - exact.lse(i)));
  }
  const long double eps_c = std::numeric_limits<C>::epsilon();
  auto blocks = [](Eigen::Index n, Eigen::Index b) {
    return static_cast<long double>((n + b - 1) / b);
  };
  const long double lse_term = std::expm1(eta);
  auto check = [&](const Mat<G>& got, const BackwardExact::LMat& ex, const BackwardExact::LMat& mag,
                   long double n_acc, const char* what) {
    const long double kappa = eps_c * (exact.rho + dv + 3 + n_acc) + lse_term;
    softmaxlab_test::Worst worst;
    for (Eigen::Index i = 0; i < ex.rows(); ++i)
      for (Eigen::Index c = 0; c < ex.cols(); ++c) {
        const long double x = ex(i, c), u = ulp_at<G>(x);
        const long double abs_bound = kappa * mag(i, c);
        const double bound =
            static_cast<double>((abs_bound + 0.5L * ulp_at<G>(std::fabs(x) + abs_bound)) / u);
        worst.update(ulp_error(got(i, c), static_cast<double>(x)), bound, [&](std::ostream& s) {
          s << what << "(" << i << ", " << c << ") exact " << static_cast<double>(x) << " got "
            << as_double(got(i, c)) << " magnitude " << static_cast<double>(mag(i, c));
        });
      }
    const char* how = causal ? (masked ? "causal, masked" : "causal") : (masked ? "masked" : "");
    INFO(Format<In>::name << " in, " << Format<Out>::name << " O/dO, " << Format<L>::name
                          << " lse, " << Format<G>::name << " gradients " << how << " blocks " << bq
                          << "x" << bk << ": " << what << " worst " << worst.error
                          << " ulp (bound there " << worst.bound << ") at " << worst.where
                          << "; rho " << static_cast<double>(exact.rho) << ", lse error "
                          << static_cast<double>(eta));
    CHECK(worst.ratio <= 1.0);
    WARN("Attention backward " << Format<In>::name << " -> " << Format<G>::name << " " << how << " "
                               << what << ": worst " << worst.error << " ulp of " << Format<G>::name
                               << " (bound there " << worst.bound << ", ratio " << worst.ratio
                               << "; lse error " << static_cast<double>(eta) << ")");
  };
  check(r.dq, exact.dq, exact.mag_dq, bk + blocks(lk, bk), "dQ");
  check(r.dk, exact.dk, exact.mag_dk, bq + blocks(lq, bq), "dK");
  check(r.dv, exact.dv, exact.mag_dv, bq + blocks(lq, bq), "dV");
}

}  // namespace

TEST_CASE(
    "half precision: Attention backward on half and bfloat16 within the float bound plus half an "
    "ulp",
    "[half][attention]") {
  backward_16bit_within_bound<H, H, H>(false, false, 64, 128, 51);
  backward_16bit_within_bound<H, H, H>(true, true, 7, 5, 52);
  backward_16bit_within_bound<B, B, B>(false, true, 64, 128, 53);
  backward_16bit_within_bound<B, B, B>(true, false, 7, 5, 54);
  backward_16bit_within_bound<H, float, H>(true, true, 64, 128, 55);
  backward_16bit_within_bound<H, H, float>(false, true, 7, 5, 56);
  backward_16bit_within_bound<B, B, double>(true, true, 64, 128, 57);
  // the float and double backward meet the same bound (their lse's error in eta)
  backward_16bit_within_bound<float, float, float>(true, true, 7, 5, 58);
  backward_16bit_within_bound<double, double, double>(false, true, 64, 128, 59);
}

TEST_CASE("half precision: a float lse beside a half O keeps the backward within half an ulp",
          "[half][attention]") {
  // The forward writes lse in float beside a 16-bit O (FlashAttention's convention), equal bit for
  // bit to the float forward's lse on the widened inputs; the backward from it is the float
  // backward rounded once, and within half an ulp plus the float error: the 16-bit lse's rounding
  // (2^-9 in half, 2^-6 in bfloat16 near 8), which dominated the all-16-bit case, is gone.
  const sml::AttentionOptions causal = sml::AttentionOptions().with_causal(true);
  const BackwardProblem p = backward_problem(37, 70, 16, 16, 61);
  sml::Attention<> attn(causal);
  const BackwardRun<H, H, H, float> r = run_backward<H, H, H, float>(attn, p, true);
  const Eigen::MatrixXf q = r.q.cast<float>(), k = r.k.cast<float>(), v = r.v.cast<float>();
  const Eigen::MatrixXf mask = r.mask.cast<float>();
  Eigen::MatrixXf o(q.rows(), v.cols());
  Eigen::VectorXf lse(q.rows());
  attn.apply_masked(q, k, v, mask, o, lse);
  for (Eigen::Index i = 0; i < lse.size(); ++i) {
    INFO("lse(" << i << ")");
    CHECK((r.lse(i) == lse(i) || (std::isnan(r.lse(i)) && std::isnan(lse(i)))));
  }
  backward_16bit_is_float_rounded<H, H, H, float>(causal, true, 64, 128, 62);
  backward_16bit_is_float_rounded<B, B, B, float>(causal, false, 7, 5, 63);
  backward_16bit_within_bound<H, H, H, float>(true, true, 64, 128, 64);
  backward_16bit_within_bound<B, B, B, float>(false, true, 7, 5, 65);
  backward_16bit_within_bound<H, H, float, float>(true, false, 7, 5, 66);
}
