// The heap path's top-k selection (include/softmaxlab/sampling.hpp, detail::top_k_candidates: a
// threshold from the 64-logit block maxima, found by bisection on their counts, then a gather of
// the blocks that can hold a candidate) and verify's vectorized draft-row check:
//   - probabilities() of top-k (alone, with temperature, with a sparse bias overlay, and in
//     llama.cpp's default chain) against an independent long double reference that sorts the
//     whole row, at the boundary cases of the selection: ties at the k-th value spread over many
//     blocks, a constant row, every block max equal, fewer than k finite logits, all -inf but
//     one, k = 1 and k = 1024, lengths that are not a multiple of the block or the packet, huge
//     finite logits, and a top-p boundary hit exactly (ties);
//   - the kept set of top-k alone is exactly {x_i >= k-th largest} (comparisons only, no
//     rounding), so it is compared exactly;
//   - verify's draft rows: float and double, row- and column-major, a bad entry in the last
//     (partial) packet located and named, a row sum just inside and just outside 1e-3.
// clang-format off
#include "support.hpp"  // first: it configures Eigen (asserts, malloc checks)
// clang-format on

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include <softmaxlab/sampling.hpp>

namespace sml = softmaxlab;
using Index = Eigen::Index;
using LD = long double;
using softmaxlab_test::Worst;

namespace {

// Top-k then softmax at temperature t over the kept set, in long double, by a full sort of the
// indices (ties at the k-th value kept; -inf never kept). Returns q (0 outside the kept set).
std::vector<LD> top_k_reference(const std::vector<double>& x, Index k, LD t,
                                const std::vector<std::pair<Index, double>>& bias = {}) {
  const std::size_t n = x.size();
  const LD inf = std::numeric_limits<LD>::infinity();
  std::vector<LD> z(x.begin(), x.end());
  for (const auto& [tok, b] : bias)
    z[static_cast<std::size_t>(tok)] += b;
  std::vector<std::size_t> idx;
  for (std::size_t i = 0; i < n; ++i) {
    if (z[i] > -inf)
      idx.push_back(i);
  }
  std::sort(idx.begin(), idx.end(), [&](std::size_t a, std::size_t b) { return z[a] > z[b]; });
  std::vector<LD> q(n, 0);
  if (idx.empty())
    return q;
  std::size_t keep = std::min(idx.size(), static_cast<std::size_t>(k));
  while (keep < idx.size() && z[idx[keep]] == z[idx[keep - 1]])
    ++keep;
  const LD m = z[idx[0]];
  LD total = 0;
  for (std::size_t j = 0; j < keep; ++j)
    total += std::exp((z[idx[j]] - m) / t);
  for (std::size_t j = 0; j < keep; ++j)
    q[idx[j]] = std::exp((z[idx[j]] - m) / t) / total;
  return q;
}

struct Row {
  std::string name;
  std::vector<double> x;
};

// Rows that stress the block-max selection, of length n (values exactly representable in float).
std::vector<Row> boundary_rows(std::size_t n, Index k, std::mt19937& rng) {
  const double ninf = -std::numeric_limits<double>::infinity();
  std::normal_distribution<double> normal(0.0, 3.0);
  std::uniform_int_distribution<std::size_t> pick(0, n - 1);
  std::vector<Row> rows;
  Row r;
  r.name = "normal logits";
  r.x.resize(n);
  for (auto& v : r.x)
    v = static_cast<float>(normal(rng));
  rows.push_back(r);
  r.name = "ties at the k-th value spread over the blocks";
  // k - 5 distinct large values, then 3k ties at 4.0 (one per block where possible), rest below.
  for (auto& v : r.x)
    v = static_cast<float>(std::min(normal(rng), 3.0));
  for (Index j = 0; j + 5 < k; ++j)
    r.x[pick(rng)] = 10 + 0.25 * static_cast<double>(j);
  for (Index j = 0; j < 3 * k; ++j)
    r.x[(static_cast<std::size_t>(j) * 67 + 5) % n] = 4.0;
  rows.push_back(r);
  r.name = "ties of whole blocks (every block max equal)";
  for (std::size_t i = 0; i < n; ++i)
    r.x[i] = (i % 64 == 17) ? 2.0 : static_cast<float>(std::min(normal(rng), 1.0));
  rows.push_back(r);
  r.name = "constant row";
  std::fill(r.x.begin(), r.x.end(), -1.5);
  rows.push_back(r);
  r.name = "all -inf but one";
  std::fill(r.x.begin(), r.x.end(), ninf);
  r.x[n / 2] = 0.75;
  rows.push_back(r);
  r.name = "fewer than k finite logits (spread over blocks)";
  std::fill(r.x.begin(), r.x.end(), ninf);
  for (std::size_t j = 0; j < static_cast<std::size_t>(k) / 2 + 1; ++j)
    r.x[(j * 131 + 3) % n] = static_cast<float>(normal(rng));
  rows.push_back(r);
  r.name = "huge finite logits";
  for (auto& v : r.x)
    v = static_cast<float>(normal(rng));
  r.x[pick(rng)] = 3e38;
  r.x[pick(rng)] = -3e38;
  r.x[pick(rng)] = 2.9e38;
  rows.push_back(r);
  r.name = "-inf blocks and a last partial block";
  for (std::size_t i = 0; i < n; ++i)
    r.x[i] = (i / 64) % 3 == 1 ? ninf : static_cast<float>(normal(rng));
  r.x[n - 1] = 20;  // the largest logit in the last block (partial unless n % 64 == 0)
  rows.push_back(r);
  return rows;
}

template <class Scalar>
void check_top_k_boundaries() {
  const LD eps = std::numeric_limits<Scalar>::epsilon();
  std::mt19937 rng(77);
  Worst worst;
  int rows_checked = 0, support_errors = 0;
  std::string first_error;
  sml::SamplingWorkspace ws;
  const std::pair<std::size_t, Index> shapes[] = {{1, 1},     {50, 40},      {64, 40},
                                                  {65, 1},    {1000, 40},    {3001, 40},
                                                  {4096, 64}, {20011, 1024}, {128256, 40}};
  const std::vector<std::pair<Index, double>> bias = {{0, 2.5}, {3, -1.0}, {7, 8.0}};
  for (const auto& shape : shapes) {
    const std::size_t n = shape.first;  // not a structured binding: the lambdas below use it
    const Index k = shape.second;
    for (const Row& row : boundary_rows(n, k, rng)) {
      const std::vector<Scalar> xs(row.x.begin(), row.x.end());
      const std::vector<double> x(xs.begin(), xs.end());  // the values the sampler sees
      const Eigen::Map<const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>> xv(xs.data(),
                                                                          static_cast<Index>(n));
      Eigen::Matrix<Scalar, Eigen::Dynamic, 1> p(static_cast<Index>(n));
      for (const double t : {1.0, 0.8}) {
        for (const bool biased : {false, true}) {
          if (biased && n < 8)
            continue;
          const sml::Sampler s(
              sml::SamplerOptions().with_top_k(k).with_temperature(t).with_logit_bias(
                  biased ? bias : std::vector<std::pair<Index, double>>()));
          REQUIRE(s.fast_path());
          // The bias is applied in Scalar, as the sampler holds the modified logits.
          std::vector<double> xb = x;
          if (biased) {
            for (const auto& [tok, b] : bias)
              xb[static_cast<std::size_t>(tok)] =
                  static_cast<double>(static_cast<Scalar>(xb[static_cast<std::size_t>(tok)] + b));
          }
          const std::vector<LD> ref = top_k_reference(xb, k, t);
          s.probabilities(xv, p, ws);
          ++rows_checked;
          LD zmax = -std::numeric_limits<LD>::infinity();
          for (double v : xb)
            zmax = std::max<LD>(zmax, v);
          for (std::size_t i = 0; i < n; ++i) {
            const auto ii = static_cast<Index>(i);
            // Outside the kept set (or a weight that underflows even in long double): exactly 0;
            // below Scalar's normal range: below it; else positive.
            const bool ok = ref[i] == 0 ? p(ii) == 0
                            : ref[i] < std::numeric_limits<Scalar>::min()
                                ? p(ii) < std::numeric_limits<Scalar>::min()
                                : p(ii) > 0;
            if (!ok && support_errors++ == 0) {
              std::ostringstream o;
              o << row.name << ", n = " << n << ", k = " << k << ", T = " << t << ", bias "
                << biased << ", token " << i << ": got " << p(ii) << ", reference "
                << static_cast<double>(ref[i]);
              first_error = o.str();
            }
            if (!ok || ref[i] < std::numeric_limits<Scalar>::min())
              continue;
            // The documented bound: 4 eps (1 + |z_i - max z|) relative (z = x / T).
            const LD bound = 4 * (1 + std::fabs((static_cast<LD>(xb[i]) - zmax) / t));
            const LD err = std::fabs(static_cast<LD>(p(ii)) - ref[i]) / ref[i] / eps;
            worst.update(static_cast<double>(err), static_cast<double>(bound), [&](auto& o) {
              o << row.name << ", n = " << n << ", k = " << k << ", T = " << t << ", token " << i;
            });
          }
        }
      }
    }
  }
  INFO(rows_checked << " rows; " << worst.report() << "; first support error: " << first_error);
  CHECK(support_errors == 0);
  CHECK(worst.ratio <= 1);
}

}  // namespace

TEST_CASE("Sampler top-k selection: probabilities() at the selection's boundary cases (float)",
          "[sampling][topk]") {
  check_top_k_boundaries<float>();
}

TEST_CASE("Sampler top-k selection: probabilities() at the selection's boundary cases (double)",
          "[sampling][topk]") {
  check_top_k_boundaries<double>();
}

TEST_CASE("Sampler top-k selection: a top-p boundary hit exactly keeps the tied tokens",
          "[sampling][topk]") {
  // k = 4 candidates of weight exactly 1 (four tied maxima), top-p 0.5: the prefix of two reaches
  // p * total = 2 exactly, and the tie rule then keeps all four: 1/4 each (exact in float).
  for (const std::size_t n : {std::size_t(4), std::size_t(300), std::size_t(128256)}) {
    std::vector<float> x(n, -5.0f);
    const std::size_t at[] = {0, n / 3, n / 2, n - 1};
    for (const std::size_t i : at)
      x[i] = 2.0f;
    const Eigen::Map<const Eigen::VectorXf> xv(x.data(), static_cast<Index>(n));
    for (const double t : {1.0, 0.8}) {
      const sml::Sampler s(sml::SamplerOptions().with_top_k(4).with_top_p(0.5).with_temperature(t));
      Eigen::VectorXf p(static_cast<Index>(n));
      s.probabilities(xv, p);
      INFO("n = " << n << ", T = " << t);
      for (std::size_t i = 0; i < n; ++i) {
        const bool tied = std::find(std::begin(at), std::end(at), i) != std::end(at);
        CHECK(p(static_cast<Index>(i)) == (tied ? 0.25f : 0.0f));
      }
    }
    // min-p 0.5 against the same four: each has weight exactly max weight (1 >= 0.5): all kept.
    const sml::Sampler s2(sml::SamplerOptions().with_top_k(40).with_min_p(0.5));
    Eigen::VectorXf p2(static_cast<Index>(n));
    s2.probabilities(xv, p2);
    for (const std::size_t i : at)
      CHECK(p2(static_cast<Index>(i)) == 0.25f);
  }
}

TEST_CASE("Sampler top-k selection: llama.cpp's default chain on large rows against the reference",
          "[sampling][topk]") {
  // top-k 40, top-p 0.95, min-p 0.05, temperature 0.8 last: the reference cuts top-k by a full
  // sort, top-p and min-p on the T = 1 distribution, then reweights at T (long double). Rows
  // whose top-p or min-p boundary lies within 1e-5 of its threshold are skipped (rounding
  // decides there, as the doc block states).
  std::mt19937 rng(11);
  std::normal_distribution<double> normal(0.0, 3.0);
  const sml::Sampler s(
      sml::SamplerOptions().with_top_k(40).with_top_p(0.95).with_min_p(0.05).with_temperature(0.8));
  REQUIRE(s.fast_path());
  sml::SamplingWorkspace ws;
  Worst worst;
  int compared = 0, skipped = 0, support_errors = 0;
  std::string first_error;
  for (const std::size_t n : {std::size_t(32000), std::size_t(128256)}) {
    for (int rep = 0; rep < 6; ++rep) {
      std::vector<float> xs(n);
      for (auto& v : xs)
        v = static_cast<float>(normal(rng));
      const std::vector<double> x(xs.begin(), xs.end());
      const std::vector<LD> q1 = top_k_reference(x, 40, 1);  // T = 1, for the cuts
      std::vector<std::size_t> order;
      for (std::size_t i = 0; i < n; ++i) {
        if (q1[i] > 0)
          order.push_back(i);
      }
      std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
        return x[a] > x[b] || (x[a] == x[b] && a < b);
      });
      LD cum = 0;
      std::size_t keep = 0;
      bool ambiguous = false;
      while (keep < order.size()) {
        cum += q1[order[keep]];
        ++keep;
        if (std::fabs(cum - 0.95L) < 1e-5L)
          ambiguous = true;
        if (cum >= 0.95L)
          break;
      }
      while (keep < order.size() && x[order[keep]] == x[order[keep - 1]])
        ++keep;
      const LD top = q1[order[0]];
      std::size_t keep2 = 1;
      while (keep2 < keep && q1[order[keep2]] >= 0.05L * top)
        ++keep2;
      for (std::size_t j = 0; j < keep; ++j) {
        if (std::fabs(q1[order[j]] / top - 0.05L) < 1e-5L)
          ambiguous = true;
      }
      if (ambiguous) {
        ++skipped;
        continue;
      }
      ++compared;
      std::vector<LD> ref(n, 0);
      const LD m = x[order[0]];
      LD total = 0;
      for (std::size_t j = 0; j < keep2; ++j)
        total += std::exp((x[order[j]] - m) / 0.8L);
      for (std::size_t j = 0; j < keep2; ++j)
        ref[order[j]] = std::exp((x[order[j]] - m) / 0.8L) / total;
      const Eigen::Map<const Eigen::VectorXf> xv(xs.data(), static_cast<Index>(n));
      Eigen::VectorXf p(static_cast<Index>(n));
      s.probabilities(xv, p, ws);
      for (std::size_t i = 0; i < n; ++i) {
        const auto ii = static_cast<Index>(i);
        if (ref[i] == 0 || !(p(ii) > 0)) {  // the kept sets must agree
          if ((ref[i] == 0) != (p(ii) == 0) && support_errors++ == 0)
            first_error = "n = " + std::to_string(n) + ", token " + std::to_string(i);
          continue;
        }
        const LD bound = 4 * (1 + std::fabs((x[i] - m) / 0.8L));
        const LD err = std::fabs(static_cast<LD>(p(ii)) - ref[i]) / ref[i]
                       / std::numeric_limits<float>::epsilon();
        worst.update(static_cast<double>(err), static_cast<double>(bound),
                     [&](auto& o) { o << "n = " << n << ", token " << i; });
      }
    }
  }
  INFO("compared " << compared << ", skipped " << skipped << "; " << worst.report()
                   << "; first support error: " << first_error);
  CHECK(support_errors == 0);
  CHECK(worst.ratio <= 1);
  CHECK(compared >= 10);
}

TEST_CASE("verify: the draft rows' vectorized check, any layout and scalar", "[sampling][topk]") {
  // V = 1001: not a multiple of any packet size, so the last entries go through the partial load.
  const Index v = 1001;
  const sml::Sampler s(sml::SamplerOptions().with_top_k(40));
  sml::Philox4x32 gen(3);
  const Eigen::MatrixXf target = Eigen::MatrixXf::Zero(3, v);
  using RowMajorF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  RowMajorF q = RowMajorF::Constant(2, v, 1.0f / static_cast<float>(v));
  Eigen::VectorXi drafts(2);
  drafts << 5, 1000;
  CHECK(s.verify(target, q, drafts, gen).token >= 0);
  const Eigen::MatrixXf q_col = q;  // column-major: strided rows, copied for the check
  CHECK(s.verify(target, q_col, drafts, gen).token >= 0);
  const Eigen::MatrixXd q_double = q.cast<double>();
  CHECK(s.verify(target, q_double, drafts, gen).token >= 0);
  // A bad entry in the last partial packet is found and named, in every layout.
  RowMajorF bad = q;
  bad(1, v - 1) = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_WITH(s.verify(target, bad, drafts, gen), Catch::Contains("draft_probs(1, 1000)"));
  CHECK_THROWS_WITH(s.verify(target, Eigen::MatrixXf(bad), drafts, gen),
                    Catch::Contains("draft_probs(1, 1000)"));
  bad = q;
  bad(0, v - 2) = 1.5f;
  CHECK_THROWS_WITH(s.verify(target, bad.cast<double>().eval(), drafts, gen),
                    Catch::Contains("draft_probs(0, 999)") && Catch::Contains("1.5"));
  // The sum's tolerance, 1e-3: 1 + 5e-4 passes, 1 + 2e-3 throws.
  RowMajorF near = q;
  near(0, 0) += 5e-4f;
  CHECK(s.verify(target, near, drafts, gen).token >= 0);
  near(0, 0) += 1.5e-3f;
  CHECK_THROWS_WITH(s.verify(target, near, drafts, gen),
                    Catch::Contains("draft_probs row 0 must sum to 1"));
}
