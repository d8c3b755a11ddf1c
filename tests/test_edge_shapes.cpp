// Edge shapes for every softmax-like functor: one element, empty vectors and matrices with zero
// rows or columns, a row of 2^24 + 3 elements, strided inputs and outputs, in place, both storage
// orders. Results of the different layouts of the same row must agree exactly: every path runs the
// same packet code (strided rows are staged through the stack).
#include <cmath>
#include <limits>

#include <catch2/catch.hpp>

#include <softmaxlab/softmaxlab.hpp>

#include "support.hpp"

namespace sml = softmaxlab;
using Index = Eigen::Index;

namespace {

// What a one-element row must give, and how to turn an output into probabilities.
template <class F>
struct Kind;
template <>
struct Kind<sml::Softmax> {
  static constexpr double single = 1.0;
  template <class S>
  static long double probability(S y) {
    return y;
  }
};
template <>
struct Kind<sml::LogSoftmax> {
  static constexpr double single = 0.0;
  template <class S>
  static long double probability(S y) {
    return std::exp(static_cast<long double>(y));
  }
};

template <class V>
bool same(const V& a, const V& b) {
  return a.size() == b.size()
         && (a.array() == b.array() || (a.array().isNaN() && b.array().isNaN())).all();
}

}  // namespace

TEMPLATE_TEST_CASE("edge shapes", "[edge]", sml::Softmax, sml::LogSoftmax) {
  using F = TestType;
  const F f;

  SECTION("one element gives exactly the certain distribution, in float and double") {
    CHECK(f(Eigen::VectorXf::Constant(1, -3.5f))(0) == static_cast<float>(Kind<F>::single));
    CHECK(f(Eigen::VectorXd::Constant(1, 1e300))(0) == Kind<F>::single);
    Eigen::MatrixXf one_col = Eigen::MatrixXf::Random(5, 1);
    const Eigen::MatrixXf rows = f.rowwise(one_col);
    CHECK((rows.array() == static_cast<float>(Kind<F>::single)).all());
  }

  SECTION("zero elements, zero rows, zero columns: empty in, empty out, in both storage orders") {
    CHECK(f(Eigen::VectorXf()).size() == 0);
    CHECK(f(Eigen::RowVectorXd()).size() == 0);
    using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    for (Index r : {0, 3}) {
      for (Index c : {0, 4}) {
        if (r * c != 0)
          continue;
        const Eigen::MatrixXf m(r, c);
        const RowMajor mr(r, c);
        CHECK(f.rowwise(m).rows() == r);
        CHECK(f.colwise(m).cols() == c);
        CHECK(f.rowwise(mr).size() == 0);
        Eigen::MatrixXf out(r, c);
        CHECK_NOTHROW(f.colwise(m, out));
      }
    }
  }

  SECTION("a float row of 2^24 + 3 elements: contiguous, strided and in place agree exactly") {
    const Index n = (Index(1) << 24) + 3;
    Eigen::VectorXf x(n);
    for (Index i = 0; i < n; ++i)
      x(i) = static_cast<float>((i * 7919) % 2003) * 0.01f - 10.0f;
    const Eigen::VectorXf y = f(x);
    long double sum = 0;
    for (Index i = 0; i < n; ++i)
      sum += Kind<F>::probability(y(i));
    INFO("sum - 1 = " << static_cast<double>(sum - 1));
    CHECK(std::fabs(static_cast<double>(sum - 1)) <= 2e-6);
    // the same row strided inside a 2-row column-major matrix, written into a strided output
    Eigen::MatrixXf m(2, n);
    m.row(1) = x.transpose();
    Eigen::MatrixXf out(2, n);
    f.apply(m.row(1), out.row(0));
    CHECK(same(Eigen::VectorXf(out.row(0).transpose()), y));
    f.apply(m.row(1), m.row(1));  // in place, strided
    CHECK(same(Eigen::VectorXf(m.row(1).transpose()), y));
  }

  SECTION("strided input and output through Map with inner strides, odd lengths") {
    for (Index n : {1, 2, 7, 15, 16, 17, 511, 512, 513, 1025}) {
      Eigen::VectorXd x = Eigen::VectorXd::LinSpaced(n, -40, 25).array().cos() * 30;
      x(n / 2) = -std::numeric_limits<double>::infinity();
      const Eigen::VectorXd y = f(x);
      Eigen::VectorXd in_storage = Eigen::VectorXd::Zero(3 * n), out_storage(5 * n);
      Eigen::Map<Eigen::VectorXd, 0, Eigen::InnerStride<3>> in(in_storage.data(), n);
      Eigen::Map<Eigen::VectorXd, 0, Eigen::InnerStride<>> out(out_storage.data(), n,
                                                               Eigen::InnerStride<>(5));
      in = x;
      f.apply(in, out);
      INFO("n = " << n);
      CHECK(same(Eigen::VectorXd(out), y));
    }
  }
}
