"""tests/integration/test_adapter_api.py — the adapter resource over HTTP and peftctl:
PUT /v1/adapters/{name} (multipart/form-data, parts recognised by file name), GET list
(pagination), GET one, DELETE, /v1/models, refusals with their statuses, and the peftctl
client (upload, ls, show, rm, generate, exit codes). Every fixture kind is uploaded by a
hand-built multipart body, by peftctl and (when installed) by curl, and generates what
`peftd generate --adapter DIR` generates."""

import http.client
import json
import os
import random
import shutil
import socket
import struct
import subprocess
import tempfile
import time

import harness
from harness import test, write_safetensors

FIX = os.path.join(harness.ROOT, "tests", "fixtures", "adapters")
PEFTCTL = os.path.join(os.path.dirname(harness.BIN), "peftctl")
KINDS = sorted(n for n in os.listdir(FIX) if os.path.exists(os.path.join(FIX, n, "adapter_config.json")))
WEIGHTS = ("adapter_model.safetensors", "adapter.safetensors")
PROMPT = "Once upon a time"
TMP = tempfile.mkdtemp(prefix="peftd-adapter-api-")
_cli_cache = {}


def d():
    return harness.daemon


# ---- helpers ----

def fixture_files(fix):
    dd = os.path.join(FIX, fix)
    return [(n, open(os.path.join(dd, n), "rb").read())
            for n in ("adapter_config.json",) + WEIGHTS if os.path.exists(os.path.join(dd, n))]


def multipart(files, boundary=None):
    """files: [(field name, file name or None, bytes)] -> (content type, body)."""
    boundary = boundary or "----peftd%016x" % random.getrandbits(64)
    out = []
    for field, fname, data in files:
        disp = 'form-data; name="%s"' % field
        if fname is not None:
            disp += '; filename="%s"' % fname
        out.append(("--%s\r\nContent-Disposition: %s\r\nContent-Type: application/octet-stream\r\n\r\n"
                    % (boundary, disp)).encode() + data + b"\r\n")
    return "multipart/form-data; boundary=" + boundary, b"".join(out) + ("--%s--\r\n" % boundary).encode()


def put(dm, name, files, content_type=None, chunked=False, quote=True):
    """PUT a multipart body built from files (field names arbitrary). Returns (status, obj)."""
    ctype, body = multipart(files)
    c = dm.conn(120)
    try:
        path = "/v1/adapters/" + (name if not quote else urlquote(name))
        hdrs = {"Content-Type": content_type or ctype}
        if chunked:
            step = 64 * 1024
            c.request("PUT", path, body=(body[i:i + step] for i in range(0, len(body), step)), headers=hdrs,
                      encode_chunked=True)
        else:
            c.request("PUT", path, body=body, headers=hdrs)
        r = c.getresponse()
        data = r.read()
    finally:
        c.close()
    try:
        return r.status, json.loads(data)
    except ValueError:
        raise AssertionError("status %d, body is not JSON: %r" % (r.status, data[:300]))


def upload_fixture(dm, name, fix):
    files = [("field%d" % i, fname, data) for i, (fname, data) in enumerate(fixture_files(fix))]
    return put(dm, name, files)


def urlquote(s):
    import urllib.parse
    return urllib.parse.quote(s, safe="")


def get(dm, path):
    st, _, body = dm.request("GET", path)
    return st, json.loads(body)


def cli_generate(fix, prompt=PROMPT, max_tokens=16):
    key = (fix, prompt, max_tokens)
    if key not in _cli_cache:
        args = [harness.BIN, "generate", "--model", harness.MODEL_DIR, "--prompt", prompt, "--max-tokens",
                str(max_tokens), "--temperature", "0"]
        if fix:
            args += ["--adapter", os.path.join(FIX, fix)]
        out = subprocess.run(args, cwd=harness.ROOT, capture_output=True, timeout=120 * harness.SLOW)
        assert out.returncode == 0, out.stderr.decode(errors="replace")
        _cli_cache[key] = out.stdout.decode()
    return _cli_cache[key]


def generate(dm, model, prompt=PROMPT, max_tokens=16):
    return dm.complete(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0)["choices"][0]["text"]


def peftctl(dm, *args, env=None, timeout=120):
    if not os.access(PEFTCTL, os.X_OK):
        raise AssertionError("peftctl not built (%s): `make all` builds it" % PEFTCTL)
    url = ["--url", "http://127.0.0.1:%d" % dm.port] if dm else []
    e = dict(os.environ)
    e.pop("PEFTD_URL", None)
    e.pop("PEFTD_API_KEY", None)
    e.update(env or {})
    return subprocess.run([PEFTCTL, *url, *args], capture_output=True, timeout=timeout * harness.SLOW, env=e)


def check_meta(obj, name, kind=None):
    for k in ("id", "object", "version", "kind", "ranks", "n_params", "bytes", "sha256", "created", "updated",
              "targets", "n_virtual"):
        assert k in obj, "%s missing in %s" % (k, obj)
    assert obj["id"] == name and obj["object"] == "adapter", obj
    assert isinstance(obj["ranks"], list) and isinstance(obj["targets"], list), obj
    assert len(obj["sha256"]) == 64 and obj["bytes"] > 0 and obj["n_params"] > 0, obj
    if kind:
        assert obj["kind"] == kind, obj


def staging_empty(dm):
    """Every upload's staging directory is gone (<store>/tmp holds nothing)."""
    tmp = os.path.join(dm.store, "tmp")
    left = os.listdir(tmp) if os.path.isdir(tmp) else []
    assert not left, "staging left behind: %s" % left


def wait_for(cond, what, timeout=10):
    deadline = time.time() + timeout * harness.SLOW
    while not cond():
        assert time.time() < deadline, "timed out waiting for " + what
        time.sleep(0.02)


def expected_kind(fix):
    cfg = json.load(open(os.path.join(FIX, fix, "adapter_config.json")))
    t = cfg.get("peft_type")
    if t is None:  # AdapterHub: served as the form it reduces to (issue 16); MAM as a bottleneck with a prefix
        hub = cfg["config"]
        arch = hub.get("architecture") or "bottleneck"
        if arch == "lora":
            return "ia3" if hub.get("composition_mode") == "scale" else "lora"
        return {"prefix_tuning": "prefix_tuning", "union": "bottleneck", "bottleneck": "bottleneck"}.get(arch)
    # AdaLoRA, VeRA, LoHa and LoKr are converted to LoRA (pairs or dense deltas) at import, P-tuning served as prompt
    # tuning; OFT and BOFT are rotations of the projections' inputs, kinds of their own (issue 16)
    return {"LORA": "lora", "ADALORA": "lora", "VERA": "lora", "LOHA": "lora", "LOKR": "lora", "OFT": "oft", "BOFT": "boft", "IA3": "ia3",
            "LN_TUNING": "ln_tuning", "PROMPT_TUNING": "prompt_tuning", "P_TUNING": "prompt_tuning",
            "PREFIX_TUNING": "prefix_tuning"}.get(t)


def lora_config(rank=1):
    return json.dumps({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 8,
                       "target_modules": ["q_proj"], "lora_dropout": 0.0, "bias": "none",
                       "fan_in_fan_out": False}).encode()


# ---- uploads of every kind ----

@test
def upload_every_fixture_kind_by_multipart_and_generate():
    dm = d()
    for fix in KINDS:
        name = "mp-" + fix
        st, obj = upload_fixture(dm, name, fix)
        assert st == 201, (fix, st, obj)
        check_meta(obj, name, expected_kind(fix))
        assert obj["version"] == 1, obj
        got = generate(dm, name)
        want = cli_generate(fix)
        assert got == want, "%s: server %r, CLI %r" % (fix, got, want)
    assert generate(dm, harness.MODEL_ID) == cli_generate(None)
    staging_empty(dm)


@test
def upload_every_fixture_kind_with_peftctl():
    dm = d()
    for fix in KINDS:
        name = "ctl-" + fix
        r = peftctl(dm, "upload", name, os.path.join(FIX, fix))
        out = r.stdout.decode()
        assert r.returncode == 0, (fix, r.returncode, r.stderr.decode())
        assert "version 1" in out and expected_kind(fix) in out, out
        st, obj = get(dm, "/v1/adapters/" + name)
        assert st == 200, obj
        assert obj["sha256"] in out, (obj, out)
        assert generate(dm, name) == cli_generate(fix), fix
        # not a TTY here: no progress bar on stderr
        assert b"\r" not in r.stderr, r.stderr
    staging_empty(dm)


@test
def upload_with_curl():
    curl = shutil.which("curl")
    if not curl:
        harness.skip("curl not installed")
    dm = d()
    for fix in ("lora_r8_all", "pfeiffer"):
        fdir = os.path.join(FIX, fix)
        args = [curl, "-sS", "-X", "PUT", "-w", "\n%{http_code}"]
        for i, (n, _) in enumerate(fixture_files(fix)):
            args += ["-F", "%s=@%s" % ("ab"[i], os.path.join(fdir, n))]
        args.append("http://127.0.0.1:%d/v1/adapters/curl-%s" % (dm.port, fix))
        r = subprocess.run(args, capture_output=True, timeout=60 * harness.SLOW)
        assert r.returncode == 0, r.stderr
        body, code = r.stdout.decode().rsplit("\n", 1)
        assert code == "201", (code, body)
        check_meta(json.loads(body), "curl-" + fix, expected_kind(fix))
        assert generate(dm, "curl-" + fix) == cli_generate(fix)


# ---- show, list, models ----

@test
def show_and_models_list_stored_adapters():
    dm = d()
    # the model card save_pretrained writes next to the files is accepted and dropped
    files = [("f%d" % i, n, b) for i, (n, b) in enumerate(fixture_files("lora_r8_all"))]
    st, obj = put(dm, "show-me", files + [("card", "README.md", b"# my adapter\n")])
    assert st in (200, 201), obj
    st, shown = get(dm, "/v1/adapters/show-me")
    assert st == 200
    check_meta(shown, "show-me", "lora")
    assert shown["ranks"] == [8] and shown["sha256"] == obj["sha256"], shown
    assert "q_proj" in shown["targets"], shown
    st, _, body = dm.request("HEAD", "/v1/adapters/show-me")
    assert st == 200
    st, err = get(dm, "/v1/adapters/nobody")
    harness.assert_error(st, err, 404)
    st, models = get(dm, "/v1/models")
    assert st == 200
    ids = [m["id"] for m in models["data"]]
    assert ids[0] == harness.MODEL_ID, ids
    assert "show-me" in ids, ids
    m = models["data"][ids.index("show-me")]
    assert m["parent"] == harness.MODEL_ID and m["adapter_kind"] == "lora", m
    assert ids[1:] == sorted(ids[1:]), ids


@test
def list_pagination_concatenates_to_all_names():
    dm = harness.Daemon()
    try:
        names = ["pg-%02d-%s" % (i, random.choice("abc")) for i in range(30)]
        random.shuffle(names)
        for n in names:
            st, obj = upload_fixture(dm, n, "lora_r1_all")
            assert st == 201, (n, st, obj)
        seen, after, pages = [], None, 0
        while True:
            path = "/v1/adapters?limit=7" + ("&after=" + after if after else "")
            st, obj = get(dm, path)
            assert st == 200 and obj["object"] == "list", obj
            assert len(obj["data"]) <= 7
            pages += 1
            seen += [m["id"] for m in obj["data"]]
            if not obj["has_more"]:
                break
            assert obj["last_id"] == obj["data"][-1]["id"], obj
            after = obj["last_id"]
        assert pages == 5, pages
        assert seen == sorted(names), seen
        st, obj = get(dm, "/v1/adapters")
        assert [m["id"] for m in obj["data"]] == sorted(names) and obj["has_more"] is False
        st, obj = get(dm, "/v1/adapters?limit=1000&after=" + sorted(names)[-1])
        assert st == 200 and obj["data"] == [] and obj["has_more"] is False and obj["last_id"] is None, obj
        for bad in ("limit=0", "limit=1001", "limit=abc", "limit=", "limit=5x", "after=../x", "after=" + "a" * 65):
            st, obj = get(dm, "/v1/adapters?" + bad)
            harness.assert_error(st, obj, 400)
        # peftctl ls follows the pages
        r = peftctl(dm, "ls", "--page-size", "7")
        assert r.returncode == 0, r.stderr
        rows = r.stdout.decode().splitlines()
        assert rows[0].startswith("NAME"), rows
        assert [row.split()[0] for row in rows[1:]] == sorted(names), rows
        r = peftctl(dm, "ls", "--limit", "10", "--page-size", "4")
        assert [row.split()[0] for row in r.stdout.decode().splitlines()[1:]] == sorted(names)[:10]
        st, models = get(dm, "/v1/models")
        assert [m["id"] for m in models["data"]] == [harness.MODEL_ID] + sorted(names)
        staging_empty(dm)
    finally:
        dm.close()


# ---- delete, replace ----

@test
def delete_then_404_everywhere():
    dm = d()
    st, obj = upload_fixture(dm, "doomed", "ia3")
    assert st in (200, 201), obj
    generate(dm, "doomed")
    st, _, body = dm.request("DELETE", "/v1/adapters/doomed")
    obj = json.loads(body)
    assert st == 200 and obj == {"id": "doomed", "object": "adapter", "deleted": True}, (st, obj)
    st, obj = get(dm, "/v1/adapters/doomed")
    harness.assert_error(st, obj, 404)
    st, obj = dm.post("/v1/completions", {"model": "doomed", "prompt": "x", "max_tokens": 2})
    harness.assert_error(st, obj, 404)
    st, _, body = dm.request("DELETE", "/v1/adapters/doomed")
    harness.assert_error(st, json.loads(body), 404)
    st, models = get(dm, "/v1/models")
    assert "doomed" not in [m["id"] for m in models["data"]]
    # a new upload under the name starts over
    st, obj = upload_fixture(dm, "doomed", "lora_r1_all")
    assert st == 201 and obj["version"] == 1, (st, obj)


@test
def replace_increments_version_and_changes_output():
    dm = d()
    st, v1 = upload_fixture(dm, "swap", "lora_r8_all")
    assert st == 201, v1
    assert generate(dm, "swap") == cli_generate("lora_r8_all")
    st, v2 = upload_fixture(dm, "swap", "lora_dora")
    assert st == 200, (st, v2)
    assert v2["version"] == v1["version"] + 1 and v2["sha256"] != v1["sha256"], (v1, v2)
    assert v2["created"] == v1["created"] and v2["updated"] >= v1["updated"], (v1, v2)
    assert generate(dm, "swap") == cli_generate("lora_dora")
    assert cli_generate("lora_dora") != cli_generate("lora_r8_all")
    st, shown = get(dm, "/v1/adapters/swap")
    assert shown["version"] == v2["version"] and shown["sha256"] == v2["sha256"], shown


# ---- refusals ----

@test
def bad_uploads_are_refused_with_clear_errors():
    dm = d()
    cfg, w = fixture_files("lora_r8_all")
    # an unknown file, whatever its field
    st, obj = put(dm, "bad", [("a", *cfg), ("b", *w), ("c", "notes.txt", b"hello")])
    harness.assert_error(st, obj, 400)
    assert "notes.txt" in obj["error"]["message"], obj
    # weights or config missing
    st, obj = put(dm, "bad", [("a", *cfg)])
    harness.assert_error(st, obj, 400)
    assert "weights" in obj["error"]["message"], obj
    st, obj = put(dm, "bad", [("b", *w)])
    harness.assert_error(st, obj, 400)
    assert "adapter_config.json" in obj["error"]["message"], obj
    # a form field that is not a file
    st, obj = put(dm, "bad", [("a", *cfg), ("b", *w), ("comment", None, b"hi")])
    harness.assert_error(st, obj, 400)
    assert "comment" in obj["error"]["message"], obj
    # the same file twice
    st, obj = put(dm, "bad", [("a", *cfg), ("b", *w), ("c", *w)])
    harness.assert_error(st, obj, 400)
    # pickle weights: never unpickled
    for pk in ("adapter_model.bin", "pytorch_adapter.bin"):
        st, obj = put(dm, "bad", [("a", *cfg), ("b", pk, b"\x80\x02}q\x00.")])
        harness.assert_error(st, obj, 422)
        assert "pickle" in obj["error"]["message"], obj
    # not multipart
    st, obj = put(dm, "bad", [("a", *cfg), ("b", *w)], content_type="application/json")
    harness.assert_error(st, obj, 415)
    # malformed multipart (no closing boundary)
    c = dm.conn(30)
    try:
        c.request("PUT", "/v1/adapters/bad", body=b"--xyz\r\nContent-Disposition: form-data; name=\"a\"; "
                  b"filename=\"adapter_config.json\"\r\n\r\n{}",
                  headers={"Content-Type": "multipart/form-data; boundary=xyz"})
        r = c.getresponse()
        harness.assert_error(r.status, json.loads(r.read()), 400)
    finally:
        c.close()
    # malformed JSON config
    st, obj = put(dm, "bad", [("a", "adapter_config.json", b'{"peft_type": "LORA", "r": '), ("b", *w)])
    harness.assert_error(st, obj, 400)
    # a client that hangs up mid-upload leaves nothing behind
    ctype, body = multipart([("a", *cfg), ("b", *w)])
    c = dm.conn(30)
    c.putrequest("PUT", "/v1/adapters/hangup")
    c.putheader("Content-Type", ctype)
    c.putheader("Content-Length", str(len(body)))
    c.endheaders()
    c.send(body[:len(body) // 2])
    tmp = os.path.join(dm.store, "tmp")
    wait_for(lambda: os.path.isdir(tmp) and os.listdir(tmp), "the upload's staging directory")
    # An abortive close (RST): libmicrohttpd (0.9.75, edge-triggered epoll) sometimes misses
    # a plain FIN that follows body bytes it already read; such a connection is then closed
    # by the idle timeout (http timeout_s) and cleaned up the same way, only later.
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    wait_for(lambda: not os.listdir(tmp), "the staging directory removed after the hang-up")
    st, obj = get(dm, "/v1/adapters/hangup")
    harness.assert_error(st, obj, 404)
    # nothing was stored under the name, and no staging is left
    st, obj = get(dm, "/v1/adapters/bad")
    harness.assert_error(st, obj, 404)
    staging_empty(dm)
    assert generate(dm, harness.MODEL_ID)  # still serving


@test
def invalid_names_are_refused():
    dm = d()
    files = [("a", n, b) for n, b in fixture_files("lora_r1_all")]
    for name in ("../x", "a" * 65, "-x", ".hidden", "a b", "caf\u00e9", "x//y", "x/", "x/../y"):
        st, obj = put(dm, name, files)
        harness.assert_error(st, obj, 400)
        assert "name" in obj["error"]["message"], (name, obj)
        st, obj = get(dm, "/v1/adapters/" + urlquote(name))
        harness.assert_error(st, obj, 400)
    st, obj = put(dm, "a" * 64, files)
    assert st == 201, obj
    # the empty name
    st, obj = put(dm, "", files, quote=False)
    harness.assert_error(st, obj, 400)
    # methods
    st, _, body = dm.request("POST", "/v1/adapters/x", body=b"{}")
    harness.assert_error(st, json.loads(body), 405)
    st, h, body = dm.request("DELETE", "/v1/adapters")
    assert st == 405 and "GET" in h.get("allow", ""), (st, h)


@test
def incompatible_adapter_gets_422_naming_the_tensor():
    dm = d()
    dd = os.path.join(TMP, "wrong_shape")
    os.makedirs(dd, exist_ok=True)
    rng = random.Random(3)
    t = {}
    for l in range(5):
        p = "base_model.model.model.layers.%d.self_attn.q_proj." % l
        inner = 48 if l == 2 else 64  # stories260K's hidden size is 64: layer 2's A is wrong
        t[p + "lora_A.weight"] = ((1, inner), [rng.uniform(-0.5, 0.5) for _ in range(inner)])
        t[p + "lora_B.weight"] = ((64, 1), [rng.uniform(-0.5, 0.5) for _ in range(64)])
    write_safetensors(os.path.join(dd, "adapter_model.safetensors"), t)
    with open(os.path.join(dd, "adapter_config.json"), "wb") as f:
        f.write(lora_config())
    files = [("x", "adapter_config.json", lora_config()),
             ("y", "adapter_model.safetensors", open(os.path.join(dd, "adapter_model.safetensors"), "rb").read())]
    st, obj = put(dm, "wrong", files)
    harness.assert_error(st, obj, 422, "adapter_incompatible")
    assert "layers.2.self_attn.q_proj" in obj["error"]["message"], obj
    r = peftctl(dm, "upload", "wrong", dd)
    assert r.returncode == 1 and b"layers.2.self_attn.q_proj" in r.stderr, (r.returncode, r.stderr)
    st, obj = get(dm, "/v1/adapters/wrong")
    harness.assert_error(st, obj, 404)


@test
def unservable_configs_get_422_at_upload_naming_the_field():
    """Issue 9 #2 / #12: what the forward would refuse or turn into garbage is refused at
    upload (was 201, then 500 on every completion / for the whole batch)."""
    dm = d()
    _, w = fixture_files("lora_r8_all")
    cfg = json.loads(fixture_files("lora_r8_all")[0][1])
    for field, value, want in (("lora_alpha", 1e308, "lora_alpha"), ("lora_alpha", 3.5e38, "lora_alpha"),
                               ("alpha_pattern", {"q_proj": 1e308}, "alpha_pattern"),
                               ("layers_to_transform", [1e300], "layers_to_transform")):
        bad = dict(cfg, **{field: value})
        st, obj = put(dm, "unservable", [("a", "adapter_config.json", json.dumps(bad).encode()), ("b", *w)])
        harness.assert_error(st, obj, 422)
        assert want in obj["error"]["message"], (field, obj)
    hub_cfg, hub_w = fixture_files("pfeiffer")
    hub = json.loads(hub_cfg[1])
    for field, value in (("scaling", 1e308), ("residual_before_ln", False), ("original_ln_after", False)):
        bad = json.loads(json.dumps(hub))
        bad["config"][field] = value
        st, obj = put(dm, "unservable", [("a", "adapter_config.json", json.dumps(bad).encode()), ("b", *hub_w)])
        harness.assert_error(st, obj, 422)
        assert field in obj["error"]["message"], (field, obj)
    st, obj = get(dm, "/v1/adapters/unservable")
    harness.assert_error(st, obj, 404)
    assert generate(dm, harness.MODEL_ID)


@test
def import_gaps_get_422_naming_the_field():
    """Issue 9 import gaps: a LoRA rank above max(in, out) of its module (a huge rank sized the
    SGMV workspace of every step it joined), prompt tuning with num_virtual_tokens >= the
    base's 512 positions (no room for a prompt), and NaN / Inf in a tensor: 422 naming the
    field or tensor, nothing stored. (Ranks and virtual tokens were 201 on the old code.)"""
    dm = d()
    dd = os.path.join(TMP, "gaps")
    os.makedirs(dd, exist_ok=True)
    wpath = os.path.join(dd, "adapter_model.safetensors")

    def lora(rank, poison=None):
        t = {}
        for l in range(5):
            p = "base_model.model.model.layers.%d.self_attn.q_proj." % l
            t[p + "lora_A.weight"] = ((rank, 64), [0.01] * (rank * 64))
            t[p + "lora_B.weight"] = ((64, rank), [0.01] * (64 * rank))
        if poison:
            t["base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"][1][5] = poison
        write_safetensors(wpath, t)
        return [("x", "adapter_config.json", lora_config(rank)),
                ("y", "adapter_model.safetensors", open(wpath, "rb").read())]

    for files, want in ((lora(65), "field 'r' is 65"), (lora(1, float("nan")), "layers.1.self_attn.q_proj.lora_B"),
                        (lora(1, float("inf")), "layers.1.self_attn.q_proj.lora_B")):
        st, obj = put(dm, "gap", files)
        harness.assert_error(st, obj, 422)
        assert want in obj["error"]["message"], (want, obj)
    write_safetensors(wpath, {"prompt_embeddings": ((512, 64), [0.01] * (512 * 64))})
    cfg = json.dumps({"peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": 512,
                      "token_dim": 64}).encode()
    st, obj = put(dm, "gap", [("x", "adapter_config.json", cfg), ("y", "adapter_model.safetensors",
                                                                   open(wpath, "rb").read())])
    harness.assert_error(st, obj, 422)
    assert "num_virtual_tokens" in obj["error"]["message"], obj
    st, obj = get(dm, "/v1/adapters/gap")
    harness.assert_error(st, obj, 404)
    st, obj = put(dm, "gap", lora(64))  # == max(in, out) of q_proj: served
    assert st == 201, (st, obj)


@test
def uploaded_dora_at_any_scale_matches_peft():
    """Issue 9 #13 through the store: an uploaded DoRA adapter (blob format 2 with its row
    statistics, loaded by the cache tiers) at adapter_scale 0.5, 0 and 2 answers 200 with
    PEFT's first greedy token and logprob (log-softmax of PEFT's logits, within 1e-3). The
    old code refused none of them over HTTP and served the norm of scale 1 (off by ~2)."""
    import math
    dm = d()
    st, meta = upload_fixture(dm, "dora_any_scale", "lora_dora")
    assert st in (200, 201), (st, meta)
    with open(os.path.join(FIX, "lora_dora", "reference_scales.json")) as f:
        ref = json.load(f)
    for c in ref["scales"]:
        obj = dm.complete(model="dora_any_scale", prompt=c["input_ids"], max_tokens=2, temperature=0, logprobs=0,
                          adapter_scale=c["scale"])
        row = c["logits"][-1]
        top = max(row)
        want = row[c["greedy"][0]] - (top + math.log(sum(math.exp(v - top) for v in row)))
        got = obj["choices"][0]["logprobs"]["token_logprobs"][0]
        assert abs(got - want) <= 1e-3, (c["scale"], got, want)


@test
def upload_over_the_limit_gets_413():
    cfgf = os.path.join(TMP, "small_upload.json")
    with open(cfgf, "w") as f:
        json.dump({"model": harness.MODEL_DIR, "store": {"max_upload_mb": 1}}, f)
    dm = harness.Daemon(["--config", cfgf])
    try:
        cfg, _ = fixture_files("lora_r1_all")
        big = ("adapter_model.safetensors", os.urandom(3 << 19))  # 1.5 MiB
        # declared length: refused from the headers alone, before any body is sent
        ctype, body = multipart([("a", *cfg), ("b", *big)])
        c = dm.conn(30)
        try:
            c.putrequest("PUT", "/v1/adapters/big")
            c.putheader("Content-Type", ctype)
            c.putheader("Content-Length", str(len(body)))
            c.endheaders()
            r = c.getresponse()
            harness.assert_error(r.status, json.loads(r.read()), 413)
        finally:
            c.close()
        # chunked (no length): refused once the limit is passed, the rest drained
        st, obj = put(dm, "big", [("a", *cfg), ("b", *big)], chunked=True)
        harness.assert_error(st, obj, 413)
        # the JSON body limit (1 MiB) does not apply to uploads: 0.9 MiB + a real adapter is fine
        st, obj = upload_fixture(dm, "fits", "lora_r8_all")
        assert st == 201, obj
        st, obj = get(dm, "/v1/adapters/big")
        harness.assert_error(st, obj, 404)
        staging_empty(dm)
        # peftctl reports the server's refusal with exit status 1
        dd = os.path.join(TMP, "big")
        os.makedirs(dd, exist_ok=True)
        with open(os.path.join(dd, "adapter_config.json"), "wb") as f:
            f.write(cfg[1])
        with open(os.path.join(dd, "adapter_model.safetensors"), "wb") as f:
            f.write(big[1])
        r = peftctl(dm, "upload", "big", dd)
        assert r.returncode == 1 and b"limit" in r.stderr, (r.returncode, r.stderr)
    finally:
        dm.close()


@test
def large_upload_streams_within_the_default_limit():
    """A weights part larger than the JSON body limit (1 MiB) is staged and validated, not
    refused for size: the rank-64 LoRA fixture (~1.4 MiB)."""
    dm = d()
    assert os.path.exists(os.path.join(FIX, "lora_r64_all", "adapter_model.safetensors")), \
        "the committed lora_r64_all fixture is missing"
    st, obj = upload_fixture(dm, "r64", "lora_r64_all")
    assert st == 201, obj
    assert obj["ranks"] == [64], obj
    assert generate(dm, "r64") == cli_generate("lora_r64_all")


# ---- peftctl ----

@test
def peftctl_show_rm_generate_and_exit_codes():
    dm = d()
    r = peftctl(dm, "upload", "ctl-gen", os.path.join(FIX, "prompt_tuning"))
    assert r.returncode == 0, r.stderr
    r = peftctl(dm, "show", "ctl-gen")
    assert r.returncode == 0, r.stderr
    obj = json.loads(r.stdout)
    check_meta(obj, "ctl-gen", "prompt_tuning")
    assert obj["n_virtual"] > 0, obj
    want = cli_generate("prompt_tuning", "The dog", 20)
    r = peftctl(dm, "generate", "--model", "ctl-gen", "--prompt", "The dog", "--max-tokens", "20",
                "--temperature", "0")
    assert r.returncode == 0 and r.stdout.decode() == want, (r.stdout, want, r.stderr)
    r = peftctl(dm, "generate", "--model", "ctl-gen", "--prompt", "The dog", "--max-tokens", "20",
                "--temperature", "0", "--stream")
    assert r.returncode == 0 and r.stdout.decode() == want, (r.stdout, want, r.stderr)
    r = peftctl(None, "generate", "--model", harness.MODEL_ID, "--prompt", PROMPT, "--max-tokens", "16",
                "--temperature", "0", env={"PEFTD_URL": "http://127.0.0.1:%d" % dm.port,
                                           "PEFTD_API_KEY": "sk-test"})
    assert r.returncode == 0 and r.stdout.decode() == cli_generate(None), r
    r = peftctl(dm, "rm", "ctl-gen")
    assert r.returncode == 0 and b"deleted" in r.stdout, r
    # the server says no: 1, with its message
    r = peftctl(dm, "rm", "ctl-gen")
    assert r.returncode == 1 and b"ctl-gen" in r.stderr and b"404" in r.stderr, r
    r = peftctl(dm, "show", "nobody")
    assert r.returncode == 1, r
    r = peftctl(dm, "generate", "--model", "nobody", "--prompt", "x")
    assert r.returncode == 1 and b"nobody" in r.stderr, r
    r = peftctl(dm, "upload", "../x", os.path.join(FIX, "ia3"))
    assert r.returncode == 1 and b"name" in r.stderr, r
    # usage: 2
    for args in (("upload", "x"), ("upload", "x", "/nonexistent/dir"), ("frobnicate",), (),
                 ("ls", "--limit", "0"), ("generate", "--prompt", "x"), ("show",), ("rm", "a", "b"),
                 ("--url", "ftp://x", "ls")):
        r = peftctl(dm, *args)
        assert r.returncode == 2, (args, r.returncode, r.stderr)
        assert r.stderr and not r.stdout, (args, r)
    pk = os.path.join(TMP, "pickle_only")
    os.makedirs(pk, exist_ok=True)
    shutil.copy(os.path.join(FIX, "lora_r1_all", "adapter_config.json"), pk)
    with open(os.path.join(pk, "adapter_model.bin"), "wb") as f:
        f.write(b"\x80\x02}q\x00.")
    r = peftctl(dm, "upload", "pk", pk)
    assert r.returncode == 2 and b"pickle" in r.stderr, r
    # cannot connect: 3
    r = peftctl(None, "--url", "http://127.0.0.1:%d" % harness.free_port(), "ls")
    assert r.returncode == 3 and r.stderr, r
    # on a terminal, upload draws a progress bar on stderr (and clears it)
    import pty
    master, slave = pty.openpty()
    p = subprocess.Popen([PEFTCTL, "--url", "http://127.0.0.1:%d" % dm.port, "upload", "tty-up",
                          os.path.join(FIX, "lora_r64_all")], stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    out, _ = p.communicate(timeout=60 * harness.SLOW)
    tty = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        tty += chunk
    os.close(master)
    assert p.returncode == 0 and b"version 1" in out, (p.returncode, out, tty)
    assert b"100%" in tty and b"[" + b"#" * 30 + b"]" in tty, tty
    r = peftctl(dm, "--help")
    assert r.returncode == 0 and b"upload NAME DIR" in r.stdout, r


@test
def nul_and_control_bytes_in_names_base_model_name_and_no_server_paths():
    """Issue 9 defect 15: PUT /v1/adapters/a%00b replaced "a" (the decoded NUL ended the
    name); an adapter could take the base model's id (then listed twice); error messages
    showed the server's staging paths."""
    dm = d()
    files = [("a", n, b) for n, b in fixture_files("lora_r1_all")]
    st, obj = put(dm, "nulvictim", files)
    assert st == 201, obj
    sha = obj["sha256"]
    other = [("a", n, b) for n, b in fixture_files("lora_r8_all")]
    for raw in ("nulvictim%00b", "nulvictim%00", "nul%01victim", "nulvictim%0a", "nulvictim%7f"):
        st, obj = put(dm, raw, other, quote=False)
        harness.assert_error(st, obj, 400, "invalid_name")
        st, _, body = dm.request("GET", "/v1/adapters/" + raw)
        harness.assert_error(st, json.loads(body), 400)
        st, _, body = dm.request("DELETE", "/v1/adapters/" + raw)
        harness.assert_error(st, json.loads(body), 400)
    st, obj = get(dm, "/v1/adapters/nulvictim")
    assert st == 200 and obj["sha256"] == sha and obj["version"] == 1, obj
    # the base model's id
    st, obj = put(dm, harness.MODEL_ID, files)
    harness.assert_error(st, obj, 409)
    assert harness.MODEL_ID in obj["error"]["message"] and "base model" in obj["error"]["message"], obj
    st, obj = get(dm, "/v1/models")
    ids = [m["id"] for m in obj["data"]]
    assert ids.count(harness.MODEL_ID) == 1, ids
    # a broken upload: the answer names the file, not where the server staged it
    cfg = dict(json.loads(fixture_files("lora_r1_all")[0][1]))
    st, obj = put(dm, "nopath", [("a", "adapter_config.json", json.dumps(cfg).encode())])
    harness.assert_error(st, obj, 400)
    bad = [("a", "adapter_config.json", b"{not json"), ("b", "adapter_model.safetensors", b"\0" * 64)]
    st, obj = put(dm, "nopath", bad)
    assert 400 <= st < 500, (st, obj)
    msg = obj["error"]["message"]
    assert dm.store not in msg and "/tmp" not in msg and "upload-" not in msg, msg
    st, obj = put(dm, "nopath", [("a", "adapter_config.json", json.dumps(cfg).encode()),
                                 ("b", "adapter_model.safetensors", b"\0" * 64)])
    assert 400 <= st < 500, (st, obj)
    msg = obj["error"]["message"]
    assert dm.store not in msg and "/tmp" not in msg and "upload-" not in msg, msg


if __name__ == "__main__":
    try:
        harness.run_tests(__file__)
    finally:
        shutil.rmtree(TMP, ignore_errors=True)
