// The row passes of Softmax and SinglePassSoftmax one by one, in cycles per element, to show where
// the time of a softmax goes and how far each pass is from its bound (a target out of reach is
// shown with cycles per element, the instruction mix and the bound).
//
//   kernels/<pass>/float/l1/2048      one 8 KiB row (and its 8 KiB output) kept in L1
//   kernels/<pass>/float/memory/2^24  one 64 MiB row, streamed from memory
//   kernels/<pass>/float/l2/32000     one row of 32,000 (125 KiB, in L2; PowerSoftmax's recompute
//                                     form)
// and, in L1 only, the 16-bit passes (<pass>_half, <pass>_bf16: Eigen::half / bfloat16 read or
// written, converted in registers) and PowerSoftmax(4)'s passes (max_abs, power4_store_sum,
// power4_sum, power4_scale_store) and whole apply (power4), for the bounds of docs/benchmarks.md.
//
// Counters: cpe = cycles per element at the core clock measured in the same process in CPU time
// (`ghz`: a chain of dependent integer additions retires one per cycle; this machine has no
// readable cycle counter, `perf stat` says "not supported"), and bytes_per_element the pass moves
// to or from memory. Passes (detail/kernels.hpp, single_pass.hpp):
//   max            packet max (PropagateFast: Softmax's batch kernel)
//   exp_store_sum  y = exp(x - m) 2^64, compensated sums: Softmax's middle pass
//   scale          y *= f: Softmax's last pass
//   exp_scale      y = exp(x - m) f: SinglePassSoftmax's output pass (streaming stores at 2^24)
//   update         OnlineNormalizer::update: block max, then the exp sum (SinglePassSoftmax's first
//                  pass)
//   softmax, single_pass   the whole functors' apply, for comparison
//   fma_peak       16 independent FMA chains: the vector pipes' throughput, for the exp pass's
//   bound
// The exp pass's vector instruction count per packet is exp_store_sum_vector_ops_per_packet().
#include <algorithm>
#include <cstdint>
#include <ctime>
#include <random>
#include <vector>

#include <benchmark/benchmark.h>

#include <softmaxlab/softmaxlab.hpp>

namespace {

namespace sml = softmaxlab;
namespace sd = softmaxlab::detail;
using Index = Eigen::Index;

// This thread's CPU time: on a shared machine wall time also counts the time other processes ran,
// and the rates Google Benchmark reports are per CPU second too.
double thread_seconds() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

// The core clock in GHz: four dependent register additions per iteration retire in four cycles.
// The addend is a register: recent Intel cores (Golden Cove) fold chains of add-immediate at
// rename, which made an `add $1` chain report 12 GHz here.
double measured_ghz() {
  static const double ghz = [] {
    double best = 0;
    for (int rep = 0; rep < 5; ++rep) {
      std::uint64_t v = 1;
      const std::uint64_t one = 1;
      constexpr std::uint64_t kIterations = 50'000'000;
      const double t0 = thread_seconds();
      for (std::uint64_t i = 0; i < kIterations; ++i) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__aarch64__))
#if defined(__x86_64__)
        asm volatile("add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0" : "+r"(v) : "r"(one));
#else
        asm volatile("add %0, %0, %1\n\tadd %0, %0, %1\n\tadd %0, %0, %1\n\tadd %0, %0, %1"
                     : "+r"(v)
                     : "r"(one));
#endif
#else
        v += 4 * one;
        benchmark::DoNotOptimize(v);
#endif
      }
      const double s = thread_seconds() - t0;
      best = std::max(best, 4.0 * kIterations / s / 1e9);
    }
    return best;
  }();
  return ghz;
}

std::vector<float> logits(Index n) {
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0, 3);
  std::vector<float> x(static_cast<std::size_t>(n));
  for (float& v : x)
    v = normal(rng);
  return x;
}

template <class Pass>
void run_pass(benchmark::State& state, double bytes_per_element, Pass&& pass) {
  const Index n = state.range(0);
  const std::vector<float> x = logits(n);
  std::vector<float> y(x);
  const float m = sd::max_propagate_nan(x.data(), n);
  for (auto _ : state) {
    pass(x.data(), y.data(), n, m);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * n);
  const double ghz = measured_ghz();
  state.counters["ghz"] = ghz;
  // Seconds per element times cycles per second; kIsIterationInvariantRate divides by the
  // elements processed and the time.
  state.counters["cpe"] = benchmark::Counter(
      static_cast<double>(n) / (ghz * 1e9),
      benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
  state.counters["bytes_per_element"] = bytes_per_element;
}

void max_pass(benchmark::State& state, double bytes) {
  run_pass(state, bytes, [](const float* x, float* y, Index n, float) {
    y[0] = sd::packet_max<Eigen::PropagateFast>(x, n);
  });
}

// Vector ALU instructions per packet in scaled_exp_store_sum's main loop (4 packets an iteration),
// counted with objdump on GCC 12 -O3 builds: AVX-512 66 per iteration (per packet: subtract, clamp,
// 2 for n, 2 for the reduction, 4 + 1 + 1 for the polynomial, 1 for 2^64 (v + 1), 1 vscalefps, and
// 2.5 for the paired Kahan sums); AVX2 + FMA 70 (the shift and multiply for 2^n in place of
// vscalefps, an addition in place of the fma). Loads, stores and register moves are not counted:
// they issue on other ports or are eliminated at rename. Recount after changing the kernel:
//   objdump -d --no-show-raw-insn bench_kernels.cpp.o, the loop of scaled_exp_store_sum<false>.
constexpr double exp_store_sum_vector_ops_per_packet() {
#if defined(EIGEN_VECTORIZE_AVX512)
  return 66.0 / 4;
#elif defined(EIGEN_VECTORIZE_AVX2) && defined(EIGEN_VECTORIZE_FMA)
  return 70.0 / 4;
#else
  return 0;  // not counted for this instruction set
#endif
}

void exp_store_sum_pass(benchmark::State& state, double bytes) {
  run_pass(state, bytes, [](const float* x, float* y, Index n, float m) {
    sd::CompensatedSum<float> a, b;
    sd::scaled_exp_store_sum<false>(x, y, n, m, 1.0f, a, b);
    benchmark::DoNotOptimize(sd::total_wide(a, b));
  });
  state.counters["vector_ops_per_packet"] = exp_store_sum_vector_ops_per_packet();
}

void scale_pass(benchmark::State& state, double bytes) {
  // Factors 2 and 1/2 in turn: exact, so y neither drifts into subnormals nor changes between
  // calls, and not a constant the compiler could fold.
  float factor = 2.0f;
  run_pass(state, bytes, [&factor](const float*, float* y, Index n, float) {
    sd::scale_packets(y, n, factor);
    factor = 1.0f / factor;
  });
}

void exp_scale_pass(benchmark::State& state, double bytes) {
  run_pass(state, bytes, [](const float* x, float* y, Index n, float m) {
    if (n * static_cast<Index>(sizeof(float)) >= sd::kStreamingStoreBytes)
      sd::scaled_exp_scale_stream<false>(x, y, n, m, 1.0f, 0x1p-64f);
    else
      sd::scaled_exp_scale_store<false>(x, y, n, m, 1.0f, 0x1p-64f);
  });
}

void update_pass(benchmark::State& state, double bytes) {
  run_pass(state, bytes, [](const float* x, float*, Index n, float) {
    sml::OnlineNormalizer<float> normalizer;
    normalizer.update(Eigen::Map<const Eigen::VectorXf>(x, n));
    benchmark::DoNotOptimize(normalizer.sum());
  });
}

void softmax_apply(benchmark::State& state, double bytes) {
  run_pass(state, bytes, [](const float* x, float* y, Index n, float) {
    sml::Softmax().apply(Eigen::Map<const Eigen::VectorXf>(x, n),
                         Eigen::Map<Eigen::VectorXf>(y, n));
  });
}

void single_pass_apply(benchmark::State& state, double bytes) {
  run_pass(state, bytes, [](const float* x, float* y, Index n, float) {
    sml::SinglePassSoftmax().apply(Eigen::Map<const Eigen::VectorXf>(x, n),
                                   Eigen::Map<Eigen::VectorXf>(y, n));
  });
}

#if SOFTMAXLAB_AVX512_CONVERT  // the 16-bit passes convert in 512-bit registers only
// The 16-bit storage passes (issue 22's half and bfloat16 rows): the same passes reading or
// writing Eigen::half / Eigen::bfloat16, converted in registers (scalar_types.hpp: vcvtph2ps and
// vcvtps2ph for half; a zero-extend and shift in, vcvtneps2bf16 behind a vfpclassps check out for
// bfloat16).
// The 16-bit copy of the logits (and the 16-bit output) are made once per length.
template <class T>
T* buffer16(const float* x, Index n, int which) {
  static std::vector<T> in, out;
  std::vector<T>& v = which == 0 ? in : out;
  if (static_cast<Index>(v.size()) != n) {
    v.resize(static_cast<std::size_t>(n));
    for (Index i = 0; i < n; ++i)
      v[static_cast<std::size_t>(i)] = static_cast<T>(x[i]);
  }
  return v.data();
}

template <class T>
void max16_pass(benchmark::State& state, double bytes) {
  run_pass(state, bytes, [](const float* x, float* y, Index n, float) {
    y[0] = sd::packet_max<Eigen::PropagateFast>(static_cast<const T*>(buffer16<T>(x, n, 0)), n);
  });
}

template <class T>
void exp_store_sum16_pass(benchmark::State& state, double bytes) {
  run_pass(state, bytes, [](const float* x, float* y, Index n, float m) {
    sd::CompensatedSum<float> a, b;
    sd::scaled_exp_store_sum<false>(static_cast<const T*>(buffer16<T>(x, n, 0)), y, n, m, 1.0f, a,
                                    b);
    benchmark::DoNotOptimize(sd::total_wide(a, b));
  });
}

template <class T>
void scale_convert16_pass(benchmark::State& state, double bytes) {
  run_pass(state, bytes, [](const float* x, float*, Index n, float) {
    sd::scale_convert_contiguous(x, 0.5f, buffer16<T>(x, n, 1), n);
  });
}

template <class T>
void softmax16_apply(benchmark::State& state, double bytes) {
  run_pass(state, bytes, [](const float* x, float*, Index n, float) {
    using V = Eigen::Matrix<T, Eigen::Dynamic, 1>;
    sml::Softmax().apply(Eigen::Map<const V>(buffer16<T>(x, n, 0), n),
                         Eigen::Map<V>(buffer16<T>(x, n, 1), n));
  });
}

#endif

// PowerSoftmax(4)'s three passes (power.hpp, he_kernels.hpp): max |x|, z^4 stored and summed
// (PairedSum), y *= 1 / S; and the whole functor's apply.
void max_abs_pass(benchmark::State& state, double bytes) {
  run_pass(state, bytes,
           [](const float* x, float* y, Index n, float) { y[0] = sd::max_abs(x, n); });
}

void power4_store_sum_pass(benchmark::State& state, double bytes) {
  run_pass(state, bytes, [](const float* x, float* y, Index n, float) {
    sd::PairedSum<float> sum;
    sd::power_pass<4, false, sd::PowerPass::StoreSum>(x, y, n, 0x1p-5f, 1.0f, 4, &sum);
    benchmark::DoNotOptimize(sum.total_wide());
  });
}

// The passes of rows over 32 KiB, which recompute the powers instead of storing them: the sum,
// then y = z^4 f.
void power4_sum_pass(benchmark::State& state, double bytes) {
  run_pass(state, bytes, [](const float* x, float*, Index n, float) {
    sd::PairedSum<float> sum;
    sd::power_pass<4, false, sd::PowerPass::Sum>(x, static_cast<float*>(nullptr), n, 0x1p-5f, 1.0f,
                                                 4, &sum);
    benchmark::DoNotOptimize(sum.total_wide());
  });
}

void power4_scale_store_pass(benchmark::State& state, double bytes) {
  run_pass(state, bytes, [](const float* x, float* y, Index n, float) {
    sd::power_pass<4, false, sd::PowerPass::ScaleStore>(
        x, y, n, 0x1p-5f, 1.0f, 4, static_cast<sd::PairedSum<float>*>(nullptr), 0.25f, 1.0f);
  });
}

void power4_apply(benchmark::State& state, double bytes) {
  run_pass(state, bytes, [](const float* x, float* y, Index n, float) {
    sml::PowerSoftmax(4).apply(Eigen::Map<const Eigen::VectorXf>(x, n),
                               Eigen::Map<Eigen::VectorXf>(y, n));
  });
}

// The vector pipes' peak: 16 independent chains of packet FMAs (more than latency x pipes on any
// current core), so the loop runs at the FMA throughput. Counters: fma_per_cycle (packet FMAs
// retired per cycle: 2 on a core with two 512-bit or two 256-bit FMA pipes), lanes (floats per
// packet in this build). The exp passes' bound is their vector instructions per packet divided by
// fma_per_cycle and lanes: every one of them (FMA, multiply, add, max, shift, scalef) issues on the
// same vector ALU ports.
void fma_peak(benchmark::State& state, double) {
  using Packet = sd::PacketOf<float>;
  using namespace Eigen::internal;
  constexpr int kChains = 16;
  constexpr Index kIterations = 1024;
  Packet acc[kChains];
  for (int k = 0; k < kChains; ++k)
    acc[k] = pset1<Packet>(1.0f + 0x1p-10f * static_cast<float>(k));
  const Packet a = pset1<Packet>(0.999f), b = pset1<Packet>(1e-3f);
  for (auto _ : state) {
    for (Index i = 0; i < kIterations; ++i) {
      for (int k = 0; k < kChains; ++k)
        acc[k] = pmadd(acc[k], a, b);
    }
    for (int k = 0; k < kChains; ++k)
      benchmark::DoNotOptimize(acc[k]);
  }
  const double fmas = static_cast<double>(kIterations) * kChains;
  const double ghz = measured_ghz();
  state.counters["ghz"] = ghz;
  state.counters["fma_per_cycle"] =
      benchmark::Counter(fmas / (ghz * 1e9), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["lanes"] = sd::kPacketSize<float>;
}

// Bytes per element each pass moves to or from memory on the 2^24 row: 4 per float read or
// written, and 4 more where a pass writes lines it has not read (read for ownership: exp_store_sum;
// exp_scale's streaming stores skip it); in L1, 0.
bool registered = [] {
  constexpr Index kL1 = 2048;
  constexpr Index kBig = Index(1) << 24;
  struct Pass {
    const char* name;
    void (*fn)(benchmark::State&, double);
    double memory_bytes;
  };
  const Pass passes[] = {{"max", max_pass, 4},
                         {"exp_store_sum", exp_store_sum_pass, 12},
                         {"scale", scale_pass, 8},
                         {"exp_scale", exp_scale_pass, 8},
                         {"update", update_pass, 4},
                         {"softmax", softmax_apply, 24},
                         {"single_pass", single_pass_apply, 12}};
  // In L1 only (2,048 entries): the 16-bit and PowerSoftmax passes, for the bounds of
  // docs/benchmarks.md.
  const Pass l1_passes[] = {
#if SOFTMAXLAB_AVX512_CONVERT
      {"max_half", max16_pass<Eigen::half>, 0},
      {"max_bf16", max16_pass<Eigen::bfloat16>, 0},
      {"exp_store_sum_half", exp_store_sum16_pass<Eigen::half>, 0},
      {"exp_store_sum_bf16", exp_store_sum16_pass<Eigen::bfloat16>, 0},
      {"scale_convert_half", scale_convert16_pass<Eigen::half>, 0},
      {"scale_convert_bf16", scale_convert16_pass<Eigen::bfloat16>, 0},
      {"softmax_half", softmax16_apply<Eigen::half>, 0},
      {"softmax_bf16", softmax16_apply<Eigen::bfloat16>, 0},
#endif
      {"max_abs", max_abs_pass, 0},
      {"power4_store_sum", power4_store_sum_pass, 0},
      {"power4_sum", power4_sum_pass, 0},
      {"power4_scale_store", power4_scale_store_pass, 0},
      {"power4", power4_apply, 0}};
  // kernels/<pass>/float/<where>/<n>, with no memory traffic counted (the rows stay in cache).
  const auto register_in_cache = [](const auto& list, const char* where, Index n) {
    for (const Pass& p : list) {
      benchmark::RegisterBenchmark((std::string("kernels/") + p.name + "/float/" + where).c_str(),
                                   p.fn, 0.0)
          ->Arg(n);
    }
  };
  register_in_cache(l1_passes, "l1", kL1);
  // One row of 32,000 (125 KiB in, as much out: in L2), where PowerSoftmax recomputes its powers.
  const Pass l2_passes[] = {{"max", max_pass, 0},
                            {"exp_store_sum", exp_store_sum_pass, 0},
                            {"scale", scale_pass, 0},
                            {"softmax", softmax_apply, 0},
                            {"max_abs", max_abs_pass, 0},
                            {"power4_sum", power4_sum_pass, 0},
                            {"power4_scale_store", power4_scale_store_pass, 0},
                            {"power4", power4_apply, 0}};
  register_in_cache(l2_passes, "l2", 32000);
  benchmark::RegisterBenchmark("kernels/fma_peak/float/l1", fma_peak, 0.0)->Arg(kL1);
  for (const Pass& p : passes) {
    benchmark::RegisterBenchmark((std::string("kernels/") + p.name + "/float/l1").c_str(), p.fn,
                                 0.0)
        ->Arg(kL1);
    benchmark::RegisterBenchmark((std::string("kernels/") + p.name + "/float/memory").c_str(), p.fn,
                                 p.memory_bytes)
        ->Arg(kBig)
        ->Unit(benchmark::kMillisecond);
  }
  return true;
}();

}  // namespace
