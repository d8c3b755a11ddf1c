// <softmaxlab/logsumexp.hpp> alone.
#include <softmaxlab/logsumexp.hpp>

void softmaxlab_header_use_logsumexp() {
  const softmaxlab::LogSumExp lse;
  const float v = lse(Eigen::VectorXf::Zero(3));
  Eigen::VectorXd r = lse.rowwise(Eigen::MatrixXd::Zero(2, 3));
  (void)v;
  (void)r;
}
