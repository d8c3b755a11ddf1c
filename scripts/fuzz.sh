#!/usr/bin/env bash
# Build the libFuzzer targets (tests/fuzz, clang with ASan + UBSan) and run each for a bounded time
# from its committed seed corpus. Any crash, sanitizer report or broken invariant fails the run and
# leaves the reproducer in <build>/artifacts/.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]     (or $FUZZ_SECONDS)
#
# Without a per-target time, a total budget is split evenly over the targets built:
# FUZZ_TOTAL_SECONDS (default 90) / number of targets, at least FUZZ_MIN_SECONDS (default 5) each,
# so the whole run stays about a minute and a half however many targets there are.
#
# The mutation seed is fixed (FUZZ_SEED, default 1) so that a CI finding is reproducible from the
# same commit; FUZZ_SEED=0 lets libFuzzer pick one (exploration: run longer, with FUZZ_SECONDS).
#
# Environment: BUILD_DIR (default build/fuzz), SOFTMAXLAB_WERROR, JOBS, FUZZ_SECONDS,
# FUZZ_TOTAL_SECONDS, FUZZ_MIN_SECONDS, FUZZ_SEED, FUZZ_ONLY (a regex of target names).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

bash scripts/install-deps.sh cmake make clang libclang-rt-14-dev libeigen3-dev

per_target="${1:-${FUZZ_SECONDS:-}}"
build_dir="${BUILD_DIR:-build/fuzz}"
jobs="${JOBS:-$(nproc 2>/dev/null || echo 2)}"

cmake -S . -B "$build_dir" \
  -DCMAKE_CXX_COMPILER="${FUZZ_CXX:-clang++}" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DSOFTMAXLAB_WERROR="${SOFTMAXLAB_WERROR:-OFF}" \
  -DSOFTMAXLAB_BUILD_FUZZERS=ON \
  -DSOFTMAXLAB_BUILD_TESTS=OFF \
  -DSOFTMAXLAB_BUILD_BENCHMARKS=OFF \
  -DSOFTMAXLAB_BUILD_EXAMPLES=OFF
cmake --build "$build_dir" -j"$jobs"

mkdir -p "$build_dir/artifacts"
executables=()
for exe in "$build_dir"/tests/fuzz/fuzz_*; do
  [[ -x "$exe" && -f "$exe" ]] || continue
  [[ -z "${FUZZ_ONLY:-}" || "$(basename "$exe")" =~ ${FUZZ_ONLY} ]] && executables+=("$exe")
done
[[ ${#executables[@]} -gt 0 ]] || { echo "fuzz: no targets were built" >&2; exit 1; }
if [[ -n "$per_target" ]]; then
  seconds="$per_target"
else
  seconds=$(( ${FUZZ_TOTAL_SECONDS:-90} / ${#executables[@]} ))
  (( seconds >= ${FUZZ_MIN_SECONDS:-5} )) || seconds="${FUZZ_MIN_SECONDS:-5}"
fi
targets=0
start=$SECONDS
for exe in "${executables[@]}"; do
  name="$(basename "$exe")"
  work="$(mktemp -d)"  # grows during the run; the committed corpus stays as it is
  if [[ -d "tests/fuzz/corpus/$name" ]]; then cp -r "tests/fuzz/corpus/$name/." "$work/"; fi
  echo "fuzz: $name for ${seconds}s"
  log="$work.log"
  status=0
  "$exe" -seed="${FUZZ_SEED:-1}" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 \
    -artifact_prefix="$build_dir/artifacts/$name-" "$work" >"$log" 2>&1 || status=$?
  # The reason (a broken invariant or a sanitizer report) comes before libFuzzer's long tail.
  if [[ $status -ne 0 ]]; then
    grep -m 5 -E "invariant broken|ERROR: |runtime error" "$log" >&2 || true
  fi
  tail -n 12 "$log"
  rm -rf "$work" "$log"
  [[ $status -eq 0 ]] || { echo "fuzz: $name failed (exit $status)" >&2; exit "$status"; }
  targets=$((targets + 1))
done
echo "fuzz: $targets targets ran ${seconds}s each ($((SECONDS - start))s in all), no findings"
