// LinearCrossEntropy (linear_cross_entropy.hpp) on Eigen::half and Eigen::bfloat16 H, W and b:
// the result equals the float result computed on the same (rounded) values within twice the
// stated float bound (both are within it of the exact value on those inputs), for the loss, the
// per-token outputs and the gradients dH, dW, db (float); either storage order; blocks that split
// W into several widened chunks. (No allocation with a workspace, for 16-bit inputs too:
// "LinearCrossEntropy allocates nothing with a workspace and never N x V" in
// test_linear_cross_entropy.cpp.)
#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include <softmaxlab/linear_cross_entropy.hpp>

#include "support.hpp"

namespace sml = softmaxlab;
using Index = Eigen::Index;
using softmaxlab_test::random_normal;
using softmaxlab_test::Worst;

namespace {

struct Options {
  sml::Reduction reduction = sml::Reduction::Mean;
  double eps = 0, z_loss = 0, cap = 0, temperature = 1;
  long ignore = -100;
  bool upstream = false;
  sml::LinearCrossEntropy make() const {
    return sml::LinearCrossEntropy(reduction, eps, ignore)
        .with_z_loss(z_loss)
        .with_softcap(cap)
        .with_temperature(temperature);
  }
};

std::vector<int> random_labels(Index n, Index v, unsigned seed, long ignore) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<int> pick(0, static_cast<int>(v) - 1);
  std::vector<int> l(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i)
    l[static_cast<std::size_t>(i)] = i % 5 == 4 ? static_cast<int>(ignore) : pick(gen);
  return l;
}

// The scales of the stated bound, computed independently in double from the definitions on the
// rounded inputs: logits, probabilities, targets q, dL/dr, and each token's logit error bound e_n
// (the GEMM's gamma_d plus a few roundings, as test_linear_cross_entropy.cpp states it).
struct Scales {
  Eigen::MatrixXd p, q, g;
  std::vector<double> e, u, a, lse, losses, sum_q;  // sum_q: 1 for a counted token, else 0
  double loss = 0;
};

Scales scales(const Eigen::MatrixXd& h, const Eigen::MatrixXd& w, const Eigen::VectorXd& b,
              const std::vector<int>& labels, const Options& o, const Eigen::VectorXd& up) {
  const Index n = h.rows(), v = w.rows(), d = h.cols();
  const double eps = std::numeric_limits<float>::epsilon(), t = o.temperature;
  Scales s;
  const Eigen::MatrixXd raw = (h * w.transpose()).rowwise() + b.transpose();
  const Eigen::MatrixXd mag =
      (h.cwiseAbs() * w.cwiseAbs().transpose()).rowwise() + b.cwiseAbs().transpose();
  Eigen::MatrixXd z = raw, slope = Eigen::MatrixXd::Ones(n, v);
  if (o.cap != 0) {
    z = (raw / o.cap).array().tanh() * o.cap;
    slope = 1 - (z / o.cap).array().square();
  }
  z /= t;
  s.p.resize(n, v);
  s.q = Eigen::MatrixXd::Zero(n, v);
  s.g.resize(n, v);
  s.e.assign(n, 0);
  s.u.assign(n, 0);
  s.a.assign(n, 0);
  s.lse.assign(n, 0);
  s.losses.assign(n, 0);
  s.sum_q.assign(n, 0);
  Index counted = 0;
  for (Index i = 0; i < n; ++i)
    counted += labels[i] != o.ignore;
  for (Index i = 0; i < n; ++i) {
    s.e[i] = eps * (double(d + 4) * mag.row(i).maxCoeff() / t + 4 * z.row(i).cwiseAbs().maxCoeff());
    const double m = z.row(i).maxCoeff();
    s.lse[i] = m + std::log((z.row(i).array() - m).exp().sum());
    s.p.row(i) = (z.row(i).array() - s.lse[i]).exp();
    if (labels[i] == o.ignore)
      continue;
    s.sum_q[i] = 1;
    s.q.row(i).setConstant(o.eps / double(v));
    s.q(i, labels[i]) += 1 - o.eps;
    s.losses[i] =
        (s.q.row(i).array() * (s.lse[i] - z.row(i).array())).sum() + o.z_loss * s.lse[i] * s.lse[i];
    s.a[i] = 1 + 2 * o.z_loss * s.lse[i];
    s.u[i] = o.reduction == sml::Reduction::Mean  ? 1.0 / double(counted)
             : o.reduction == sml::Reduction::Sum ? 1.0
                                                  : (o.upstream ? up(i) : 1.0);
    s.loss += (o.reduction == sml::Reduction::None ? 1.0 : s.u[i]) * s.losses[i];
  }
  for (Index i = 0; i < n; ++i)
    s.g.row(i) = s.u[i] * (s.a[i] * s.p.row(i) - s.q.row(i)).cwiseProduct(slope.row(i)) / t;
  return s;
}

// |16-bit result - float result| within twice the stated float bound, in units of it.
void compare(const Scales& s, const Options& o, const Eigen::MatrixXd& h, const Eigen::MatrixXd& w,
             double l16, double l32, const Eigen::VectorXd& lse16, const Eigen::VectorXd& lse32,
             const Eigen::VectorXd& losses16, const Eigen::VectorXd& losses32,
             const Eigen::MatrixXf& dh16, const Eigen::MatrixXf& dh32, const Eigen::MatrixXf& dw16,
             const Eigen::MatrixXf& dw32, const Eigen::VectorXf& db16, const Eigen::VectorXf& db32,
             Worst& worst) {
  const double eps = std::numeric_limits<float>::epsilon();
  const Index n = h.rows(), v = w.rows(), d = h.cols();
  double loss_bound = 8 * eps * (1 + std::fabs(s.loss));
  for (Index i = 0; i < n; ++i) {
    const double sum_q = s.sum_q[i];
    const double tok = (2 * sum_q + 4 * o.z_loss * std::fabs(s.lse[i])) * s.e[i]
                       + 8 * eps * (1 + std::fabs(s.losses[i]));
    loss_bound += (o.reduction == sml::Reduction::None ? 1.0 : std::fabs(s.u[i])) * tok;
    worst.update(std::fabs(lse16(i) - lse32(i)) / eps,
                 2 * (s.e[i] + 8 * eps * (1 + std::fabs(s.lse[i]))) / eps,
                 [&](std::ostream& os) { os << "lse of token " << i; });
    worst.update(std::fabs(losses16(i) - losses32(i)) / eps, 2 * tok / eps + 1e-30,
                 [&](std::ostream& os) { os << "loss of token " << i; });
  }
  worst.update(std::fabs(l16 - l32) / eps, 2 * loss_bound / eps,
               [&](std::ostream& os) { os << "total loss " << l16 << " vs " << l32; });
  const double cap_amp = o.cap != 0 ? 1 + 2 * o.temperature / o.cap : 1.0;
  Eigen::MatrixXd eg(n, v);
  for (Index i = 0; i < n; ++i) {
    for (Index k = 0; k < v; ++k) {
      const double au = std::fabs(s.u[i]);
      eg(i, k) = (au * (std::fabs(s.a[i]) + 2 * o.z_loss) * s.p(i, k) + au * s.q(i, k)
                  + std::fabs(s.g(i, k)))
                 * (4 * s.e[i] * cap_amp + 16 * eps);
    }
  }
  const Eigen::MatrixXd ga = s.g.cwiseAbs();
  const Eigen::MatrixXd dh_bound =
      2 * (eg * w.cwiseAbs() + double(v + 2) * eps * ga * w.cwiseAbs());
  const Eigen::MatrixXd dw_bound =
      2 * (eg.transpose() * h.cwiseAbs() + double(n + 2) * eps * ga.transpose() * h.cwiseAbs());
  const Eigen::VectorXd db_bound =
      2 * (eg.colwise().sum() + double(n + 2) * eps * ga.colwise().sum()).transpose();
  for (Index i = 0; i < n; ++i)
    for (Index j = 0; j < d; ++j)
      worst.update(std::fabs(double(dh16(i, j)) - double(dh32(i, j))) / eps,
                   dh_bound(i, j) / eps + 1e-30,
                   [&](std::ostream& os) { os << "dH(" << i << ", " << j << ")"; });
  for (Index k = 0; k < v; ++k) {
    for (Index j = 0; j < d; ++j)
      worst.update(std::fabs(double(dw16(k, j)) - double(dw32(k, j))) / eps,
                   dw_bound(k, j) / eps + 1e-30,
                   [&](std::ostream& os) { os << "dW(" << k << ", " << j << ")"; });
    worst.update(std::fabs(double(db16(k)) - double(db32(k))) / eps, db_bound(k) / eps + 1e-30,
                 [&](std::ostream& os) { os << "db(" << k << ")"; });
  }
}

template <class T, int Order>
void check_16bit(Index n, Index d, Index v, Index tb, Index vb, unsigned seed, Worst& all) {
  using M16 = Eigen::Matrix<T, -1, -1, Order>;
  using V16 = Eigen::Matrix<T, -1, 1>;
  // The inputs rounded to T; the float path gets the same values (widening is exact).
  const M16 h = random_normal(n, d, seed, 1.0).cast<float>().cast<T>();
  const M16 w = random_normal(v, d, seed + 1, 1.5 / std::sqrt(double(d))).cast<float>().cast<T>();
  const V16 b = random_normal(v, 1, seed + 2, 0.5).cast<float>().cast<T>();
  const Eigen::MatrixXf hf = h.template cast<float>(), wf = w.template cast<float>();
  const Eigen::VectorXf bf = b.template cast<float>();
  const Eigen::VectorXd up = random_normal(n, 1, seed + 3, 1.0);
  std::vector<std::pair<std::string, Options>> configs;
  configs.push_back({"mean plain", Options()});
  Options sum;
  sum.reduction = sml::Reduction::Sum;
  sum.eps = 0.1;
  sum.z_loss = 1e-3;
  configs.push_back({"sum, smoothing, z-loss", sum});
  Options none;
  none.reduction = sml::Reduction::None;
  none.cap = 4;
  none.temperature = 0.8;
  none.upstream = true;
  configs.push_back({"none, softcap, temperature, upstream", none});
  Options all_opts;
  all_opts.eps = 0.2;
  all_opts.z_loss = 1e-3;
  all_opts.cap = 5;
  all_opts.temperature = 1.3;
  all_opts.ignore = 3;
  configs.push_back({"mean, every option, ignore_index 3", all_opts});
  for (const auto& config : configs) {
    const std::string& label = config.first;
    const Options& o = config.second;
    INFO(label << ", N " << n << ", d " << d << ", V " << v << ", blocks " << tb << " x " << vb
               << (Order == Eigen::RowMajor ? ", row-major" : ", column-major"));
    const auto labels = random_labels(n, v, seed + 4, o.ignore);
    const auto lce = o.make().with_block_sizes(tb, vb);
    Eigen::VectorXd lse16(n), lse32(n), losses16(n), losses32(n);
    Eigen::MatrixXf dh16(n, d), dh32(n, d), dw16(v, d), dw32(v, d);
    Eigen::VectorXf db16(v), db32(v);
    auto out16 = sml::TokenOutputs().with_lse(lse16).with_losses(losses16);
    auto out32 = sml::TokenOutputs().with_lse(lse32).with_losses(losses32);
    if (o.upstream) {
      out16 = out16.with_upstream(up);
      out32 = out32.with_upstream(up);
    }
    const double l16 = lce(h, w, b, labels, dh16, dw16, db16, out16);
    const double l32 = lce(hf, wf, bf, labels, dh32, dw32, db32, out32);
    CHECK(lce(h, w, b, labels) == l16);  // the forward is the same code with or without gradients
    const Scales s = scales(hf.cast<double>(), wf.cast<double>(), bf.cast<double>(), labels, o, up);
    Worst worst;
    compare(s, o, hf.cast<double>(), wf.cast<double>(), l16, l32, lse16, lse32, losses16, losses32,
            dh16, dh32, dw16, dw32, db16, db32, worst);
    INFO(worst.report());
    CHECK(worst.ratio <= 1.0);
    all.update(worst.error, worst.bound,
               [&](std::ostream& os) { os << label << ": " << worst.where; });
    // Without a bias: the same as a zero bias.
    const V16 zero = V16::Zero(v);
    Eigen::MatrixXf dh0(n, d), dw0(v, d);
    Eigen::VectorXf db0(v);
    const double lz = lce(h, w, zero, labels, dh0, dw0, db0, out16);
    CHECK(lce(h, w, labels, dh16, dw16, out16) == lz);
    CHECK(softmaxlab_test::same(dh16, dh0));
    CHECK(softmaxlab_test::same(dw16, dw0));
  }
}

}  // namespace

TEST_CASE("LinearCrossEntropy on half and bfloat16 equals float on the rounded values",
          "[loss][linear_cross_entropy][half]") {
  Worst all;
  for (auto [tb, vb] : {std::pair<Index, Index>{4, 8}, {5, 3}, {128, 2048}}) {
    check_16bit<Eigen::half, Eigen::ColMajor>(13, 7, 37, tb, vb, 11, all);
    check_16bit<Eigen::bfloat16, Eigen::ColMajor>(13, 7, 37, tb, vb, 21, all);
    check_16bit<Eigen::half, Eigen::RowMajor>(13, 7, 37, tb, vb, 31, all);
    check_16bit<Eigen::bfloat16, Eigen::RowMajor>(13, 7, 37, tb, vb, 41, all);
  }
  // d = 2000: W is widened in chunks of 64 rows, several per vocabulary block of 200.
  check_16bit<Eigen::half, Eigen::ColMajor>(20, 2000, 300, 8, 200, 51, all);
  check_16bit<Eigen::bfloat16, Eigen::RowMajor>(20, 2000, 300, 8, 200, 61, all);
  WARN("16-bit vs float on the same values: " << all.report());
  CHECK(all.ratio <= 1.0);
}
