// softmaxlab internals: the register kernels of MultiHeadAttention's prefill tiles (the query rows
// of every head of one KV group, up to kMhaTileRows of them, against one key block). Eigen's GEMM
// packs both operands on every call, twice per key block: the (unchanged) query tile and each
// block, about a seventh of the products' time (perf, Lq = Lk = 2,048, Hq 32, Hkv 8, d 128),
// and its GEMMs ran at about half the FMA peak. Here each block is prepared once for all the
// group's heads and the query tile not at all:
//   scores:  the K block is transposed once per group (d x nk, keys contiguous); S[r][j0 + 0..31]
//            accumulates in registers over d, one broadcast of Q[r][p] and two 16-lane loads of
//            K^T[p] per eight rows (an 8 x 32 register tile: 16 accumulators, 16 FMAs per
//            10 loads);
//   values:  O[r][c0 + 0..31] += P[r][j] V_b[j][c0 + 0..31] over the block's keys, the same 8 x 32
//            register tile, V_b copied contiguous once per group.
// Both loop over 32-column panels outside (the panel stays in L1 while every row block uses it)
// and skip the keys no row of an 8-row block sees (the causal diagonal, a window's edge).
// AVX-512 only (SOFTMAXLAB_AVX512_CONVERT), float; other builds keep mha_tile's Eigen products.
#pragma once

#include <algorithm>
#include <type_traits>

#include "common.hpp"
#include "scalar_types.hpp"

namespace softmaxlab {
namespace detail {

// The register tile of both products: RB rows x 32 columns (two 16-lane accumulators a row).
inline constexpr Index kMhaKernelRows = 8;
inline constexpr Index kMhaKernelCols = 32;

#if SOFTMAXLAB_AVX512_CONVERT

// kt (d x ld, row-major; ld >= nk rounded up to 16) = the transpose of the nk x d block whose rows
// are krow[0..nk): 16 x 16 blocks through Eigen's in-register transpose. Columns [nk, ld) of the
// last 16 are zero (the kernel below reads them, then drops them).
// (Eigen's PacketBlock of __m512 draws GCC's -Wignored-attributes: the vector type's attributes
// do not take part in template matching, which is harmless here.)
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"
#endif
inline void mha_transpose_block(const float* const* krow, Index nk, Index d, float* kt, Index ld) {
  using Eigen::internal::Packet16f;
  for (Index j = 0; j < nk; j += 16) {
    const Index nj = std::min<Index>(16, nk - j);
    for (Index p = 0; p < d; p += 16) {
      const Index np = std::min<Index>(16, d - p);
      const __mmask16 m = lanes_below(np);
      Eigen::internal::PacketBlock<Packet16f, 16> b;
      for (Index i = 0; i < 16; ++i)
        b.packet[i] = i < nj ? _mm512_maskz_loadu_ps(m, krow[j + i] + p) : _mm512_setzero_ps();
      Eigen::internal::ptranspose(b);
      for (Index i = 0; i < np; ++i)
        _mm512_storeu_ps(kt + (p + i) * ld + j, b.packet[i]);
    }
  }
}
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

// S rows [0, RB) (row stride lds), columns [c0, c0 + 32) under masks m0, m1 (s and kp point at
// column c0), = Q rows (row stride d) times kt's panel (d rows, stride ldk).
template <int RB>
void mha_scores_panel(const float* q, Index d, const float* kp, Index ldk, __mmask16 m0,
                      __mmask16 m1, float* s, Index lds) {
  __m512 acc0[RB], acc1[RB];  // two arrays, not one of pairs: GCC then keeps them in registers
  for (int r = 0; r < RB; ++r)
    acc0[r] = acc1[r] = _mm512_setzero_ps();
  for (Index p = 0; p < d; ++p, kp += ldk) {
    const __m512 b0 = _mm512_loadu_ps(kp);
    const __m512 b1 = _mm512_loadu_ps(kp + 16);
    for (int r = 0; r < RB; ++r) {
      const __m512 a = _mm512_set1_ps(q[r * d + p]);
      acc0[r] = _mm512_fmadd_ps(a, b0, acc0[r]);
      acc1[r] = _mm512_fmadd_ps(a, b1, acc1[r]);
    }
  }
  for (int r = 0; r < RB; ++r) {
    _mm512_mask_storeu_ps(s + r * lds, m0, acc0[r]);
    _mm512_mask_storeu_ps(s + r * lds + 16, m1, acc1[r]);
  }
}

// O rows [0, RB) (row stride ldo), columns [c0, c0 + 32) under masks m0, m1 (o and v point at
// column c0), += sum over keys j in [j0, j1) of P[r][j] V[j] (P row stride ldp, V row stride ldv).
template <int RB>
void mha_values_panel(const float* p, Index ldp, Index j0, Index j1, const float* v, Index ldv,
                      __mmask16 m0, __mmask16 m1, float* o, Index ldo) {
  if (j0 >= j1)
    return;
  __m512 acc0[RB], acc1[RB];
  for (int r = 0; r < RB; ++r) {
    acc0[r] = _mm512_maskz_loadu_ps(m0, o + r * ldo);
    acc1[r] = _mm512_maskz_loadu_ps(m1, o + r * ldo + 16);
  }
  // A loop that runs at least once: with a possibly empty one GCC 12 kept the accumulators in
  // memory, storing all sixteen on every key.
  Index j = j0;
  do {
    const __m512 b0 = _mm512_maskz_loadu_ps(m0, v + j * ldv);
    const __m512 b1 = _mm512_maskz_loadu_ps(m1, v + j * ldv + 16);
    for (int r = 0; r < RB; ++r) {
      const __m512 a = _mm512_set1_ps(p[r * ldp + j]);
      acc0[r] = _mm512_fmadd_ps(a, b0, acc0[r]);
      acc1[r] = _mm512_fmadd_ps(a, b1, acc1[r]);
    }
  } while (++j < j1);
  for (int r = 0; r < RB; ++r) {
    _mm512_mask_storeu_ps(o + r * ldo, m0, acc0[r]);
    _mm512_mask_storeu_ps(o + r * ldo + 16, m1, acc1[r]);
  }
}

// fn.template operator()<RB>(r) for each block of kMhaKernelRows rows [r, r + RB) of rows.
template <class Fn>
EIGEN_STRONG_INLINE void mha_for_row_blocks(Index rows, const Fn& fn) {
  Index r = 0;
  for (; r + kMhaKernelRows <= rows; r += kMhaKernelRows)
    fn(std::integral_constant<int, kMhaKernelRows>(), r);
  switch (rows - r) {
    case 1:
      fn(std::integral_constant<int, 1>(), r);
      break;
    case 2:
      fn(std::integral_constant<int, 2>(), r);
      break;
    case 3:
      fn(std::integral_constant<int, 3>(), r);
      break;
    case 4:
      fn(std::integral_constant<int, 4>(), r);
      break;
    case 5:
      fn(std::integral_constant<int, 5>(), r);
      break;
    case 6:
      fn(std::integral_constant<int, 6>(), r);
      break;
    case 7:
      fn(std::integral_constant<int, 7>(), r);
      break;
    default:
      break;
  }
}

// S (rows x nk, row stride nk) = Q (rows x d, row stride d) K_b^T, kt = K_b^T (d x ldk). Row
// block b (rows [8 b, 8 b + 8)) needs only columns [lo[b], hi[b]) (the keys its rows see); the
// caller zeroes the rest, which may be left unwritten. Panels of kt outside, 32 keys x d (16 KiB at
// d = 128, kept in L1 while every row block uses it).
inline void mha_tile_scores(const float* q, Index rows, Index d, const float* kt, Index ldk,
                            Index nk, float* s, const Index* lo, const Index* hi) {
  for (Index c0 = 0; c0 < nk; c0 += kMhaKernelCols) {
    const __mmask16 m0 = lanes_below(std::clamp<Index>(nk - c0, 0, 16));
    const __mmask16 m1 = lanes_below(std::clamp<Index>(nk - c0 - 16, 0, 16));
    mha_for_row_blocks(rows, [&](auto rb, Index r) {
      const Index b = r / kMhaKernelRows;
      if (c0 + kMhaKernelCols > lo[b] && c0 < hi[b])
        mha_scores_panel<decltype(rb)::value>(q + r * d, d, kt + c0, ldk, m0, m1, s + r * nk + c0,
                                              nk);
    });
  }
}

// O (rows x dv, row stride dv) += P (rows x nk, row stride nk) V_b (nk x dv, row stride dv), row
// block b over keys [lo[b], hi[b]) only (P is 0 elsewhere). Panels of 32 columns of V outside.
inline void mha_tile_values(const float* p, Index rows, Index nk, const float* v, Index dv,
                            float* o, const Index* lo, const Index* hi) {
  for (Index c0 = 0; c0 < dv; c0 += kMhaKernelCols) {
    const __mmask16 m0 = lanes_below(std::clamp<Index>(dv - c0, 0, 16));
    const __mmask16 m1 = lanes_below(std::clamp<Index>(dv - c0 - 16, 0, 16));
    mha_for_row_blocks(rows, [&](auto rb, Index r) {
      const Index b = r / kMhaKernelRows;
      mha_values_panel<decltype(rb)::value>(p + r * nk, nk, lo[b], hi[b], v + c0, dv, m0, m1,
                                            o + r * dv + c0, dv);
    });
  }
}

#endif  // SOFTMAXLAB_AVX512_CONVERT

}  // namespace detail
}  // namespace softmaxlab
