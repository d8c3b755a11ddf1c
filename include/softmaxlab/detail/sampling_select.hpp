// softmaxlab: the selection helpers of the sampler (sampler.hpp) and of top_k_log_softmax: a 53-bit
// uniform from any generator, contiguous rows, block maxima, the k-th largest block max, the
// candidate gather and the streaming heap. Their exactness is checked through tests/test_sampling.cpp
// and tests/test_sampler_chain.cpp (against sorts and long double).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <type_traits>
#include <utility>
#include <vector>

#include "checks.hpp"
#include "common.hpp"
#include "functor_base.hpp"
#include "kernels.hpp"

namespace softmaxlab {
namespace detail {

// A 53-bit uniform in [0, 1) from any UniformRandomBitGenerator (see the doc block).
template <class Gen>
double uniform53(Gen& gen) {
  using R = typename Gen::result_type;
  constexpr auto range = static_cast<unsigned long long>(Gen::max() - Gen::min());
  std::uint64_t bits;
  if constexpr (range == 0xFFFFFFFFull) {
    const std::uint64_t hi = static_cast<std::uint32_t>(static_cast<R>(gen() - Gen::min()));
    const std::uint64_t lo = static_cast<std::uint32_t>(static_cast<R>(gen() - Gen::min()));
    bits = hi << 32 | lo;
  } else if constexpr (range == ~0ull) {
    bits = static_cast<std::uint64_t>(gen() - Gen::min());
  } else {
    std::uniform_int_distribution<std::uint64_t> words(0, ~std::uint64_t{0});
    bits = words(gen);
  }
  return static_cast<double>(bits >> 11) * 0x1p-53;
}

// Contiguous view of a 1-D Eigen input: its own storage when it has unit stride, else a copy in
// `row` (no allocation once `row` is large enough).
template <class Scalar, class XprX>
const Scalar* contiguous_row(const Eigen::DenseBase<XprX>& x, std::vector<Scalar>& row) {
  if constexpr (has_direct_access_v<XprX>) {
    const auto& xd = x.derived();
    const Index stride = xd.rows() == 1 ? xd.colStride() : xd.rowStride();
    if (stride == 1 || xd.size() <= 1)
      return xd.data();
  }
  if (row.size() < static_cast<std::size_t>(x.size()))
    row.resize(static_cast<std::size_t>(x.size()));
  for (Index i = 0; i < x.size(); ++i)
    row[static_cast<std::size_t>(i)] = x.derived().coeff(i);
  return row.data();
}

inline constexpr Index kSelectBlock = 64;

// The max of each block of kSelectBlock logits (the last block may be shorter) into `out`, and
// the row's max (NaN when the row holds a NaN): one vectorized pass, the max pass of Softmax with
// a stop every 64 logits, that lets the selection passes skip every block that cannot hold a
// candidate. Each block's packets are reduced by predux_max (a few shuffles), not lane by lane:
// the lane loop cost as much as a whole Softmax pass. predux_max may drop a NaN, so the max of a
// block holding a NaN is unspecified; the row's max, accumulated NaN-propagating, reports it, and
// the callers read the block maxima only for rows without NaN.
template <class Scalar>
Scalar block_maxima(const Scalar* x, Index n, std::vector<Scalar>& out) {
  using namespace Eigen::internal;
  using Packet = PacketOf<Scalar>;
  constexpr int P = kPacketSize<Scalar>;
  static_assert(kSelectBlock % (2 * P) == 0, "a block must hold an even number of packets");
  const Index blocks = (n + kSelectBlock - 1) / kSelectBlock;
  out.resize(static_cast<std::size_t>(blocks));
  Packet row = pset1<Packet>(-std::numeric_limits<Scalar>::infinity());
  Index b = 0;
  for (; (b + 1) * kSelectBlock <= n; ++b) {
    const Scalar* xb = x + b * kSelectBlock;
    Packet p0 = ploadu<Packet>(xb), p1 = ploadu<Packet>(xb + P);
    for (Index j = 2 * P; j < kSelectBlock; j += 2 * P) {
      p0 = pmax<Eigen::PropagateNaN>(p0, ploadu<Packet>(xb + j));
      p1 = pmax<Eigen::PropagateNaN>(p1, ploadu<Packet>(xb + j + P));
    }
    const Packet pb = pmax<Eigen::PropagateNaN>(p0, p1);
    row = pmax<Eigen::PropagateNaN>(row, pb);
    out[static_cast<std::size_t>(b)] = predux_max(pb);
  }
  alignas(64) Scalar lanes[P];
  pstore(lanes, row);
  Scalar m = lanes[0];
  for (int k = 1; k < P; ++k)
    m = (lanes[k] != lanes[k] || lanes[k] > m) ? lanes[k] : m;
  if (b < blocks) {
    const Scalar bm = max_propagate_nan(x + b * kSelectBlock, n - b * kSelectBlock);
    out[static_cast<std::size_t>(b)] = bm;
    m = (bm != bm || bm > m) ? bm : m;
  }
  return m;
}

// Offers v to the min-heap of the k largest values seen (heap.front() its smallest).
template <class Scalar>
void offer_to_heap(std::vector<Scalar>& heap, Index k, Scalar v) {
  const auto greater = std::greater<Scalar>();
  if (static_cast<Index>(heap.size()) < k) {
    heap.push_back(v);
    std::push_heap(heap.begin(), heap.end(), greater);
  } else if (v > heap.front()) {
    std::pop_heap(heap.begin(), heap.end(), greater);
    heap.back() = v;
    std::push_heap(heap.begin(), heap.end(), greater);
  }
}

// The k-th largest finite value of x (k >= 1, no NaN), or the smallest finite value when fewer
// than k are finite; -inf when none is. A min-heap of the k largest values; once it is full, a
// block whose max is <= its smallest value is skipped without being read.
template <class Scalar>
Scalar kth_largest(const Scalar* x, Index n, Index k, const std::vector<Scalar>& block_max,
                   std::vector<Scalar>& heap, const Scalar* const* src = nullptr) {
  const Scalar inf = std::numeric_limits<Scalar>::infinity();
  heap.clear();
  if (heap.capacity() < static_cast<std::size_t>(k))
    heap.reserve(static_cast<std::size_t>(k));
  for (Index i = 0, b = 0; i < n; i += kSelectBlock, ++b) {
    const Index end = std::min(n, i + kSelectBlock);
    if (static_cast<Index>(heap.size()) == k
        && block_max[static_cast<std::size_t>(b)] <= heap.front())
      continue;
    const Scalar* xb = src != nullptr ? src[b] : x + i;  // this block's logits
    for (Index j = i; j < end; ++j) {
      const Scalar v = xb[j - i];
      if (v != -inf)
        offer_to_heap(heap, k, v);
    }
  }
  return heap.empty() ? -inf : heap.front();
}

// Appends (x_i, i) for every x_i >= threshold, skipping blocks by their max. src (optional):
// where each block's logits are read (patched blocks of a sparse overlay), else x.
template <class Scalar>
void gather_at_least(const Scalar* x, Index n, Scalar threshold,
                     const std::vector<Scalar>& block_max,
                     std::vector<std::pair<Scalar, Index>>& out,
                     const Scalar* const* src = nullptr) {
  out.clear();
  for (Index i = 0, b = 0; i < n; i += kSelectBlock, ++b) {
    if (block_max[static_cast<std::size_t>(b)] < threshold)
      continue;
    const Index end = std::min(n, i + kSelectBlock);
    const Scalar* xb = src != nullptr ? src[b] : x + i;
    for (Index j = i; j < end; ++j) {
      if (xb[j - i] >= threshold)
        out.emplace_back(xb[j - i], j);
    }
  }
}

// Decreasing logit, then increasing index: a deterministic order of the candidates.
template <class Scalar>
bool by_decreasing_logit(const std::pair<Scalar, Index>& a, const std::pair<Scalar, Index>& b) {
  return a.first > b.first || (a.first == b.first && a.second < b.second);
}

// The number of entries of a >= t, on packets and without branches (the count per lane is exact
// in Scalar below 2^24).
template <class Scalar>
Index count_at_least(const Scalar* a, Index n, Scalar t) {
  using namespace Eigen::internal;
  using Packet = PacketOf<Scalar>;
  constexpr int P = kPacketSize<Scalar>;
  const Packet pt = pset1<Packet>(t), one = pset1<Packet>(Scalar(1));
  Packet acc = pset1<Packet>(Scalar(0));
  Index i = 0;
  for (; i + P <= n; i += P)
    acc = padd(acc, pand(pcmp_le(pt, ploadu<Packet>(a + i)), one));
  Index c = static_cast<Index>(predux(acc));
  for (; i < n; ++i)
    c += a[i] >= t ? 1 : 0;
  return c;
}

// The candidates of top-k in `out`: (x_i, i) for every finite x_i >= the k-th largest finite
// value (every finite x_i when fewer than k are finite), sorted by decreasing logit, then index;
// ties at the k-th value are all kept. k >= 1, no NaN and no +inf in x. Exact, with the block
// maxima as the filter: when at least k block maxima are >= tau, they are k entries at distinct
// positions, so the k-th largest entry is >= tau; and an entry >= tau lies in a block whose max is
// >= tau. Gathering the finite entries >= tau of those blocks therefore yields every entry >= the
// k-th largest, and the k-th of them in decreasing order is the k-th largest of the row. tau is
// found by bisection on the block maxima's counts (branch-free passes over V / kSelectBlock
// values: a selection by comparisons mispredicted a branch per block maximum and cost as much as
// the pass over the row), until at most 2k blocks are >= tau; the gather then reads about k to 2k
// blocks when the large logits are spread over the row, and all of V only when most blocks share
// the same max (e.g. a constant row) or there are fewer than k blocks; then the kept entries
// alone are sorted.
// src (optional): where each block's logits are read.
template <class Scalar>
void top_k_candidates(Index n, Index k, const std::vector<Scalar>& block_max,
                      std::vector<std::pair<Scalar, Index>>& out, const Scalar* x,
                      const Scalar* const* src = nullptr) {
  const Scalar inf = std::numeric_limits<Scalar>::infinity();
  const Scalar* bmax = block_max.data();
  const auto blocks = static_cast<Index>(block_max.size());
  // lo, hi: the smallest finite and the largest block max (packets: -inf lanes read as +inf for
  // the min).
  using namespace Eigen::internal;
  using Packet = PacketOf<Scalar>;
  constexpr int P = kPacketSize<Scalar>;
  const Packet ninf = pset1<Packet>(-inf), pinf = pset1<Packet>(inf);
  Packet pmn = pinf, pmx = ninf;
  Index i0 = 0;
  for (; i0 + P <= blocks; i0 += P) {
    const Packet p = ploadu<Packet>(bmax + i0);
    pmx = pmax(pmx, p);
    pmn = pmin(pmn, pselect(pcmp_eq(p, ninf), pinf, p));
  }
  Scalar lo = predux_min(pmn), hi = predux_max(pmx);
  for (; i0 < blocks; ++i0) {
    lo = bmax[i0] > -inf && bmax[i0] < lo ? bmax[i0] : lo;
    hi = bmax[i0] > hi ? bmax[i0] : hi;
  }
  // Fewer than k finite blocks: every finite entry is a candidate. Else lo keeps count >= k, hi
  // (while above lo) count < k.
  Scalar tau = -inf;
  if (hi > -inf && count_at_least(bmax, blocks, lo) >= k) {
    if (count_at_least(bmax, blocks, hi) >= k) {
      lo = hi;
    } else {
      for (int step = 0; step < 64; ++step) {
        const Scalar mid = lo / 2 + hi / 2;
        if (!(mid > lo && mid < hi))
          break;
        const Index c = count_at_least(bmax, blocks, mid);
        if (c >= k) {
          lo = mid;
          if (c <= 2 * k)
            break;
        } else {
          hi = mid;
        }
      }
    }
    tau = lo;
  }
  // The gather: a packet compare skips the packets of a block without an entry >= tau (a read
  // block holds about one candidate).
  const Packet ptau = pset1<Packet>(tau);
  // The blocks to read are known before any is read: their cache lines are requested first, so
  // that their latencies overlap (the row may have left the cache since block_maxima read it).
  for (Index i = 0, b = 0; i < n; i += kSelectBlock, ++b) {
    const Scalar bm = block_max[static_cast<std::size_t>(b)];
    if (bm < tau || bm == -inf)
      continue;
    const Scalar* xb = src != nullptr ? src[b] : x + i;
    for (std::uintptr_t off = 0; off < kSelectBlock * sizeof(Scalar); off += 64)
      prefetch_read(xb, off);
  }
  out.clear();
  for (Index i = 0, b = 0; i < n; i += kSelectBlock, ++b) {
    const Scalar bm = block_max[static_cast<std::size_t>(b)];
    if (bm < tau || bm == -inf)
      continue;
    const Index end = std::min(n, i + kSelectBlock);
    const Scalar* xb = (src != nullptr ? src[b] : x + i) - i;  // xb[j]: entry j
    for (Index j = i; j < end; j += P) {
      const Index stop = std::min(end, j + P);
      if (stop - j == P && !predux_any(pcmp_le(ptau, ploadu<Packet>(xb + j))))
        continue;
      for (Index l = j; l < stop; ++l) {
        if (xb[l] >= tau && xb[l] > -inf)
          out.emplace_back(xb[l], l);
      }
    }
  }
  // The k-th in decreasing order by nth_element (O(gathered)); after it every entry past k - 1 is
  // <= the k-th value, and those equal to it (ties) join the kept prefix, then only that is sorted
  // (a gather of all V when fewer than k blocks exist, e.g. k = 1024 and V = 32,000).
  if (static_cast<Index>(out.size()) > k) {
    const auto kth_at = out.begin() + (k - 1);
    std::nth_element(out.begin(), kth_at, out.end(), by_decreasing_logit<Scalar>);
    const Scalar kth = kth_at->first;
    out.erase(
        std::partition(kth_at + 1, out.end(), [kth](const auto& e) { return e.first == kth; }),
        out.end());
  }
  std::sort(out.begin(), out.end(), by_decreasing_logit<Scalar>);
}

// verify's check of a draft row in one vectorized pass: returns whether every q_i is in [0, 1] (a
// NaN fails) and sets `sum` to their sum (Kahan-compensated per lane: about one rounding of
// Scalar, where the tolerance checked is 1e-3).
template <class Scalar>
bool probability_row_check(const Scalar* q, Index n, double& sum) {
  using namespace Eigen::internal;
  using Packet = PacketOf<Scalar>;
  constexpr int P = kPacketSize<Scalar>;
  Packet lo = pset1<Packet>(Scalar(0)), hi = lo;
  CompensatedSum<Scalar> s0, s1;
  Index i = 0;
  for (; i + 2 * P <= n; i += 2 * P) {
    const Packet a = ploadu<Packet>(q + i), c = ploadu<Packet>(q + i + P);
    lo = pmin<Eigen::PropagateNaN>(lo, pmin<Eigen::PropagateNaN>(a, c));
    hi = pmax<Eigen::PropagateNaN>(hi, pmax<Eigen::PropagateNaN>(a, c));
    s0.add(a);
    s1.add(c);
  }
  for (; i < n; i += P) {
    const Packet a = load_partial<Packet>(q + i, std::min<Index>(P, n - i), Scalar(0));
    lo = pmin<Eigen::PropagateNaN>(lo, a);
    hi = pmax<Eigen::PropagateNaN>(hi, a);
    s0.add(a);
  }
  alignas(64) Scalar l[P], h[P];
  pstore(l, lo);
  pstore(h, hi);
  bool in_range = true;
  for (int k = 0; k < P; ++k)
    in_range = in_range && l[k] >= 0 && h[k] <= 1;
  sum = static_cast<double>(total_wide(s0, s1));
  return in_range;
}

// Number of leading candidates (sorted by decreasing logit, weights w) that the top-p rule keeps:
// the smallest prefix whose weight reaches p * total, extended over ties of its last logit.
template <class Scalar>
std::size_t top_p_cut(const std::vector<std::pair<Scalar, Index>>& cand,
                      const std::vector<double>& w, std::size_t count, double p, double start,
                      double total) {
  const double target = p * total;
  double cum = start;
  std::size_t c = 0;
  while (c < count) {
    cum += w[c];
    ++c;
    if (cum >= target)
      break;
  }
  while (c < count && cand[c].first == cand[c - 1].first)
    ++c;
  return c;
}

}  // namespace detail
}  // namespace softmaxlab
