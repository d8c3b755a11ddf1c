// Edge shapes for the training API and the functors without the DistributionFunctor interface:
// OnlineNormalizer, the backward passes of every variant, the losses, NormalizedSoftmax and
// SurfaceFusion. Shapes: zero elements, zero rows or columns, one element / one class / one row /
// one feature, strided inputs and outputs, in place, row- and column-major storage; the forms
// documented as allocation-free are checked with AllocationGuard.
//
// Layout agreement: code that runs the same operations on every layout must agree bit for bit
// (PowerSoftmax and PolynomialSoftmax backward: scalar loops; the losses and SurfaceFusion: strided
// rows staged through the same kernels). The softmax-type backward passes (Softmax,
// SinglePassSoftmax, GumbelSoftmax, LogSoftmax) reduce <dy, y> (or sum dy) with Eigen, vectorized
// on contiguous rows and not on strided ones, so the summation order differs: there the layouts
// are held to twice the documented per-entry accuracy of softmax.hpp (8 eps max|dy| max|y| / T,
// log form 8 eps (|dy_i| + max|dy|) / T), not to exact equality.
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>

#include <softmaxlab/fusion.hpp>
#include <softmaxlab/gumbel.hpp>
#include <softmaxlab/loss.hpp>
#include <softmaxlab/normalized.hpp>
#include <softmaxlab/polynomial.hpp>
#include <softmaxlab/power.hpp>
#include <softmaxlab/random.hpp>
#include <softmaxlab/single_pass.hpp>
#include <softmaxlab/softmax.hpp>

#include "support.hpp"

namespace sml = softmaxlab;
using softmaxlab_test::same;
using Index = Eigen::Index;
using softmaxlab_test::AllocationGuard;

namespace {

template <class S>
using Col = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;
template <class S>
using Row = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class S>
using Vec = Eigen::Matrix<S, Eigen::Dynamic, 1>;

template <class S>
Col<S> varied(Index rows, Index cols, double phase = 0) {
  Col<S> m(rows, cols);
  for (Index j = 0; j < cols; ++j)
    for (Index i = 0; i < rows; ++i)
      m(i, j) = static_cast<S>(
          4 * std::sin(0.71 * static_cast<double>(i) + 1.3 * static_cast<double>(j) + phase));
  return m;
}

}  // namespace

// ---- OnlineNormalizer ------------------------------------------------------------------------

TEST_CASE("edge shapes: OnlineNormalizer", "[edge]") {
  using N = sml::OnlineNormalizer<float>;
  const float inf = std::numeric_limits<float>::infinity();

  SECTION("empty chunks and empty states change nothing; merging them is the identity") {
    N empty;
    CHECK(empty.max() == -inf);
    CHECK(empty.sum() == 0);
    CHECK(empty.count() == 0);
    CHECK(empty.log_sum_exp() == -std::numeric_limits<double>::infinity());
    Eigen::VectorXf none, none_out;
    Eigen::VectorXf storage = Eigen::VectorXf::Zero(6);
    const Eigen::Map<const Eigen::VectorXf, 0, Eigen::InnerStride<3>> strided_empty(storage.data(),
                                                                                    0);
    N a;
    Eigen::VectorXf x = Eigen::VectorXf::LinSpaced(37, -3, 5);
    N b;
    b.update(x);
    const N before = b;
    std::size_t allocations = 0;
    {
      AllocationGuard guard;
      a.update(none);
      a.update(none * 2.0f);    // an empty expression
      a.update(strided_empty);  // an empty strided view
      a.merge(N());
      b.update(none);
      b.merge(N());
      b.merge(a);
      a.write(none, none_out);
      a.write_log(none, none_out);
      b.write(none, none_out);
      allocations = guard.allocations();
    }
    CHECK(allocations == 0);
    CHECK(a.max() == -inf);
    CHECK(a.sum() == 0);
    CHECK(a.count() == 0);
    CHECK(b.max() == before.max());
    CHECK(b.sum() == before.sum());
    CHECK(b.count() == before.count());
    N c;  // an empty state merged with a non-empty one takes it over exactly
    c.merge(before);
    CHECK(c.max() == before.max());
    CHECK(c.sum() == before.sum());
  }

  SECTION("one element: max x, sum 1, probability exactly 1, log-probability exactly 0") {
    for (const float v : {-3.5f, 0.0f, 1e30f}) {
      INFO("x = " << v);
      const Eigen::VectorXf x = Eigen::VectorXf::Constant(1, v);
      Eigen::VectorXf y(1), log_y(1), in_place = x;
      N n;
      std::size_t allocations = 0;
      {
        AllocationGuard guard;
        n.update(x);
        n.write(x, y);
        n.write_log(x, log_y);
        n.write(in_place, in_place);
        allocations = guard.allocations();
      }
      CHECK(allocations == 0);
      CHECK(n.max() == v);
      CHECK(n.sum() == 1.0);
      CHECK(n.count() == 1);
      CHECK(n.log_sum_exp() == static_cast<double>(v));
      CHECK(y(0) == 1.0f);
      CHECK(log_y(0) == 0.0f);
      CHECK(in_place(0) == 1.0f);
      sml::OnlineNormalizer<double> t(2.0);  // temperature 2: log sum exp = x / 2
      t.update(x.cast<double>());
      CHECK(t.log_sum_exp() == static_cast<double>(v) / 2);
    }
  }

  SECTION("a float row of 2^24 + 3 in uneven chunks (empty, one element, strided), merged") {
    const Index n = (Index(1) << 24) + 3;
    Eigen::VectorXf x(n);
    for (Index i = 0; i < n; ++i)
      x(i) = static_cast<float>((i * 7919) % 2003) * 0.01f - 10.0f;
    N whole;
    whole.update(x);
    // Chunks: [0, 0), [0, 1), [1, 4098), [4098, n/2) strided copy, [n/2, n/2), [n/2, n).
    const Index half = n / 2;
    Eigen::VectorXf strided_storage(2 * (half - 4098));
    Eigen::Map<Eigen::VectorXf, 0, Eigen::InnerStride<2>> strided(strided_storage.data(),
                                                                  half - 4098);
    strided = x.segment(4098, half - 4098);
    N first, second, third;
    std::size_t allocations = 0;
    {
      AllocationGuard guard;
      first.update(x.head(0)).update(x.head(1)).update(x.segment(1, 4097));
      second.update(strided).update(x.segment(half, 0));
      third.update(x.tail(n - half));
      third.merge(N()).merge(second);  // merged in another order than the row's
      first.merge(third);
      allocations = guard.allocations();
    }
    CHECK(allocations == 0);
    CHECK(first.count() == n);
    CHECK(first.max() == whole.max());
    const double rel = std::fabs(first.sum() - whole.sum()) / whole.sum();
    INFO("sums " << first.sum() << " and " << whole.sum() << ", relative difference " << rel);
    CHECK(rel <= 4 * std::numeric_limits<float>::epsilon());
    // Written chunk by chunk (the first in place): each entry within twice Softmax's policy bound
    // of SinglePassSoftmax on the whole row, 8 eps (1 + |x_i - m|) relative.
    const Eigen::VectorXf y = sml::SinglePassSoftmax()(x);
    Eigen::VectorXf z = x;
    {
      AllocationGuard guard;
      first.write(z.head(half), z.head(half));
      first.write(x.tail(n - half), z.tail(n - half));
      allocations = guard.allocations();
    }
    CHECK(allocations == 0);
    softmaxlab_test::Worst worst;
    const float m = whole.max();
    for (Index i = 0; i < n; i += 1) {
      const double error =
          softmaxlab_test::relative_error_eps(z(i), static_cast<double>(y(i)), 0.0);
      worst.update(error, 8.0 * (1.0 + std::fabs(static_cast<double>(x(i)) - m)),
                   [&](std::ostream& s) { s << "i = " << i; });
    }
    INFO(worst.report());
    CHECK(worst.ratio <= 1);
  }
}

// ---- Backward passes -------------------------------------------------------------------------

namespace {

enum class Agreement { Exact, SoftmaxType, LogSoftmaxType };

// Runs the forward pass of every variant uniformly (GumbelSoftmax with a fixed seed).
template <class F>
struct Forward {
  template <class X>
  static auto rowwise(const F& f, const X& x) {
    return f.rowwise(x);
  }
};
template <>
struct Forward<sml::GumbelSoftmax> {
  template <class X>
  static auto rowwise(const sml::GumbelSoftmax& f, const X& x) {
    sml::Philox4x32 gen(7);
    // The soft sample is what backward takes, in both modes (straight-through for hard).
    return sml::GumbelSoftmax(f.tau()).rowwise(x, gen);
  }
};

template <class S>
double tolerance(Agreement a, double max_dy, double max_y, double dy_i, double temperature) {
  const double eps = std::numeric_limits<S>::epsilon();
  switch (a) {
    case Agreement::Exact:
      return 0;
    case Agreement::SoftmaxType:
      return 8 * eps * max_dy * max_y / temperature;
    case Agreement::LogSoftmaxType:
      return 8 * eps * (std::fabs(dy_i) + max_dy) / temperature;
  }
  return 0;
}

template <class A, class B, class Dy>
bool agree(const A& a, const B& b, Agreement kind, const Dy& dy, double max_y, double temperature) {
  using S = typename A::Scalar;
  if (kind == Agreement::Exact)
    return same(a, b);
  if (a.rows() != b.rows() || a.cols() != b.cols())
    return false;
  for (Index i = 0; i < a.rows(); ++i) {
    const double max_dy = static_cast<double>(dy.row(i).cwiseAbs().maxCoeff());
    for (Index j = 0; j < a.cols(); ++j) {
      const double d = std::fabs(static_cast<double>(a(i, j)) - static_cast<double>(b(i, j)));
      const double t =
          tolerance<S>(kind, max_dy, max_y, static_cast<double>(dy(i, j)), temperature);
      if (!(d <= t)) {
        UNSCOPED_INFO("at (" << i << ", " << j << "): " << a(i, j) << " vs " << b(i, j)
                             << ", difference " << d << " > " << t);
        return false;
      }
    }
  }
  return true;
}

// Empty shapes, one element (dx exactly 0 when the function is constant on one element), and
// the layouts: rows of a column-major matrix (strided), of a row-major one, columns of the
// transposes, one row at a time, in place (dx = dy, and dx = y).
template <class S, class F>
void backward_edges(const F& f, Agreement kind, double temperature, bool constant_on_one) {
  INFO("float: " << (std::is_same_v<S, float>));
  // Empty.
  {
    const Vec<S> e;
    CHECK(f.backward(e, e, e).size() == 0);
    for (Index r : {0, 3}) {
      for (Index c : {0, 4}) {
        if (r * c != 0)
          continue;
        INFO(r << " x " << c);
        const Col<S> m(r, c);
        const Row<S> mr(r, c);
        CHECK(f.rowwise_backward(m, m, m).size() == 0);
        CHECK(f.colwise_backward(mr, mr, mr).size() == 0);
        Col<S> out(r, c);
        Row<S> out_r(r, c);
        Vec<S> ev, eo;
        std::size_t allocations = 0;
        {
          AllocationGuard guard;
          f.rowwise_backward(m, m, m, out);
          f.colwise_backward(m, m, m, out);
          f.rowwise_backward(mr, mr, mr, out_r);
          f.colwise_backward(out, out, out, out);
          f.backward(ev, ev, ev, eo);
          allocations = guard.allocations();
        }
        CHECK(allocations == 0);
      }
    }
  }
  // One element.
  for (const double v : {-3.5, 0.0, 1.25}) {
    INFO("x = " << v);
    const Vec<S> x = Vec<S>::Constant(1, static_cast<S>(v));
    const Vec<S> y = Forward<F>::rowwise(f, x.transpose()).transpose();
    const Vec<S> dy = Vec<S>::Constant(1, static_cast<S>(0.75));
    Vec<S> dx(1), in_place = dy;
    Col<S> five_x = x.replicate(1, 5), five_y = y.replicate(1, 5), five_dy = dy.replicate(1, 5);
    std::size_t allocations = 0;
    {
      AllocationGuard guard;
      f.backward(x, y, dy, dx);
      f.backward(x, y, in_place, in_place);
      f.colwise_backward(five_x, five_y, five_dy, five_dy);
      allocations = guard.allocations();
    }
    CHECK(allocations == 0);
    if (constant_on_one) {
      CHECK(dx(0) == S(0));
      CHECK(in_place(0) == S(0));
      CHECK((five_dy.array() == S(0)).all());
    } else {
      CHECK(std::isfinite(dx(0)));
      CHECK(in_place(0) == dx(0));
      CHECK((five_dy.array() == dx(0)).all());
    }
  }
  // Layouts.
  for (Index n : {Index(2), Index(13), Index(517)}) {
    INFO("rows of length " << n);
    const Index count = 4;
    const Col<S> x = varied<S>(count, n);
    const Col<S> y = Forward<F>::rowwise(f, x);
    const Col<S> dy = varied<S>(count, n, 0.4);
    const double max_y = static_cast<double>(y.cwiseAbs().maxCoeff());
    Col<S> expected(count, n);
    for (Index i = 0; i < count; ++i) {
      expected.row(i) = f.backward(Vec<S>(x.row(i).transpose()), Vec<S>(y.row(i).transpose()),
                                   Vec<S>(dy.row(i).transpose()))
                            .transpose();
    }
    const Row<S> xr = x, yr = y, dyr = dy;
    const Col<S> xt = x.transpose(), yt = y.transpose(), dyt = dy.transpose();
    const Row<S> xtr = xt, ytr = yt, dytr = dyt;
    Col<S> out_c(count, n), out_t(n, count), in_dy = dy, in_y = y;
    Row<S> out_r(count, n), out_tr(n, count), one_by_one(count, n), in_dyr = dyr;
    std::size_t allocations = 0;
    {
      AllocationGuard guard;
      f.rowwise_backward(x, y, dy, out_c);         // strided rows
      f.rowwise_backward(xr, yr, dyr, out_r);      // contiguous rows
      f.colwise_backward(xt, yt, dyt, out_t);      // contiguous columns
      f.colwise_backward(xtr, ytr, dytr, out_tr);  // strided columns
      f.rowwise_backward(x, y, in_dy, in_dy);      // in place on dy, strided
      f.rowwise_backward(xr, yr, in_dyr, in_dyr);  // in place on dy, contiguous
      f.rowwise_backward(x, in_y, dy, in_y);       // in place on y
      for (Index i = 0; i < count; ++i)
        f.backward(x.row(i), y.row(i), dy.row(i), one_by_one.row(i));
      allocations = guard.allocations();
    }
    CHECK(allocations == 0);
    CHECK(agree(out_c, expected, kind, dy, max_y, temperature));
    CHECK(same(out_r, expected));  // contiguous rows: the very same code as the reference
    CHECK(same(out_t.transpose(), expected));
    CHECK(agree(out_tr.transpose(), expected, kind, dy, max_y, temperature));
    CHECK(same(in_dy, out_c));
    CHECK(same(in_dyr, out_r));
    CHECK(same(in_y, out_c));
    CHECK(same(one_by_one, out_c));
  }
}

}  // namespace

TEST_CASE("edge shapes: backward passes", "[edge]") {
  SECTION("Softmax") {
    backward_edges<float>(sml::Softmax(), Agreement::SoftmaxType, 1, true);
    backward_edges<double>(sml::Softmax(2.0), Agreement::SoftmaxType, 2, true);
  }
  SECTION("LogSoftmax") {
    backward_edges<float>(sml::LogSoftmax(), Agreement::LogSoftmaxType, 1, true);
    backward_edges<double>(sml::LogSoftmax(0.5), Agreement::LogSoftmaxType, 0.5, true);
  }
  SECTION("SinglePassSoftmax") {
    backward_edges<float>(sml::SinglePassSoftmax(), Agreement::SoftmaxType, 1, true);
    backward_edges<double>(sml::SinglePassSoftmax(), Agreement::SoftmaxType, 1, true);
  }
  SECTION("PowerSoftmax: Stable (constant on one element) and Lipschitz") {
    backward_edges<float>(sml::PowerSoftmax(4), Agreement::Exact, 1, true);
    backward_edges<double>(sml::PowerSoftmax(6), Agreement::Exact, 1, true);
    backward_edges<float>(sml::PowerSoftmax(4, sml::PowerForm::Lipschitz, 1e-3), Agreement::Exact,
                          1, false);
    backward_edges<double>(sml::PowerSoftmax(2, sml::PowerForm::LengthAgnostic, 1e-3),
                           Agreement::Exact, 1, false);
  }
  SECTION("PolynomialSoftmax") {
    backward_edges<float>(sml::PolynomialSoftmax(), Agreement::Exact, 1, true);
    backward_edges<double>(sml::PolynomialSoftmax(), Agreement::Exact, 1, true);
  }
  SECTION("GumbelSoftmax: soft and hard (straight-through) on the soft sample") {
    backward_edges<float>(sml::GumbelSoftmax(), Agreement::SoftmaxType, 1, true);
    backward_edges<double>(sml::GumbelSoftmax(0.5, true), Agreement::SoftmaxType, 0.5, true);
  }
}

// ---- Losses ----------------------------------------------------------------------------------

TEST_CASE("edge shapes: CrossEntropyLoss", "[edge]") {
  const sml::CrossEntropyLoss mean, sum(sml::Reduction::Sum), smooth(sml::Reduction::Mean, 0.1);

  SECTION("zero rows: loss 0, empty gradient, with labels and with distributions") {
    for (Index c : {0, 3}) {
      INFO("0 x " << c);
      const Eigen::MatrixXf z(0, c);
      const Eigen::VectorXi labels;
      const std::vector<int> labels_v;
      Eigen::MatrixXf grad(0, c), targets(0, c);
      double l1 = -1, l2 = -1, l3 = -1, l4 = -1;
      std::size_t allocations = 0;
      {
        AllocationGuard guard;
        l1 = mean(z, labels);
        l2 = sum(z, labels_v, grad);
        l3 = smooth(z, targets, grad);
        l4 = mean(z, labels, grad);
        allocations = guard.allocations();
      }
      CHECK(allocations == 0);
      CHECK(l1 == 0);
      CHECK(l2 == 0);
      CHECK(l3 == 0);
      CHECK(l4 == 0);
    }
  }

  SECTION("zero classes: only ignored labels are valid; distributions give loss 0") {
    const Eigen::MatrixXf z(3, 0);
    Eigen::MatrixXf grad(3, 0), targets(3, 0);
    const Eigen::VectorXi ignored = Eigen::VectorXi::Constant(3, -100);
    CHECK(mean(z, ignored, grad) == 0);
    CHECK(mean(z, targets, grad) == 0);
    CHECK(smooth(z, targets) == 0);
    CHECK_THROWS_AS(mean(z, Eigen::VectorXi::Zero(3).eval()), std::invalid_argument);
  }

  SECTION("one class: loss exactly 0 and gradient exactly 0 (the only class is certain)") {
    for (const Index rows : {Index(1), Index(5)}) {
      const Eigen::MatrixXd z = Eigen::VectorXd::LinSpaced(rows, -30, 40);
      const Eigen::VectorXi labels = Eigen::VectorXi::Zero(rows);
      Eigen::MatrixXd grad(rows, 1), in_place = z;
      const Eigen::MatrixXd targets = Eigen::MatrixXd::Ones(rows, 1);
      CHECK(mean(z, labels, grad) == 0);
      CHECK((grad.array() == 0).all());
      CHECK(sum(in_place, labels, in_place) == 0);
      CHECK((in_place.array() == 0).all());
      CHECK(mean(z, targets, grad) == 0);
      CHECK((grad.array() == 0).all());
      CHECK(smooth(z, labels) == 0);
    }
  }

  SECTION("one row, strided and row-major logits: the same loss and gradient bitwise") {
    for (const Index c : {Index(1), Index(7), Index(1027)}) {
      INFO("classes " << c);
      const Col<float> z = varied<float>(3, c);
      const Eigen::VectorXi labels = Eigen::VectorXi::LinSpaced(3, 0, static_cast<int>(c - 1));
      const Row<float> zr = z;
      Col<float> grad(3, c);
      Row<float> grad_r(3, c);
      Col<float> big = Col<float>::Zero(6, 2 * c);  // z inside it: strided rows and columns
      Eigen::Map<Col<float>, 0, Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>> zs(
          big.data(), 3, c, Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>(12, 2));
      zs = z;
      Col<float> big_grad(6, 2 * c);
      Eigen::Map<Col<float>, 0, Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>> gs(
          big_grad.data(), 3, c, Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>(12, 2));
      double l1 = 0, l2 = 0, l3 = 0;
      std::size_t allocations = 0;
      {
        AllocationGuard guard;
        l1 = mean(z, labels, grad);
        l2 = mean(zr, labels, grad_r);
        l3 = mean(zs, labels, gs);
        allocations = guard.allocations();
      }
      CHECK(allocations == 0);
      CHECK(l1 == l2);
      CHECK(l1 == l3);
      CHECK(same(grad, grad_r));
      CHECK(same(grad, Col<float>(gs)));
      // One row: the loss is -log_softmax(z)_c, within twice LogSoftmax's bound 4 eps (1 + |v|).
      const Eigen::RowVectorXf row = z.row(0);
      const Eigen::VectorXi one_label = Eigen::VectorXi::Constant(1, labels(0));
      const Eigen::RowVectorXf log_p = sml::LogSoftmax()(row);
      const double value = -static_cast<double>(log_p(labels(0)));
      CHECK(std::fabs(mean(row, one_label) - value)
            <= 8 * std::numeric_limits<float>::epsilon() * (1 + value));
    }
  }
}

TEST_CASE("edge shapes: L2SvmLoss", "[edge]") {
  const sml::L2SvmLoss svm(0.5);
  SECTION("zero rows and zero features") {
    const Eigen::MatrixXf o(0, 4);
    Eigen::MatrixXf d_o(0, 4);
    const Eigen::VectorXi none;
    std::size_t allocations = 0;
    double h = -1;
    {
      AllocationGuard guard;
      h = svm.hinge(o, none, d_o);
      allocations = guard.allocations();
    }
    CHECK(allocations == 0);
    CHECK(h == 0);
    CHECK(svm.predict(o).size() == 0);
    // X with zero features: o = 1 b^T; dW is 0 x K, db = sum_n d_o.
    const Eigen::MatrixXd x(3, 0), w(0, 2);
    const Eigen::VectorXd b = Eigen::Vector2d(0.25, -2.0);
    const Eigen::VectorXi labels = Eigen::Vector3i(0, 1, 0);
    Eigen::MatrixXd dw(0, 2);
    Eigen::VectorXd db(2);
    const double loss = svm(x, w, b, labels, dw, db);
    // o(n, k) = b(k). Row 0 and 2 (label 0): margins 0.75 and 0; row 1 (label 1): 1.25 and 3.
    CHECK(loss == 0.5 * (2 * 0.5625 + 1.5625 + 9));
    // d_o = -2 C y margin: rows 0 and 2 give (-0.75, 0), row 1 gives (1.25, -3).
    CHECK(db(0) == -0.25);
    CHECK(db(1) == -3.0);
  }
  SECTION("one class: every label 0, y = +1") {
    const Eigen::MatrixXf o = Eigen::Vector3f(0.5f, 2.0f, -1.0f);
    const Eigen::VectorXi labels = Eigen::VectorXi::Zero(3);
    Eigen::MatrixXf d_o(3, 1);
    CHECK(svm.hinge(o, labels, d_o) == 0.5 * (0.25 + 0 + 4));
    CHECK(d_o(1) == 0.0f);
    CHECK(svm.predict(o) == Eigen::VectorXi::Zero(3));
  }
}

TEST_CASE("edge shapes: NormalizedSoftmax and NormalizedSoftmaxLoss", "[edge]") {
  const sml::NormalizedSoftmax ns(20.0);
  const sml::NormalizedSoftmax arc(16.0, sml::Margin::arcface(0.3));
  const sml::NormalizedSoftmaxLoss loss(arc);

  SECTION("zero embeddings: 0 x C logits and probabilities, loss 0, dW = 0") {
    const Eigen::MatrixXf e(0, 5), w = varied<float>(3, 5);
    const Eigen::VectorXi none;
    CHECK(ns.logits(e, w).rows() == 0);
    CHECK(ns.logits(e, w).cols() == 3);
    CHECK(ns(e, w).size() == 0);
    CHECK(arc(e, w, none).size() == 0);
    Eigen::MatrixXf de(0, 5), dw(3, 5);
    CHECK(loss(e, w, none, de, dw) == 0);
    CHECK((dw.array() == 0).all());
    const auto [de2, dw2] = ns.backward(e, w, ns(e, w), Eigen::MatrixXf(0, 3));
    CHECK(de2.rows() == 0);
    CHECK((dw2.array() == 0).all());
  }

  SECTION("zero classes: N x 0 logits and probabilities; dE = 0") {
    const Eigen::MatrixXd e = varied<double>(4, 3), w(0, 3);
    CHECK(ns.logits(e, w).rows() == 4);
    CHECK(ns.logits(e, w).cols() == 0);
    CHECK(ns(e, w).size() == 0);
    const auto [de, dw] = ns.logits_backward(e, w, Eigen::MatrixXd(4, 0));
    CHECK((de.array() == 0).all());
    CHECK(dw.rows() == 0);
  }

  SECTION("zero features: every cosine 0, logits 0, probabilities uniform, gradients 0") {
    const Eigen::MatrixXf e(4, 0), w(3, 0);
    const auto z = ns.logits(e, w);
    CHECK(z.rows() == 4);
    CHECK(z.cols() == 3);
    CHECK((z.array() == 0).all());
    const auto p = ns(e, w);
    CHECK(same(p, sml::Softmax().rowwise(Eigen::MatrixXf::Zero(4, 3))));
    CHECK((p.array() - 1.0f / 3).abs().maxCoeff() <= 2 * std::numeric_limits<float>::epsilon());
    Eigen::MatrixXf de(4, 0), dw(3, 0);
    const double l = sml::NormalizedSoftmaxLoss(ns)(e, w, Eigen::Vector4i(0, 1, 2, 0), de, dw);
    CHECK(std::fabs(l - std::log(3.0)) <= 1e-6);
    // double (whose zero norms take the stableNorm path), a margin on the targets, the gradient
    // forms and the prototypes: no row of zero length is ever sliced (UBSan checks that).
    const Eigen::MatrixXd ed(4, 0), wd(3, 0);
    const Eigen::Vector4i labels(0, 1, 2, 0);
    CHECK(same(ns(ed, wd), sml::Softmax().rowwise(Eigen::MatrixXd::Zero(4, 3))));
    const auto za = arc.logits(ed, wd, labels);
    CHECK(std::fabs(za(0, 0) + 16 * std::sin(0.3)) <= 1e-13);  // s cos(pi/2 + m)
    CHECK(za(0, 1) == 0);
    const auto [ded, dwd] = arc.logits_backward(ed, wd, labels, Eigen::MatrixXd::Ones(4, 3));
    CHECK((ded.rows() == 4 && ded.cols() == 0));
    CHECK((dwd.rows() == 3 && dwd.cols() == 0));
    Eigen::MatrixXd de_d(4, 0), dw_d(3, 0);
    CHECK(std::isfinite(loss(ed, wd, labels, de_d, dw_d)));
    const auto protos = sml::NormalizedSoftmax::prototypes(ed, labels, 3);
    CHECK((protos.rows() == 3 && protos.cols() == 0));
  }

  SECTION("one class: probabilities exactly 1, loss 0, gradients 0") {
    const Eigen::MatrixXf e = varied<float>(5, 4), w = varied<float>(1, 4, 2.0);
    Eigen::MatrixXf e_zero_row = e;
    e_zero_row.row(2).setZero();
    CHECK((ns(e_zero_row, w).array() == 1.0f).all());
    Eigen::MatrixXf de(5, 4), dw(1, 4);
    const Eigen::VectorXi labels = Eigen::VectorXi::Zero(5);
    CHECK(sml::NormalizedSoftmaxLoss(ns)(e, w, labels, de, dw) == 0);
    CHECK((de.array() == 0).all());
    CHECK((dw.array() == 0).all());
  }

  SECTION("one feature: cosines are the signs, logits +-s (0 for a zero entry)") {
    Eigen::MatrixXd e(4, 1), w(3, 1);
    e << 3.0, -0.5, 0.0, 1e-300;
    w << -7.0, 2.0, 1e300;
    const auto z = ns.logits(e, w);
    for (Index n = 0; n < 4; ++n) {
      for (Index c = 0; c < 3; ++c) {
        const double expected = 20.0 * (e(n) > 0 ? 1 : e(n) < 0 ? -1 : 0) * (w(c) > 0 ? 1 : -1);
        INFO("(" << n << ", " << c << "): " << z(n, c));
        CHECK(std::fabs(z(n, c) - expected) <= 4 * std::numeric_limits<double>::epsilon() * 20);
      }
    }
    const auto p = ns(e, w);
    CHECK((p.rowwise().sum().array() - 1).abs().maxCoeff() <= 1e-15);
  }

  SECTION("strided, row-major and expression inputs give the same logits and gradients bitwise") {
    const Col<float> e = varied<float>(6, 9), w = varied<float>(4, 9, 1.0);
    const Eigen::VectorXi labels = Eigen::VectorXi::LinSpaced(6, 0, 3);
    const Row<float> er = e, wr = w;
    Col<float> big = Col<float>::Zero(12, 9);
    big.topRows(6) = e;
    const auto eb = big.topRows(6);           // a block: outer stride 12
    const Col<float> et = e.transpose();      // e as the transpose of a
    const auto z = arc.logits(e, w, labels);  // column-major matrix
    CHECK(same(arc.logits(er, wr, labels), z));
    CHECK(same(arc.logits(eb, w, labels), z));
    CHECK(same(arc.logits(et.transpose(), w * 1.0f, labels), z));
    CHECK(same(arc(er, w, labels), arc(e, wr, labels)));
    Col<float> de(6, 9), dw(4, 9), de2(6, 9), dw2(4, 9);
    const double l1 = loss(e, w, labels, de, dw);
    const double l2 = loss(eb, wr, labels, de2, dw2);
    CHECK(l1 == l2);
    CHECK(same(de, de2));
    CHECK(same(dw, dw2));
  }
}

TEST_CASE("edge shapes: SparseCbmGumbelLoss", "[edge]") {
  const sml::SparseCbmGumbelLoss cbm;
  SECTION("zero rows or zero concepts: loss 0, no words consumed") {
    for (const auto& shape : {std::pair<Index, Index>{0, 5}, {4, 0}, {0, 0}}) {
      INFO(shape.first << " x " << shape.second);
      const Eigen::MatrixXf z(shape.first, shape.second);
      Eigen::MatrixXf grad(shape.first, shape.second);
      sml::Philox4x32 gen(3), fresh(3);
      double l1 = -1, l2 = -1;
      std::size_t allocations = 0;
      {
        AllocationGuard guard;
        l2 = cbm(z, gen, grad);
        allocations = guard.allocations();
      }
      l1 = cbm(z, gen);
      CHECK(allocations == 0);
      CHECK(l1 == 0);
      CHECK(l2 == 0);
      CHECK(gen() == fresh());
    }
  }
  SECTION("one concept: -log 1 = 0 exactly, gradient exactly 0, one word per row") {
    const Eigen::MatrixXf z = Eigen::Vector3f(-2.0f, 0.0f, 30.0f);
    Eigen::MatrixXf grad(3, 1), in_place = z;
    sml::Philox4x32 gen(3), gen2(3), fresh(3);
    CHECK(cbm(z, gen, grad) == 0);
    CHECK((grad.array() == 0).all());
    CHECK(cbm(in_place, gen2, in_place) == 0);
    CHECK((in_place.array() == 0).all());
    fresh.discard(3);
    CHECK(gen() == fresh());
  }
  SECTION("strided, row-major and in place: the same loss and gradient bitwise (same seed)") {
    const Col<float> z = varied<float>(3, 517);
    const Row<float> zr = z;
    Col<float> grad(3, 517), in_place = z;
    Row<float> grad_r(3, 517);
    sml::Philox4x32 g1(9), g2(9), g3(9), g4(9);
    double l1 = 0, l2 = 0, l3 = 0;
    std::size_t allocations = 0;
    {
      AllocationGuard guard;
      l1 = cbm(z, g1, grad);             // strided rows
      l2 = cbm(zr, g2, grad_r);          // contiguous rows
      l3 = cbm(in_place, g3, in_place);  // in place, strided
      allocations = guard.allocations();
    }
    CHECK(allocations == 0);
    CHECK(l1 == l2);
    CHECK(l1 == l3);
    CHECK(l1 == cbm(z, g4));
    CHECK(same(grad, grad_r));
    CHECK(same(grad, in_place));
  }
}

// ---- SurfaceFusion ---------------------------------------------------------------------------

namespace {

template <class F>
void fusion_edges(const F& f) {
  // Empty shapes.
  {
    CHECK(f(Eigen::VectorXf(), Eigen::VectorXf()).size() == 0);
    for (Index r : {0, 3}) {
      for (Index c : {0, 4}) {
        if (r * c != 0)
          continue;
        INFO(r << " x " << c);
        const Eigen::MatrixXf m(r, c);
        const Row<float> mr(r, c);
        CHECK(f.rowwise(m, m).size() == 0);
        CHECK(f.colwise(mr, mr).size() == 0);
        const auto [dt, ds] = f.rowwise_backward(m, m, m, m);
        CHECK(dt.size() == 0);
        CHECK(ds.size() == 0);
        Eigen::MatrixXf y(r, c), dtgt(r, c), dsrc(r, c);
        Row<float> y_r(r, c);
        std::size_t allocations = 0;
        {
          AllocationGuard guard;
          f.rowwise(m, m, y);
          f.colwise(mr, mr, y_r);
          f.rowwise(y, m, y);
          f.rowwise_backward(m, m, m, m, dtgt, dsrc);
          f.colwise_backward(mr, mr, mr, mr, dtgt, dsrc);
          allocations = guard.allocations();
        }
        CHECK(allocations == 0);
      }
    }
  }
  // One element: log-probability exactly 0 and gradients exactly 0.
  for (const float v : {-3.5f, 0.0f, 50.0f}) {
    INFO("x = " << v);
    const Eigen::VectorXf t = Eigen::VectorXf::Constant(1, v), s = Eigen::VectorXf::Constant(1, -v);
    Eigen::VectorXf y(1), in_place = t, dt(1), ds(1);
    const Eigen::VectorXf dy = Eigen::VectorXf::Constant(1, 0.5f);
    std::size_t allocations = 0;
    {
      AllocationGuard guard;
      f.apply(t, s, y);
      f.apply(in_place, s, in_place);
      f.backward(t, s, y, dy, dt, ds);
      allocations = guard.allocations();
    }
    CHECK(allocations == 0);
    CHECK(y(0) == 0.0f);
    CHECK(in_place(0) == 0.0f);
    CHECK(dt(0) == 0.0f);
    CHECK(ds(0) == 0.0f);
  }
  // Layouts: bitwise the same rows.
  for (Index n : {Index(2), Index(13), Index(517)}) {
    INFO("rows of length " << n);
    const Index count = 4;
    Col<double> t = varied<double>(count, n), s = varied<double>(count, n, 2.0);
    t(1, n / 2) = -std::numeric_limits<double>::infinity();  // a masked entry
    const Col<double> dy = varied<double>(count, n, 0.3);
    Col<double> y_ref(count, n), dt_ref(count, n), ds_ref(count, n);
    for (Index i = 0; i < count; ++i) {
      const Eigen::VectorXd ti = t.row(i).transpose(), si = s.row(i).transpose();
      const Eigen::VectorXd yi = f(ti, si);
      y_ref.row(i) = yi.transpose();
      const auto [a, b] = f.backward(ti, si, yi, Eigen::VectorXd(dy.row(i).transpose()));
      dt_ref.row(i) = a.transpose();
      ds_ref.row(i) = b.transpose();
    }
    const Row<double> tr = t, sr = s, dyr = dy, y_refr = y_ref;
    const Col<double> tt = t.transpose(), st = s.transpose();
    Col<double> y_c(count, n), y_t(n, count), in_place = t, dt_c(count, n), ds_c(count, n);
    Row<double> y_r(count, n), dt_r(count, n), ds_r(count, n);
    std::size_t allocations = 0;
    {
      AllocationGuard guard;
      f.rowwise(t, s, y_c);              // strided rows
      f.rowwise(tr, sr, y_r);            // contiguous rows
      f.colwise(tt, st, y_t);            // contiguous columns
      f.rowwise(in_place, s, in_place);  // in place on tgt
      f.rowwise_backward(t, s, y_ref, dy, dt_c, ds_c);
      f.rowwise_backward(tr, sr, y_refr, dyr, dt_r, ds_r);
      allocations = guard.allocations();
    }
    CHECK(allocations == 0);
    CHECK(same(y_c, y_ref));
    CHECK(same(y_r, y_ref));
    CHECK(same(y_t.transpose(), y_ref));
    CHECK(same(in_place, y_ref));
    CHECK(same(dt_c, dt_ref));
    CHECK(same(ds_c, ds_ref));
    CHECK(same(dt_r, dt_ref));
    CHECK(same(ds_r, ds_ref));
  }
}

}  // namespace

TEST_CASE("edge shapes: HardFusion", "[edge]") {
  fusion_edges(sml::HardFusion(0.8));
  fusion_edges(sml::HardFusion(1.0));
}

TEST_CASE("edge shapes: SoftFusion", "[edge]") {
  fusion_edges(sml::SoftFusion(1.0));
  fusion_edges(sml::SoftFusion(0.5));
}
