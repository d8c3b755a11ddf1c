// GumbelSoftmax and Philox4x32: the generator against the published known-answer vectors, its
// bulk fill, skip-ahead and streams; the sampler's distribution (chi-square over 200,000 hard draws
// with fixed seeds), masking, extreme logits, reproducibility, the temperature limits, the soft
// sample against a long double recomputation from the same random words, and no allocation.
// clang-format off
#include "support.hpp"  // first: it configures Eigen (asserts, malloc checks)
// clang-format on

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include <catch2/catch.hpp>

#include <softmaxlab/detail/log.hpp>
#include <softmaxlab/gumbel.hpp>
#include <softmaxlab/random.hpp>

namespace sml = softmaxlab;
using Index = Eigen::Index;

namespace {

struct Kat {
  std::array<std::uint32_t, 4> counter;
  std::array<std::uint32_t, 2> key;
  std::array<std::uint32_t, 4> expected;
};
const Kat kPhiloxKat[] = {
#include "reference/philox4x32_kat.ipp"
};

// Pearson's chi-square statistic of observed counts against probabilities p (zero-probability
// cells must be empty and are left out).
double chi_square(const std::vector<long long>& counts, const std::vector<long double>& p,
                  long long total) {
  double chi2 = 0;
  for (std::size_t k = 0; k < counts.size(); ++k) {
    if (p[k] == 0)
      continue;
    const double expected = static_cast<double>(p[k] * total);
    chi2 += (counts[k] - expected) * (counts[k] - expected) / expected;
  }
  return chi2;
}

// A URBG returning a constant word: all-zero or all-one bits, the extremes of the uniform.
struct ConstantBits {
  using result_type = std::uint32_t;
  std::uint32_t value;
  static constexpr result_type min() { return 0; }
  static constexpr result_type max() { return 0xFFFFFFFFu; }
  result_type operator()() { return value; }
};

}  // namespace

// ------------------------------------------------------------------------------------------------
// Philox4x32

TEST_CASE("Philox4x32-10 matches the Random123 known-answer vectors", "[gumbel][philox]") {
  for (const Kat& kat : kPhiloxKat) {
    const auto out = sml::Philox4x32::block(kat.counter, kat.key);
    INFO("counter " << std::hex << kat.counter[0] << " " << kat.counter[1] << " " << kat.counter[2]
                    << " " << kat.counter[3] << " key " << kat.key[0] << " " << kat.key[1]);
    CHECK(out == kat.expected);
    // The generator interface gives the same four words from that counter and key.
    sml::Philox4x32 gen(kat.counter, kat.key);
    for (int w = 0; w < 4; ++w)
      CHECK(gen() == kat.expected[w]);
  }
  CHECK(std::size(kPhiloxKat) == 55);
}

TEST_CASE("Philox4x32 fill, discard and streams agree with word-by-word generation",
          "[gumbel][philox]") {
  sml::Philox4x32 scalar(12345, 6);
  std::vector<std::uint32_t> reference(1000);
  for (auto& w : reference)
    w = scalar();

  // fill() in pieces of every awkward size gives the same words in the same order (covers the
  // buffered words, the eight-block vector path and the tail).
  for (std::size_t piece : {1u, 3u, 4u, 5u, 31u, 32u, 33u, 100u, 997u}) {
    sml::Philox4x32 bulk(12345, 6);
    std::vector<std::uint32_t> got(reference.size());
    std::size_t at = 0;
    while (at < got.size()) {
      const std::size_t n = std::min(piece, got.size() - at);
      bulk.fill(got.data() + at, n);
      at += n;
    }
    INFO("piece " << piece);
    CHECK(got == reference);
    CHECK(bulk == scalar);
  }
  // discard(n) lands where n draws land.
  for (unsigned long long skip : {0ull, 1ull, 2ull, 4ull, 7ull, 64ull, 999ull}) {
    sml::Philox4x32 jumped(12345, 6);
    jumped();
    jumped.discard(skip);
    if (skip + 1 < reference.size())
      CHECK(jumped() == reference[skip + 1]);
  }
  // Skip-ahead is O(1): 2^40 words ahead is block 2^38 of the stream.
  sml::Philox4x32 far(99, 3);
  far.discard(1ull << 40);
  CHECK(far() == sml::Philox4x32::block({0, 0x40, 3, 0}, {99, 0})[0]);
  // The counter carries across its 32-bit words.
  sml::Philox4x32 carry({0xFFFFFFFFu, 0xFFFFFFFFu, 0, 0}, {1, 2});
  carry.discard(4);
  CHECK(carry() == sml::Philox4x32::block({0, 0, 1, 0}, {1, 2})[0]);

  // Different streams and seeds give different words; it works with <random> distributions.
  sml::Philox4x32 a(1, 0), b(1, 1), c(2, 0);
  CHECK(a() != b());
  CHECK(a() != c());
  std::uniform_real_distribution<double> unit(0, 1);
  sml::Philox4x32 d(5);
  double mean = 0;
  for (int i = 0; i < 10000; ++i)
    mean += unit(d) / 10000;
  CHECK(std::fabs(mean - 0.5) < 0.02);
}

// ------------------------------------------------------------------------------------------------
// GumbelSoftmax

TEST_CASE("bad tau throws std::invalid_argument naming the value", "[gumbel][parameters]") {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  // 3.6e-305 and 1e40: finite and positive, but 1/tau overflows float (a fuzz finding: the soft
  // sample came out NaN), or the scaled logits do; the range is Softmax's, [2^-100, 2^100].
  for (double tau : {0.0, -0.0, -1.0, nan, inf, -inf, 3.6e-305, 1e-31, 1e40}) {
    INFO("tau " << tau);
    CHECK_THROWS_AS(sml::GumbelSoftmax(tau), std::invalid_argument);
  }
  CHECK(sml::GumbelSoftmax(0x1p-100).tau() == 0x1p-100);
  CHECK(sml::GumbelSoftmax(0x1p100).tau() == 0x1p100);
  CHECK_THROWS_WITH(sml::GumbelSoftmax(-0.25),
                    Catch::Contains("GumbelSoftmax: tau") && Catch::Contains("-0.25"));
  CHECK(sml::GumbelSoftmax(0.1, true).tau() == 0.1);
  CHECK(sml::GumbelSoftmax(0.1, true).hard());
  sml::Philox4x32 gen(1);
  Eigen::VectorXf x(3), y(4);
  CHECK_THROWS_AS(sml::GumbelSoftmax().apply(x, y, gen), std::invalid_argument);
  Eigen::VectorXf empty(0);
  CHECK(sml::GumbelSoftmax()(empty, gen).size() == 0);
}

TEMPLATE_TEST_CASE("hard draws follow softmax(logits): chi-square over 200,000 draws",
                   "[gumbel][statistics]", float, double) {
  using Mat = Eigen::Matrix<TestType, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const std::vector<TestType> logits = {TestType(0.5),  TestType(-1.0), TestType(2.0),
                                        TestType(0.0),  TestType(-3.0), TestType(1.25),
                                        TestType(-0.5), TestType(1.0)};
  const auto p = softmaxlab_test::exact_softmax(logits);
  const Index k = static_cast<Index>(logits.size());
  const long long draws = 100000;
  // Critical value of chi-square with 7 degrees of freedom at p = 0.001.
  const double critical = 24.322;

  SECTION("hard rowwise with Philox4x32 (the bulk path)") {
    Mat x(draws, k);
    for (Index i = 0; i < k; ++i)
      x.col(i).setConstant(logits[static_cast<std::size_t>(i)]);
    sml::Philox4x32 gen(2024);
    const Mat y = sml::GumbelSoftmax(1.0, true).rowwise(x, gen);
    std::vector<long long> counts(logits.size(), 0);
    for (Index r = 0; r < draws; ++r) {
      Index at = -1;
      int ones = 0;
      for (Index i = 0; i < k; ++i) {
        ones += y(r, i) == 1;
        REQUIRE((y(r, i) == 0 || y(r, i) == 1));
        if (y(r, i) == 1)
          at = i;
      }
      REQUIRE(ones == 1);
      ++counts[static_cast<std::size_t>(at)];
    }
    const double chi2 = chi_square(counts, p, draws);
    INFO("chi-square " << chi2 << " (critical " << critical << " at p = 0.001, 7 dof)");
    CHECK(chi2 < critical);
  }
  SECTION("sample() with std::mt19937 (the scalar-draw path)") {
    Eigen::Matrix<TestType, Eigen::Dynamic, 1> x(k);
    for (Index i = 0; i < k; ++i)
      x(i) = logits[static_cast<std::size_t>(i)];
    std::mt19937 gen(77);
    std::vector<long long> counts(logits.size(), 0);
    for (long long d = 0; d < draws; ++d)
      ++counts[static_cast<std::size_t>(sml::GumbelSoftmax::sample(x, gen))];
    const double chi2 = chi_square(counts, p, draws);
    INFO("chi-square " << chi2 << " (critical " << critical << " at p = 0.001, 7 dof)");
    CHECK(chi2 < critical);
  }
}

TEMPLATE_TEST_CASE("masked (-inf) logits are never drawn", "[gumbel][special]", float, double) {
  using Mat = Eigen::Matrix<TestType, Eigen::Dynamic, Eigen::Dynamic>;
  const TestType inf = std::numeric_limits<TestType>::infinity();
  const Index rows = 100000, k = 6;
  Mat x(rows, k);
  for (Index i = 0; i < k; ++i)
    x.col(i).setConstant(i % 2 == 0 ? -inf : static_cast<TestType>(i));  // masked: 0, 2, 4
  sml::Philox4x32 gen(3);
  const Mat hard = sml::GumbelSoftmax(1.0, true).rowwise(x, gen);  // strided rows
  const Mat soft = sml::GumbelSoftmax(0.5).rowwise(x, gen);
  for (Index i = 0; i < k; i += 2) {
    CHECK((hard.col(i).array() == 0).all());
    CHECK((soft.col(i).array() == 0).all());  // exactly 0
  }
  CHECK(((hard.rowwise().sum().array() - 1).abs() == 0).all());
  // The largest unmasked logit (5) dominates but the others (1, 3) still appear.
  CHECK(hard.col(5).sum() > rows / 2);
  CHECK(hard.col(3).sum() > 0);
  CHECK(hard.col(1).sum() > 0);

  // A row of only -inf gives zeros, and sample() has nothing to draw.
  Eigen::Matrix<TestType, Eigen::Dynamic, 1> all(5);
  all.setConstant(-inf);
  CHECK((sml::GumbelSoftmax()(all, gen).array() == 0).all());
  CHECK((sml::GumbelSoftmax(1, true)(all, gen).array() == 0).all());
  CHECK(sml::GumbelSoftmax::sample(all, gen) == -1);
  // sample() never returns a masked index.
  Eigen::Matrix<TestType, Eigen::Dynamic, 1> one(4);
  one << -inf, TestType(-100), -inf, -inf;
  for (int d = 0; d < 1000; ++d)
    REQUIRE(sml::GumbelSoftmax::sample(one, gen) == 1);
}

TEST_CASE("100,000 samples on extreme logits are finite and sum to 1", "[gumbel][special]") {
  const float big = std::numeric_limits<float>::max();
  const Index rows = 12500, k = 8;  // 100,000 samples of each kind below
  Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> x(rows, k);
  const float row[k] = {big, -big, 0.0f, big, 1e30f, -1e30f, std::numeric_limits<float>::min(),
                        -big};
  for (Index i = 0; i < k; ++i)
    x.col(i).setConstant(row[i]);
  sml::Philox4x32 gen(11);
  double worst_sum = 0;
  for (double tau : {0.1, 1.0, 100.0}) {
    for (int repeat = 0; repeat < 8; ++repeat) {
      const auto y = sml::GumbelSoftmax(tau).rowwise(x, gen);
      REQUIRE(y.allFinite());
      REQUIRE((y.array() >= 0).all());
      for (Index r = 0; r < rows; ++r) {
        const double sum = y.row(r).cast<double>().sum();
        worst_sum = std::max(worst_sum, std::fabs(sum - 1));
      }
      // The -FLT_MAX and -1e30 entries never get mass; the two FLT_MAX entries share it.
      CHECK((y.col(1).array() == 0).all());
      CHECK((y.col(5).array() == 0).all());
    }
  }
  INFO("worst |sum - 1| = " << worst_sum);
  CHECK(worst_sum <= 2e-6);
  // Double, at its own extremes.
  Eigen::VectorXd xd(4);
  xd << std::numeric_limits<double>::max(), -std::numeric_limits<double>::max(), 0, 1e300;
  for (int d = 0; d < 1000; ++d) {
    const Eigen::VectorXd y = sml::GumbelSoftmax(0.1)(xd, gen);
    REQUIRE(y.allFinite());
    REQUIRE(std::fabs(y.sum() - 1) < 1e-14);
  }
}

TEST_CASE("the uniforms are never 0 or 1: all-zero and all-one bits give finite samples",
          "[gumbel][special]") {
  Eigen::VectorXf x = Eigen::VectorXf::LinSpaced(37, -5, 5);
  Eigen::VectorXd xd = x.cast<double>();
  for (std::uint32_t bits : {0u, 0xFFFFFFFFu}) {
    ConstantBits gen{bits};
    INFO("bits " << std::hex << bits);
    const Eigen::VectorXf y = sml::GumbelSoftmax(0.1)(x, gen);
    const Eigen::VectorXd yd = sml::GumbelSoftmax(0.1)(xd, gen);
    CHECK(y.allFinite());
    CHECK(yd.allFinite());
    CHECK(std::fabs(y.sum() - 1) < 2e-6);
    CHECK(std::fabs(yd.sum() - 1) < 1e-14);
    // With every noise equal the sample is softmax(x / tau): the largest logit.
    CHECK(sml::GumbelSoftmax::sample(x, gen) == 36);
  }
}

TEST_CASE("NaN and +inf rules", "[gumbel][special]") {
  const float inf = std::numeric_limits<float>::infinity();
  sml::Philox4x32 gen(8);
  Eigen::VectorXf x = Eigen::VectorXf::LinSpaced(20, -1, 1);
  x(7) = std::numeric_limits<float>::quiet_NaN();
  CHECK(sml::GumbelSoftmax()(x, gen).array().isNaN().all());
  CHECK(sml::GumbelSoftmax(1, true)(x, gen).array().isNaN().all());
  CHECK(sml::GumbelSoftmax::sample(x, gen) == -1);
  x(7) = inf;
  x(12) = inf;
  const Eigen::VectorXf soft = sml::GumbelSoftmax()(x, gen);
  CHECK(soft(7) == 0.5f);
  CHECK(soft(12) == 0.5f);
  CHECK(soft.sum() == 1.0f);
  const Eigen::VectorXf hard = sml::GumbelSoftmax(1, true)(x, gen);
  CHECK(hard(7) == 1.0f);
  CHECK(hard.sum() == 1.0f);
  CHECK(sml::GumbelSoftmax::sample(x, gen) == 7);
}

TEMPLATE_TEST_CASE("same seed, same sample; streams and skip-ahead are reproducible",
                   "[gumbel][reproducible]", float, double) {
  using Vec = Eigen::Matrix<TestType, Eigen::Dynamic, 1>;
  using Mat = Eigen::Matrix<TestType, Eigen::Dynamic, Eigen::Dynamic>;
  const Mat x = Mat::Random(9, 1031) * 4;  // 1031: several chunks and a packet tail
  const sml::GumbelSoftmax g(0.7);
  sml::Philox4x32 a(42, 1), b(42, 1), c(42, 2);
  const Mat ya = g.rowwise(x, a);
  const Mat yb = g.rowwise(x, b);
  const Mat yc = g.rowwise(x, c);
  CHECK((ya.array() == yb.array()).all());  // bit for bit
  CHECK((ya.array() != yc.array()).any());
  CHECK(a == b);

  // Row i of rowwise() is the i-th of successive apply() calls on a contiguous copy of the row,
  // and each row consumes exactly n (float) or 2n (double) words: skipping them lands on row i.
  sml::Philox4x32 seq(42, 1);
  const unsigned long long words_per_row = (std::is_same_v<TestType, float> ? 1 : 2) * 1031ull;
  for (Index r = 0; r < x.rows(); ++r) {
    Vec row = x.row(r).transpose();
    Vec y(row.size());
    g.apply(row, y, seq);
    CHECK(((y - ya.row(r).transpose()).array().abs()
           <= 4 * std::numeric_limits<TestType>::epsilon() * y.array())
              .all());
    sml::Philox4x32 jump(42, 1);
    jump.discard(words_per_row * static_cast<unsigned long long>(r));
    CHECK(sml::GumbelSoftmax::sample(row, jump) == [&] {
      sml::Philox4x32 again(42, 1);
      again.discard(words_per_row * static_cast<unsigned long long>(r));
      Vec hard = sml::GumbelSoftmax(1, true)(row, again);
      Index at;
      hard.maxCoeff(&at);
      return at;
    }());
  }
  // In place gives the same result as out of place.
  Mat inplace = x;
  sml::Philox4x32 d(42, 1);
  g.rowwise(inplace, inplace, d);
  CHECK((inplace.array() == ya.array()).all());
}

TEST_CASE("tau = 0.01 is nearly one-hot, tau = 100 nearly uniform", "[gumbel][temperature]") {
  const Index k = 10, n = 2000;
  Eigen::MatrixXf x(n, k);
  for (Index i = 0; i < k; ++i)
    x.col(i).setConstant(0.1f * static_cast<float>(i));  // logits in [0, 0.9]
  sml::Philox4x32 gen(5), same(5);
  const Eigen::MatrixXf cold = sml::GumbelSoftmax(0.01).rowwise(x, gen);
  const Eigen::MatrixXf hard = sml::GumbelSoftmax(0.01, true).rowwise(x, same);
  // Same noise: the cold soft sample peaks where the hard sample is 1, and carries almost all the
  // mass there (exp(-gap / 0.01) is tiny unless two perturbed logits are within ~0.05).
  double mean_peak = 0;
  Index agree = 0;
  for (Index r = 0; r < n; ++r) {
    Index soft_at, hard_at;
    mean_peak += cold.row(r).maxCoeff(&soft_at) / double(n);
    hard.row(r).maxCoeff(&hard_at);
    agree += soft_at == hard_at;
  }
  INFO("mean peak at tau 0.01: " << mean_peak);
  CHECK(agree == n);
  CHECK(mean_peak > 0.97);

  const Eigen::MatrixXf warm = sml::GumbelSoftmax(100).rowwise(x, gen);
  // |g| <= 16.7 and the logits spread 0.9: every entry within exp(+-0.18) of 1/k.
  const float worst = ((warm.array() * k) - 1).abs().maxCoeff();
  INFO("worst |k y - 1| at tau 100: " << worst);
  CHECK(worst < 0.25f);
  const Eigen::RowVectorXf mean = warm.colwise().mean();
  CHECK(((mean.array() * k - 1).abs() < 0.01f).all());
}

TEMPLATE_TEST_CASE("the soft sample matches a long double recomputation from the same words",
                   "[gumbel][accuracy]", float, double) {
  using Vec = Eigen::Matrix<TestType, Eigen::Dynamic, 1>;
  constexpr int words_per = std::is_same_v<TestType, float> ? 1 : 2;
  constexpr int bits = std::numeric_limits<TestType>::digits - 1;  // 23 or 52
  const long double eps = std::numeric_limits<TestType>::epsilon();
  softmaxlab_test::Worst worst;
  for (double tau : {0.1, 0.5, 1.0, 3.0}) {
    for (Index n : {1, 7, 64, 1000}) {
      const Vec x = Vec::Random(n) * 8;
      sml::Philox4x32 gen(static_cast<std::uint64_t>(n * 31 + 7), 1), copy = gen;
      const Vec y = sml::GumbelSoftmax(tau)(x, gen);
      // The same words, turned into u = k 2^-bits + 2^-(bits+1) and g = -log(-log u) exactly.
      std::vector<std::uint32_t> w(static_cast<std::size_t>(words_per * n));
      copy.fill(w.data(), w.size());
      std::vector<long double> z(static_cast<std::size_t>(n)), g(z.size());
      long double m = -std::numeric_limits<long double>::infinity(), gmax = 0, zmax = 0;
      for (Index i = 0; i < n; ++i) {
        const std::size_t s = static_cast<std::size_t>(i);
        std::uint64_t k;
        if (words_per == 1)
          k = w[s] >> 9;
        else
          k = ((std::uint64_t{w[2 * s + 1]} << 32) | w[2 * s]) >> 12;
        const long double u = std::ldexp(static_cast<long double>(k) + 0.5L, -bits);
        REQUIRE(u > 0);
        REQUIRE(u < 1);
        g[s] = -std::log(-std::log(u));
        z[s] = static_cast<long double>(x(i)) + g[s];
        m = std::max(m, z[s]);
        gmax = std::max(gmax, std::fabs(g[s]));
        zmax = std::max(zmax, std::fabs(z[s]));
      }
      long double sum = 0;
      std::vector<long double> p(z.size());
      for (std::size_t s = 0; s < z.size(); ++s)
        sum += p[s] = std::exp((z[s] - m) / tau);
      for (Index i = 0; i < n; ++i) {
        const std::size_t s = static_cast<std::size_t>(i);
        const long double exact = p[s] / sum;
        const long double arg = std::fabs((z[s] - m) / tau);
        // Softmax's bound on the perturbed logits, plus the rounding of x + g and of the vector
        // log (a few ulps of |g|), amplified by 1/tau through exp (for y_i and for the sum).
        const double bound = static_cast<double>(4 * (1 + arg) + 8 * (zmax + 2 * gmax) / tau);
        const double err = static_cast<double>(
            std::fabs(static_cast<long double>(y(i)) - exact)
            / (eps
               * std::max(exact, static_cast<long double>(std::numeric_limits<TestType>::min()))));
        worst.update(err, bound, [&](std::ostream& o) {
          o << "tau " << tau << " n " << n << " i " << i << " y " << y(i) << " exact "
            << static_cast<double>(exact);
        });
      }
    }
  }
  INFO(worst.report());
  CHECK(worst.ratio <= 1);
}

TEST_CASE("apply and rowwise into a given output allocate nothing", "[gumbel][allocation]") {
  Eigen::VectorXf x = Eigen::VectorXf::Random(3000), y(3000);
  Eigen::MatrixXd X = Eigen::MatrixXd::Random(40, 700), Y(40, 700);  // rowwise: strided rows
  sml::Philox4x32 gen(1);
  std::mt19937_64 mt(2);
  const sml::GumbelSoftmax soft(0.5), hard(1.0, true);
  softmaxlab_test::AllocationGuard guard;
  soft.apply(x, y, gen);
  hard.apply(x, y, mt);
  soft.rowwise(X, Y, gen);
  hard.colwise(X, Y, mt);
  soft.apply(x.segment(5, 100), y.segment(0, 100), gen);
  const Index at = sml::GumbelSoftmax::sample(x, gen);
  CHECK(guard.allocations() == 0);
  CHECK(at >= 0);
}

TEMPLATE_TEST_CASE("the Gumbel log (detail/log.hpp) against long double", "[gumbel][log]", float,
                   double) {
  using Packet = sml::detail::PacketOf<TestType>;
  constexpr int P = sml::detail::kPacketSize<TestType>;
  softmaxlab_test::Worst worst;
  alignas(64) TestType in[P], out[P];
  int lane = 0;
  auto flush = [&] {
    Eigen::internal::pstore(
        out, sml::detail::plog_positive_normal_u20(Eigen::internal::pload<Packet>(in)));
    for (int k = 0; k < lane; ++k) {
      const long double exact = std::log(static_cast<long double>(in[k]));
      // Error in ulps of the result (at least the smallest normal ulp, for log x near 0).
      const long double ulp =
          std::numeric_limits<TestType>::epsilon()
          * std::max(std::fabs(exact),
                     static_cast<long double>(std::numeric_limits<TestType>::min()));
      const double err =
          static_cast<double>(std::fabs(static_cast<long double>(out[k]) - exact) / ulp);
      worst.update(err, 2.5, [&](std::ostream& o) { o << "log(" << in[k] << ") = " << out[k]; });
    }
    lane = 0;
  };
  auto push = [&](TestType v) {
    in[lane++] = v;
    if (lane == P)
      flush();
  };
  if constexpr (std::is_same_v<TestType, float>) {
    // Every 29th float from 2^-24 to 17 (the arguments the noise can produce), and every float
    // within 2^-10 of 1 (where log x is smallest and relative error hardest).
    std::uint32_t bits;
    const float lo = 0x1p-24f;
    std::memcpy(&bits, &lo, sizeof bits);
    for (float v = lo; v <= 17.0f; bits += 29, std::memcpy(&v, &bits, sizeof v))
      push(v);
    for (float v = 1.0f - 0x1p-10f; v <= 1.0f + 0x1p-10f; v = std::nextafter(v, 2.0f))
      push(v);
  } else {
    std::mt19937_64 rng(3);
    std::uniform_real_distribution<double> exponent(-53, 5.3);
    for (int i = 0; i < 2000000; ++i)
      push(std::exp2(exponent(rng)));
    for (int i = -100000; i <= 100000; ++i)
      push(1.0 + i * 0x1p-40);
  }
  flush();
  INFO(worst.report());
  CHECK(worst.ratio <= 1);
}
