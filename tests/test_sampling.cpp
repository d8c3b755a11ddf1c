// Sampler and top_k_log_softmax: the kept set and probabilities against an independent sort-based
// long double implementation of the stage rules (random rows with and without ties, both code
// paths, float and double), chi-square of 200,000 draws against probabilities() with fixed seeds,
// Philox reproducibility, special values, bad options, no allocation with a workspace.
// clang-format off
#include "support.hpp"  // first: it configures Eigen (asserts, malloc checks)
// clang-format on

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include <softmaxlab/random.hpp>
#include <softmaxlab/sampling.hpp>

namespace sml = softmaxlab;
using Index = Eigen::Index;
using softmaxlab_test::AllocationGuard;
using softmaxlab_test::Worst;

namespace {

struct Config {
  double temperature;
  Index top_k;
  double top_p;
  double min_p;
};

sml::SamplerOptions options_of(const Config& c) {
  // The stage rules below apply temperature first (the order this file's reference implements).
  return sml::SamplerOptions()
      .with_order(sml::SamplerOptions::temperature_first_order())
      .with_temperature(c.temperature)
      .with_top_k(c.top_k)
      .with_top_p(c.top_p)
      .with_min_p(c.min_p);
}

std::string describe(const Config& c) {
  std::ostringstream s;
  s << "T=" << c.temperature << " k=" << c.top_k << " p=" << c.top_p << " min_p=" << c.min_p;
  return s.str();
}

// The stage rules, written directly from the documentation: sort by decreasing scaled logit, apply
// top-k, top-p and min-p on long double probabilities. `ambiguous` is set when a boundary sum or
// ratio is within `tol` (relative) of its threshold, where rounding may legitimately decide.
struct Reference {
  std::vector<long double> q;
  bool ambiguous = false;
};

template <class Scalar>
Reference reference(const std::vector<Scalar>& x, const Config& c, long double tol) {
  const Index n = static_cast<Index>(x.size());
  Reference r;
  r.q.assign(x.size(), 0.0L);
  std::vector<Index> order(x.size());
  std::iota(order.begin(), order.end(), Index(0));
  std::stable_sort(order.begin(), order.end(), [&](Index a, Index b) { return x[a] > x[b]; });
  const long double inf = std::numeric_limits<long double>::infinity();
  if (c.temperature == 0) {
    r.q[order[0]] = 1;
    return r;
  }
  const long double m = static_cast<long double>(x[order[0]]) / c.temperature;
  std::vector<long double> w(x.size());
  std::vector<bool> kept(x.size());
  for (Index i = 0; i < n; ++i) {
    const long double z = static_cast<long double>(x[i]) / c.temperature;
    w[i] = x[i] == -std::numeric_limits<Scalar>::infinity() ? 0.0L : std::exp(z - m);
    kept[i] = w[i] > 0;
  }
  if (c.top_k > 0 && c.top_k <= n) {
    const Scalar kth = x[order[c.top_k - 1]];
    for (Index i = 0; i < n; ++i)
      kept[i] = kept[i] && x[i] >= kth;
  }
  auto kept_sum = [&] {
    long double s = 0;
    for (Index i = 0; i < n; ++i)
      s += kept[i] ? w[i] : 0.0L;
    return s;
  };
  if (c.top_p < 1) {
    const long double total = kept_sum();
    long double cum = 0;
    Scalar boundary = x[order[0]];
    for (Index j = 0; j < n; ++j) {
      const Index i = order[j];
      if (!kept[i])
        continue;
      const long double before = cum;
      cum += w[i] / total;
      if (std::fabs(cum - c.top_p) < tol || std::fabs(before - c.top_p) < tol)
        r.ambiguous = true;
      if (cum >= c.top_p) {
        boundary = x[i];
        break;
      }
      boundary = x[i];
    }
    for (Index i = 0; i < n; ++i)
      kept[i] = kept[i] && x[i] >= boundary;
  }
  if (c.min_p > 0) {
    for (Index i = 0; i < n; ++i) {
      if (kept[i] && std::fabs(w[i] - c.min_p) < tol * c.min_p)
        r.ambiguous = true;
      kept[i] = kept[i] && w[i] >= c.min_p;  // the max has w = 1 and survives every stage
    }
  }
  const long double total = kept_sum();
  for (Index i = 0; i < n; ++i)
    r.q[i] = kept[i] ? w[i] / total : 0.0L;
  (void)inf;
  return r;
}

template <class Scalar>
std::vector<Scalar> random_row(Index n, bool ties, std::mt19937& rng) {
  std::normal_distribution<double> normal(0.0, 3.0);
  std::vector<Scalar> x(static_cast<std::size_t>(n));
  for (auto& v : x) {
    const double g = normal(rng);
    v = static_cast<Scalar>(ties ? std::round(g * 2) / 2 : g);  // ties: steps of 0.5
  }
  return x;
}

const Config kConfigs[] = {
    {1.0, 0, 1.0, 0.0},       // plain softmax sampling (large path)
    {0.8, 40, 1.0, 0.0},      // top-k
    {0.8, 0, 0.95, 0.0},      // top-p alone (large path, histogram)
    {1.0, 0, 0.5, 0.0},       // a tight nucleus
    {0.7, 0, 1.0, 0.05},      // min-p alone
    {0.8, 40, 0.95, 0.05},    // the chain, small path
    {1.3, 3, 0.9, 0.1},       // k smaller than the ties
    {0.8, 2000, 0.95, 0.02},  // k beyond the heap: nth_element and the large path
    {0.0, 0, 1.0, 0.0},       // greedy
};

template <class Scalar>
void check_against_reference() {
  std::mt19937 rng(20261130);
  sml::SamplingWorkspace ws;
  Worst worst;
  int compared = 0, ambiguous = 0;
  const double eps = std::numeric_limits<Scalar>::epsilon();
  for (const Index n : {Index(7), Index(50), Index(1000), Index(5000)}) {
    for (const bool ties : {false, true}) {
      for (int rep = 0; rep < 3; ++rep) {
        const std::vector<Scalar> x = random_row<Scalar>(n, ties, rng);
        const Eigen::Map<const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>> xv(x.data(), n);
        for (const Config& c : kConfigs) {
          const sml::Sampler s(options_of(c));
          Eigen::Matrix<Scalar, Eigen::Dynamic, 1> p(n);
          s.probabilities(xv, p, ws);
          const Reference r = reference(x, c, 64.0L * eps);
          ++compared;
          if (r.ambiguous) {
            ++ambiguous;
            continue;
          }
          const Scalar m = *std::max_element(x.begin(), x.end());
          Index kept = 0;
          for (Index i = 0; i < n; ++i) {
            if ((p(i) > 0) != (r.q[i] > 0)) {  // one assertion per row, not per entry (speed)
              FAIL(describe(c) << " n=" << n << " ties=" << ties << ": entry " << i
                               << " has p = " << p(i) << ", exact " << double(r.q[i]));
            }
            kept += r.q[i] > 0;
            if (r.q[i] > 0) {
              const double err =
                  double(std::fabs((static_cast<long double>(p(i)) - r.q[i]) / r.q[i])) / eps;
              const double d = c.temperature == 0 ? 0 : (double(m) - double(x[i])) / c.temperature;
              worst.update(err, 4 * (1 + d), [&](std::ostream& o) {
                o << describe(c) << " n=" << n << " ties=" << ties << " i=" << i;
              });
            }
          }
          REQUIRE(s.kept_count(xv, ws) == kept);
        }
      }
    }
  }
  INFO(worst.report() << "; rows compared " << compared << ", skipped as ambiguous " << ambiguous);
  CHECK(worst.ratio <= 1);
  CHECK(ambiguous * 20 < compared);
}

// Pearson's chi-square of `draws` samples against probabilities(); returns the statistic and the
// degrees of freedom (kept tokens - 1). Cells expected below 5 are pooled.
template <class Gen>
std::pair<double, int> chi_square(const sml::Sampler& s, const Eigen::VectorXd& x, Gen& gen,
                                  int draws) {
  sml::SamplingWorkspace ws;
  Eigen::VectorXd p(x.size());
  s.probabilities(x, p, ws);
  std::vector<long> count(static_cast<std::size_t>(x.size()), 0);
  long outside = 0;  // draws of -1 or of a token outside the kept set: there must be none
  for (int d = 0; d < draws; ++d) {
    const Index t = s.sample(x, gen, ws);
    if (t < 0 || p(t) == 0) {
      ++outside;
      continue;
    }
    ++count[static_cast<std::size_t>(t)];
  }
  CHECK(outside == 0);
  double chi2 = 0, pooled_expected = 0, pooled_observed = 0;
  int cells = 0;
  for (Index i = 0; i < x.size(); ++i) {
    if (p(i) == 0)
      continue;
    const double e = p(i) * draws;
    if (e < 5) {
      pooled_expected += e;
      pooled_observed += double(count[i]);
      continue;
    }
    chi2 += (double(count[i]) - e) * (double(count[i]) - e) / e;
    ++cells;
  }
  if (pooled_expected > 0) {
    chi2 +=
        (pooled_observed - pooled_expected) * (pooled_observed - pooled_expected) / pooled_expected;
    ++cells;
  }
  return {chi2, cells - 1};
}

}  // namespace

TEST_CASE("Sampler: kept set and probabilities match the sort-based reference (float)",
          "[sampling]") {
  check_against_reference<float>();
}

TEST_CASE("Sampler: kept set and probabilities match the sort-based reference (double)",
          "[sampling]") {
  check_against_reference<double>();
}

TEST_CASE("Sampler: the heap path and the histogram path agree", "[sampling]") {
  // top_k = n runs the small (heap) path over every token; top_k = 0 the large (histogram) path.
  std::mt19937 rng(7);
  sml::SamplingWorkspace ws;
  for (const bool ties : {false, true}) {
    const std::vector<double> x = random_row<double>(900, ties, rng);
    const Eigen::Map<const Eigen::VectorXd> xv(x.data(), 900);
    for (const double p : {0.3, 0.9, 0.99}) {
      Eigen::VectorXd a(900), b(900);
      sml::Sampler(sml::SamplerOptions().with_top_k(900).with_top_p(p).with_min_p(0.001))
          .probabilities(xv, a, ws);
      sml::Sampler(sml::SamplerOptions().with_top_p(p).with_min_p(0.001)).probabilities(xv, b, ws);
      for (Index i = 0; i < 900; ++i) {
        INFO("p=" << p << " ties=" << ties << " i=" << i);
        REQUIRE((a(i) > 0) == (b(i) > 0));
        REQUIRE(std::fabs(a(i) - b(i)) <= 1e-13 * b(i));
      }
    }
  }
}

TEST_CASE("Sampler: chi-square of 200,000 draws against probabilities()", "[sampling]") {
  // Fixed seeds. Critical value: chi-square at p = 1e-6 is below dof + 7 sqrt(2 dof) + 12 for the
  // degrees of freedom here (<= 40), so a correct sampler fails with probability < 1e-6 per case.
  std::mt19937 rng(99);
  std::normal_distribution<double> normal(0.0, 1.5);
  Eigen::VectorXd x(40);
  for (Index i = 0; i < 40; ++i)
    x(i) = std::round(normal(rng) * 4) / 4;  // with ties
  x(3) = -std::numeric_limits<double>::infinity();
  const Config configs[] = {
      {1.0, 0, 1.0, 0.0}, {0.8, 10, 1.0, 0.0}, {0.8, 0, 0.9, 0.0}, {1.2, 20, 0.95, 0.02}};
  std::uint64_t seed = 1;
  for (const Config& c : configs) {
    sml::Philox4x32 gen(seed++, 0);
    const auto [chi2, dof] = chi_square(sml::Sampler(options_of(c)), x, gen, 200000);
    INFO(describe(c) << ": chi2 = " << chi2 << " with " << dof << " degrees of freedom");
    CHECK(dof >= 1);
    CHECK(chi2 < dof + 7 * std::sqrt(2.0 * dof) + 12);
  }
  // A standard generator works too.
  std::mt19937_64 mt(5);
  const auto [chi2, dof] = chi_square(sml::Sampler(options_of({0.9, 0, 0.8, 0.0})), x, mt, 200000);
  INFO("mt19937_64, top-p 0.8: chi2 = " << chi2 << " with " << dof << " degrees of freedom");
  CHECK(chi2 < dof + 7 * std::sqrt(2.0 * dof) + 12);
}

TEST_CASE("Sampler: Philox draws are reproducible and consume two words each", "[sampling]") {
  std::mt19937 rng(3);
  const std::vector<float> x = random_row<float>(32000, false, rng);
  const Eigen::Map<const Eigen::VectorXf> xv(x.data(), 32000);
  sml::SamplingWorkspace ws;
  for (const Config& c : kConfigs) {
    const sml::Sampler s(options_of(c));
    sml::Philox4x32 a(2026, 14), b(2026, 14), words(2026, 14);
    for (int d = 0; d < 50; ++d)
      REQUIRE(s.sample(xv, a, ws) == s.sample(xv, b, ws));
    if (c.temperature != 0)
      words.discard(100);
    CHECK(a == words);
  }
  // Inverse CDF on u = 53 bits of two words (high word first): with two tokens of equal
  // probability the token is decided by u < 1/2, i.e. by the first word's top bit.
  const Eigen::Vector2d two(0.5, 0.5);
  const sml::Sampler plain;
  for (int d = 0; d < 64; ++d) {
    sml::Philox4x32 g(11, std::uint64_t(d)), peek(11, std::uint64_t(d));
    const std::uint32_t hi = peek();
    CHECK(plain.sample(two, g) == ((hi >> 31) ? 1 : 0));
  }
}

TEST_CASE("Sampler: special values", "[sampling]") {
  const double inf = std::numeric_limits<double>::infinity();
  const double nan = std::numeric_limits<double>::quiet_NaN();
  sml::Philox4x32 gen(1);
  for (const Config& c : kConfigs) {
    INFO(describe(c));
    const sml::Sampler s(options_of(c));
    // NaN anywhere: -1 and a NaN row.
    Eigen::VectorXd x(5);
    x << 1, 2, nan, 0, -inf;
    CHECK(s.sample(x, gen) == -1);
    CHECK(s.probabilities(x).array().isNaN().all());
    // All -inf and empty rows: -1 and zeros.
    x.setConstant(-inf);
    CHECK(s.sample(x, gen) == -1);
    CHECK((s.probabilities(x).array() == 0).all());
    CHECK(s.sample(Eigen::VectorXd(0), gen) == -1);
    // -inf is never drawn even when everything else is kept.
    x << -inf, 0.0, -inf, -1.0, -inf;
    for (int d = 0; d < 200; ++d) {
      const Index t = s.sample(x, gen);
      CHECK((t == 1 || t == 3));
    }
    const Eigen::VectorXd p = s.probabilities(x);
    CHECK(p(0) == 0);
    CHECK(p(2) == 0);
    CHECK(p(4) == 0);
    // +inf entries share the mass (greedy: the first of them).
    x << 1.0, inf, 3.0, inf, -inf;
    const Eigen::VectorXd q = s.probabilities(x);
    if (c.temperature == 0) {
      CHECK(q(1) == 1);
      CHECK(q(3) == 0);
    } else {
      CHECK(q(1) == 0.5);
      CHECK(q(3) == 0.5);
    }
    CHECK(q(0) + q(2) + q(4) == 0);
    for (int d = 0; d < 100; ++d) {
      const Index t = s.sample(x, gen);
      CHECK((t == 1 || t == 3));
    }
  }
  // Greedy is the first index of the largest logit, whatever the other options.
  Eigen::VectorXf y(6);
  y << 0, 4, 1, 4, -inf, 2;
  const sml::Sampler greedy(sml::SamplerOptions().with_temperature(0).with_top_p(0.1));
  CHECK(greedy.sample(y, gen) == 1);
  // At least one token survives the tightest settings.
  const sml::Sampler tight(
      sml::SamplerOptions().with_top_k(1).with_top_p(1e-9).with_min_p(0.999999));
  sml::SamplingWorkspace ws;
  for (int d = 0; d < 50; ++d) {
    const Index t = tight.sample(y, gen, ws);
    CHECK((t == 1 || t == 3));  // the tie at the top is kept by every stage
  }
  CHECK(tight.kept_count(y, ws) == 2);
}

TEST_CASE("Sampler: every bad option throws, naming the parameter and the value", "[sampling]") {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  auto message = [](auto&& f) {
    try {
      f();
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("no exception");
  };
  for (const double t : {-1.0, nan, inf, 1e-200, 1e300}) {
    const std::string what =
        message([&] { static_cast<void>(sml::SamplerOptions().with_temperature(t)); });
    CHECK_THAT(what, Catch::Contains("temperature"));
  }
  CHECK_THAT(message([] { static_cast<void>(sml::SamplerOptions().with_top_k(-3)); }),
             Catch::Contains("top_k") && Catch::Contains("-3"));
  for (const double p : {0.0, -0.5, 1.5, nan, inf}) {
    CHECK_THAT(message([&] { static_cast<void>(sml::SamplerOptions().with_top_p(p)); }),
               Catch::Contains("top_p"));
  }
  CHECK_THAT(message([] { static_cast<void>(sml::SamplerOptions().with_top_p(1.25)); }),
             Catch::Contains("1.25"));
  for (const double p : {1.0, -0.1, 2.0, nan}) {
    CHECK_THAT(message([&] { static_cast<void>(sml::SamplerOptions().with_min_p(p)); }),
               Catch::Contains("min_p"));
  }
  CHECK_THAT(message([] { static_cast<void>(sml::SamplerOptions().with_min_p(-0.25)); }),
             Catch::Contains("-0.25"));
  // Valid edges.
  CHECK_NOTHROW(
      sml::SamplerOptions().with_temperature(0).with_top_k(0).with_top_p(1).with_min_p(0));
  // Shapes.
  const sml::Sampler s;
  Eigen::VectorXf x = Eigen::VectorXf::Zero(4), wrong(3);
  CHECK_THROWS_AS(s.probabilities(x, wrong), std::invalid_argument);
  sml::Philox4x32 gen;
  CHECK_THROWS_AS(s.sample(Eigen::MatrixXf::Zero(2, 2), gen), std::invalid_argument);
  Eigen::VectorXi tokens(3);
  CHECK_THROWS_AS(s.sample_rowwise(Eigen::MatrixXf::Zero(2, 4), gen, tokens),
                  std::invalid_argument);
}

TEST_CASE("Sampler: rowwise, strided rows and no allocation with a workspace", "[sampling]") {
  std::mt19937 rng(17);
  Eigen::MatrixXf L(6, 3000);  // column-major: rows are strided
  for (Index r = 0; r < L.rows(); ++r) {
    const std::vector<float> x = random_row<float>(3000, r % 2 == 1, rng);
    L.row(r) = Eigen::Map<const Eigen::RowVectorXf>(x.data(), 3000);
  }
  sml::SamplingWorkspace ws;
  for (const Config& c : kConfigs) {
    const sml::Sampler s(options_of(c));
    Eigen::VectorXi tokens(6);
    sml::Philox4x32 a(8), b(8);
    s.sample_rowwise(L, a, tokens, ws);
    for (Index r = 0; r < 6; ++r) {
      const Eigen::RowVectorXf row = L.row(r);
      CHECK(tokens(r) == s.sample(row, b, ws));
    }
    Eigen::VectorXf p(3000);
    s.probabilities(L.row(0), p, ws);  // warm-up: the workspace has grown
    AllocationGuard guard;
    for (int d = 0; d < 5; ++d) {
      s.sample_rowwise(L, a, tokens, ws);
      s.probabilities(L.row(1), p, ws);
    }
    CHECK(guard.allocations() == 0);
  }
}

// ---------------------------------------------------------------------------------------------
// top_k_log_softmax

namespace {

template <class Scalar>
void check_top_k_log_softmax(Index n, bool ties, std::mt19937& rng, Worst& worst) {
  const std::vector<Scalar> x = random_row<Scalar>(n, ties, rng);
  const Eigen::Map<const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>> xv(x.data(), n);
  // Reference: sort every index, exact log-sum-exp in long double.
  std::vector<Index> order(x.size());
  std::iota(order.begin(), order.end(), Index(0));
  std::stable_sort(order.begin(), order.end(), [&](Index a, Index b) { return x[a] > x[b]; });
  const long double m = x[order[0]];
  long double sum = 0;
  for (Scalar v : x)
    sum += std::exp(static_cast<long double>(v) - m);
  const long double lse = m + std::log(sum);
  sml::SamplingWorkspace ws;
  for (const Index k : {Index(1), Index(4), Index(64)}) {
    Eigen::VectorXi idx(k);
    Eigen::Matrix<Scalar, Eigen::Dynamic, 1> lp(k);
    sml::top_k_log_softmax(xv, k, idx, lp, ws);
    for (Index j = 0; j < k; ++j) {
      INFO("n=" << n << " ties=" << ties << " k=" << k << " j=" << j);
      REQUIRE(idx(j) == order[j]);
      const long double exact = static_cast<long double>(x[order[j]]) - lse;
      const double err = softmaxlab_test::log_error_eps(lp(j), double(exact),
                                                        double(exact - (long double)double(exact)));
      worst.update(err, 4.0, [&](std::ostream& o) {
        o << "n=" << n << " ties=" << ties << " k=" << k << " j=" << j;
      });
    }
  }
}

}  // namespace

TEST_CASE("top_k_log_softmax: indices and values against a sort and long double", "[sampling]") {
  std::mt19937 rng(41);
  Worst wf, wd;
  for (const Index n : {Index(64), Index(1000), Index(32000)}) {
    for (const bool ties : {false, true}) {
      check_top_k_log_softmax<float>(n, ties, rng, wf);
      check_top_k_log_softmax<double>(n, ties, rng, wd);
    }
  }
  INFO("float: " << wf.report() << "; double: " << wd.report());
  CHECK(wf.ratio <= 1);
  CHECK(wd.ratio <= 1);
}

TEST_CASE("top_k_log_softmax: special values, rowwise, errors, no allocation", "[sampling]") {
  const float inf = std::numeric_limits<float>::infinity();
  Eigen::VectorXi idx(3);
  Eigen::VectorXf lp(3);
  Eigen::VectorXf x(5);
  x << 1, std::numeric_limits<float>::quiet_NaN(), 0, 2, 3;
  sml::top_k_log_softmax(x, 3, idx, lp);
  CHECK((idx.array() == -1).all());
  CHECK(lp.array().isNaN().all());
  x.setConstant(-inf);
  sml::top_k_log_softmax(x, 3, idx, lp);
  CHECK(idx == Eigen::Vector3i(0, 1, 2));
  CHECK((lp.array() == -inf).all());
  x << 0, inf, -inf, inf, 5;
  sml::top_k_log_softmax(x, 3, idx, lp);
  CHECK(idx == Eigen::Vector3i(1, 3, 4));
  CHECK(lp(0) == static_cast<float>(-std::log(2.0)));
  CHECK(lp(1) == static_cast<float>(-std::log(2.0)));
  CHECK(lp(2) == -inf);
  x << -inf, 1, -inf, -inf, 0;  // fewer finite than k: the -inf entries follow, by index
  sml::top_k_log_softmax(x, 3, idx, lp);
  CHECK(idx == Eigen::Vector3i(1, 4, 0));
  CHECK(lp(2) == -inf);
  CHECK(std::fabs(lp(0) - static_cast<float>(1 - std::log(std::exp(1.0) + 1))) <= 1e-6f);
  // Errors.
  CHECK_THROWS_AS(sml::top_k_log_softmax(x, -1, idx, lp), std::invalid_argument);
  CHECK_THROWS_AS(sml::top_k_log_softmax(x, 6, idx, lp), std::invalid_argument);
  Eigen::VectorXi idx2(2);
  CHECK_THROWS_AS(sml::top_k_log_softmax(x, 3, idx2, lp), std::invalid_argument);
  // Rowwise equals row by row; allocation-free with a workspace once warm.
  std::mt19937 rng(5);
  Eigen::MatrixXf L(4, 700);
  for (Index r = 0; r < 4; ++r) {
    const std::vector<float> row = random_row<float>(700, r == 2, rng);
    L.row(r) = Eigen::Map<const Eigen::RowVectorXf>(row.data(), 700);
  }
  Eigen::MatrixXi I(4, 8);
  Eigen::MatrixXf P(4, 8);
  sml::SamplingWorkspace ws;
  sml::top_k_log_softmax_rowwise(L, 8, I, P, ws);
  for (Index r = 0; r < 4; ++r) {
    Eigen::VectorXi i1(8);
    Eigen::VectorXf p1(8);
    sml::top_k_log_softmax(L.row(r), 8, i1, p1, ws);
    CHECK(I.row(r).transpose() == i1);
    CHECK(P.row(r).transpose() == p1);
  }
  AllocationGuard guard;
  sml::top_k_log_softmax_rowwise(L, 8, I, P, ws);
  CHECK(guard.allocations() == 0);
}
