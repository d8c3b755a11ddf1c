// <softmaxlab/entmax.hpp> alone (the umbrella of the maps and their losses).
#include <softmaxlab/entmax.hpp>

void softmaxlab_header_use_entmax() {
  Eigen::VectorXd x = Eigen::VectorXd::LinSpaced(5, -1, 1);
  Eigen::VectorXd a = softmaxlab::Sparsemax()(x), b = softmaxlab::Entmax15()(x),
                  c = softmaxlab::Entmax(1.25)(x);
  const double l = softmaxlab::SparsemaxLoss()(x.transpose(), std::vector<int>{2});
  (void)a, (void)b, (void)c, (void)l;
}
