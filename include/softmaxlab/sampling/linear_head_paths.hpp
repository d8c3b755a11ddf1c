// softmaxlab: the paths of LinearHeadSampler (GumbelMax, TopK, TopPMinP, RowTiles) over one token
// tile, and probabilities() of one row. Part of sampling/linear_head.hpp (included at its end, and
// including it first; its doc block states what these compute), split out so that each header
// stays short.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "linear_head.hpp"

namespace softmaxlab {

// probabilities() of the single row hr (in the compute type).
template <class XH, class XW, class XB, class P, class Scalar>
void LinearHeadSampler::probabilities_row(const XH& hr, const Eigen::MatrixBase<XW>& w,
                                          const Eigen::MatrixBase<XB>& b, P& probs,
                                          LinearHeadWorkspace::Slot<Scalar>& slot) const {
  if (path_ == Path::GumbelMax) {
    State<Scalar> st;
    gumbel_tile(hr, w, b, 0, nullptr, slot, &st, true, false);
    if (st.nan) {
      probs.setConstant(std::numeric_limits<Scalar>::quiet_NaN());
      return;
    }
    if (greedy_ ? st.index < 0
                : !st.inf_mode && st.lse_m == -std::numeric_limits<Scalar>::infinity())
      return;  // only -inf: probabilities 0
    const Scalar inf = std::numeric_limits<Scalar>::infinity();
    for_each_block(hr, w, b, slot, [&](Index c0, Index len) {
      const Scalar* z = slot.z.data();
      for (Index j = 0; j < len; ++j) {
        double p;
        if (greedy_)
          p = c0 + j == st.index ? 1.0 : 0.0;
        else if (st.inf_mode)
          p = z[j] == inf ? 1.0 / double(st.inf_count) : 0.0;
        else
          p = std::exp(static_cast<double>(static_cast<long double>(z[j] * Scalar(inv_t_))
                                           - st.lse_m - std::log(st.lse_s)));
        probs.coeffRef(c0 + j) = static_cast<Scalar>(p);
      }
    });
    return;
  }
  if (path_ == Path::TopPMinP) {
    slot.cand.resize(1);
    slot.cut.resize(1);
    cut_tile(hr, w, b, slot);
    const detail::HeadCutState& st = slot.cut[0];
    if (st.nan) {
      probs.setConstant(std::numeric_limits<Scalar>::quiet_NaN());
      return;
    }
    if (!st.overflow) {
      auto& c = slot.cand[0];
      const long double total = chain_weights(c, st, slot);
      for (std::size_t j = 0; j < c.size(); ++j)
        probs.coeffRef(c[j].second) = static_cast<Scalar>(slot.weight[j] / total);
      return;
    }
  }
  if (path_ == Path::TopK) {
    auto& cand = slot.cand;
    cand.resize(1);
    bool nan = false;
    topk_tile(hr, w, b, slot, &nan);
    if (nan) {
      probs.setConstant(std::numeric_limits<Scalar>::quiet_NaN());
      return;
    }
    const Index c = candidate_row(cand[0], slot);
    slot.probs.resize(static_cast<std::size_t>(c));
    Eigen::Map<Eigen::Matrix<Scalar, Eigen::Dynamic, 1>> p(slot.probs.data(), c);
    sampler_.probabilities(row_map(slot, c), p, slot.sampler);
    for (Index j = 0; j < c; ++j)
      probs.coeffRef(cand[0][static_cast<std::size_t>(j)].second) = p(j);
    return;
  }
  const auto z = materialize(hr, w, b, slot);
  sampler_.probabilities(z.row(0).transpose(), probs, slot.sampler);
}

// The GumbelMax path over the rows of hr (tokens n0.. of the call): states st[0..rows).
// `lse`: also the online log-sum-exp; `draw`: add the noise (else only the lse, for
// probabilities()).
template <class XH, class XW, class XB, class Scalar>
void LinearHeadSampler::gumbel_tile(const XH& hr, const Eigen::MatrixBase<XW>& w,
                                    const Eigen::MatrixBase<XB>& b, std::uint64_t stream0,
                                    const std::uint64_t* seed,
                                    LinearHeadWorkspace::Slot<Scalar>& slot, State<Scalar>* st,
                                    bool lse, bool draw) const {
  const Scalar inf = std::numeric_limits<Scalar>::infinity();
  constexpr int kWords = detail::kWordsPerUniform<Scalar>;
  const auto bl = static_cast<std::size_t>(std::min(block_, std::max<Index>(w.rows(), 1)));
  if (draw && slot.noise.size() < bl) {
    slot.noise.resize(bl);
    slot.zeros.assign(bl, Scalar(0));
    slot.words.resize(kWords * bl);
  }
  const Scalar s = static_cast<Scalar>(inv_t_);
  for_each_block(hr, w, b, slot, [&](Index c0, Index len) {
    for (Index r = 0; r < hr.rows(); ++r) {
      State<Scalar>& t = st[r];
      Scalar* z = slot.z.data() + r * len;
      if (t.nan)
        continue;
      const Scalar m = detail::max_propagate_nan(z, len);
      if (m != m) {
        t.nan = true;
        continue;
      }
      if (greedy_) {
        if (m > t.best) {
          t.best = m;
          t.index = c0 + static_cast<Index>(std::find(z, z + len, m) - z);
        }
        continue;
      }
      if (m == -inf || (t.inf_mode && m != inf))
        continue;  // nothing here can win (or enter the +inf mass)
      Philox4x32 gen(draw ? *seed : 0, stream0 + static_cast<std::uint64_t>(r));
      if (m == inf) {
        if (!t.inf_mode) {  // the +inf entries take all the mass: restart among them
          t = State<Scalar>();
          t.inf_mode = true;
        }
        Scalar* g = slot.noise.data();
        if (draw) {
          gen.discard(static_cast<unsigned long long>(kWords) * c0);
          // x = 0: the noise itself (the [1, 2) scratch may be the output: same index).
          detail::add_gumbel_noise(slot.zeros.data(), g, len, gen, slot.words.data(), g);
        }
        for (Index j = 0; j < len; ++j) {
          if (z[j] != inf)
            continue;
          ++t.inf_count;
          if (draw && (t.index < 0 || g[j] > t.best)) {
            t.best = g[j];
            t.index = c0 + j;
          }
        }
        continue;
      }
      if (s != Scalar(1)) {
        for (Index j = 0; j < len; ++j)
          z[j] *= s;
      }
      if (lse) {
        const auto part =
            detail::LogNormalizer<Scalar>::of(detail::Span<const Scalar>{z, len, 1}, Scalar(1));
        const Scalar mm = std::max(t.lse_m, part.m);
        t.lse_s = t.lse_s * std::exp(static_cast<long double>(t.lse_m) - mm)
                  + part.sum * std::exp(static_cast<long double>(part.m) - mm);
        t.lse_m = mm;
      }
      if (!draw)
        continue;
      gen.discard(static_cast<unsigned long long>(kWords) * c0);
      Scalar* y = slot.noise.data();
      const Scalar ymax = detail::add_gumbel_noise(z, y, len, gen, slot.words.data(), y);
      if (ymax > t.best) {
        const Index j = static_cast<Index>(std::find(y, y + len, ymax) - y);
        t.best = ymax;
        t.best_z = z[j];
        t.index = c0 + j;
      }
    }
  });
}

// The TopK path's candidates of the rows of hr into slot.cand[r]; nan[r] for a NaN row.
template <class XH, class XW, class XB, class Scalar>
void LinearHeadSampler::topk_tile(const XH& hr, const Eigen::MatrixBase<XW>& w,
                                  const Eigen::MatrixBase<XB>& b,
                                  LinearHeadWorkspace::Slot<Scalar>& slot, bool* nan) const {
  const Scalar inf = std::numeric_limits<Scalar>::infinity();
  const auto k = static_cast<std::size_t>(k_);
  const std::size_t cap0 = std::max(2 * k, k + 1024);
  auto& tau = slot.tau;
  auto& cap = slot.cap;
  tau.assign(static_cast<std::size_t>(hr.rows()), -inf);
  cap.assign(static_cast<std::size_t>(hr.rows()), cap0);
  for (Index r = 0; r < hr.rows(); ++r)
    slot.cand[static_cast<std::size_t>(r)].clear();
  for_each_block(hr, w, b, slot, [&](Index c0, Index len) {
    for (Index r = 0; r < hr.rows(); ++r) {
      const auto ur = static_cast<std::size_t>(r);
      if (nan[r])
        continue;
      const Scalar* z = slot.z.data() + r * len;
      const Scalar m = detail::max_propagate_nan(z, len);
      if (m != m) {
        nan[r] = true;
        continue;
      }
      if (m < tau[ur] || m == -inf)
        continue;
      auto& c = slot.cand[ur];
      for (Index j = 0; j < len; ++j) {
        if (z[j] >= tau[ur] && z[j] > -inf)
          c.emplace_back(z[j], c0 + j);
      }
      if (c.size() > cap[ur]) {
        tau[ur] = compact(c, k);
        cap[ur] = std::max(cap[ur], 2 * c.size());  // many ties at the k-th value
      }
    }
  });
  for (Index r = 0; r < hr.rows(); ++r)
    compact(slot.cand[static_cast<std::size_t>(r)], k);
}

// tile() on the tile's rows hr in the compute type.
template <class XH, class XW, class XB, class T, class L, class Scalar>
void LinearHeadSampler::tile_rows(const XH& hr, const Eigen::MatrixBase<XW>& w,
                                  const Eigen::MatrixBase<XB>& b, std::uint64_t seed, T& tokens,
                                  L* lp, Index n0, std::uint64_t first_stream,
                                  LinearHeadWorkspace::Slot<Scalar>& slot) const {
  using TS = typename T::Scalar;
  const Index nt = hr.rows();
  const std::uint64_t stream0 = first_stream + static_cast<std::uint64_t>(n0);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  if (path_ == Path::GumbelMax) {
    State<Scalar> st[64];
    for (Index r0 = 0; r0 < nt; r0 += 64) {  // a tile larger than 64: sub-tiles
      const Index rows = std::min<Index>(64, nt - r0);
      for (Index r = 0; r < rows; ++r)
        st[r] = State<Scalar>();
      gumbel_tile(hr.middleRows(r0, rows), w, b, stream0 + static_cast<std::uint64_t>(r0), &seed,
                  slot, st, lp != nullptr, true);
      for (Index r = 0; r < rows; ++r) {
        const State<Scalar>& t = st[r];
        const Index token = t.nan ? -1 : t.index;
        tokens.coeffRef(n0 + r0 + r) = static_cast<TS>(token);
        if (lp != nullptr) {
          double v = nan;
          if (token >= 0)
            v = greedy_      ? 0.0
                : t.inf_mode ? -std::log(double(t.inf_count))
                             : static_cast<double>(static_cast<long double>(t.best_z) - t.lse_m
                                                   - std::log(t.lse_s));
          lp->coeffRef(n0 + r0 + r) = v;
        }
      }
    }
    return;
  }
  const auto draw_row = [&](Index r, const auto& row) {
    Philox4x32 gen(seed, stream0 + static_cast<std::uint64_t>(r));
    const Index t = sampler_.sample(row, gen, slot.sampler);
    return t;
  };
  const auto log_p = [&](Index t, const auto& row) {
    if (t < 0)
      return nan;
    slot.probs.resize(static_cast<std::size_t>(row.size()));
    Eigen::Map<Eigen::Matrix<Scalar, Eigen::Dynamic, 1>> p(slot.probs.data(), row.size());
    sampler_.probabilities(row, p, slot.sampler);
    return std::log(static_cast<double>(p(t)));
  };
  if (path_ == Path::TopK) {
    slot.cand.resize(static_cast<std::size_t>(std::max<Index>(nt, 1)));
    bool nan_rows[64];
    for (Index r0 = 0; r0 < nt; r0 += 64) {
      const Index rows = std::min<Index>(64, nt - r0);
      std::fill(nan_rows, nan_rows + rows, false);
      topk_tile(hr.middleRows(r0, rows), w, b, slot, nan_rows);
      for (Index r = 0; r < rows; ++r) {
        Index token = -1;
        double v = nan;
        if (!nan_rows[r]) {
          auto& c = slot.cand[static_cast<std::size_t>(r)];
          const Index count = candidate_row(c, slot);
          const auto row = row_map(slot, count);
          const Index j = draw_row(r0 + r, row);
          if (j >= 0) {
            token = c[static_cast<std::size_t>(j)].second;
            if (lp != nullptr)
              v = log_p(j, row);
          }
        }
        tokens.coeffRef(n0 + r0 + r) = static_cast<TS>(token);
        if (lp != nullptr)
          lp->coeffRef(n0 + r0 + r) = v;
      }
    }
    return;
  }
  if (path_ == Path::TopPMinP) {
    slot.cand.resize(static_cast<std::size_t>(nt));
    slot.cut.resize(static_cast<std::size_t>(nt));
    cut_tile(hr, w, b, slot);
    for (Index r = 0; r < nt; ++r) {
      const detail::HeadCutState& st = slot.cut[static_cast<std::size_t>(r)];
      Index token = -1;
      double v = nan;
      if (st.overflow) {  // too many candidates: this row's logits, as RowTiles
        const auto z = materialize(hr.middleRows(r, 1), w, b, slot);
        const auto row = z.row(0).transpose();
        token = draw_row(r, row);
        if (lp != nullptr)
          v = log_p(token, row);
      } else if (!st.nan) {
        auto& c = slot.cand[static_cast<std::size_t>(r)];
        const long double total = chain_weights(c, st, slot);
        Philox4x32 gen(seed, stream0 + static_cast<std::uint64_t>(r));
        const bool by_class =
            sampler_.fast_path() || st.m == std::numeric_limits<double>::infinity();
        const std::ptrdiff_t j =
            detail::head_chain_draw<Scalar>(slot.weight, total, by_class, gen, slot.order);
        if (j >= 0) {
          token = c[static_cast<std::size_t>(j)].second;
          v = std::log(static_cast<double>(slot.weight[static_cast<std::size_t>(j)] / total));
        }
      }
      tokens.coeffRef(n0 + r) = static_cast<TS>(token);
      if (lp != nullptr)
        lp->coeffRef(n0 + r) = v;
    }
    return;
  }
  const auto z = materialize(hr, w, b, slot);
  for (Index r = 0; r < nt; ++r) {
    const auto row = z.row(r).transpose();
    const Index t = draw_row(r, row);
    tokens.coeffRef(n0 + r) = static_cast<TS>(t);
    if (lp != nullptr)
      lp->coeffRef(n0 + r) = log_p(t, row);
  }
}

// The TopPMinP path's candidates of the rows of hr into slot.cand[r] (sorted by class), the
// per-row state into slot.cut[r] (see detail/head_candidates.hpp for the drop rule).
template <class XH, class XW, class XB, class Scalar>
void LinearHeadSampler::cut_tile(const XH& hr, const Eigen::MatrixBase<XW>& w,
                                 const Eigen::MatrixBase<XB>& b,
                                 LinearHeadWorkspace::Slot<Scalar>& slot) const {
  const Scalar inf = std::numeric_limits<Scalar>::infinity();
  const Index v = w.rows();
  const std::size_t cap = candidate_cap(v);
  const bool need_lse = chain_.top_p < 1.0 && chain_.top_p_first;
  const auto s = static_cast<Scalar>(1.0 / chain_.t_top_p);
  // A buffer never holds more than trigger + B entries: reserved so, it does not double.
  const auto bl = static_cast<std::size_t>(std::min(block_, std::max<Index>(v, 1)));
  for (Index r = 0; r < hr.rows(); ++r) {
    slot.cut[static_cast<std::size_t>(r)] = detail::HeadCutState();
    slot.cut[static_cast<std::size_t>(r)].trigger = std::min<std::size_t>(2048, cap);
    slot.cand[static_cast<std::size_t>(r)].clear();
    slot.cand[static_cast<std::size_t>(r)].reserve(std::min<std::size_t>(2048, cap) + bl);
  }
  const auto prune = [&](std::vector<std::pair<Scalar, Index>>& c, detail::HeadCutState& st) {
    c.erase(std::remove_if(c.begin(), c.end(),
                           [&](const auto& e) { return double(e.first) < st.threshold; }),
            c.end());
    st.overflow = c.size() > cap;
  };
  for_each_block(hr, w, b, slot, [&](Index c0, Index len) {
    for (Index r = 0; r < hr.rows(); ++r) {
      detail::HeadCutState& st = slot.cut[static_cast<std::size_t>(r)];
      if (st.nan || st.overflow)
        continue;
      const Scalar* z = slot.z.data() + r * len;
      Scalar bm;
      if (need_lse) {
        const auto part =
            detail::LogNormalizer<Scalar>::of(detail::Span<const Scalar>{z, len, 1}, s);
        bm = part.m;
        if (part.kind == detail::RowKind::Regular)  // the exact merge of two [max, sum]
          detail::merge_normalizer_state(st.lse_m, st.lse_s, double(part.m) * double(s), part.sum,
                                         1.0L);
      } else {
        bm = detail::max_propagate_nan(z, len);
      }
      if (bm != bm) {
        st.nan = true;
        continue;
      }
      if (bm == -inf)
        continue;
      auto& c = slot.cand[static_cast<std::size_t>(r)];
      if (double(bm) > st.m) {
        if (bm == inf)
          c.clear();  // +inf logits take all the mass
        st.m = double(bm);
      }
      st.threshold = chain_.threshold(st.m, st.lse(), v);
      if (double(bm) < st.threshold)
        continue;
      for (Index j = 0; j < len; ++j) {
        if (double(z[j]) >= st.threshold && z[j] > -inf)
          c.emplace_back(z[j], c0 + j);
      }
      if (c.size() > st.trigger) {
        prune(c, st);
        st.trigger = std::max(st.trigger, 2 * c.size());
        c.reserve(st.trigger + bl);
      }
    }
  });
  for (Index r = 0; r < hr.rows(); ++r) {
    detail::HeadCutState& st = slot.cut[static_cast<std::size_t>(r)];
    if (!st.nan && !st.overflow)
      prune(slot.cand[static_cast<std::size_t>(r)], st);
  }
}

}  // namespace softmaxlab
