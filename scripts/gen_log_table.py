#!/usr/bin/env python3
"""Print the 32-entry tables of detail/log.hpp's AVX-512 float log (plog_table16) with mpmath.

x = 2^k z, z in [0.734375, 1.46875), cut into 32 intervals by the top 5 bits of (bits(z) -
bits(0.734375)). invc is 1 / (the interval's centre) rounded to float, except for the two intervals
that touch 1, which use invc = 1 (no cancellation near log 1 = 0); logc = -log(invc) rounded to
float, from invc itself, so that log z = logc + log1p(z invc - 1) holds exactly before rounding.

    python3 scripts/gen_log_table.py
"""
import struct

import mpmath

mpmath.mp.prec = 200
OFFSET = 0x3F3C0000  # bits of 0.734375


def f32(v):
    return struct.unpack("<f", struct.pack("<f", float(v)))[0]


def from_bits(b):
    return struct.unpack("<f", struct.pack("<I", b))[0]


def hex_float(v):
    """C hex float literal with the mantissa's trailing zeros dropped (float has 6 hex digits)."""
    if v == 0:
        return "0.0f"
    mantissa, exponent = float(v).hex().split("p")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return "%sp%sf" % (mantissa, exponent)


def main():
    inv_c, log_c = [], []
    for i in range(32):
        lo = from_bits(OFFSET + (i << 18))
        hi = from_bits(OFFSET + ((i + 1) << 18)) if i < 31 else 2 * from_bits(OFFSET)
        ic = 1.0 if i in (16, 17) else f32(1 / ((mpmath.mpf(lo) + mpmath.mpf(hi)) / 2))
        inv_c.append(ic)
        log_c.append(f32(-mpmath.log(mpmath.mpf(ic))))
    for name, values in (("kInvC", inv_c), ("kLogC", log_c)):
        print("%s = {%s};" % (name, ", ".join(hex_float(v) for v in values)))


if __name__ == "__main__":
    main()
