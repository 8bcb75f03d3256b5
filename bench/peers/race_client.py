#!/usr/bin/env python3
"""bench/peers/race_client.py — the one HTTP client both servers are raced with.

Stdlib only. Each request is a (non-streaming) OpenAI POST /v1/completions with the prompt as token
ids, greedy (temperature 0), ignore_eos and a fixed max_tokens, so both servers compute the
same number of forward steps whatever their tokenizers say. The adapter is named the way each
server takes it: peftd `"adapter": NAME`; llama-server `"lora": [{"id": I, "scale": 1.0}]` (its
per-request LoRA list, ids = the order of --lora at start-up, all loaded with scale 0).

Timing is end to end and non-streaming: the random-weight bench models generate ids beyond
the 512 pieces of their tokenizer, whose text is empty, and neither server streams a chunk
per empty-text token (peftd sends none until the end; llama-server holds back incomplete
UTF-8), so per-chunk timestamps would not be per-token. Instead every measurement is a pair
of runs of the same shape: a probe with max_tokens 1 (prefill + the first token) and the
real run with max_tokens T, prompts of the same length but different ids (no cached prefix):
  decode_tok_s      streams x (T - 1) / (wall(T) - wall(1)): steady decode, prefill excluded
                    (for 1 stream: the single-stream decode rate);
  agg_tok_s         streams x T / wall(T): everything the server delivers, prefill included.
wall = first send to last response received.

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


def body_for(args, i, tokens, salt):
    b = {"prompt": prompt_ids(i, salt, args.prompt_len), "max_tokens": tokens,
         "temperature": 0, "ignore_eos": True, "stream": False}
    if args.server == "llama":
        b["n_predict"] = tokens
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
        payload = resp.read()
        rec["t_done"] = time.perf_counter()
        if resp.status != 200:
            rec["error"] = payload[:300].decode("utf-8", "replace")
        else:
            ev = json.loads(payload)
            rec["n"] = ev.get("usage", {}).get("completion_tokens", 0)
            if ev.get("timings"):
                rec["server_timings"] = ev["timings"]
        conn.close()
    except Exception as e:  # noqa: BLE001 - reported, never hidden
        rec["error"] = repr(e)
    out[idx] = rec


def run_batch(args, tokens, salt):
    """All streams at once; returns (records, wall seconds, failed records)."""
    out = [None] * args.streams
    threads = [threading.Thread(target=one_request,
                                args=(args.url, body_for(args, i, tokens, salt), out, i, args.timeout))
               for i in range(args.streams)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errs = [r for r in out if r.get("error") or r["status"] != 200 or r["n"] != tokens]
    wall = max(r.get("t_done", t0) for r in out) - t0
    return out, wall, errs


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

    _, wall1, err1 = run_batch(args, 1, 2 * args.salt + 1)
    out, wall, err = run_batch(args, args.tokens, 2 * args.salt)
    errors = err1 + err
    res = {"server": args.server, "streams": args.streams, "tokens": args.tokens,
           "adapters": args.adapters, "ok": not errors,
           "errors": [{k: r.get(k) for k in ("i", "status", "n", "error")} for r in errors][:4]}
    if not errors:
        res["wall_s"] = wall
        res["probe_wall_s"] = wall1
        res["agg_tok_s"] = args.streams * args.tokens / wall
        res["decode_tok_s"] = (args.streams * (args.tokens - 1) / (wall - wall1)
                               if wall > wall1 else None)
        if "server_timings" in out[0]:
            res["server_timings_first"] = out[0]["server_timings"]
    print(json.dumps(res))


if __name__ == "__main__":
    main()
