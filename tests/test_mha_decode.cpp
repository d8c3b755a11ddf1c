// MultiHeadAttention's decoding kernels and paged cache (multi_head_attention.hpp): row-major
// float, half and bfloat16 caches (the layout the register kernels read in place) against a
// long-double materialized reference written here, errors in eps with the worst case printed; a
// paged cache (shuffled pages, uneven last page) against the contiguous cache, bit for bit; bad
// block tables; allocations.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iostream>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include <catch2/catch.hpp>

#include <softmaxlab/multi_head_attention.hpp>

#include "support.hpp"

namespace sml = softmaxlab;
using Index = Eigen::Index;
using softmaxlab_test::AllocationGuard;
using softmaxlab_test::same;
using softmaxlab_test::Worst;

namespace {

template <class S>
using Row = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using RowF = Row<float>;
using LMat = Eigen::Matrix<long double, Eigen::Dynamic, Eigen::Dynamic>;
const long double kInfL = std::numeric_limits<long double>::infinity();

template <class S>
Row<S> normal(Index rows, Index cols, unsigned seed, double sigma) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> dist(0.0, sigma);
  Row<double> m(rows, cols);
  for (Index i = 0; i < rows; ++i)
    for (Index j = 0; j < cols; ++j)
      m(i, j) = dist(gen);
  return m.cast<S>();
}

struct Case {
  bool causal = true;
  Index left = -1;
  bool has_sink = false;
  float sink = 0;
  float cap = 0;
  sml::AttentionOptions options() const {
    sml::AttentionOptions o =
        sml::AttentionOptions().with_causal(causal).with_window(left, -1).with_softcap(cap);
    return has_sink ? o.with_sink(sink) : o;
  }
};

// O (Lq x Hq dv) and lse (Lq x Hq) in long double from the definitions (bottom-right band).
void reference(const LMat& q, const LMat& k, const LMat& v, Index hq, Index hkv, const Case& c,
               LMat& o, LMat& lse) {
  const Index lq = q.rows(), lk = k.rows(), d = q.cols() / hq, dv = v.cols() / hkv;
  const long double scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
  o = LMat::Zero(lq, hq * dv);
  lse.resize(lq, hq);
  for (Index h = 0; h < hq; ++h) {
    const Index g = h / (hq / hkv);
    for (Index i = 0; i < lq; ++i) {
      const Index diag = i + lk - lq;
      std::vector<long double> t(static_cast<std::size_t>(lk), -kInfL);
      long double top = c.has_sink ? c.sink : -kInfL;
      for (Index j = 0; j < lk; ++j) {
        if ((c.causal && j > diag) || (c.left >= 0 && j < diag - c.left))
          continue;
        long double s = 0;
        for (Index x = 0; x < d; ++x)
          s += q(i, h * d + x) * k(j, g * d + x);
        s *= scale;
        if (c.cap > 0)
          s = c.cap * std::tanh(s / c.cap);
        t[static_cast<std::size_t>(j)] = s;
        top = std::max(top, s);
      }
      if (top == -kInfL) {
        lse(i, h) = -kInfL;
        continue;
      }
      long double sum = c.has_sink ? std::exp(c.sink - top) : 0.0L;
      for (Index j = 0; j < lk; ++j) {
        const long double w = std::exp(t[static_cast<std::size_t>(j)] - top);
        sum += w;
        if (w != 0)
          o.block(i, h * dv, 1, dv) += w * v.block(j, g * dv, 1, dv);
      }
      o.block(i, h * dv, 1, dv) /= sum;
      lse(i, h) = top + std::log(sum);
    }
  }
}

// The header's bound: |O - exact| <= 8 eps (1 + max|V|) + 2 ceil(Lk / 128) eps max|V|,
// |lse - exact| <= 8 eps (1 + |lse|).
void check(const RowF& o, const RowF& lse, const LMat& ro, const LMat& rl, double vmax, Index lk,
           const std::string& what, Worst& worst) {
  const double eps = std::numeric_limits<float>::epsilon();
  const double bound_o = 8 * (1 + vmax) + 2 * std::ceil(static_cast<double>(lk) / 128.0) * vmax;
  for (Index i = 0; i < o.rows(); ++i) {
    for (Index j = 0; j < o.cols(); ++j) {
      const double err = static_cast<double>(std::fabs(o(i, j) - ro(i, j))) / eps;
      worst.update(err, bound_o,
                   [&](std::ostream& s) { s << what << " O(" << i << ", " << j << ")"; });
      CHECK(err <= bound_o);
    }
    for (Index h = 0; h < lse.cols(); ++h) {
      if (rl(i, h) == -kInfL) {
        CHECK(lse(i, h) == -std::numeric_limits<float>::infinity());
        continue;
      }
      const double bound_l = 8 * (1 + static_cast<double>(std::fabs(rl(i, h))));
      const double err = static_cast<double>(std::fabs(lse(i, h) - rl(i, h))) / eps;
      worst.update(err, bound_l,
                   [&](std::ostream& s) { s << what << " lse(" << i << ", " << h << ")"; });
      CHECK(err <= bound_l);
    }
  }
}

template <class KV>
void accuracy(Index hq, Index hkv, Index lq, Index lk, Index d, Index dv, const Case& c,
              unsigned seed, Worst& worst) {
  const RowF q = normal<float>(lq, hq * d, seed, 1.0);
  const Row<KV> k = normal<KV>(lk, hkv * d, seed + 1, 1.0);
  const Row<KV> v = normal<KV>(lk, hkv * dv, seed + 2, 2.0);
  const sml::MultiHeadAttention mha(c.options(), hq, hkv);
  RowF o(lq, hq * dv), lse(lq, hq);
  mha.apply(q, k, v, o, lse);
  LMat ro, rl;
  // 16-bit K/V are exact in float: the reference reads the same values.
  reference(q.cast<long double>(), k.template cast<float>().template cast<long double>(),
            v.template cast<float>().template cast<long double>(), hq, hkv, c, ro, rl);
  const double vmax = static_cast<double>(v.template cast<float>().cwiseAbs().maxCoeff());
  const std::string what = std::string(sizeof(KV) == 4 ? "float" : "16-bit") + " KV, Hq "
                           + std::to_string(hq) + " Hkv " + std::to_string(hkv) + " Lq "
                           + std::to_string(lq) + " Lk " + std::to_string(lk) + " d "
                           + std::to_string(d) + " dv " + std::to_string(dv);
  check(o, lse, ro, rl, vmax, lk, what, worst);
}

// A paged copy of a row-major cache: pages of page_size rows in a shuffled order, with unused
// pages between them.
template <class T>
struct Paged {
  std::vector<T> pool;
  std::vector<std::int32_t> table;
  Index pages = 0;

  Paged(const Row<T>& x, Index page_size, unsigned seed) {
    const Index used = (x.rows() + page_size - 1) / page_size;
    pages = 2 * used + 1;
    pool.assign(static_cast<std::size_t>(pages * page_size * x.cols()), T(0));
    std::vector<std::int32_t> order(static_cast<std::size_t>(pages));
    for (Index p = 0; p < pages; ++p)
      order[static_cast<std::size_t>(p)] = static_cast<std::int32_t>(p);
    std::shuffle(order.begin(), order.end(), std::mt19937(seed));
    table.assign(order.begin(), order.begin() + used);
    for (Index j = 0; j < x.rows(); ++j) {
      const Index page = table[static_cast<std::size_t>(j / page_size)];
      for (Index c = 0; c < x.cols(); ++c)
        pool[static_cast<std::size_t>((page * page_size + j % page_size) * x.cols() + c)] = x(j, c);
    }
  }
};

}  // namespace

TEST_CASE(
    "MultiHeadAttention: decoding kernels on row-major caches against the long-double "
    "reference",
    "[multi_head_attention][decode]") {
  // Row-major K and V of float, half and bfloat16: the layout the register kernels (AVX-512)
  // read in place; tiles of up to 16 rows (Lq x group) take them, larger ones the block GEMMs.
  Worst worst;
  std::vector<Case> cases(3);
  cases[1].left = 700;
  cases[1].has_sink = true;
  cases[1].sink = 1.5f;
  cases[2].causal = false;
  cases[2].cap = 5.0f;
  unsigned seed = 100;
  for (const Case& c : cases) {
    for (Index lq : {1, 3, 8}) {
      for (Index lk : {1, 5, 130, 2600}) {
        accuracy<float>(8, 2, lq, lk, 20, 24, c, seed += 3, worst);
        accuracy<Eigen::half>(4, 1, lq, lk, 16, 16, c, seed += 3, worst);
        accuracy<Eigen::bfloat16>(2, 2, lq, lk, 33, 17, c, seed += 3, worst);
      }
    }
    accuracy<Eigen::half>(8, 2, 1, 3000, 128, 128, c, seed += 3, worst);
  }
  std::cout << "MultiHeadAttention decoding kernels: " << worst.report() << "\n";
}

TEST_CASE("MultiHeadAttention: a paged cache gives the contiguous cache's bits",
          "[multi_head_attention][decode]") {
  const Index hq = 8, hkv = 2, d = 16, dv = 24;
  unsigned seed = 300;
  for (Index lq : {1, 4}) {
    for (Index lk : {1, 100, 2500}) {
      for (Index page_size : {16, 100, 7}) {  // 100 and 7 leave an uneven last page
        const RowF q = normal<float>(lq, hq * d, seed++, 1.0);
        const Row<Eigen::half> k = normal<Eigen::half>(lk, hkv * d, seed++, 1.0);
        const Row<Eigen::half> v = normal<Eigen::half>(lk, hkv * dv, seed++, 1.0);
        const Row<float> kf = k.cast<float>(), vf = v.cast<float>();
        const sml::MultiHeadAttention mha(sml::AttentionOptions().with_causal(true), hq, hkv);
        INFO("Lq " << lq << " Lk " << lk << " page_size " << page_size);
        RowF o(lq, hq * dv), lse(lq, hq), po(lq, hq * dv), plse(lq, hq);
        mha.apply(q, k, v, o, lse);
        const Paged<Eigen::half> pk(k, page_size, seed++), pv(v, page_size, seed++);
        mha.apply_paged(q,
                        sml::PagedKV<Eigen::half>(pk.pool.data(), pk.pages, page_size, hkv * d,
                                                  pk.table.data(), Index(pk.table.size()), lk),
                        sml::PagedKV<Eigen::half>(pv.pool.data(), pv.pages, page_size, hkv * dv,
                                                  pv.table.data(), Index(pv.table.size()), lk),
                        po, plse);
        CHECK(same(o, po));
        CHECK(same(lse, plse));
        // Float pages: bitwise where both take the register kernels (AVX-512 builds); elsewhere
        // the contiguous float cache is read in place by Eigen's products and the pages through
        // converted blocks, so within the stated bound of the reference instead.
        mha.apply(q, kf, vf, o, lse);
        const Paged<float> fk(kf, page_size, seed++), fv(vf, page_size, seed++);
        mha.apply_paged(q,
                        sml::PagedKV<float>(fk.pool.data(), fk.pages, page_size, hkv * d,
                                            fk.table.data(), Index(fk.table.size()), lk),
                        sml::PagedKV<float>(fv.pool.data(), fv.pages, page_size, hkv * dv,
                                            fv.table.data(), Index(fv.table.size()), lk),
                        po, plse);
#if SOFTMAXLAB_AVX512_CONVERT
        CHECK(same(o, po));
        CHECK(same(lse, plse));
#endif
        LMat ro, rl;
        reference(q.cast<long double>(), kf.cast<long double>(), vf.cast<long double>(), hq, hkv,
                  Case(), ro, rl);
        Worst w;
        check(po, plse, ro, rl, static_cast<double>(vf.cwiseAbs().maxCoeff()), lk, "paged float",
              w);
      }
    }
  }
}

TEST_CASE("MultiHeadAttention: a paged cache allocates nothing proportional to it",
          "[multi_head_attention][decode]") {
  const Index hq = 8, hkv = 2, d = 32;
  auto count = [&](Index lk) {
    const RowF q = normal<float>(1, hq * d, 1, 1.0);
    const Row<Eigen::half> k = normal<Eigen::half>(lk, hkv * d, 2, 1.0);
    const Paged<Eigen::half> p(k, 16, 3);
    const sml::PagedKV<Eigen::half> pk(p.pool.data(), p.pages, 16, hkv * d, p.table.data(),
                                       Index(p.table.size()), lk);
    const sml::MultiHeadAttention mha(sml::AttentionOptions().with_causal(true), hq, hkv);
    RowF o(1, hq * d);
    AllocationGuard guard;
    mha.apply_paged(q, pk, pk, o);
    return guard.allocations();
  };
  CHECK(count(3000) == count(40000));
}

TEST_CASE("PagedKV: bad tables and shapes throw naming the value",
          "[multi_head_attention][decode]") {
  std::vector<float> pool(4 * 8 * 6, 1.0f);
  const std::vector<std::int32_t> table = {2, 0, 3};
  using P = sml::PagedKV<float>;
  CHECK_NOTHROW(P(pool.data(), 4, 8, 6, table.data(), 3, 20));
  CHECK_NOTHROW(P(pool.data(), 4, 8, 6, table.data(), 3, 16));  // the third entry unused
  const std::vector<std::int32_t> out = {2, 4, 0}, negative = {-1, 0, 0};
  CHECK_THROWS_WITH(P(pool.data(), 4, 8, 6, out.data(), 3, 20),
                    Catch::Contains("block_table[1]") && Catch::Contains("got 4"));
  CHECK_THROWS_AS(P(pool.data(), 4, 8, 6, negative.data(), 3, 1), std::invalid_argument);
  CHECK_THROWS_WITH(P(pool.data(), 4, 8, 6, table.data(), 2, 20),
                    Catch::Contains("block_table") && Catch::Contains("got 2"));
  CHECK_THROWS_WITH(P(pool.data(), 4, 0, 6, table.data(), 3, 20), Catch::Contains("page_size"));
  CHECK_THROWS_WITH(P(pool.data(), 4, 8, 0, table.data(), 3, 20), Catch::Contains("cols"));
  CHECK_THROWS_WITH(P(pool.data(), 4, 8, 6, table.data(), 3, -1), Catch::Contains("length"));
  CHECK_THROWS_WITH(P(nullptr, 4, 8, 6, table.data(), 3, 20), Catch::Contains("pool"));
  CHECK_THROWS_WITH(P(pool.data(), 4, 8, 6, nullptr, 3, 20), Catch::Contains("block_table"));
  CHECK_THROWS_WITH(P(pool.data(), -1, 8, 6, table.data(), 3, 0), Catch::Contains("num_pages"));
  // Shapes through apply_paged: K's columns must be Hkv d, K and V the same length, O apart.
  const sml::MultiHeadAttention mha(sml::AttentionOptions(), 2, 1);
  const RowF q = RowF::Ones(1, 12);
  RowF o(1, 12);
  const P k(pool.data(), 4, 8, 6, table.data(), 3, 20),
      v(pool.data(), 4, 8, 6, table.data(), 3, 20);
  CHECK_NOTHROW(mha.apply_paged(q, k, v, o));
  const P k5(pool.data(), 4, 8, 5, table.data(), 3, 20),
      v16(pool.data(), 4, 8, 6, table.data(), 3, 16);
  CHECK_THROWS_WITH(mha.apply_paged(q, k5, v, o), Catch::Contains("K must have"));
  CHECK_THROWS_WITH(mha.apply_paged(q, k, v16, o), Catch::Contains("same number of rows"));
  Eigen::Map<RowF> inside(pool.data() + 30, 1, 12);
  CHECK_THROWS_WITH(mha.apply_paged(q, k, v, inside), Catch::Contains("page pool"));
}

namespace {

// Decoding (Lk > 2,048 keys split into ranges) with Hkv = 4 groups against one call per group on
// that group's columns: the pass over every group of a key block must give each group's own bits.
template <class KV>
void groups_in_one_pass(Index lq, Index lk, const Case& c, unsigned seed) {
  const Index hq = 8, hkv = 4, group = hq / hkv, d = 40, dv = 24;
  const RowF q = normal<float>(lq, hq * d, seed, 1.0);
  const Row<KV> k = normal<KV>(lk, hkv * d, seed + 1, 1.0);
  const Row<KV> v = normal<KV>(lk, hkv * dv, seed + 2, 2.0);
  const sml::MultiHeadAttention all(c.options(), hq, hkv), one(c.options(), group, 1);
  RowF o(lq, hq * dv), lse(lq, hq), og(lq, group * dv), lg(lq, group);
  all.apply(q, k, v, o, lse);
  for (Index g = 0; g < hkv; ++g) {
    INFO(sizeof(KV) << "-byte KV, Lq " << lq << " Lk " << lk << " group " << g);
    one.apply(q.middleCols(g * group * d, group * d), k.middleCols(g * d, d),
              v.middleCols(g * dv, dv), og, lg);
    CHECK(same(RowF(o.middleCols(g * group * dv, group * dv)), og));
    CHECK(same(RowF(lse.middleCols(g * group, group)), lg));
  }
}

}  // namespace

TEST_CASE("MultiHeadAttention: decoding every KV group in one pass gives each group's bits",
          "[multi_head_attention][decode]") {
  // Lq x group <= 16 rows: the groups take each key block in turn; odd tails (4,099 keys: a last
  // block of 3), a window with a sink (the sink joins the first key range only).
  std::vector<Case> cases(2);
  cases[1].left = 3000;
  cases[1].has_sink = true;
  cases[1].sink = 0.75f;
  unsigned seed = 500;
  for (const Case& c : cases) {
    for (Index lq : {1, 3, 8}) {
      for (Index lk : {2049, 4099, 9001}) {
        groups_in_one_pass<float>(lq, lk, c, seed += 3);
        groups_in_one_pass<Eigen::half>(lq, lk, c, seed += 3);
        groups_in_one_pass<Eigen::bfloat16>(lq, lk, c, seed += 3);
      }
    }
  }
  // And the multi-group pass against the long-double reference (the header's bound).
  Worst worst;
  for (Index lk : {2049, 4099}) {
    accuracy<float>(16, 4, 1, lk, 128, 128, cases[1], seed += 3, worst);
    accuracy<Eigen::half>(16, 4, 2, lk, 64, 32, Case(), seed += 3, worst);
    accuracy<Eigen::bfloat16>(8, 4, 3, lk, 33, 17, cases[1], seed += 3, worst);
  }
  std::cout << "MultiHeadAttention decoding, every group in one pass: " << worst.report() << "\n";
}

#if defined(_OPENMP) && defined(SOFTMAXLAB_USE_OPENMP)
TEST_CASE("MultiHeadAttention: decoding gives the same bits on 1 and 2 threads",
          "[multi_head_attention][decode]") {
  // Key ranges (up to 16) run on the threads; each range's tiles do not depend on the thread and
  // the partials are merged in order. Float, half, bfloat16 and paged half caches.
  const Index hq = 16, hkv = 4, d = 32, dv = 32;
  const sml::MultiHeadAttention mha(sml::AttentionOptions().with_causal(true).with_sink(0.5), hq,
                                    hkv);
  const auto run = [&](const auto& k, const auto& v, const RowF& q) {
    const Index lq = q.rows();
    RowF o1(lq, hq * dv), l1(lq, hq), o2(lq, hq * dv), l2(lq, hq);
    const int saved = omp_get_max_threads();
    for (int threads : {1, 2}) {
      omp_set_num_threads(threads);
      RowF& o = threads == 1 ? o1 : o2;
      RowF& l = threads == 1 ? l1 : l2;
      if constexpr (std::is_same_v<std::decay_t<decltype(k)>, sml::PagedKV<Eigen::half>>)
        mha.apply_paged(q, k, v, o, l);
      else
        mha.apply(q, k, v, o, l);
    }
    omp_set_num_threads(saved);
    CHECK(same(o1, o2));
    CHECK(same(l1, l2));
  };
  for (Index lq : {1, 4}) {
    for (Index lk : {2100, 9001, 40000}) {
      INFO("Lq " << lq << " Lk " << lk);
      const RowF q = normal<float>(lq, hq * d, 91, 1.0);
      const RowF kf = normal<float>(lk, hkv * d, 92, 1.0),
                 vf = normal<float>(lk, hkv * dv, 93, 1.0);
      run(kf, vf, q);
      const Row<Eigen::half> kh = kf.cast<Eigen::half>(), vh = vf.cast<Eigen::half>();
      run(kh, vh, q);
      run(Row<Eigen::bfloat16>(kf.cast<Eigen::bfloat16>()),
          Row<Eigen::bfloat16>(vf.cast<Eigen::bfloat16>()), q);
      const Paged<Eigen::half> pk(kh, 16, 94), pv(vh, 16, 95);
      run(sml::PagedKV<Eigen::half>(pk.pool.data(), pk.pages, 16, hkv * d, pk.table.data(),
                                    Index(pk.table.size()), lk),
          sml::PagedKV<Eigen::half>(pv.pool.data(), pv.pages, 16, hkv * dv, pv.table.data(),
                                    Index(pv.table.size()), lk),
          q);
    }
  }
}
#endif
