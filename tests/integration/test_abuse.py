"""tests/integration/test_abuse.py — issue #5 acceptance line 6: hostile and broken clients
(slow-loris, 10,000 idle connections, a client that hangs up mid-stream, oversized
headers). Through all of it the daemon keeps answering normal requests promptly, and
afterwards it holds nothing for the dead clients: no running request, no KV block, and its
open file descriptors back near the baseline (/proc/<pid>/fd).

The tests share one daemon and run in order; the last one checks what is left."""

import json
import os
import resource
import socket
import threading
import time

import harness
from harness import test, skip

IDLE_CONNECTIONS = 10000
SLOW_LORIS = 50
# "Promptly": a normal 8-token completion takes milliseconds on the default model; a few
# seconds of slack covers a loaded CI machine without hiding a request stuck behind a
# connection limit (those wait for the 120 s idle timeout).
PROMPT_S = 5.0 * harness.SLOW
# The disconnect test needs a stream that is surely still generating when the client
# hangs up: 2 ms per engine step makes 300 tokens take >= 0.6 s (other tests' 8-token
# requests stay well under PROMPT_S).
os.environ["PEFTD_DEBUG_STEP_DELAY_US"] = "2000"

# Sockets for 10,000 idle connections here, and the daemon (started by the harness from
# this process) inherits the limit: raise the soft limit before it starts.
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
_want = IDLE_CONNECTIONS + 1024
if _hard == resource.RLIM_INFINITY or _hard >= _want:
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(_soft, _want), _hard))
else:
    resource.setrlimit(resource.RLIMIT_NOFILE, (_hard, _hard))
NOFILE = resource.getrlimit(resource.RLIMIT_NOFILE)[0]

baseline_fds = None


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def normal_request(d, what):
    """One short completion that must succeed within PROMPT_S; returns its duration."""
    t0 = time.time()
    st, obj = d.post("/v1/completions", {"model": harness.MODEL_ID, "prompt": "Once upon a time",
                                         "max_tokens": 8, "temperature": 0}, timeout=PROMPT_S)
    dt = time.time() - t0
    assert st == 200, "%s: status %d %s" % (what, st, obj)
    assert obj["usage"]["completion_tokens"] >= 1, obj
    assert dt < PROMPT_S, "%s: a normal request took %.2f s" % (what, dt)
    return dt


def normal_stream(d, what):
    t0 = time.time()
    chunks, done, _ = d.stream(timeout=PROMPT_S, prompt="The little dog", max_tokens=8, temperature=0)
    dt = time.time() - t0
    assert done and chunks, what
    assert dt < PROMPT_S, "%s: a normal stream took %.2f s" % (what, dt)
    return dt


@test
def baseline():
    global baseline_fds
    d = harness.daemon
    normal_request(d, "warm-up")
    d.wait_idle()
    baseline_fds = fd_count(d.proc.pid)
    print("  daemon fds at rest: %d; RLIMIT_NOFILE soft %d" % (baseline_fds, NOFILE))


@test
def slow_loris_does_not_block_others():
    """50 connections send a request's headers one byte per 100 ms; normal requests keep
    succeeding promptly meanwhile, and the slow ones are served or dropped, not leaked."""
    d = harness.daemon
    req = ("POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
           "X-Slow: " + "a" * 200 + "\r\n").encode()
    socks = []
    for _ in range(SLOW_LORIS):
        s = socket.create_connection(("127.0.0.1", d.port), timeout=5)
        s.setblocking(False)
        socks.append(s)
    stop = threading.Event()
    sent = [0]
    errors = []

    def dribble():
        i = 0
        while not stop.is_set() and i < len(req):
            for s in socks:
                try:
                    s.send(req[i:i + 1])
                except BlockingIOError:
                    pass
                except OSError as e:
                    errors.append(e)
            i += 1
            sent[0] = i
            time.sleep(0.1)

    th = threading.Thread(target=dribble, daemon=True)
    th.start()
    try:
        times = []
        t_end = time.time() + 8
        while time.time() < t_end:
            times.append(normal_request(d, "during slow-loris"))
            times.append(normal_stream(d, "during slow-loris"))
            time.sleep(0.2)
        n_open = fd_count(d.proc.pid) - baseline_fds
        print("  slow-loris: %d sockets at %d bytes each after %.0f s; %d normal requests, slowest %.3f s; "
              "daemon holds %d extra fds, dribble errors %d"
              % (SLOW_LORIS, sent[0], 8, len(times), max(times), n_open, len(errors)))
        assert n_open >= SLOW_LORIS - 5 or errors, "slow-loris sockets were not accepted"
    finally:
        stop.set()
        th.join()
        for s in socks:
            s.close()


@test
def ten_thousand_idle_connections():
    """10,000 TCP connections that send nothing: the daemon either holds them or refuses
    the excess cleanly, keeps serving normal requests, and gives every descriptor back
    when they close."""
    d = harness.daemon
    if NOFILE < IDLE_CONNECTIONS + 256:
        skip("RLIMIT_NOFILE hard limit %d is below %d connections" % (NOFILE, IDLE_CONNECTIONS))
    socks = []
    refused = 0
    t0 = time.time()
    try:
        for i in range(IDLE_CONNECTIONS):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            err = s.connect_ex(("127.0.0.1", d.port))
            socks.append(s)
            if i % 1000 == 999:  # the listen backlog drains as the daemon accepts
                time.sleep(0.05)
        t_open = time.time() - t0
        # Let the daemon accept (or refuse) what it will.
        time.sleep(1.0)
        held = fd_count(d.proc.pid) - baseline_fds
        times = [normal_request(d, "with %d idle connections" % IDLE_CONNECTIONS) for _ in range(5)]
        times += [normal_stream(d, "with %d idle connections" % IDLE_CONNECTIONS) for _ in range(5)]
        # Which of ours did the daemon close (refused the excess)? A closed one reads EOF
        # or a reset.
        closed = 0
        for s in socks:
            try:
                if s.recv(1) == b"":
                    closed += 1
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
        refused += closed
        print("  idle: %d connections opened in %.1f s; daemon holds %d extra fds, closed %d of ours; "
              "normal requests meanwhile: slowest %.3f s" % (len(socks), t_open, held, refused, max(times)))
        assert d.alive(), d.log_text()
    finally:
        for s in socks:
            s.close()
    # Every descriptor comes back once the clients are gone.
    deadline = time.time() + 20 * harness.SLOW
    while fd_count(d.proc.pid) > baseline_fds + 8 and time.time() < deadline:
        time.sleep(0.2)
    n = fd_count(d.proc.pid)
    assert n <= baseline_fds + 8, "daemon fds %d after the idle clients left (baseline %d)" % (n, baseline_fds)
    normal_request(d, "after the idle connections")


@test
def client_disconnects_mid_stream():
    """Streams that hang up after a few chunks: the engine cancels them and frees their KV
    blocks; the running gauge and the KV gauge go back to 0."""
    d = harness.daemon
    n = 16
    socks = []
    body = json.dumps({"model": harness.MODEL_ID, "prompt": "Once upon a time", "max_tokens": 300,
                       "temperature": 1.0, "stream": True}).encode()
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", d.port), timeout=10 * harness.SLOW)
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
        socks.append(s)
    # Read until each stream has produced at least two data events.
    for s in socks:
        got = b""
        while got.count(b"data: ") < 2:
            chunk = s.recv(4096)
            assert chunk, "stream ended early: %r" % got[:300]
            got += chunk
        assert got.startswith(b"HTTP/1.1 200"), got[:200]
    m = d.metrics()
    running_before = m.get("peftd_running_requests", 0) + m.get("peftd_waiting_requests", 0)
    kv_before = m.get("peftd_kv_blocks_used", 0)
    for s in socks:  # a hard hang-up (RST), as a killed client does
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
    t0 = time.time()
    m = d.wait_idle(timeout=10)
    print("  disconnect: %d streams hung up mid-way with %d requests and %d KV blocks live; idle after %.2f s"
          % (n, running_before, kv_before, time.time() - t0))
    assert running_before > 0, "the streams had finished before the hang-up: the test proves nothing"
    normal_stream(d, "after the hang-ups")


def raw_request(d, head, timeout=10):
    """Sends raw request bytes, returns (status or None if the connection was closed
    without an answer, response bytes)."""
    s = socket.create_connection(("127.0.0.1", d.port), timeout=timeout * harness.SLOW)
    data = b""
    try:
        try:
            s.sendall(head)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon answered and closed before reading it all
        try:
            while True:
                c = s.recv(65536)
                if not c:
                    break
                data += c
                if b"\r\n\r\n" in data and b"Connection: close" not in data and len(data) > 12:
                    # a keep-alive answer: the head is enough
                    break
        except (ConnectionResetError, socket.timeout):
            pass
    finally:
        s.close()
    if not data.startswith(b"HTTP/1."):
        return None, data
    return int(data.split(b" ", 2)[1]), data


@test
def oversized_headers_refused():
    """A 64 KiB header line and 1,000 headers: 431 (or 400), and the daemon keeps serving."""
    d = harness.daemon
    cases = [
        ("a 64 KiB header line", b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 65536 + b"\r\n\r\n"),
        ("1,000 headers", b"GET /health HTTP/1.1\r\nHost: x\r\n"
         + b"".join(b"X-H-%d: %s\r\n" % (i, b"v" * 20) for i in range(1000)) + b"\r\n"),
        ("a 64 KiB URL", b"GET /health?" + b"q" * 65536 + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
    ]
    for what, raw in cases:
        st, data = raw_request(d, raw)
        print("  %s: %s" % (what, st if st else "closed without an answer"))
        assert st in (400, 414, 431), "%s: %s %r" % (what, st, data[:200])
        normal_request(d, "after " + what)


@test
def nothing_left_behind():
    d = harness.daemon
    m = d.wait_idle(timeout=10)
    deadline = time.time() + 10 * harness.SLOW
    while fd_count(d.proc.pid) > baseline_fds + 4 and time.time() < deadline:
        time.sleep(0.2)
    n = fd_count(d.proc.pid)
    print("  after everything: running %d, waiting %d, kv blocks %d, fds %d (baseline %d)"
          % (m["peftd_running_requests"], m["peftd_waiting_requests"], m["peftd_kv_blocks_used"], n, baseline_fds))
    assert n <= baseline_fds + 4, (n, baseline_fds)
    normal_request(d, "at the end")
    normal_stream(d, "at the end")


if __name__ == "__main__":
    harness.run_tests(__file__)
