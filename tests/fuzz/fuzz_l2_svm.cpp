// libFuzzer target: L2SvmLoss with an arbitrary penalty C, labels (in and out of range, wrong
// count), shapes (chaining or not) and float/double bit patterns. loss.hpp's contract: an invalid
// C, labels outside [0, K) and shapes that do not chain throw std::invalid_argument, and nothing
// else; hinge(o) = C sum max(0, 1 - y o)^2 >= 0 (NaN with a NaN output), its gradient
// d_o = -2 C y max(0, 1 - y o) (NaN at a NaN output; <= 0 at the target, >= 0 elsewhere), the same
// in place; the layer form gives 0.5 |W|^2 + hinge(X W + b) with dW = W + X^T d_o and
// db = sum_n d_o; predict is argmax_rows: -1 exactly for a row with a NaN (or no entries).
#include <vector>

#include <softmaxlab/loss.hpp>

#include "fuzz_common.hpp"

namespace {

using namespace softmaxlab_fuzz;
namespace sml = softmaxlab;

template <class Scalar>
void run(const sml::L2SvmLoss& svm, Bytes& bytes) {
  using Mat = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  using Vec = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  const double eps = std::numeric_limits<Scalar>::epsilon();
  const double c_pen = svm.penalty();
  const std::uint8_t options = bytes.take<std::uint8_t>();
  const Index n = bytes.take<std::uint8_t>() % 6;
  const Index k = bytes.take<std::uint8_t>() % 40;
  const Index d = bytes.take<std::uint8_t>() % 40;
  const bool raw = (options & 1) != 0;  // raw bits and edge values, else small numbers
  auto value = [&] {
    return raw ? bytes.scalar<Scalar>() : static_cast<Scalar>(bytes.take<std::int8_t>()) / 16;
  };

  const Index count = (options & 2) ? n + 1 - bytes.take<std::uint8_t>() % 3 : n;
  Eigen::VectorXi labels(count);
  bool labels_ok = count == n;
  for (Index i = 0; i < count; ++i) {
    const std::uint8_t b = bytes.take<std::uint8_t>();
    labels(i) = (b & 0x80) ? static_cast<int>(static_cast<std::int8_t>(b))
                           : (k > 0 ? b % static_cast<int>(k) : 0);
    labels_ok &= labels(i) >= 0 && labels(i) < k;
  }

  // hinge on outputs o.
  Mat o(n, k);
  for (Index j = 0; j < k; ++j)
    for (Index i = 0; i < n; ++i)
      o(i, j) = value();
  Mat d_o(n, k);
  double h = 0;
  const bool accepted = construct([&] { h = svm.hinge(o, labels, d_o); });
  expect(accepted == labels_ok, "labels outside [0, K) or of the wrong count throw");
  if (accepted) {
    long double ref = 0;
    bool nan = false;
    for (Index i = 0; i < n; ++i) {
      for (Index j = 0; j < k; ++j) {
        const double y = j == labels(i) ? 1.0 : -1.0;
        const double v = o(i, j);
        if (std::isnan(v)) {
          nan = true;
          expect(std::isnan(d_o(i, j)), "a NaN output gets a NaN gradient", j, d_o(i, j));
          continue;
        }
        const double margin = std::max(0.0, 1.0 - y * v);
        ref += static_cast<long double>(margin) * margin;
        const double want = -2.0 * c_pen * y * margin;
        expect(d_o(i, j) == static_cast<Scalar>(want), "d_o = -2 C y max(0, 1 - y o)", j,
               d_o(i, j));
        expect(y > 0 ? d_o(i, j) <= 0 : d_o(i, j) >= 0, "d_o's sign", j, d_o(i, j));
      }
    }
    const double h_only = svm.hinge(o, labels);
    Mat in_place = o;
    const double h_in_place = svm.hinge(in_place, labels, in_place);
    for (double other : {h_only, h_in_place})
      expect(other == h || (std::isnan(other) && std::isnan(h)), "every hinge form, the same", -1,
             other);
    for (Index i = 0; i < n; ++i)
      for (Index j = 0; j < k; ++j)
        expect(in_place(i, j) == d_o(i, j) || (std::isnan(in_place(i, j)) && std::isnan(d_o(i, j))),
               "in-place gradient", j, in_place(i, j));
    if (nan) {
      expect(std::isnan(h), "a NaN output makes the loss NaN", -1, h);
    } else {
      const long double want = c_pen * ref;
      expect(!std::isnan(h) && h >= 0, "hinge >= 0", -1, h);
      // (where the double accumulation of the squares cannot overflow)
      if (ref <= 0.25L * std::numeric_limits<double>::max()
          && want <= 0.25L * std::numeric_limits<double>::max())
        expect(std::fabs(h - static_cast<double>(want))
                   <= 4.0 * static_cast<double>(n * k + 2) * 0x1p-52 * static_cast<double>(want),
               "hinge = C sum max(0, 1 - y o)^2", -1, h);
    }
    // predict = argmax_rows.
    const Eigen::VectorXi pred = sml::L2SvmLoss::predict(o);
    expect(pred.size() == n, "predict length");
    for (Index i = 0; i < n; ++i) {
      bool row_nan = false;
      for (Index j = 0; j < k; ++j)
        row_nan |= std::isnan(o(i, j));
      if (row_nan || k == 0) {
        expect(pred(i) == -1, "predict: -1 for a NaN row", i, pred(i));
        continue;
      }
      expect(pred(i) >= 0 && pred(i) < k, "predict: a class", i, pred(i));
      for (Index j = 0; j < k; ++j) {
        expect(o(i, j) <= o(i, pred(i)), "predict: the largest", j, o(i, j));
        if (j < pred(i))
          expect(o(i, j) < o(i, pred(i)), "predict: the first of ties", j, o(i, j));
      }
    }
  }

  // The layer: X (n x d) W (d2 x k) b (k); d2 != d sometimes (must throw).
  const Index d2 = (options & 4) ? d + 1 : d;
  const Index kb = (options & 8) ? k + 1 : k;
  Mat x(n, d), wm(d2, k);
  Vec b(kb);
  for (Index j = 0; j < d; ++j)
    for (Index i = 0; i < n; ++i)
      x(i, j) = value();
  for (Index j = 0; j < k; ++j)
    for (Index i = 0; i < d2; ++i)
      wm(i, j) = value();
  for (Index j = 0; j < kb; ++j)
    b(j) = value();
  Mat dw(d2, k);
  Vec db(k);
  double layer = 0;
  const bool chained = construct([&] { layer = svm(x, wm, b, labels, dw, db); });
  expect(chained == (labels_ok && d2 == d && kb == k), "layer: shapes must chain");
  if (!chained)
    return;
  const double layer_only = svm(x, wm, b, labels);
  expect(layer_only == layer || (std::isnan(layer_only) && std::isnan(layer)), "layer forms agree",
         -1, layer_only);
  // Reference in double from the same outputs.
  Mat o2 = x * wm;
  for (Index j = 0; j < k; ++j)
    o2.col(j).array() += b(j);
  Mat d2o(n, k);
  const double h2 = svm.hinge(o2, labels, d2o);
  const double want = 0.5 * static_cast<double>(wm.squaredNorm()) + h2;
  expect(layer == want || (std::isnan(layer) && std::isnan(want)),
         "layer = 0.5 |W|^2 + hinge(X W + b)", -1, layer);
  if (!x.allFinite() || !wm.allFinite() || !b.allFinite() || raw)
    return;
  const Mat dw_want = wm + x.transpose() * d2o;
  const Vec db_want = d2o.colwise().sum().transpose();
  if (!d2o.allFinite() || !dw_want.allFinite() || !db_want.allFinite())
    return;  // a large C: the gradient itself overflows
  for (Index i = 0; i < d; ++i)
    for (Index j = 0; j < k; ++j)
      expect(std::fabs(dw(i, j) - dw_want(i, j))
                 <= 4 * eps * (n + 2)
                        * (std::fabs(wm(i, j))
                           + (x.col(i).cwiseAbs().transpose() * d2o.col(j).cwiseAbs())(0, 0)),
             "dW = W + X^T d_o", j, dw(i, j));
  for (Index j = 0; j < k; ++j)
    expect(std::fabs(db(j) - db_want(j)) <= 4 * eps * (n + 2) * d2o.col(j).cwiseAbs().sum(),
           "db = sum_n d_o", j, db(j));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Bytes bytes(data, size);
  const double penalty = bytes.parameter(1.0);
  std::optional<sml::L2SvmLoss> svm;
  const bool made = construct([&] { svm.emplace(penalty); });
  expect(made == (penalty > 0 && std::isfinite(penalty)), "penalty accepted iff finite and > 0", -1,
         penalty);
  if (!made)
    return 0;
  if (bytes.take<std::uint8_t>() & 1) {
    run<double>(*svm, bytes);
  } else {
    run<float>(*svm, bytes);
  }
  return 0;
}
