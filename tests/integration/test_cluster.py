"""tests/integration/test_cluster.py — one adapter catalogue across replicas: a primary and
3 followers (`--follow URL`, server/replication/) on loopback ports.

  fifty_uploads_reach_every_follower   50 uploads to the primary: every follower lists each
                                        at the primary's version and answers it with the
                                        primary's exact greedy text
  hot_swap_reaches_followers            16 streams on v1 (spread over the replicas) while v2
                                        is uploaded: all finish with v1's exact text, then
                                        every replica answers v2
  killed_follower_catches_up            kill -9 a follower during uploads, restart it on its
                                        store: caught up, no missing or partial adapter
  primary_down_followers_keep_serving   primary killed: followers serve what they have, say
                                        so in /ready and /metrics, writes get 307 to the
                                        primary; it returns: replication resumes
  behind_retention_resyncs              a follower behind the primary's retained history
                                        (store.changes_retain) resyncs in full
  replaced_primary_resyncs              a new primary (another store) behind the same URL,
                                        further along than the follower's position: the
                                        follower resyncs to it (feed ids differ)
  tenants_and_keys_replicate            auth on: tenants, keys, tenant-owned adapters and
                                        their deletion reach the follower; a follower
                                        without the admin key says why in /ready

The hot-swap streams go through HAProxy (round robin over the 4 replicas, /ready checks;
a config generated here) when `haproxy` is on PATH (`make test-cluster` installs it),
else straight to the replicas (the test says which); uploads go to the primary. Waits poll with generous
deadlines (a loaded machine); each prints the time it measured. Several daemons for
tens of seconds: `make test-cluster` runs it (PEFTD_TEST_CLUSTER=1); under `make test` it
skips itself.
"""

import json
import os
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time

import harness
from harness import skip, test

FIX = os.path.join(harness.ROOT, "tests", "fixtures", "adapters", "lora_layers")
_tmp = tempfile.mkdtemp(prefix="peftd-cluster-")
# how long a change may take to reach every follower before the test fails (the measured
# time is printed; the acceptance target is 2 s on an unloaded machine)
DEADLINE = float(os.environ.get("PEFTD_CLUSTER_DEADLINE", "20")) * harness.SLOW
PROMPT = "Once upon a time"


def need_cluster():
    if os.environ.get("PEFTD_TEST_CLUSTER") != "1":
        skip("starts 4+ daemons: `make test-cluster` runs it (PEFTD_TEST_CLUSTER=1)")


def variant(k):
    """A copy of the lora_layers fixture with every lora_B scaled by a factor of k: a
    distinct adapter (its own content hash) whose greedy text differs with k."""
    d = os.path.join(_tmp, "v%d" % k)
    if os.path.isdir(d):
        return d
    os.makedirs(d)
    shutil.copy(os.path.join(FIX, "adapter_config.json"), d)
    with open(os.path.join(FIX, "adapter_model.safetensors"), "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    data = bytearray(raw[8 + n:])
    factor = 1.0 + 0.75 * k
    for name, t in header.items():
        if name == "__metadata__" or "lora_B" not in name:
            continue
        assert t["dtype"] == "F32", t
        a, b = t["data_offsets"]
        vals = struct.unpack("<%df" % ((b - a) // 4), data[a:b])
        data[a:b] = struct.pack("<%df" % len(vals), *[v * factor for v in vals])
    with open(os.path.join(d, "adapter_model.safetensors"), "wb") as f:
        f.write(raw[:8 + n] + bytes(data))
    return d


class Cluster:
    def __init__(self, n_followers=3, env=None, primary_args=()):
        self.env = env
        self.primary_args = list(primary_args)
        self.primary_store = tempfile.mkdtemp(prefix="primary-", dir=_tmp)
        self.primary = harness.Daemon(["--threads", "1"] + self.primary_args, env=env, store=self.primary_store)
        self.followers = []
        self.stores = []
        for _ in range(n_followers):
            self.add_follower()

    def url(self):
        return "http://127.0.0.1:%d" % self.primary.port

    def add_follower(self, store=None, port=None):
        store = store or tempfile.mkdtemp(prefix="follower-", dir=_tmp)
        f = harness.Daemon(["--threads", "1", "--follow", self.url()], env=self.env, store=store, port=port)
        self.followers.append(f)
        self.stores.append(store)
        return f

    def close(self):
        close_all(self.followers + [self.primary])


def close_all(daemons):
    """Stops every daemon (SIGTERM); one that does not exit 0 (a sanitizer report, a
    crash at shutdown) fails the test, with its log."""
    bad = []
    for d in daemons:
        alive = d.alive()
        status = d.stop()
        if alive and status != 0:
            bad.append("port %d exited %s:\n%s" % (d.port, status, d.log_text(40)))
        d.close()
    assert not bad, "\n".join(bad)


class Front:
    """HAProxy in front of the replicas: the harness's HTTP helpers, on its port."""
    conn = harness.Daemon.conn
    request = harness.Daemon.request
    post = harness.Daemon.post
    stream = harness.Daemon.stream

    def __init__(self, replicas):
        self.port = harness.free_port()
        cfg = os.path.join(_tmp, "haproxy-%d.cfg" % self.port)
        servers = "".join("  server r%d 127.0.0.1:%d check inter 500ms\n" % (i, d.port)
                          for i, d in enumerate(replicas))
        with open(cfg, "w") as f:
            f.write("global\n  maxconn 512\ndefaults\n  mode http\n  timeout connect 2s\n"
                    "  timeout client 300s\n  timeout server 300s\n"
                    "frontend fe\n  bind 127.0.0.1:%d\n  default_backend peftd\n"
                    "backend peftd\n  balance roundrobin\n  option httpchk GET /ready\n%s"
                    % (self.port, servers))
        self.log = open(cfg + ".log", "w")
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", cfg], stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        t0 = time.time()
        while True:
            assert self.proc.poll() is None, "haproxy exited: see %s.log" % cfg
            try:
                st, _, _ = self.request("GET", "/health", timeout=2)
                if st == 200:
                    return
            except OSError:
                pass
            assert time.time() - t0 < 30 * harness.SLOW, "haproxy did not answer"
            time.sleep(0.05)

    def close(self):
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


def catalogue(d):
    """{name: (version, sha256, created, updated)} of everything d lists."""
    out, after = {}, ""
    while True:
        st, _, body = d.request("GET", "/v1/adapters?limit=100" + ("&after=" + after if after else ""))
        assert st == 200, (st, body[:200])
        obj = json.loads(body)
        for a in obj["data"]:
            out[a["id"]] = (a["version"], a["sha256"], a["created"], a["updated"])
        if not obj.get("has_more") or not obj["data"]:
            return out
        after = obj["data"][-1]["id"]


def wait_same(primary, followers, what, deadline=None):
    """Polls until every follower lists exactly the primary's catalogue; returns seconds.
    A stall (no follower progressing) past the deadline fails with what each lacks."""
    want = catalogue(primary)
    t0 = time.time()
    limit = deadline or DEADLINE
    while True:
        diffs = []
        for f in followers:
            got = catalogue(f)
            if got != want:
                diffs.append((f.port, sorted(set(want.items()) ^ set(got.items()))[:4]))
        if not diffs:
            dt = time.time() - t0
            print("    %s: every follower caught up in %.3f s" % (what, dt))
            return dt
        if time.time() - t0 > limit:
            raise AssertionError("%s: followers differ after %.1f s: %s" % (what, limit, diffs))
        time.sleep(0.02)


def text(d, model, max_tokens=12):
    st, obj = d.post("/v1/completions", {"model": model, "prompt": PROMPT, "max_tokens": max_tokens,
                                         "temperature": 0})
    assert st == 200, (d.port, model, st, obj)
    return obj["choices"][0]["text"]


def upload(d, name, k):
    st, obj = d.upload(name, variant(k))
    assert st in (200, 201), (name, st, obj)
    return obj


@test
def fifty_uploads_reach_every_follower():
    need_cluster()
    c = Cluster()
    try:
        t0 = time.time()
        for i in range(50):
            upload(c.primary, "a%02d" % i, i)
        print("    50 uploads to the primary: %.2f s" % (time.time() - t0))
        wait_same(c.primary, c.followers, "50 uploads")
        want = {name: text(c.primary, name) for name in catalogue(c.primary)}
        assert len(set(want.values())) > 10, "variants should not all answer alike: %s" % want
        for f in c.followers:
            for name, t in want.items():
                got = text(f, name)
                assert got == t, (f.port, name, got, t)
        # a follower given a follower's URL is redirected to the primary's feed
        chained = harness.Daemon(["--threads", "1", "--follow", "http://127.0.0.1:%d" % c.followers[0].port])
        try:
            wait_same(c.primary, [chained], "a follower of a follower")
        finally:
            close_all([chained])
        m = c.followers[0].metrics()
        assert m["peftd_replication_last_sequence"] == 50, m.get("peftd_replication_last_sequence")
        assert m["peftd_replication_primary_reachable"] == 1
        assert m["peftd_replication_lag_seconds"] == 0, m["peftd_replication_lag_seconds"]
    finally:
        c.close()


@test
def hot_swap_reaches_followers():
    need_cluster()
    # each engine step waits 20 ms, so 16 streams of 120 tokens are still running when v2 lands
    c = Cluster(env={"PEFTD_DEBUG_STEP_DELAY_US": "20000"})
    front = None
    try:
        upload(c.primary, "swap", 3)
        wait_same(c.primary, c.followers, "v1")
        replicas = [c.primary] + c.followers
        front = Front(replicas) if shutil.which("haproxy") else None
        print("    16 streams %s" % ("through HAProxy (round robin over 4 replicas)" if front
                                     else "straight to the replicas (no haproxy on PATH)"))
        v1 = text(c.primary, "swap", 120)
        results, errors = [None] * 16, []

        def run(i):
            try:
                d = front or replicas[i % len(replicas)]
                chunks, done, raw = d.stream(model="swap", prompt=PROMPT, max_tokens=120, temperature=0)
                assert done, raw[-200:]
                results[i] = "".join(ch["choices"][0]["text"] for ch in chunks if ch.get("choices"))
            except Exception as e:  # reported below
                errors.append(repr(e))

        threads = [threading.Thread(target=run, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        upload(c.primary, "swap", 9)
        t_up = time.time()
        # every follower applies v2 (its catalogue shows the primary's version 2) ...
        for d in c.followers:
            while catalogue(d).get("swap", (0,))[0] != 2:
                assert time.time() - t_up < DEADLINE, "follower %d has not applied v2" % d.port
                time.sleep(0.01)
        print("    v2 applied by every follower %.3f s after its upload" % (time.time() - t_up))
        running = sum(1 for r in results if r is None)
        print("    %d of 16 streams still running on v1 then" % running)
        assert running > 0, "every stream ended before v2 arrived: the test proves nothing"
        v2 = text(c.primary, "swap", 24)  # 24 tokens: every step waits 20 ms here
        assert v2 != v1[:len(v2)], "v1 and v2 must answer differently for this test to mean anything"
        # ... and new requests there get v2's text
        for d in c.followers:
            assert text(d, "swap", 24) == v2, "follower %d answers v1 after applying v2" % d.port
        for t in threads:
            t.join(120 * harness.SLOW)
        assert not errors, errors
        alive = sum(1 for r in results if r == v1)
        assert alive == 16, "streams on v1 that did not end with v1's text: %s" % [
            r for r in results if r != v1][:2]
        if front:  # and new requests through the balancer, whichever replica takes them
            for _ in range(8):
                assert text(front, "swap", 24) == v2
    finally:
        if front:
            front.close()
        c.close()


@test
def killed_follower_catches_up():
    need_cluster()
    c = Cluster(n_followers=1)
    try:
        victim = c.followers[0]
        store, port = c.stores[0], victim.port
        stop = threading.Event()

        def uploader():
            for i in range(40):
                upload(c.primary, "k%02d" % (i % 25), 100 + i)  # 25 names, 15 replaced
                time.sleep(0.02)  # so the kill lands while uploads still arrive
            stop.set()

        th = threading.Thread(target=uploader)
        th.start()
        # kill -9 once it has applied some and while uploads still arrive
        t0 = time.time()
        while len(catalogue(victim)) < 5:
            assert time.time() - t0 < DEADLINE, "the follower applied nothing"
            time.sleep(0.01)
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait()
        seq = c.primary.metrics()["peftd_replication_last_sequence"]
        print("    follower killed at primary change %d of 40" % seq)
        assert seq < 40, "the uploads were over before the kill: the test proves nothing"
        th.join(300)
        assert stop.is_set()
        c.followers[0] = c.add_follower(store=store, port=port)
        c.followers.pop()
        victim.close()
        wait_same(c.primary, c.followers, "restarted follower")
        for name in catalogue(c.primary):
            assert text(c.followers[0], name) == text(c.primary, name), name
    finally:
        c.close()


def ready(d):
    st, _, body = d.request("GET", "/ready")
    return st, json.loads(body)


@test
def primary_down_followers_keep_serving():
    need_cluster()
    c = Cluster(n_followers=2)
    try:
        for i in range(5):
            upload(c.primary, "p%d" % i, 200 + i)
        wait_same(c.primary, c.followers, "5 uploads")
        want = {n: text(c.primary, n) for n in catalogue(c.primary)}
        port, store = c.primary.port, c.primary_store
        c.primary.proc.send_signal(signal.SIGKILL)
        c.primary.proc.wait()
        for f in c.followers:
            for n, t in want.items():
                assert text(f, n) == t, (f.port, n)
        t0 = time.time()
        while True:  # the follower notices at its next poll
            st, r = ready(c.followers[0])
            if not r["replication"]["primary_reachable"]:
                break
            assert time.time() - t0 < DEADLINE, r
            time.sleep(0.05)
        assert st == 200 and r["status"] == "ready", r  # serving what it has
        assert r["replication"]["role"] == "follower" and r["replication"]["last_sequence"] == 5, r
        time.sleep(0.3)
        m = c.followers[0].metrics()
        assert m["peftd_replication_primary_reachable"] == 0
        assert m["peftd_replication_lag_seconds"] > 0, m["peftd_replication_lag_seconds"]
        # writes: 307 to the same path on the primary, with a body saying why
        st, hdrs, body = c.followers[0].request("PUT", "/v1/adapters/p9", b"x",
                                                {"Content-Type": "multipart/form-data; boundary=b"})
        assert st == 307, (st, body)
        assert hdrs["location"] == "http://127.0.0.1:%d/v1/adapters/p9" % port, hdrs
        assert json.loads(body)["error"]["code"] == "read_only_replica", body
        st, hdrs, body = c.followers[1].request("DELETE", "/v1/adapters/p1")
        assert st == 307 and hdrs["location"].endswith("/v1/adapters/p1"), (st, hdrs)
        # the primary returns (same store, same port): replication resumes
        c.primary.close()
        c.primary = harness.Daemon(["--threads", "1"], store=store, port=port)
        upload(c.primary, "p-new", 300)
        st, _, _ = c.primary.request("DELETE", "/v1/adapters/p0")
        assert st in (200, 204), st
        wait_same(c.primary, c.followers, "after the primary's return")
        st, r = ready(c.followers[1])
        assert r["replication"]["primary_reachable"] and r["replication"]["last_sequence"] == 7, r
        assert text(c.followers[1], "p-new") == text(c.primary, "p-new")
    finally:
        c.close()


@test
def behind_retention_resyncs():
    need_cluster()
    cfg = os.path.join(_tmp, "retain.json")
    with open(cfg, "w") as f:
        json.dump({"store": {"changes_retain": 4}}, f)
    c = Cluster(n_followers=0, primary_args=["--config", cfg])
    try:
        for i in range(12):
            upload(c.primary, "r%d" % (i % 8), 400 + i)
        c.primary.request("DELETE", "/v1/adapters/r2")
        f = c.add_follower()
        wait_same(c.primary, [f], "resync")
        t0 = time.time()
        while f.metrics()["peftd_replication_last_sequence"] != 13:  # set once the snapshot is all in
            assert time.time() - t0 < DEADLINE, f.metrics()
            time.sleep(0.02)
        assert f.metrics()["peftd_replication_resyncs_total"] >= 1
        st, _, body = c.primary.request("GET", "/v1/replication/changes?after=2")
        assert st == 200 and json.loads(body)["resync"] is True, body[:200]
        upload(c.primary, "after-resync", 500)
        wait_same(c.primary, [f], "a change after the resync")
    finally:
        c.close()


@test
def replaced_primary_resyncs():
    need_cluster()
    c = Cluster(n_followers=1)
    try:
        for i in range(3):
            upload(c.primary, "old%d" % i, 600 + i)
        wait_same(c.primary, c.followers, "3 uploads")
        port = c.primary.port
        c.primary.close()
        # another primary on the same port with its own store and MORE changes than the
        # follower's position: sequence numbers alone would look like a continuation
        # (prepared on another port, so the follower first sees it with all 6)
        store = tempfile.mkdtemp(prefix="primary2-", dir=_tmp)
        prep = harness.Daemon(["--threads", "1"], store=store)
        for i in range(6):
            upload(prep, "new%d" % i, 700 + i)
        close_all([prep])
        c.primary = harness.Daemon(["--threads", "1"], store=store, port=port)
        wait_same(c.primary, c.followers, "the replaced primary")
        assert not any(n.startswith("old") for n in catalogue(c.followers[0]))
        assert text(c.followers[0], "new5") == text(c.primary, "new5")
    finally:
        c.close()


ADMIN_ENV, ADMIN_KEY = "PEFTD_TEST_CLUSTER_ADMIN", "admin-" + os.urandom(12).hex()


def authed(d, method, path, key, body=None, headers=None):
    h = dict(headers or {}, Authorization="Bearer " + key)
    st, _, data = d.request(method, path, body=body, headers=h)
    return st, (json.loads(data) if data else None)


def upload_as(d, key, name, k):
    boundary = "cluster" + os.urandom(6).hex()
    body = b""
    for n in ("adapter_config.json", "adapter_model.safetensors"):
        with open(os.path.join(variant(k), n), "rb") as f:
            body += ("--%s\r\nContent-Disposition: form-data; name=\"f\"; filename=\"%s\"\r\n\r\n"
                     % (boundary, n)).encode() + f.read() + b"\r\n"
    body += ("--%s--\r\n" % boundary).encode()
    return authed(d, "PUT", "/v1/adapters/" + name, key, body,
                  {"Content-Type": "multipart/form-data; boundary=" + boundary})


def until(what, fn):
    t0 = time.time()
    while not fn():
        assert time.time() - t0 < DEADLINE, "%s: not within %.0f s" % (what, DEADLINE)
        time.sleep(0.02)
    print("    %s: %.3f s" % (what, time.time() - t0))


@test
def tenants_and_keys_replicate():
    need_cluster()
    auth = {"enabled": True, "admin_key_env": ADMIN_ENV}
    pcfg, fcfg, ncfg = (os.path.join(_tmp, n) for n in ("auth-p.json", "auth-f.json", "auth-n.json"))
    for path, obj in ((pcfg, {"auth": auth}), (fcfg, {"auth": auth, "store": {"follow_key_env": ADMIN_ENV}}),
                      (ncfg, {"auth": auth})):
        with open(path, "w") as f:
            json.dump(obj, f)
    env = {ADMIN_ENV: ADMIN_KEY}
    p = harness.Daemon(["--threads", "1", "--config", pcfg], env=env)
    url = "http://127.0.0.1:%d" % p.port
    fl = harness.Daemon(["--threads", "1", "--config", fcfg, "--follow", url], env=env)
    nokey = harness.Daemon(["--threads", "1", "--config", ncfg, "--follow", url], env=env)
    try:
        st, obj = authed(p, "POST", "/v1/admin/tenants", ADMIN_KEY, {"id": "acme", "weight": 1})
        assert st == 201, (st, obj)
        st, obj = authed(p, "POST", "/v1/admin/tenants/acme/keys", ADMIN_KEY)
        assert st == 201, (st, obj)
        key, kid = obj["key"], obj["id"]
        st, obj = upload_as(p, key, "bot", 7)
        assert st in (200, 201), (st, obj)
        body = {"model": "bot", "prompt": PROMPT, "max_tokens": 12, "temperature": 0}
        st, want = authed(p, "POST", "/v1/completions", key, body)
        assert st == 200, (st, want)
        # the follower knows the tenant's key and serves its private adapter identically
        until("tenant key and adapter on the follower",
              lambda: authed(fl, "POST", "/v1/completions", key, body)[0] == 200)
        st, got = authed(fl, "POST", "/v1/completions", key, body)
        assert got["choices"][0]["text"] == want["choices"][0]["text"]
        # admin writes on the follower: 307 to the primary
        st, hdrs, _ = fl.request("POST", "/v1/admin/tenants", {"id": "x", "weight": 1},
                                 {"Authorization": "Bearer " + ADMIN_KEY})
        assert st == 307 and hdrs["location"] == url + "/v1/admin/tenants", (st, hdrs)
        # a revoked key stops working on the follower too
        st, _ = authed(p, "DELETE", "/v1/admin/tenants/acme/keys/" + kid, ADMIN_KEY)
        assert st in (200, 204), st
        until("key revocation on the follower",
              lambda: authed(fl, "POST", "/v1/completions", key, body)[0] == 401)
        # the tenant's deletion takes its adapter with it on the follower
        st, _ = authed(p, "DELETE", "/v1/admin/tenants/acme", ADMIN_KEY)
        assert st in (200, 204), st
        until("tenant deletion on the follower", lambda: fl.metrics()["peftd_store_adapters"] == 0)
        st, obj = authed(fl, "GET", "/v1/admin/tenants", ADMIN_KEY)
        assert st == 200 and obj["data"] == [], obj
        # without the admin key the follower cannot read the feed, and says so
        st, _, data = nokey.request("GET", "/ready")
        r = json.loads(data)["replication"]
        assert r["last_sequence"] == 0 and "401" in r.get("error", ""), r
    finally:
        close_all([nokey, fl, p])


if __name__ == "__main__":
    try:
        harness.run_tests(__file__)
    finally:
        shutil.rmtree(_tmp, ignore_errors=True)
