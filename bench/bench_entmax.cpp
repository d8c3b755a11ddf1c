// Sparsemax and Entmax15 over the suite's lengths and cache cases (see common.hpp); the issue's
// targets compare them with Softmax (scripts/bench_report.py: Sparsemax >= 0.5x, Entmax15 >= 0.3x
// Softmax's throughput on in-cache float rows of 1,000 to 32,000).
#include <softmaxlab/entmax.hpp>

#include "common.hpp"

namespace {

namespace sml = softmaxlab;

const bool sparsemax_registered = softmaxlab_bench::register_functor("sparsemax", sml::Sparsemax());
const bool entmax15_registered = softmaxlab_bench::register_functor("entmax15", sml::Entmax15());

}  // namespace
