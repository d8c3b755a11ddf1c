// <softmaxlab/sampling.hpp> alone: the sampler chain, verification and top-k log-probabilities.
#include <softmaxlab/random.hpp>
#include <softmaxlab/sampling.hpp>

void softmaxlab_header_use_sampling() {
  const softmaxlab::Sampler s(softmaxlab::SamplerOptions().with_top_k(2).with_temperature(0.8));
  softmaxlab::Philox4x32 gen(1);
  const Eigen::VectorXf logits = Eigen::VectorXf::LinSpaced(6, -1, 1);
  const Eigen::Index t = s.sample(logits, gen);
  Eigen::Matrix<Eigen::Index, Eigen::Dynamic, 1> idx(2);
  Eigen::VectorXf lp(2);
  softmaxlab::top_k_log_softmax(logits, 2, idx, lp);
  (void)t;
}
