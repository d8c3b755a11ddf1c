// <softmaxlab/softmax.hpp> alone: Softmax and LogSoftmax, forward, batch, masked and backward forms.
#include <softmaxlab/softmax.hpp>

void softmaxlab_header_use_softmax() {
  Eigen::VectorXf x = Eigen::VectorXf::LinSpaced(4, -1, 1), y(4), dx(4);
  const softmaxlab::Softmax f(2.0);
  f.apply(x, y);
  Eigen::MatrixXd rows = softmaxlab::LogSoftmax().rowwise(Eigen::MatrixXd::Ones(2, 3));
  f.backward(x, y, x, dx);
  Eigen::Matrix<bool, 4, 1> keep = Eigen::Matrix<bool, 4, 1>::Constant(true);
  f.apply_masked(x, keep, y);
  (void)rows;
}
