// softmaxlab: header-only softmax variants for Eigen 3.4.
//
// One include for the whole library:
//   Softmax, LogSoftmax            softmax.hpp    exact reference, temperature
//   PowerSoftmax                   power.hpp      x^p / sum x^p (Power-Softmax), HE-friendly
//   PolynomialSoftmax              polynomial.hpp only + - * after the shift; cost report
//   CrossEntropyLoss, L2SvmLoss    loss.hpp       training losses with their gradients
//   HardFusion, SoftFusion         fusion.hpp     SurfaceFusion of two logit sources
//
// Every functor maps each 1-D slice of its input to a distribution of the same length:
//   f(x), f.apply(x, y), f.rowwise(X), f.rowwise(X, Y), f.colwise(X), f.colwise(X, Y).
// and its gradient (vector-Jacobian product): f.backward(x, y, dy), f.backward(x, y, dy, dx),
//   f.rowwise_backward(X, Y, dY[, dX]), f.colwise_backward(X, Y, dY[, dX]).
// See README.md for the numerical policy and each header's doc block for its accuracy.
#pragma once

#include "fusion.hpp"
#include "loss.hpp"
#include "polynomial.hpp"
#include "power.hpp"
#include "softmax.hpp"
