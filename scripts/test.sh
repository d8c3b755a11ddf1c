#!/usr/bin/env bash
# Build and run softmaxlab's tests and examples (the README's test command).
#
#   scripts/test.sh
#
# Environment:
#   BUILD_DIR          build directory (default build/test, relative to the repository root)
#   SOFTMAXLAB_WERROR  ON to make warnings errors (default OFF; .ci/run sets ON)
#   SOFTMAXLAB_NATIVE  ON to compile our tests/examples with -march=native (default ON)
#   CMAKE_BUILD_TYPE   default Release
#   JOBS               parallel build/test jobs (default: nproc)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

bash scripts/install-deps.sh cmake g++ make libeigen3-dev catch2 pkg-config

build_dir="${BUILD_DIR:-build/test}"
jobs="${JOBS:-$(nproc 2>/dev/null || echo 2)}"

cmake -S . -B "$build_dir" \
  -DCMAKE_BUILD_TYPE="${CMAKE_BUILD_TYPE:-Release}" \
  -DSOFTMAXLAB_WERROR="${SOFTMAXLAB_WERROR:-OFF}" \
  -DSOFTMAXLAB_NATIVE="${SOFTMAXLAB_NATIVE:-ON}" \
  -DSOFTMAXLAB_BUILD_TESTS=ON \
  -DSOFTMAXLAB_BUILD_EXAMPLES=ON \
  -DSOFTMAXLAB_BUILD_BENCHMARKS=OFF

cmake --build "$build_dir" -j"$jobs"

ctest --test-dir "$build_dir" --output-on-failure --no-tests=error -j"$jobs"
