// softmaxlab internals: the backward pass of MultiHeadAttention (multi_head_attention.hpp has the
// public doc block): FlashAttention-2's recomputation (Dao 2023, Algorithm 2) on the tiles of the
// forward pass, with the gradients of a KV group's K and V summed over its query heads.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "common.hpp"
#include "mha_forward.hpp"

namespace softmaxlab {
namespace detail {

// dK and dV of KV group g (gk: Lk x d, gv: Lk x dv of C, zeroed by the caller: the caller's dK
// and dV columns when they have the compute type, else accumulators) and dQ of
// its query heads (written into dq through write_dq(h, i0, n, rows of the tile)) from every query
// block in order, so that the sums over the group's heads and the query blocks are deterministic.
// P_ij = exp(t_ij - lse_i) is rebuilt from the lse given; D_i = <dO_i, O_i>; dS = P (dP - D) times
// the cap's derivative and the scale (the ALiBi term is a constant of the positions).
template <class C, class XQ, class XK, class XV, class XO, class XL, class XdO, class GK, class GV,
          class WriteDq>
void mha_backward_group(const XQ& q, const XK& k, const XV& v, const XO& o, const XL& lse,
                        const XdO& dout, Index g, const MhaPlan<C>& plan, GK& gk, GV& gv,
                        const WriteDq& write_dq) {
  static_assert(std::is_same_v<typename GK::Scalar, C> && std::is_same_v<typename GV::Scalar, C>,
                "softmaxlab: the dK and dV accumulators must have the compute type");
  using RowMat = Eigen::Matrix<C, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const C inf = std::numeric_limits<C>::infinity();
  const Index group = plan.group, d = plan.d, dv = plan.dv, bq = plan.rows_per_head;
  const Index lq = q.rows(), rows_max = group * bq;
  const MhaBand& band = plan.band;
  std::vector<C> buffer(static_cast<std::size_t>(rows_max * (2 * d + dv + 2 * kMhaBlockK + 2)
                                                 + kMhaBlockK * (d + dv)));
  C* const qbuf = buffer.data();
  C* const dqbuf = qbuf + rows_max * d;
  C* const dobuf = dqbuf + rows_max * d;
  C* const pbuf = dobuf + rows_max * dv;
  C* const dsbuf = pbuf + rows_max * kMhaBlockK;
  C* const delta = dsbuf + rows_max * kMhaBlockK;
  C* const row_lse = delta + rows_max;
  C* const kbuf = row_lse + rows_max;
  C* const vbuf = kbuf + kMhaBlockK * d;
  for (Index i0 = 0; i0 < lq; i0 += bq) {
    const Index n = std::min(bq, lq - i0), rows = group * n;
    Eigen::Map<RowMat> qt(qbuf, rows, d), dqt(dqbuf, rows, d), dot(dobuf, rows, dv);
    for (Index hh = 0; hh < group; ++hh) {
      const Index h = g * group + hh;
      qt.middleRows(hh * n, n) = q.block(i0, h * d, n, d).template cast<C>();
      dot.middleRows(hh * n, n) = dout.block(i0, h * dv, n, dv).template cast<C>();
      for (Index r = 0; r < n; ++r) {
        delta[hh * n + r] = (dout.block(i0 + r, h * dv, 1, dv).template cast<C>().array()
                             * o.block(i0 + r, h * dv, 1, dv).template cast<C>().array())
                                .sum();
        row_lse[hh * n + r] = static_cast<C>(lse.coeff(i0 + r, h));
      }
    }
    dqt.setZero();
    const Index first = band.begin(i0), last = band.end(i0 + n - 1);
    for (Index j0 = first / kMhaBlockK * kMhaBlockK; j0 < last; j0 += kMhaBlockK) {
      const Index nk = std::min(kMhaBlockK, last - j0);
      Eigen::Map<RowMat> kb(kbuf, nk, d), vb(vbuf, nk, dv), p(pbuf, rows, nk), ds(dsbuf, rows, nk);
      mha_load_block(k, j0, g * d, nk, d, kbuf);
      mha_load_block(v, j0, g * dv, nk, dv, vbuf);
      p.noalias() = qt * kb.transpose();
      ds.noalias() = dot * vb.transpose();  // dP
      for (Index r = 0; r < rows; ++r) {
        const Index hh = r / n, i = i0 + r % n;
        const Index a = std::clamp<Index>(band.begin(i) - j0, 0, nk);
        const Index b = std::max(a, std::clamp<Index>(band.end(i) - j0, 0, nk));
        const C l = row_lse[r];
        const C slope = plan.slopes != nullptr ? static_cast<C>(plan.slopes[g * group + hh]) : 0;
        C mask_row[kMhaBlockK];  // the mask's added term for keys [j0 + a, j0 + b), or 0
        std::fill(mask_row, mask_row + (b - a), C(0));
        plan.add_mask(i, j0 + a, b - a, mask_row);
        for (Index j = 0; j < nk; ++j) {
          C weight = 0, cap_slope = 1;
          if (j >= a && j < b) {
            const C pre = plan.scale * p(r, j);
            C t = pre;
            if (plan.cap != C(0)) {
              t = plan.cap * std::tanh(pre / plan.cap);
              cap_slope = C(1) - (t / plan.cap) * (t / plan.cap);
            }
            if (plan.slopes != nullptr)
              t -= slope * static_cast<C>(std::abs(j0 + j - band.diagonal(i)));
            if (plan.mask != nullptr) {
              const C added = mask_row[j - a];  // slope m, or -inf where masked
              t = added == -inf ? added : t + added;
            }
            if (l != l || t != t)
              weight = std::numeric_limits<C>::quiet_NaN();
            else if (l != -inf && l != inf && t != -inf)
              weight = std::exp(t - l);
          }
          p(r, j) = weight;
          ds(r, j) = weight == 0 ? C(0) : weight * (ds(r, j) - delta[r]) * cap_slope * plan.scale;
        }
      }
      gv.middleRows(j0, nk).noalias() += p.transpose() * dot;
      gk.middleRows(j0, nk).noalias() += ds.transpose() * qt;
      dqt.noalias() += ds * kb;
    }
    write_dq(i0, n, dqt);
  }
}

}  // namespace detail
}  // namespace softmaxlab
