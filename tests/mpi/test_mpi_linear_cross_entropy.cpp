// Tests of softmaxlab/mpi_linear_cross_entropy.hpp, run by ctest under `mpirun -np 1`, `-np 2` and
// `-np 4` (label mpi). Within each run, every communicator size P from 1 to the number of ranks is
// tested (MPI_Comm_split of the first P ranks), so the 4-rank run also covers 3 ranks.
//
// Every rank builds the same H, W, b and labels from fixed seeds, keeps the rows [b_r, b_{r+1}) of
// W, and checks VocabParallelLinearCrossEntropy against the one-process LinearCrossEntropy on the
// whole W (itself checked against a long double reference in tests/test_linear_cross_entropy.cpp):
// loss, per-token lse and losses, dH (whole), and this rank's rows of dW and db, with uneven
// shards (b_r = V r^2 / P^2), an empty shard, a shard that holds no label, ignore_index, every
// option, double (within 64 eps of the largest entry), float and half inputs (within 64 (d + 4)
// eps: the shard's GEMM may block differently). The loss must be bitwise the same on every rank.
// A plain-assertion harness, as test_mpi.cpp: each case prints "<name>: N passed, N failed"
// (summed over the ranks), the worst errors found, and the exit code is 1 if any check failed.
#include <algorithm>
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

#include <softmaxlab/mpi_linear_cross_entropy.hpp>

#include "harness.hpp"

namespace {

namespace sml = softmaxlab;
using namespace softmaxlab_mpi_test;

double worst_ = 0;  // the largest error / bound seen in the current case

// max |a - b| / (bound_eps eps max |b|) <= 1, recorded in worst_.
template <class A, class B>
void expect_close(const A& a, const B& b, double eps, double bound_eps, const std::string& what) {
  const double scale = b.size() > 0 ? b.template cast<double>().cwiseAbs().maxCoeff() : 0.0;
  const double err =
      b.size() > 0 ? (a.template cast<double>() - b.template cast<double>()).cwiseAbs().maxCoeff()
                   : 0.0;
  const double ratio = err == 0 ? 0.0 : err / (bound_eps * eps * std::max(scale, 1e-300));
  worst_ = std::max(worst_, ratio);
  expect(ratio <= 1.0, what + ": error " + std::to_string(err / eps) + " eps of the largest "
                           + std::to_string(scale));
}

Matrix<double> random_normal(Index rows, Index cols, unsigned seed, double spread) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> normal(0.0, spread);
  Matrix<double> x(rows, cols);
  for (Index i = 0; i < x.size(); ++i)
    x(i) = normal(gen);
  return x;
}

enum class Layout { Uneven, EmptyFirst };

// The shard boundaries b_0 = 0 <= ... <= b_P = V.
std::vector<Index> boundaries(Index v, int p, Layout layout) {
  std::vector<Index> b(static_cast<std::size_t>(p) + 1);
  for (int r = 0; r <= p; ++r) {
    if (layout == Layout::Uneven || p == 1)
      b[r] = v * r * r / (p * p);
    else  // rank 0 holds nothing, the others share V evenly
      b[r] = r == 0 ? 0 : v * (r - 1) / (p - 1);
  }
  return b;
}

struct Options {
  std::string label;
  sml::LinearCrossEntropy lce;
  bool upstream = false;
  long ignore = -100;
};

std::vector<Options> configurations(Index v) {
  std::vector<double> weight(static_cast<std::size_t>(v));
  for (Index k = 0; k < v; ++k)
    weight[static_cast<std::size_t>(k)] = 0.25 + 0.1 * static_cast<double>(k % 7);
  std::vector<Options> c;
  c.push_back({"mean, blocks 4 x 16", sml::LinearCrossEntropy().with_block_sizes(4, 16)});
  c.push_back({"sum, smoothing, weights, z-loss, softcap, temperature, ignore_index 3",
               sml::LinearCrossEntropy(sml::Reduction::Sum, 0.1, 3)
                   .with_weight(weight)
                   .with_z_loss(1e-3)
                   .with_softcap(5)
                   .with_temperature(1.3)
                   .with_block_sizes(5, 7),
               false, 3});
  c.push_back(
      {"none with upstream, default blocks", sml::LinearCrossEntropy(sml::Reduction::None), true});
  c.push_back({"mean, gradient filter 1e-3, blocks 8 x 8",
               sml::LinearCrossEntropy().with_gradient_filter(1e-3).with_block_sizes(8, 8)});
  return c;
}

// One comparison on the communicator comm (P ranks, this rank r): In is H's and W's scalar type.
template <class In>
void lce_case(MPI_Comm comm, int p, int r, Layout layout, const Options& o, double bound_eps) {
  using C = std::conditional_t<std::is_same_v<In, double>, double, float>;
  const Index n = 23, d = 12, v = 301;
  const double eps = std::numeric_limits<C>::epsilon();
  const Matrix<In> h = random_normal(n, d, 1, 1.0).cast<C>().template cast<In>();
  const Matrix<In> w = random_normal(v, d, 2, 0.6).cast<C>().template cast<In>();
  const Vector<In> b = random_normal(v, 1, 3, 0.5).cast<C>().template cast<In>();
  const Vector<double> up = random_normal(n, 1, 4, 1.0);
  const auto bounds = boundaries(v, p, layout);
  const Index b0 = bounds[r], b1 = bounds[r + 1];
  // Uneven shards on two or more ranks: labels outside shard 1, which then holds no label (with
  // EmptyFirst, shard 0 holds none). Every fifth token ignored.
  const bool skip = layout == Layout::Uneven && p >= 2;
  const Index skip0 = skip ? bounds[1] : v, skip1 = skip ? bounds[2] : v;
  std::mt19937 gen(5);
  std::uniform_int_distribution<long> pick(0, v - 1 - (skip1 - skip0));
  std::vector<long> labels(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) {
    long c = pick(gen);
    if (c >= skip0)
      c += skip1 - skip0;
    labels[static_cast<std::size_t>(i)] = i % 5 == 4 ? o.ignore : c;
  }
  // The one-process reference on the whole W.
  Vector<double> lse1(n), losses1(n), lse(n), losses(n), lse0(n);
  Matrix<C> dh1(n, d), dw1(v, d), dh(n, d), dw(b1 - b0, d);
  Vector<C> db1(v), db(b1 - b0);
  auto out1 = sml::TokenOutputs().with_lse(lse1).with_losses(losses1);
  auto out = sml::TokenOutputs().with_lse(lse).with_losses(losses);
  if (o.upstream) {
    out1 = out1.with_upstream(up);
    out = out.with_upstream(up);
  }
  const double l1 = o.lce(h, w, b, labels, dh1, dw1, db1, out1);
  const sml::mpi::VocabParallelLinearCrossEntropy lce(comm, v, o.lce);
  const double l =
      lce(h, w.middleRows(b0, b1 - b0), b.segment(b0, b1 - b0), b0, labels, dh, dw, db, out);
  const double l0 = lce(h, w.middleRows(b0, b1 - b0), b.segment(b0, b1 - b0), b0, labels,
                        sml::TokenOutputs().with_lse(lse0));
  const std::string where = o.label + ", " + std::to_string(p) + " ranks, rank " + std::to_string(r)
                            + " [" + std::to_string(b0) + ", " + std::to_string(b1) + ")";
  expect(l0 == l, where + ": loss-only call equals the gradient call's loss");
  expect(lse0 == lse, where + ": loss-only lse");
  const Vector<double> lv = Vector<double>::Constant(1, l), l1v = Vector<double>::Constant(1, l1);
  expect_close(lv, l1v, eps, bound_eps, where + ": loss");
  expect_close(lse, lse1, eps, bound_eps, where + ": lse");
  expect_close(losses, losses1, eps, bound_eps, where + ": per-token losses");
  expect_close(dh, dh1, eps, bound_eps, where + ": dH");
  expect_close(dw, dw1.middleRows(b0, b1 - b0), eps, bound_eps, where + ": dW rows");
  expect_close(db, db1.segment(b0, b1 - b0), eps, bound_eps, where + ": db entries");
  // The same loss bits on every rank.
  std::vector<double> all(static_cast<std::size_t>(p));
  MPI_Allgather(&l, 1, MPI_DOUBLE, all.data(), 1, MPI_DOUBLE, comm);
  for (double x : all)
    expect(std::memcmp(&x, &all[0], sizeof(double)) == 0, where + ": loss bitwise on every rank");
  // The no-bias forms equal a zero bias.
  const Vector<In> zero = Vector<In>::Zero(b1 - b0);
  Matrix<C> dhz(n, d), dwz(b1 - b0, d);
  Vector<C> dbz(b1 - b0);
  const double lz = lce(h, w.middleRows(b0, b1 - b0), zero, b0, labels, dhz, dwz, dbz, out);
  Matrix<C> dhn(n, d), dwn(b1 - b0, d);
  const double ln = lce(h, w.middleRows(b0, b1 - b0), b0, labels, dhn, dwn, out);
  expect(ln == lz && dhn == dhz && dwn == dwz, where + ": no bias equals a zero bias");
}

template <class In>
void all_cases(MPI_Comm comm, int p, int r, double bound_eps) {
  const auto configs = configurations(301);
  for (const auto layout : {Layout::Uneven, Layout::EmptyFirst}) {
    for (const auto& o : configs)
      lce_case<In>(comm, p, r, layout, o, bound_eps);
  }
}

// Every token ignored with Mean: 0 and zero gradients; errors thrown on every rank before any
// communication.
void special_cases(MPI_Comm comm, int p, int r) {
  const Index n = 4, d = 3, v = 10;
  const auto bounds = boundaries(v, p, Layout::Uneven);
  const Index b0 = bounds[r], b1 = bounds[r + 1];
  const Matrix<double> h = random_normal(n, d, 7, 1.0), w = random_normal(v, d, 8, 1.0);
  Matrix<double> dh(n, d), dw(b1 - b0, d);
  const sml::mpi::VocabParallelLinearCrossEntropy lce(comm, v);
  const std::vector<int> ignored(n, -100);
  expect(lce(h, w.middleRows(b0, b1 - b0), b0, ignored, dh, dw) == 0, "all ignored: loss 0");
  expect(dh.cwiseAbs().maxCoeff() == 0 && (dw.size() == 0 || dw.cwiseAbs().maxCoeff() == 0),
         "all ignored: zero gradients");
  const auto throws = [](const std::function<void()>& fn, const std::string& word) {
    try {
      fn();
    } catch (const std::invalid_argument& e) {
      return std::string(e.what()).find(word) != std::string::npos;
    }
    return false;
  };
  expect(throws([&] { (void)lce(h, w.middleRows(b0, b1 - b0), v + 1, ignored); }, "begin"),
         "begin outside the vocabulary throws");
  expect(throws(
             [&] {
               (void)lce(h, w.middleRows(b0, b1 - b0), b0, std::vector<int>{0, 1, 2, 10});
             },
             "label 10"),
         "a label outside [0, V) throws");
  expect(throws([&] { sml::mpi::VocabParallelLinearCrossEntropy(comm, -1); }, "vocab_size"),
         "a negative vocab_size throws");
}

void run(const char* name, const std::function<void(MPI_Comm, int, int)>& test) {
  const long passed = passed_, failed = failed_;
  worst_ = 0;
  for (int p = 1; p <= ranks_; ++p) {
    MPI_Comm sub;
    MPI_Comm_split(MPI_COMM_WORLD, rank_ < p ? 0 : MPI_UNDEFINED, rank_, &sub);
    if (sub != MPI_COMM_NULL) {
      try {
        test(sub, p, rank_);
      } catch (const std::exception& e) {
        expect(false, std::string(name) + " threw: " + e.what());
      }
      MPI_Comm_free(&sub);
    }
  }
  double worst = worst_;
  MPI_Allreduce(MPI_IN_PLACE, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  report(name, passed, failed, " (worst error / bound " + std::to_string(worst) + ")");
}

}  // namespace

int main(int argc, char** argv) {
  start(&argc, &argv, "softmaxlab MPI LinearCrossEntropy tests");
  run("mpi.lce_double_matches_one_process",
      [](MPI_Comm c, int p, int r) { all_cases<double>(c, p, r, 64); });
  run("mpi.lce_float_matches_one_process",
      [](MPI_Comm c, int p, int r) { all_cases<float>(c, p, r, 64 * (12 + 4)); });
  run("mpi.lce_half_matches_one_process",
      [](MPI_Comm c, int p, int r) { all_cases<Eigen::half>(c, p, r, 64 * (12 + 4)); });
  run("mpi.lce_bfloat16_matches_one_process",
      [](MPI_Comm c, int p, int r) { all_cases<Eigen::bfloat16>(c, p, r, 64 * (12 + 4)); });
  run("mpi.lce_special", special_cases);
  const int code = finish();
  MPI_Finalize();
  return code;
}
