// LinearHeadSampler's TopPMinP path and its 16-bit inputs (include/softmaxlab/sampling/
// linear_head.hpp), against Sampler on the logits materialized here:
//   - path() is TopPMinP exactly for chains of top-p and min-p (temperature anywhere) without
//     top-k; typical-p, top-n-sigma and XTC without top-k stay on RowTiles;
//   - on exact data (entries k/4 or k/16: every logit exact in float whatever the GEMM's order)
//     the tokens equal Sampler::sample_rowwise_philox's and probabilities() is within the
//     Sampler's bound of Sampler::probabilities, with the same kept set, for top-p, min-p, both,
//     with temperature first, last and between, and rising logits that force compactions;
//   - chi-square of many draws against Sampler::probabilities on random (inexact) data;
//   - rows whose candidates pass the cap fall back to RowTiles (equal to the Sampler's bit for
//     bit), next to rows that do not, in one tile;
//   (no allocation with a reused workspace: tests/test_linear_head_sampling.cpp's test covers
//   the TopPMinP chains too)
//   - half and bfloat16 H and W (and bias) give the float path's tokens, log p and
//     probabilities on the widened values, on every path, with W widened in several chunks.
// clang-format off
#include "support.hpp"  // first: it configures Eigen (asserts, malloc checks)
// clang-format on

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include <catch2/catch.hpp>

#include <softmaxlab/sampling/linear_head.hpp>

namespace sml = softmaxlab;
using Eigen::Index;
using P = sml::LinearHeadSampler::Path;

namespace {

// rows x cols entries k * unit, k uniform in [-8, 8] (unit a power of 2): products of d such
// entries sum exactly in float in any order while d 64 unit^2 stays below 2^24 ulps.
Eigen::MatrixXf exact(Index rows, Index cols, unsigned seed, float unit) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> k(-8, 8);
  Eigen::MatrixXf m(rows, cols);
  for (Index j = 0; j < cols; ++j)
    for (Index i = 0; i < rows; ++i)
      m(i, j) = static_cast<float>(k(rng)) * unit;
  return m;
}

Eigen::MatrixXf logits(const Eigen::MatrixXf& h, const Eigen::MatrixXf& w,
                       const Eigen::VectorXf& b) {
  Eigen::MatrixXf l = h * w.transpose();
  if (b.size() != 0)
    l.rowwise() += b.transpose();
  return l;
}

using Stage = sml::SamplerStage;

// The option sets of the TopPMinP path checked here.
std::vector<sml::SamplerOptions> top_p_chains() {
  const auto base = sml::SamplerOptions();
  return {
      base.with_top_p(0.8),
      base.with_top_p(0.95).with_temperature(0.7),  // llama.cpp's order: temperature last
      base.with_min_p(0.1).with_temperature(0.5),
      base.with_top_p(0.9).with_min_p(0.05).with_temperature(0.8),
      base.with_order(sml::SamplerOptions::temperature_first_order())
          .with_top_p(0.7)
          .with_min_p(0.02)
          .with_temperature(1.7),
      base.with_order({Stage::MinP, Stage::TopP, Stage::Temperature})  // min-p cuts first
          .with_top_p(0.6)
          .with_min_p(0.01)
          .with_temperature(0.9),
      base.with_order({Stage::TopP, Stage::Temperature, Stage::MinP})  // temperature between
          .with_top_p(0.9)
          .with_min_p(0.2)
          .with_temperature(2.0),
      base.with_top_p(0.999),
      base.with_order({Stage::MinP, Stage::Temperature})  // a top-p left out of the order
          .with_top_p(0.01)
          .with_min_p(1e-6)
          .with_temperature(1.2),
  };
}

// The Sampler's stated bound for probabilities(): 4 eps (1 + |z_i - max z| / T) relative; ours
// and the Sampler's each within it of the exact value.
double relative_error_in_bound(const Eigen::VectorXf& p, const Eigen::VectorXf& q,
                               const Eigen::VectorXf& z, double t) {
  const double m = z.maxCoeff();
  double worst = 0;
  for (Index j = 0; j < p.size(); ++j) {
    if (q(j) == 0 && p(j) == 0)
      continue;
    const double bound = 8 * 1.1920929e-7 * (1 + std::fabs(z(j) - m) / std::min(t, 1.0));
    worst = std::max(worst, std::fabs(double(p(j)) - q(j)) / (double(q(j)) * bound));
  }
  return worst;  // <= 1: within the bound; infinite if the kept sets differ
}

double temperature_of(const sml::SamplerOptions& o) {
  const auto& ord = o.order();
  return std::find(ord.begin(), ord.end(), Stage::Temperature) != ord.end() ? o.temperature() : 1.0;
}

}  // namespace

TEST_CASE("LinearHeadSampler path(): TopPMinP for top-p and min-p chains without top-k",
          "[sampling][linear_head]") {
  for (const auto& o : top_p_chains())
    CHECK(sml::LinearHeadSampler(o).path() == P::TopPMinP);
  const auto base = sml::SamplerOptions();
  CHECK(sml::LinearHeadSampler(base.with_top_p(0.9).with_typical_p(0.8)).path() == P::RowTiles);
  CHECK(sml::LinearHeadSampler(base.with_min_p(0.1).with_top_n_sigma(1.0)).path() == P::RowTiles);
  CHECK(sml::LinearHeadSampler(base.with_top_p(0.9).with_xtc(0.5, 0.1)).path() == P::RowTiles);
  CHECK(sml::LinearHeadSampler(base.with_top_k(40).with_top_p(0.9)).path() == P::TopK);
  CHECK(sml::LinearHeadSampler(
            base.with_order({Stage::TopP, Stage::TopK}).with_top_k(40).with_top_p(0.9))
            .path()
        == P::RowTiles);  // top-k after top-p: not a TopPMinP chain
  CHECK(sml::LinearHeadSampler(base.with_temperature(0.7)).path() == P::GumbelMax);
  CHECK(sml::LinearHeadSampler(base.with_top_p(0.9).with_temperature(0)).path() == P::GumbelMax);
}

TEST_CASE("LinearHeadSampler TopPMinP equals the Sampler on exact logits",
          "[sampling][linear_head]") {
  const Index n = 6, d = 16;
  // Logits of standard deviation ~6 (entries k/4), and a second set whose bias rises with the
  // class (j/64) so that the running max keeps rising and the candidate buffer is compacted.
  for (int data = 0; data < 2; ++data) {
    const Index v = data == 0 ? 3001 : 6000;
    const Eigen::MatrixXf h = exact(n, d, 21 + data, data == 0 ? 0.25f : 0.0625f);
    const Eigen::MatrixXf w = exact(v, d, 31 + data, data == 0 ? 0.25f : 0.0625f);
    Eigen::VectorXf b = exact(v, 1, 41, 0.25f);
    if (data == 1)
      for (Index j = 0; j < v; ++j)
        b(j) = static_cast<float>(j) / 64.0f;
    const Eigen::MatrixXf l = logits(h, w, b);
    const auto chains = top_p_chains();
    for (std::size_t c = 0; c < chains.size(); ++c) {
      INFO("data " << data << ", chain " << c);
      const auto head = sml::LinearHeadSampler(chains[c]).with_block_size(97).with_token_tile(4);
      REQUIRE(head.path() == P::TopPMinP);
      const sml::Sampler s(chains[c]);
      Eigen::VectorXi tokens(n), expected(n);
      Eigen::VectorXd lp(n);
      sml::LinearHeadSampler::Workspace ws;
      for (std::uint64_t seed : {7u, 8u, 9u}) {
        head.sample(h, w, b, seed, tokens, lp, ws, 3);
        s.sample_rowwise_philox(l, seed, expected, 3);
        CHECK(tokens == expected);
        for (Index r = 0; r < n; ++r) {
          const Eigen::VectorXf q = s.probabilities(l.row(r).transpose());
          CHECK(std::fabs(lp(r) - std::log(double(q(tokens(r))))) <= 1e-5);
        }
      }
      double worst = 0;
      for (Index r = 0; r < n; ++r) {
        Eigen::VectorXf p(v);
        head.probabilities(h, w, b, r, p);
        const Eigen::VectorXf z = l.row(r).transpose();
        const Eigen::VectorXf q = s.probabilities(z);
        CHECK(((p.array() > 0) == (q.array() > 0)).all());  // the same kept set
        worst = std::max(worst, relative_error_in_bound(p, q, z, temperature_of(chains[c])));
        CHECK(std::fabs(p.cast<double>().sum() - 1) < 1e-5);
      }
      INFO("worst error / the bound " << worst);
      CHECK(worst <= 1);
    }
  }
}

TEST_CASE("LinearHeadSampler TopPMinP draws follow Sampler::probabilities (chi-square)",
          "[sampling][linear_head]") {
  const Index v = 300, d = 6, draws = 30000;
  const Eigen::MatrixXf w = softmaxlab_test::random_normal(v, d, 51, 1.5).cast<float>();
  const Eigen::MatrixXf h1 = softmaxlab_test::random_normal(1, d, 52, 1.0).cast<float>();
  const Eigen::MatrixXf h = h1.replicate(draws, 1);  // one row, one stream per draw
  const Eigen::VectorXf b = softmaxlab_test::random_normal(v, 1, 53, 0.5).cast<float>();
  const Eigen::MatrixXf l = logits(h1, w, b);
  const auto base = sml::SamplerOptions();
  for (const auto& o :
       {base.with_top_p(0.9).with_temperature(0.7), base.with_min_p(0.02).with_temperature(1.3),
        base.with_top_p(0.95).with_min_p(0.01).with_temperature(0.8)}) {
    const auto head = sml::LinearHeadSampler(o).with_block_size(37).with_token_tile(64);
    REQUIRE(head.path() == P::TopPMinP);
    Eigen::VectorXi tokens(draws);
    head.sample(h, w, b, 4321, tokens);
    const Eigen::VectorXd p = sml::Sampler(o).probabilities(l.row(0)).transpose().cast<double>();
    std::vector<double> counts(static_cast<std::size_t>(v), 0.0);
    for (Index i = 0; i < draws; ++i) {
      REQUIRE(tokens(i) >= 0);
      REQUIRE(p(tokens(i)) > 0);  // never outside the kept set
      counts[static_cast<std::size_t>(tokens(i))] += 1;
    }
    double stat = 0, pooled_obs = 0, pooled_exp = 0;
    int dof = -1;
    for (Index j = 0; j < v; ++j) {
      const double e = p(j) * draws, c = counts[static_cast<std::size_t>(j)];
      if (e < 5) {
        pooled_obs += c;
        pooled_exp += e;
      } else {
        stat += (c - e) * (c - e) / e;
        ++dof;
      }
    }
    if (pooled_exp > 0) {
      stat += (pooled_obs - pooled_exp) * (pooled_obs - pooled_exp) / pooled_exp;
      ++dof;
    }
    INFO("chi-square " << stat << " with " << dof << " degrees of freedom");
    REQUIRE(dof >= 5);
    // The 1e-6 upper quantile of chi-square(dof) is below dof + 11 sqrt(dof) + 25 here.
    CHECK(stat < dof + 11 * std::sqrt(double(dof)) + 25);
  }
}

TEST_CASE("LinearHeadSampler TopPMinP falls back to RowTiles past the candidate cap",
          "[sampling][linear_head]") {
  // V = 6000 > the cap max(4096, V / 16) = 4096. Rows 0 and 2 are flat (h = 0, no bias): every
  // class stays a candidate, so they fall back; rows 1 and 3 are peaked and stay on candidates.
  const Index v = 6000, d = 16;
  Eigen::MatrixXf h = exact(4, d, 61, 0.25f);
  h.row(0).setZero();
  h.row(2).setZero();
  const Eigen::MatrixXf w = exact(v, d, 62, 0.25f);
  const Eigen::VectorXf none;
  const Eigen::MatrixXf l = logits(h, w, none);
  const auto base = sml::SamplerOptions();
  for (const auto& o : {base.with_top_p(0.9), base.with_min_p(0.5).with_temperature(0.9),
                        base.with_top_p(1 - 1e-9)}) {  // (1 - p) too small for the bound
    const auto head = sml::LinearHeadSampler(o).with_block_size(512);
    REQUIRE(head.path() == P::TopPMinP);
    const sml::Sampler s(o);
    Eigen::VectorXi tokens(4), expected(4);
    Eigen::VectorXd lp(4);
    sml::LinearHeadSampler::Workspace ws;
    head.sample(h, w, none, 11, tokens, lp, ws);
    s.sample_rowwise_philox(l, 11, expected);
    CHECK(tokens == expected);
    for (Index r = 0; r < 4; ++r) {
      Eigen::VectorXf p(v);
      head.probabilities(h, w, none, r, p);
      const Eigen::VectorXf q = s.probabilities(l.row(r).transpose());
      if (r % 2 == 0 && o.min_p() == 0) {
        CHECK(p == q);  // the fallback is the Sampler itself
        CHECK(lp(r) == std::log(double(q(tokens(r)))));
      } else {
        CHECK(relative_error_in_bound(p, q, l.row(r).transpose(), 1.0) <= 1);
      }
    }
    // The fallback row (1 x V) is the largest buffer, within the stated bound.
    CHECK(ws.bytes() <= head.workspace_bytes(4, v));
  }
}

template <class Half>
void check_16bit() {
  // Entries k/16: exact in half and bfloat16, and every logit exact in float. d = 1024: W is
  // widened in chunks of 128 rows, several per vocabulary block of 300.
  const Index n = 5, d = 1024, v = 600;
  const Eigen::MatrixXf hf = exact(n, d, 81, 0.0625f);
  const Eigen::MatrixXf wf = exact(v, d, 82, 0.0625f);
  const Eigen::VectorXf bf = exact(v, 1, 83, 0.25f);
  const Eigen::Matrix<Half, Eigen::Dynamic, Eigen::Dynamic> h = hf.cast<Half>();
  const Eigen::Matrix<Half, Eigen::Dynamic, Eigen::Dynamic> w = wf.cast<Half>();
  const Eigen::Matrix<Half, Eigen::Dynamic, 1> b = bf.cast<Half>();
  REQUIRE(h.template cast<float>() == hf);  // the data is exact in the 16-bit type
  REQUIRE(w.template cast<float>() == wf);
  const auto base = sml::SamplerOptions();
  for (const auto& o : {base.with_temperature(0.8), base.with_top_k(20).with_temperature(0.9),
                        base.with_top_p(0.9).with_temperature(0.7), base.with_typical_p(0.9)}) {
    const auto head = sml::LinearHeadSampler(o).with_block_size(300).with_token_tile(2);
    INFO("path " << int(head.path()));
    Eigen::VectorXi t16(n), t32(n), tb(n);
    Eigen::VectorXd l16(n), l32(n);
    sml::LinearHeadSampler::Workspace ws;
    head.sample(h, w, b, 5, t16, l16, ws);
    head.sample(hf, wf, bf, 5, t32, l32, ws);
    CHECK(t16 == t32);
    CHECK(l16 == l32);
    head.sample(h, w, bf, 5, tb, l16, ws);  // a float bias with 16-bit H and W
    CHECK(tb == t32);
    Eigen::VectorXi tn(n), tf(n);
    head.sample(h, w, 6, tn);  // no bias
    head.sample(hf, wf, 6, tf);
    CHECK(tn == tf);
    for (Index r = 0; r < n; ++r) {
      Eigen::VectorXf p16(v), p32(v);
      head.probabilities(h, w, b, r, p16);
      head.probabilities(hf, wf, bf, r, p32);
      CHECK(p16 == p32);
    }
  }
}

TEST_CASE(
    "LinearHeadSampler on half and bfloat16 H and W equals the float path on the widened "
    "values",
    "[sampling][linear_head][16bit]") {
  check_16bit<Eigen::half>();
  check_16bit<Eigen::bfloat16>();
}
