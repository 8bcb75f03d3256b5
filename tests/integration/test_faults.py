"""tests/integration/test_faults.py — faults that belong to one request end that request only,
and changes to an adapter never lose the requests already admitted on it.

An adapter whose stored bytes were damaged after upload (a disk error, a bad copy of the
store) cannot be loaded; every request naming it must get an error naming the reason, and
the daemon must go on serving everyone else (issue 9, defect 1: admission freed the failing
request and then read it — under ASan the second such request killed the daemon).

A request admitted on an adapter version that is then replaced or deleted before the
engine gets to load it must still run on that version (it held the version; the store had
dropped its blob, so the load failed with 500 — found by the issue 9 attack run)."""
import concurrent.futures
import json
import os
import shutil
import tempfile
import threading
import time

import harness
from harness import test

FIX = os.path.join(harness.ROOT, "tests", "fixtures", "adapters")

# The store's blob record: "PFB1", 4 reserved bytes, the payload's sha256 (32), the payload.
BLOB_MAGIC, BLOB_HDR = b"PFB1", 40


def damage_blob(store):
    """Flips one payload byte of the (only) blob record in store/data.mdb, leaving the
    header and LMDB's own pages intact: the store's checksum must catch it."""
    path = os.path.join(store, "data.mdb")
    with open(path, "r+b") as f:
        data = f.read()
        at = data.find(BLOB_MAGIC)
        assert at >= 0 and data.find(BLOB_MAGIC, at + 1) < 0, "expected exactly one blob record"
        f.seek(at + BLOB_HDR + 64)
        f.write(bytes([data[at + BLOB_HDR + 64] ^ 0x5A]))


@test
def damaged_adapter_fails_its_requests_only():
    store = tempfile.mkdtemp(prefix="peftd-faults-")
    try:
        own = harness.Daemon(store=store)
        try:
            st, obj = own.upload("broken", os.path.join(FIX, "lora_r8_all"))
            assert st == 201, (st, obj)
        finally:
            assert own.stop() == 0, own.log_text()
            own.close()
        damage_blob(store)
        own = harness.Daemon(store=store)
        try:
            def bad(i):
                return own.post("/v1/completions", {"model": "broken", "prompt": "Once upon a time %d" % i,
                                                    "max_tokens": 4, "temperature": 0})

            def good(i):
                return own.post("/v1/completions", {"model": harness.MODEL_ID, "prompt": "Lily %d" % i,
                                                    "max_tokens": 8, "temperature": 0})

            # 50 requests for the damaged adapter, interleaved with base requests, 8 at a time
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                futs = [(True, pool.submit(bad, i)) if i % 3 else (False, pool.submit(good, i)) for i in range(75)]
                res = [(is_bad, f.result()) for is_bad, f in futs]
            n_bad = 0
            for is_bad, (st, obj) in res:
                if is_bad:
                    n_bad += 1
                    assert 400 <= st < 600, (st, obj)
                    harness.assert_error(st, obj, st)
                    msg = obj["error"]["message"]
                    assert "broken" in msg and "could not be loaded" in msg, msg
                    assert store not in msg, "the store's path reached a tenant: " + msg
                else:
                    assert st == 200, (st, obj)
                    assert obj["usage"]["completion_tokens"] >= 1, obj
            assert n_bad == 50, n_bad
            assert own.alive(), own.log_text()
            st, _, _ = own.request("GET", "/health")
            assert st == 200
            own.complete(prompt="Once upon a time", max_tokens=8)
            own.wait_idle()
        finally:
            status = own.stop()
            log = own.log_text()
            own.close()
        assert status == 0, "exit status %s:\n%s" % (status, log)
    finally:
        shutil.rmtree(store, ignore_errors=True)


def _first_lora_weight_changed(src, dst, delta):
    """A copy of the fixture adapter src whose first lora_B value is shifted by delta:
    other content, so another version with another sha256 (F32 tensors only)."""
    shutil.copytree(src, dst)
    path = os.path.join(dst, "adapter_model.safetensors")
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        hlen = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + hlen])
        name = sorted(k for k in header if k.endswith("lora_B.weight"))[0]
        assert header[name]["dtype"] == "F32", header[name]
        at = 8 + hlen + header[name]["data_offsets"][0]
        import struct
        v = struct.unpack_from("<f", data, at)[0]
        struct.pack_into("<f", data, at, v + delta)
        f.seek(0)
        f.write(bytes(data))
    return dst


@test
def admitted_requests_survive_replace_and_delete():
    tmp = tempfile.mkdtemp(prefix="peftd-swap-")
    cfg = os.path.join(tmp, "peftd.json")
    with open(cfg, "w") as f:
        # one sequence at a time, one adapter slot: a request for the adapter waits in the
        # queue behind a long base request, holding its version, with nothing loaded yet
        json.dump({"engine": {"max_seqs": 1}, "store": {"slots": 1}}, f)
    own = harness.Daemon(["--config", cfg], env={"PEFTD_DEBUG_STEP_DELAY_US": "20000"})
    try:
        src = os.path.join(FIX, "lora_r8_all")
        v2 = _first_lora_weight_changed(src, os.path.join(tmp, "v2"), 0.5)
        # distinct content for each name: a blob shared by two names would stay in the store
        other = _first_lora_weight_changed(src, os.path.join(tmp, "other"), -0.5)
        for name, d in (("swapped", src), ("deleted", other), ("other", os.path.join(FIX, "lora_r1_all"))):
            st, obj = own.upload(name, d)
            assert st == 201, (st, obj)
        req = {"prompt": "Once upon a time", "max_tokens": 12, "temperature": 0, "logprobs": 1}

        def output(obj):  # the text and its logprobs: the version that ran, exactly
            c = obj["choices"][0]
            return c["text"], c["logprobs"]["token_logprobs"]

        want = {n: output(own.complete(model=n, **req)) for n in ("swapped", "deleted")}

        for name, change in (("swapped", lambda: own.upload("swapped", v2)),
                             ("deleted", lambda: own.request("DELETE", "/v1/adapters/deleted")[:1])):
            out = {}
            # another adapter takes the one slot: the version must come from the blob again
            own.complete(model="other", prompt="x", max_tokens=1)
            long_one = threading.Thread(target=lambda: own.complete(prompt="Lily", max_tokens=60, ignore_eos=True))
            long_one.start()
            deadline = time.time() + 30 * harness.SLOW
            while own.metrics().get("peftd_running_requests", 0) < 1 and time.time() < deadline:
                time.sleep(0.01)
            waiter = threading.Thread(target=lambda: out.update(r=own.post("/v1/completions", dict(model=name, **req))))
            waiter.start()
            while own.metrics().get("peftd_waiting_requests", 0) < 1 and time.time() < deadline:
                time.sleep(0.01)
            assert own.metrics().get("peftd_waiting_requests", 0) >= 1, "the request never queued"
            status = change()[0]
            assert status in (200, 201, 204), status
            long_one.join(120 * harness.SLOW)
            waiter.join(120 * harness.SLOW)
            st, obj = out["r"]
            assert st == 200, "%s: the admitted request was lost: %d %s" % (name, st, obj)
            assert output(obj) == want[name], (name, obj)
        # version 2 serves from now on (another first logprob: other weights)
        got = output(own.complete(model="swapped", **req))
        assert got[1][0] != want["swapped"][1][0], "version 2 should differ: %s" % (got,)
        st, obj = own.post("/v1/completions", dict(model="deleted", **req))
        harness.assert_error(st, obj, 404)
        own.wait_idle()
    finally:
        status = own.stop()
        log = own.log_text()
        own.close()
        shutil.rmtree(tmp, ignore_errors=True)
    assert status == 0, "exit status %s:\n%s" % (status, log)


@test
def client_text_cannot_forge_log_lines():
    """Issue 9 attack run: an adapter_config.json value with a newline and terminal escapes
    reached the text log verbatim (the import error quotes it), forging an access line."""
    tmp = tempfile.mkdtemp(prefix="peftd-log-")
    try:
        src = os.path.join(FIX, "lora_r1_all")
        shutil.copytree(src, os.path.join(tmp, "a"))
        path = os.path.join(tmp, "a", "adapter_config.json")
        with open(path) as f:
            cfg = json.load(f)
        cfg["peft_type"] = "X\n2026-12-02T00:00:00.000Z info  access FORGED DELETE /v1/adapters/x 200\u001b[2J"
        with open(path, "w") as f:
            json.dump(cfg, f)
        d = harness.daemon
        st, obj = d.upload("forged", os.path.join(tmp, "a"))
        assert 400 <= st < 500, (st, obj)
        log = open(d.log.name, "rb").read()
        assert b"\x1b" not in log, "a raw escape reached the log"
        assert not any(line.startswith(b"2026-12-02T00:00:00.000Z") for line in log.splitlines()), \
            "a forged line reached the log"
        assert b"FORGED" in log  # the rejection is logged, escaped
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@test
def adapter_config_with_a_key_twice_is_refused():
    """{"r": 1, "r": 8}: cJSON reads 1, PEFT (Python's json) 8 — refused, not guessed."""
    tmp = tempfile.mkdtemp(prefix="peftd-dup-")
    try:
        shutil.copytree(os.path.join(FIX, "lora_r1_all"), os.path.join(tmp, "a"))
        path = os.path.join(tmp, "a", "adapter_config.json")
        with open(path) as f:
            text = f.read()
        assert text.lstrip().startswith("{")
        with open(path, "w") as f:
            f.write(text.replace("{", '{"r": 8, ', 1))  # the file's own "r" comes later
        st, obj = harness.daemon.upload("dupkeys", os.path.join(tmp, "a"))
        harness.assert_error(st, obj, 400)
        assert '"r" twice' in obj["error"]["message"], obj
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@test
def classification_adapters_are_refused_not_served_as_text():
    """task_type SEQ_CLS (a classification head in modules_to_save) was served as a causal
    LM: text its owner never trained for. Other tasks are refused with 422; SEQ_CLS is served
    by /v1/classify (test_classify_score_embed.py), so this copy of a causal LoRA, which
    says SEQ_CLS but has no `score` head, is a 400 naming task_type."""
    tmp = tempfile.mkdtemp(prefix="peftd-task-")
    try:
        for task, want in (("SEQ_CLS", 400), ("TOKEN_CLS", 422), ("FEATURE_EXTRACTION", 422), ("CAUSAL_LM", 201)):
            d = os.path.join(tmp, task)
            shutil.copytree(os.path.join(FIX, "lora_r1_all"), d)
            path = os.path.join(d, "adapter_config.json")
            with open(path) as f:
                cfg = json.load(f)
            cfg["task_type"] = task
            with open(path, "w") as f:
                json.dump(cfg, f)
            st, obj = harness.daemon.upload("task-" + task.lower().replace("_", "-"), d)
            assert st == want, (task, st, obj)
            if want != 201:
                assert "task_type" in obj["error"]["message"], obj
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    harness.run_tests(__file__)
