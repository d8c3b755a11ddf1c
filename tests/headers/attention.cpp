// <softmaxlab/attention.hpp> alone: AttentionSoftmax, Attention and merge_attention.
#include <softmaxlab/attention.hpp>

void softmaxlab_header_use_attention() {
  const auto o = softmaxlab::AttentionOptions().with_scale(0.5).with_causal(true);
  Eigen::VectorXf s = Eigen::VectorXf::Zero(4);
  Eigen::VectorXf y = softmaxlab::AttentionSoftmax(o)(s);
  const Eigen::MatrixXf q = Eigen::MatrixXf::Zero(3, 8), k = Eigen::MatrixXf::Zero(5, 8),
                        v = Eigen::MatrixXf::Zero(5, 4);
  Eigen::MatrixXf out = softmaxlab::Attention<>(o)(q, k, v);
  (void)y;
  (void)out;
}
