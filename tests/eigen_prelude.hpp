// Included by the compiler before every test source (-include, see tests/CMakeLists.txt), so that
// it precedes every Eigen header whatever the include order.
//
#pragma once

// Eigen's assertions stay on in every build of the tests (Release included), and a forbidden heap
// allocation (EIGEN_RUNTIME_NO_MALLOC) throws instead of aborting, so a test can report it.
#include <stdexcept>
#include <string>
namespace softmaxlab_test {
[[noreturn]] void on_eigen_assert(const char* condition, const char* file, int line);
}
#ifndef eigen_assert
#define eigen_assert(x) \
  ((x) ? static_cast<void>(0) : ::softmaxlab_test::on_eigen_assert(#x, __FILE__, __LINE__))
#endif
#ifndef EIGEN_RUNTIME_NO_MALLOC
#define EIGEN_RUNTIME_NO_MALLOC
#endif
