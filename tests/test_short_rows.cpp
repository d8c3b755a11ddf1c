// Softmax's batch kernel for contiguous rows (softmax_contiguous_rows, used by rowwise/colwise when
// the slices are contiguous): bit-for-bit the results of apply() on each row, special rows
// (NaN beside a finite max, NaN with +inf, +inf, all -inf, partly -inf) mixed between regular
// ones, in place, through row-major rowwise and column-major colwise, with temperatures, for the
// short lengths of attention and classifier heads and a few odd ones (packet tails).
#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include <catch2/catch.hpp>

#include <softmaxlab/softmax.hpp>

#include "support.hpp"

namespace sml = softmaxlab;
using Index = Eigen::Index;

namespace {

template <class Scalar>
bool same_bits(Scalar a, Scalar b) {
  return std::memcmp(&a, &b, sizeof(Scalar)) == 0 || (std::isnan(a) && std::isnan(b));
}

// Rows of values in [-20, 20], with special rows at fixed places.
template <class Scalar>
Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> batch(Index rows, Index n,
                                                                             unsigned seed) {
  const Scalar inf = std::numeric_limits<Scalar>::infinity();
  const Scalar nan = std::numeric_limits<Scalar>::quiet_NaN();
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> u(-20.0, 20.0);
  Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> x(rows, n);
  for (Index i = 0; i < x.size(); ++i)
    x.data()[i] = static_cast<Scalar>(u(gen));
  if (rows >= 8) {
    x(1, n / 2) = nan;  // NaN beside a finite max
    x(2, 0) = inf;      // one +inf
    x(3, n - 1) = inf;  // +inf and NaN
    x(3, 0) = nan;
    x.row(4).setConstant(-inf);                        // all masked
    x.row(5).head((n + 1) / 2).setConstant(-inf);      // partly masked
    x(6, n - 1) = std::numeric_limits<Scalar>::max();  // huge max
  }
  return x;
}

template <class Scalar>
void check_rows_match_apply(double temperature) {
  const sml::Softmax f(temperature);
  for (Index n : {1, 3, 7, 16, 17, 32, 64, 100, 128, 256, 512, 1000}) {
    for (Index rows : {1, 2, 9, 40}) {
      INFO("n = " << n << ", rows = " << rows << ", T = " << temperature);
      const auto x = batch<Scalar>(rows, n, static_cast<unsigned>(n * 131 + rows));
      Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> expected(rows, n);
      for (Index i = 0; i < rows; ++i) {
        Eigen::Matrix<Scalar, Eigen::Dynamic, 1> xi = x.row(i).transpose(), yi(n);
        f.apply(xi, yi);
        expected.row(i) = yi.transpose();
      }
      Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> y(rows, n);
      f.rowwise(x, y);
      auto in_place = x;
      f.rowwise(in_place, in_place);
      // Column-major, one distribution per column: the same kernel through colwise.
      const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> xt = x.transpose();
      Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> yt(n, rows);
      f.colwise(xt, yt);
      Index mismatches = 0;
      for (Index i = 0; i < rows; ++i) {
        for (Index k = 0; k < n; ++k) {
          mismatches += !same_bits(y(i, k), expected(i, k));
          mismatches += !same_bits(in_place(i, k), expected(i, k));
          mismatches += !same_bits(yt(k, i), expected(i, k));
        }
      }
      CHECK(mismatches == 0);
    }
  }
}

}  // namespace

TEMPLATE_TEST_CASE("Softmax rowwise on contiguous rows equals apply row by row, bit for bit",
                   "[softmax][rowwise][short]", float, double) {
  check_rows_match_apply<TestType>(1.0);
  check_rows_match_apply<TestType>(0.5);
  check_rows_match_apply<TestType>(3.0);
}

TEST_CASE("Softmax rowwise on a short-row batch does not allocate", "[softmax][rowwise][short]") {
  const auto x = batch<float>(64, 64, 7u);
  Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> y(64, 64);
  const sml::Softmax f;
  const auto before = softmaxlab_test::allocation_count();
  f.rowwise(x, y);
  CHECK(softmaxlab_test::allocation_count() == before);
  CHECK(std::isnan(y(1, 0)));
  CHECK(y(2, 0) == 1.0f);
  CHECK(y(4, 0) == 0.0f);
}
