// softmaxlab_mpi_bench: VocabParallelCrossEntropy over MPI ranks against CrossEntropyLoss in one
// process, and the bytes each rank hands to MPI. Run it as
//
//   mpirun -np 2 build/bench/bench/softmaxlab_mpi_bench [rows] [vocabulary] [repetitions]
//
// (defaults 16 rows, V = 256,000, 15 repetitions; as root add --allow-run-as-root). Rank r owns
// the columns [V r / P, V (r + 1) / P) of an N x V float logits matrix; every timed call computes
// the loss and the rank's gradient columns (Mean reduction). The one-process baseline runs on
// rank 0 alone (the others wait at a barrier) on the whole matrix; the two alternate, one
// repetition each in turn. Times are medians over the repetitions, per row. Bytes are counted
// through the MPI profiling interface (the MPI_Allreduce and MPI_Allgather below wrap PMPI_*): the
// payload each rank passes per call, which the design states as 2N long doubles (the [max, sum]
// pairs, 32 bytes per row on x86-64) plus one double (the rank's partial loss).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include <Eigen/Core>

#include <softmaxlab/mpi.hpp>

namespace {
long long g_bytes = 0;  // payload bytes passed to the wrapped collectives by this rank
long long g_calls = 0;

long long type_bytes(MPI_Datatype type, int count) {
  int size = 0;
  PMPI_Type_size(type, &size);
  return static_cast<long long>(size) * count;
}
}  // namespace

extern "C" int MPI_Allreduce(const void* send, void* recv, int count, MPI_Datatype type, MPI_Op op,
                             MPI_Comm comm) {
  g_bytes += type_bytes(type, count);
  ++g_calls;
  return PMPI_Allreduce(send, recv, count, type, op, comm);
}

extern "C" int MPI_Allgather(const void* send, int send_count, MPI_Datatype send_type, void* recv,
                             int recv_count, MPI_Datatype recv_type, MPI_Comm comm) {
  g_bytes += type_bytes(send_type, send_count);
  ++g_calls;
  return PMPI_Allgather(send, send_count, send_type, recv, recv_count, recv_type, comm);
}

namespace sml = softmaxlab;
using Eigen::Index;
using MatrixRf = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, ranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  const Index rows = argc > 1 ? std::atol(argv[1]) : 16;
  const Index vocabulary = argc > 2 ? std::atol(argv[2]) : 256000;
  const int repetitions = argc > 3 ? std::atoi(argv[3]) : 15;
  const Index begin = vocabulary * rank / ranks, end = vocabulary * (rank + 1) / ranks;

  // Row-major, as an output layer's logits are laid out (each row contiguous).
  MatrixRf logits(rows, vocabulary);
  std::mt19937 gen(7);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (Index n = 0; n < rows; ++n)
    for (Index k = 0; k < vocabulary; ++k)
      logits(n, k) = normal(gen);
  std::vector<int> labels(static_cast<std::size_t>(rows));
  std::uniform_int_distribution<int> label(0, static_cast<int>(vocabulary) - 1);
  for (int& c : labels)
    c = label(gen);

  // The two are timed in alternation (one repetition of each in turn), so that a change of load
  // on the machine hits both alike. One process: on rank 0 alone, the others wait at a barrier.
  MatrixRf grad_whole;
  if (rank == 0)
    grad_whole.resize(rows, vocabulary);
  const sml::CrossEntropyLoss ce;
  double single_loss = 0;
  const MatrixRf shard = logits.middleCols(begin, end - begin);
  MatrixRf grad(rows, end - begin);
  const sml::mpi::VocabParallelCrossEntropy vce(MPI_COMM_WORLD, vocabulary);
  double loss = vce(shard, begin, labels, grad);  // warm-up (creates the MPI types and ops)
  if (rank == 0)
    single_loss = ce(logits, labels, grad_whole);
  g_bytes = 0;
  g_calls = 0;
  std::vector<double> single_times, parallel_times;
  for (int i = 0; i < repetitions; ++i) {
    PMPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) {
      const double start = MPI_Wtime();
      single_loss = ce(logits, labels, grad_whole);
      single_times.push_back(MPI_Wtime() - start);
    }
    PMPI_Barrier(MPI_COMM_WORLD);
    const double start = MPI_Wtime();
    loss = vce(shard, begin, labels, grad);
    PMPI_Barrier(MPI_COMM_WORLD);  // the slowest rank's time
    parallel_times.push_back(MPI_Wtime() - start);
  }
  const auto median = [](std::vector<double> t) {
    std::sort(t.begin(), t.end());
    return t.empty() ? 0.0 : t[t.size() / 2];
  };
  const double single = median(single_times), parallel = median(parallel_times);
  const double bytes_per_call = static_cast<double>(g_bytes) / repetitions;
  const double calls_per_call = static_cast<double>(g_calls) / repetitions;

  std::vector<double> all_bytes(static_cast<std::size_t>(ranks));
  PMPI_Allgather(&bytes_per_call, 1, MPI_DOUBLE, all_bytes.data(), 1, MPI_DOUBLE, MPI_COMM_WORLD);
  if (rank == 0) {
    std::printf(
        "softmaxlab_mpi_bench: N = %ld rows, V = %ld, float, loss + gradient, Mean, "
        "%d repetitions (median)\n",
        static_cast<long>(rows), static_cast<long>(vocabulary), repetitions);
    std::printf("  CrossEntropyLoss, 1 process:            %9.1f us/row   (loss %.9f)\n",
                1e6 * single / static_cast<double>(rows), single_loss);
    std::printf(
        "  VocabParallelCrossEntropy, %d rank(s):   %9.1f us/row   (loss %.9f, ratio %.2f)\n",
        ranks, 1e6 * parallel / static_cast<double>(rows), loss, single / parallel);
    for (int r = 0; r < ranks; ++r) {
      std::printf(
          "  rank %d passed %.0f bytes to MPI per call in %.0f collectives "
          "(stated: 2N long doubles + 1 double = %ld bytes)\n",
          r, all_bytes[static_cast<std::size_t>(r)], calls_per_call,
          static_cast<long>(2 * rows * sizeof(long double) + sizeof(double)));
    }
  }
  MPI_Finalize();
  return 0;
}
