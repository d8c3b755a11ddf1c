// <softmaxlab/attention_weights.hpp> alone: the weights trait.
#include <softmaxlab/attention_weights.hpp>

static_assert(softmaxlab::AttentionWeight<softmaxlab::Softmax>::supported, "Softmax weights");
static_assert(softmaxlab::AttentionWeight<softmaxlab::PowerSoftmax>::kind
                  == softmaxlab::AttentionWeightKind::Power,
              "PowerSoftmax weights");
static_assert(!softmaxlab::AttentionWeight<softmaxlab::LogSoftmax>::supported, "not a weight");

void softmaxlab_header_use_attention_weights() {
  softmaxlab::AttentionWeight<softmaxlab::Softmax>::check("use", {}, softmaxlab::Softmax());
}
