// Compile-time checks of the output and generator arguments (ctest compile_fail.*, driven by
// compile_fail.cmake). SOFTMAXLAB_CASE 0 holds the forms that must compile (temporary blocks,
// const views, Eigen's const MatrixBase<Derived>& idiom); each other case is one call that must
// fail with the static_assert message the ctest expects.
#include <random>
#include <vector>

#include <softmaxlab/softmaxlab.hpp>
#if SOFTMAXLAB_CASE == 14
#include <softmaxlab/tensor.hpp>
#elif SOFTMAXLAB_CASE == 15
#include <unsupported/Eigen/CXX11/Tensor>  // without <softmaxlab/tensor.hpp>
#endif

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
  // The other families take outputs the same way (detail::writable_output): blocks, Maps, Refs.
  const std::vector<int> labels{0, 1, 3};
  Eigen::MatrixXf G(6, 4);
  sml::CrossEntropyLoss()(X, labels, G.topRows(3));
  sml::EntmaxLoss()(X, labels, G.middleRows(1, 3));
  Eigen::VectorXd per_row(3);
  const sml::CrossEntropyLoss none(sml::Reduction::None);
  none(X, labels, sml::RowOutputs().with_losses(per_row));
  sml::Attention<> attention;
  Eigen::MatrixXf O(5, 4);
  attention.apply(X, X, X, O.middleRows(1, 3));
  attention.apply(X, X, X, Eigen::Map<Eigen::MatrixXf>(O.data(), 3, 4), y.head(3));
  sml::Sampler sampler;
  sampler.probabilities(x.transpose(), Y.row(2));
  Eigen::VectorXi tokens(3);
  sampler.sample_rowwise(X, gen, tokens.segment(0, 3));
  sml::SoftFusion().rowwise(X, X, Y.topRows(3));
  sml::LogSumExp().rowwise(X, y.head(3));
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
#elif SOFTMAXLAB_CASE == 8
  const Eigen::MatrixXf G(3, 4);
  sml::CrossEntropyLoss()(X, std::vector<int>{0, 1, 3}, G);
#elif SOFTMAXLAB_CASE == 9
  const Eigen::MatrixXf O(3, 4);
  sml::Attention<>().apply(X, X, X, O);
#elif SOFTMAXLAB_CASE == 10
  const Eigen::VectorXf p(4);
  sml::Sampler().probabilities(x, p);
#elif SOFTMAXLAB_CASE == 11
  const Eigen::MatrixXf Z(3, 4);
  sml::SoftFusion().rowwise(X, X, Z);
#elif SOFTMAXLAB_CASE == 12
  const Eigen::MatrixXf G(3, 4);
  sml::EntmaxLoss()(X, std::vector<int>{0, 1, 3}, G);
#elif SOFTMAXLAB_CASE == 13
  // 16-bit and mixed types are accepted; a scalar outside {half, bfloat16, float, double} is not.
  const Eigen::MatrixXi I = Eigen::MatrixXi::Ones(3, 4);
  const Eigen::VectorXi l = Eigen::VectorXi::Zero(3);
  Eigen::MatrixXi dI(3, 4);
  sml::Attention<>().backward(I, I, I, I, l, I, dI, dI, dI);
#elif SOFTMAXLAB_CASE == 14
  const Eigen::Tensor<float, 2> t(3, 4), out(3, 4);
  f.apply(t, 1, out);  // a const Tensor output
#elif SOFTMAXLAB_CASE == 15
  Eigen::Tensor<float, 2> t(3, 4);
  t.setZero();
  f(t, 1);  // the axis forms without their header
#endif
  return 0;
}
