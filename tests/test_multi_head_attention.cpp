// MultiHeadAttention (multi_head_attention.hpp): every head and every group against a long-double
// materialized reference written here (positions, windows, ALiBi, sinks, causal, GQA mapping),
// errors in eps with the worst case printed; agreement with a loop of one-head Attention; 16-bit
// K/V; decoding with split keys; packed sequences; storage orders; allocations; bad arguments.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <iostream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include <softmaxlab/multi_head_attention.hpp>

#include "support.hpp"

#if defined(_OPENMP) && defined(SOFTMAXLAB_USE_OPENMP)
#include <omp.h>
#endif

namespace sml = softmaxlab;
using Index = Eigen::Index;
using softmaxlab_test::AllocationGuard;
using softmaxlab_test::same;
using softmaxlab_test::Worst;

namespace {

template <class S>
using Mat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;
using MatF = Mat<float>;
using LMat = Eigen::Matrix<long double, Eigen::Dynamic, Eigen::Dynamic>;
using LVec = Eigen::Matrix<long double, Eigen::Dynamic, 1>;
const long double kInfL = std::numeric_limits<long double>::infinity();

template <class S>
Mat<S> normal(Index rows, Index cols, unsigned seed, double sigma) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> dist(0.0, sigma);
  Eigen::MatrixXd m(rows, cols);
  for (Index j = 0; j < cols; ++j)
    for (Index i = 0; i < rows; ++i)
      m(i, j) = dist(gen);
  return m.cast<S>();
}

// The configuration of one reference evaluation (the values the user passes).
struct Config {
  bool causal = false;
  Index left = -1, right = -1;
  double max_bias = 0;
  bool has_sink = false;
  double sink = 0;
  double cap = 0;
  std::vector<double> sinks;  // one per query head (with_sinks), replacing `sink` when not empty
  std::string label() const {
    std::string s = causal ? "causal" : "full";
    s += " window(" + std::to_string(left) + ", " + std::to_string(right) + ")";
    if (max_bias > 0)
      s += " alibi " + std::to_string(max_bias);
    if (has_sink)
      s += " sink " + std::to_string(sink);
    if (cap > 0)
      s += " softcap " + std::to_string(cap);
    if (!sinks.empty())
      s += " per-head sinks";
    return s;
  }
  sml::AttentionOptions options() const {
    sml::AttentionOptions o = sml::AttentionOptions().with_causal(causal).with_softcap(cap);
    o = o.with_window(left, right).with_alibi(max_bias);
    if (has_sink)
      o = o.with_sink(sink);
    return o;
  }
  // The layer for these options, with the per-head sinks when set.
  sml::MultiHeadAttention layer(Index hq, Index hkv) const {
    const sml::MultiHeadAttention m(options(), hq, hkv);
    if (sinks.empty())
      return m;
    return m.with_sinks(Eigen::Map<const Eigen::VectorXd>(sinks.data(), Index(sinks.size())));
  }
  // The sink of head h as the code rounds it (a float parameter in the float pass), or none.
  bool head_has_sink() const { return has_sink || !sinks.empty(); }
  long double head_sink(Index h, bool in_double) const {
    const double z = sinks.empty() ? sink : sinks[static_cast<std::size_t>(h)];
    return in_double ? static_cast<long double>(z)
                     : static_cast<long double>(static_cast<float>(z));
  }
};

// ggml's slopes, written out here independently of alibi_slope().
long double reference_slope(double max_bias, Index h, Index n) {
  if (max_bias == 0)
    return 0;
  Index n2 = 1;
  while (n2 * 2 <= n)
    n2 *= 2;
  const long double m0 = std::pow(2.0L, -max_bias / n2), m1 = std::pow(2.0L, -max_bias / 2 / n2);
  return h < n2 ? std::pow(m0, static_cast<long double>(h + 1))
                : std::pow(m1, static_cast<long double>(2 * (h - n2) + 1));
}

struct Reference {
  LMat o;    // Lq x Hq dv
  LMat lse;  // Lq x Hq
};

// The materialized attention of every head in long double, from the definitions: head h reads KV
// head h / (Hq / Hkv); key j visible to query i iff inside the band around i + Lk - Lq.
Reference reference(const LMat& q, const LMat& k, const LMat& v, Index hq, Index hkv,
                    const Config& c, bool in_double = false, const LMat* mask = nullptr,
                    long double mask_slope = 1) {
  const Index lq = q.rows(), lk = k.rows(), d = q.cols() / hq, dv = v.cols() / hkv;
  // The scale and slope as the code rounds them (float parameters, not the algorithm's error).
  const long double scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
  Reference r{LMat::Zero(lq, hq * dv), LMat(lq, hq)};
  for (Index h = 0; h < hq; ++h) {
    const Index g = h / (hq / hkv);
    const long double slope =
        static_cast<float>(static_cast<double>(reference_slope(c.max_bias, h, hq)));
    for (Index i = 0; i < lq; ++i) {
      const Index diag = i + lk - lq;
      std::vector<long double> t(static_cast<std::size_t>(lk), -kInfL);
      const bool has_sink = c.head_has_sink();
      const long double z = has_sink ? c.head_sink(h, in_double) : -kInfL;
      long double top = z;
      bool any = false;
      for (Index j = 0; j < lk; ++j) {
        if ((c.causal && j > diag) || (c.left >= 0 && j < diag - c.left)
            || (c.right >= 0 && j > diag + c.right))
          continue;
        long double s = 0;
        for (Index x = 0; x < d; ++x)
          s += q(i, h * d + x) * k(j, g * d + x);
        s *= scale;
        if (c.cap > 0)
          s = c.cap * std::tanh(s / c.cap);
        s -= slope * std::fabs(static_cast<long double>(j - diag));
        if (mask != nullptr) {
          if ((*mask)(i, j) == -kInfL)
            continue;  // hidden
          s += mask_slope * (*mask)(i, j);
        }
        t[j] = s;
        top = std::max(top, s);
        any = true;
      }
      if (!any) {
        r.lse(i, h) = z;
        continue;
      }
      long double sum = has_sink ? std::exp(z - top) : 0.0L;
      for (Index j = 0; j < lk; ++j) {
        if (t[j] == -kInfL)
          continue;
        const long double w = std::exp(t[j] - top);
        sum += w;
        r.o.block(i, h * dv, 1, dv) += w * v.block(j, g * dv, 1, dv);
      }
      r.o.block(i, h * dv, 1, dv) /= sum;
      r.lse(i, h) = top + std::log(sum);
    }
  }
  return r;
}

// Attention's tested bound per entry, 8 eps (1 + max|V|), plus its stated accumulation term
// 2 ceil(Lk / 128) eps max|V| (which matters only for the long caches of the decoding tests);
// lse within 8 eps (1 + |lse|). eps of float; a 16-bit O adds half an ulp of its type.
template <class SO, class SL>
void check(const Mat<SO>& o, const Mat<SL>& lse, const Reference& ref, double vmax, Index lk,
           const std::string& what, Worst& summary) {
  const double eps = std::numeric_limits<float>::epsilon();
  // eps of a 16-bit O: 2^-10 (half), 2^-7 (bfloat16); rounding adds at most eps/2 relative.
  const double out_ulp = std::is_same_v<SO, float>         ? 0.0
                         : std::is_same_v<SO, Eigen::half> ? 0x1p-10
                                                           : 0x1p-7;
  const double bound_o = 8 * (1 + vmax) + 2 * std::ceil(lk / 128.0) * vmax;
  Worst worst;
  for (Index i = 0; i < o.rows(); ++i) {
    for (Index j = 0; j < o.cols(); ++j) {
      const long double exact = ref.o(i, j);
      const double err = static_cast<double>(std::fabs(static_cast<long double>(o(i, j)) - exact));
      const double allowed =
          bound_o * eps + out_ulp / 2 * (std::fabs(double(exact)) + bound_o * eps);
      worst.update(err / eps, allowed / eps, [&](std::ostream& s) {
        s << what << " O(" << i << ", " << j << ") = " << double(o(i, j)) << ", exact "
          << double(exact);
      });
    }
    for (Index h = 0; h < lse.cols(); ++h) {
      auto at = [&](std::ostream& s) {
        s << what << " lse(" << i << ", " << h << ") = " << double(lse(i, h)) << ", exact "
          << double(ref.lse(i, h));
      };
      if (ref.lse(i, h) == -kInfL) {
        worst.update(double(lse(i, h)) == -INFINITY ? 0.0 : INFINITY, 1.0, at);
      } else {
        const double err = static_cast<double>(
            std::fabs(static_cast<long double>(lse(i, h)) - ref.lse(i, h)) / eps);
        worst.update(err, 8 * (1 + std::fabs(double(ref.lse(i, h)))), at);
      }
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

std::vector<Config> configs() {
  std::vector<Config> cs;
  Config c;
  cs.push_back(c);  // full
  c.causal = true;
  cs.push_back(c);
  c.left = 16;  // causal + left window (sliding window attention)
  cs.push_back(c);
  c.causal = false;
  c.left = -1;
  c.right = 5;  // right only
  cs.push_back(c);
  c.left = 20;
  c.right = 3;  // both
  cs.push_back(c);
  c.left = 0;
  c.right = 0;  // the diagonal key only
  cs.push_back(c);
  c = Config();
  c.causal = true;
  c.max_bias = 8;  // ALiBi
  cs.push_back(c);
  c.has_sink = true;
  c.sink = 0.75;
  c.left = 40;  // ALiBi, sink and window together
  cs.push_back(c);
  c = Config();
  c.cap = 5;
  c.has_sink = true;
  c.sink = -1.5;
  cs.push_back(c);
  c = Config();
  c.causal = true;
  c.left = 24;
  c.sinks = {2.5, -1.0, 0.0, 4.0, -3.25, 1.5, 0.75, -0.5};  // per head, cycled to Hq below
  cs.push_back(c);
  return cs;
}

// Q, K, V of types SQ, SKV and O of type SO against the reference on the same (widened) values.
template <class SQ, class SKV, class SO>
void accuracy(Index hq, Index hkv, const std::vector<Shape>& shapes, Worst& summary,
              unsigned seed) {
  for (const Shape& sh : shapes) {
    const Mat<SQ> q = normal<SQ>(sh.lq, hq * sh.d, seed++, 1.0);
    const Mat<SKV> k = normal<SKV>(sh.lk, hkv * sh.d, seed++, 1.0);
    const Mat<SKV> v = normal<SKV>(sh.lk, hkv * sh.dv, seed++, 2.0);
    const LMat ql = q.template cast<float>().template cast<long double>();
    const LMat kl = k.template cast<float>().template cast<long double>();
    const LMat vl = v.template cast<float>().template cast<long double>();
    const double vmax = v.size() ? double(vl.cwiseAbs().maxCoeff()) : 0.0;
    for (Config c : configs()) {
      if (!c.sinks.empty()) {
        std::vector<double> per_head(static_cast<std::size_t>(hq));
        for (Index h = 0; h < hq; ++h)
          per_head[static_cast<std::size_t>(h)] =
              c.sinks[static_cast<std::size_t>(h) % c.sinks.size()];
        c.sinks = per_head;
      }
      const sml::MultiHeadAttention mha = c.layer(hq, hkv);
      Mat<SO> o(sh.lq, hq * sh.dv);
      MatF lse(sh.lq, hq);
      mha.apply(q, k, v, o, lse);
      const Reference ref = reference(ql, kl, vl, hq, hkv, c);
      check(o, lse, ref, vmax, sh.lk,
            "Hq " + std::to_string(hq) + " Hkv " + std::to_string(hkv) + " Lq "
                + std::to_string(sh.lq) + " Lk " + std::to_string(sh.lk) + " d "
                + std::to_string(sh.d) + " " + c.label(),
            summary);
    }
  }
}

}  // namespace

TEST_CASE("MultiHeadAttention: every head against the long-double reference",
          "[multi_head_attention]") {
  const std::vector<Shape> shapes = {
      {1, 1, 4, 4}, {5, 9, 8, 3}, {33, 200, 16, 16}, {70, 300, 8, 8}, {100, 40, 8, 4}};
  Worst f32, kv16, bf;
  SECTION("float: MHA, GQA 4:1, MQA") {
    accuracy<float, float, float>(4, 4, shapes, f32, 1);
    accuracy<float, float, float>(8, 2, shapes, f32, 100);
    accuracy<float, float, float>(4, 1, shapes, f32, 200);
    // The AVX-512 prefill kernels' edges: d = 40 (a transposed block of 8 after two of 16),
    // dv = 72 (a last 32-column panel with 8 columns), 45 rows per head (8-row blocks across two
    // heads), Lk = 170 (a last key block of 42).
    accuracy<float, float, float>(8, 2, {{45, 170, 40, 72}}, f32, 250);
    std::cout << "MultiHeadAttention float: " << f32.report() << "\n";
  }
  SECTION("half K/V beside float Q, and bfloat16 Q/K/V with a float O") {
    accuracy<float, Eigen::half, float>(8, 2, shapes, kv16, 300);
    accuracy<Eigen::bfloat16, Eigen::bfloat16, float>(4, 1, shapes, bf, 400);
    std::cout << "MultiHeadAttention half K/V: " << kv16.report() << "\n";
    std::cout << "MultiHeadAttention bfloat16: " << bf.report() << "\n";
  }
  SECTION("a half O: within the float bound plus half an ulp of half") {
    Worst h;
    accuracy<Eigen::half, Eigen::half, Eigen::half>(4, 2, {{9, 30, 8, 8}}, h, 500);
    std::cout << "MultiHeadAttention half O: " << h.report() << "\n";
  }
}

TEST_CASE("MultiHeadAttention: a mask shared by the heads, in float, half or bfloat16",
          "[multi_head_attention]") {
  // apply_masked against the long-double reference (the mask added after ALiBi, -inf hiding the
  // key), prefill and decoding (split keys); a half or bfloat16 mask gives the bits of the same
  // values in float; a NaN entry makes its row NaN in every head.
  Worst w;
  const Index hq = 8, hkv = 2, d = 16, dv = 8;
  unsigned seed = 1200;
  for (const Shape& sh : std::vector<Shape>{{33, 200, d, dv}, {4, 5000, d, dv}}) {
    const MatF q = normal<float>(sh.lq, hq * d, seed++, 1.0);
    const MatF k = normal<float>(sh.lk, hkv * d, seed++, 1.0);
    const MatF v = normal<float>(sh.lk, hkv * dv, seed++, 2.0);
    // N(0, 2^2) entries rounded to half, 15% -inf; row 1 fully hidden.
    Mat<Eigen::half> mh = normal<float>(sh.lq, sh.lk, seed++, 2.0).cast<Eigen::half>();
    std::mt19937_64 gen(seed++);
    std::uniform_real_distribution<double> u(0, 1);
    for (Index i = 0; i < sh.lq; ++i)
      for (Index j = 0; j < sh.lk; ++j)
        if (u(gen) < 0.15 || i == 1)
          mh(i, j) = Eigen::half(-INFINITY);
    const MatF mf = mh.cast<float>();
    const Mat<Eigen::bfloat16> mb =
        normal<float>(sh.lq, sh.lk, seed++, 2.0).cast<Eigen::bfloat16>();
    std::vector<Config> cs(3);
    cs[0].causal = true;
    cs[1].causal = true;
    cs[1].left = 150;
    cs[1].max_bias = 4;
    cs[1].has_sink = true;
    cs[1].sink = 0.5;
    cs[2].cap = 4;
    for (const Config& c : cs) {
      for (double mask_slope : {1.0, 0.375}) {
        const sml::AttentionOptions opt = c.options().with_mask_slope(mask_slope);
        const sml::MultiHeadAttention mha(opt, hq, hkv);
        MatF o(sh.lq, hq * dv), lse(sh.lq, hq), o2(sh.lq, hq * dv), lse2(sh.lq, hq);
        mha.apply_masked(q, k, v, mf, o, lse);
        const LMat ml = mf.cast<long double>();
        check(
            o, lse,
            reference(q.cast<long double>(), k.cast<long double>(), v.cast<long double>(), hq, hkv,
                      c, false, &ml, static_cast<long double>(static_cast<float>(mask_slope))),
            double(v.cwiseAbs().maxCoeff()), sh.lk,
            "mask, Lq " + std::to_string(sh.lq) + " slope " + std::to_string(mask_slope) + " "
                + c.label(),
            w);
        mha.apply_masked(q, k, v, mh, o2, lse2);  // the half mask itself
        CHECK(same(o, o2));
        CHECK(same(lse, lse2));
        const MatF mbf = mb.cast<float>();
        mha.apply_masked(q, k, v, mbf, o, lse);
        mha.apply_masked(q, k, v, mb, o2, lse2);
        CHECK(same(o, o2));
        CHECK(same(lse, lse2));
      }
    }
    MatF mnan = mf;
    mnan(2, 0) = NAN;
    const MatF o = [&] {
      MatF out(sh.lq, hq * dv);
      sml::MultiHeadAttention(sml::AttentionOptions(), hq, hkv).apply_masked(q, k, v, mnan, out);
      return out;
    }();
    CHECK(o.row(2).array().isNaN().all());
    CHECK(!o.row(0).array().isNaN().any());
  }
  std::cout << "MultiHeadAttention masked: " << w.report() << "\n";
  const sml::MultiHeadAttention mha(sml::AttentionOptions(), hq, hkv);
  MatF o(3, hq * dv);
  CHECK_THROWS_WITH(
      mha.apply_masked(MatF(3, hq * d), MatF(5, hkv * d), MatF(5, hkv * dv), MatF(3, 4), o),
      Catch::Contains("mask must be Lq x Lk = 3 x 5, but got 3 x 4"));
}

TEST_CASE("MultiHeadAttention: decoding from a long cache with split keys",
          "[multi_head_attention]") {
  // Lk > 2,048 with Lq <= 16 takes the split-key path (partials merged by merge_attention).
  Worst w;
  unsigned seed = 900;
  for (Index lq : {1, 4, 16}) {
    const Index hq = 8, hkv = 2, d = 16, dv = 16, lk = 5000;
    const MatF q = normal<float>(lq, hq * d, seed++, 1.0);
    const MatF kf = normal<float>(lk, hkv * d, seed++, 1.0);
    const MatF vf = normal<float>(lk, hkv * dv, seed++, 2.0);
    const Mat<Eigen::half> kh = kf.cast<Eigen::half>(), vh = vf.cast<Eigen::half>();
    const Mat<Eigen::bfloat16> kb = kf.cast<Eigen::bfloat16>(), vb = vf.cast<Eigen::bfloat16>();
    std::vector<Config> cs(3);
    cs[0].causal = true;
    cs[1].causal = true;
    cs[1].left = 3000;
    cs[1].has_sink = true;
    cs[1].sink = 2.0;
    cs[2].max_bias = 1.0 / 64;
    for (const Config& c : cs) {
      const sml::MultiHeadAttention mha(c.options(), hq, hkv);
      MatF o(lq, hq * dv), lse(lq, hq);
      auto run = [&](const auto& k, const auto& v, const char* type) {
        mha.apply(q, k, v, o, lse);
        const LMat kl = k.template cast<float>().template cast<long double>();
        const LMat vl = v.template cast<float>().template cast<long double>();
        check(o, lse, reference(q.cast<long double>(), kl, vl, hq, hkv, c),
              double(vl.cwiseAbs().maxCoeff()), lk,
              std::string(type) + " KV, Lq " + std::to_string(lq) + " " + c.label(), w);
      };
      run(kf, vf, "float");
      run(kh, vh, "half");
      run(kb, vb, "bfloat16");
    }
  }
  std::cout << "MultiHeadAttention decoding: " << w.report() << "\n";
}

TEST_CASE("MultiHeadAttention: agrees with a loop of one-head Attention",
          "[multi_head_attention]") {
  // Where the semantics coincide (no window, no ALiBi): head h of MHA against Attention on head h's
  // columns and its KV head's columns, within twice the tested bound (both are within it of the
  // exact value); the count of bitwise-equal entries is printed.
  const Index hq = 8, hkv = 2, lq = 90, lk = 300, d = 16, dv = 8;
  const MatF q = normal<float>(lq, hq * d, 51, 1.0), k = normal<float>(lk, hkv * d, 52, 1.0);
  const MatF v = normal<float>(lk, hkv * dv, 53, 2.0);
  const double vmax = v.cwiseAbs().maxCoeff();
  for (bool causal : {false, true}) {
    const sml::AttentionOptions opt = sml::AttentionOptions().with_causal(causal).with_sink(0.5);
    const MatF o = sml::MultiHeadAttention(opt, hq, hkv)(q, k, v);
    const sml::Attention<> one(opt);
    Index equal = 0;
    double worst = 0;
    for (Index h = 0; h < hq; ++h) {
      const Index g = h / (hq / hkv);
      const MatF oh = one(q.middleCols(h * d, d), k.middleCols(g * d, d), v.middleCols(g * dv, dv));
      for (Index i = 0; i < lq; ++i) {
        for (Index j = 0; j < dv; ++j) {
          const float a = o(i, h * dv + j), b = oh(i, j);
          equal += a == b;
          worst = std::max(worst, double(std::fabs(a - b)) / std::numeric_limits<float>::epsilon());
        }
      }
    }
    std::cout << "MultiHeadAttention vs per-head Attention (causal " << causal << "): " << equal
              << " of " << lq * hq * dv << " entries bitwise equal, worst " << worst << " eps\n";
    CHECK(worst <= 16 * (1 + vmax));
  }
}

TEST_CASE("MultiHeadAttention: special values and shapes", "[multi_head_attention]") {
  const Index hq = 4, hkv = 2, d = 8, dv = 4;
  const float ninf = -std::numeric_limits<float>::infinity();
  SECTION("Lk = 0: zero rows, lse the sink or -inf") {
    const MatF q = normal<float>(3, hq * d, 1, 1.0), k(0, hkv * d), v(0, hkv * dv);
    MatF o(3, hq * dv), lse(3, hq);
    sml::MultiHeadAttention(sml::AttentionOptions(), hq, hkv).apply(q, k, v, o, lse);
    CHECK(o.isZero(0));
    CHECK((lse.array() == ninf).all());
    sml::MultiHeadAttention(sml::AttentionOptions().with_sink(1.25), hq, hkv)
        .apply(q, k, v, o, lse);
    CHECK(o.isZero(0));
    CHECK((lse.array() == 1.25f).all());
  }
  SECTION("rows with no visible key (causal Lq > Lk, a window past the keys)") {
    const MatF q = normal<float>(6, hq * d, 2, 1.0), k = normal<float>(2, hkv * d, 3, 1.0);
    const MatF v = normal<float>(2, hkv * dv, 4, 1.0);
    MatF o(6, hq * dv), lse(6, hq);
    sml::MultiHeadAttention(sml::AttentionOptions().with_causal(true), hq, hkv)
        .apply(q, k, v, o, lse);
    CHECK(o.topRows(4).isZero(0));  // rows 0..3: i + Lk - Lq < 0
    CHECK((lse.topRows(4).array() == ninf).all());
    CHECK((lse.bottomRows(2).array() > ninf).all());
  }
  SECTION("a NaN in Q makes that row of that head NaN only") {
    MatF q = normal<float>(3, hq * d, 5, 1.0);
    const MatF k = normal<float>(7, hkv * d, 6, 1.0), v = normal<float>(7, hkv * dv, 7, 1.0);
    q(1, 2 * d) = std::numeric_limits<float>::quiet_NaN();  // head 2
    MatF o(3, hq * dv), lse(3, hq);
    sml::MultiHeadAttention(sml::AttentionOptions(), hq, hkv).apply(q, k, v, o, lse);
    CHECK(o.block(1, 2 * dv, 1, dv).array().isNaN().all());
    CHECK(std::isnan(lse(1, 2)));
    CHECK(!o.block(0, 0, 1, hq * dv).array().isNaN().any());
    CHECK(!o.block(1, 0, 1, 2 * dv).array().isNaN().any());
  }
  SECTION("empty Q gives an empty O") {
    const MatF q(0, hq * d), k = normal<float>(5, hkv * d, 8, 1.0),
                             v = normal<float>(5, hkv * dv, 9, 1.0);
    MatF o(0, hq * dv);
    sml::MultiHeadAttention(sml::AttentionOptions(), hq, hkv).apply(q, k, v, o);
    CHECK(o.size() == 0);
  }
}

TEST_CASE("MultiHeadAttention: storage orders and maps give the same bits",
          "[multi_head_attention]") {
  const Index hq = 6, hkv = 3, lq = 20, lk = 150, d = 8, dv = 8;
  const MatF q = normal<float>(lq, hq * d, 11, 1.0), k = normal<float>(lk, hkv * d, 12, 1.0);
  const MatF v = normal<float>(lk, hkv * dv, 13, 1.0);
  const sml::MultiHeadAttention mha(sml::AttentionOptions().with_causal(true).with_window(30, -1),
                                    hq, hkv);
  const MatF o = mha(q, k, v);
  using RowF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const RowF qr = q, kr = k, vr = v;
  RowF orow(lq, hq * dv);
  mha.apply(qr, kr, vr, orow);
  CHECK(same(o, orow));
  // A fused QKV projection: Q, K, V as column blocks of one row-major matrix, through Ref.
  RowF qkv(lq + lk, hq * d + hkv * d + hkv * dv);
  qkv.setZero();
  qkv.topLeftCorner(lq, hq * d) = q;
  qkv.block(0, hq * d, lk, hkv * d) = k;
  qkv.block(0, hq * d + hkv * d, lk, hkv * dv) = v;
  const Eigen::Ref<const RowF> qref = qkv.topLeftCorner(lq, hq * d);
  MatF o2(lq, hq * dv);
  mha.apply(qref, qkv.block(0, hq * d, lk, hkv * d), qkv.block(0, hq * d + hkv * d, lk, hkv * dv),
            o2);
  CHECK(same(o, o2));
}

TEST_CASE("MultiHeadAttention: no allocation proportional to Lq, Lk or the cache",
          "[multi_head_attention]") {
  // The workspace is allocated once per call, its size independent of Lq and Lk: the count of
  // allocations is the same for a short and a long problem, and Eigen's allocator is never
  // reached (the guard makes it throw). The backward likewise: float dK and dV are accumulated
  // in place, one tile workspace per KV group.
  const Index hq = 8, hkv = 2, d = 32, dv = 32;
  auto count = [&](Index lq, Index lk, bool backward) {
    const MatF q = normal<float>(lq, hq * d, 21, 1.0);
    const Mat<Eigen::half> k = normal<Eigen::half>(lk, hkv * d, 22, 1.0);
    const Mat<Eigen::half> v = normal<Eigen::half>(lk, hkv * dv, 23, 1.0);
    const MatF dout = normal<float>(lq, hq * dv, 24, 1.0);
    const sml::MultiHeadAttention mha(
        sml::AttentionOptions().with_causal(true).with_window(backward ? 200 : -1, -1), hq, hkv);
    MatF o(lq, hq * dv), lse(lq, hq), dq(lq, hq * d), dk(lk, hkv * d), dvm(lk, hkv * dv);
    if (backward)
      mha.apply(q, k, v, o, lse);
    AllocationGuard guard;
    if (backward)
      mha.backward(q, k, v, o, lse, dout, dq, dk, dvm);
    else
      mha.apply(q, k, v, o, lse);
    return guard.allocations();
  };
  const std::size_t prefill_small = count(64, 64, false), prefill_large = count(600, 3000, false);
  const std::size_t decode_small = count(1, 3000, false), decode_large = count(1, 40000, false);
  const std::size_t backward_small = count(64, 64, true), backward_large = count(600, 3000, true);
  INFO("prefill " << prefill_small << " / " << prefill_large << ", decode " << decode_small << " / "
                  << decode_large << ", backward " << backward_small << " / " << backward_large);
  CHECK(prefill_small == prefill_large);
  CHECK(decode_small == decode_large);
  CHECK(backward_small == backward_large);
  // One list of per-thread workspaces, two buffers in each; decoding (one workspace per KV group
  // and thread: the groups take each key block in turn) adds its partials; the backward one
  // buffer per KV group.
  std::size_t threads = 1;
#if defined(_OPENMP) && defined(SOFTMAXLAB_USE_OPENMP)
  threads = static_cast<std::size_t>(omp_get_max_threads());
#endif
  CHECK(prefill_large <= 1 + 2 * threads);
  CHECK(decode_large <= 2 + 2 * std::size_t(hkv) * threads);
  CHECK(backward_large <= std::size_t(hkv));
}

TEST_CASE("MultiHeadAttention: packed sequences (varlen)", "[multi_head_attention]") {
  const Index hq = 4, hkv = 2, d = 8, dv = 8;
  const std::vector<int> cu_q = {0, 5, 5, 17, 20}, cu_k = {0, 7, 10, 22, 22};
  const MatF q = normal<float>(20, hq * d, 31, 1.0), k = normal<float>(22, hkv * d, 32, 1.0);
  const MatF v = normal<float>(22, hkv * dv, 33, 1.0);
  const sml::MultiHeadAttention mha(
      sml::AttentionOptions().with_causal(true).with_window(6, -1).with_alibi(4), hq, hkv);
  MatF o(20, hq * dv);
  mha.apply_varlen(q, k, v, cu_q, cu_k, o);
  for (std::size_t b = 0; b + 1 < cu_q.size(); ++b) {
    const Index q0 = cu_q[b], nq = cu_q[b + 1] - q0, k0 = cu_k[b], nk = cu_k[b + 1] - k0;
    MatF ob(nq, hq * dv);
    mha.apply(q.middleRows(q0, nq), k.middleRows(k0, nk), v.middleRows(k0, nk), ob);
    CHECK(same(MatF(o.middleRows(q0, nq)), ob));  // sequence b alone
  }
  const auto bad = [&](std::vector<int> cq, std::vector<int> ck, const char* what) {
    CHECK_THROWS_WITH(mha.apply_varlen(q, k, v, cq, ck, o), Catch::Contains(what));
  };
  bad({1, 5, 20}, {0, 7, 22}, "cu_seqlens_q[0] must be 0");
  bad({0, 5, 20}, {0, 7, 21}, "cu_seqlens_k must end at the number of rows 22");
  bad({0, 9, 5, 20}, {0, 7, 8, 22}, "cu_seqlens_q must be nondecreasing");
  bad({0, 5, 20}, {0, 22}, "the same size");
}

TEST_CASE("MultiHeadAttention: bad arguments throw naming the parameter",
          "[multi_head_attention]") {
  const sml::AttentionOptions o;
  CHECK_THROWS_WITH(sml::MultiHeadAttention(o, 0, 1), Catch::Contains("q_heads must be >= 1"));
  CHECK_THROWS_WITH(sml::MultiHeadAttention(o, 4, 0), Catch::Contains("kv_heads must be >= 1"));
  CHECK_THROWS_WITH(sml::MultiHeadAttention(o, 6, 4), Catch::Contains("multiple of kv_heads"));
  CHECK_THROWS_WITH(o.with_window(-2, 0), Catch::Contains("window left must be >= -1"));
  CHECK_THROWS_WITH(o.with_window(0, -3), Catch::Contains("window right must be >= -1"));
  CHECK_THROWS_WITH(o.with_alibi(-1.0), Catch::Contains("alibi max_bias"));
  CHECK_THROWS_WITH(o.with_alibi(NAN), Catch::Contains("alibi max_bias"));
  CHECK_THROWS_WITH(sml::Attention<>(o.with_window(4, 0)), Catch::Contains("MultiHeadAttention"));
  const sml::MultiHeadAttention mha(o, 4, 2);
  CHECK_THROWS_WITH(mha.with_sinks(Eigen::VectorXf::Zero(3)),
                    Catch::Contains("sinks must be a vector of Hq = 4 entries, but got 3 x 1"));
  CHECK_THROWS_WITH(mha.with_sinks(Eigen::Vector4d(0, 1, INFINITY, 2)),
                    Catch::Contains("sinks(2) must be in [-2^100, 2^100]"));
  CHECK_THROWS_WITH(mha.with_sinks(Eigen::Vector4d(0, NAN, 1, 2)),
                    Catch::Contains("sinks(1) must be in"));
  const MatF q(3, 4 * 8), k(5, 2 * 8), v(5, 2 * 4);
  MatF out(3, 4 * 4), lse(3, 4);
  CHECK_THROWS_WITH(mha.apply(MatF(3, 30), k, v, out), Catch::Contains("Q must have Hq d columns"));
  CHECK_THROWS_WITH(mha.apply(q, MatF(5, 12), v, out), Catch::Contains("K must have Hkv d = 16"));
  CHECK_THROWS_WITH(mha.apply(q, k, MatF(5, 7), out), Catch::Contains("V must have Hkv dv"));
  CHECK_THROWS_WITH(mha.apply(q, k, MatF(4, 8), out),
                    Catch::Contains("K and V must have the same"));
  MatF wrong(3, 15), wrong_lse(3, 3);
  CHECK_THROWS_WITH(mha.apply(q, k, v, wrong), Catch::Contains("O must be Lq x Hq dv = 3 x 16"));
  CHECK_THROWS_WITH(mha.apply(q, k, v, out, wrong_lse), Catch::Contains("lse must be Lq x Hq"));
  MatF dq(3, 32), dk(5, 16), dvm(5, 8), bad_dq(3, 31);
  CHECK_THROWS_WITH(mha.backward(q, k, v, out, lse, out, bad_dq, dk, dvm),
                    Catch::Contains("dQ must be 3 x 32"));
  CHECK_THROWS_WITH(mha.backward(q, k, v, out, wrong_lse, out, dq, dk, dvm),
                    Catch::Contains("lse must be 3 x 4"));
  MatF kk = k;
  CHECK_THROWS_WITH(mha.backward(q, kk, v, out, lse, out, dq, kk, dvm),
                    Catch::Contains("dK must not overlap the input K"));
  Eigen::VectorXf dz(4), bad_dz(3);
  CHECK_THROWS_WITH(mha.backward(q, k, v, out, lse, out, dq, dk, dvm, dz),
                    Catch::Contains("dsinks needs a sink"));
  CHECK_THROWS_WITH(
      mha.with_sinks(Eigen::Vector4f::Zero()).backward(q, k, v, out, lse, out, dq, dk, dvm, bad_dz),
      Catch::Contains("dsinks must be a vector of Hq = 4 entries"));
}

TEST_CASE("MultiHeadAttention: backward against central finite differences in double",
          "[multi_head_attention]") {
  // L = sum(O .* W): dO = W, and each entry of dQ, dK, dV against (L(x + h) - L(x - h)) / 2h with
  // h = 1e-6 (truncation ~h^2, rounding ~1e-16 / h): within 1e-6 (1 + |fd|). GQA and MQA: dK and
  // dV of a KV head carry the sum over its query heads.
  using MatD = Mat<double>;
  const Index lq = 5, lk = 7, d = 3, dv = 2;
  std::vector<Config> cs(3);
  cs[0].causal = true;
  cs[0].left = 3;
  cs[0].right = 1;
  cs[0].max_bias = 4;
  cs[0].has_sink = true;
  cs[0].sink = 0.3;
  cs[1].cap = 3;
  cs[1].right = 2;
  cs[2].causal = true;
  cs[2].max_bias = 2;
  cs[2].sinks = {0.5, -1.0, 2.0, 0.25};  // per query head
  for (Index hkv : {2, 1}) {
    const Index hq = 4;
    for (const Config& c : cs) {
      const sml::MultiHeadAttention mha = c.layer(hq, hkv);
      MatD q = normal<double>(lq, hq * d, 61, 1.0), k = normal<double>(lk, hkv * d, 62, 1.0);
      MatD v = normal<double>(lk, hkv * dv, 63, 1.0);
      const MatD w = normal<double>(lq, hq * dv, 64, 1.0);
      MatD o(lq, hq * dv), lse(lq, hq);
      mha.apply(q, k, v, o, lse);
      MatD dq(q.rows(), q.cols()), dk(k.rows(), k.cols()), dvm(v.rows(), v.cols());
      mha.backward(q, k, v, o, lse, w, dq, dk, dvm);
      auto loss = [&]() {
        return mha(q, k, v).cwiseProduct(w).sum();
      };
      double worst = 0;
      // Each entry of x against central differences of f.
      auto probe_with = [&](MatD& x, const MatD& grad, const auto& f) {
        for (Index i = 0; i < x.rows(); ++i) {
          for (Index j = 0; j < x.cols(); ++j) {
            const double keep = x(i, j), h = 1e-6;
            x(i, j) = keep + h;
            const double up = f();
            x(i, j) = keep - h;
            const double down = f();
            x(i, j) = keep;
            const double fd = (up - down) / (2 * h);
            worst = std::max(worst, std::fabs(grad(i, j) - fd) / (1 + std::fabs(fd)));
          }
        }
      };
      probe_with(q, dq, loss);
      probe_with(k, dk, loss);
      probe_with(v, dvm, loss);
      if (c.head_has_sink()) {
        // The sinks' gradient: per head with with_sinks, their sum for the options' one sink.
        Eigen::VectorXd dz(hq);
        mha.backward(q, k, v, o, lse, w, dq, dk, dvm, dz);
        auto loss_at = [&](const Config& cc) {
          return cc.layer(hq, hkv)(q, k, v).cwiseProduct(w).sum();
        };
        const double h = 1e-6;
        for (Index head = 0; head < (c.sinks.empty() ? 1 : hq); ++head) {
          Config up = c, down = c;
          if (c.sinks.empty()) {
            up.sink += h;
            down.sink -= h;
          } else {
            up.sinks[static_cast<std::size_t>(head)] += h;
            down.sinks[static_cast<std::size_t>(head)] -= h;
          }
          const double fd = (loss_at(up) - loss_at(down)) / (2 * h);
          const double grad = c.sinks.empty() ? dz.sum() : dz(head);
          worst = std::max(worst, std::fabs(grad - fd) / (1 + std::fabs(fd)));
        }
        CHECK(dz.norm() > 0);
      }
      {
        // The masked backward (a double mask with -inf entries) against its own loss.
        MatD mask = normal<double>(lq, lk, 65, 1.0);
        mask(1, 2) = mask(3, 0) = -INFINITY;
        MatD om(lq, hq * dv), lm(lq, hq);
        mha.apply_masked(q, k, v, mask, om, lm);
        mha.backward_masked(q, k, v, mask, om, lm, w, dq, dk, dvm);
        auto masked_loss = [&]() {
          MatD out(lq, hq * dv);
          mha.apply_masked(q, k, v, mask, out);
          return out.cwiseProduct(w).sum();
        };
        probe_with(q, dq, masked_loss);
        probe_with(k, dk, masked_loss);
        probe_with(v, dvm, masked_loss);
      }
      INFO("Hkv " << hkv << " " << c.label() << ": worst relative difference " << worst);
      CHECK(worst <= 1e-6);
      CHECK(dk.norm() > 0);
    }
  }
}

TEST_CASE("MultiHeadAttention: backward of float inputs against the double backward",
          "[multi_head_attention]") {
  // The float pass (half K/V) against the double pass on the same values: within
  // 64 eps (1 + max|dX|) per entry (Attention's backward measured 6 ulp), worst printed.
  const Index hq = 8, hkv = 2, lq = 40, lk = 300, d = 16, dv = 8;
  const MatF q = normal<float>(lq, hq * d, 71, 1.0);
  const Mat<Eigen::half> k = normal<Eigen::half>(lk, hkv * d, 72, 1.0);
  const Mat<Eigen::half> v = normal<Eigen::half>(lk, hkv * dv, 73, 1.0);
  const MatF w = normal<float>(lq, hq * dv, 74, 1.0);
  const sml::MultiHeadAttention mha(
      sml::AttentionOptions().with_causal(true).with_window(100, -1).with_alibi(2), hq, hkv);
  MatF o(lq, hq * dv), lse(lq, hq), dq(lq, hq * d), dk(lk, hkv * d), dvf(lk, hkv * dv);
  mha.apply(q, k, v, o, lse);
  mha.backward(q, k, v, o, lse, w, dq, dk, dvf);
  using MatD = Mat<double>;
  const MatD qd = q.cast<double>(), kd = k.cast<float>().cast<double>();
  const MatD vd = v.cast<float>().cast<double>(), od = o.cast<double>(), ld = lse.cast<double>();
  MatD dqd(lq, hq * d), dkd(lk, hkv * d), dvd(lk, hkv * dv);
  mha.backward(qd, kd, vd, od, ld, MatD(w.cast<double>()), dqd, dkd, dvd);
  double worst = 0;
  auto cmp = [&](const MatF& a, const MatD& b) {
    const double scale = 1 + b.cwiseAbs().maxCoeff();
    worst = std::max(worst, (a.cast<double>() - b).cwiseAbs().maxCoeff() / scale
                                / std::numeric_limits<float>::epsilon());
  };
  cmp(dq, dqd);
  cmp(dk, dkd);
  cmp(dvf, dvd);
  std::cout << "MultiHeadAttention backward float vs double: worst " << worst
            << " eps (1 + max|dX|)\n";
  CHECK(worst <= 64);
}

#if defined(_OPENMP) && defined(SOFTMAXLAB_USE_OPENMP)
TEST_CASE("MultiHeadAttention: the same bits on 1 and 2 threads", "[multi_head_attention]") {
  // Prefill tiles and decoding key ranges run on the threads; each tile's code does not depend on
  // the thread, and the partials are merged in order.
  const Index hq = 8, hkv = 2, d = 16, dv = 16;
  const sml::MultiHeadAttention mha(sml::AttentionOptions().with_causal(true).with_sink(0.5), hq,
                                    hkv);
  for (Index lq : {1, 200}) {
    const Index lk = lq == 1 ? 9000 : 400;
    const MatF q = normal<float>(lq, hq * d, 81, 1.0);
    const Mat<Eigen::half> k = normal<Eigen::half>(lk, hkv * d, 82, 1.0);
    const Mat<Eigen::half> v = normal<Eigen::half>(lk, hkv * dv, 83, 1.0);
    const int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    MatF o1(lq, hq * dv), l1(lq, hq), o2(lq, hq * dv), l2(lq, hq);
    mha.apply(q, k, v, o1, l1);
    omp_set_num_threads(2);
    mha.apply(q, k, v, o2, l2);
    omp_set_num_threads(saved);
    CHECK(same(o1, o2));
    CHECK(same(l1, l2));
  }
}
#endif
