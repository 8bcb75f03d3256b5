#!/usr/bin/env python3
"""tests/gpu/ncu_summary.py CSV [--top 12] [--label ncu] [--layers N] — where a decode step's GPU
time goes, from Nsight Compute's per-kernel durations (tests/gpu/run.sh: `ncu --csv --print-units
base --metrics gpu__time_duration.sum` over a few decode steps of `peftd generate` at batch 1,
and of bench_adapters at batch 64).

Groups the kernels by name (template arguments and parameter lists cut), sums their durations,
and prints one line per group, largest first: share of the total, total microseconds, launches
and mean microseconds per launch; then the total. With --layers N, also the kernel time per
decode step, counting steps as attention launches / N (one per layer and step): set beside the
measured step time it says whether the step waits on the GPU or on the host. Every line starts
with the label. Exit 2 when the file has no kernel rows."""
import argparse
import csv
import re
import sys


def short(name):
    """A kernel's name without its parameter list and template arguments."""
    name = name.strip()
    while "<" in name:  # innermost template argument lists first: they may hold "(kdtype)3"
        name2 = re.sub(r"<[^<>]*>", "", name)
        if name2 == name:
            break
        name = name2
    name = re.sub(r"\(.*$", "", name)
    return re.sub(r"^void ", "", name).strip() or "?"


def summarize(rows):
    groups = {}
    for r in rows:
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        try:
            v = float(r["Metric Value"].replace(",", ""))
        except (KeyError, ValueError):
            continue
        unit = r.get("Metric Unit", "nsecond")
        ns = v * {"nsecond": 1, "ns": 1, "usecond": 1e3, "us": 1e3, "msecond": 1e6, "ms": 1e6}.get(unit, 1)
        g = groups.setdefault(short(r.get("Kernel Name", "?")), [0.0, 0])
        g[0] += ns
        g[1] += 1
    return groups


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--label", default="ncu")
    ap.add_argument("--layers", type=int, default=0)
    a = ap.parse_args()
    try:
        with open(a.csv, errors="replace") as f:
            lines = [l for l in f if l.startswith('"')]  # ncu's own messages are not quoted
    except OSError as e:
        print(f"{a.label}: cannot read {a.csv}: {e}")
        return 2
    groups = summarize(csv.DictReader(lines))
    total = sum(g[0] for g in groups.values())
    if not groups or total <= 0:
        print(f"{a.label}: no kernel durations in the file (did ncu run? see its log)")
        return 2
    launches = sum(g[1] for g in groups.values())
    for name, (ns, n) in sorted(groups.items(), key=lambda kv: -kv[1][0])[: a.top]:
        print(f"  {a.label} {100 * ns / total:5.1f}%  {ns / 1e3:9.1f} us  {n:5d} launches  {ns / 1e3 / n:7.2f} us each  {name}")
    print(f"  {a.label} total {total / 1e3:.1f} us of kernel time in {launches} launches ({len(groups)} kernels)")
    attn = groups.get("k_attention", [0.0, 0])[1]
    if a.layers > 0 and attn >= a.layers:
        steps = attn / a.layers
        print(f"  {a.label} per decode step: {total / 1e3 / steps:.1f} us of kernel time "
              f"({steps:g} steps: {attn} attention launches / {a.layers} layers)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
