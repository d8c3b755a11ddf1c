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
}

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fuzz", "corpus")
for target, params_list in TARGETS.items():
    folder = os.path.join(root, target)
    os.makedirs(folder, exist_ok=True)
    for k, data in enumerate(seeds_for(params_list)):
        with open(os.path.join(folder, f"seed-{k:02d}"), "wb") as f:
            f.write(data)
    print(target, len(os.listdir(folder)), "seeds")
