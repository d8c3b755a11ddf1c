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
# oneDNN is capped at AVX2 (ONEDNN_MAX_CPU_ISA=AVX2 unless set): the targets are stated for AVX2 +
# FMA machines (AMD Zen3), where oneDNN's JIT picks avx2, and GCC 12 builds our kernels for AVX2
# even on AVX-512 hosts (-mno-avx512f, GCC bug 105593). ONEDNN_MAX_CPU_ISA=ALL lets it pick.
#
# Environment:
#   BUILD_DIR          build directory (default build/bench, relative to the repository root)
#   SOFTMAXLAB_NATIVE  ON to compile with -march=native (default ON)
#   JOBS               parallel build jobs (default: nproc)
#   MIN_TIME           seconds per benchmark (default 0.25; the full suite runs in about 7 minutes)
#   SOFTMAXLAB_MACHINE_NOTE  a line about the machine, printed in the report and chart
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

bash scripts/install-deps.sh cmake g++ make libeigen3-dev libbenchmark-dev libdnnl-dev \
  libxnnpack-dev libpthreadpool-dev python3 python3-matplotlib

build_dir="${BUILD_DIR:-build/bench}"
jobs="${JOBS:-$(nproc 2>/dev/null || echo 2)}"

cmake -S . -B "$build_dir" \
  -DCMAKE_BUILD_TYPE=Release \
  -DSOFTMAXLAB_NATIVE="${SOFTMAXLAB_NATIVE:-ON}" \
  -DSOFTMAXLAB_BUILD_BENCHMARKS=ON \
  -DSOFTMAXLAB_BUILD_TESTS=OFF \
  -DSOFTMAXLAB_BUILD_EXAMPLES=ON

cmake --build "$build_dir" --target softmaxlab_bench -j"$jobs"

OMP_NUM_THREADS=1 ONEDNN_MAX_CPU_ISA="${ONEDNN_MAX_CPU_ISA:-AVX2}" "$build_dir/bench/softmaxlab_bench" \
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
