// softmaxlab internals: the forward tile of MultiHeadAttention (multi_head_attention.hpp has the
// public doc block). A tile is a block of query rows of every query head of one KV group against a
// range of keys: K and V of the group are converted once per key block into small buffers and
// shared by the group's heads, whose query rows are stacked into one operand (Eigen's GEMM, or on
// AVX-512 the register kernels of mha_decode.hpp for decoding and mha_prefill.hpp for prefill).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "common.hpp"
#include "functor_base.hpp"
#include "kernels.hpp"
#include "mha_decode.hpp"
#include "mha_prefill.hpp"
#include "paged_kv.hpp"

namespace softmaxlab {
namespace detail {

// A tile has up to kMhaRowsPerHead query rows of each head of a group and at most kMhaTileRows rows
// in all (so the group's K block is packed once for up to 256 score rows); key blocks have
// kMhaBlockK keys, as in Attention.
inline constexpr Index kMhaRowsPerHead = 64;
inline constexpr Index kMhaTileRows = 256;
inline constexpr Index kMhaBlockK = 128;
// Tiles of at most this many rows use matrix-vector products instead of GEMMs.
inline constexpr Index kMhaGemvRows = 8;
// Mask entries converted at a time (on the stack).
inline constexpr Index kMhaMaskChunk = 128;

// The visible band of query i among Lq queries and Lk keys, bottom-right aligned
// (FlashAttention-2): diagonal(i) = i + Lk - Lq; key j is visible iff diagonal - left <= j (left >=
// 0), j <= diagonal + right (right >= 0) and j <= diagonal (causal). begin/end are nondecreasing in
// i.
struct MhaBand {
  Index lq = 0, lk = 0, left = -1, right = -1;
  bool causal = false;

  Index diagonal(Index i) const { return i + lk - lq; }
  Index begin(Index i) const { return left < 0 ? 0 : std::clamp<Index>(diagonal(i) - left, 0, lk); }
  Index end(Index i) const {  // one past the last visible key (may be <= begin: none visible)
    Index e = lk;
    if (causal)
      e = std::min(e, diagonal(i) + 1);
    if (right >= 0)
      e = std::min(e, diagonal(i) + right + 1);
    return std::clamp<Index>(e, 0, lk);
  }
};

// Everything a tile needs besides the matrices; C is the compute scalar (float or double).
template <class C>
struct MhaPlan {
  C scale = 1;
  C cap = 0;  // 0: no softcap
  bool has_sink = false;
  C sink = 0;
  MhaBand band;
  Index group = 1;  // query heads per KV head
  Index d = 0, dv = 0;
  Index rows_per_head = 1;         // query rows of a tile, per head
  const double* slopes = nullptr;  // ALiBi slope of each query head, or null
  const double* sinks = nullptr;   // the sink of each query head (has_sink), or null: sink for all

  // The additive Lq x Lk mask shared by the heads (apply_masked), or null: mask_row(mask, i, j, n,
  // out) writes row i's entries [j, j + n) converted exactly to C (n <= kMhaBlockK).
  const void* mask = nullptr;
  void (*mask_row)(const void* mask, Index i, Index j, Index n, C* out) = nullptr;
  C mask_slope = 1;

  // The sink of query head h (when has_sink).
  C sink_of(Index h) const { return sinks != nullptr ? static_cast<C>(sinks[h]) : sink; }

  // t[k] += mask_slope mask(i, j + k) for k < n, a -inf mask entry giving -inf (masked, whatever
  // the score); a NaN entry makes t NaN. No-op without a mask.
  void add_mask(Index i, Index j, Index n, C* t) const {
    if (mask == nullptr || n == 0)
      return;
    C m[kMhaMaskChunk];
    for (Index k0 = 0; k0 < n; k0 += kMhaMaskChunk) {
      const Index c = std::min(kMhaMaskChunk, n - k0);
      mask_row(mask, i, j + k0, c, m);
      for (Index k = 0; k < c; ++k)
        t[k0 + k] =
            m[k] == -std::numeric_limits<C>::infinity() ? m[k] : t[k0 + k] + mask_slope * m[k];
    }
  }
};

// The buffers of one tile (one per thread): R = group * rows_per_head rows. A tile given `share`
// uses that tile's K, V and K^T block buffers instead of its own (the tiles of one thread that take
// key blocks in turn: decoding's pass over every KV group). Each buffer starts on a 64-byte line:
// the register kernels' 16-lane loads and stores of K^T, S, V and O then never straddle two lines
// (with the allocator's 16-byte alignment they did, and the two products ran 15-25% slower,
// depending on what was allocated before).
template <class C>
class MhaWorkspace {
 public:
  MhaWorkspace(Index rows, Index d, Index dv, const MhaWorkspace* share = nullptr)
      : data_(static_cast<std::size_t>(
          padded(rows * d) + padded(rows * kMhaBlockK) + padded(rows * dv) + 3 * padded(rows)
          + (share != nullptr
                 ? 0
                 : padded(kMhaBlockK * d) + padded(kMhaBlockK * dv) + padded(kMhaBlockK * d))
          + kLine)),
        sum_(static_cast<std::size_t>(rows)) {
    const std::size_t misalign = reinterpret_cast<std::uintptr_t>(data_.data()) % 64;
    q = data_.data() + (misalign == 0 ? 0 : (64 - misalign) / sizeof(C));
    s = q + padded(rows * d);
    o = s + padded(rows * kMhaBlockK);
    max = o + padded(rows * dv);
    nan = max + padded(rows);
    lse = nan + padded(rows);
    if (share != nullptr) {
      k = share->k;
      v = share->v;
      kt = share->kt;
    } else {
      k = lse + padded(rows);
      v = k + padded(kMhaBlockK * d);
      kt = v + padded(kMhaBlockK * dv);
    }
    sum = sum_.data();
  }
  // lse: the tile's, for the caller; kt: the K block transposed (d x kMhaBlockK, prefill kernels)
  C *q, *s, *o, *max, *nan, *lse, *k, *v, *kt;
  long double* sum;

 private:
  static constexpr Index kLine = Index(64 / sizeof(C));  // scalars per 64-byte line
  static Index padded(Index n) { return (n + kLine - 1) / kLine * kLine; }
  std::vector<C> data_;
  std::vector<long double> sum_;
};

// `per_thread` workspaces for each thread that may run tiles (one thread's set when called inside
// a parallel region, where for_each_slice runs in order), and the calling thread's i-th; a
// thread's workspaces share the first one's K and V block buffers.
template <class C>
class MhaWorkspaces {
 public:
  MhaWorkspaces(Index rows, Index d, Index dv, Index per_thread = 1) : per_thread_(per_thread) {
    Index n = 1;
#if SOFTMAXLAB_PARALLEL_SLICES
    nested_ = omp_in_parallel() != 0;
    if (!nested_)
      n = omp_get_max_threads();
#endif
    all_.reserve(static_cast<std::size_t>(n * per_thread));
    for (Index t = 0; t < n; ++t) {
      const std::size_t first = all_.size();
      for (Index i = 0; i < per_thread; ++i)
        all_.emplace_back(rows, d, dv, i == 0 ? nullptr : &all_[first]);
    }
  }
  MhaWorkspace<C>& mine(Index i = 0) {
    Index t = 0;
#if SOFTMAXLAB_PARALLEL_SLICES
    if (!nested_)
      t = omp_get_thread_num();
#endif
    return all_[static_cast<std::size_t>(t * per_thread_ + i)];
  }

 private:
  std::vector<MhaWorkspace<C>> all_;
  Index per_thread_ = 1;
  bool nested_ = false;
};

// out (nr x nc, row-major) = rows [r0, r0 + nr), columns [c0, c0 + nc) of x converted to C: row by
// row with the vectorized conversion (F16C for half) when x is row-major storage, else through
// Eigen's cast. This is how a 16-bit cache is read in place, one key block at a time.
template <class C, class X>
void mha_load_block(const X& x, Index r0, Index c0, Index nr, Index nc, C* out) {
  if constexpr (is_paged_kv_v<X>) {
    const typename X::Scalar* row[kMhaBlockK];
    for (Index r = 0; r < nr; r += kMhaBlockK) {
      const Index n = std::min(kMhaBlockK, nr - r);
      x.row_pointers(r0 + r, n, c0, row);
      for (Index i = 0; i < n; ++i)
        convert_contiguous(row[i], out + (r + i) * nc, nc);
    }
  } else {
    if constexpr (has_direct_access_v<X> && bool(X::IsRowMajor)) {
      if (x.innerStride() == 1) {
        for (Index r = 0; r < nr; ++r)
          convert_contiguous(x.data() + (r0 + r) * x.outerStride() + c0, out + r * nc, nc);
        return;
      }
    }
    using RowMat = Eigen::Matrix<C, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    Eigen::Map<RowMat>(out, nr, nc) = x.block(r0, c0, nr, nc).template cast<C>();
  }
}

// A tile is query rows [i0, i0 + bq) of every query head of KV group g: w.o gets its partial
// output (row hh * bq + r: head g * group + hh, query i0 + r; row-major, R x dv). mha_tile_begin
// loads its queries and clears its running max and sums, mha_tile_blocks adds key blocks,
// mha_tile_end normalizes.
template <class C, class XQ>
void mha_tile_begin(const XQ& q, Index g, Index i0, Index bq, const MhaPlan<C>& plan,
                    MhaWorkspace<C>& w) {
  const Index group = plan.group, d = plan.d, rows = group * bq;
  for (Index hh = 0; hh < group; ++hh)
    mha_load_block(q, i0, (g * group + hh) * d, bq, d, w.q + hh * bq * d);
  std::fill(w.o, w.o + rows * plan.dv, C(0));
  for (Index r = 0; r < rows; ++r) {
    w.max[r] = -std::numeric_limits<C>::infinity();
    w.nan[r] = 0;
    w.sum[r] = 0;
  }
}

// The key blocks a tile of query rows [i0, i0 + bq) visits in [key_begin, key_end) (key_begin a
// multiple of kMhaBlockK, so that key blocks fall where Attention's do): [start, last), start on
// a block boundary. Key blocks wholly outside the band of every row are never visited.
inline std::pair<Index, Index> mha_tile_keys(const MhaBand& band, Index i0, Index bq,
                                             Index key_begin, Index key_end) {
  const Index first = std::max(key_begin, band.begin(i0));
  const Index last = std::min(key_end, band.end(i0 + bq - 1));
  const Index start =
      first >= last ? last : key_begin + (first - key_begin) / kMhaBlockK * kMhaBlockK;
  return {start, last};
}

// Adds the key blocks [start, last) (start from mha_tile_keys, or a later block boundary) to the
// tile of group g, query rows [i0, i0 + bq). The register kernels prefetch the block after each
// one while it is below prefetch_end: this group's columns of it, or with share >= 0 (a pass over
// every KV group, each taking the block in turn) share `share` of Hkv of its whole rows.
template <class C, class XK, class XV>
void mha_tile_blocks(const XK& k, const XV& v, Index g, Index i0, Index bq, Index start, Index last,
                     Index prefetch_end, Index share, const MhaPlan<C>& plan, MhaWorkspace<C>& w) {
  using RowMat = Eigen::Matrix<C, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Arr = Eigen::Array<C, Eigen::Dynamic, 1>;
  const C inf = std::numeric_limits<C>::infinity();
  const Index group = plan.group, d = plan.d, dv = plan.dv, rows = group * bq;
  const MhaBand& band = plan.band;
  Eigen::Map<RowMat> qt(w.q, rows, d), ot(w.o, rows, dv);
  // One key block [j0, j0 + nk) of the group: scores() writes S = Q_t K_b^T into w.s (rows x nk,
  // row-major), values() adds P V_b to w.o.
  const auto key_block = [&](Index j0, Index nk, const auto& scores, const auto& values) {
    scores();
    for (Index r = 0; r < rows; ++r) {
      const Index hh = r / bq, i = i0 + r % bq;
      C* row = w.s + r * nk;
      const Index a = std::clamp<Index>(band.begin(i) - j0, 0, nk);
      const Index b = std::max(a, std::clamp<Index>(band.end(i) - j0, 0, nk));
      std::fill(row, row + a, C(0));  // keys outside the band: weight 0
      std::fill(row + b, row + nk, C(0));
      if (w.nan[r] != 0 || a == b) {
        std::fill(row + a, row + b, C(0));
        continue;
      }
      Eigen::Map<Arr> t(row + a, b - a);
      t *= plan.scale;
      if (plan.cap != C(0))
        t = plan.cap * (t / plan.cap).tanh();
      if (plan.slopes != nullptr) {
        // -slope |j - diagonal(i)|: the distances are integers, exact in C up to 2^24 (float).
        const C slope = static_cast<C>(plan.slopes[g * group + hh]);
        const C from = static_cast<C>(j0 + a - band.diagonal(i));
        t -= slope * Arr::LinSpaced(b - a, from, from + static_cast<C>(b - a - 1)).abs();
      }
      plan.add_mask(i, j0 + a, b - a, t.data());
      const C block_max = max_propagate_nan(t.data(), b - a);  // NaN when any entry is
      if (block_max != block_max) {
        w.nan[r] = 1;
        std::fill(row, row + nk, C(0));
        continue;
      }
      const C m_old = w.max[r];
      const C m_new = std::max(m_old, block_max);
      if (m_new == -inf) {
        t.setZero();
        continue;
      }
      if (m_new == inf) {  // only +inf scores carry mass, one each
        if (m_old != inf) {
          ot.row(r).setZero();
          w.sum[r] = 0;
        }
        t = (t == inf).template cast<C>();
        w.sum[r] += static_cast<long double>(t.sum());
      } else {
        if (m_new > m_old && m_old != -inf) {
          // The max grew: rescale what was accumulated (the online normalizer's merge).
          const C alpha = static_cast<C>(std::exp(static_cast<long double>(m_old) - m_new));
          ot.row(r) *= alpha;
          w.sum[r] *= alpha;
        }
        w.sum[r] += exp_shift_store_sum(t.data(), b - a, m_new);
      }
      w.max[r] = m_new;
    }
    values();
  };
  // Eigen products on K and V blocks kb, vb in C. Few rows: matrix-vector products, which read the
  // block once without packing it.
  const auto eigen_block = [&](Index j0, Index nk, const auto& kb, const auto& vb) {
    Eigen::Map<RowMat> s(w.s, rows, nk);
    const bool few_rows = rows <= kMhaGemvRows;
    key_block(
        j0, nk,
        [&] {
          if (few_rows) {
            for (Index r = 0; r < rows; ++r)
              s.row(r).transpose().noalias() = kb * qt.row(r).transpose();
          } else {
            s.noalias() = qt * kb.transpose();
          }
        },
        [&] {
          if (few_rows) {
            for (Index r = 0; r < rows; ++r)
              ot.row(r).noalias() += s.row(r) * vb;
          } else {
            ot.noalias() += s * vb;
          }
        });
  };
  bool done = false;
  EIGEN_UNUSED_VARIABLE(prefetch_end);  // the register kernels' (AVX-512) only
  EIGEN_UNUSED_VARIABLE(share);
#if SOFTMAXLAB_AVX512_CONVERT
  if constexpr (std::is_same_v<C, float> && kv_rows_v<XK> && kv_rows_v<XV>) {
    if (rows <= kMhaRegisterRows && kv_rows_contiguous(k) && kv_rows_contiguous(v)) {
      // Small tiles (decoding): the register kernels read each K and V row once, in place.
      using KT = typename XK::Scalar;
      using VT = typename XV::Scalar;
      // Row pointers of this block, and of the rows prefetched while it is computed: alone, this
      // group's columns of the next block; in a pass over every group (share >= 0), share
      // `share` of Hkv of the next block's whole rows, so that the groups together prefetch the
      // next block as contiguous memory.
      const KT* krow[kMhaBlockK];
      const VT* vrow[kMhaBlockK];
      const KT* kpre[kMhaBlockK];
      const VT* vpre[kMhaBlockK];
      const Index hkv = k.cols() / d;
      for (Index j0 = start; j0 < last; j0 += kMhaBlockK) {
        const Index nk = std::min(kMhaBlockK, last - j0);
        kv_row_pointers(k, j0, nk, g * d, krow);
        kv_row_pointers(v, j0, nk, g * dv, vrow);
        MhaPrefetch<KT, VT> next;
        if (j0 + nk < prefetch_end) {
          Index from = j0 + nk, n = std::min(kMhaBlockK, prefetch_end - from);
          Index kc = g * d, vc = g * dv, kw = d, vw = dv;
          if (share >= 0) {
            from += share * n / hkv;
            n = (share + 1) * n / hkv - share * n / hkv;
            kc = vc = 0;
            kw = k.cols();
            vw = v.cols();
          }
          next.n = n;
          next.spread = nk;
          kv_row_pointers(k, from, n, kc, kpre);
          kv_row_pointers(v, from, n, vc, vpre);
          next.k = kpre;
          next.v = vpre;
          next.k_bytes = kw * Index(sizeof(KT));
          next.v_bytes = vw * Index(sizeof(VT));
        }
        key_block(
            j0, nk, [&] { mha_block_scores(w.q, rows, d, krow, nk, w.s, next); },
            [&] { mha_block_values(w.s, rows, nk, vrow, dv, w.o); });
      }
      done = true;
    }
  }
  if constexpr (std::is_same_v<C, float>) {
    if (!done && rows > kMhaGemvRows && rows <= kMhaTileRows) {
      // Prefill tiles: register kernels on the group's K block, transposed once (from its rows in
      // place when they are contiguous floats, else converted first), and its V block copied
      // contiguous (any storage order and scalar give the same floats, so the same bits).
      using KT = typename XK::Scalar;
      const float* krow[kMhaBlockK];
      Index lo[kMhaTileRows / kMhaKernelRows], hi[kMhaTileRows / kMhaKernelRows];
      for (Index j0 = start; j0 < last; j0 += kMhaBlockK) {
        const Index nk = std::min(kMhaBlockK, last - j0);
        bool in_place = false;
        if constexpr (std::is_same_v<KT, float> && kv_rows_v<XK>)
          in_place = kv_rows_contiguous(k);
        if (in_place) {
          if constexpr (std::is_same_v<KT, float> && kv_rows_v<XK>)
            kv_row_pointers(k, j0, nk, g * d, krow);
        } else {
          mha_load_block(k, j0, g * d, nk, d, w.k);
          for (Index j = 0; j < nk; ++j)
            krow[j] = w.k + j * d;
        }
        // V's block copied even when it is float rows: they lie Hkv dv apart in the fused layout
        // (4 KiB at 8 x 128), in the same L1 sets, and were evicted between row blocks.
        mha_load_block(v, j0, g * dv, nk, dv, w.v);
        mha_transpose_block(krow, nk, d, w.kt, kMhaBlockK);
        // The keys [lo, hi) of this block that some row of each 8-row block sees.
        for (Index b = 0; b * kMhaKernelRows < rows; ++b) {
          lo[b] = nk;
          hi[b] = 0;
          for (Index r = b * kMhaKernelRows; r < std::min(rows, (b + 1) * kMhaKernelRows); ++r) {
            const Index i = i0 + r % bq;
            const Index a = std::clamp<Index>(band.begin(i) - j0, 0, nk);
            const Index e = std::clamp<Index>(band.end(i) - j0, 0, nk);
            if (a < e) {
              lo[b] = std::min(lo[b], a);
              hi[b] = std::max(hi[b], e);
            }
          }
          lo[b] = std::min(lo[b], hi[b]);
        }
        key_block(
            j0, nk, [&] { mha_tile_scores(w.q, rows, d, w.kt, kMhaBlockK, nk, w.s, lo, hi); },
            [&] { mha_tile_values(w.s, rows, nk, w.v, dv, w.o, lo, hi); });
      }
      done = true;
    }
  }
#endif
  for (Index j0 = start; j0 < last && !done; j0 += kMhaBlockK) {
    const Index nk = std::min(kMhaBlockK, last - j0);
    if constexpr (
        std::is_same_v<
            typename XK::Scalar,
            C> && std::is_same_v<typename XV::Scalar, C> && has_direct_access_v<XK> && has_direct_access_v<XV> && int(XK::InnerStrideAtCompileTime) == 1
        && int(XV::InnerStrideAtCompileTime) == 1) {
      // K and V already in C: the products read their blocks in place.
      eigen_block(j0, nk, k.block(j0, g * d, nk, d), v.block(j0, g * dv, nk, dv));
    } else {
      // The group's K and V block, converted once for all its query heads.
      mha_load_block(k, j0, g * d, nk, d, w.k);
      mha_load_block(v, j0, g * dv, nk, dv, w.v);
      eigen_block(j0, nk, Eigen::Map<const RowMat>(w.k, nk, d),
                  Eigen::Map<const RowMat>(w.v, nk, dv));
    }
  }
}

// Normalizes the tile of group g with bq query rows per head: w.o the normalized partial output,
// lse[row] its log-sum-exp; the sink (plan.sink_of(head)) joins when with_sink.
template <class C>
void mha_tile_end(Index g, Index bq, bool with_sink, const MhaPlan<C>& plan, MhaWorkspace<C>& w,
                  C* lse) {
  using RowMat = Eigen::Matrix<C, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const C inf = std::numeric_limits<C>::infinity();
  const Index group = plan.group, rows = group * bq;
  Eigen::Map<RowMat> ot(w.o, rows, plan.dv);
  for (Index r = 0; r < rows; ++r) {
    const C m = w.max[r];
    const C z = plan.sink_of(g * group + r / bq);
    if (w.nan[r] != 0) {
      ot.row(r).setConstant(std::numeric_limits<C>::quiet_NaN());
      lse[r] = std::numeric_limits<C>::quiet_NaN();
    } else if (m == -inf) {
      // No visible key: a zero row, and lse the sink's own log-sum-exp (merge_attention keeps its
      // mass), -inf without one.
      ot.row(r).setZero();
      lse[r] = with_sink && plan.has_sink ? z : -inf;
    } else if (m == inf) {
      ot.row(r) *= static_cast<C>(1.0L / w.sum[r]);
      lse[r] = inf;
    } else {
      long double top = m, sum = w.sum[r], factor = 1;
      if (with_sink && plan.has_sink) {
        top = std::max<long double>(m, z);
        factor = std::exp(static_cast<long double>(m) - top);
        sum = sum * factor + std::exp(static_cast<long double>(z) - top);
      }
      ot.row(r) *= static_cast<C>(factor / sum);
      lse[r] = static_cast<C>(top + std::log(sum));
    }
  }
}

// Attention of query rows [i0, i0 + bq) of every query head of KV group g over the visible keys of
// [key_begin, key_end) (key_begin a multiple of kMhaBlockK): w.o gets the normalized partial
// output and lse[row] its log-sum-exp; the sink joins when with_sink.
template <class C, class XQ, class XK, class XV>
void mha_tile(const XQ& q, const XK& k, const XV& v, Index g, Index i0, Index bq, Index key_begin,
              Index key_end, bool with_sink, const MhaPlan<C>& plan, MhaWorkspace<C>& w, C* lse) {
  mha_tile_begin(q, g, i0, bq, plan, w);
  const auto [start, last] = mha_tile_keys(plan.band, i0, bq, key_begin, key_end);
  mha_tile_blocks(k, v, g, i0, bq, start, last, last, Index(-1), plan, w);
  mha_tile_end(g, bq, with_sink, plan, w, lse);
}

// Query rows [i0, i0 + bq) of every KV group over [key_begin, key_end) (decoding's small tiles):
// the groups take each key block in turn, so the cache is read as whole rows (Hkv d contiguous
// values) in one pass instead of Hkv strided passes of d values each; each group's tile sees the
// same blocks in the same order as alone (the same bits). out(g) receives group g's normalized
// partial output (R x dv, R = rows) followed by its R log-sum-exps.
template <class C, class XQ, class XK, class XV, class Out>
void mha_tile_all_groups(const XQ& q, const XK& k, const XV& v, Index hkv, Index i0, Index bq,
                         Index key_begin, Index key_end, bool with_sink, const MhaPlan<C>& plan,
                         MhaWorkspaces<C>& ws, Index rows, const Out& out) {
  const auto [start, last] = mha_tile_keys(plan.band, i0, bq, key_begin, key_end);
  for (Index g = 0; g < hkv; ++g)
    mha_tile_begin(q, g, i0, bq, plan, ws.mine(g));
  for (Index j0 = start; j0 < last; j0 += kMhaBlockK) {
    const Index j1 = std::min(last, j0 + kMhaBlockK);
    for (Index g = 0; g < hkv; ++g)
      mha_tile_blocks(k, v, g, i0, bq, j0, j1, last, g, plan, ws.mine(g));
  }
  for (Index g = 0; g < hkv; ++g) {
    MhaWorkspace<C>& w = ws.mine(g);
    C* o = out(g);
    mha_tile_end(g, bq, with_sink, plan, w, o + rows * plan.dv);
    std::copy(w.o, w.o + plan.group * bq * plan.dv, o);
  }
}

}  // namespace detail
}  // namespace softmaxlab
