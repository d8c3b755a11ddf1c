// softmaxlab: the flash-attention kernels of Attention (flash_attention.hpp): the block plan,
// the visible-key and mask geometry, the forward blocks of the three weights (Softmax, Power-
// Softmax, PolynomialSoftmax with a public bound), FlashAttention-2's backward block, and the
// 16-bit staging. The algorithms and bounds are stated in flash_attention.hpp's doc block and
// checked by tests/test_attention.cpp and tests/test_half_precision.cpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>

#include "attention_score.hpp"
#include "backward_base.hpp"
#include "checks.hpp"
#include "functor_base.hpp"
#include "kernels.hpp"
#include "scalar_types.hpp"

namespace softmaxlab {
namespace detail {

// The scalar type lse may have beside O's: O's own, or float when O is 16-bit (FlashAttention's
// convention: a 16-bit lse is off by up to 2^-9 (half) or 2^-6 (bfloat16) near 8, and every
// weight the backward rebuilds from it inherits that error).
template <class Out, class L>
inline constexpr bool lse_scalar_ok_v =
    std::is_same_v<L, Out> || (std::is_same_v<L, float> && is_16bit_v<Out>);

// Query and key block sizes of Attention: the default and the largest (the stack workspace is
// kAttentionMaxBlockQ x kAttentionMaxBlockK scalars, two of them in the backward pass).
inline constexpr Index kAttentionMaxBlockQ = 64;
inline constexpr Index kAttentionMaxBlockK = 128;

template <class Scalar>
using RowMajorMatrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Everything a query block needs besides the matrices.
template <class Scalar>
struct AttentionPlan {
  ScoreTransform<Scalar> transform;
  bool causal = false;
  bool has_sink = false;
  Scalar sink = 0;
  Index block_q = kAttentionMaxBlockQ;
  Index block_k = kAttentionMaxBlockK;
};

// One past the last key any query row of [i0, i0 + bq) sees (causal: j <= i + Lk - Lq).
inline Index attention_key_end(Index i0, Index bq, Index lq, Index lk, bool causal) {
  if (!causal)
    return lk;
  return std::clamp<Index>(i0 + bq + lk - lq, 0, lk);
}

// Number of keys of the block [j0, j0 + nk) that query row i sees.
inline Index attention_visible(Index i, Index j0, Index nk, Index lq, Index lk, bool causal) {
  if (!causal)
    return nk;
  return std::clamp<Index>(i + lk - lq - j0 + 1, 0, nk);
}

// The mask entries of query row i for keys [j0, j0 + n) as Scalar (size 0 when there is no mask):
// the mask's own storage when it has Scalar's type, else (a half or bfloat16 mask beside float, a
// float one beside double: mask_scalar_ok_v) converted exactly into staging, n <= kAttention-
// MaxBlockK entries of the caller's stack: one key block of one row, never the whole mask.
template <class Scalar, class MaskM>
Span<const Scalar> attention_mask_span(const MaskM* mask, Index i, Index j0, Index n,
                                       Scalar* staging) {
  using MaskScalar = typename MaskM::Scalar;
  static_assert(mask_scalar_ok_v<Scalar, MaskScalar>, "softmaxlab: unsupported mask scalar");
  if (mask == nullptr || n == 0)
    return {nullptr, 0, 1};
  const Span<const MaskScalar> m = slice_span<const MaskScalar>(*mask, i, true);
  if constexpr (std::is_same_v<MaskScalar, Scalar>) {
    return {m.data + j0 * m.stride, n, m.stride};
  } else {
    convert_strided(m.data + j0 * m.stride, m.stride, staging, Index(1), n);
    return {staging, n, 1};
  }
}

// The key/value block loop of query rows [i0, i0 + bq), shared by the forward passes and the
// backward pass: for each block of keys [j0, j0 + nk) up to the last one these rows see (causal),
// S = Q_b K_j^T (one GEMM into `scores`, bq x nk row-major), then fn(j0, nk, S).
template <class Scalar, class QM, class KM, class Fn>
void for_each_key_block(const QM& q, const KM& k, Index i0, Index bq,
                        const AttentionPlan<Scalar>& plan, Scalar* scores, const Fn& fn) {
  const auto qb = q.middleRows(i0, bq);
  const Index key_end = attention_key_end(i0, bq, q.rows(), k.rows(), plan.causal);
  for (Index j0 = 0; j0 < key_end; j0 += plan.block_k) {
    const Index nk = std::min(plan.block_k, key_end - j0);
    Eigen::Map<RowMajorMatrix<Scalar>> s(scores, bq, nk);
    s.noalias() = qb * k.middleRows(j0, nk).transpose();
    fn(j0, nk, s);
  }
}

// The flash forward pass of query rows [i0, i0 + bq): O rows and lse entries (lse.size == 0:
// none), softmax weights.
template <class Scalar, class QM, class KM, class VM, class MaskM, class OM>
void attention_forward_block(const QM& q, const KM& k, const VM& v, const MaskM* mask, OM& o,
                             const Span<Scalar>& lse, Index i0, Index bq,
                             const AttentionPlan<Scalar>& plan) {
  const Scalar inf = std::numeric_limits<Scalar>::infinity();
  const Index lq = q.rows(), lk = k.rows();
  alignas(64) Scalar buffer[kAttentionMaxBlockQ * kAttentionMaxBlockK];
  alignas(64) Scalar mask_stage[kAttentionMaxBlockK];  // a converted mask row (other types)
  Scalar running_max[kAttentionMaxBlockQ];
  long double running_sum[kAttentionMaxBlockQ];
  bool nan_row[kAttentionMaxBlockQ];
  for (Index r = 0; r < bq; ++r) {
    running_max[r] = -inf;
    running_sum[r] = 0;
    nan_row[r] = false;
  }
  auto ob = o.middleRows(i0, bq);
  ob.setZero();
  for_each_key_block(q, k, i0, bq, plan, buffer, [&](Index j0, Index nk, auto& s) {
    for (Index r = 0; r < bq; ++r) {
      Scalar* row = buffer + r * nk;
      const Index visible = attention_visible(i0 + r, j0, nk, lq, lk, plan.causal);
      std::fill(row + visible, row + nk, Scalar(0));  // keys this query does not see: weight 0
      ScoreMax<Scalar> sm;
      if (visible > 0) {
        sm = transform_scores<true>(
            Span<const Scalar>{row, visible, 1},
            attention_mask_span<Scalar>(mask, i0 + r, j0, visible, mask_stage),
            Span<Scalar>{row, visible, 1}, plan.transform);
      }
      nan_row[r] = nan_row[r] || sm.nan;
      const Scalar m_old = running_max[r];
      const Scalar m_new = std::max(m_old, sm.max);
      if (nan_row[r] || m_new == -inf) {  // nothing to add (the NaN row is written at the end)
        std::fill(row, row + visible, Scalar(0));
        continue;
      }
      if (m_new == inf) {  // only +inf scores carry mass, one each
        if (m_old != inf) {
          ob.row(r).setZero();
          running_sum[r] = 0;
        }
        Index count = 0;
        for (Index j = 0; j < visible; ++j) {
          const bool at_inf = row[j] == inf;
          count += at_inf;
          row[j] = at_inf ? Scalar(1) : Scalar(0);
        }
        running_sum[r] += count;
      } else {
        if (m_new > m_old && m_old != -inf) {
          // The max grew: rescale what was accumulated (the online normalizer's merge).
          const Scalar alpha =
              static_cast<Scalar>(std::exp(static_cast<long double>(m_old) - m_new));
          ob.row(r) *= alpha;
          running_sum[r] *= alpha;
        }
        running_sum[r] += exp_shift_store_sum(row, visible, m_new);
      }
      running_max[r] = m_new;
    }
    ob.noalias() += s * v.middleRows(j0, nk);
  });
  for (Index r = 0; r < bq; ++r) {
    const Scalar m = running_max[r];
    Scalar row_lse;
    if (nan_row[r]) {
      ob.row(r).setConstant(std::numeric_limits<Scalar>::quiet_NaN());
      row_lse = std::numeric_limits<Scalar>::quiet_NaN();
    } else if (m == -inf) {
      // No visible key (every key masked, causal, or Lk = 0): the output is 0 (the sink has no
      // value) and lse is the log-sum-exp of the sink alone, z, so merge_attention gives this
      // partial the sink's mass; -inf without a sink.
      ob.row(r).setZero();
      row_lse = plan.has_sink ? plan.sink : -inf;
    } else if (m == inf) {
      ob.row(r) *= static_cast<Scalar>(1.0L / running_sum[r]);
      row_lse = inf;
    } else {
      long double top = m, sum = running_sum[r], factor = 1;
      if (plan.has_sink) {
        top = std::max<long double>(m, plan.sink);
        factor = std::exp(static_cast<long double>(m) - top);
        sum = sum * factor + std::exp(static_cast<long double>(plan.sink) - top);
      }
      ob.row(r) *= static_cast<Scalar>(factor / sum);
      row_lse = static_cast<Scalar>(top + std::log(sum));
    }
    if (lse.size != 0)
      lse[i0 + r] = row_lse;
  }
}

// z^p for an even p >= 2 by repeated squaring.
template <class Scalar>
Scalar even_power(Scalar z, int p) {
  Scalar base = z * z, result = 1;
  for (int e = p / 2; e > 0; e >>= 1) {
    if (e & 1)
      result *= base;
    base *= base;
  }
  return result;
}

// The flash forward pass of query rows [i0, i0 + bq) with Power-Softmax weights (Stable form):
// w_ij = t_ij^p / sum_j t_ij^p. The running scale is a power of two 2^e_i >= max_j |t_ij| (as
// PowerSoftmax scales its rows), so the rescale when it grows, (2^e_old / 2^e_new)^p, is exact.
// A row's state is one of: all visible scores zero so far (uniform weights, the formula's limit),
// a finite scale 2^e, or infinite scores seen (they share the mass). Masked keys (-inf in the
// scaled mask, causal) are left out.
template <class Scalar, class QM, class KM, class VM, class MaskM, class OM>
void attention_forward_block_power(const QM& q, const KM& k, const VM& v, const MaskM* mask, OM& o,
                                   Index i0, Index bq, const AttentionPlan<Scalar>& plan, int p) {
  const Scalar inf = std::numeric_limits<Scalar>::infinity();
  const Scalar nan = std::numeric_limits<Scalar>::quiet_NaN();
  constexpr int kEmpty = -2, kZero = -1, kFinite = 0, kInfinite = 1;  // row modes, in order
  const Index lq = q.rows(), lk = k.rows();
  const ScoreTransform<Scalar>& f = plan.transform;
  alignas(64) Scalar buffer[kAttentionMaxBlockQ * kAttentionMaxBlockK];
  alignas(64) Scalar mask_stage[kAttentionMaxBlockK];  // a converted mask row (other types)
  int mode[kAttentionMaxBlockQ], exponent[kAttentionMaxBlockQ];
  long double running_sum[kAttentionMaxBlockQ];
  bool nan_row[kAttentionMaxBlockQ];
  for (Index r = 0; r < bq; ++r) {
    mode[r] = kEmpty;
    exponent[r] = 0;
    running_sum[r] = 0;
    nan_row[r] = false;
  }
  auto ob = o.middleRows(i0, bq);
  ob.setZero();
  for_each_key_block(q, k, i0, bq, plan, buffer, [&](Index j0, Index nk, auto& s) {
    for (Index r = 0; r < bq; ++r) {
      Scalar* row = buffer + r * nk;
      const Index visible = attention_visible(i0 + r, j0, nk, lq, lk, plan.causal);
      const Span<const Scalar> ms =
          attention_mask_span<Scalar>(mask, i0 + r, j0, visible, mask_stage);
      std::fill(row + visible, row + nk, Scalar(0));
      // The transformed scores; masked keys become NaN here (NaN inputs were flagged first).
      Scalar top = 0;
      bool any = false;
      for (Index j = 0; j < visible; ++j) {
        Scalar t = f.scale * row[j];
        if (f.has_cap())
          t = f.cap * std::tanh(t / f.cap);
        if (ms.size != 0) {
          const Scalar mm = f.slope * ms[j];
          if (mm != mm || t != t) {
            nan_row[r] = true;
          } else if (mm == -inf) {
            row[j] = nan;  // masked
            continue;
          }
          t += mm;
        }
        nan_row[r] = nan_row[r] || t != t;
        row[j] = t;
        top = std::max(top, std::fabs(t));
        any = true;
      }
      if (nan_row[r] || !any) {
        std::fill(row, row + visible, Scalar(0));
        continue;
      }
      int new_mode = top == inf ? kInfinite : top == 0 ? kZero : kFinite;
      int e = 0;
      if (new_mode == kFinite)
        std::frexp(top, &e);  // 2^(e-1) <= top < 2^e
      if (new_mode < mode[r] || (new_mode == kFinite && mode[r] == kFinite && e < exponent[r])) {
        // This block's entries are negligible next to what was seen: they use the row's level.
        new_mode = mode[r];
        e = exponent[r];
      }
      if (new_mode > mode[r]) {  // a higher mode: what was accumulated has weight 0 in the limit
        ob.row(r).setZero();
        running_sum[r] = 0;
      } else if (new_mode == kFinite && e > exponent[r]) {
        const Scalar factor = std::ldexp(Scalar(1), p * (exponent[r] - e));  // exact or 0
        ob.row(r) *= factor;
        running_sum[r] *= factor;
      }
      mode[r] = new_mode;
      exponent[r] = e;
      long double sum = 0;
      for (Index j = 0; j < visible; ++j) {
        const Scalar t = row[j];
        Scalar w = 0;
        if (t == t) {
          if (new_mode == kInfinite) {
            w = std::fabs(t) == inf ? Scalar(1) : Scalar(0);
          } else if (new_mode == kZero) {
            w = 1;
          } else {
            w = even_power(std::ldexp(t, -e), p);
          }
        }
        row[j] = w;
        sum += w;
      }
      running_sum[r] += sum;
    }
    ob.noalias() += s * v.middleRows(j0, nk);
  });
  for (Index r = 0; r < bq; ++r) {
    if (nan_row[r]) {
      ob.row(r).setConstant(nan);
    } else if (mode[r] == kEmpty) {
      ob.row(r).setZero();
    } else {
      ob.row(r) *= static_cast<Scalar>(1.0L / running_sum[r]);
    }
  }
}

// The forward pass of query rows [i0, i0 + bq) with PolynomialSoftmax weights and a public-bound
// shift (what an encrypted pipeline computes: no max, so nothing to rescale): w_ij =
// E(t_ij - B) / sum_j E(t_ij - B), E the configured polynomial exp (clipped to [-R, 0], so scores
// above B count as B), the configured reciprocal of the sum (range from the number of visible
// keys) at the end. Masked keys are left out.
template <class Scalar, class QM, class KM, class VM, class MaskM, class OM, class PolynomialWeight>
void attention_forward_block_polynomial(const QM& q, const KM& k, const VM& v, const MaskM* mask,
                                        OM& o, Index i0, Index bq,
                                        const AttentionPlan<Scalar>& plan,
                                        const PolynomialWeight& weight) {
  const Scalar inf = std::numeric_limits<Scalar>::infinity();
  const Index lq = q.rows(), lk = k.rows();
  const ScoreTransform<Scalar>& f = plan.transform;
  const Scalar bound = static_cast<Scalar>(weight.options().bound);
  const auto& e = weight.exp_approx();
  alignas(64) Scalar buffer[kAttentionMaxBlockQ * kAttentionMaxBlockK];
  alignas(64) Scalar mask_stage[kAttentionMaxBlockK];  // a converted mask row (other types)
  long double running_sum[kAttentionMaxBlockQ];
  Index kept[kAttentionMaxBlockQ];
  bool nan_row[kAttentionMaxBlockQ];
  for (Index r = 0; r < bq; ++r) {
    running_sum[r] = 0;
    kept[r] = 0;
    nan_row[r] = false;
  }
  auto ob = o.middleRows(i0, bq);
  ob.setZero();
  for_each_key_block(q, k, i0, bq, plan, buffer, [&](Index j0, Index nk, auto& s) {
    for (Index r = 0; r < bq; ++r) {
      Scalar* row = buffer + r * nk;
      const Index visible = attention_visible(i0 + r, j0, nk, lq, lk, plan.causal);
      const Span<const Scalar> ms =
          attention_mask_span<Scalar>(mask, i0 + r, j0, visible, mask_stage);
      std::fill(row + visible, row + nk, Scalar(0));
      long double sum = 0;
      for (Index j = 0; j < visible; ++j) {
        Scalar t = f.scale * row[j];
        if (f.has_cap())
          t = f.cap * std::tanh(t / f.cap);
        const bool masked_score = t == -inf;
        if (ms.size != 0)
          t = f.slope * ms[j] == -inf ? -inf : t + f.slope * ms[j];
        if (t != t) {
          nan_row[r] = true;
          row[j] = 0;
          continue;
        }
        if (masked_score || t == -inf) {
          row[j] = 0;
          continue;
        }
        row[j] = e.template evaluate_scalar<Scalar>(t - bound);
        sum += row[j];
        ++kept[r];
      }
      running_sum[r] += sum;
    }
    ob.noalias() += s * v.middleRows(j0, nk);
  });
  for (Index r = 0; r < bq; ++r) {
    const Scalar sum = static_cast<Scalar>(running_sum[r]);
    if (nan_row[r] || sum != sum) {
      ob.row(r).setConstant(std::numeric_limits<Scalar>::quiet_NaN());
    } else if (kept[r] == 0 || sum == Scalar(0)) {
      ob.row(r).setZero();
    } else {
      ob.row(r) *= weight.template reciprocal_of<Scalar>(sum, kept[r]);
    }
  }
}

// The backward pass (FlashAttention-2's recomputation) of query rows [i0, i0 + bq): adds their
// terms to dQ's rows (zeroed by the caller), to dK and to dV.
template <class Scalar, class QM, class KM, class VM, class MaskM, class OM, class LM, class DOM,
          class DQ, class DK, class DV>
void attention_backward_block(const QM& q, const KM& k, const VM& v, const MaskM* mask, const OM& o,
                              const LM& lse, const DOM& dout, DQ& dq, DK& dk, DV& dv, Index i0,
                              Index bq, const AttentionPlan<Scalar>& plan) {
  const Scalar inf = std::numeric_limits<Scalar>::infinity();
  const Index lq = q.rows(), lk = k.rows();
  alignas(64) Scalar p_buffer[kAttentionMaxBlockQ * kAttentionMaxBlockK];
  alignas(64) Scalar ds_buffer[kAttentionMaxBlockQ * kAttentionMaxBlockK];
  alignas(64) Scalar mask_stage[kAttentionMaxBlockK];  // a converted mask row (other types)
  Scalar delta[kAttentionMaxBlockQ];
  const ScoreTransform<Scalar>& f = plan.transform;
  for (Index r = 0; r < bq; ++r)
    delta[r] = dout.row(i0 + r).cwiseProduct(o.row(i0 + r)).sum();
  const auto qb = q.middleRows(i0, bq);
  const auto dob = dout.middleRows(i0, bq);
  for_each_key_block(q, k, i0, bq, plan, p_buffer, [&](Index j0, Index nk, auto& p) {
    Eigen::Map<RowMajorMatrix<Scalar>> ds(ds_buffer, bq, nk);
    ds.noalias() = dob * v.middleRows(j0, nk).transpose();  // dP
    for (Index r = 0; r < bq; ++r) {
      const Index visible = attention_visible(i0 + r, j0, nk, lq, lk, plan.causal);
      const Span<const Scalar> ms =
          attention_mask_span<Scalar>(mask, i0 + r, j0, visible, mask_stage);
      const Scalar row_lse = lse[i0 + r];
      for (Index j = 0; j < nk; ++j) {
        Scalar weight = 0, slope_of_cap = 1;
        if (j < visible) {
          const Scalar pre = f.scale * p(r, j);
          const Scalar capped = f.has_cap() ? f.cap * std::tanh(pre / f.cap) : pre;
          if (f.has_cap())
            slope_of_cap = Scalar(1) - (capped / f.cap) * (capped / f.cap);
          Scalar t = capped;
          if (ms.size != 0) {
            const Scalar mm = f.slope * ms[j];
            t = mm == -inf ? -inf : t + mm;
          }
          if (pre == -inf)
            t = -inf;
          if (row_lse != row_lse || t != t) {
            weight = std::numeric_limits<Scalar>::quiet_NaN();
          } else if (row_lse != -inf && row_lse != inf && t != -inf) {
            weight = std::exp(t - row_lse);
          }  // masked keys, all-masked rows and +inf rows (locally constant): 0
        }
        p(r, j) = weight;
        ds(r, j) =
            weight == 0 ? Scalar(0) : weight * (ds(r, j) - delta[r]) * slope_of_cap * f.scale;
      }
    }
    dv.middleRows(j0, nk).noalias() += p.transpose() * dob;
    dq.middleRows(i0, bq).noalias() += ds * k.middleRows(j0, nk);
    dk.middleRows(j0, nk).noalias() += ds.transpose() * qb;
  });
}

// The backward pass, sequential: dQ, dK, dV are overwritten.
template <class Scalar, class QM, class KM, class VM, class MaskM, class OM, class LM, class DOM,
          class DQ, class DK, class DV>
void attention_backward(const QM& q, const KM& k, const VM& v, const MaskM* mask, const OM& o,
                        const LM& lse, const DOM& dout, DQ& dq, DK& dk, DV& dv,
                        const AttentionPlan<Scalar>& plan) {
  dq.setZero();
  dk.setZero();
  dv.setZero();
  for (Index i0 = 0; i0 < q.rows(); i0 += plan.block_q) {
    attention_backward_block(q, k, v, mask, o, lse, dout, dq, dk, dv, i0,
                             std::min(plan.block_q, q.rows() - i0), plan);
  }
}

// The 16-bit and mixed-type paths of Attention, forward and backward: the float (or double) code
// on exactly widened copies. K and V are widened to C once (Lk (d + dv) elements); then each query
// block [i0, i0 + n) goes to fn(i0, n, Q_b, K_b, V_b, mask_b) as an attention problem of its
// own: its Q rows and mask rows widened (n (d + lk_b) elements, mask_b null without a mask), with
// the first lk_b keys it sees (causal: j < i0 + n + Lk - Lq; the bottom-right rule on n queries and
// lk_b keys is then exactly j <= i + Lk - Lq). The float code meets the same key blocks in the same
// order as on the whole problem, so its results are bit-for-bit those of the float call on the
// widened inputs. kParallel: the blocks may run on several threads (the forward); otherwise in
// order (the backward accumulates dK and dV).
template <class C, bool kParallel, class XQ, class XK, class XV, class XM, class Fn>
void for_each_widened_query_block(const XQ& q, const XK& k_in, const XV& v_in, const XM* mask,
                                  Index block, bool causal, const Fn& fn) {
  using M = Eigen::Matrix<C, Eigen::Dynamic, Eigen::Dynamic>;
  const Index lq = q.rows(), lk = k_in.rows();
  const M k = k_in.template cast<C>();
  const M v = v_in.template cast<C>();
  const Index blocks = (lq + block - 1) / block;
  for_each_slice<kParallel>(blocks, block * (lk + 1) * (q.cols() + v.cols() + 1), [&](Index b) {
    const Index i0 = b * block, n = std::min(block, lq - i0);
    const Index lk_b = attention_key_end(i0, n, lq, lk, causal);
    const M qb = q.middleRows(i0, n).template cast<C>();
    const auto kb = k.topRows(lk_b);
    const auto vb = v.topRows(lk_b);
    if (mask != nullptr) {
      const M mb = mask->block(i0, 0, n, lk_b).template cast<C>();
      fn(i0, n, qb, kb, vb, &mb);
    } else {
      fn(i0, n, qb, kb, vb, static_cast<const M*>(nullptr));
    }
  });
}

template <class A, class B>
void require_no_overlap(const char* function, const char* out, const char* in, const A& a,
                        const B& b) {
  if constexpr (has_direct_access_v<B>) {
    if (storage_overlaps(a, b))
      fail(function, ": ", out, " must not overlap the input ", in);
  }
}

}  // namespace detail
}  // namespace softmaxlab
