// <softmaxlab/loss.hpp> alone: every loss and option name reachable through it.
#include <softmaxlab/loss.hpp>

void softmaxlab_header_use_loss() {
  Eigen::MatrixXd z = Eigen::MatrixXd::Zero(2, 3), grad(2, 3);
  const std::vector<int> labels{0, 2};
  const auto ce = softmaxlab::CrossEntropyLoss(softmaxlab::Reduction::Sum).with_z_loss(1e-4);
  Eigen::VectorXd per_sample(2);
  const double l = ce(z, labels, grad, softmaxlab::RowOutputs().with_losses(per_sample));
  (void)l;
}
