// <softmaxlab/flash_attention.hpp> alone: Attention with each weight, the lse and merge_attention.
#include <softmaxlab/flash_attention.hpp>

void softmaxlab_header_use_flash_attention() {
  const Eigen::MatrixXf q = Eigen::MatrixXf::Zero(3, 8), k = Eigen::MatrixXf::Zero(5, 8),
                        v = Eigen::MatrixXf::Zero(5, 4);
  Eigen::MatrixXf o(3, 4), o2(3, 4);
  Eigen::VectorXf lse(3), lse2(3);
  const auto attn = softmaxlab::Attention<>().with_block_sizes(2, 3);
  attn.apply(q, k, v, o, lse);
  attn.apply(q, k, v, o2, lse2);
  softmaxlab::merge_attention(o, lse, o2, lse2, o, lse);
  const softmaxlab::Attention<softmaxlab::PowerSoftmax> power({}, softmaxlab::PowerSoftmax(2));
  power.apply(q, k, v, o);
}
