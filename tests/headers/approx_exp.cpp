// <softmaxlab/approx/exp.hpp> alone.
#include <softmaxlab/approx/exp.hpp>

void softmaxlab_header_use_approx_exp() {
  const auto e = softmaxlab::approx::ExpApprox::chebyshev(4, 5, 20);
  const softmaxlab::approx::HeCost cost = e.cost();
  (void)cost;
}
