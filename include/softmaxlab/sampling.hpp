// softmaxlab: token sampling. An umbrella (every name that compiled through <softmaxlab/sampling.hpp>
// still does):
//   sampler.hpp            Sampler: the chain, exact draws, probabilities, kept_count, verify
//   sampler_options.hpp    SamplerOptions, TokenHistory, SamplingWorkspace, SpeculativeResult
//   top_k_log_softmax.hpp  top_k_log_softmax, top_k_log_softmax_rowwise
//   sampling/linear_head.hpp  LinearHeadSampler: tokens from H and W without the N x V logits
// The doc block is in sampler.hpp.
#pragma once

#include "sampler.hpp"
#include "sampler_options.hpp"
#include "sampling/linear_head.hpp"
#include "top_k_log_softmax.hpp"
