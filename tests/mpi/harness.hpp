// The plain-assertion harness of the MPI tests (test_mpi.cpp, test_mpi_linear_cross_entropy.cpp):
// each rank counts its passed and failed checks, prints its first 20 failures, and the counts are
// summed over the ranks per case and at the end (exit code 1 if any rank failed any check).
#pragma once

#include <mpi.h>

#include <cstdio>
#include <string>

#include <Eigen/Core>

namespace softmaxlab_mpi_test {

using Index = Eigen::Index;
template <class S>
using Matrix = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;
template <class S>
using Vector = Eigen::Matrix<S, Eigen::Dynamic, 1>;

inline int rank_ = 0, ranks_ = 1;
inline long passed_ = 0, failed_ = 0;

inline void expect(bool ok, const std::string& what) {
  if (ok) {
    ++passed_;
    return;
  }
  ++failed_;
  if (failed_ <= 20)
    std::fprintf(stderr, "[rank %d] FAILED: %s\n", rank_, what.c_str());
}

// MPI_Init, this rank and the number of ranks, and the title line on rank 0.
inline void start(int* argc, char*** argv, const char* title) {
  MPI_Init(argc, argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks_);
  if (rank_ == 0)
    std::printf("%s on %d rank(s)\n", title, ranks_);
}

// Prints "<name>: N passed, N failed<suffix>" on rank 0: the checks since the counts were
// `passed` and `failed`, summed over the ranks.
inline void report(const char* name, long passed, long failed, const std::string& suffix = "") {
  long counts[2] = {passed_ - passed, failed_ - failed};
  MPI_Allreduce(MPI_IN_PLACE, counts, 2, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
  if (rank_ == 0)
    std::printf("%s: %ld passed, %ld failed%s\n", name, counts[0], counts[1], suffix.c_str());
}

// Prints the totals on rank 0 and returns the exit code (1 if any rank failed a check).
inline int finish() {
  long counts[2] = {passed_, failed_};
  MPI_Allreduce(MPI_IN_PLACE, counts, 2, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
  if (rank_ == 0)
    std::printf("total: %ld passed, %ld failed (%d ranks)\n", counts[0], counts[1], ranks_);
  return counts[1] == 0 ? 0 : 1;
}

}  // namespace softmaxlab_mpi_test
