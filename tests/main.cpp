// Catch2 main plus the process-wide hooks of support.hpp: a counting operator new and the
// eigen_assert handler.
#define CATCH_CONFIG_MAIN
#include <atomic>
#include <cstdlib>
#include <new>

#include <catch2/catch.hpp>

#include "support.hpp"

namespace {
std::atomic<std::size_t> g_allocations{0};
}

namespace softmaxlab_test {
std::size_t allocation_count() {
  return g_allocations.load();
}

void on_eigen_assert(const char* condition, const char* file, int line) {
  throw std::logic_error(std::string("Eigen assertion failed: ") + condition + " at " + file + ":"
                         + std::to_string(line));
}
}  // namespace softmaxlab_test

// The replacement operators are the one place where new pairs with malloc and delete with free;
// GCC's -Wmismatched-new-delete cannot tell a replacement from a mismatch once they are inlined.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif

void* operator new(std::size_t size) {
  ++g_allocations;
  if (void* p = std::malloc(size == 0 ? 1 : size))
    return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t size) {
  return operator new(size);
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete[](void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::size_t) noexcept {
  std::free(p);
}
