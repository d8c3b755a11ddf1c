// <softmaxlab/cross_entropy.hpp> alone.
#include <softmaxlab/cross_entropy.hpp>

void softmaxlab_header_use_cross_entropy() {
  Eigen::MatrixXf z = Eigen::MatrixXf::Zero(2, 3), grad(2, 3);
  Eigen::VectorXd losses(2), lse(2);
  const auto ce = softmaxlab::CrossEntropyLoss(softmaxlab::Reduction::None, 0.1).with_z_loss(1e-4);
  const double l = ce(z, std::vector<int>{0, 2}, grad,
                      softmaxlab::RowOutputs().with_losses(losses).with_lse(lse));
  (void)l;
}
