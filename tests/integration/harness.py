"""tests/integration/harness.py — the integration-test harness (Python standard library only).

Starts the real daemon (`$PEFTD_BIN serve`, default build/peftd) on a free loopback port,
waits for /health, keeps its stderr in a temporary log that is printed when a test fails,
and stops it at the end. Tests register with @test; run_tests(__file__) runs them, prints
"  ok name" / "  FAIL name" / "  skip name (why)" and closes with the line
"<file>: N passed, N failed, N skipped" that tests/run_tests.sh adds up. Exit status 1 when
anything failed.
"""

import http.client
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("PEFTD_BIN", os.path.join(ROOT, "build", "peftd"))
if not os.path.isabs(BIN):
    BIN = os.path.join(ROOT, BIN)
MODEL_DIR = os.environ.get("PEFTD_MODEL", os.path.join(ROOT, "models", "stories260K"))
MODEL_ID = os.path.basename(os.path.normpath(MODEL_DIR))
# Sanitizer builds run several times slower: stretch every wait.
SLOW = 4.0 if os.environ.get("PEFTD_SANITIZED") else 1.0


class Skip(Exception):
    """Raised by a test (via skip()) that cannot run here."""


def skip(why):
    raise Skip(why)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """One `peftd serve` process on 127.0.0.1:<free port>."""

    def __init__(self, extra_args=(), env=None, store=None, preexec_fn=None, port=None):
        """store: the adapter store directory; default a fresh temporary one per daemon
        (removed by close()), so tests never share or leave state. preexec_fn: run in the
        child before the daemon starts (e.g. resource.setrlimit for the daemon alone).
        port: a fixed port (a daemon restarted where its clients expect it); default a
        free one."""
        self.port = port or free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="peftd-", suffix=".log", delete=False)
        self.own_store = None
        if store is None and "--store" not in extra_args:
            store = self.own_store = tempfile.mkdtemp(prefix="peftd-store-")
        self.store = store
        args = [BIN, "serve", "--model", MODEL_DIR, "--host", "127.0.0.1", "--port", str(self.port)]
        if store is not None:
            args += ["--store", store]
        args += list(extra_args)
        self.proc = subprocess.Popen(args, cwd=ROOT, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, **(env or {})), preexec_fn=preexec_fn)
        deadline = time.time() + 60 * SLOW
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("peftd exited with status %d during startup:\n%s"
                                   % (self.proc.returncode, self.log_text()))
            try:
                st, _, _ = self.request("GET", "/health", timeout=2)
                if st == 200:
                    return
            except OSError:
                pass
            if time.time() > deadline:
                self.stop()
                raise RuntimeError("peftd did not answer /health within %ds:\n%s"
                                   % (60 * SLOW, self.log_text()))
            time.sleep(0.05)

    def log_text(self, tail=80):
        try:
            with open(self.log.name, "r", errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-tail:])

    def alive(self):
        return self.proc.poll() is None

    def wait_log(self, pattern, count=1, timeout=60):
        """Waits until the daemon's log has count lines matching pattern; returns the matches."""
        deadline = time.time() + timeout * SLOW
        while True:
            with open(self.log.name, "r", errors="replace") as f:
                found = re.findall(pattern, f.read())
            if len(found) >= count:
                return found
            if not self.alive():
                raise AssertionError("the daemon died:\n" + self.log_text())
            if time.time() > deadline:
                raise AssertionError("%d of %d log lines /%s/ after %ss:\n%s"
                                     % (len(found), count, pattern, timeout, self.log_text()))
            time.sleep(0.05)

    def stop(self, sig=signal.SIGTERM, timeout=None):
        """Signals the daemon and waits; returns its exit status (killed after timeout)."""
        timeout = timeout or 15 * SLOW
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def close(self):
        self.stop()
        try:
            os.unlink(self.log.name)
        except OSError:
            pass
        if self.own_store:
            shutil.rmtree(self.own_store, ignore_errors=True)

    # ---- HTTP helpers ----

    def conn(self, timeout=60):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout * SLOW)

    def request(self, method, path, body=None, headers=None, timeout=60):
        """Returns (status, headers dict (lower-case names), body bytes)."""
        c = self.conn(timeout)
        try:
            if isinstance(body, (dict, list)):
                body = json.dumps(body).encode()
            elif isinstance(body, str):
                body = body.encode()
            hdrs = {"Content-Type": "application/json"} if body is not None else {}
            hdrs.update(headers or {})
            c.request(method, path, body=body, headers=hdrs)
            r = c.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            c.close()

    def post(self, path, obj, timeout=120):
        """POSTs JSON; returns (status, decoded JSON body)."""
        st, _, data = self.request("POST", path, obj, timeout=timeout)
        try:
            return st, json.loads(data)
        except ValueError:
            raise AssertionError("status %d, body is not JSON: %r" % (st, data[:300]))

    def complete(self, timeout=120, **payload):
        """A non-streaming /v1/completions that must succeed; returns the response object."""
        payload.setdefault("model", MODEL_ID)
        st, obj = self.post("/v1/completions", payload, timeout)
        assert st == 200, "status %d: %s" % (st, obj)
        return obj

    def stream(self, timeout=120, **payload):
        """A streaming /v1/completions; returns (chunks as objects, saw [DONE], raw text)."""
        payload.setdefault("model", MODEL_ID)
        payload["stream"] = True
        c = self.conn(timeout)
        try:
            c.request("POST", "/v1/completions", body=json.dumps(payload).encode(),
                      headers={"Content-Type": "application/json"})
            r = c.getresponse()
            raw = r.read().decode()
            assert r.status == 200, "status %d: %s" % (r.status, raw[:300])
            ctype = r.getheader("Content-Type", "")
            assert ctype.startswith("text/event-stream"), ctype
        finally:
            c.close()
        return parse_sse(raw) + (raw,)

    def upload(self, name, adapter_dir, headers=None, timeout=60):
        """PUT /v1/adapters/{name} with the directory's save_pretrained files as one
        multipart/form-data body. Returns (status, decoded JSON body or None)."""
        boundary = "peftdharness%016x" % int.from_bytes(os.urandom(8), "little")
        parts = []
        for n in sorted(os.listdir(adapter_dir)):
            if n not in ("adapter_config.json", "adapter_model.safetensors", "adapter.safetensors"):
                continue  # reference.json and the like are the tests' own files
            with open(os.path.join(adapter_dir, n), "rb") as f:
                data = f.read()
            parts.append(("--%s\r\nContent-Disposition: form-data; name=\"file\"; filename=\"%s\"\r\n"
                          "Content-Type: application/octet-stream\r\n\r\n" % (boundary, n)).encode()
                         + data + b"\r\n")
        body = b"".join(parts) + ("--%s--\r\n" % boundary).encode()
        hdrs = {"Content-Type": "multipart/form-data; boundary=" + boundary}
        hdrs.update(headers or {})
        st, _, data = self.request("PUT", "/v1/adapters/" + name, body, hdrs, timeout)
        return st, json.loads(data) if data else None

    def metrics(self):
        """The unlabelled samples of /metrics as {name: float}."""
        st, _, data = self.request("GET", "/metrics")
        assert st == 200, st
        out = {}
        for line in data.decode().splitlines():
            if not line or line.startswith("#") or "{" in line:
                continue
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
        return out

    def wait_idle(self, timeout=10):
        """Waits until no request runs or waits and no KV block is used; returns metrics."""
        deadline = time.time() + timeout * SLOW
        while True:
            m = self.metrics()
            if (m.get("peftd_running_requests") == 0 and m.get("peftd_waiting_requests") == 0
                    and m.get("peftd_kv_blocks_used") == 0):
                return m
            if time.time() > deadline:
                raise AssertionError("engine not idle after %ss: %s" % (timeout, m))
            time.sleep(0.05)


def parse_sse(raw):
    """Splits an SSE body into (list of JSON chunks, whether 'data: [DONE]' ended it)."""
    chunks, done = [], False
    for event in raw.split("\n\n"):
        if not event.strip():
            continue
        assert event.startswith("data: "), "bad SSE event %r" % event[:200]
        assert not done, "data after [DONE]"
        payload = event[len("data: "):]
        if payload == "[DONE]":
            done = True
        else:
            chunks.append(json.loads(payload))
    return chunks, done


def assert_error(st, obj, status, code=None):
    """An OpenAI-style error: the status, and {"error":{"message","type","code"}}."""
    assert st == status, "expected %d, got %d: %s" % (status, st, obj)
    assert isinstance(obj, dict) and isinstance(obj.get("error"), dict), obj
    err = obj["error"]
    assert isinstance(err.get("message"), str) and err["message"], obj
    assert isinstance(err.get("type"), str), obj
    assert "code" in err, obj
    if code is not None:
        assert err["code"] == code, "expected code %r: %s" % (code, obj)


# ---- test data ----

def write_safetensors(path, tensors):
    """tensors: {name: (shape, list of floats)} -> an F32 safetensors file."""
    header, blobs, off = {}, [], 0
    for name, (shape, vals) in sorted(tensors.items()):
        b = struct.pack("<%df" % len(vals), *vals)
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


# ---- the test registry ----

_tests = []
daemon = None  # the shared daemon, started by run_tests()


def test(fn):
    _tests.append(fn)
    return fn


def run_tests(file):
    global daemon
    name = os.path.basename(file)
    passed = failed = skipped = 0
    only = set(sys.argv[1:])
    tests = [t for t in _tests if not only or t.__name__ in only]
    unknown = only - {t.__name__ for t in _tests}
    if unknown:  # a filter that runs nothing (or less than asked) must not look like success
        print("%s: no test named %s" % (name, ", ".join(sorted(unknown))))
        print("%s: 0 passed, %d failed, 0 skipped" % (name, len(unknown)))
        sys.stdout.flush()
        sys.exit(1)
    try:
        if not os.access(BIN, os.X_OK):
            raise RuntimeError("daemon binary %s not found (build it, or set PEFTD_BIN)" % BIN)
        daemon = Daemon()
    except Exception:
        traceback.print_exc()
        for t in tests:
            print("  FAIL %s (daemon did not start)" % t.__name__)
        print("%s: 0 passed, %d failed, 0 skipped" % (name, len(tests)))
        sys.stdout.flush()
        sys.exit(1)
    try:
        for t in tests:
            t0 = time.time()
            try:
                if not daemon.alive():
                    raise RuntimeError("the shared daemon died (status %s):\n%s"
                                       % (daemon.proc.returncode, daemon.log_text()))
                t()
                passed += 1
                print("  ok %s (%.2fs)" % (t.__name__, time.time() - t0))
            except Skip as e:
                skipped += 1
                print("  skip %s (%s)" % (t.__name__, e))
            except Exception:
                failed += 1
                print("  FAIL %s" % t.__name__)
                traceback.print_exc(file=sys.stdout)
                print("  --- daemon log (tail) ---")
                print(daemon.log_text())
                print("  ---")
            sys.stdout.flush()
    finally:
        status = daemon.stop()
        if status != 0 and failed == 0:
            failed += 1
            print("  FAIL shutdown (daemon exited with status %s)" % status)
            print(daemon.log_text())
        daemon.close()
    print("%s: %d passed, %d failed, %d skipped" % (name, passed, failed, skipped))
    sys.stdout.flush()
    sys.exit(1 if failed else 0)
