// <softmaxlab/approx/exp_chebyshev_table.hpp> alone (the generated table).
#include <softmaxlab/approx/exp_chebyshev_table.hpp>

void softmaxlab_header_use_approx_exp_chebyshev_table() {
  const auto& entry = softmaxlab::approx::tables::kExpChebyshev[0][0];
  (void)entry;
}
