// Boolean masks (true = kept) on Softmax and LogSoftmax: a masked entry behaves exactly as a -inf
// logit (bit for bit the same output as the -inf row, and the long double softmax over the kept
// entries within the Softmax bound), the caller's input is never written, NaN in a masked entry
// takes no part, rows with nothing kept give zeros (log: -inf), in place, rowwise, sizes, and no
// allocation.
// clang-format off
#include "support.hpp"  // first: it configures Eigen (asserts, malloc checks)
// clang-format on

#include <cmath>
#include <limits>
#include <random>

#include <catch2/catch.hpp>

#include <softmaxlab/loss.hpp>
#include <softmaxlab/softmax.hpp>

namespace sml = softmaxlab;
using Index = Eigen::Index;
using softmaxlab_test::AllocationGuard;
using softmaxlab_test::same;

namespace {

template <class Scalar>
void check_masked_equals_minus_inf(double temperature) {
  using Vec = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  using Mask = Eigen::Matrix<bool, Eigen::Dynamic, 1>;
  const Scalar inf = std::numeric_limits<Scalar>::infinity();
  std::mt19937 rng(31);
  std::normal_distribution<double> normal(0, 4);
  std::bernoulli_distribution kept(0.6);
  const sml::Softmax f(temperature);
  const sml::LogSoftmax g(temperature);
  for (const Index n : {Index(1), Index(9), Index(100), Index(3000)}) {
    Vec x(n), with_inf(n);
    Mask keep(n);
    for (Index i = 0; i < n; ++i) {
      x(i) = static_cast<Scalar>(normal(rng));
      keep(i) = kept(rng);
      with_inf(i) = keep(i) ? x(i) : -inf;
    }
    if (n > 2)
      x(n / 2) = keep(n / 2) ? x(n / 2) : std::numeric_limits<Scalar>::quiet_NaN();
    const Vec x_before = x;
    Vec y(n), y_ref(n);
    f.apply_masked(x, keep, y);
    f.apply(with_inf, y_ref);
    INFO("n=" << n << " T=" << temperature);
    CHECK(same(y, y_ref));
    CHECK(same(x, x_before));  // never written
    // Against long double softmax over the kept entries.
    long double m = -INFINITY, s = 0;
    for (Index i = 0; i < n; ++i)
      if (keep(i))
        m = std::max(m, static_cast<long double>(x(i)) / temperature);
    for (Index i = 0; i < n; ++i)
      if (keep(i))
        s += std::exp(static_cast<long double>(x(i)) / temperature - m);
    for (Index i = 0; i < n; ++i) {
      if (!keep(i)) {
        CHECK(y(i) == 0);
        continue;
      }
      const long double d = static_cast<long double>(x(i)) / temperature - m;
      const long double exact = std::exp(d) / s;
      const long double tiny = std::numeric_limits<Scalar>::min();
      CHECK(std::fabs(y(i) - exact)
            <= 4 * std::numeric_limits<Scalar>::epsilon() * (1 - d) * std::max(exact, tiny));
    }
    Vec z(n), z_ref(n);
    g.apply_masked(x, keep, z);
    g.apply(with_inf, z_ref);
    CHECK(same(z, z_ref));
    // In place.
    Vec w = x;
    f.apply_masked(w, keep, w);
    CHECK(same(w, y_ref));
  }
}

}  // namespace

TEST_CASE("Softmax/LogSoftmax apply_masked: masked entries behave exactly as -inf", "[masks]") {
  check_masked_equals_minus_inf<float>(1.0);
  check_masked_equals_minus_inf<double>(1.0);
  check_masked_equals_minus_inf<float>(0.7);
  check_masked_equals_minus_inf<double>(2.5);
}

TEST_CASE("apply_masked: nothing kept, rowwise, sizes, no allocation", "[masks]") {
  const float inf = std::numeric_limits<float>::infinity();
  Eigen::VectorXf x(4), y(4);
  x << 1, 2, std::numeric_limits<float>::quiet_NaN(), 4;
  Eigen::Matrix<bool, Eigen::Dynamic, 1> none = Eigen::Matrix<bool, 4, 1>::Constant(false);
  sml::Softmax().apply_masked(x, none, y);
  CHECK((y.array() == 0).all());
  sml::LogSoftmax().apply_masked(x, none, y);
  CHECK((y.array() == -inf).all());
  Eigen::Matrix<bool, 4, 1> no_nan(true, true, false, true);
  sml::Softmax().apply_masked(x, no_nan, y);
  CHECK(y.sum() == Approx(1.0f).epsilon(2e-6));
  CHECK(y(2) == 0);
  // +inf kept shares the mass; a masked +inf takes no part.
  x << inf, 0, inf, 1;
  sml::Softmax().apply_masked(x, Eigen::Matrix<bool, 4, 1>(true, true, false, true), y);
  CHECK(y == Eigen::Vector4f(1, 0, 0, 0));
  // Rowwise equals row by row; Keep of the wrong shape throws.
  std::mt19937 rng(2);
  std::normal_distribution<float> normal(0, 3);
  Eigen::MatrixXf X(5, 70), Y(5, 70), Y1(5, 70);
  Eigen::Matrix<bool, Eigen::Dynamic, Eigen::Dynamic> K(5, 70);
  for (Index i = 0; i < X.size(); ++i) {
    X.data()[i] = normal(rng);
    K.data()[i] = (i * 7) % 3 != 0;
  }
  K.row(3).setConstant(false);
  const sml::LogSoftmax g;
  g.rowwise_masked(X, K, Y);
  for (Index r = 0; r < 5; ++r)
    g.apply_masked(X.row(r), K.row(r), Y1.row(r));
  CHECK(same(Y, Y1));
  CHECK((Y.row(3).array() == -inf).all());
  {
    AllocationGuard guard;
    g.rowwise_masked(X, K, Y);
    sml::Softmax().apply_masked(X.row(1), K.row(1), Y.row(1));
    CHECK(guard.allocations() == 0);
  }
  Eigen::Matrix<bool, Eigen::Dynamic, Eigen::Dynamic> K2(5, 69);
  CHECK_THROWS_AS(g.rowwise_masked(X, K2, Y), std::invalid_argument);
  Eigen::Matrix<bool, 3, 1> short_mask(true, true, true);
  CHECK_THROWS_AS(sml::Softmax().apply_masked(x, short_mask, y), std::invalid_argument);
  Eigen::VectorXf y3(3);
  CHECK_THROWS_AS(sml::Softmax().apply_masked(x, no_nan, y3), std::invalid_argument);
}

TEST_CASE("CrossEntropyLoss apply_masked: masked logits behave exactly as -inf", "[masks][loss]") {
  const double inf = std::numeric_limits<double>::infinity();
  std::mt19937 rng(8);
  std::normal_distribution<double> normal(0, 3);
  const Index N = 6, C = 11;
  Eigen::MatrixXd Z(N, C), Zinf(N, C);
  Eigen::Matrix<bool, Eigen::Dynamic, Eigen::Dynamic> K(N, C);
  Eigen::VectorXi labels(N);
  for (Index n = 0; n < N; ++n) {
    labels(n) = static_cast<int>((n * 5) % C);
    for (Index k = 0; k < C; ++k) {
      Z(n, k) = normal(rng);
      K(n, k) = k == labels(n) || (n + 2 * k) % 3 != 0;
      Zinf(n, k) = K(n, k) ? Z(n, k) : -inf;
    }
  }
  for (const double smoothing : {0.0, 0.1}) {
    const sml::CrossEntropyLoss ce(sml::Reduction::Mean, smoothing);
    const Eigen::MatrixXd Z_before = Z;
    // The reference runs in place on the -inf logits, as apply_masked does on its staged copy
    // (the in-place gradient path rounds slightly differently from the separate-output one).
    Eigen::MatrixXd G(N, C), G_ref = Zinf;
    const double loss = ce.apply_masked(Z, K, labels, G);
    const double loss_ref = ce(G_ref, labels, G_ref);
    INFO("label_smoothing " << smoothing);
    CHECK(loss == loss_ref);  // +inf with smoothing (mass on masked classes), as with -inf logits
    CHECK(same(G, G_ref));
    CHECK(same(Z, Z_before));
    const double loss_only = ce.masked(Z, K, labels);
    CHECK((loss_only == loss_ref));
    // In place: grad is the logits.
    Eigen::MatrixXd W = Z;
    CHECK(ce.apply_masked(W, K, labels, W) == loss_ref);
    CHECK(same(W, G_ref));
  }
  // Target distributions, and a masked target class gives +inf.
  const sml::CrossEntropyLoss ce;
  Eigen::MatrixXd T = Eigen::MatrixXd::Zero(N, C);
  for (Index n = 0; n < N; ++n)
    T(n, labels(n)) = 1;
  Eigen::MatrixXd G(N, C), G_ref = Zinf;
  CHECK(ce.apply_masked(Z, K, T, G) == ce(G_ref, T, G_ref));
  CHECK(same(G, G_ref));
  K(0, labels(0)) = false;
  CHECK(ce.apply_masked(Z, K, labels, G) == inf);
  {
    AllocationGuard guard;
    ce.apply_masked(Z, K, labels, G);
    CHECK(guard.allocations() == 0);
  }
  CHECK_THROWS_AS(ce.apply_masked(Z, K, T, T), std::invalid_argument);
  Eigen::Matrix<bool, Eigen::Dynamic, Eigen::Dynamic> K2(N, C + 1);
  CHECK_THROWS_AS(ce.apply_masked(Z, K2, labels, G), std::invalid_argument);
}
