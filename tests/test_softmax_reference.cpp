// Softmax and LogSoftmax against the exact mpmath tables of tests/reference/ (float and double):
// every case of the tables, every element, with the worst error in eps printed per case.
#include <cmath>
#include <iostream>
#include <iterator>
#include <vector>

#include <catch2/catch.hpp>

#include <softmaxlab/softmax.hpp>

#include "reference/softmax_f32.ipp"
#include "reference/softmax_f64.ipp"
#include "support.hpp"
#include "support/reference_check.hpp"

namespace sml = softmaxlab;
using softmaxlab_test::check_log_probabilities;
using softmaxlab_test::check_probabilities;
using softmaxlab_test::inputs;
using softmaxlab_test::RefVector;
using softmaxlab_test::TableSummary;

TEST_CASE("Softmax matches the exact reference tables within 4 eps (1 + |x/T - m|)",
          "[softmax][reference]") {
  SECTION("float") {
    TableSummary summary("Softmax float");
    for (const auto& c : softmaxlab_test::kSoftmaxCasesF32)
      check_probabilities(c, RefVector<float>(sml::Softmax(c.temperature)(inputs(c))), "Softmax",
                          summary);
  }
  SECTION("double") {
    TableSummary summary("Softmax double");
    for (const auto& c : softmaxlab_test::kSoftmaxCasesF64)
      check_probabilities(c, RefVector<double>(sml::Softmax(c.temperature)(inputs(c))), "Softmax",
                          summary);
  }
}

TEST_CASE("LogSoftmax matches the exact reference tables within 4 eps (1 + |y|)",
          "[logsoftmax][reference]") {
  SECTION("float") {
    TableSummary summary("LogSoftmax float");
    for (const auto& c : softmaxlab_test::kSoftmaxCasesF32)
      check_log_probabilities(c, RefVector<float>(sml::LogSoftmax(c.temperature)(inputs(c))),
                              "LogSoftmax", summary);
  }
  SECTION("double") {
    TableSummary summary("LogSoftmax double");
    for (const auto& c : softmaxlab_test::kSoftmaxCasesF64)
      check_log_probabilities(c, RefVector<double>(sml::LogSoftmax(c.temperature)(inputs(c))),
                              "LogSoftmax", summary);
  }
}
