"""tests/integration/test_gateway.py — the model-server protocol of the Kubernetes Gateway
API Inference Extension against the real daemon: the LoRA info gauge in vLLM's label shape
(peftd_lora_requests_info, and vllm:lora_requests_info with http.vllm_metric_aliases)
listing exactly the adapters resident in slots and those queued requests wait for; the
exposition parsed by prometheus_client's text parser and by `promtool check metrics`
(installed: apt-get install prometheus); vLLM's POST /v1/load_lora_adapter and
/v1/unload_lora_adapter with vLLM's status codes and error bodies, refusing paths outside
store.load_roots, admin-only with auth on.
"""

import http.client
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import test  # noqa: E402

FIX = os.path.join(harness.ROOT, "tests", "fixtures", "adapters", "lora_r1_all")
INFO_LABELS = {"max_lora", "running_lora_adapters", "waiting_lora_adapters"}


def variant(dst, i):
    """FIX with its first weight's lowest mantissa byte set to i: the same adapter to
    within 1 ulp, a different content hash (slots are keyed by content: identical copies
    would share one slot)."""
    shutil.copytree(FIX, dst)
    path = os.path.join(dst, "adapter_model.safetensors")
    with open(path, "r+b") as f:
        hlen = int.from_bytes(f.read(8), "little")
        f.seek(8 + hlen)
        f.write(bytes([i]))
    return dst


def own_daemon(conf, env=None):
    """A daemon of its own with conf as its JSON config file."""
    tmp = tempfile.mkdtemp(prefix="peftd-gw-")
    path = os.path.join(tmp, "peftd.json")
    with open(path, "w") as f:
        json.dump(conf, f)
    dm = harness.Daemon(["--config", path], env=env)
    dm.gw_tmp = tmp
    return dm


def close(dm):
    dm.close()
    shutil.rmtree(dm.gw_tmp, ignore_errors=True)


def scrape(dm):
    st, _, body = dm.request("GET", "/metrics")
    assert st == 200, st
    return body.decode()


def families(text):
    """prometheus_client's parser (pip install prometheus-client): a missing parser fails."""
    from prometheus_client.parser import text_string_to_metric_families
    return {f.name: f for f in text_string_to_metric_families(text)}


def lora_info(text, family="peftd_lora_requests_info"):
    fams = families(text)
    assert family in fams, "no %s family in /metrics" % family
    f = fams[family]
    assert f.type == "gauge", f.type
    assert len(f.samples) == 1, f.samples
    s = f.samples[0]
    assert set(s.labels) == INFO_LABELS, s.labels
    split = lambda v: [x for x in v.split(",") if x]  # noqa: E731
    return int(s.labels["max_lora"]), split(s.labels["running_lora_adapters"]), \
        split(s.labels["waiting_lora_adapters"]), s.value


def gauge(text, name):
    return families(text)[name].samples[0].value


def wait_for(dm, pred, what, timeout=30):
    deadline = time.time() + timeout * harness.SLOW
    while time.time() < deadline:
        text = scrape(dm)
        if pred(text):
            return text
        time.sleep(0.02)
    raise AssertionError("timed out waiting for %s; last /metrics lora lines:\n%s"
                         % (what, "\n".join(ln for ln in text.split("\n") if "lora" in ln or "requests" in ln)))


@test
def lora_info_lists_resident_and_waiting_exactly():
    """2 slots, 3 adapters: empty at start; a and b resident after one request each; with
    a and b pinned by long generations a request for c waits (running = a,b, waiting = c,
    in both families); once they finish c is loaded in place of the least recent one."""
    dm = own_daemon({"store": {"slots": 2}, "http": {"vllm_metric_aliases": True}},
                    env={"PEFTD_DEBUG_STEP_DELAY_US": "20000"})
    try:
        for i, n in enumerate(("a", "b", "c")):
            assert dm.upload(n, variant(os.path.join(dm.gw_tmp, n), i + 1))[0] == 201
        mx, run, wait, ts0 = lora_info(scrape(dm))
        assert (mx, run, wait) == (2, [], []), (mx, run, wait)
        assert abs(ts0 - time.time()) < 60, ts0
        dm.complete(model="a", prompt="Once", max_tokens=1)
        dm.complete(model="b", prompt="Once", max_tokens=1)
        text = wait_for(dm, lambda t: lora_info(t)[1] == ["a", "b"], "a,b resident")
        assert lora_info(text)[2] == []
        out = {}

        def gen(n, tokens):
            out[n] = dm.complete(model=n, prompt="Once", max_tokens=tokens, ignore_eos=True, timeout=300)

        th = [threading.Thread(target=gen, args=(n, 150)) for n in ("a", "b")]
        for t in th:
            t.start()
        wait_for(dm, lambda t: gauge(t, "peftd_running_requests") == 2, "a and b running")
        tc = threading.Thread(target=gen, args=("c", 1))
        tc.start()
        th.append(tc)
        text = wait_for(dm, lambda t: lora_info(t)[2] == ["c"], "c waiting")
        for fam in ("peftd_lora_requests_info", "vllm:lora_requests_info"):
            mx, run, wait, _ = lora_info(text, fam)
            assert (mx, run, wait) == (2, ["a", "b"], ["c"]), (fam, mx, run, wait)
        assert gauge(text, "vllm:num_requests_waiting") >= 1
        for t in th:
            t.join(300)
        assert set(out) == {"a", "b", "c"}, out
        text = wait_for(dm, lambda t: "c" in lora_info(t)[1], "c resident")
        mx, run, wait, ts1 = lora_info(text)
        assert len(run) == 2 and wait == [] and ts1 >= ts0, (run, wait, ts0, ts1)
    finally:
        close(dm)


@test
def exposition_parses_with_prometheus_client_and_promtool():
    """The default exposition (no aliases) passes promtool and prometheus_client; with the
    vllm: aliases the only promtool remarks are its lint on ':' in names (vLLM's own
    exposition draws the same), and every alias equals its peftd_ family."""
    text = scrape(harness.daemon)
    fams = families(text)
    assert "peftd_lora_requests_info" in fams and "vllm:lora_requests_info" not in fams
    dm = own_daemon({"http": {"vllm_metric_aliases": True}})
    try:
        dm.complete(prompt="Once", max_tokens=2)
        atext = scrape(dm)
    finally:
        close(dm)
    afams = families(atext)
    for alias, own in (("vllm:num_requests_waiting", "peftd_waiting_requests"),
                       ("vllm:num_requests_running", "peftd_running_requests"),
                       ("vllm:gpu_cache_usage_perc", "peftd_kv_cache_usage_ratio"),
                       ("vllm:kv_cache_usage_perc", "peftd_kv_cache_usage_ratio")):
        assert afams[alias].type == "gauge", alias
        s = afams[alias].samples[0]
        assert s.labels == {"model_name": harness.MODEL_ID}, s.labels
        assert abs(s.value - afams[own].samples[0].value) < 1e-6, (alias, s.value)
    assert lora_info(atext, "vllm:lora_requests_info")[:3] == lora_info(atext)[:3]
    promtool = shutil.which("promtool")
    if not promtool:
        harness.skip("promtool not installed (apt-get install prometheus); prometheus_client parsed both")
    r = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=60)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    r = subprocess.run([promtool, "check", "metrics"], input=atext.encode(), capture_output=True, timeout=60)
    remarks = [ln for ln in (r.stdout.decode() + r.stderr.decode()).split("\n") if ln.strip()]
    assert remarks and all(ln.startswith("vllm:") and ln.endswith("metric names should not contain ':'")
                           for ln in remarks), remarks


# ---- /v1/load_lora_adapter and /v1/unload_lora_adapter ----

def post(dm, path, body, key=None):
    hdrs = {"Authorization": "Bearer " + key} if key else None
    st, h, data = dm.request("POST", path, json.dumps(body), headers=hdrs)
    return st, h, data.decode()


def vllm_error(st, data, status, etype, message=None):
    assert st == status, (st, data)
    obj = json.loads(data)
    assert set(obj) == {"error"}, obj
    e = obj["error"]
    assert set(e) == {"message", "type", "param", "code"}, e
    assert e["type"] == etype and e["code"] == status and e["param"] is None, e
    if message is not None:
        assert e["message"] == message, e["message"]
    return e["message"]


def lora_tree():
    """tmp/root/{ok, noconfig, bad, link -> ../outside/ad}, tmp/outside/ad."""
    tmp = tempfile.mkdtemp(prefix="peftd-roots-")
    root, outside = os.path.join(tmp, "root"), os.path.join(tmp, "outside")
    os.makedirs(os.path.join(root, "noconfig"))
    shutil.copytree(FIX, os.path.join(root, "ok"))
    shutil.copytree(FIX, os.path.join(outside, "ad"))
    os.makedirs(os.path.join(root, "bad"))
    with open(os.path.join(root, "bad", "adapter_config.json"), "w") as f:
        f.write('{"peft_type": "LORA", "r": "not a rank"}')
    shutil.copy(os.path.join(FIX, "adapter_model.safetensors"), os.path.join(root, "bad"))
    os.symlink(os.path.join(outside, "ad"), os.path.join(root, "link"))
    return tmp, root, outside


@test
def load_unload_as_vllm():
    tmp, root, outside = lora_tree()
    dm = own_daemon({"store": {"load_roots": [root]}})
    try:
        ok = os.path.join(root, "ok")
        st, h, data = post(dm, "/v1/load_lora_adapter", {"lora_name": "x1", "lora_path": ok})
        assert (st, data) == (200, "Success: LoRA adapter 'x1' added successfully."), (st, data)
        assert h["content-type"].startswith("text/plain"), h
        assert dm.complete(model="x1", prompt="Once", max_tokens=3)["model"] == "x1"
        st, h, data = post(dm, "/v1/load_lora_adapter", {"lora_name": "x1", "lora_path": ok})
        vllm_error(st, data, 400, "InvalidUserInput",
                   "The lora adapter 'x1' has already been loaded. If you want to load the adapter in place, "
                   "set 'load_inplace' to True.")
        st, _, data = post(dm, "/v1/load_lora_adapter", {"lora_name": "x1", "lora_path": ok, "load_inplace": True})
        assert (st, data) == (200, "Success: LoRA adapter 'x1' added successfully."), (st, data)
        st, meta = dm.post("/v1/completions", {"model": "x1", "prompt": "Once", "max_tokens": 1})
        assert st == 200, meta
        for body in ({"lora_name": "x2"}, {"lora_path": ok}, {"lora_name": "", "lora_path": ok}):
            st, _, data = post(dm, "/v1/load_lora_adapter", body)
            vllm_error(st, data, 400, "InvalidUserInput", "Both 'lora_name' and 'lora_path' must be provided.")
        for path in (os.path.join(root, "nope"), os.path.join(root, "noconfig")):
            st, _, data = post(dm, "/v1/load_lora_adapter", {"lora_name": "x2", "lora_path": path})
            vllm_error(st, data, 404, "NotFoundError", "Loading lora x2 failed: No adapter found for %s" % path)
        for path in (os.path.join(outside, "ad"), os.path.join(outside, "nope"), os.path.join(root, "link"),
                     os.path.join(root, "..", "outside", "ad"), "/etc", "/"):
            st, _, data = post(dm, "/v1/load_lora_adapter", {"lora_name": "x2", "lora_path": path})
            msg = vllm_error(st, data, 403, "PermissionDeniedError")
            assert "store.load_roots" in msg, msg
        st, _, data = post(dm, "/v1/load_lora_adapter", {"lora_name": "x2", "lora_path": os.path.join(root, "bad")})
        msg = vllm_error(st, data, 400, "BadRequestError")
        assert msg.startswith("Loading lora x2 failed: ") and root not in msg, msg
        st, models = dm.request("GET", "/v1/models")[0], json.loads(dm.request("GET", "/v1/models")[2])
        assert [m["id"] for m in models["data"] if m["id"].startswith("x")] == ["x1"], models
        st, _, data = post(dm, "/v1/unload_lora_adapter", {"lora_name": "x1"})
        assert (st, data) == (200, "Success: LoRA adapter 'x1' removed successfully."), (st, data)
        st, _, data = post(dm, "/v1/unload_lora_adapter", {"lora_name": "x1"})
        vllm_error(st, data, 404, "NotFoundError", "The lora adapter 'x1' cannot be found.")
        st, _, data = post(dm, "/v1/unload_lora_adapter", {})
        vllm_error(st, data, 400, "InvalidUserInput", "'lora_name' needs to be provided to unload a LoRA adapter.")
        st, obj = dm.post("/v1/completions", {"model": "x1", "prompt": "Once", "max_tokens": 1})
        assert st == 404, (st, obj)
    finally:
        close(dm)
        shutil.rmtree(tmp, ignore_errors=True)


@test
def load_unload_off_without_roots():
    for path, body in (("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": FIX}),
                       ("/v1/unload_lora_adapter", {"lora_name": "x"})):
        st, _, data = post(harness.daemon, path, body)
        msg = vllm_error(st, data, 404, "NotFoundError")
        assert "store.load_roots" in msg, msg


@test
def load_unload_admin_only_with_auth():
    tmp, root, _ = lora_tree()
    admin = "adm_" + secrets.token_hex(24)
    dm = own_daemon({"store": {"load_roots": [root]}, "auth": {"enabled": True, "admin_key_env": "PEFTD_GW_ADMIN"}},
                    env={"PEFTD_GW_ADMIN": admin})
    try:
        st, _, data = post(dm, "/v1/admin/tenants", {"id": "t1"}, admin)
        assert st == 201, data
        st, _, data = post(dm, "/v1/admin/tenants/t1/keys", {}, admin)
        assert st == 201, data
        tkey = json.loads(data)["key"]
        body = {"lora_name": "y", "lora_path": os.path.join(root, "ok")}
        st, _, data = post(dm, "/v1/load_lora_adapter", body)
        assert st == 401, (st, data)
        for path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
            st, _, data = post(dm, path, body, tkey)
            vllm_error(st, data, 403, "PermissionDeniedError", "loading and unloading adapters needs the admin key")
        st, _, data = post(dm, "/v1/load_lora_adapter", body, admin)
        assert st == 200, data
        st, _, data = post(dm, "/v1/unload_lora_adapter", {"lora_name": "y"}, admin)
        assert st == 200, data
    finally:
        close(dm)
        shutil.rmtree(tmp, ignore_errors=True)


@test
def load_runs_off_the_http_thread():
    """One HTTP thread, every import held 4 s (test hook): while /v1/load_lora_adapter's
    import waits, /health and a completion on the same HTTP thread are answered first;
    then the load answers 200 and the adapter serves. A load still queued when the server
    stops gets 503 (or a closed connection), and the daemon exits 0."""
    tmp, root, _ = lora_tree()
    dm = own_daemon({"http": {"threads": 1}, "store": {"load_roots": [root]}},
                    env={"PEFTD_DEBUG_IMPORT_DELAY_MS": "4000"})
    try:
        res = {}

        def load(key, name):
            res[key] = post(dm, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": os.path.join(root, "ok")})
            res[key + "_at"] = time.monotonic()

        t = threading.Thread(target=load, args=("load", "slow"))
        t.start()
        dm.wait_log(r"a job starts: waiting")
        assert dm.request("GET", "/health", timeout=60)[0] == 200
        health_at = time.monotonic()
        assert dm.complete(prompt="Once", max_tokens=2, temperature=0, timeout=60)["usage"]["completion_tokens"] >= 1
        comp_at = time.monotonic()
        t.join(120)
        assert res["load"][:1] == (200,) and res["load"][2] == "Success: LoRA adapter 'slow' added successfully.", res
        assert health_at < res["load_at"] and comp_at < res["load_at"], (health_at, comp_at, res["load_at"])
        assert dm.complete(model="slow", prompt="Once", max_tokens=2)["model"] == "slow"

        t2 = threading.Thread(target=lambda: res.update(doomed=_try_post(dm, "doomed", root)))
        t2.start()
        dm.wait_log(r"a job starts: waiting", count=2)
        assert dm.stop(timeout=60) == 0, dm.log_text()
        t2.join(60)
        assert not t2.is_alive()
        if res["doomed"] is not None:
            vllm_error(res["doomed"][0], res["doomed"][2], 503, "ServiceUnavailableError",
                       "Loading lora doomed failed: the server is shutting down")
    finally:
        close(dm)
        shutil.rmtree(tmp, ignore_errors=True)


def _try_post(dm, name, root):
    try:
        return post(dm, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": os.path.join(root, "ok")})
    except (OSError, http.client.HTTPException):
        return None  # the connection closed during the shutdown


if __name__ == "__main__":
    harness.run_tests(__file__)
