// AttentionSoftmax and Attention (attention.hpp): accuracy against long-double evaluations of the
// exact formulas on the same inputs (the transformed scores, and the materialized attention),
// errors in eps with the worst case printed; the special-value policy; the call forms (masks full
// or broadcast, in place, no allocation, shape errors); the exact merge of key shards; backward
// passes against central finite differences in double.
#include <algorithm>
#include <cmath>
#include <iostream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include <softmaxlab/attention.hpp>

#include "support.hpp"

namespace sml = softmaxlab;
using Index = Eigen::Index;
using softmaxlab_test::AllocationGuard;
using softmaxlab_test::fd_relative_error;
using softmaxlab_test::fd_scalar_gradient;
using softmaxlab_test::same;
using softmaxlab_test::Worst;

namespace {

template <class S>
using Mat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;
template <class S>
using Vec = Eigen::Matrix<S, Eigen::Dynamic, 1>;
using LMat = Eigen::Matrix<long double, Eigen::Dynamic, Eigen::Dynamic>;
using LVec = Eigen::Matrix<long double, Eigen::Dynamic, 1>;

const long double kInfL = std::numeric_limits<long double>::infinity();

template <class S>
Mat<S> normal_matrix(Index rows, Index cols, unsigned seed, double sigma) {
  return softmaxlab_test::random_normal(rows, cols, seed, sigma).cast<S>();
}

// The parameters of one reference evaluation, in double (the values the user passes).
struct Params {
  double scale = 1, cap = 0, slope = 1;
  bool has_sink = false;
  double sink = 0;
  bool causal = false;
  sml::AttentionOptions options(bool with_scale = true) const {
    sml::AttentionOptions o;
    if (with_scale)
      o = o.with_scale(scale);
    o = o.with_softcap(cap).with_mask_slope(slope).with_causal(causal);
    if (has_sink)
      o = o.with_sink(sink);
    return o;
  }
};

// Exact transformed score cap(scale s) + slope mask in long double; -inf when masked.
long double transformed(long double s, long double mask, const Params& p) {
  if (s == -kInfL || mask == -kInfL)
    return -kInfL;
  long double t = p.scale * s;
  if (p.cap > 0)
    t = p.cap * std::tanh(t / p.cap);
  return t + p.slope * mask;
}

// ---------------------------------------------------------------------------------------------
// AttentionSoftmax

// Checks y = AttentionSoftmax(x, mask) against the long-double formula: relative error
// <= 4 (1 + |T_i - M|) + d_i + max_j d_j eps, d_j = |scale x_j| + |m mask_j| + 2|T_j| + 2
// (the header's bound); masked entries exactly 0; the sum (with the sink's share) 1.
template <class S>
void check_attention_softmax_row(const Vec<S>& x, const Vec<S>* mask, const Vec<S>& y,
                                 const Params& p, const std::string& what, Worst& summary) {
  const Index n = x.size();
  std::vector<long double> t(n), d(n);
  long double top = p.has_sink ? static_cast<long double>(p.sink) : -kInfL, d_max = 0;
  for (Index i = 0; i < n; ++i) {
    const long double m = mask ? static_cast<long double>((*mask)(i)) : 0.0L;
    t[i] = transformed(x(i), m, p);
    if (t[i] == -kInfL)
      continue;
    top = std::max(top, t[i]);
    d[i] = std::fabs(p.scale * x(i)) + std::fabs(p.slope * m) + 2 * std::fabs(t[i]) + 2;
    d_max = std::max(d_max, d[i]);
  }
  long double sum = p.has_sink ? std::exp(p.sink - top) : 0.0L;
  for (Index i = 0; i < n; ++i)
    sum += t[i] == -kInfL ? 0.0L : std::exp(t[i] - top);
  const double eps = std::numeric_limits<S>::epsilon();
  Worst worst;
  long double total = 0;
  for (Index i = 0; i < n; ++i) {
    auto at = [&](std::ostream& s) {
      s << what << " [" << i << "] x = " << x(i) << ", y = " << y(i);
    };
    if (t[i] == -kInfL) {
      worst.update(y(i) == 0 ? 0.0 : INFINITY, 1.0, at);
      continue;
    }
    const long double exact = std::exp(t[i] - top) / sum;
    const long double floor = std::numeric_limits<S>::min();
    const double err =
        static_cast<double>(std::fabs(y(i) - exact) / (eps * std::max(exact, floor)));
    const double bound = static_cast<double>(4 * (1 + std::fabs(t[i] - top)) + d[i] + d_max);
    worst.update(err, bound, at);
    total += y(i);
  }
  INFO(worst.report());
  CHECK(worst.ratio <= 1.0);
  if (!(worst.ratio <= summary.ratio))
    summary = worst;
  if (total == 0 && worst.ratio == 0)
    return;  // every entry masked: zeros (checked above), no mass at all
  const long double expected_total = 1 - (p.has_sink ? std::exp(p.sink - top) / sum : 0.0L);
  CHECK(std::fabs(static_cast<double>(total - expected_total)) <= (sizeof(S) == 4 ? 2e-6 : 1e-14));
}

template <class S>
void attention_softmax_accuracy(Worst& summary) {
  std::mt19937 gen(1212);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  const std::vector<Params> params = [] {
    std::vector<Params> v;
    Params p;
    p.scale = 0.125;
    v.push_back(p);  // scale only
    p.scale = 0.3;
    p.slope = 0.5;
    v.push_back(p);  // scale and ALiBi-style slope
    p.cap = 30;
    v.push_back(p);  // softcap
    p.has_sink = true;
    p.sink = 2.5;
    v.push_back(p);  // sink
    p.cap = 0;
    p.scale = 1;
    p.sink = 40;  // a sink above every score
    v.push_back(p);
    return v;
  }();
  for (Index n : {1, 7, 100, 1000, 4097}) {
    for (std::size_t k = 0; k < params.size(); ++k) {
      const Params& p = params[k];
      const sml::AttentionSoftmax f(p.options());
      Vec<S> x = normal_matrix<S>(n, 1, unsigned(17 * n + k), 8.0);
      Vec<S> mask = normal_matrix<S>(n, 1, unsigned(31 * n + k), 3.0);
      for (Index i = 0; i < n; ++i) {
        if (unit(gen) < 0.1)
          mask(i) = -std::numeric_limits<S>::infinity();
        if (unit(gen) < 0.05)
          x(i) = -std::numeric_limits<S>::infinity();
      }
      const std::string what = "n = " + std::to_string(n) + ", params " + std::to_string(k);
      Vec<S> y(n);
      f.apply_masked(x, mask, y);
      check_attention_softmax_row<S>(x, &mask, y, p, what + " masked", summary);
      f.apply(x, y);
      check_attention_softmax_row<S>(x, nullptr, y, p, what + " unmasked", summary);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Attention: the materialized long-double reference.

using AttentionRef = softmaxlab_test::AttentionReference;  // tests/support/attention_reference.hpp

template <class S>
AttentionRef attention_reference(const Mat<S>& q, const Mat<S>& k, const Mat<S>& v,
                                 const Mat<S>* mask, const Params& p) {
  const Index lq = q.rows(), lk = k.rows();
  const LMat ql = q.template cast<long double>(), kl = k.template cast<long double>();
  const LMat s = ql * kl.transpose();
  const auto score = [&](Index i, Index j) {
    const bool visible = !p.causal || j <= i + lk - lq;
    return visible ? transformed(s(i, j), mask ? (*mask)(i, j) : S(0), p) : -kInfL;
  };
  return softmaxlab_test::materialized_attention(lq, v.template cast<long double>().eval(), score,
                                                 p.has_sink, static_cast<long double>(p.sink));
}

// |O - exact| <= 8 eps (1 + max|V|) per entry; lse within 8 eps (1 + |lse| + scale sum|q||k|).
template <class S>
void check_attention(const Mat<S>& o, const Vec<S>& lse, const AttentionRef& ref, const Mat<S>& v,
                     const std::string& what, Worst& summary) {
  const double eps = std::numeric_limits<S>::epsilon();
  const double vmax = v.size() ? static_cast<double>(v.cwiseAbs().maxCoeff()) : 0.0;
  Worst worst;
  for (Index i = 0; i < o.rows(); ++i) {
    for (Index j = 0; j < o.cols(); ++j) {
      const double err = static_cast<double>(std::fabs(o(i, j) - ref.o(i, j))) / eps;
      worst.update(err, 8 * (1 + vmax), [&](std::ostream& s) {
        s << what << " O(" << i << ", " << j << ") = " << o(i, j) << ", exact "
          << double(ref.o(i, j));
      });
    }
    auto at = [&](std::ostream& s) {
      s << what << " lse(" << i << ") = " << lse(i) << ", exact " << double(ref.lse(i));
    };
    if (ref.lse(i) == -kInfL) {
      worst.update(lse(i) == -std::numeric_limits<S>::infinity() ? 0.0 : INFINITY, 1.0, at);
    } else {
      const double err = static_cast<double>(std::fabs(lse(i) - ref.lse(i))) / eps;
      worst.update(err, 8 * (1 + std::fabs(double(ref.lse(i)))), at);
    }
  }
  INFO(worst.report());
  CHECK(worst.ratio <= 1.0);
  if (!(worst.ratio <= summary.ratio))
    summary = worst;
}

struct Shape {
  Index lq, lk, d, dv;
};

template <class S>
void attention_accuracy(Worst& summary) {
  const std::vector<Shape> shapes = {{1, 1, 4, 4},      {5, 9, 8, 3},       {33, 200, 16, 16},
                                     {64, 300, 64, 64}, {130, 257, 64, 32}, {1, 2000, 64, 64},
                                     {200, 100, 32, 40}};
  int case_id = 0;
  for (const Shape& sh : shapes) {
    for (int variant = 0; variant < 5; ++variant, ++case_id) {
      Params p;
      p.scale = 1.0 / std::sqrt(double(sh.d));
      p.causal = variant % 2 == 1;
      if (variant >= 2)
        p.cap = 5;
      if (variant >= 3) {
        p.has_sink = true;
        p.sink = 0.75;
      }
      const bool use_mask = variant == 4;
      p.slope = use_mask ? 0.5 : 1.0;
      const Mat<S> q = normal_matrix<S>(sh.lq, sh.d, unsigned(3 * case_id + 1), 1.0);
      const Mat<S> k = normal_matrix<S>(sh.lk, sh.d, unsigned(3 * case_id + 2), 1.0);
      const Mat<S> v = normal_matrix<S>(sh.lk, sh.dv, unsigned(3 * case_id + 3), 2.0);
      Mat<S> mask = normal_matrix<S>(sh.lq, sh.lk, unsigned(1000 + case_id), 1.0);
      for (Index i = 0; i < mask.size(); i += 7)
        mask(i) = -std::numeric_limits<S>::infinity();
      // Default scale (1/sqrt(d)) on the unmasked variants, explicit on the others.
      sml::Attention<> attn(p.options(use_mask));
      Mat<S> o(sh.lq, sh.dv);
      Vec<S> lse(sh.lq);
      if (use_mask) {
        attn.apply_masked(q, k, v, mask, o, lse);
      } else {
        attn.apply(q, k, v, o, lse);
      }
      const AttentionRef ref = attention_reference<S>(q, k, v, use_mask ? &mask : nullptr, p);
      const std::string what = "Lq " + std::to_string(sh.lq) + " Lk " + std::to_string(sh.lk)
                               + " d " + std::to_string(sh.d) + " variant "
                               + std::to_string(variant);
      check_attention<S>(o, lse, ref, v, what, summary);
      // Small blocks: many key blocks and ragged query blocks, the same bound.
      attn = attn.with_block_sizes(7, 5);
      if (use_mask) {
        attn.apply_masked(q, k, v, mask, o, lse);
      } else {
        attn.apply(q, k, v, o, lse);
      }
      check_attention<S>(o, lse, ref, v, what + " blocks 7 x 5", summary);
    }
  }
}

}  // namespace

TEST_CASE("AttentionOptions: parameters are validated, errors name parameter and value",
          "[attention]") {
  using Catch::Matchers::Contains;
  const sml::AttentionOptions o;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  CHECK_THROWS_WITH(o.with_scale(0), Contains("scale") && Contains("0"));
  CHECK_THROWS_WITH(o.with_scale(nan), Contains("scale") && Contains("nan"));
  CHECK_THROWS_WITH(o.with_scale(-2), Contains("scale") && Contains("-2"));
  CHECK_THROWS_WITH(o.with_softcap(-1.5), Contains("softcap") && Contains("-1.5"));
  CHECK_THROWS_WITH(o.with_softcap(inf), Contains("softcap") && Contains("inf"));
  CHECK_THROWS_WITH(o.with_mask_slope(0), Contains("mask_slope") && Contains("0"));
  CHECK_THROWS_WITH(o.with_sink(-inf), Contains("sink") && Contains("inf"));
  CHECK_THROWS_WITH(o.with_sink(nan), Contains("sink") && Contains("nan"));
  // Bounded as temperatures are: a double 1e-300 would round to 0 in float (fuzz finding: a float
  // row with +inf and scale 4.85e-299 gave 0 * inf = NaN).
  CHECK_THROWS_WITH(o.with_scale(4.85e-299), Contains("scale") && Contains("2^-100"));
  CHECK_THROWS_WITH(o.with_scale(1e300), Contains("scale") && Contains("1e+300"));
  CHECK_THROWS_WITH(o.with_softcap(1e-45), Contains("softcap"));
  CHECK_THROWS_WITH(o.with_mask_slope(1e31 * 1e10), Contains("mask_slope"));
  CHECK_THROWS_WITH(o.with_sink(-1e300), Contains("sink"));
  CHECK_NOTHROW(o.with_scale(0x1p-100).with_scale(0x1p100).with_softcap(0x1p-100));
  CHECK_NOTHROW(o.with_softcap(0).with_sink(-3).with_scale(0.125).with_mask_slope(0.25));
  CHECK_THROWS_AS(sml::AttentionSoftmax(o.with_causal(true)), std::invalid_argument);
  CHECK_THROWS_WITH(sml::Attention<>(o, sml::Softmax(2.0)), Contains("temperature"));
  sml::Attention<> attn;
  CHECK_THROWS_WITH(attn.with_block_sizes(0, 8), Contains("block_q") && Contains("0"));
  CHECK_THROWS_WITH(attn.with_block_sizes(8, 129), Contains("block_k") && Contains("129"));
}

TEST_CASE("alibi_slope: ggml's per-head slopes", "[attention]") {
  using Catch::Matchers::Contains;
  // 8 heads, max_bias 8: the ALiBi paper's geometric sequence 2^-1, 2^-2, ..., 2^-8.
  for (int h = 0; h < 8; ++h)
    CHECK(sml::alibi_slope(8.0, h, 8) == std::ldexp(1.0, -(h + 1)));
  // 12 heads: 8 from m0 = 2^-1, then the odd powers of m1 = 2^-1/2.
  CHECK(sml::alibi_slope(8.0, 7, 12) == std::ldexp(1.0, -8));
  CHECK(sml::alibi_slope(8.0, 8, 12) == Approx(std::pow(2.0, -0.5)).epsilon(1e-15));
  CHECK(sml::alibi_slope(8.0, 9, 12) == Approx(std::pow(2.0, -1.5)).epsilon(1e-15));
  CHECK(sml::alibi_slope(8.0, 11, 12) == Approx(std::pow(2.0, -3.5)).epsilon(1e-15));
  CHECK(sml::alibi_slope(0.0, 3, 12) == 1.0);
  CHECK_THROWS_WITH(sml::alibi_slope(-1.0, 0, 4), Contains("max_bias") && Contains("-1"));
  CHECK_THROWS_WITH(sml::alibi_slope(8.0, 4, 4), Contains("head") && Contains("4"));
  CHECK_THROWS_WITH(sml::alibi_slope(8.0, 0, 0), Contains("n_head") && Contains("0"));
}

TEST_CASE("AttentionSoftmax: accuracy against the long-double transformed scores", "[attention]") {
  Worst f32, f64;
  attention_softmax_accuracy<float>(f32);
  attention_softmax_accuracy<double>(f64);
  std::cout << "AttentionSoftmax float: " << f32.report() << "\n";
  std::cout << "AttentionSoftmax double: " << f64.report() << "\n";
}

TEST_CASE("AttentionSoftmax: special values", "[attention]") {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const sml::AttentionSoftmax sink(sml::AttentionOptions().with_sink(3.0).with_scale(0.5));
  const sml::AttentionSoftmax capped(sml::AttentionOptions().with_softcap(10.0));
  const sml::AttentionSoftmax plain;
  Eigen::VectorXf y(4);
  // A fully masked row gives zeros, even with a sink (never NaN).
  Eigen::VectorXf x(4);
  x << 1, 2, 3, 4;
  Eigen::VectorXf all_masked = Eigen::VectorXf::Constant(4, -inf);
  sink.apply_masked(x, all_masked, y);
  CHECK(y.isZero(0));
  sink.apply(all_masked, y);
  CHECK(y.isZero(0));
  capped.apply(all_masked, y);  // cap(-inf) would be -c: a -inf entry stays masked
  CHECK(y.isZero(0));
  // Masked entries (in x or in the mask) get exactly 0; +inf and -inf together: masked.
  Eigen::VectorXf mask(4);
  mask << 0, -inf, 0, -inf;
  Eigen::VectorXf xi(4);
  xi << -inf, 5, 1, inf;
  sink.apply_masked(xi, mask, y);
  CHECK(y(0) == 0);
  CHECK(y(1) == 0);
  CHECK(y(3) == 0);
  CHECK(y(2) == Approx(std::exp(0.5) / (std::exp(0.5) + std::exp(3.0))).epsilon(1e-6));
  // +inf entries share the mass (the sink gets none); under a cap +inf becomes c (finite).
  xi << inf, 1, inf, 2;
  sink.apply(xi, y);
  CHECK(y(0) == 0.5f);
  CHECK(y(2) == 0.5f);
  CHECK(y(1) == 0);
  capped.apply(xi, y);
  CHECK(y.allFinite());
  CHECK(y(0) == y(2));
  CHECK(y(0) > y(3));
  // NaN anywhere (input or mask) makes the row NaN.
  xi << 1, nan, 2, 3;
  plain.apply(xi, y);
  CHECK(y.array().isNaN().all());
  mask << 0, 0, nan, -inf;
  plain.apply_masked(x, mask, y);
  CHECK(y.array().isNaN().all());
  // Empty in, empty out.
  Eigen::VectorXf e(0), ey(0);
  plain.apply_masked(e, e, ey);
  CHECK(sink(e).size() == 0);
}

namespace {

// The exact softmax of long-double transformed scores (no overflow there for float or double
// data), with the rules of the doc block: NaN row; +inf scores share; all masked gives zeros.
template <class S>
LVec exact_attention_softmax(const Vec<S>& x, const Vec<S>* mask, const Params& p) {
  const Index n = x.size();
  LVec t(n), y = LVec::Zero(n);
  Index infinite = 0;
  long double top = -kInfL;
  for (Index i = 0; i < n; ++i) {
    t(i) = transformed(x(i), mask ? static_cast<long double>((*mask)(i)) : 0.0L, p);
    infinite += t(i) == kInfL;
    top = std::max(top, t(i));
  }
  if (top == -kInfL)
    return y;
  if (infinite > 0) {
    for (Index i = 0; i < n; ++i)
      y(i) = t(i) == kInfL ? 1.0L / infinite : 0.0L;
    return y;
  }
  if (p.has_sink)
    top = std::max(top, static_cast<long double>(p.sink));
  long double sum = p.has_sink ? std::exp(p.sink - top) : 0.0L;
  for (Index i = 0; i < n; ++i)
    sum += std::exp(t(i) - top);
  for (Index i = 0; i < n; ++i)
    y(i) = std::exp(t(i) - top) / sum;
  return y;
}

// Scores that overflow the scalar type (a finite x_i with |scale x_i| or |m mask_i| beyond its
// largest value) are not +-inf: the row keeps its exact weights, in every form, in place too.
template <class S>
void check_overflowing_scores() {
  const S big = std::numeric_limits<S>::max(), inf = std::numeric_limits<S>::infinity();
  struct Case {
    const char* what;
    std::vector<S> x, mask;  // mask empty: apply without a mask
    Params p;
  };
  Params scale4;
  scale4.scale = 4;
  Params masked4 = scale4;
  masked4.slope = 4;
  Params sink4 = scale4;
  sink4.has_sink = true;
  sink4.sink = 3;
  Params capped = masked4;
  capped.cap = 50;
  const std::vector<Case> cases = {
      {"two overflow, one is the max", {big, big / 2, 0, -inf}, {}, scale4},
      {"an overflow next to a true +inf", {big, inf, 1}, {}, scale4},
      {"every score overflows to -inf: uniform", {-big, -big, -big}, {}, scale4},
      {"every score overflows to -inf: the max wins", {-big, -big / 2}, {}, scale4},
      {"scale x and m mask overflow and cancel", {big, 1}, {-big, 0}, masked4},
      {"+inf plus an overflowed -mask is +inf", {inf, 1}, {-big, 0}, masked4},
      {"-inf x masks an overflowed +mask", {-inf, 1}, {big, 0}, masked4},
      {"equal overflowed scores with a sink", {big, big, 0}, {}, sink4},
      {"overflowed negative scores with a sink", {-big, -big}, {}, sink4},
      {"capped score plus an overflowed mask", {big, 1, 2}, {-big, 0, big}, capped},
  };
  const double eps = std::numeric_limits<S>::epsilon();
  for (const Case& c : cases) {
    INFO(c.what << " (" << (sizeof(S) == 4 ? "float" : "double") << ")");
    const Index n = static_cast<Index>(c.x.size());
    const Vec<S> x = Eigen::Map<const Vec<S>>(c.x.data(), n);
    const bool has_mask = !c.mask.empty();
    const Vec<S> mask = has_mask ? Vec<S>(Eigen::Map<const Vec<S>>(c.mask.data(), n)) : Vec<S>();
    const sml::AttentionSoftmax f(c.p.options());
    const LVec exact = exact_attention_softmax<S>(x, has_mask ? &mask : nullptr, c.p);
    Vec<S> y(n);
    if (has_mask)
      f.apply_masked(x, mask, y);
    else
      f.apply(x, y);
    for (Index i = 0; i < n; ++i) {
      INFO("[" << i << "] y = " << y(i) << ", exact = " << static_cast<double>(exact(i)));
      CHECK(std::fabs(y(i) - exact(i)) <= 2 * eps * exact(i));
    }
    // In place, and a strided row of a matrix (rowwise), give the same bits.
    Vec<S> z = x;
    if (has_mask)
      f.apply_masked(z, mask, z);
    else
      f.apply(z, z);
    CHECK(same(z, y));
    Mat<S> xs(3, n), ys(3, n);
    xs.row(0).setZero();
    xs.row(1) = x.transpose();
    xs.row(2).setOnes();
    if (has_mask) {
      f.rowwise_masked(xs, mask.transpose(), ys);
    } else {
      f.rowwise(xs, ys);
    }
    CHECK(same(Vec<S>(ys.row(1).transpose()), y));
  }
}

}  // namespace

TEST_CASE("AttentionSoftmax: scores that overflow the scalar type keep their exact weights",
          "[attention]") {
  check_overflowing_scores<float>();
  check_overflowing_scores<double>();
}

TEST_CASE("AttentionSoftmax: forms agree bitwise, no allocation, shape errors", "[attention]") {
  using Catch::Matchers::Contains;
  const sml::AttentionSoftmax f(
      sml::AttentionOptions().with_scale(0.2).with_softcap(20).with_mask_slope(0.5).with_sink(1));
  const Eigen::MatrixXf s = normal_matrix<float>(37, 300, 5, 10.0);
  Eigen::MatrixXf m = normal_matrix<float>(37, 300, 6, 4.0);
  m(3, 4) = -std::numeric_limits<float>::infinity();
  Eigen::MatrixXf p(37, 300), ref(37, 300), bref(37, 300);
  for (Index i = 0; i < s.rows(); ++i) {
    f.apply_masked(s.row(i), m.row(i), ref.row(i));
    f.apply_masked(s.row(i), m.row(0), bref.row(i));
  }
  {
    AllocationGuard guard;
    f.rowwise_masked(s, m, p);
    CHECK(guard.allocations() == 0);
  }
  CHECK(same(p, ref));
  f.rowwise_masked(s, m.row(0), p);  // one row broadcast
  CHECK(same(p, bref));
  const Eigen::MatrixXf st = s.transpose();  // rows of a column-major matrix: strided spans
  using RowMajorF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  RowMajorF pr(37, 300);
  f.rowwise_masked(st.transpose(), m, pr);
  CHECK(same(Eigen::MatrixXf(pr), ref));
  CHECK(same(f.rowwise_masked(s * 1.0f, m), ref));  // expression input
  Eigen::MatrixXf inplace = s;
  f.rowwise_masked(inplace, m, inplace);
  CHECK(same(inplace, ref));
  // Unmasked forms: rowwise = colwise of the transpose = apply per row.
  Eigen::VectorXf y(300);
  {
    AllocationGuard guard;
    f.apply(s.row(2), y);
    CHECK(guard.allocations() == 0);
  }
  CHECK(same(f.rowwise(s).row(2).transpose().eval(), y));
  CHECK(same(f.colwise(st).col(2).eval(), y));
  // Shape errors.
  CHECK_THROWS_WITH(f.rowwise_masked(s, Eigen::MatrixXf(2, 300), p), Contains("mask"));
  CHECK_THROWS_WITH(f.apply_masked(s.row(0), Eigen::VectorXf(3), y), Contains("mask"));
  CHECK_THROWS_AS(f.rowwise_masked(s, m, Eigen::MatrixXf(3, 3)), std::invalid_argument);
}

TEST_CASE("AttentionSoftmax: backward against finite differences in double", "[attention]") {
  const std::vector<sml::AttentionOptions> options = {
      sml::AttentionOptions().with_scale(0.7),
      sml::AttentionOptions().with_scale(0.7).with_softcap(2.0).with_sink(0.5),
      sml::AttentionOptions().with_softcap(1.5).with_mask_slope(0.25)};
  for (std::size_t k = 0; k < options.size(); ++k) {
    const sml::AttentionSoftmax f(options[k]);
    const Eigen::VectorXd x = softmaxlab_test::random_normal(9, 1, unsigned(40 + k), 2.0);
    Eigen::VectorXd mask = softmaxlab_test::random_normal(9, 1, unsigned(50 + k), 2.0);
    mask(4) = -std::numeric_limits<double>::infinity();
    const Eigen::VectorXd dy = softmaxlab_test::random_normal(9, 1, unsigned(60 + k), 1.0);
    const Eigen::VectorXd y = f.masked(x, mask);
    const Eigen::VectorXd dx = f.backward(x, y, dy);
    const Eigen::VectorXd fd =
        fd_scalar_gradient([&](const Eigen::VectorXd& v) { return dy.dot(f.masked(v, mask)); }, x);
    INFO("options " << k << ": dx = " << dx.transpose() << "\nfd = " << fd.transpose());
    CHECK(fd_relative_error(dx, fd, x) < 1e-7);
    CHECK(dx(4) == 0);
  }
}

TEST_CASE("Attention: forward within 8 eps (1 + max|V|) of the long-double materialized form",
          "[attention]") {
  Worst f32, f64;
  attention_accuracy<float>(f32);
  attention_accuracy<double>(f64);
  std::cout << "Attention float: " << f32.report() << "\n";
  std::cout << "Attention double: " << f64.report() << "\n";
}

TEST_CASE("Attention: special values and shapes", "[attention]") {
  using Catch::Matchers::Contains;
  const float inf = std::numeric_limits<float>::infinity();
  const Eigen::MatrixXf q = normal_matrix<float>(6, 4, 1, 1.0);
  const Eigen::MatrixXf k = normal_matrix<float>(3, 4, 2, 1.0);
  const Eigen::MatrixXf v = normal_matrix<float>(3, 5, 3, 1.0);
  Eigen::MatrixXf o(6, 5);
  Eigen::VectorXf lse(6);
  // Causal with Lq > Lk: query i sees keys j <= i - 3, so rows 0..2 see nothing: a zero row and
  // the sink's own log-sum-exp, lse = z = 1.
  const sml::Attention<> causal(sml::AttentionOptions().with_causal(true).with_sink(1.0));
  causal.apply(q, k, v, o, lse);
  CHECK(o.topRows(3).isZero(0));
  CHECK((lse.head(3).array() == 1.0f).all());
  CHECK(o.bottomRows(3).allFinite());
  CHECK(lse.tail(3).allFinite());
  // A fully masked row (mask) gives zeros and lse = -inf; a NaN in one query row stays there.
  Eigen::MatrixXf mask = Eigen::MatrixXf::Zero(6, 3);
  mask.row(1).setConstant(-inf);
  Eigen::MatrixXf qn = q;
  qn(4, 2) = std::numeric_limits<float>::quiet_NaN();
  const sml::Attention<> attn;
  attn.apply_masked(qn, k, v, mask, o, lse);
  CHECK(o.row(1).isZero(0));
  CHECK(lse(1) == -inf);
  CHECK(o.row(4).array().isNaN().all());
  CHECK(std::isnan(lse(4)));
  CHECK(o.row(0).allFinite());
  // +inf scores share the mass: one key with mask +inf takes everything.
  mask.setZero();
  mask(2, 1) = inf;
  attn.apply_masked(q, k, v, mask, o, lse);
  CHECK(same(Eigen::MatrixXf(o.row(2)), Eigen::MatrixXf(v.row(1))));
  CHECK(lse(2) == inf);
  // No keys: zeros and -inf; no queries: nothing.
  Eigen::MatrixXf o0(6, 5);
  Eigen::VectorXf l0(6);
  attn.apply(q, Eigen::MatrixXf(0, 4), Eigen::MatrixXf(0, 5), o0, l0);
  CHECK(o0.isZero(0));
  CHECK((l0.array() == -inf).all());
  CHECK(attn(Eigen::MatrixXf(0, 4), k, v).rows() == 0);
  // Errors name the shapes.
  CHECK_THROWS_WITH(attn.apply(q, Eigen::MatrixXf(3, 5), v, o), Contains("d"));
  CHECK_THROWS_WITH(attn.apply(q, k, Eigen::MatrixXf(4, 5), o), Contains("Lk"));
  CHECK_THROWS_WITH(attn.apply(q, k, v, Eigen::MatrixXf(6, 4)), Contains("O must be 6 x 5"));
  CHECK_THROWS_WITH(attn.apply(q, k, v, o, Eigen::VectorXf(5)), Contains("lse"));
  CHECK_THROWS_WITH(attn.apply_masked(q, k, v, Eigen::MatrixXf(6, 2), o), Contains("mask"));
  Eigen::MatrixXf qo(6, 5);
  CHECK_THROWS_WITH(attn.apply(qo.leftCols(4), k, v, qo), Contains("overlap"));
}

TEST_CASE("Attention: apply allocates nothing, expressions and layouts agree", "[attention]") {
  const Eigen::MatrixXf q = normal_matrix<float>(100, 64, 11, 1.0);
  const Eigen::MatrixXf k = normal_matrix<float>(300, 64, 12, 1.0);
  const Eigen::MatrixXf v = normal_matrix<float>(300, 64, 13, 1.0);
  Eigen::MatrixXf o(100, 64);
  Eigen::VectorXf lse(100);
  const sml::Attention<> attn(sml::AttentionOptions().with_softcap(30).with_sink(0.5));
  {
    AllocationGuard guard;
    attn.apply(q, k, v, o, lse);
    CHECK(guard.allocations() == 0);
  }
  using RowMajorF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const RowMajorF qr = q, kr = k, vr = v;
  RowMajorF orr(100, 64);
  attn.apply(qr, kr, vr, orr);
  CHECK((Eigen::MatrixXf(orr) - o).cwiseAbs().maxCoeff() <= 1e-5f);
  CHECK((attn(q * 1.0f, k, v) - o).cwiseAbs().maxCoeff() == 0);
}

TEST_CASE("Attention: merge_attention of key shards equals the whole", "[attention]") {
  for (const bool causal : {false, true}) {
    const Eigen::MatrixXd q = normal_matrix<double>(20, 16, 21, 1.0);
    const Eigen::MatrixXd k = normal_matrix<double>(50, 16, 22, 1.0);
    const Eigen::MatrixXd v = normal_matrix<double>(50, 8, 23, 1.0);
    Params p;
    p.scale = 0.25;
    p.has_sink = true;
    p.sink = 1.5;
    p.causal = causal;
    Eigen::MatrixXd mask = Eigen::MatrixXd::Zero(20, 50);
    if (causal) {  // the causal mask of the whole, cut into the two shards' masks
      for (Index i = 0; i < 20; ++i)
        for (Index j = i + 31; j < 50; ++j)
          mask(i, j) = -std::numeric_limits<double>::infinity();
    }
    const sml::Attention<> first(sml::AttentionOptions().with_scale(0.25).with_sink(1.5));
    const sml::Attention<> rest(sml::AttentionOptions().with_scale(0.25));  // the sink once
    Eigen::MatrixXd o1(20, 8), o2(20, 8);
    Eigen::VectorXd l1(20), l2(20);
    first.apply_masked(q, k.topRows(35), v.topRows(35), mask.leftCols(35).eval(), o1, l1);
    rest.apply_masked(q, k.bottomRows(15), v.bottomRows(15), mask.rightCols(15).eval(), o2, l2);
    sml::merge_attention(o1, l1, o2, l2, o1, l1);  // in place
    const AttentionRef ref = attention_reference<double>(q, k, v, nullptr, p);
    Worst w;
    check_attention<double>(o1, l1, ref, v, causal ? "merged causal" : "merged", w);
  }
  // A partial with no visible key (lse = -inf) contributes nothing; NaN propagates.
  Eigen::MatrixXf o1 = Eigen::MatrixXf::Constant(2, 3, 7), o2 = Eigen::MatrixXf::Zero(2, 3);
  Eigen::VectorXf l1(2), l2(2), l(2);
  l1 << 0.5f, std::numeric_limits<float>::quiet_NaN();
  l2 << -std::numeric_limits<float>::infinity(), 0;
  Eigen::MatrixXf o(2, 3);
  sml::merge_attention(o1, l1, o2, l2, o, l);
  CHECK(o.row(0).isApprox(o1.row(0)));
  CHECK(l(0) == 0.5f);
  CHECK(o.row(1).array().isNaN().all());
  CHECK(std::isnan(l(1)));
}

TEST_CASE("Attention: backward (dQ, dK, dV) against finite differences in double", "[attention]") {
  const Index lq = 5, lk = 7, d = 3, dv = 4;
  for (int variant = 0; variant < 4; ++variant) {
    Params p;
    p.scale = 0.8;
    p.causal = variant == 1 || variant == 3;
    if (variant >= 2) {
      p.cap = 2.0;
      p.has_sink = true;
      p.sink = 0.3;
    }
    const bool use_mask = variant == 3;
    p.slope = 0.5;
    sml::Attention<> attn(p.options());
    attn = attn.with_block_sizes(2, 3);  // several blocks both ways
    const Eigen::MatrixXd q = softmaxlab_test::random_normal(lq, d, 71 + variant, 1.0);
    const Eigen::MatrixXd k = softmaxlab_test::random_normal(lk, d, 81 + variant, 1.0);
    const Eigen::MatrixXd v = softmaxlab_test::random_normal(lk, dv, 91 + variant, 1.0);
    const Eigen::MatrixXd dout = softmaxlab_test::random_normal(lq, dv, 101 + variant, 1.0);
    Eigen::MatrixXd mask = softmaxlab_test::random_normal(lq, lk, 111 + variant, 1.0);
    mask(1, 2) = -std::numeric_limits<double>::infinity();
    if (!use_mask)
      mask.setZero();
    auto forward = [&](const Eigen::MatrixXd& qq, const Eigen::MatrixXd& kk,
                       const Eigen::MatrixXd& vv) {
      Eigen::MatrixXd o(lq, dv);
      attn.apply_masked(qq, kk, vv, mask, o);
      return (o.array() * dout.array()).sum();
    };
    Eigen::MatrixXd o(lq, dv), dq(lq, d), dk(lk, d), dvv(lk, dv);
    Eigen::VectorXd lse(lq);
    attn.apply_masked(q, k, v, mask, o, lse);
    attn.backward_masked(q, k, v, mask, o, lse, dout, dq, dk, dvv);
    const Eigen::MatrixXd fq =
        fd_scalar_gradient([&](const Eigen::MatrixXd& x) { return forward(x, k, v); }, q);
    const Eigen::MatrixXd fk =
        fd_scalar_gradient([&](const Eigen::MatrixXd& x) { return forward(q, x, v); }, k);
    const Eigen::MatrixXd fv =
        fd_scalar_gradient([&](const Eigen::MatrixXd& x) { return forward(q, k, x); }, v);
    INFO("variant " << variant);
    CHECK(fd_relative_error(dq, fq, q) < 1e-7);
    CHECK(fd_relative_error(dk, fk, k) < 1e-7);
    CHECK(fd_relative_error(dvv, fv, v) < 1e-7);
    if (!use_mask) {  // the unmasked form is the same function
      Eigen::MatrixXd dq2(lq, d), dk2(lk, d), dv2(lk, dv);
      attn.backward(q, k, v, o, lse, dout, dq2, dk2, dv2);
      CHECK((dq2 - dq).cwiseAbs().maxCoeff() < 1e-14);
      CHECK((dk2 - dk).cwiseAbs().maxCoeff() < 1e-14);
    }
  }
}

namespace {

// The exact plaintext Power-Softmax attention in long double: w_ij = t_ij^p / sum_j t_ij^p over
// the visible, unmasked keys, t = cap(scale q.k) + m mask; all-zero rows uniform.
template <class S>
LMat power_reference(const Mat<S>& q, const Mat<S>& k, const Mat<S>& v, const Mat<S>* mask,
                     const Params& p, int power) {
  const Index lq = q.rows(), lk = k.rows();
  LMat o = LMat::Zero(lq, v.cols());
  const LMat s = q.template cast<long double>() * k.template cast<long double>().transpose();
  for (Index i = 0; i < lq; ++i) {
    std::vector<long double> w(lk, 0.0L);
    long double sum = 0;
    Index kept = 0;
    for (Index j = 0; j < lk; ++j) {
      const bool visible = !p.causal || j <= i + lk - lq;
      const long double t = visible ? transformed(s(i, j), mask ? (*mask)(i, j) : S(0), p) : -kInfL;
      if (t == -kInfL)
        continue;
      w[j] = std::pow(t, power);
      sum += w[j];
      ++kept;
    }
    for (Index j = 0; j < lk; ++j) {
      if (w[j] != 0)
        o.row(i) += (w[j] / sum) * v.row(j).template cast<long double>();
    }
    if (sum == 0 && kept > 0) {  // all-zero scores: uniform
      for (Index j = 0; j < lk; ++j) {
        const bool visible = !p.causal || j <= i + lk - lq;
        if (visible && !(mask && (*mask)(i, j) == -std::numeric_limits<S>::infinity()))
          o.row(i) += v.row(j).template cast<long double>() / static_cast<long double>(kept);
      }
    }
  }
  return o;
}

template <class S>
void power_accuracy(Worst& summary) {
  const std::vector<Shape> shapes = {{5, 9, 8, 3}, {33, 200, 16, 16}, {130, 257, 64, 32}};
  int case_id = 0;
  for (const Shape& sh : shapes) {
    for (int power : {2, 4, 8}) {
      for (int variant = 0; variant < 3; ++variant, ++case_id) {
        Params p;
        p.scale = 1.0 / std::sqrt(double(sh.d));
        p.causal = variant == 1;
        const bool use_mask = variant == 2;
        p.slope = 0.5;
        const Mat<S> q = normal_matrix<S>(sh.lq, sh.d, unsigned(500 + 3 * case_id), 1.0);
        const Mat<S> k = normal_matrix<S>(sh.lk, sh.d, unsigned(501 + 3 * case_id), 1.0);
        const Mat<S> v = normal_matrix<S>(sh.lk, sh.dv, unsigned(502 + 3 * case_id), 2.0);
        Mat<S> mask = normal_matrix<S>(sh.lq, sh.lk, unsigned(2000 + case_id), 1.0);
        for (Index i = 0; i < mask.size(); i += 5)
          mask(i) = -std::numeric_limits<S>::infinity();
        sml::Attention<sml::PowerSoftmax> attn(p.options(), sml::PowerSoftmax(power));
        const LMat ref = power_reference<S>(q, k, v, use_mask ? &mask : nullptr, p, power);
        for (Index bk : {Index(128), Index(5)}) {
          attn = attn.with_block_sizes(64, bk);
          Mat<S> o(sh.lq, sh.dv);
          if (use_mask) {
            attn.apply_masked(q, k, v, mask, o);
          } else {
            attn.apply(q, k, v, o);
          }
          // Bound: (2p + 4) eps for the weights (PowerSoftmax's) plus p times the scores'
          // rounding (d-term dot products, scale), all times max|V|; the accumulation as Softmax.
          const double eps = std::numeric_limits<S>::epsilon();
          const double vmax = static_cast<double>(v.cwiseAbs().maxCoeff());
          const double bound = (2 * power + 4 + 8 + power * sh.d) * (1 + vmax);
          Worst worst;
          for (Index i = 0; i < o.rows(); ++i) {
            for (Index j = 0; j < o.cols(); ++j) {
              worst.update(static_cast<double>(std::fabs(o(i, j) - ref(i, j))) / eps, bound,
                           [&](std::ostream& s) {
                             s << "p " << power << " Lq " << sh.lq << " Lk " << sh.lk << " variant "
                               << variant << " bk " << bk << " O(" << i << ", " << j
                               << ") = " << o(i, j) << ", exact " << double(ref(i, j));
                           });
            }
          }
          INFO(worst.report());
          CHECK(worst.ratio <= 1.0);
          if (!(worst.ratio <= summary.ratio))
            summary = worst;
        }
      }
    }
  }
}

}  // namespace

TEST_CASE("Attention<PowerSoftmax>: online Power-Softmax attention against the exact plaintext",
          "[attention]") {
  Worst f32, f64;
  power_accuracy<float>(f32);
  power_accuracy<double>(f64);
  std::cout << "Attention<PowerSoftmax> float: " << f32.report() << "\n";
  std::cout << "Attention<PowerSoftmax> double: " << f64.report() << "\n";
  // The plaintext pipeline: materialized scores, PowerSoftmax rowwise, then P V (float).
  const Eigen::MatrixXf q = normal_matrix<float>(40, 16, 7, 1.0);
  const Eigen::MatrixXf k = normal_matrix<float>(300, 16, 8, 1.0);
  const Eigen::MatrixXf v = normal_matrix<float>(300, 8, 9, 1.0);
  const sml::Attention<sml::PowerSoftmax> attn(sml::AttentionOptions(), sml::PowerSoftmax(4));
  const Eigen::MatrixXf plain = sml::PowerSoftmax(4).rowwise(q * k.transpose() * 0.25f) * v;
  CHECK((attn(q, k, v) - plain).cwiseAbs().maxCoeff() <= 1e-5f);
  // Special rows: all-zero scores give the mean of V; no visible key gives zeros; NaN stays.
  Eigen::MatrixXf qs = q.topRows(3);
  qs.row(0).setZero();
  qs(2, 1) = std::numeric_limits<float>::quiet_NaN();
  Eigen::MatrixXf mask = Eigen::MatrixXf::Zero(3, 300);
  mask.row(1).setConstant(-std::numeric_limits<float>::infinity());
  Eigen::MatrixXf o(3, 8);
  attn.apply_masked(qs, k, v, mask, o);
  CHECK((o.row(0) - v.colwise().mean()).cwiseAbs().maxCoeff() <= 1e-6f);
  CHECK(o.row(1).isZero(0));
  CHECK(o.row(2).array().isNaN().all());
  CHECK_THROWS_WITH(
      sml::Attention<sml::PowerSoftmax>(sml::AttentionOptions().with_sink(1), sml::PowerSoftmax(4)),
      Catch::Matchers::Contains("sink"));
  CHECK_THROWS_WITH(sml::Attention<sml::PowerSoftmax>(
                        sml::AttentionOptions(), sml::PowerSoftmax(4, sml::PowerForm::Lipschitz)),
                    Catch::Matchers::Contains("Stable"));
}

TEST_CASE(
    "Attention<PolynomialSoftmax>: public-bound shift, against the plaintext pipeline and "
    "the exact softmax",
    "[attention]") {
  const Index lq = 48, lk = 300, d = 16, dv = 8;
  const Eigen::MatrixXf q = normal_matrix<float>(lq, d, 601, 1.0);
  const Eigen::MatrixXf k = normal_matrix<float>(lk, d, 602, 1.0);
  const Eigen::MatrixXf v = normal_matrix<float>(lk, dv, 603, 1.0);
  const Eigen::MatrixXf scores = q * k.transpose() * 0.25f;
  sml::PolynomialSoftmaxOptions config;  // Chebyshev 4, r = 5, R = 20, Goldschmidt
  config.shift = sml::Shift::PublicBound;
  config.bound = 8.0;  // a public bound above every score (|scores| stay below 5 here)
  config.gap = 16.0;   // bound - gap <= max score: the promise the reciprocal's range relies on
  REQUIRE(scores.maxCoeff() <= 8.0f);
  REQUIRE(scores.maxCoeff() >= -8.0f);
  const sml::PolynomialSoftmax poly(config);
  const sml::Attention<sml::PolynomialSoftmax> attn(sml::AttentionOptions(), poly);
  const Eigen::MatrixXf o = attn(q, k, v);
  // The plaintext pipeline: materialized scores, PolynomialSoftmax rowwise, then P V.
  const Eigen::MatrixXf plain = poly.rowwise(scores) * v;
  const float vmax = v.cwiseAbs().maxCoeff();
  INFO("max |attention - plaintext| = " << (o - plain).cwiseAbs().maxCoeff());
  CHECK((o - plain).cwiseAbs().maxCoeff() <= 1e-5f * (1 + vmax));
  // Against exact softmax attention: within the default configuration's 1e-4 target, scaled by
  // the values (the a-priori error_bound() with this public bound's gap is far looser: e^gap).
  Params p;
  p.scale = 0.25;
  const AttentionRef ref = attention_reference<float>(q, k, v, nullptr, p);
  const double err = static_cast<double>((o.cast<long double>() - ref.o).cwiseAbs().maxCoeff());
  INFO("max |attention - exact softmax attention| = " << err);
  CHECK(err <= 1e-4 * (1 + vmax));
  // Masks: a fully masked row gives zeros; causal keeps its rows finite; RowMax is rejected.
  Eigen::MatrixXf mask = Eigen::MatrixXf::Zero(lq, lk);
  mask.row(3).setConstant(-std::numeric_limits<float>::infinity());
  Eigen::MatrixXf om(lq, dv);
  attn.apply_masked(q, k, v, mask, om);
  CHECK(om.row(3).isZero(0));
  CHECK((om.row(4) - o.row(4)).cwiseAbs().maxCoeff() == 0);
  const sml::Attention<sml::PolynomialSoftmax> causal(sml::AttentionOptions().with_causal(true),
                                                      poly);
  CHECK(causal(q, k, v).allFinite());
  CHECK_THROWS_WITH(
      sml::Attention<sml::PolynomialSoftmax>(sml::AttentionOptions(), sml::PolynomialSoftmax()),
      Catch::Matchers::Contains("PublicBound"));
}
