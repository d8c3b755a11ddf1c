// vision_attention: softmaxlab's flash-style Attention in the two places it runs most.
//
// 1. A ViT-style multi-head self-attention layer over 197 tokens (196 image patches + the class
//    token, Edge-MoE's ViT setting): 12 heads of dimension 64. Each head runs sml::Attention<>,
//    and is compared with the materialized form (S = Q K^T / 8, softmax, S V) in float and in
//    double (the reference): the error, the memory the scores need and the time.
// 2. A decoding loop with a growing KV cache and an attention sink (gpt-oss style): one query per
//    step against every cached key, plus the same step split over two key shards merged with
//    merge_attention (split-K decoding), compared with the materialized double computation.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>

#include <softmaxlab/softmaxlab.hpp>

namespace sml = softmaxlab;
using Index = Eigen::Index;
using MatF = Eigen::MatrixXf;
using MatD = Eigen::MatrixXd;

namespace {

MatF random_matrix(Index rows, Index cols, std::mt19937& gen, float sigma) {
  std::normal_distribution<float> normal(0.0f, sigma);
  MatF m(rows, cols);
  for (Index i = 0; i < m.size(); ++i)
    m(i) = normal(gen);
  return m;
}

// softmax(Q K^T * scale (+ sink)) V, materialized, in the scalar of the inputs.
template <class M>
M materialized(const M& q, const M& k, const M& v, double scale, bool sink, double z) {
  using S = typename M::Scalar;
  M s = (q * k.transpose()) * S(scale);
  for (Index i = 0; i < s.rows(); ++i) {
    S top = s.row(i).maxCoeff();
    if (sink)
      top = std::max(top, S(z));
    s.row(i) = (s.row(i).array() - top).exp().matrix();
    const S total = s.row(i).sum() + (sink ? std::exp(S(z) - top) : S(0));
    s.row(i) /= total;
  }
  return s * v;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main() {
  std::mt19937 gen(2026);
  const float eps = std::numeric_limits<float>::epsilon();

  // 1. ViT self-attention layer: 197 tokens, 12 heads x 64.
  const Index tokens = 197, heads = 12, head_dim = 64, width = heads * head_dim;
  const MatF x = random_matrix(tokens, width, gen, 1.0f);
  const MatF wq = random_matrix(width, width, gen, 1.0f / std::sqrt(float(width)));
  const MatF wk = random_matrix(width, width, gen, 1.0f / std::sqrt(float(width)));
  const MatF wv = random_matrix(width, width, gen, 1.0f / std::sqrt(float(width)));
  const MatF q = x * wq, k = x * wk, v = x * wv;
  const sml::Attention<> attn;  // scale 1/sqrt(64)
  MatF out_flash(tokens, width), out_mat(tokens, width);
  double t_flash = 0, t_mat = 0, err_flash = 0, err_mat = 0, vmax = 0;
  for (Index h = 0; h < heads; ++h) {
    const MatF qh = q.middleCols(h * head_dim, head_dim), kh = k.middleCols(h * head_dim, head_dim),
               vh = v.middleCols(h * head_dim, head_dim);
    auto t0 = std::chrono::steady_clock::now();
    attn.apply(qh, kh, vh, out_flash.middleCols(h * head_dim, head_dim));
    t_flash += seconds_since(t0);
    t0 = std::chrono::steady_clock::now();
    out_mat.middleCols(h * head_dim, head_dim) = materialized(qh, kh, vh, 0.125, false, 0.0);
    t_mat += seconds_since(t0);
    const MatD exact = materialized<MatD>(qh.cast<double>(), kh.cast<double>(), vh.cast<double>(),
                                          0.125, false, 0);
    err_flash =
        std::max(err_flash, (out_flash.middleCols(h * head_dim, head_dim).cast<double>() - exact)
                                .cwiseAbs()
                                .maxCoeff());
    err_mat = std::max(
        err_mat,
        (out_mat.middleCols(h * head_dim, head_dim).cast<double>() - exact).cwiseAbs().maxCoeff());
    vmax = std::max(vmax, double(vh.cwiseAbs().maxCoeff()));
  }
  std::printf("ViT self-attention: %ld tokens, %ld heads x %ld (float)\n", long(tokens),
              long(heads), long(head_dim));
  std::printf("  max |O - exact|: flash %.3g (%.2f eps (1 + max|V|)), materialized %.3g\n",
              err_flash, err_flash / (eps * (1 + vmax)), err_mat);
  std::printf(
      "  scores memory per head: flash workspace %ld bytes, materialized %ld bytes\n",
      long(sml::detail::kAttentionMaxBlockQ * sml::detail::kAttentionMaxBlockK * sizeof(float)),
      long(tokens * tokens * sizeof(float)));
  std::printf("  time for 12 heads: flash %.3f ms, materialized %.3f ms\n", t_flash * 1e3,
              t_mat * 1e3);
  const bool vit_ok = err_flash <= 8 * eps * (1 + vmax);

  // 2. Decoding with a KV cache and a sink, split-K over two shards merged.
  const Index steps = 1024, dim = 128;
  const double sink = 0.5;
  const double scale = 1.0 / std::sqrt(double(dim));
  const sml::Attention<> decode(sml::AttentionOptions().with_sink(sink));
  const sml::Attention<> shard;  // no sink: it goes to one shard only
  MatF k_cache(steps, dim), v_cache(steps, dim);
  MatF o(1, dim), o1(1, dim), o2(1, dim);
  Eigen::VectorXf lse(1), lse1(1), lse2(1);
  double t_decode = 0, err_decode = 0, err_split = 0, vmax_cache = 0;
  for (Index t = 0; t < steps; ++t) {
    const MatF qt = random_matrix(1, dim, gen, 1.0f);
    k_cache.row(t) = random_matrix(1, dim, gen, 1.0f);
    v_cache.row(t) = random_matrix(1, dim, gen, 1.0f);
    vmax_cache = std::max(vmax_cache, double(v_cache.row(t).cwiseAbs().maxCoeff()));
    const auto keys = k_cache.topRows(t + 1);
    const auto values = v_cache.topRows(t + 1);
    auto t0 = std::chrono::steady_clock::now();
    decode.apply(qt, keys, values, o, lse);
    t_decode += seconds_since(t0);
    if (t % 64 == 63) {  // check against the materialized double form now and then
      const MatD exact = materialized<MatD>(qt.cast<double>(), MatD(keys.cast<double>()),
                                            MatD(values.cast<double>()), scale, true, sink);
      err_decode = std::max(err_decode, (o.cast<double>() - exact).cwiseAbs().maxCoeff());
      const Index half = (t + 1) / 2;
      decode.apply(qt, keys.topRows(half), values.topRows(half), o1, lse1);
      shard.apply(qt, keys.bottomRows(t + 1 - half), values.bottomRows(t + 1 - half), o2, lse2);
      sml::merge_attention(o1, lse1, o2, lse2, o1, lse1);
      err_split = std::max(err_split, (o1.cast<double>() - exact).cwiseAbs().maxCoeff());
    }
  }
  std::printf("Decoding %ld steps, d = %ld, sink %.2f (float)\n", long(steps), long(dim), sink);
  std::printf("  max |O - exact|: one pass %.3g, two shards merged %.3g (%.2f eps (1 + max|V|))\n",
              err_decode, err_split, err_split / (eps * (1 + vmax_cache)));
  std::printf(
      "  memory: KV cache %ld bytes; flash workspace %ld bytes; no score matrix\n",
      long(2 * steps * dim * sizeof(float)),
      long(sml::detail::kAttentionMaxBlockQ * sml::detail::kAttentionMaxBlockK * sizeof(float)));
  std::printf("  time: %.3f ms for %ld decode steps\n", t_decode * 1e3, long(steps));
  const bool decode_ok =
      err_decode <= 8 * eps * (1 + vmax_cache) && err_split <= 8 * eps * (1 + vmax_cache);
  return vit_ok && decode_ok ? 0 : 1;
}
