// <softmaxlab/top_k_log_softmax.hpp> alone.
#include <softmaxlab/top_k_log_softmax.hpp>

void softmaxlab_header_use_top_k_log_softmax() {
  const Eigen::VectorXd logits = Eigen::VectorXd::LinSpaced(8, -1, 1);
  Eigen::Matrix<Eigen::Index, Eigen::Dynamic, 1> idx(3);
  Eigen::VectorXd lp(3);
  softmaxlab::top_k_log_softmax(logits, 3, idx, lp);
}
