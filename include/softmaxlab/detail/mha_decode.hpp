// softmaxlab internals: the register kernels of MultiHeadAttention's small tiles (decoding: a few
// query rows of one KV group against a long cache). Bandwidth-bound, so each K and V row is read
// once from its storage (float, half or bfloat16, contiguous or paged, through row pointers),
// widened to float in registers (vcvtph2ps, 16 lanes), and used for every query row of the tile
// (the group's heads): no float copy of the block, no GEMM call on a 4 x 128 operand.
//   scores:  S[r][j] = q_r . k_j, four keys at a time, each key's 16-lane partial products
//            summed by a shuffle tree (one reduction per four dot products);
//   values:  O[r][:] += P[r][j] v_j with O's columns held in registers across the key block.
// AVX-512 only (SOFTMAXLAB_AVX512_CONVERT); other builds use mha_tile's converted-block path.
#pragma once

#include <algorithm>
#include <type_traits>

#include "common.hpp"
#include "scalar_types.hpp"

namespace softmaxlab {
namespace detail {

// Tiles of at most this many rows (query rows x heads of a group) use these kernels.
inline constexpr Index kMhaRegisterRows = 16;

#if SOFTMAXLAB_AVX512_CONVERT

// 16 values from p (lanes of m) widened to float.
template <class T>
EIGEN_STRONG_INLINE __m512 mha_load16(const T* p, __mmask16 m) {
  if constexpr (std::is_same_v<T, float>) {
    return _mm512_maskz_loadu_ps(m, p);
  } else {
    return widen16(p, m);
  }
}

// The four sums of the 16 lanes of a0..a3, in lanes 0..3.
EIGEN_STRONG_INLINE __m128 mha_sum4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
  // Halves: blocks (a 0+2, a 1+3, b 0+2, b 1+3); then one block of four partials per input.
  const __m512 b01 =
      _mm512_add_ps(_mm512_shuffle_f32x4(a0, a1, 0x44), _mm512_shuffle_f32x4(a0, a1, 0xEE));
  const __m512 b23 =
      _mm512_add_ps(_mm512_shuffle_f32x4(a2, a3, 0x44), _mm512_shuffle_f32x4(a2, a3, 0xEE));
  const __m512 c =
      _mm512_add_ps(_mm512_shuffle_f32x4(b01, b23, 0x88), _mm512_shuffle_f32x4(b01, b23, 0xDD));
  const __m512 e = _mm512_add_ps(c, _mm512_permute_ps(c, 0xB1));  // pairs
  const __m512 f = _mm512_add_ps(e, _mm512_permute_ps(e, 0x4E));  // all four, in every lane
  return _mm512_castps512_ps128(
      _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), f));
}

// Rows of the next key block to prefetch into L2 while this block's scores are computed: the
// cache is read once, from memory, in rows of a few hundred bytes at strides of Hkv d values, too
// short for the hardware prefetchers to ramp up on.
template <class T, class VT>
struct MhaPrefetch {
  const T* const* k = nullptr;
  const VT* const* v = nullptr;
  Index n = 0;
  Index k_bytes = 0, v_bytes = 0;
  Index spread = 0;  // keys of the block being computed: rows(j, c) prefetches c n / spread rows

  void rows(Index j, Index count) const {
    if (n == 0)
      return;
    for (Index t = j * n / spread; t < std::min(n, (j + count) * n / spread); ++t) {
      for (Index b = 0; b < k_bytes; b += 64)
        _mm_prefetch(reinterpret_cast<const char*>(k[t]) + b, _MM_HINT_T1);
      for (Index b = 0; b < v_bytes; b += 64)
        _mm_prefetch(reinterpret_cast<const char*>(v[t]) + b, _MM_HINT_T1);
    }
  }
};

// S rows [0, RB) (row stride lds) for keys [0, nk) = q rows (row stride d) . key rows.
template <int RB, class T, class VT>
void mha_scores_rows(const float* q, Index d, const T* const* krow, Index nk, float* s, Index lds,
                     const MhaPrefetch<T, VT>& pre) {
  const Index full = d / 16 * 16;
  const __mmask16 tail = lanes_below(std::max<Index>(d - full, 1));
  for (Index j = 0; j < nk; j += 4) {
    const Index count = std::min<Index>(4, nk - j);
    pre.rows(j, 4);
    const T* kp[4];
    for (Index t = 0; t < 4; ++t)
      kp[t] = krow[j + std::min<Index>(t, count - 1)];
    __m512 acc[RB][4];
    for (int r = 0; r < RB; ++r)
      for (int t = 0; t < 4; ++t)
        acc[r][t] = _mm512_setzero_ps();
    const auto step = [&](Index c, __mmask16 m) {
      __m512 kv[4];
      for (int t = 0; t < 4; ++t)
        kv[t] = mha_load16(kp[t] + c, m);
      for (int r = 0; r < RB; ++r) {
        const __m512 qv = _mm512_maskz_loadu_ps(m, q + r * d + c);
        for (int t = 0; t < 4; ++t)
          acc[r][t] = _mm512_fmadd_ps(qv, kv[t], acc[r][t]);
      }
    };
    Index c = 0;
    for (; c < full; c += 16)
      step(c, 0xFFFF);
    if (c < d)
      step(c, tail);
    for (int r = 0; r < RB; ++r) {
      const __m128 dots = mha_sum4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]);
      if (count == 4) {
        _mm_storeu_ps(s + r * lds + j, dots);
      } else {
        alignas(16) float tmp[4];
        _mm_store_ps(tmp, dots);
        std::copy(tmp, tmp + count, s + r * lds + j);
      }
    }
  }
}

// O rows [0, RB) (row stride ldo), columns [c0, c0 + 16 NC) clipped to dv, += sum_j P[r][j] v_j.
template <int RB, int NC, class T>
void mha_values_rows(const float* p, Index lds, const T* const* vrow, Index nk, Index dv, float* o,
                     Index ldo) {
  for (Index c0 = 0; c0 < dv; c0 += 16 * NC) {
    __mmask16 m[NC];
    for (int n = 0; n < NC; ++n)
      m[n] = lanes_below(std::clamp<Index>(dv - c0 - 16 * n, 0, 16));
    __m512 acc[RB][NC];
    for (int r = 0; r < RB; ++r)
      for (int n = 0; n < NC; ++n)
        acc[r][n] = _mm512_maskz_loadu_ps(m[n], o + r * ldo + c0 + 16 * n);
    for (Index j = 0; j < nk; ++j) {
      const T* vp = vrow[j] + c0;
      __m512 vv[NC];
      for (int n = 0; n < NC; ++n)
        vv[n] = mha_load16(vp + 16 * n, m[n]);
      for (int r = 0; r < RB; ++r) {
        const __m512 pb = _mm512_set1_ps(p[r * lds + j]);
        for (int n = 0; n < NC; ++n)
          acc[r][n] = _mm512_fmadd_ps(pb, vv[n], acc[r][n]);
      }
    }
    for (int r = 0; r < RB; ++r)
      for (int n = 0; n < NC; ++n)
        _mm512_mask_storeu_ps(o + r * ldo + c0 + 16 * n, m[n], acc[r][n]);
  }
}

// S (rows x nk, row stride nk) = Q (rows x d) K_b^T; rows taken four at a time, the next
// block's rows prefetched during the first four.
template <class T, class VT>
void mha_block_scores(const float* q, Index rows, Index d, const T* const* krow, Index nk, float* s,
                      const MhaPrefetch<T, VT>& next) {
  const MhaPrefetch<T, VT> none;
  for (Index r = 0; r < rows; r += 4) {
    const float* qr = q + r * d;
    float* sr = s + r * nk;
    const MhaPrefetch<T, VT>& pre = r == 0 ? next : none;
    switch (std::min<Index>(4, rows - r)) {
      case 1:
        mha_scores_rows<1>(qr, d, krow, nk, sr, nk, pre);
        break;
      case 2:
        mha_scores_rows<2>(qr, d, krow, nk, sr, nk, pre);
        break;
      case 3:
        mha_scores_rows<3>(qr, d, krow, nk, sr, nk, pre);
        break;
      default:
        mha_scores_rows<4>(qr, d, krow, nk, sr, nk, pre);
        break;
    }
  }
}

// O (rows x dv, row stride dv) += P (rows x nk, row stride nk) V_b.
template <class T>
void mha_block_values(const float* p, Index rows, Index nk, const T* const* vrow, Index dv,
                      float* o) {
  for (Index r = 0; r < rows; r += 4) {
    const float* pr = p + r * nk;
    float* orow = o + r * dv;
    switch (std::min<Index>(4, rows - r)) {
      case 1:
        mha_values_rows<1, 8>(pr, nk, vrow, nk, dv, orow, dv);
        break;
      case 2:
        mha_values_rows<2, 8>(pr, nk, vrow, nk, dv, orow, dv);
        break;
      case 3:
        mha_values_rows<3, 4>(pr, nk, vrow, nk, dv, orow, dv);
        break;
      default:
        mha_values_rows<4, 4>(pr, nk, vrow, nk, dv, orow, dv);
        break;
    }
  }
}

#endif  // SOFTMAXLAB_AVX512_CONVERT

}  // namespace detail
}  // namespace softmaxlab
