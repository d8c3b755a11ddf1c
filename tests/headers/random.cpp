// <softmaxlab/random.hpp> alone.
#include <softmaxlab/random.hpp>

void softmaxlab_header_use_random() {
  softmaxlab::Philox4x32 gen(7);
  const auto word = gen();
  (void)word;
}
