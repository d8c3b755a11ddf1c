#!/usr/bin/env bash
# Build and run softmaxlab's benchmarks (the README's benchmark command).
#
#   scripts/bench.sh [BENCHMARK ARGS...]
#
# Extra arguments go to the benchmark binary (after the defaults, so they override them), e.g.
#   scripts/bench.sh --benchmark_filter='softmax/(softmax|eigen_expr)/float' --benchmark_repetitions=3
# Benchmarks are named softmax/<impl>/<float|double>/<incache|outcache>/<n> (bench/common.hpp).
# Results: <build>/bench.json (Google Benchmark JSON) and the report of scripts/bench_report.py in
# <build>/report: bench.md (throughput, ratios against each baseline, the speed targets) and
# bench.png (throughput against row length).
# Everything runs on one thread (OMP_NUM_THREADS=1 for oneDNN's OpenMP runtime), except the
# thread cases, which set their own counts.
# Every side runs at its best, as a user would run it: our code and the plain Eigen expression are
# built with -march=native (AVX-512 where the machine has it), oneDNN picks its own ISA, XNNPACK
# picks its kernels at run time, and ATen (PyTorch's libtorch-dev, benchmarked when installed; this
# script does not install it) gets its AVX-512 kernels where the CPU has them (its default is AVX2).
# The report names each side's instruction set.
#
# The AVX2 comparison (a second table, never the headline): BENCH_ISA=avx2 builds our code and the
# Eigen expression with -march=native -mno-avx512f in build/bench-avx2 and holds oneDNN to AVX2
# (ONEDNN_MAX_CPU_ISA=AVX2) and ATen to AVX2 (ATEN_CPU_CAPABILITY=avx2); XNNPACK cannot be held and
# still picks its own kernels.
#
# Environment:
#   BENCH_ISA          native (default) or avx2 (see above)
#   BUILD_DIR          build directory (default build/bench, or build/bench-avx2; relative to the
#                      repository root)
#   SOFTMAXLAB_NATIVE  ON to compile with -march=native (default ON)
#   JOBS               parallel build jobs (default: nproc)
#   MIN_TIME           seconds per benchmark (default 0.25; the full suite runs in about 7 minutes)
#   SOFTMAXLAB_MACHINE_NOTE  a line about the machine, printed in the report and chart
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

bash scripts/install-deps.sh cmake g++ make libeigen3-dev libbenchmark-dev libdnnl-dev \
  libxnnpack-dev libpthreadpool-dev python3 python3-matplotlib

jobs="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
isa_flags=()
peer_env=()
case "${BENCH_ISA:-native}" in
  native)
    build_dir="${BUILD_DIR:-build/bench}"
    # libtorch 1.13 dispatches to its AVX2 kernels by default even where its AVX-512 ones run
    # faster (1.4-1.7x on softmax here): give it the AVX-512 kernels where the CPU has them.
    if grep -qw avx512f /proc/cpuinfo 2>/dev/null && grep -qw avx512bw /proc/cpuinfo \
      && grep -qw avx512vl /proc/cpuinfo && grep -qw avx512dq /proc/cpuinfo; then
      peer_env=(ATEN_CPU_CAPABILITY="${ATEN_CPU_CAPABILITY:-avx512}")
    fi
    ;;
  avx2)
    build_dir="${BUILD_DIR:-build/bench-avx2}"
    isa_flags=(-DCMAKE_CXX_FLAGS=-mno-avx512f)
    peer_env=(ONEDNN_MAX_CPU_ISA="${ONEDNN_MAX_CPU_ISA:-AVX2}"
      ATEN_CPU_CAPABILITY="${ATEN_CPU_CAPABILITY:-avx2}")
    ;;
  *)
    echo "bench.sh: BENCH_ISA must be native or avx2, got '${BENCH_ISA}'" >&2
    exit 2
    ;;
esac

cmake -S . -B "$build_dir" "${isa_flags[@]}" \
  -DCMAKE_BUILD_TYPE=Release \
  -DSOFTMAXLAB_NATIVE="${SOFTMAXLAB_NATIVE:-ON}" \
  -DSOFTMAXLAB_BUILD_BENCHMARKS=ON \
  -DSOFTMAXLAB_BUILD_TESTS=OFF \
  -DSOFTMAXLAB_BUILD_EXAMPLES=ON

cmake --build "$build_dir" --target softmaxlab_bench -j"$jobs"

env OMP_NUM_THREADS=1 "${peer_env[@]}" "$build_dir/bench/softmaxlab_bench" \
  --benchmark_min_time="${MIN_TIME:-0.25}" \
  --benchmark_out="$build_dir/bench.json" \
  --benchmark_out_format=json \
  "$@"

if [[ -f scripts/bench_report.py ]]; then
  # The chart needs matplotlib: Debian's python3-matplotlib is for /usr/bin/python3, which may not
  # be the python3 on PATH (pyenv, venvs). Use the first interpreter that has it.
  python=python3
  for candidate in /usr/bin/python3 python3; do
    if "$candidate" -c "import matplotlib" >/dev/null 2>&1; then
      python="$candidate"
      break
    fi
  done
  "$python" scripts/bench_report.py "$build_dir/bench.json" --out-dir "$build_dir/report"
fi
