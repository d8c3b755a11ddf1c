// The additive mask's scalar types (issue 23): a half or bfloat16 mask beside float scores and a
// float mask beside double scores, in AttentionSoftmax (apply_masked, rowwise_masked) and
// Attention (apply_masked, backward_masked). Each conversion to the score type is exact, so every
// call must give the same values (NaN matching NaN) as the same call on the mask converted first;
// -inf in a 16-bit mask masks, a NaN makes the row NaN.
#include <cmath>
#include <limits>
#include <random>

#include <catch2/catch.hpp>

#include <softmaxlab/attention_softmax.hpp>
#include <softmaxlab/flash_attention.hpp>

#include "support.hpp"

namespace sml = softmaxlab;
using Index = Eigen::Index;
using softmaxlab_test::same;

namespace {

template <class S>
using Mat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;
template <class S>
using RowMat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

template <class S>
Mat<S> normal(Index rows, Index cols, unsigned seed, double sigma) {
  return softmaxlab_test::random_normal(rows, cols, seed, sigma).cast<S>();
}

// A mask of type M with about 10% -inf entries, one fully masked row (row 1), a +inf entry and a
// NaN entry (row 3), the rest N(0, 4^2).
template <class M>
Mat<M> mask_of(Index rows, Index cols, unsigned seed) {
  Mat<double> m = normal<double>(rows, cols, seed, 4.0);
  std::mt19937_64 gen(seed + 1);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  const double inf = std::numeric_limits<double>::infinity();
  for (Index i = 0; i < rows; ++i)
    for (Index j = 0; j < cols; ++j)
      if (u(gen) < 0.1)
        m(i, j) = -inf;
  if (rows > 1)
    m.row(1).setConstant(-inf);
  if (rows > 3 && cols > 2) {
    m(3, 1) = std::numeric_limits<double>::quiet_NaN();
    m(2, cols - 1) = inf;
  }
  return m.cast<M>();
}

const sml::AttentionOptions kOptions[] = {
    sml::AttentionOptions(),
    sml::AttentionOptions().with_scale(0.7).with_mask_slope(0.5).with_sink(1.25),
    sml::AttentionOptions().with_softcap(3.0).with_sink(-0.5),
};

// AttentionSoftmax with scores of type S and a mask of type M against the mask converted to S.
template <class S, class M>
void softmax_case(unsigned seed) {
  for (const sml::AttentionOptions& opt : kOptions) {
    const sml::AttentionSoftmax f(opt);
    for (Index n : {1, 7, 100, 2049, 5000}) {  // 2049, 5000: past a 2048-entry staging chunk
      const Index rows = 5;
      const Mat<S> s = normal<S>(rows, n, seed++, 6.0);
      const Mat<M> m = mask_of<M>(rows, n, seed++);
      const Mat<S> mc = m.template cast<S>();
      INFO("n " << n << " scale " << opt.scale_or(1.0) << " softcap " << opt.softcap());
      // Rows one at a time (apply_masked), contiguous and strided (a row of a column-major matrix).
      for (Index i = 0; i < rows; ++i) {
        Eigen::Matrix<S, Eigen::Dynamic, 1> y(n), yc(n);
        f.apply_masked(s.row(i), m.row(i), y);
        f.apply_masked(s.row(i), mc.row(i), yc);
        CHECK(same(y, yc));
        const Eigen::Matrix<S, Eigen::Dynamic, 1> si = s.row(i).transpose();
        const Eigen::Matrix<M, Eigen::Dynamic, 1> mi = m.row(i).transpose();
        f.apply_masked(si, mi, y);
        CHECK(same(y, yc));
      }
      // Whole matrices, and one mask row broadcast over every row.
      Mat<S> p(rows, n), pc(rows, n);
      f.rowwise_masked(s, m, p);
      f.rowwise_masked(s, mc, pc);
      CHECK(same(p, pc));
      // The special values: -inf in the mask masks (row 1: every entry, zeros even with the
      // sink), a NaN makes its row NaN (row 3).
      if (rows > 3 && n > 2) {
        CHECK(p.row(1).isZero(0));
        CHECK(p.row(3).array().isNaN().all());
      }
      f.rowwise_masked(s, m.row(0), p);
      f.rowwise_masked(s, mc.row(0), pc);
      CHECK(same(p, pc));
      // A 16-bit output beside the S scores (the staged path).
      Mat<Eigen::half> ph(rows, n), phc(rows, n);
      f.rowwise_masked(s, m, ph);
      f.rowwise_masked(s, mc, phc);
      CHECK(same(ph.template cast<float>(), phc.template cast<float>()));
    }
  }
}

}  // namespace

TEST_CASE("AttentionSoftmax: a half, bfloat16 or float mask gives the bits of the converted mask",
          "[attention][mask_types]") {
  softmax_case<float, Eigen::half>(1);
  softmax_case<float, Eigen::bfloat16>(100);
  softmax_case<double, float>(200);
}

namespace {

// Attention with Q, K, V of type S (O of type SO) and a mask of type M against the mask converted
// to S: the forward (O and lse) and the backward.
template <class S, class M, class SO>
void attention_case(unsigned seed) {
  const Index lq = 37, lk = 300, d = 16, dv = 8;
  const Mat<S> q = normal<S>(lq, d, seed, 1.0), k = normal<S>(lk, d, seed + 1, 1.0);
  const Mat<S> v = normal<S>(lk, dv, seed + 2, 2.0);
  const Mat<M> m = mask_of<M>(lq, lk, seed + 3);
  const Mat<S> mc = m.template cast<S>();
  const RowMat<M> m_row = m;  // a row-major mask: contiguous mask rows
  for (bool causal : {false, true}) {
    for (const sml::AttentionOptions& base : kOptions) {
      const sml::AttentionOptions opt = base.with_causal(causal);
      INFO("causal " << causal << " softcap " << opt.softcap());
      for (const auto& attn :
           {sml::Attention<>(opt), sml::Attention<>(opt).with_block_sizes(7, 5)}) {
        using L = std::conditional_t<std::is_same_v<SO, double>, double, float>;
        Mat<SO> o(lq, dv), oc(lq, dv), orow(lq, dv);
        Eigen::Matrix<L, Eigen::Dynamic, 1> l(lq), lc(lq), lrow(lq);
        attn.apply_masked(q, k, v, m, o, l);
        attn.apply_masked(q, k, v, mc, oc, lc);
        attn.apply_masked(q, k, v, m_row, orow, lrow);
        CHECK(same(o.template cast<double>(), oc.template cast<double>()));
        CHECK(same(orow.template cast<double>(), oc.template cast<double>()));
        CHECK(same(l, lc));
        CHECK(same(lrow, lc));
        CHECK(o.row(3).template cast<double>().array().isNaN().all());  // the NaN mask entry
        if (!causal) {
          // Row 1 has every key masked: a zero row, lse the sink or -inf.
          CHECK(o.row(1).template cast<double>().isZero(0));
          CHECK(double(l(1))
                == (opt.has_sink() ? double(static_cast<L>(opt.sink()))
                                   : -std::numeric_limits<double>::infinity()));
        }
        // The backward, from the forward's O and lse (finite rows only matter; NaN rows match).
        const Mat<SO> dout = normal<SO>(lq, dv, seed + 4, 1.0);
        Mat<SO> dq(lq, d), dk(lk, d), dvv(lk, dv), dqc(lq, d), dkc(lk, d), dvc(lk, dv);
        attn.backward_masked(q, k, v, m, oc, lc, dout, dq, dk, dvv);
        attn.backward_masked(q, k, v, mc, oc, lc, dout, dqc, dkc, dvc);
        CHECK(same(dq.template cast<double>(), dqc.template cast<double>()));
        CHECK(same(dk.template cast<double>(), dkc.template cast<double>()));
        CHECK(same(dvv.template cast<double>(), dvc.template cast<double>()));
      }
    }
  }
}

}  // namespace

TEST_CASE("Attention: a half, bfloat16 or float mask gives the bits of the converted mask",
          "[attention][mask_types]") {
  SECTION("float Q, K, V with a half or bfloat16 mask") {
    attention_case<float, Eigen::half, float>(10);
    attention_case<float, Eigen::bfloat16, float>(20);
  }
  SECTION("double Q, K, V with a float mask") {
    attention_case<double, float, double>(30);
  }
  SECTION("float Q, K, V, a half mask and a half O (the staged path)") {
    attention_case<float, Eigen::half, Eigen::half>(40);
  }
}
