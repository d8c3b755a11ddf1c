// libFuzzer target: GumbelSoftmax (soft and hard) with arbitrary tau, seeds, shapes, storage forms
// and float/double bit patterns, through our Philox4x32 and through std::mt19937. Invalid tau
// must throw std::invalid_argument (and nothing else). Every row keeps gumbel.hpp's rules: a NaN
// row is all NaN; a -inf logit is never drawn (exactly 0); k +inf logits share the mass (soft) or
// the first of them is drawn (hard); otherwise a soft row is a distribution summing to one and a
// hard row an exact one-hot at an unmasked entry.
#include <random>

#include <softmaxlab/gumbel.hpp>
#include <softmaxlab/random.hpp>

#include "fuzz_common.hpp"

namespace {

using namespace softmaxlab_fuzz;

template <class X, class Y>
void check_gumbel_row(const X& x, const Y& y, bool hard) {
  using Scalar = typename X::Scalar;
  const Scalar inf = std::numeric_limits<Scalar>::infinity();
  const Index n = x.size();
  if (n == 0)
    return;
  bool any_nan = false, all_masked = true;
  Index first_inf = -1;
  for (Index i = 0; i < n; ++i) {
    any_nan |= std::isnan(x(i));
    all_masked &= x(i) == -inf;
    if (x(i) == inf && first_inf < 0)
      first_inf = i;
  }
  if (any_nan) {
    for (Index i = 0; i < n; ++i)
      expect(std::isnan(y(i)), "NaN row must be all NaN", i, y(i));
    return;
  }
  if (all_masked) {
    for (Index i = 0; i < n; ++i)
      expect(y(i) == 0, "all-masked row gives zeros", i, y(i));
    return;
  }
  if (hard) {
    Index ones = 0;
    for (Index i = 0; i < n; ++i) {
      expect(y(i) == 0 || y(i) == 1, "hard sample is one-hot", i, y(i));
      if (y(i) == 1) {
        ++ones;
        expect(x(i) != -inf, "a masked logit is never drawn", i, x(i));
        expect(first_inf < 0 || i == first_inf, "hard picks the first +inf", i, x(i));
      }
    }
    expect(ones == 1, "hard sample has exactly one 1", -1, static_cast<double>(ones));
    return;
  }
  Rules rules(Output::Probabilities);
  check_row(x, y, rules);  // the Softmax rules: masked 0, +inf share, finite, sums to one
}

template <class Scalar, class Gen>
void run(const softmaxlab::GumbelSoftmax& g, Bytes& bytes, Gen& gen) {
  using Mat = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  using RowMajor = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Vec = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  const std::uint8_t form = bytes.take<std::uint8_t>();
  const Index rows = bytes.take<std::uint8_t>() % 5;
  const Index cols = bytes.take<std::uint16_t>() % 1100;
  Mat x(rows, cols);
  fill(bytes, x);
  if (x.size() == 0) {
    expect(g.rowwise(x, gen).size() == 0, "empty output");
    return;
  }
  switch (form % 3) {
    case 0: {  // rowwise on column-major (strided rows)
      const Mat y = g.rowwise(x, gen);
      for (Index i = 0; i < rows; ++i)
        check_gumbel_row(Vec(x.row(i).transpose()), Vec(y.row(i).transpose()), g.hard());
      break;
    }
    case 1: {  // colwise on row-major, into a given matrix
      const RowMajor xr = x;
      RowMajor y(rows, cols);
      g.colwise(xr, y, gen);
      for (Index j = 0; j < cols; ++j)
        check_gumbel_row(Vec(xr.col(j)), Vec(y.col(j)), g.hard());
      break;
    }
    default: {  // each row as a vector, in place
      for (Index i = 0; i < rows; ++i) {
        Vec v = x.row(i).transpose();
        Vec y = v;
        g.apply(y, y, gen);
        check_gumbel_row(v, y, g.hard());
      }
      break;
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Bytes bytes(data, size);
  const double tau = bytes.parameter(1.0);
  const std::uint8_t flags = bytes.take<std::uint8_t>();
  const std::uint64_t seed = bytes.take<std::uint64_t>();
  std::optional<softmaxlab::GumbelSoftmax> g;
  if (!construct([&] { g.emplace(tau, (flags & 1) != 0); }))
    return 0;
  softmaxlab::Philox4x32 philox(seed, flags >> 4);
  std::mt19937 mt(static_cast<std::uint32_t>(seed));
  if (flags & 2) {
    (flags & 4) ? run<double>(*g, bytes, philox) : run<float>(*g, bytes, philox);
  } else {
    (flags & 4) ? run<double>(*g, bytes, mt) : run<float>(*g, bytes, mt);
  }
  return 0;
}
