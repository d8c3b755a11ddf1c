// <softmaxlab/gumbel.hpp> alone: GumbelSoftmax with the library's Philox generator.
#include <softmaxlab/gumbel.hpp>
#include <softmaxlab/random.hpp>

void softmaxlab_header_use_gumbel() {
  softmaxlab::Philox4x32 gen(42);
  Eigen::VectorXf x = Eigen::VectorXf::Zero(5);
  Eigen::VectorXf y = softmaxlab::GumbelSoftmax(0.5, true)(x, gen);
  const Eigen::Index i = softmaxlab::GumbelSoftmax::sample(x, gen);
  (void)y;
  (void)i;
}
