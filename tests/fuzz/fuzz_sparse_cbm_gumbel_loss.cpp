// libFuzzer target: SparseCbmGumbelLoss with an arbitrary tau, generator seed (Philox4x32),
// shapes and float/double bit patterns. loss.hpp's contract: an invalid tau throws
// std::invalid_argument (and nothing else); the same generator state gives the same loss with and
// without the gradient (and in place); for finite logits the loss is finite and >= 0 and the
// gradient (K y - 1) / (N K tau) is finite (moderate tau) with rows summing to ~0; a -inf logit
// makes the loss +inf, a NaN one NaN.
#include <softmaxlab/loss.hpp>
#include <softmaxlab/random.hpp>

#include "fuzz_common.hpp"

namespace {

using namespace softmaxlab_fuzz;
namespace sml = softmaxlab;

template <class Scalar>
void run(const sml::SparseCbmGumbelLoss& cbm, std::uint64_t seed, Bytes& bytes) {
  using Mat = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  const Scalar inf = std::numeric_limits<Scalar>::infinity();
  const double eps = std::numeric_limits<Scalar>::epsilon();
  const Index n = bytes.take<std::uint8_t>() % 5;
  const Index k = bytes.take<std::uint16_t>() % 600;
  Mat x(n, k);
  fill(bytes, x);
  sml::Philox4x32 g1(seed), g2(seed), g3(seed);
  const double l = cbm(x, g1);
  Mat grad(n, k);
  const double lg = cbm(x, g2, grad);
  Mat in_place = x;
  const double li = cbm(in_place, g3, in_place);
  // The forms write the perturbed row contiguously or strided (different kernel paths): the same
  // loss within its rounding, not bitwise.
  for (double other : {lg, li})
    expect(other == l || (std::isnan(other) && std::isnan(l))
               || std::fabs(other - l) <= 16 * eps * (1 + std::fabs(l)),
           "every form, the same loss", -1, other);
  bool nan = false, minus_inf = false, finite = true;
  for (Index i = 0; i < n; ++i)
    for (Index j = 0; j < k; ++j) {
      nan |= std::isnan(x(i, j));
      minus_inf |= x(i, j) == -inf;
      // (x + g must not overflow: the noise g is at most ~100 in magnitude, so logits within half
      // the range are "finite" for the promise; nearer +-max the perturbed logit may be +-inf)
      finite &=
          std::isfinite(x(i, j)) && std::fabs(x(i, j)) <= std::numeric_limits<Scalar>::max() / 2;
    }
  if (nan) {
    expect(std::isnan(l), "a NaN logit makes the loss NaN", -1, l);
    return;
  }
  if (x.size() == 0) {
    expect(l == 0, "empty logits: loss 0", -1, l);
    return;
  }
  if (minus_inf) {
    expect(l == std::numeric_limits<double>::infinity(), "a -inf logit makes the loss +inf", -1, l);
    return;
  }
  // The promise of a finite loss holds where the perturbed logits' spread over tau fits the
  // scalar type (the log-probabilities (x + g - m) / tau are formed in it); the noise is < 100.
  double spread = 0;
  for (Index i = 0; i < n && finite; ++i)
    for (Index j = 0; j < k; ++j)
      spread = std::max(spread, std::fabs(static_cast<double>(x(i, j))));
  // (and the sum of the N K terms, accumulated in double before the mean, does not overflow)
  const double bound = (2 * spread + 200) / cbm.tau();
  if (!finite || bound > 0.5 * std::numeric_limits<Scalar>::max()
      || bound * static_cast<double>(x.size()) > 0.5 * std::numeric_limits<double>::max())
    return;
  expect(std::isfinite(l) && l >= 0, "finite logits: finite loss >= 0", -1, l);
  for (Index i = 0; i < n; ++i)
    for (Index j = 0; j < k; ++j)
      expect(std::fabs(in_place(i, j) - grad(i, j))
                 <= 16 * eps
                        * (std::fabs(grad(i, j)) + 1 / (static_cast<double>(x.size()) * cbm.tau())),
             "in-place gradient", j, in_place(i, j));
  const double tau = cbm.tau();
  const double w = 1.0 / static_cast<double>(n * k);
  if (!(w * static_cast<double>(k) / tau < 0.01 * std::numeric_limits<Scalar>::max()))
    return;  // the gradient itself overflows
  for (Index i = 0; i < n; ++i) {
    double sum = 0, scale = 0;
    for (Index j = 0; j < k; ++j) {
      const double v = grad(i, j);
      expect(std::isfinite(v), "finite logits: finite gradient", j, v);
      expect(v >= -w / tau * (1 + 4 * eps)
                 && v <= w * (static_cast<double>(k) - 1) / tau * (1 + 4 * eps)
                             + w / tau * 4 * eps * static_cast<double>(k),
             "gradient within [-w / tau, w (K - 1) / tau]", j, v);
      sum += v;
      scale += std::fabs(v);
    }
    const double policy = std::is_same_v<Scalar, float> ? 2e-6 : 1e-12;
    expect(std::fabs(sum)
               <= (policy * static_cast<double>(k) + 8 * eps * static_cast<double>(k + 4)) * w / tau
                      + 4 * eps * scale,
           "a gradient row sums to 0", i, sum);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Bytes bytes(data, size);
  const double tau = bytes.parameter(1.0);
  const std::uint64_t seed = bytes.take<std::uint64_t>();
  std::optional<sml::SparseCbmGumbelLoss> cbm;
  if (!construct([&] { cbm.emplace(tau); }))
    return 0;
  if (bytes.take<std::uint8_t>() & 1) {
    run<double>(*cbm, seed, bytes);
  } else {
    run<float>(*cbm, seed, bytes);
  }
  return 0;
}
