// <softmaxlab/entmax_maps.hpp> alone: the sparse maps and their backward.
#include <softmaxlab/entmax_maps.hpp>

void softmaxlab_header_use_entmax_maps() {
  Eigen::VectorXf x = Eigen::VectorXf::LinSpaced(5, -1, 1), y(5), dx(5);
  softmaxlab::Sparsemax().apply(x, y);
  softmaxlab::Sparsemax().backward(x, y, x, dx);
  softmaxlab::Entmax15().apply(x, y);
  static_assert(softmaxlab::Entmax15::alpha == 1.5, "Entmax15 is 1.5-entmax");
}
