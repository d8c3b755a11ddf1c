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
#include "support/reference_check.hpp"

namespace sml = softmaxlab;
using softmaxlab_test::SoftmaxCase;
using softmaxlab_test::Worst;

namespace {

template <class Scalar>
using Vector = softmaxlab_test::RefVector<Scalar>;
using softmaxlab_test::check_log_probabilities;
using softmaxlab_test::check_probabilities;
using softmaxlab_test::inputs;
using softmaxlab_test::TableSummary;

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

template <class Scalar, std::size_t N>
void check_table(const SoftmaxCase<Scalar> (&cases)[N], const char* type) {
  const std::string t = type;
  TableSummary whole("SinglePassSoftmax " + t);
  TableSummary pieces("OnlineNormalizer chunks + merge, write " + t);
  TableSummary logs("OnlineNormalizer chunks + merge, write_log " + t);
  std::mt19937 gen(20261126);
  for (const auto& c : cases) {
    check_probabilities(c, Vector<Scalar>(sml::SinglePassSoftmax(c.temperature)(inputs(c))),
                        "whole", whole);
    for (int parts : {2, 7}) {
      check_probabilities(c, chunked(c, parts, false, gen), "chunked", pieces);
      check_log_probabilities(c, chunked(c, parts, true, gen), "chunked log", logs);
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
