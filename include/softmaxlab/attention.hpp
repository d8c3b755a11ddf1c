// softmaxlab: attention. AttentionSoftmax, the fused score softmax of inference engines (ggml's
// soft_max_ext), and Attention, exact flash-style attention on the online normalizer, forward
// and backward.
//
// An umbrella over one header per concern (every name that compiled through
// <softmaxlab/attention.hpp> still does):
//   attention_options.hpp   AttentionOptions, alibi_slope
//   attention_softmax.hpp   AttentionSoftmax, the fused score softmax
//   flash_attention.hpp     Attention (flash-style, one head), merge_attention
//   attention_weights.hpp   AttentionWeight<W>: the weights Attention accepts
// Their doc blocks give the formulas, call forms and accuracy; what they share follows.
//
// Special values (both classes): a -inf entry of x (or of the mask) is masked out: exactly 0
// weight, softcap or not; a row with every entry masked gives zeros, even with a sink, which then
// takes all the mass (Attention: a query row with no visible key, all masked, causal or Lk = 0,
// gives a zero output row and lse = z with a sink, the sink's own log-sum-exp, -inf without one,
// so that merge_attention keeps the sink's mass whichever partial holds it; tests "Attention:
// special values and shapes" and, in tests/test_replayed_faults.cpp, "FlashAttention#2752: a sink
// on a query row with no visible key keeps its mass in lse and merge_attention"); +inf entries of
// x or the mask share the mass (with a softcap, cap(+inf) = c is finite: the limit of the formula);
// a NaN anywhere in a row (input or mask) makes the row NaN (Attention: a NaN in the query row's
// scores); an empty input gives an empty output.
// Overflow: in AttentionSoftmax a finite x_i or mask_i whose scale x_i, m mask_i or score
// overflows the scalar type is not +-inf: pass 1 flags the row and it is recomputed in double,
// scaled by 2^-102 for double data (no finite input overflows there), its weights those of the
// exact scores (x = [FLT_MAX, FLT_MAX / 2] at scale 4 gives [1, 0], not [1/2, 1/2]; a row whose
// scores all overflow to -inf is a softmax, not a masked row; 4 FLT_MAX - 4 FLT_MAX is 0). In
// place, pass 1 only takes the max so that such a row still has its input, and the scores are
// formed in a second sweep. Attention forms its scores in the scalar type with Eigen's GEMM: a
// dot product that overflows is +-inf there, the caller's to avoid (scale Q first).
//
// Outputs (O, lse, dQ, dK, dV, P, y): a const Matrix does not compile; pass a Map, Ref or block.
// Errors (std::invalid_argument naming the parameter, value or shapes): options out of range;
// outputs or masks of the wrong shape; Q and K with different d, K and V with different Lk; an
// output that overlaps an input; Attention<Softmax> with a temperature other than 1 (fold it into
// the scale); Attention<PowerSoftmax> with a sink or a form other than Stable;
// Attention<PolynomialSoftmax> with a sink or the RowMax shift; block sizes out of range.
//
// Threads: with OpenMP and SOFTMAXLAB_USE_OPENMP, Attention spreads its query blocks over the
// threads; every query block is computed by the same code whatever thread runs it, so the result
// is bit-for-bit the same for any thread count. rowwise/rowwise_masked spread rows likewise.
//
// Speed (bench/bench_attention.cpp, float, one thread, median CPU time, GCC AVX2 build on a shared
// AVX-512 EPYC; README "Attention" has the commands): Attention 1.28x / 1.32x / 1.11x the
// materialized Eigen form (GEMM, Eigen softmax expression, GEMM) at Lq = Lk = 4096 / 1024 / 128,
// d = 64, 1.55x at 16384 (where that form needs 1 GiB of scores, Attention 32 KiB); 0.4x oneDNN's
// AVX-512 matmul + softmax + matmul; decode (Lq = 1) on par. AttentionSoftmax with mask and
// scale: 3.5x the plain Eigen expression on rows of 1024 and 4096.
//
// Sources: ggml (llama.cpp) ggml_compute_forward_soft_max_f32 (scale, mask times ALiBi slope,
// sinks) and flash_attn_ext (running max/sum/accumulator, softcap); Milakov & Gimelshein,
// arXiv 1805.02867 (online normalizer); Dao, "FlashAttention-2", arXiv 2307.08691.
#pragma once

#include "attention_options.hpp"
#include "attention_softmax.hpp"
#include "attention_weights.hpp"
#include "flash_attention.hpp"
