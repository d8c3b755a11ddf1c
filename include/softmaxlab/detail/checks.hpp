// softmaxlab: parameter and shape checks. Every failure throws std::invalid_argument with a
// message that names the function, the parameter and the value received (Boost.Math's way).
#pragma once

#include <cmath>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>

#include "common.hpp"

namespace softmaxlab {
namespace detail {

template <class... Parts>
[[noreturn]] inline void fail(const Parts&... parts) {
  std::ostringstream message;
  message.precision(std::numeric_limits<double>::max_digits10);
  message << "softmaxlab::";
  (message << ... << parts);
  throw std::invalid_argument(message.str());
}

// `value` must lie in [lo, hi]; NaN never does. `what` reads like "Softmax: temperature".
inline double require_in_range(const char* what, double value, double lo, double hi,
                               const char* range_text) {
  if (!(value >= lo && value <= hi)) {
    fail(what, " must be ", range_text, ", but got ", value);
  }
  return value;
}

inline double require_positive_finite(const char* what, double value) {
  if (!(value > 0.0 && std::isfinite(value))) {
    fail(what, " must be finite and > 0, but got ", value);
  }
  return value;
}

// Temperatures (Softmax's T, GumbelSoftmax's tau, ...): [2^-100, 2^100] keeps 1/T finite in float
// and no shifted argument (x_i - max x) / T can overflow into a wrong result.
inline double check_temperature(const char* what, double temperature) {
  return require_in_range(what, temperature, 0x1p-100, 0x1p100, "in [2^-100, 2^100] (finite, > 0)");
}

inline void require_same_size(const char* function, Index in_rows, Index in_cols, Index out_rows,
                              Index out_cols) {
  if (in_rows != out_rows || in_cols != out_cols) {
    fail(function, ": output must have the input's shape ", in_rows, " x ", in_cols, ", but got ",
         out_rows, " x ", out_cols);
  }
}

inline void require_vector(const char* function, Index rows, Index cols) {
  if (rows != 1 && cols != 1 && rows * cols != 0) {
    fail(function, ": expects a 1-D input (a vector, a row or a column), but got ", rows, " x ",
         cols, "; use rowwise() or colwise() for a matrix");
  }
}

}  // namespace detail
}  // namespace softmaxlab
