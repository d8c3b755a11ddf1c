// <softmaxlab/linear_cross_entropy.hpp> alone.
#include <softmaxlab/linear_cross_entropy.hpp>

void softmaxlab_header_use_linear_cross_entropy() {
  const Eigen::MatrixXf h = Eigen::MatrixXf::Zero(4, 8), w = Eigen::MatrixXf::Zero(10, 8);
  const std::vector<int> labels{0, 1, 2, 3};
  const double l = softmaxlab::LinearCrossEntropy().with_block_sizes(2, 4)(h, w, labels);
  (void)l;
}
