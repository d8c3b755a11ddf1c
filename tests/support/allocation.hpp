// Allocation counting for the tests (the hooks are in main.cpp): AllocationGuard counts heap
// allocations through operator new and forbids Eigen's allocator while it lives.
#pragma once

#include <cstddef>

#include <Eigen/Core>

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

}  // namespace softmaxlab_test
