// <softmaxlab/sampling/linear_head_paths.hpp> alone: LinearHeadSampler's paths (it includes
// linear_head.hpp first), here the one-pass top-p path and probabilities().
#include <softmaxlab/sampling/linear_head_paths.hpp>

void softmaxlab_header_use_sampling_linear_head_paths() {
  const softmaxlab::LinearHeadSampler head(softmaxlab::SamplerOptions().with_top_p(0.9));
  const Eigen::MatrixXf h = Eigen::MatrixXf::Ones(2, 4), w = Eigen::MatrixXf::Ones(6, 4);
  Eigen::VectorXi tokens(2);
  head.sample(h, w, 1, tokens);
  Eigen::VectorXf probs(6);
  head.probabilities(h, w, Eigen::VectorXf(), 0, probs);
}
