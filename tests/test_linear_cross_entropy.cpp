// LinearCrossEntropy (linear_cross_entropy.hpp): the fused output-layer loss against an independent
// long double materialized reference (every option, every reduction, bias, per-token outputs and
// upstream gradients), against finite differences in double, against the materialized float path
// (GEMM + CrossEntropyLoss + backward GEMMs), for block-size independence, repeatability, no
// allocation with a workspace, and its errors.
#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include <softmaxlab/linear_cross_entropy.hpp>

#include "finite_difference.hpp"
#include "support.hpp"

namespace sml = softmaxlab;
using Index = Eigen::Index;
using softmaxlab_test::AllocationGuard;
using softmaxlab_test::fd_relative_error;
using softmaxlab_test::fd_scalar_gradient;
using softmaxlab_test::random_normal;
using softmaxlab_test::Worst;
using LD = long double;
using MatLD = Eigen::Matrix<LD, Eigen::Dynamic, Eigen::Dynamic>;

namespace {

struct Options {
  sml::Reduction reduction = sml::Reduction::Mean;
  double eps = 0;
  long ignore = -100;
  std::vector<double> weight;
  double z_loss = 0;
  double cap = 0;
  double temperature = 1;
  bool upstream = false;

  sml::LinearCrossEntropy make() const {
    return sml::LinearCrossEntropy(reduction, eps, ignore)
        .with_weight(weight)
        .with_z_loss(z_loss)
        .with_softcap(cap)
        .with_temperature(temperature);
  }
};

// The materialized loss, computed independently in long double from the definitions
// (PyTorch's cross_entropy with the options, Gemma 2's softcap, a temperature).
struct Reference {
  LD loss = 0;
  std::vector<LD> lse, losses, u, a, e;  // e: the bound of each token's logit error (stated)
  MatLD z, p, g, q, dh, dw;
  Eigen::Matrix<LD, Eigen::Dynamic, 1> db;
};

template <class MH, class MW, class VB>
Reference reference(const MH& h, const MW& w, const VB* b, const std::vector<int>& labels,
                    const Options& o, const Eigen::VectorXd& upstream, double eps_scalar) {
  const Index n = h.rows(), d = h.cols(), v = w.rows();
  Reference r;
  r.z.resize(n, v);
  r.p.resize(n, v);
  r.g.resize(n, v);
  r.q = MatLD::Zero(n, v);
  MatLD slope(n, v);
  r.lse.assign(n, 0);
  r.losses.assign(n, 0);
  r.u.assign(n, 0);
  r.a.assign(n, 0);
  r.e.assign(n, 0);
  const auto wk = [&](Index k) {
    return o.weight.empty() ? 1.0L : LD(o.weight[k]);
  };
  LD wtot = 0, wsum = 0;
  for (Index k = 0; k < v; ++k)
    wtot += wk(k);
  for (Index i = 0; i < n; ++i) {
    LD mx = -INFINITY, rabs = 0, zabs = 0;
    for (Index k = 0; k < v; ++k) {
      LD raw = b ? LD((*b)(k)) : 0.0L, abs_sum = b ? std::fabs(LD((*b)(k))) : 0.0L;
      for (Index j = 0; j < d; ++j) {
        raw += LD(h(i, j)) * LD(w(k, j));
        abs_sum += std::fabs(LD(h(i, j)) * LD(w(k, j)));
      }
      LD s = raw;
      slope(i, k) = 1;
      if (o.cap != 0) {
        const LD t = std::tanh(raw / LD(o.cap));
        s = LD(o.cap) * t;
        slope(i, k) = 1 - t * t;
      }
      r.z(i, k) = s / LD(o.temperature);
      mx = std::max(mx, r.z(i, k));
      rabs = std::max(rabs, abs_sum);
      zabs = std::max(zabs, std::fabs(r.z(i, k)));
    }
    // GEMM bound gamma_d on the raw logit, a few roundings for bias, softcap and temperature.
    r.e[i] = eps_scalar * (LD(d + 4) * rabs / LD(o.temperature) + 4 * zabs);
    LD s = 0;
    for (Index k = 0; k < v; ++k)
      s += std::exp(r.z(i, k) - mx);
    r.lse[i] = mx + std::log(s);
    for (Index k = 0; k < v; ++k)
      r.p(i, k) = std::exp(r.z(i, k) - r.lse[i]);
    if (labels[i] == o.ignore)
      continue;
    wsum += wk(labels[i]);
    LD sum_q = 0;
    for (Index k = 0; k < v; ++k) {
      r.q(i, k) = wk(k) * ((k == labels[i] ? 1 - LD(o.eps) : 0.0L) + LD(o.eps) / LD(v));
      sum_q += r.q(i, k);
      r.losses[i] += r.q(i, k) * (r.lse[i] - r.z(i, k));
    }
    r.losses[i] += LD(o.z_loss) * r.lse[i] * r.lse[i];
    r.a[i] = sum_q + 2 * LD(o.z_loss) * r.lse[i];
  }
  for (Index i = 0; i < n; ++i) {
    if (labels[i] == o.ignore)
      continue;
    if (o.reduction == sml::Reduction::Mean)
      r.u[i] = wsum > 0 ? 1 / wsum : 0;
    else if (o.reduction == sml::Reduction::Sum)
      r.u[i] = 1;
    else
      r.u[i] = o.upstream ? LD(upstream(i)) : 1;
    r.loss += (o.reduction == sml::Reduction::None ? 1 : r.u[i]) * r.losses[i];
  }
  for (Index i = 0; i < n; ++i) {
    for (Index k = 0; k < v; ++k)
      r.g(i, k) = r.u[i] * (r.a[i] * r.p(i, k) - r.q(i, k)) * slope(i, k) / LD(o.temperature);
  }
  r.dh = r.g * w.template cast<LD>();
  r.dw = r.g.transpose() * h.template cast<LD>();
  r.db = r.g.colwise().sum().transpose();
  return r;
}

std::vector<int> random_labels(Index n, Index v, unsigned seed, long ignore, int every) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<int> pick(0, static_cast<int>(v) - 1);
  std::vector<int> l(n);
  for (Index i = 0; i < n; ++i)
    l[i] = (every > 0 && i % every == every - 1) ? static_cast<int>(ignore) : pick(gen);
  return l;
}

// The configurations every comparison runs: each option alone and all together.
std::vector<std::pair<std::string, Options>> configurations(Index v) {
  std::vector<std::pair<std::string, Options>> c;
  std::vector<double> weight(v);
  for (Index k = 0; k < v; ++k)
    weight[k] = 0.25 + 0.1 * static_cast<double>(k % 7);
  for (auto red : {sml::Reduction::Mean, sml::Reduction::Sum, sml::Reduction::None}) {
    const std::string rn = red == sml::Reduction::Mean  ? "mean"
                           : red == sml::Reduction::Sum ? "sum"
                                                        : "none";
    Options o;
    o.reduction = red;
    c.push_back({rn + " plain", o});
    Options s = o;
    s.eps = 0.1;
    c.push_back({rn + " smoothing", s});
    Options wt = o;
    wt.weight = weight;
    c.push_back({rn + " weights", wt});
    Options zl = o;
    zl.z_loss = 1e-2;
    c.push_back({rn + " z-loss", zl});
    Options sc = o;
    sc.cap = 3.0;
    c.push_back({rn + " softcap", sc});
    Options t = o;
    t.temperature = 0.7;
    c.push_back({rn + " temperature", t});
    Options all = o;
    all.eps = 0.2;
    all.weight = weight;
    all.z_loss = 1e-3;
    all.cap = 5.0;
    all.temperature = 1.3;
    all.ignore = 3;
    all.upstream = red == sml::Reduction::None;
    c.push_back({rn + " all options", all});
  }
  return c;
}

// Compares one call's results with the reference in units of the stated bound (see the header):
// loss and lse within CrossEntropyLoss's 8 eps (1 + |value|) plus sum_q times twice the logit
// error; gradients within the propagated logit error plus the GEMMs' gamma_K.
template <class Scalar>
void compare(const Reference& r, double loss, const Eigen::VectorXd& lse,
             const Eigen::VectorXd& losses, const Eigen::Matrix<Scalar, -1, -1>* dh,
             const Eigen::Matrix<Scalar, -1, -1>* dw, const Eigen::Matrix<Scalar, -1, 1>* db,
             const Eigen::Matrix<Scalar, -1, -1>& h, const Eigen::Matrix<Scalar, -1, -1>& w,
             double factor, const Options& o, Worst& worst) {
  const double eps = std::numeric_limits<Scalar>::epsilon();
  const Index n = h.rows(), d = h.cols(), v = w.rows();
  LD loss_bound = 8 * eps * (1 + std::fabs(r.loss));
  for (Index i = 0; i < n; ++i) {
    const LD uu = o.reduction == sml::Reduction::None ? 1 : std::fabs(r.u[i]);
    const LD sum_q = r.a[i] - 2 * LD(o.z_loss) * r.lse[i];
    loss_bound += uu
                  * ((2 * sum_q + 4 * LD(o.z_loss) * std::fabs(r.lse[i])) * r.e[i] * factor
                     + 8 * eps * (1 + std::fabs(r.losses[i])));
    const double lse_bound = double(r.e[i] * factor + 8 * eps * (1 + std::fabs(r.lse[i])));
    worst.update(double(std::fabs(lse(i) - r.lse[i])) / eps, lse_bound / eps,
                 [&](std::ostream& s) { s << "lse of token " << i; });
    if (r.u[i] != 0 || r.losses[i] != 0) {
      const double lb =
          double(r.e[i] * factor * (2 * sum_q + 4 * LD(o.z_loss) * std::fabs(r.lse[i]))
                 + 8 * eps * (1 + std::fabs(r.losses[i])));
      worst.update(double(std::fabs(losses(i) - r.losses[i])) / eps, lb / eps,
                   [&](std::ostream& s) { s << "loss of token " << i; });
    }
  }
  worst.update(double(std::fabs(loss - r.loss)) / eps, double(loss_bound) / eps,
               [&](std::ostream& s) { s << "total loss " << loss << " vs " << double(r.loss); });
  if (dh == nullptr)
    return;
  // Per-entry error of dL/dr: the probabilities' relative error from the logits, the softcap
  // slope's, the z-loss coefficient's.
  const double cap_amp = o.cap != 0 ? 1 + 2 * o.temperature / o.cap : 1.0;
  MatLD eg(n, v);
  for (Index i = 0; i < n; ++i) {
    for (Index k = 0; k < v; ++k) {
      const LD au = std::fabs(r.u[i]);
      eg(i, k) = (au * (std::fabs(r.a[i]) + 2 * LD(o.z_loss)) * r.p(i, k) + au * r.q(i, k)
                  + std::fabs(r.g(i, k)))
                 * (4 * r.e[i] * factor * cap_amp + 16 * eps);
    }
  }
  const MatLD hl = h.template cast<LD>(), wl = w.template cast<LD>();
  const MatLD ga = r.g.cwiseAbs();
  const MatLD dh_bound = eg * wl.cwiseAbs() + LD(v + 2) * eps * ga * wl.cwiseAbs();
  const MatLD dw_bound =
      eg.transpose() * hl.cwiseAbs() + LD(n + 2) * eps * ga.transpose() * hl.cwiseAbs();
  for (Index i = 0; i < n; ++i) {
    for (Index j = 0; j < d; ++j) {
      worst.update(double(std::fabs(LD((*dh)(i, j)) - r.dh(i, j)) / eps),
                   double(dh_bound(i, j) / eps) + 1e-30,
                   [&](std::ostream& s) { s << "dH(" << i << ", " << j << ")"; });
    }
  }
  for (Index k = 0; k < v; ++k) {
    for (Index j = 0; j < d; ++j) {
      worst.update(double(std::fabs(LD((*dw)(k, j)) - r.dw(k, j)) / eps),
                   double(dw_bound(k, j) / eps) + 1e-30,
                   [&](std::ostream& s) { s << "dW(" << k << ", " << j << ")"; });
    }
    if (db != nullptr) {
      LD bound = 0;
      for (Index i = 0; i < n; ++i)
        bound += eg(i, k) + LD(n + 2) * eps * ga(i, k);
      worst.update(double(std::fabs(LD((*db)(k)) - r.db(k)) / eps), double(bound / eps) + 1e-30,
                   [&](std::ostream& s) { s << "db(" << k << ")"; });
    }
  }
}

template <class Scalar>
void check_against_reference(Index n, Index d, Index v, Index tb, Index vb, unsigned seed) {
  using M = Eigen::Matrix<Scalar, -1, -1>;
  using Vec = Eigen::Matrix<Scalar, -1, 1>;
  const M h = random_normal(n, d, seed, 1.0).cast<Scalar>();
  const M w = random_normal(v, d, seed + 1, 0.7).cast<Scalar>();
  const Vec b = random_normal(v, 1, seed + 2, 0.5).cast<Scalar>();
  const Eigen::VectorXd up = random_normal(n, 1, seed + 3, 1.0);
  const double eps = std::numeric_limits<Scalar>::epsilon();
  for (const auto& config : configurations(v)) {
    const std::string& label = config.first;
    const Options& o = config.second;
    const auto labels = random_labels(n, v, seed + 4, o.ignore, 4);
    const auto lce = o.make().with_block_sizes(tb, vb);
    for (int with_bias = 0; with_bias < 2; ++with_bias) {
      INFO(label << (with_bias ? " with bias" : "") << ", blocks " << tb << " x " << vb);
      const Reference r =
          reference(h, w, with_bias ? &b : static_cast<const Vec*>(nullptr), labels, o, up, eps);
      Eigen::VectorXd lse(n), losses(n);
      auto out = sml::TokenOutputs().with_lse(lse).with_losses(losses);
      if (o.upstream)
        out = out.with_upstream(up);
      M dh(n, d), dw(v, d);
      Vec db(v);
      Worst worst;
      if (with_bias) {
        const double l0 = lce(h, w, b, labels, out);
        compare<Scalar>(r, l0, lse, losses, nullptr, nullptr, nullptr, h, w, 1.0, o, worst);
        const double l1 = lce(h, w, b, labels, dh, dw, db, out);
        CHECK(l1 == l0);  // the forward is the same code with or without gradients
        compare<Scalar>(r, l1, lse, losses, &dh, &dw, &db, h, w, 1.0, o, worst);
      } else {
        const double l0 = lce(h, w, labels, out);
        compare<Scalar>(r, l0, lse, losses, nullptr, nullptr, nullptr, h, w, 1.0, o, worst);
        const double l1 = lce(h, w, labels, dh, dw, out);
        CHECK(l1 == l0);
        compare<Scalar>(r, l1, lse, losses, &dh, &dw, nullptr, h, w, 1.0, o, worst);
      }
      INFO(worst.report());
      CHECK(worst.ratio <= 1.0);
    }
  }
}

}  // namespace

TEST_CASE("LinearCrossEntropy matches a long double reference",
          "[loss][linear_cross_entropy][reference]") {
  // Blocks that split both axes unevenly (several vocabulary groups, a partial last block) and
  // the defaults (one block).
  for (auto [tb, vb] : {std::pair<Index, Index>{4, 8}, {5, 3}, {128, 2048}}) {
    check_against_reference<float>(13, 7, 37, tb, vb, 11);
    check_against_reference<double>(13, 7, 37, tb, vb, 21);
  }
  // Worst errors over every option, printed once for the record.
  Worst all;
  const Eigen::MatrixXf h = random_normal(33, 24, 5, 1.0).cast<float>();
  const Eigen::MatrixXf w = random_normal(300, 24, 6, 0.5).cast<float>();
  const Options o;
  const auto labels = random_labels(33, 300, 7, o.ignore, 0);
  const Reference r = reference(h, w, static_cast<const Eigen::VectorXf*>(nullptr), labels, o,
                                Eigen::VectorXd(), std::numeric_limits<float>::epsilon());
  Eigen::VectorXd lse(33), losses(33);
  Eigen::MatrixXf dh(33, 24), dw(300, 24);
  const double l = o.make().with_block_sizes(8, 64)(
      h, w, labels, dh, dw, sml::TokenOutputs().with_lse(lse).with_losses(losses));
  compare<float>(r, l, lse, losses, &dh, &dw, nullptr, h, w, 1.0, o, all);
  WARN("float, N 33, d 24, V 300: " << all.report());
  CHECK(all.ratio <= 1.0);
}

TEST_CASE("LinearCrossEntropy gradients match finite differences",
          "[loss][linear_cross_entropy][gradient]") {
  const Index n = 5, d = 4, v = 11;
  const Eigen::MatrixXd h0 = random_normal(n, d, 31, 1.0), w0 = random_normal(v, d, 32, 0.8);
  const Eigen::VectorXd b0 = random_normal(v, 1, 33, 0.5), up = random_normal(n, 1, 34, 1.0);
  for (const auto& config : configurations(v)) {
    const std::string& label = config.first;
    const Options& o = config.second;
    INFO(label);
    const auto labels = random_labels(n, v, 35, o.ignore, 3);
    const auto lce = o.make().with_block_sizes(2, 4);
    // The scalar being differentiated: the returned loss, or sum_n g_n loss_n for None + upstream.
    const auto objective = [&](const Eigen::MatrixXd& h, const Eigen::MatrixXd& w,
                               const Eigen::VectorXd& b) {
      Eigen::VectorXd losses(n);
      const double l = lce(h, w, b, labels, sml::TokenOutputs().with_losses(losses));
      return o.upstream ? up.dot(losses) : l;
    };
    Eigen::MatrixXd dh(n, d), dw(v, d);
    Eigen::VectorXd db(v);
    auto out = sml::TokenOutputs();
    if (o.upstream)
      out = out.with_upstream(up);
    lce(h0, w0, b0, labels, dh, dw, db, out);
    const Eigen::MatrixXd fd_h =
        fd_scalar_gradient([&](const Eigen::MatrixXd& h) { return objective(h, w0, b0); }, h0);
    const Eigen::MatrixXd fd_w =
        fd_scalar_gradient([&](const Eigen::MatrixXd& w) { return objective(h0, w, b0); }, w0);
    const Eigen::VectorXd fd_b =
        fd_scalar_gradient([&](const Eigen::VectorXd& b) { return objective(h0, w0, b); }, b0);
    const double eh = fd_relative_error(dh, fd_h, h0), ew = fd_relative_error(dw, fd_w, w0),
                 eb = fd_relative_error(db, fd_b, b0);
    INFO("relative errors dH " << eh << ", dW " << ew << ", db " << eb);
    CHECK(eh < 1e-6);
    CHECK(ew < 1e-6);
    CHECK(eb < 1e-6);
  }
}

TEST_CASE("LinearCrossEntropy equals the materialized CrossEntropyLoss path",
          "[loss][linear_cross_entropy][materialized]") {
  // Larger shapes, float, default blocks (several token blocks, two vocabulary blocks): the
  // materialized path is Z = H W^T + b, CrossEntropyLoss with the same options, dH = G W,
  // dW = G^T H, db = column sums of G. Both sides round their GEMMs: twice the logit bound.
  const Index n = 300, d = 48, v = 3000;
  const Eigen::MatrixXf h = random_normal(n, d, 41, 1.0).cast<float>();
  const Eigen::MatrixXf w = random_normal(v, d, 42, 0.3).cast<float>();
  const Eigen::VectorXf b = random_normal(v, 1, 43, 0.5).cast<float>();
  std::vector<double> weight(v);
  for (Index k = 0; k < v; ++k)
    weight[k] = 0.5 + 0.01 * static_cast<double>(k % 100);
  Options o;
  o.eps = 0.1;
  o.weight = weight;
  o.z_loss = 1e-3;
  const auto labels = random_labels(n, v, 44, o.ignore, 9);
  const sml::CrossEntropyLoss ce =
      sml::CrossEntropyLoss(o.reduction, o.eps, o.ignore).with_weight(weight).with_z_loss(o.z_loss);
  Eigen::MatrixXf z = h * w.transpose();
  z.rowwise() += b.transpose();
  Eigen::MatrixXf g(n, v);
  Eigen::VectorXd lse_ce(n), losses_ce(n);
  const double l_ce = ce(z, labels, g, sml::RowOutputs().with_lse(lse_ce).with_losses(losses_ce));
  const Eigen::MatrixXf dh_ce = g * w, dw_ce = g.transpose() * h;
  const Eigen::VectorXf db_ce = g.colwise().sum().transpose();

  const sml::LinearCrossEntropy lce(ce);  // the same options, taken from the CrossEntropyLoss
  Eigen::MatrixXf dh(n, d), dw(v, d);
  Eigen::VectorXf db(v);
  Eigen::VectorXd lse(n), losses(n);
  const double l =
      lce(h, w, b, labels, dh, dw, db, sml::TokenOutputs().with_lse(lse).with_losses(losses));
  // The exact reference gives the bound's scales; both results are compared with it and with each
  // other.
  const Reference r =
      reference(h, w, &b, labels, o, Eigen::VectorXd(), std::numeric_limits<float>::epsilon());
  Worst fused, materialized;
  compare<float>(r, l, lse, losses, &dh, &dw, &db, h, w, 1.0, o, fused);
  compare<float>(r, l_ce, lse_ce, losses_ce, &dh_ce, &dw_ce, &db_ce, h, w, 1.0, o, materialized);
  WARN("fused: " << fused.report() << "\nmaterialized: " << materialized.report());
  CHECK(fused.ratio <= 1.0);
  CHECK(materialized.ratio <= 1.0);
  CHECK(std::fabs(l - l_ce) <= 1e-5 * std::fabs(l_ce));
  CHECK((dh - dh_ce).cwiseAbs().maxCoeff() <= 1e-4 * dh_ce.cwiseAbs().maxCoeff());
  CHECK((dw - dw_ce).cwiseAbs().maxCoeff() <= 1e-4 * dw_ce.cwiseAbs().maxCoeff());
}

TEST_CASE("LinearCrossEntropy does not depend on the block sizes and repeats bit for bit",
          "[loss][linear_cross_entropy][blocks]") {
  const Index n = 37, d = 9, v = 211;
  const Eigen::MatrixXd h = random_normal(n, d, 51, 1.0), w = random_normal(v, d, 52, 1.0);
  Options o;
  o.eps = 0.05;
  o.cap = 4;
  const auto labels = random_labels(n, v, 53, o.ignore, 5);
  const auto base = o.make();
  Eigen::MatrixXd dh0(n, d), dw0(v, d);
  const double l0 = base.with_block_sizes(n, v)(h, w, labels, dh0, dw0);  // a single block
  for (auto [tb, vb] : {std::pair<Index, Index>{1, 1}, {3, 17}, {8, 64}, {64, 4096}, {128, 2048}}) {
    INFO("blocks " << tb << " x " << vb);
    const auto lce = base.with_block_sizes(tb, vb);
    Eigen::MatrixXd dh(n, d), dw(v, d), dh2(n, d), dw2(v, d);
    const double l = lce(h, w, labels, dh, dw);
    CHECK(std::fabs(l - l0) <= 1e-13 * std::fabs(l0));
    CHECK((dh - dh0).cwiseAbs().maxCoeff() <= 1e-13 * dh0.cwiseAbs().maxCoeff());
    CHECK((dw - dw0).cwiseAbs().maxCoeff() <= 1e-13 * dw0.cwiseAbs().maxCoeff());
    const double l2 = lce(h, w, labels, dh2, dw2);  // same call again: same bits
    CHECK(l2 == l);
    CHECK(softmaxlab_test::same(dh2, dh));
    CHECK(softmaxlab_test::same(dw2, dw));
  }
}

TEST_CASE("LinearCrossEntropy gradient filtering keeps the loss and stays within its bound",
          "[loss][linear_cross_entropy][filter]") {
  // Peaked rows (large logits), so that most vocabulary blocks fall below the threshold.
  const Index n = 20, d = 6, v = 400;
  const Eigen::MatrixXd h = random_normal(n, d, 61, 3.0), w = random_normal(v, d, 62, 3.0);
  const auto labels = random_labels(n, v, 63, -100, 0);
  const double tau = 1e-6;
  const sml::LinearCrossEntropy exact = sml::LinearCrossEntropy().with_block_sizes(8, 16);
  const auto filtered = exact.with_gradient_filter(tau);
  CHECK(exact.gradient_filter() == 0);  // off by default
  Eigen::MatrixXd dh(n, d), dw(v, d), dhf(n, d), dwf(v, d);
  const double l = exact(h, w, labels, dh, dw), lf = filtered(h, w, labels, dhf, dwf);
  CHECK(lf == l);
  // Stated bound: |dH_n error| <= u A tau sum_k |w_k|, |dW_k error| <= tau sum_n u A |h_n| (u =
  // 1/N for Mean, A = 1 here).
  const double u = 1.0 / static_cast<double>(n);
  const Eigen::VectorXd wsum = w.cwiseAbs().colwise().sum().transpose();
  const Eigen::VectorXd hsum = h.cwiseAbs().colwise().sum().transpose();
  for (Index j = 0; j < d; ++j) {
    CHECK((dhf.col(j) - dh.col(j)).cwiseAbs().maxCoeff() <= u * tau * wsum(j) + 1e-15);
    CHECK((dwf.col(j) - dw.col(j)).cwiseAbs().maxCoeff() <= u * tau * hsum(j) + 1e-15);
  }
  CHECK((dwf - dw).cwiseAbs().maxCoeff() > 0);  // something was filtered
}

namespace {

// No allocation with a workspace; its size depends on the block sizes and d only, never on N or V
// (for 16-bit inputs: no copy of W or H either).
template <class T>
void allocation_case(Index d, std::size_t limit) {
  using M = Eigen::Matrix<T, -1, -1>;
  sml::LinearCrossEntropy::Workspace ws;
  const auto lce = sml::LinearCrossEntropy().with_block_sizes(16, 32);
  std::size_t bytes_small = 0;
  for (Index n : {40, 400}) {
    for (Index v : {100, 1000}) {
      INFO("N " << n << ", V " << v << ", d " << d);
      const M h = random_normal(n, d, 71, 1.0).cast<float>().cast<T>();
      const M w = random_normal(v, d, 72, 1.0).cast<float>().cast<T>();
      const auto labels = random_labels(n, v, 73, -100, 0);
      Eigen::MatrixXf dh(n, d), dw(v, d);
      const auto out = sml::TokenOutputs().with_workspace(ws);
      const double l0 = lce(h, w, labels, dh, dw, out);  // sizes the workspace
      if (bytes_small == 0)
        bytes_small = ws.bytes();
      double l1 = 0;
      {
        AllocationGuard guard;
        l1 = lce(h, w, labels, dh, dw, out);
        CHECK(guard.allocations() == 0);
      }
      CHECK(l1 == l0);
      CHECK(ws.bytes() == bytes_small);
      CHECK(ws.bytes() < sizeof(float) * static_cast<std::size_t>(n * v) / 2 + limit);
      // bytes() is the stated formula (on as many threads as the kernel used: 1 without OpenMP).
      const std::size_t f1 = lce.workspace_bytes<T>(n, d, v, 1, true);
#if defined(_OPENMP)
      CHECK(ws.bytes() >= f1);
      CHECK(ws.bytes() <= lce.workspace_bytes<T>(n, d, v, sml::LinearCrossEntropy::kGroups, true));
#else
      CHECK(ws.bytes() == f1);
#endif
    }
  }
  CHECK(bytes_small < limit);
}

}  // namespace

TEST_CASE("LinearCrossEntropy allocates nothing with a workspace and never N x V",
          "[loss][linear_cross_entropy][allocation]") {
  // Float: 2 groups of 16 x 32 buffers at most. Half and bfloat16 (d = 40): also the widened
  // 16 x 40 H block and 32 x 40 W chunks.
  allocation_case<float>(8, 10000);         // 7.1 KB by the formula on 2 threads
  allocation_case<Eigen::half>(40, 30000);  // 24.5 KB
  allocation_case<Eigen::bfloat16>(40, 30000);
}

TEST_CASE("LinearCrossEntropy's workspace is under 1% of the logits at the benchmark shape",
          "[loss][linear_cross_entropy][allocation]") {
  // Issue 24's memory target at bench/bench_linear_cross_entropy.cpp's shape (N = 4096, d = 1024,
  // V = 32,000, default blocks, loss and gradients) on 1 and 2 threads, float and 16-bit inputs:
  // Workspace::bytes() is the formula workspace_bytes (checked above), so no call is needed.
  const sml::LinearCrossEntropy lce;
  const Index n = 4096, d = 1024, v = 32000;
  const double logits = 4.0 * n * v;  // N x V floats
  for (int threads : {1, 2}) {
    const double f = static_cast<double>(lce.workspace_bytes<float>(n, d, v, threads, true));
    const double h = static_cast<double>(lce.workspace_bytes<Eigen::half>(n, d, v, threads, true));
    const double b =
        static_cast<double>(lce.workspace_bytes<Eigen::bfloat16>(n, d, v, threads, true));
    INFO("threads " << threads << ": float " << f << " B (" << 100 * f / logits << "%), half " << h
                    << " B (" << 100 * h / logits << "%), bfloat16 " << b << " B");
    // At most 0.5%: the other half of the 1% is left for Eigen's GEMM packing buffers and the
    // threads' stacks, which the peak resident set also counts.
    CHECK(f <= 0.005 * logits);
    CHECK(h <= 0.005 * logits);
    CHECK(b == h);
    // The loss alone needs less; the workspace does not grow with N.
    CHECK(lce.workspace_bytes<float>(n, d, v, threads, false) < f);
    CHECK(lce.workspace_bytes<float>(16 * n, d, v, threads, true) == f);
  }
  // More threads than groups use no more memory; the formula grows with the block sizes.
  CHECK(lce.workspace_bytes<float>(n, d, v, 8, true)
        == lce.workspace_bytes<float>(n, d, v, sml::LinearCrossEntropy::kGroups, true));
  CHECK(lce.with_block_sizes(256, 2048).workspace_bytes<float>(n, d, v, 1, true)
        > lce.workspace_bytes<float>(n, d, v, 1, true));
  CHECK(lce.workspace_bytes<float>(0, d, v, 1, true) == 0);
  CHECK_THROWS_AS(lce.workspace_bytes<float>(-1, d, v, 1, true), std::invalid_argument);
  CHECK_THROWS_AS(lce.workspace_bytes<float>(n, d, v, 0, true), std::invalid_argument);
}

TEST_CASE("LinearCrossEntropy special values and edge shapes",
          "[loss][linear_cross_entropy][special]") {
  const Eigen::MatrixXd h = random_normal(4, 3, 81, 1.0), w = random_normal(6, 3, 82, 1.0);
  Eigen::VectorXd b = Eigen::VectorXd::Zero(6);
  b(5) = -std::numeric_limits<double>::infinity();  // class 5 masked by its bias
  const std::vector<int> labels{0, 1, -100, 2};
  Eigen::VectorXd lse(4), losses(4);
  const auto lce = sml::LinearCrossEntropy(sml::Reduction::Sum);
  const double l = lce(h, w, b, labels, sml::TokenOutputs().with_lse(lse).with_losses(losses));
  // Masked class: the loss equals the loss over the first five classes.
  const double l5 = lce(h, w.topRows(5), labels);
  CHECK(std::fabs(l - l5) <= 1e-14 * std::fabs(l5));
  CHECK(losses(2) == 0);         // ignored token
  CHECK(std::isfinite(lse(2)));  // its lse is still given
  // A NaN in H makes that token's loss NaN, never a plausible value.
  Eigen::MatrixXd hn = h;
  hn(1, 0) = std::numeric_limits<double>::quiet_NaN();
  CHECK(std::isnan(lce(hn, w, labels, sml::TokenOutputs().with_losses(losses))));
  CHECK(std::isnan(losses(1)));
  CHECK(std::isfinite(losses(0)));
  // N = 0: loss 0.
  const Eigen::MatrixXd h0(0, 3);
  Eigen::MatrixXd dh0(0, 3), dw(6, 3);
  CHECK(lce(h0, w, std::vector<int>{}, dh0, dw) == 0);
  CHECK(dw.cwiseAbs().maxCoeff() == 0);
  // Every token ignored with Mean: 0 and zero gradients (CrossEntropyLoss's rule).
  Eigen::MatrixXd dh(4, 3);
  CHECK(sml::LinearCrossEntropy()(h, w, std::vector<int>(4, -100), dh, dw) == 0);
  CHECK(dh.cwiseAbs().maxCoeff() == 0);
}

TEST_CASE("LinearCrossEntropy rejects bad input naming the parameter",
          "[loss][linear_cross_entropy][errors]") {
  const auto throws_with = [](auto&& fn, const std::string& word) {
    try {
      fn();
    } catch (const std::invalid_argument& e) {
      INFO(e.what());
      CHECK(std::string(e.what()).find(word) != std::string::npos);
      return;
    }
    FAIL("no std::invalid_argument mentioning " << word);
  };
  const sml::LinearCrossEntropy lce;
  throws_with([&] { (void)lce.with_softcap(-1); }, "softcap");
  throws_with([&] { (void)lce.with_softcap(std::nan("")); }, "softcap");
  throws_with([&] { (void)lce.with_temperature(0); }, "temperature");
  throws_with([&] { (void)lce.with_block_sizes(0, 8); }, "token_block");
  throws_with([&] { (void)lce.with_block_sizes(8, 0); }, "vocab_block");
  throws_with([&] { (void)lce.with_gradient_filter(1.0); }, "gradient filter");
  throws_with([&] { (void)lce.with_label_smoothing(1.0); }, "label_smoothing");
  throws_with([&] { (void)lce.with_z_loss(-1); }, "z_loss");
  throws_with([&] { (void)lce.with_weight({1.0, -2.0}); }, "weight");
  const Eigen::MatrixXf h = Eigen::MatrixXf::Ones(3, 4), w = Eigen::MatrixXf::Ones(5, 4);
  const std::vector<int> labels{0, 1, 2};
  Eigen::MatrixXf dh(3, 4), dw(5, 4), bad(2, 4);
  Eigen::VectorXf b(5), db(5), b4(4);
  throws_with([&] { (void)lce(h, Eigen::MatrixXf::Ones(5, 3), labels); }, "chain");
  throws_with([&] { (void)lce(h, w, std::vector<int>{0, 1, 5}); }, "label 5");
  throws_with([&] { (void)lce(h, w, std::vector<int>{0, 1}); }, "labels");
  throws_with([&] { (void)lce(h, w, labels, bad, dw); }, "dH");
  throws_with([&] { (void)lce(h, w, labels, dh, bad); }, "dW");
  throws_with([&] { (void)lce(h, w, b4, labels); }, "b must");
  throws_with([&] { (void)lce(h, w, b, labels, dh, dw, b4); }, "db");
  throws_with([&] { (void)lce.with_weight({1, 1})(h, w, labels); }, "weight");
  const Eigen::VectorXd up(3), up2(2);
  throws_with([&] { (void)lce(h, w, labels, dh, dw, sml::TokenOutputs().with_upstream(up)); },
              "upstream");
  throws_with(
      [&] {
        (void)lce.with_reduction(sml::Reduction::None)(h, w, labels, dh, dw,
                                                       sml::TokenOutputs().with_upstream(up2));
      },
      "upstream");
  Eigen::MatrixXf h2 = h, w2 = w;
  throws_with([&] { (void)lce(h2, w, labels, h2, dw); }, "dH shares storage with H");
  throws_with([&] { (void)lce(h, w2, labels, dh, w2); }, "dW shares storage with W");
  Eigen::VectorXd lse2(2);
  throws_with([&] { (void)lce(h, w, labels, sml::TokenOutputs().with_lse(lse2)); }, "lse");
}
