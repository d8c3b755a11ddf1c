#!/usr/bin/env bash
# Build and run softmaxlab's tests and examples (the README's test command).
#
#   scripts/test.sh [release|sanitize|debug]
#
#   release   (default) GCC, Release: every unit test, example and package test, and the MPI
#             tests and example under mpirun with 1, 2 and 4 ranks (label mpi)
#   sanitize  clang with AddressSanitizer + UndefinedBehaviorSanitizer (-O1): unit tests and examples
#             (not label mpi: Open MPI reports its own leaks)
#   debug     GCC, Debug (-Og, assertions on, no NDEBUG): unit tests, examples and MPI tests
#
# Environment:
#   BUILD_DIR          build directory (default build/test, build/sanitize, build/debug)
#   SOFTMAXLAB_WERROR  ON to make warnings errors (default OFF; .ci/run sets ON)
#   SOFTMAXLAB_NATIVE  ON to compile our tests/examples with -march=native (default ON)
#   CMAKE_BUILD_TYPE   release mode only, default Release
#   JOBS               parallel build/test jobs (default: nproc)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

mode="${1:-release}"
jobs="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
configure=(-DSOFTMAXLAB_WERROR="${SOFTMAXLAB_WERROR:-OFF}"
  -DSOFTMAXLAB_NATIVE="${SOFTMAXLAB_NATIVE:-ON}"
  -DSOFTMAXLAB_BUILD_TESTS=ON
  -DSOFTMAXLAB_BUILD_EXAMPLES=ON
  -DSOFTMAXLAB_BUILD_BENCHMARKS=OFF)
ctest_args=()

case "$mode" in
  release)
    bash scripts/install-deps.sh cmake g++ make libeigen3-dev catch2 pkg-config \
      libopenmpi-dev openmpi-bin
    build_dir="${BUILD_DIR:-build/test}"
    configure+=(-DCMAKE_BUILD_TYPE="${CMAKE_BUILD_TYPE:-Release}")
    ;;
  sanitize)
    bash scripts/install-deps.sh cmake clang libclang-rt-14-dev make libeigen3-dev catch2 \
      libopenmpi-dev openmpi-bin
    build_dir="${BUILD_DIR:-build/sanitize}"
    sanitizers="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
    configure+=(-DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=Sanitize
      "-DCMAKE_CXX_FLAGS_SANITIZE=-O1 -g $sanitizers"
      "-DCMAKE_EXE_LINKER_FLAGS_SANITIZE=$sanitizers")
    # Open MPI's own allocations show up as leaks under LeakSanitizer: the MPI tests (label
    # mpi) run in the release and debug stages only.
    ctest_args+=(--label-exclude "package|mpi")
    export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:strict_string_checks=1:check_initialization_order=1}"
    export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
    ;;
  debug)
    bash scripts/install-deps.sh cmake g++ make libeigen3-dev catch2 libopenmpi-dev openmpi-bin
    build_dir="${BUILD_DIR:-build/debug}"
    configure+=(-DCMAKE_BUILD_TYPE=Debug "-DCMAKE_CXX_FLAGS_DEBUG=-Og -g")
    ctest_args+=(--label-exclude package)
    ;;
  *)
    echo "usage: scripts/test.sh [release|sanitize|debug]" >&2
    exit 2
    ;;
esac

cmake -S . -B "$build_dir" "${configure[@]}"
cmake --build "$build_dir" -j"$jobs"
ctest --test-dir "$build_dir" --output-on-failure --no-tests=error -j"$jobs" "${ctest_args[@]}"
