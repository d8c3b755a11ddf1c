// Fine-tuning only the output layer of a classifier over a large vocabulary with
// sml::LinearCrossEntropy: the hidden states H of a frozen body are given, the classifier W and
// its bias b are trained by SGD from the fused loss's gradients. The N x V logits are never
// formed: the example prints the memory they would take next to the workspace actually used, and
// the loss at every step (it must fall; the program exits 1 otherwise).
#include <cstdio>
#include <random>
#include <vector>

#include <Eigen/Core>

#include <softmaxlab/linear_cross_entropy.hpp>

namespace sml = softmaxlab;
using Index = Eigen::Index;

int main() {
  const Index n = 256, d = 64, v = 20000;  // tokens per batch, hidden size, vocabulary
  std::mt19937 gen(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const auto random = [&](Index rows, Index cols, float scale) {
    Eigen::MatrixXf m(rows, cols);
    for (Index i = 0; i < m.size(); ++i)
      m(i) = scale * normal(gen);
    return m;
  };
  // A teacher head labels the tokens; the student starts from a noisy copy of it (a pretrained
  // head to adapt), with a bias of zeros.
  const Eigen::MatrixXf teacher = random(v, d, 0.5f);
  const Eigen::MatrixXf h = random(n, d, 1.0f);
  std::vector<int> labels(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) {
    Index best = 0;
    (teacher * h.row(i).transpose()).maxCoeff(&best);
    labels[static_cast<std::size_t>(i)] = static_cast<int>(best);
  }
  Eigen::MatrixXf w = teacher + random(v, d, 0.5f);
  Eigen::VectorXf b = Eigen::VectorXf::Zero(v);

  // Mean cross-entropy with a little label smoothing and a z-loss, as a training recipe would.
  const auto lce = sml::LinearCrossEntropy(sml::Reduction::Mean, 0.05).with_z_loss(1e-4);
  sml::LinearCrossEntropy::Workspace workspace;
  Eigen::MatrixXf dh(n, d), dw(v, d);
  Eigen::VectorXf db(v);
  const float lr = 20.0f;
  double first = 0, last = 0;
  for (int step = 0; step < 8; ++step) {
    last = lce(h, w, b, labels, dh, dw, db, sml::TokenOutputs().with_workspace(workspace));
    if (step == 0) {
      first = last;
      std::printf("N %ld tokens, d %ld, V %ld classes\n", static_cast<long>(n),
                  static_cast<long>(d), static_cast<long>(v));
      std::printf("materialized logits would take %.1f MB (and as much for their gradient)\n",
                  double(n) * double(v) * sizeof(float) / 1e6);
      std::printf("fused workspace: %.3f MB\n", double(workspace.bytes()) / 1e6);
    }
    std::printf("step %d: loss %.6f\n", step, last);
    w -= lr * dw;  // only the output layer learns; H (the body) stays frozen
    b -= lr * db;
  }
  if (!(last < first)) {
    std::printf("the loss did not fall\n");
    return 1;
  }
  return 0;
}
