"""tests/integration/test_batching.py — concurrency against the real daemon: batch
invariance (a greedy request gives the same text alone and inside a batch of 16 different
ones), client disconnect mid-stream (the engine cancels and frees the KV blocks), and
SIGTERM with a stream running (clean exit, status 0)."""

import json
import os
import socket
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import MODEL_ID, test  # noqa: E402

PROMPTS = [
    "Once upon a time", "The cat", "Lily and Tom went to the park", "One day, a little bird",
    "Tim had a red ball", "The sun was", "There was a big dog named Max", "Mom said",
    "In a small house", "The little girl", "Ben wanted to", "It was a rainy day",
    "Sue found a box", "The tree was tall", "Anna liked to sing", "A boy named",
]


def d():
    return harness.daemon


def greedy(prompt, daemon=None):
    daemon = daemon or d()
    obj = daemon.complete(prompt=prompt, max_tokens=48, temperature=0)
    return obj["choices"][0]["text"]


def run_concurrently(fn, args):
    results, errors = [None] * len(args), []

    def worker(i):
        try:
            results[i] = fn(args[i])
        except Exception as e:  # surfaced below with the index
            errors.append((i, repr(e)))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(args))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300 * harness.SLOW)
    assert not errors, errors
    return results


@test
def batch_invariance_16_prompts():
    alone = [greedy(p) for p in PROMPTS]
    together = run_concurrently(greedy, PROMPTS)
    for p, a, b in zip(PROMPTS, alone, together):
        assert a == b, "prompt %r\nalone    %r\nbatched  %r" % (p, a, b)
    # The same prompt 16 times at once: identical sequences in one batch.
    same = run_concurrently(greedy, [PROMPTS[0]] * 16)
    assert set(same) == {alone[0]}, same
    d().wait_idle()


@test
def concurrent_streams_match():
    ref = [greedy(p) for p in PROMPTS[:8]]

    def stream(p):
        chunks, done, _ = d().stream(prompt=p, max_tokens=48, temperature=0)
        assert done
        return "".join(c["choices"][0]["text"] for c in chunks if c["choices"])

    got = run_concurrently(stream, PROMPTS[:8])
    assert got == ref, (got, ref)


def open_stream(port, payload):
    """Starts a streaming completion on a raw socket; returns the socket after the
    response headers."""
    body = json.dumps(payload).encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=30 * harness.SLOW)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    return s


def read_events(s, n):
    """Reads until n SSE events arrived (or the stream ended); returns the raw bytes."""
    buf = b""
    while buf.count(b"data: ") < n:
        chunk = s.recv(4096)
        if not chunk:
            break
        buf += chunk
    return buf


@test
def client_disconnect_mid_stream_frees_everything():
    # Long generations (ignore_eos, most of the context) so the streams are still running
    # when the clients leave.
    payload = {"model": MODEL_ID, "prompt": "Once upon a time", "max_tokens": 480,
               "temperature": 1, "ignore_eos": True, "stream": True}
    socks = []
    for _ in range(4):
        s = open_stream(d().port, payload)
        head = read_events(s, 3)
        assert head.startswith(b"HTTP/1.1 200"), head[:200]
        socks.append(s)
    for i, s in enumerate(socks):
        # Half leave with a RST (SO_LINGER 0, like a killed client), half with a FIN.
        if i % 2 == 0:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    m = d().wait_idle(timeout=10)
    assert m["peftd_running_requests"] == 0 and m["peftd_kv_blocks_used"] == 0, m
    # Many open-and-drop clients in a row, then the daemon still answers.
    for _ in range(8):
        s = open_stream(d().port, payload)
        s.recv(1)
        s.close()
    d().wait_idle(timeout=10)
    assert greedy("Once upon a time") == greedy("Once upon a time")


@test
def disconnect_while_waiting_non_streaming():
    payload = dict(model=MODEL_ID, prompt="Once upon a time", max_tokens=480, temperature=1,
                   ignore_eos=True, n=4)
    body = json.dumps(payload).encode()
    before = d().metrics()["peftd_generated_tokens_total"]
    for _ in range(4):
        s = socket.create_connection(("127.0.0.1", d().port), timeout=30)
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        time.sleep(0.01)
        s.close()
    m = d().wait_idle(timeout=20)
    # 4 connections x n=4 x 480 tokens would be 7680 tokens if the hang-ups went unnoticed.
    generated = m["peftd_generated_tokens_total"] - before
    assert generated < 4 * 4 * 480 / 2, "cancelled requests kept generating: %d tokens" % generated
    assert m["peftd_kv_blocks_used"] == 0, m
    greedy("The cat")


@test
def sigterm_with_stream_running_exits_cleanly():
    own = harness.Daemon()
    try:
        payload = {"model": MODEL_ID, "prompt": "Once upon a time", "max_tokens": 480,
                   "temperature": 1, "ignore_eos": True, "stream": True, "n": 4}
        s = open_stream(own.port, payload)
        head = read_events(s, 2)
        assert head.startswith(b"HTTP/1.1 200"), head[:200]
        t0 = time.time()
        status = own.stop(timeout=10 * harness.SLOW)
        took = time.time() - t0
        assert status == 0, "exit status %s after SIGTERM:\n%s" % (status, own.log_text())
        assert took < 5 * harness.SLOW, "took %.1fs to exit" % took
        # The stream ended (the socket reaches EOF) rather than hanging.
        s.settimeout(5)
        rest = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                rest += chunk
        except (ConnectionResetError, socket.timeout):
            pass
        s.close()
        # Shutdown drains: the running stream still ends properly.
        assert b"data: [DONE]\n\n" in head + rest, (head + rest)[-300:]
    finally:
        own.close()


@test
def queue_full_is_503_with_retry_after():
    # One running sequence and one queue slot: a burst of long requests overflows.
    cfg = harness.tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
    json.dump({"engine": {"max_seqs": 1, "max_queue": 1}}, cfg)
    cfg.close()
    own = harness.Daemon(["--config", cfg.name])
    try:
        payload = dict(model=MODEL_ID, prompt="Once upon a time", max_tokens=480, temperature=0,
                       ignore_eos=True)

        def one(_):
            st, hdrs, body = own.request("POST", "/v1/completions", payload, timeout=120)
            return st, hdrs.get("retry-after"), json.loads(body)

        res = run_concurrently(one, list(range(12)))
        busy = [r for r in res if r[0] == 503]
        assert busy, [r[0] for r in res]
        for st, retry, obj in busy:
            harness.assert_error(st, obj, 503)
            assert retry is not None and int(retry) >= 1, retry
        assert all(r[0] in (200, 503) for r in res), [r[0] for r in res]
        assert any(r[0] == 200 for r in res), [r[0] for r in res]
        own.wait_idle()
    finally:
        own.close()
        os.unlink(cfg.name)


@test
def sigterm_idle_exits_cleanly():
    own = harness.Daemon()
    try:
        status = own.stop(timeout=10 * harness.SLOW)
        assert status == 0, "exit status %s:\n%s" % (status, own.log_text())
    finally:
        own.close()


if __name__ == "__main__":
    harness.run_tests(__file__)
