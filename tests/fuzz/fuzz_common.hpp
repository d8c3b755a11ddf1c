// Shared pieces of the libFuzzer targets: turning bytes into parameters, shapes and float bit
// patterns, and the policy invariants of DESIGN.md checked on every output.
//
// A failed invariant calls std::abort() after printing what broke, which libFuzzer reports as a
// crash and saves as a reproducer (turn it into a regression test in tests/).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <stdexcept>

#include <softmaxlab/softmaxlab.hpp>

namespace softmaxlab_fuzz {

using Index = Eigen::Index;

// Reads the fuzzer's bytes front to back; past the end it yields zeros.
class Bytes {
 public:
  Bytes(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
  template <class T>
  T take() {
    T value{};
    unsigned char raw[sizeof(T)] = {};
    for (std::size_t k = 0; k < sizeof(T) && pos_ < size_; ++k)
      raw[k] = data_[pos_++];
    std::memcpy(&value, raw, sizeof(T));
    return value;
  }
  // A scalar from raw bits, or (one time in four) from a small set of edge values.
  template <class Scalar>
  Scalar scalar() {
    const std::uint8_t tag = take<std::uint8_t>();
    if ((tag & 3) != 0)
      return take<Scalar>();
    using L = std::numeric_limits<Scalar>;
    const Scalar edges[] = {Scalar(0),        -L::infinity(), L::infinity(), L::quiet_NaN(),
                            L::max(),         L::lowest(),    L::min(),      L::denorm_min(),
                            -L::denorm_min(), Scalar(1),      Scalar(-1),    Scalar(100)};
    return edges[(tag >> 2) % (sizeof(edges) / sizeof(edges[0]))];
  }
  // A parameter: usually `usual`, sometimes any double at all (to reach the constructor's checks).
  double parameter(double usual) { return take<std::uint8_t>() < 64 ? take<double>() : usual; }
  bool empty() const { return pos_ >= size_; }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
};

[[noreturn]] inline void broken(const char* what, Index where, double value) {
  std::fprintf(stderr, "invariant broken: %s (index %ld, value %.17g)\n", what,
               static_cast<long>(where), value);
  std::abort();
}

inline void expect(bool ok, const char* what, Index where = -1, double value = 0) {
  if (!ok)
    broken(what, where, value);
}

// The Euclidean norm of row i of m, in long double (the exact scale the NormalizedSoftmax checks
// compare against).
template <class Mat>
double row_norm(const Mat& m, Index i) {
  long double sq = 0;
  for (Index j = 0; j < m.cols(); ++j)
    sq += static_cast<long double>(m(i, j)) * static_cast<long double>(m(i, j));
  return static_cast<double>(std::sqrt(sq));
}

// NormalizedSoftmax's margin from a kind byte and a fuzzed value m: none, CosFace, ArcFace or
// SphereFace (an integer 1..8 from the byte, or m itself to reach the constructor's checks).
inline softmaxlab::Margin margin_from(std::uint8_t kind, double m) {
  using softmaxlab::Margin;
  switch (kind % 4) {
    case 1:
      return Margin::cosface(m);
    case 2:
      return Margin::arcface(m);
    case 3:
      return {Margin::Kind::SphereFace, (kind & 8) ? m : 1 + (kind >> 4) % 8};
    default:
      return {};
  }
}

// Runs a constructor that may reject its parameters: only std::invalid_argument is allowed.
template <class Make>
bool construct(Make&& make) {
  try {
    make();
    return true;
  } catch (const std::invalid_argument&) {
    return false;
  }
}

enum class Output { Probabilities, LogProbabilities };

// What a functor promises about each row (DESIGN.md's policy, with the variants' documented
// departures from it).
struct Rules {
  Output kind = Output::Probabilities;
  bool any_infinity_shares = false;  // PowerSoftmax: x^p = +inf for x = +-inf, so both share mass
  bool infinity_is_capped = false;   // AttentionSoftmax with a softcap: cap(+inf) = c is finite
  bool sum_is_one = true;            // false: only sum <= 1 (PowerSoftmax's eps forms: 0 / eps)
  bool approximate = false;          // PolynomialSoftmax: values and sums are approximations
  double slack_eps = 0;              // a probability may exceed 1 by this many eps (rounding of
                                     // x^p / sum x^p; Softmax's max is exp(0) / sum <= 1 exactly)
  Rules() = default;
  explicit Rules(Output k) : kind(k) {}
};

// The row rules for an output y of the row x:
//   NaN anywhere -> all NaN; k > 0 infinite entries -> 1/k there, 0 elsewhere (log: -log k, -inf);
//   all -inf -> zeros (log: -inf); otherwise finite, -inf entries exactly 0 (log: -inf), and the
//   probabilities sum to one within the policy's tolerance (2e-6 float, 1e-12 double).
template <class X, class Y>
void check_row(const X& x, const Y& y, const Rules& rules) {
  using Scalar = typename X::Scalar;
  const Scalar inf = std::numeric_limits<Scalar>::infinity();
  const Index n = x.size();
  expect(y.size() == n, "output length");
  if (n == 0)
    return;
  const auto infinite = [&](Scalar v) {
    return (v == inf && !rules.infinity_is_capped) || (rules.any_infinity_shares && v == -inf);
  };
  bool any_nan = false;
  Index k_inf = 0, k_masked = 0;
  for (Index i = 0; i < n; ++i) {
    any_nan |= std::isnan(x(i));
    k_inf += infinite(x(i));
    k_masked += x(i) == -inf;
  }
  const bool log = rules.kind == Output::LogProbabilities;
  if (any_nan) {
    for (Index i = 0; i < n; ++i)
      expect(std::isnan(y(i)), "NaN row must be all NaN", i, y(i));
    return;
  }
  if (k_inf > 0) {
    const double share = 1.0 / static_cast<double>(k_inf);
    for (Index i = 0; i < n; ++i) {
      const double want = infinite(x(i)) ? (log ? std::log(share) : share) : (log ? -inf : 0.0);
      const double tol = std::numeric_limits<Scalar>::epsilon() * 4 * (1 + std::fabs(want));
      expect(y(i) == want || std::fabs(y(i) - want) <= tol, "infinite entries share the mass", i,
             y(i));
    }
    return;
  }
  if (k_masked == n) {
    for (Index i = 0; i < n; ++i)
      expect(y(i) == (log ? -inf : 0), "all-masked row", i, y(i));
    return;
  }
  long double sum = 0;
  for (Index i = 0; i < n; ++i) {
    if (x(i) == -inf) {
      expect(y(i) == (log ? -inf : 0), "masked entry must be exactly 0 (log: -inf)", i, y(i));
      continue;
    }
    if (log) {
      expect(!std::isnan(y(i)) && y(i) <= 0, "log-probability in [-inf, 0]", i, y(i));
      sum += std::exp(static_cast<long double>(y(i)));
    } else if (rules.approximate) {
      expect(std::isfinite(y(i)), "finite input gives finite output", i, y(i));
    } else {
      const double top = 1 + rules.slack_eps * std::numeric_limits<Scalar>::epsilon();
      expect(std::isfinite(y(i)) && y(i) >= 0 && y(i) <= top, "probability in [0, 1]", i, y(i));
      sum += y(i);
    }
  }
  if (rules.approximate)
    return;
  const double tol = std::is_same_v<Scalar, float> ? 2e-6 : 1e-12;
  if (rules.sum_is_one) {
    expect(std::fabs(static_cast<double>(sum) - 1) <= tol, "probabilities sum to 1", -1,
           static_cast<double>(sum));
  } else {
    expect(static_cast<double>(sum) <= 1 + tol, "probabilities sum to at most 1", -1,
           static_cast<double>(sum));
  }
}

// Fills an Eigen object from the bytes.
template <class M>
void fill(Bytes& bytes, M& m) {
  for (Index j = 0; j < m.cols(); ++j)
    for (Index i = 0; i < m.rows(); ++i)
      m(i, j) = bytes.scalar<typename M::Scalar>();
}

// Runs a DistributionFunctor f over a matrix built from the bytes in one of several forms (vector,
// strided row, rowwise, colwise, row-major, in place, expression input) and checks every row
// against the policy. The forms must agree exactly with each other where they compute the same row.
template <class Scalar, class F>
void exercise(const F& f, Bytes& bytes, const Rules& rules) {
  using Mat = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  using RowMajor = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Vec = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  const std::uint8_t form = bytes.take<std::uint8_t>();
  const Index rows = bytes.take<std::uint8_t>() % 5;
  const Index cols = bytes.take<std::uint16_t>() % 1100;  // > one staging chunk of strided rows
  Mat x(rows, cols);
  fill(bytes, x);
  if (x.size()
      == 0) {  // empty in, empty out (Eigen's own blocks of an empty matrix are off-limits)
    expect(f.rowwise(x).size() == 0 && f.colwise(RowMajor(x)).size() == 0, "empty output");
    return;
  }
  switch (form % 5) {
    case 0: {  // each row as a contiguous vector, and again in place
      for (Index i = 0; i < rows; ++i) {
        const Vec v = x.row(i).transpose();
        const Vec y = f(v);
        check_row(v, y, rules);
        Vec z = v;
        f.apply(z, z);
        for (Index j = 0; j < cols; ++j)
          expect(z(j) == y(j) || (std::isnan(z(j)) && std::isnan(y(j))), "in place", j, z(j));
      }
      break;
    }
    case 1: {  // rowwise on column-major (strided rows) into a given matrix
      Mat y(rows, cols);
      f.rowwise(x, y);
      for (Index i = 0; i < rows; ++i)
        check_row(Vec(x.row(i).transpose()), Vec(y.row(i).transpose()), rules);
      break;
    }
    case 2: {  // colwise on row-major (strided columns)
      const RowMajor xr = x;
      const RowMajor y = f.colwise(xr);
      for (Index j = 0; j < cols; ++j)
        check_row(Vec(xr.col(j)), Vec(y.col(j)), rules);
      break;
    }
    case 3: {  // expression input, strided output rows
      Mat y(rows, cols);
      for (Index i = 0; i < rows; ++i) {
        f.apply(x.row(i) * Scalar(1), y.row(i));
        check_row(Vec(x.row(i).transpose()), Vec(y.row(i).transpose()), rules);
      }
      break;
    }
    default: {  // the whole matrix as one long row (column-major order)
      const Vec v = Eigen::Map<const Vec>(x.data(), x.size());
      check_row(v, Vec(f(v)), rules);
      break;
    }
  }
}

// The whole target for a DistributionFunctor F: make(bytes) builds F from fuzzed parameters (it may
// throw std::invalid_argument, which ends the input), then float or double data are exercised
// from the bytes that follow.
template <class F, class Make>
int run_functor_target(Bytes& bytes, const Rules& rules, Make&& make) {
  std::optional<F> f;
  if (!construct([&] { f.emplace(make(bytes)); }))
    return 0;
  if (bytes.take<std::uint8_t>() & 1) {
    exercise<double>(*f, bytes, rules);
  } else {
    exercise<float>(*f, bytes, rules);
  }
  return 0;
}

template <class F, class Make>
int run_functor_target(const std::uint8_t* data, std::size_t size, const Rules& rules,
                       Make&& make) {
  Bytes bytes(data, size);
  return run_functor_target<F>(bytes, rules, make);
}

}  // namespace softmaxlab_fuzz
