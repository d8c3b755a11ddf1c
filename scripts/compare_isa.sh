#!/usr/bin/env bash
# How far results move between instruction sets (docs/numerical-policy.md, "Reproducibility"):
# builds tests/portability/isa_dump.cpp for SSE2 (no FMA), AVX2 + FMA and EIGEN_DONT_VECTORIZE
# (and aarch64 NEON under qemu when g++-aarch64-linux-gnu and qemu-user are installed), then
# prints, per result, the share of bitwise-equal entries and the largest difference in units of
# eps times the larger value, against the SSE2 build.
#   scripts/compare_isa.sh [work dir, default build/compare_isa]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
work="${1:-build/compare_isa}"
mkdir -p "$work"
flags=(-std=c++17 -O2 -Iinclude -isystem /usr/include/eigen3 tests/portability/isa_dump.cpp)
builds=(sse2 avx2 scalar)
g++ "${flags[@]}" -o "$work/sse2" && "$work/sse2" >"$work/sse2.bin"
g++ "${flags[@]}" -mavx2 -mfma -o "$work/avx2" && "$work/avx2" >"$work/avx2.bin"
g++ "${flags[@]}" -DEIGEN_DONT_VECTORIZE -o "$work/scalar" && "$work/scalar" >"$work/scalar.bin"
if command -v aarch64-linux-gnu-g++ >/dev/null && command -v qemu-aarch64 >/dev/null; then
  aarch64-linux-gnu-g++ "${flags[@]}" -o "$work/neon"
  qemu-aarch64 -L /usr/aarch64-linux-gnu "$work/neon" >"$work/neon.bin"
  builds+=(neon)
fi
python3 - "$work" "${builds[@]}" <<'PY'
import sys
from array import array
work, ref, others = sys.argv[1], sys.argv[2], sys.argv[3:]
N = 64 * 4096
layout = []
for tau in ("1", "0.5", "0.1"):
    layout += [("GumbelSoftmax float tau=" + tau, "f"), ("GumbelSoftmax double tau=" + tau, "d")]
layout += [("Softmax float", "f"), ("Softmax double", "d")]
def load(name):
    data, off, out = open(f"{work}/{name}.bin", "rb").read(), 0, []
    for _, code in layout:
        a = array(code)
        a.frombytes(data[off:off + N * a.itemsize])
        off += N * a.itemsize
        out.append(a)
    return out
base = load(ref)
for other in others:
    for (label, code), a, b in zip(layout, base, load(other)):
        eps, tiny = (2.0**-23, 2.0**-126) if code == "f" else (2.0**-52, 2.0**-1022)
        same = sum(1 for x, y in zip(a, b) if x == y)
        worst = max((abs(x - y) / (eps * max(abs(x), abs(y), tiny)) for x, y in zip(a, b)),
                    default=0.0)
        print(f"{ref} vs {other:6}  {label:32} {100 * same / N:5.1f}% bitwise equal, "
              f"max difference {worst:6.1f} eps")
PY
