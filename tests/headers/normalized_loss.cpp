// <softmaxlab/normalized_loss.hpp> alone.
#include <softmaxlab/normalized_loss.hpp>

void softmaxlab_header_use_normalized_loss() {
  const Eigen::MatrixXd e = Eigen::MatrixXd::Ones(2, 3), w = Eigen::MatrixXd::Identity(4, 3);
  const softmaxlab::NormalizedSoftmaxLoss loss(
      softmaxlab::NormalizedSoftmax(16.0, softmaxlab::Margin::cosface(0.2)));
  const double l = loss(e, w, std::vector<int>{0, 3});
  (void)l;
}
