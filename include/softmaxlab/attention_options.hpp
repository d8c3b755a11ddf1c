// softmaxlab: AttentionOptions, the options of AttentionSoftmax, Attention and
// MultiHeadAttention, and alibi_slope, ggml's per-head ALiBi slope.
//
// AttentionOptions (validated when set; std::invalid_argument naming the parameter and value):
//   with_scale(s)       in [2^-100, 2^100]. Default: 1 in AttentionSoftmax, 1/sqrt(d) in
//                       Attention. (Scale, softcap and slope are bounded as temperatures are, so
//                       that each stays a normal float and its reciprocal finite: a double 1e-300
//                       would round to 0 in float and make 0 * inf a NaN.)
//   with_causal(b)      Attention only: key j is visible to query i iff j <= i + Lk - Lq
//                       (bottom-right aligned, as KV-cache decoding needs).
//   with_softcap(c)     0 = off (default), else in [2^-100, 2^100]: cap(s) = c tanh(s / c).
//   with_mask_slope(m)  in [2^-100, 2^100] (default 1): the additive mask is multiplied by m
//                       (ggml's ALiBi form: the mask holds the position bias, m the per-head
//                       slope, see alibi_slope()).
//   with_window(l, r), with_alibi(max_bias): MultiHeadAttention only (multi_head_attention.hpp;
//                       Attention and AttentionSoftmax throw if they are set).
//   with_sink(z)        in [-2^100, 2^100]: a logit that joins the max and the sum but has no
//                       output (gpt-oss-style attention sinks).
// alibi_slope(max_bias, head, n_head): ggml's per-head slope, m0^(h+1) for h < 2^floor(log2 n)
// and m1^(2(h - 2^floor(log2 n)) + 1) above, m0 = 2^(-max_bias / 2^floor(log2 n)),
// m1 = 2^(-max_bias / 2 / 2^floor(log2 n)); 1 when max_bias = 0. max_bias finite >= 0,
// 0 <= head < n_head.
//
// Tested in tests/test_attention.cpp ("AttentionOptions" cases) and through every attention test.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>

#include "detail/checks.hpp"
#include "detail/common.hpp"

namespace softmaxlab {

// The options of AttentionSoftmax and Attention: see the header's doc block.
class AttentionOptions {
 public:
  // A copy with this option set (its valid range, and the std::invalid_argument a value outside it
  // throws: the header's doc block).
  AttentionOptions with_scale(double scale) const {
    AttentionOptions o = *this;
    o.scale_ = detail::require_in_range("AttentionOptions: scale", scale, 0x1p-100, 0x1p100,
                                        "in [2^-100, 2^100] (finite, > 0)");
    return o;
  }
  // A copy with this option set (its valid range, and the std::invalid_argument a value outside it
  // throws: the header's doc block).
  AttentionOptions with_causal(bool causal) const {
    AttentionOptions o = *this;
    o.causal_ = causal;
    return o;
  }
  // A copy with this option set (its valid range, and the std::invalid_argument a value outside it
  // throws: the header's doc block).
  AttentionOptions with_softcap(double softcap) const {
    if (!(softcap == 0.0 || (softcap >= 0x1p-100 && softcap <= 0x1p100)))
      detail::fail("AttentionOptions: softcap must be 0 (off) or in [2^-100, 2^100], but got ",
                   softcap);
    AttentionOptions o = *this;
    o.softcap_ = softcap;
    return o;
  }
  // A copy with this option set (its valid range, and the std::invalid_argument a value outside it
  // throws: the header's doc block).
  AttentionOptions with_mask_slope(double slope) const {
    AttentionOptions o = *this;
    o.mask_slope_ = detail::require_in_range("AttentionOptions: mask_slope", slope, 0x1p-100,
                                             0x1p100, "in [2^-100, 2^100] (finite, > 0)");
    return o;
  }
  // A copy with this option set (its valid range, and the std::invalid_argument a value outside it
  // throws: the header's doc block).
  AttentionOptions with_sink(double sink) const {
    if (!(sink >= -0x1p100 && sink <= 0x1p100))
      detail::fail("AttentionOptions: sink must be in [-2^100, 2^100] (finite), but got ", sink);
    AttentionOptions o = *this;
    o.has_sink_ = true;
    o.sink_ = sink;
    return o;
  }

  // MultiHeadAttention only (multi_head_attention.hpp): key j is visible to query i iff
  // i + Lk - Lq - left <= j <= i + Lk - Lq + right; -1 = unbounded on that side.
  [[nodiscard]] AttentionOptions with_window(Index left, Index right) const {
    if (left < -1)
      detail::fail("AttentionOptions: window left must be >= -1 (-1 = unbounded), but got ", left);
    if (right < -1)
      detail::fail("AttentionOptions: window right must be >= -1 (-1 = unbounded), but got ",
                   right);
    AttentionOptions o = *this;
    o.window_left_ = left;
    o.window_right_ = right;
    return o;
  }
  // MultiHeadAttention only: ALiBi from positions, slope of head h = alibi_slope(max_bias, h, Hq),
  // bias -slope |j - (i + Lk - Lq)|. max_bias finite, >= 0; 0 = off.
  [[nodiscard]] AttentionOptions with_alibi(double max_bias) const {
    if (!(max_bias >= 0.0 && max_bias <= 0x1p100))
      detail::fail("AttentionOptions: alibi max_bias must be in [0, 2^100] (0 = off), but got ",
                   max_bias);
    AttentionOptions o = *this;
    o.alibi_max_bias_ = max_bias;
    return o;
  }

  // The has scale this object was built with.
  bool has_scale() const { return scale_ > 0; }
  // The scale, or fallback when none was set.
  double scale_or(double fallback) const { return has_scale() ? scale_ : fallback; }
  // The causal this object was built with.
  bool causal() const { return causal_; }
  // The softcap this object was built with.
  double softcap() const { return softcap_; }
  // The mask slope this object was built with.
  double mask_slope() const { return mask_slope_; }
  // The has sink this object was built with.
  bool has_sink() const { return has_sink_; }
  // The sink this object was built with.
  double sink() const { return sink_; }
  // The window left this object was built with.
  Index window_left() const { return window_left_; }
  // The window right this object was built with.
  Index window_right() const { return window_right_; }
  // The has window this object was built with.
  bool has_window() const { return window_left_ >= 0 || window_right_ >= 0; }
  // The alibi max bias this object was built with.
  double alibi_max_bias() const { return alibi_max_bias_; }
  // The has alibi this object was built with.
  bool has_alibi() const { return alibi_max_bias_ > 0; }

 private:
  double scale_ = 0;  // 0: not set (the default of each class applies)
  bool causal_ = false;
  double softcap_ = 0;
  double mask_slope_ = 1;
  bool has_sink_ = false;
  double sink_ = 0;
  Index window_left_ = -1;  // -1: unbounded
  Index window_right_ = -1;
  double alibi_max_bias_ = 0;  // 0: no ALiBi
};

// ggml's ALiBi slope of head `head` among `n_head` heads for max_bias (see the doc block).
inline double alibi_slope(double max_bias, int head, int n_head) {
  if (!(max_bias >= 0.0 && std::isfinite(max_bias)))
    detail::fail("alibi_slope: max_bias must be finite and >= 0, but got ", max_bias);
  if (n_head < 1)
    detail::fail("alibi_slope: n_head must be >= 1, but got ", n_head);
  if (head < 0 || head >= n_head)
    detail::fail("alibi_slope: head must be in [0, n_head = ", n_head, "), but got ", head);
  if (max_bias == 0.0)
    return 1.0;
  const int n_log2 = 1 << static_cast<int>(std::floor(std::log2(static_cast<double>(n_head))));
  const double m0 = std::exp2(-max_bias / n_log2);
  const double m1 = std::exp2(-max_bias / 2.0 / n_log2);
  return head < n_log2 ? std::pow(m0, head + 1) : std::pow(m1, 2 * (head - n_log2) + 1);
}

}  // namespace softmaxlab
