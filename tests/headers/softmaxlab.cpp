// <softmaxlab/softmaxlab.hpp>, the umbrella, alone: one name from each family.
#include <softmaxlab/softmaxlab.hpp>

void softmaxlab_header_use_softmaxlab() {
  Eigen::VectorXf x = Eigen::VectorXf::Zero(4);
  Eigen::VectorXf a = softmaxlab::Softmax()(x), b = softmaxlab::Sparsemax()(x);
  const softmaxlab::CrossEntropyLoss ce;
  const softmaxlab::SamplerOptions options = softmaxlab::SamplerOptions().with_top_k(2);
  const softmaxlab::AttentionOptions attention = softmaxlab::AttentionOptions().with_scale(0.5);
  (void)a, (void)b, (void)ce, (void)options, (void)attention;
}
