#!/usr/bin/env python3
"""Writes the seed corpus of the libFuzzer targets (tests/fuzz/corpus/<target>/seed-*).

The byte layout follows tests/fuzz/fuzz_common.hpp: for each parameter a byte (< 64: a raw double
follows), a byte whose low bit picks double, then form, rows, cols (uint16) and the values, each a
tag byte (tag & 3 != 0: raw scalar bits follow; else an edge value chosen by tag >> 2).
Run: python3 scripts/make_fuzz_seeds.py
"""
import os
import random
import struct

EDGE = {"zero": 0, "-inf": 1, "inf": 2, "nan": 3, "max": 4, "lowest": 5, "min": 6, "denorm": 7}


def value(v, is_double):
    if isinstance(v, str):
        return bytes([EDGE[v] << 2])
    return bytes([1]) + struct.pack("<d" if is_double else "<f", v)


def seed(params, is_double, form, rows, cols, values):
    out = b""
    for p in params:
        out += bytes([255]) if p is None else bytes([0]) + struct.pack("<d", p)
    out += bytes([1 if is_double else 0, form, rows]) + struct.pack("<H", cols)
    for v in values:
        out += value(v, is_double)
    return out


def seeds_for(params_list):
    rng = random.Random(20261126)
    cases = []
    for params in params_list:
        for is_double in (False, True):
            for form in range(5):
                rows, cols = 2, 9 + form * 130
                vals = [rng.gauss(0, 5) for _ in range(rows * cols)]
                cases.append(seed(params, is_double, form, rows, cols, vals))
    cases.append(seed(params_list[0], False, 0, 1, 6, [1.0, "-inf", 2.0, "inf", "inf", 0.5]))
    cases.append(seed(params_list[0], False, 1, 2, 4, ["-inf"] * 4 + [1.0, "nan", 3.0, "-inf"]))
    cases.append(seed(params_list[0], True, 4, 3, 3, ["max", "lowest", "min", "denorm", "zero",
                                                      -1e300, 1e300, "max", 0.0]))
    cases.append(seed(params_list[0], False, 3, 1, 17, [88.0 - i * 10 for i in range(17)]))
    return cases


TARGETS = {
    "fuzz_softmax": [[None], [0.05], [1000.0], [-1.0]],
    "fuzz_log_softmax": [[None], [0.3], [2.0 ** 99], [0.0]],
    "fuzz_single_pass": [[None], [0.05], [7.0], [float("nan")]],
}
# PowerSoftmax and PolynomialSoftmax read their own header bytes first (see their targets); the
# seeds put a few valid configurations in front of the same data.
HEADERS = {
    "fuzz_power": [bytes([0x00, 255]), bytes([0x04, 0, *struct.pack("<d", 1e-3)]),
                   bytes([0x23, 255]), bytes([0x09, 255])],
    # kind byte (0 Sparsemax, 1 Entmax15, 2 Entmax(alpha) then its parameter)
    "fuzz_entmax": [bytes([0]), bytes([1]), bytes([2, 255]), bytes([5, 0, *struct.pack("<d", 1.9)])],
    # option flags (1 scale, 2 softcap, 4 slope, 8 sink), then each chosen parameter
    "fuzz_attention_softmax": [bytes([0]), bytes([1, 255]), bytes([0x0b, 255, 255, 255]),
                               bytes([0x0f, 0, *struct.pack("<d", 2.0), 255, 255, 255])],
    "fuzz_polynomial": [bytes([0x20, 4, 5, 255]), bytes([0x00, 6, 5, 255]),
                        bytes([0x01, 0, 8, 255]), bytes([0x04, 4, 5, 255])],
    # tau byte, flags (1 hard, 2 Philox, 4 double), seed; then form, rows, cols, values
    "fuzz_gumbel": [bytes([255, 0x02]) + struct.pack("<Q", 7), bytes([255, 0x03]) + struct.pack("<Q", 8),
                    bytes([0]) + struct.pack("<d", 0.1) + bytes([0x06]) + struct.pack("<Q", 9),
                    bytes([255, 0x00]) + struct.pack("<Q", 10)],
}

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fuzz", "corpus")
for target, params_list in TARGETS.items():
    folder = os.path.join(root, target)
    os.makedirs(folder, exist_ok=True)
    for k, data in enumerate(seeds_for(params_list)):
        with open(os.path.join(folder, f"seed-{k:02d}"), "wb") as f:
            f.write(data)
    print(target, len(os.listdir(folder)), "seeds")

for target, headers in HEADERS.items():
    folder = os.path.join(root, target)
    os.makedirs(folder, exist_ok=True)
    k = 0
    for header in headers:
        for data in seeds_for([[]])[::3]:
            if target == "fuzz_gumbel":
                data = data[1:]  # no float/double byte: the flags choose the type
            with open(os.path.join(folder, f"seed-{k:02d}"), "wb") as f:
                f.write(header + data)
            k += 1
    print(target, k, "seeds")


# ---- Targets with their own byte layouts (see each tests/fuzz/fuzz_<target>.cpp) ----------------
class B:
    """Little-endian byte builder mirroring softmaxlab_fuzz::Bytes."""

    def __init__(self, is_double=False):
        self.out = b""
        self.is_double = is_double

    def u8(self, v):
        self.out += bytes([v & 0xFF])
        return self

    def i8(self, v):
        self.out += struct.pack("<b", v)
        return self

    def u16(self, v):
        self.out += struct.pack("<H", v)
        return self

    def u64(self, v):
        self.out += struct.pack("<Q", v)
        return self

    def param(self, v):  # Bytes::parameter: None = the target's usual value
        self.out += bytes([255]) if v is None else bytes([0]) + struct.pack("<d", v)
        return self

    def scalar(self, v):  # Bytes::scalar: a tag, then raw bits (or an edge value)
        self.out += value(v, self.is_double)
        return self

    def scalars(self, vs):
        for v in vs:
            self.scalar(v)
        return self


def rows_of(b, rows, how, rng):
    """fill_rows of fuzz_normalized(_loss): a `how` byte per row (0 zero, 1 int8, 2 scalars)."""
    for h, d in rows:
        b.u8(h)
        if h % 4 == 1:
            for _ in range(d):
                b.i8(rng.randint(-100, 100))
        elif h % 4 >= 2:
            for _ in range(d):
                b.scalar(how.pop(0) if how else rng.gauss(0, 3))


def normalized_seeds():
    rng = random.Random(7)
    cases = []
    # (scale, kind byte, m, double, n, c, d, E row kinds, W row kinds, edge values, options)
    configs = [
        (None, 0x00, None, False, 3, 4, 5, [1, 1, 2], [1, 2, 2, 1], [], 0x00),
        (30.0, 0x01, 0.35, True, 4, 3, 8, [0, 2, 1, 2], [2, 2, 1], ["nan", "inf"], 0x20),
        (64.0, 0x02, 0.5, False, 2, 5, 3, [2, 2], [2, 0, 1, 1, 2], ["max", "denorm", "min"], 0x20),
        (10.0, 0x43, None, True, 3, 4, 0, [1, 1, 1], [1, 1, 1, 1], [], 0x20),  # D = 0
        (float("nan"), 0x00, None, False, 1, 1, 1, [1], [1], [], 0),  # invalid scale
        (None, 0x01, 1.5, False, 1, 1, 1, [1], [1], [], 0),  # invalid CosFace margin
        (None, 0x00, None, True, 3, 6, 40, [2, 2, 2], [2] * 6, [], 0x80),  # label count off
        (1e300, 0x00, None, False, 2, 2, 4, [2, 2], [2, 2], [], 0x40),  # scale past FLT_MAX
    ]
    for scale, kind, m, dbl, n, c, d, erows, wrows, edges, options in configs:
        b = B(dbl).param(scale).u8(kind).param(m).u8(1 if dbl else 0).u8(n).u8(c).u8(d)
        edges = list(edges)
        rows_of(b, [(h, d) for h in erows], edges, rng)
        rows_of(b, [(h, d) for h in wrows], edges, rng)
        b.u8(options)
        if options & 0x80:
            b.u8(2)
        for i in range(n):
            b.u8(i % max(c, 1) if i else 0x85)  # one out-of-range label in the first row
        for _ in range(n * c):
            b.scalar(rng.gauss(0, 1)) if options & 0x40 else b.i8(rng.randint(-16, 16))
        cases.append(b.out)
    # in-range labels only
    b = B(False).param(None).u8(0x12).param(None).u8(0).u8(2).u8(3).u8(4)
    rows_of(b, [(1, 4), (1, 4)], [], rng)
    rows_of(b, [(1, 4), (1, 4), (1, 4)], [], rng)
    b.u8(0x20).u8(1).u8(2)
    cases.append(b.out)
    return cases


def online_seeds():
    rng = random.Random(8)
    cases = []
    # (T, double, values (None: n int8 values), n, chunk cuts, per-chunk how)
    configs = [
        (None, False, None, 2500, [400, 400, 1800, 2100], [0, 1, 2, 3, 7]),
        (0.05, True, None, 1500, [700], [3, 2]),
        (None, False, [1.0, "-inf", 2.0, "inf", "inf", 0.5, 3.0, "-inf"], 8, [3, 5], [0, 1, 2]),
        (7.0, True, ["-inf"] * 6, 6, [2, 2, 4], [0, 3, 1, 2]),
        (None, False, [1.0, 2.0, "nan", 3.0, "max", "lowest"], 6, [2], [2, 0]),
        (None, True, [], 0, [0, 0], [0, 0, 0]),
        (2.0 ** 99, False, None, 300, [100, 200], [1, 1, 1]),
        (float("inf"), False, None, 3, [], [0]),  # invalid temperature
    ]
    for t, dbl, vals, n, cuts, hows in configs:
        b = B(dbl).param(t).u8(1 if dbl else 0).u16(n)
        if vals is None:
            b.u8(0)
            for _ in range(n):
                b.i8(rng.randint(-128, 127))
        else:
            b.u8(1).scalars(vals)
        b.u8(len(cuts))  # chunks = 1 + this
        for c in cuts:
            b.u16(c)
        for h in hows:
            b.u8(h)
        for k in range(len(cuts), 0, -1):
            b.u8(rng.randint(0, 255)).u8(rng.randint(0, 255))
        cases.append(b.out)
    return cases


def fusion_seeds(params):
    rng = random.Random(9)
    cases = []
    for p in params:
        for form in range(5):
            for dbl in [form % 2 == 1]:
                rows, cols = 2, 5 + 40 * form
                b = B(dbl).param(p).u8(1 if dbl else 0).u8(form).u8(rows).u16(cols)
                b.scalars([rng.gauss(0, 4) for _ in range(2 * rows * cols)])
                for _ in range(rows * cols):
                    b.i8(rng.randint(-64, 64))
                cases.append(b.out)
    special = [
        ([1.0, "-inf", "inf", 0.0, "nan", 2.0], [0.5, 1.0, "-inf", "inf", 0.0, 1.0]),
        (["inf", 0.0, 1.0], ["-inf", 0.0, "inf"]),  # +inf against a masked entry
        (["-inf", "-inf", "-inf"], [1.0, 2.0, 3.0]),
        (["max", "lowest", "denorm"], ["min", "max", "lowest"]),
    ]
    for tgt, src in special:
        b = B(False).param(params[0]).u8(0).u8(0).u8(1).u16(len(tgt)).scalars(tgt).scalars(src)
        for _ in tgt:
            b.i8(8)
        cases.append(b.out)
    return cases


def cross_entropy_seeds():
    rng = random.Random(10)
    cases = []
    # (reduction byte, smoothing, ignore_index, double, options, rows, classes, logits, labels)
    configs = [
        (0, None, None, False, 0, 3, 10, None, [1, 9, 0]),
        (1, 0.1, None, True, 0, 4, 300, None, [0, 299, 150, 7]),
        (0x80, None, 5, False, 0, 3, 6, None, [5, 0xC0, 2]),  # ignore_index 5 (and the raw form)
        (0, 0.2, None, False, 1, 2, 5, None, None),  # target distributions
        (0, None, None, False, 0, 2, 4, [1.0, "-inf", 2.0, "-inf", "-inf", "-inf", "inf", 0.0],
         [1, 2]),
        (1, 0.05, None, True, 0, 2, 3, ["nan", 1.0, 2.0, 0.0, "-inf", 1.0], [0, 2]),
        (0, None, None, False, 0, 2, 3, None, [0, 0x90]),  # a label out of range
        (0, None, None, False, 2, 3, 3, None, [0, 1, 2, 0]),  # label count off
        (0x40 | 7, None, None, False, 0, 1, 1, None, [0]),  # invalid reduction
        (0, 1.0, None, False, 0, 1, 1, None, [0]),  # invalid smoothing
        (0, None, None, True, 0, 3, 0, None, [0x80 | 0x40, 0xC0, 0xC0]),  # N x 0, all ignored
    ]
    for red, sm, ign, dbl, options, rows, classes, logits, labels in configs:
        b = B(dbl).u8(red).param(sm)
        if red & 0x80:
            b.i8(ign)
        b.u8(1 if dbl else 0).u8(options).u8(rows).u16(classes)
        vals = logits if logits is not None else [rng.gauss(0, 3) for _ in range(rows * classes)]
        # fill() is column-major: the listed logits are given row by row, so transpose them
        if logits is not None:
            vals = [logits[r * classes + c] for c in range(classes) for r in range(rows)]
        b.scalars(vals)
        if options & 2:
            b.u8(0)  # one label more than rows
        if options & 1:
            for _ in range(rows * classes):
                b.u8(rng.randint(0, 255))
        else:
            for l in labels:
                b.u8(l)
        cases.append(b.out)
    return cases


def l2_svm_seeds():
    rng = random.Random(11)
    cases = []
    # (C, double, options, n, k, d, labels)
    configs = [
        (None, False, 0, 4, 5, 6, [0, 4, 2, 1]),
        (0.5, True, 0, 3, 10, 20, [9, 0, 5]),
        (None, False, 1, 3, 3, 2, [0, 1, 2]),  # raw bits and edge values
        (None, False, 4, 2, 3, 4, [0, 1]),  # W's rows do not match X's columns
        (None, True, 8, 2, 3, 4, [0, 1]),  # b of the wrong length
        (None, False, 0, 2, 3, 2, [0, 0x83]),  # a label out of range
        (float("-inf"), False, 0, 1, 1, 1, [0]),  # invalid C
        (1e300, False, 0, 2, 2, 2, [0, 1]),  # the gradient overflows float
    ]
    for c, dbl, options, n, k, d, labels in configs:
        b = B(dbl).param(c).u8(1 if dbl else 0).u8(options).u8(n).u8(k).u8(d)
        for l in labels:
            b.u8(l)
        d2 = d + 1 if options & 4 else d
        kb = k + 1 if options & 8 else k
        for _ in range(n * k + n * d + d2 * k + kb):
            if options & 1:
                b.scalar(rng.choice(["nan", "inf", "-inf", "max", 0.0, rng.gauss(0, 2)]))
            else:
                b.i8(rng.randint(-40, 40))
        cases.append(b.out)
    return cases


def normalized_loss_seeds():
    rng = random.Random(12)
    cases = []
    # (scale, kind, m, smoothing, double, n, c, d, E rows, W rows, labels)
    configs = [
        (None, 0x00, None, None, False, 3, 4, 5, [1, 1, 1], [1, 1, 1, 1], [0, 3, 1]),
        (30.0, 0x01, 0.35, 0.1, True, 2, 3, 8, [1, 0], [1, 1, 1], [2, 0]),
        (64.0, 0x06, 0.5, None, False, 3, 5, 4, [1, 2, 1], [1, 1, 2, 1, 1], [4, 4, 0]),
        (10.0, 0x43, None, None, True, 2, 3, 0, [1, 1], [1, 1, 1], [0, 2]),  # D = 0
        (None, 0x00, None, None, False, 2, 2, 2, [1, 1], [1, 1], [0, 0x88]),  # label out of range
        (None, 0x00, None, 1.0, False, 1, 1, 1, [1], [1], [0]),  # invalid smoothing
    ]
    for scale, kind, m, sm, dbl, n, c, d, er, wr, labels in configs:
        b = B(dbl).param(scale).u8(kind).param(m).param(sm).u8(1 if dbl else 0).u8(n).u8(c).u8(d)
        edges = ["nan", "max", "denorm"]
        rows_of(b, [(h, d) for h in er], edges, rng)
        rows_of(b, [(h, d) for h in wr], edges, rng)
        b.u8(2)  # options: also a wrong dE shape
        for l in labels:
            b.u8(l)
        cases.append(b.out)
    return cases


def sparse_cbm_seeds():
    rng = random.Random(13)
    cases = []
    configs = [
        (None, False, 3, 10, None), (0.5, True, 2, 500, None), (3.0, False, 4, 40, None),
        (None, False, 2, 3, [1.0, "-inf", 2.0, 0.0, 1.0, 1.0]),
        (None, True, 1, 4, ["nan", 1.0, 2.0, 3.0]),
        (None, False, 1, 3, ["inf", "max", "lowest"]),
        (2.0 ** -100, False, 2, 3, None), (2.0 ** 100, True, 2, 3, None),
        (None, False, 3, 0, []),  # N x 0
        (0.0, False, 1, 1, [0.0]),  # invalid tau
    ]
    for k, (tau, dbl, n, cols, vals) in enumerate(configs):
        b = B(dbl).param(tau).u64(1000 + k).u8(1 if dbl else 0).u8(n).u16(cols)
        if vals is None:
            vals = [rng.gauss(0, 3) for _ in range(n * cols)]
        else:
            vals = [vals[r * cols + c] for c in range(cols) for r in range(n)]
        b.scalars(vals)
        cases.append(b.out)
    return cases


OWN_LAYOUTS = {
    "fuzz_normalized": normalized_seeds,
    "fuzz_online_normalizer": online_seeds,
    "fuzz_hard_fusion": lambda: fusion_seeds([None, 0.0, 1.0, 0.5]),
    "fuzz_soft_fusion": lambda: fusion_seeds([None, 0.1, 10.0, 2.0 ** -100]),
    "fuzz_cross_entropy": cross_entropy_seeds,
    "fuzz_l2_svm": l2_svm_seeds,
    "fuzz_normalized_loss": normalized_loss_seeds,
    "fuzz_sparse_cbm_gumbel_loss": sparse_cbm_seeds,
}
for target, make in OWN_LAYOUTS.items():
    folder = os.path.join(root, target)
    os.makedirs(folder, exist_ok=True)
    cases = make()
    for k, data in enumerate(cases):
        with open(os.path.join(folder, f"seed-{k:02d}"), "wb") as f:
            f.write(data)
    print(target, len(cases), "seeds")
