// Error measures of the tests: errors in units of eps (relative, with SLEEF's floor at the smallest
// normal number, and the log-domain measure), worst-case tracking with the worst point described,
// and bitwise agreement of two results.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <string>

#include <Eigen/Core>

#include <catch2/catch.hpp>

namespace softmaxlab_test {

// Error of y against the exact value hi + lo, in units of eps * max(|exact|, smallest normal): the
// relative error for normal results, and a fixed absolute floor for subnormal ones (as SLEEF counts
// ulps near the bottom of the range).
template <class Scalar>
double relative_error_eps(Scalar y, double hi, double lo) {
  const long double exact = static_cast<long double>(hi) + lo;
  const long double diff = (static_cast<long double>(y) - hi) - lo;
  const long double floor = std::numeric_limits<Scalar>::min();
  const long double scale =
      std::numeric_limits<Scalar>::epsilon() * std::max(std::fabs(exact), floor);
  return static_cast<double>(std::fabs(diff) / scale);
}

// |y - exact| in units of eps * (1 + |exact|): the log-domain measure.
template <class Scalar>
double log_error_eps(Scalar y, double hi, double lo) {
  const long double exact = static_cast<long double>(hi) + lo;
  const long double diff = (static_cast<long double>(y) - hi) - lo;
  return static_cast<double>(
      std::fabs(diff) / (std::numeric_limits<Scalar>::epsilon() * (1.0L + std::fabs(exact))));
}

// Tracks the worst ratio error / allowed over many checks and describes where it happened.
struct Worst {
  double ratio = 0;  // error / bound; <= 1 passes
  double error = 0;  // the error at the worst point, in eps
  double bound = 0;  // the bound there, in eps
  std::string where;

  template <class Where>
  void update(double err, double allowed, const Where& describe) {
    const double r = err / allowed;
    if (!(r <= ratio)) {  // NaN errors count as worst
      ratio = r;
      error = err;
      bound = allowed;
      std::ostringstream s;
      describe(s);
      where = s.str();
    }
  }
  std::string report() const {
    std::ostringstream s;
    s << "worst error " << error << " eps (bound " << bound << " eps, ratio " << ratio << ") at "
      << where;
    return s.str();
  }
};

// Bitwise agreement of two matrices or vectors (NaN matches NaN), with the first difference
// described on failure: for results that must not depend on layout, storage order or path.
template <class A, class B>
bool same(const A& a, const B& b) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) {
    UNSCOPED_INFO("shapes differ: " << a.rows() << " x " << a.cols() << " vs " << b.rows() << " x "
                                    << b.cols());
    return false;
  }
  for (Eigen::Index j = 0; j < a.cols(); ++j) {
    for (Eigen::Index i = 0; i < a.rows(); ++i) {
      const auto u = a(i, j), v = b(i, j);
      if (!(u == v || (u != u && v != v))) {
        UNSCOPED_INFO("first difference at (" << i << ", " << j << "): " << u << " vs " << v);
        return false;
      }
    }
  }
  return true;
}

}  // namespace softmaxlab_test
