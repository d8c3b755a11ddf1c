// <softmaxlab/linear_cross_entropy.hpp> alone.
#include <softmaxlab/linear_cross_entropy.hpp>

void softmaxlab_header_use_linear_cross_entropy() {
  const Eigen::MatrixXf h = Eigen::MatrixXf::Zero(4, 8), w = Eigen::MatrixXf::Zero(10, 8);
  const std::vector<int> labels{0, 1, 2, 3};
  const double l = softmaxlab::LinearCrossEntropy().with_block_sizes(2, 4)(h, w, labels);
  (void)l;
  // 16-bit H and W: float gradients.
  using MatrixH = Eigen::Matrix<Eigen::half, Eigen::Dynamic, Eigen::Dynamic>;
  const MatrixH h16 = h.cast<Eigen::half>(), w16 = w.cast<Eigen::half>();
  Eigen::MatrixXf dh(4, 8), dw(10, 8);
  const double l16 = softmaxlab::LinearCrossEntropy()(h16, w16, labels, dh, dw);
  (void)l16;
}
