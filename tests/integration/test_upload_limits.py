"""tests/integration/test_upload_limits.py — adapter uploads must not take the daemon's
serving capacity (issue 9 defects 10 and 6).

Defect 10, descriptors: an upload being received holds two descriptors (its socket and its
staging file) while the connection limit assumed one; with uploads held open the daemon ran
out of descriptors and a normal completion got no answer. The daemon runs here under
RLIMIT_NOFILE 256 (soft and hard, set in the child alone), far more uploads than its upload
limit are held open (headers and the start of a multipart body, then nothing), and a
completion must still be answered while the excess uploads get 503 with Retry-After.

Defect 6, imports off the HTTP threads: the import of a finished upload (parse, validate,
convert, serialise, LMDB put) ran on the libmicrohttpd thread that received the body, so
/health and completions sharing that thread waited for it. With one HTTP thread and every
import slowed by the test hook PEFTD_DEBUG_IMPORT_DELAY_MS, /health and a completion must be
answered before the uploads in flight. Orders are asserted, never tight timings: deadlines
are generous (loaded CI), and the imports in flight are known from the daemon's log.
"""

import json
import os
import random
import re
import resource
import select
import shutil
import socket
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import test  # noqa: E402

SLOW = harness.SLOW
FIXTURE = os.path.join(harness.ROOT, "tests", "fixtures", "adapters", "lora_r1_all")
TMP = tempfile.mkdtemp(prefix="peftd-upload-limits-")

# The test process holds every upload socket itself: raise its own soft limit (its hard
# limit is left alone; the daemon gets its own small one through preexec_fn).
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if _hard == resource.RLIM_INFINITY or _hard >= 4096:
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(_soft, 4096), _hard))


def write_config(obj):
    p = os.path.join(TMP, "cfg-%d.json" % random.getrandbits(32))
    base = {"model": harness.MODEL_DIR}
    base.update(obj)
    with open(p, "w") as f:
        json.dump(base, f)
    return p


def wait_log(d, pattern, count=1, timeout=60):
    """Waits until the daemon's log has count lines matching pattern; returns the matches."""
    return d.wait_log(pattern, count, timeout)


BOUNDARY = "peftdheld0123456789"


def held_upload(port, name):
    """Connects and sends a PUT's headers and the start of a multipart body that declares
    far more bytes: the server holds the upload open (its staging file included) waiting
    for the rest. Returns the socket."""
    part = ("--%s\r\nContent-Disposition: form-data; name=\"file\"; filename=\"adapter_config.json\"\r\n"
            "Content-Type: application/json\r\n\r\n{\"peft_type\": \"LORA\"," % BOUNDARY).encode() + b" " * 4096
    head = ("PUT /v1/adapters/%s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: multipart/form-data; boundary=%s\r\nContent-Length: 1000000\r\n\r\n"
            % (name, BOUNDARY)).encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=60 * SLOW)
    s.sendall(head + part)
    return s


def read_answer(s, timeout):
    """The status line and headers of an answer on s (b"" when the server closed without
    one), reading until the end of the headers."""
    s.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            break
        if not chunk:
            break
        data += chunk
    return data


@test
def held_uploads_leave_descriptors_for_completions():
    """150 uploads held open under RLIMIT_NOFILE 256: before the fix the daemon sized
    its connection limit (128) for one descriptor each, the staging files took the rest,
    and the completion was never answered (it waited behind the connection limit with
    the descriptors gone; the idle timeout is raised here so nothing times them out).
    Now the upload limit is sized with the connections: the excess uploads get 503 +
    Retry-After at once and the completion gets 200; once the held ones are closed,
    uploads are served again."""
    cfg = write_config({"http": {"threads": 2, "timeout_s": 600}})
    d = harness.Daemon(["--config", cfg],
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256)))
    held = []
    try:
        n = 150
        socks = [held_upload(d.port, "held%d" % i) for i in range(n)]
        t0 = time.time()
        out = d.complete(prompt="Once upon a time", max_tokens=4, temperature=0, timeout=60)
        took = time.time() - t0
        assert out["usage"]["completion_tokens"] >= 1, out
        st, _, _ = d.request("GET", "/health", timeout=60)
        assert st == 200, st
        limits = wait_log(d, r"max_connections (\d+), max_uploads (\d+)")
        max_conns, max_uploads = int(limits[0][0]), int(limits[0][1])
        print("    RLIMIT_NOFILE 256: max_connections %d, max_uploads %d; completion answered in %.2f s "
              "with %d uploads held" % (max_conns, max_uploads, took, n))
        assert max_uploads < n and max_conns + max_uploads <= 256, (max_conns, max_uploads)
        # every upload beyond the limit is answered 503 + Retry-After (progress: one
        # answer at a time, within a generous deadline); the others are held
        answered, deadline = {}, time.time() + 60 * SLOW
        pending = list(socks)
        while len(answered) < n - max_uploads and time.time() < deadline:
            ready, _, _ = select.select(pending, [], [], 1.0)
            for s in ready:
                answered[s] = read_answer(s, 10 * SLOW)
                pending.remove(s)
        assert len(answered) == n - max_uploads, "%d answers, expected %d" % (len(answered), n - max_uploads)
        for a in answered.values():
            assert a.startswith(b"HTTP/1.1 503"), a[:200]
            assert b"\r\nretry-after: " in a.lower(), a[:400]
        held = pending
        # the held ones are really held: no answer, not closed
        ready, _, _ = select.select(held, [], [], 0.5)
        assert not ready, "%d held uploads were answered or closed" % len(ready)
        for s in answered:
            s.close()
        for s in held:
            s.close()
        held = []
        # the daemon notices the closes; uploads work again (503 until it has)
        deadline = time.time() + 60 * SLOW
        while True:
            st, obj = d.upload("after", FIXTURE)
            if st != 503 or time.time() > deadline:
                break
            time.sleep(0.2)
        assert st == 201, (st, obj)
        # and every held upload's staging directory goes with its connection
        staging, deadline = os.path.join(d.store, "tmp"), time.time() + 60 * SLOW
        while True:
            left = [x for x in os.listdir(staging) if x.startswith("upload-")]
            if not left or time.time() > deadline:
                break
            time.sleep(0.2)
        assert left == [], "%d staging directories left" % len(left)
    finally:
        for s in held:
            s.close()
        assert d.stop() == 0, d.log_text()
        d.close()


@test
def explicit_limits_that_do_not_fit_refuse_to_start():
    """http.max_connections + http.max_uploads beyond what RLIMIT_NOFILE leaves after the
    reserve: the daemon refuses to start and says why (it used to accept any number)."""
    cfg = write_config({"http": {"max_connections": 200, "max_uploads": 50}})
    try:
        d = harness.Daemon(["--config", cfg],
                           preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256)))
    except RuntimeError as e:
        assert "RLIMIT_NOFILE 256" in str(e) and "http.max_uploads" in str(e), str(e)[-2000:]
        return
    d.close()
    raise AssertionError("the daemon started with 200 connections + 50 uploads under 256 descriptors")


class Timed(threading.Thread):
    """Runs fn in a thread; .result and .done_at (time.monotonic()) once finished."""

    def __init__(self, fn):
        super().__init__(daemon=True)
        self.fn, self.result, self.error, self.done_at = fn, None, None, None

    def run(self):
        try:
            self.result = self.fn()
        except Exception as e:  # reported by the test
            self.error = e
        self.done_at = time.monotonic()

    def wait(self, timeout):
        self.join(timeout * SLOW)
        assert not self.is_alive(), "no answer within %ss" % timeout
        if self.error:
            raise self.error
        return self.result


@test
def imports_run_off_the_http_thread():
    """One HTTP thread, every import slowed by 5 s (test hook): with two uploads being
    imported, /health and a short completion are answered first (before the fix they
    waited behind both imports on the one HTTP thread), then both uploads get 201."""
    cfg = write_config({"http": {"threads": 1}})
    d = harness.Daemon(["--config", cfg], env={"PEFTD_DEBUG_IMPORT_DELAY_MS": "5000"})
    try:
        ups = [Timed(lambda i=i: d.upload("slow%d" % i, FIXTURE, timeout=120)) for i in range(2)]
        for u in ups:
            u.start()
        wait_log(d, r"upload slow\d: \d+ bytes received, importing", count=2)
        health = Timed(lambda: d.request("GET", "/health", timeout=120)[0])
        comp = Timed(lambda: d.complete(prompt="Once upon a time", max_tokens=4, temperature=0, timeout=120))
        health.start()
        comp.start()
        assert health.wait(120) == 200
        assert comp.wait(120)["usage"]["completion_tokens"] >= 1
        for u in ups:
            st, obj = u.wait(120)
            assert st == 201, (st, obj)
        first_upload = min(u.done_at for u in ups)
        assert health.done_at < first_upload, "/health answered %.2f s after an upload" % (
            health.done_at - first_upload)
        assert comp.done_at < first_upload, "the completion answered %.2f s after an upload" % (
            comp.done_at - first_upload)
        print("    /health %.2f s and the completion %.2f s before the first upload's answer"
              % (first_upload - health.done_at, first_upload - comp.done_at))
        for i in range(2):
            st, _, body = d.request("GET", "/v1/adapters/slow%d" % i)
            assert st == 200, (st, body[:200])
    finally:
        assert d.stop() == 0, d.log_text()
        d.close()


@test
def import_queue_full_answers_503():
    """One import thread, a queue of one: with one import running and one waiting, a
    third finished upload gets 503 at once; the two others get 201. (The test hook holds
    the running import 10 s: the third upload is sent long before it ends.)"""
    cfg = write_config({"http": {"threads": 1, "import_threads": 1, "import_queue": 1}})
    d = harness.Daemon(["--config", cfg], env={"PEFTD_DEBUG_IMPORT_DELAY_MS": "10000"})
    try:
        ups = [Timed(lambda i=i: d.upload("q%d" % i, FIXTURE, timeout=120)) for i in range(2)]
        ups[0].start()
        wait_log(d, r"a job starts: waiting")  # q0 runs (taken off the queue)
        ups[1].start()
        wait_log(d, r"upload q\d: \d+ bytes received, importing", count=2)  # q1 waits in the queue
        st, obj = d.upload("q2", FIXTURE, timeout=120)
        harness.assert_error(st, obj, 503, "overloaded")
        for u in ups:
            st, obj = u.wait(120)
            assert st == 201, (st, obj)
    finally:
        assert d.stop() == 0, d.log_text()
        d.close()


@test
def sigterm_during_import_exits_0():
    """SIGTERM while an import waits (test hook, 10 minutes): the import is abandoned,
    the client gets 503 (or a closed connection), the staging directory is removed and
    the daemon exits 0 promptly."""
    d = harness.Daemon(env={"PEFTD_DEBUG_IMPORT_DELAY_MS": "600000"})
    try:
        up = Timed(lambda: d.upload("doomed", FIXTURE, timeout=120))
        up.start()
        wait_log(d, r"upload doomed: \d+ bytes received, importing")
        staging = os.path.join(d.store, "tmp")
        assert [x for x in os.listdir(staging) if x.startswith("upload-")], "no staging directory"
        assert d.stop(timeout=60) == 0, d.log_text()
        up.join(60 * SLOW)
        assert not up.is_alive()
        if up.error is None:
            st, obj = up.result
            harness.assert_error(st, obj, 503, "shutting_down")
        left = [x for x in os.listdir(staging) if x.startswith("upload-")]
        assert left == [], left
    finally:
        d.close()


if __name__ == "__main__":
    try:
        harness.run_tests(__file__)
    finally:
        shutil.rmtree(TMP, ignore_errors=True)
