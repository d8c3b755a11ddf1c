// <softmaxlab/tensor.hpp> alone: the axis forms on Eigen tensors.
#include <softmaxlab/tensor.hpp>

void softmaxlab_header_use_tensor() {
  Eigen::Tensor<float, 3> t(2, 3, 4), y(2, 3, 4);
  t.setZero();
  softmaxlab::apply_along_axis(softmaxlab::Softmax(), t, 1, y);
}
