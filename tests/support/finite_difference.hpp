// Finite-difference gradients for the backward and loss tests, in double
// precision: the fourth-order central stencil (-L(x+2h) + 8 L(x+h) - 8 L(x-h) + L(x-2h)) / 12h with
// h = 1e-3, whose truncation error (~h^4) and rounding error (~eps/h) both stay near 1e-12
// relative.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

#include <Eigen/Core>

#include "random_inputs.hpp"  // random_normal, which the gradient tests use beside these

namespace softmaxlab_test {

// Gradient of the scalar function loss(X) at X (any double matrix or vector shape); entries equal
// to -inf (masked) are not perturbed and get 0.
template <class M, class Loss>
M fd_scalar_gradient(const Loss& loss, const M& x, double h = 1e-3) {
  M g = M::Zero(x.rows(), x.cols());
  M p = x;
  for (Eigen::Index i = 0; i < x.size(); ++i) {
    const double xi = x(i);
    if (!std::isfinite(xi))
      continue;
    auto at = [&](double offset) {
      p(i) = xi + offset;
      const double v = loss(p);
      p(i) = xi;
      return v;
    };
    // Differences first: a loss that does not depend on x_i gives exactly 0.
    const double near = at(h) - at(-h), far = at(2 * h) - at(-2 * h);
    g(i) = (8 * near - far) / (12 * h);
  }
  return g;
}

// Vector-Jacobian product dy^T J_f(x) by finite differences of <dy, f(x)>; entries where f is
// -inf (masked log-probabilities, constant) are left out of the dot product.
template <class M, class F>
M fd_gradient(const F& f, const M& x, const M& dy, double h = 1e-3) {
  return fd_scalar_gradient(
      [&](const M& v) {
        const M y = f(v);
        double s = 0;
        for (Eigen::Index i = 0; i < y.size(); ++i) {
          if (std::isfinite(y(i)))
            s += dy(i) * y(i);
        }
        return s;
      },
      x, h);
}

// max_i |got_i - fd_i| / max_i |fd_i| over the finite entries of x (the norm-wise relative error
// in the max norm); an all-zero fd gives the absolute error.
template <class A, class B, class X>
double fd_relative_error(const A& got, const B& fd, const X& x) {
  double err = 0, scale = 0;
  for (Eigen::Index i = 0; i < x.size(); ++i) {
    if (!std::isfinite(x(i)))
      continue;
    err = std::max(err, std::fabs(double(got(i)) - fd(i)));
    if (std::isnan(double(got(i))))
      err = std::numeric_limits<double>::infinity();
    scale = std::max(scale, std::fabs(fd(i)));
  }
  return scale > 0 ? err / scale : err;
}

}  // namespace softmaxlab_test
