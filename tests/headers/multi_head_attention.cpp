// <softmaxlab/multi_head_attention.hpp> alone.
#include <softmaxlab/multi_head_attention.hpp>

void softmaxlab_header_use_multi_head_attention() {
  const softmaxlab::MultiHeadAttention mha(softmaxlab::AttentionOptions().with_causal(true), 2, 1);
  const Eigen::MatrixXf q = Eigen::MatrixXf::Zero(3, 16), k = Eigen::MatrixXf::Zero(5, 8),
                        v = Eigen::MatrixXf::Zero(5, 8);
  Eigen::MatrixXf o(3, 16);
  mha.apply(q, k, v, o);
}
