#!/usr/bin/env python3
"""bench/peers/summarize.py — race.sh's results -> one JSON object (stdout) and a markdown
table (stderr): every number per model, the llama.cpp commit, the roofline ratios and
issue 12's targets (a: peftd >= 1.2x llama.cpp and >= 0.8 of the roofline; b: >= 1.2x;
c: >= 5x).

Usage: summarize.py TMPDIR LLAMA_INFO_JSON THREADS NAME...
Roofline: bytes_per_token (bench_decode: every weight a decode step reads + the mean KV
window) / the best streaming-read bandwidth bench_decode measured before and after the
race (same thread count); the same bytes for both servers (same bf16 weights, both tie
lm_head to the embedding table; llama.cpp's f16 KV vs peftd's is < 3% of the bytes here).
"""
import datetime
import glob
import json
import os
import platform
import sys

TARGETS = {"a": 1.2, "b": 1.2, "c": 5.0, "a_roofline": 0.8}


def load(path):
    with open(path) as f:
        return json.load(f)


def batched(tmp, name):
    rows = []
    for p in glob.glob(os.path.join(tmp, f"{name}-batched*")):
        with open(p, errors="replace") as f:
            for line in f:
                line = line.strip()
                if line.startswith('{"n_kv_max"'):
                    rows.append(json.loads(line))
    return rows


def summarize_partial(res):
    """race.py's summary, from the per-test records a killed run left in <name>-partial.json."""
    import statistics
    out = {}
    for t, per in res.items():
        key = "decode_tok_s" if t == "a" else "agg_tok_s"
        row = {}
        for s, recs in per.items():
            if not recs:
                continue
            v = [x[key] for x in recs]
            row[s] = {"best": max(v), "median": statistics.median(v), "all": v, "n_rounds": len(v),
                      "machine_busy_cores": [x["machine_busy_cores"] for x in recs],
                      "server_cores": [x["server_cores"] for x in recs],
                      "loadavg_1m": [x["loadavg_1m_before"] for x in recs]}
            if t != "a":
                d = [x["decode_tok_s"] for x in recs if x["decode_tok_s"]]
                row[s]["decode_tok_s_best"] = max(d) if d else None
        if "peftd" in row and "llama" in row:
            row["ratio_best"] = row["peftd"]["best"] / row["llama"]["best"]
            row["ratio_median"] = row["peftd"]["median"] / row["llama"]["median"]
            row["ratio_rounds"] = [p / l for p, l in zip(row["peftd"]["all"], row["llama"]["all"]) if l > 0]
            row["ratio_rounds_median"] = statistics.median(row["ratio_rounds"]) if row["ratio_rounds"] else None
            out[t] = row
    return out


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main():
    tmp, info_path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    names = sys.argv[4:]
    info = load(info_path)
    out = {"bench": "peers", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": {"cpu": cpu_model(), "online_cores": os.cpu_count(), "threads": threads},
           "llama_cpp": {k: info[k] for k in ("llama_cpp_commit", "llama_cpp_python_sdist", "sdist_sha256",
                                              "cmake", "compiler")},
           "peftd_build": os.environ.get("PEFTD_BUILD", "build MARCH=native"),
           "targets_issue12": TARGETS, "models": {}}
    table = ["| model | test | peftd best (median) | llama.cpp best (median) | peftd/llama.cpp best (median) | target |",
             "|---|---|---|---|---|---|"]
    for name in names:
        rp = os.path.join(tmp, f"{name}-race.json")
        if os.path.getsize(rp) > 0:
            race = load(rp)
        else:  # the run was stopped: what the finished tests left
            raw = load(os.path.join(tmp, f"{name}-partial.json"))
            race = {"model": name, "threads": threads, "partial": True, "raw": raw,
                    "results": summarize_partial(raw), "tokens": {}}
        decs = [load(p) for p in sorted(glob.glob(os.path.join(tmp, f"{name}-decode-*.json")))]
        bw = max(r["read_gb_s"] for d in decs for r in d["rounds"])
        bpt = decs[0]["bytes_per_token"]
        m = {"race": race, "bench_decode": decs, "llama_batched_bench": batched(tmp, name),
             "roofline": {"bytes_per_token": bpt, "best_read_gb_s": bw, "roofline_tok_s": bw * 1e9 / bpt}}
        res = race["results"]
        if "a" in res:
            for s in [k for k in ("peftd", "llama", "llama_t1") if k in res["a"]]:
                m["roofline"][f"{s}_ratio_best"] = res["a"][s]["best"] * bpt / (bw * 1e9)
                m["roofline"][f"{s}_ratio_median"] = res["a"][s]["median"] * bpt / (bw * 1e9)
            if "a_llama_bench_tok_s" in res:
                m["roofline"]["llama_bench_ratio_best"] = res["a_llama_bench_tok_s"]["best"] * bpt / (bw * 1e9)
            m["roofline"]["peftd_bench_decode_ratio_best"] = max(d["best"]["ratio"] for d in decs)
        met = {}
        for t in ("a", "b", "c"):
            if t in res:
                met[t] = res[t]["ratio_best"] >= TARGETS[t]
                r = res[t]
                label = {"a": "1 stream decode tok/s", "b": "32 streams base, agg tok/s",
                         "c": "32 streams x 32 LoRAs, agg tok/s"}[t]
                table.append(f"| {name} | {t}: {label} | {r['peftd']['best']:.2f} ({r['peftd']['median']:.2f}) | "
                             f"{r['llama']['best']:.2f} ({r['llama']['median']:.2f}) | "
                             f"{r['ratio_best']:.2f}x ({r['ratio_median']:.2f}x) | >= {TARGETS[t]}x |")
                if r.get("ratio_rounds"):
                    rr = r["ratio_rounds"]
                    table.append(f"| {name} | {t}, round by round (both back to back) | | | median {r['ratio_rounds_median']:.2f}x "
                                 f"(min {min(rr):.2f}x, max {max(rr):.2f}x; peftd ahead in {sum(x > 1 for x in rr)} of {len(rr)}) | |")
                if "llama_t1" in r:
                    q = r["peftd"]["best"] / r["llama_t1"]["best"]
                    table.append(f"| {name} | {t}, llama.cpp at 1 thread | | {r['llama_t1']['best']:.2f} "
                                 f"({r['llama_t1']['median']:.2f}) | {q:.2f}x | |")
        if "a" in res:
            met["a_roofline"] = m["roofline"]["peftd_ratio_best"] >= TARGETS["a_roofline"]
            rf = m["roofline"]
            table.append(f"| {name} | a: share of the roofline ({rf['roofline_tok_s']:.1f} tok/s = {bw:.1f} GB/s / "
                         f"{bpt / 1e6:.1f} MB) | {rf['peftd_ratio_best']:.2f} | {rf['llama_ratio_best']:.2f}"
                         f"{' (1 thread: %.2f)' % rf['llama_t1_ratio_best'] if 'llama_t1_ratio_best' in rf else ''} | | >= 0.8 |")
            if "a_llama_bench_tok_s" in res:
                table.append(f"| {name} | a: llama-bench tg{race['tokens']['a']} (cross-check) | | "
                             f"{res['a_llama_bench_tok_s']['best']:.2f} | | |")
        for row in m["llama_batched_bench"]:
            table.append(f"| {name} | llama-batched-bench pl={row['pl']} pp={row['pp']} tg={row['tg']} (cross-check) | | "
                         f"{row['speed_tg']:.2f} tg tok/s | | |")
        m["targets_met"] = met
        out["models"][name] = m
    print(json.dumps(out, indent=1))
    print("\n".join(table), file=sys.stderr)


if __name__ == "__main__":
    main()
