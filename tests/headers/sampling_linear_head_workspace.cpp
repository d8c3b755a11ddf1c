// <softmaxlab/sampling/linear_head_workspace.hpp> alone: LinearHeadSampler's scratch memory.
#include <softmaxlab/sampling/linear_head_workspace.hpp>

void softmaxlab_header_use_sampling_linear_head_workspace() {
  softmaxlab::LinearHeadWorkspace ws;
  ws.slots<float>(2);
  const std::size_t bytes = ws.bytes();
  (void)bytes;
}
