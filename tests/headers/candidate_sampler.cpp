// <softmaxlab/candidate_sampler.hpp> alone.
#include <softmaxlab/candidate_sampler.hpp>

void softmaxlab_header_use_candidate_sampler() {
  const auto s = softmaxlab::CandidateSampler::log_uniform(100);
  softmaxlab::Philox4x32 gen(7);
  const softmaxlab::CandidateSample cs = s.sample(std::vector<int>{1, 2}, 10, true, gen);
  (void)cs;
}
