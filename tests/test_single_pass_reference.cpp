// SinglePassSoftmax and OnlineNormalizer against the exact mpmath tables of tests/reference/ (the
// Softmax tables: same function, same policy): the whole row through SinglePassSoftmax, and the
// row split into chunks whose states are merged in a shuffled order and then written chunk by
// chunk (probabilities and log-probabilities). The worst error in eps is printed per table.
#include <algorithm>
#include <cmath>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include <softmaxlab/single_pass.hpp>

#include "reference/softmax_f32.ipp"
#include "reference/softmax_f64.ipp"
#include "support.hpp"

namespace sml = softmaxlab;
using softmaxlab_test::SoftmaxCase;
using softmaxlab_test::Worst;

namespace {

template <class Scalar>
using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

template <class Scalar>
Vector<Scalar> inputs(const SoftmaxCase<Scalar>& c) {
  return Eigen::Map<const Vector<Scalar>>(c.x, static_cast<Eigen::Index>(c.n));
}

// |x_i/T - max x/T| for every entry: the condition number of exp (0 for infinite entries).
template <class Scalar>
std::vector<long double> conditions(const SoftmaxCase<Scalar>& c) {
  long double m = -INFINITY;
  for (std::size_t j = 0; j < c.n; ++j)
    m = std::max<long double>(m, c.x[j]);
  std::vector<long double> out(c.n, 0.0L);
  if (!std::isfinite(static_cast<double>(m)))
    return out;
  for (std::size_t i = 0; i < c.n; ++i) {
    if (std::isfinite(c.x[i]))
      out[i] = std::fabs((static_cast<long double>(c.x[i]) - m) / c.temperature);
  }
  return out;
}

struct TableSummary {
  std::string what;
  Worst worst;
  ~TableSummary() { std::cout << what << ": " << worst.report() << "\n"; }
  void add(const Worst& w) {
    if (!(w.ratio <= worst.ratio))
      worst = w;
  }
};

// Splits [0, n) into up to `parts` chunks at random points (some may be empty), merges their
// normalizers in a random order, writes each chunk from the merged state.
template <class Scalar>
Vector<Scalar> chunked(const SoftmaxCase<Scalar>& c, int parts, bool log, std::mt19937& gen) {
  const Vector<Scalar> x = inputs(c);
  const Eigen::Index n = x.size();
  std::vector<Eigen::Index> cuts{0, n};
  std::uniform_int_distribution<Eigen::Index> where(0, n);
  for (int k = 1; k < parts; ++k)
    cuts.push_back(where(gen));
  std::sort(cuts.begin(), cuts.end());
  std::vector<sml::OnlineNormalizer<Scalar>> states;
  for (std::size_t k = 0; k + 1 < cuts.size(); ++k) {
    states.emplace_back(c.temperature);
    states.back().update(x.segment(cuts[k], cuts[k + 1] - cuts[k]));
  }
  std::shuffle(states.begin(), states.end(), gen);
  sml::OnlineNormalizer<Scalar> total(c.temperature);
  for (const auto& s : states)
    total.merge(s);
  REQUIRE(total.count() == n);
  Vector<Scalar> y(n);
  for (std::size_t k = 0; k + 1 < cuts.size(); ++k) {
    const Eigen::Index len = cuts[k + 1] - cuts[k];
    if (log) {
      total.write_log(x.segment(cuts[k], len), y.segment(cuts[k], len));
    } else {
      total.write(x.segment(cuts[k], len), y.segment(cuts[k], len));
    }
  }
  return y;
}

template <class Scalar>
void check_probabilities(const SoftmaxCase<Scalar>& c, const Vector<Scalar>& y, const char* how,
                         TableSummary& summary) {
  const std::vector<long double> cond = conditions(c);
  Worst worst;
  long double sum = 0;
  bool nan_row = false;
  for (std::size_t i = 0; i < c.n; ++i) {
    const auto at = [&](std::ostream& s) {
      s << how << " " << c.name << "[" << i << "]: x = " << c.x[i] << ", y = " << y(i)
        << ", exact = " << c.softmax_hi[i];
    };
    if (std::isnan(c.softmax_hi[i])) {
      nan_row = true;
      worst.update(std::isnan(y(i)) ? 0.0 : INFINITY, 1.0, at);
      continue;
    }
    if (c.softmax_hi[i] == 0 && c.softmax_lo[i] == 0 && std::isinf(c.x[i])) {
      worst.update(y(i) == 0 ? 0.0 : INFINITY, 1.0, at);  // masked: exactly 0
      continue;
    }
    const double bound = 4.0 * (1.0 + static_cast<double>(cond[i]));
    worst.update(softmaxlab_test::relative_error_eps(y(i), c.softmax_hi[i], c.softmax_lo[i]), bound,
                 at);
    sum += y(i);
  }
  INFO(how << " " << c.name << " (n = " << c.n << ", T = " << c.temperature
           << "): " << worst.report());
  CHECK(worst.ratio <= 1.0);
  summary.add(worst);
  if (!nan_row && sum != 0) {
    const double tolerance = std::is_same_v<Scalar, float> ? 2e-6 : 1e-14;
    INFO("sum of probabilities - 1 = " << static_cast<double>(sum - 1));
    CHECK(std::fabs(static_cast<double>(sum - 1)) <= tolerance);
  }
}

template <class Scalar>
void check_log_probabilities(const SoftmaxCase<Scalar>& c, const Vector<Scalar>& y,
                             TableSummary& summary) {
  Worst worst;
  for (std::size_t i = 0; i < c.n; ++i) {
    const auto at = [&](std::ostream& s) {
      s << "chunked log " << c.name << "[" << i << "]: x = " << c.x[i] << ", y = " << y(i)
        << ", exact = " << c.log_hi[i];
    };
    const double hi = c.log_hi[i];
    if (std::isnan(hi)) {
      worst.update(std::isnan(y(i)) ? 0.0 : INFINITY, 1.0, at);
    } else if (std::isinf(hi) && std::isinf(c.x[i])) {
      worst.update(y(i) == hi ? 0.0 : INFINITY, 1.0, at);
    } else if (std::isinf(hi) || std::fabs(hi) > std::numeric_limits<Scalar>::max()) {
      worst.update(y(i) <= std::numeric_limits<Scalar>::lowest() ? 0.0 : INFINITY, 1.0, at);
    } else {
      worst.update(softmaxlab_test::log_error_eps(y(i), hi, c.log_lo[i]), 4.0, at);
    }
  }
  INFO(c.name << " (n = " << c.n << ", T = " << c.temperature << "): " << worst.report());
  CHECK(worst.ratio <= 1.0);
  summary.add(worst);
}

template <class Scalar, std::size_t N>
void check_table(const SoftmaxCase<Scalar> (&cases)[N], const char* type) {
  const std::string t = type;
  TableSummary whole{"SinglePassSoftmax " + t, {}};
  TableSummary pieces{"OnlineNormalizer chunks + merge, write " + t, {}};
  TableSummary logs{"OnlineNormalizer chunks + merge, write_log " + t, {}};
  std::mt19937 gen(20261126);
  for (const auto& c : cases) {
    check_probabilities(c, Vector<Scalar>(sml::SinglePassSoftmax(c.temperature)(inputs(c))),
                        "whole", whole);
    for (int parts : {2, 7}) {
      check_probabilities(c, chunked(c, parts, false, gen), "chunked", pieces);
      check_log_probabilities(c, chunked(c, parts, true, gen), logs);
    }
  }
}

}  // namespace

TEST_CASE("SinglePassSoftmax and merged OnlineNormalizer chunks match the exact tables",
          "[single_pass][reference]") {
  SECTION("float") {
    check_table(softmaxlab_test::kSoftmaxCasesF32, "float");
  }
  SECTION("double") {
    check_table(softmaxlab_test::kSoftmaxCasesF64, "double");
  }
}
