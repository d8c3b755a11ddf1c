// encrypted_attention: one attention layer as an encrypted-inference pipeline runs it. Scores
// S = Q K^T / sqrt(d) for a small random sequence, attention weights by Softmax (the exact
// reference), PowerSoftmax (Power-Softmax, arXiv 2410.09457: a different function, for models
// trained with it) and PolynomialSoftmax (only + - * after the shift: what a CKKS pipeline can
// evaluate), output = weights * V. Prints how far each variant's weights and outputs are from the
// Softmax ones, a few rows of each attention map, the cost of the polynomial pipeline, and the
// causal (masked) form of PowerSoftmax.
#include <cmath>
#include <iomanip>
#include <iostream>
#include <random>

#include <softmaxlab/softmaxlab.hpp>

namespace sml = softmaxlab;
using Matrix = Eigen::MatrixXf;

namespace {

Matrix random_matrix(Eigen::Index rows, Eigen::Index cols, std::mt19937& gen, float scale) {
  std::normal_distribution<float> normal(0.0f, scale);
  Matrix m(rows, cols);
  for (Eigen::Index i = 0; i < m.size(); ++i)
    m.data()[i] = normal(gen);
  return m;
}

void print_rows(const char* title, const Matrix& w, Eigen::Index rows) {
  std::cout << title << "\n";
  for (Eigen::Index i = 0; i < rows; ++i) {
    std::cout << "  row " << i << ": ";
    for (Eigen::Index j = 0; j < w.cols(); ++j)
      std::cout << std::setw(7) << std::fixed << std::setprecision(4) << w(i, j);
    std::cout << "\n";
  }
}

}  // namespace

int main() {
  constexpr Eigen::Index L = 10, d = 16;  // sequence length, head dimension
  std::mt19937 gen(2410);
  const Matrix Q = random_matrix(L, d, gen, 1.0f), K = random_matrix(L, d, gen, 1.0f);
  const Matrix V = random_matrix(L, d, gen, 1.0f);
  const Matrix scores = Q * K.transpose() / std::sqrt(static_cast<float>(d));
  std::cout << "attention over a sequence of " << L << " tokens, head dimension " << d
            << "; scores Q K^T / sqrt(d) in [" << scores.minCoeff() << ", " << scores.maxCoeff()
            << "]\n\n";

  // A public bound on the scores: |q . k| / sqrt(d) <= max |q| max |k| / sqrt(d) (Cauchy-Schwarz).
  // An encrypted pipeline knows such a bound from the model (e.g. after a normalization layer),
  // never from the data; the example computes it here from the norms.
  const float bound = Q.rowwise().norm().maxCoeff() * K.rowwise().norm().maxCoeff()
                      / std::sqrt(static_cast<float>(d));
  std::cout << "public bound on the scores (Cauchy-Schwarz): " << bound << "\n\n";

  const sml::Softmax softmax;
  const sml::PowerSoftmax power(4);   // Stable form, p = 4
  const sml::PolynomialSoftmax poly;  // default: Chebyshev degree 4, r = 5, R = 20, Goldschmidt
  // The polynomial pipeline without a max: shift by the public bound. The scores lie in
  // [-bound, bound], so the range R must cover 2 bound; the gap is R in the worst case.
  double range = 20;
  while (range < 2 * bound)
    range *= 2;  // 20, 40, 80, ...: R / 2^r stays in the coefficient table (r adjusted below)
  int r = 5;
  while (range / std::ldexp(1.0, r) > 0.625)
    ++r;
  const sml::PolynomialSoftmax poly_public(
      sml::PolynomialSoftmaxOptions::chebyshev(4, r, range).with_public_bound(bound, 2 * bound));

  struct Variant {
    const char* name;
    Matrix weights;
  };
  const Variant variants[] = {
      {"Softmax (exact)", softmax.rowwise(scores)},
      {"PowerSoftmax p = 4", power.rowwise(scores)},
      {"PolynomialSoftmax (row max)", poly.rowwise(scores)},
      {"PolynomialSoftmax (public bound)", poly_public.rowwise(scores)},
  };
  const Matrix& reference = variants[0].weights;
  const Matrix reference_out = reference * V;
  std::cout << std::left << std::setw(36) << "variant" << std::setw(22) << "max |W - W_softmax|"
            << "max |out - out_softmax|\n";
  for (const auto& v : variants) {
    const Matrix out = v.weights * V;
    std::cout << std::setw(36) << v.name << std::setw(22) << std::scientific << std::setprecision(3)
              << (v.weights - reference).cwiseAbs().maxCoeff()
              << (out - reference_out).cwiseAbs().maxCoeff() << "\n";
  }
  std::cout
      << std::defaultfloat << "\n"
      << "PolynomialSoftmax reproduces softmax attention to ~1e-5; PowerSoftmax is another\n"
         "function (x^4 instead of exp): a model must be trained with it, as in the paper.\n\n";

  for (const auto& v : variants)
    print_rows(v.name, v.weights.topRows(3), 3);

  const sml::PolynomialCost cost = poly.cost(L);
  const sml::PolynomialCost cost_public = poly_public.cost(L);
  std::cout << "\ncost of the polynomial pipeline per attention row of " << L << " scores:\n"
            << "  row max:      " << cost.multiplications_per_element << " products + "
            << cost.constant_multiplications_per_element << " constant products per score, "
            << cost.reciprocal.multiplications << " products for the reciprocal ("
            << cost.reciprocal_iterations << " Goldschmidt iterations), depth " << cost.depth
            << "\n"
            << "  public bound: " << cost_public.multiplications_per_element << " + "
            << cost_public.constant_multiplications_per_element << " per score, "
            << cost_public.reciprocal.multiplications << " for the reciprocal ("
            << cost_public.reciprocal_iterations << " iterations: the sum may be as small as e^-"
            << poly_public.gap() << "), depth " << cost_public.depth << "\n";

  // Causal attention with PowerSoftmax's multiplicative mask: row i sees tokens 0..i.
  Matrix causal(L, L);
  for (Eigen::Index i = 0; i < L; ++i) {
    Eigen::VectorXf mask = Eigen::VectorXf::Zero(L);
    mask.head(i + 1).setOnes();
    power.apply_masked(scores.row(i), mask, causal.row(i));
  }
  std::cout << "\n";
  print_rows("PowerSoftmax p = 4, causal mask (apply_masked): future tokens get exactly 0",
             causal.topRows(4), 4);
  return 0;
}
