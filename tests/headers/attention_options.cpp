// <softmaxlab/attention_options.hpp> alone.
#include <softmaxlab/attention_options.hpp>

void softmaxlab_header_use_attention_options() {
  const auto o = softmaxlab::AttentionOptions().with_scale(0.125).with_softcap(30.0).with_sink(0.5);
  const double slope = softmaxlab::alibi_slope(8.0, 1, 8);
  (void)o;
  (void)slope;
}
