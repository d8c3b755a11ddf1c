// Package smoke test: a consumer outside the project includes the umbrella header, calls the
// exact Softmax on a small vector and checks that the result is a distribution in the right order.
// Exit code 0 means the package is usable as documented.

#include <cmath>
#include <cstdio>

#include <Eigen/Core>

#include <softmaxlab/softmaxlab.hpp>

int main() {
  Eigen::VectorXf x(4);
  x << 1, 2, 3, 4;
  softmaxlab::Softmax f;
  Eigen::VectorXf y = f(x);

  if (y.size() != 4) {
    std::printf("softmax([1 2 3 4]) returned %ld elements, expected 4: FAILED\n",
                static_cast<long>(y.size()));
    return 1;
  }
  const double sum = static_cast<double>(y.sum());
  const bool ok = std::abs(sum - 1.0) < 1e-6 && y(3) > y(2);
  std::printf("softmax([1 2 3 4]) = [%g %g %g %g], sum = %.9g: %s\n", static_cast<double>(y(0)),
              static_cast<double>(y(1)), static_cast<double>(y(2)), static_cast<double>(y(3)), sum,
              ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
