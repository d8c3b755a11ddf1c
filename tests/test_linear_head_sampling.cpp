// LinearHeadSampler (include/softmaxlab/sampling/linear_head.hpp): next-token sampling from
// softcap(H W^T + b) without the N x V logits, against Sampler on the logits materialized here:
//   - GumbelMax: chi-square of many draws against Sampler::probabilities (float and double, a
//     block size that does not divide V); its probabilities() and log p within float rounding;
//   - TopK and RowTiles on exact data (entries k/16, so every logit is exact whatever the GEMM's
//     order): tokens equal Sampler::sample_rowwise_philox's and probabilities() equal
//     Sampler::probabilities bit for bit, for top-k, top-p, min-p, typical-p, XTC and chains
//     (the TopPMinP path and 16-bit inputs: tests/test_linear_head_top_p.cpp);
//   - the same seed gives the same tokens for every block size and token tile;
//   - -inf bias entries are never drawn; NaN rows give -1, +inf logits share the mass, greedy is
//     the first argmax; bad options and shapes throw;
//   - with a reused workspace nothing is allocated, and the workspace does not grow with N.
// clang-format off
#include "support.hpp"  // first: it configures Eigen (asserts, malloc checks)
// clang-format on

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <stdexcept>
#include <vector>

#include <catch2/catch.hpp>

#include <softmaxlab/sampling/linear_head.hpp>

namespace sml = softmaxlab;
using Eigen::Index;
using softmaxlab_test::AllocationGuard;

namespace {

// rows x cols entries k / 16, k uniform in [-8, 8]: every logit of d <= 64 such products is a
// multiple of 2^-8 below 2^5 in magnitude, hence exact in float in any summation order.
template <class Scalar>
Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> exact_matrix(Index rows, Index cols,
                                                                   unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> k(-8, 8);
  Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> m(rows, cols);
  for (Index j = 0; j < cols; ++j)
    for (Index i = 0; i < rows; ++i)
      m(i, j) = static_cast<Scalar>(k(rng)) / Scalar(16);
  return m;
}

// The materialized logits softcap(H W^T + b), as the test's own reference.
template <class Scalar>
Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> logits(
    const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& h,
    const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& w,
    const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>& b, double cap = 0) {
  Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> l = h * w.transpose();
  if (b.size() != 0)
    l.rowwise() += b.transpose();
  if (cap != 0) {
    for (Index i = 0; i < l.size(); ++i)
      l.data()[i] = static_cast<Scalar>(cap * std::tanh(double(l.data()[i]) / cap));
  }
  return l;
}

// Pearson's statistic of `counts` against probabilities p (cells of expected count < 5 pooled).
double chi_square(const std::vector<double>& counts, const Eigen::VectorXd& p, double draws,
                  int* dof) {
  double stat = 0, pooled_obs = 0, pooled_exp = 0;
  *dof = -1;
  for (Index i = 0; i < p.size(); ++i) {
    const double e = p(i) * draws;
    if (e < 5) {
      pooled_obs += counts[static_cast<std::size_t>(i)];
      pooled_exp += e;
      continue;
    }
    stat +=
        (counts[static_cast<std::size_t>(i)] - e) * (counts[static_cast<std::size_t>(i)] - e) / e;
    ++*dof;
  }
  if (pooled_exp > 0) {
    stat += (pooled_obs - pooled_exp) * (pooled_obs - pooled_exp) / pooled_exp;
    ++*dof;
  }
  return stat;
}

template <class Scalar>
void check_gumbel_chi_square(unsigned seed) {
  using M = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  using V = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  const Index v = 23, d = 6, draws = 40000;
  const M w = softmaxlab_test::random_normal(v, d, seed, 1.0).cast<Scalar>();
  const M h1 = softmaxlab_test::random_normal(1, d, seed + 1, 1.0).cast<Scalar>();
  const M h = h1.replicate(draws, 1);  // one row, drawn `draws` times (one stream per token)
  V b = softmaxlab_test::random_normal(v, 1, seed + 2, 0.5).cast<Scalar>();
  const auto opts = sml::SamplerOptions().with_temperature(0.7);
  const auto head = sml::LinearHeadSampler(opts).with_block_size(5);
  REQUIRE(head.path() == sml::LinearHeadSampler::Path::GumbelMax);
  Eigen::VectorXi tokens(draws);
  head.sample(h, w, b, 1234, tokens);
  const M l = logits<Scalar>(h1, w, b);
  const Eigen::VectorXd p =
      sml::Sampler(opts).probabilities(l.row(0)).transpose().template cast<double>();
  std::vector<double> counts(static_cast<std::size_t>(v), 0.0);
  for (Index i = 0; i < draws; ++i) {
    REQUIRE(tokens(i) >= 0);
    REQUIRE(tokens(i) < v);
    counts[static_cast<std::size_t>(tokens(i))] += 1;
  }
  int dof = 0;
  const double stat = chi_square(counts, p, double(draws), &dof);
  INFO("chi-square " << stat << " with " << dof << " degrees of freedom");
  // dof ~ 20: the 1e-6 upper quantile is about 62.
  CHECK(stat < 62);
  CHECK(dof >= 10);
}

}  // namespace

TEST_CASE("LinearHeadSampler GumbelMax draws follow Sampler::probabilities (chi-square)",
          "[sampling][linear_head]") {
  check_gumbel_chi_square<float>(11);
  check_gumbel_chi_square<double>(12);
}

TEST_CASE("LinearHeadSampler TopK and RowTiles equal the Sampler bit for bit on exact logits",
          "[sampling][linear_head]") {
  using P = sml::LinearHeadSampler::Path;
  const Index n = 7, v = 301, d = 16;
  const Eigen::MatrixXf h = exact_matrix<float>(n, d, 21);
  const Eigen::MatrixXf w = exact_matrix<float>(v, d, 22);
  const Eigen::VectorXf b = exact_matrix<float>(v, 1, 23);
  const Eigen::MatrixXf l = logits<float>(h, w, b);
  const auto base = sml::SamplerOptions();
  struct Case {
    sml::SamplerOptions o;
    P path;
  };
  const std::vector<Case> cases{
      {base.with_top_k(5), P::TopK},
      {base.with_top_k(1), P::TopK},
      {base.with_top_k(40).with_top_p(0.9).with_min_p(0.05).with_temperature(0.8), P::TopK},
      {base.with_order(sml::SamplerOptions::temperature_first_order())
           .with_top_k(30)
           .with_top_p(0.7)
           .with_temperature(1.7),
       P::TopK},
      {base.with_top_k(2000), P::TopK},  // k > V: everything kept
      {base.with_top_k(20).with_typical_p(0.8), P::TopK},
      {base.with_top_p(0.8).with_typical_p(0.95), P::RowTiles},  // (top-p alone: TopPMinP)
      {base.with_min_p(0.1).with_temperature(0.5).with_xtc(0.5, 0.1), P::RowTiles},
      {base.with_top_n_sigma(1.0).with_top_k(10), P::RowTiles},  // top-n-sigma precedes top-k
      {base.with_typical_p(0.9), P::RowTiles},
  };
  for (std::size_t c = 0; c < cases.size(); ++c) {
    INFO("case " << c);
    const auto head = sml::LinearHeadSampler(cases[c].o).with_block_size(64).with_token_tile(3);
    CHECK(head.path() == cases[c].path);
    const sml::Sampler s(cases[c].o);
    Eigen::VectorXi tokens(n), expected(n);
    head.sample(h, w, b, 77, tokens, 5);
    s.sample_rowwise_philox(l, 77, expected, 5);
    CHECK(tokens == expected);
    for (Index r = 0; r < n; ++r) {
      Eigen::VectorXf p(v);
      head.probabilities(h, w, b, r, p);
      const Eigen::VectorXf q = s.probabilities(l.row(r).transpose());
      INFO("row " << r << ": worst difference " << (p - q).cwiseAbs().maxCoeff());
      CHECK(p == q);
    }
    // log p of the drawn token: the log of the Sampler's probability.
    Eigen::VectorXd lp(n);
    sml::LinearHeadSampler::Workspace ws;
    head.sample(h, w, b, 77, tokens, lp, ws, 5);
    CHECK(tokens == expected);
    for (Index r = 0; r < n; ++r) {
      const Eigen::VectorXf q = s.probabilities(l.row(r).transpose());
      CHECK(lp(r) == std::log(double(q(tokens(r)))));
    }
  }
}

TEST_CASE("LinearHeadSampler GumbelMax probabilities and log p match softmax(z / T)",
          "[sampling][linear_head]") {
  const Index n = 5, v = 1000, d = 24;
  const Eigen::MatrixXf h = softmaxlab_test::random_normal(n, d, 31, 1.0).cast<float>();
  const Eigen::MatrixXf w = softmaxlab_test::random_normal(v, d, 32, 1.0).cast<float>();
  const Eigen::VectorXf b;
  const Eigen::MatrixXf l = logits<float>(h, w, b);
  for (double t : {1.0, 0.6, 2.5}) {
    const auto opts = sml::SamplerOptions().with_temperature(t);
    const auto head = sml::LinearHeadSampler(opts).with_block_size(97);
    Eigen::VectorXi tokens(n);
    Eigen::VectorXd lp(n);
    sml::LinearHeadSampler::Workspace ws;
    head.sample(h, w, b, 5, tokens, lp, ws);
    double worst = 0;
    for (Index r = 0; r < n; ++r) {
      // Independent reference: long double softmax of the materialized row at T.
      long double m = -INFINITY, sum = 0;
      for (Index j = 0; j < v; ++j)
        m = std::max<long double>(m, l(r, j) / static_cast<long double>(t));
      for (Index j = 0; j < v; ++j)
        sum += std::exp(l(r, j) / static_cast<long double>(t) - m);
      Eigen::VectorXf p(v);
      head.probabilities(h, w, b, r, p);
      for (Index j = 0; j < v; ++j) {
        const long double exact = std::exp(l(r, j) / static_cast<long double>(t) - m) / sum;
        // The scaling z / T rounds once in float: an error of eps/2 (|z/T| + max |z/T|).
        const long double z = std::fabs(l(r, j) / static_cast<long double>(t)) + std::fabs(m);
        worst = std::max(worst, double(std::fabs(p(j) - exact) / (exact * (1 + z))));
      }
      const long double exact_lp =
          l(r, tokens(r)) / static_cast<long double>(t) - m - std::log(sum);
      CHECK(std::fabs(lp(r) - double(exact_lp)) <= 1e-5 * (1 + std::fabs(double(exact_lp))));
    }
    INFO("T " << t << ": worst error / (eps (1 + |z/T| + |max z/T|)) " << worst / 1.1920929e-7);
    CHECK(worst <= 4 * 1.1920929e-7);
  }
}

TEST_CASE("LinearHeadSampler tokens do not depend on the block size or the token tile",
          "[sampling][linear_head]") {
  const Index n = 9, v = 777, d = 20;
  const Eigen::MatrixXf h = exact_matrix<float>(n, d, 41);
  const Eigen::MatrixXf w = exact_matrix<float>(v, d, 42);
  const Eigen::VectorXf b;
  for (const auto& o : {sml::SamplerOptions(), sml::SamplerOptions().with_temperature(0.3),
                        sml::SamplerOptions().with_top_k(50).with_top_p(0.9)}) {
    Eigen::VectorXi first(n);
    sml::LinearHeadSampler(o).sample(h, w, b, 99, first);
    for (Index block : {1, 7, 64, 776, 5000}) {
      for (Index tile : {1, 4, 9, 100}) {
        INFO("block " << block << ", tile " << tile);
        Eigen::VectorXi t(n);
        sml::LinearHeadSampler(o).with_block_size(block).with_token_tile(tile).sample(h, w, b, 99,
                                                                                      t);
        CHECK(t == first);
      }
    }
    // A different seed gives different draws (the noise is keyed by the seed).
    Eigen::VectorXi other(n);
    sml::LinearHeadSampler(o).sample(h, w, b, 100, other);
    if (o.top_k() == 0)
      CHECK(other != first);
  }
}

TEST_CASE("LinearHeadSampler never draws a class of bias -inf", "[sampling][linear_head]") {
  const Index v = 200, d = 8, draws = 3000;
  const Eigen::MatrixXf w = softmaxlab_test::random_normal(v, d, 51, 2.0).cast<float>();
  const Eigen::MatrixXf h =
      softmaxlab_test::random_normal(1, d, 52, 2.0).cast<float>().replicate(draws, 1);
  Eigen::VectorXf b = Eigen::VectorXf::Zero(v);
  for (Index j = 0; j < v; ++j) {
    if (j % 10 != 3)
      b(j) = -std::numeric_limits<float>::infinity();
  }
  // Temperature first so that top-p sees the flattened distribution and keeps all 20.
  for (const auto& o : {sml::SamplerOptions().with_temperature(50.0),
                        sml::SamplerOptions().with_top_k(100).with_temperature(50.0),
                        sml::SamplerOptions()
                            .with_order(sml::SamplerOptions::temperature_first_order())
                            .with_top_p(0.999)
                            .with_temperature(50.0)}) {
    Eigen::VectorXi t(draws);
    sml::LinearHeadSampler(o).with_block_size(16).sample(h, w, b, 7, t);
    for (Index i = 0; i < draws; ++i)
      REQUIRE(t(i) % 10 == 3);
    // A high temperature spreads the draws over all 20 allowed classes.
    std::vector<int> seen(static_cast<std::size_t>(v), 0);
    for (Index i = 0; i < draws; ++i)
      seen[static_cast<std::size_t>(t(i))] = 1;
    CHECK(std::count(seen.begin(), seen.end(), 1) == 20);
  }
}

TEST_CASE("LinearHeadSampler special values: NaN, +inf, all -inf, greedy, empty vocabulary",
          "[sampling][linear_head]") {
  const float inf = std::numeric_limits<float>::infinity();
  const Index v = 50, d = 4;
  const Eigen::MatrixXf w = softmaxlab_test::random_normal(v, d, 61, 1.0).cast<float>();
  Eigen::MatrixXf h = softmaxlab_test::random_normal(4, d, 62, 1.0).cast<float>();
  h(1, 2) = std::numeric_limits<float>::quiet_NaN();  // row 1: NaN logits
  const Eigen::VectorXf none;
  for (const auto& o :
       {sml::SamplerOptions(), sml::SamplerOptions().with_top_k(5),
        sml::SamplerOptions().with_top_p(0.5), sml::SamplerOptions().with_temperature(0)}) {
    const auto head = sml::LinearHeadSampler(o).with_block_size(8);
    Eigen::VectorXi t(4);
    Eigen::VectorXd lp(4);
    sml::LinearHeadSampler::Workspace ws;
    head.sample(h, w, none, 3, t, lp, ws);
    CHECK(t(1) == -1);
    CHECK(std::isnan(lp(1)));
    CHECK(t(0) >= 0);
    // All -inf: -1.
    const Eigen::VectorXf banned = Eigen::VectorXf::Constant(v, -inf);
    head.sample(h, w, banned, 3, t, lp, ws);
    CHECK((t.array() == -1).all());
    // +inf at classes 9, 20, 41: the draws share them evenly (each seen), log p = -log 3.
    Eigen::VectorXf b = Eigen::VectorXf::Zero(v);
    b(9) = b(20) = b(41) = inf;
    const Eigen::MatrixXf hh = h.row(0).replicate(300, 1);
    Eigen::VectorXi tt(300);
    Eigen::VectorXd ll(300);
    head.sample(hh, w, b, 3, tt, ll, ws);
    int c9 = 0, c20 = 0, c41 = 0;
    for (Index i = 0; i < 300; ++i) {
      REQUIRE((tt(i) == 9 || tt(i) == 20 || tt(i) == 41));
      c9 += tt(i) == 9;
      c20 += tt(i) == 20;
      c41 += tt(i) == 41;
      if (o.temperature() != 0)
        CHECK(std::fabs(ll(i) + std::log(3.0)) < 1e-6);
    }
    if (o.temperature() == 0) {
      CHECK(c9 == 300);  // greedy: the first +inf
    } else {
      CHECK(c9 > 60);
      CHECK(c20 > 60);
      CHECK(c41 > 60);
    }
  }
  // Greedy: the first index of the largest logit, as computed here.
  const Eigen::MatrixXf hx = exact_matrix<float>(6, 8, 63);
  const Eigen::MatrixXf wx = exact_matrix<float>(300, 8, 64);
  const Eigen::MatrixXf l = logits<float>(hx, wx, none);
  Eigen::VectorXi t(6);
  sml::LinearHeadSampler(sml::SamplerOptions().with_temperature(0))
      .with_block_size(7)
      .sample(hx, wx, 1, t);
  for (Index r = 0; r < 6; ++r) {
    Index best = 0;
    for (Index j = 1; j < 300; ++j)
      best = l(r, j) > l(r, best) ? j : best;
    CHECK(t(r) == best);
  }
  // Empty vocabulary: -1; no tokens: nothing.
  Eigen::VectorXi t2(2);
  sml::LinearHeadSampler().sample(Eigen::MatrixXf(2, 3), Eigen::MatrixXf(0, 3), 1, t2);
  CHECK((t2.array() == -1).all());
  Eigen::VectorXi t0(0);
  sml::LinearHeadSampler().sample(Eigen::MatrixXf(0, 3), Eigen::MatrixXf(5, 3), 1, t0);
}

TEST_CASE("LinearHeadSampler softcap: the Sampler's distribution of cap tanh(z / cap)",
          "[sampling][linear_head]") {
  const Index n = 3, v = 400, d = 16;
  const Eigen::MatrixXf h = softmaxlab_test::random_normal(n, d, 71, 2.0).cast<float>();
  const Eigen::MatrixXf w = softmaxlab_test::random_normal(v, d, 72, 2.0).cast<float>();
  const Eigen::VectorXf b = softmaxlab_test::random_normal(v, 1, 73, 1.0).cast<float>();
  const Eigen::MatrixXf l = logits<float>(h, w, b, 10.0);
  for (const auto& o : {sml::SamplerOptions().with_top_k(20).with_min_p(0.02),
                        sml::SamplerOptions().with_top_p(0.9)}) {
    const auto head = sml::LinearHeadSampler(o).with_softcap(10.0).with_block_size(128);
    const sml::Sampler s(o);
    for (Index r = 0; r < n; ++r) {
      Eigen::VectorXf p(v);
      head.probabilities(h, w, b, r, p);
      const Eigen::VectorXf q = s.probabilities(l.row(r).transpose());
      CHECK(((p.array() > 0) == (q.array() > 0)).all());
      const float worst = (p - q).cwiseAbs().maxCoeff();
      INFO("worst " << worst);
      CHECK(worst <= 1e-5f);
    }
  }
}

TEST_CASE("LinearHeadSampler rejects unsupported options and bad arguments",
          "[sampling][linear_head][errors]") {
  using sml::LinearHeadSampler;
  using sml::SamplerOptions;
  CHECK_THROWS_AS(LinearHeadSampler(SamplerOptions().with_penalties(1.1, 0, 0, 64)),
                  std::invalid_argument);
  CHECK_THROWS_AS(LinearHeadSampler(SamplerOptions().with_dry(0.8)), std::invalid_argument);
  CHECK_THROWS_AS(LinearHeadSampler(SamplerOptions().with_mirostat_v2(5, 0.1)),
                  std::invalid_argument);
  CHECK_THROWS_AS(LinearHeadSampler(SamplerOptions().with_logit_bias(3, 1.0)),
                  std::invalid_argument);
  CHECK_THROWS_AS(LinearHeadSampler(SamplerOptions().with_allowed_tokens({1, 2})),
                  std::invalid_argument);
  CHECK_THROWS_AS(LinearHeadSampler(SamplerOptions().with_token_mask(std::vector<bool>(5, true))),
                  std::invalid_argument);
  CHECK_THROWS_AS(LinearHeadSampler().with_softcap(-1), std::invalid_argument);
  CHECK_THROWS_AS(LinearHeadSampler().with_softcap(std::nan("")), std::invalid_argument);
  CHECK_THROWS_AS(LinearHeadSampler().with_block_size(0), std::invalid_argument);
  CHECK_THROWS_AS(LinearHeadSampler().with_token_tile(0), std::invalid_argument);
  const Eigen::MatrixXf h(2, 3), w(5, 3), w4(5, 4);
  Eigen::VectorXi t(2), t3(3);
  CHECK_THROWS_AS(LinearHeadSampler().sample(h, w4, 1, t), std::invalid_argument);
  CHECK_THROWS_AS(LinearHeadSampler().sample(h, w, 1, t3), std::invalid_argument);
  CHECK_THROWS_AS(LinearHeadSampler().sample(h, w, Eigen::VectorXf(4), 1, t),
                  std::invalid_argument);
  Eigen::VectorXd lp(3);
  LinearHeadSampler::Workspace ws;
  CHECK_THROWS_AS(LinearHeadSampler().sample(h, w, Eigen::VectorXf(), 1, t, lp, ws),
                  std::invalid_argument);
  Eigen::VectorXf p(5), p4(4);
  CHECK_THROWS_AS(LinearHeadSampler().probabilities(h, w, Eigen::VectorXf(), 2, p),
                  std::invalid_argument);
  CHECK_THROWS_AS(LinearHeadSampler().probabilities(h, w, Eigen::VectorXf(), 0, p4),
                  std::invalid_argument);
  try {
    (void)LinearHeadSampler().with_block_size(-3);
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()).find("block_size must be >= 1, but got -3") != std::string::npos);
  }
}

TEST_CASE("LinearHeadSampler allocates nothing with a workspace and never N x V",
          "[sampling][linear_head][allocation]") {
  const Index d = 8, v = 500;
  const Eigen::MatrixXf w = softmaxlab_test::random_normal(v, d, 81, 1.0).cast<float>();
  const Eigen::VectorXf b = softmaxlab_test::random_normal(v, 1, 82, 1.0).cast<float>();
  for (const auto& o : {sml::SamplerOptions().with_temperature(0.9),
                        sml::SamplerOptions().with_top_k(40).with_top_p(0.9),
                        sml::SamplerOptions().with_top_p(0.9).with_temperature(0.8),  // TopPMinP
                        sml::SamplerOptions().with_min_p(0.05)}) {
    const auto head = sml::LinearHeadSampler(o).with_block_size(32).with_token_tile(4);
    sml::LinearHeadSampler::Workspace ws;
    std::size_t bytes_small = 0;
    for (Index n : {40, 4000}) {
      INFO("N " << n);
      const Eigen::MatrixXf h = softmaxlab_test::random_normal(n, d, 83, 1.0).cast<float>();
      Eigen::VectorXi t0(n), t1(n);
      Eigen::VectorXd l0(n), l1(n);
      head.sample(h, w, b, 9, t0, l0, ws);  // sizes the workspace
      if (bytes_small == 0)
        bytes_small = ws.bytes();
      {
        AllocationGuard guard;
        head.sample(h, w, b, 9, t1, l1, ws);
        CHECK(guard.allocations() == 0);
      }
      CHECK(t1 == t0);
      CHECK(ws.bytes() == bytes_small);
      CHECK(ws.bytes() <= head.workspace_bytes(n, v));
      if (n == 4000)
        CHECK(ws.bytes() < sizeof(float) * static_cast<std::size_t>(n * v) / 20);
    }
  }
}
