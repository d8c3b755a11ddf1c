// libFuzzer target: NormalizedSoftmaxLoss with an arbitrary head (scale, margin), reduction, label
// smoothing, labels (in and out of range, wrong count; Eigen and std::vector forms), shapes and
// float/double bit patterns for E (N x D) and W (C x D). loss.hpp's contract: invalid parameters,
// labels and gradient shapes throw std::invalid_argument, and nothing else; the loss is
// CrossEntropyLoss of head.logits(E, W, labels) (the same number), so it is >= 0 or NaN; the form
// with gradients gives the same loss and dE, dW of E's and W's shapes, exactly the head's
// logits_backward of the cross-entropy gradient: zero rows 0, non-finite rows NaN, finite where
// every input is finite and of moderate norm.
#include <vector>

#include <softmaxlab/loss.hpp>

#include "fuzz_common.hpp"

namespace {

using namespace softmaxlab_fuzz;
namespace sml = softmaxlab;

template <class Mat>
void fill_rows(Bytes& bytes, Mat& m) {
  using Scalar = typename Mat::Scalar;
  for (Index i = 0; i < m.rows(); ++i) {
    const std::uint8_t how = bytes.take<std::uint8_t>();
    for (Index j = 0; j < m.cols(); ++j)
      m(i, j) = how % 4 == 0   ? Scalar(0)
                : how % 4 == 1 ? static_cast<Scalar>(bytes.take<std::int8_t>())
                               : bytes.scalar<Scalar>();
  }
}

template <class Scalar>
void run(const sml::NormalizedSoftmaxLoss& loss, const sml::CrossEntropyLoss& ce, Bytes& bytes) {
  using Mat = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  const Index n = bytes.take<std::uint8_t>() % 6;
  const Index c = bytes.take<std::uint8_t>() % 9;
  const Index d = bytes.take<std::uint8_t>() % 40;
  Mat e(n, d), w(c, d);
  fill_rows(bytes, e);
  fill_rows(bytes, w);
  const std::uint8_t options = bytes.take<std::uint8_t>();
  const Index count = (options & 1) ? n + 1 - bytes.take<std::uint8_t>() % 3 : n;
  Eigen::VectorXi labels(count);
  bool labels_ok = count == n;
  for (Index i = 0; i < count; ++i) {
    const std::uint8_t b = bytes.take<std::uint8_t>();
    labels(i) = (b & 0x80) ? static_cast<int>(static_cast<std::int8_t>(b))
                           : (c > 0 ? b % static_cast<int>(c) : 0);
    labels_ok &= labels(i) >= 0 && labels(i) < c;
  }
  double l = 0;
  const bool accepted = construct([&] { l = loss(e, w, labels); });
  expect(accepted == labels_ok, "labels outside [0, C) or of the wrong count throw");
  if (!accepted)
    return;
  const double want = ce(loss.head().logits(e, w, labels), labels);
  expect(l == want || (std::isnan(l) && std::isnan(want)), "loss = ce(head.logits)", -1, l);
  expect(std::isnan(l) || l >= 0, "loss >= 0", -1, l);
  const std::vector<int> as_vector(labels.data(), labels.data() + labels.size());
  const double lv = loss(e, w, as_vector);
  expect(lv == l || (std::isnan(lv) && std::isnan(l)), "std::vector labels", -1, lv);

  // Gradients: a wrong shape throws; the right ones match the head's backward.
  if (options & 2) {
    Mat bad(n, d + 1), dw(c, d);
    expect(!construct([&] { (void)loss(e, w, labels, bad, dw); }), "dE of a wrong shape throws");
  }
  Mat de(n, d), dw(c, d);
  const double lg = loss(e, w, labels, de, dw);
  expect(lg == l || (std::isnan(lg) && std::isnan(l)), "the gradient form gives the same loss", -1,
         lg);
  auto z = loss.head().logits(e, w, labels);
  (void)ce(z, labels, z);
  const auto grads = loss.head().logits_backward(e, w, labels, z);
  for (Index i = 0; i < n; ++i)
    for (Index j = 0; j < d; ++j)
      expect(
          de(i, j) == grads.first(i, j) || (std::isnan(de(i, j)) && std::isnan(grads.first(i, j))),
          "dE is the head's backward of the cross-entropy gradient", i, de(i, j));
  for (Index k = 0; k < c; ++k)
    for (Index j = 0; j < d; ++j)
      expect(dw(k, j) == grads.second(k, j)
                 || (std::isnan(dw(k, j)) && std::isnan(grads.second(k, j))),
             "dW is the head's backward of the cross-entropy gradient", k, dw(k, j));
  // Finite where nothing can overflow.
  bool moderate =
      loss.head().scale() <= 1e4 && loss.head().margin().kind != sml::Margin::Kind::ArcFace;
  for (Index i = 0; i < n; ++i) {
    const double norm = row_norm(e, i);
    moderate &= norm == 0 || (norm >= 1e-6 && norm <= 1e6);
  }
  for (Index k = 0; k < c; ++k) {
    const double norm = row_norm(w, k);
    moderate &= norm == 0 || (norm >= 1e-6 && norm <= 1e6);
  }
  if (moderate) {
    expect(std::isfinite(l), "finite inputs of moderate norm: finite loss", -1, l);
    for (Index i = 0; i < n; ++i)
      for (Index j = 0; j < d; ++j)
        expect(std::isfinite(de(i, j)), "finite dE", i, de(i, j));
    for (Index k = 0; k < c; ++k)
      for (Index j = 0; j < d; ++j)
        expect(std::isfinite(dw(k, j)), "finite dW", k, dw(k, j));
  }
  for (Index i = 0; i < n; ++i) {
    bool zero = true;
    for (Index j = 0; j < d; ++j)
      zero &= e(i, j) == 0;
    for (Index j = 0; j < d && zero; ++j)
      expect(de(i, j) == 0, "a zero embedding gets a zero gradient", i, de(i, j));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Bytes bytes(data, size);
  const double scale = bytes.parameter(16.0);
  const std::uint8_t kind = bytes.take<std::uint8_t>();
  const double m = bytes.parameter(0.25 * (kind >> 5));
  const double smoothing = bytes.parameter(0.0);
  const sml::Margin margin = margin_from(kind, m);
  const auto reduction = (kind & 4) ? sml::Reduction::Sum : sml::Reduction::Mean;
  std::optional<sml::NormalizedSoftmaxLoss> loss;
  if (!construct(
          [&] { loss.emplace(sml::NormalizedSoftmax(scale, margin), reduction, smoothing); }))
    return 0;
  const sml::CrossEntropyLoss ce(reduction, smoothing);
  if (bytes.take<std::uint8_t>() & 1) {
    run<double>(*loss, ce, bytes);
  } else {
    run<float>(*loss, ce, bytes);
  }
  return 0;
}
