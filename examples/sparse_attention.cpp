// sparse_attention: the attention weights of softmax, sparsemax and 1.5-entmax over the same
// scores, side by side with their supports (how many keys each query really reads), then a small
// linear classifier trained twice on the same synthetic data, with the 1.5-entmax loss
// (EntmaxLoss) and with cross-entropy (CrossEntropyLoss), printing the losses, the test
// accuracies and how sparse the entmax head's predicted distributions are.
#include <cmath>
#include <cstdio>
#include <random>
#include <type_traits>

#include <softmaxlab/softmaxlab.hpp>

namespace sml = softmaxlab;
using Mat = Eigen::MatrixXd;
using Vec = Eigen::VectorXd;

namespace {

void print_row(const char* label, const Vec& v) {
  std::printf("  %-10s", label);
  for (Eigen::Index i = 0; i < v.size(); ++i)
    std::printf(" %6.3f", v(i));
  std::printf("   support %ld/%ld\n", static_cast<long>((v.array() > 0).count()),
              static_cast<long>(v.size()));
}

// Attention scores q.k / sqrt(d) of 2 queries over 10 keys (d = 16, Gaussian vectors).
void attention_weights() {
  std::mt19937 gen(7);
  std::normal_distribution<double> normal(0.0, 1.0);
  const int d = 16, keys = 10;
  Mat q(2, d), k(keys, d);
  for (Eigen::Index i = 0; i < q.size(); ++i)
    q(i) = normal(gen);
  for (Eigen::Index i = 0; i < k.size(); ++i)
    k(i) = normal(gen);
  const Mat scores = q * k.transpose() / std::sqrt(static_cast<double>(d));
  for (Eigen::Index r = 0; r < scores.rows(); ++r) {
    const Vec s = scores.row(r).transpose();
    std::printf("query %ld: scores", static_cast<long>(r));
    for (Eigen::Index i = 0; i < s.size(); ++i)
      std::printf(" %6.2f", s(i));
    std::printf("\n");
    print_row("softmax", sml::Softmax()(s));
    print_row("sparsemax", sml::Sparsemax()(s));
    print_row("entmax15", sml::Entmax15()(s));
  }
}

constexpr int kClasses = 5;
constexpr int kFeatures = 4;

struct Dataset {
  Mat x;
  Eigen::VectorXi y;
};

// Gaussian blobs on a circle of radius 2.5 in the first two features: overlapping classes.
Dataset make_blobs(int n, std::mt19937& gen) {
  std::normal_distribution<double> noise(0.0, 1.0);
  std::uniform_int_distribution<int> label(0, kClasses - 1);
  Dataset data{Mat(n, kFeatures), Eigen::VectorXi(n)};
  for (int i = 0; i < n; ++i) {
    const int c = label(gen);
    const double angle = 2.0 * 3.14159265358979 * c / kClasses;
    data.y(i) = c;
    for (int j = 0; j < kFeatures; ++j)
      data.x(i, j) = noise(gen);
    data.x(i, 0) += 2.5 * std::cos(angle);
    data.x(i, 1) += 2.5 * std::sin(angle);
  }
  return data;
}

// Full-batch gradient descent on logits = X W + b with the given loss (any softmaxlab loss with the
// (logits, labels, grad) form); returns the test accuracy (argmax of the logits).
template <class Loss>
double train(const char* name, const Loss& loss, const Dataset& train_set,
             const Dataset& test_set) {
  Mat w = Mat::Zero(kFeatures, kClasses);
  Vec b = Vec::Zero(kClasses);
  Mat logits(train_set.x.rows(), kClasses), grad(train_set.x.rows(), kClasses);
  const double rate = 0.5;
  for (int epoch = 0; epoch <= 200; ++epoch) {
    logits = train_set.x * w;
    logits.rowwise() += b.transpose();
    const double l = loss(logits, train_set.y, grad);  // Mean reduction: grad is already / N
    w -= rate * train_set.x.transpose() * grad;
    b -= rate * grad.colwise().sum().transpose();
    if (epoch % 50 == 0)
      std::printf("  %-14s epoch %3d  loss %.4f\n", name, epoch, l);
  }
  Mat test_logits = test_set.x * w;
  test_logits.rowwise() += b.transpose();
  const Eigen::VectorXi predicted = sml::argmax_rows(test_logits);
  const double accuracy = (predicted.array() == test_set.y.array()).cast<double>().mean();
  if constexpr (std::is_same_v<Loss, sml::EntmaxLoss>) {
    const Mat p = sml::Entmax15().rowwise(test_logits);
    std::printf("  %-14s mean support of the predicted distributions: %.2f of %d classes\n", name,
                (p.array() > 0).cast<double>().rowwise().sum().mean(), kClasses);
  }
  return accuracy;
}

}  // namespace

int main() {
  std::printf("Attention weights over the same scores:\n");
  attention_weights();

  std::printf("\nA linear classifier, %d classes, trained with each loss:\n", kClasses);
  std::mt19937 gen(42);
  const Dataset train_set = make_blobs(600, gen), test_set = make_blobs(400, gen);
  const double acc_entmax = train("entmax-1.5", sml::EntmaxLoss(1.5), train_set, test_set);
  const double acc_ce = train("cross-entropy", sml::CrossEntropyLoss(), train_set, test_set);
  std::printf("test accuracy: entmax-1.5 loss %.1f%%, cross-entropy %.1f%%\n", 100 * acc_entmax,
              100 * acc_ce);
  // Both heads must learn the blobs (chance is 20%); a failure exits non-zero for ctest.
  return acc_entmax > 0.6 && acc_ce > 0.6 ? 0 : 1;
}
