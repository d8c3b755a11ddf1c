// novel_classes: few-shot classification of unseen classes on the hypersphere. Synthetic
// embeddings cluster around class directions but have very different norms (as real embeddings
// do: the norm tracks confidence or image quality, not the class). Prints the accuracy of
// prototype classification by cosine (NormalizedSoftmax::prototypes / classify) against the same
// prototypes used with plain dot products, and one query's normalized-softmax logits and
// probabilities next to its dot-product logits.
#include <cstdio>
#include <random>

#include <softmaxlab/softmaxlab.hpp>

namespace sml = softmaxlab;
using Index = Eigen::Index;

int main() {
  const Index classes = 8, dims = 32, shots = 5, queries_per_class = 200;
  std::mt19937 rng(2102);
  std::normal_distribution<float> normal(0, 1);
  std::lognormal_distribution<float> norm(0.0f, 1.0f);  // norms spread over ~two decades

  // Unseen classes: random unit directions.
  Eigen::MatrixXf centers(classes, dims);
  for (Index c = 0; c < classes; ++c) {
    for (Index d = 0; d < dims; ++d)
      centers(c, d) = normal(rng);
    centers.row(c).normalize();
  }
  // Embedding = (direction of center + noise) * a norm unrelated to the class.
  auto draw = [&](Index per_class, Eigen::MatrixXf& x, Eigen::VectorXi& labels) {
    x.resize(classes * per_class, dims);
    labels.resize(classes * per_class);
    for (Index c = 0; c < classes; ++c) {
      for (Index i = 0; i < per_class; ++i) {
        const Index r = c * per_class + i;
        for (Index d = 0; d < dims; ++d)
          x(r, d) = centers(c, d) + 0.17f * normal(rng);
        x.row(r) *= norm(rng) / x.row(r).norm();
        labels(r) = static_cast<int>(c);
      }
    }
  };
  Eigen::MatrixXf support, queries;
  Eigen::VectorXi support_labels, query_labels;
  draw(shots, support, support_labels);
  draw(queries_per_class, queries, query_labels);
  std::printf("%ld unseen classes in %ld dims, %ld labelled shots each, %ld queries\n",
              static_cast<long>(classes), static_cast<long>(dims), static_cast<long>(shots),
              static_cast<long>(queries.rows()));
  std::printf("query norms: min %.3f, max %.3f\n\n", queries.rowwise().norm().minCoeff(),
              queries.rowwise().norm().maxCoeff());

  // Prototypes: normalized mean of the normalized shots. Classify by highest cosine.
  const Eigen::MatrixXf protos =
      sml::NormalizedSoftmax::prototypes(support, support_labels, classes);
  const auto by_cosine = sml::NormalizedSoftmax::classify(queries, protos);

  // The naive alternative: mean of the raw shots, highest dot product.
  Eigen::MatrixXf raw_means = Eigen::MatrixXf::Zero(classes, dims);
  for (Index r = 0; r < support.rows(); ++r)
    raw_means.row(support_labels(r)) += support.row(r) / static_cast<float>(shots);
  const Eigen::MatrixXf dots = queries * raw_means.transpose();

  Index correct_cos = 0, correct_dot = 0;
  for (Index r = 0; r < queries.rows(); ++r) {
    Index at;
    dots.row(r).maxCoeff(&at);
    correct_dot += at == query_labels(r);
    correct_cos += by_cosine(r) == query_labels(r);
  }
  const double acc_cos = double(correct_cos) / double(queries.rows());
  const double acc_dot = double(correct_dot) / double(queries.rows());
  std::printf("accuracy, cosine to normalized prototypes: %.4f\n", acc_cos);
  std::printf("accuracy, dot product with raw class means: %.4f\n", acc_dot);
  std::printf("(raw means are pulled toward the long shots, and dot products favour them)\n\n");

  // One query: normalized-softmax logits (s cos, s = 20) against plain dot products.
  const sml::NormalizedSoftmax ns(20);
  const Index q = 3;  // a query of class 0
  const Eigen::MatrixXf logits = ns.logits(queries.row(q), protos);
  const Eigen::MatrixXf probs = ns(queries.row(q), protos);
  const Eigen::RowVectorXf plain = queries.row(q) * raw_means.transpose();
  std::printf("query %ld (class %d, norm %.3f)\n", static_cast<long>(q), query_labels(q),
              queries.row(q).norm());
  std::printf("  class  s*cos      p(normalized softmax)  dot product\n");
  for (Index c = 0; c < classes; ++c) {
    std::printf("  %5ld  %8.4f   %.6f               %8.4f\n", static_cast<long>(c), logits(0, c),
                probs(0, c), plain(c));
  }
  std::printf(
      "  the normalized logits lie in [-20, 20] whatever the norms; the dot products scale\n"
      "  with |query| |mean|, so their softmax would be arbitrarily sharp or flat.\n");

  // With a CosFace margin at training time the target logit is lowered by s m.
  const sml::NormalizedSoftmax cosface(20, sml::Margin::cosface(0.35));
  const Eigen::VectorXi label = query_labels.segment(q, 1);
  std::printf("  CosFace m = 0.35 on the target: %.4f -> %.4f\n", logits(0, 0),
              cosface.logits(queries.row(q), protos, label)(0, 0));
  return acc_cos > 0.9 ? 0 : 1;
}
