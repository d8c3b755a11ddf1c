// The functor machinery of detail/functor_base.hpp, exercised through Softmax and LogSoftmax:
// every input and output form of the public contract, shape errors, aliasing, and allocations.
#include <string>

#include <catch2/catch.hpp>

#include <softmaxlab/softmax.hpp>

#include "support.hpp"

namespace sml = softmaxlab;
using softmaxlab_test::AllocationGuard;

TEMPLATE_TEST_CASE("every input form gives the same result as a plain vector", "[functor]", float,
                   double) {
  using Vec = Eigen::Matrix<TestType, Eigen::Dynamic, 1>;
  using RowVec = Eigen::Matrix<TestType, 1, Eigen::Dynamic>;
  using Mat = Eigen::Matrix<TestType, Eigen::Dynamic, Eigen::Dynamic>;
  const sml::Softmax f(0.75);
  const Vec x = Vec::LinSpaced(37, -6, 9).array().sin() * 4;
  const Vec expected = f(x);

  SECTION("arithmetic expression") {
    const Vec half = x / 2;
    const Vec y = f(half * TestType(2));
    CHECK(y == expected);
  }
  SECTION("row of a column-major matrix (strided)") {
    Mat m = Mat::Random(5, x.size());
    m.row(3) = x.transpose();
    const RowVec y = f(m.row(3));
    CHECK(y.transpose() == expected);
  }
  SECTION("Map with an inner stride") {
    Vec storage = Vec::Zero(3 * x.size());
    Eigen::Map<Vec, 0, Eigen::InnerStride<3>> strided(storage.data(), x.size());
    strided = x;
    const Vec y = f(strided);
    CHECK(y == expected);
  }
  SECTION("Array and Block") {
    const Eigen::Array<TestType, Eigen::Dynamic, 1> a = x.array();
    CHECK(f(a).matrix() == expected);
    CHECK(f(x.segment(0, 37)) == expected);
  }
  SECTION("Ref output, strided block output, and a row output of a column input") {
    Vec out(x.size());
    Eigen::Ref<Vec> ref(out);
    f.apply(x, ref);
    CHECK(out == expected);
    Mat m = Mat::Zero(4, x.size());
    f.apply(x, m.row(2));  // a temporary Block, bound to const&
    CHECK(m.row(2).transpose() == expected);
    CHECK(m.row(1).isZero());
  }
  SECTION("in place") {
    Vec y = x;
    f.apply(y, y);
    CHECK(y == expected);
    Mat m = Mat::Random(3, x.size());
    m.row(0) = x.transpose();
    f.apply(m.row(0), m.row(0));
    CHECK(m.row(0).transpose() == expected);
  }
}

TEMPLATE_TEST_CASE("rowwise and colwise equal per-vector calls, in every storage order",
                   "[functor]", float, double) {
  using Vec = Eigen::Matrix<TestType, Eigen::Dynamic, 1>;
  using ColMajor = Eigen::Matrix<TestType, Eigen::Dynamic, Eigen::Dynamic>;
  using RowMajor = Eigen::Matrix<TestType, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  // 1100 columns: more than one staging chunk of a strided row
  const ColMajor x = ColMajor::Random(7, 1100) * 30;
  const sml::Softmax f;
  const sml::LogSoftmax g(2.5);
  const RowMajor x_rm = x;

  const ColMajor rows = f.rowwise(x);
  const ColMajor cols = g.colwise(x);
  const RowMajor rows_rm = f.rowwise(x_rm);
  const RowMajor cols_rm = g.colwise(x_rm);
  for (Eigen::Index i = 0; i < x.rows(); ++i) {
    const Vec row = x.row(i).transpose();
    INFO("row " << i);
    CHECK(rows.row(i).transpose() == f(row));
    CHECK(rows_rm.row(i).transpose() == f(row));
  }
  for (Eigen::Index j = 0; j < x.cols(); ++j) {
    const Vec col = x.col(j);
    if (cols.col(j) != g(col) || cols_rm.col(j) != g(col))
      FAIL("column " << j << " differs");
  }

  SECTION("allocation-free forms into a given matrix, from an expression, in place") {
    ColMajor out(x.rows(), x.cols());
    f.rowwise(x * TestType(1), out);
    CHECK(out == rows);
    RowMajor in_place = x_rm;
    f.rowwise(in_place, in_place);
    CHECK(in_place == rows_rm);
    ColMajor block_out = ColMajor::Zero(x.rows() + 2, x.cols());
    g.colwise(x, block_out.middleRows(1, x.rows()));
    CHECK(block_out.middleRows(1, x.rows()) == cols);
  }
}

TEST_CASE("shape errors throw std::invalid_argument with the shapes in the message", "[functor]") {
  const sml::Softmax f;
  Eigen::VectorXf x = Eigen::VectorXf::Ones(5);
  Eigen::VectorXf wrong(4);
  CHECK_THROWS_WITH(f.apply(x, wrong), Catch::Contains("length 5") && Catch::Contains("4 x 1"));
  Eigen::MatrixXf m = Eigen::MatrixXf::Ones(3, 4);
  CHECK_THROWS_WITH(f(m), Catch::Contains("1-D input") && Catch::Contains("3 x 4"));
  Eigen::MatrixXf out(4, 3);
  CHECK_THROWS_WITH(f.rowwise(m, out), Catch::Contains("3 x 4") && Catch::Contains("4 x 3"));
  CHECK_THROWS_AS(f.colwise(m, out), std::invalid_argument);
}

TEST_CASE("partially overlapping input and output are rejected; exact in-place is fine",
          "[functor]") {
  const sml::Softmax f;
  Eigen::VectorXf v = Eigen::VectorXf::LinSpaced(10, 0, 1);
  CHECK_THROWS_WITH(f.apply(v.head(6), v.tail(6)), Catch::Contains("overlaps"));
  CHECK_NOTHROW(f.apply(v.head(5), v.tail(5)));  // disjoint halves
  Eigen::MatrixXf m = Eigen::MatrixXf::Random(4, 4);
  CHECK_THROWS_WITH(f.rowwise(m.topRows(3), m.bottomRows(3)), Catch::Contains("overlaps"));
}

TEST_CASE("empty inputs give empty outputs", "[functor]") {
  const sml::Softmax f;
  const sml::LogSoftmax g;
  const Eigen::VectorXf empty;
  CHECK(f(empty).size() == 0);
  CHECK(g(empty).size() == 0);
  const Eigen::MatrixXd none(0, 7);
  CHECK(f.rowwise(none).rows() == 0);
  CHECK(g.colwise(none).cols() == 7);
  const Eigen::MatrixXd no_cols(3, 0);
  CHECK(f.rowwise(no_cols).cols() == 0);
}

TEMPLATE_TEST_CASE("apply and the matrix forms into a given output never allocate", "[functor]",
                   float, double) {
  using Vec = Eigen::Matrix<TestType, Eigen::Dynamic, 1>;
  using Mat = Eigen::Matrix<TestType, Eigen::Dynamic, Eigen::Dynamic>;
  const sml::Softmax f(1.5);
  const sml::LogSoftmax g;
  const Vec x = Vec::Random(3000) * 20;
  Vec y(x.size());
  Mat m = Mat::Random(9, 1500);
  Mat out(9, 1500);
  std::size_t allocations = 0;
  {
    AllocationGuard guard;
    f.apply(x, y);
    g.apply(x, y);
    f.apply(x * TestType(3), y);    // expression input: evaluated into y
    f.apply(m.row(4), out.row(4));  // strided: staged through the stack
    f.apply(y, y);
    f.rowwise(m, out);
    g.colwise(m, out);
    f.rowwise(m.array() + TestType(1), out);
    allocations = guard.allocations();
  }
  CHECK(allocations == 0);
}
