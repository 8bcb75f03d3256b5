#!/usr/bin/env python3
"""bench/peers/race.py — peftd vs llama.cpp's llama-server on the same weights (driven by
race.sh, which builds, converts and passes the paths).

For one model: starts both servers (same thread count, both holding the same 32 LoRAs),
warms them, then runs ROUNDS interleaved rounds; in each round every test runs on both
servers back to back (the order flips every round) with race_client.py:
  a  single stream, base, TOKENS_A tokens: decode tok/s (prefill excluded)
  b  32 concurrent streams, base, TOKENS_B tokens each: aggregate tok/s (prefill included;
     the decode-only rate too)
  c  32 concurrent streams, each on a different LoRA (peftd `adapter`, llama-server's
     per-request `lora` list), TOKENS_C tokens each: aggregate tok/s (likewise)
(race_client.py says how each number is timed.)
and llama-bench (tg TOKENS_A, no prompt, same threads) as a cross-check of a.
Around the rounds: peftd's bench_decode (streaming-read bandwidth of this machine and the
bytes a decode step reads) before and after; the roofline ratio of a is
tok/s x bytes_per_token / best read bandwidth, for both servers (same weights, same bytes).
CPU accounting per test: busy cores of the whole machine (/proc/stat) and of the server
under test (/proc/PID/stat) over the test's wall time; the difference is the client plus
every other process on the machine, so a reader can see how loaded it was.
Best-of (max) and median per test, and the ratio of each round (its two runs back to back see
the same state of a shared machine, so their median is the steadiest of the three); one JSON
object on stdout.
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENT = os.path.join(HERE, "race_client.py")
HZ = os.sysconf("SC_CLK_TCK")


def env(name, default):
    return type(default)(os.environ.get(name, default))


def proc_cpu(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12]) + int(parts[13]) + int(parts[14])) / HZ
    except OSError:
        return 0.0


def sys_busy():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return (sum(v[:8]) - idle) / HZ


def rss_mb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def wait_health(url, proc, name, timeout=600):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            sys.exit(f"race: {name} exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return time.time() - t0
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.2)
    sys.exit(f"race: {name} not ready after {timeout} s")


PROMPT_LEN = 8  # tokens of every prompt (cfg "prompt_len", RACE_PROMPT_LEN)


def run_client(server, url, streams, tokens, adapters, salt):
    cmd = [sys.executable, CLIENT, "--url", url, "--server", server, "--streams", str(streams),
           "--tokens", str(tokens), "--adapters", str(adapters), "--salt", str(salt),
           "--prompt-len", str(PROMPT_LEN)]
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        sys.exit(f"race: client failed: {p.stderr[-2000:]}")
    return json.loads(p.stdout)


def main():
    global PROMPT_LEN
    cfg = json.loads(sys.argv[1])
    PROMPT_LEN = int(cfg.get("prompt_len") or 8)
    threads, rounds = cfg["threads"], cfg["rounds"]
    n_ad = cfg["n_adapters"]
    tok_a, tok_b, tok_c = cfg["tokens_a"], cfg["tokens_b"], cfg["tokens_c"]
    tests = cfg.get("tests", ["a", "b", "c"])
    store = tempfile.mkdtemp(prefix="race-store-")
    # "llama" runs with the same thread count as peftd; "llama_t1" (optional) with one
    # thread: on a loaded machine llama.cpp's 2-thread barriers stall (see bench/README.md).
    names = ["peftd", "llama"] + (["llama_t1"] if cfg.get("llama_t1") else [])
    kind = {"peftd": "peftd", "llama": "llama", "llama_t1": "llama"}
    logs = {n: open(os.path.join(store, f"{n}.log"), "w") for n in names}
    loras = sorted(os.listdir(cfg["lora_hf"]))[:n_ad] if n_ad else []
    pcmd = [cfg["peftd"], "serve", "--model", cfg["model_peftd"], "--port", str(cfg["peftd_port"]),
            "--threads", str(threads), "--store", os.path.join(store, "store")]
    for name in loras:
        pcmd += ["--adapter", f"{name}={os.path.join(cfg['lora_hf'], name)}"]
    if cfg.get("no_mmap"):  # both read the weights into memory (RACE_NO_MMAP=1; llama.cpp: --load-mode none)
        pcmd += ["--no-mmap"]
    if cfg.get("kv_dtype"):  # RACE_KV_DTYPE=f16: peftd's KV cache as llama-server's default (f16)
        pcmd += ["--kv-dtype", cfg["kv_dtype"]]
    ctx = 32 * max(256, PROMPT_LEN + max(tok_a, tok_b, tok_c) + 8)
    def llama_cmd(port, t):
        c = [os.path.join(cfg["llama_bin"], "llama-server"), "-m", cfg["model_gguf"],
             "--host", "127.0.0.1", "--port", str(port), "-t", str(t), "-tb", str(t),
             "-c", str(ctx), "-np", "32", "--kv-unified", "-cram", "0", "--no-webui", "-ngl", "0"]
        if cfg.get("no_mmap"):  # this llama.cpp's spelling of --no-mmap
            c += ["--load-mode", "none"]
        if n_ad:
            for name in loras:
                c += ["--lora", os.path.join(cfg["lora_gguf"], name + ".gguf")]
            c += ["--lora-init-without-apply"]
        return c
    cmds = {"peftd": pcmd, "llama": llama_cmd(cfg["llama_port"], threads),
            "llama_t1": llama_cmd(cfg["llama_port"] + 1, 1)}
    urls = {"peftd": cfg["peftd_url"], "llama": f"http://127.0.0.1:{cfg['llama_port']}",
            "llama_t1": f"http://127.0.0.1:{cfg['llama_port'] + 1}"}
    lcmd = cmds["llama"]
    procs = {}
    out = {"model": cfg["name"], "threads": threads, "rounds": rounds,
           "tokens": {"a": tok_a, "b": tok_b, "c": tok_c}, "streams_bc": 32,
           "n_adapters": n_ad, "prompt_tokens": PROMPT_LEN, "no_mmap": bool(cfg.get("no_mmap")),
           "peftd_kv_dtype": cfg.get("kv_dtype") or "f32", "llama_kv_dtype": "f16 (llama-server's default)",
           "commands": {"peftd": " ".join(pcmd[:12]) + (f" --adapter lora-NNNN=... x{n_ad}" if n_ad else ""),
                        "llama": " ".join(lcmd[:24]) + (f" --lora ....gguf x{n_ad} --lora-init-without-apply" if n_ad else ""),
                        "llama_t1": "the same with -t 1 -tb 1" if "llama_t1" in names else None}}
    try:
        for n in names:
            procs[n] = subprocess.Popen(cmds[n], stdout=logs[n], stderr=subprocess.STDOUT)
            out[f"{n}_ready_s"] = wait_health(urls[n], procs[n], n)
        # Warm-up (not counted): three single streams (llama-server's first requests after
        # start-up run several times slower than later ones), and every adapter once.
        for s in names:
            for k in range(3):
                run_client(kind[s], urls[s], 1, 16, 0, 990 + k)
            if "c" in tests:
                run_client(kind[s], urls[s], 32, 2, n_ad, 998)
        shape = {"a": (1, tok_a, 0), "b": (32, tok_b, 0), "c": (32, tok_c, n_ad)}
        res = {t: {n: [] for n in names} for t in tests}
        res_bench = []
        for r in range(rounds):
            order = names if r % 2 == 0 else names[::-1]
            for t in tests:
                for s in order:
                    time.sleep(0.5)  # let the other server's threads go idle
                    st, sb = proc_cpu(procs[s].pid), sys_busy()
                    tw = time.time()
                    with open("/proc/loadavg") as f:
                        load1 = float(f.read().split()[0])
                    rec = run_client(kind[s], urls[s], *shape[t], salt=100 * r + ord(t))
                    rec["loadavg_1m_before"] = load1
                    wall = time.time() - tw
                    ours = proc_cpu(procs[s].pid) - st
                    busy = sys_busy() - sb
                    # machine_busy_cores - server_cores = the client + everybody else
                    rec["server_cpu_s"] = round(ours, 3)
                    rec["machine_busy_cores"] = round(busy / wall, 3)
                    rec["server_cores"] = round(ours / wall, 3)
                    rec["rss_mb"] = rss_mb(procs[s].pid)
                    rec["round"] = r
                    if not rec["ok"]:
                        sys.exit(f"race: {s} test {t} failed: {rec['errors']}")
                    res[t][s].append(rec)
                    if cfg.get("partial"):  # what a killed run leaves behind
                        with open(cfg["partial"], "w") as f:
                            json.dump(res, f)
                    key = "decode_tok_s" if t == "a" else "agg_tok_s"
                    print(f"race: {cfg['name']} round {r} {t} {s}: {rec[key]:.2f} tok/s "
                          f"(machine busy {rec['machine_busy_cores']:.2f} cores, server "
                          f"{rec['server_cores']:.2f})", file=sys.stderr)
            if cfg.get("llama_bench") and "a" in tests:
                b = subprocess.run([os.path.join(cfg["llama_bin"], "llama-bench"), "-m",
                                    cfg["model_gguf"], "-t", str(threads), "-p", "0", "-n",
                                    str(tok_a), "-r", "1", "-o", "json"]
                                   + (["-d", str(PROMPT_LEN)] if PROMPT_LEN > 8 else [])
                                   + (["-lm", "none"] if cfg.get("no_mmap") else []),
                                   capture_output=True, text=True, check=False)
                try:
                    j = json.loads(b.stdout)[0]
                    res_bench.append(j["avg_ts"])
                    print(f"race: {cfg['name']} round {r} llama-bench tg{tok_a}: {j['avg_ts']:.2f} tok/s",
                          file=sys.stderr)
                except Exception:  # noqa: BLE001
                    print(f"race: llama-bench failed: {b.stderr[-1000:]}", file=sys.stderr)
        summary = {}
        for t in tests:
            key = "decode_tok_s" if t == "a" else "agg_tok_s"
            row = {}
            for s in names:
                v = [x[key] for x in res[t][s]]
                row[s] = {"best": max(v), "median": statistics.median(v), "all": v,
                          "machine_busy_cores": [x["machine_busy_cores"] for x in res[t][s]],
                          "server_cores": [x["server_cores"] for x in res[t][s]],
                          "rss_mb": max(x["rss_mb"] or 0 for x in res[t][s]),
                          "loadavg_1m": [x["loadavg_1m_before"] for x in res[t][s]]}
                if t != "a":
                    d = [x["decode_tok_s"] for x in res[t][s] if x["decode_tok_s"]]
                    row[s]["decode_tok_s_best"] = max(d) if d else None
                    row[s]["decode_tok_s_median"] = statistics.median(d) if d else None
            row["ratio_best"] = row["peftd"]["best"] / row["llama"]["best"]
            row["ratio_median"] = row["peftd"]["median"] / row["llama"]["median"]
            # round i ran both servers back to back: its ratio sees the same state of a shared
            # machine, where best-of and median each can be one lucky or unlucky round
            row["ratio_rounds"] = [p / l for p, l in zip(row["peftd"]["all"], row["llama"]["all"]) if l > 0]
            row["ratio_rounds_median"] = statistics.median(row["ratio_rounds"]) if row["ratio_rounds"] else None
            if "llama_t1" in names:
                best_l = max(row["llama"]["best"], row["llama_t1"]["best"])
                row["ratio_best_vs_llama_best_config"] = row["peftd"]["best"] / best_l
            summary[t] = row
        if res_bench:
            summary["a_llama_bench_tok_s"] = {"best": max(res_bench), "all": res_bench}
        out["results"] = summary
        out["raw"] = res
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        for f in logs.values():
            f.close()
        keep = cfg.get("keep_logs")
        if keep:
            os.makedirs(keep, exist_ok=True)
            for n in names:
                shutil.copy(os.path.join(store, f"{n}.log"), os.path.join(keep, f"{cfg['name']}-{n}.log"))
        shutil.rmtree(store, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
