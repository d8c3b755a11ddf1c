// <softmaxlab/linear_cross_entropy_outputs.hpp> alone.
#include <softmaxlab/linear_cross_entropy_outputs.hpp>

void softmaxlab_header_use_linear_cross_entropy_outputs() {
  Eigen::VectorXd losses(4), lse(4);
  softmaxlab::LinearCrossEntropyWorkspace ws;
  const auto out = softmaxlab::TokenOutputs().with_losses(losses).with_lse(lse).with_workspace(ws);
  (void)out;
}
