#!/usr/bin/env python3
"""bench/pool_churn.py — many adapters through a bounded set of resident slots (issue 13,
acceptance 3: "1,000 adapters through a 128-slot pool >= 0.8x the 64-adapter throughput").

The whole serving path: a real `peftd serve` with an adapter store and `store.slots` resident
adapters (the device slot pool on CUDA, the host tier's decoded adapters on the CPU: the same
tiers code), N adapters uploaded through the API, then peftd-loadgen twice with the same clients
and request shape:
  hot:   requests spread uniformly over the first HOT adapters (all fit in the slots: after the
         warm-up nothing is loaded again);
  churn: requests spread uniformly over all N adapters (N >> slots: most admissions load an
         adapter from the store and evict another while the batch keeps decoding).
Reports both aggregate generated tokens/s, their ratio (target >= 0.8), the slot hit/miss/evict
counters from /metrics for each phase (the proof the churn happened), and the upload time.
The adapters are random LoRAs made by clients/gen_random_lora.py (cached in --adapters-dir).

Usage: bench/pool_churn.py [--model DIR] [--adapters 1000] [--slots 128] [--hot 64] [--rank 8]
         [--targets q_proj,v_proj] [--clients 64] [--duration 20] [--max-tokens 32]
         [--adapters-dir DIR] [--out FILE] [--extra-arg ARG ...]
Environment: PEFTD_BIN (default build/peftd), PEFTD_BACKEND (passed to the daemon). Exit 0 when
the run completed (whatever the ratio), 1 on a failure of the run itself.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("PEFTD_BIN", os.path.join(ROOT, "build", "peftd"))
LOADGEN = os.path.join(os.path.dirname(os.path.abspath(BIN)), "peftd-loadgen")  # built beside it (make all)


def parse():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=os.path.join(ROOT, "bench", "models", "llama-110m-bf16"))
    ap.add_argument("--adapters", type=int, default=1000)
    ap.add_argument("--slots", type=int, default=128)
    ap.add_argument("--hot", type=int, default=64)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--targets", default="q_proj,v_proj")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--adapters-dir", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--extra-arg", action="append", default=[], help="one more `peftd serve` argument")
    a = ap.parse_args()
    if a.hot > a.slots or a.adapters <= a.slots or a.hot < 1:
        ap.error("need 1 <= --hot <= --slots < --adapters")
    return a


def gen_adapters(a):
    d = a.adapters_dir or os.path.join(ROOT, "bench", "models", "pool-%s-r%d-%s-%d" % (
        os.path.basename(os.path.normpath(a.model)), a.rank, a.targets.replace(",", "+"), a.adapters))
    have = sorted(n for n in os.listdir(d)) if os.path.isdir(d) else []
    if len(have) >= a.adapters:
        return d, have[:a.adapters]
    tmp = d + ".tmp"
    subprocess.run(["rm", "-rf", tmp], check=True)
    subprocess.run([sys.executable, os.path.join(ROOT, "clients", "gen_random_lora.py"), "--base", a.model,
                    "--out", tmp, "--count", str(a.adapters), "--rank", str(a.rank), "--alpha", str(2 * a.rank),
                    "--targets", a.targets, "--dtype", "bf16", "--seed", "13"], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["rm", "-rf", d], check=True)
    os.rename(tmp, d)
    return d, sorted(os.listdir(d))[:a.adapters]


def slot_counters(daemon):
    st, _, raw = daemon.request("GET", "/metrics")
    if st != 200:
        raise RuntimeError("/metrics answered %d" % st)
    out = {}
    for k in ("hits", "misses", "evictions"):
        m = re.search(r"^peftd_adapter_slot_%s_total (\S+)$" % k, raw.decode(), re.M)
        out[k] = float(m.group(1)) if m else None
    return out


def loadgen(a, daemon, names, tag, tmp):
    out = os.path.join(tmp, "loadgen-%s.json" % tag)
    args = [LOADGEN, "--url", "http://127.0.0.1:%d" % daemon.port, "--clients", str(a.clients),
            "--duration", str(a.duration), "--adapters", ",".join(names), "--zipf-s", "0",
            "--max-tokens", str(a.max_tokens), "--temperature", "0", "--seed", "3", "--warmup", "0",
            "--quiet", "--json", out]
    before = slot_counters(daemon)
    r = subprocess.run(args, capture_output=True, text=True, timeout=a.duration + 600)
    after = slot_counters(daemon)
    if r.returncode not in (0, 1) or not os.path.exists(out):
        raise RuntimeError("loadgen (%s) exited %d:\n%s%s" % (tag, r.returncode, r.stdout[-2000:], r.stderr[-2000:]))
    with open(out) as f:
        rep = json.load(f)
    rq = rep["requests"]
    if rq["failed"] or rq["ok"] == 0:
        raise RuntimeError("loadgen (%s): %d ok, %d failed:\n%s" % (tag, rq["ok"], rq["failed"], r.stdout[-2000:]))
    delta = {k: (after[k] - before[k]) if after[k] is not None and before[k] is not None else None for k in after}
    return {"adapters": len(names), "tokens_per_s": rep["throughput"]["tokens_per_s"],
            "tokens": rep["throughput"]["tokens"], "requests_ok": rq["ok"], "elapsed_s": rep["throughput"]["elapsed_s"],
            "ttft_ms": rep.get("ttft"), "itl_ms": rep.get("itl"), "slot_counters": delta}


def main():
    a = parse()
    if not os.path.exists(LOADGEN):
        print("pool_churn: %s missing (make all)" % LOADGEN, file=sys.stderr)
        return 1
    os.environ["PEFTD_MODEL"] = os.path.abspath(a.model)
    sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
    import harness  # noqa: E402 (reads PEFTD_MODEL at import)

    adir, dirs = gen_adapters(a)
    tmp = tempfile.mkdtemp(prefix="pool-churn-")
    cfg = os.path.join(tmp, "peftd.json")
    with open(cfg, "w") as f:
        json.dump({"store": {"slots": a.slots}}, f)
    d = harness.Daemon(["--config", cfg] + a.extra_arg)
    try:
        names = ["pool-%04d" % i for i in range(a.adapters)]
        t0 = time.time()
        for name, sub in zip(names, dirs):
            st, obj = d.upload(name, os.path.join(adir, sub), timeout=120)
            if st not in (200, 201):
                raise RuntimeError("upload %s: %d %s" % (name, st, obj))
        upload_s = time.time() - t0
        print("pool_churn: %d adapters (rank %d on %s) uploaded in %.1f s; %d slots" % (
            a.adapters, a.rank, a.targets, upload_s, a.slots))
        sys.stdout.flush()
        loadgen(a, d, names[:a.hot], "warmup", tmp)  # every hot adapter resident, the engine warm
        hot = loadgen(a, d, names[:a.hot], "hot", tmp)
        churn = loadgen(a, d, names, "churn", tmp)
        ratio = churn["tokens_per_s"] / hot["tokens_per_s"]
        res = {"bench": "pool_churn", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "model": a.model, "backend": os.environ.get("PEFTD_BACKEND", "auto"), "slots": a.slots,
               "rank": a.rank, "targets": a.targets, "clients": a.clients, "max_tokens": a.max_tokens,
               "duration_s": a.duration, "upload_s": round(upload_s, 2), "hot": hot, "churn": churn,
               "ratio_churn_vs_hot": round(ratio, 4), "target": 0.8, "met": ratio >= 0.8}
        print("pool_churn: hot (%d adapters) %.1f tok/s, slot misses %s; churn (%d adapters) %.1f tok/s, "
              "slot misses %s, evictions %s: ratio %.3f (target >= 0.8)" % (
                  a.hot, hot["tokens_per_s"], hot["slot_counters"]["misses"], a.adapters, churn["tokens_per_s"],
                  churn["slot_counters"]["misses"], churn["slot_counters"]["evictions"], ratio))
        if a.out:
            with open(a.out, "w") as f:
                json.dump(res, f, indent=1)
        return 0
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        print("pool_churn: FAILED: %s\n--- daemon log ---\n%s" % (e, d.log_text()), file=sys.stderr)
        return 1
    finally:
        d.close()
        subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    sys.exit(main())
