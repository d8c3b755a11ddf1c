// The axis forms on Eigen tensors (tensor.hpp): every axis of ranks 1 to 5, both layouts, against
// the functor's rowwise on a permuted copy (the slices moved to contiguous rows by Eigen's
// shuffle, an independent path), Softmax also against long double; special-value slices; 16-bit
// scalars; the allocation counter on apply; backward against the vector backward of each slice;
// LogSumExp's reduction; masks; errors.
#include <array>
#include <cmath>
#include <limits>
#include <random>

#include <softmaxlab/attention.hpp>
#include <softmaxlab/entmax.hpp>
#include <softmaxlab/gumbel.hpp>
#include <softmaxlab/logsumexp.hpp>
#include <softmaxlab/polynomial.hpp>
#include <softmaxlab/power.hpp>
#include <softmaxlab/random.hpp>
#include <softmaxlab/single_pass.hpp>
#include <softmaxlab/softmax.hpp>
#include <softmaxlab/tensor.hpp>

#include "support.hpp"

namespace sml = softmaxlab;
using sml::Index;

namespace {

template <class S, int R, int L>
using Tensor = Eigen::Tensor<S, R, L, Index>;

template <class S>
using RowMatrix = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// The shuffle that moves `axis` to the contiguous position (first for ColMajor, last for
// RowMajor), the other dimensions in order: the slices then follow in the order (o, i) of the
// [outer][n][inner] view.
template <int R, int L>
Eigen::array<Index, R> to_contiguous(int axis) {
  Eigen::array<Index, R> perm;
  int k = 0;
  if (L == Eigen::ColMajor)
    perm[k++] = axis;
  for (int d = 0; d < R; ++d)
    if (d != axis)
      perm[k++] = d;
  if (L == Eigen::RowMajor)
    perm[k++] = axis;
  return perm;
}

// The slices of t along `axis` as the rows of a row-major matrix (a copy, in slice order).
template <class S, int R, int L>
RowMatrix<S> slices_as_rows(const Tensor<S, R, L>& t, int axis) {
  const Tensor<S, R, L> p = t.shuffle(to_contiguous<R, L>(axis));
  const Index n = t.dimension(axis);
  RowMatrix<S> m(n == 0 ? 0 : t.size() / n, n);
  std::copy(p.data(), p.data() + p.size(), m.data());
  return m;
}

template <class S, int R, int L>
Tensor<S, R, L> random_tensor(const std::array<Index, R>& dims, std::uint64_t seed, double scale) {
  Tensor<S, R, L> t(dims);
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> normal(0.0, scale);
  for (Index i = 0; i < t.size(); ++i)
    t.data()[i] = static_cast<S>(normal(gen));
  return t;
}

// Whether a and b agree within `tol` eps of S relative to max(|b|, smallest normal) (log_domain:
// to 1 + |b|, the log-softmax measure), NaN matching NaN.
template <class S>
bool close(S a, S b, double tol, bool log_domain = false) {
  const double x = static_cast<double>(a), y = static_cast<double>(b);
  if (x != x || y != y)
    return x != x && y != y;
  if (x == y)
    return true;
  const double eps = static_cast<double>(Eigen::NumTraits<S>::epsilon());
  const double floor = static_cast<double>(std::numeric_limits<float>::min());
  const double scale = log_domain ? 1 + std::fabs(y) : std::max(std::fabs(y), floor);
  return std::fabs(x - y) <= tol * eps * scale;
}

// y = f(t, axis) and f.apply(t, axis, y) against f.rowwise of the permuted copy, every axis.
template <class S, int R, int L, class F>
void check_against_rowwise(const F& f, const Tensor<S, R, L>& t, double tol) {
  constexpr bool log_domain = std::is_same_v<F, sml::LogSoftmax>;
  for (int axis = 0; axis < R; ++axis) {
    const Tensor<S, R, L> y = f(t, axis);
    Tensor<S, R, L> y2(t.dimensions());
    f.apply(t, axis - R, y2);  // the same axis, counted from the last
    const RowMatrix<S> rows = slices_as_rows(t, axis);
    const RowMatrix<S> expected = f.rowwise(rows);
    const RowMatrix<S> got = slices_as_rows(y, axis);
    const RowMatrix<S> got2 = slices_as_rows(y2, axis);
    Index bad = -1;
    for (Index i = 0; i < expected.size() && bad < 0; ++i) {
      if (!close(got.data()[i], expected.data()[i], tol, log_domain)
          || !(got2.data()[i] == got.data()[i] || (got.data()[i] != got.data()[i])))
        bad = i;
    }
    INFO(F::name << " rank " << R << (L == Eigen::RowMajor ? " RowMajor" : " ColMajor") << " axis "
                 << axis << " first mismatch at flat " << bad);
    if (bad >= 0) {
      INFO("got " << double(got.data()[bad]) << " expected " << double(expected.data()[bad]));
      CHECK(bad < 0);
    } else {
      CHECK(bad < 0);
    }
  }
}

template <int R>
std::array<Index, R> dims_of(const std::array<Index, 5>& all) {
  std::array<Index, R> d;
  for (int k = 0; k < R; ++k)
    d[k] = all[k];
  return d;
}

template <class S, int L, class F>
void every_rank(const F& f, double tol) {
  // Odd sizes; the rank-3 shape has slices of 41 lanes (4-packet tiles, single packets and a
  // partial packet in the lane kernel).
  const std::array<Index, 5> small{5, 3, 7, 2, 3};
  check_against_rowwise(f, random_tensor<S, 1, L>(dims_of<1>(small), 1, 3.0), tol);
  check_against_rowwise(f, random_tensor<S, 2, L>({9, 37}, 2, 3.0), tol);
  check_against_rowwise(f, random_tensor<S, 3, L>({41, 3, 43}, 3, 3.0), tol);
  check_against_rowwise(f, random_tensor<S, 4, L>(dims_of<4>(small), 4, 3.0), tol);
  check_against_rowwise(f, random_tensor<S, 5, L>(small, 5, 3.0), tol);
}

template <class S, class F>
void both_layouts(const F& f, double tol) {
  every_rank<S, Eigen::ColMajor>(f, tol);
  every_rank<S, Eigen::RowMajor>(f, tol);
}

}  // namespace

TEMPLATE_TEST_CASE(
    "every functor over every axis of ranks 1 to 5 equals its rowwise on a permuted "
    "copy",
    "[tensor]", float, double) {
  using S = TestType;
  // Softmax's lane kernel sums per lane where the row kernel pairs terms first: a few roundings
  // apart (its stated bound is 4 eps (1 + |x - m|)); every other functor runs its own row path on
  // strided rows, the same arithmetic.
  both_layouts<S>(sml::Softmax(), 8);
  both_layouts<S>(sml::Softmax(0.7), 8);
  both_layouts<S>(sml::LogSoftmax(), 4);
  both_layouts<S>(sml::LogSoftmax(1.7), 4);
  both_layouts<S>(sml::SinglePassSoftmax(), 4);
  both_layouts<S>(sml::PowerSoftmax(), 4);
  both_layouts<S>(sml::PolynomialSoftmax(), 4);
  both_layouts<S>(sml::Sparsemax(), 4);
  both_layouts<S>(sml::Entmax15(), 4);
  both_layouts<S>(sml::Entmax(1.3), 16);
  both_layouts<S>(sml::AttentionSoftmax(), 4);
}

TEMPLATE_TEST_CASE("Softmax over an outer axis is within its stated bound of long double",
                   "[tensor]", float, double) {
  using S = TestType;
  const auto t = random_tensor<S, 4, Eigen::RowMajor>({3, 45, 5, 67}, 11, 6.0);
  const sml::Softmax f;
  softmaxlab_test::Worst worst;
  for (int axis = 0; axis < 4; ++axis) {
    const RowMatrix<S> x = slices_as_rows(t, axis);
    const RowMatrix<S> y = slices_as_rows(Tensor<S, 4, Eigen::RowMajor>(f(t, axis)), axis);
    for (Index r = 0; r < x.rows(); ++r) {
      long double m = -INFINITY, sum = 0;
      for (Index k = 0; k < x.cols(); ++k)
        m = std::max<long double>(m, x(r, k));
      for (Index k = 0; k < x.cols(); ++k)
        sum += std::exp(static_cast<long double>(x(r, k)) - m);
      long double total = 0;
      for (Index k = 0; k < x.cols(); ++k) {
        const long double exact = std::exp(static_cast<long double>(x(r, k)) - m) / sum;
        const double err = softmaxlab_test::relative_error_eps(y(r, k), double(exact),
                                                               double(exact - double(exact)));
        const double bound = 4 * (1 + double(m - x(r, k)));
        worst.update(err, bound, [&](std::ostream& s) { s << "axis " << axis << " slice " << r; });
        total += y(r, k);
      }
      CHECK(std::fabs(double(total - 1)) <= 2e-6);
    }
  }
  INFO(worst.report());
  CHECK(worst.ratio <= 1);
}

TEMPLATE_TEST_CASE("special-value slices along every axis: -inf, +inf and NaN", "[tensor]", float,
                   double) {
  using S = TestType;
  const S inf = std::numeric_limits<S>::infinity();
  const S nan = std::numeric_limits<S>::quiet_NaN();
  for (int axis = 0; axis < 3; ++axis) {
    auto t = random_tensor<S, 3, Eigen::RowMajor>({7, 9, 37}, 21 + axis, 2.0);
    // Slices are chosen through the permuted view: index (a, b, c) with the axis index running.
    auto slice_set = [&](Index first, Index second, auto value_of) {
      for (Index k = 0; k < t.dimension(axis); ++k) {
        std::array<Index, 3> idx{};
        int j = 0;
        for (int d = 0; d < 3; ++d)
          idx[d] = d == axis ? k : (j++ == 0 ? first : second) % t.dimension(d);
        t(idx) = value_of(k, t(idx));
      }
    };
    slice_set(0, 0, [&](Index, S) { return -inf; });                      // all masked
    slice_set(1, 2, [&](Index k, S v) { return k % 3 == 0 ? inf : v; });  // +inf share
    slice_set(2, 5, [&](Index k, S v) { return k == 1 ? nan : v; });      // NaN
    slice_set(3, 6, [&](Index k, S v) { return k % 2 ? -inf : v; });      // partly masked
    slice_set(4, 30, [&](Index k, S v) { return k == 0 ? inf : (k == 2 ? -inf : v); });
    // Logits near the top of the range: with T != 1 LogSoftmax's shift may overflow there.
    const S big = std::numeric_limits<S>::max() / 4;
    slice_set(5, 33, [&](Index k, S v) { return k % 2 ? big : -big + v; });
    const auto one_axis = [&](const auto& f) {
      const Tensor<S, 3, Eigen::RowMajor> y = f(t, axis);
      const RowMatrix<S> got = slices_as_rows(y, axis);
      const RowMatrix<S> expected = f.rowwise(slices_as_rows(t, axis));
      Index bad = -1;
      for (Index i = 0; i < got.size() && bad < 0; ++i)
        if (!close(got.data()[i], expected.data()[i], 8,
                   std::is_same_v<std::decay_t<decltype(f)>, sml::LogSoftmax>))
          bad = i;
      INFO(std::decay_t<decltype(f)>::name << " axis " << axis << " first mismatch " << bad);
      CHECK(bad < 0);
    };
    one_axis(sml::Softmax());
    one_axis(sml::LogSoftmax());
    one_axis(sml::LogSoftmax(2.0));
    one_axis(sml::Sparsemax());
    // In place gives the same, including the special slices (the lane kernel sends a whole tile
    // to the row path before writing any of it).
    const auto in_place_same = [&](const auto& f) {
      Tensor<S, 3, Eigen::RowMajor> in_place = t;
      f.apply(in_place, axis, in_place);
      const Tensor<S, 3, Eigen::RowMajor> y = f(t, axis);
      bool same = true;
      for (Index i = 0; i < y.size(); ++i)
        same = same && (in_place.data()[i] == y.data()[i] || (y.data()[i] != y.data()[i]));
      INFO(std::decay_t<decltype(f)>::name << " in place, axis " << axis);
      CHECK(same);
    };
    in_place_same(sml::Softmax());
    in_place_same(sml::LogSoftmax(2.0));
  }
}

TEMPLATE_TEST_CASE("16-bit tensors over every axis equal rowwise of the permuted copy", "[tensor]",
                   Eigen::half, Eigen::bfloat16) {
  using S = TestType;
  both_layouts<S>(sml::Softmax(), 1);
  both_layouts<S>(sml::LogSoftmax(), 1);
  both_layouts<S>(sml::Entmax15(), 1);
}

TEST_CASE("apply over any axis does not allocate (Tensor, TensorMap, TensorRef)", "[tensor]") {
  auto t = random_tensor<float, 4, Eigen::RowMajor>({5, 7, 3, 41}, 31, 2.0);
  Tensor<float, 4, Eigen::RowMajor> y(t.dimensions());
  auto th = random_tensor<Eigen::half, 4, Eigen::ColMajor>({5, 7, 3, 41}, 32, 2.0);
  Tensor<Eigen::half, 4, Eigen::ColMajor> yh(th.dimensions());
  Eigen::TensorMap<Tensor<float, 4, Eigen::RowMajor>> ym(y.data(), y.dimensions());
  const Eigen::TensorRef<Tensor<float, 4, Eigen::RowMajor>> tr(t);
  auto gen = sml::Philox4x32(7);
  for (int axis = 0; axis < 4; ++axis) {
    softmaxlab_test::AllocationGuard guard;
    sml::Softmax().apply(t, axis, y);
    sml::Softmax(2.0).apply(tr, axis, ym);
    sml::LogSoftmax().apply(t, axis, ym);
    sml::Entmax15().apply(t, axis, y);
    sml::Softmax().apply(th, axis, yh);
    sml::GumbelSoftmax(0.5).apply(t, axis, y, gen);
    sml::Softmax().backward(t, y, y, axis, ym);
    INFO("axis " << axis);
    CHECK(guard.allocations() == 0);
  }
}

TEMPLATE_TEST_CASE("backward along every axis equals the vector backward of each slice", "[tensor]",
                   float, double) {
  using S = TestType;
  using Vector = Eigen::Matrix<S, Eigen::Dynamic, 1>;
  const auto check = [](const auto& f, auto layout_tag) {
    constexpr int L = decltype(layout_tag)::value;
    const auto x = random_tensor<S, 4, L>({5, 3, 7, 19}, 41, 2.0);
    const auto dy = random_tensor<S, 4, L>({5, 3, 7, 19}, 42, 1.0);
    for (int axis = 0; axis < 4; ++axis) {
      const Tensor<S, 4, L> y = f(x, axis);
      const Tensor<S, 4, L> dx = f.backward(x, y, dy, axis);
      Tensor<S, 4, L> dx2(x.dimensions());
      f.backward(x, y, dy, axis, dx2);
      const RowMatrix<S> xr = slices_as_rows(x, axis), yr = slices_as_rows(y, axis),
                         dyr = slices_as_rows(dy, axis), dxr = slices_as_rows(dx, axis),
                         dxr2 = slices_as_rows(dx2, axis);
      double worst = 0;
      for (Index r = 0; r < xr.rows(); ++r) {
        const Vector xv = xr.row(r).transpose(), yv = yr.row(r).transpose(),
                     dyv = dyr.row(r).transpose();
        const Vector expected = f.backward(xv, yv, dyv);
        const S scale = dyv.cwiseAbs().maxCoeff() * std::max(S(1), yv.cwiseAbs().maxCoeff());
        for (Index k = 0; k < xv.size(); ++k) {
          worst = std::max(worst, double(std::abs(dxr(r, k) - expected(k)) / scale));
          worst = std::max(worst, double(std::abs(dxr2(r, k) - dxr(r, k))));
        }
      }
      INFO(std::decay_t<decltype(f)>::name << " axis " << axis << " worst " << worst);
      CHECK(worst <= 8 * double(Eigen::NumTraits<S>::epsilon()));
    }
  };
  using Col = std::integral_constant<int, Eigen::ColMajor>;
  using Row = std::integral_constant<int, Eigen::RowMajor>;
  check(sml::Softmax(), Col{});
  check(sml::Softmax(1.5), Row{});
  check(sml::LogSoftmax(), Row{});
  check(sml::Sparsemax(), Col{});
  check(sml::Entmax15(), Row{});
  check(sml::AttentionSoftmax(), Col{});
}

TEST_CASE("GumbelSoftmax along an axis draws the slices in the permuted copy's row order",
          "[tensor]") {
  const auto t = random_tensor<double, 3, Eigen::ColMajor>({4, 5, 6}, 51, 1.0);
  const sml::GumbelSoftmax g(0.5);
  for (int axis = 0; axis < 3; ++axis) {
    auto gen1 = sml::Philox4x32(99);
    auto gen2 = sml::Philox4x32(99);
    const Tensor<double, 3, Eigen::ColMajor> y = g(t, axis, gen1);
    const RowMatrix<double> expected = g.rowwise(slices_as_rows(t, axis), gen2);
    INFO("axis " << axis);
    CHECK(slices_as_rows(y, axis) == expected);
  }
}

TEST_CASE("LogSumExp along an axis reduces it, each entry the lse of its slice", "[tensor]") {
  const auto t = random_tensor<double, 3, Eigen::RowMajor>({4, 5, 6}, 61, 3.0);
  const sml::LogSumExp lse;
  for (int axis = 0; axis < 3; ++axis) {
    const Tensor<double, 2, Eigen::RowMajor> r = sml::logsumexp_along_axis(lse, t, axis);
    CHECK(r.size() == t.size() / t.dimension(axis));
    const RowMatrix<double> rows = slices_as_rows(t, axis);
    double worst = 0;
    for (Index i = 0; i < rows.rows(); ++i) {
      long double m = rows.row(i).maxCoeff(), s = 0;
      for (Index k = 0; k < rows.cols(); ++k)
        s += std::exp(static_cast<long double>(rows(i, k)) - m);
      const long double exact = m + std::log(s);
      worst = std::max(worst, double(std::fabs(r.data()[i] - exact) / (1 + std::fabs(exact))));
    }
    INFO("axis " << axis << " worst " << worst);
    CHECK(worst <= 2 * std::numeric_limits<double>::epsilon());
  }
  const Eigen::Tensor<double, 0> scalar = sml::logsumexp_along_axis(
      lse, Eigen::Tensor<double, 1>(Eigen::Tensor<double, 1>(3).setZero()), 0);
  CHECK(std::fabs(scalar() - std::log(3.0)) <= 1e-15);
}

TEST_CASE("AttentionSoftmax with a mask of the axis length or of the tensor's shape", "[tensor]") {
  const auto t = random_tensor<float, 3, Eigen::RowMajor>({4, 6, 5}, 71, 2.0);
  const sml::AttentionSoftmax f(sml::AttentionOptions().with_scale(0.5));
  const float inf = std::numeric_limits<float>::infinity();
  for (int axis = 0; axis < 3; ++axis) {
    Eigen::Tensor<float, 1, Eigen::RowMajor> line(t.dimension(axis));
    for (Index k = 0; k < line.size(); ++k)
      line(k) = k % 2 ? -inf : 0.25f * float(k);
    const auto full = random_tensor<float, 3, Eigen::RowMajor>({4, 6, 5}, 72, 1.0);
    const Tensor<float, 3, Eigen::RowMajor> y1 = sml::masked_along_axis(f, t, line, axis);
    const Tensor<float, 3, Eigen::RowMajor> y2 = sml::masked_along_axis(f, t, full, axis);
    const RowMatrix<float> x = slices_as_rows(t, axis), m2 = slices_as_rows(full, axis);
    const RowMatrix<float> g1 = slices_as_rows(y1, axis), g2 = slices_as_rows(y2, axis);
    const Eigen::Map<const Eigen::RowVectorXf> m1(line.data(), line.size());
    bool ok = true;
    for (Index r = 0; r < x.rows(); ++r) {
      const Eigen::RowVectorXf e1 = f.masked(x.row(r), m1);
      const Eigen::RowVectorXf e2 = f.masked(x.row(r), m2.row(r));
      ok = ok && g1.row(r) == e1 && g2.row(r) == e2;
    }
    INFO("axis " << axis);
    CHECK(ok);
  }
}

TEST_CASE("bad axes and shapes throw std::invalid_argument naming the axis and the rank",
          "[tensor]") {
  const auto t = random_tensor<float, 3, Eigen::ColMajor>({4, 5, 6}, 81, 1.0);
  const sml::Softmax f;
  Tensor<float, 3, Eigen::ColMajor> y(4, 5, 6), wrong(4, 6, 5);
  CHECK_THROWS_AS(f(t, 3), std::invalid_argument);
  CHECK_THROWS_WITH(
      f(t, 3), Catch::Contains("axis") && Catch::Contains("rank 3") && Catch::Contains("got 3"));
  CHECK_THROWS_WITH(f.apply(t, -4, y), Catch::Contains("[-3, 3)") && Catch::Contains("got -4"));
  CHECK_THROWS_WITH(f.apply(t, 1, wrong),
                    Catch::Contains("4 x 5 x 6") && Catch::Contains("4 x 6 x 5"));
  CHECK_THROWS_WITH(f.backward(t, y, wrong, 0), Catch::Contains("dy"));
  CHECK_THROWS_WITH(sml::logsumexp_along_axis(sml::LogSumExp(), t, 7),
                    Catch::Contains("rank 3") && Catch::Contains("got 7"));
  Eigen::Tensor<float, 1> bad_mask(4);
  bad_mask.setZero();
  CHECK_THROWS_WITH(sml::masked_along_axis(sml::AttentionSoftmax(), t, bad_mask, 1),
                    Catch::Contains("axis length 5"));
  // A TensorMap output partially overlapping the input.
  Eigen::Tensor<float, 1> buffer(10);
  buffer.setZero();
  Eigen::TensorMap<Eigen::Tensor<float, 1>> a(buffer.data(), 8), b(buffer.data() + 1, 8);
  CHECK_THROWS_WITH(f.apply(a, 0, b), Catch::Contains("overlaps"));
  // Empty tensors: nothing to do, no error.
  Tensor<float, 3, Eigen::ColMajor> empty(0, 5, 6);
  CHECK(f(empty, 1).size() == 0);
}
