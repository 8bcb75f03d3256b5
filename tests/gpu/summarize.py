#!/usr/bin/env python3
"""tests/gpu/summarize.py RESULTS_DIR [--seqs 64] — issue 13's acceptance lines 3 and 4 from the
files tests/gpu/run.sh wrote (bw.json, bench<seqs>.json, bench1.json, pool_churn.json, hf.json), one line each,
worded as the issue states them:
  3a  batch-1 decode step >= 70% of the HBM read roofline
  3b  batch <seqs> with <seqs> distinct rank-8 q,v LoRAs >= 0.9x base throughput
  3c  <seqs> distinct rank-16 all-linear LoRAs: step time <= 1.2x the byte roofline of base + adapters
  3d  1,000 adapters through a 128-slot pool >= 0.8x the 64-adapter throughput
  4   decode tokens/s >= 20x transformers + peft (mixed-adapter batch via adapter_names)

Roofline of a decode step = bytes it must read / measured READ bandwidth (bw.json: a read-only
reduction, bench/bench_gpu). Bytes read: the weights as stored (bench JSON bytes.*; a tied
embedding is the lm_head, read once), the adapters' A and B of every adapted module once per
step (bytes.step_adapters_c), and the KV cache the attention reads: f32 K and V of every
layer at the mean context of the decode window (prompt + tokens/2) for every sequence.
Each line ends MET / missed, or says NOT MEASURED / NOT RUN and why. --tag T: lines 3a-3c
again from bench<seqs>T.json and bench1T.json (run.sh's second set, decode steps as CUDA
graphs: T = -graphs), each prefixed with [T]. --ops: where a step's time goes, from
bench<seqs>-ops.json and bench1-ops.json (bench_adapters --sync-ops: every op waited for and
timed), one line per batch size and scenario (a base, c distinct adapters). Exit status 1 when an
input a line needs is missing or unreadable (a step failed), else 0: a missed target is a
result, reported on its line, not a harness failure."""
import argparse
import json
import os


class Missing(Exception):
    pass


def load(res, name):
    path = os.path.join(res, name)
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise Missing(f"{name}: {e.__class__.__name__}: {e}") from e


def shape(bench, name):
    for s in bench["shapes"]:
        if s["name"] == name:
            return s
    raise Missing(f"no shape {name!r} in the bench JSON")


def kv_bytes(bench, seqs):
    """Bytes of f32 K and V the attention reads in one decode step, at the window's mean context."""
    st = bench["setup"]
    m = st["model"]
    kv_dim = m["kv_heads"] * (m["hidden"] // m["heads"])
    ctx = st["prompt_tokens"] + st["gen_tokens"] / 2
    return seqs * m["layers"] * 2 * kv_dim * 4 * ctx


def verdict(ok):
    return "MET" if ok else "missed"


TAG = ""


def line_3a(res):
    bw, b1 = load(res, "bw.json"), load(res, f"bench1{TAG}.json")
    s = b1["shapes"][0]
    step_ms = s["a"]["step_ms_median"]
    read = s["bytes"]["base_weights"] + kv_bytes(b1, 1)
    roof_ms = read / (bw["read_gbps"] * 1e9) * 1e3
    frac = roof_ms / step_ms if step_ms > 0 else 0.0
    return (f"3a batch-1 decode step >= 70% of the HBM read roofline: step {step_ms:.3f} ms (median; p10 "
            f"{s['a']['step_ms_p10']:.3f}), reads {read / 1e6:.1f} MB at {bw['read_gbps']:.0f} GB/s = {roof_ms:.3f} ms: "
            f"{100 * frac:.1f}% -> {verdict(frac >= 0.70)}")


def line_3b(res, seqs):
    s = shape(load(res, f"bench{seqs}{TAG}.json"), "r8qv")
    ca = s["c_over_a"]
    return (f"3b batch {seqs}, {seqs} distinct rank-8 q,v LoRAs >= 0.9x base: base {s['a']['tok_s']:.1f} tok/s, "
            f"LoRAs {s['c']['tok_s']:.1f} tok/s, ratio {ca:.3f} -> {verdict(ca >= 0.9)}")


def line_3c(res, seqs):
    b, bw = load(res, f"bench{seqs}{TAG}.json"), load(res, "bw.json")
    s = shape(b, "r16all")
    step_ms = s["c"]["step_ms_median"]
    read = s["bytes"]["base_weights"] + s["bytes"]["step_adapters_c"] + kv_bytes(b, seqs)
    roof_ms = read / (bw["read_gbps"] * 1e9) * 1e3
    x = step_ms / roof_ms if roof_ms > 0 else float("inf")
    return (f"3c {seqs} distinct rank-16 all-linear LoRAs, step <= 1.2x the byte roofline of base + adapters: "
            f"step {step_ms:.3f} ms, reads {read / 1e6:.1f} MB (base {s['bytes']['base_weights'] / 1e6:.1f} + adapters "
            f"{s['bytes']['step_adapters_c'] / 1e6:.1f} + KV {kv_bytes(b, seqs) / 1e6:.1f}) = {roof_ms:.3f} ms at {bw['read_gbps']:.0f} GB/s: "
            f"{x:.2f}x -> {verdict(x <= 1.2)}")


def line_3d(res):
    try:
        p = load(res, "pool_churn.json")
    except Missing as e:
        return (f"3d 1,000 adapters through a 128-slot pool >= 0.8x the 64-adapter throughput: NOT MEASURED "
                f"({e}; see pool_churn.log)")
    h, c = p["hot"], p["churn"]
    return (f"3d {c['adapters']} adapters through a {p['slots']}-slot pool >= 0.8x the {h['adapters']}-adapter "
            f"throughput (rank {p['rank']} on {p['targets']}, {p['clients']} streaming clients, via the daemon's "
            f"tiers): {c['tokens_per_s']:.1f} vs {h['tokens_per_s']:.1f} tok/s, {c['slot_counters']['misses']:.0f} slot "
            f"misses, {c['slot_counters']['evictions']:.0f} evictions: {p['ratio_churn_vs_hot']:.3f}x -> "
            f"{verdict(p['ratio_churn_vs_hot'] >= 0.8)}")


def line_4(res, seqs):
    try:
        hf = load(res, "hf.json")
    except Missing as e:
        return f"4 decode tok/s >= 20x transformers+peft: NOT RUN (no hf.json: {e}; see hf.log)", False
    if not hf.get("ran", True):
        return f"4 decode tok/s >= 20x transformers+peft: NOT RUN ({hf.get('reason', '?')})", True
    s = shape(load(res, f"bench{seqs}.json"), "r16all")
    ratio = s["c"]["tok_s"] / hf["hf_decode_tok_s"]
    return (f"4 decode tok/s >= 20x transformers+peft (batch {hf['batch']}, {seqs} distinct rank-16 all-linear "
            f"LoRAs, adapter_names, {hf.get('device', '?')}): peftd {s['c']['tok_s']:.1f}, HF "
            f"{hf['hf_decode_tok_s']:.1f} tok/s: {ratio:.1f}x -> {verdict(ratio >= 20)}"), True


def line_ops(res, n):
    """The per-op split of a step at batch n (bench<n>-ops.json), base (a) and distinct adapters (c)."""
    b = load(res, f"bench{n}-ops.json")
    s = b["shapes"][0]
    out = []
    for sc in ("a", "c"):
        ms = s[sc]["ms_per_step"]
        parts = ", ".join(f"{k} {v:.3f}" for k, v in ms.items())
        out.append(f"op split, batch {n}, {sc} ({'base' if sc == 'a' else s['name'] + ' distinct'}; each op waited "
                   f"for, less an empty wait of {b['setup'].get('empty_sync_us', 0):.1f} us), ms per step: {parts}")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("res")
    ap.add_argument("--seqs", type=int, default=64)
    ap.add_argument("--tag", default="")
    ap.add_argument("--ops", action="store_true")
    a = ap.parse_args()
    if a.ops:
        ok = True
        for n in (a.seqs, 1):
            try:
                print(line_ops(a.res, n))
            except (Missing, KeyError, TypeError, IndexError) as e:
                print(f"op split, batch {n}: not computed: {e.__class__.__name__}: {e}")
                ok = False
        return 0 if ok else 1
    global TAG
    TAG = a.tag
    prefix = f"[{a.tag.strip('-')}] " if a.tag else ""
    ok = True
    for f in (line_3a, lambda r: line_3b(r, a.seqs), lambda r: line_3c(r, a.seqs)):
        try:
            print(prefix + f(a.res))
        except (Missing, KeyError, TypeError, ZeroDivisionError) as e:
            print(f"{prefix}acceptance line not computed: {e.__class__.__name__}: {e}")
            ok = False
    if a.tag:
        return 0 if ok else 1
    print(line_3d(a.res))
    try:
        text, ran_ok = line_4(a.res, a.seqs)
    except (Missing, KeyError, TypeError, ZeroDivisionError) as e:
        text, ran_ok = f"4 decode tok/s >= 20x transformers+peft: not computed: {e.__class__.__name__}: {e}", False
    print(text)
    return 0 if ok and ran_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
