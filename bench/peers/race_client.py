#!/usr/bin/env python3
"""bench/peers/race_client.py — the one HTTP client both servers are raced with.

Stdlib only. Each request is a streaming OpenAI POST /v1/completions with the prompt as token
ids, greedy (temperature 0), ignore_eos and a fixed max_tokens, so both servers compute the
same number of forward steps whatever their tokenizers say. The adapter is named the way each
server takes it: peftd `"adapter": NAME`; llama-server `"lora": [{"id": I, "scale": 1.0}]` (its
per-request LoRA list, ids = the order of --lora at start-up, all loaded with scale 0).

Per request it records the send time, the first and the last streamed chunk and the token
count (the final `usage.completion_tokens`; both servers send it with
stream_options.include_usage). Measures:
  decode_tok_s (single stream)  (n - 1) / (t_last - t_first): steady decode, prefill excluded;
  agg_tok_s (N streams)         sum(n) / (last t_last - first send): what the server delivers;
  agg_decode_tok_s              sum(n - 1) / (last t_last - last t_first): the phase where all
                                streams have their first token (prefill excluded).

Usage: race_client.py --url URL --server peftd|llama --streams N --tokens T [--adapters K]
                      [--adapter-prefix lora-] [--salt S] [--prompt-len 8]
Prints one JSON object.
"""
import argparse
import http.client
import json
import threading
import time
import urllib.parse


def prompt_ids(i, salt, length):
    # BOS (1) then ids in the tokenizer's own range (3..511), distinct per stream and per
    # round (salt), so no server can reuse a cached prefix from an earlier request.
    return [1] + [3 + (97 * i + 31 * salt + 13 * k * k + 7 * k) % 509 for k in range(length - 1)]


def body_for(args, i):
    b = {"prompt": prompt_ids(i, args.salt, args.prompt_len), "max_tokens": args.tokens,
         "temperature": 0, "ignore_eos": True, "stream": True,
         "stream_options": {"include_usage": True}}
    if args.server == "llama":
        b["n_predict"] = args.tokens
        b["cache_prompt"] = False
    if args.adapters:
        a = i % args.adapters
        if args.server == "peftd":
            b["adapter"] = f"{args.adapter_prefix}{a:04d}"
        else:
            b["lora"] = [{"id": a, "scale": 1.0}]
    return b


def one_request(url, body, out, idx, timeout):
    u = urllib.parse.urlparse(url)
    rec = {"i": idx, "n": 0, "status": 0}
    try:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
        data = json.dumps(body).encode()
        rec["t_send"] = time.perf_counter()
        conn.request("POST", "/v1/completions", body=data,
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        rec["status"] = resp.status
        if resp.status != 200:
            rec["error"] = resp.read()[:300].decode("utf-8", "replace")
            out[idx] = rec
            return
        chunks = 0
        while True:
            line = resp.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                break
            now = time.perf_counter()
            ev = json.loads(payload)
            if ev.get("choices"):
                chunks += 1
                if "t_first" not in rec:
                    rec["t_first"] = now
                rec["t_last"] = now
            if ev.get("usage"):
                rec["n"] = ev["usage"].get("completion_tokens", 0)
            if ev.get("timings"):
                rec["server_timings"] = ev["timings"]
            if ev.get("error"):
                rec["error"] = str(ev["error"])[:300]
        rec["chunks"] = chunks
        conn.close()
    except Exception as e:  # noqa: BLE001 - reported, never hidden
        rec["error"] = repr(e)
    out[idx] = rec


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--server", choices=["peftd", "llama"], required=True)
    ap.add_argument("--streams", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--adapters", type=int, default=0)
    ap.add_argument("--adapter-prefix", default="lora-")
    ap.add_argument("--salt", type=int, default=0)
    ap.add_argument("--prompt-len", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=1800)
    args = ap.parse_args()

    out = [None] * args.streams
    threads = [threading.Thread(target=one_request,
                                args=(args.url, body_for(args, i), out, i, args.timeout))
               for i in range(args.streams)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [r for r in out if r.get("error") or r["status"] != 200 or r["n"] != args.tokens]
    res = {"server": args.server, "streams": args.streams, "tokens": args.tokens,
           "adapters": args.adapters, "ok": not errors,
           "errors": [{k: r.get(k) for k in ("i", "status", "n", "error")} for r in errors][:4]}
    if not errors:
        n = sum(r["n"] for r in out)
        res["wall_s"] = max(r["t_last"] for r in out) - t0
        res["agg_tok_s"] = n / res["wall_s"]
        last_first = max(r["t_first"] for r in out)
        span = max(r["t_last"] for r in out) - last_first
        res["agg_decode_tok_s"] = sum(r["n"] - 1 for r in out) / span if span > 0 else None
        res["ttft_s_max"] = max(r["t_first"] - r["t_send"] for r in out)
        if args.streams == 1:
            r = out[0]
            res["decode_tok_s"] = (r["n"] - 1) / (r["t_last"] - r["t_first"])
            res["ttft_s"] = r["t_first"] - r["t_send"]
            res["chunks"] = r["chunks"]
            if "server_timings" in r:
                res["server_timings"] = r["server_timings"]
    print(json.dumps(res))


if __name__ == "__main__":
    main()
