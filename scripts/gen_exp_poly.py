#!/usr/bin/env python3
"""Coefficients of the exp kernel in include/softmaxlab/detail/exp.hpp.

exp(r) on |r| <= ln2/2 (plus a little slack for the rounded reduction) is written
    exp(r) = 1 + r + r^2 * q(r)
and q(r) = (exp(r) - 1 - r) / r^2 is fitted with a Chebyshev expansion (mpmath.chebyfit, near
minimax). Keeping 1 + r exact puts all of the fit error into the r^2 term, where it is scaled down.
Coefficients are rounded to the target type and the rounded polynomial's max relative error is
measured on a dense grid at high precision. Run: /usr/bin/python3 scripts/gen_exp_poly.py
"""
import struct
import mpmath as mp

mp.mp.dps = 60
HALF_LN2 = mp.log(2) / 2
LO, HI = -HALF_LN2 * mp.mpf("1.02"), HALF_LN2 * mp.mpf("1.02")


def to_f32(v):
    return struct.unpack("<f", struct.pack("<f", float(v)))[0]


def q(r):
    if r == 0:
        return mp.mpf(1) / 2
    return (mp.exp(r) - 1 - r) / r**2


def fit(degree, rounder):
    poly, _ = mp.chebyfit(q, [LO, HI], degree + 1, error=True)
    coeffs = [rounder(c) for c in poly]  # highest degree first
    worst = mp.mpf(0)
    for k in range(4001):
        r = LO + (HI - LO) * k / 4000
        approx = 1 + r + r**2 * mp.polyval([mp.mpf(c) for c in coeffs], r)
        worst = max(worst, abs(approx / mp.exp(r) - 1))
    return coeffs, worst


for name, degree, rounder, eps in (("float", 4, to_f32, 2.0**-23), ("double", 9, float, 2.0**-52)):
    coeffs, worst = fit(degree, rounder)
    print(f"{name}: q of degree {degree} (exp polynomial of degree {degree + 2}),"
          f" max rel error of the rounded polynomial {float(worst):.3e} = {float(worst / eps):.4f} eps")
    for c in reversed(coeffs):
        print("  " + float(c).hex())
