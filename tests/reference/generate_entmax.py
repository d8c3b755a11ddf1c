#!/usr/bin/env python3
"""Reference table for Sparsemax, Entmax15 and Entmax(alpha) (softmaxlab tests).

Writes tests/reference/entmax_table.ipp: for every case the inputs exactly as
the C++ test sees them (float or double, exact hexadecimal literals), alpha,
and the exact output of alpha-entmax on those inputs, rounded once to double.

  alpha = 2 (sparsemax) and 1.5: the threshold tau is the root of a piecewise
  linear / quadratic polynomial; it is found exactly, with mpmath at DPS
  digits, by the sort-based algorithm (Martins and Astudillo 2016; Peters et
  al. 2019): sort z = (alpha - 1) x descending, for each support size k solve
  the restricted equation, keep the largest k whose root lies below z_k.
  other alpha: bisection on tau at DPS digits for BISECT_STEPS halvings
  (the bracket then is far below double resolution).

Usage:  python3 generate_entmax.py [--outdir DIR] [--no-write]

Needs only the standard library and mpmath (Debian: python3-mpmath).
Deterministic: every draw comes from random.Random seeded with a string (SHA-512
seeding, stable across Python versions) and uses only Random.random(); inputs
are rounded to float with struct (IEEE round to nearest even) and outputs to
double through Python's correctly rounded decimal-to-float conversion.
"""

import argparse
import math
import os
import random
import struct

from mpmath import mp, mpf

SEED = "20261130/entmax"
DPS = 60
BISECT_STEPS = 400


def to_f32(v):
    return struct.unpack("<f", struct.pack("<f", v))[0]


def to_double(v):
    """Correctly rounded mpf -> double (via a 40-digit decimal string)."""
    return float(mp.nstr(v, 40, min_fixed=-mp.inf, max_fixed=mp.inf)) if v != 0 else 0.0


def exact_threshold(z, alpha):
    """tau with sum max(z_i - tau, 0)^(1/(alpha-1)) = 1, z finite mpfs."""
    if alpha == 2 or alpha == mpf("1.5"):
        s = sorted(z, reverse=True)
        c1 = mpf(0)
        c2 = mpf(0)
        tau = None
        for k, v in enumerate(s, start=1):
            c1 += v
            c2 += v * v
            if alpha == 2:
                t = (c1 - 1) / k
            else:
                mean = c1 / k
                ss = c2 - k * mean * mean
                delta = (1 - ss) / k
                if delta < 0:
                    break
                t = mean - mp.sqrt(delta)
            if v > t:
                tau = t
            else:
                break
        return tau
    p = 1 / (alpha - 1)
    m = max(z)
    lo, hi = m - 1, m - mpf(len(z)) ** (1 - alpha)

    def f(t):
        return mp.fsum((v - t) ** p for v in z if v > t)

    for _ in range(BISECT_STEPS):
        mid = (lo + hi) / 2
        if f(mid) >= 1:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def entmax_exact(x, alpha):
    """Exact output for a row of Python floats (may hold -inf)."""
    alpha = mpf(alpha)
    finite = [i for i, v in enumerate(x) if v != -math.inf]
    z = [(alpha - 1) * mpf(x[i]) for i in finite]
    tau = exact_threshold(z, alpha)
    p = 1 / (alpha - 1)
    y = [mpf(0)] * len(x)
    for i, v in zip(finite, z):
        if v > tau:
            y[i] = (v - tau) ** p
    if alpha != 2 and alpha != mpf("1.5"):
        total = mp.fsum(y)
        y = [v / total for v in y]  # removes the bisection's residual
    # self-check: sums to one, support above tau
    assert abs(mp.fsum(y) - 1) < mpf(10) ** (-DPS + 10)
    return y


def normal(rng):
    u1 = 1.0 - rng.random()
    u2 = rng.random()
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


def make_cases():
    """(name, type, alpha, inputs as Python floats)."""
    cases = []

    def rng_for(name):
        return random.Random(SEED + "/" + name)

    def add(name, typ, alphas, xs):
        if typ == "float":
            xs = [to_f32(v) if v != -math.inf else v for v in xs]
        for a in alphas:
            cases.append((name, typ, a, xs))

    exact_alphas = ["2", "1.5"]
    for typ in ("float", "double"):
        for n, scale, tag in ((5, 1.0, "n5"), (17, 0.3, "n17_narrow"), (64, 1.0, "n64"),
                              (100, 3.0, "n100_wide"), (257, 0.05, "n257_flat"),
                              (1000, 1.0, "n1000")):
            r = rng_for(typ + tag)
            add(tag, typ, exact_alphas, [scale * normal(r) for _ in range(n)])
        r = rng_for(typ + "offset")
        add("offset_1e4", typ, exact_alphas, [1.0e4 + normal(r) for _ in range(40)])
        r = rng_for(typ + "masked")
        xs = [normal(r) for _ in range(30)]
        for i in (0, 7, 8, 29):
            xs[i] = -math.inf
        add("masked", typ, exact_alphas, xs)
        add("ties", typ, exact_alphas, [0.5, 0.5, 0.5, -0.25, 0.5, -3.0, 0.125])
        add("one", typ, exact_alphas, [3.25])
        add("dyadic", typ, exact_alphas, [1.0, 0.5, 0.25, 0.0, -1.0, 0.75])
    for a in ("1.1", "1.25", "1.5", "1.75", "2"):
        r = rng_for("double/bisect/" + a)
        add("bisect_n50", "double", [a], [normal(r) for _ in range(50)])
        r = rng_for("float/bisect/" + a)
        add("bisect_n50", "float", [a], [2.0 * normal(r) for _ in range(50)])
    return cases


def c_literal(v, typ):
    if v == -math.inf:
        return "-kInf<%s>" % typ
    if typ == "float":
        return float(v).hex() + "f"
    return float(v).hex()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--outdir", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    mp.dps = DPS
    out = ["// Generated by tests/reference/generate_entmax.py: do not edit.",
           "// Exact alpha-entmax of exact inputs (alpha 2: sparsemax, 1.5: 1.5-entmax), rounded once",
           "// to double. Cases: {name, alpha, n, inputs, outputs}.", ""]
    tables = {"float": [], "double": []}
    for idx, (name, typ, alpha, xs) in enumerate(make_cases()):
        y = entmax_exact(xs, alpha)
        yd = [to_double(v) for v in y]
        xname = "kEntmaxX%d" % idx
        yname = "kEntmaxY%d" % idx
        out.append("inline const %s %s[] = {%s};" % (typ, xname, ", ".join(c_literal(v, typ) for v in xs)))
        out.append("inline const double %s[] = {%s};" % (yname, ", ".join(float(v).hex() for v in yd)))
        tables[typ].append('{"%s", %s, %d, %s, %s}' % (name, alpha, len(xs), xname, yname))
    for typ, tag in (("float", "F32"), ("double", "F64")):
        out.append("")
        out.append("inline const EntmaxCase<%s> kEntmaxCases%s[] = {" % (typ, tag))
        out.extend("    %s," % c for c in tables[typ])
        out.append("};")
    text = "\n".join(out) + "\n"
    if not args.no_write:
        with open(os.path.join(args.outdir, "entmax_table.ipp"), "w") as f:
            f.write(text)
    print("entmax_table.ipp: %d float cases, %d double cases, %d bytes"
          % (len(tables["float"]), len(tables["double"]), len(text)))


if __name__ == "__main__":
    main()
