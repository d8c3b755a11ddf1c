// Writes, as raw bits to stdout, float and double results that scripts/compare_isa.sh compares
// between builds for different instruction sets: GumbelSoftmax soft samples (Philox4x32 seed 1234,
// tau 1, 0.5 and 0.1) and Softmax, rowwise over 64 rows of 4096 logits in [-6, 6].
#include <cmath>
#include <cstdio>

#include <softmaxlab/softmaxlab.hpp>

namespace sml = softmaxlab;

template <class Matrix>
void write(const Matrix& m) {
  std::fwrite(m.data(), sizeof(typename Matrix::Scalar), static_cast<std::size_t>(m.size()),
              stdout);
}

int main() {
  const int rows = 64, n = 4096;
  Eigen::MatrixXf x(rows, n);
  for (int r = 0; r < rows; ++r)
    for (int i = 0; i < n; ++i)
      x(r, i) = static_cast<float>(6 * std::cos(0.37 * i + r) + 0.01 * r);
  const Eigen::MatrixXd xd = x.cast<double>();
  for (double tau : {1.0, 0.5, 0.1}) {
    const sml::GumbelSoftmax g(tau);
    sml::Philox4x32 gen(1234), gen_d(1234);
    write(g.rowwise(x, gen));
    write(g.rowwise(xd, gen_d));
  }
  write(sml::Softmax().rowwise(x));
  write(sml::Softmax().rowwise(xd));
  return 0;
}
