// <softmaxlab/adaptive_softmax.hpp> alone.
#include <softmaxlab/adaptive_softmax.hpp>

void softmaxlab_header_use_adaptive_softmax() {
  const softmaxlab::AdaptiveLogSoftmax a(8, 40, {10, 20}, 2.0, true);
  const softmaxlab::AdaptiveLogSoftmaxParameters<float> p = a.init_parameters<float>(1);
  const Eigen::MatrixXf h = Eigen::MatrixXf::Zero(3, 8);
  const std::vector<int> labels{0, 15, 39};
  Eigen::MatrixXf lp = a.log_prob(p, h);
  Eigen::VectorXi idx(3);
  a.predict(p, h, idx);
  Eigen::VectorXf output(3);
  auto grads = a.zero_parameters<float>();
  Eigen::MatrixXf dh(3, 8);
  const double l = a.loss(p, h, labels) + a.loss(p, h, labels, output)
                   + a.backward(p, h, labels, grads, dh)
                   + a.backward(p, h, labels, grads, dh, output);
  (void)l;
  (void)lp;
}
