#!/usr/bin/env bash
# Build and run softmaxlab's benchmarks (the README's benchmark command).
#
#   scripts/bench.sh [BENCHMARK ARGS...]
#
# Extra arguments go to the benchmark binary, e.g.
#   scripts/bench.sh --benchmark_filter='Softmax' --benchmark_repetitions=5
# Results: <build>/bench.json (Google Benchmark JSON) and, when scripts/bench_report.py exists,
# a report in <build>/report.
#
# Environment:
#   BUILD_DIR          build directory (default build/bench, relative to the repository root)
#   SOFTMAXLAB_NATIVE  ON to compile with -march=native (default ON)
#   JOBS               parallel build jobs (default: nproc)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

bash scripts/install-deps.sh cmake g++ make libeigen3-dev libbenchmark-dev libdnnl-dev \
  python3 python3-matplotlib

build_dir="${BUILD_DIR:-build/bench}"
jobs="${JOBS:-$(nproc 2>/dev/null || echo 2)}"

cmake -S . -B "$build_dir" \
  -DCMAKE_BUILD_TYPE=Release \
  -DSOFTMAXLAB_NATIVE="${SOFTMAXLAB_NATIVE:-ON}" \
  -DSOFTMAXLAB_BUILD_BENCHMARKS=ON \
  -DSOFTMAXLAB_BUILD_TESTS=OFF \
  -DSOFTMAXLAB_BUILD_EXAMPLES=ON

cmake --build "$build_dir" --target softmaxlab_bench -j"$jobs"

"$build_dir/bench/softmaxlab_bench" \
  --benchmark_out="$build_dir/bench.json" \
  --benchmark_out_format=json \
  "$@"

if [[ -f scripts/bench_report.py ]]; then
  python3 scripts/bench_report.py "$build_dir/bench.json" --out-dir "$build_dir/report"
fi
