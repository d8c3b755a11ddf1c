// SampledSoftmaxLoss and NceLoss (sampled_softmax.hpp) and the candidate samplers
// (candidate_sampler.hpp): the samplers' distributions by chi-square with a fixed seed against
// formulas computed here in long double, the expected counts against TensorFlow's formulas in long
// double, unique sampling, the losses against an independent long double computation from given
// candidates (accidental hits removed by omission there), gradients against finite differences in
// double, the estimator's consistency (S -> V approaches the full softmax loss), reproducibility,
// and the errors.
#include <algorithm>
#include <cmath>
#include <limits>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include <softmaxlab/candidate_sampler.hpp>
#include <softmaxlab/sampled_softmax.hpp>

#include "support.hpp"

namespace sml = softmaxlab;
using Index = Eigen::Index;
using softmaxlab_test::fd_relative_error;
using softmaxlab_test::fd_scalar_gradient;
using softmaxlab_test::random_normal;
using LD = long double;

namespace {

// The 0.999 quantile of chi-square with df degrees of freedom (Wilson-Hilferty, z = 3.0902).
double chi2_999(double df) {
  const double a = 2.0 / (9.0 * df);
  return df * std::pow(1.0 - a + 3.0902 * std::sqrt(a), 3.0);
}

// Pearson's statistic of `draws` draws against probabilities p (classes with p = 0 must not occur).
double chi_square(const sml::CandidateSampler& s, const std::vector<LD>& p, long draws,
                  std::uint64_t seed, double& df) {
  std::vector<long> hits(p.size(), 0);
  sml::Philox4x32 gen(seed);
  for (long i = 0; i < draws; ++i)
    ++hits[static_cast<std::size_t>(s.draw(gen))];
  double stat = 0;
  df = -1;
  for (std::size_t k = 0; k < p.size(); ++k) {
    if (p[k] == 0) {
      REQUIRE(hits[k] == 0);
      continue;
    }
    const double e = static_cast<double>(p[k]) * static_cast<double>(draws);
    stat += (hits[k] - e) * (hits[k] - e) / e;
    df += 1;
  }
  return stat;
}

std::vector<LD> log_uniform_p(Index v) {
  std::vector<LD> p(static_cast<std::size_t>(v));
  for (Index k = 0; k < v; ++k)
    p[static_cast<std::size_t>(k)] =
        (std::log(LD(k + 2)) - std::log(LD(k + 1))) / std::log(LD(v + 1));
  return p;
}

std::vector<LD> unigram_p(const std::vector<double>& counts, double power) {
  std::vector<LD> p;
  LD total = 0;
  for (double c : counts) {
    p.push_back(std::pow(LD(c), LD(power)));
    total += p.back();
  }
  for (LD& x : p)
    x /= total;
  return p;
}

struct Model {
  Eigen::MatrixXd H, W;
  Eigen::VectorXd b;
  std::vector<int> labels;
};

Model make_model(Index n, Index d, Index v, unsigned seed, double scale = 0.7) {
  Model m{random_normal(n, d, seed, scale),
          random_normal(v, d, seed + 1, scale),
          random_normal(v, 1, seed + 2, 0.5),
          {}};
  for (Index i = 0; i < n; ++i)
    m.labels.push_back(static_cast<int>((i * 7 + 3) % v));
  return m;
}

// The long double reference: logits from the definition, an accidental hit omitted (not set to
// -FLT_MAX) when removed, the row losses summed directly.
std::vector<LD> reference_losses(sml::SampledLossKind kind, const Model& m, bool use_bias,
                                 const sml::CandidateSample& cs, bool log_q, bool remove) {
  std::vector<LD> losses;
  for (Index i = 0; i < m.H.rows(); ++i) {
    const Index c = m.labels[static_cast<std::size_t>(i)];
    auto logit = [&](Index k, double ec) {
      LD z = 0;
      for (Index t = 0; t < m.H.cols(); ++t)
        z += LD(m.H(i, t)) * LD(m.W(k, t));
      if (use_bias)
        z += LD(m.b(k));
      if (log_q)
        z -= std::log(LD(ec));
      return z;
    };
    const LD t = logit(c, cs.true_expected_count[static_cast<std::size_t>(i)]);
    std::vector<LD> u;
    for (std::size_t j = 0; j < cs.sampled.size(); ++j) {
      if (remove && cs.sampled[j] == c)
        continue;
      u.push_back(logit(cs.sampled[j], cs.sampled_expected_count[j]));
    }
    LD loss = 0;
    if (kind == sml::SampledLossKind::SampledSoftmax) {
      LD mx = t;
      for (LD x : u)
        mx = std::max(mx, x);
      LD sum = std::exp(t - mx);
      for (LD x : u)
        sum += std::exp(x - mx);
      loss = -(t - mx - std::log(sum));
    } else {
      loss = std::log1p(std::exp(-t));
      for (LD x : u)
        loss += std::log1p(std::exp(x));
    }
    losses.push_back(loss);
  }
  return losses;
}

// Candidates with an accidental hit (class labels[0] sampled) and varied expected counts.
sml::CandidateSample chosen_candidates(const Model& m, Index v) {
  sml::CandidateSample cs;
  cs.sampled = {static_cast<Index>(m.labels[0]), 1, v - 1, 5, 2};
  cs.sampled_expected_count = {0.3, 1.7, 0.05, 0.9, 2.5};
  for (std::size_t i = 0; i < m.labels.size(); ++i)
    cs.true_expected_count.push_back(0.2 + 0.1 * static_cast<double>(i));
  cs.num_tries = 9;
  return cs;
}

template <class Loss>
double loss_of(const Loss& l, const Model& m, bool bias, const sml::CandidateSample& cs) {
  return bias ? l(m.H, m.W, m.b, m.labels, cs) : l(m.H, m.W, m.labels, cs);
}

}  // namespace

TEST_CASE("candidate samplers match their distributions (chi-square)", "[sampled]") {
  const long draws = 1000000;
  double df = 0;
  SECTION("log-uniform: P(k) = (log(k + 2) - log(k + 1)) / log(V + 1)") {
    const Index v = 60;
    const auto s = sml::CandidateSampler::log_uniform(v);
    const auto p = log_uniform_p(v);
    double worst = 0;
    for (Index k = 0; k < v; ++k)
      worst = std::max(worst,
                       double(std::fabs(s.probability(k) - p[std::size_t(k)]) / p[std::size_t(k)]));
    INFO("worst relative error of probability(): " << worst);
    CHECK(worst < 1e-14);
    const double stat = chi_square(s, p, draws, 7, df);
    INFO("chi-square " << stat << " with " << df << " dof, 0.999 quantile " << chi2_999(df));
    CHECK(stat < chi2_999(df));
  }
  SECTION("unigram counts^0.75, a zero count never drawn") {
    const std::vector<double> counts{900, 400, 0, 250, 120, 60, 33, 20, 11, 5, 3, 1};
    const auto s = sml::CandidateSampler::unigram(counts);
    const auto p = unigram_p(counts, 0.75);
    for (std::size_t k = 0; k < counts.size(); ++k)
      CHECK(std::fabs(s.probability(Index(k)) - p[k]) <= 1e-15 * (1 + p[k]));
    CHECK(s.support() == 11);
    const double stat = chi_square(s, p, draws, 8, df);
    INFO("chi-square " << stat << " with " << df << " dof, 0.999 quantile " << chi2_999(df));
    CHECK(stat < chi2_999(df));
  }
  SECTION("unigram with power 1 and uniform") {
    const std::vector<double> counts{5, 1, 3, 8, 2};
    const double stat = chi_square(sml::CandidateSampler::unigram(counts, 1.0),
                                   unigram_p(counts, 1.0), draws, 9, df);
    CHECK(stat < chi2_999(df));
    const std::vector<LD> flat(17, LD(1) / 17);
    const double stat2 = chi_square(sml::CandidateSampler::uniform(17), flat, draws, 10, df);
    INFO("uniform chi-square " << stat2);
    CHECK(stat2 < chi2_999(df));
  }
}

TEST_CASE("expected counts match the long double formulas", "[sampled]") {
  const Index v = 100;
  const auto s = sml::CandidateSampler::log_uniform(v);
  const auto p = log_uniform_p(v);
  const std::vector<int> labels{0, 3, 50, 99};
  for (bool unique : {false, true}) {
    sml::Philox4x32 gen(11);
    const auto cs = s.sample(labels, 40, unique, gen);
    REQUIRE(cs.sampled.size() == 40);
    if (!unique)
      CHECK(cs.num_tries == 40);
    else
      CHECK(cs.num_tries > 40);  // 40 distinct of a Zipfian 100 need repeats (seed fixed)
    auto formula = [&](Index k) {
      const LD pk = p[std::size_t(k)];
      return cs.num_tries == 40 ? pk * 40 : -std::expm1(LD(cs.num_tries) * std::log1p(-pk));
    };
    double worst = 0;
    for (std::size_t i = 0; i < labels.size(); ++i)
      worst = std::max(worst, double(std::fabs(cs.true_expected_count[i] - formula(labels[i]))
                                     / formula(labels[i])));
    for (std::size_t j = 0; j < cs.sampled.size(); ++j)
      worst =
          std::max(worst, double(std::fabs(cs.sampled_expected_count[j] - formula(cs.sampled[j]))
                                 / formula(cs.sampled[j])));
    INFO("unique " << unique << ": worst relative error " << worst);
    CHECK(worst < 1e-13);
  }
}

TEST_CASE("unique sampling gives distinct classes", "[sampled]") {
  const std::vector<double> counts{10, 0, 4, 4, 1, 30, 2};
  const std::vector<sml::CandidateSampler> samplers{sml::CandidateSampler::log_uniform(40),
                                                    sml::CandidateSampler::uniform(40),
                                                    sml::CandidateSampler::unigram(counts)};
  for (const auto& s : samplers) {
    for (std::uint64_t seed = 1; seed <= 20; ++seed) {
      sml::Philox4x32 gen(seed);
      const Index num = seed % 2 == 0 ? s.support() : s.support() / 2;
      const auto cs = s.sample(std::vector<int>{0}, num, true, gen);
      const std::set<Index> distinct(cs.sampled.begin(), cs.sampled.end());
      CHECK(Index(distinct.size()) == num);
      CHECK(cs.num_tries >= num);
      for (Index k : cs.sampled)
        CHECK(s.probability(k) > 0);
    }
  }
}

TEST_CASE("sampled losses match a long double reference", "[sampled]") {
  const Index n = 6, d = 9, v = 13;
  const Model m = make_model(n, d, v, 21);
  const auto cs = chosen_candidates(m, v);
  const auto sampler = sml::CandidateSampler::uniform(v);
  double worst_d = 0, worst_f = 0;
  for (auto kind : {sml::SampledLossKind::SampledSoftmax, sml::SampledLossKind::Nce}) {
    for (bool bias : {false, true}) {
      for (bool log_q : {false, true}) {
        for (bool remove : {false, true}) {
          const auto ref = reference_losses(kind, m, bias, cs, log_q, remove);
          LD sum = 0;
          for (LD x : ref)
            sum += x;
          auto check = [&](const auto& l) {
            const auto base = l.with_subtract_log_q(log_q).with_remove_accidental_hits(remove);
            const double mean = loss_of(base, m, bias, cs);
            const double total = loss_of(base.with_reduction(sml::Reduction::Sum), m, bias, cs);
            Eigen::VectorXd per(n);
            const auto none = base.with_reduction(sml::Reduction::None);
            const auto out = sml::RowOutputs().with_losses(per);
            const double none_sum =
                bias ? none(m.H, m.W, m.b, m.labels, cs, out) : none(m.H, m.W, m.labels, cs, out);
            worst_d = std::max(worst_d, double(std::fabs(mean - sum / n) / (sum / n)));
            worst_d = std::max(worst_d, double(std::fabs(total - sum) / sum));
            worst_d = std::max(worst_d, double(std::fabs(none_sum - sum) / sum));
            for (Index i = 0; i < n; ++i)
              worst_d = std::max(
                  worst_d, double(std::fabs(per(i) - ref[std::size_t(i)]) / ref[std::size_t(i)]));
            // float: the same model rounded to float; reference from the rounded values.
            Model mf = m;
            mf.H = m.H.cast<float>().cast<double>();
            mf.W = m.W.cast<float>().cast<double>();
            mf.b = m.b.cast<float>().cast<double>();
            const auto ref_f = reference_losses(kind, mf, bias, cs, log_q, remove);
            LD sum_f = 0;
            for (LD x : ref_f)
              sum_f += x;
            const Eigen::MatrixXf hf = m.H.cast<float>(), wf = m.W.cast<float>();
            const Eigen::VectorXf bf = m.b.cast<float>();
            const double got_f = bias ? base(hf, wf, bf, m.labels, cs) : base(hf, wf, m.labels, cs);
            worst_f = std::max(worst_f, double(std::fabs(got_f - sum_f / n) / (sum_f / n)));
          };
          if (kind == sml::SampledLossKind::SampledSoftmax)
            check(sml::SampledSoftmaxLoss(sampler, 5));
          else
            check(sml::NceLoss(sampler, 5));
        }
      }
    }
  }
  INFO("worst relative error: double " << worst_d << ", float " << worst_f);
  CHECK(worst_d < 1e-12);
  CHECK(worst_f < 2e-5);
}

TEST_CASE("remove_accidental_hits: a hit has probability and gradient 0", "[sampled]") {
  const Index v = 13;
  const Model m = make_model(4, 5, v, 31);
  const auto cs = chosen_candidates(m, v);  // candidate 0 is token 0's true class
  const sml::SampledSoftmaxLoss l(sml::CandidateSampler::uniform(v), 5);
  CHECK(l.remove_accidental_hits());
  CHECK_FALSE(sml::NceLoss(sml::CandidateSampler::uniform(v), 5).remove_accidental_hits());
  // Removing the hit equals dropping that candidate for token 0 only.
  const auto ref = reference_losses(sml::SampledLossKind::SampledSoftmax, m, false, cs, true, true);
  const auto keep =
      reference_losses(sml::SampledLossKind::SampledSoftmax, m, false, cs, true, false);
  Eigen::VectorXd per(4);
  l.with_reduction(sml::Reduction::None)(m.H, m.W, m.labels, cs,
                                         sml::RowOutputs().with_losses(per));
  CHECK(std::fabs(per(0) - double(ref[0])) < 1e-12 * double(ref[0]));
  CHECK(ref[0] < keep[0]);
  CHECK(ref[1] == keep[1]);
  // The hit's column contributes nothing: dH of token 0 equals the gradient without that candidate.
  sml::SampledGradients<double> g, g2;
  l(m.H, m.W, m.labels, cs, g);
  sml::CandidateSample cs2 = cs;
  cs2.sampled[0] = 1;                     // a second copy of candidate 1 ...
  cs2.sampled_expected_count[0] = 1e300;  // ... with a logit of about -690: probability ~1e-300
  l(m.H, m.W, m.labels, cs2, g2);
  CHECK((g.dH.row(0) - g2.dH.row(0)).cwiseAbs().maxCoeff() < 1e-12);
}

TEST_CASE("sampled loss gradients match finite differences", "[sampled]") {
  const Index n = 5, d = 6, v = 11;
  const Model m = make_model(n, d, v, 41);
  const auto cs = chosen_candidates(m, v);
  const auto sampler = sml::CandidateSampler::log_uniform(v);
  double worst = 0;
  auto run = [&](const auto& l) {
    for (bool bias : {false, true}) {
      sml::SampledGradients<double> g;
      if (bias)
        l(m.H, m.W, m.b, m.labels, cs, g);
      else
        l(m.H, m.W, m.labels, cs, g);
      Eigen::MatrixXd dW = Eigen::MatrixXd::Zero(v, d);
      g.add_to(dW);
      auto with = [&](const Eigen::MatrixXd& H, const Eigen::MatrixXd& W,
                      const Eigen::VectorXd& b) {
        return bias ? l(H, W, b, m.labels, cs) : l(H, W, m.labels, cs);
      };
      const Eigen::MatrixXd fdH =
          fd_scalar_gradient([&](const Eigen::MatrixXd& x) { return with(x, m.W, m.b); }, m.H);
      const Eigen::MatrixXd fdW =
          fd_scalar_gradient([&](const Eigen::MatrixXd& x) { return with(m.H, x, m.b); }, m.W);
      worst = std::max(worst, fd_relative_error(g.dH, fdH, m.H));
      worst = std::max(worst, fd_relative_error(dW, fdW, m.W));
      // Rows not touched are exactly zero in the finite differences too.
      for (Index k = 0; k < v; ++k) {
        if (!std::binary_search(g.rows.begin(), g.rows.end(), k))
          CHECK(fdW.row(k).cwiseAbs().maxCoeff() == 0);
      }
      if (bias) {
        Eigen::VectorXd db = Eigen::VectorXd::Zero(v);
        g.add_bias_to(db);
        const Eigen::VectorXd fdb =
            fd_scalar_gradient([&](const Eigen::VectorXd& x) { return with(m.H, m.W, x); }, m.b);
        worst = std::max(worst, fd_relative_error(db, fdb, m.b));
      }
    }
  };
  for (auto r : {sml::Reduction::Mean, sml::Reduction::None}) {
    run(sml::SampledSoftmaxLoss(sampler, 5).with_reduction(r));
    run(sml::NceLoss(sampler, 5).with_reduction(r));
    run(sml::NceLoss(sampler, 5).with_reduction(r).with_remove_accidental_hits(true));
  }
  INFO("worst relative error against finite differences: " << worst);
  CHECK(worst < 1e-6);
}

TEST_CASE("sampled softmax approaches the full softmax loss", "[sampled]") {
  // A fixed random model over V = 64 classes; the full cross-entropy in long double here.
  const Index n = 32, d = 16, v = 64;
  const Model m = make_model(n, d, v, 51, 0.5);
  LD full = 0;
  for (Index i = 0; i < n; ++i) {
    std::vector<LD> z(static_cast<std::size_t>(v));
    LD mx = -std::numeric_limits<LD>::infinity();
    for (Index k = 0; k < v; ++k) {
      LD s = 0;
      for (Index t = 0; t < d; ++t)
        s += LD(m.H(i, t)) * LD(m.W(k, t));
      z[std::size_t(k)] = s;
      mx = std::max(mx, s);
    }
    LD sum = 0;
    for (LD x : z)
      sum += std::exp(x - mx);
    full += -(z[std::size_t(m.labels[std::size_t(i)])] - mx - std::log(sum));
  }
  full /= n;
  const int reps = 200;
  auto mean_estimate = [&](const sml::SampledSoftmaxLoss& l, std::uint64_t seed) {
    sml::Philox4x32 gen(seed);
    double acc = 0;
    for (int r = 0; r < reps; ++r)
      acc += l(m.H, m.W, m.labels, gen);
    return acc / reps;
  };
  const auto lu = sml::CandidateSampler::log_uniform(v);
  const double near_v = mean_estimate(sml::SampledSoftmaxLoss(lu, v - 1), 5);
  const double small = mean_estimate(sml::SampledSoftmaxLoss(lu, 8), 5);
  const double uniform_all =
      mean_estimate(sml::SampledSoftmaxLoss(sml::CandidateSampler::uniform(v), v), 6);
  INFO("full " << double(full) << ", S = V - 1 (log-uniform) " << near_v << ", S = 8 " << small
               << ", S = V (uniform) " << uniform_all);
  // Measured: 0.2% (log-uniform, S = V - 1); uniform with S = V samples every class with one
  // common expected count, so the shift cancels and the estimate is the full loss up to rounding.
  CHECK(std::fabs(near_v - double(full)) < 0.01 * double(full));
  CHECK(std::fabs(uniform_all - double(full)) < 1e-9 * double(full));
  // The bias shrinks as S grows toward V.
  CHECK(std::fabs(near_v - double(full)) < std::fabs(small - double(full)));
}

TEST_CASE("sampled losses reproduce with the same seed", "[sampled]") {
  const Index v = 50;
  const Model m = make_model(8, 4, v, 61);
  const sml::NceLoss nce(sml::CandidateSampler::log_uniform(v), 10);
  const sml::SampledSoftmaxLoss ssl(sml::CandidateSampler::log_uniform(v), 10);
  sml::Philox4x32 a(123), b(123), c(124);
  const auto ca = nce.draw(m.labels, a), cb = nce.draw(m.labels, b), cc = nce.draw(m.labels, c);
  CHECK(ca.sampled == cb.sampled);
  CHECK(ca.sampled_expected_count == cb.sampled_expected_count);
  CHECK(ca.sampled != cc.sampled);
  sml::Philox4x32 x(7), y(7);
  CHECK(ssl(m.H, m.W, m.labels, x) == ssl(m.H, m.W, m.labels, y));
  CHECK(nce(m.H, m.W, m.b, m.labels, x) == nce(m.H, m.W, m.b, m.labels, y));
  // The drawing form is draw() followed by the given-candidates form.
  sml::Philox4x32 p(9), q(9);
  const double drawn = ssl(m.H, m.W, m.b, m.labels, p);
  CHECK(drawn == ssl(m.H, m.W, m.b, m.labels, ssl.draw(m.labels, q)));
}

TEST_CASE("sampled losses: a NaN in a token gives that token a NaN loss", "[sampled]") {
  const Index v = 9;
  Model m = make_model(3, 4, v, 81);
  const auto cs = chosen_candidates(m, v);
  m.H(1, 2) = std::numeric_limits<double>::quiet_NaN();
  for (auto r : {sml::Reduction::Mean, sml::Reduction::None}) {
    Eigen::VectorXd per(3);
    const auto out = sml::RowOutputs().with_losses(per);
    CHECK(std::isnan(sml::SampledSoftmaxLoss(sml::CandidateSampler::uniform(v), 5)
                         .with_reduction(r)(m.H, m.W, m.labels, cs, out)));
    CHECK(std::isnan(per(1)));
    CHECK(std::isfinite(per(0)));
    CHECK(std::isnan(sml::NceLoss(sml::CandidateSampler::uniform(v), 5)
                         .with_reduction(r)(m.H, m.W, m.labels, cs, out)));
    CHECK(std::isnan(per(1)));
    CHECK(std::isfinite(per(2)));
  }
}

TEST_CASE("sampled losses reject bad inputs", "[sampled]") {
  using Catch::Matchers::Contains;
  const Index v = 10;
  const Model m = make_model(3, 4, v, 71);
  const auto lu = sml::CandidateSampler::log_uniform(v);
  CHECK_THROWS_WITH(sml::SampledSoftmaxLoss(lu, 0), Contains("num_sampled") && Contains("0"));
  CHECK_THROWS_WITH(sml::NceLoss(lu, 11), Contains("num_sampled") && Contains("11"));
  CHECK_NOTHROW(sml::NceLoss(lu, 3).with_unique(false).with_num_sampled(11));  // with replacement
  CHECK_THROWS_WITH(sml::CandidateSampler::log_uniform(0), Contains("range_max") && Contains("0"));
  CHECK_THROWS_WITH(sml::CandidateSampler::unigram(std::vector<double>{1, -2}),
                    Contains("counts") && Contains("-2"));
  CHECK_THROWS_WITH(sml::CandidateSampler::unigram(std::vector<double>{1, 2}, std::nan("")),
                    Contains("power"));
  CHECK_THROWS_WITH(sml::CandidateSampler::unigram(std::vector<double>{0, 0}), Contains("total"));
  CHECK_THROWS_WITH(sml::SampledSoftmaxLoss(lu, 3).with_reduction(static_cast<sml::Reduction>(7)),
                    Contains("reduction") && Contains("7"));
  const sml::SampledSoftmaxLoss l(lu, 3);
  sml::Philox4x32 gen(1);
  const std::vector<int> bad{0, 10, 2};
  CHECK_THROWS_WITH(l(m.H, m.W, bad, gen), Contains("10"));
  sml::CandidateSample cs = l.draw(m.labels, gen);
  CHECK_THROWS_WITH(l(m.H, m.W, bad, cs), Contains("label 10"));
  CHECK_THROWS_WITH(l(m.H, Eigen::MatrixXd(v, 5), m.labels, cs), Contains("columns"));
  CHECK_THROWS_WITH(l(m.H, m.W, Eigen::VectorXd(4), m.labels, cs),
                    Contains("bias") && Contains("4"));
  CHECK_THROWS_WITH(l(m.H, Eigen::MatrixXd(12, 4), m.labels, gen), Contains("range_max"));
  sml::CandidateSample bad_cs = cs;
  bad_cs.sampled[1] = -1;
  CHECK_THROWS_WITH(l(m.H, m.W, m.labels, bad_cs), Contains("sampled class -1"));
  bad_cs = cs;
  bad_cs.true_expected_count[2] = 0;
  CHECK_THROWS_WITH(l(m.H, m.W, m.labels, bad_cs), Contains("true_expected_count 2"));
  CHECK_NOTHROW(l.with_subtract_log_q(false)(m.H, m.W, m.labels, bad_cs));
  bad_cs = cs;
  bad_cs.sampled_expected_count.pop_back();
  CHECK_THROWS_WITH(l(m.H, m.W, m.labels, bad_cs), Contains("sampled_expected_count"));
  // N = 0: loss 0, empty gradients.
  sml::SampledGradients<double> g;
  const std::vector<int> none;
  CHECK(l(Eigen::MatrixXd(0, 4), m.W, none, l.draw(none, gen), g) == 0);
  CHECK(g.dH.rows() == 0);
}
