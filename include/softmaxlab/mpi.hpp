// softmaxlab: softmax, cross-entropy and sampling over a vocabulary split across MPI processes
// (optional: needs an MPI implementation, e.g. Debian's libopenmpi-dev; CMake target
// softmaxlab::mpi, which links MPI::MPI_CXX. The rest of softmaxlab never includes this header).
//
// Each rank of a communicator holds the columns [begin, end) of an N x V logits matrix (the
// vocabulary-parallel layout of Megatron-LM's output layer: Shoeybi et al., "Megatron-LM",
// arXiv 1909.08053, and its vocab_parallel_cross_entropy). The shards are combined through the
// online normalizer of single_pass.hpp (Milakov & Gimelshein, arXiv 1805.02867): per row a state
// [m, d], m = max_j x_j / T, d = sum_j exp(x_j / T - m), merged by
//   [m1, d1] (+) [m2, d2] = [M, d1 exp(m1 - M) + d2 exp(m2 - M)],   M = max(m1, m2),
// in a user-defined commutative MPI_Op, so one MPI_Allreduce of 2N numbers (long double, 32 bytes
// per row on x86-64) gives every rank the normalizer of every whole row.
//
//   allreduce(normalizer, comm)            one OnlineNormalizer: afterwards every rank holds the
//   allreduce(normalizers, n, comm)        state of all ranks' inputs (count() summed too); the
//   allreduce(std::vector<...>&, comm)     batched forms merge one state per row in one call.
//   VocabParallelSoftmax(comm, T = 1)      .rowwise(X_shard, Y_shard) (N x (end - begin)) and
//   VocabParallelLogSoftmax(comm, T = 1)   .apply(x_shard, y_shard) (one row); y may be x.
//   VocabParallelCrossEntropy(comm, V, reduction = Mean, label_smoothing = 0, ignore_index = -100)
//       double loss = ce(Z_shard, begin, labels[, G_shard]);
//     the loss of CrossEntropyLoss (loss.hpp) on the whole N x V matrix, and this rank's columns
//     of its gradient, for labels anywhere in [0, V): the global [max, sum] as above, then each
//     rank adds the terms -q_k log p_k of its own columns (the target's term on the rank that
//     owns the label) and the ranks' partial losses are gathered and added in rank order (one
//     MPI_Allgather of one double per rank). Label smoothing and ignore_index as CrossEntropyLoss.
//   Index token = sample(x_shard, begin, gen, comm)
//     an exact draw from softmax(x) over the whole vocabulary: the Gumbel-max trick of
//     GumbelSoftmax::sample with the noise of global column j taken from word 1 (float) or 2
//     (double) times j of gen's Philox4x32 stream (each rank skips ahead to its begin), so the
//     token is that of GumbelSoftmax::sample(x, gen) on the whole row in one process, for any
//     number of ranks; the winner is chosen by a commutative MPI_Op (largest x_j + g_j, the
//     lowest j on ties, as MPI_MAXLOC). gen is not advanced: use a new stream or discard the
//     row's words for the next draw.
//
// Shapes: every rank passes the same N (rows) and labels; the shard widths may differ, and an
// empty shard (more ranks than columns) is fine. V and begin are the caller's: shards must not
// overlap and must cover [0, V) (not checked: that would cost another collective).
//
// Accuracy: the merged state is that of OnlineNormalizer::merge (the MPI_Op calls the same
// merge), so probabilities and log-probabilities carry Softmax's bound
//   |y_i - exact| <= 4 eps (1 + |x_i/T - m|) |exact|   (log: 4 eps (1 + |exact|)),
// and the loss that of CrossEntropyLoss (the terms are the same; only the order of the final
// additions differs: measured <= 1e-15 relative in double). The result is bitwise the same on
// every rank (tests/mpi/test_mpi.cpp checks it) and depends on the number of ranks only through
// the rounding of the merges. With T != 1 the states cross the network scaled by 1/T in long
// double and the max is restored as round(m T), exact wherever long double is wider than the
// scalar (x86-64; float everywhere).
//
// Special values (softmaxlab's policy, on the whole row): a NaN on any rank makes the row NaN on
// every rank (the loss NaN, sample() -1); -inf entries get exactly 0 (never drawn); a row of only
// -inf gives zeros (sample() -1); k entries at +inf share the mass 1/k (sample(): the first one).
//
// Outputs (y, grad): a const Matrix does not compile; pass a Map, Ref or a block such as Y.row(i).
// Errors: std::invalid_argument naming the value (temperature, vocab_size, begin, labels, label
// smoothing, reduction, output shapes), thrown by the rank that sees it before any communication
// (every argument that must agree across ranks, such as N, V and the labels, is checked the same
// way on every rank, so all ranks throw together); std::runtime_error if an MPI call returns an
// error (only when the communicator's error handler returns errors; MPI's default aborts).
// Everything here allocates O(N) scratch for the messages.
//
// Threads: the MPI datatypes and operations are created once, on first use (thread-safe C++
// static initialization), and freed when MPI_Finalize runs (an attribute on MPI_COMM_SELF).
// Calls from several threads at once need MPI_THREAD_MULTIPLE, as for any MPI call.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "detail/checks.hpp"
#include "detail/functor_base.hpp"
#include "detail/log_normalizer.hpp"
#include "gumbel.hpp"
#include "loss.hpp"
#include "random.hpp"
#include "single_pass.hpp"

namespace softmaxlab {
namespace mpi {

namespace detail {

using softmaxlab::detail::fail;

inline void check(int code, const char* call) {
  if (code != MPI_SUCCESS)
    softmaxlab::detail::raise_error(
        softmaxlab::ErrorKind::runtime_error,
        std::string("softmaxlab::mpi: ") + call + " failed with MPI error " + std::to_string(code));
}

// Message element counts are ints in MPI.
inline int message_count(const char* function, Index n) {
  if (n > Index(std::numeric_limits<int>::max()))
    fail(function, ": ", n, " rows do not fit one MPI message (at most ",
         std::numeric_limits<int>::max(), ")");
  return static_cast<int>(n);
}

// The wire form of a normalizer state: K long doubles, [m / T, d] (K = 2) or [m / T, d, count]
// (K = 3). Scaled by 1/T, states of any temperature merge at temperature 1.
template <int K>
void merge_states(void* in, void* inout, int* len, MPI_Datatype* /*type*/) {
  const auto* a = static_cast<const long double*>(in);
  auto* b = static_cast<long double*>(inout);
  for (int i = 0; i < *len; ++i, a += K, b += K) {
    softmaxlab::detail::merge_normalizer_state<long double>(b[0], b[1], a[0], a[1], 1.0L);
    if constexpr (K == 3)
      b[2] += a[2];
  }
}

// The wire form of a Gumbel-max candidate: [x_j + g_j, j] in doubles (j < 2^53 exactly), j = -1
// for no candidate (all -inf), -2 when a NaN was seen. The larger value wins, the lower j on ties.
inline void merge_draws(void* in, void* inout, int* len, MPI_Datatype* /*type*/) {
  const auto* a = static_cast<const double*>(in);
  auto* b = static_cast<double*>(inout);
  for (int i = 0; i < *len; ++i, a += 2, b += 2) {
    if (b[1] == -2 || a[1] == -1)
      continue;
    if (a[1] == -2 || b[1] == -1 || a[0] > b[0] || (a[0] == b[0] && a[1] < b[1])) {
      b[0] = a[0];
      b[1] = a[1];
    }
  }
}

struct Registry {
  MPI_Datatype state2, state3, draw;
  MPI_Op merge2, merge3, pick;
};

inline int free_registry(MPI_Comm /*comm*/, int /*key*/, void* attribute, void* /*extra*/) {
  auto* r = static_cast<Registry*>(attribute);
  MPI_Op_free(&r->merge2);
  MPI_Op_free(&r->merge3);
  MPI_Op_free(&r->pick);
  MPI_Type_free(&r->state2);
  MPI_Type_free(&r->state3);
  MPI_Type_free(&r->draw);
  delete r;
  return MPI_SUCCESS;
}

// The datatypes and operations, created on first use; MPI_Finalize frees them (it deletes the
// attributes of MPI_COMM_SELF first, while MPI is still usable).
inline const Registry& registry() {
  static const Registry* const r = [] {
    auto* created = new Registry;
    check(MPI_Type_contiguous(2, MPI_LONG_DOUBLE, &created->state2), "MPI_Type_contiguous");
    check(MPI_Type_contiguous(3, MPI_LONG_DOUBLE, &created->state3), "MPI_Type_contiguous");
    check(MPI_Type_contiguous(2, MPI_DOUBLE, &created->draw), "MPI_Type_contiguous");
    check(MPI_Type_commit(&created->state2), "MPI_Type_commit");
    check(MPI_Type_commit(&created->state3), "MPI_Type_commit");
    check(MPI_Type_commit(&created->draw), "MPI_Type_commit");
    check(MPI_Op_create(&merge_states<2>, 1, &created->merge2), "MPI_Op_create");
    check(MPI_Op_create(&merge_states<3>, 1, &created->merge3), "MPI_Op_create");
    check(MPI_Op_create(&merge_draws, 1, &created->pick), "MPI_Op_create");
    int key = MPI_KEYVAL_INVALID;
    check(MPI_Comm_create_keyval(MPI_COMM_NULL_COPY_FN, &free_registry, &key, nullptr),
          "MPI_Comm_create_keyval");
    check(MPI_Comm_set_attr(MPI_COMM_SELF, key, created), "MPI_Comm_set_attr");
    return created;
  }();
  return *r;
}

// In-place allreduce of `count` states of K long doubles each (nothing is sent for count 0, which
// must then be 0 on every rank).
template <int K>
void allreduce_states(long double* states, int count, MPI_Comm comm) {
  if (count == 0)
    return;
  const Registry& r = registry();
  check(MPI_Allreduce(MPI_IN_PLACE, states, count, K == 2 ? r.state2 : r.state3,
                      K == 2 ? r.merge2 : r.merge3, comm),
        "MPI_Allreduce");
}

// OnlineNormalizer <-> wire: the max scaled by 1/T (restored as round(m T)).
template <class Scalar>
void pack(const OnlineNormalizer<Scalar>& state, long double* out) {
  const long double t = state.temperature();
  out[0] = t == 1 ? static_cast<long double>(state.max()) : state.max() / t;
  out[1] = state.exact_sum();
}
template <class Scalar>
Scalar unpack_max(const long double* in, double temperature) {
  return static_cast<Scalar>(temperature == 1.0 ? in[0] : in[0] * temperature);
}

// The merged [max, sum] of every row of a shard: 2 rows long doubles, after one allreduce.
template <class X>
std::vector<long double> row_states(const char* function, const X& x, double temperature,
                                    MPI_Comm comm) {
  using Scalar = typename X::Scalar;
  const int rows = message_count(function, x.rows());
  std::vector<long double> states(2 * static_cast<std::size_t>(rows));
  for (Index n = 0; n < rows; ++n) {
    OnlineNormalizer<Scalar> local(temperature);
    if (x.cols() == 0) {  // an empty shard: the empty state (and no block of a null pointer)
      pack(local, states.data() + 2 * n);
      continue;
    }
    local.update(x.row(n));
    pack(local, states.data() + 2 * n);
  }
  allreduce_states<2>(states.data(), rows, comm);
  return states;
}

// Shared body of VocabParallelSoftmax and VocabParallelLogSoftmax.
template <bool kLog>
class VocabParallelNormalize {
 public:
  VocabParallelNormalize(const char* name, MPI_Comm comm, double temperature)
      : name_(name),
        comm_(comm),
        temperature_(softmaxlab::detail::check_temperature(
            kLog ? "VocabParallelLogSoftmax: temperature" : "VocabParallelSoftmax: temperature",
            temperature)) {}

  double temperature() const { return temperature_; }
  MPI_Comm comm() const { return comm_; }

  // Each row of the N x (end - begin) shard x_shard: its columns of the whole row's (log-)softmax.
  template <class XprX, class Out>
  void rowwise(const Eigen::DenseBase<XprX>& x_shard, Out&& y_out) const {
    using XprY = softmaxlab::detail::output_xpr_t<Out>;
    static_assert(softmaxlab::detail::is_writable_storage_v<XprY>,
                  "softmaxlab: the output must be writable storage, not an expression");
    auto& y = softmaxlab::detail::writable_output(std::forward<Out>(y_out));
    softmaxlab::detail::require_same_size(name_, x_shard.rows(), x_shard.cols(), y.rows(),
                                          y.cols());
    const auto& x = x_shard.derived();
    const std::vector<long double> states = row_states(name_, x, temperature_, comm_);
    using Scalar = typename XprX::Scalar;
    for (Index n = 0; n < x.rows() && x.cols() > 0; ++n) {
      const long double* s = states.data() + 2 * n;
      const auto whole = OnlineNormalizer<Scalar>::from_state(unpack_max<Scalar>(s, temperature_),
                                                              s[1], 0, temperature_);
      if constexpr (kLog) {
        whole.write_log(x.row(n), y.row(n));
      } else {
        whole.write(x.row(n), y.row(n));
      }
    }
  }

  template <class XprX>
  typename XprX::PlainObject rowwise(const Eigen::DenseBase<XprX>& x_shard) const {
    typename XprX::PlainObject y(x_shard.rows(), x_shard.cols());
    rowwise(x_shard, y);
    return y;
  }

  // One row: x_shard is this rank's part of a 1-D vector (either orientation).
  template <class XprX, class Out>
  void apply(const Eigen::DenseBase<XprX>& x_shard, Out&& y_out) const {
    softmaxlab::detail::require_vector(name_, x_shard.rows(), x_shard.cols());
    auto& y = softmaxlab::detail::writable_output(std::forward<Out>(y_out));
    softmaxlab::detail::require_vector(name_, y.rows(), y.cols());
    if (y.size() != x_shard.size())
      fail(name_, ": output must have the shard's length ", x_shard.size(), ", but got ", y.rows(),
           " x ", y.cols());
    using Scalar = typename XprX::Scalar;
    OnlineNormalizer<Scalar> local(temperature_);
    local.update(x_shard);
    long double state[2];
    pack(local, state);
    allreduce_states<2>(state, 1, comm_);
    const auto whole = OnlineNormalizer<Scalar>::from_state(unpack_max<Scalar>(state, temperature_),
                                                            state[1], 0, temperature_);
    if constexpr (kLog) {
      whole.write_log(x_shard, y);
    } else {
      whole.write(x_shard, y);
    }
  }

  template <class XprX>
  typename XprX::PlainObject operator()(const Eigen::DenseBase<XprX>& x_shard) const {
    typename XprX::PlainObject y(x_shard.rows(), x_shard.cols());
    apply(x_shard, y);
    return y;
  }

 private:
  const char* name_;
  MPI_Comm comm_;
  double temperature_;
};

}  // namespace detail

// Merges one OnlineNormalizer across the ranks of comm: afterwards every rank holds the state of
// all ranks' inputs (every rank must pass a state of the same temperature).
template <class Scalar>
void allreduce(OnlineNormalizer<Scalar>& normalizer, MPI_Comm comm) {
  long double state[3];
  detail::pack(normalizer, state);
  state[2] = static_cast<long double>(normalizer.count());
  detail::allreduce_states<3>(state, 1, comm);
  normalizer = OnlineNormalizer<Scalar>::from_state(
      detail::unpack_max<Scalar>(state, normalizer.temperature()), state[1],
      static_cast<Index>(state[2]), normalizer.temperature());
}

// The batched form: normalizers[0..n) (one per row) merged with the same index on every rank, in
// one allreduce of 3n long doubles.
template <class Scalar>
void allreduce(OnlineNormalizer<Scalar>* normalizers, Index n, MPI_Comm comm) {
  if (n < 0)
    detail::fail("softmaxlab::mpi::allreduce: n must be >= 0, but got ", n);
  const int count = detail::message_count("softmaxlab::mpi::allreduce", n);
  std::vector<long double> states(3 * static_cast<std::size_t>(count));
  for (int i = 0; i < count; ++i) {
    detail::pack(normalizers[i], states.data() + 3 * i);
    states[3 * i + 2] = static_cast<long double>(normalizers[i].count());
  }
  detail::allreduce_states<3>(states.data(), count, comm);
  for (int i = 0; i < count; ++i) {
    const long double* s = states.data() + 3 * i;
    const double t = normalizers[i].temperature();
    normalizers[i] = OnlineNormalizer<Scalar>::from_state(detail::unpack_max<Scalar>(s, t), s[1],
                                                          static_cast<Index>(s[2]), t);
  }
}

// The same for a batch of states, one message for all of them.
template <class Scalar, class Allocator>
void allreduce(std::vector<OnlineNormalizer<Scalar>, Allocator>& normalizers, MPI_Comm comm) {
  allreduce(normalizers.data(), static_cast<Index>(normalizers.size()), comm);
}

// Softmax over the whole vocabulary of rows split by columns across ranks: see the doc block.
class VocabParallelSoftmax : public detail::VocabParallelNormalize<false> {
 public:
  // The variant's name, as error messages give it.
  static constexpr const char* name = "VocabParallelSoftmax";
  // comm the communicator of the ranks holding the vocabulary's shards; Throws
  // std::invalid_argument naming the value when temperature is outside [2^-100, 2^100] (NaN
  // included).
  explicit VocabParallelSoftmax(MPI_Comm comm, double temperature = 1.0)
      : VocabParallelNormalize(name, comm, temperature) {}
};

// Log-softmax over the whole vocabulary: y = x/T - m - log d, on this rank's columns.
class VocabParallelLogSoftmax : public detail::VocabParallelNormalize<true> {
 public:
  // The variant's name, as error messages give it.
  static constexpr const char* name = "VocabParallelLogSoftmax";
  // comm the communicator of the ranks holding the vocabulary's shards; Throws
  // std::invalid_argument naming the value when temperature is outside [2^-100, 2^100] (NaN
  // included).
  explicit VocabParallelLogSoftmax(MPI_Comm comm, double temperature = 1.0)
      : VocabParallelNormalize(name, comm, temperature) {}
};

// Megatron-LM's vocabulary-parallel cross-entropy with CrossEntropyLoss's options: see the doc
// block. Labels are global class indices, the same on every rank.
class VocabParallelCrossEntropy {
 public:
  // The variant's name, as error messages give it.
  static constexpr const char* name = "VocabParallelCrossEntropy";

  // comm as above; vocab_size the whole vocabulary (> 0); reduction, label_smoothing in [0, 1] and
  // ignore_index as CrossEntropyLoss; throws std::invalid_argument naming the value otherwise.
  VocabParallelCrossEntropy(MPI_Comm comm, Index vocab_size, Reduction reduction = Reduction::Mean,
                            double label_smoothing = 0.0,
                            long ignore_index = CrossEntropyLoss::default_ignore_index)
      : comm_(comm), vocab_size_(vocab_size), loss_(reduction, label_smoothing, ignore_index) {
    if (vocab_size < 0)
      detail::fail(name, ": vocab_size must be >= 0, but got ", vocab_size);
  }

  // The vocab size this object was built with.
  Index vocab_size() const { return vocab_size_; }
  // The reduction this object was built with.
  Reduction reduction() const { return loss_.reduction(); }
  // The label smoothing this object was built with.
  double label_smoothing() const { return loss_.label_smoothing(); }
  // The ignore index this object was built with.
  long ignore_index() const { return loss_.ignore_index(); }
  // The comm this object was built with.
  MPI_Comm comm() const { return comm_; }

  // The loss (the same on every rank). logits_shard: N x (end - begin), columns [begin, end).
  template <class XprZ, class Labels>
  double operator()(const Eigen::DenseBase<XprZ>& logits_shard, Index begin,
                    const Labels& labels) const {
    return softmaxlab::detail::with_storage(logits_shard, [&](const auto& z) {
      return impl(z, begin, labels, static_cast<std::nullptr_t>(nullptr));
    });
  }

  // The loss, and this rank's columns of dloss/dlogits written into grad_shard (the shard's shape;
  // it may be logits_shard itself).
  template <class XprZ, class Labels, class Out>
  double operator()(const Eigen::DenseBase<XprZ>& logits_shard, Index begin, const Labels& labels,
                    Out&& grad_out) const {
    using Scalar = typename XprZ::Scalar;
    using XprG = softmaxlab::detail::output_xpr_t<Out>;
    static_assert(std::is_same_v<Scalar, typename XprG::Scalar>,
                  "softmaxlab: logits and grad must have the same scalar type");
    static_assert(softmaxlab::detail::is_writable_storage_v<XprG>,
                  "softmaxlab: grad must be writable storage, not an expression");
    auto& grad = softmaxlab::detail::writable_output(std::forward<Out>(grad_out));
    softmaxlab::detail::require_same_shape(name, softmaxlab::detail::SliceMode::Rows, "grad",
                                           grad.rows(), grad.cols(), logits_shard.rows(),
                                           logits_shard.cols());
    if constexpr (softmaxlab::detail::has_direct_access_v<XprZ>) {
      if (softmaxlab::detail::storage_partially_overlaps(logits_shard.derived(), grad))
        detail::fail(name, ": grad partially overlaps the logits (only exact in-place is allowed)");
      return impl(logits_shard.derived(), begin, labels, &grad);
    } else {
      softmaxlab::detail::evaluate_into(logits_shard, grad);
      return impl(grad, begin, labels, &grad);
    }
  }

 private:
  template <class Z, class Labels, class G>
  double impl(const Z& z, Index begin, const Labels& labels_in, G grad_ptr) const {
    using Scalar = typename Z::Scalar;
    namespace sd = softmaxlab::detail;
    sd::static_check_scalar<Scalar>();
    constexpr bool has_grad = !std::is_same_v<G, std::nullptr_t>;
    const Index rows = z.rows(), width = z.cols();
    if (begin < 0 || begin > vocab_size_ - width) {
      detail::fail(name, ": the shard [begin, begin + ", width, ") = [", begin, ", ", begin + width,
                   ") must lie in [0, vocab_size = ", vocab_size_, ")");
    }
    const auto labels = sd::label_span(name, labels_in);
    if (labels.size != rows) {
      detail::fail(name, ": labels must have one entry per row of the logits (", rows,
                   "), but got ", labels.size);
    }
    const long ignore = loss_.ignore_index();
    Index counted = 0;
    for (Index n = 0; n < rows; ++n) {
      const long c = static_cast<long>(labels[n]);
      if (c == ignore)
        continue;
      if (c < 0 || c >= vocab_size_) {
        detail::fail(name, ": label ", c, " of sample ", n, " is outside [0, ", vocab_size_,
                     ") and is not the ignore_index ", ignore);
      }
      ++counted;
    }
    const double eps = loss_.label_smoothing();
    const double uniform = vocab_size_ > 0 ? eps / static_cast<double>(vocab_size_) : 0.0;
    const double w = loss_.reduction() == Reduction::Mean && counted > 0
                         ? 1.0 / static_cast<double>(counted)
                         : 1.0;

    // Each row's local normalizer (with grad, the exp terms are kept in grad, as
    // CrossEntropyLoss does, so every entry costs one vectorized exp), then one allreduce of 2N
    // numbers: the [max, sum] of every whole row.
    bool store_terms = has_grad;
    if constexpr (has_grad)
      store_terms = !sd::storage_overlaps(z, *grad_ptr);
    const int count = detail::message_count(name, rows);
    std::vector<sd::LogNormalizer<Scalar>> locals(static_cast<std::size_t>(count));
    std::vector<long double> states(2 * static_cast<std::size_t>(count));
    for (Index n = 0; n < rows; ++n) {
      states[2 * n] = -std::numeric_limits<long double>::infinity();  // ignored rows: empty
      states[2 * n + 1] = 0;
      if (static_cast<long>(labels[n]) == ignore)
        continue;
      sd::Span<Scalar> store{nullptr, 0, 1};
      if constexpr (has_grad) {
        if (store_terms)
          store = sd::slice_span<Scalar>(*grad_ptr, n, true);
      }
      auto& local = locals[static_cast<std::size_t>(n)];
      local =
          sd::LogNormalizer<Scalar>::of(sd::slice_span<const Scalar>(z, n, true), Scalar(1), store);
      states[2 * n] = local.m;
      states[2 * n + 1] = local.sum;
    }
    detail::allreduce_states<2>(states.data(), count, comm_);

    // This rank's terms, with the whole row's normalizer.
    double partial = 0;
    for (Index n = 0; n < rows; ++n) {
      const long c = static_cast<long>(labels[n]);
      sd::Span<Scalar> g{nullptr, 0, 1};
      if constexpr (has_grad)
        g = sd::slice_span<Scalar>(*grad_ptr, n, true);
      if (c == ignore) {
        if constexpr (has_grad)
          sd::fill(g, Scalar(0));
        continue;
      }
      const long double* s = states.data() + 2 * n;
      auto whole = sd::LogNormalizer<Scalar>::from_state(static_cast<Scalar>(s[0]), s[1]);
      const auto& local = locals[static_cast<std::size_t>(n)];
      const bool stored =
          store_terms && local.kind == sd::RowKind::Regular && whole.kind == sd::RowKind::Regular;
      if (stored) {
        // The kept terms are exp(z - m_local) 2^k: p = term exp(m_local - M) / (2^k sum).
        whole.inv_stored_sum =
            static_cast<Scalar>(std::exp(static_cast<long double>(local.m) - s[0])
                                / std::ldexp(s[1], sd::kExpScaleLog2<Scalar>));
      }
      const long local_c = c - static_cast<long>(begin);  // the label's column here, if any
      const auto q = [&](Index k) {
        return (k == local_c ? 1.0 - eps : 0.0) + uniform;
      };
      partial += sd::cross_entropy_terms<Scalar>(sd::slice_span<const Scalar>(z, n, true), g,
                                                 has_grad, stored, whole, q, 1.0, w);
    }

    // The ranks' partial losses, added in rank order on every rank (bitwise the same everywhere).
    int ranks = 1;
    detail::check(MPI_Comm_size(comm_, &ranks), "MPI_Comm_size");
    std::vector<double> partials(static_cast<std::size_t>(ranks));
    detail::check(MPI_Allgather(&partial, 1, MPI_DOUBLE, partials.data(), 1, MPI_DOUBLE, comm_),
                  "MPI_Allgather");
    double total = 0;
    for (double p : partials)
      total += p;
    return total * w;
  }

  MPI_Comm comm_;
  Index vocab_size_;
  CrossEntropyLoss loss_;  // holds and checks reduction, label_smoothing and ignore_index
};

// An exact draw from softmax over the whole vocabulary: see the doc block. x_shard is this rank's
// part (columns [begin, begin + size)) of a 1-D row; returns the global index, the same on every
// rank, or -1 when nothing can be drawn (a NaN anywhere, or every logit -inf).
template <class XprX>
Index sample(const Eigen::DenseBase<XprX>& x_shard, Index begin, const Philox4x32& gen,
             MPI_Comm comm) {
  using Scalar = typename XprX::Scalar;
  softmaxlab::detail::static_check_scalar<Scalar>();
  softmaxlab::detail::require_vector("softmaxlab::mpi::sample", x_shard.rows(), x_shard.cols());
  if (begin < 0)
    detail::fail("softmaxlab::mpi::sample: begin must be >= 0, but got ", begin);
  Philox4x32 local = gen;
  local.discard(static_cast<unsigned long long>(begin)
                * softmaxlab::detail::kWordsPerUniform<Scalar>);
  const auto best = softmaxlab::detail::gumbel_argmax(x_shard.derived(), local);
  double candidate[2] = {static_cast<double>(best.value),
                         best.nan         ? -2.0
                         : best.index < 0 ? -1.0
                                          : static_cast<double>(begin + best.index)};
  const detail::Registry& r = detail::registry();
  detail::check(MPI_Allreduce(MPI_IN_PLACE, candidate, 1, r.draw, r.pick, comm), "MPI_Allreduce");
  return candidate[1] < 0 ? -1 : static_cast<Index>(candidate[1]);
}

}  // namespace mpi
}  // namespace softmaxlab
