// <softmaxlab/gumbel_loss.hpp> alone.
#include <softmaxlab/gumbel_loss.hpp>
#include <softmaxlab/random.hpp>

void softmaxlab_header_use_gumbel_loss() {
  softmaxlab::Philox4x32 gen(3);
  Eigen::MatrixXf x = Eigen::MatrixXf::Zero(2, 5), grad(2, 5);
  const double l = softmaxlab::SparseCbmGumbelLoss(0.5)(x, gen, grad);
  (void)l;
}
