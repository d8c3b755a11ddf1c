// Test support shared by every test file: error measures in units of eps, worst-case tracking, and
// allocation counting (see main.cpp for the hooks, and eigen_prelude.hpp, which CMake includes
// before anything else in every test file).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <sstream>

#include <Eigen/Core>

#include <catch2/catch.hpp>

#ifndef EIGEN_RUNTIME_NO_MALLOC
#error "compile the tests with eigen_prelude.hpp included first (see tests/CMakeLists.txt)"
#endif

namespace softmaxlab_test {

// Number of calls to the global operator new so far (counted in main.cpp).
std::size_t allocation_count();

// Counts heap allocations made while it lives, through operator new and through Eigen's allocator
// (which must not be reached: EIGEN_RUNTIME_NO_MALLOC makes it throw).
class AllocationGuard {
 public:
  AllocationGuard() : start_(allocation_count()) { Eigen::internal::set_is_malloc_allowed(false); }
  ~AllocationGuard() { Eigen::internal::set_is_malloc_allowed(true); }
  AllocationGuard(const AllocationGuard&) = delete;
  AllocationGuard& operator=(const AllocationGuard&) = delete;
  std::size_t allocations() const { return allocation_count() - start_; }

 private:
  std::size_t start_;
};

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

// A 64-bit "generator" that always returns the same word, to drive a sampler at a chosen uniform:
// samplers take the word's top 53 bits, so FixedWord{u53 << 11} gives u = u53 * 2^-53 exactly,
// from 0 to 1 - 2^-53.
struct FixedWord {
  using result_type = std::uint64_t;
  std::uint64_t word;
  static constexpr result_type min() { return 0; }
  static constexpr result_type max() { return ~result_type{0}; }
  result_type operator()() const { return word; }
};

}  // namespace softmaxlab_test
