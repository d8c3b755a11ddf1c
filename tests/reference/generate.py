#!/usr/bin/env python3
"""Reference tables for Softmax / LogSoftmax (softmaxlab tests).

Writes tests/reference/softmax_f32.ipp and tests/reference/softmax_f64.ipp:
for every case, the inputs exactly as the C++ test sees them (float or double,
as exact hexadecimal literals) and the exact softmax and log-softmax of those
inputs, computed with mpmath at DPS decimal digits and stored as unevaluated
double-double pairs hi + lo.  See README.md in this directory for the
semantics and the list of cases.

Usage:  python3 generate.py [--outdir DIR] [--no-write]

Needs only the Python standard library and mpmath (Debian: python3-mpmath).
Deterministic: every random draw comes from random.Random seeded with SEED
and the case's name, uses only Random.random() (the one method whose stream
Python guarantees across versions), and every rounding to float/double is done
here with integer arithmetic (round to nearest, ties to even), never by the
platform's libm.  Re-running gives byte-identical files.
"""

import argparse
import math
import os
import random
import re
import struct
import time

import mpmath
from mpmath import mp, mpf
from mpmath import libmp

SEED = 20261126
DPS = 60             # working precision of every reference computation
GEN_DPS = 40         # precision used only to make the (then rounded) inputs
CUTOFF = 1000        # exp(d) with d < -CUTOFF is dropped from the sum (see README)
FORMAT_VERSION = 1

INF = float("inf")
NAN = float("nan")


# ---------------------------------------------------------------------------
# Exact rounding of an mpf to a binary floating-point format
# ---------------------------------------------------------------------------

class BinaryFormat:
    def __init__(self, name, ctype, p, emin, emax, suffix, per_line):
        self.name = name          # "f32" / "f64"
        self.ctype = ctype        # "float" / "double"
        self.p = p                # significand bits, hidden bit included
        self.emin = emin          # exponent of the smallest normal number
        self.emax = emax          # exponent of the largest finite number
        self.suffix = suffix      # C++ literal suffix
        self.per_line = per_line  # numbers per line in the output
        # largest finite value, as an exact Python float
        self.max = math.ldexp(float(2 ** p - 1), emax - p + 1)
        self.min_normal = math.ldexp(1.0, emin)
        self.denorm_min = math.ldexp(1.0, emin - p + 1)


F32 = BinaryFormat("f32", "float", 24, -126, 127, "f", 6)
F64 = BinaryFormat("f64", "double", 53, -1022, 1023, "", 4)


def round_to(v, fmt):
    """Nearest value of format fmt (ties to even) to the mpf v, as a Python float.

    Overflow gives +-inf (IEEE round-to-nearest), underflow gives a subnormal
    or +-0.  The result is exact as a Python float for both formats.
    """
    s = v._mpf_ if isinstance(v, mpf) else mpf(v)._mpf_
    sign, man, exp, bc = s
    if not man:
        if s == libmp.fzero:
            return 0.0
        if s == libmp.finf:
            return INF
        if s == libmp.fninf:
            return -INF
        return NAN
    e = exp + bc - 1                      # 2^e <= |v| < 2^(e+1)
    if e > fmt.emax + 1:
        return -INF if sign else INF
    if e < fmt.emin - fmt.p:              # |v| < half the smallest subnormal
        return -0.0 if sign else 0.0
    q = max(e - fmt.p + 1, fmt.emin - fmt.p + 1)   # exponent of the last kept bit
    if exp >= q:
        m = man << (exp - q)
    else:
        r = q - exp
        m = man >> r
        rem = man & ((1 << r) - 1)
        half = 1 << (r - 1)
        if rem > half or (rem == half and (m & 1)):
            m += 1
    if m.bit_length() + q > fmt.emax + 1:  # rounded up to 2^(emax+1): overflow
        return -INF if sign else INF
    val = math.ldexp(float(m), q)          # m <= 2^53: exact
    return -val if sign else val


def double_double(v):
    """(hi, lo): hi = nearest double to v, lo = nearest double to v - hi.

    v is an mpf or one of the Python floats 0.0, +-inf, nan (exact specials).
    """
    if isinstance(v, float):
        if math.isnan(v):
            return NAN, 0.0
        return v, 0.0
    hi = round_to(v, F64)
    if hi == 0.0 or math.isinf(hi):
        return hi, 0.0
    rem = libmp.mpf_sub(v._mpf_, libmp.from_float(hi), 0)   # prec 0: exact
    lo = round_to(mpf(rem), F64)
    return hi, lo


# ---------------------------------------------------------------------------
# Deterministic inputs
# ---------------------------------------------------------------------------

def case_rng(fmt, key):
    # String seeds are hashed with SHA-512 (seed version 2): stable across
    # Python versions.  One stream per case, so adding or removing a case
    # does not change any other case.
    return random.Random("%d/%s/%s" % (SEED, fmt.name, key))


def shuffle(rng, xs):
    """Fisher-Yates driven by rng.random() only."""
    xs = list(xs)
    for i in range(len(xs) - 1, 0, -1):
        j = int(rng.random() * (i + 1))
        xs[i], xs[j] = xs[j], xs[i]
    return xs


def normals(rng, n, scale, fmt):
    """n values round_fmt(scale * z), z standard normal (Box-Muller in mpmath)."""
    out = []
    with mp.workdps(GEN_DPS):
        while len(out) < n:
            u1 = 1.0 - rng.random()          # (0, 1], exact
            u2 = rng.random()
            r = mpmath.sqrt(-2 * mpmath.log(mpf(u1))) * scale
            t = 2 * mp.pi * mpf(u2)
            out.append(round_to(r * mpmath.cos(t), fmt))
            out.append(round_to(r * mpmath.sin(t), fmt))
    return out[:n]


def uniform(rng, a, b, fmt):
    """round_fmt(a + (b - a) * u), u = rng.random() in [0, 1)."""
    with mp.workdps(GEN_DPS):
        a = mpf(a)
        b = mpf(b)
        return round_to(a + (b - a) * mpf(rng.random()), fmt)


def uniforms(rng, n, a, b, fmt):
    return [uniform(rng, a, b, fmt) for _ in range(n)]


def build_cases(fmt):
    """List of (name, description, temperature, inputs)."""
    cases = []

    def add(name, desc, temperature, xs):
        cases.append((name, desc, float(temperature), list(xs)))

    big = fmt is F32
    one = 1.0

    # 1. standard normal logits x 3
    for n in (1, 2, 3, 7, 8, 15, 16, 17, 31, 33, 64, 100, 255, 1000, 4097):
        name = "normal3_n%d" % n
        add(name, "3 x standard normal, T = 1", one,
            normals(case_rng(fmt, name), n, 3, fmt))

    # 2. wide uniform
    for n in ((16, 1000, 65536) if big else (16, 1000, 16384)):
        name = "uniform_pm1000_n%d" % n
        add(name, "uniform in [-1000, 1000], T = 1", one,
            uniforms(case_rng(fmt, name), n, -1000, 1000, fmt))

    # 3. huge magnitudes
    for n in (17, 100):
        name = "huge_half_to_max_n%d" % n
        add(name, "uniform in [MAX/2, MAX], MAX = largest finite %s, T = 1" % fmt.ctype,
            one, uniforms(case_rng(fmt, name), n, fmt.max / 2, fmt.max, fmt))
        name = "huge_mixed_sign_n%d" % n
        rng = case_rng(fmt, name)
        xs = []
        for _ in range(n):
            neg = rng.random() < 0.5
            v = uniform(rng, 0.9 * fmt.max, fmt.max, fmt)
            xs.append(-v if neg else v)
        add(name, "random sign x uniform in [0.9 MAX, MAX], T = 1", one, xs)

    # 4. tiny magnitudes and subnormal inputs
    bound = 1e-30 if big else 1e-300
    name = "tiny_pm%s_with_subnormals_n33" % ("1e-30" if big else "1e-300")
    rng = case_rng(fmt, name)
    special = [fmt.denorm_min, -fmt.denorm_min, 3 * fmt.denorm_min,
               fmt.min_normal - fmt.denorm_min, -fmt.min_normal / 2,
               fmt.min_normal, 0.0, -0.0]
    xs = uniforms(rng, 33 - len(special), -bound, bound, fmt) + special
    add(name, "uniform in [-%g, %g] plus subnormals, +-0 and the smallest normal, T = 1"
        % (bound, bound), one, shuffle(rng, xs))

    # 5. exp underflowing into subnormals and to zero
    lo, hi = (-200, -87) if big else (-1000, -700)
    for n in (64, 1000):
        name = "underflow_n%d" % n
        rng = case_rng(fmt, name)
        near = uniforms(rng, n // 2, -1, 1, fmt)
        top = max(near)
        far = []
        for _ in range(n - n // 2):
            off = uniform(rng, lo, hi, F64)
            with mp.workdps(GEN_DPS):
                far.append(round_to(mpf(top) + mpf(off), fmt))
        add(name, "half uniform in [-1, 1], half with x - max in [%d, %d], T = 1" % (lo, hi),
            one, shuffle(rng, near + far))

    # 6. all equal: exactly 1/n
    for n in (1, 5, 1000):
        add("all_equal_3p25_n%d" % n, "every entry 3.25 (softmax exactly 1/n), T = 1",
            one, [3.25] * n)

    # 7. masked rows
    for n in (10, 257):
        name = "masked30_normal3_n%d" % n
        rng = case_rng(fmt, name)
        xs = normals(rng, n, 3, fmt)
        k = round(0.3 * n)                   # masked entries: 3 of 10, 77 of 257
        masked = set(shuffle(rng, range(n))[:k])
        xs = [-INF if i in masked else x for i, x in enumerate(xs)]
        add(name, "3 x standard normal, %d of the %d entries -inf, T = 1" % (k, n), one, xs)
    for n in (1, 8):
        add("all_masked_n%d" % n, "every entry -inf, T = 1", one, [-INF] * n)

    # 8. +inf entries
    name = "posinf1_normal3_n9"
    rng = case_rng(fmt, name)
    add(name, "one +inf among 8 finite (3 x standard normal), T = 1", one,
        shuffle(rng, [INF] + normals(rng, 8, 3, fmt)))
    name = "posinf3_neginf3_normal3_n12"
    rng = case_rng(fmt, name)
    add(name, "three +inf, three -inf, six finite, T = 1", one,
        shuffle(rng, [INF] * 3 + [-INF] * 3 + normals(rng, 6, 3, fmt)))

    # 9. NaN
    name = "nan1_normal3_n9"
    rng = case_rng(fmt, name)
    add(name, "one NaN among 8 finite: whole row NaN, T = 1", one,
        shuffle(rng, [NAN] + normals(rng, 8, 3, fmt)))
    name = "nan_posinf_neginf_n6"
    rng = case_rng(fmt, name)
    add(name, "NaN, +inf, -inf and three finite: whole row NaN, T = 1", one,
        shuffle(rng, [NAN, INF, -INF] + normals(rng, 3, 3, fmt)))

    # 10. temperatures (all exactly representable in float, so the float test
    #     can cast T to float without changing it)
    row = normals(case_rng(fmt, "normal5_n100"), 100, 5, fmt)
    for t, tag in ((round_to(mpf(0.05), F32), "0p05f"), (round_to(mpf(0.7), F32), "0p7f"),
                   (3.0, "3"), (1000.0, "1000")):
        add("normal5_T%s_n100" % tag,
            "5 x standard normal (one row shared by the normal5 cases), T = %s"
            % ("float(%s) = %s" % (tag[:-1].replace("p", "."), literal(t, "double", ""))
               if tag.endswith("f") else "%g" % t), t, row)
    base = 1e6 if big else 1e15
    name = "near_equal_%s_plus_k_T3_n16" % ("1e6" if big else "1e15")
    add(name, "%g + k, k = 0..15 shuffled, T = 3 (cancellation in x/T - m)" % base, 3.0,
        shuffle(case_rng(fmt, name), [base + k for k in range(16)]))

    # 11. maximum attained twice: the normal3_n1000 row with a second copy of its max
    xs = normals(case_rng(fmt, "normal3_n1000"), 1000, 3, fmt)
    rng = case_rng(fmt, "normal3_dup_max_n1000")
    imax = xs.index(max(xs))
    j = imax
    while j == imax:
        j = int(rng.random() * len(xs))
    xs[j] = xs[imax]
    add("normal3_dup_max_n1000",
        "the normal3_n1000 row with entry %d set to its maximum (entry %d), T = 1" % (j, imax),
        one, xs)

    # every input must be exactly representable in the table's type
    for name, _, t, xs in cases:
        for x in xs:
            if math.isfinite(x):
                assert round_to(mpf(x), fmt) == x, (name, x)
                if fmt is F32:
                    assert struct.unpack("<f", struct.pack("<f", x))[0] == x, (name, x)
        assert t > 0 and round_to(mpf(t), F32) == t, (name, t)
    names = [c[0] for c in cases]
    assert len(set(names)) == len(names)
    return cases


# ---------------------------------------------------------------------------
# Exact softmax / log-softmax (mathematical limits for the special values)
# ---------------------------------------------------------------------------

def reference(xs, temperature):
    """(softmax, logsoftmax): lists of mpf, or exact Python-float specials."""
    n = len(xs)
    if any(math.isnan(x) for x in xs):
        return [NAN] * n, [NAN] * n
    pinf = [x == INF for x in xs]
    if any(pinf):
        k = sum(pinf)
        with mp.workdps(DPS):
            share = mpf(1) / k
            logshare = -mpmath.log(k) if k > 1 else 0.0
        return ([share if p else 0.0 for p in pinf],
                [logshare if p else -INF for p in pinf])
    finite = [i for i, x in enumerate(xs) if x != -INF]
    if not finite:
        return [0.0] * n, [-INF] * n
    soft = [0.0] * n
    logs = [-INF] * n
    with mp.workdps(DPS):
        t = mpf(temperature)
        xmax = mpf(max(xs[i] for i in finite))
        d = {}
        e = {}
        for i in finite:
            di = (mpf(xs[i]) - xmax) / t      # = x_i/T - max_j x_j/T, T > 0
            d[i] = di
            e[i] = mpmath.exp(di) if di >= -CUTOFF else None
        total = mpmath.fsum(v for v in e.values() if v is not None)   # in [1, n]
        logtotal = mpmath.log(total)
        for i in finite:
            logs[i] = d[i] - logtotal
            soft[i] = e[i] / total if e[i] is not None else 0.0
    return soft, logs


# ---------------------------------------------------------------------------
# Self-checks
# ---------------------------------------------------------------------------

def dd_to_mpf(hi, lo):
    return mpf(hi) + mpf(lo)


def self_check(fmt, name, xs, temperature, soft, logs, soft_dd, log_dd):
    has_nan = any(math.isnan(x) for x in xs)
    if has_nan:
        assert all(math.isnan(h) and l == 0.0 for h, l in soft_dd + log_dd), name
        return
    with mp.workdps(120):
        # double-double is the correctly rounded head plus the rounded tail
        for v, (hi, lo) in zip(soft + logs, soft_dd + log_dd):
            if isinstance(v, float):
                assert (hi, lo) == (v, 0.0), name
                continue
            assert hi == round_to(v, F64), name
            if math.isfinite(hi) and abs(hi) >= 2.0 ** -900:
                err = abs(v - dd_to_mpf(hi, lo))
                assert err <= abs(v) * mpf(2) ** -105, (name, hi, lo)
                assert abs(lo) <= math.ulp(hi) / 2, (name, hi, lo)
        # the softmax sums to 1 (rows with any non -inf entry)
        if any(x != -INF for x in xs):
            s = mpmath.fsum(dd_to_mpf(h, l) for h, l in soft_dd)
            assert abs(s - 1) <= mpf("1e-30"), (name, s)
        else:
            assert all(h == 0.0 for h, _ in soft_dd) and all(h == -INF for h, _ in log_dd)
        # softmax = exp(log-softmax)
        for (sh, sl), (lh, ll) in zip(soft_dd, log_dd):
            if lh == -INF or lh < -700:
                assert sh < 2.0 ** -1000, (name, sh, lh)
                continue
            s = dd_to_mpf(sh, sl)
            ls = mpmath.exp(dd_to_mpf(lh, ll))
            # (below about 2^-969 the tail lo is subnormal: absolute accuracy 2^-1074)
            assert abs(s - ls) <= mpf("1e-27") * ls + mpf(2) ** -1073, (name, sh, lh)
    # independent plain-double computation agrees to ~1e-9 (catches gross mistakes)
    if not any(x == INF for x in xs) and any(x != -INF for x in xs):
        fin = [x for x in xs if x != -INF]
        m = max(fin)
        ds = [((x - m) / temperature if x != -INF else -INF) if abs(m) < 1e300 else None
              for x in xs]
        if None not in ds:
            es = [math.exp(v) for v in ds]
            tot = math.fsum(es)
            for v, ex, (sh, _) in zip(ds, es, soft_dd):
                if v == -INF:
                    assert sh == 0.0, name
                    continue
                want = ex / tot
                assert abs(want - sh) <= 1e-9 * (1 + abs(v)) * sh + 1e-300, (name, want, sh)


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------

def literal(x, ctype, suffix):
    if math.isnan(x):
        return "kNaN<%s>" % ctype
    if math.isinf(x):
        return ("-kInf<%s>" if x < 0 else "kInf<%s>") % ctype
    h = x.hex()                                  # e.g. -0x1.8000000000000p+3
    mant, ex = h.split("p")
    if "." in mant:
        ip, frac = mant.split(".")
        frac = frac.rstrip("0")
        mant = ip + ("." + frac if frac else "")
    return mant + "p" + ex + suffix


def ident(name):
    return re.sub(r"[^0-9A-Za-z_]", "_", name)


def emit_array(out, ctype, suffix, cname, values, per_line):
    out.append("inline const %s %s[] = {\n" % (ctype, cname))
    lits = [literal(v, ctype, suffix) for v in values]
    for k in range(0, len(lits), per_line):
        out.append("  " + ", ".join(lits[k:k + per_line]) + ",\n")
    out.append("};\n")


def render(fmt, results):
    ns = "ref_" + fmt.name
    table = "kSoftmaxCases" + fmt.name.upper()
    total = sum(len(r[3]) for r in results)
    out = []
    out.append("// generated by tests/reference/generate.py; do not edit\n")
    out.append("// parameters: inputs %s, seed %d, mpmath dps %d, exp cutoff %d, format %d\n"
               % (fmt.ctype, SEED, DPS, CUTOFF, FORMAT_VERSION))
    out.append("// %d cases, %d elements; regenerate with tests/reference/generate.py\n"
               "// (see tests/reference/README.md)\n" % (len(results), total))
    out.append("// Include after reference_table.hpp (it is included here too).\n")
    out.append("#pragma once\n#include \"reference_table.hpp\"\n\n// clang-format off\n")
    out.append("namespace softmaxlab_test {\nnamespace %s {\n" % ns)
    for name, desc, t, xs, soft_dd, log_dd in results:
        c = ident(name)
        out.append("\n// %s: %s\n" % (name, desc))
        emit_array(out, fmt.ctype, fmt.suffix, c + "_x", xs, fmt.per_line)
        emit_array(out, "double", "", c + "_softmax_hi", [h for h, _ in soft_dd], F64.per_line)
        emit_array(out, "double", "", c + "_softmax_lo", [l for _, l in soft_dd], F64.per_line)
        emit_array(out, "double", "", c + "_log_hi", [h for h, _ in log_dd], F64.per_line)
        emit_array(out, "double", "", c + "_log_lo", [l for _, l in log_dd], F64.per_line)
    out.append("\n}  // namespace %s\n\n" % ns)
    out.append("inline const SoftmaxCase<%s> %s[] = {\n" % (fmt.ctype, table))
    for name, desc, t, xs, soft_dd, log_dd in results:
        c = ns + "::" + ident(name)
        out.append("  {\"%s\", %s, %d, %s_x,\n   %s_softmax_hi, %s_softmax_lo,\n"
                   "   %s_log_hi, %s_log_lo},\n"
                   % (name, literal(t, "double", ""), len(xs), c, c, c, c, c))
    out.append("};\n\n}  // namespace softmaxlab_test\n")
    return "".join(out)


def parse_back(text, fmt, results):
    """Re-read every array literal of the rendered text and compare bit for bit."""
    arrays = {}
    for m in re.finditer(r"inline const (?:float|double) (\w+)\[\] = \{\n(.*?)\};", text, re.S):
        arrays[m.group(1)] = [s.strip() for s in m.group(2).replace("\n", " ").split(",")
                              if s.strip()]

    def value(tok):
        neg = tok.startswith("-")
        body = tok[1:] if neg else tok
        if body.startswith("kNaN"):
            return NAN
        if body.startswith("kInf"):
            v = INF
        else:
            v = float.fromhex(body[:-1] if body.endswith("f") else body)
        return -v if neg else v

    def same(a, b):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))

    for name, _, _, xs, soft_dd, log_dd in results:
        c = ident(name)
        want = {"_x": xs, "_softmax_hi": [h for h, _ in soft_dd],
                "_softmax_lo": [l for _, l in soft_dd], "_log_hi": [h for h, _ in log_dd],
                "_log_lo": [l for _, l in log_dd]}
        for suf, vals in want.items():
            got = [value(t) for t in arrays.pop(c + suf)]
            assert len(got) == len(vals) and all(same(a, b) for a, b in zip(got, vals)), (name, suf)
    assert not arrays


def generate(fmt):
    results = []
    for name, desc, t, xs in build_cases(fmt):
        soft, logs = reference(xs, t)
        soft_dd = [double_double(v) for v in soft]
        log_dd = [double_double(v) for v in logs]
        self_check(fmt, name, xs, t, soft, logs, soft_dd, log_dd)
        results.append((name, desc, t, xs, soft_dd, log_dd))
    text = render(fmt, results)
    parse_back(text, fmt, results)
    return text, results


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--outdir", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--no-write", action="store_true", help="compute and check only")
    args = ap.parse_args()
    for fmt in (F32, F64):
        t0 = time.time()
        text, results = generate(fmt)
        path = os.path.join(args.outdir, "softmax_%s.ipp" % fmt.name)
        if not args.no_write:
            with open(path, "w", encoding="ascii", newline="\n") as f:
                f.write(text)
        print("%s: %d cases, %d elements, %d bytes, %.1f s (self-check passed)"
              % (path, len(results), sum(len(r[3]) for r in results), len(text),
                 time.time() - t0))


if __name__ == "__main__":
    main()
