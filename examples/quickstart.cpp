// quickstart: the first five minutes with softmaxlab. Prints a softmax, its log form, a temperature
// sweep, masking, and a batch of rows, each with what it shows.
#include <iostream>
#include <limits>

#include <softmaxlab/softmaxlab.hpp>

namespace sml = softmaxlab;

int main() {
  Eigen::IOFormat row(4, 0, ", ", "\n", "[", "]");
  Eigen::VectorXf logits(5);
  logits << 2.0f, 1.0f, 0.1f, -1.0f, 3.5f;

  const sml::Softmax softmax;  // temperature 1
  const Eigen::VectorXf p = softmax(logits);
  std::cout << "logits              " << logits.transpose().format(row) << "\n";
  std::cout << "softmax             " << p.transpose().format(row) << "  (sum " << p.sum() << ")\n";
  std::cout << "log_softmax         " << sml::LogSoftmax()(logits).transpose().format(row)
            << "\n\n";

  std::cout << "temperature: low T sharpens, high T flattens\n";
  for (double t : {0.25, 1.0, 4.0}) {
    std::cout << "  T = " << t << (t < 1 ? "         " : "          ")
              << sml::Softmax(t)(logits).transpose().format(row) << "\n";
  }

  std::cout << "\nmasking: a -inf logit gets exactly zero probability\n";
  Eigen::VectorXf masked = logits;
  masked(4) = -std::numeric_limits<float>::infinity();
  std::cout << "  softmax           " << softmax(masked).transpose().format(row) << "\n";

  std::cout << "\nbatches: each row of a matrix is one distribution (no allocation with apply)\n";
  Eigen::MatrixXf scores(3, 4);
  scores << 1, 2, 3, 4,  //
      0, 0, 0, 0,        //
      10, -10, 5, 5;
  Eigen::MatrixXf probs(3, 4);
  softmax.rowwise(scores, probs);
  std::cout << probs.format(row) << "\n  row sums " << probs.rowwise().sum().transpose().format(row)
            << "\n";

  std::cout << "\nbad parameters throw std::invalid_argument:\n  ";
  try {
    sml::Softmax bad(0.0);
  } catch (const std::invalid_argument& e) {
    std::cout << e.what() << "\n";
  }
  return 0;
}
