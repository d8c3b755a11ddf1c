// softmaxlab: parameter and shape checks. Every failure throws std::invalid_argument with a
// message that names the function, the parameter and the value received (Boost.Math's way).
//
// Every error softmaxlab reports goes through detail::raise_error. With exceptions on it throws
// (std::invalid_argument, or std::runtime_error for failed MPI calls). Built with -fno-exceptions
// (or with SOFTMAXLAB_NO_EXCEPTIONS defined) it calls the handler installed with
// softmaxlab::set_error_handler, and then, or if none is installed, prints the same message to
// stderr and calls std::abort(). The handler must not return normally (it may longjmp, terminate
// or exit); if it returns, softmaxlab still aborts, since the failed call has no result to give.
#pragma once

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>

#include "common.hpp"

namespace softmaxlab {

// What a failed check would throw with exceptions on.
enum class ErrorKind {
  invalid_argument,  // std::invalid_argument: a bad parameter, a wrong output size, ...
  runtime_error,     // std::runtime_error: a failed MPI call (mpi.hpp)
};

// Called (only in builds without exceptions) with the error kind and the message an exception
// would carry, e.g. "softmaxlab::Softmax: temperature must be ..., but got -1".
using ErrorHandler = void (*)(ErrorKind kind, const char* message);

namespace detail {
inline std::atomic<ErrorHandler>& error_handler_slot() {
  static std::atomic<ErrorHandler> handler{nullptr};
  return handler;
}
}  // namespace detail

// Installs `handler` (nullptr restores the default: print to stderr and abort); returns the
// previous one. Thread-safe. Has no effect on builds with exceptions, which throw.
inline ErrorHandler set_error_handler(ErrorHandler handler) noexcept {
  return detail::error_handler_slot().exchange(handler);
}
// The handler installed now (nullptr: the default).
inline ErrorHandler get_error_handler() noexcept {
  return detail::error_handler_slot().load();
}

namespace detail {

// The one place where softmaxlab reports an error.
[[noreturn]] inline void raise_error(ErrorKind kind, const std::string& message) {
#if SOFTMAXLAB_HAS_EXCEPTIONS
  if (kind == ErrorKind::runtime_error)
    throw std::runtime_error(message);
  throw std::invalid_argument(message);
#else
  if (ErrorHandler handler = get_error_handler())
    handler(kind, message.c_str());
  std::fprintf(stderr, "%s\n", message.c_str());
  std::fflush(stderr);
  std::abort();
#endif
}

template <class... Parts>
[[noreturn]] inline void fail(const Parts&... parts) {
  std::ostringstream message;
  message.precision(std::numeric_limits<double>::max_digits10);
  message << "softmaxlab::";
  (message << ... << parts);
  raise_error(ErrorKind::invalid_argument, message.str());
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

// The vector forms' checks of x and y: both 1-D, of one length. Returns whether there is work
// (false for an empty input).
template <class XprX, class XprY>
bool check_vector_io(const char* function, const XprX& x, const XprY& y) {
  require_vector(function, x.rows(), x.cols());
  require_vector(function, y.rows(), y.cols());
  if (x.size() != y.size()) {
    fail(function, ": output must have the input's length ", x.size(), ", but got ", y.rows(),
         " x ", y.cols());
  }
  return x.size() != 0;
}

}  // namespace detail
}  // namespace softmaxlab
