// Softmax, loss and sampling over a vocabulary sharded across MPI processes (the MPI form of
// sharded_vocabulary.cpp). Run it with any number of ranks:
//
//   mpirun -np 4 ./sharded_vocabulary_mpi          (as root add --allow-run-as-root;
//                                                    more ranks than cores: --oversubscribe)
//
// A language model's output layer over 1,000,000 tokens is split by columns: rank r owns the
// logits [V r / P, V (r + 1) / P). No rank ever sees the whole row (each regenerates it from the
// seed here only to check its answers against one process):
//   1. the merged log-sum-exp: each rank's OnlineNormalizer [max, sum], one allreduce of 2 numbers;
//   2. VocabParallelSoftmax: each rank's columns of the probabilities;
//   3. VocabParallelCrossEntropy: the loss for a label owned by the last rank, and each rank's
//      gradient columns;
//   4. sample(): a token drawn from softmax over the whole vocabulary, the same as one process
//      draws with the same Philox seed, whatever the number of ranks.
// Exits 1 (on every rank) if any result is off by more than the accuracy policy allows.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include <Eigen/Core>

#include <softmaxlab/mpi.hpp>
#include <softmaxlab/softmaxlab.hpp>

namespace sml = softmaxlab;
using Eigen::Index;

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, ranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);

  const Index vocabulary = 1000000;
  const Index begin = vocabulary * rank / ranks, end = vocabulary * (rank + 1) / ranks;

  // The same peaked logits as sharded_vocabulary.cpp, in double: N(0, 2), 300 strong candidates.
  Eigen::VectorXd logits(vocabulary);
  std::mt19937 gen(2026);
  std::normal_distribution<double> noise(0.0, 2.0);
  for (Index i = 0; i < vocabulary; ++i)
    logits(i) = noise(gen);
  std::uniform_int_distribution<Index> token(0, vocabulary - 1);
  for (int k = 0; k < 300; ++k)
    logits(token(gen)) += 12.0;
  const Eigen::VectorXd shard = logits.segment(begin, end - begin);  // all this rank owns
  bool ok = true;

  // 1. The merged log-sum-exp.
  sml::OnlineNormalizer<double> state;
  state.update(shard);
  sml::mpi::allreduce(state, MPI_COMM_WORLD);
  sml::OnlineNormalizer<double> whole;
  whole.update(logits);
  const double lse_error = std::fabs(state.log_sum_exp() - whole.log_sum_exp());
  ok = ok && lse_error <= 1e-14 * std::fabs(whole.log_sum_exp());

  // 2. This rank's probabilities, against a one-shot Softmax over the whole row.
  Eigen::VectorXd p(end - begin);
  sml::mpi::VocabParallelSoftmax(MPI_COMM_WORLD).apply(shard, p);
  const Eigen::VectorXd p_whole = sml::Softmax()(logits);
  double p_error = 0;  // in units of the Softmax bound 4 eps (1 + |x - m|) p, doubled (two sides)
  const double m = logits.maxCoeff();
  for (Index i = begin; i < end; ++i) {
    const double allowed = 8 * 2.220446049250313e-16 * (1 + std::fabs(logits(i) - m)) * p_whole(i);
    p_error = std::max(p_error, std::fabs(p(i - begin) - p_whole(i)) / allowed);
  }
  MPI_Allreduce(MPI_IN_PLACE, &p_error, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  ok = ok && p_error <= 1;

  // 3. The loss for a label that lives on the last rank, and this rank's gradient columns.
  const std::vector<int> label = {static_cast<int>(vocabulary - 7)};
  Eigen::RowVectorXd grad(end - begin);
  const double loss = sml::mpi::VocabParallelCrossEntropy(MPI_COMM_WORLD, vocabulary)(
      shard.transpose(), begin, label, grad);
  Eigen::RowVectorXd grad_whole(vocabulary);
  const double loss_whole = sml::CrossEntropyLoss()(logits.transpose(), label, grad_whole);
  const double loss_error = std::fabs(loss - loss_whole) / std::fabs(loss_whole);
  double grad_error = (grad - grad_whole.segment(begin, end - begin)).cwiseAbs().maxCoeff();
  MPI_Allreduce(MPI_IN_PLACE, &grad_error, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  ok = ok && loss_error <= 1e-12 && grad_error <= 1e-15;

  // 4. A sampled token: the same as one process draws with the same Philox stream.
  const sml::Philox4x32 philox(/*seed=*/42, /*stream=*/0);
  const Index drawn = sml::mpi::sample(shard, begin, philox, MPI_COMM_WORLD);
  sml::Philox4x32 copy = philox;
  const Index drawn_whole = sml::GumbelSoftmax::sample(logits, copy);
  ok = ok && drawn == drawn_whole;

  int all_ok = ok ? 1 : 0;
  MPI_Allreduce(MPI_IN_PLACE, &all_ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (rank == 0) {
    std::printf("vocabulary %ld over %d rank(s), %ld logits on rank 0\n",
                static_cast<long>(vocabulary), ranks, static_cast<long>(end - begin));
    std::printf("merged log-sum-exp     %.15f (one process %.15f)\n", state.log_sum_exp(),
                whole.log_sum_exp());
    std::printf("probabilities          worst error %.3f x the Softmax bound\n", p_error);
    std::printf("loss for label %d  %.15f (one process %.15f, relative %.1e)\n", label[0], loss,
                loss_whole, loss_error);
    std::printf("gradient columns       max |difference| %.1e\n", grad_error);
    std::printf("sampled token          %ld (one process %ld)\n", static_cast<long>(drawn),
                static_cast<long>(drawn_whole));
    std::printf("%s\n", all_ok ? "OK: every result matches one process" : "FAILED");
  }
  MPI_Finalize();
  return all_ok ? 0 : 1;
}
