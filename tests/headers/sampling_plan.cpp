// <softmaxlab/sampling/plan.hpp> alone (a part of sampler.hpp: it includes the sampler first).
#include <softmaxlab/sampling/plan.hpp>

void softmaxlab_header_use_sampling_plan() {
  const softmaxlab::Sampler s(softmaxlab::SamplerOptions().with_top_p(0.9));
  const Eigen::VectorXf logits = Eigen::VectorXf::LinSpaced(6, -1, 1);
  const Eigen::Index kept = s.kept_count(logits);
  (void)kept;
}
