// The HE-friendly and sampling variants over the suite's lengths and cache cases (see common.hpp),
// beside Softmax and the baselines in the same report. The per-variant files measure their own
// configurations at 4096; these put every variant on the same lengths.
#include <softmaxlab/gumbel.hpp>
#include <softmaxlab/polynomial.hpp>
#include <softmaxlab/power.hpp>
#include <softmaxlab/random.hpp>

#include "common.hpp"

namespace {

namespace sml = softmaxlab;
using softmaxlab_bench::ConstRows;
using softmaxlab_bench::Rows;

const bool power_registered = softmaxlab_bench::register_functor("power4", sml::PowerSoftmax(4));
const bool polynomial_registered =
    softmaxlab_bench::register_functor("polynomial", sml::PolynomialSoftmax());
// Gumbel noise included: one Philox stream drawn through the whole run.
const bool gumbel_registered = softmaxlab_bench::register_batch(
    "gumbel", [gumbel = sml::GumbelSoftmax(1.0), gen = sml::Philox4x32(2026)](
                  const auto* x, auto* y, Eigen::Index rows, Eigen::Index n) mutable {
      using Scalar = std::remove_cv_t<std::remove_pointer_t<decltype(y)>>;
      gumbel.rowwise(ConstRows<Scalar>(x, rows, n), Rows<Scalar>(y, rows, n), gen);
    });

}  // namespace
