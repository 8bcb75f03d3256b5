"""tests/integration/test_metrics.py — observability against the real daemon: /metrics in
the Prometheus text format (checked by `promtool check metrics` when installed, and always
by the strict parser below), histogram and counter values against the requests made,
per-tenant series, /ready (200, then 503 after SIGTERM while streams drain), JSON access
and event logs with request ids, and SIGHUP reloading the log settings while streams run.
"""

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import MODEL_ID, test  # noqa: E402

PROMPT = "Once upon a time"


def d():
    return harness.daemon


# ---- a strict parser of the text format 0.0.4 ----

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\["\\n])*)"'
SAMPLE = re.compile(r"^(%s)(\{(%s(?:,%s)*)?\})? (\S+)$" % (NAME, LABEL, LABEL))


def parse_metrics(text):
    """Returns {family: {"type", "help", "samples": [(name, labels dict, value)]}}, raising
    AssertionError on anything promtool would refuse (and on our own stricter rules)."""
    assert text.endswith("\n"), "the exposition must end with a line feed"
    fams, order = {}, []
    for ln, line in enumerate(text.split("\n")[:-1], 1):
        assert line, "empty line %d" % ln
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            kind, rest = line[2:6], line[7:]
            name, _, arg = rest.partition(" ")
            assert re.fullmatch(NAME, name), line
            f = fams.setdefault(name, {"type": None, "help": None, "samples": []})
            key = "help" if kind == "HELP" else "type"
            assert f[key] is None, "%s given twice for %s" % (kind, name)
            assert not f["samples"], "%s after samples of %s" % (kind, name)
            if kind == "TYPE":
                assert arg in ("counter", "gauge", "histogram", "summary", "untyped"), line
            f[key] = arg
            if name not in order:
                order.append(name)
            continue
        assert not line.startswith("#"), "stray comment %r" % line
        m = SAMPLE.match(line)
        assert m, "bad sample line %d: %r" % (ln, line)
        sname, value = m.group(1), m.group(m.lastindex)
        labels = dict(re.findall(LABEL, m.group(3) or ""))
        v = float(value)  # accepts +Inf/NaN spelled as Python does
        fam = sname
        for suffix in ("_bucket", "_sum", "_count"):
            if sname.endswith(suffix) and sname[: -len(suffix)] in fams and \
                    fams[sname[: -len(suffix)]]["type"] == "histogram":
                fam = sname[: -len(suffix)]
        assert fam in fams and fams[fam]["type"], "sample %s without TYPE" % sname
        assert order[-1] == fam, "samples of %s are not grouped under its TYPE" % fam
        fams[fam]["samples"].append((sname, labels, v))
    seen = set()
    for name, f in fams.items():
        assert f["help"], "no HELP for %s" % name
        if f["type"] == "counter":
            assert name.endswith("_total"), "counter %s must end in _total" % name
        else:
            assert not name.endswith("_total"), "%s %s must not end in _total" % (f["type"], name)
        for sname, labels, v in f["samples"]:
            key = (sname, tuple(sorted(labels.items())))
            assert key not in seen, "duplicate series %s%s" % key
            seen.add(key)
            if f["type"] == "counter":
                assert v >= 0, (sname, v)
        if f["type"] == "histogram":
            check_histogram(name, f["samples"])
    return fams


def check_histogram(name, samples):
    buckets = [(s[1]["le"], s[2]) for s in samples if s[0] == name + "_bucket"]
    assert buckets, "histogram %s has no buckets" % name
    les = [math.inf if le == "+Inf" else float(le) for le, _ in buckets]
    assert les == sorted(les) and len(set(les)) == len(les), "le not ascending in %s" % name
    assert les[-1] == math.inf, "%s has no +Inf bucket" % name
    counts = [c for _, c in buckets]
    assert all(b >= a for a, b in zip(counts, counts[1:])), "%s buckets not cumulative: %s" % (name, counts)
    count = [s[2] for s in samples if s[0] == name + "_count"]
    total = [s[2] for s in samples if s[0] == name + "_sum"]
    assert len(count) == 1 and len(total) == 1, "%s needs one _sum and one _count" % name
    assert count[0] == counts[-1], "%s_count %s != +Inf bucket %s" % (name, count[0], counts[-1])
    assert total[0] >= 0, name


def scrape(daemon=None):
    st, hdrs, body = (daemon or d()).request("GET", "/metrics")
    assert st == 200, st
    assert hdrs["content-type"].startswith("text/plain; version=0.0.4"), hdrs
    return body.decode(), parse_metrics(body.decode())


def value(fams, family, sample=None, **labels):
    """The value of one series (0 when absent)."""
    for sname, lab, v in fams.get(family, {"samples": []})["samples"]:
        if sname == (sample or family) and all(lab.get(k) == x for k, x in labels.items()):
            return v
    return 0.0


def hist_count(fams, family):
    return value(fams, family, family + "_count")


def stream_usage(daemon, **payload):
    """A streaming completion asking for usage; returns (chunks, usage)."""
    payload.setdefault("stream_options", {"include_usage": True})
    chunks, done, raw = daemon.stream(**payload)
    assert done, raw[-300:]
    usage = [c["usage"] for c in chunks if c.get("usage")]
    assert usage, "no usage chunk: %s" % raw[-300:]
    return chunks, usage[-1]


# ---- tests ----

@test
def promtool_accepts_metrics():
    d().complete(prompt=PROMPT, max_tokens=4)
    stream_usage(d(), prompt=PROMPT, max_tokens=4, n=2)
    d().request("GET", "/no/such/route")
    text, fams = scrape()
    for fam in ("peftd_requests_total", "peftd_time_to_first_token_seconds", "peftd_inter_token_latency_seconds",
                "peftd_e2e_request_latency_seconds", "peftd_batch_rows", "peftd_waiting_requests",
                "peftd_running_requests", "peftd_kv_cache_usage_ratio", "peftd_preemptions_total",
                "peftd_adapter_slot_hits_total", "peftd_adapter_loads_total", "peftd_adapter_slot_evictions_total",
                "peftd_tenant_generated_tokens_total", "peftd_tenant_prompt_tokens_total", "peftd_tenant_running",
                "peftd_prefix_cache_hits_total", "peftd_prefix_cache_queries_total",
                "peftd_prefix_cache_evictions_total", "peftd_prefix_cache_blocks"):
        assert fam in fams, "family %s missing:\n%s" % (fam, text)
    promtool = shutil.which("promtool")
    if not promtool:
        harness.skip("promtool not installed (apt-get install prometheus); the strict parser passed")
    r = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=60)
    assert r.returncode == 0, "promtool check metrics failed:\n%s%s" % (r.stdout.decode(), r.stderr.decode())


@test
def prefix_cache_counts_hits():
    """The same long prompt twice: the second request takes the first's full prompt blocks
    (16 tokens each, conf block_size) from the prefix cache, with the same greedy text."""
    prompt = "Lily and Tom found a big red ball in the tall green grass by the river. " * 3
    _, before = scrape()
    a = d().complete(prompt=prompt, max_tokens=8, temperature=0)
    b = d().complete(prompt=prompt, max_tokens=8, temperature=0)
    _, after = scrape()
    n = a["usage"]["prompt_tokens"]
    assert n > 32, n

    def delta(family):
        return value(after, family) - value(before, family)

    assert delta("peftd_prefix_cache_queries_total") == 2 * n
    assert delta("peftd_prefix_cache_hits_total") == (n - 1) // 16 * 16, (n, delta("peftd_prefix_cache_hits_total"))
    assert value(after, "peftd_prefix_cache_blocks") >= n // 16
    assert a["choices"][0]["text"] == b["choices"][0]["text"]


def settled_scrape():
    """A scrape once every completion answered has also finished its connection: the e2e
    histogram is observed when MHD completes the request, which may be just after the
    client read the whole response."""
    deadline = time.time() + 10 * harness.SLOW
    while True:
        d().wait_idle()
        text, fams = scrape()
        answered = value(fams, "peftd_requests_total", endpoint="/v1/completions", status="200")
        if hist_count(fams, "peftd_e2e_request_latency_seconds") == answered:
            return fams
        assert time.time() < deadline, "e2e count never caught up with the requests:\n" + text
        time.sleep(0.02)


@test
def counts_match_requests():
    before = settled_scrape()
    n_json, n_stream, tokens, choices, itl = 3, 2, 0, 0, 0
    for i in range(n_json):
        obj = d().complete(prompt=PROMPT, max_tokens=6 + i, seed=i, temperature=1.0)
        tokens += obj["usage"]["completion_tokens"]
        choices += 1
        itl += obj["usage"]["completion_tokens"] - 1
    for i in range(n_stream):
        chunks, usage = stream_usage(d(), prompt=PROMPT, max_tokens=5, n=2, seed=i, temperature=1.0)
        tokens += usage["completion_tokens"]
        choices += 2
        itl += usage["completion_tokens"] - 2
    after = settled_scrape()

    def delta(family, sample=None, **labels):
        return value(after, family, sample, **labels) - value(before, family, sample, **labels)

    assert delta("peftd_requests_total", endpoint="/v1/completions", status="200") == n_json + n_stream
    assert delta("peftd_generated_tokens_total") == tokens
    # TTFT: one observation per choice; ITL: one per later token; e2e: one per request.
    assert delta("peftd_time_to_first_token_seconds", "peftd_time_to_first_token_seconds_count") == choices
    assert delta("peftd_inter_token_latency_seconds", "peftd_inter_token_latency_seconds_count") == itl
    assert delta("peftd_e2e_request_latency_seconds", "peftd_e2e_request_latency_seconds_count") == n_json + n_stream
    assert delta("peftd_time_to_first_token_seconds", "peftd_time_to_first_token_seconds_sum") > 0
    # Auth off: every request is the anonymous tenant.
    assert delta("peftd_tenant_generated_tokens_total", tenant="_anonymous") == tokens
    assert delta("peftd_tenant_prompt_tokens_total", tenant="_anonymous") > 0
    assert value(after, "peftd_tenant_running", tenant="_anonymous") == 0
    # Every engine step is in the batch histogram; each generated token took one row.
    assert delta("peftd_batch_rows", "peftd_batch_rows_count") == delta("peftd_engine_steps_total")
    assert delta("peftd_batch_rows", "peftd_batch_rows_sum") >= tokens
    # Histograms stay monotone between scrapes too.
    for fam in ("peftd_time_to_first_token_seconds", "peftd_inter_token_latency_seconds", "peftd_batch_rows"):
        for sname, labels, v in after[fam]["samples"]:
            if sname.endswith("_bucket"):
                assert v >= value(before, fam, sname, **labels), (fam, labels)


@test
def ready_and_request_ids():
    st, hdrs, body = d().request("GET", "/ready")
    obj = json.loads(body)
    assert st == 200 and obj["status"] == "ready" and obj["store"] is True, (st, obj)
    assert re.fullmatch(r"req-[0-9a-f]{16}", hdrs["x-request-id"]), hdrs
    st, hdrs, _ = d().request("HEAD", "/ready")
    assert st == 200, st
    st, hdrs, _ = d().request("POST", "/ready", body="{}")
    assert st == 405, st
    # A usable client id is echoed; a hostile one is replaced.
    st, hdrs, _ = d().request("GET", "/health", headers={"X-Request-Id": "trace-42.a:b_c"})
    assert hdrs["x-request-id"] == "trace-42.a:b_c", hdrs
    st, hdrs, _ = d().request("GET", "/health", headers={"X-Request-Id": "x" * 65})
    assert hdrs["x-request-id"].startswith("req-"), hdrs
    # Completions reuse their completion id.
    st, hdrs, body = d().request("POST", "/v1/completions", {"model": MODEL_ID, "prompt": PROMPT, "max_tokens": 2})
    assert st == 200 and hdrs["x-request-id"] == json.loads(body)["id"], (hdrs, body)


def write_config(path, **log):
    with open(path, "w") as f:
        json.dump({"log": log}, f)


def log_lines(daemon):
    with open(daemon.log.name, "r", errors="replace") as f:
        return f.read().splitlines()


@test
def json_access_and_event_logs():
    tmp = tempfile.mkdtemp(prefix="peftd-obs-")
    cfg = os.path.join(tmp, "peftd.json")
    access = os.path.join(tmp, "access.log")
    write_config(cfg, format="json", level="info", access=access)
    dm = harness.Daemon(["--config", cfg])
    try:
        secret = "sk-do-not-log-me-123456"
        st, hdrs, body = dm.request("POST", "/v1/completions",
                                    {"model": MODEL_ID, "prompt": PROMPT, "max_tokens": 3},
                                    headers={"Authorization": "Bearer " + secret, "X-Request-Id": "abc-1"})
        assert st == 200 and hdrs["x-request-id"] == "abc-1", (st, hdrs)
        chunks, usage = stream_usage(dm, prompt=PROMPT, max_tokens=3)
        dm.request("GET", "/nope%7F%C3")
        dm.request("GET", "/metrics")
        time.sleep(0.3)
        with open(access) as f:
            lines = [json.loads(ln) for ln in f.read().splitlines()]
        lines = [ln for ln in lines if ln["path"] != "/health"]  # the harness's start-up probes
        assert len(lines) >= 4, lines
        # Lines are written when MHD finishes a connection, which may be after the client
        # read the response: find them by id, not by position.
        by_id = {ln["id"]: ln for ln in lines}
        first = by_id["abc-1"]
        for k in ("ts", "id", "method", "path", "status", "duration_ms", "bytes", "tenant", "model", "adapter",
                  "prompt_tokens", "completion_tokens", "client"):
            assert k in first, (k, first)
        assert first["id"] == "abc-1" and first["method"] == "POST" and first["path"] == "/v1/completions"
        assert first["status"] == 200 and first["model"] == MODEL_ID and first["client"] == "127.0.0.1", first
        assert first["completion_tokens"] == 3 and first["prompt_tokens"] >= 1 and first["bytes"] > 0, first
        assert first["duration_ms"] >= 0 and first["tenant"] == "", first
        streamed = by_id[chunks[0]["id"]]
        assert streamed["id"] == chunks[0]["id"] and streamed["status"] == 200 and streamed["bytes"] > 100, streamed
        bad = [ln for ln in lines if ln["status"] == 404]
        assert bad and bad[0]["path"] == "/nope\x7f\ufffd", bad  # control and invalid bytes escaped
        events = [ln for ln in log_lines(dm) if ln.startswith("{")]
        assert events, log_lines(dm)
        for ln in events:
            obj = json.loads(ln)
            assert set(obj) >= {"ts", "level", "msg"}, obj
        assert any("listening" in json.loads(ln)["msg"] for ln in events), events
        for text in (open(access).read(), "\n".join(log_lines(dm))):
            assert secret not in text and "Bearer" not in text, "a key reached the logs"
    finally:
        dm.close()
        shutil.rmtree(tmp, ignore_errors=True)


def run_streams(dm, n, max_tokens, results):
    def one(i):
        try:
            chunks, usage = stream_usage(dm, prompt=PROMPT, max_tokens=max_tokens, ignore_eos=True,
                                         temperature=0, timeout=120)
            results[i] = usage["completion_tokens"]
        except Exception as e:  # noqa: BLE001 — reported by the caller
            results[i] = e
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    return threads


@test
def sighup_reloads_without_dropping_streams():
    tmp = tempfile.mkdtemp(prefix="peftd-obs-")
    cfg = os.path.join(tmp, "peftd.json")
    write_config(cfg, format="text", level="warn", access="off")
    # 3 ms per step: 60 tokens take ~0.2 s, long enough to signal mid-stream.
    dm = harness.Daemon(["--config", cfg], env={"PEFTD_DEBUG_STEP_DELAY_US": "3000"})
    try:
        results = [None] * 6
        threads = run_streams(dm, 6, 60, results)
        deadline = time.time() + 10 * harness.SLOW
        while value(scrape(dm)[1], "peftd_running_requests") < 1:
            assert time.time() < deadline, "streams never started"
            time.sleep(0.01)
        write_config(cfg, format="json", level="debug", access="stderr")
        dm.proc.send_signal(signal.SIGHUP)
        for t in threads:
            t.join(60 * harness.SLOW)
        assert results == [60] * 6, "streams did not all finish: %s" % results
        assert dm.alive()
        obj = dm.complete(prompt=PROMPT, max_tokens=2)
        time.sleep(0.2)
        lines = log_lines(dm)
        events = [json.loads(ln) for ln in lines if ln.startswith("{\"ts\"")]
        assert any(e.get("level") == "info" and "SIGHUP: reloaded" in e.get("msg", "") for e in events), lines[-20:]
        # The new level (debug) and format (json) apply: the completion's debug line is JSON.
        assert any(e.get("level") == "debug" and obj["id"] in e.get("msg", "") for e in events), lines[-20:]
        assert any(e.get("type") == "access" and e.get("id") == obj["id"] for e in events), lines[-20:]
        # A broken file changes nothing and is reported; the daemon keeps serving.
        with open(cfg, "w") as f:
            f.write("{not json")
        dm.proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        assert dm.alive()
        dm.complete(prompt=PROMPT, max_tokens=2)
        assert any("config not reloaded" in ln for ln in log_lines(dm)), log_lines(dm)[-10:]
    finally:
        dm.close()
        shutil.rmtree(tmp, ignore_errors=True)


@test
def ready_503_while_draining():
    # 20 ms per step: the two 150-token streams outlive the drain by >= 3 s, so a scheduler
    # pause of the test process on a loaded machine cannot let them finish (and the daemon
    # exit) before the first /ready after SIGTERM (3 ms per step once did)
    dm = harness.Daemon(env={"PEFTD_DEBUG_STEP_DELAY_US": "20000"})
    try:
        assert dm.request("GET", "/ready")[0] == 200
        results = [None] * 2
        threads = run_streams(dm, 2, 150, results)
        deadline = time.time() + 10 * harness.SLOW
        while value(scrape(dm)[1], "peftd_running_requests") < 2:
            assert time.time() < deadline, "streams never started"
            time.sleep(0.01)
        dm.proc.send_signal(signal.SIGTERM)
        saw_503 = False
        while any(t.is_alive() for t in threads):
            try:
                st, _, body = dm.request("GET", "/ready", timeout=2)
                if st == 503:
                    saw_503 = json.loads(body)["draining"] is True
                    break
            except OSError:
                break
            time.sleep(0.01)
        for t in threads:
            t.join(60 * harness.SLOW)
        assert saw_503, "/ready never answered 503 while draining"
        assert results == [150, 150], results
        assert dm.proc.wait(30) == 0
    finally:
        dm.close()


@test
def tenant_series_bounded_with_auth():
    """70 tenants with keys each generate: at most 64 tenant label values, the overflow
    summed as "other", totals preserved, promtool still accepts the exposition, and the
    access log names the tenant (never its key)."""
    tmp = tempfile.mkdtemp(prefix="peftd-obs-")
    cfg = os.path.join(tmp, "peftd.json")
    admin_key = "adm_" + os.urandom(16).hex()
    with open(cfg, "w") as f:
        json.dump({"auth": {"enabled": True, "admin_key_env": "PEFTD_TEST_OBS_ADMIN"},
                   "log": {"format": "json", "access": "stderr"}}, f)
    dm = harness.Daemon(["--config", cfg], env={"PEFTD_TEST_OBS_ADMIN": admin_key})
    try:
        def call(method, path, key, body=None):
            st, _, data = dm.request(method, path, body, headers={"Authorization": "Bearer " + key})
            return st, json.loads(data) if data else None
        keys, n_tenants = [], 70
        for i in range(n_tenants):
            tid = "obs%02d" % i
            st, obj = call("POST", "/v1/admin/tenants", admin_key, {"id": tid, "weight": 1, "limits": {}})
            assert st == 201, (st, obj)
            st, obj = call("POST", "/v1/admin/tenants/%s/keys" % tid, admin_key)
            assert st == 201, (st, obj)
            keys.append(obj["key"])
        generated = 0
        for key in keys:
            st, obj = call("POST", "/v1/completions", key, {"model": MODEL_ID, "prompt": PROMPT, "max_tokens": 2})
            assert st == 200, (st, obj)
            generated += obj["usage"]["completion_tokens"]
        dm.wait_idle()
        text, fams = scrape(dm)
        series = {lab["tenant"]: v for _, lab, v in fams["peftd_tenant_generated_tokens_total"]["samples"]}
        assert len(series) <= 64 and "other" in series, sorted(series)
        assert "obs00" in series, sorted(series)
        assert sum(series.values()) == generated, (series, generated)
        for fam in ("peftd_tenant_prompt_tokens_total", "peftd_tenant_running", "peftd_tenant_waiting"):
            assert len(fams[fam]["samples"]) == len(series), fam
        promtool = shutil.which("promtool")
        if promtool:
            r = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=60)
            assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
        time.sleep(0.2)
        log = "\n".join(log_lines(dm))
        access = [json.loads(ln) for ln in log.splitlines()
                  if ln.startswith("{") and '"type":"access"' in ln and '"/v1/completions"' in ln]
        assert any(a["tenant"] == "obs05" for a in access), access[:3]
        for key in keys + [admin_key]:
            assert key not in log, "a key reached the log"
    finally:
        dm.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    harness.run_tests(__file__)
