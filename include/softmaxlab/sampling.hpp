// softmaxlab: token sampling. An umbrella (every name that compiled through <softmaxlab/sampling.hpp>
// still does):
//   sampler.hpp            Sampler: the chain, exact draws, probabilities, kept_count, verify
//   sampler_options.hpp    SamplerOptions, TokenHistory, SamplingWorkspace, SpeculativeResult
//   top_k_log_softmax.hpp  top_k_log_softmax, top_k_log_softmax_rowwise
// The doc block is in sampler.hpp.
#pragma once

#include "sampler.hpp"
#include "sampler_options.hpp"
#include "top_k_log_softmax.hpp"
