// <softmaxlab/normalized.hpp> alone.
#include <softmaxlab/normalized.hpp>

void softmaxlab_header_use_normalized() {
  const Eigen::MatrixXd e = Eigen::MatrixXd::Ones(2, 3), w = Eigen::MatrixXd::Identity(3, 4);
  const softmaxlab::NormalizedSoftmax f(16.0, softmaxlab::Margin::arcface(0.5));
  Eigen::MatrixXd p = f(e, w);
  (void)p;
}
