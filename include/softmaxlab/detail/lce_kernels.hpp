// softmaxlab: the block kernels of LinearCrossEntropy (linear_cross_entropy.hpp, whose doc block
// states what they compute and their bounds) and of its vocabulary-parallel form
// (mpi_linear_cross_entropy.hpp): one kernel for both, the shards differing only in a Combine
// policy that merges the per-token normalizers and the dH partials across shards.
//
// One token block of nb rows: pass 1 computes, per vocabulary group, an online normalizer
// [max, sum] per token (the exact merge of normalizer_merge.hpp) and the label's logit; the groups
// are merged in order, Combine merges the shards, then each token's loss and gradient
// coefficients follow; pass 2 (gradients only) recomputes each block, turns it into dL/dr in place
// and adds its products to dH (a per-group partial, merged in group order, then summed over the
// shards by Combine; in one process the first group adds into dH's rows itself) and dW. Half and
// bfloat16 H and W: the token block of H is widened once to float per token block, and W per
// chunk of rows (at most 512 KB of float, a vocabulary block being one chunk) inside the block
// loops, so no copy of W or of H is ever made; the GEMMs and every sum run in float or
// double. Tested by tests/test_linear_cross_entropy.cpp, tests/test_linear_cross_entropy_16bit.cpp
// and tests/mpi/test_mpi_linear_cross_entropy.cpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "common.hpp"
#include "functor_base.hpp"
#include "normalizer_merge.hpp"
#include "scalar_types.hpp"

namespace softmaxlab {
namespace detail {

// The scratch memory of one call (LinearCrossEntropyWorkspace holds one, reused across calls).
struct LceBuffers {
  std::vector<float> f;
  std::vector<double> d, stats;
  std::vector<long double> sums;

  template <class C>
  std::vector<C>& scalars() {
    if constexpr (std::is_same_v<C, float>) {
      return f;
    } else {
      return d;
    }
  }
  std::size_t bytes() const {
    return sizeof(float) * f.capacity() + sizeof(double) * (d.capacity() + stats.capacity())
           + sizeof(long double) * sums.capacity();
  }
};

// The bias type of the forms without a bias.
struct LceNoBias {};

// Per-call constants of the loss and the options (see linear_cross_entropy.hpp).
struct LceSetup {
  double eps = 0, uniform = 0, weight_total = 0, u_default = 1, z_loss = 0, softcap = 0,
         temperature = 1, filter = 0;
  long ignore = -100;
  bool none = false;
  const std::vector<double>* weight = nullptr;  // the whole vocabulary's class weights, or empty
  Index token_block = 128, vocab_block = 1024;
  Index class_begin = 0;  // the global class of W's first row (a shard's begin; 0 otherwise)
  Span<double> lse{nullptr, 0, 1}, losses{nullptr, 0, 1};
  Span<const double> upstream{nullptr, 0, 1};
};

// The one-process Combine: nothing to merge.
struct LceOneShard {
  // m, s: each token's [max, sum]; zc: the label's logit (0 where this shard does not hold it);
  // zw: sum_k w_k z_k over this shard's classes (label smoothing only). Merged in place.
  void tokens(double*, long double*, double*, double*, Index) const {}
  // The token block's dH partial (count scalars), summed over the shards in place.
  template <class C>
  void gradient(C*, Index) const {}
};

// Fixed vocabulary groups: the unit of thread parallelism (so at most this many threads work on a
// call) and the number of dH partials a token block needs; fixed so that the results do not depend
// on the thread count. Two: the 1% memory target holds on one and two threads.
inline constexpr Index kLceGroups = 2;

// The workspace of one token block of nb rows: the one formula the kernel sizes its buffers by
// and LinearCrossEntropy::workspace_bytes reports (counts in scalars).
struct LceLayout {
  Index ld = 0, ldd = 0, dpad = 0;  // leading dimensions (64-byte multiples), d padded
  Index vb = 0, wc = 0;             // vocabulary block, 16-bit W chunk (rows)
  Index blocks = 0, groups = 0, slots = 0, threads = 1;
  Index per_thread = 0, hsize = 0;  // per thread: block, block max, W chunk; widened H block
  Index partials = 0;               // dH partials of ld x d
  std::size_t scalars = 0, stats = 0, sums = 0;  // compute type, double, long double
  // The bytes of the three buffers.
  template <class C>
  std::size_t bytes() const {
    return sizeof(C) * scalars + sizeof(double) * stats + sizeof(long double) * sums;
  }
};

// The layout for nb tokens, d features, a shard of `vocab` classes in blocks of vocab_block, on at
// most max_threads threads; widen: 16-bit inputs; direct: group 0 adds into dH itself.
template <class C, bool widen>
LceLayout lce_layout(Index nb, Index d, Index vocab, Index vocab_block, int max_threads,
                     bool has_grad, bool filtering, bool direct) {
  // Every buffer starts on a 64-byte boundary and every column of a block on one too (leading
  // dimension ld): Eigen peels unaligned heads with scalar code, whose exp differs from the
  // vector exp, so the alignment must not depend on where the allocator put the workspace.
  constexpr Index kAlign = 64 / static_cast<Index>(sizeof(C));
  const auto round_up = [](Index x) {
    return (x + kAlign - 1) / kAlign * kAlign;
  };
  LceLayout l;
  l.ld = round_up(nb);
  l.ldd = (nb + 7) / 8 * 8;
  l.dpad = round_up(d);
  l.vb = std::max<Index>(1, std::min(vocab_block, vocab));
  if (widen) {
    // 16-bit W is widened in chunks of wc rows (at most 512 KB of float), and a vocabulary block
    // is one chunk: the float block then holds nb x wc logits, not nb x vocab_block.
    l.wc = std::min(round_up(l.vb),
                    std::max(kAlign, Index(131072) / std::max<Index>(d, 1) / kAlign * kAlign));
    l.vb = std::min(l.vb, l.wc);
  }
  l.blocks = vocab > 0 ? (vocab + l.vb - 1) / l.vb : 0;
  l.groups = std::min(kLceGroups, l.blocks);
  l.slots = std::max<Index>(l.groups, 1);
  l.threads = std::max<Index>(1, std::min<Index>(max_threads, l.groups));
  l.per_thread = l.ld * l.vb + l.ld + l.wc * l.dpad;
  l.hsize = widen ? l.ld * l.dpad : 0;
  l.partials = has_grad ? l.slots - (direct ? 1 : 0) : 0;
  l.scalars =
      static_cast<std::size_t>(l.per_thread * l.threads + l.hsize
                               + (has_grad ? l.partials * l.ld * d + 3 * l.ld : 0) + kAlign);
  // Doubles: per group slot the weighted logit sums (ldd) and maxima, per thread the block's sums
  // (ldd), per token the label logit, lse, m, 1/S, u, A, per token and vocabulary block the block
  // max (filtering only).
  l.stats = static_cast<std::size_t>(l.ldd * (l.slots + l.threads) + nb * (l.slots + 6)
                                     + (filtering ? nb * l.blocks : 0) + 8);
  l.sums = static_cast<std::size_t>(nb * l.slots);
  return l;
}

// Grows v to at least n elements with capacity exactly n (no growth factor), so that
// Workspace::bytes() is the layout's formula.
template <class T>
void lce_grow(std::vector<T>& v, std::size_t n) {
  if (v.size() >= n)
    return;
  if (v.capacity() < n) {
    std::vector<T> fresh;
    fresh.reserve(n);
    fresh.resize(n);
    v.swap(fresh);
  } else {
    v.resize(n);
  }
}

// The first 64-byte boundary at or after p (the buffers carry that much slack).
template <class T>
T* lce_aligned(T* p) {
  const std::size_t a = reinterpret_cast<std::size_t>(p) % 64;
  return a == 0 ? p : reinterpret_cast<T*>(reinterpret_cast<char*>(p) + (64 - a));
}

// dst = src converted to C (dst has src's shape and storage order): each inner vector through
// convert_contiguous (F16C, AVX-512 or the bfloat16 shift) when src has storage with unit inner
// stride, else Eigen's per-element cast.
template <class C, class Src, class Dst>
void lce_widen(const Src& src, Dst& dst) {
  if constexpr (has_direct_access_v<Src>) {
    if (src.innerStride() == 1) {
      for (Index o = 0; o < src.outerSize(); ++o)
        convert_contiguous(src.data() + o * src.outerStride(), dst.data() + o * dst.outerStride(),
                           src.innerSize());
      return;
    }
  }
  dst = src.template cast<C>();
}

// Runs fn(group, thread) for every group: on OpenMP threads when opted in. Each group's work is
// the same whatever thread runs it.
template <class Fn>
void lce_for_groups(Index groups, int threads, const Fn& fn) {
#if SOFTMAXLAB_PARALLEL_SLICES
  if (threads > 1) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (Index g = 0; g < groups; ++g)
      fn(g, omp_get_thread_num());
    return;
  }
#endif
  (void)threads;
  for (Index g = 0; g < groups; ++g)
    fn(g, 0);
}

// One block of tokens [n0, n0 + nb): both passes. Returns the sum of its counted tokens' losses.
// C is the compute type (float for half and bfloat16 inputs); dh, dw, db are nullptr or pointers
// to C storage of H's, W's and b's shapes (zeroed by the caller).
template <class C, class XH, class XW, class XB, class Labels, class PH, class PW, class PB,
          class Combine>
double lce_token_block(const XH& h, const XW& w, const XB* b, const Labels& labels, PH dh, PW dw,
                       PB db, const LceSetup& st, LceBuffers& ws, const Combine& combine, Index n0,
                       Index nb) {
  using Mat = Eigen::Matrix<C, Eigen::Dynamic, Eigen::Dynamic>;
  using MapM = Eigen::Map<Mat, 0, Eigen::OuterStride<>>;
  using MapC = Eigen::Map<Eigen::Array<C, Eigen::Dynamic, 1>>;
  using MapD = Eigen::Map<Eigen::ArrayXd>;
  using In = typename XH::Scalar;
  constexpr bool widen = !std::is_same_v<In, C>;
  constexpr bool has_grad = !std::is_same_v<PH, std::nullptr_t>;
  // One process: group 0 adds its dH terms straight into dH's rows (no partial for it).
  constexpr bool direct = std::is_same_v<Combine, LceOneShard>;
  const Index d = h.cols(), vocab = w.rows();
  int max_threads = 1;
#if SOFTMAXLAB_PARALLEL_SLICES
  if (!omp_in_parallel())
    max_threads = omp_get_max_threads();
#endif
  const bool filtering = has_grad && st.filter > 0 && st.eps == 0;
  const LceLayout lay =
      lce_layout<C, widen>(nb, d, vocab, st.vocab_block, max_threads, has_grad, filtering, direct);
  const Index vb = lay.vb, blocks = lay.blocks, groups = lay.groups, slots = lay.slots;
  const Index ld = lay.ld, ldd = lay.ldd, dpad = lay.dpad, wc = lay.wc;
  const Index per_thread = lay.per_thread, hsize = lay.hsize;
  const int threads = static_cast<int>(lay.threads);
  constexpr int kWOrder = XW::IsRowMajor ? Eigen::RowMajor : Eigen::ColMajor;
  constexpr int kHOrder = XH::IsRowMajor ? Eigen::RowMajor : Eigen::ColMajor;
  using MapW = Eigen::Map<Eigen::Matrix<C, Eigen::Dynamic, Eigen::Dynamic, kWOrder>, 0,
                          Eigen::OuterStride<>>;
  using MapH = Eigen::Map<Eigen::Matrix<C, Eigen::Dynamic, Eigen::Dynamic, kHOrder>, 0,
                          Eigen::OuterStride<>>;
  // Scalars: [threads x (ld x vb block, ld block max, wc x dpad W chunk)][ld x dpad H block]
  //          [partials x ld x d dH partials][3 x ld coefficients]
  std::vector<C>& sbuf = ws.scalars<C>();
  lce_grow(sbuf, lay.scalars);
  C* base = lce_aligned(sbuf.data());
  lce_grow(ws.stats, lay.stats);
  lce_grow(ws.sums, lay.sums);
  double* gzw = lce_aligned(ws.stats.data());
  double* thread_sums = gzw + ldd * slots;
  double* gmax = thread_sums + ldd * threads;
  double* zc = gmax + nb * slots;
  double* lse = zc + nb;
  double* mrow = lse + nb;
  double* invs = mrow + nb;
  double* urow = invs + nb;
  double* arow = urow + nb;
  double* bmax = arow + nb;
  long double* gsum = ws.sums.data();
  // The token block in the compute type: H's rows themselves, or their widened copy.
  MapH hwide(base + per_thread * threads, widen ? nb : 0, widen ? d : 0,
             Eigen::OuterStride<>(XH::IsRowMajor ? dpad : ld));
  if constexpr (widen)
    lce_widen<C>(h.middleRows(n0, nb), hwide);
  const auto& hb = [&]() -> decltype(auto) {
    if constexpr (widen)
      return static_cast<const MapH&>(hwide);
    else
      return h.middleRows(n0, nb);
  }();
  // fn(j, c, W_c) for the chunks [v0 + j, v0 + j + c) of the block [v0, v0 + vlen): W's rows
  // themselves (one chunk), or their widened copy in the thread's buffer.
  const auto for_w_chunks = [&](int thread, Index v0, Index vlen, const auto& fn) {
    if constexpr (widen) {
      C* buf = base + per_thread * thread + ld * vb + ld;
      for (Index j = 0; j < vlen; j += wc) {
        const Index c = std::min(wc, vlen - j);
        MapW wide(buf, c, d, Eigen::OuterStride<>(XW::IsRowMajor ? dpad : wc));
        lce_widen<C>(w.middleRows(v0 + j, c), wide);
        fn(j, c, static_cast<const MapW&>(wide));
      }
    } else {
      (void)thread;
      fn(Index(0), vlen, w.middleRows(v0, vlen));
    }
  };
  const auto label_of = [&](Index n) {
    return static_cast<long>(labels[n0 + n]);
  };
  // The label's column in this shard's W, or -1.
  const auto local_label = [&](Index n) {
    const long c = label_of(n);
    return c != st.ignore && c >= st.class_begin && c < st.class_begin + vocab
               ? static_cast<Index>(c - st.class_begin)
               : Index(-1);
  };
  const auto class_weight = [&](Index global_k) {
    return st.weight->empty() ? 1.0 : (*st.weight)[static_cast<std::size_t>(global_k)];
  };
  const auto group_range = [&](Index g) {
    return std::make_pair(g * blocks / groups, (g + 1) * blocks / groups);
  };
  // Bias, softcap and temperature on a block of raw logits (local columns v0..).
  const auto transform = [&](auto& z, Index v0) {
    if constexpr (!std::is_same_v<XB, LceNoBias>) {
      for (Index k = 0; k < z.cols(); ++k)
        z.col(k).array() += convert_scalar<C>(b->coeff(v0 + k));
    } else {
      (void)v0;
    }
    if (st.softcap != 0) {
      const C cap = static_cast<C>(st.softcap), inv = static_cast<C>(1.0 / st.softcap);
      z.array() = cap * (z.array() * inv).tanh();
    }
    if (st.temperature != 1.0)
      z.array() *= static_cast<C>(1.0 / st.temperature);
  };
  const double inf = std::numeric_limits<double>::infinity();
  for (Index n = 0; n < nb; ++n)
    zc[n] = 0;  // the owner of the label writes it (the shards add these up exactly)

  // Pass 1: per group, an online normalizer per token over the group's blocks, in block order.
  const auto pass1 = [&](Index g, int thread) {
    MapM zfull(base + per_thread * thread, nb, vb, Eigen::OuterStride<>(ld));
    MapC bm(base + per_thread * thread + ld * vb, nb);  // block max per token
    MapD sum(thread_sums + ldd * thread, nb);
    double* m = gmax + g * nb;
    long double* s = gsum + g * nb;
    MapD zw(gzw + g * ldd, nb);
    zw.setZero();
    for (Index n = 0; n < nb; ++n) {
      m[n] = -inf;
      s[n] = 0;
    }
    const auto [first, last] = group_range(g);
    for (Index blk = first; blk < last; ++blk) {
      const Index v0 = blk * vb, vlen = std::min(vb, vocab - v0);
      auto z = zfull.leftCols(vlen);
      for_w_chunks(thread, v0, vlen, [&](Index j, Index c, const auto& wk) {
        z.middleCols(j, c).noalias() = hb * wk.transpose();
      });
      transform(z, v0);
      bm = z.col(0).array();  // a NaN is caught by the sum below
      for (Index k = 1; k < vlen; ++k)
        bm = bm.max(z.col(k).array());
      sum.setZero();
      for (Index k = 0; k < vlen; ++k)
        sum += (z.col(k).array() - bm).exp().template cast<double>();
      for (Index n = 0; n < nb; ++n) {
        double bmn = static_cast<double>(bm(n));
        long double sn = sum(n);
        if (bmn == -inf)
          sn = 0;  // every logit of the block is -inf: no mass
        else if (sn != sn || bmn == inf)
          bmn = std::numeric_limits<double>::quiet_NaN();
        if (filtering)
          bmax[n * blocks + blk] = bmn;
        merge_normalizer_state<double>(m[n], s[n], bmn, sn, 1.0L);
        const Index c = local_label(n);
        if (c >= v0 && c < v0 + vlen)
          zc[n] = static_cast<double>(z(n, c - v0));
      }
      if (st.eps > 0) {
        for (Index k = 0; k < vlen; ++k)
          zw += class_weight(st.class_begin + v0 + k) * z.col(k).array().template cast<double>();
      }
    }
  };
  if (groups == 0) {  // an empty shard: the empty state
    for (Index n = 0; n < nb; ++n) {
      gmax[n] = -inf;
      gsum[n] = 0;
      gzw[n] = 0;
    }
  }
  lce_for_groups(groups, threads, pass1);
  // The groups merged in order into slot 0, then the shards (Combine).
  for (Index n = 0; n < nb; ++n) {
    for (Index g = 1; g < groups; ++g) {
      merge_normalizer_state<double>(gmax[n], gsum[n], gmax[g * nb + n], gsum[g * nb + n], 1.0L);
      gzw[n] += gzw[g * ldd + n];
    }
  }
  combine.tokens(gmax, gsum, zc, gzw, nb);

  // Each token's loss, lse and gradient coefficients.
  double total = 0;
  for (Index n = 0; n < nb; ++n) {
    const double m = gmax[n], zw = gzw[n];
    const long double s = gsum[n];
    const double log_s = static_cast<double>(std::log(s));
    const double l = m != m ? m : (m == -inf ? -inf : m + log_s);
    lse[n] = l;
    mrow[n] = m;
    invs[n] = static_cast<double>(1.0L / s);
    const long c = label_of(n);
    const Index gi = n0 + n;
    if (st.lse.data != nullptr)
      st.lse[gi] = l;
    if (c == st.ignore) {
      urow[n] = arow[n] = 0;
      if (st.losses.data != nullptr)
        st.losses[gi] = 0;
      continue;
    }
    const double wc_ = class_weight(static_cast<Index>(c));
    const double sum_q = wc_ * (1.0 - st.eps) + st.uniform * st.weight_total;
    // loss = sum_q log S + w_c (1 - eps)(m - z_c) + eps/V (W_total m - sum_k w_k z_k)
    double loss = sum_q * log_s + wc_ * (1.0 - st.eps) * (m - zc[n]);
    if (st.eps > 0)
      loss += st.uniform * (st.weight_total * m - zw);
    if (m == -inf)
      loss = inf;  // every class masked
    if (m != m)
      loss = m;
    loss += st.z_loss * l * l;
    if (st.losses.data != nullptr)
      st.losses[gi] = loss;
    total += loss;
    urow[n] = st.none ? (st.upstream.data != nullptr ? st.upstream[gi] : 1.0) : st.u_default;
    arow[n] = sum_q + 2.0 * st.z_loss * l;
  }
  if constexpr (!has_grad) {
    return total;
  } else {
    // Pass 2: recompute each block chunk, turn it into dL/dr in place, accumulate dH and dW.
    const double inv_t = 1.0 / st.temperature;
    C* dh_part = base + per_thread * threads + hsize;
    // Per-token coefficients in the compute type, shared by the groups.
    C* coef = dh_part + lay.partials * ld * d;
    MapC a(coef, nb), u(coef + ld, nb), mr(coef + 2 * ld, nb);
    for (Index n = 0; n < nb; ++n) {
      a(n) = static_cast<C>(urow[n] * arow[n] * invs[n] * inv_t);
      u(n) = static_cast<C>(urow[n] * st.uniform * inv_t);
      mr(n) = static_cast<C>(mrow[n]);
    }
    // Whether a vocabulary block's gradient may be dropped: every p_nk < threshold and no counted
    // label in it.
    const auto skip_block = [&](Index blk, Index v0, Index vlen) {
      for (Index n = 0; n < nb; ++n) {
        if (urow[n] == 0)
          continue;
        const Index c = local_label(n);
        if (c >= v0 && c < v0 + vlen)
          return false;
        if (!(std::exp(bmax[n * blocks + blk] - lse[n]) < st.filter))
          return false;
      }
      return true;
    };
    const C cap_t = static_cast<C>(st.temperature / (st.softcap != 0 ? st.softcap : 1));
    const auto pass2 = [&](Index g, int thread) {
      MapM zfull(base + per_thread * thread, nb, vb, Eigen::OuterStride<>(ld));
      // Group g's dH terms: into dH's rows (group 0, one process) or the group's partial.
      const bool own = direct && g == 0;
      MapM dhg(own ? dh_part : dh_part + (g - (direct ? 1 : 0)) * ld * d, own ? 0 : nb, d,
               Eigen::OuterStride<>(ld));
      dhg.setZero();
      const auto [first, last] = group_range(g);
      for (Index blk = first; blk < last; ++blk) {
        const Index v0 = blk * vb, vlen = std::min(vb, vocab - v0);
        if (filtering && skip_block(blk, v0, vlen))
          continue;
        for_w_chunks(thread, v0, vlen, [&](Index j, Index cols, const auto& wk) {
          const Index c0 = v0 + j;  // the chunk's first local class
          auto z = zfull.leftCols(cols);
          z.noalias() = hb * wk.transpose();
          transform(z, c0);
          for (Index k = 0; k < cols; ++k) {
            auto zk = z.col(k).array();
            const C sk = static_cast<C>(class_weight(st.class_begin + c0 + k));
            if (st.softcap != 0)
              zk = ((zk - mr).exp() * a - u * sk) * (C(1) - (zk * cap_t).square());
            else
              zk = (zk - mr).exp() * a - u * sk;
          }
          for (Index n = 0; n < nb; ++n) {
            const Index c = local_label(n);
            if (label_of(n) == st.ignore) {
              z.row(n).setZero();
            } else if (c >= c0 && c < c0 + cols) {
              const double sc =
                  st.softcap != 0 ? 1.0 - std::pow(zc[n] * st.temperature / st.softcap, 2) : 1.0;
              z(n, c - c0) -= static_cast<C>(urow[n] * class_weight(st.class_begin + c)
                                             * (1.0 - st.eps) * sc * inv_t);
            }
          }
          if (own)
            dh->middleRows(n0, nb).noalias() += z * wk;
          else
            dhg.noalias() += z * wk;
          dw->middleRows(c0, cols).noalias() += z.transpose() * hb;
          if constexpr (!std::is_same_v<PB, std::nullptr_t>) {
            for (Index k = 0; k < cols; ++k)
              db->coeffRef(c0 + k) += z.col(k).sum();
          }
        });
      }
    };
    lce_for_groups(groups, threads, pass2);
    // The groups' partials added in group order.
    if constexpr (direct) {
      for (Index g = 1; g < groups; ++g)
        dh->middleRows(n0, nb) += MapM(dh_part + (g - 1) * ld * d, nb, d, Eigen::OuterStride<>(ld));
    } else {
      if (groups == 0)
        MapM(dh_part, nb, d, Eigen::OuterStride<>(ld)).setZero();
      MapM dh0(dh_part, nb, d, Eigen::OuterStride<>(ld));
      for (Index g = 1; g < groups; ++g)
        dh0 += MapM(dh_part + g * ld * d, nb, d, Eigen::OuterStride<>(ld));
      combine.gradient(dh_part, ld * d);
      dh->middleRows(n0, nb) += dh0;
    }
    return total;
  }
}

}  // namespace detail
}  // namespace softmaxlab
