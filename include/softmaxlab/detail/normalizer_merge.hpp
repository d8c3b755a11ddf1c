// softmaxlab: the exact merge of two online-normalizer states [max, sum] (Milakov & Gimelshein,
// arXiv 1805.02867), shared by OnlineNormalizer (single_pass.hpp), the MPI reductions (mpi.hpp) and
// the fused output-layer loss (lce_kernels.hpp). Tested through OnlineNormalizer's merge tests
// (tests/test_single_pass.cpp) and tests/mpi/test_mpi.cpp.
#pragma once

#include <cmath>
#include <limits>

namespace softmaxlab {
namespace detail {

// [max, sum] (+)= [other_max, other_sum] at temperature T: OnlineNormalizer::merge, and the MPI
// reduction of mpi.hpp (Real = long double, on states scaled by 1/T, with T = 1). Commutative
// bit for bit: both orders add the larger-max sum to the rescaled smaller one.
template <class Real>
void merge_normalizer_state(Real& max, long double& sum, Real other_max, long double other_sum,
                            long double temperature) {
  const Real inf = std::numeric_limits<Real>::infinity();
  if (max != max || other_max != other_max) {
    max = std::numeric_limits<Real>::quiet_NaN();
    return;
  }
  if (other_max == -inf)
    return;  // nothing to add (empty or fully masked)
  if (max == inf || other_max == inf) {
    // Only +inf entries carry mass; sum counts them.
    sum = (max == inf ? sum : 0.0L) + (other_max == inf ? other_sum : 0.0L);
    max = inf;
    return;
  }
  if (max == -inf) {
    max = other_max;
    sum = other_sum;
    return;
  }
  // exp((from - to)/T) for from <= to, both finite, in long double.
  const auto rescale = [temperature](Real from, Real to) {
    return std::exp((static_cast<long double>(from) - static_cast<long double>(to)) / temperature);
  };
  if (other_max > max) {
    sum = sum * rescale(max, other_max) + other_sum;
    max = other_max;
  } else {
    sum += other_sum * rescale(other_max, max);
  }
}

}  // namespace detail
}  // namespace softmaxlab
