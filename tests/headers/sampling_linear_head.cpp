// <softmaxlab/sampling/linear_head.hpp> alone: tokens from H and W without the N x V logits.
#include <softmaxlab/sampling/linear_head.hpp>

void softmaxlab_header_use_sampling_linear_head() {
  const softmaxlab::LinearHeadSampler head(softmaxlab::SamplerOptions().with_top_k(3));
  const Eigen::MatrixXf h = Eigen::MatrixXf::Ones(2, 4), w = Eigen::MatrixXf::Ones(6, 4);
  Eigen::VectorXi tokens(2);
  head.sample(h, w, 1, tokens);
}
