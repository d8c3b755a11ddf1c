// libFuzzer target: AttentionSoftmax with arbitrary scale, softcap, mask slope and sink, on
// arbitrary shapes, storage forms and float/double bit patterns. Invalid options must throw
// std::invalid_argument (and nothing else). Rows keep Softmax's rules on the transformed scores:
// NaN row, -inf entries exactly 0, +inf entries sharing the mass (with a softcap, cap(+inf) = c is
// an ordinary score), rows summing to 1, or to at most 1 with a sink (it takes its share). A finite
// entry whose scaled score overflows is not +inf: only entries of x at +inf share the mass.
#include <softmaxlab/attention.hpp>

#include "fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace softmaxlab_fuzz;
  namespace sml = softmaxlab;
  Bytes head(data, size);
  const std::uint8_t choice = head.take<std::uint8_t>();
  Rules rules(Output::Probabilities);
  rules.infinity_is_capped = (choice & 2) != 0;
  rules.sum_is_one = (choice & 8) == 0;
  return run_functor_target<sml::AttentionSoftmax>(head, rules, [&](Bytes& bytes) {
    sml::AttentionOptions o;
    if (choice & 1)
      o = o.with_scale(bytes.parameter(0.125));
    if (choice & 2)
      o = o.with_softcap(bytes.parameter(30.0));
    if (choice & 4)
      o = o.with_mask_slope(bytes.parameter(0.5));
    if (choice & 8)
      o = o.with_sink(bytes.parameter(1.0));
    return sml::AttentionSoftmax(o);
  });
}
