#!/usr/bin/env python3
"""tests/gpu/ncu_summary.py CSV [--top 12] — where a decode step's GPU time goes, from Nsight
Compute's per-kernel durations (tests/gpu/run.sh: `ncu --csv --print-units base --metrics
gpu__time_duration.sum` over a few decode steps of `peftd generate` at batch 1).

Groups the kernels by name (template arguments and parameter lists cut), sums their durations,
and prints one line per group, largest first: share of the total, total microseconds, launches
and mean microseconds per launch; then the total. Exit 2 when the file has no kernel rows."""
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
    a = ap.parse_args()
    try:
        with open(a.csv, errors="replace") as f:
            lines = [l for l in f if l.startswith('"')]  # ncu's own messages are not quoted
    except OSError as e:
        print(f"ncu: cannot read {a.csv}: {e}")
        return 2
    groups = summarize(csv.DictReader(lines))
    total = sum(g[0] for g in groups.values())
    if not groups or total <= 0:
        print("ncu: no kernel durations in the file (did ncu run? see ncu.log)")
        return 2
    launches = sum(g[1] for g in groups.values())
    for name, (ns, n) in sorted(groups.items(), key=lambda kv: -kv[1][0])[: a.top]:
        print(f"  ncu {100 * ns / total:5.1f}%  {ns / 1e3:9.1f} us  {n:5d} launches  {ns / 1e3 / n:7.2f} us each  {name}")
    print(f"  ncu total {total / 1e3:.1f} us of kernel time in {launches} launches ({len(groups)} kernels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
