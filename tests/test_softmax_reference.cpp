// Softmax and LogSoftmax against the exact mpmath tables of tests/reference/ (float and double):
// every case of the tables, every element, with the worst error in eps printed per case.
// clang-format off
#include "support.hpp"  // first: it configures Eigen (asserts, malloc checks)
// clang-format on

#include <cmath>
#include <iostream>
#include <iterator>
#include <vector>

#include <catch2/catch.hpp>

#include <softmaxlab/softmax.hpp>

#include "reference/softmax_f32.ipp"
#include "reference/softmax_f64.ipp"

namespace sml = softmaxlab;
using softmaxlab_test::SoftmaxCase;
using softmaxlab_test::Worst;

namespace {

template <class Scalar>
using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

template <class Scalar>
Vector<Scalar> inputs(const SoftmaxCase<Scalar>& c) {
  return Eigen::Map<const Vector<Scalar>>(c.x, static_cast<Eigen::Index>(c.n));
}

// |x_i/T - max x/T| for every entry: the condition number of exp (0 for infinite entries).
template <class Scalar>
std::vector<long double> conditions(const SoftmaxCase<Scalar>& c) {
  long double m = -INFINITY;
  for (std::size_t j = 0; j < c.n; ++j)
    m = std::max<long double>(m, c.x[j]);
  std::vector<long double> out(c.n, 0.0L);
  if (!std::isfinite(static_cast<double>(m)))
    return out;
  for (std::size_t i = 0; i < c.n; ++i) {
    if (std::isfinite(c.x[i]))
      out[i] = std::fabs((static_cast<long double>(c.x[i]) - m) / c.temperature);
  }
  return out;
}

// The worst case of each table, printed once per run: the figures the docs quote.
struct TableSummary {
  const char* what;
  Worst worst;
  ~TableSummary() { std::cout << what << ": " << worst.report() << "\n"; }
  void add(const Worst& w) {
    if (!(w.ratio <= worst.ratio))
      worst = w;
  }
};

template <class Scalar>
void check_softmax_case(const SoftmaxCase<Scalar>& c, TableSummary& summary) {
  const std::vector<long double> cond = conditions(c);
  const Vector<Scalar> y = sml::Softmax(c.temperature)(inputs(c));
  Worst worst;
  long double sum = 0;
  bool nan_row = false;
  for (std::size_t i = 0; i < c.n; ++i) {
    const auto at = [&](std::ostream& s) {
      s << c.name << "[" << i << "]: x = " << c.x[i] << ", y = " << y(i)
        << ", exact = " << c.softmax_hi[i];
    };
    if (std::isnan(c.softmax_hi[i])) {
      nan_row = true;
      worst.update(std::isnan(y(i)) ? 0.0 : INFINITY, 1.0, at);  // must be NaN
      continue;
    }
    if (c.softmax_hi[i] == 0 && c.softmax_lo[i] == 0 && std::isinf(c.x[i])) {
      worst.update(y(i) == 0 ? 0.0 : INFINITY, 1.0, at);  // masked: exactly 0
      continue;
    }
    const double bound = 4.0 * (1.0 + static_cast<double>(cond[i]));
    worst.update(softmaxlab_test::relative_error_eps(y(i), c.softmax_hi[i], c.softmax_lo[i]), bound,
                 at);
    sum += y(i);
  }
  INFO(c.name << " (n = " << c.n << ", T = " << c.temperature << "): " << worst.report());
  CHECK(worst.ratio <= 1.0);
  summary.add(worst);
  if (!nan_row && c.softmax_hi[0] == c.softmax_hi[0]) {
    const bool all_masked = sum == 0;
    const double tolerance = std::is_same_v<Scalar, float> ? 2e-6 : 1e-14;
    INFO("sum of probabilities - 1 = " << static_cast<double>(sum - 1));
    CHECK((all_masked || std::fabs(static_cast<double>(sum - 1)) <= tolerance));
  }
}

template <class Scalar>
void check_log_softmax_case(const SoftmaxCase<Scalar>& c, TableSummary& summary) {
  const Vector<Scalar> y = sml::LogSoftmax(c.temperature)(inputs(c));
  Worst worst;
  for (std::size_t i = 0; i < c.n; ++i) {
    const auto at = [&](std::ostream& s) {
      s << c.name << "[" << i << "]: x = " << c.x[i] << ", y = " << y(i)
        << ", exact = " << c.log_hi[i];
    };
    const double hi = c.log_hi[i];
    if (std::isnan(hi)) {
      worst.update(std::isnan(y(i)) ? 0.0 : INFINITY, 1.0, at);
    } else if (std::isinf(hi) && std::isinf(c.x[i])) {
      worst.update(y(i) == hi ? 0.0 : INFINITY, 1.0, at);  // masked: exactly -inf
    } else if (std::isinf(hi) || std::fabs(hi) > std::numeric_limits<Scalar>::max()) {
      // the exact value lies beyond the double range (huge mixed-sign rows): the result must be
      // -inf or at least as negative as the type allows
      worst.update(y(i) <= std::numeric_limits<Scalar>::lowest() ? 0.0 : INFINITY, 1.0, at);
    } else {
      worst.update(softmaxlab_test::log_error_eps(y(i), hi, c.log_lo[i]), 4.0, at);
    }
  }
  INFO(c.name << " (n = " << c.n << ", T = " << c.temperature << "): " << worst.report());
  CHECK(worst.ratio <= 1.0);
  summary.add(worst);
}

}  // namespace

TEST_CASE("Softmax matches the exact reference tables within 4 eps (1 + |x/T - m|)",
          "[softmax][reference]") {
  SECTION("float") {
    TableSummary summary{"Softmax float", {}};
    for (const auto& c : softmaxlab_test::kSoftmaxCasesF32)
      check_softmax_case(c, summary);
  }
  SECTION("double") {
    TableSummary summary{"Softmax double", {}};
    for (const auto& c : softmaxlab_test::kSoftmaxCasesF64)
      check_softmax_case(c, summary);
  }
}

TEST_CASE("LogSoftmax matches the exact reference tables within 4 eps (1 + |y|)",
          "[logsoftmax][reference]") {
  SECTION("float") {
    TableSummary summary{"LogSoftmax float", {}};
    for (const auto& c : softmaxlab_test::kSoftmaxCasesF32)
      check_log_softmax_case(c, summary);
  }
  SECTION("double") {
    TableSummary summary{"LogSoftmax double", {}};
    for (const auto& c : softmaxlab_test::kSoftmaxCasesF64)
      check_log_softmax_case(c, summary);
  }
}
