// <softmaxlab/sampled_softmax.hpp> alone.
#include <softmaxlab/sampled_softmax.hpp>

void softmaxlab_header_use_sampled_softmax() {
  const Eigen::MatrixXf h = Eigen::MatrixXf::Zero(4, 8), w = Eigen::MatrixXf::Zero(10, 8);
  const std::vector<int> labels{0, 1, 2, 3};
  softmaxlab::Philox4x32 gen(7);
  const softmaxlab::SampledSoftmaxLoss ssl(softmaxlab::CandidateSampler::log_uniform(10), 3);
  const softmaxlab::CandidateSample cs = ssl.draw(labels, gen);
  softmaxlab::SampledGradients<float> g;
  const double l =
      ssl(h, w, labels, cs, g) + softmaxlab::NceLoss(ssl.sampler(), 3)(h, w, labels, gen);
  (void)l;
}
