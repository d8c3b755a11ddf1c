// <softmaxlab/single_pass.hpp> alone: SinglePassSoftmax and the online normalizer.
#include <softmaxlab/single_pass.hpp>

void softmaxlab_header_use_single_pass() {
  Eigen::VectorXf x = Eigen::VectorXf::LinSpaced(8, -1, 1), y(8);
  softmaxlab::SinglePassSoftmax().apply(x, y);
  softmaxlab::OnlineNormalizer<float> state(1.0);
  state.update(x.head(4));
  state.update(x.tail(4));
  state.write(x, y);
}
