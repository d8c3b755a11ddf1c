// <softmaxlab/attention_softmax.hpp> alone.
#include <softmaxlab/attention_softmax.hpp>

void softmaxlab_header_use_attention_softmax() {
  const softmaxlab::AttentionSoftmax f(softmaxlab::AttentionOptions().with_scale(0.5));
  Eigen::VectorXf x = Eigen::VectorXf::LinSpaced(4, -1, 1), mask = Eigen::VectorXf::Zero(4), y(4);
  f.apply_masked(x, mask, y);
}
