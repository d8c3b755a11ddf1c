// train_classifier: trains a linear classifier on a synthetic dataset (Gaussian blobs) with plain
// Eigen and full-batch gradient descent, once per output head, printing the loss every few epochs
// and each head's test accuracy:
//   - softmax cross-entropy (CrossEntropyLoss, with label smoothing 0.05), logits = X W + b;
//   - normalized softmax with an ArcFace margin (NormalizedSoftmaxLoss) on a learned embedding;
//   - the L2-SVM output layer of GRU-SVM (L2SvmLoss: 0.5 ||W||^2 + C sum max(0, 1 - y o)^2).
// The library computes each loss and its gradient with respect to the head's input; the example
// chains it through the linear layer itself (dW = X^T dlogits, db = column sums).
#include <cmath>
#include <cstdio>
#include <random>

#include <softmaxlab/softmaxlab.hpp>

namespace sml = softmaxlab;
using Mat = Eigen::MatrixXd;
using Vec = Eigen::VectorXd;

namespace {

constexpr int kClasses = 4;
constexpr int kFeatures = 3;

struct Dataset {
  Mat x;              // N x D
  Eigen::VectorXi y;  // N class labels
};

// kClasses blobs with centers on a circle (radius 2.2) in the first two features, standard
// deviation 1 in every feature: the classes overlap, so no head reaches 100%.
Dataset make_blobs(int n, std::mt19937& gen) {
  std::normal_distribution<double> noise(0.0, 1.0);
  std::uniform_int_distribution<int> label(0, kClasses - 1);
  Dataset d{Mat(n, kFeatures), Eigen::VectorXi(n)};
  for (int i = 0; i < n; ++i) {
    const int c = label(gen);
    const double angle = 2.0 * 3.14159265358979 * c / kClasses;
    d.y(i) = c;
    for (int j = 0; j < kFeatures; ++j)
      d.x(i, j) = noise(gen);
    d.x(i, 0) += 2.2 * std::cos(angle);
    d.x(i, 1) += 2.2 * std::sin(angle);
  }
  return d;
}

Mat linear(const Mat& x, const Mat& w, const Vec& b) {
  Mat o = x * w;
  o.rowwise() += b.transpose();
  return o;
}

double accuracy(const Mat& scores, const Eigen::VectorXi& labels) {
  const Eigen::VectorXi predicted = sml::argmax_rows(scores);
  return 100.0 * (predicted.array() == labels.array()).cast<double>().mean();
}

}  // namespace

int main() {
  std::mt19937 gen(7);
  const Dataset train = make_blobs(600, gen);
  const Dataset test = make_blobs(400, gen);
  std::printf("Gaussian blobs: %d classes, %d features, %d training and %d test samples\n\n",
              kClasses, kFeatures, int(train.x.rows()), int(test.x.rows()));
  const int epochs = 200;

  // Head 1: softmax cross-entropy from logits (mean over the batch, label smoothing 0.05).
  double softmax_accuracy = 0;
  {
    const sml::CrossEntropyLoss ce(sml::Reduction::Mean, 0.05);
    Mat w = Mat::Zero(kFeatures, kClasses);
    Vec b = Vec::Zero(kClasses);
    Mat logits(train.x.rows(), kClasses), grad(train.x.rows(), kClasses);
    const double rate = 0.5;
    std::printf("softmax cross-entropy head (gradient descent, rate %.2f)\n", rate);
    for (int epoch = 0; epoch <= epochs; ++epoch) {
      logits = linear(train.x, w, b);
      const double loss = ce(logits, train.y, grad);  // grad = dloss/dlogits
      if (epoch % 40 == 0)
        std::printf("  epoch %3d  loss %.5f\n", epoch, loss);
      w -= rate * (train.x.transpose() * grad);
      b -= rate * grad.colwise().sum().transpose();
    }
    softmax_accuracy = accuracy(linear(test.x, w, b), test.y);
    std::printf("  test accuracy %.2f%%\n\n", softmax_accuracy);
  }

  // Head 2: normalized softmax with an ArcFace margin (NormalizedSoftmaxLoss): embeddings
  // E = X A + 1 c^T (a linear map into kEmbedding dimensions), class weights W, both trained;
  // the logits s cos(e_n, w_c) carry the margin on each target during training only.
  double arcface_accuracy = 0;
  {
    constexpr int kEmbedding = 4;
    const sml::NormalizedSoftmax head(/*scale=*/10.0, sml::Margin::arcface(0.3));
    const sml::NormalizedSoftmaxLoss loss_fn(head);
    std::mt19937 init(11);
    std::normal_distribution<double> small(0.0, 0.5);
    Mat a(kFeatures, kEmbedding), w(kClasses, kEmbedding);
    for (Eigen::Index i = 0; i < a.size(); ++i)
      a(i) = small(init);
    for (Eigen::Index i = 0; i < w.size(); ++i)
      w(i) = small(init);
    Vec c = Vec::Zero(kEmbedding);
    Mat de(train.x.rows(), kEmbedding), dw(kClasses, kEmbedding);
    const double rate = 0.5;
    std::printf("normalized softmax head, ArcFace margin 0.3, scale 10 (rate %.2f)\n", rate);
    for (int epoch = 0; epoch <= epochs; ++epoch) {
      const Mat e = linear(train.x, a, c);
      const double loss = loss_fn(e, w, train.y, de, dw);  // dE and dW through the normalization
      if (epoch % 40 == 0)
        std::printf("  epoch %3d  loss %.5f\n", epoch, loss);
      a -= rate * (train.x.transpose() * de);
      c -= rate * de.colwise().sum().transpose();
      w -= rate * dw;
    }
    // Inference: no margin, the class with the highest cosine.
    arcface_accuracy = accuracy(head.logits(linear(test.x, a, c), w), test.y);
    std::printf("  test accuracy %.2f%%\n\n", arcface_accuracy);
  }

  // Head 3: the L2-SVM layer (one-vs-rest squared hinge plus 0.5 ||W||^2, as in GRU-SVM).
  double svm_accuracy = 0;
  {
    const sml::L2SvmLoss svm(0.5);
    Mat w = Mat::Zero(kFeatures, kClasses), dw(kFeatures, kClasses);
    Vec b = Vec::Zero(kClasses), db(kClasses);
    const double rate = 1e-3;
    std::printf("L2-SVM head, penalty C = %.2f (gradient descent, rate %.0e)\n", svm.penalty(),
                rate);
    for (int epoch = 0; epoch <= epochs; ++epoch) {
      const double loss = svm(train.x, w, b, train.y, dw, db);  // dW includes the W term
      if (epoch % 40 == 0)
        std::printf("  epoch %3d  loss %.3f\n", epoch, loss);
      w -= rate * dw;
      b -= rate * db;
    }
    svm_accuracy = accuracy(linear(test.x, w, b), test.y);
    std::printf("  test accuracy %.2f%%\n\n", svm_accuracy);
  }

  std::printf(
      "test accuracy: softmax cross-entropy %.2f%%, normalized softmax + ArcFace %.2f%%, L2-SVM "
      "%.2f%% (chance 25%%)\n",
      softmax_accuracy, arcface_accuracy, svm_accuracy);
  // A sanity check that makes the example fail loudly if training broke.
  return softmax_accuracy > 60 && arcface_accuracy > 60 && svm_accuracy > 60 ? 0 : 1;
}
