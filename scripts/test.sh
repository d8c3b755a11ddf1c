#!/usr/bin/env bash
# Build and run softmaxlab's tests and examples (the README's test command).
#
#   scripts/test.sh [release|sanitize|debug|novec|avx2|aarch64]
#
#   release   (default) GCC, Release, -march=native (AVX-512 on machines that have it): every header
#             compiled alone (tests/headers), every unit
#             test, example and package test, the compile-fail tests, the -fno-exceptions handler
#             test, and the MPI tests and example under mpirun with 1, 2 and 4 ranks (label mpi)
#   sanitize  clang with AddressSanitizer + UndefinedBehaviorSanitizer (-O1): unit tests and examples
#             (not label mpi: Open MPI reports its own leaks)
#   debug     GCC, Debug (-Og, assertions on, no NDEBUG), x86-64 baseline: SSE2 only (no -march,
#             no FMA): unit tests, examples and MPI tests
#   The portability builds compile only the portability subset (softmaxlab_portability_tests: every
#   functor in float and double, see tests/CMakeLists.txt) and the -fno-exceptions handler test:
#   novec     GCC, Release, C++20, -DEIGEN_DONT_VECTORIZE (the scalar paths); runs both
#   avx2      clang, Release, C++20, -march=x86-64-v3 (AVX2 + FMA + F16C, no AVX-512): the kernels of
#             the machines without AVX-512; runs them only when this CPU has AVX2 and FMA
#   aarch64   Debian's g++-aarch64-linux-gnu, Release (NEON); runs both under qemu-aarch64
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
    # The headers-alone check (tests/headers) is built in the release stage only. Line tables are
    # all a sanitizer report needs (file:line in its stack traces); full debug info made every
    # translation unit about 20% slower to compile in this compile-bound stage.
    configure+=(-DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=Sanitize -DSOFTMAXLAB_HEADER_CHECK=OFF
      "-DCMAKE_CXX_FLAGS_SANITIZE=-O1 -gline-tables-only $sanitizers"
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
    # No -march: the x86-64 baseline (SSE2, no FMA), the instruction set of the oldest machines.
    # -g1 (line tables and backtraces, no variable info): CI reads failures, it does not step
    # through them, and -g made each translation unit about 25% slower to compile.
    configure+=(-DCMAKE_BUILD_TYPE=Debug "-DCMAKE_CXX_FLAGS_DEBUG=-Og -g1" -DSOFTMAXLAB_NATIVE=OFF
      -DSOFTMAXLAB_HEADER_CHECK=OFF)
    ctest_args+=(--label-exclude "package|compile_fail")  # compile_fail: release and sanitize
    ;;
  novec | avx2 | aarch64)
    portability=1
    build_dir="${BUILD_DIR:-build/$mode}"
    configure=(-DSOFTMAXLAB_WERROR="${SOFTMAXLAB_WERROR:-OFF}" -DSOFTMAXLAB_NATIVE=OFF
      -DSOFTMAXLAB_BUILD_TESTS=ON -DSOFTMAXLAB_BUILD_EXAMPLES=OFF -DSOFTMAXLAB_BUILD_BENCHMARKS=OFF
      -DSOFTMAXLAB_WITH_MPI=OFF -DSOFTMAXLAB_INSTALL=OFF -DCMAKE_BUILD_TYPE=Release)
    run=()
    filter=()
    case "$mode" in
      novec)
        bash scripts/install-deps.sh cmake g++ make libeigen3-dev catch2
        # C++20 here and in avx2: GCC and clang each build the subset as C++20 once.
        configure+=(-DCMAKE_CXX_COMPILER=g++ -DCMAKE_CXX_FLAGS=-DEIGEN_DONT_VECTORIZE
          -DCMAKE_CXX_STANDARD=20)
        ;;
      avx2)
        bash scripts/install-deps.sh cmake clang make libeigen3-dev catch2
        configure+=(-DCMAKE_CXX_COMPILER=clang++ -DCMAKE_CXX_STANDARD=20
          "-DCMAKE_CXX_FLAGS=-march=x86-64-v3")
        for flag in avx2 fma f16c; do
          grep -qw "$flag" /proc/cpuinfo 2>/dev/null || run=(skip)
        done
        ;;
      aarch64)
        bash scripts/install-deps.sh cmake make libeigen3-dev catch2 g++-aarch64-linux-gnu qemu-user
        configure+=(-DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64
          -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++ -DCMAKE_CXX_FLAGS=-Wno-psabi
          "-DCMAKE_CROSSCOMPILING_EMULATOR=qemu-aarch64;-L;/usr/aarch64-linux-gnu")
        run=(qemu-aarch64 -L /usr/aarch64-linux-gnu)
        # Under qemu (20-30x slower) the whole subset takes 15 minutes. Left out here, run in every
        # x86 stage: the statistical cases (chi-square, 100,000 samples), the 2^24-entry row, and
        # the exhaustive sweeps of the exp and Gumbel-log kernels (18 million and 8 million points);
        # the NEON exp and log stay covered through the mpmath reference tables of Softmax,
        # LogSoftmax, LogSumExp and Attention and the Gumbel long-double recomputation.
        filter=('~*2^24*' '~*chi-square*' '~*samples on extreme logits*'
          '~*exp kernel is within 1.1 ulp*' '~*Gumbel log (detail/log.hpp)*')
        # -Wno-psabi: GCC's notes that the C++17 parameter-passing ABI changed in GCC 10.1
        ;;
    esac
    ;;
  *)
    echo "usage: scripts/test.sh [release|sanitize|debug|novec|avx2|aarch64]" >&2
    exit 2
    ;;
esac

if [[ -n "${portability:-}" ]]; then
  cmake -S . -B "$build_dir" "${configure[@]}"
  cmake --build "$build_dir" -j"$jobs" --target softmaxlab_portability_tests \
    softmaxlab_no_exceptions_test
  if [[ "${run[*]:-}" == "skip" ]]; then
    echo "test.sh $mode: built; this CPU lacks AVX2, FMA or F16C, so the binaries are not run"
    exit 0
  fi
  "${run[@]}" "$build_dir/tests/softmaxlab_portability_tests" "${filter[@]}"
  for handler_mode in handler default; do
    "${run[@]}" "$build_dir/tests/softmaxlab_no_exceptions_test" "$handler_mode"
  done
  exit 0
fi

cmake -S . -B "$build_dir" "${configure[@]}"
cmake --build "$build_dir" -j"$jobs"
ctest --test-dir "$build_dir" --output-on-failure --no-tests=error -j"$jobs" "${ctest_args[@]}"
