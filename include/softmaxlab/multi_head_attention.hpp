// softmaxlab: MultiHeadAttention, every head of an attention layer in one call, as inference
// engines run it (FlashAttention-2's flash_attn_func and its varlen form, PyTorch's
// scaled_dot_product_attention(enable_gqa=True), ggml's flash_attn_ext).
//
// clang-format off
//   sml::MultiHeadAttention mha(sml::AttentionOptions().with_causal(true)
//                                   .with_window(left, right).with_alibi(max_bias),
//                               /*q_heads=*/Hq, /*kv_heads=*/Hkv);
//   mha.apply(Q, K, V, O);        Q Lq x (Hq d), K Lk x (Hkv d), V Lk x (Hkv dv), O Lq x (Hq dv)
//   mha.apply(Q, K, V, O, lse);   lse Lq x Hq
//   O = mha(Q, K, V);
//   mha.apply_varlen(Q, K, V, cu_seqlens_q, cu_seqlens_k, O);   packed sequences
//   mha.apply_masked(Q, K, V, mask, O[, lse]);   an additive Lq x Lk mask shared by the heads
//   mha.backward_masked(Q, K, V, mask, O, lse, dO, dQ, dK, dV);
//   mha = mha.with_sinks(z);      one sink per query head (z: Hq entries, gpt-oss sinks)
//   mha.backward(Q, K, V, O, lse, dO, dQ, dK, dV, dz);          and the sinks' gradient (Hq)
//   mha.apply_paged(Q, PagedKV<T>(k_pool, ...), PagedKV<T>(v_pool, ...), O[, lse]);   paged cache
//   mha.backward(Q, K, V, O, lse, dO, dQ, dK, dV);              dK, dV summed over each group
//
// What it computes, for query head h (columns [h d, (h + 1) d) of Q, [h dv, (h + 1) dv) of O),
// reading KV head g = h / (Hq / Hkv) (columns [g d, (g + 1) d) of K, [g dv, (g + 1) dv) of V):
//   t_ij = cap(scale q_i . k_j) - slope_h |j - (i + Lk - Lq)| + m mask_ij   (ALiBi: with_alibi;
//          mask: apply_masked, m = with_mask_slope; mask_ij = -inf hides key j from query i)
//   O_i  = sum_{j visible} exp(t_ij - lse_i) v_j,
//   lse_i = log(sum_{j visible} exp(t_ij) + exp(z_h))                 (z_h: head h's sink, if set)
//   visible: i + Lk - Lq - left <= j (left >= 0), j <= i + Lk - Lq + right (right >= 0),
//            j <= i + Lk - Lq (causal)
// clang-format on
// (bottom-right aligned, FlashAttention-2's window_size and ALiBi; slope_h = alibi_slope(max_bias,
// h, Hq), ggml's slopes; with max_bias = 0 there is no ALiBi term). Hq = Hkv: multi-head, Hkv = 1:
// multi-query, otherwise grouped-query attention (Ainslie et al., arXiv 2305.13245).
//
// Parameters and valid ranges: q_heads >= 1, kv_heads >= 1, q_heads % kv_heads == 0; the options
// as AttentionOptions documents them (scale default 1/sqrt(d); softcap; sink: one logit per query
// row of every head; with_mask_slope: the mask's factor in apply_masked); with_sinks(z): one
// sink per query head instead (gpt-oss's and ONNX Runtime GroupQueryAttention's sinks), z a vector
// of Hq entries in [-2^100, 2^100]. Q, K, V: Eigen objects
// of float, double, Eigen::half or Eigen::bfloat16 (each its own type), any storage order (Matrix,
// Map, Ref, Block; an expression is evaluated into a temporary first); O and lse: writable storage
// of any of the four (lse float beside a 16-bit O keeps the backward accurate). The pass runs in
// float (double when any operand is double). d = Q.cols() / Hq >= 1, dv = V.cols() / Hkv >= 1.
//
// How (FlashAttention-2's loop order, the online normalizer of Attention): a tile is a block of
// Bq query rows of every query head of one KV group (Bq = max(1, min(64, 256 / group)) rows per
// head),
// stacked into one GEMM operand; for each key block of 128 rows that some row of the tile sees,
// the group's K and V rows are converted once into small float buffers (16-bit caches are read in
// place, never copied whole), S = Q_t K_b^T, the transform, running max and sum per row, O_t +=
// P V_b. Key blocks wholly outside every row's band are skipped: the work is proportional to the
// visible keys (a window of 1,024 over 8,192 keys costs a window's work). Tiles of at most 16
// rows (decoding: Lq x group) on AVX-512 with float compute and row-major or paged K/V skip the
// float buffers: register kernels (detail/mha_decode.hpp) read each K and V row once in place,
// widen it in registers and use it for every row of the tile (scores four keys at a time, O's
// columns held in registers over the block), prefetching the next block. Decoding (Lq <= 16 and
// Lk > 2,048): the keys are split into ceil(Lk / 2,048) ranges (at most 16, multiples of 128),
// each range's partial (O, lse) computed on its own (flash-decoding) and the partials merged in
// order by merge_attention's exact rule; the sink joins the first partial only. Decoding tiles of
// at most 16 rows take every KV group of a key block in turn (a task is a key range of a query
// block, all groups): the cache is read as whole rows of Hkv d values in one pass instead of Hkv
// strided passes, the groups prefetching the next block's rows between them; each group's tile
// sees the same blocks in the same order as alone, so the bits are a per-group call's (test
// "MultiHeadAttention: decoding every KV group in one pass gives each group's bits"). Prefill
// tiles of 9 to 256 rows on AVX-512 with float compute use register kernels instead of Eigen's
// GEMM (detail/mha_prefill.hpp): the group's K block is transposed once (d x 128) and its V block
// copied contiguous once, both shared by the group's heads; S and O += P V accumulate in 8 x 32
// register tiles, and an 8-row block skips the keys none of its rows sees (the causal diagonal).
// Workspace (allocated once per call): per thread R (d + dv + 131) + 128 (2 d + dv) scalars (each
// buffer rounded up to a 64-byte line) and R long doubles, R = group Bq <= max(256, group)
// (decoding's small tiles: Hkv such workspaces per thread, sharing one 128 (2 d + dv) block
// buffer); decoding adds the partials, Hq Lq (dv + 1) scalars per range (at most 16 ranges).
// Nothing proportional to Lq Lk or to the whole cache (test
// "MultiHeadAttention: no allocation proportional to Lq, Lk or the cache"). The backward: one tile
// workspace per KV group, dK and dV of the compute type accumulated in place (the same test);
// 16-bit dK or dV (or float ones in a double pass) add an accumulator of the group's columns,
// Lk (d + dv) scalars.
// Threads (OpenMP with SOFTMAXLAB_USE_OPENMP, opt-in as elsewhere): tiles (groups x query blocks,
// or key ranges x query blocks, every group in each, when decoding) run on the threads; each tile is computed by the same code
// whatever thread runs it and the merge is sequential, so the result is bit-for-bit the same for
// any thread count (tests "MultiHeadAttention: the same bits on 1 and 2 threads", and for float,
// half, bfloat16 and paged caches "MultiHeadAttention: decoding gives the same bits on 1 and 2
// threads").
//
// Accuracy (tests/test_multi_head_attention.cpp, "MultiHeadAttention: every head against the
// long-double reference", against a long-double materialized reference written in the test, per
// head and per group): per entry, |O_ik - exact| <= Attention's one-head bound, tested as
// 8 eps (1 + max|V|) + 2 ceil(Lk / 128) eps max|V| (eps of float), |lse - exact| <= 8 eps
// (1 + |lse|). 16-bit K/V are
// exact in float, so the reference is computed on the same 16-bit values; a 16-bit O adds 1/2 ulp
// of its type. Measured worst (one run, AVX-512): 4.0 eps float (0.21 of the bound), 1.8 eps with
// half K/V, 7.7 eps bfloat16, 2.1 eps decoding from Lk = 5,000 caches; half O 0.97 of its bound.
// Per-head sinks are in the reference test's configurations (causal, window, one sink per head).
// The mask (float, Eigen::half or Eigen::bfloat16 beside a float pass, float or double beside a
// double pass, converted exactly 128 entries of one row at a time, never copied whole): "Multi-
// HeadAttention: a mask shared by the heads, in float, half or bfloat16" (the reference with the
// mask, prefill and split-key decoding, mask slopes 1 and 0.375: measured 33.9 eps, 0.33 of the
// bound; a half or bfloat16 mask gives the bits of the same values in float; a NaN entry makes
// its row NaN), and the masked backward in the finite-difference test.
// Backward (backward(...) below): "MultiHeadAttention: backward against central finite
// differences in double" (within 1e-6 relative, dQ, dK, dV and the sinks' gradient, one sink or
// one per head) and "... backward of float inputs against the double backward" (tested 64 eps
// (1 + max|dX|), measured 2.3).
// Speed (bench/bench_multi_head_attention.cpp; docs/multi_head_attention.md has the tables and
// what is not done; one thread, CPU time, a shared machine at load 6-8 on 2 cores: rough): a
// window of 1,024 at Lq = Lk = 8,192 3.9x faster than full causal, over the last 1,024 queries
// 6.9x; prefill Hq 32, Hkv 8, d 128: 1.01x / 1.11x / 1.03x the per-head Attention loop at 512 /
// 2,048 / 8,192, 1.7x / 2.2x / 2.3x the materialized form, 1.2x / 1.6x / 1.9x oneDNN per head;
// decoding with the AVX-512 register kernels of small tiles 2.1x faster from a half cache at
// Lk = 4,096 (34% of the read bandwidth measured in the same run, 17% before); with every KV
// group of a key block in one pass 1.1-1.4x faster again: 33-37% / 30% / 29-31% of the read
// bandwidth from a half cache at Lk = 4,096 / 32,768 / 131,072, 47-52% from a float one
// (docs/multi_head_attention.md, with the instruction count and the FMA bound); a paged cache
// within the noise of the contiguous one. The register kernels
// of small tiles (row-major or paged K/V): tests/test_mha_decode.cpp, "MultiHeadAttention:
// decoding kernels on row-major caches against the long-double reference" (same bound; measured
// worst 1.9 eps, 0.17 of it).
//
// Special values: a query row with no visible key (Lk = 0, a window or causal band that misses
// every key, Lq > Lk under causal) gives a zero row of O and lse = z_h with a sink, -inf without
// one (as Attention, so merge_attention keeps the sink's mass); a NaN score makes the row NaN;
// +inf scores share the mass; an empty Q gives an empty O.
// Errors (std::invalid_argument naming the parameter and value): q_heads or kv_heads < 1,
// q_heads % kv_heads != 0, Q's columns not a positive multiple of Hq, K's not Hkv d, V's not a
// positive multiple of Hkv, K and V with different rows, O, lse, dO, dQ, dK or dV of the wrong
// shape, O (or dQ, dK, dV) overlapping an input or each other, cu_seqlens of different sizes, not
// starting at 0, decreasing, or not ending at Lq (Lk); sinks not Hq entries or an entry outside
// [-2^100, 2^100]; dsinks not Hq entries, or asked for without a sink.
//
// Sources: Dao, "FlashAttention-2", arXiv 2307.08691 (loop order, window_size, ALiBi from
// positions, cu_seqlens); Press et al., "ALiBi", arXiv 2108.12409; ggml flash_attn_ext (K/V heads
// broadcast over query heads, f16 K/V read in place); Dao et al., "Flash-Decoding" (split keys).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "attention.hpp"
#include "detail/mha_backward.hpp"
#include "detail/mha_forward.hpp"

namespace softmaxlab {

// A paged KV cache (vLLM's and FlashInfer's layout), for MultiHeadAttention::apply_paged:
// clang-format off
//   sml::PagedKV<Eigen::half> k(pool, num_pages, page_size, cols, block_table, table_size, Lk);
// clang-format on
// pool: num_pages pages back to back, each page_size rows of `cols` contiguous values (cols =
// Hkv d for K, Hkv dv for V; the pages of one sequence need not be contiguous nor in order); key j
// is row j % page_size of page block_table[j / page_size]; the last page may be partly used. The
// object holds pointers only (the pool and table must outlive it). T: float, double, Eigen::half
// or Eigen::bfloat16. Throws std::invalid_argument naming the value for num_pages < 0,
// page_size < 1, cols < 1, length < 0, a null pool or table that is needed, a table of fewer than
// ceil(Lk / page_size) entries, or a used entry outside [0, num_pages) (test "MultiHeadAttention:
// a paged cache gives the contiguous cache's bits").
template <class T>
using PagedKV = detail::PagedKV<T>;

// Attention for every head at once, with grouped-query KV sharing: see the header's doc block.
class MultiHeadAttention {
 public:
  // The variant's name, as error messages give it.
  static constexpr const char* name = "MultiHeadAttention";

  // q_heads and kv_heads >= 1 with kv_heads dividing q_heads; throws std::invalid_argument naming
  // the value otherwise.
  MultiHeadAttention(const AttentionOptions& options, Index q_heads, Index kv_heads)
      : options_(options), hq_(q_heads), hkv_(kv_heads) {
    if (q_heads < 1)
      detail::fail(name, ": q_heads must be >= 1, but got ", q_heads);
    if (kv_heads < 1)
      detail::fail(name, ": kv_heads must be >= 1, but got ", kv_heads);
    if (q_heads % kv_heads != 0)
      detail::fail(name, ": q_heads must be a multiple of kv_heads, but got q_heads ", q_heads,
                   " and kv_heads ", kv_heads);
    if (options.has_alibi()) {
      for (Index h = 0; h < q_heads; ++h)
        slopes_.push_back(
            alibi_slope(options.alibi_max_bias(), static_cast<int>(h), static_cast<int>(q_heads)));
    }
  }

  // The options this object was built with.
  const AttentionOptions& options() const { return options_; }
  // The q heads this object was built with.
  Index q_heads() const { return hq_; }
  // The kv heads this object was built with.
  Index kv_heads() const { return hkv_; }
  // The ALiBi slope of each query head (empty without ALiBi).
  const std::vector<double>& alibi_slopes() const { return slopes_; }
  // The sink of each query head set by with_sinks (empty otherwise: the options' one sink, if any,
  // joins every head).
  const std::vector<double>& sinks() const { return sinks_; }

  // A copy with one sink per query head (gpt-oss's and ONNX Runtime GroupQueryAttention's `sinks`):
  // head h's rows get the extra logit per_head(h), which joins the max and the sum of that head's
  // softmax but contributes no value. per_head: a vector (any Eigen vector of float, double,
  // Eigen::half or Eigen::bfloat16) of Hq entries, each in [-2^100, 2^100]; it replaces the
  // options' single sink (with_sink). Throws std::invalid_argument naming the size or the entry.
  template <class Vec>
  [[nodiscard]] MultiHeadAttention with_sinks(const Eigen::DenseBase<Vec>& per_head) const {
    if (!(per_head.rows() == 1 || per_head.cols() == 1) || per_head.size() != hq_)
      detail::fail(name, ": sinks must be a vector of Hq = ", hq_, " entries, but got ",
                   per_head.rows(), " x ", per_head.cols());
    MultiHeadAttention m = *this;
    m.sinks_.assign(static_cast<std::size_t>(hq_), 0.0);
    for (Index h = 0; h < hq_; ++h) {
      const double z = static_cast<double>(per_head.derived().coeff(h));
      if (!(z >= -0x1p100 && z <= 0x1p100))
        detail::fail(name, ": sinks(", h, ") must be in [-2^100, 2^100] (finite), but got ", z);
      m.sinks_[static_cast<std::size_t>(h)] = z;
    }
    return m;
  }

  // O = attention of every head, Lq x (Hq dv), of Q's scalar type.
  template <class XQ, class XK, class XV>
  Eigen::Matrix<typename XQ::Scalar, Eigen::Dynamic, Eigen::Dynamic> operator()(
      const Eigen::DenseBase<XQ>& q, const Eigen::DenseBase<XK>& k,
      const Eigen::DenseBase<XV>& v) const {
    const Index dv = v.cols() / hkv_;
    Eigen::Matrix<typename XQ::Scalar, Eigen::Dynamic, Eigen::Dynamic> o(q.rows(), hq_ * dv);
    apply(q, k, v, o);
    return o;
  }

  // O = attention of every head into O (Lq x Hq dv).
  template <class XQ, class XK, class XV, class OutO>
  void apply(const Eigen::DenseBase<XQ>& q, const Eigen::DenseBase<XK>& k,
             const Eigen::DenseBase<XV>& v, OutO&& o_out) const {
    auto& o = detail::writable_output(std::forward<OutO>(o_out));
    Eigen::Matrix<float, 0, 0>* no_lse = nullptr;
    forward(q.derived(), k.derived(), v.derived(), o, no_lse);
  }

  // The same with the log-sum-exp of every head (Lq x Hq).
  template <class XQ, class XK, class XV, class OutO, class OutL>
  void apply(const Eigen::DenseBase<XQ>& q, const Eigen::DenseBase<XK>& k,
             const Eigen::DenseBase<XV>& v, OutO&& o_out, OutL&& lse_out) const {
    auto& o = detail::writable_output(std::forward<OutO>(o_out));
    auto& lse = detail::writable_output(std::forward<OutL>(lse_out));
    forward(q.derived(), k.derived(), v.derived(), o, &lse);
  }

  // With an additive mask shared by the heads: t_ij += m mask_ij (m: with_mask_slope), after the
  // ALiBi term; a -inf entry hides key j from query i in every head, a NaN makes row i NaN. mask:
  // Lq x Lk storage (Matrix, Map, Ref, Block) of float, Eigen::half or Eigen::bfloat16 beside a
  // float pass, float or double beside a double pass (converted exactly, kMhaMaskChunk entries of
  // one row at a time: never a whole copy).
  template <class XQ, class XK, class XV, class XM, class OutO>
  void apply_masked(const Eigen::DenseBase<XQ>& q, const Eigen::DenseBase<XK>& k,
                    const Eigen::DenseBase<XV>& v, const Eigen::DenseBase<XM>& mask,
                    OutO&& o_out) const {
    auto& o = detail::writable_output(std::forward<OutO>(o_out));
    Eigen::Matrix<float, 0, 0>* no_lse = nullptr;
    forward(q.derived(), k.derived(), v.derived(), o, no_lse, &mask.derived());
  }
  // The masked form with the log-sum-exp of every head (Lq x Hq).
  template <class XQ, class XK, class XV, class XM, class OutO, class OutL>
  void apply_masked(const Eigen::DenseBase<XQ>& q, const Eigen::DenseBase<XK>& k,
                    const Eigen::DenseBase<XV>& v, const Eigen::DenseBase<XM>& mask, OutO&& o_out,
                    OutL&& lse_out) const {
    auto& o = detail::writable_output(std::forward<OutO>(o_out));
    auto& lse = detail::writable_output(std::forward<OutL>(lse_out));
    forward(q.derived(), k.derived(), v.derived(), o, &lse, &mask.derived());
  }

  // Decoding (or any Lq) from a paged cache: K and V as PagedKV (rows Lk, cols Hkv d and Hkv dv),
  // otherwise as apply. The keys are read in the same order and blocks as from a contiguous cache,
  // so the result is bit-for-bit apply's on the same values (same thread count).
  template <class XQ, class TK, class TV, class OutO>
  void apply_paged(const Eigen::DenseBase<XQ>& q, const PagedKV<TK>& k, const PagedKV<TV>& v,
                   OutO&& o_out) const {
    auto& o = detail::writable_output(std::forward<OutO>(o_out));
    require_disjoint_pool("K", o, k);
    require_disjoint_pool("V", o, v);
    Eigen::Matrix<float, 0, 0>* no_lse = nullptr;
    forward(q.derived(), k, v, o, no_lse);
  }

  // The same with the log-sum-exp of every head (Lq x Hq).
  template <class XQ, class TK, class TV, class OutO, class OutL>
  void apply_paged(const Eigen::DenseBase<XQ>& q, const PagedKV<TK>& k, const PagedKV<TV>& v,
                   OutO&& o_out, OutL&& lse_out) const {
    auto& o = detail::writable_output(std::forward<OutO>(o_out));
    auto& lse = detail::writable_output(std::forward<OutL>(lse_out));
    require_disjoint_pool("K", o, k);
    require_disjoint_pool("V", o, v);
    forward(q.derived(), k, v, o, &lse);
  }

  // Packed sequences (FlashAttention's varlen form): sequence b is rows [cu_q[b], cu_q[b + 1]) of
  // Q and O and rows [cu_k[b], cu_k[b + 1]) of K and V, and attends within itself (positions,
  // causal and window relative to its own lengths). cu_q and cu_k: B + 1 nondecreasing offsets
  // (std::vector or Eigen vector of an integer type), from 0 to Lq and to Lk.
  template <class XQ, class XK, class XV, class CuQ, class CuK, class OutO>
  void apply_varlen(const Eigen::DenseBase<XQ>& q, const Eigen::DenseBase<XK>& k,
                    const Eigen::DenseBase<XV>& v, const CuQ& cu_seqlens_q, const CuK& cu_seqlens_k,
                    OutO&& o_out) const {
    auto& o = detail::writable_output(std::forward<OutO>(o_out));
    check_offsets("cu_seqlens_q", cu_seqlens_q, q.rows());
    check_offsets("cu_seqlens_k", cu_seqlens_k, k.rows());
    const Index batch = static_cast<Index>(cu_seqlens_q.size()) - 1;
    if (static_cast<Index>(cu_seqlens_k.size()) != batch + 1)
      detail::fail(name, ": cu_seqlens_q and cu_seqlens_k must have the same size B + 1, but got ",
                   cu_seqlens_q.size(), " and ", cu_seqlens_k.size());
    check_shapes(q.derived(), k.derived(), v.derived(), o);
    for (Index b = 0; b < batch; ++b) {
      const Index q0 = static_cast<Index>(cu_seqlens_q[b]);
      const Index nq = static_cast<Index>(cu_seqlens_q[b + 1]) - q0;
      const Index k0 = static_cast<Index>(cu_seqlens_k[b]);
      const Index nk = static_cast<Index>(cu_seqlens_k[b + 1]) - k0;
      auto ob = o.middleRows(q0, nq);
      Eigen::Matrix<float, 0, 0>* no_lse = nullptr;
      forward(q.derived().middleRows(q0, nq), k.derived().middleRows(k0, nk),
              v.derived().middleRows(k0, nk), ob, no_lse);
    }
  }

  // Gradients of the forward pass (FlashAttention-2's recomputation from O and lse): dQ of Q's
  // shape, dK of K's and dV of V's; dK and dV of a KV head summed over its group's query heads.
  // O and lse as the forward wrote them (lse Lq x Hq), dO of O's shape. Any storage scalars; the
  // pass runs in float (double when any operand is double). dK and dV of the compute type are
  // accumulated in place; of another type (16-bit, or float beside a double pass) through
  // accumulators of the compute type, Lk (d + dv) per KV group being computed. Otherwise one tile
  // workspace per group, nothing proportional to Lq or Lk ("MultiHeadAttention: no allocation
  // proportional to Lq, Lk or the cache"). dQ, dK, dV must not overlap each other or an input.
  template <class XQ, class XK, class XV, class XO, class XL, class XdO, class OutQ, class OutK,
            class OutV>
  void backward(const Eigen::DenseBase<XQ>& q_in, const Eigen::DenseBase<XK>& k_in,
                const Eigen::DenseBase<XV>& v_in, const Eigen::DenseBase<XO>& o_in,
                const Eigen::DenseBase<XL>& lse_in, const Eigen::DenseBase<XdO>& dout_in,
                OutQ&& dq_out, OutK&& dk_out, OutV&& dv_out) const {
    backward_impl(q_in, k_in, v_in, o_in, lse_in, dout_in, std::forward<OutQ>(dq_out),
                  std::forward<OutK>(dk_out), std::forward<OutV>(dv_out),
                  static_cast<const NoMask*>(nullptr));
  }

  // The backward of apply_masked: the mask (the forward's, a constant) rebuilds the same weights.
  template <class XQ, class XK, class XV, class XM, class XO, class XL, class XdO, class OutQ,
            class OutK, class OutV>
  void backward_masked(const Eigen::DenseBase<XQ>& q_in, const Eigen::DenseBase<XK>& k_in,
                       const Eigen::DenseBase<XV>& v_in, const Eigen::DenseBase<XM>& mask,
                       const Eigen::DenseBase<XO>& o_in, const Eigen::DenseBase<XL>& lse_in,
                       const Eigen::DenseBase<XdO>& dout_in, OutQ&& dq_out, OutK&& dk_out,
                       OutV&& dv_out) const {
    backward_impl(q_in, k_in, v_in, o_in, lse_in, dout_in, std::forward<OutQ>(dq_out),
                  std::forward<OutK>(dk_out), std::forward<OutV>(dv_out), &mask.derived());
  }

 private:
  template <class XQ, class XK, class XV, class XO, class XL, class XdO, class OutQ, class OutK,
            class OutV, class XM>
  void backward_impl(const Eigen::DenseBase<XQ>& q_in, const Eigen::DenseBase<XK>& k_in,
                     const Eigen::DenseBase<XV>& v_in, const Eigen::DenseBase<XO>& o_in,
                     const Eigen::DenseBase<XL>& lse_in, const Eigen::DenseBase<XdO>& dout_in,
                     OutQ&& dq_out, OutK&& dk_out, OutV&& dv_out, const XM* mask) const {
    const XQ& q = q_in.derived();
    const XK& k = k_in.derived();
    const XV& v = v_in.derived();
    const XO& o = o_in.derived();
    const XL& lse = lse_in.derived();
    const XdO& dout = dout_in.derived();
    auto& dq = detail::writable_output(std::forward<OutQ>(dq_out));
    auto& dk = detail::writable_output(std::forward<OutK>(dk_out));
    auto& dv = detail::writable_output(std::forward<OutV>(dv_out));
    check_shapes(q, k, v, o);
    const Index lq = q.rows(), lk = k.rows(), d = q.cols() / hq_, dvh = v.cols() / hkv_;
    auto same_shape = [&](const char* what, Index r, Index c, Index rows, Index cols) {
      if (r != rows || c != cols)
        detail::fail(name, ": ", what, " must be ", rows, " x ", cols, ", but got ", r, " x ", c);
    };
    same_shape("lse", lse.rows(), lse.cols(), lq, hq_);
    same_shape("dO", dout.rows(), dout.cols(), lq, hq_ * dvh);
    same_shape("dQ", dq.rows(), dq.cols(), q.rows(), q.cols());
    same_shape("dK", dk.rows(), dk.cols(), k.rows(), k.cols());
    same_shape("dV", dv.rows(), dv.cols(), v.rows(), v.cols());
    using C = std::conditional_t<
        std::is_same_v<
            Scalar<XQ>,
            double> || std::is_same_v<Scalar<XK>, double> || std::is_same_v<Scalar<XV>, double> || std::is_same_v<Scalar<XO>, double> || std::is_same_v<Scalar<XdO>, double> || std::is_same_v<Scalar<XL>, double>,
        double, float>;
    const detail::MhaPlan<C> p = plan<C>(lq, lk, d, dvh, mask);
    using M = Eigen::Matrix<C, Eigen::Dynamic, Eigen::Dynamic>;
    using DQ = std::remove_reference_t<decltype(dq)>;
    using DK = std::remove_reference_t<decltype(dk)>;
    using DV = std::remove_reference_t<decltype(dv)>;
    // The gradients are accumulated in their own storage, so it must not share an input's.
    auto disjoint = [&](const char* out, const auto& x) {
      require_disjoint(out, "the input Q", x, q);
      require_disjoint(out, "the input K", x, k);
      require_disjoint(out, "the input V", x, v);
      require_disjoint(out, "the input O", x, o);
      require_disjoint(out, "the input dO", x, dout);
      require_disjoint(out, "the input lse", x, lse);
    };
    disjoint("dQ", dq);
    disjoint("dK", dk);
    disjoint("dV", dv);
    require_disjoint("dK", "dQ", dk, dq);
    require_disjoint("dV", "dQ", dv, dq);
    require_disjoint("dV", "dK", dv, dk);
    // dK and dV of the compute type are accumulated in place (no allocation proportional to Lk);
    // other types through an accumulator of the group's columns, Lk (d + dv) scalars of C.
    constexpr bool kInPlace =
        std::is_same_v<
            typename DK::Scalar,
            C> && std::is_same_v<typename DV::Scalar, C> && detail::has_direct_access_v<DK> && detail::has_direct_access_v<DV>;
    // One task per KV group: it owns its columns of dK, dV and its heads' columns of dQ.
    detail::for_each_slice<true>(hkv_, lq * lk * p.group * (d + dvh), [&](Index g) {
      const Index group = p.group;
      auto write_dq = [&](Index i0, Index n, const auto& dqt) {
        for (Index hh = 0; hh < group; ++hh)
          dq.block(i0, (g * group + hh) * d, n, d) =
              dqt.middleRows(hh * n, n).template cast<typename DQ::Scalar>();
      };
      if constexpr (kInPlace) {
        auto gk = dk.block(0, g * d, lk, d);
        auto gv = dv.block(0, g * dvh, lk, dvh);
        gk.setZero();
        gv.setZero();
        detail::mha_backward_group(q, k, v, o, lse, dout, g, p, gk, gv, write_dq);
      } else {
        M gk = M::Zero(lk, d), gv = M::Zero(lk, dvh);
        detail::mha_backward_group(q, k, v, o, lse, dout, g, p, gk, gv, write_dq);
        dk.block(0, g * d, lk, d) = gk.template cast<typename DK::Scalar>();
        dv.block(0, g * dvh, lk, dvh) = gv.template cast<typename DV::Scalar>();
      }
    });
  }

 public:
  // The same, and the gradient of each query head's sink into dsinks (a vector of Hq entries, any
  // storage scalar): dz_h = -sum_i exp(z_h - lse_ih) <dO_ih, O_ih> (O_ih = sum_j P_ij v_j with P's
  // normalizer holding exp(z_h), so dO_ih/dz_h = -exp(z_h - lse_ih) O_ih), summed in long double.
  // Needs a sink (with_sink or with_sinks); throws std::invalid_argument otherwise, or when dsinks
  // has the wrong size.
  template <class XQ, class XK, class XV, class XO, class XL, class XdO, class OutQ, class OutK,
            class OutV, class OutS>
  void backward(const Eigen::DenseBase<XQ>& q, const Eigen::DenseBase<XK>& k,
                const Eigen::DenseBase<XV>& v, const Eigen::DenseBase<XO>& o,
                const Eigen::DenseBase<XL>& lse, const Eigen::DenseBase<XdO>& dout, OutQ&& dq,
                OutK&& dk, OutV&& dv, OutS&& dsinks_out) const {
    auto& dsinks = detail::writable_output(std::forward<OutS>(dsinks_out));
    if (!options_.has_sink() && sinks_.empty())
      detail::fail(name, ": dsinks needs a sink (with_sink or with_sinks), but none is set");
    if (!(dsinks.rows() == 1 || dsinks.cols() == 1) || dsinks.size() != hq_)
      detail::fail(name, ": dsinks must be a vector of Hq = ", hq_, " entries, but got ",
                   dsinks.rows(), " x ", dsinks.cols());
    backward(q, k, v, o, lse, dout, std::forward<OutQ>(dq), std::forward<OutK>(dk),
             std::forward<OutV>(dv));
    const Index dvh = v.cols() / hkv_;
    for (Index h = 0; h < hq_; ++h) {
      const long double z = sinks_.empty() ? options_.sink() : sinks_[static_cast<std::size_t>(h)];
      long double sum = 0;
      for (Index i = 0; i < q.rows(); ++i) {
        long double delta = 0;
        for (Index c = 0; c < dvh; ++c)
          delta +=
              static_cast<long double>(static_cast<double>(dout.derived().coeff(i, h * dvh + c)))
              * static_cast<double>(o.derived().coeff(i, h * dvh + c));
        const long double l = static_cast<double>(lse.derived().coeff(i, h));
        sum += std::exp(z - l) * delta;  // lse >= z with a sink: a weight in [0, 1]
      }
      using S = typename std::remove_reference_t<decltype(dsinks)>::Scalar;
      dsinks.coeffRef(h) = detail::convert_scalar<S>(static_cast<double>(-sum));
    }
  }

 private:
  template <class T>
  using Scalar = typename T::Scalar;

  template <class Offsets>
  static void check_offsets(const char* what, const Offsets& cu, Index rows) {
    const Index n = static_cast<Index>(cu.size());
    if (n < 1)
      detail::fail(name, ": ", what, " must have B + 1 >= 1 entries, but got none");
    if (static_cast<Index>(cu[0]) != 0)
      detail::fail(name, ": ", what, "[0] must be 0, but got ", static_cast<Index>(cu[0]));
    for (Index b = 1; b < n; ++b) {
      if (static_cast<Index>(cu[b]) < static_cast<Index>(cu[b - 1]))
        detail::fail(name, ": ", what, " must be nondecreasing, but got ", what, "[", b,
                     "] = ", static_cast<Index>(cu[b]), " after ", static_cast<Index>(cu[b - 1]));
    }
    if (static_cast<Index>(cu[n - 1]) != rows)
      detail::fail(name, ": ", what, " must end at the number of rows ", rows, ", but got ",
                   static_cast<Index>(cu[n - 1]));
  }

  // An output must not share memory with an input (whatever their scalar types).
  template <class XO, class X>
  static void require_disjoint(const char* out, const char* in, const XO& o, const X& x) {
    if constexpr (detail::has_direct_access_v<XO> && detail::has_direct_access_v<X>) {
      if (o.size() == 0 || x.size() == 0)
        return;
      const auto at = [](const void* p) {
        return reinterpret_cast<std::uintptr_t>(p);
      };
      const std::uintptr_t o0 = at(o.data()), o1 = at(detail::last_coefficient(o) + 1);
      const std::uintptr_t x0 = at(x.data()), x1 = at(detail::last_coefficient(x) + 1);
      if (o0 < x1 && x0 < o1)
        detail::fail(name, ": ", out, " must not overlap ", in);
    }
  }

  // O must not share memory with a page pool.
  template <class XO, class T>
  static void require_disjoint_pool(const char* in, const XO& o, const PagedKV<T>& x) {
    if constexpr (detail::has_direct_access_v<XO>) {
      if (o.size() == 0 || x.num_pages() == 0)
        return;
      const auto at = [](const void* p) {
        return reinterpret_cast<std::uintptr_t>(p);
      };
      const std::uintptr_t o0 = at(o.data()), o1 = at(detail::last_coefficient(o) + 1);
      const std::uintptr_t x0 = at(x.pool()),
                           x1 = at(x.pool() + x.num_pages() * x.page_size() * x.cols());
      if (o0 < x1 && x0 < o1)
        detail::fail(name, ": O must not overlap the page pool of ", in);
    }
  }

  template <class XQ, class XK, class XV, class XO>
  void check_shapes(const XQ& q, const XK& k, const XV& v, const XO& o) const {
    using namespace detail;
    static_check_storage_scalars<Scalar<XQ>, Scalar<XQ>>();
    static_check_storage_scalars<Scalar<XK>, Scalar<XV>>();
    static_check_storage_scalars<Scalar<XO>, Scalar<XO>>();
    if (q.cols() < hq_ || q.cols() % hq_ != 0)
      fail(name, ": Q must have Hq d columns (Hq = ", hq_, ", d >= 1), but got ", q.cols());
    const Index d = q.cols() / hq_;
    if (k.cols() != hkv_ * d)
      fail(name, ": K must have Hkv d = ", hkv_ * d, " columns (Hkv = ", hkv_, ", d = ", d,
           "), but got ", k.cols());
    if (v.cols() < hkv_ || v.cols() % hkv_ != 0)
      fail(name, ": V must have Hkv dv columns (Hkv = ", hkv_, ", dv >= 1), but got ", v.cols());
    if (k.rows() != v.rows())
      fail(name, ": K and V must have the same number of rows Lk, but got ", k.rows(), " and ",
           v.rows());
    const Index dv = v.cols() / hkv_;
    if (o.rows() != q.rows() || o.cols() != hq_ * dv)
      fail(name, ": O must be Lq x Hq dv = ", q.rows(), " x ", hq_ * dv, ", but got ", o.rows(),
           " x ", o.cols());
    require_disjoint("O", "the input Q", o, q);
    require_disjoint("O", "the input K", o, k);
    require_disjoint("O", "the input V", o, v);
  }

  using NoMask = Eigen::Matrix<float, 0, 0>;

  // Row i's mask entries [j, j + n) converted to C (MhaPlan::mask_row).
  template <class C, class XM>
  static void mask_row_of(const void* mask, Index i, Index j, Index n, C* out) {
    detail::mha_load_block(*static_cast<const XM*>(mask), i, j, 1, n, out);
  }

  template <class C, class XM = NoMask>
  detail::MhaPlan<C> plan(Index lq, Index lk, Index d, Index dv, const XM* mask = nullptr) const {
    detail::MhaPlan<C> p;
    if constexpr (!std::is_same_v<XM, NoMask>) {
      static_assert(detail::mask_scalar_ok_v<C, Scalar<XM>>,
                    "softmaxlab: the mask must be float, Eigen::half or Eigen::bfloat16 beside a "
                    "float pass, float or double beside a double pass");
      static_assert(detail::has_direct_access_v<XM>,
                    "softmaxlab: the mask must be storage; evaluate an expression first");
      if (mask->rows() != lq || mask->cols() != lk)
        detail::fail(name, ": mask must be Lq x Lk = ", lq, " x ", lk, ", but got ", mask->rows(),
                     " x ", mask->cols());
      p.mask = mask;
      p.mask_row = &mask_row_of<C, XM>;
      p.mask_slope = static_cast<C>(options_.mask_slope());
    }
    p.scale = static_cast<C>(options_.scale_or(1.0 / std::sqrt(static_cast<double>(d))));
    p.cap = static_cast<C>(options_.softcap());
    p.has_sink = options_.has_sink() || !sinks_.empty();
    p.sink = static_cast<C>(options_.sink());
    p.sinks = sinks_.empty() ? nullptr : sinks_.data();
    p.band.lq = lq;
    p.band.lk = lk;
    p.band.left = options_.window_left();
    p.band.right = options_.window_right();
    p.band.causal = options_.causal();
    p.group = hq_ / hkv_;
    p.d = d;
    p.dv = dv;
    p.rows_per_head =
        std::clamp<Index>(std::min(detail::kMhaRowsPerHead, detail::kMhaTileRows / p.group), 1,
                          std::max<Index>(lq, 1));
    p.slopes = slopes_.empty() ? nullptr : slopes_.data();
    return p;
  }

  // The forward pass into O (and lse unless null); shapes are checked here.
  template <class XQ, class XK, class XV, class XO, class XL, class XM = NoMask>
  void forward(const XQ& q, const XK& k, const XV& v, XO& o, XL* lse,
               const XM* mask = nullptr) const {
    // An expression (no storage) is evaluated once, not once per block.
    if constexpr (!detail::has_direct_access_v<XQ>) {
      const Eigen::Matrix<Scalar<XQ>, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> qe = q;
      forward(qe, k, v, o, lse, mask);
    } else if constexpr (!detail::has_direct_access_v<XK> && !detail::is_paged_kv_v<XK>) {
      const Eigen::Matrix<Scalar<XK>, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> ke = k;
      forward(q, ke, v, o, lse, mask);
    } else if constexpr (!detail::has_direct_access_v<XV> && !detail::is_paged_kv_v<XV>) {
      const Eigen::Matrix<Scalar<XV>, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> ve = v;
      forward(q, k, ve, o, lse, mask);
    } else {
      forward_storage(q, k, v, o, lse, mask);
    }
  }

  template <class XQ, class XK, class XV, class XO, class XL, class XM>
  void forward_storage(const XQ& q, const XK& k, const XV& v, XO& o, XL* lse,
                       const XM* mask) const {
    check_shapes(q, k, v, o);
    const Index lq = q.rows(), lk = k.rows(), d = q.cols() / hq_, dv = v.cols() / hkv_;
    if constexpr (!std::is_same_v<XL, Eigen::Matrix<float, 0, 0>>) {
      detail::static_check_storage_scalars<Scalar<XL>, Scalar<XL>>();
      if (lse->rows() != lq || lse->cols() != hq_)
        detail::fail(name, ": lse must be Lq x Hq = ", lq, " x ", hq_, ", but got ", lse->rows(),
                     " x ", lse->cols());
    }
    using C = std::conditional_t<
        std::is_same_v<
            Scalar<XQ>,
            double> || std::is_same_v<Scalar<XK>, double> || std::is_same_v<Scalar<XV>, double> || std::is_same_v<Scalar<XO>, double>,
        double, float>;
    const detail::MhaPlan<C> p = plan<C>(lq, lk, d, dv, mask);
    if (lq == 0)
      return;
    const Index group = p.group, bq = p.rows_per_head, rows = group * bq;
    // Tile rows hh n + r (head g group + hh, query i0 + r) into O and lse.
    auto write = [&](Index g, Index i0, Index n, const C* tile_o, const C* tile_lse) {
      using RowMat = Eigen::Matrix<C, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
      const Eigen::Map<const RowMat> ot(tile_o, group * n, dv);
      for (Index hh = 0; hh < group; ++hh) {
        const Index h = g * group + hh;
        o.block(i0, h * dv, n, dv) = ot.middleRows(hh * n, n).template cast<Scalar<XO>>();
        if constexpr (!std::is_same_v<XL, Eigen::Matrix<float, 0, 0>>) {
          for (Index r = 0; r < n; ++r)
            lse->coeffRef(i0 + r, h) = static_cast<Scalar<XL>>(tile_lse[hh * n + r]);
        }
      }
    };
    const Index qblocks = (lq + bq - 1) / bq;
    const Index splits = lq <= kDecodeMaxQueries && lk > kDecodeSplitKeys ? std::min<Index>(
                             kDecodeMaxSplits, (lk + kDecodeSplitKeys - 1) / kDecodeSplitKeys)
                                                                          : 1;
    if (splits == 1) {
      detail::MhaWorkspaces<C> ws(rows, d, dv);
      detail::for_each_slice<true>(hkv_ * qblocks, rows * lk * (d + dv), [&](Index t) {
        const Index g = t / qblocks, i0 = (t % qblocks) * bq, n = std::min(bq, lq - i0);
        detail::MhaWorkspace<C>& w = ws.mine();
        detail::mha_tile(q, k, v, g, i0, n, 0, lk, true, p, w, w.lse);
        write(g, i0, n, w.o, w.lse);
      });
      return;
    }
    // Decoding: key ranges of `span` keys (a multiple of the key block), each tile's partial
    // (O, lse) kept, then merged in order by merge_attention's rule.
    const Index blocks = (lk + detail::kMhaBlockK - 1) / detail::kMhaBlockK;
    const Index span = (blocks + splits - 1) / splits * detail::kMhaBlockK;
    const Index part = rows * (dv + 1);
    std::vector<C> partials(static_cast<std::size_t>(hkv_ * qblocks * splits * part));
    // Partial of group g, query block qb, key range s.
    const auto partial = [&](Index g, Index qb, Index s) {
      return partials.data() + ((g * qblocks + qb) * splits + s) * part;
    };
    if (rows <= detail::kMhaRegisterRows) {
      // Small tiles (decoding): a task is a key range of a query block for every KV group.
      detail::MhaWorkspaces<C> gws(rows, d, dv, hkv_);
      detail::for_each_slice<true>(qblocks * splits, rows * span * (d + dv) * hkv_, [&](Index t) {
        const Index s = t % splits, qb = t / splits, i0 = qb * bq;
        detail::mha_tile_all_groups(q, k, v, hkv_, i0, std::min(bq, lq - i0), s * span,
                                    std::min(lk, (s + 1) * span), s == 0, p, gws, rows,
                                    [&](Index g) { return partial(g, qb, s); });
      });
    } else {
      detail::MhaWorkspaces<C> ws(rows, d, dv);
      detail::for_each_slice<true>(hkv_ * qblocks * splits, rows * span * (d + dv), [&](Index t) {
        const Index s = t % splits, gq = t / splits, g = gq / qblocks;
        const Index i0 = (gq % qblocks) * bq, n = std::min(bq, lq - i0);
        detail::MhaWorkspace<C>& w = ws.mine();
        C* out = partial(g, gq % qblocks, s);
        detail::mha_tile(q, k, v, g, i0, n, s * span, std::min(lk, (s + 1) * span), s == 0, p, w,
                         out + rows * dv);
        std::copy(w.o, w.o + group * n * dv, out);
      });
    }
    using RowMat = Eigen::Matrix<C, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    using Vec = Eigen::Matrix<C, Eigen::Dynamic, 1>;
    for (Index gq = 0; gq < hkv_ * qblocks; ++gq) {
      const Index i0 = (gq % qblocks) * bq, n = std::min(bq, lq - i0), tile_rows = group * n;
      C* first = partials.data() + gq * splits * part;
      Eigen::Map<RowMat> o0(first, tile_rows, dv);
      Eigen::Map<Vec> l0(first + rows * dv, tile_rows);
      for (Index s = 1; s < splits; ++s) {
        const C* other = first + s * part;
        merge_attention(o0, l0, Eigen::Map<const RowMat>(other, tile_rows, dv),
                        Eigen::Map<const Vec>(other + rows * dv, tile_rows), o0, l0);
      }
      write(gq / qblocks, i0, n, first, first + rows * dv);
    }
  }

  static constexpr Index kDecodeMaxQueries = 16;
  static constexpr Index kDecodeSplitKeys = 2048;
  static constexpr Index kDecodeMaxSplits = 16;

  AttentionOptions options_;
  Index hq_, hkv_;
  std::vector<double> slopes_;
  std::vector<double> sinks_;  // per query head (with_sinks), or empty
};

}  // namespace softmaxlab
