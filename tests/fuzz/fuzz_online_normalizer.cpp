// libFuzzer target: OnlineNormalizer with an arbitrary temperature, a row of float/double bit
// patterns cut into fuzzed chunks (empty ones included; contiguous, strided or expression chunks,
// in pieces), whose states are merged in a fuzzed order (a random merge tree). single_pass.hpp
// promises that any split and merge order gives the state of the whole row, so against one update
// with the whole row and against SinglePassSoftmax / Softmax of the row:
//   - count() is the row length; max() is the row's max exactly (-inf empty or masked, NaN after a
//     NaN); sum() is NaN after a NaN, the number of +inf entries exactly, 0 when empty or masked,
//     else >= 1 and within 16 eps (relative) of the one-shot sum; log_sum_exp() likewise;
//   - write / write_log of each chunk (in place or not) keep check_row's rules and agree with the
//     one-shot output within 8 eps (1 + |x_i/T - m|) (log: 8 eps (1 + |y|)), exactly on special
//     rows; SinglePassSoftmax(T) agrees with Softmax(T) within the same bound;
//   - merging states of different temperatures throws std::invalid_argument (and nothing else).
#include <vector>

#include <softmaxlab/single_pass.hpp>

#include "fuzz_common.hpp"

namespace {

using namespace softmaxlab_fuzz;
namespace sml = softmaxlab;

// y against the reference r of the same row x (probabilities or log-probabilities).
template <class Vec>
void agree(const Vec& x, const Vec& y, const Vec& r, bool log, double temperature,
           const char* what) {
  using Scalar = typename Vec::Scalar;
  const double eps = std::numeric_limits<Scalar>::epsilon();
  double m = -std::numeric_limits<double>::infinity();
  for (Index i = 0; i < x.size(); ++i)
    m = std::max(m, static_cast<double>(x(i)) / temperature);
  for (Index i = 0; i < x.size(); ++i) {
    const double a = y(i), b = r(i);
    if (a == b || (std::isnan(a) && std::isnan(b)))
      continue;
    expect(std::isfinite(a) && std::isfinite(b), what, i, a);
    const double tol = log ? 8 * eps * (1 + std::fabs(b))
                           : 8 * eps * (1 + std::fabs(x(i) / temperature - m)) * std::fabs(b)
                                 + std::numeric_limits<Scalar>::min();
    expect(std::fabs(a - b) <= tol, what, i, a);
  }
}

template <class Scalar>
void run(double temperature, Bytes& bytes) {
  using Vec = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  using Norm = sml::OnlineNormalizer<Scalar>;
  const double eps = std::numeric_limits<Scalar>::epsilon();
  const Index n = bytes.take<std::uint16_t>() % 2600;  // > one 8 KiB block of floats
  Vec x(n);
  const std::uint8_t fill_mode = bytes.take<std::uint8_t>();
  for (Index i = 0; i < n; ++i) {
    // Mostly small integers (long rows from few bytes), or raw bits and edge values.
    x(i) = (fill_mode & 1) ? bytes.scalar<Scalar>()
                           : static_cast<Scalar>(bytes.take<std::int8_t>()) / Scalar(4);
  }

  // The chunks: boundaries from the bytes (repeats give empty chunks).
  const Index chunks = 1 + bytes.take<std::uint8_t>() % 8;
  std::vector<Index> cut{0};
  for (Index k = 1; k < chunks; ++k)
    cut.push_back(n > 0 ? bytes.take<std::uint16_t>() % (n + 1) : 0);
  cut.push_back(n);
  std::sort(cut.begin(), cut.end());

  std::vector<Norm> states;
  for (Index k = 0; k < chunks; ++k) {
    const Index start = cut[k], len = cut[k + 1] - cut[k];
    Norm state(temperature);
    const std::uint8_t how = bytes.take<std::uint8_t>();
    switch (len > 0 ? how % 4 : 0) {  // (no 2 x 0 matrix: Eigen's row 1 of it is UB)
      case 0:                         // one contiguous update
        state.update(x.segment(start, len));
        break;
      case 1: {  // a strided view
        Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> two(2, len);
        two.row(0) = x.segment(start, len).transpose();
        two.row(1).setConstant(Scalar(7));
        state.update(two.row(0));
        break;
      }
      case 2:  // an expression
        state.update(x.segment(start, len) * Scalar(1));
        break;
      default: {  // in two pieces, with an empty update between
        const Index half = len > 0 ? (how >> 2) % (len + 1) : 0;
        state.update(x.segment(start, half));
        state.update(x.segment(start + half, 0));
        state.update(x.segment(start + half, len - half));
        break;
      }
    }
    states.push_back(state);
  }
  // A fuzzed merge tree: merge a random state into another until one is left.
  while (states.size() > 1) {
    const std::size_t i = bytes.take<std::uint8_t>() % states.size();
    std::size_t j = bytes.take<std::uint8_t>() % (states.size() - 1);
    if (j >= i)
      ++j;
    states[i].merge(states[j]);
    states.erase(states.begin() + static_cast<std::ptrdiff_t>(j));
  }
  const Norm& merged = states.front();
  Norm whole(temperature);
  whole.update(x);

  // The state.
  const Scalar inf = std::numeric_limits<Scalar>::infinity();
  bool any_nan = false;
  Index k_inf = 0;
  Scalar max = -inf;
  for (Index i = 0; i < n; ++i) {
    any_nan |= std::isnan(x(i));
    k_inf += x(i) == inf;
    if (x(i) > max)
      max = x(i);
  }
  expect(merged.count() == n && whole.count() == n, "count is the row length", -1,
         static_cast<double>(merged.count()));
  for (const Norm* s : {&merged, static_cast<const Norm*>(&whole)}) {
    if (any_nan) {
      expect(std::isnan(s->max()) && std::isnan(s->sum()) && std::isnan(s->log_sum_exp()),
             "a NaN makes the state NaN", -1, s->sum());
    } else {
      expect(s->max() == max, "max is the row's max", -1, s->max());
      if (k_inf > 0) {
        expect(s->sum() == static_cast<double>(k_inf), "sum counts the +inf entries", -1, s->sum());
        expect(s->log_sum_exp() == std::numeric_limits<double>::infinity(), "lse +inf", -1,
               s->log_sum_exp());
      } else if (max == -inf) {
        expect(s->sum() == 0 && s->log_sum_exp() == -std::numeric_limits<double>::infinity(),
               "empty or masked state: sum 0, lse -inf", -1, s->sum());
      } else {
        expect(s->sum() >= 1 && std::isfinite(s->sum()), "sum >= 1 once a finite x is seen", -1,
               s->sum());
      }
    }
  }
  if (!any_nan && k_inf == 0 && max != -inf) {
    expect(std::fabs(merged.sum() - whole.sum()) <= 16 * eps * whole.sum(),
           "chunked sum equals the whole row's", -1, merged.sum() - whole.sum());
    // (max/T may exceed the double range: both are then +inf)
    expect(merged.log_sum_exp() == whole.log_sum_exp()
               || std::fabs(merged.log_sum_exp() - whole.log_sum_exp())
                      <= 16 * eps * (1 + std::fabs(whole.log_sum_exp())),
           "chunked log_sum_exp equals the whole row's", -1, merged.log_sum_exp());
  }

  // The outputs, chunk by chunk (in place every other chunk), against the one-shot outputs.
  const sml::SinglePassSoftmax single(temperature);
  const Vec y_single = single(x);
  const Vec y_softmax = sml::Softmax(temperature)(x);
  const Vec y_log = sml::LogSoftmax(temperature)(x);
  Vec y(n), y_log_chunked(n);
  for (Index k = 0; k < chunks; ++k) {
    const Index start = cut[k], len = cut[k + 1] - cut[k];
    if (k % 2 == 0) {
      merged.write(x.segment(start, len), y.segment(start, len));
      merged.write_log(x.segment(start, len), y_log_chunked.segment(start, len));
    } else {
      y.segment(start, len) = x.segment(start, len);
      merged.write(y.segment(start, len), y.segment(start, len));
      y_log_chunked.segment(start, len) = x.segment(start, len);
      merged.write_log(y_log_chunked.segment(start, len), y_log_chunked.segment(start, len));
    }
  }
  check_row(x, y, Rules(Output::Probabilities));
  check_row(x, y_log_chunked, Rules(Output::LogProbabilities));
  check_row(x, y_single, Rules(Output::Probabilities));
  agree(x, y, y_single, false, temperature, "chunked write agrees with SinglePassSoftmax");
  agree(x, y_single, y_softmax, false, temperature, "SinglePassSoftmax agrees with Softmax");
  agree(x, y_log_chunked, y_log, true, temperature, "chunked write_log agrees with LogSoftmax");

  // Wrong shapes and temperatures throw std::invalid_argument.
  Vec short_y(n + 1);
  expect(!construct([&] { merged.write(x, short_y); }), "write with a wrong length throws");
  const double other_t = temperature * 2;
  if (other_t <= 0x1p100) {
    Norm copy = merged;
    expect(!construct([&] { copy.merge(Norm(other_t)); }), "merge across temperatures throws");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Bytes bytes(data, size);
  const double temperature = bytes.parameter(1.0);
  const bool is_double = bytes.take<std::uint8_t>() & 1;
  // The constructor must accept exactly the documented range, and throw only invalid_argument.
  const bool valid = temperature >= 0x1p-100 && temperature <= 0x1p100;
  const bool made = construct([&] { sml::OnlineNormalizer<float> f(temperature); });
  expect(made == valid, "temperature accepted exactly in [2^-100, 2^100]", -1, temperature);
  if (!valid)
    return 0;
  if (is_double) {
    run<double>(temperature, bytes);
  } else {
    run<float>(temperature, bytes);
  }
  return 0;
}
