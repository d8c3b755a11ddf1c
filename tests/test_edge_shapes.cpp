// Edge shapes for every softmax-like functor with the DistributionFunctor interface: one element,
// empty vectors and matrices with zero rows or columns, a float row of 2^24 + 3 elements, strided
// inputs and outputs, in place, row- and column-major storage; apply() and the forms writing into
// a given output never allocate on any of them (AllocationGuard).
//
// Results of the different layouts of the same row must agree exactly: every path runs the same
// packet code (strided rows are staged through the stack in chunks of detail::kChunk, and a
// contiguous row meets the same kernels with the same packet boundaries). Each case below states
// what its header promises for a one-element row (exact 1, exact 0, or the documented bound).
//
// GumbelSoftmax (a generator per call) is checked in its own test case below with a fixed seed:
// every layout draws from a fresh Philox4x32 of the same seed, so results must agree exactly.
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <utility>

#include <catch2/catch.hpp>

#include <softmaxlab/approx/exp.hpp>
#include <softmaxlab/approx/reciprocal.hpp>
#include <softmaxlab/entmax_maps.hpp>
#include <softmaxlab/gumbel.hpp>
#include <softmaxlab/polynomial.hpp>
#include <softmaxlab/power.hpp>
#include <softmaxlab/random.hpp>
#include <softmaxlab/single_pass.hpp>
#include <softmaxlab/softmax.hpp>

#include "support.hpp"

namespace sml = softmaxlab;
using softmaxlab_test::same;
using Index = Eigen::Index;
using softmaxlab_test::AllocationGuard;

namespace {

using RowMajorXf = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using RowMajorXd = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// ---- The cases: how to build each functor and what its header promises on these shapes. --------
// single(f, x) = {expected value for the one-element row (x), absolute tolerance (0: exact)}.

struct SoftmaxCase {
  using F = sml::Softmax;
  static F make() { return F(); }
  static constexpr bool log = false;
  static constexpr bool masks = true;  // a -inf entry is masked (gets exactly 0)
  template <class S>
  static std::pair<long double, double> single(const F&, S) {
    return {1, 0};  // softmax.hpp: exp(0) / exp(0)
  }
};

struct LogSoftmaxCase {
  using F = sml::LogSoftmax;
  static F make() { return F(); }
  static constexpr bool log = true;
  static constexpr bool masks = true;
  template <class S>
  static std::pair<long double, double> single(const F&, S) {
    return {0, 0};  // x - m - log(1)
  }
};

struct SinglePassCase {
  using F = sml::SinglePassSoftmax;
  static F make() { return F(); }
  static constexpr bool log = false;
  static constexpr bool masks = true;
  template <class S>
  static std::pair<long double, double> single(const F&, S) {
    return {1, 0};  // [m, d] = [x, 1]: exp(0) / 1
  }
};

// PowerSoftmax, Stable form (default p = 4): x^p / x^p = 1 exactly (a one-element row is all
// maximal; -inf is infinite mass here, not a mask).
struct PowerStableCase {
  using F = sml::PowerSoftmax;
  static F make() { return F(4); }
  static constexpr bool log = false;
  static constexpr bool masks = false;
  template <class S>
  static std::pair<long double, double> single(const F&, S) {
    return {1, 0};
  }
};

// Sparsemax and Entmax15 (entmax.hpp): a one-element row has threshold x - 1 (x/2 - 1), and the
// output ((x - hi) - lo) with hi + lo = x - 1 is exactly 1 (Entmax15: (2 / 2)^2).
struct SparsemaxCase {
  using F = sml::Sparsemax;
  static F make() { return F(); }
  static constexpr bool log = false;
  static constexpr bool masks = true;
  template <class S>
  static std::pair<long double, double> single(const F&, S) {
    return {1, 0};
  }
};

struct Entmax15Case {
  using F = sml::Entmax15;
  static F make() { return F(); }
  static constexpr bool log = false;
  static constexpr bool masks = true;
  template <class S>
  static std::pair<long double, double> single(const F&, S) {
    return {1, 0};
  }
};

// The eps forms are not 1 on one element: x^p / (eps' + x^p), within (2p + 4) eps (power.hpp).
template <sml::PowerForm kForm, int kP>
struct PowerEpsCase {
  using F = sml::PowerSoftmax;
  static F make() { return F(kP, kForm, 1e-3); }
  static constexpr bool log = false;
  static constexpr bool masks = false;
  template <class S>
  static std::pair<long double, double> single(const F& f, S x) {
    const long double xp = std::pow(static_cast<long double>(x), kP);
    const long double v = xp / (static_cast<long double>(f.eps()) + xp);  // n = 1 for both forms
    return {v, (2 * kP + 4) * std::numeric_limits<S>::epsilon() * static_cast<double>(v)};
  }
};

// PowerSoftmax with the polynomial-only Goldschmidt reciprocal: 1 within its stated bound,
// (2p + 4) eps + the reciprocal's e0^(2^k) + (2k + 2) u; the auto k reaches u, so 16 eps is ample
// for p = 4 and n = 1.
struct PowerGoldschmidtCase {
  using F = sml::PowerSoftmax;
  static F make() {
    sml::PowerSoftmaxOptions o;
    o.reciprocal = sml::ReciprocalMethod::Goldschmidt;
    return F(4, o);
  }
  static constexpr bool log = false;
  static constexpr bool masks = false;
  template <class S>
  static std::pair<long double, double> single(const F& f, S) {
    const int k = f.iterations_for<S>(1);
    return {1, (2 * 4 + 4 + 2 * k + 2) * std::numeric_limits<S>::epsilon()};
  }
};

// PolynomialSoftmax: E(0) R(E(0)) is 1 only within error_bound(1) (polynomial.hpp).
template <sml::ReciprocalMethod kReciprocal, sml::ExpMethod kExp>
struct PolynomialCase {
  using F = sml::PolynomialSoftmax;
  static F make() {
    sml::PolynomialSoftmaxOptions c;
    c.reciprocal = kReciprocal;
    c.exp = kExp;
    if (kExp == sml::ExpMethod::RepeatedSquaring)
      c.squarings = 17;  // range 20 <= 2^17
    return F(c);
  }
  static constexpr bool log = false;
  static constexpr bool masks = true;
  template <class S>
  static std::pair<long double, double> single(const F& f, S) {
    return {1, f.error_bound<S>(1)};
  }
};

template <class Case, class S>
long double probability(S y) {
  return Case::log ? std::exp(static_cast<long double>(y)) : static_cast<long double>(y);
}

// One float row of 2^24 + 3 entries in [-10, 10.02], shared by every case (built once: it is the
// expensive part under the sanitizers).
const Eigen::VectorXf& large_row() {
  static const Eigen::VectorXf x = [] {
    const Index n = (Index(1) << 24) + 3;
    Eigen::VectorXf v(n);
    for (Index i = 0; i < n; ++i)
      v(i) = static_cast<float>((i * 7919) % 2003) * 0.01f - 10.0f;
    return v;
  }();
  return x;
}

// A test row of length n with varied values (and, for masking variants, one -inf entry).
template <class Case, class S>
Eigen::Matrix<S, Eigen::Dynamic, 1> test_row(Index n, double phase) {
  Eigen::Matrix<S, Eigen::Dynamic, 1> x(n);
  for (Index i = 0; i < n; ++i)
    x(i) = static_cast<S>(6 * std::cos(0.37 * static_cast<double>(i) + phase) + 0.01 * phase);
  if (Case::masks && n > 2)
    x(n / 2) = -std::numeric_limits<S>::infinity();
  return x;
}

template <class Case, class S>
void one_element() {
  const auto f = Case::make();
  for (const double v : {-3.5, 0.0, 1.25, 80.0}) {
    const S x = static_cast<S>(v);
    const auto [expected, tolerance] = Case::single(f, x);
    INFO("x = " << v << ", float: " << (std::is_same_v<S, float>));
    const Eigen::Matrix<S, Eigen::Dynamic, 1> in =
        Eigen::Matrix<S, Eigen::Dynamic, 1>::Constant(1, x);
    Eigen::Matrix<S, Eigen::Dynamic, 1> out(1), inplace = in;
    Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic> col = in.replicate(1, 5);  // 1 x 5
    Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic> row = in.replicate(5, 1);  // 5 x 1
    std::size_t allocations = 0;
    {
      AllocationGuard guard;
      f.apply(in, out);
      f.apply(inplace, inplace);
      f.colwise(col, col);  // five one-element columns, in place
      f.rowwise(row, row);  // five one-element rows, in place
      allocations = guard.allocations();
    }
    CHECK(allocations == 0);
    const double error =
        std::fabs(static_cast<double>(static_cast<long double>(out(0)) - expected));
    INFO("y = " << out(0) << ", expected " << static_cast<double>(expected) << ", error " << error
                << " (tolerance " << tolerance << ")");
    if (tolerance == 0) {
      CHECK(out(0) == static_cast<S>(expected));
    } else {
      CHECK(error <= tolerance);
    }
    CHECK(inplace(0) == out(0));
    CHECK((col.array() == out(0)).all());
    CHECK((row.array() == out(0)).all());
    CHECK(f(in)(0) == out(0));
  }
}

template <class Case>
void empty_shapes() {
  const auto f = Case::make();
  CHECK(f(Eigen::VectorXf()).size() == 0);
  CHECK(f(Eigen::RowVectorXd()).size() == 0);
  for (Index r : {0, 3}) {
    for (Index c : {0, 4}) {
      if (r * c != 0)
        continue;
      INFO(r << " x " << c);
      const Eigen::MatrixXf m(r, c);
      const RowMajorXd mr(r, c);
      const Eigen::MatrixXf rows = f.rowwise(m), cols = f.colwise(m);
      CHECK((rows.rows() == r && rows.cols() == c));
      CHECK((cols.rows() == r && cols.cols() == c));
      const RowMajorXd rows_r = f.rowwise(mr), cols_r = f.colwise(mr);
      CHECK((rows_r.rows() == r && rows_r.cols() == c));
      CHECK((cols_r.rows() == r && cols_r.cols() == c));
      Eigen::MatrixXf out(r, c), in_place(r, c);
      RowMajorXd out_r(r, c);
      Eigen::VectorXf empty_in, empty_out;
      std::size_t allocations = 0;
      {
        AllocationGuard guard;
        f.rowwise(m, out);
        f.colwise(m, out);
        f.rowwise(in_place, in_place);
        f.colwise(mr, out_r);
        f.rowwise(mr.transpose(), out_r.transpose());
        f.apply(empty_in, empty_out);
        f.apply(empty_out, empty_out);
        f.apply(empty_in * 2.0f, empty_out);  // an empty expression
        allocations = guard.allocations();
      }
      CHECK(allocations == 0);
    }
  }
  // A wrong output size still throws on empty inputs.
  Eigen::VectorXf one(1);
  CHECK_THROWS_AS(f.apply(Eigen::VectorXf(), one), std::invalid_argument);
}

// The same rows through every storage order and slicing: rowwise of column-major (strided rows)
// and of row-major (contiguous rows), colwise of the transposes, expression inputs, in place;
// every result equals the one-row call on a contiguous copy, bit for bit.
template <class Case, class S>
void storage_orders() {
  using Col = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;
  using Row = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Vec = Eigen::Matrix<S, Eigen::Dynamic, 1>;
  const auto f = Case::make();
  for (Index n : {Index(1), Index(2), Index(13), Index(517), Index(1027)}) {
    INFO("rows of length " << n << ", float: " << (std::is_same_v<S, float>));
    const Index count = 5;
    Col x(count, n);
    for (Index i = 0; i < count; ++i)
      x.row(i) = test_row<Case, S>(n, static_cast<double>(i)).transpose();
    Col expected(count, n);
    for (Index i = 0; i < count; ++i)
      expected.row(i) = f(Vec(x.row(i).transpose())).transpose();

    const Row xr = x;
    const Col xt = x.transpose();
    const Row xtr = x.transpose();
    Col out_c(count, n), out_t(n, count), in_place_c = x, in_place_t = xt;
    Row out_r(count, n), out_tr(n, count), in_place_r = xr;
    std::size_t allocations = 0;
    {
      AllocationGuard guard;
      f.rowwise(x, out_c);     // strided rows
      f.rowwise(xr, out_r);    // contiguous rows
      f.colwise(xt, out_t);    // contiguous columns
      f.colwise(xtr, out_tr);  // strided columns
      f.rowwise(in_place_c, in_place_c);
      f.rowwise(in_place_r, in_place_r);
      f.colwise(in_place_t, in_place_t);
      allocations = guard.allocations();
    }
    CHECK(allocations == 0);
    CHECK(same(out_c, expected));
    CHECK(same(out_r, expected));
    CHECK(same(out_t.transpose(), expected));
    CHECK(same(out_tr.transpose(), expected));
    CHECK(same(in_place_c, expected));
    CHECK(same(in_place_r, expected));
    CHECK(same(in_place_t.transpose(), expected));
    CHECK(same(f.rowwise(x), expected));
    CHECK(same(f.colwise(xtr).transpose(), expected));
    CHECK(same(f.rowwise(x * S(1)), expected));  // an expression: evaluated into the output
    // Rows written into a row-major output from a column-major input, one at a time.
    Row one_by_one(count, n);
    {
      AllocationGuard guard;
      for (Index i = 0; i < count; ++i)
        f.apply(x.row(i), one_by_one.row(i));
      allocations = guard.allocations();
    }
    CHECK(allocations == 0);
    CHECK(same(one_by_one, expected));
  }
}

// Strided input and output through Map with inner strides, odd lengths around the packet and
// chunk sizes.
template <class Case>
void strided_maps() {
  const auto f = Case::make();
  for (Index n : {1, 2, 7, 15, 16, 17, 511, 512, 513, 1025}) {
    const Eigen::VectorXd x = test_row<Case, double>(n, 0.5);
    const Eigen::VectorXd y = f(x);
    Eigen::VectorXd in_storage = Eigen::VectorXd::Zero(3 * n), out_storage(5 * n);
    Eigen::Map<Eigen::VectorXd, 0, Eigen::InnerStride<3>> in(in_storage.data(), n);
    Eigen::Map<Eigen::VectorXd, 0, Eigen::InnerStride<>> out(out_storage.data(), n,
                                                             Eigen::InnerStride<>(5));
    in = x;
    std::size_t allocations = 0;
    {
      AllocationGuard guard;
      f.apply(in, out);
      allocations = guard.allocations();
    }
    INFO("n = " << n);
    CHECK(allocations == 0);
    CHECK(same(Eigen::VectorXd(out), y));
    {
      AllocationGuard guard;
      f.apply(in, in);  // in place, strided
      allocations = guard.allocations();
    }
    CHECK(allocations == 0);
    CHECK(same(Eigen::VectorXd(in), y));
  }
}

// The float row of 2^24 + 3: sums to 1 within 2e-6 (DESIGN.md, every variant), and contiguous,
// strided, in place (strided and contiguous) agree exactly; apply never allocates.
template <class Case>
void large_row_case() {
  const auto f = Case::make();
  const Eigen::VectorXf& x = large_row();
  const Index n = x.size();
  Eigen::VectorXf y(n);
  std::size_t allocations = 0;
  {
    AllocationGuard guard;
    f.apply(x, y);
    allocations = guard.allocations();
  }
  CHECK(allocations == 0);
  long double sum = 0;
  bool finite = true;
  for (Index i = 0; i < n; ++i) {
    finite = finite && std::isfinite(y(i));
    sum += probability<Case>(y(i));
  }
  INFO("sum - 1 = " << static_cast<double>(sum - 1));
  CHECK(finite);
  CHECK(std::fabs(static_cast<double>(sum - 1)) <= 2e-6);
  // The same row strided inside a 2-row column-major matrix, written into a strided output.
  Eigen::MatrixXf m(2, n);
  m.row(1) = x.transpose();
  {
    Eigen::MatrixXf out(2, n);
    {
      AllocationGuard guard;
      f.apply(m.row(1), out.row(0));
      allocations = guard.allocations();
    }
    CHECK(allocations == 0);
    CHECK(same(out.row(0).transpose(), y));
  }
  {
    AllocationGuard guard;
    f.apply(m.row(1), m.row(1));  // in place, strided
    allocations = guard.allocations();
  }
  CHECK(allocations == 0);
  CHECK(same(m.row(1).transpose(), y));
  m.resize(0, 0);
  Eigen::VectorXf z = x;
  {
    AllocationGuard guard;
    f.apply(z, z);  // in place, contiguous
    allocations = guard.allocations();
  }
  CHECK(allocations == 0);
  CHECK(same(z, y));
}

template <class Case>
void distribution_edges() {
  SECTION("one element: the header's value (exact where it promises exactness), float and double") {
    one_element<Case, float>();
    one_element<Case, double>();
  }
  SECTION("zero elements, zero rows, zero columns: empty in, empty out, both storage orders") {
    empty_shapes<Case>();
  }
  SECTION("row- and column-major storage, rowwise and colwise, in place: bitwise the same rows") {
    storage_orders<Case, float>();
    storage_orders<Case, double>();
  }
  SECTION("strided input and output through Map with inner strides, odd lengths") {
    strided_maps<Case>();
  }
  SECTION("a float row of 2^24 + 3: sums to 1; contiguous, strided and in place agree exactly") {
    large_row_case<Case>();
  }
}

}  // namespace

TEST_CASE("edge shapes: Softmax", "[edge]") {
  distribution_edges<SoftmaxCase>();
}

TEST_CASE("edge shapes: LogSoftmax", "[edge]") {
  distribution_edges<LogSoftmaxCase>();
}

TEST_CASE("edge shapes: SinglePassSoftmax", "[edge]") {
  distribution_edges<SinglePassCase>();
}

TEST_CASE("edge shapes: Sparsemax", "[edge]") {
  distribution_edges<SparsemaxCase>();
}

TEST_CASE("edge shapes: Entmax15", "[edge]") {
  distribution_edges<Entmax15Case>();
}

TEST_CASE("edge shapes: PowerSoftmax Stable", "[edge]") {
  distribution_edges<PowerStableCase>();
}

TEST_CASE("edge shapes: PowerSoftmax Lipschitz", "[edge]") {
  distribution_edges<PowerEpsCase<sml::PowerForm::Lipschitz, 4>>();
}

TEST_CASE("edge shapes: PowerSoftmax LengthAgnostic p = 6", "[edge]") {
  distribution_edges<PowerEpsCase<sml::PowerForm::LengthAgnostic, 6>>();
}

TEST_CASE("edge shapes: PowerSoftmax Goldschmidt", "[edge]") {
  distribution_edges<PowerGoldschmidtCase>();
}

TEST_CASE("edge shapes: PolynomialSoftmax", "[edge]") {
  distribution_edges<
      PolynomialCase<sml::ReciprocalMethod::Goldschmidt, sml::ExpMethod::Chebyshev>>();
}

TEST_CASE("edge shapes: PolynomialSoftmax Newton, RepeatedSquaring", "[edge]") {
  distribution_edges<
      PolynomialCase<sml::ReciprocalMethod::Newton, sml::ExpMethod::RepeatedSquaring>>();
}

namespace {

constexpr std::uint64_t kSeed = 20261127;

// The next word of gen equals the word `position` of a fresh generator of the seed: how many
// words a call consumed.
bool consumed(sml::Philox4x32 gen, unsigned long long position) {
  sml::Philox4x32 fresh(kSeed);
  fresh.discard(position);
  return gen() == fresh();
}

template <class S>
void gumbel_one_element(const sml::GumbelSoftmax& g) {
  INFO("float: " << (std::is_same_v<S, float>));
  const unsigned long long words = std::is_same_v<S, float> ? 1 : 2;
  for (const double v : {-3.5, 0.0, 80.0}) {
    const Eigen::Matrix<S, Eigen::Dynamic, 1> in =
        Eigen::Matrix<S, Eigen::Dynamic, 1>::Constant(1, static_cast<S>(v));
    Eigen::Matrix<S, Eigen::Dynamic, 1> out(1), inplace = in;
    Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic> rows = in.replicate(5, 1);  // 5 x 1
    sml::Philox4x32 gen(kSeed), gen2(kSeed), gen3(kSeed);
    std::size_t allocations = 0;
    {
      AllocationGuard guard;
      g.apply(in, out, gen);
      g.apply(inplace, inplace, gen2);
      g.rowwise(rows, rows, gen3);
      allocations = guard.allocations();
    }
    INFO("x = " << v);
    CHECK(allocations == 0);
    CHECK(out(0) == S(1));  // soft: exp(0) / exp(0); hard: the one-hot of the only entry
    CHECK(inplace(0) == S(1));
    CHECK((rows.array() == S(1)).all());
    CHECK(consumed(gen, words));
    CHECK(consumed(gen2, words));
    CHECK(consumed(gen3, 5 * words));
    sml::Philox4x32 gen4(kSeed);
    CHECK(sml::GumbelSoftmax::sample(in, gen4) == 0);
    CHECK(consumed(gen4, words));
  }
}

void gumbel_empty(const sml::GumbelSoftmax& g) {
  sml::Philox4x32 gen(kSeed);
  CHECK(g(Eigen::VectorXf(), gen).size() == 0);
  CHECK(g(Eigen::RowVectorXd(), gen).size() == 0);
  for (Index r : {0, 3}) {
    for (Index c : {0, 4}) {
      if (r * c != 0)
        continue;
      INFO(r << " x " << c);
      const Eigen::MatrixXf m(r, c);
      const RowMajorXd mr(r, c);
      CHECK(g.rowwise(m, gen).size() == 0);
      CHECK(g.colwise(mr, gen).size() == 0);
      Eigen::MatrixXf out(r, c);
      RowMajorXd out_r(r, c);
      Eigen::VectorXf empty_in, empty_out;
      std::size_t allocations = 0;
      {
        AllocationGuard guard;
        g.rowwise(m, out, gen);
        g.colwise(m, out, gen);
        g.colwise(mr, out_r, gen);
        g.rowwise(out, out, gen);
        g.apply(empty_in, empty_out, gen);
        g.apply(empty_in * 2.0f, empty_out, gen);
        allocations = guard.allocations();
      }
      CHECK(allocations == 0);
    }
  }
  CHECK(sml::GumbelSoftmax::sample(Eigen::VectorXf(), gen) == -1);
  CHECK(consumed(gen, 0));  // an empty input consumes no random words
}

// Every layout draws from a fresh generator of the same seed, rows (or columns) in order, so the
// results equal the one-row calls on contiguous copies, bit for bit.
template <class S, class Gen>
void gumbel_storage_orders(const sml::GumbelSoftmax& g) {
  using Col = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;
  using Row = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Vec = Eigen::Matrix<S, Eigen::Dynamic, 1>;
  for (Index n : {Index(1), Index(2), Index(13), Index(517), Index(1027)}) {
    INFO("rows of length " << n << ", float: " << (std::is_same_v<S, float>));
    const Index count = 4;
    Col x(count, n);
    for (Index i = 0; i < count; ++i)
      x.row(i) = test_row<SoftmaxCase, S>(n, static_cast<double>(i)).transpose();
    Col expected(count, n);
    {
      Gen gen(kSeed);
      for (Index i = 0; i < count; ++i)
        expected.row(i) = g(Vec(x.row(i).transpose()), gen).transpose();
    }
    const Row xr = x;
    const Col xt = x.transpose();
    const Row xtr = x.transpose();
    Col out_c(count, n), out_t(n, count), in_place_c = x;
    Row out_r(count, n), out_tr(n, count), in_place_r = xr, one_by_one(count, n);
    Gen g1(kSeed), g2(kSeed), g3(kSeed), g4(kSeed), g5(kSeed), g6(kSeed), g7(kSeed);
    std::size_t allocations = 0;
    {
      AllocationGuard guard;
      g.rowwise(x, out_c, g1);     // strided rows
      g.rowwise(xr, out_r, g2);    // contiguous rows
      g.colwise(xt, out_t, g3);    // contiguous columns
      g.colwise(xtr, out_tr, g4);  // strided columns
      g.rowwise(in_place_c, in_place_c, g5);
      g.rowwise(in_place_r, in_place_r, g6);
      for (Index i = 0; i < count; ++i)
        g.apply(x.row(i), one_by_one.row(i), g7);
      allocations = guard.allocations();
    }
    CHECK(allocations == 0);
    CHECK(same(out_c, expected));
    CHECK(same(out_r, expected));
    CHECK(same(out_t.transpose(), expected));
    CHECK(same(out_tr.transpose(), expected));
    CHECK(same(in_place_c, expected));
    CHECK(same(in_place_r, expected));
    CHECK(same(one_by_one, expected));
    Gen g8(kSeed);
    CHECK(same(g.rowwise(x * S(1), g8), expected));  // an expression: evaluated into the output
  }
}

void gumbel_strided_maps(const sml::GumbelSoftmax& g) {
  for (Index n : {1, 2, 7, 15, 16, 17, 511, 512, 513, 1025}) {
    const Eigen::VectorXd x = test_row<SoftmaxCase, double>(n, 0.5);
    sml::Philox4x32 gen(kSeed), gen2(kSeed), gen3(kSeed);
    const Eigen::VectorXd y = g(x, gen);
    Eigen::VectorXd in_storage = Eigen::VectorXd::Zero(3 * n), out_storage(5 * n);
    Eigen::Map<Eigen::VectorXd, 0, Eigen::InnerStride<3>> in(in_storage.data(), n);
    Eigen::Map<Eigen::VectorXd, 0, Eigen::InnerStride<>> out(out_storage.data(), n,
                                                             Eigen::InnerStride<>(5));
    in = x;
    std::size_t allocations = 0;
    {
      AllocationGuard guard;
      g.apply(in, out, gen2);
      g.apply(in, in, gen3);  // in place, strided
      allocations = guard.allocations();
    }
    INFO("n = " << n);
    CHECK(allocations == 0);
    CHECK(same(Eigen::VectorXd(out), y));
    CHECK(same(Eigen::VectorXd(in), y));
  }
}

void gumbel_large_row(const sml::GumbelSoftmax& g) {
  const Eigen::VectorXf& x = large_row();
  const Index n = x.size();
  Eigen::VectorXf y(n);
  sml::Philox4x32 gen(kSeed), gen2(kSeed), gen3(kSeed);
  std::size_t allocations = 0;
  {
    AllocationGuard guard;
    g.apply(x, y, gen);
    allocations = guard.allocations();
  }
  CHECK(allocations == 0);
  CHECK(consumed(gen, static_cast<unsigned long long>(n)));
  long double sum = 0;
  Index ones = 0, zeros = 0;
  bool finite = true;
  for (Index i = 0; i < n; ++i) {
    finite = finite && std::isfinite(y(i));
    sum += y(i);
    ones += y(i) == 1.0f;
    zeros += y(i) == 0.0f;
  }
  INFO("sum - 1 = " << static_cast<double>(sum - 1));
  CHECK(finite);
  CHECK(std::fabs(static_cast<double>(sum - 1)) <= 2e-6);
  if (g.hard()) {
    CHECK(ones == 1);
    CHECK(zeros == n - 1);
  }
  Eigen::MatrixXf m(2, n);
  m.row(1) = x.transpose();
  {
    Eigen::MatrixXf out(2, n);
    {
      AllocationGuard guard;
      g.apply(m.row(1), out.row(0), gen2);
      allocations = guard.allocations();
    }
    CHECK(allocations == 0);
    CHECK(same(out.row(0).transpose(), y));
  }
  {
    AllocationGuard guard;
    g.apply(m.row(1), m.row(1), gen3);  // in place, strided
    allocations = guard.allocations();
  }
  CHECK(allocations == 0);
  CHECK(same(m.row(1).transpose(), y));
}

}  // namespace

TEST_CASE("edge shapes: GumbelSoftmax", "[edge]") {
  // soft at tau 1 and 0.5, hard; the same seed for every layout.
  const sml::GumbelSoftmax forms[] = {sml::GumbelSoftmax(1.0), sml::GumbelSoftmax(0.5),
                                      sml::GumbelSoftmax(1.0, true)};
  SECTION("one element gives exactly 1 (soft and hard) and consumes one uniform") {
    for (const auto& g : forms) {
      INFO("tau = " << g.tau() << ", hard = " << g.hard());
      gumbel_one_element<float>(g);
      gumbel_one_element<double>(g);
    }
  }
  SECTION("zero elements, zero rows, zero columns: empty out, no random words consumed") {
    for (const auto& g : forms) {
      INFO("tau = " << g.tau() << ", hard = " << g.hard());
      gumbel_empty(g);
    }
  }
  SECTION("row- and column-major storage, in place, same seed: bitwise the same samples") {
    for (const auto& g : forms) {
      INFO("tau = " << g.tau() << ", hard = " << g.hard());
      gumbel_storage_orders<float, sml::Philox4x32>(g);
      gumbel_storage_orders<double, sml::Philox4x32>(g);
      gumbel_storage_orders<float, std::mt19937>(g);  // the generic generator path
    }
  }
  SECTION("strided input and output through Map with inner strides, odd lengths") {
    for (const auto& g : forms) {
      INFO("tau = " << g.tau() << ", hard = " << g.hard());
      gumbel_strided_maps(g);
    }
  }
  SECTION("a float row of 2^24 + 3: sums to 1 (hard: one 1); layouts agree exactly") {
    gumbel_large_row(sml::GumbelSoftmax(1.0));
    gumbel_large_row(sml::GumbelSoftmax(1.0, true));
  }
}
