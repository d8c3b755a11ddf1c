// <softmaxlab/entmax_loss.hpp> alone: the Fenchel-Young losses.
#include <softmaxlab/entmax_loss.hpp>

void softmaxlab_header_use_entmax_loss() {
  Eigen::MatrixXd z = Eigen::MatrixXd::Zero(2, 3), grad(2, 3);
  const double l = softmaxlab::EntmaxLoss(1.5)(z, std::vector<int>{0, 2}, grad);
  (void)l;
}
