"""tests/integration/test_api_misc.py — issue 15's API and CLI pieces against the real daemon:
GET /v1/models/{id} (raw and through the openai SDK's models.retrieve), POST /tokenize and
/detokenize (vLLM's shapes, llama.cpp's accepted; ids equal to what /v1/completions and
/v1/chat/completions feed the engine: same tokenizer, same BOS rule), the new /metrics
families (per-adapter counters, finish reasons, queue-time histogram, peftd_build_info,
process_*; promtool when installed), and the command line (serve/generate --help list every
option and every config key of the daemon's table, --version, "unknown option").
"""

import atexit
import json
import os
import re
import shutil
import subprocess
import tempfile

import harness
from harness import test, skip

try:
    import openai
except ImportError as e:
    openai = None
    OPENAI_MISSING = str(e)

ROOT = harness.ROOT
CHAT_MODEL_DIR = os.path.join(ROOT, "tests", "fixtures", "models", "stories260K-chat")
CHAT_MODEL = "stories260K-chat"
ADAPTER_DIR = os.path.join(ROOT, "tests", "fixtures", "adapters", "lora_r8_all")
MESSAGES = [{"role": "system", "content": "You tell short stories."},
            {"role": "user", "content": "Once upon a time there was a cat."}]
PROMPT = "Once upon a time there was a dog"
BOS = 1  # stories260K's (Llama tokenizer: add_bos_token)

_chat = None


def chat_daemon():
    global _chat
    if _chat is None:
        _chat = harness.Daemon(["--model", CHAT_MODEL_DIR, "--adapter", "story=" + ADAPTER_DIR])
        atexit.register(_chat.close)
    return _chat


def d():
    return harness.daemon


def run(*args):
    r = subprocess.run([harness.BIN, *args], cwd=ROOT, capture_output=True, timeout=60 * harness.SLOW)
    return r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")


# ---- GET /v1/models/{id} ----

@test
def models_retrieve_base_and_adapter():
    dm = chat_daemon()
    st, _, data = dm.request("GET", "/v1/models")
    listed = {m["id"]: m for m in json.loads(data)["data"]}
    for mid in (CHAT_MODEL, "story"):
        st, _, data = dm.request("GET", "/v1/models/" + mid)
        assert st == 200, (mid, st, data)
        assert json.loads(data) == listed[mid], (json.loads(data), listed[mid])
    st, _, data = dm.request("GET", "/v1/models/nope")
    obj = json.loads(data)
    harness.assert_error(st, obj, 404, "model_not_found")
    st, _, _ = dm.request("HEAD", "/v1/models/story")
    assert st == 200, st
    st, _, _ = dm.request("DELETE", "/v1/models/story")
    assert st == 405, st


@test
def models_retrieve_with_the_openai_sdk():
    if openai is None:
        skip("the openai SDK is not installed: %s" % OPENAI_MISSING)
    dm = chat_daemon()
    c = openai.OpenAI(base_url="http://127.0.0.1:%d/v1" % dm.port, api_key="unused", max_retries=0, timeout=60)
    m = c.models.retrieve("story")
    assert m.id == "story" and m.object == "model" and m.parent == CHAT_MODEL, m
    assert c.models.retrieve(CHAT_MODEL).id == CHAT_MODEL
    try:
        c.models.retrieve("no-such-adapter")
        raise AssertionError("retrieve of a missing model succeeded")
    except openai.NotFoundError as e:
        assert e.code == "model_not_found", e


@test
def models_retrieve_is_scoped_by_tenant():
    """With auth on, another tenant's adapter is 404 (as a missing one: no existence leak)
    on /v1/models/{id} and /tokenize; the owner sees it."""
    import secrets
    admin_key = "adm_" + secrets.token_hex(16)
    tmp = tempfile.mkdtemp(prefix="peftd-apimisc-auth-")
    cfg = os.path.join(tmp, "auth.json")
    with open(cfg, "w") as f:
        json.dump({"auth": {"enabled": True, "admin_key_env": "PEFTD_TEST_ADMIN_KEY"}}, f)
    dm = harness.Daemon(["--config", cfg], env={"PEFTD_TEST_ADMIN_KEY": admin_key})
    try:
        def call(method, path, key, body=None, headers=None):
            h = dict(headers or {}, Authorization="Bearer " + key)
            st, _, data = dm.request(method, path, body, h)
            return st, (json.loads(data) if data else None)
        keys = {}
        for t in ("t1", "t2"):
            st, obj = call("POST", "/v1/admin/tenants", admin_key, {"id": t, "weight": 1, "limits": {}})
            assert st == 201, obj
            st, obj = call("POST", "/v1/admin/tenants/%s/keys" % t, admin_key)
            assert st == 201, obj
            keys[t] = obj["key"]
        st, obj = dm.upload("mine", os.path.join(ROOT, "tests", "fixtures", "adapters", "lora_r1_all"),
                            headers={"Authorization": "Bearer " + keys["t1"]})
        assert st in (200, 201), (st, obj)
        st, obj = call("GET", "/v1/models/mine", keys["t1"])
        assert st == 200 and obj["id"] == "mine", (st, obj)
        st, other = call("GET", "/v1/models/mine", keys["t2"])
        st2, missing = call("GET", "/v1/models/absent", keys["t2"])
        assert st == st2 == 404 and other["error"]["code"] == missing["error"]["code"] == "model_not_found", other
        st, obj = call("POST", "/tokenize", keys["t2"], {"model": "mine", "prompt": "x"})
        harness.assert_error(st, obj, 404, "model_not_found")
        st, obj = call("POST", "/tokenize", keys["t1"], {"model": "mine", "prompt": "x"})
        assert st == 200, obj
        for path, body in (("/v1/models/mine", None), ("/tokenize", {"prompt": "x"})):
            st, _, _ = dm.request("POST" if body else "GET", path, body)
            assert st == 401, (path, st)  # the new routes need a key like the others
    finally:
        dm.close()
        shutil.rmtree(tmp, ignore_errors=True)


# ---- /tokenize and /detokenize ----

def tok(dm, **body):
    st, obj = dm.post("/tokenize", body)
    assert st == 200, (st, obj)
    return obj


@test
def tokenize_prompt_equals_what_completions_use():
    dm = d()
    t = tok(dm, model=harness.MODEL_ID, prompt=PROMPT)
    assert set(t) == {"count", "max_model_len", "tokens"}, t
    assert t["count"] == len(t["tokens"]) and t["tokens"][0] == BOS, t
    ref = dm.complete(prompt=PROMPT, max_tokens=8, temperature=0)
    assert ref["usage"]["prompt_tokens"] == t["count"], (ref["usage"], t)
    st, models = dm.request("GET", "/v1/models")[0], json.loads(dm.request("GET", "/v1/models")[2])
    assert t["max_model_len"] == models["data"][0]["max_model_len"], (t, models)
    # the ids as a token prompt (used as given) must generate exactly what the text did
    same = dm.complete(prompt=t["tokens"], max_tokens=8, temperature=0)
    assert same["choices"][0]["text"] == ref["choices"][0]["text"], (same, ref)
    nobos = tok(dm, prompt=PROMPT, add_special_tokens=False)
    assert nobos["tokens"] == t["tokens"][1:], (nobos, t)


@test
def tokenize_llamacpp_content_shape():
    dm = d()
    a = tok(dm, content=PROMPT)  # llama.cpp: add_special defaults to false
    b = tok(dm, prompt=PROMPT, add_special_tokens=False)
    assert a["tokens"] == b["tokens"], (a, b)
    c = tok(dm, content=PROMPT, add_special=True)
    assert c["tokens"] == [BOS] + a["tokens"], c


@test
def detokenize_round_trip_and_shapes():
    dm = d()
    t = tok(dm, prompt=PROMPT, add_special_tokens=False)
    st, obj = dm.post("/detokenize", {"model": harness.MODEL_ID, "tokens": t["tokens"]})
    assert st == 200 and obj["prompt"] == PROMPT and obj["content"] == PROMPT, (st, obj)
    st, obj = dm.post("/detokenize", {"tokens": []})
    assert st == 200 and obj["prompt"] == "", (st, obj)


@test
def tokenize_messages_equals_chat_prompt():
    dm = chat_daemon()
    with open(os.path.join(ROOT, "tests", "fixtures", "chat", "chatml_ids.json")) as f:
        fx = json.load(f)
    assert fx["messages"] == MESSAGES
    t = tok(dm, model=CHAT_MODEL, messages=MESSAGES)
    assert t["tokens"] == fx["ids"], (t, fx["ids"])  # the `tokenizers` package's ids, no BOS
    st, chat = dm.post("/v1/chat/completions", {"model": CHAT_MODEL, "messages": MESSAGES, "max_tokens": 4,
                                                "temperature": 0})
    assert st == 200 and chat["usage"]["prompt_tokens"] == t["count"], (st, chat, t)
    with_bos = tok(dm, messages=MESSAGES, add_special_tokens=True)
    assert with_bos["tokens"] == [BOS] + fx["ids"], with_bos
    # an adapter tokenizes as its base (adapters carry no tokenizer)
    assert tok(dm, model="story", messages=MESSAGES)["tokens"] == fx["ids"]


@test
def tokenize_errors_name_the_field():
    dm = d()
    cases = [
        ({"prompt": PROMPT, "model": "no-such"}, 404, "model_not_found"),
        ({"prompt": 3}, 400, "invalid_type"),
        ({}, 400, "invalid_value"),
        ({"prompt": "a", "content": "b"}, 400, "invalid_value"),
        ({"prompt": "a", "add_special": True}, 400, "invalid_value"),
        ({"prompt": "a", "bogus": 1}, 400, "unknown_parameter"),
        ({"messages": MESSAGES}, 400, "chat_template_missing"),
    ]
    for body, status, code in cases:
        st, obj = dm.post("/tokenize", body)
        harness.assert_error(st, obj, status, code)
    for body in ({"tokens": [-1]}, {"tokens": [1.5]}, {"tokens": [10 ** 9]}, {"tokens": "1 2"}, {}):
        st, obj = dm.post("/detokenize", body)
        harness.assert_error(st, obj, 400)
    st, _, _ = dm.request("GET", "/tokenize")
    assert st == 405, st


# ---- /metrics ----

def scrape(dm):
    st, _, data = dm.request("GET", "/metrics")
    assert st == 200, st
    return data.decode()


def sample(text, name, **labels):
    want = ",".join('%s="%s"' % kv for kv in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$", line)
        if m and m.group(1) == name:
            got = ",".join(sorted((m.group(2) or "").split(","))) if m.group(2) else ""
            if got == want:
                return float(m.group(3))
    return None


@test
def metrics_adapters_finish_reasons_queue():
    dm = chat_daemon()
    before = scrape(dm)
    r0 = sample(before, "peftd_adapter_requests_total", adapter="story") or 0
    g0 = sample(before, "peftd_adapter_generation_tokens_total", adapter="story") or 0
    len0 = sample(before, "peftd_request_finish_total", finish_reason="length") or 0
    q0 = sample(before, "peftd_request_queue_seconds_count") or 0
    st, obj = dm.post("/v1/completions", {"model": "story", "prompt": PROMPT, "max_tokens": 5, "temperature": 0,
                                          "ignore_eos": True, "n": 2})
    assert st == 200, obj
    dm.complete(model=CHAT_MODEL, prompt=PROMPT, max_tokens=3)
    after = scrape(dm)
    assert sample(after, "peftd_adapter_requests_total", adapter="story") == r0 + 1, after
    assert sample(after, "peftd_adapter_generation_tokens_total", adapter="story") == g0 + 10
    assert sample(after, "peftd_adapter_prompt_tokens_total", adapter="story") >= 2 * obj["usage"]["prompt_tokens"] / 2
    assert sample(after, "peftd_adapter_requests_total", adapter="_base") >= 1
    assert sample(after, "peftd_request_finish_total", finish_reason="length") >= len0 + 2
    assert sample(after, "peftd_request_queue_seconds_count") >= q0 + 3, after
    assert sample(after, "peftd_request_queue_seconds_bucket", le="+Inf") == sample(
        after, "peftd_request_queue_seconds_count")


@test
def metrics_adapter_series_bounded():
    """70 adapters used once each: at most 64 adapter label values (63 names + other), the
    totals preserved, promtool still accepts the exposition."""
    dm = harness.Daemon()
    try:
        fix = os.path.join(ROOT, "tests", "fixtures", "adapters", "lora_r1_all")
        n = 70
        for i in range(n):
            st, obj = dm.upload("a%02d" % i, fix)
            assert st in (200, 201), (st, obj)
            r = dm.complete(model="a%02d" % i, prompt="x", max_tokens=1)
            assert r["model"] == "a%02d" % i
        text = scrape(dm)
        rows = re.findall(r'^peftd_adapter_requests_total\{adapter="([^"]*)"\} (\S+)$', text, re.M)
        labels = [l for l, _ in rows]
        assert len(labels) <= 64 and len(set(labels)) == len(labels) and "other" in labels, labels
        assert sum(float(v) for _, v in rows) == n, rows
        gen = re.findall(r'^peftd_adapter_generation_tokens_total\{adapter="[^"]*"\} (\S+)$', text, re.M)
        assert sum(float(v) for v in gen) == n, gen
        promtool = shutil.which("promtool")
        if promtool:
            r = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=60)
            assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    finally:
        dm.close()


@test
def metrics_build_info_and_process():
    text = scrape(d())
    m = re.search(r'^peftd_build_info\{version="([^"]+)",commit="([^"]+)",backend="([^"]+)"\} 1$', text, re.M)
    assert m, text[:2000]
    rc, out, _ = run("--version")
    assert rc == 0 and m.group(1) in out and m.group(2) in out, (out, m.groups())
    assert m.group(3) in ("cpu", "cuda"), m.groups()
    pid = d().proc.pid
    rss = sample(text, "process_resident_memory_bytes")
    with open("/proc/%d/status" % pid) as f:
        vmrss = int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1)) * 1024
    assert rss and 0.5 * vmrss < rss < 2 * vmrss, (rss, vmrss)
    fds = sample(text, "process_open_fds")
    real = len(os.listdir("/proc/%d/fd" % pid))
    assert fds and abs(fds - real) <= 8, (fds, real)
    assert sample(text, "process_max_fds") >= fds
    assert sample(text, "process_cpu_seconds_total") > 0
    start = sample(text, "process_start_time_seconds")
    assert abs(start - os.stat("/proc/%d" % pid).st_mtime) < 600 or start > 1.6e9, start
    promtool = shutil.which("promtool")
    if promtool:
        r = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=60)
        assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()


# ---- served-model-name aliases and CORS (one daemon configured with both) ----

ORIGIN = "https://app.example"
_cfgd = None


def cfg_daemon():
    global _cfgd
    if _cfgd is None:
        tmp = tempfile.mkdtemp(prefix="peftd-apimisc-")
        cfg = os.path.join(tmp, "peftd.json")
        with open(cfg, "w") as f:
            json.dump({"served_model_name": ["org/alias-one"], "http": {"cors_origins": [ORIGIN]}}, f)
        _cfgd = harness.Daemon(["--config", cfg, "--served-model-name", "alias2"])
        atexit.register(_cfgd.close)
        atexit.register(shutil.rmtree, tmp, True)
    return _cfgd


@test
def served_model_name_aliases():
    dm = cfg_daemon()
    st, _, data = dm.request("GET", "/v1/models")
    ids = [m["id"] for m in json.loads(data)["data"]]
    assert ids[:3] == [harness.MODEL_ID, "org/alias-one", "alias2"], ids
    ref = dm.complete(model=harness.MODEL_ID, prompt=PROMPT, max_tokens=6, temperature=0)
    for alias in ("org/alias-one", "alias2"):
        r = dm.complete(model=alias, prompt=PROMPT, max_tokens=6, temperature=0)
        assert r["model"] == alias and r["choices"][0]["text"] == ref["choices"][0]["text"], (r, ref)
        st, _, data = dm.request("GET", "/v1/models/" + alias)
        assert st == 200 and json.loads(data)["id"] == alias, (st, data)
        assert tok(dm, model=alias, prompt=PROMPT)["tokens"] == tok(dm, prompt=PROMPT)["tokens"]
    st, obj = dm.post("/v1/completions", {"model": "alias3", "prompt": PROMPT, "max_tokens": 1})
    harness.assert_error(st, obj, 404, "model_not_found")
    st, obj = d().post("/v1/completions", {"model": "alias2", "prompt": PROMPT, "max_tokens": 1})
    harness.assert_error(st, obj, 404, "model_not_found")  # the default daemon has no alias
    with tempfile.TemporaryDirectory() as tmp:
        for bad in ('{"served_model_name": "../x"}', '{"served_model_name": [1]}', '{"served_model_name": {}}',
                    '{"http": {"cors_origins": ["https://a/b"]}}', '{"http": {"cors_origins": "*"}}'):
            path = os.path.join(tmp, "bad.json")
            with open(path, "w") as f:
                f.write(bad)
            rc, _, err = run("serve", "--config", path)
            assert rc == 2 and ("served" in err or "cors_origins" in err), (bad, err)
        rc, _, err = run("serve", "--served-model-name", "/abs")
        assert rc == 2 and "served model name" in err, err


@test
def cors_preflight_and_origins():
    dm = cfg_daemon()
    pre = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "authorization, content-type"}
    st, h, _ = dm.request("OPTIONS", "/v1/completions", headers=pre)
    assert st == 204, (st, h)
    assert h["access-control-allow-origin"] == ORIGIN and h["vary"] == "Origin", h
    assert "POST" in h["access-control-allow-methods"] and "Authorization" in h["access-control-allow-headers"], h
    assert "access-control-allow-credentials" not in h, h
    st, h, _ = dm.request("OPTIONS", "/v1/completions", headers=dict(pre, Origin="https://evil.example"))
    assert st == 403 and "access-control-allow-origin" not in h, (st, h)
    # simple and streamed responses carry the header for the allowed origin only
    st, h, _ = dm.request("GET", "/v1/models", headers={"Origin": ORIGIN})
    assert st == 200 and h.get("access-control-allow-origin") == ORIGIN, h
    st, h, _ = dm.request("GET", "/v1/models", headers={"Origin": "https://evil.example"})
    assert st == 200 and "access-control-allow-origin" not in h, h
    st, h, _ = dm.request("POST", "/v1/completions", {"prompt": PROMPT, "max_tokens": 2, "stream": True},
                          headers={"Origin": ORIGIN})
    assert st == 200 and h.get("access-control-allow-origin") == ORIGIN, h
    st, h, _ = dm.request("POST", "/v1/completions", {"prompt": 5}, headers={"Origin": ORIGIN})
    assert st == 400 and h.get("access-control-allow-origin") == ORIGIN, h  # errors are readable too
    # the default daemon (no cors_origins) sends none and answers OPTIONS 405
    st, h, _ = d().request("OPTIONS", "/v1/completions", headers=pre)
    assert st == 405 and "access-control-allow-origin" not in h, (st, h)
    st, h, _ = d().request("GET", "/v1/models", headers={"Origin": ORIGIN})
    assert "access-control-allow-origin" not in h, h


# ---- command line ----

def config_keys_of_help(text):
    keys, section = [], False
    for line in text.splitlines():
        if line.startswith("configuration file keys"):
            section = True
            continue
        if section and not line.startswith("  "):
            break
        if section:
            keys.append(line.split()[0])
    return keys


@test
def serve_help_lists_every_option_and_config_key():
    rc, out, err = run("serve", "--help")
    assert rc == 0 and err == "", (rc, err)
    assert "(null)" not in out, out
    for flag in ("--config", "--model", "--host", "--port", "--threads", "--store", "--adapter",
                 "--served-model-name", "--help", "--version"):
        assert re.search(r"^  %s\b" % re.escape(flag), out, re.M), (flag, out)
    keys = config_keys_of_help(out)
    assert len(keys) > 30 and len(set(keys)) == len(keys), keys
    # every listed key is one the config reader knows: given a wrong-typed value (and, so
    # that nothing starts, a bad port) it is refused for its value, never as "unknown key";
    # the control, a key the reader does not know, is refused as unknown
    with tempfile.TemporaryDirectory() as tmp:
        bad = os.path.join(tmp, "bad.json")
        for k in keys + ["http.no_such_key"]:
            sec, _, name = k.rpartition(".")
            body = {sec: {name: {}}} if sec else {name: {}}
            if k not in ("port", "http.no_such_key"):  # unknown keys are refused before any value
                body["port"] = -1
            with open(bad, "w") as f:
                json.dump(body, f)
            rc2, _, err2 = run("serve", "--config", bad)
            assert rc2 == 2, (k, rc2, err2)
            assert ("unknown key" in err2) == (k == "http.no_such_key"), (k, err2)
    # ... and every key of the sample config and the README's list is in the help
    with open(os.path.join(ROOT, "conf", "peftd.json")) as f:
        conf = json.load(f)
    for k, v in conf.items():
        if isinstance(v, dict) and k != "adapters":
            for kk in v:
                assert "%s.%s" % (k, kk) in keys, ("%s.%s" % (k, kk), keys)
        else:
            assert k in keys, (k, keys)
    for env in ("PEFTD_LOG", "PEFTD_BACKEND"):
        assert env in out
    # every environment variable the sources read is documented
    src = subprocess.run(["grep", "-rhoE", r'getenv\("[A-Z0-9_]+"\)', "server", "lib", "kernels", "adapter_store"],
                         cwd=ROOT, capture_output=True).stdout.decode()
    for env in set(re.findall(r'getenv\("([A-Z0-9_]+)"\)', src)):
        assert env in out, (env, "missing from serve --help")


@test
def generate_help_version_and_unknown_options():
    rc, out, err = run("generate", "--help")
    assert rc == 0, err
    for flag in ("--model", "--prompt", "--max-tokens", "--temperature", "--seed", "--top-p", "--top-k",
                 "--threads", "--adapter", "--adapter-scale"):
        assert re.search(r"^  %s\b" % re.escape(flag), out, re.M), (flag, out)
    for args in (("--version",), ("serve", "--version"), ("generate", "--version")):
        rc, out, _ = run(*args)
        assert rc == 0 and re.match(r"^peftd \d+\.\d+\.\d+ \(commit (?:[0-9a-f]+|unknown)\)", out), (args, out)
    for args in (("serve", "--bogus"), ("generate", "--bogus"), ("serve", "--port", "1", "--bogus")):
        rc, out, err = run(*args)
        assert rc == 2 and "unknown option '--bogus'" in err and "needs a value" not in err, (args, err)
    rc, _, err = run("serve", "--port")
    assert rc == 2 and "--port needs a value" in err, err


if __name__ == "__main__":
    harness.run_tests(__file__)
