// libFuzzer target: CrossEntropyLoss with arbitrary reduction (valid or not), label smoothing,
// ignore_index, labels (in range, ignored, out of range, wrong count; Eigen and std::vector forms)
// or target distributions, shapes and float/double bit patterns for the logits. loss.hpp's
// contract: invalid parameters and labels throw std::invalid_argument, and nothing else; the loss
// equals -sum_k q_nk LogSoftmax(z_n)_k (0 log 0 = 0) reduced, so it is >= 0, NaN with a NaN logit
// in a counted row, +inf where a q > 0 meets a log-probability of -inf; the gradient has the
// logits' shape, its ignored rows are exactly 0, its NaN rows NaN, its other rows finite, within
// w (Softmax(z_n) sum_q - q_n) and summing to ~0 (unless the row is all masked); the in-place and
// expression forms give the same loss.
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include <softmaxlab/loss.hpp>

#include "fuzz_common.hpp"

namespace {

using namespace softmaxlab_fuzz;
namespace sml = softmaxlab;

template <class Scalar>
void run(const sml::CrossEntropyLoss& ce, Bytes& bytes) {
  using Mat = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  using RowMajor = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Vec = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  const double eps = std::numeric_limits<Scalar>::epsilon();
  const Scalar inf = std::numeric_limits<Scalar>::infinity();
  const std::uint8_t options = bytes.take<std::uint8_t>();
  const Index rows = bytes.take<std::uint8_t>() % 6;
  const Index classes = bytes.take<std::uint16_t>() % 400;
  Mat z(rows, classes);
  fill(bytes, z);
  const double smoothing = ce.label_smoothing();
  const double uniform = classes > 0 ? smoothing / static_cast<double>(classes) : 0.0;

  // Targets: labels or a distribution matrix, and the q_nk they stand for.
  const bool use_labels = (options & 1) == 0;
  Eigen::VectorXi labels;
  Mat t(rows, classes);
  Eigen::MatrixXd q = Eigen::MatrixXd::Zero(rows, classes);
  std::vector<char> counted(static_cast<std::size_t>(rows), 1);
  bool labels_ok = true;
  if (use_labels) {
    const Index count = (options & 2) ? rows + 1 - bytes.take<std::uint8_t>() % 3 : rows;
    labels.resize(count);
    labels_ok = count == rows;
    for (Index n = 0; n < count; ++n) {
      const std::uint8_t raw = bytes.take<std::uint8_t>();
      labels(n) = (raw & 0x80) ? ((raw & 0x40) ? static_cast<int>(ce.ignore_index())
                                               : static_cast<int>(static_cast<std::int8_t>(raw)))
                               : (classes > 0 ? raw % static_cast<int>(classes) : 0);
      const bool ignored = labels(n) == ce.ignore_index();
      labels_ok &= ignored || (labels(n) >= 0 && labels(n) < classes);
      if (n < rows) {
        counted[static_cast<std::size_t>(n)] = !ignored;
        for (Index k = 0; k < classes && !ignored; ++k)
          q(n, k) = (k == labels(n) ? 1.0 - smoothing : 0.0) + uniform;
      }
    }
  } else {
    for (Index n = 0; n < rows; ++n) {
      double total = 0;
      for (Index k = 0; k < classes; ++k) {
        t(n, k) = static_cast<Scalar>(bytes.take<std::uint8_t>() % 4);
        total += t(n, k);
      }
      for (Index k = 0; k < classes; ++k)
        t(n, k) = total > 0 ? static_cast<Scalar>(t(n, k) / total) : Scalar(0);
    }
    for (Index n = 0; n < rows; ++n)
      for (Index k = 0; k < classes; ++k)
        q(n, k) = (1 - smoothing) * static_cast<double>(t(n, k)) + uniform;
  }

  // The loss with its gradient into a separate matrix; then the loss alone, in place, expression.
  Mat grad(rows, classes);
  double loss = 0;
  const bool accepted =
      construct([&] { loss = use_labels ? ce(z, labels, grad) : ce(z, t, grad); });
  expect(accepted == labels_ok, "labels outside [0, C) (not ignored) or of the wrong count throw");
  if (!accepted) {
    expect(!construct([&] { (void)ce(z, labels); }), "the loss-only form throws as well");
    return;
  }
  const double loss_only = use_labels ? ce(z, labels) : ce(z, t);
  Mat in_place = z;
  const double loss_in_place =
      use_labels ? ce(in_place, labels, in_place) : ce(in_place, t, in_place);
  Mat from_expression(rows, classes);
  const double loss_expression = use_labels ? ce(z * Scalar(1), labels, from_expression)
                                            : ce(z * Scalar(1), t, from_expression);
  const RowMajor zr = z;
  const double loss_row_major = use_labels ? ce(zr, labels) : ce(zr, RowMajor(t));
  // The forms take different kernel paths (strided or contiguous rows, terms kept or not), so they
  // agree within the rounding of the loss, not bitwise.
  const auto same = [&](double a, double b) {
    return a == b || (std::isnan(a) && std::isnan(b))
           || std::fabs(a - b) <= 16 * eps * (static_cast<double>(rows) + 1 + std::fabs(b));
  };
  for (double other : {loss_only, loss_in_place, loss_expression, loss_row_major})
    expect(same(other, loss), "every form, the same loss", -1, other);
  if (use_labels) {
    std::vector<int> as_vector(labels.data(), labels.data() + labels.size());
    const double l = ce(z, as_vector);
    expect(l == loss_only || (std::isnan(l) && std::isnan(loss)), "std::vector labels", -1, l);
  }

  // The reference: LogSoftmax rows, in long double.
  Index n_counted = 0;
  for (Index n = 0; n < rows; ++n)
    n_counted += counted[static_cast<std::size_t>(n)];
  const bool mean = ce.reduction() == sml::Reduction::Mean;
  const double w =
      mean ? (use_labels ? (n_counted > 0 ? 1.0 / n_counted : 1.0) : (rows > 0 ? 1.0 / rows : 1.0))
           : 1.0;
  long double ref = 0, tol = 0;
  bool ref_nan = false;
  for (Index n = 0; n < rows; ++n) {
    if (!counted[static_cast<std::size_t>(n)] || classes == 0)
      continue;
    const Vec zn = z.row(n).transpose();
    // Float logits: the exact log-softmax in long double where the row max is finite (the
    // library takes the losses' log-probabilities in double, so a float LogSoftmax would be the
    // less exact of the two). Double logits, and rows with NaN, all -inf or +inf: LogSoftmax, whose
    // rules the loss follows (a difference beyond DBL_MAX is -inf).
    const Vec lsm_scalar = sml::LogSoftmax()(zn);
    std::vector<long double> lsm(static_cast<std::size_t>(classes));
    long double row_max = -INFINITY;
    for (Index k = 0; k < classes; ++k)
      row_max = std::max<long double>(row_max, zn(k));
    long double row_sum = 0;
    if (std::isfinite(row_max)) {
      for (Index k = 0; k < classes; ++k)
        row_sum += std::exp(static_cast<long double>(zn(k)) - row_max);
    }
    for (Index k = 0; k < classes; ++k) {
      lsm[static_cast<std::size_t>(k)] =
          std::is_same_v<Scalar, float> && std::isfinite(row_max) && !std::isnan(zn(k))
              ? static_cast<long double>(zn(k)) - row_max - std::log(row_sum)
              : static_cast<long double>(lsm_scalar(k));
    }
    const Vec p = sml::Softmax()(zn);
    bool row_nan = false, all_masked = true;
    long double sum_q_exact = 0;
    for (Index k = 0; k < classes; ++k) {
      row_nan |= std::isnan(zn(k));
      all_masked &= zn(k) == -inf;
      sum_q_exact += q(n, k);
    }
    // Labels: q sums to exactly 1 ((1 - eps) + C eps / C).
    const double sum_q = use_labels ? 1.0 : static_cast<double>(sum_q_exact);
    ref_nan |= row_nan;
    for (Index k = 0; k < classes; ++k) {
      const double qk = q(n, k);
      if (qk != 0) {
        const long double lk = lsm[static_cast<std::size_t>(k)];
        ref -= static_cast<long double>(qk) * lk;
        tol += 8 * eps * qk * (1 + std::fabs(static_cast<double>(lk)));
      }
      const double g = grad(n, k);
      if (row_nan) {
        expect(std::isnan(g), "a NaN logit makes the gradient row NaN", k, g);
        continue;
      }
      expect(std::isfinite(g), "the gradient of a row without NaN is finite", k, g);
      const double want = w * (static_cast<double>(p(k)) * sum_q - qk);
      expect(
          std::fabs(g - want) <= w * (16 * eps * (1 + sum_q) + 1e-300) + 4 * eps * std::fabs(want),
          "gradient = w (softmax sum_q - q)", k, g);
    }
    if (!row_nan && !all_masked) {
      double sum = 0, scale = 0;
      for (Index k = 0; k < classes; ++k) {
        sum += grad(n, k);
        scale += std::fabs(grad(n, k));
      }
      const double policy = std::is_same_v<Scalar, float> ? 2e-6 : 1e-12;
      expect(std::fabs(sum) <= w * sum_q * (policy + (classes + 8) * 4 * eps) + 4 * eps * scale
                                   + static_cast<double>(classes + 1)
                                         * std::numeric_limits<Scalar>::denorm_min(),
             "a gradient row sums to 0", n, sum);
    }
  }
  for (Index n = 0; n < rows; ++n) {
    if (counted[static_cast<std::size_t>(n)])
      continue;
    for (Index k = 0; k < classes; ++k)
      expect(grad(n, k) == 0, "an ignored row gets a zero gradient", n, grad(n, k));
  }
  // Sum of the rows' losses before the reduction's weight: the library accumulates it in double,
  // so past ~DBL_MAX it may overflow to +inf even where the mean is finite.
  const bool in_range = ref <= 0.25L * std::numeric_limits<double>::max();
  ref *= w;
  tol *= w;
  if (ref_nan) {
    expect(std::isnan(loss), "a NaN logit makes the loss NaN", -1, loss);
    return;
  }
  expect(!std::isnan(loss) && loss >= 0, "the loss is >= 0", -1, loss);
  if (!in_range)
    return;
  if (std::isinf(static_cast<double>(ref))) {
    expect(loss == static_cast<double>(ref), "an infinite loss where q > 0 meets log p = -inf", -1,
           loss);
    return;
  }
  // (plus the double accumulation of the terms)
  const double accumulation = 4.0 * static_cast<double>(rows * classes + 1) * 0x1p-52;
  expect(std::fabs(loss - static_cast<double>(ref))
             <= static_cast<double>(tol) + accumulation * static_cast<double>(ref) + 1e-300,
         "loss = -sum q log_softmax", -1, loss);
  if (use_labels && n_counted == 0 && mean)
    expect(loss == 0, "Mean over no counted sample is 0", -1, loss);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Bytes bytes(data, size);
  const std::uint8_t reduction = bytes.take<std::uint8_t>();
  const double smoothing = bytes.parameter(0.0);
  const long ignore_index = (reduction & 0x80) ? bytes.take<std::int8_t>() : -100;
  std::optional<sml::CrossEntropyLoss> ce;
  const auto r = static_cast<sml::Reduction>((reduction & 0x40) ? reduction : reduction & 1);
  const bool valid =
      (r == sml::Reduction::Mean || r == sml::Reduction::Sum) && smoothing >= 0 && smoothing < 1;
  const bool made = construct([&] { ce.emplace(r, smoothing, ignore_index); });
  expect(made == valid, "reduction and label_smoothing in [0, 1) accepted exactly", -1, smoothing);
  if (!made)
    return 0;
  if (bytes.take<std::uint8_t>() & 1) {
    run<double>(*ce, bytes);
  } else {
    run<float>(*ce, bytes);
  }
  return 0;
}
