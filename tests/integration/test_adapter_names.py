"""tests/integration/test_adapter_names.py — adapter names with '/' (Hugging Face-style ids
"org/name", issue 15) against the real daemon: upload under the raw and the percent-encoded
path, generate with it (completions `model` and the `adapter` field; chat resolves `model`
through the same api_parse_model), GET /v1/adapters/{name} and /v1/models/{id} both ways, /v1/models and the paginated
/v1/adapters listings, the per-adapter metrics label, delete both ways, a restart (the store
reopened), the vLLM load/unload endpoints, the name rules (no "..", no empty segment,
bounded, printable), replication to a follower, and with tenants: tenant x's "a" and the public "x/a" are two
adapters that never meet, and a tenant id cannot hold '/'.

The slashed adapter must behave exactly like the same files under a plain name: its greedy
tokens and logprobs are compared with those of the plain-named upload.
"""

import json
import os
import secrets
import shutil
import tempfile
import time
import urllib.parse

import harness
from harness import test

ROOT = harness.ROOT
FIX = os.path.join(ROOT, "tests", "fixtures", "adapters")
R8 = os.path.join(FIX, "lora_r8_all")
R1 = os.path.join(FIX, "lora_r1_all")
PROMPT = "Once upon a time"



def d():
    return harness.daemon  # the file's shared daemon (run_tests starts it)


def enc(name):
    return urllib.parse.quote(name, safe="")


def get(dm, path, headers=None):
    st, _, data = dm.request("GET", path, headers=headers)
    return st, json.loads(data) if data else None


def delete(dm, path, headers=None):
    st, _, data = dm.request("DELETE", path, headers=headers)
    return st, json.loads(data) if data else None


def greedy(dm, model, **extra):
    obj = dm.complete(model=model, prompt=PROMPT, max_tokens=8, temperature=0, logprobs=1, **extra)
    c = obj["choices"][0]
    return c["text"], c["logprobs"]["token_logprobs"], obj["model"]


@test
def slashed_name_upload_generate_list_delete():
    dm = d()
    st, obj = dm.upload("plain-r8", R8)
    assert st == 201, obj
    st, obj = dm.upload("org/name", R8)  # raw '/'
    assert st == 201 and obj["id"] == "org/name" and obj["version"] == 1, obj
    sha = obj["sha256"]
    st, obj = dm.upload(enc("org/name"), R8)  # %2F: the same adapter, a new version
    assert st in (200, 201) and obj["id"] == "org/name" and obj["version"] == 2 and obj["sha256"] == sha, obj
    for path in ("org/name", enc("org/name")):
        st, obj = get(dm, "/v1/adapters/" + path)
        assert st == 200 and obj["id"] == "org/name" and obj["version"] == 2, (path, obj)
        st, obj = get(dm, "/v1/models/" + path)
        assert st == 200 and obj["id"] == "org/name", (path, obj)

    # generation: same tokens and logprobs as the same files under a plain name, and not the base's
    ref_text, ref_lp, _ = greedy(dm, "plain-r8")
    base_text, _, _ = greedy(dm, harness.MODEL_ID)
    assert ref_text != base_text, "the fixture adapter must change the output"
    text, lp, model = greedy(dm, "org/name")
    assert (text, lp, model) == (ref_text, ref_lp, "org/name"), (text, ref_text, model)
    text, lp, _ = greedy(dm, harness.MODEL_ID, adapter="org/name")
    assert (text, lp) == (ref_text, ref_lp)
    st, obj = dm.post("/v1/completions", {"model": "org/other", "prompt": PROMPT, "max_tokens": 1})
    harness.assert_error(st, obj, 404, "model_not_found")
    st, obj = dm.post("/v1/completions", {"model": "org", "prompt": PROMPT, "max_tokens": 1})
    harness.assert_error(st, obj, 404, "model_not_found")

    # listings
    st, obj = get(dm, "/v1/models")
    assert st == 200 and "org/name" in [m["id"] for m in obj["data"]], obj
    st, obj = dm.upload("org", R1)
    assert st == 201, obj
    st, obj = dm.upload("org/zz/deep", R1)
    assert st == 201, obj
    st, obj = get(dm, "/v1/adapters")
    names = [a["id"] for a in obj["data"]]
    assert {"org", "org/name", "org/zz/deep", "plain-r8"} <= set(names), names
    paged, after = [], None
    while True:
        st, obj = get(dm, "/v1/adapters?limit=1" + ("&after=" + enc(after) if after else ""))
        assert st == 200, obj
        paged += [a["id"] for a in obj["data"]]
        if not obj["has_more"]:
            break
        after = obj["last_id"]
    assert paged == names, (paged, names)

    # metrics: the label is the name
    st, _, data = dm.request("GET", "/metrics")
    counts = {l.rsplit(" ", 1)[0]: float(l.rsplit(" ", 1)[1]) for l in data.decode().splitlines()
              if l.startswith("peftd_adapter_requests_total{")}
    assert counts.get('peftd_adapter_requests_total{adapter="org/name"}') == 2, counts

    # delete via %2F, then via raw '/'
    st, obj = delete(dm, "/v1/adapters/" + enc("org/name"))
    assert st == 200 and obj == {"id": "org/name", "object": "adapter", "deleted": True}, obj
    st, obj = get(dm, "/v1/adapters/org/name")
    harness.assert_error(st, obj, 404)
    st, obj = dm.post("/v1/completions", {"model": "org/name", "prompt": PROMPT, "max_tokens": 1})
    harness.assert_error(st, obj, 404, "model_not_found")
    st, obj = get(dm, "/v1/models/org/name")
    harness.assert_error(st, obj, 404, "model_not_found")
    st, obj = delete(dm, "/v1/adapters/org/zz/deep")
    assert st == 200 and obj["id"] == "org/zz/deep", obj
    st, obj = get(dm, "/v1/adapters/org")  # the lookalike stays
    assert st == 200 and obj["id"] == "org", obj


@test
def slashed_names_survive_a_restart():
    store = tempfile.mkdtemp(prefix="peftd-names-")
    try:
        dm = harness.Daemon(store=store)
        try:
            st, obj = dm.upload("hf-org/stories-lora", R8)
            assert st == 201, obj
            before = greedy(dm, "hf-org/stories-lora")
        finally:
            dm.close()
        # restarted, with a configured adapter of a slashed name too (--adapter NAME=DIR:
        # imported once, found in the store on the next start)
        for _ in range(2):
            dm = harness.Daemon(["--adapter", "cfg-org/from-config=" + R8], store=store)
            try:
                st, obj = get(dm, "/v1/adapters/hf-org/stories-lora")
                assert st == 200 and obj["version"] == 1, obj
                assert greedy(dm, "hf-org/stories-lora") == before
                st, obj = get(dm, "/v1/adapters/cfg-org/from-config")
                assert st == 200 and obj["version"] == 1, obj
                assert greedy(dm, "cfg-org/from-config")[:2] == before[:2]
            finally:
                dm.close()
    finally:
        shutil.rmtree(store, ignore_errors=True)


@test
def names_are_still_validated():
    dm = d()
    for name in ("a//b", "a/", "/a", "../a", "a/../b", "a/..", "a/./b", "a/.b", "a/-b", "a b/c", "a:b",
                 "a/b\\c", "x" * 33 + "/" + "y" * 31, "caf\u00e9/x", "a%00b"):
        path = enc(name) if name != "a%00b" else name
        st, obj = dm.upload(path, R1)
        harness.assert_error(st, obj, 400, "invalid_name")
        st, obj = get(dm, "/v1/adapters/" + path)
        harness.assert_error(st, obj, 400, "invalid_name")
        st, obj = delete(dm, "/v1/adapters/" + path)
        harness.assert_error(st, obj, 400, "invalid_name")
    st, obj = dm.upload("x" * 32 + "/" + "y" * 31, R1)  # 64 bytes
    assert st == 201, obj
    # a raw "//" or a trailing '/' in the path is the same invalid name, never a different adapter
    for raw in ("a//b", "a/b/"):
        st, obj = dm.upload(raw, R1)
        harness.assert_error(st, obj, 400, "invalid_name")


@test
def vllm_load_and_unload_with_a_slashed_name():
    tmp = tempfile.mkdtemp(prefix="peftd-names-roots-")
    try:
        root = os.path.join(tmp, "root")
        shutil.copytree(R8, os.path.join(root, "ad"))
        cfg = os.path.join(tmp, "peftd.json")
        with open(cfg, "w") as f:
            json.dump({"store": {"load_roots": [root]}}, f)
        dm = harness.Daemon(["--config", cfg])
        try:
            body = json.dumps({"lora_name": "org/loaded", "lora_path": os.path.join(root, "ad")}).encode()
            st, _, data = dm.request("POST", "/v1/load_lora_adapter", body, {"Content-Type": "application/json"})
            assert (st, data) == (200, b"Success: LoRA adapter 'org/loaded' added successfully."), (st, data)
            assert greedy(dm, "org/loaded")[2] == "org/loaded"
            st, obj = get(dm, "/v1/adapters/org/loaded")
            assert st == 200, obj
            body = json.dumps({"lora_name": "org/loaded"}).encode()
            st, _, data = dm.request("POST", "/v1/unload_lora_adapter", body, {"Content-Type": "application/json"})
            assert st == 200, (st, data)
            st, obj = get(dm, "/v1/adapters/org/loaded")
            harness.assert_error(st, obj, 404)
            body = json.dumps({"lora_name": "org/../x", "lora_path": os.path.join(root, "ad")}).encode()
            st, _, data = dm.request("POST", "/v1/load_lora_adapter", body, {"Content-Type": "application/json"})
            assert st == 400 and b"invalid" in data, (st, data)
        finally:
            dm.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@test
def tenant_names_and_public_slashed_names_never_meet():
    """Tenant x's "a" (key x/a) vs the public "x/a" (key x:a); x's "a/b" vs the public
    "x/a/b": four adapters, each found only under its own (owner, name)."""
    admin_key = "pk_admin_" + secrets.token_hex(12)
    tmp = tempfile.mkdtemp(prefix="peftd-names-auth-")
    cfg = os.path.join(tmp, "peftd.json")
    with open(cfg, "w") as f:
        json.dump({"auth": {"enabled": True, "admin_key_env": "PEFTD_TEST_NAMES_ADMIN"}}, f)
    dm = harness.Daemon(["--config", cfg], env={"PEFTD_TEST_NAMES_ADMIN": admin_key})
    try:
        def call(method, path, key, body=None):
            h = {"Authorization": "Bearer " + key}
            if body is not None:
                h["Content-Type"] = "application/json"
                body = json.dumps(body).encode()
            st, _, data = dm.request(method, path, body, h)
            return st, json.loads(data) if data else None

        st, obj = call("POST", "/v1/admin/tenants", admin_key, {"id": "x/a"})
        harness.assert_error(st, obj, 400)
        st, obj = call("POST", "/v1/admin/tenants", admin_key, {"id": "x"})
        assert st == 201, obj
        st, obj = call("POST", "/v1/admin/tenants/x/keys", admin_key)
        assert st == 201, obj
        xkey = obj["key"]
        auth = lambda k: {"Authorization": "Bearer " + k}
        shas = {}
        for who, name, fix in (("admin", "x/a", R1), ("x", "a", R8), ("admin", "x/a/b", R8), ("x", "a/b", R1)):
            st, obj = dm.upload(name, fix, headers=auth(admin_key if who == "admin" else xkey))
            assert st == 201, (who, name, obj)
            shas[(who, name)] = obj["sha256"]
        assert shas[("admin", "x/a")] != shas[("x", "a")]
        # the admin sees the public ones only; x sees its two and the two public ones
        st, obj = get(dm, "/v1/adapters", auth(admin_key))
        assert sorted(a["id"] for a in obj["data"]) == ["x/a", "x/a/b"], obj
        assert all("owner" not in a for a in obj["data"]), obj
        st, obj = get(dm, "/v1/adapters", auth(xkey))
        got = sorted((a["id"], a.get("owner", "")) for a in obj["data"])
        assert got == [("a", "x"), ("a/b", "x"), ("x/a", ""), ("x/a/b", "")], got
        for who, name in shas:
            st, obj = get(dm, "/v1/adapters/" + enc(name), auth(xkey))
            assert st == 200 and obj["sha256"] == shas[(who, name)], (who, name, obj)
        # x's "a" and the public "x/a" generate differently (different files)
        outs = {}
        for model in ("a", "x/a"):
            st, obj = call("POST", "/v1/completions", xkey,
                           {"model": model, "prompt": PROMPT, "max_tokens": 8, "temperature": 0})
            assert st == 200 and obj["model"] == model, obj
            outs[model] = obj["choices"][0]["text"]
        assert outs["a"] != outs["x/a"], outs
        # x cannot delete the public x/a (403), deleting its own "a" leaves the public "x/a"
        st, obj = delete(dm, "/v1/adapters/x/a", auth(xkey))
        harness.assert_error(st, obj, 403)
        st, obj = delete(dm, "/v1/adapters/a", auth(xkey))
        assert st == 200, obj
        st, obj = get(dm, "/v1/adapters/x/a", auth(admin_key))
        assert st == 200 and obj["sha256"] == shas[("admin", "x/a")], obj
        # deleting the tenant takes "a/b" and leaves the public "x/a/b"
        st, obj = call("DELETE", "/v1/admin/tenants/x", admin_key)
        assert st == 200, obj
        st, obj = get(dm, "/v1/adapters", auth(admin_key))
        assert sorted(a["id"] for a in obj["data"]) == ["x/a", "x/a/b"], obj
    finally:
        dm.close()
        shutil.rmtree(tmp, ignore_errors=True)


def wait_for(cond, what, timeout=120):
    """Polls cond() until true; a generous deadline (replication is ~1 s here), so only a
    stalled follower fails."""
    deadline = time.time() + timeout * harness.SLOW
    while not cond():
        if time.time() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.1)


@test
def slashed_names_replicate_to_a_follower():
    """The change feed carries store keys ("org:name"): a follower applies the put and the
    delete of "org/name" and keeps the lookalike "org"."""
    tmp = tempfile.mkdtemp(prefix="peftd-names-repl-")
    primary = follower = None
    try:
        primary = harness.Daemon(store=os.path.join(tmp, "p"))
        follower = harness.Daemon(["--follow", "http://127.0.0.1:%d" % primary.port], store=os.path.join(tmp, "f"))
        for name, fix in (("org/name", R8), ("org", R1)):
            st, obj = primary.upload(name, fix)
            assert st == 201, obj

        def listed(dm):
            st, obj = get(dm, "/v1/adapters")
            return sorted(a["id"] for a in obj["data"]) if st == 200 else None

        wait_for(lambda: listed(follower) == ["org", "org/name"], "the follower to list org and org/name")
        assert greedy(follower, "org/name") == greedy(primary, "org/name")
        st, obj = delete(primary, "/v1/adapters/" + enc("org/name"))
        assert st == 200, obj
        wait_for(lambda: listed(follower) == ["org"], "the follower to drop org/name")
        st, obj = follower.post("/v1/completions", {"model": "org/name", "prompt": PROMPT, "max_tokens": 1})
        harness.assert_error(st, obj, 404, "model_not_found")
    finally:
        for dm in (follower, primary):
            if dm is not None:
                dm.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    harness.run_tests(__file__)
