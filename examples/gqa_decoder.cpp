// A grouped-query attention layer decoding tokens from a half-precision KV cache
// (multi_head_attention.hpp): 8 query heads share 2 KV heads (Llama-style GQA, 4:1), a sliding
// window of 64 keys, the cache stored as Eigen::half and read in place block by block.
//
// The prompt is run once (prefill: every query against the keys before it, causal), then tokens are
// decoded one at a time: project the new hidden state, append its K and V rows to the half cache,
// attend with one query row. The decoded outputs are checked against one causal call over the whole
// sequence (the same attention, computed all at once), which they must match to float rounding.
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include <Eigen/Core>

#include <softmaxlab/multi_head_attention.hpp>

namespace sml = softmaxlab;
using RowF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using RowH = Eigen::Matrix<Eigen::half, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

int main() {
  const Eigen::Index hidden = 256, hq = 8, hkv = 2, d = 32, prompt = 40, new_tokens = 24;
  const Eigen::Index capacity = prompt + new_tokens;
  std::srand(7);
  const RowF wq = RowF::Random(hidden, hq * d) / std::sqrt(float(hidden));
  const RowF wk = RowF::Random(hidden, hkv * d) / std::sqrt(float(hidden));
  const RowF wv = RowF::Random(hidden, hkv * d) / std::sqrt(float(hidden));
  const RowF x = RowF::Random(capacity, hidden);  // the hidden states of every position

  const sml::MultiHeadAttention attn(sml::AttentionOptions().with_causal(true).with_window(64, 0),
                                     hq, hkv);

  // The KV cache: half precision, allocated once for the whole sequence.
  RowH k_cache(capacity, hkv * d), v_cache(capacity, hkv * d);
  // Prefill: the prompt's keys and values, then its queries against them.
  k_cache.topRows(prompt) = (x.topRows(prompt) * wk).cast<Eigen::half>();
  v_cache.topRows(prompt) = (x.topRows(prompt) * wv).cast<Eigen::half>();
  const RowF q_prompt = x.topRows(prompt) * wq;
  RowF o_prompt(prompt, hq * d);
  attn.apply(q_prompt, k_cache.topRows(prompt), v_cache.topRows(prompt), o_prompt);

  // Decoding: one token at a time, one query row against the cache (bottom-right aligned, so the
  // single query is the newest position).
  RowF decoded(new_tokens, hq * d);
  RowF q(1, hq * d), o(1, hq * d);
  for (Eigen::Index t = prompt; t < capacity; ++t) {
    q = x.row(t) * wq;
    k_cache.row(t) = (x.row(t) * wk).cast<Eigen::half>();
    v_cache.row(t) = (x.row(t) * wv).cast<Eigen::half>();
    attn.apply(q, k_cache.topRows(t + 1), v_cache.topRows(t + 1), o);
    decoded.row(t - prompt) = o;
  }

  // The same layer over the whole sequence at once: its last rows are the decoded tokens.
  const RowF all = attn(RowF(x * wq), k_cache, v_cache);
  const float diff = (all.bottomRows(new_tokens) - decoded).cwiseAbs().maxCoeff();
  const float prefill_diff = (all.topRows(prompt) - o_prompt).cwiseAbs().maxCoeff();
  std::printf("decoded %d tokens from a half KV cache (%d query heads over %d KV heads)\n",
              int(new_tokens), int(hq), int(hkv));
  std::printf("max |decode - full pass| = %.3g, max |prefill - full pass| = %.3g\n", diff,
              prefill_diff);
  return diff <= 1e-5f && prefill_diff <= 1e-5f ? 0 : 1;
}
