// <softmaxlab/power.hpp> alone, with the one reciprocal enum.
#include <softmaxlab/power.hpp>

void softmaxlab_header_use_power() {
  softmaxlab::PowerSoftmaxOptions o;
  o.reciprocal = softmaxlab::ReciprocalMethod::Goldschmidt;
  Eigen::VectorXd y = softmaxlab::PowerSoftmax(4, o)(Eigen::VectorXd::LinSpaced(4, -1, 1));
  (void)y;
}
