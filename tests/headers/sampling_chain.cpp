// <softmaxlab/sampling/chain.hpp> alone (a part of sampler.hpp: it includes the sampler first).
#include <softmaxlab/sampling/chain.hpp>

void softmaxlab_header_use_sampling_chain() {
  const softmaxlab::Sampler s(softmaxlab::SamplerOptions().with_top_p(0.9));
  const Eigen::VectorXf logits = Eigen::VectorXf::LinSpaced(6, -1, 1);
  const Eigen::Index kept = s.kept_count(logits);
  (void)kept;
}
