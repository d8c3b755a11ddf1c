// <softmaxlab/hierarchical_softmax.hpp> alone.
#include <softmaxlab/hierarchical_softmax.hpp>

void softmaxlab_header_use_hierarchical_softmax() {
  const softmaxlab::HierarchicalSoftmax hs(std::vector<long>{5, 3, 2, 1});
  using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  RowMajor w = RowMajor::Zero(3, 8);
  const RowMajor h = RowMajor::Zero(2, 8);
  const std::vector<int> labels{0, 3};
  Eigen::MatrixXd lp(2, 4);
  hs.log_prob(w, h, lp);
  double l = hs.log_prob(w, h.row(0), 1) + hs.loss(w, h, labels);
  RowMajor dh(2, 8), dw(3, 8);
  l += hs.backward(w, h, labels, dh, dw);
  softmaxlab::HierarchicalSoftmaxGradient<float> g;
  l += hs.backward(w, h, labels, dh, g);
  g.scatter_add(w, -0.1f);
  Eigen::MatrixXi idx(2, 2);
  Eigen::MatrixXf top(2, 2);
  hs.predict(w, h, 2, idx, top);
  (void)l;
}
