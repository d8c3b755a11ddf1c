// SinglePassSoftmax and OnlineNormalizer beyond the reference tables: parameters, the masking /
// +inf / NaN rules on whole rows and across chunk boundaries, merge algebra (identity, order,
// chunking), agreement with Softmax on long and adversarial rows, and no allocations.
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include <catch2/catch.hpp>

#include <softmaxlab/single_pass.hpp>
#include <softmaxlab/softmax.hpp>

#include "support.hpp"

namespace sml = softmaxlab;
using Index = Eigen::Index;
using softmaxlab_test::AllocationGuard;

namespace {

// Max of |a_i - b_i| / (eps |b_i|) over entries with b_i > 0; NaN and zero mismatches count as inf.
template <class Vec>
double max_relative_eps(const Vec& a, const Vec& b) {
  using Scalar = typename Vec::Scalar;
  double worst = 0;
  for (Index i = 0; i < a.size(); ++i) {
    if (b(i) == 0 || a(i) == 0) {
      if (a(i) != b(i))
        return INFINITY;
      continue;
    }
    const double e = std::fabs(double(a(i)) - double(b(i)))
                     / (std::numeric_limits<Scalar>::epsilon() * std::fabs(double(b(i))));
    if (!(e <= worst))
      worst = e;
  }
  return worst;
}

template <class Scalar>
Eigen::Matrix<Scalar, Eigen::Dynamic, 1> normal_row(Index n, unsigned seed, double sigma) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> normal(0.0, sigma);
  Eigen::Matrix<Scalar, Eigen::Dynamic, 1> x(n);
  for (Index i = 0; i < n; ++i)
    x(i) = static_cast<Scalar>(normal(gen));
  return x;
}

}  // namespace

TEST_CASE("bad temperatures and mismatched merges throw std::invalid_argument",
          "[single_pass][parameters]") {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (double t : {0.0, -1.0, nan, double(INFINITY), 1e-40, 1e40}) {
    INFO("temperature " << t);
    CHECK_THROWS_AS(sml::SinglePassSoftmax(t), std::invalid_argument);
    CHECK_THROWS_AS(sml::OnlineNormalizer<float>(t), std::invalid_argument);
  }
  CHECK_THROWS_WITH(sml::SinglePassSoftmax(-2.5),
                    Catch::Contains("SinglePassSoftmax: temperature") && Catch::Contains("-2.5"));
  CHECK_THROWS_WITH(sml::OnlineNormalizer<double>(0.0),
                    Catch::Contains("OnlineNormalizer: temperature") && Catch::Contains("got 0"));
  sml::OnlineNormalizer<double> a(1.0), b(2.0);
  CHECK_THROWS_WITH(a.merge(b), Catch::Contains("same temperature") && Catch::Contains("2"));
  Eigen::VectorXd x(4), y(3);
  x.setZero();
  a.update(x);
  CHECK_THROWS_WITH(a.write(x, y), Catch::Contains("OnlineNormalizer") && Catch::Contains("4"));
  CHECK_THROWS_AS(sml::SinglePassSoftmax().apply(x, y), std::invalid_argument);
  // empty in, empty out; an empty state
  const Eigen::VectorXf empty(0);
  CHECK(sml::SinglePassSoftmax()(empty).size() == 0);
  sml::OnlineNormalizer<float> e;
  e.update(empty);
  CHECK(e.max() == -INFINITY);
  CHECK(e.sum() == 0);
  CHECK(e.log_sum_exp() == -INFINITY);
  CHECK(e.count() == 0);
}

TEMPLATE_TEST_CASE("special values: masking, +inf and NaN, whole rows and across chunks",
                   "[single_pass][special]", float, double) {
  using Vec = Eigen::Matrix<TestType, Eigen::Dynamic, 1>;
  using Mat = Eigen::Matrix<TestType, Eigen::Dynamic, Eigen::Dynamic>;
  const TestType inf = std::numeric_limits<TestType>::infinity();
  const TestType nan = std::numeric_limits<TestType>::quiet_NaN();
  const Index n = 5003;  // odd, several 8 KiB blocks, packet tail
  // Whole row (contiguous), strided row (a row of a column-major matrix), and the row split into
  // three chunks at 1000 and 3500 whose states are merged: all three must give the same rule.
  const auto run_all = [&](const Vec& x, auto&& check) {
    check(Vec(sml::SinglePassSoftmax()(x)), "contiguous");
    Mat m = Mat::Zero(3, n);
    m.row(1) = x.transpose();
    check(Vec(sml::SinglePassSoftmax().rowwise(m).row(1).transpose()), "strided");
    sml::OnlineNormalizer<TestType> a, b, c;
    a.update(x.head(1000));
    b.update(x.segment(1000, 2500));
    c.update(x.tail(n - 3500));
    c.merge(a).merge(b);
    Vec y(n);
    c.write(x.head(1000), y.head(1000));
    c.write(x.segment(1000, 2500), y.segment(1000, 2500));
    c.write(x.tail(n - 3500), y.tail(n - 3500));
    check(y, "chunked");
  };
  Vec x = Vec::LinSpaced(n, -20, 20);

  SECTION("-inf entries get exactly 0 and the rest sums to 1; a chunk of only -inf adds nothing") {
    for (Index i = 0; i < n; i += 3)
      x(i) = -inf;
    x.segment(1000, 2500).setConstant(-inf);  // the middle chunk is fully masked
    const Vec ref = sml::Softmax()(x);
    run_all(x, [&](const Vec& y, const char* how) {
      INFO(how);
      for (Index i = 0; i < n; ++i)
        REQUIRE((y(i) == 0) == (x(i) == -inf));
      CHECK(std::fabs(static_cast<double>(y.template cast<long double>().sum()) - 1) < 1e-6);
      CHECK(max_relative_eps(y, ref) <= 8 * (1 + 40));
    });
  }
  SECTION("a row of only -inf gives zeros, never NaN") {
    x.setConstant(-inf);
    run_all(x, [&](const Vec& y, const char* how) {
      INFO(how);
      CHECK((y.array() == 0).all());
    });
    sml::OnlineNormalizer<TestType> s;
    s.update(x);
    CHECK(s.max() == -inf);
    CHECK(s.sum() == 0);
    CHECK(s.log_sum_exp() == -INFINITY);
  }
  SECTION("+inf entries share the mass equally, also when they sit in different chunks") {
    x(5) = inf;     // chunk a
    x(3000) = inf;  // chunk b
    x(4000) = inf;  // chunk c
    x(9) = -inf;
    run_all(x, [&](const Vec& y, const char* how) {
      INFO(how);
      for (Index i = 0; i < n; ++i) {
        const bool at_inf = i == 5 || i == 3000 || i == 4000;
        REQUIRE(y(i) == (at_inf ? TestType(1) / 3 : TestType(0)));
      }
    });
    sml::OnlineNormalizer<TestType> s;
    s.update(x);
    CHECK(s.max() == inf);
    CHECK(s.sum() == 3);
    CHECK(s.log_sum_exp() == INFINITY);
  }
  SECTION("a +inf after finite chunks and finite chunks after a +inf: no inf - inf anywhere") {
    sml::OnlineNormalizer<TestType> s;
    Vec a = Vec::Constant(7, 1), b = Vec::Constant(5, 2), c = Vec::Constant(3, 3);
    b(2) = inf;
    s.update(a).update(b).update(c).update(b);
    CHECK(s.max() == inf);
    CHECK(s.sum() == 2);
    Vec yb(5);
    s.write(b, yb);
    CHECK(yb(2) == TestType(0.5));
    CHECK((yb.array() == 0).count() == 4);
  }
  SECTION("a NaN anywhere makes the whole row NaN, whichever chunk holds it") {
    for (Index pos : {Index(0), Index(2000), n - 1}) {
      Vec z = x;
      z(pos) = nan;
      z(3) = inf;
      z(4) = -inf;
      run_all(z, [&](const Vec& y, const char* how) {
        INFO(how << ", NaN at " << pos);
        CHECK(y.array().isNaN().all());
      });
    }
    sml::OnlineNormalizer<TestType> s, t;
    Vec z = x;
    z(17) = nan;
    s.update(z);
    t.update(x);
    CHECK(std::isnan(s.max()));
    CHECK(std::isnan(s.sum()));
    CHECK(std::isnan(s.log_sum_exp()));
    CHECK(std::isnan(t.merge(s).max()));   // NaN survives merges from either side
    CHECK(std::isnan(t.update(x).max()));  // and later updates
  }
}

TEMPLATE_TEST_CASE("merging is exact up to rounding: identity, order, chunking, log-sum-exp",
                   "[single_pass][merge]", float, double) {
  using Vec = Eigen::Matrix<TestType, Eigen::Dynamic, 1>;
  const Index n = 20000;
  const Vec x = normal_row<TestType>(n, 11, 4.0);

  sml::OnlineNormalizer<TestType> whole;
  whole.update(x);

  SECTION("merging an empty state changes nothing, bit for bit, from either side") {
    sml::OnlineNormalizer<TestType> left, right = whole;
    left.merge(whole);
    right.merge(sml::OnlineNormalizer<TestType>());
    CHECK(left.max() == whole.max());
    CHECK(left.sum() == whole.sum());
    CHECK(right.max() == whole.max());
    CHECK(right.sum() == whole.sum());
    CHECK(left.count() == n);
  }
  SECTION("any split, any merge order: the same normalizer within a few roundings") {
    std::mt19937 gen(3);
    for (int trial = 0; trial < 20; ++trial) {
      std::vector<Index> cuts{0, n};
      std::uniform_int_distribution<Index> where(0, n);
      for (int k = 0; k < 1 + trial % 9; ++k)
        cuts.push_back(where(gen));
      std::sort(cuts.begin(), cuts.end());
      std::vector<sml::OnlineNormalizer<TestType>> parts(cuts.size() - 1);
      for (std::size_t k = 0; k + 1 < cuts.size(); ++k)
        parts[k].update(x.segment(cuts[k], cuts[k + 1] - cuts[k]));
      std::shuffle(parts.begin(), parts.end(), gen);
      // a tree of merges: pairwise, then pairwise again
      while (parts.size() > 1) {
        std::vector<sml::OnlineNormalizer<TestType>> next;
        for (std::size_t k = 0; k < parts.size(); k += 2) {
          next.push_back(parts[k]);
          if (k + 1 < parts.size())
            next.back().merge(parts[k + 1]);
        }
        parts = next;
      }
      const auto& merged = parts.front();
      INFO("trial " << trial << ": sum " << merged.sum() << " vs " << whole.sum());
      CHECK(merged.max() == whole.max());
      CHECK(merged.count() == n);
      CHECK(std::fabs(merged.sum() - whole.sum())
            <= 4 * std::numeric_limits<TestType>::epsilon() * whole.sum());
    }
  }
  SECTION("log_sum_exp and sum agree with a long double evaluation") {
    long double m = x.maxCoeff(), d = 0;
    for (Index i = 0; i < n; ++i)
      d += std::exp(static_cast<long double>(x(i)) - m);
    const double eps = std::numeric_limits<TestType>::epsilon();
    CHECK(whole.max() == static_cast<TestType>(m));
    CHECK(std::fabs(whole.sum() - static_cast<double>(d)) <= 4 * eps * static_cast<double>(d));
    const double lse = static_cast<double>(m + std::log(d));
    CHECK(std::fabs(whole.log_sum_exp() - lse) <= 4 * eps * (1 + std::fabs(lse)));
  }
  SECTION("temperature: the state of x with T equals the state of x / T (power-of-two T)") {
    sml::OnlineNormalizer<TestType> hot(4.0), plain;
    hot.update(x);
    plain.update((x / TestType(4)).eval());
    CHECK(hot.max() == x.maxCoeff());
    const double eps = std::numeric_limits<TestType>::epsilon();
    CHECK(std::fabs(hot.sum() - plain.sum()) <= 8 * eps * plain.sum());
    CHECK(std::fabs(hot.log_sum_exp() - plain.log_sum_exp())
          <= 8 * eps * (1 + std::fabs(plain.log_sum_exp())));
  }
  SECTION("write and write_log from a merged state match SinglePassSoftmax") {
    sml::OnlineNormalizer<TestType> a, b;
    a.update(x.head(n / 3));
    b.update(x.tail(n - n / 3));
    a.merge(b);
    Vec y(n), ly(n);
    a.write(x, y);
    a.write_log(x, ly);
    const Vec ref = sml::SinglePassSoftmax()(x);
    const Vec log_ref = sml::LogSoftmax()(x);
    const double bound_y = 8 * (1 + 40);  // two results, each within 4 eps (1 + |x - m|)
    CHECK(max_relative_eps(y, ref) <= bound_y);
    CHECK((ly - log_ref).cwiseAbs().maxCoeff()
          <= 8 * std::numeric_limits<TestType>::epsilon() * (1 + log_ref.cwiseAbs().maxCoeff()));
  }
}

TEMPLATE_TEST_CASE("SinglePassSoftmax agrees with Softmax on every storage path and temperature",
                   "[single_pass][softmax]", float, double) {
  using Vec = Eigen::Matrix<TestType, Eigen::Dynamic, 1>;
  using Mat = Eigen::Matrix<TestType, Eigen::Dynamic, Eigen::Dynamic>;
  const Mat X = Mat::Random(7, 3001) * TestType(12);
  for (double t : {1.0, 0.3, 5.0}) {
    INFO("T = " << t);
    const sml::SinglePassSoftmax f(t);
    const sml::Softmax g(t);
    const Mat rows = f.rowwise(X), cols = f.colwise(X);
    const Mat rows_ref = g.rowwise(X), cols_ref = g.colwise(X);
    const double bound = 8 * (1 + 24 / t);
    for (Index r = 0; r < X.rows(); ++r)
      CHECK(max_relative_eps(Vec(rows.row(r).transpose()), Vec(rows_ref.row(r).transpose()))
            <= bound);
    for (Index c = 0; c < X.cols(); c += 97)
      CHECK(max_relative_eps(Vec(cols.col(c)), Vec(cols_ref.col(c))) <= bound);
    // an expression input, and in place
    const Vec expr = f((X.row(2) * TestType(0.5)).transpose());
    const Vec expr_ref = g((X.row(2) * TestType(0.5)).transpose());
    CHECK(max_relative_eps(expr, expr_ref) <= bound);
    Vec inplace = X.row(3).transpose();
    f.apply(inplace, inplace);
    CHECK(max_relative_eps(inplace, Vec(rows_ref.row(3).transpose())) <= bound);
  }
}

TEST_CASE("long and adversarial rows: 2^24 floats sum to 1 within 2e-6; ascending rows",
          "[single_pass][summation]") {
  const Index n = Index(1) << 24;
  Eigen::VectorXf x = normal_row<float>(n, 5, 4.0), y(n);
  sml::SinglePassSoftmax().apply(x, y);
  long double sum = y.cast<long double>().sum();
  INFO("normal row: sum - 1 = " << static_cast<double>(sum - 1));
  CHECK(std::fabs(static_cast<double>(sum - 1)) <= 2e-6);
  // This output (64 MiB) is written with streaming stores; a misaligned output (head and tail
  // outside the aligned middle) and the in-place form (ordinary stores) give the same bits.
  {
    Eigen::VectorXf buffer(n + 1);
    Eigen::Map<Eigen::VectorXf> shifted(buffer.data() + 1, n);
    sml::SinglePassSoftmax().apply(x, shifted);
    CHECK(shifted == y);
    Eigen::VectorXf inplace = x;
    sml::SinglePassSoftmax().apply(inplace, inplace);
    CHECK(inplace == y);
  }
  // Ascending: every block raises the max, so the state is rescaled at every block.
  x.setLinSpaced(-40.0f, 40.0f);
  sml::SinglePassSoftmax().apply(x, y);
  sum = y.cast<long double>().sum();
  INFO("ascending row: sum - 1 = " << static_cast<double>(sum - 1));
  CHECK(std::fabs(static_cast<double>(sum - 1)) <= 2e-6);
  const Eigen::VectorXf ref = sml::Softmax()(x);
  CHECK(max_relative_eps(y, ref) <= 8 * (1 + 80));
  // All equal: every probability 1/n within an ulp.
  x.setConstant(2.5f);
  sml::SinglePassSoftmax().apply(x, y);
  const float expected = 1.0f / static_cast<float>(n);
  CHECK(((y.array() - expected).abs() <= expected * std::numeric_limits<float>::epsilon()).all());
}

TEST_CASE("SinglePassSoftmax and OnlineNormalizer never allocate", "[single_pass][allocation]") {
  Eigen::MatrixXf X = Eigen::MatrixXf::Random(5, 2000), Y(5, 2000);
  Eigen::VectorXd v = Eigen::VectorXd::Random(4097), w(4097);
  const sml::SinglePassSoftmax f(0.7);
  sml::OnlineNormalizer<double> a, b;
  AllocationGuard guard;
  f.apply(v, w);
  f.apply(v, v);
  f.rowwise(X, Y);
  f.colwise(X, Y);
  f.apply(X.row(1), Y.row(2));
  a.update(v.head(1000));
  b.update(v.tail(3097));
  b.update(v.segment(7, 100) * 2.0);  // an expression chunk
  a.merge(b);
  a.write(v, w);
  a.write_log(v.head(100), w.head(100));
  CHECK(guard.allocations() == 0);
}
