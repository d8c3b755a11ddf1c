// <softmaxlab/sampler_options.hpp> alone: every with_* returns a modified copy.
#include <softmaxlab/sampler_options.hpp>

void softmaxlab_header_use_sampler_options() {
  const std::vector<Eigen::Index> history{1, 2, 3};
  const softmaxlab::TokenHistory h(history);
  const softmaxlab::SamplerOptions o =
      softmaxlab::SamplerOptions().with_penalties(1.1, 0, 0, 64).with_top_k(40).with_top_p(0.95);
  softmaxlab::SamplingWorkspace ws;
  (void)h;
  (void)o;
}
