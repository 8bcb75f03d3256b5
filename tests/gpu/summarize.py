#!/usr/bin/env python3
"""tests/gpu/summarize.py RESULTS_DIR MODEL_DIR — the issue-6 GPU figures from run.sh's files:
c/a at batch 64 (target >= 0.9), batch-1 decode step vs the HBM roofline (target >= 60%).
Prints one line per figure; missing inputs are reported, never a crash."""
import json
import os
import sys


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except Exception as e:  # noqa: BLE001 - report and go on
        print(f"  (cannot read {os.path.basename(path)}: {e})")
        return None


def main():
    res, model = sys.argv[1], sys.argv[2]
    b64 = load(os.path.join(res, "bench64.json"))
    if b64:
        s = b64["shapes"][0]
        print(f"batch 64: base {s['a']['tok_s']:.1f} tok/s, 64 distinct r16 all-linear LoRAs {s['c']['tok_s']:.1f} tok/s,"
              f" c/a = {s['c_over_a']:.3f} (target >= 0.9: {'MET' if s['c_over_a'] >= 0.9 else 'missed'})")
    bw, b1 = load(os.path.join(res, "bw.json")), load(os.path.join(res, "bench1.json"))
    if bw and b1:
        wbytes = b1["shapes"][0]["bytes"]["base_weights"]
        step_ms = b1["shapes"][0]["a"]["step_ms_median"]
        roof_ms = wbytes / (bw["read_gbps"] * 1e9) * 1e3
        frac = roof_ms / step_ms if step_ms > 0 else 0.0
        print(f"batch 1: decode step {step_ms:.3f} ms, roofline {roof_ms:.3f} ms ({wbytes / 1e9:.2f} GB at "
              f"{bw['read_gbps']:.0f} GB/s read), {100 * frac:.1f}% of roofline (target >= 60%: "
              f"{'MET' if frac >= 0.6 else 'missed'})")
    print("1,000 adapters through a 128-slot pool: not measured by this script yet (needs the store-backed tiers)")


if __name__ == "__main__":
    main()
