// softmaxlab: LinearCrossEntropy (linear_cross_entropy.hpp) with the classifier W sharded by rows
// over MPI ranks, the vocabulary-parallel output layer of Megatron-LM (Shoeybi et al., arXiv
// 1909.08053) computed without the logits. Optional, as mpi.hpp: needs MPI (CMake target
// softmaxlab::mpi); the umbrella softmaxlab.hpp does not include this header.
//
// Each rank holds the contiguous classes [begin, begin + V_r) of a vocabulary of V classes: the
// rows W_shard (V_r x d) of the classifier and, optionally, the bias entries b_shard (V_r). Every
// rank passes the same H (N x d), labels (global class indices), options and per-token outputs.
// clang-format off
//     mpi::VocabParallelLinearCrossEntropy lce(comm, V, sml::LinearCrossEntropy(...).with_...());
//     double l = lce(H, W_shard, begin, labels[, out]);                     // loss only
//     double l = lce(H, W_shard, b_shard, begin, labels[, out]);            // with a bias
//     double l = lce(H, W_shard, begin, labels, dH, dW_shard[, out]);       // loss and gradients
//     double l = lce(H, W_shard, b_shard, begin, labels, dH, dW_shard, db_shard[, out]);
// clang-format on
// What it computes: exactly LinearCrossEntropy's loss, per-token lse and losses, and gradients on
// the whole vocabulary, with every option (reduction, label smoothing, class weights of all V
// classes, z-loss, softcap, temperature, ignore_index, upstream gradients, gradient filtering,
// block sizes). The loss, lse and per-token losses are the same on every rank; dH (N x d) is the
// whole gradient on every rank; dW_shard and db_shard are this rank's rows of dW and db.
//
// Algorithm: every rank runs LinearCrossEntropy's block kernel (detail/lce_kernels.hpp; one kernel
// for both forms) on its shard. Per token block, after pass 1, the shards' per-token normalizers
// [max, sum] are merged by one MPI_Allreduce with mpi.hpp's exact merge (as
// VocabParallelCrossEntropy merges them; long double on the wire), and the label's logit (from
// the rank that owns the label; the others contribute 0) and the label-smoothing sum are gathered
// with one MPI_Allgather and added in rank order, so every rank computes the same loss. After
// pass 2, the token block's dH partial (token_block x d) is summed over the ranks by one
// MPI_Allreduce (MPI_SUM); dW and db stay local. Three collectives per token block of every call,
// loss-only calls two.
//
// Inputs: as LinearCrossEntropy (float, double, or Eigen::half / Eigen::bfloat16 H and W with
// float accumulation and float gradients). A shard may be empty (V_r = 0) and may hold no label.
// Errors: std::invalid_argument naming the value for begin outside [0, V - V_r], V < 0, and every
// error of LinearCrossEntropy (labels outside [0, V), shapes, outputs, weight of other than V
// entries), thrown before any communication; arguments that must agree across ranks (N, labels,
// V, options) are checked the same way on every rank, so all ranks throw together. Shards must
// not overlap and must cover [0, V) (not checked: that would cost another collective).
// std::runtime_error if an MPI call returns an error (only when the communicator's error handler
// returns errors). Allocates O(token_block x ranks) scratch for the messages.
//
// Accuracy: LinearCrossEntropy's stated bound (its doc block). The results differ from the
// one-process form only in the order of the normalizers' merges (long double) and of the dH
// partials' additions (the MPI library's reduction order), and in the logits' rounding where
// Eigen's GEMM blocking differs with the shard's width: tests/mpi/test_mpi_linear_cross_entropy.cpp
// checks the loss, lse, per-token losses and all gradients against the one-process
// LinearCrossEntropy on the same data (1 to 4 ranks, uneven shards, an empty shard, a shard with
// no label, ignore_index, every option), in double (within 64 eps relative) and float, and that
// the loss is bitwise the same on every rank.
#pragma once

#include <mpi.h>

#include <cstddef>
#include <type_traits>
#include <utility>
#include <vector>

#include "linear_cross_entropy.hpp"
#include "mpi.hpp"

namespace softmaxlab {
namespace mpi {

// The vocabulary-parallel fused output-layer loss: see the header's doc block.
class VocabParallelLinearCrossEntropy {
 public:
  // The variant's name, as error messages give it.
  static constexpr const char* name = "VocabParallelLinearCrossEntropy";

  // comm: the ranks sharing the vocabulary; vocab_size: V >= 0, the whole vocabulary; options:
  // LinearCrossEntropy's (class weights, if any, for all V classes).
  VocabParallelLinearCrossEntropy(MPI_Comm comm, Index vocab_size,
                                  LinearCrossEntropy options = LinearCrossEntropy())
      : comm_(comm), vocab_size_(vocab_size), options_(std::move(options)) {
    if (vocab_size < 0)
      detail::fail(name, ": vocab_size must be >= 0, but got ", vocab_size);
  }

  // The comm this object was built with.
  MPI_Comm comm() const { return comm_; }
  // The vocab size this object was built with.
  Index vocab_size() const { return vocab_size_; }
  // The options this object was built with.
  const LinearCrossEntropy& options() const { return options_; }

  // The loss only.
  template <class XH, class XW, class Labels,
            class = std::enable_if_t<softmaxlab::detail::is_label_type_v<Labels>>>
  double operator()(const Eigen::MatrixBase<XH>& h, const Eigen::MatrixBase<XW>& w_shard,
                    Index begin, const Labels& labels,
                    const TokenOutputs& out = TokenOutputs()) const {
    return run(h.derived(), w_shard.derived(), LinearCrossEntropy::no_bias(), begin, labels,
               nullptr, nullptr, nullptr, out);
  }
  // The loss only, with this rank's bias entries.
  template <class XH, class XW, class XB, class Labels,
            class = std::enable_if_t<softmaxlab::detail::is_label_type_v<Labels>>>
  double operator()(const Eigen::MatrixBase<XH>& h, const Eigen::MatrixBase<XW>& w_shard,
                    const Eigen::MatrixBase<XB>& b_shard, Index begin, const Labels& labels,
                    const TokenOutputs& out = TokenOutputs()) const {
    return run(h.derived(), w_shard.derived(), &b_shard.derived(), begin, labels, nullptr, nullptr,
               nullptr, out);
  }
  // The loss, with dH (N x d, the whole gradient) and dW_shard (this rank's rows) written.
  template <class XH, class XW, class Labels, class OutH, class OutW,
            class = std::enable_if_t<softmaxlab::detail::is_label_type_v<Labels>>,
            softmaxlab::detail::if_output_t<OutH> = 0>
  double operator()(const Eigen::MatrixBase<XH>& h, const Eigen::MatrixBase<XW>& w_shard,
                    Index begin, const Labels& labels, OutH&& dh, OutW&& dw_shard,
                    const TokenOutputs& out = TokenOutputs()) const {
    return run(h.derived(), w_shard.derived(), LinearCrossEntropy::no_bias(), begin, labels,
               &softmaxlab::detail::writable_output(dh),
               &softmaxlab::detail::writable_output(dw_shard), nullptr, out);
  }
  // The loss, with dH, dW_shard and db_shard written.
  template <class XH, class XW, class XB, class Labels, class OutH, class OutW, class OutB,
            class = std::enable_if_t<softmaxlab::detail::is_label_type_v<Labels>>>
  double operator()(const Eigen::MatrixBase<XH>& h, const Eigen::MatrixBase<XW>& w_shard,
                    const Eigen::MatrixBase<XB>& b_shard, Index begin, const Labels& labels,
                    OutH&& dh, OutW&& dw_shard, OutB&& db_shard,
                    const TokenOutputs& out = TokenOutputs()) const {
    return run(h.derived(), w_shard.derived(), &b_shard.derived(), begin, labels,
               &softmaxlab::detail::writable_output(dh),
               &softmaxlab::detail::writable_output(dw_shard),
               &softmaxlab::detail::writable_output(db_shard), out);
  }

 private:
  // The kernel's Combine over the communicator (detail/lce_kernels.hpp's LceOneShard documents
  // the two hooks).
  class Combine {
   public:
    explicit Combine(MPI_Comm comm) : comm_(comm) {
      detail::check(MPI_Comm_size(comm, &ranks_), "MPI_Comm_size");
    }
    // The normalizers by mpi.hpp's exact merge; the label logits and smoothing sums gathered and
    // added in rank order (the same bits on every rank).
    void tokens(double* m, long double* s, double* zc, double* zw, Index nb) const {
      const int count = detail::message_count(name, nb);
      states_.resize(2 * static_cast<std::size_t>(nb));
      mine_.resize(2 * static_cast<std::size_t>(nb));
      gathered_.resize(2 * static_cast<std::size_t>(nb) * static_cast<std::size_t>(ranks_));
      for (Index n = 0; n < nb; ++n) {
        states_[2 * n] = m[n];
        states_[2 * n + 1] = s[n];
        mine_[2 * n] = zc[n];
        mine_[2 * n + 1] = zw[n];
      }
      detail::allreduce_states<2>(states_.data(), count, comm_);
      detail::check(MPI_Allgather(mine_.data(), 2 * count, MPI_DOUBLE, gathered_.data(), 2 * count,
                                  MPI_DOUBLE, comm_),
                    "MPI_Allgather");
      for (Index n = 0; n < nb; ++n) {
        m[n] = static_cast<double>(states_[2 * n]);  // one of the ranks' maxima: exact
        s[n] = states_[2 * n + 1];
        zc[n] = zw[n] = 0;
        for (int r = 0; r < ranks_; ++r) {
          zc[n] += gathered_[2 * (static_cast<std::size_t>(r) * nb + n)];
          zw[n] += gathered_[2 * (static_cast<std::size_t>(r) * nb + n) + 1];
        }
      }
    }
    // The token block's dH partial summed over the ranks.
    template <class C>
    void gradient(C* partial, Index count) const {
      detail::check(
          MPI_Allreduce(MPI_IN_PLACE, partial, detail::message_count(name, count),
                        std::is_same_v<C, float> ? MPI_FLOAT : MPI_DOUBLE, MPI_SUM, comm_),
          "MPI_Allreduce");
    }

   private:
    MPI_Comm comm_;
    int ranks_ = 1;
    mutable std::vector<long double> states_;
    mutable std::vector<double> mine_, gathered_;
  };

  template <class XH, class XW, class XB, class Labels, class PH, class PW, class PB>
  double run(const XH& h, const XW& w, const XB* b, Index begin, const Labels& labels, PH dh, PW dw,
             PB db, const TokenOutputs& out) const {
    if (begin < 0 || begin > vocab_size_ - w.rows())
      detail::fail(name, ": the shard [begin, begin + ", w.rows(), ") = [", begin, ", ",
                   begin + w.rows(), ") must lie in [0, vocab_size = ", vocab_size_, ")");
    return options_.run_shard(name, h, w, b, labels, dh, dw, db, out, begin, vocab_size_,
                              Combine(comm_));
  }

  MPI_Comm comm_;
  Index vocab_size_;
  LinearCrossEntropy options_;
};

}  // namespace mpi
}  // namespace softmaxlab
