// Long-double references of softmax, log-softmax and log-sum-exp, computed independently of the
// library (plain loops, no kernel of softmaxlab): the exact values the property and fault tests
// compare with where no mpmath table exists. A row is any range with size() and operator[] (a
// std::vector, an Eigen vector or one row of a matrix); masked entries are -inf and get 0 (log:
// -inf). Rows must have a finite max (the special rows have exact expectations of their own).
//   exact_softmax(x, T)_i     = exp((x_i - m) / T) / sum_j exp((x_j - m) / T),   m = max x
//   exact_log_softmax(x, T)_i = (x_i - m) / T - log sum_j exp((x_j - m) / T)
//   exact_log_sum_exp(x)      = m + log sum_j exp(x_j - m)
// Rounding: long double (64-bit significand on x86), far below float and double eps.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

namespace softmaxlab_test {

namespace reference_detail {
template <class Row>
long double max_of(const Row& x) {
  long double m = -std::numeric_limits<long double>::infinity();
  for (std::size_t i = 0; i < static_cast<std::size_t>(x.size()); ++i)
    m = std::max(m, static_cast<long double>(x[i]));
  return m;
}
template <class Row>
long double sum_exp(const Row& x, long double m, long double temperature) {
  long double sum = 0;
  for (std::size_t i = 0; i < static_cast<std::size_t>(x.size()); ++i)
    sum += std::exp((static_cast<long double>(x[i]) - m) / temperature);
  return sum;
}
}  // namespace reference_detail

// Softmax probabilities of x / T, in long double.
template <class Row>
std::vector<long double> exact_softmax(const Row& x, long double temperature = 1) {
  const long double m = reference_detail::max_of(x);
  const long double sum = reference_detail::sum_exp(x, m, temperature);
  std::vector<long double> p(static_cast<std::size_t>(x.size()));
  for (std::size_t i = 0; i < p.size(); ++i)
    p[i] = std::exp((static_cast<long double>(x[i]) - m) / temperature) / sum;
  return p;
}

// Log-softmax of x / T, in long double.
template <class Row>
std::vector<long double> exact_log_softmax(const Row& x, long double temperature = 1) {
  const long double m = reference_detail::max_of(x);
  const long double log_sum = std::log(reference_detail::sum_exp(x, m, temperature));
  std::vector<long double> y(static_cast<std::size_t>(x.size()));
  for (std::size_t i = 0; i < y.size(); ++i)
    y[i] = (static_cast<long double>(x[i]) - m) / temperature - log_sum;
  return y;
}

// log sum_j exp(x_j), in long double.
template <class Row>
long double exact_log_sum_exp(const Row& x) {
  const long double m = reference_detail::max_of(x);
  return m + std::log(reference_detail::sum_exp(x, m, 1.0L));
}

}  // namespace softmaxlab_test
