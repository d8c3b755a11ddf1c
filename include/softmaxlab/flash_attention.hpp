// softmaxlab: Attention, exact flash-style attention for one head on the online normalizer,
// forward and backward, with the Softmax, PowerSoftmax or PolynomialSoftmax weights
// (attention_weights.hpp), and merge_attention.
//
// Attention<Weight = Softmax>(o[, weight]): for one head, Q Lq x d, K Lk x d, V Lk x dv,
//   O = softmax(cap(scale Q K^T) + m mask) V   (sink and causal mask as above, row by row),
// computed flash-style (FlashAttention-2's loop order): for each block of Bq query rows, key/value
// blocks of Bk rows in turn: S = Q_b K_b^T (one Eigen GEMM into a Bq x Bk stack buffer), the
// score transform fused into the row-max pass, then per query row the running max m, sum l and
// the output accumulator (O's own rows) rescaled by exp(m_old - m_new) when the max grows (the
// online normalizer of single_pass.hpp, extended with the value accumulator), P = exp(S - m) in
// place, O_b += P V_b (one GEMM). The Lq x Lk matrix is never formed: the workspace is the stack
// buffer, Bq Bk scalars (64 x 128 by default, 32 KiB float), plus Bq maxima and sums,
// independent of Lk; the accumulator is O itself.
//   attn(Q, K, V) -> O;  attn.apply(Q, K, V, O[, lse]);  attn.apply_masked(Q, K, V, mask, O[, lse])
//   lse_i = log(sum_j exp(t_ij) + exp(z)): the per-query log-sum-exp of the transformed scores,
//   for every row (a row with no visible key: lse_i = z, or -inf without a sink);
//   merge_attention(O1, lse1, O2, lse2, O, lse) combines two partials over disjoint key sets
//   exactly (split-K decoding, sequence parallelism; give the sink to one partial only, which may
//   be one whose keys are all masked for a query, or empty).
//   attn.backward(Q, K, V, O, lse, dO, dQ, dK, dV) (and backward_masked with the mask): the
//   gradients by recomputation of P from lse (FlashAttention-2, Dao 2023, Algorithm 2),
//   D_i = <dO_i, O_i>, dS = P (dO V^T - D), through the cap and the scale.
// Q, K, V: Eigen objects of float or double with storage (plain, Map, Ref, Block); any other
// expression is evaluated into a temporary first. apply with float or double storage inputs does
// not allocate (tested at d = dv = 64; Eigen's GEMM packs its blocks on the stack while they stay
// under EIGEN_STACK_ALLOCATION_LIMIT, 128 KiB, i.e. for moderate d and dv). with_block_sizes(bq,
// bk) sets smaller blocks (1..64, 1..128), which changes only the rounding.
// The additive mask (apply_masked, backward_masked): storage of Q's scalar, or Eigen::half or
// Eigen::bfloat16 beside float Q, or float beside double Q (ggml keeps f16 masks beside f32
// scores), converted exactly one key block of one query row at a time (Bk entries on the stack,
// never a whole copy), so the result is bit for bit the call on the converted mask; -inf masks, a
// NaN makes the row NaN (tests/test_attention_mask_types.cpp, "Attention: a half, bfloat16 or
// float mask gives the bits of the converted mask").
// Half precision: Q, K, V and the mask may also be Eigen::half or Eigen::bfloat16 (one type In for
// the four), O any of {half, bfloat16, float, double} (type Out; f(Q, K, V) returns In), lse of
// type Out or, beside a 16-bit Out, float (FlashAttention's convention: the backward rebuilds its
// weights from lse, so keep it in float). The pass runs in float (double when In or Out is double)
// on exactly widened copies, and this form allocates them: float copies of K and V, Lk (d + dv)
// elements, made once; then per query block (Bq rows) a float copy of its Q rows, its mask rows (Bq
// Lk: the caller's mask, never the whole Lq x Lk again) and its O and lse, Bq (d + Lk + dv + 1)
// elements, rounded once to Out. The Lq x Lk scores are still never formed, and the float result is
// bit-for-bit the float forward's. Accuracy (test_half_precision.cpp, against the long-double
// materialized form on the widened inputs): |O_ik - exact| <= the float bound below + 1/2 ulp of
// Out; measured worst 0.50 ulp of half and of bfloat16 (Lq 37, Lk 300, d 32, causal and masked).
// backward and backward_masked take the same types: In for Q, K, V and the mask, Out for O and
// dO, lse as in the forward, and one type G of the four for dQ, dK and dV; float inside, double
// when In, Out or G is double (any other scalar: a static_assert naming the accepted types). They
// allocate, in elements of that type: K and V widened once and dK, dV accumulated over every query
// block, 2 Lk (d + dv); per query block copies of its Q, O, dO, lse and mask rows and its dQ,
// Bq (2 d + 2 dv + Lk + 1).
// dQ is rounded to G once per block, dK and dV once at the end: the result is bit-for-bit the
// float backward on the widened (column-major) inputs, rounded once.
// Backward accuracy (test_half_precision.cpp, against the long-double materialized gradient on
// the widened inputs and the O given; every type; no softcap, slope 1): per entry of dX (X = Q,
// K, V),
//   |dX - exact| <= kappa_X mag_X + 1/2 ulp of G,
//   kappa_X = eps (rho + dv + 3 + n_X) + (e^eta - 1),
// mag_dV = P^T |dO|, mag_dQ = scale A |K|, mag_dK = scale A^T |Q|, A = P (|dO| |V|^T +
// rowsum(|dO| |O|)); rho = max_ij (d scale sum_k |q_ik k_jk| + 2 |t_ij| + |t_ij - lse_i| +
// 2 |mask_ij| + 4) bounds the relative error of each recomputed weight, dv + 3 that of dP, D and
// dS, n_dQ = Bk + ceil(Lk / Bk) and n_dK = n_dV = Bq + ceil(Lq / Bq) the accumulations; eta =
// max_i |lse_i - exact lse_i|: P is recomputed from the lse given, which scales row i of P by
// e^(exact - lse_i). A 16-bit lse is off by up to 1/2 ulp of Out (2^-9 in half, 2^-6 in bfloat16
// for lse in [4, 8)), and that term dominates. Measured worst (Lq 37, Lk 70, d = dv = 16, causal
// and masked, blocks 64 x 128 and 7 x 5): 4.2 ulp of half (0.66 of the bound at worst), 3.8 ulp of
// bfloat16 (0.83) with O, lse and dO in the 16-bit type; 0.50 ulp of half (0.92) with half Q, K,
// V and gradients but O, lse and dO in float (the forward's Out = float), and also with half O and
// dO beside a float lse ("half precision: a float lse beside a half O keeps the backward within
// half an ulp"): keep lse in float when the gradients matter. The float backward: worst 6.0 ulp
// of float, double 6 ulp (ratios at most 0.023 and 0.015).
// Accuracy (tests/test_attention.cpp, against a long-double materialized reference on the same
// inputs): per entry, |O_ik - exact| <= eps max|V| (2 rho + Bk + 2 ceil(Lk / Bk) + 4), where rho =
// max_j (4 (1 + |t_ij - M_i|) + d_j) bounds the relative error of each weight as above (d_j now
// with the score's dot product: + d |scale| sum_k |q_ik k_jk| / eps ulps) and the rest is the float
// accumulation of P V (Bk terms per GEMM, one rescale and one addition per key block). Measured
// worst (random N(0,1) Q, K, V, sigma(V) = 2, shapes up to Lq 200, Lk 2000, d 64, every option,
// default and 7 x 5 blocks): 7.6 eps float, 8.4 eps double, 0.12 of the tested 8 eps (1 + max|V|).
//
// Attention<PowerSoftmax>(o, PowerSoftmax(p)): w_ij = t_ij^p / sum_j t_ij^p (Stable form; Power-
// Softmax, Zimerman et al., arXiv 2410.09457) online: the running scale of a row is a power of two
// 2^e >= max |t| (as PowerSoftmax scales rows), so the rescale (2^e_old / 2^e_new)^p when it grows
// is exact; weights (t 2^-e)^p by repeated squaring; one exact division per row at the end.
// Rows whose visible scores are all 0 give the mean of their values (the formula's limit), +-inf
// scores share the mass, masked keys (-inf in the scaled mask, causal) are left out. No sink, no
// lse, no backward for this weight. Measured worst against the exact plaintext (long double):
// 11.4 eps float, 12.8 eps double (p = 2, 4, 8).
//
// Attention<PolynomialSoftmax>(o, PolynomialSoftmax(config)), config.shift = Shift::PublicBound:
// what an encrypted pipeline computes, online without a max (nothing to rescale): w_ij =
// E(t_ij - B) / sum_j E(t_ij - B), E the configured polynomial exp (approx/exp.hpp, clipped to
// [-R, 0]: scores above B count as B), then the configured reciprocal of each row's sum (its range
// from the number of visible keys). Masked keys are left out; a row with none gives zeros. No
// sink, no lse, no backward. Against the plaintext pipeline (materialized scores, then
// PolynomialSoftmax, then P V): 2.1e-7 in float (Lk = 300); against exact softmax attention
// 1.1e-5, the approximation's own error.
//
// Special values, overflow, outputs, errors, threads and sources: attention.hpp's doc block.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>

#include "attention_options.hpp"
#include "attention_weights.hpp"
#include "detail/backward_base.hpp"
#include "detail/checks.hpp"
#include "detail/flash_attention.hpp"
#include "detail/functor_base.hpp"
#include "detail/scalar_types.hpp"

namespace softmaxlab {

// Flash-style attention for one head: see the header's doc block.
template <class Weight = Softmax>
class Attention {
  using WeightTraits = AttentionWeight<Weight>;
  static_assert(WeightTraits::supported,
                "softmaxlab: Attention supports the Softmax, PowerSoftmax and PolynomialSoftmax "
                "weights");
  static constexpr bool kSoftmax = WeightTraits::kind == AttentionWeightKind::Softmax;

 public:
  // The variant's name, as error messages give it.
  static constexpr const char* name = "Attention";

  // Checks the options and the weight against each other (AttentionWeight<W>::check); throws
  // std::invalid_argument naming the value otherwise.
  explicit Attention(const AttentionOptions& options = {}, const Weight& weight = Weight())
      : options_(options), weight_(weight) {
    if (options.has_window() || options.has_alibi())
      detail::fail(name,
                   ": a window or ALiBi from positions needs MultiHeadAttention, but got "
                   "window (",
                   options.window_left(), ", ", options.window_right(), ") and alibi max_bias ",
                   options.alibi_max_bias());
    WeightTraits::check(name, options, weight);
  }

  // The options this object was built with.
  const AttentionOptions& options() const { return options_; }
  // The weight this object was built with.
  const Weight& weight() const { return weight_; }
  // The block q this object was built with.
  Index block_q() const { return block_q_; }
  // The block k this object was built with.
  Index block_k() const { return block_k_; }

  // A copy with these query and key block sizes (1 to 64 and 1 to 128; the defaults are the
  // largest); throws std::invalid_argument naming the value otherwise. The result depends on them
  // only through the rounding of the accumulation.
  [[nodiscard]] Attention with_block_sizes(Index block_q, Index block_k) const {
    Attention a = *this;
    a.set_block_sizes_checked(block_q, block_k);
    return a;
  }
  // The former, mutating with_block_sizes: sets the block sizes of this object and returns it.
  [[deprecated(
      "with_block_sizes returns a modified copy now: attn = attn.with_block_sizes(q, "
      "k)")]] Attention&
  set_block_sizes(Index block_q, Index block_k) {
    set_block_sizes_checked(block_q, block_k);
    return *this;
  }

  // O = attention(Q, K, V), Lq x dv.
  template <class XQ, class XK, class XV>
  Eigen::Matrix<typename XQ::Scalar, Eigen::Dynamic, Eigen::Dynamic> operator()(
      const Eigen::DenseBase<XQ>& q, const Eigen::DenseBase<XK>& k,
      const Eigen::DenseBase<XV>& v) const {
    Eigen::Matrix<typename XQ::Scalar, Eigen::Dynamic, Eigen::Dynamic> o(q.rows(), v.cols());
    apply(q, k, v, o);
    return o;
  }

  // O = attention(Q, K, V) into O (Lq x dv); allocation-free for float or double storage.
  template <class XQ, class XK, class XV, class OutO>
  void apply(const Eigen::DenseBase<XQ>& q, const Eigen::DenseBase<XK>& k,
             const Eigen::DenseBase<XV>& v, OutO&& o) const {
    detail::static_check_output<OutO>();
    forward(q, k, v, static_cast<const NoMask<XQ>*>(nullptr), o,
            static_cast<NoLse<detail::output_xpr_t<OutO>>*>(nullptr));
  }
  // The same, with each query row's log-sum-exp into lse (Lq entries; Softmax weight only).
  template <class XQ, class XK, class XV, class OutO, class OutL>
  void apply(const Eigen::DenseBase<XQ>& q, const Eigen::DenseBase<XK>& k,
             const Eigen::DenseBase<XV>& v, OutO&& o, OutL&& lse) const {
    detail::static_check_output<OutO>();
    detail::static_check_output<OutL>();
    static_assert(kSoftmax && sizeof(XQ) > 0,
                  "softmaxlab: the log-sum-exp output needs the Softmax weight");
    forward(q, k, v, static_cast<const NoMask<XQ>*>(nullptr), o, &lse.derived());
  }
  // mask: Lq x Lk additive (times the mask slope), storage of Q's scalar, or half/bfloat16 beside
  // float Q, float beside double Q.
  template <class XQ, class XK, class XV, class XM, class OutO>
  void apply_masked(const Eigen::DenseBase<XQ>& q, const Eigen::DenseBase<XK>& k,
                    const Eigen::DenseBase<XV>& v, const Eigen::DenseBase<XM>& mask,
                    OutO&& o) const {
    detail::static_check_output<OutO>();
    forward(q, k, v, &mask.derived(), o, static_cast<NoLse<detail::output_xpr_t<OutO>>*>(nullptr));
  }
  // The same with the additive mask (Lq x Lk) and the log-sum-exp.
  template <class XQ, class XK, class XV, class XM, class OutO, class OutL>
  void apply_masked(const Eigen::DenseBase<XQ>& q, const Eigen::DenseBase<XK>& k,
                    const Eigen::DenseBase<XV>& v, const Eigen::DenseBase<XM>& mask, OutO&& o,
                    OutL&& lse) const {
    detail::static_check_output<OutO>();
    detail::static_check_output<OutL>();
    static_assert(kSoftmax && sizeof(XQ) > 0,
                  "softmaxlab: the log-sum-exp output needs the Softmax weight");
    forward(q, k, v, &mask.derived(), o, &lse.derived());
  }

  // dQ, dK, dV of <dO, O> from the forward's O and lse (see the doc block); sequential.
  template <class XQ, class XK, class XV, class XO, class XL, class XdO, class OutQ, class OutK,
            class OutV>
  void backward(const Eigen::DenseBase<XQ>& q, const Eigen::DenseBase<XK>& k,
                const Eigen::DenseBase<XV>& v, const Eigen::DenseBase<XO>& o,
                const Eigen::DenseBase<XL>& lse, const Eigen::DenseBase<XdO>& dout, OutQ&& dq,
                OutK&& dk, OutV&& dv) const {
    detail::static_check_output<OutQ>();
    detail::static_check_output<OutK>();
    detail::static_check_output<OutV>();
    backward_impl(q, k, v, static_cast<const NoMask<XQ>*>(nullptr), o, lse, dout, dq, dk, dv);
  }
  template <class XQ, class XK, class XV, class XM, class XO, class XL, class XdO, class OutQ,
            class OutK, class OutV>
  // The backward with the additive mask (a constant): dQ, dK, dV as backward.
  void backward_masked(const Eigen::DenseBase<XQ>& q, const Eigen::DenseBase<XK>& k,
                       const Eigen::DenseBase<XV>& v, const Eigen::DenseBase<XM>& mask,
                       const Eigen::DenseBase<XO>& o, const Eigen::DenseBase<XL>& lse,
                       const Eigen::DenseBase<XdO>& dout, OutQ&& dq, OutK&& dk, OutV&& dv) const {
    detail::static_check_output<OutQ>();
    detail::static_check_output<OutK>();
    detail::static_check_output<OutV>();
    backward_impl(q, k, v, &mask.derived(), o, lse, dout, dq, dk, dv);
  }

 private:
  template <class XQ>
  using NoMask = Eigen::Matrix<typename XQ::Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  template <class XO>
  using NoLse = Eigen::Matrix<typename XO::Scalar, Eigen::Dynamic, 1>;

  template <class Scalar>
  detail::AttentionPlan<Scalar> plan(Index d) const {
    detail::AttentionPlan<Scalar> p;
    const double scale = options_.scale_or(d > 0 ? 1.0 / std::sqrt(static_cast<double>(d)) : 1.0);
    p.transform.scale = static_cast<Scalar>(scale);
    p.transform.slope = static_cast<Scalar>(options_.mask_slope());
    p.transform.cap = static_cast<Scalar>(options_.softcap());
    p.causal = options_.causal();
    p.has_sink = options_.has_sink();
    p.sink = static_cast<Scalar>(options_.sink());
    p.block_q = block_q_;
    p.block_k = block_k_;
    return p;
  }

  template <class XQ, class XK, class XV>
  static void check_qkv(const XQ& q, const XK& k, const XV& v) {
    using Scalar = typename XQ::Scalar;
    detail::static_check_storage_scalars<Scalar, Scalar>();
    static_assert(
        std::is_same_v<Scalar, typename XK::Scalar> && std::is_same_v<Scalar, typename XV::Scalar>,
        "softmaxlab: Q, K and V must have the same scalar type");
    if (q.cols() != k.cols()) {
      detail::fail(name, ": Q and K must have the same number of columns d, but got Q ", q.rows(),
                   " x ", q.cols(), " and K ", k.rows(), " x ", k.cols());
    }
    if (k.rows() != v.rows()) {
      detail::fail(name, ": K and V must have the same number of rows Lk, but got K ", k.rows(),
                   " x ", k.cols(), " and V ", v.rows(), " x ", v.cols());
    }
  }

  template <class Out>
  static void check_output(const char* what, const Out& out, Index rows, Index cols) {
    if (out.rows() != rows || out.cols() != cols) {
      detail::fail(name, ": ", what, " must be ", rows, " x ", cols, ", but got ", out.rows(),
                   " x ", out.cols());
    }
  }

  template <class XL>
  static void check_lse(const XL& lse, Index lq) {
    if (!((lse.rows() == 1 || lse.cols() == 1) && lse.size() == lq)) {
      detail::fail(name, ": lse must be a vector of Lq = ", lq, " entries, but got ", lse.rows(),
                   " x ", lse.cols());
    }
  }

  template <class XQ, class XK, class XV, class XM, class XO, class XL>
  void forward(const Eigen::DenseBase<XQ>& q_in, const Eigen::DenseBase<XK>& k_in,
               const Eigen::DenseBase<XV>& v_in, const XM* mask, const Eigen::DenseBase<XO>& o_in,
               const XL* lse_in) const {
    if constexpr (detail::is_mixed_v<typename XQ::Scalar, typename XO::Scalar>) {
      forward_staged(q_in, k_in, v_in, mask, o_in, lse_in);
    } else {
      forward_same(q_in, k_in, v_in, mask, o_in, lse_in);
    }
  }

  // 16-bit or mixed types (In = Q's, K's, V's and the mask's scalar, Out = O's and lse's): the
  // float forward pass (double when In or Out is double) on exactly widened copies, O and lse
  // rounded once to Out. The Lq x Lk scores are never formed.
  template <class XQ, class XK, class XV, class XM, class XO, class XL>
  void forward_staged(const Eigen::DenseBase<XQ>& q_in, const Eigen::DenseBase<XK>& k_in,
                      const Eigen::DenseBase<XV>& v_in, const XM* mask,
                      const Eigen::DenseBase<XO>& o_in, const XL* lse_in) const {
    using In = typename XQ::Scalar;
    using Out = typename XO::Scalar;
    using C = detail::compute_scalar_t<In, Out>;
    using M = Eigen::Matrix<C, Eigen::Dynamic, Eigen::Dynamic>;
    using V = Eigen::Matrix<C, Eigen::Dynamic, 1>;
    detail::static_check_storage_scalars<In, Out>();
    static_assert(detail::mask_scalar_ok_v<In, typename XM::Scalar>,
                  "softmaxlab: the mask must have Q's scalar type, or Eigen::half or "
                  "Eigen::bfloat16 beside float Q, or float beside double Q");
    static_assert(detail::lse_scalar_ok_v<Out, typename XL::Scalar>,
                  "softmaxlab: lse must have O's scalar type, or float when O is Eigen::half or "
                  "Eigen::bfloat16");
    auto& o = const_cast<Eigen::DenseBase<XO>&>(o_in).derived();
    if (!check_forward(q_in, k_in, v_in, mask, o, lse_in))
      return;
    // Each query block solved as an attention problem of its own by the float code on widened
    // copies (detail::for_each_widened_query_block), O and lse rounded once to Out.
    detail::for_each_widened_query_block<C, true>(
        q_in.derived(), k_in.derived(), v_in.derived(), mask, block_q_, options_.causal(),
        [&](Index i0, Index n, const auto& qb, const auto& kb, const auto& vb, const auto* mb) {
          M ob(n, v_in.cols());
          V lb(lse_in != nullptr ? n : 0);
          forward_same(qb, kb, vb, mb, ob, lse_in != nullptr ? &lb : static_cast<V*>(nullptr));
          o.middleRows(i0, n) = ob.template cast<Out>();
          if (lse_in != nullptr) {
            auto& lse_out = const_cast<XL&>(*lse_in);
            for (Index r = 0; r < n; ++r)
              lse_out.coeffRef(i0 + r) = detail::convert_scalar<typename XL::Scalar>(lb(r));
          }
        });
  }

  // The forward's argument checks, one place for the float/double and the 16-bit paths: storage,
  // shapes of Q, K, V, O, lse and the mask, and overlaps. Returns whether there is work.
  template <class XQ, class XK, class XV, class XM, class XO, class XL>
  static bool check_forward(const Eigen::DenseBase<XQ>& q, const Eigen::DenseBase<XK>& k,
                            const Eigen::DenseBase<XV>& v, const XM* mask, const XO& o,
                            const XL* lse) {
    static_assert(detail::is_writable_storage_v<XO> && detail::is_writable_storage_v<XL>,
                  "softmaxlab: O and lse must be writable storage (Matrix, Map, Ref or a Block)");
    static_assert(detail::has_direct_access_v<XM>,
                  "softmaxlab: the mask must be storage; evaluate an expression first");
    check_qkv(q.derived(), k.derived(), v.derived());
    const Index lq = q.rows(), lk = k.rows();
    check_output("O", o, lq, v.cols());
    if (lse != nullptr)
      check_lse(*lse, lq);
    if (mask != nullptr)
      check_output("mask", *mask, lq, lk);
    // O is written after every read, but stay strict (O of another scalar type cannot overlap).
    if constexpr (std::is_same_v<typename XQ::Scalar, typename XO::Scalar>) {
      detail::require_no_overlap(name, "O", "Q", o, q.derived());
      detail::require_no_overlap(name, "O", "K", o, k.derived());
      detail::require_no_overlap(name, "O", "V", o, v.derived());
    }
    if (lse != nullptr && lq > 0) {
      // (a float lse beside a 16-bit O is other storage)
      if constexpr (detail::has_direct_access_v<
                        XL> && std::is_same_v<typename XL::Scalar, typename XO::Scalar>)
        detail::require_no_overlap(name, "lse", "O", *lse, o);
    }
    return !(lq == 0 || (o.cols() == 0 && lse == nullptr));
  }

  template <class XQ, class XK, class XV, class XM, class XO, class XL>
  void forward_same(const Eigen::DenseBase<XQ>& q_in, const Eigen::DenseBase<XK>& k_in,
                    const Eigen::DenseBase<XV>& v_in, const XM* mask,
                    const Eigen::DenseBase<XO>& o_in, const XL* lse_in) const {
    using Scalar = typename XQ::Scalar;
    static_assert(
        std::is_same_v<Scalar, typename XO::Scalar> && std::is_same_v<Scalar, typename XL::Scalar>,
        "softmaxlab: O and lse must have Q's scalar type");
    static_assert(detail::mask_scalar_ok_v<Scalar, typename XM::Scalar>,
                  "softmaxlab: the mask must have Q's scalar type, or Eigen::half or "
                  "Eigen::bfloat16 beside float Q, or float beside double Q");
    auto& o = const_cast<Eigen::DenseBase<XO>&>(o_in).derived();
    if (!check_forward(q_in, k_in, v_in, mask, o, lse_in))
      return;
    const Index lq = q_in.rows(), lk = k_in.rows();
    detail::Span<Scalar> lse{nullptr, 0, 1};
    if (lse_in != nullptr)
      lse = detail::vector_span<Scalar>(const_cast<XL&>(*lse_in));
    const detail::AttentionPlan<Scalar> p = plan<Scalar>(q_in.cols());
    detail::with_storage(q_in, [&](const auto& q) {
      detail::with_storage(k_in, [&](const auto& k) {
        detail::with_storage(v_in, [&](const auto& v) {
          const Index blocks = (lq + p.block_q - 1) / p.block_q;
          detail::for_each_slice<detail::kParallelSlices>(
              blocks, p.block_q * (lk + 1) * (q.cols() + v.cols() + 1), [&](Index b) {
                const Index i0 = b * p.block_q;
                if constexpr (kSoftmax) {
                  detail::attention_forward_block(q, k, v, mask, o, lse, i0,
                                                  std::min(p.block_q, lq - i0), p);
                } else if constexpr (WeightTraits::kind == AttentionWeightKind::Polynomial) {
                  detail::attention_forward_block_polynomial(
                      q, k, v, mask, o, i0, std::min(p.block_q, lq - i0), p, weight_);
                } else {
                  detail::attention_forward_block_power(
                      q, k, v, mask, o, i0, std::min(p.block_q, lq - i0), p, weight_.p());
                }
              });
        });
      });
    });
  }

  // The backward's type rules (the forward's, extended): Q, K, V and the mask of one type In, O
  // and dO of one type Out, lse of type Out or float beside a 16-bit Out (lse_scalar_ok_v), dQ, dK
  // and dV of one type G, each of {half, bfloat16, float, double}; float inside, double when any of
  // them is double.
  template <class XQ, class XK, class XV, class XM, class XO, class XL, class XdO, class XdQ,
            class XdK, class XdV>
  void backward_impl(const Eigen::DenseBase<XQ>& q_in, const Eigen::DenseBase<XK>& k_in,
                     const Eigen::DenseBase<XV>& v_in, const XM* mask,
                     const Eigen::DenseBase<XO>& o_in, const Eigen::DenseBase<XL>& lse_in,
                     const Eigen::DenseBase<XdO>& dout_in, const Eigen::DenseBase<XdQ>& dq_in,
                     const Eigen::DenseBase<XdK>& dk_in, const Eigen::DenseBase<XdV>& dv_in) const {
    using In = typename XQ::Scalar;
    using Out = typename XO::Scalar;
    using G = typename XdQ::Scalar;
    static_assert(kSoftmax && sizeof(XQ) > 0,
                  "softmaxlab: Attention::backward needs the Softmax weight");
    constexpr bool kStorageScalars =
        detail::is_storage_scalar_v<
            In> && detail::is_storage_scalar_v<Out> && detail::is_storage_scalar_v<G>;
    static_assert(kStorageScalars,
                  "softmaxlab: Attention::backward takes Eigen::half, Eigen::bfloat16, float or "
                  "double (Q, K, V, mask; O, lse, dO; dQ, dK, dV)");
    static_assert(
        std::is_same_v<In, typename XK::Scalar> && std::is_same_v<In, typename XV::Scalar>,
        "softmaxlab: K and V of Attention::backward must have Q's scalar type");
    static_assert(detail::mask_scalar_ok_v<In, typename XM::Scalar>,
                  "softmaxlab: the mask of Attention::backward must have Q's scalar type, or "
                  "Eigen::half or Eigen::bfloat16 beside float Q, or float beside double Q");
    static_assert(std::is_same_v<Out, typename XdO::Scalar>,
                  "softmaxlab: dO of Attention::backward must have O's scalar type");
    static_assert(detail::lse_scalar_ok_v<Out, typename XL::Scalar>,
                  "softmaxlab: lse of Attention::backward must have O's scalar type, or float when "
                  "O is Eigen::half or Eigen::bfloat16");
    static_assert(
        std::is_same_v<G, typename XdK::Scalar> && std::is_same_v<G, typename XdV::Scalar>,
        "softmaxlab: dK and dV of Attention::backward must have dQ's scalar type");
    static_assert(
        detail::is_writable_storage_v<
            XdQ> && detail::is_writable_storage_v<XdK> && detail::is_writable_storage_v<XdV>,
        "softmaxlab: dQ, dK and dV must be writable storage");
    static_assert(detail::has_direct_access_v<XM>,
                  "softmaxlab: the mask must be storage; evaluate an expression first");
    if constexpr (kStorageScalars) {
      check_qkv(q_in.derived(), k_in.derived(), v_in.derived());
      const Index lq = q_in.rows(), lk = k_in.rows(), d = q_in.cols(), dv_cols = v_in.cols();
      auto& dq = const_cast<Eigen::DenseBase<XdQ>&>(dq_in).derived();
      auto& dk = const_cast<Eigen::DenseBase<XdK>&>(dk_in).derived();
      auto& dv = const_cast<Eigen::DenseBase<XdV>&>(dv_in).derived();
      check_output("O", o_in, lq, dv_cols);
      check_output("dO", dout_in, lq, dv_cols);
      check_lse(lse_in, lq);
      check_output("dQ", dq, lq, d);
      check_output("dK", dk, lk, d);
      check_output("dV", dv, lk, dv_cols);
      if (mask != nullptr)
        check_output("mask", *mask, lq, lk);
      // Only outputs of an input's scalar type can share its storage.
      auto no_overlap = [&](const char* out_name, const auto& out) {
        if constexpr (std::is_same_v<G, In>) {
          detail::require_no_overlap(name, out_name, "Q", out, q_in.derived());
          detail::require_no_overlap(name, out_name, "K", out, k_in.derived());
          detail::require_no_overlap(name, out_name, "V", out, v_in.derived());
        }
        if constexpr (std::is_same_v<G, Out>) {
          detail::require_no_overlap(name, out_name, "O", out, o_in.derived());
          detail::require_no_overlap(name, out_name, "dO", out, dout_in.derived());
        }
      };
      no_overlap("dQ", dq);
      no_overlap("dK", dk);
      no_overlap("dV", dv);
      if constexpr (detail::is_mixed_v<In, Out> || detail::is_mixed_v<In, G>) {
        backward_staged(q_in, k_in, v_in, mask, o_in, lse_in, dout_in, dq, dk, dv);
      } else {
        const detail::AttentionPlan<In> p = plan<In>(d);
        detail::with_storage(q_in, [&](const auto& q) {
          detail::with_storage(k_in, [&](const auto& k) {
            detail::with_storage(v_in, [&](const auto& v) {
              detail::with_storage(o_in, [&](const auto& o) {
                detail::with_storage(dout_in, [&](const auto& dout) {
                  detail::with_storage(lse_in, [&](const auto& lse) {
                    detail::attention_backward(q, k, v, mask, o, lse, dout, dq, dk, dv, p);
                  });
                });
              });
            });
          });
        });
      }
    }
  }

  // 16-bit or mixed types: the float backward (double when any type is double) on exactly
  // widened copies, query block by query block in order (detail::for_each_widened_query_block),
  // with the block's O, dO and lse rows widened beside its Q and mask rows; dQ rounded once per
  // block, dK and dV accumulated in C over every block and rounded once at the end.
  template <class XQ, class XK, class XV, class XM, class XO, class XL, class XdO, class DQ,
            class DK, class DV>
  void backward_staged(const Eigen::DenseBase<XQ>& q_in, const Eigen::DenseBase<XK>& k_in,
                       const Eigen::DenseBase<XV>& v_in, const XM* mask,
                       const Eigen::DenseBase<XO>& o_in, const Eigen::DenseBase<XL>& lse_in,
                       const Eigen::DenseBase<XdO>& dout_in, DQ& dq, DK& dk, DV& dv) const {
    using G = typename DQ::Scalar;
    using C = detail::compute_scalar_t<detail::compute_scalar_t<typename XQ::Scalar, G>,
                                       typename XO::Scalar>;
    using M = Eigen::Matrix<C, Eigen::Dynamic, Eigen::Dynamic>;
    using V = Eigen::Matrix<C, Eigen::Dynamic, 1>;
    const Index lk = k_in.rows(), d = q_in.cols();
    M dk_c = M::Zero(lk, d), dv_c = M::Zero(lk, v_in.cols());
    const detail::AttentionPlan<C> p = plan<C>(d);
    detail::with_storage(o_in, [&](const auto& o) {
      detail::with_storage(dout_in, [&](const auto& dout) {
        detail::for_each_widened_query_block<C, false>(
            q_in.derived(), k_in.derived(), v_in.derived(), mask, p.block_q, p.causal,
            [&](Index i0, Index n, const auto& qb, const auto& kb, const auto& vb, const auto* mb) {
              const M ob = o.middleRows(i0, n).template cast<C>();
              const M dob = dout.middleRows(i0, n).template cast<C>();
              V lb(n);
              for (Index r = 0; r < n; ++r)
                lb(r) = detail::convert_scalar<C>(lse_in.derived().coeff(i0 + r));
              M dqb = M::Zero(n, d);
              auto dkb = dk_c.topRows(kb.rows());
              auto dvb = dv_c.topRows(kb.rows());
              detail::attention_backward_block(qb, kb, vb, mb, ob, lb, dob, dqb, dkb, dvb, 0, n, p);
              dq.middleRows(i0, n) = dqb.template cast<G>();
            });
      });
    });
    dk = dk_c.template cast<G>();
    dv = dv_c.template cast<G>();
  }

  void set_block_sizes_checked(Index block_q, Index block_k) {
    if (block_q < 1 || block_q > detail::kAttentionMaxBlockQ)
      detail::fail(name, ": block_q must be in [1, ", detail::kAttentionMaxBlockQ, "], but got ",
                   block_q);
    if (block_k < 1 || block_k > detail::kAttentionMaxBlockK)
      detail::fail(name, ": block_k must be in [1, ", detail::kAttentionMaxBlockK, "], but got ",
                   block_k);
    block_q_ = block_q;
    block_k_ = block_k;
  }

  AttentionOptions options_;
  Weight weight_;
  Index block_q_ = detail::kAttentionMaxBlockQ;
  Index block_k_ = detail::kAttentionMaxBlockK;
};

// Merges two attention partials over disjoint key sets of the same queries (see the doc block):
// O = (exp(lse1 - M) O1 + exp(lse2 - M) O2) / L, lse = M + log L, L = exp(lse1 - M) +
// exp(lse2 - M), M = max(lse1, lse2), row by row, in long double. A partial with lse = -inf
// (no visible key and no sink) contributes nothing; a partial holding only the sink (lse = z, a
// zero row) contributes its mass exp(z) and no value; both -inf gives zeros and -inf; a NaN lse
// gives a NaN row; two +inf partials (whose mass split the lse does not record) give a NaN row; one
// +inf partial wins. O may be O1 or O2 (exactly), and lse lse1 or lse2.
template <class XO1, class XL1, class XO2, class XL2, class OutO, class OutL>
void merge_attention(const Eigen::DenseBase<XO1>& o1, const Eigen::DenseBase<XL1>& lse1,
                     const Eigen::DenseBase<XO2>& o2, const Eigen::DenseBase<XL2>& lse2,
                     OutO&& o_out, OutL&& lse_out) {
  using XO = detail::output_xpr_t<OutO>;
  using XL = detail::output_xpr_t<OutL>;
  using Scalar = typename XO::Scalar;
  constexpr const char* fn = "merge_attention";
  static_assert(detail::is_writable_storage_v<XO> && detail::is_writable_storage_v<XL>,
                "softmaxlab: O and lse must be writable storage");
  auto& o = detail::writable_output(std::forward<OutO>(o_out));
  auto& lse = detail::writable_output(std::forward<OutL>(lse_out));
  const Index rows = o1.rows(), cols = o1.cols();
  if (o2.rows() != rows || o2.cols() != cols || o.rows() != rows || o.cols() != cols) {
    detail::fail(fn, ": O1, O2 and O must have one shape, but got ", rows, " x ", cols, ", ",
                 o2.rows(), " x ", o2.cols(), " and ", o.rows(), " x ", o.cols());
  }
  auto check_lse = [&](const char* what, Index r, Index c) {
    if (!((r == 1 || c == 1) && r * c == rows))
      detail::fail(fn, ": ", what, " must be a vector of ", rows, " entries, but got ", r, " x ",
                   c);
  };
  check_lse("lse1", lse1.rows(), lse1.cols());
  check_lse("lse2", lse2.rows(), lse2.cols());
  check_lse("lse", lse.rows(), lse.cols());
  const long double inf = std::numeric_limits<long double>::infinity();
  const Scalar nan = std::numeric_limits<Scalar>::quiet_NaN();
  for (Index i = 0; i < rows; ++i) {
    const long double a = static_cast<long double>(lse1.derived().coeff(i));
    const long double b = static_cast<long double>(lse2.derived().coeff(i));
    long double wa = 0, wb = 0, out_lse;
    if (a != a || b != b || (a == inf && b == inf)) {
      wa = wb = nan;
      out_lse = nan;
    } else if (a == -inf && b == -inf) {
      out_lse = -inf;
    } else if (a == inf || b == inf) {
      wa = a == inf ? 1 : 0;
      wb = 1 - wa;
      out_lse = inf;
    } else {
      const long double m = std::max(a, b);
      const long double ea = std::exp(a - m), eb = std::exp(b - m), sum = ea + eb;
      wa = ea / sum;
      wb = eb / sum;
      out_lse = m + std::log(sum);
    }
    for (Index j = 0; j < cols; ++j) {
      const long double x1 = o1.derived().coeff(i, j), x2 = o2.derived().coeff(i, j);
      // A partial with no weight contributes nothing, even a NaN or inf it may hold.
      const long double v = (wa == 0 ? 0.0L : wa * x1) + (wb == 0 ? 0.0L : wb * x2);
      o.coeffRef(i, j) = static_cast<Scalar>(wa != wa ? static_cast<long double>(nan) : v);
    }
    lse.coeffRef(i) = static_cast<Scalar>(out_lse);
  }
}

}  // namespace softmaxlab
