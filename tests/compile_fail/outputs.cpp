// Compile-time checks of the output and generator arguments (ctest compile_fail.*, driven by
// compile_fail.cmake). SOFTMAXLAB_CASE 0 holds the forms that must compile (temporary blocks,
// const views, Eigen's const MatrixBase<Derived>& idiom); each other case is one call that must
// fail with the static_assert message the ctest expects.
#include <random>

#include <softmaxlab/softmaxlab.hpp>

namespace sml = softmaxlab;

// Eigen's "Writing Functions Taking Eigen Types as Parameters" idiom for an output.
template <class Derived>
void softmax_into(const Eigen::VectorXf& x, const Eigen::MatrixBase<Derived>& y) {
  sml::Softmax().apply(x, y);
}

int main() {
  Eigen::VectorXf x = Eigen::VectorXf::LinSpaced(4, -1.0f, 1.0f);
  Eigen::MatrixXf X = Eigen::MatrixXf::Ones(3, 4);
  Eigen::MatrixXf Y(3, 4);
  sml::Philox4x32 gen(7);
  sml::Softmax f;
  sml::GumbelSoftmax g;
#if SOFTMAXLAB_CASE == 0
  Eigen::VectorXf y(4);
  f.apply(x, y);
  f.apply(x.transpose(), Y.row(1));  // a temporary block
  const Eigen::Ref<Eigen::VectorXf> r(y);
  f.apply(x, r);  // a const view of writable storage
  softmax_into(x, y);
  f.rowwise(X, Y.topRows(2 + 1));
  f.backward(x, y, x, Eigen::Map<Eigen::VectorXf>(y.data(), 4));
  g.apply(x, Y.row(0).transpose(), gen);
  g.rowwise(X, Y, gen);
  Eigen::VectorXf s = g(x, gen);
  (void)s;
#elif SOFTMAXLAB_CASE == 1
  const Eigen::VectorXf y(4);
  f.apply(x, y);
#elif SOFTMAXLAB_CASE == 2
  const Eigen::MatrixXf Z(3, 4);
  f.rowwise(X, Z);
#elif SOFTMAXLAB_CASE == 3
  const Eigen::VectorXf dx(4);
  f.backward(x, x, x, dx);
#elif SOFTMAXLAB_CASE == 4
  const Eigen::VectorXf y(4);
  g.apply(x, y, gen);
#elif SOFTMAXLAB_CASE == 5
  Eigen::VectorXf s = g(x);
#elif SOFTMAXLAB_CASE == 6
  g.rowwise(X, Y);
#elif SOFTMAXLAB_CASE == 7
  Eigen::VectorXf y(4);
  g.apply(x, y);
#endif
  return 0;
}
