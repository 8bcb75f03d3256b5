#!/usr/bin/env python3
"""deploy/haproxy/affinity_bench.py — measures deploy/haproxy/haproxy.cfg's adapter
affinity against round-robin, both in one run: N peftd replicas (build/peftd, the
stories260K model, store.slots S each) behind HAProxy, A adapters (distinct content:
the lora_r1_all fixture with one weight's lowest byte changed), requests drawn from a
Zipf(s) law over the adapters with a fixed seed, the same request sequence for both
policies, the replicas restarted (empty slot pools, same stores) before each.

Reported per policy: slot hit rate = 1 - adapter loads / requests (a request whose
adapter was already resident when it came: summed peftd_adapter_loads_total deltas over
the replicas), peftd's own slot hit/miss counters, requests/s and tokens/s through
HAProxy, requests per replica. Prints one JSON object and a summary line.

  python3 deploy/haproxy/affinity_bench.py [--requests 1500] [--zipf 1.0] [--concurrency 12]
Needs haproxy >= 2.6 (apt-get install haproxy). Not a test: numbers, no verdict.
"""

import argparse
import http.client
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import harness  # noqa: E402

FIX = os.path.join(ROOT, "tests", "fixtures", "adapters", "lora_r1_all")


def make_adapters(tmp, n):
    dirs = []
    for i in range(n):
        d = os.path.join(tmp, "ad%03d" % i)
        shutil.copytree(FIX, d)
        with open(os.path.join(d, "adapter_model.safetensors"), "r+b") as f:
            hlen = int.from_bytes(f.read(8), "little")
            f.seek(8 + hlen)
            f.write(bytes([i & 0xFF, (i >> 8) & 0xFF]))
        dirs.append(d)
    return dirs


def haproxy_cfg(policy, port, servers, balance_factor=None):
    """The shipped haproxy.cfg with the bench's port and servers (and, for the baseline,
    `balance roundrobin` in place of the hash)."""
    with open(os.path.join(HERE, "haproxy.cfg")) as f:
        text = f.read()
    text = text.replace("bind :8000", "bind 127.0.0.1:%d" % port)
    lines = "\n".join("    server r%d 127.0.0.1:%d" % (i, p) for i, p in enumerate(servers))
    text = re.sub(r"    # BEGIN servers\n.*?    # END servers\n", lines + "\n", text, flags=re.S)
    text = re.sub(r"\nresolvers kube\n(    .*\n)+", "\n", text)
    text = text.replace("log stdout format raw local0 info", "log stdout format raw local0 warning")
    if balance_factor is not None:
        text = re.sub(r"hash-balance-factor \d+", "hash-balance-factor %d" % balance_factor, text)
    if policy == "roundrobin":
        text = re.sub(r"    balance hash .*\n    hash-type consistent\n    hash-balance-factor \d+\n",
                      "    balance roundrobin\n", text)
    return text


def metric(text, name):
    m = re.search(r"^%s (\S+)$" % re.escape(name), text, re.M)
    return float(m.group(1)) if m else 0.0


def counters(daemons):
    out = []
    for d in daemons:
        t = d.request("GET", "/metrics")[2].decode()
        out.append({k: metric(t, "peftd_" + k) for k in
                    ("adapter_loads_total", "adapter_slot_hits_total", "adapter_slot_misses_total",
                     "generated_tokens_total", "adapter_slot_evictions_total")})
    return out


def run_load(port, seq, concurrency, max_tokens):
    lock = threading.Lock()
    state = {"next": 0, "ok": 0, "err": 0, "tokens": 0}

    def worker():
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        while True:
            with lock:
                i = state["next"]
                state["next"] += 1
            if i >= len(seq):
                break
            body = json.dumps({"model": seq[i], "prompt": "Once upon a time", "max_tokens": max_tokens,
                               "temperature": 0, "ignore_eos": True})
            try:
                c.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
                r = c.getresponse()
                data = r.read()
                ok = r.status == 200
                toks = json.loads(data)["usage"]["completion_tokens"] if ok else 0
            except (OSError, http.client.HTTPException, ValueError):
                c.close()
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
                ok, toks = False, 0
            with lock:
                state["ok" if ok else "err"] += 1
                state["tokens"] += toks
        c.close()

    t0 = time.time()
    th = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    return state, time.time() - t0


def start_replicas(stores, slots, threads, tmp):
    conf = os.path.join(tmp, "replica.json")
    with open(conf, "w") as f:
        json.dump({"store": {"slots": slots}, "threads": threads, "log": {"access": "off"}}, f)
    return [harness.Daemon(["--config", conf], store=s) for s in stores]


def phase(policy, args, stores, seq, tmp):
    daemons = start_replicas(stores, args.slots, args.threads, tmp)
    hp = None
    try:
        port = harness.free_port()
        cfg = os.path.join(tmp, "haproxy-%s.cfg" % policy)
        with open(cfg, "w") as f:
            f.write(haproxy_cfg(policy, port, [d.port for d in daemons], args.balance_factor))
        hp = subprocess.Popen([args.haproxy, "-db", "-f", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 30
        while True:  # HAProxy up and every server checked: one request per replica's worth
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", "/v1/models")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError("haproxy did not come up: %s" % hp.stderr.read(2000))
            time.sleep(0.1)
        time.sleep(2.5)  # the first health checks (inter 2s, rise 2 from init state up)
        before = counters(daemons)
        state, wall = run_load(port, seq, args.concurrency, args.max_tokens)
        after = counters(daemons)
    finally:
        if hp:
            hp.terminate()
            hp.wait(10)
        for d in daemons:
            d.close()
    delta = [{k: a[k] - b[k] for k in a} for a, b in zip(after, before)]
    loads = sum(d["adapter_loads_total"] for d in delta)
    n = len(seq)
    return {
        "policy": policy,
        "requests": n, "ok": state["ok"], "errors": state["err"],
        "slot_hit_rate": round(1 - loads / n, 4),
        "adapter_loads": int(loads),
        "peftd_slot_hits": int(sum(d["adapter_slot_hits_total"] for d in delta)),
        "peftd_slot_misses": int(sum(d["adapter_slot_misses_total"] for d in delta)),
        "slot_evictions": int(sum(d["adapter_slot_evictions_total"] for d in delta)),
        "wall_s": round(wall, 3),
        "requests_per_s": round(state["ok"] / wall, 2),
        "tokens_per_s": round(state["tokens"] / wall, 1),
        "tokens_per_replica": [int(d["generated_tokens_total"]) for d in delta],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--slots", type=int, default=16)
    ap.add_argument("--adapters", type=int, default=200)
    ap.add_argument("--zipf", type=float, default=1.0, help="exponent s: P(rank k) ~ 1/k^s")
    ap.add_argument("--requests", type=int, default=1500)
    ap.add_argument("--concurrency", type=int, default=12)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per replica")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--balance-factor", type=int, default=None,
                    help="override haproxy.cfg's hash-balance-factor (0 = no load bound)")
    ap.add_argument("--haproxy", default=shutil.which("haproxy") or "haproxy")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="peftd-affinity-")
    try:
        dirs = make_adapters(os.path.join(tmp, "adapters"), args.adapters)
        names = ["ad%03d" % i for i in range(args.adapters)]
        stores = [os.path.join(tmp, "store%d" % i) for i in range(args.replicas)]
        for d in start_replicas(stores, args.slots, args.threads, tmp):  # upload once per store
            try:
                for name, src in zip(names, dirs):
                    st, obj = d.upload(name, src)
                    assert st == 201, (st, obj)
            finally:
                d.close()
        rnd = random.Random(args.seed)
        weights = [1.0 / (k ** args.zipf) for k in range(1, args.adapters + 1)]
        order = names[:]
        rnd.shuffle(order)  # popularity rank independent of the name (and so of the hash)
        seq = rnd.choices(order, weights=weights, k=args.requests)
        results = [phase(p, args, stores, seq, tmp) for p in ("roundrobin", "hash")]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rr, hs = results
    out = {"bench": "haproxy_affinity", "haproxy": subprocess.run([args.haproxy, "-v"], capture_output=True,
                                                                   text=True).stdout.split("\n")[0],
           "params": vars(args), "results": results,
           "hit_rate_ratio": round(hs["slot_hit_rate"] / rr["slot_hit_rate"], 3) if rr["slot_hit_rate"] else None,
           "throughput_ratio": round(hs["tokens_per_s"] / rr["tokens_per_s"], 3) if rr["tokens_per_s"] else None}
    print(json.dumps(out, indent=1))
    print("affinity: zipf %.2f, %d adapters, %d x %d slots: hit rate hash %.3f vs round-robin %.3f (x%s), "
          "tokens/s %.1f vs %.1f (x%s)" % (args.zipf, args.adapters, args.replicas, args.slots,
                                          hs["slot_hit_rate"], rr["slot_hit_rate"], out["hit_rate_ratio"],
                                          hs["tokens_per_s"], rr["tokens_per_s"], out["throughput_ratio"]))


if __name__ == "__main__":
    main()
