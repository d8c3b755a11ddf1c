// <softmaxlab/sampling/verify.hpp> alone (a part of sampler.hpp: it includes the sampler first).
#include <softmaxlab/sampling/verify.hpp>

void softmaxlab_header_use_sampling_verify() {
  const softmaxlab::Sampler s(softmaxlab::SamplerOptions().with_top_p(0.9));
  const Eigen::VectorXf logits = Eigen::VectorXf::LinSpaced(6, -1, 1);
  const Eigen::Index kept = s.kept_count(logits);
  (void)kept;
}
