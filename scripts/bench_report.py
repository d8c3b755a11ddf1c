#!/usr/bin/env python3
"""Turn softmaxlab_bench's JSON into a markdown report and a throughput chart.

    python3 scripts/bench_report.py build/bench/bench.json --out-dir build/bench/report

Reads the Google Benchmark JSON of bench/ (names softmax/<impl>/<float|double>/<cache>/<n>, see
bench/common.hpp) and writes, in --out-dir:
  bench.md   throughput per case (G elements/s), ratios of every variant against every baseline
             per length, and the speed targets (docs/benchmarks.md) with PASS/MISS;
  bench.png  throughput against row length, one line per variant and peer, one panel per
             (type, cache) case (needs matplotlib; without it only bench.md is written);
  bench_<family>.png  one chart per case family (incache: in-cache lengths, batch: short-row
             batches N x n, outcache: rows streamed from memory), float.
Baselines: scalar_exp, eigen_expr (per row), eigen_rowwise (one rowwise expression over a batch),
onednn, xnnpack and aten (when built), stream (the memory bound).
With repetitions (--benchmark_repetitions), the median aggregate is used. Standard library only,
apart from matplotlib for the chart (Debian: python3-matplotlib, for /usr/bin/python3).
"""

import argparse
import json
import math
import os
import re
import sys

BASELINES = ["scalar_exp", "eigen_expr", "eigen_rowwise", "onednn", "xnnpack", "aten", "stream"]
CACHES = ["incache", "batch", "outcache", "threads"]
CHART_CACHES = ["incache", "batch", "outcache"]
CACHE_TITLES = {"incache": "in cache (L2), one row per distribution",
                "batch": "short-row batches N x n (256 KiB, in cache), rowwise",
                "outcache": "out of cache (rows streamed from memory)",
                "threads": "4096 x 1000 batch, rowwise, OpenMP threads"}
TYPES = ["float", "double"]

# Speed targets (../shared/DESIGN.md "Performance", issue 22): every peer at its own best ISA, ours
# built -march=native. (description, variant, baseline, type, cache, lengths, minimum ratio)
_IN_CACHE = [1000, 4096, 32000]
_PEERS = [("eigen_rowwise", "the Eigen rowwise expression"),
          ("eigen_expr", "the Eigen expression per row"),
          ("onednn", "oneDNN on the whole batch"),
          ("xnnpack", "XNNPACK on the whole batch"),
          ("aten", "ATen on the whole batch")]
TARGETS = [
    ("Softmax, in-cache rows, vs the plain Eigen expression (same flags)",
     "softmax", "eigen_expr", "float", "incache", _IN_CACHE, 1.5),
    ("Softmax, in-cache rows, vs oneDNN softmax_accurate",
     "softmax", "onednn", "float", "incache", _IN_CACHE, 2.0),
    ("Softmax, in-cache rows, vs XNNPACK softmax_nc_f32",
     "softmax", "xnnpack", "float", "incache", _IN_CACHE, 2.5),
    ("Softmax, in-cache rows, vs PyTorch ATen softmax",
     "softmax", "aten", "float", "incache", _IN_CACHE, 2.5),
] + [
    ("Softmax rowwise, short-row batches, vs %s" % name, "softmax", base, "float", "batch",
     lengths, need)
    for base, name in _PEERS
    for lengths, need in [([16], 1.2), ([64, 128, 256, 512], 1.5)]
] + [
    ("SinglePassSoftmax, one row of 2^24, vs the two-reads-one-write memory bound",
     "single_pass", "stream", "float", "outcache", [1 << 24], 0.85),
    ("PowerSoftmax(4), in-cache rows, vs Softmax",
     "power4", "softmax", "float", "incache", _IN_CACHE, 2.0),
    ("PolynomialSoftmax, in-cache rows, vs Softmax",
     "polynomial", "softmax", "float", "incache", _IN_CACHE, 1.5),
    ("GumbelSoftmax (noise included), in-cache rows, vs Softmax",
     "gumbel", "softmax", "float", "incache", _IN_CACHE, 0.35),
    ("Threads: Softmax rowwise, 4096 x 1000, 2 threads vs 1",
     "softmax_t2", "softmax_t1", "float", "threads", [1000], 1.8),
    ("Threads: SinglePassSoftmax, one row of 2^24, 2 threads vs 1",
     "single_pass_t2", "single_pass_t1", "float", "threads", [1 << 24], 1.5),
    ("Sparsemax, in-cache rows of 1,000 to 32,000, vs Softmax",
     "sparsemax", "softmax", "float", "incache", _IN_CACHE, 0.5),
    ("Entmax15, in-cache rows of 1,000 to 32,000, vs Softmax",
     "entmax15", "softmax", "float", "incache", _IN_CACHE, 0.3),
]

# Targets between two named benchmarks (issue 14, sampling): (description, variant name, baseline
# name, minimum ratio of items/s). Names as bench/bench_sampling.cpp registers them.
NAMED_TARGETS = [
    ("Sampler top-p 0.95 vs softmax + std::sort baseline, V = 128,256",
     "sampling/Sampler/p0.95/128256", "sampling/sort-baseline/p0.95/128256", 5.0),
    ("Sampler T 0.8, top-k 40, top-p 0.95, min-p 0.05 vs the sort baseline, V = 128,256",
     "sampling/Sampler/t0.8-k40-p0.95-minp0.05/128256",
     "sampling/sort-baseline/t0.8-k40-p0.95-minp0.05/128256", 3.0),
] + [
    ("Sampler T 0.8 + top-k 40 within 1.5x of one Softmax pass, V = %s" % "{:,}".format(v),
     "sampling/Sampler/t0.8-k40/%d" % v, "sampling/Softmax/pass/%d" % v, 1 / 1.5)
    for v in (32000, 128256, 256000)
]


def median_entries(path):
    """(context, [(name, entry)]): every benchmark of the JSON, or only the median aggregates
    (named by their run name) when the run was repeated."""
    with open(path) as f:
        data = json.load(f)
    has_aggregates = any(b.get("run_type") == "aggregate" for b in data["benchmarks"])
    entries = []
    for b in data["benchmarks"]:
        if not has_aggregates:
            entries.append((b["name"], b))
        elif b.get("run_type") == "aggregate" and b.get("aggregate_name") == "median":
            entries.append((b["run_name"], b))
    return data.get("context", {}), entries


def load_named(path):
    """Returns {benchmark name: items_per_second} (median aggregates when repeated)."""
    return {name: float(b["items_per_second"]) for name, b in median_entries(path)[1]
            if "items_per_second" in b}

# The sampler chain (bench/bench_sampling.cpp): llama.cpp's default chain within 1.5x one Softmax
# pass over the row, exact speculative verification (k = 4) within 2x one pass per position.
CHAIN_TARGETS = [
    ("llama.cpp's default chain within 1.5x one Softmax pass, V = %s" % "{:,}".format(v),
     "sampling/Sampler/llama-default-chain/%d" % v, "sampling/Softmax/pass/%d" % v, 1 / 1.5)
    for v in (32000, 128256)
] + [
    ("Speculative verification, k = 4, within 2x one Softmax pass per position, V = %s"
     % "{:,}".format(v), "sampling/verify/k4/%d" % v, "sampling/Softmax/pass/%d" % v, 0.5)
    for v in (32000, 128256)
]

# Softmax over an axis of a [32, 16, 128, 128] float tensor (bench/bench_tensor.cpp).
_TENSOR = "tensor/%s/float/32x16x128x128/axis%d"
TENSOR_TARGETS = [
    ("Innermost axis vs rowwise on the same data", _TENSOR % ("sml_axis", 3),
     _TENSOR % ("rowwise", 3), 0.95),
] + [
    ("Axis %d vs the innermost axis's element rate" % k, _TENSOR % ("sml_axis", k),
     _TENSOR % ("sml_axis", 3), 0.7) for k in (0, 1, 2)
] + [
    ("Axis %d vs the plain Eigen::Tensor expression over it" % k, _TENSOR % ("sml_axis", k),
     _TENSOR % ("eigen_expr", k), 3.0) for k in (0, 1, 2)
]

# Issue 24 items 3 and 5 (bench/bench_sampled_softmax.cpp): sampled softmax and NCE against the
# full softmax loss (GEMM + CrossEntropyLoss + backward GEMMs), per-token speed and the loss's
# bias. Informational: the issue sets no speed target for these (its 5x is for adaptive and
# hierarchical softmax).
_OUTPUT_SAMPLED = "output_sampled/%s/float/N256/d512/V128256"
OUTPUT_SAMPLED_ROWS = [
    ("%s, S = %s, vs the full softmax loss" % (label, "{:,}".format(s)),
     _OUTPUT_SAMPLED % impl + "/S%d" % s, _OUTPUT_SAMPLED % "full")
    for impl, label in (("sampled_softmax", "SampledSoftmaxLoss"), ("nce", "NceLoss"))
    for s in (64, 1024, 8192)
]


def output_sampled_markdown(path):
    """Per-token speed ratios and loss bias of the sampled losses; empty when not measured."""
    # The full case runs a fixed iteration count, which Google Benchmark appends to its name.
    rows = {re.sub(r"/iterations:\d+$", "", n): b for n, b in median_entries(path)[1]}
    if not any(b in rows for _, _, b in OUTPUT_SAMPLED_ROWS):
        return ""
    out = ["## Sampled softmax and NCE vs the full softmax loss (issue 24; informational, no "
           "target)", "",
           "Float, N = 256 tokens, d = 512, V = 128,256, loss and all gradients. Speed: tokens per "
           "second over the full path's. Loss: the mean returned loss over the run (fresh "
           "log-uniform candidates each iteration) against the full cross-entropy of the same "
           "model; for NCE a different loss, shown for scale.", "",
           "| case | speed vs full | loss | full loss | loss - full |", "|---|---|---|---|---|"]
    for desc, name, base in OUTPUT_SAMPLED_ROWS:
        a, c = rows.get(name), rows.get(base)
        if not (a and c and "items_per_second" in a and "items_per_second" in c):
            out.append("| %s | not measured | | | |" % desc)
            continue
        out.append("| %s | %.1fx | %.4f | %.4f | %+.4f |" % (
            desc, float(a["items_per_second"]) / float(c["items_per_second"]),
            float(a.get("loss", float("nan"))), float(a.get("full_loss", float("nan"))),
            float(a.get("loss_bias", float("nan")))))
    return "\n".join(out) + "\n"


# Issue 24 (sampling from the fused head, bench/bench_linear_head_sampling.cpp): LinearHeadSampler
# at least as fast as the GEMM into N x V logits plus Sampler::sample_rowwise_philox, tokens/s.
# The 16-bit rows (H and W in half or bfloat16) against the float materialized row of their chain.
_HEAD = "head_sampling/%s/%s/%s/N16/d1024/V128256"
HEAD_SAMPLING_TARGETS = [
    ("Fused head sampling (%s%s) vs GEMM + Sampler%s, N = 16, d = 1,024, V = 128,256"
     % (label, "" if kind == "float" else ", %s H and W" % kind,
        "" if kind == "float" else " on float"),
     _HEAD % ("fused", chain, kind), _HEAD % ("materialized", chain, "float"), 1.0)
    for chain, label, kinds in (("temperature", "Gumbel-max, temperature", ("float", "half", "bf16")),
                                ("llama-default", "top-k 40, top-p, min-p", ("float",)),
                                ("top-p", "top-p 0.95 without top-k", ("float", "half", "bf16")))
    for kind in kinds
]

# Issue 24: the adaptive and hierarchical softmaxes against the full softmax loss (GEMM +
# CrossEntropyLoss; train: with the backward GEMMs) per token, bench/bench_output_layer_approx.cpp.
_APPROX = "output_approx/%s/%s/float/N%d/d512/V128256"
OUTPUT_APPROX_TARGETS = [
    ("%s %s >= 5x faster per token than the full softmax, V = 128,256" % (name, what),
     _APPROX % (impl, what, n), _APPROX % ("full", what, n), 5.0)
    for impl, name in (("adaptive", "AdaptiveLogSoftmax"), ("hierarchical", "HierarchicalSoftmax"))
    for what, n in (("loss", 256), ("train", 64))
]

# Issue 13 (half precision): bench/bench_half.cpp's half/<impl>/<float|half|bf16>/<cache>/<n>;
# element rates, 16-bit in and out against float in and out on the same lengths.
HALF_TARGETS = [
    ("%s Softmax in cache vs float, n = %s" % (t, "{:,}".format(n)),
     "half/softmax/%s/incache/%d" % (t, n), "half/softmax/float/incache/%d" % n, 0.9)
    for t in ("half", "bf16") for n in (64, 1000, 4096, 32000)
] + [
    ("%s Softmax in cache vs the naive cast route, n = %s" % (t, "{:,}".format(n)),
     "half/softmax/%s/incache/%d" % (t, n), "half/naive/%s/incache/%d" % (t, n), 2.0)
    for t in ("half", "bf16") for n in (64, 1000, 4096, 32000)
] + [
    ("%s %s, one row of 2^24 out of cache, vs float" % (t, f),
     "half/%s/%s/outcache/16777216" % (i, t), "half/%s/float/outcache/16777216" % i, 1.5)
    for t in ("half", "bf16") for i, f in (("softmax", "Softmax"),
                                           ("single_pass", "SinglePassSoftmax"))
]

# Issue 24, the fused output-layer loss (bench/bench_linear_cross_entropy.cpp): forward + backward
# (loss, dH, dW) against the materialized path (GEMM, CrossEntropyLoss, backward GEMMs), N = 4096,
# d = 1024; items are logits per second, so a ratio is the inverse time ratio. 16-bit H and W
# (fused, float accumulation) against the float materialized path at V = 32,000. Two-thread cases
# are timed in wall time (Google Benchmark appends /real_time to their names).
_LCE = "lce/%s/%s/N4096/d1024/V%d%s"
LCE_TARGETS = [
    ("LinearCrossEntropy fused vs materialized, float, V = %s, %d thread%s"
     % ("{:,}".format(v), t, "" if t == 1 else "s"),
     _LCE % ("fused", "float", v, "" if t == 1 else "/t%d/real_time" % t),
     _LCE % ("materialized", "float", v, "" if t == 1 else "/t%d/real_time" % t), 1.0)
    for v in (32000, 128256) for t in (1, 2)
] + [
    ("LinearCrossEntropy fused, %s H and W, vs materialized float, V = 32,000, %d thread%s"
     % (name, t, "" if t == 1 else "s"),
     _LCE % ("fused", ty, 32000, "" if t == 1 else "/t%d/real_time" % t),
     _LCE % ("materialized", "float", 32000, "" if t == 1 else "/t%d/real_time" % t), 1.0)
    for ty, name in (("half", "half"), ("bf16", "bfloat16")) for t in (1, 2)
]


def lce_memory_markdown(path, limit=0.01):
    """Issue 24's memory target: each fused LinearCrossEntropy case's peak resident-set rise (and
    its workspace) against the N x V float logits, PASS when the rise is <= 1% of them; empty when
    not measured."""
    rows = []
    for name, b in median_entries(path)[1]:
        if not name.startswith("lce/fused/") or "logits_bytes" not in b:
            continue
        logits = float(b["logits_bytes"])
        rss = float(b.get("peak_rss_bytes", -1))
        ws = float(b.get("workspace_bytes", 0))
        if logits <= 0:
            continue
        if rss < 0:
            rows.append("| %s | not measured | %.2f%% | <= %.0f%% | |"
                        % (name, 100 * ws / logits, 100 * limit))
            continue
        # A rise below the workspace the call allocates means the peak was not reset (the
        # previous case's peak was higher): judged by the workspace then.
        note = " (below the workspace: peak not reset)" if rss < ws else ""
        used = max(rss, ws)
        rows.append("| %s | %.1f MB (%.2f%%)%s | %.2f%% | <= %.0f%% | %s |"
                    % (name, rss / 1e6, 100 * rss / logits, note, 100 * ws / logits, 100 * limit,
                       "PASS" if used <= limit * logits else "MISS"))
    if not rows:
        return ""
    return "\n".join(["## Targets (issue 24: fused linear cross-entropy, extra memory)", "",
                      "Peak resident-set rise over the first call (workspace and Eigen's GEMM "
                      "packing) against the N x V float logits.", "",
                      "| case | peak RSS rise | workspace | required | |",
                      "|---|---|---|---|---|"] + rows) + "\n"


# MultiHeadAttention (issue 23, bench/bench_multi_head_attention.cpp): Hq 32, Hkv 8, d 128, float.
# The ratio is the variant's speed over the baseline's (load_speeds): time ratios for the prefill
# and window rows, bytes-per-second ratios for decoding against the read bandwidth measured in the
# same run over a buffer the size of the half cache.
_MHA = "/hq32_hkv8_d128"
MHA_TARGETS = [
    ("Prefill GQA %s, %d thread%s, vs a loop of per-head Attention"
     % ("{:,}".format(n), t, "s" if t > 1 else ""),
     "mha_prefill/mha/float/%dx%d%s%s" % (n, n, _MHA, sfx),
     "mha_prefill/head_loop/float/%dx%d%s%s" % (n, n, _MHA, sfx), 1.2)
    for t, sfx in ((1, ""), (2, "/t2")) for n in (512, 2048, 8192)
] + [
    ("Prefill GQA 8,192, %d thread%s, vs the materialized form (Eigen GEMMs, our Softmax)"
     % (t, "s" if t > 1 else ""),
     "mha_prefill/mha/float/8192x8192%s%s" % (_MHA, sfx),
     "mha_prefill/materialized/float/8192x8192%s%s" % (_MHA, sfx), 2.0)
    for t, sfx in ((1, ""), (2, "/t2"))
] + [
    ("Window 1,024 vs full causal, %s queries of 8,192 keys (%.2fx the visible keys)"
     % ("all 8,192" if lq == 8192 else "the last 1,024", keys),
     "mha_window/window1024/float/%dx8192%s" % (lq, _MHA),
     "mha_window/causal/float/%dx8192%s" % (lq, _MHA), need)
    for lq, keys, need in ((8192, 4.26, 3.4), (1024, 7.5, 6.0))
] + [
    ("Decoding from a half cache, Lk = %s, %d thread%s: K and V bytes/s vs the read bandwidth"
     % ("{:,}".format(lk), t, "s" if t > 1 else ""),
     "mha_decode/half/float/1x%d%s%s" % (lk, _MHA, sfx),
     "mha_decode/read_bandwidth/%d%s" % (2 * lk * 8 * 128 * 2, sfx), 0.7)
    for t, sfx in ((1, ""), (2, "/t2")) for lk in (4096, 32768, 131072)
]


def load_speeds(path):
    """{benchmark name: speed}: bytes_per_second when the case counts bytes, else 1 / time
    (real time for the cases that run on several threads, which use it; CPU time otherwise)."""
    speeds = {}
    for name, b in median_entries(path)[1]:
        parts = name.split("/")
        real = "real_time" in parts
        # Google Benchmark appends /iterations:N (fixed counts) and /real_time to the name.
        name = "/".join(p for p in parts if p != "real_time" and not p.startswith("iterations:"))
        if "bytes_per_second" in b:
            speeds[name] = float(b["bytes_per_second"])
            continue
        t = float(b.get("real_time" if real else "cpu_time", 0))
        if t > 0:
            speeds[name] = 1.0 / t
    return speeds


def named_targets_markdown(named, targets=None, title="Targets (issue 14: sampling)"):
    """A table of named-benchmark targets with PASS/MISS; empty when none was measured."""
    targets = NAMED_TARGETS if targets is None else targets
    if not any(v in named or b in named for _, v, b, _ in targets):
        return ""
    out = ["## " + title, "",
           "| target | measured ratio | required | |", "|---|---|---|---|"]
    for desc, v, b, need in targets:
        a, c = named.get(v), named.get(b)
        if not (a and c):
            out.append("| %s | not measured | %.2f | |" % (desc, need))
            continue
        out.append("| %s | %.2f | %.2f | %s |" % (desc, a / c, need,
                                                 "PASS" if a / c >= need else "MISS"))
    return "\n".join(out) + "\n"


# bench/bench_kernels.cpp: kernels/<pass>/float/<l1|memory>/<n>, each with the counters cpe
# (cycles per element at the clock measured in the same process), ghz and bytes_per_element.
KERNEL_PASSES = ["max", "exp_store_sum", "scale", "exp_scale", "update", "softmax", "single_pass"]


def kernels_markdown(path):
    """The row passes in cycles per element, in L1 and from memory; empty when not measured."""
    cells, ghz, peak, ops = {}, None, None, None
    for name, b in median_entries(path)[1]:
        parts = name.split("/")
        if len(parts) != 5 or parts[0] != "kernels":
            continue
        if parts[1] == "fma_peak" and "fma_per_cycle" in b:
            peak = (float(b["fma_per_cycle"]), int(float(b.get("lanes", 0))))
            continue
        if "cpe" not in b:
            continue
        cells[(parts[1], parts[3])] = (float(b["cpe"]), float(b.get("bytes_per_element", 0)))
        ghz = float(b.get("ghz", 0)) or ghz
        if parts[1] == "exp_store_sum" and float(b.get("vector_ops_per_packet", 0)) > 0:
            ops = float(b["vector_ops_per_packet"])
    if not cells:
        return ""
    out = ["## Row passes in cycles per element (bench/bench_kernels.cpp)", "",
           "Float, one row of 2,048 in L1 and one row of 2^24 from memory; cycles at the core "
           "clock measured in the same run (%.2f GHz, a chain of dependent additions)." % (ghz or 0)]
    bound = None
    if peak and ops and peak[0] > 0 and peak[1] > 0:
        bound = ops / (peak[0] * peak[1])
        out.append("Vector pipes measured in the same run: %.2f packet FMAs per cycle on %d-lane "
                   "packets. The exp-sum pass issues %.1f vector ALU instructions per packet "
                   "(objdump count, bench_kernels.cpp), so its FMA-pipe bound is %.3f cycles per "
                   "element." % (peak[0], peak[1], ops, bound))
    out += ["", "| pass | L1 | 2^24 from memory | bytes per element (memory) |", "|---|---:|---:|---:|"]
    for name in KERNEL_PASSES:
        l1, mem = cells.get((name, "l1")), cells.get((name, "memory"))
        out.append("| %s | %s | %s | %s |" % (
            name, "%.2f" % l1[0] if l1 else "", "%.2f" % mem[0] if mem else "",
            "%g" % mem[1] if mem else ""))
    l1 = cells.get(("exp_store_sum", "l1"))
    if bound and l1:
        share = bound / l1[0]
        out += ["", "| target | measured | required | |", "|---|---|---|---|",
                "| exp-sum pass in L1 at >= 75%% of its FMA-pipe bound | %.0f%% (%.3f of %.3f "
                "cycles per element) | 75%% | %s |" % (100 * share, bound, l1[0],
                                                     "PASS" if share >= 0.75 else "MISS")]
    return "\n".join(out) + "\n"


# Issue 12 (attention): bench/bench_attention.cpp's attention/<impl>/float/<Lq>x<Lk>/d<d>[/t<n>]
# and attention_softmax/<impl>/float/rows64/<n> rows.
ATTENTION_BASELINES = ["eigen_materialized", "sml_materialized", "onednn"]
TIME_UNIT_NS = {"ns": 1.0, "us": 1e3, "ms": 1e6, "s": 1e9}


def load_attention(path):
    """Returns ({(impl, lq, lk, d, threads): benchmark entry}, {(impl, n): items_per_second}),
    with the times in ns (median aggregates when repeated)."""
    rows, softmax_rows = {}, {}
    for name, b in median_entries(path)[1]:
        parts = name.split("/")
        if len(parts) == 5 and parts[0] == "attention_softmax" and "items_per_second" in b:
            softmax_rows[(parts[1], int(parts[4]))] = float(b["items_per_second"])
        if len(parts) not in (5, 6) or parts[0] != "attention":
            continue
        lq, lk = (int(x) for x in parts[3].split("x"))
        threads = int(parts[5][1:]) if len(parts) == 6 else 1
        unit = TIME_UNIT_NS[b.get("time_unit", "ns")]
        entry = dict(b)
        entry["cpu_ns"] = float(b["cpu_time"]) * unit
        entry["real_ns"] = float(b["real_time"]) * unit
        rows[(parts[1], lq, lk, int(parts[4][1:]), threads)] = entry
    return rows, softmax_rows


def mib(x):
    return "%.3g MiB" % (x / 2.0 ** 20) if x is not None else "-"


def attention_markdown(path):
    """The attention tables (time ratios, memory, threads) and issue 12's targets; empty when
    no attention row was measured."""
    rows, softmax_rows = load_attention(path)
    if not rows and not softmax_rows:
        return ""
    out = ["## Attention (issue 12)", "",
           "Time ratios: the peer's median CPU time over `Attention`'s (flash), one thread unless "
           "marked; `/t2` rows and the thread ratios use real time. Memory: `workspace` what the "
           "form needs beyond Q, K, V and O; `peak RSS` the measured rise of the peak resident "
           "set over the first call (a lower bound when malloc reuses memory). load1: the 1-minute "
           "load average at the end of the flash row.", ""]
    shapes = sorted({k[1:] for k in rows}, key=lambda s: (s[3], s[0] * s[1], s[2]))
    peers = [p for p in ATTENTION_BASELINES if any(k[0] == p for k in rows)]
    out.append("| Lq x Lk, d, threads | flash | " + " | ".join("vs " + p for p in peers)
               + " | flash workspace | flash peak RSS | materialized workspace "
               "| materialized peak RSS | load1 |")
    out.append("|---" * (7 + len(peers)) + "|")
    for lq, lk, d, t in shapes:
        flash = rows.get(("flash", lq, lk, d, t))
        key = "real_ns" if t > 1 else "cpu_ns"
        cells = ["%dx%d, d%d, %d" % (lq, lk, d, t),
                 "%.4g ms" % (flash[key] / 1e6) if flash else "-"]
        for p in peers:
            peer = rows.get((p, lq, lk, d, t))
            cells.append("%.2fx" % (peer[key] / flash[key]) if flash and peer else "-")
        mat = rows.get(("eigen_materialized", lq, lk, d, t))
        for r in (flash, mat):
            cells.append(mib(r.get("workspace_bytes")) if r else "-")
            cells.append(mib(r.get("peak_rss_bytes")) if r else "-")
        cells.append("%.2f" % flash["load1"] if flash and "load1" in flash else "-")
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    threaded = sorted(k for k in rows if k[4] > 1)
    if threaded:
        out += ["Thread ratios need free cores: `cpu tN / t1` (the CPU time of all threads per "
                "call over the one-thread row's) is the work the threads add, whatever the load; "
                "with even blocks the speedup on free cores is about N over it.", "",
                "| threads | real time t1 / tN | cpu tN / t1 | load1 |", "|---|---|---|---|"]
        for impl, lq, lk, d, t in threaded:
            one = rows.get((impl, lq, lk, d, 1))
            many = rows[(impl, lq, lk, d, t)]
            if one:
                cpu = ("%.2f" % (many["process_cpu_s"] / one["process_cpu_s"])
                       if "process_cpu_s" in many and one.get("process_cpu_s") else "-")
                out.append("| %s %dx%d d%d, %d threads | %.2fx | %s | %.2f |" % (
                    impl, lq, lk, d, t, one["real_ns"] / many["real_ns"], cpu,
                    many.get("load1", -1)))
        out.append("")

    def ratio(peer, lq, d, t=1, key="cpu_ns"):
        a, b = rows.get(("flash", lq, lq, d, t)), rows.get((peer, lq, lq, d, t))
        return b[key] / a[key] if a and b else None

    def threads_ratio(lq, d, t):
        a, b = rows.get(("flash", lq, lq, d, 1)), rows.get(("flash", lq, lq, d, t))
        return a["real_ns"] / b["real_ns"] if a and b else None

    big = rows.get(("flash", 16384, 16384, 64, 1))
    targets = [
        ("Attention vs materialized Eigen, 4096 x 4096, d 64, one thread",
         ratio("eigen_materialized", 4096, 64), 1.2),
        ("Attention vs materialized Eigen, 1024 x 1024, d 64, one thread",
         ratio("eigen_materialized", 1024, 64), 0.9),
        ("Attention, 2 threads vs 1 (real time), 4096 x 4096, d 64", threads_ratio(4096, 64, 2),
         1.7),
        ("Attention workspace under 64 MiB at 16384 x 16384 (ratio 64 MiB / workspace)",
         (64 * 2.0 ** 20 / big["workspace_bytes"]) if big and "workspace_bytes" in big else None,
         1.0),
    ]
    for n in (1024, 4096):
        a, b = softmax_rows.get(("fused", n)), softmax_rows.get(("eigen_expr", n))
        targets.append(("AttentionSoftmax (mask, scale) vs the plain Eigen expression, rows of %d"
                        % n, a / b if a and b else None, 1.5))
    out += ["## Targets (issue 12: attention)", "",
            "| target | measured ratio | required | |", "|---|---|---|---|"]
    for desc, value, need in targets:
        if value is None:
            out.append("| %s | not measured | %.2f | |" % (desc, need))
        else:
            out.append("| %s | %.2f | %.2f | %s |" % (desc, value, need,
                                                     "PASS" if value >= need else "MISS"))
    return "\n".join(out) + "\n"


def load(path):
    """Returns (context, {(impl, type, cache, n): items_per_second})."""
    context, entries = median_entries(path)
    results = {}
    for name, b in entries:
        parts = name.split("/")
        if parts and parts[-1] == "real_time":  # thread cases are timed in wall time
            parts = parts[:-1]
        if len(parts) != 5 or parts[0] != "softmax" or "items_per_second" not in b:
            continue
        _, impl, typ, cache, n = parts
        results[(impl, typ, cache, int(n))] = float(b["items_per_second"])
    return context, results


def impls_in(results):
    """Variants first (in order of appearance), then the baselines present."""
    seen = []
    for (impl, _, _, _) in results:
        if impl not in seen:
            seen.append(impl)
    variants = [i for i in seen if i not in BASELINES]
    return variants, [b for b in BASELINES if b in seen]


def length_label(n):
    if n >= 1 << 20 and n & (n - 1) == 0:
        return "2^%d" % int(math.log2(n))
    return "{:,}".format(n)


def machine_line(context):
    parts = []
    if context.get("cpu_model"):
        parts.append(context["cpu_model"])
    if context.get("simd"):
        parts.append(context["simd"])
    if context.get("num_cpus"):
        parts.append("%s CPUs" % context["num_cpus"])
    if context.get("mhz_per_cpu"):
        parts.append("%s MHz" % context["mhz_per_cpu"])
    caches = context.get("caches", [])
    if caches:
        parts.append("caches " + ", ".join(
            "L%d%s %d KiB" % (c["level"], "d" if c["type"] == "Data" else
                              ("i" if c["type"] == "Instruction" else ""), c["size"] // 1024)
            for c in caches if c.get("type") != "Instruction"))
    return ", ".join(parts)


def markdown(context, results, machine_note):
    variants, baselines = impls_in(results)
    out = ["# softmaxlab benchmark report", ""]
    out.append("Machine: " + machine_line(context) + ".")
    if context.get("simd"):
        out.append("Instruction set measured: %s (the kernels compiled for it; other instruction "
                   "sets are built and tested, not measured here)." % context["simd"])
    if machine_note:
        out.append("Note: " + machine_note)
    if context.get("onednn"):
        out.append("oneDNN: " + context["onednn"] + ".")
    if context.get("xnnpack"):
        out.append("XNNPACK: " + context["xnnpack"] + ".")
    if context.get("aten"):
        out.append("ATen: " + context["aten"] + ".")
    if context.get("date"):
        out.append("Run: %s, one thread (Google Benchmark library: %s build; it only times, "
                   "the measured code is built Release with -march=native)." %
                   (context["date"], context.get("library_build_type", "?")))
    out.append("")
    out.append("Throughput in G elements/s (higher is better). `incache`: rows swept in an L2-sized "
               "buffer; `outcache`: rows streamed from a 64 MiB buffer (one row of 2^24 is 64 MiB "
               "float, 128 MiB double); `batch`: N x n short rows (n = 16 to 512) in a 256 KiB buffer, "
               "one rowwise call (peers: one call on the whole batch). Ratios are variant / baseline throughput, measured side by "
               "side in one run: > 1 means the variant is faster.")
    out.append("")

    out.append("## Speed targets (every peer at its own best instruction set)")
    out.append("")
    out.append("| target | lengths | measured ratio (min) | required | |")
    out.append("|---|---|---|---|---|")
    for desc, v, b, typ, cache, lengths, need in TARGETS:
        ratios = []
        for n in lengths:
            a, c = results.get((v, typ, cache, n)), results.get((b, typ, cache, n))
            if a and c:
                ratios.append(a / c)
        if not ratios:
            out.append("| %s | %s | not measured | %.2f | |" % (
                desc, ", ".join(length_label(n) for n in lengths), need))
            continue
        lo = min(ratios)
        out.append("| %s | %s | %s | %.2f | %s |" % (
            desc, ", ".join(length_label(n) for n in lengths),
            ", ".join("%.2f" % r for r in ratios) + (" (%.2f)" % lo if len(ratios) > 1 else ""),
            need, "PASS" if lo >= need else "MISS"))
    out.append("")

    for typ in TYPES:
        for cache in CACHES:
            lengths = sorted({n for (i, t, c, n) in results if t == typ and c == cache})
            if not lengths:
                continue
            impls = [i for i in variants + baselines
                     if any((i, typ, cache, n) in results for n in lengths)]
            out.append("## %s, %s" % (typ, cache))
            out.append("")
            out.append("| impl | " + " | ".join(length_label(n) for n in lengths) + " |")
            out.append("|---|" + "---:|" * len(lengths))
            for i in impls:
                cells = []
                for n in lengths:
                    v = results.get((i, typ, cache, n))
                    cells.append("%.3f" % (v / 1e9) if v else "")
                out.append("| %s | %s |" % (i, " | ".join(cells)))
            out.append("")
            case_baselines = [b for b in baselines if b in impls]
            case_variants = [v for v in variants if v in impls]
            if case_baselines and case_variants:
                out.append("Ratios (variant / baseline):")
                out.append("")
                out.append("| variant / baseline | " +
                           " | ".join(length_label(n) for n in lengths) + " |")
                out.append("|---|" + "---:|" * len(lengths))
                for v in case_variants:
                    for b in case_baselines:
                        cells = []
                        for n in lengths:
                            a, c = results.get((v, typ, cache, n)), results.get((b, typ, cache, n))
                            cells.append("%.2f" % (a / c) if a and c else "")
                        out.append("| %s / %s | %s |" % (v, b, " | ".join(cells)))
                out.append("")
    return "\n".join(out) + "\n"


def family_charts(context, results, out_dir, machine_note):
    """One chart per case family (float): bench_incache.png, bench_batch.png, bench_outcache.png."""
    written = []
    for cache in CHART_CACHES:
        sub = {k: v for k, v in results.items() if k[1] == "float" and k[2] == cache}
        if not sub:
            continue
        path = os.path.join(out_dir, "bench_%s.png" % cache)
        if chart(context, sub, path, machine_note):
            written.append(path)
    return written


def chart(context, results, path, machine_note):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench_report: matplotlib not available (Debian: apt install python3-matplotlib, "
              "then run with /usr/bin/python3); chart skipped", file=sys.stderr)
        return False
    variants, baselines = impls_in(results)
    impls = variants + baselines
    panels = [(t, c) for t in TYPES for c in CHART_CACHES
              if any(k[1] == t and k[2] == c for k in results)]
    if not panels:  # only thread cases: nothing to draw against length
        return False
    cols = 2 if len(panels) > 1 else 1
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(13 if cols > 1 else 8, 4.8 * rows + 0.6),
                             squeeze=False)
    cmap = plt.get_cmap("tab10")
    style = {}
    for k, i in enumerate(impls):
        is_base = i in baselines
        style[i] = dict(color=cmap(k % 10), linestyle="--" if is_base else "-",
                        marker="s" if is_base else "o", linewidth=1.4 if is_base else 2.0)
    for ax, (typ, cache) in zip(axes.flat, panels):
        for i in impls:
            pts = sorted((n, v) for (ii, t, c, n), v in results.items()
                         if ii == i and t == typ and c == cache)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] / 1e9 for p in pts], label=i, **style[i])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        # Plain numbers on the log axes (2^k lengths as integers, throughput as 0.5, 1, 2, ...).
        from matplotlib.ticker import FuncFormatter
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: "{:,}".format(int(v))))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: "%g" % v))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: "%g" % v))
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set_title("%s, %s" % (typ, CACHE_TITLES.get(cache, cache)))
        ax.set_xlabel("row length n (elements, log scale)")
        ax.set_ylabel("throughput (G elements / s, one thread, log scale)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, title="solid: softmaxlab, dashed: peers", title_fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    title = "softmaxlab: softmax throughput vs row length"
    import textwrap
    width = 110 if cols > 1 else 80
    line = textwrap.fill(machine_line(context), width)
    if machine_note:
        line += "\n" + textwrap.fill(machine_note, width)
    fig.suptitle(title + "\n" + line, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("json", help="Google Benchmark JSON written by softmaxlab_bench")
    p.add_argument("--out-dir", default=None, help="where to write bench.md and bench.png "
                   "(default: a 'report' directory next to the JSON)")
    p.add_argument("--note", default=os.environ.get("SOFTMAXLAB_MACHINE_NOTE", ""),
                   help="a line about the machine for the report and chart "
                   "(default: $SOFTMAXLAB_MACHINE_NOTE)")
    args = p.parse_args()
    out_dir = args.out_dir or os.path.join(os.path.dirname(os.path.abspath(args.json)), "report")
    os.makedirs(out_dir, exist_ok=True)
    context, results = load(args.json)
    named = load_named(args.json)
    speeds = load_speeds(args.json)
    # The target and family sections after the main tables, in report order; empty when unmeasured.
    sections = [
        named_targets_markdown(named),
        named_targets_markdown(named, HALF_TARGETS,
                               "Targets (issue 13: half precision, element rates)"),
        named_targets_markdown(named, CHAIN_TARGETS,
                               "Targets (the sampler chain and speculative decoding)"),
        named_targets_markdown(named, TENSOR_TARGETS,
                               "Targets (softmax over an axis of an Eigen::Tensor)"),
        output_sampled_markdown(args.json),
        named_targets_markdown(named, HEAD_SAMPLING_TARGETS,
                               "Targets (issue 24: sampling from the fused head)"),
        named_targets_markdown(named, OUTPUT_APPROX_TARGETS,
                               "Targets (issue 24: adaptive and hierarchical softmax)"),
        named_targets_markdown(speeds, MHA_TARGETS, "Targets (issue 23: multi-head attention)"),
        named_targets_markdown(named, LCE_TARGETS,
                               "Targets (issue 24: fused linear cross-entropy, time)"),
        lce_memory_markdown(args.json),
        attention_markdown(args.json),
        kernels_markdown(args.json),
    ]
    sampling = sections[0] + "".join("\n" + sec for sec in sections[1:] if sec)
    if not results and not sampling:
        sys.exit("bench_report: no softmax/<impl>/<type>/<cache>/<n> benchmarks in " + args.json)
    md = markdown(context, results, args.note) if results else "# softmaxlab benchmark report\n\n"
    md += ("\n" + sampling) if sampling else ""
    md_path = os.path.join(out_dir, "bench.md")
    with open(md_path, "w") as f:
        f.write(md)
    print("bench_report: wrote " + md_path)
    png_path = os.path.join(out_dir, "bench.png")
    if results and chart(context, results, png_path, args.note):
        print("bench_report: wrote " + png_path)
        for path in family_charts(context, results, out_dir, args.note):
            print("bench_report: wrote " + path)


if __name__ == "__main__":
    main()
