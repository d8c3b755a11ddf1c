// <softmaxlab/fusion.hpp> alone.
#include <softmaxlab/fusion.hpp>

void softmaxlab_header_use_fusion() {
  Eigen::VectorXd tgt = Eigen::VectorXd::LinSpaced(4, -1, 1), src = Eigen::VectorXd::Zero(4);
  Eigen::VectorXd hard = softmaxlab::HardFusion(0.8)(tgt, src);
  Eigen::VectorXd soft = softmaxlab::SoftFusion(1.0)(tgt, src);
  (void)hard;
  (void)soft;
}
