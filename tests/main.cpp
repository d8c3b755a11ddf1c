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

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SOFTMAXLAB_TEST_ASAN 1
#endif
#elif defined(__SANITIZE_ADDRESS__)
#define SOFTMAXLAB_TEST_ASAN 1
#endif

#ifdef SOFTMAXLAB_TEST_ASAN
// AddressSanitizer owns operator new; its allocator hook counts every heap allocation instead.
#include <sanitizer/allocator_interface.h>
namespace {
void count_malloc(const volatile void*, std::size_t) {
  ++g_allocations;
}
void ignore_free(const volatile void*) {}
[[maybe_unused]] const int g_hooks_installed =
    __sanitizer_install_malloc_and_free_hooks(count_malloc, ignore_free);
}  // namespace
#else
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
#endif
