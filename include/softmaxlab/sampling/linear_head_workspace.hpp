// softmaxlab: LinearHeadWorkspace, the scratch memory of LinearHeadSampler
// (sampling/linear_head.hpp, whose doc block states its size): per thread a logit block, the
// Gumbel noise scratch, the top-k and top-p / min-p candidate buffers, the widened rows of 16-bit
// H and W, and a SamplingWorkspace. Reusable across
// calls, shapes and scalar types; not to be shared by concurrent calls. bytes() reports what it
// holds (the SamplingWorkspace excluded); nothing here throws.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "../detail/head_candidates.hpp"
#include "../sampler_options.hpp"

namespace softmaxlab {

// Scratch memory of LinearHeadSampler, reusable across calls (one slot per thread).
class LinearHeadWorkspace {
 public:
  // One thread's buffers for one scalar type.
  template <class Scalar>
  struct Slot {
    Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> z;  // tile x B (or V)
    std::vector<Scalar> noise, zeros;                                          // B each
    std::vector<std::uint32_t> words;                                          // 2 B
    std::vector<std::vector<std::pair<Scalar, Index>>> cand;                   // per token
    std::vector<Scalar> row, probs;  // candidate logits; probabilities for log p
    std::vector<Scalar> tau;         // per token: the running k-th largest candidate
    std::vector<std::size_t> cap;    // per token: the candidate count that triggers compaction
    std::vector<detail::HeadCutState> cut;              // per token (TopPMinP)
    std::vector<double> y, weight;                      // the chain on the candidates
    std::vector<std::pair<double, std::size_t>> order;  // its sort and draw order
    std::vector<Scalar> hwide, wide;  // 16-bit inputs: the widened tile of H and chunk of W
    SamplingWorkspace sampler;
  };
  // The slots of one scalar type, grown to `threads`.
  template <class Scalar>
  std::vector<Slot<Scalar>>& slots(std::size_t threads) {
    auto& s = pick<Scalar>();
    if (s.size() < threads)
      s.resize(threads);
    return s;
  }
  // Bytes held by the buffers (capacities), the sampler's workspaces excluded when empty.
  std::size_t bytes() const { return bytes_of(f_) + bytes_of(d_); }

 private:
  std::vector<Slot<float>> f_;
  std::vector<Slot<double>> d_;
  template <class Scalar>
  std::vector<Slot<Scalar>>& pick() {
    if constexpr (std::is_same_v<Scalar, float>) {
      return f_;
    } else {
      return d_;
    }
  }
  template <class Scalar>
  static std::size_t bytes_of(const std::vector<Slot<Scalar>>& slots) {
    std::size_t b = 0;
    for (const auto& s : slots) {
      b += sizeof(Scalar) * static_cast<std::size_t>(s.z.size());
      b += sizeof(Scalar)
           * (s.noise.capacity() + s.zeros.capacity() + s.row.capacity() + s.probs.capacity()
              + s.hwide.capacity() + s.wide.capacity());
      b += sizeof(detail::HeadCutState) * s.cut.capacity()
           + sizeof(double) * (s.y.capacity() + s.weight.capacity())
           + sizeof(std::pair<double, std::size_t>) * s.order.capacity();
      b += sizeof(std::uint32_t) * s.words.capacity();
      for (const auto& c : s.cand)
        b += sizeof(std::pair<Scalar, Index>) * c.capacity();
    }
    return b;
  }
};

}  // namespace softmaxlab
