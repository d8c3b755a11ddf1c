// softmaxlab: shared types and compile-time checks used by every variant.
#pragma once

// clang-format off
#include "config.hpp"  // first: its checks and its GCC 105593 pragma must precede Eigen
// clang-format on

#include <cstddef>
#include <type_traits>

#include <Eigen/Core>

namespace softmaxlab {

// Sizes and indices, as Eigen's (std::ptrdiff_t by default).
using Index = Eigen::Index;

namespace detail {

// The variants are implemented and tested for float and double. Wider types are planned; until
// then a clear compile-time error beats a silently untested instantiation.
template <class Scalar>
inline constexpr bool is_supported_scalar_v =
    std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>;

template <class Scalar>
constexpr void static_check_scalar() {
  static_assert(is_supported_scalar_v<Scalar>,
                "softmaxlab: only float and double scalars are supported");
}

// A strided view of one distribution (a vector, a row or a column of a matrix).
template <class Scalar>
struct Span {
  Scalar* data;
  Index size;
  Index stride;  // in elements, between consecutive entries

  Scalar& operator[](Index i) const { return data[i * stride]; }
  bool contiguous() const { return stride == 1 || size <= 1; }
};

}  // namespace detail
}  // namespace softmaxlab
