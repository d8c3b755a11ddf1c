// Checks of a computed row against one case of the exact Softmax / LogSoftmax tables
// (reference/softmax_f32.ipp, softmax_f64.ipp), shared by every implementation of that function:
// the error of each element in eps against its bound, the worst case reported, NaN and masked
// entries exact, and the probabilities summing to one.
#pragma once

#include <algorithm>
#include <cmath>
#include <iostream>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>

#include "../reference/reference_table.hpp"
#include "error_measures.hpp"

namespace softmaxlab_test {

template <class Scalar>
using RefVector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

template <class Scalar>
RefVector<Scalar> inputs(const SoftmaxCase<Scalar>& c) {
  return Eigen::Map<const RefVector<Scalar>>(c.x, static_cast<Eigen::Index>(c.n));
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

// The worst case of a whole table, printed once when the summary goes: the figures the docs quote.
struct TableSummary {
  std::string what;
  Worst worst;
  explicit TableSummary(std::string w) : what(std::move(w)) {}
  TableSummary(const TableSummary&) = delete;
  TableSummary& operator=(const TableSummary&) = delete;
  ~TableSummary() { std::cout << what << ": " << worst.report() << "\n"; }
  void add(const Worst& w) {
    if (!(w.ratio <= worst.ratio))
      worst = w;
  }
};

// Probabilities y of case c: within 4 eps (1 + |x_i/T - m|) of the exact value, NaN rows NaN,
// masked entries exactly 0, and (unless all masked or NaN) the sum within 2e-6 / 1e-14 of one.
template <class Scalar>
void check_probabilities(const SoftmaxCase<Scalar>& c, const RefVector<Scalar>& y, const char* how,
                         TableSummary& summary) {
  const std::vector<long double> cond = conditions(c);
  Worst worst;
  long double sum = 0;
  bool nan_row = false;
  for (std::size_t i = 0; i < c.n; ++i) {
    const auto at = [&](std::ostream& s) {
      s << how << " " << c.name << "[" << i << "]: x = " << c.x[i] << ", y = " << y(i)
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
    worst.update(relative_error_eps(y(i), c.softmax_hi[i], c.softmax_lo[i]), bound, at);
    sum += y(i);
  }
  INFO(how << " " << c.name << " (n = " << c.n << ", T = " << c.temperature
           << "): " << worst.report());
  CHECK(worst.ratio <= 1.0);
  summary.add(worst);
  if (!nan_row && sum != 0) {
    const double tolerance = std::is_same_v<Scalar, float> ? 2e-6 : 1e-14;
    INFO("sum of probabilities - 1 = " << static_cast<double>(sum - 1));
    CHECK(std::fabs(static_cast<double>(sum - 1)) <= tolerance);
  }
}

// Log-probabilities y of case c: within 4 eps (1 + |y|) of the exact value, NaN rows NaN, masked
// entries exactly -inf, values beyond the type's range at least as negative as the type allows.
template <class Scalar>
void check_log_probabilities(const SoftmaxCase<Scalar>& c, const RefVector<Scalar>& y,
                             const char* how, TableSummary& summary) {
  Worst worst;
  for (std::size_t i = 0; i < c.n; ++i) {
    const auto at = [&](std::ostream& s) {
      s << how << " " << c.name << "[" << i << "]: x = " << c.x[i] << ", y = " << y(i)
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
      worst.update(log_error_eps(y(i), hi, c.log_lo[i]), 4.0, at);
    }
  }
  INFO(how << " " << c.name << " (n = " << c.n << ", T = " << c.temperature
           << "): " << worst.report());
  CHECK(worst.ratio <= 1.0);
  summary.add(worst);
}

}  // namespace softmaxlab_test
