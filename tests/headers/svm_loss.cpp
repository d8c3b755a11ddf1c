// <softmaxlab/svm_loss.hpp> alone.
#include <softmaxlab/svm_loss.hpp>

void softmaxlab_header_use_svm_loss() {
  const Eigen::MatrixXd o = Eigen::MatrixXd::Zero(2, 3);
  const double h = softmaxlab::L2SvmLoss(0.5).hinge(o, std::vector<int>{1, 2});
  const Eigen::VectorXi c = softmaxlab::argmax_rows(o);
  (void)h;
  (void)c;
}
