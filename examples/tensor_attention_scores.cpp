// Softmax over the last axis of a [batch, heads, L, L] attention score tensor, as PyTorch's
// torch.softmax(scores, dim=-1), with a causal mask broadcast over batch and heads; and the
// softmax over the head axis (an outer, strided axis) of the same tensor. Prints one head's
// probabilities and checks that every slice sums to one.
#include <cmath>
#include <cstdio>
#include <limits>

#include <softmaxlab/attention.hpp>
#include <softmaxlab/softmax.hpp>
#include <softmaxlab/tensor.hpp>

namespace sml = softmaxlab;
using Scores = Eigen::Tensor<float, 4, Eigen::RowMajor>;  // [batch, heads, Lq, Lk]

int main() {
  const int batch = 2, heads = 3, L = 5;
  Scores scores(batch, heads, L, L);
  for (int b = 0; b < batch; ++b)
    for (int h = 0; h < heads; ++h)
      for (int q = 0; q < L; ++q)
        for (int k = 0; k < L; ++k)
          scores(b, h, q, k) = 0.5f * float((q + 1) * (k + 2) % 7) - 0.25f * float(h);

  // Softmax over the keys (axis -1, the contiguous one): the row kernels on the data in place.
  const sml::Softmax softmax;
  const Scores p = softmax(scores, -1);

  // The same with a causal mask: a [Lq, Lk] additive mask (0 kept, -inf removed) for every batch
  // and head, given as a tensor of the scores' shape.
  Scores causal(batch, heads, L, L);
  for (int b = 0; b < batch; ++b)
    for (int h = 0; h < heads; ++h)
      for (int q = 0; q < L; ++q)
        for (int k = 0; k < L; ++k)
          causal(b, h, q, k) = k <= q ? 0.0f : -std::numeric_limits<float>::infinity();
  const Scores pc = sml::masked_along_axis(sml::AttentionSoftmax(), scores, causal, 3);

  std::printf("batch 0, head 1: softmax over the keys (rows: queries)\n");
  for (int q = 0; q < L; ++q) {
    for (int k = 0; k < L; ++k)
      std::printf(" %.4f", p(0, 1, q, k));
    std::printf("\n");
  }
  std::printf("the same with the causal mask\n");
  for (int q = 0; q < L; ++q) {
    for (int k = 0; k < L; ++k)
      std::printf(" %.4f", pc(0, 1, q, k));
    std::printf("\n");
  }

  // Softmax over the heads (axis 1): each (b, q, k) is one distribution over 3 heads, computed by
  // the lane kernel (one slice per SIMD lane), no copy of the tensor.
  const Scores over_heads = softmax(scores, 1);
  std::printf("over the heads at (b=0, q=2, k=3): %.4f %.4f %.4f\n", over_heads(0, 0, 2, 3),
              over_heads(0, 1, 2, 3), over_heads(0, 2, 2, 3));

  // Every slice sums to one; the masked entries are exactly zero.
  double worst = 0;
  for (int b = 0; b < batch; ++b)
    for (int h = 0; h < heads; ++h)
      for (int q = 0; q < L; ++q) {
        double s = 0, sc = 0;
        for (int k = 0; k < L; ++k) {
          s += p(b, h, q, k);
          sc += pc(b, h, q, k);
          if (k > q && pc(b, h, q, k) != 0.0f)
            return 1;
        }
        worst = std::max({worst, std::fabs(s - 1), std::fabs(sc - 1)});
      }
  for (int b = 0; b < batch; ++b)
    for (int q = 0; q < L; ++q)
      for (int k = 0; k < L; ++k) {
        double s = 0;
        for (int h = 0; h < heads; ++h)
          s += over_heads(b, h, q, k);
        worst = std::max(worst, std::fabs(s - 1));
      }
  std::printf("largest |sum - 1| over every slice: %.3g\n", worst);
  return worst <= 2e-6 ? 0 : 1;
}
