// Tests of softmaxlab/mpi.hpp, run by ctest under `mpirun -np 1`, `-np 2` and `-np 4` (label mpi).
//
// Every rank builds the same whole N x V matrices from fixed seeds, keeps its columns
// [V r / P, V (r + 1) / P), and checks the distributed results against one-process results
// computed on the whole matrix: an independent long double softmax (the Softmax bound),
// CrossEntropyLoss (loss within 1e-12 relative in double, gradient columns), GumbelSoftmax::sample
// (the same token, so the token does not depend on the number of ranks), and OnlineNormalizer on
// the whole row. Each result must also be bitwise the same on every rank. A plain-assertion
// harness: each case prints "<name>: N passed, N failed" (failures summed over the ranks) and the
// exit code is 1 if any rank failed any check.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include <Eigen/Core>

#include <softmaxlab/mpi.hpp>

#include "harness.hpp"

namespace {

namespace sml = softmaxlab;
using namespace softmaxlab_mpi_test;

// The rank's columns of a width-V row.
Index shard_begin(Index v, int r) {
  return v * r / ranks_;
}
Index shard_end(Index v, int r) {
  return v * (r + 1) / ranks_;
}

// True if every rank passes the same long double (compared by value: its padding bytes are not
// part of it), or every rank a NaN.
bool same_on_every_rank(long double value) {
  std::vector<long double> all(static_cast<std::size_t>(ranks_));
  MPI_Allgather(&value, 1, MPI_LONG_DOUBLE, all.data(), 1, MPI_LONG_DOUBLE, MPI_COMM_WORLD);
  for (long double other : all) {
    if (!(other == all[0] || (other != other && all[0] != all[0])))
      return false;
  }
  return true;
}

// True if every rank passes the same bytes (types without padding).
template <class T>
bool same_on_every_rank(const T& value) {
  std::vector<T> all(static_cast<std::size_t>(ranks_));
  MPI_Allgather(&value, sizeof(T), MPI_BYTE, all.data(), sizeof(T), MPI_BYTE, MPI_COMM_WORLD);
  for (const T& other : all) {
    if (std::memcmp(&other, &all[0], sizeof(T)) != 0)
      return false;
  }
  return true;
}

template <class S>
Matrix<S> random_logits(Index rows, Index cols, double spread, unsigned seed) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> normal(0.0, spread);
  Matrix<S> x(rows, cols);
  for (Index n = 0; n < rows; ++n)
    for (Index k = 0; k < cols; ++k)
      x(n, k) = static_cast<S>(normal(gen));
  return x;
}

// Rows with the special values of the policy, each spread over the shards.
template <class S>
void add_special_rows(Matrix<S>& x) {
  const S inf = std::numeric_limits<S>::infinity();
  const Index v = x.cols();
  x.row(0)(v - 1) = std::numeric_limits<S>::quiet_NaN();  // NaN on the last rank only
  x.row(1).setConstant(-inf);                             // all masked
  x.row(2)(v / 5) = inf;                                  // two +inf on different ranks
  x.row(2)(v - 2) = inf;
  for (Index k = 0; k < v; k += 3)
    x.row(3)(k) = -inf;     // masked entries everywhere
  x.row(4)(v / 2) = S(80);  // a dominant entry in a middle shard
}

// softmax(x / T) of one row in long double, with the policy's special values.
std::vector<long double> reference_softmax(const std::vector<long double>& x, long double t,
                                           bool log) {
  const long double inf = std::numeric_limits<long double>::infinity();
  std::vector<long double> y(x.size());
  long double m = -inf;
  bool nan = false;
  for (long double v : x) {
    nan = nan || v != v;
    m = std::max(m, v);
  }
  if (nan) {
    std::fill(y.begin(), y.end(), std::numeric_limits<long double>::quiet_NaN());
    return y;
  }
  if (m == -inf) {
    std::fill(y.begin(), y.end(), log ? -inf : 0.0L);
    return y;
  }
  if (m == inf) {
    long double k = 0;
    for (long double v : x)
      k += v == inf;
    for (std::size_t i = 0; i < x.size(); ++i)
      y[i] = x[i] == inf ? (log ? -std::log(k) : 1 / k) : (log ? -inf : 0.0L);
    return y;
  }
  long double sum = 0;
  for (long double v : x)
    sum += std::exp((v - m) / t);
  for (std::size_t i = 0; i < x.size(); ++i)
    y[i] = log ? (x[i] - m) / t - std::log(sum) : std::exp((x[i] - m) / t) / sum;
  return y;
}

template <class S>
bool same_value(S a, long double b) {
  return (a != a && b != b) || static_cast<long double>(a) == b;
}

// VocabParallelSoftmax / LogSoftmax on a shard against the long double reference, within
// Softmax's bound 4 eps (1 + |x/T - m|) |exact| (log: 4 eps (1 + |exact|)).
template <class S, bool kLog>
void vocab_parallel_softmax_case(double t) {
  const Index rows = 9, v = 1001;
  Matrix<S> x = random_logits<S>(rows, v, 4.0, 11);
  add_special_rows(x);
  const Index b = shard_begin(v, rank_), e = shard_end(v, rank_);
  Matrix<S> shard = x.middleCols(b, e - b);
  Matrix<S> y(rows, e - b);
  if constexpr (kLog) {
    sml::mpi::VocabParallelLogSoftmax(MPI_COMM_WORLD, t).rowwise(shard, y);
  } else {
    sml::mpi::VocabParallelSoftmax(MPI_COMM_WORLD, t).rowwise(shard, y);
  }
  const long double eps = std::numeric_limits<S>::epsilon();
  double worst = 0;
  for (Index n = 0; n < rows; ++n) {
    std::vector<long double> row(static_cast<std::size_t>(v));
    long double m = -std::numeric_limits<long double>::infinity();
    for (Index k = 0; k < v; ++k) {
      row[static_cast<std::size_t>(k)] = x(n, k);
      m = std::max(m, row[static_cast<std::size_t>(k)]);
    }
    const auto exact = reference_softmax(row, t, kLog);
    for (Index k = b; k < e; ++k) {
      const long double want = exact[static_cast<std::size_t>(k)];
      const S got = y(n, k - b);
      if (!std::isfinite(static_cast<double>(want)) || want == 0) {
        expect(same_value(got, want), "special value at row " + std::to_string(n) + " column "
                                          + std::to_string(k) + ": got " + std::to_string(got)
                                          + ", want " + std::to_string(static_cast<double>(want)));
        continue;
      }
      const long double allowed =
          kLog ? 4 * eps * (1 + std::fabs(want))
               : 4 * eps * (1 + std::fabs((row[static_cast<std::size_t>(k)] - m) / t)) * want;
      const double ratio = static_cast<double>(std::fabs(got - want) / allowed);
      worst = std::max(worst, ratio);
      if (ratio > 1)
        expect(false, "row " + std::to_string(n) + " column " + std::to_string(k) + ": error "
                          + std::to_string(ratio) + " x the bound");
    }
  }
  expect(worst <= 1, "worst error within the bound");
  if (rank_ == 0)
    std::printf("  %s<%s> T=%g: worst error %.3f x bound\n",
                kLog ? "VocabParallelLogSoftmax" : "VocabParallelSoftmax",
                sizeof(S) == 4 ? "float" : "double", t, worst);
  // The one-row form gives the rowwise result.
  Vector<S> row_out(e - b);
  Vector<S> row_in = shard.row(5).transpose();
  if constexpr (kLog) {
    sml::mpi::VocabParallelLogSoftmax(MPI_COMM_WORLD, t).apply(row_in, row_out);
  } else {
    sml::mpi::VocabParallelSoftmax(MPI_COMM_WORLD, t).apply(row_in, row_out);
  }
  expect((row_out.transpose().array() == y.row(5).array()).all(), "apply() equals rowwise()");
  // In place.
  Matrix<S> inplace = shard;
  sml::mpi::VocabParallelSoftmax(MPI_COMM_WORLD, t).rowwise(inplace, inplace);
  if constexpr (!kLog)
    expect(inplace.cwiseEqual(y).count() + (y.array() != y.array()).count() == y.size(),
           "in place equals out of place");
}

// allreduce(OnlineNormalizer) against the whole row's normalizer in one process.
template <class S>
void allreduce_case(double t) {
  const Index rows = 6, v = 3001;
  Matrix<S> x = random_logits<S>(rows, v, 5.0, 12);
  add_special_rows(x);
  const Index b = shard_begin(v, rank_), e = shard_end(v, rank_);
  std::vector<sml::OnlineNormalizer<S>> states;
  for (Index n = 0; n < rows; ++n) {
    states.emplace_back(t);
    states.back().update(x.row(n).segment(b, e - b));
  }
  sml::OnlineNormalizer<S> single_state(t);
  single_state.update(x.row(5).segment(b, e - b));
  sml::mpi::allreduce(single_state, MPI_COMM_WORLD);
  sml::mpi::allreduce(states, MPI_COMM_WORLD);
  for (Index n = 0; n < rows; ++n) {
    sml::OnlineNormalizer<S> whole(t);
    whole.update(x.row(n));
    const auto& got = states[static_cast<std::size_t>(n)];
    const std::string at = "row " + std::to_string(n) + ": ";
    expect(same_value(got.max(), whole.max()), at + "max");
    expect(got.count() == v, at + "count " + std::to_string(got.count()));
    const double rel = std::fabs(got.sum() - whole.sum()) / std::max(1.0, std::fabs(whole.sum()));
    // Each shard's terms exp((x - m_r)/T) round in the scalar type: a few eps of it apart.
    const double eps = std::numeric_limits<S>::epsilon();
    expect((got.sum() != got.sum() && whole.sum() != whole.sum()) || rel <= 4 * eps,
           at + "sum " + std::to_string(got.sum()) + " vs " + std::to_string(whole.sum())
               + ", relative " + std::to_string(rel / eps) + " eps");
    expect(same_on_every_rank(got.max()) && same_on_every_rank(got.exact_sum()),
           at + "the same state on every rank");
    const double lse = got.log_sum_exp(), want = whole.log_sum_exp();
    expect((lse != lse && want != want) || lse == want
               || std::fabs(lse - want) <= 4 * eps * std::max(1.0, std::fabs(want)),
           at + "log_sum_exp");
  }
  expect(single_state.exact_sum() == states[5].exact_sum() && single_state.count() == v,
         "the one-state form equals the batched form");
}

// VocabParallelCrossEntropy against CrossEntropyLoss on the whole matrix.
template <class S>
void cross_entropy_case(sml::Reduction reduction, double smoothing) {
  const Index rows = 12, v = 1003;
  Matrix<S> x = random_logits<S>(rows, v, 3.0, 13);
  std::mt19937 gen(14);
  std::uniform_int_distribution<int> label(0, static_cast<int>(v) - 1);
  std::vector<int> labels(static_cast<std::size_t>(rows));
  for (int& c : labels)
    c = label(gen);
  labels[3] = -100;                     // ignored
  labels[4] = static_cast<int>(v) - 1;  // on the last rank
  labels[5] = 0;                        // on the first rank
  const Index b = shard_begin(v, rank_), e = shard_end(v, rank_);
  Matrix<S> shard = x.middleCols(b, e - b);
  Matrix<S> grad(rows, e - b), grad_whole(rows, v);
  const sml::mpi::VocabParallelCrossEntropy vce(MPI_COMM_WORLD, v, reduction, smoothing);
  const sml::CrossEntropyLoss ce(reduction, smoothing);
  const double loss = vce(shard, b, labels, grad);
  const double loss_only = vce(shard, b, labels);
  const double want = ce(x, labels, grad_whole);
  const double rel = std::fabs(loss - want) / std::fabs(want);
  const double tolerance = std::is_same_v<S, double> ? 1e-12 : 1e-6;
  const std::string what = std::string(sizeof(S) == 4 ? "float" : "double") + " "
                           + (reduction == sml::Reduction::Mean ? "Mean" : "Sum") + " smoothing "
                           + std::to_string(smoothing);
  expect(rel <= tolerance, what + ": loss " + std::to_string(loss) + " vs " + std::to_string(want)
                               + ", relative " + std::to_string(rel));
  expect(loss_only == loss, what + ": the loss-only form gives the same loss");
  expect(same_on_every_rank(loss), what + ": the same loss on every rank");
  // Gradient columns: g = w (p - q); each p within Softmax's bound, so
  // |g - g'| <= w (8 eps (1 + |z - m|) p + 2 eps), with p read from the one-process gradient.
  const double eps = std::numeric_limits<S>::epsilon();
  const double w = reduction == sml::Reduction::Mean ? 1.0 / (rows - 1) : 1.0;
  double worst = 0;
  for (Index n = 0; n < rows; ++n) {
    const double m = static_cast<double>(x.row(n).maxCoeff());
    for (Index k = b; k < e; ++k) {
      const double g1 = grad(n, k - b), g0 = grad_whole(n, k);
      if (labels[static_cast<std::size_t>(n)] == -100) {
        expect(g1 == 0, what + ": ignored row has a zero gradient");
        continue;
      }
      const double q = (k == labels[static_cast<std::size_t>(n)] ? 1 - smoothing : 0)
                       + smoothing / static_cast<double>(v);
      const double p = g0 / w + q;
      const double allowed =
          w
          * (8 * eps * (1 + std::fabs(static_cast<double>(x(n, k)) - m)) * std::fabs(p) + 2 * eps);
      worst = std::max(worst, std::fabs(g1 - g0) / allowed);
    }
  }
  expect(worst <= 1, what + ": gradient columns within the bound, worst " + std::to_string(worst));
  if (rank_ == 0)
    std::printf("  %s: loss relative error %.2e, worst gradient error %.3f x bound\n", what.c_str(),
                rel, worst);
}

void cross_entropy_special_case() {
  const Index rows = 5, v = 401;
  Matrix<double> x = random_logits<double>(rows, v, 3.0, 15);
  add_special_rows(x);
  const std::vector<int> labels = {7, 3, static_cast<int>(v / 5), 1, static_cast<int>(v / 2)};
  const Index b = shard_begin(v, rank_), e = shard_end(v, rank_);
  Matrix<double> shard = x.middleCols(b, e - b);
  Matrix<double> grad(rows, e - b), grad_whole(rows, v);
  // Row by row: NaN row -> NaN loss; all -inf -> +inf; +inf label -> log 2; masked row finite.
  for (Index n = 0; n < rows; ++n) {
    const std::vector<int> one = {labels[static_cast<std::size_t>(n)]};
    const sml::mpi::VocabParallelCrossEntropy vce(MPI_COMM_WORLD, v, sml::Reduction::Sum);
    Matrix<double> g(1, e - b), gw(1, v);
    const double got = vce(shard.row(n), b, one, g);
    const double want = sml::CrossEntropyLoss(sml::Reduction::Sum)(x.row(n), one, gw);
    const std::string at = "special row " + std::to_string(n) + ": ";
    expect((got != got && want != want) || got == want
               || std::fabs(got - want) <= 1e-12 * std::fabs(want),
           at + "loss " + std::to_string(got) + " vs " + std::to_string(want));
    bool grad_ok = true;
    for (Index k = b; k < e; ++k) {
      const double a = g(0, k - b), c = gw(0, k);
      grad_ok = grad_ok
                && ((a != a && c != c) || a == c || std::fabs(a - c) <= 1e-14 * (1 + std::fabs(c)));
    }
    expect(grad_ok, at + "gradient columns");
  }
  // Errors: the same on every rank, before any communication.
  const sml::mpi::VocabParallelCrossEntropy vce(MPI_COMM_WORLD, v);
  auto throws = [&](const std::function<void()>& f) {
    try {
      f();
    } catch (const std::invalid_argument&) {
      return true;
    }
    return false;
  };
  expect(throws([&] {
           vce(shard, b, std::vector<int>{0, 1, 2, 3, static_cast<int>(v)});
         }),
         "a label >= V throws");
  expect(throws([&] { vce(shard, b, std::vector<int>{0, 1}); }), "labels of the wrong length");
  expect(throws([&] { vce(shard, v, labels); }) == (e - b > 0),
         "a shard past the vocabulary throws");
  expect(throws([] { sml::mpi::VocabParallelCrossEntropy(MPI_COMM_WORLD, -1); }),
         "vocab_size < 0 throws");
  expect(throws([] { sml::mpi::VocabParallelSoftmax(MPI_COMM_WORLD, 0.0); }),
         "temperature 0 throws");
}

// sample(): the token of GumbelSoftmax::sample on the whole row in one process, for every seed.
template <class S>
void sample_case() {
  const Index v = 5003;
  const Matrix<S> x = random_logits<S>(1, v, 2.0, 16);
  const Index b = shard_begin(v, rank_), e = shard_end(v, rank_);
  const Vector<S> whole = x.row(0).transpose();
  const Vector<S> shard = whole.segment(b, e - b);
  int equal = 0, total = 0;
  for (std::uint64_t seed = 0; seed < 200; ++seed) {
    const sml::Philox4x32 gen(seed, 7);
    sml::Philox4x32 copy = gen;
    const Index want = sml::GumbelSoftmax::sample(whole, copy);
    const Index got = sml::mpi::sample(shard, b, gen, MPI_COMM_WORLD);
    equal += got == want && same_on_every_rank(got);
    ++total;
  }
  expect(equal == total, std::string(sizeof(S) == 4 ? "float" : "double") + ": "
                             + std::to_string(equal) + " of " + std::to_string(total)
                             + " draws equal the one-process draw");
  if (rank_ == 0)
    std::printf("  sample<%s>: %d of %d draws equal GumbelSoftmax::sample on the whole row\n",
                sizeof(S) == 4 ? "float" : "double", equal, total);
  // Special values.
  const S inf = std::numeric_limits<S>::infinity();
  Vector<S> special = whole;
  special(v - 1) = std::numeric_limits<S>::quiet_NaN();
  const sml::Philox4x32 gen(3);
  expect(sml::mpi::sample(Vector<S>(special.segment(b, e - b)), b, gen, MPI_COMM_WORLD) == -1,
         "a NaN on the last rank gives -1");
  special.setConstant(-inf);
  expect(sml::mpi::sample(Vector<S>(special.segment(b, e - b)), b, gen, MPI_COMM_WORLD) == -1,
         "all -inf gives -1");
  special(v - 3) = inf;
  special(v / 3) = inf;
  expect(sml::mpi::sample(Vector<S>(special.segment(b, e - b)), b, gen, MPI_COMM_WORLD) == v / 3,
         "the first +inf is drawn");
  special.setConstant(-inf);
  special(v - 2) = S(0);
  expect(sml::mpi::sample(Vector<S>(special.segment(b, e - b)), b, gen, MPI_COMM_WORLD) == v - 2,
         "the only finite logit is drawn");
}

// More ranks than columns: some shards are empty.
void empty_shard_case() {
  const Index v = 3;
  const Matrix<double> x = random_logits<double>(2, v, 1.0, 17);
  const Index b = shard_begin(v, rank_), e = shard_end(v, rank_);
  Matrix<double> y(2, e - b);
  sml::mpi::VocabParallelSoftmax(MPI_COMM_WORLD).rowwise(x.middleCols(b, e - b), y);
  const Matrix<double> want = sml::Softmax().rowwise(x);
  for (Index k = b; k < e; ++k)
    expect(std::fabs(y(0, k - b) - want(0, k)) <= 1e-15
               && std::fabs(y(1, k - b) - want(1, k)) <= 1e-15,
           "empty shards: probabilities");
  const std::vector<int> labels = {2, 0};
  const double loss =
      sml::mpi::VocabParallelCrossEntropy(MPI_COMM_WORLD, v)(x.middleCols(b, e - b), b, labels);
  const double want_loss = sml::CrossEntropyLoss()(x, labels);
  expect(std::fabs(loss - want_loss) <= 1e-12 * want_loss, "empty shards: loss");
  const Vector<double> row = x.row(0).transpose();
  const sml::Philox4x32 gen(5);
  sml::Philox4x32 copy = gen;
  expect(sml::mpi::sample(row.segment(b, e - b), b, gen, MPI_COMM_WORLD)
             == sml::GumbelSoftmax::sample(row, copy),
         "empty shards: sample");
}

void run(const char* name, const std::function<void()>& test) {
  const long passed = passed_, failed = failed_;
  try {
    test();
  } catch (const std::exception& e) {
    expect(false, std::string(name) + " threw: " + e.what());
  }
  report(name, passed, failed);
}

}  // namespace

int main(int argc, char** argv) {
  start(&argc, &argv, "softmaxlab MPI tests");
  run("mpi.allreduce_matches_one_process", [] {
    allreduce_case<float>(1.0);
    allreduce_case<double>(1.0);
    allreduce_case<double>(0.7);
  });
  run("mpi.vocab_parallel_softmax_bound", [] {
    vocab_parallel_softmax_case<float, false>(1.0);
    vocab_parallel_softmax_case<double, false>(1.0);
    vocab_parallel_softmax_case<double, false>(0.5);
    vocab_parallel_softmax_case<float, true>(1.0);
    vocab_parallel_softmax_case<double, true>(2.0);
  });
  run("mpi.vocab_parallel_cross_entropy_matches", [] {
    for (const auto reduction : {sml::Reduction::Mean, sml::Reduction::Sum}) {
      for (const double smoothing : {0.0, 0.1}) {
        cross_entropy_case<double>(reduction, smoothing);
        cross_entropy_case<float>(reduction, smoothing);
      }
    }
  });
  run("mpi.vocab_parallel_cross_entropy_special", cross_entropy_special_case);
  run("mpi.sample_independent_of_ranks", [] {
    sample_case<float>();
    sample_case<double>();
  });
  run("mpi.empty_shards", empty_shard_case);
  const int code = finish();
  MPI_Finalize();
  return code;
}
