// softmaxlab: the row geometry of NormalizedSoftmax (normalized.hpp): row norms kept exact when
// a row's sum of squares leaves double's range, normalized rows and their backward, and the angle
// between an embedding and its class's weight row (sin t and cos t from the two unit rows). Tested
// through tests/test_normalized.cpp and tests/test_backward_gumbel_normalized.cpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "checks.hpp"
#include "common.hpp"
#include "scalar_types.hpp"

namespace softmaxlab {
namespace detail {

// |x| = norm * 2^exponent for one row: a row whose sum of squares leaves double's normal range
// (subnormal or huge double entries) is first scaled by a power of two (exact), so its norm keeps
// every significant bit. A zero row gives norm 0, a row with inf or NaN a NaN norm.
struct RowNorm {
  double norm;
  int exponent;
};

template <class Row>
RowNorm row_norm(const Row& row) {
  if (!row.allFinite())
    return {std::numeric_limits<double>::quiet_NaN(), 0};
  const double sq = row.template cast<double>().squaredNorm();
  if (sq >= std::numeric_limits<double>::min() && sq <= std::numeric_limits<double>::max())
    return {std::sqrt(sq), 0};
  const double largest = row.template cast<double>().cwiseAbs().maxCoeff();
  if (largest == 0)
    return {0.0, 0};
  int exponent = 0;
  std::frexp(largest, &exponent);
  double scaled_sq = 0;
  for (Index j = 0; j < row.size(); ++j) {
    const double v = std::ldexp(static_cast<double>(row(j)), -exponent);
    scaled_sq += v * v;
  }
  return {std::sqrt(scaled_sq), exponent};
}

// The unit vector of a finite nonzero row, in double: row 2^-exponent / norm.
template <class Row>
Eigen::Matrix<double, 1, Eigen::Dynamic> unit_row(const Row& row, const RowNorm& n) {
  Eigen::Matrix<double, 1, Eigen::Dynamic> u(row.size());
  for (Index j = 0; j < row.size(); ++j)
    u(j) = std::ldexp(static_cast<double>(row(j)), -n.exponent) / n.norm;
  return u;
}

// The backward of x -> x / |x| row by row: dx = (dxn - xn <dxn, xn>) / |x|, with xn = x / |x|;
// a zero row gets 0 (the forward maps a neighbourhood of it to no direction: its gradient is taken
// as 0, as for a constant), a row with inf or NaN gets NaN. The division by |x| goes through
// RowNorm, so a row of subnormal entries divides by its exact norm (the result may overflow to
// inf: the true gradient is then beyond the range).
template <class X, class Xn, class D, class Out>
void normalize_rows_backward(const X& x, const Xn& xn, const D& d, Out& out) {
  using Scalar = typename Out::Scalar;
  if (x.size() == 0)
    return;  // D = 0 (or no rows): nothing to write (Eigen's row blocks of an empty matrix are UB)
  for (Index i = 0; i < x.rows(); ++i) {
    const RowNorm n = row_norm(x.row(i));
    if (n.norm != n.norm) {
      out.row(i).setConstant(std::numeric_limits<Scalar>::quiet_NaN());
    } else if (n.norm == 0) {
      out.row(i).setZero();
    } else {
      const auto xd = xn.row(i).template cast<double>();
      const auto dd = d.row(i).template cast<double>();
      const Eigen::Matrix<double, 1, Eigen::Dynamic> g = (dd - xd * xd.dot(dd)) / n.norm;
      for (Index j = 0; j < g.size(); ++j)
        out(i, j) = static_cast<Scalar>(std::ldexp(g(j), -n.exponent));
    }
  }
}

// The angle t between an embedding e and its target class weight w, from the vectors: with the
// unit rows e^, w^ (in double, via RowNorm) and c = <e^, w^>,
//   p = e^ - c w^ (e^'s part orthogonal to w^),  q = w^ - c e^,  |p| = |q| = sin t,
// so sin t never comes from sqrt(1 - c^2) of a rounded cosine and keeps its accuracy as t -> 0 and
// t -> pi. A zero row has no direction: cosine 0 (t = pi/2, as in the product); a row with inf or
// NaN gives NaN.
template <class RowE, class RowW>
struct TargetGeometry {
  RowNorm ne, nw;
  double cos_t = 0, sin_t = 1;
  Eigen::Matrix<double, 1, Eigen::Dynamic> p, q;

  TargetGeometry(const RowE& e, const RowW& w) : ne(row_norm(e)), nw(row_norm(w)) {
    if (ne.norm != ne.norm || nw.norm != nw.norm) {
      cos_t = sin_t = std::numeric_limits<double>::quiet_NaN();
    } else if (ne.norm > 0 && nw.norm > 0) {
      const auto eu = unit_row(e, ne), wu = unit_row(w, nw);
      cos_t = std::min(1.0, std::max(-1.0, eu.dot(wu)));
      p = eu - cos_t * wu;
      q = wu - cos_t * eu;
      sin_t = 0.5 * (p.norm() + q.norm());
    }
  }
  bool has_directions() const { return ne.norm > 0 && nw.norm > 0; }
};

}  // namespace detail
}  // namespace softmaxlab
