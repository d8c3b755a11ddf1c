// <softmaxlab/polynomial.hpp> alone: the options' with_* return modified copies.
#include <softmaxlab/polynomial.hpp>

void softmaxlab_header_use_polynomial() {
  const auto options = softmaxlab::PolynomialSoftmaxOptions::chebyshev(4, 5).with_reciprocal(
      softmaxlab::ReciprocalMethod::Newton, 8);
  const softmaxlab::PolynomialSoftmax f(options);
  Eigen::VectorXf y = f(Eigen::VectorXf::LinSpaced(4, -1, 1));
  (void)y;
}
