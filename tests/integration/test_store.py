"""tests/integration/test_store.py — the adapter store end to end (issue #4 acceptance):
hot swap under load, crash safety under SIGKILL, 10,000 stored adapters with 1,000 of
them served through a 32-slot pool, and restarts that keep everything.

Adapters are uploaded over HTTP as multipart/form-data, exactly like
`curl -F a=@adapter_config.json -F b=@adapter_model.safetensors`. Small random LoRA
adapters are written by this file with the standard library (no numpy in CI)."""

import hashlib
import http.client
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time

import harness
from harness import test, write_safetensors

FIX = os.path.join(harness.ROOT, "tests", "fixtures", "adapters")
TMP = tempfile.mkdtemp(prefix="peftd-store-test-")


# ---- adapters and uploads ----

def tiny_lora(path, seed, rank=1, layers=5, hidden=64):
    """A rank-1 PEFT LoRA on q_proj of stories260K (hidden 64, 5 layers), non-trivial B."""
    os.makedirs(path, exist_ok=True)
    rng = random.Random(seed)
    t = {}
    for l in range(layers):
        p = "base_model.model.model.layers.%d.self_attn.q_proj." % l
        t[p + "lora_A.weight"] = ((rank, hidden), [rng.uniform(-0.5, 0.5) for _ in range(rank * hidden)])
        t[p + "lora_B.weight"] = ((hidden, rank), [rng.uniform(-0.5, 0.5) for _ in range(hidden * rank)])
    write_safetensors(os.path.join(path, "adapter_model.safetensors"), t)
    cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 8,
           "target_modules": ["q_proj"], "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
           "base_model_name_or_path": "stories260K"}
    with open(os.path.join(path, "adapter_config.json"), "w") as f:
        json.dump(cfg, f)
    return path


def files_of(d):
    return [n for n in ("adapter_config.json", "adapter_model.safetensors", "adapter.safetensors")
            if os.path.exists(os.path.join(d, n))]


def content_sha(d):
    """The adapter's content hash as peftd defines it: config bytes then weights bytes."""
    h = hashlib.sha256()
    for n in files_of(d):
        with open(os.path.join(d, n), "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def upload(port, name, d, timeout=60):
    """PUT /v1/adapters/{name} with the directory's files as multipart parts (arbitrary
    field names). Returns (status, response object)."""
    boundary = "peftdtest%08x" % random.getrandbits(32)
    parts = []
    for i, n in enumerate(files_of(d)):
        with open(os.path.join(d, n), "rb") as f:
            data = f.read()
        parts.append(("--%s\r\nContent-Disposition: form-data; name=\"f%d\"; filename=\"%s\"\r\n"
                      "Content-Type: application/octet-stream\r\n\r\n" % (boundary, i, n)).encode() + data + b"\r\n")
    body = b"".join(parts) + ("--%s--\r\n" % boundary).encode()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout * harness.SLOW)
    try:
        c.request("PUT", "/v1/adapters/" + name, body=body,
                  headers={"Content-Type": "multipart/form-data; boundary=" + boundary})
        r = c.getresponse()
        data = r.read()
        return r.status, json.loads(data) if data else None
    finally:
        c.close()


def cli(prompt, max_tokens, adapter_dir):
    out = subprocess.run([harness.BIN, "generate", "--model", harness.MODEL_DIR, "--prompt", prompt,
                          "--max-tokens", str(max_tokens), "--temperature", "0", "--adapter", adapter_dir],
                         cwd=harness.ROOT, capture_output=True, timeout=120 * harness.SLOW)
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    return out.stdout.decode()


def list_all(d, limit=1000):
    names, after = [], ""
    while True:
        st, _, body = d.request("GET", "/v1/adapters?limit=%d%s" % (limit, "&after=" + after if after else ""))
        assert st == 200, (st, body[:300])
        obj = json.loads(body)
        names += [m["id"] for m in obj["data"]]
        if not obj["has_more"]:
            return names, obj
        after = obj["data"][-1]["id"]


# ---- 1. hot swap under load ----

@test
def hot_swap_keeps_running_requests_on_their_version():
    v1, v2 = os.path.join(FIX, "lora_r8_all"), os.path.join(FIX, "lora_r1_all")
    want1, want2 = cli("Once upon a time", 120, v1), cli("Once upon a time", 120, v2)
    assert want1 != want2
    # 3 ms per engine step: 120 tokens take ~0.4 s, so the swap lands mid-generation
    d = harness.Daemon(env={"PEFTD_DEBUG_STEP_DELAY_US": "3000"})
    try:
        st, obj = upload(d.port, "swap", v1)
        assert st == 201 and obj["version"] == 1, (st, obj)
        results, errors = {}, []

        def stream(i):
            try:
                chunks, done, _ = d.stream(model="swap", prompt="Once upon a time", max_tokens=120, temperature=0)
                assert done
                results[i] = "".join(c["choices"][0]["text"] for c in chunks if c.get("choices"))
            except Exception as e:
                errors.append(repr(e))
        threads = [threading.Thread(target=stream, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        deadline = time.time() + 10
        while d.metrics().get("peftd_running_requests", 0) < 8 and time.time() < deadline:
            time.sleep(0.01)
        assert d.metrics()["peftd_running_requests"] == 8
        st, obj = upload(d.port, "swap", v2)
        assert st == 200 and obj["version"] == 2, (st, obj)
        assert d.metrics()["peftd_running_requests"] >= 1, "the old streams ended before the swap"
        new = d.complete(model="swap", prompt="Once upon a time", max_tokens=120, temperature=0)
        for t in threads:
            t.join()
        assert not errors, errors
        for i in range(8):
            assert results[i] == want1, "stream %d: %r" % (i, results[i][:80])
        assert new["choices"][0]["text"] == want2
    finally:
        d.close()


# ---- 2. crash safety ----

@test
def sigkill_during_uploads_leaves_only_whole_adapters():
    store = os.path.join(TMP, "crash-store")
    pool = [tiny_lora(os.path.join(TMP, "crash", "a%02d" % i), seed=1000 + i) for i in range(12)]
    expected_sha = {}  # name -> set of shas it may hold (any completed or in-flight upload)
    rng = random.Random(7)
    for it in range(20):
        d = harness.Daemon(store=store)
        try:
            # everything listed is whole: its hash is one we uploaded under that name
            names, obj = list_all(d)
            for m in obj["data"] if len(names) <= 1000 else []:
                assert m["sha256"] in expected_sha.get(m["id"], set()), m
            for n in names:
                r = d.complete(model=n, prompt="Once", max_tokens=2, temperature=0)
                assert r["usage"]["completion_tokens"] >= 1
            stop = threading.Event()

            def uploader():
                k = 0
                while not stop.is_set():
                    name = "crash-%d" % rng.randrange(6)
                    src = pool[rng.randrange(len(pool))]
                    expected_sha.setdefault(name, set()).add(content_sha(src))
                    try:
                        upload(d.port, name, src, timeout=5)
                    except OSError:
                        return
                    k += 1
            t = threading.Thread(target=uploader)
            t.start()
            time.sleep(rng.uniform(0.05, 0.6))
            d.proc.send_signal(signal.SIGKILL)
            d.proc.wait()
            stop.set()
            t.join()
        finally:
            d.close()
    d = harness.Daemon(store=store)
    try:
        names, obj = list_all(d)
        assert names, "nothing survived 20 crashes"
        for m in obj["data"]:
            assert m["sha256"] in expected_sha[m["id"]], m
    finally:
        d.close()


# ---- 3. many adapters through a small slot pool ----

@test
def ten_thousand_stored_thousand_served_through_32_slots():
    n_store, n_serve = 10000, 1000
    root = os.path.join(TMP, "many")
    # one directory per adapter would be 10,000 dirs: generate lazily, upload in parallel
    d = harness.Daemon(["--config", write_config({"store": {"slots": 32, "host_cache_mb": 1}})])
    try:
        errors = []
        lock = threading.Lock()
        todo = list(range(n_store))

        def worker():
            while True:
                with lock:
                    if not todo:
                        return
                    i = todo.pop()
                src = tiny_lora(os.path.join(root, "m%05d" % i), seed=i)
                st, obj = upload(d.port, "m%05d" % i, src)
                if st not in (200, 201):
                    errors.append((i, st, obj))
                if i >= n_serve:
                    shutil.rmtree(src, ignore_errors=True)  # only the served 1,000 are kept
        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[:3]
        names, _ = list_all(d, limit=999)
        assert len(names) == n_store and names == sorted(names) and len(set(names)) == n_store
        before = d.metrics()
        # requests spread uniformly over 1,000 adapters, 16 at a time
        rng = random.Random(3)
        picks = [rng.randrange(n_serve) for _ in range(1500)]
        outs, lock2 = {}, threading.Lock()

        def client(chunk):
            for i in chunk:
                r = d.complete(model="m%05d" % i, prompt="Once upon a time", max_tokens=6, temperature=0)
                with lock2:
                    outs.setdefault(i, set()).add(r["choices"][0]["text"])
        chunks = [picks[k::16] for k in range(16)]
        threads = [threading.Thread(target=client, args=(c,)) for c in chunks]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        after = d.metrics()
        for i, texts in outs.items():
            assert len(texts) == 1, (i, texts)  # same adapter, same greedy output, whatever the batch
        for i in sorted(outs)[:: max(1, len(outs) // 15)]:  # a sample against solo runs
            assert outs[i] == {cli("Once upon a time", 6, os.path.join(root, "m%05d" % i))}, i
        loads = after["peftd_adapter_loads_total"] - before["peftd_adapter_loads_total"]
        evictions = after["peftd_adapter_slot_evictions_total"] - before["peftd_adapter_slot_evictions_total"]
        distinct = len(set(picks))
        assert loads >= distinct, (loads, distinct)       # each distinct adapter loaded at least once
        assert evictions >= distinct - 32, (evictions,)   # only 32 fit: the rest went through eviction
        assert after["peftd_adapter_slots_used"] <= 32
    finally:
        d.close()


def write_config(obj):
    p = os.path.join(TMP, "cfg-%d.json" % random.getrandbits(32))
    base = {"model": harness.MODEL_DIR}
    base.update(obj)
    with open(p, "w") as f:
        json.dump(base, f)
    return p


# ---- 4. restart ----

@test
def restart_keeps_every_adapter_and_its_output():
    store = os.path.join(TMP, "restart-store")
    kinds = ["lora_r8_all", "lora_dora", "ia3", "prompt_tuning", "prefix_tuning", "pfeiffer", "houlsby",
             "lora_lm_head", "lora_bf16", "lora_bias", "lora_embed_head", "lora_embed_tied", "lora_mts_tied",
             "adalora", "p_tuning", "prefix_projection", "hub_par_bn", "hub_compacter", "hub_compacterpp",
             "hub_lora", "hub_ia3", "hub_prefix", "hub_prefix_flat", "hub_mam", "vera", "vera_b", "loha", "lokr", "lokr_full",
             "lokr_factor", "ln_tuning", "oft", "oft_coft", "boft"]
    d = harness.Daemon(store=store)
    try:
        for k in kinds:
            st, obj = upload(d.port, k, os.path.join(FIX, k))
            assert st == 201, (k, st, obj)
        first = {k: d.complete(model=k, prompt="The cat", max_tokens=20, temperature=0)["choices"][0]["text"]
                 for k in kinds}
        assert d.stop() == 0
    finally:
        d.close()
    d = harness.Daemon(store=store)
    try:
        names, _ = list_all(d)
        assert sorted(names) == sorted(kinds), names
        for k in kinds:
            again = d.complete(model=k, prompt="The cat", max_tokens=20, temperature=0)["choices"][0]["text"]
            assert again == first[k] == cli("The cat", 20, os.path.join(FIX, k)), k
    finally:
        d.close()


@test
def stale_staging_swept_at_start_up():
    """Issue 9 defect 7: <store>/tmp/upload-* directories of a killed daemon survived
    every restart (15 left after 20 kills). Start-up removes them."""
    store = tempfile.mkdtemp(prefix="peftd-sweep-", dir=TMP)
    for i in range(15):
        d = os.path.join(store, "tmp", "upload-stale%02d" % i)
        os.makedirs(d)
        with open(os.path.join(d, "adapter_model.safetensors"), "wb") as f:
            f.write(b"\0" * 10000)
    dm = harness.Daemon(store=store)
    try:
        left = [n for n in os.listdir(os.path.join(store, "tmp")) if n.startswith("upload-")]
        assert left == [], left
    finally:
        dm.close()


@test
def disk_full_answers_507_and_keeps_serving():
    """Issue 9 defect 8: a full filesystem made uploads answer 500 "Input/output error".
    The daemon runs under RLIMIT_FSIZE (1 MiB, deterministic where a real full disk is
    not): a staging file or a data.mdb that would pass it cannot grow (EFBIG; LMDB's
    short write is EIO), exactly as on a full disk. peftd ignores SIGXFSZ itself (Python's
    Popen restores the default action, which would kill it). Expected: 507 with a clear
    message naming no server path, every adapter stored before intact, the daemon serving
    completions, and a restart without the limit finding a consistent store."""
    import resource
    limit = 1 << 20
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    store = tempfile.mkdtemp(prefix="peftd-full-", dir=TMP)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old[1]))
    try:
        d = harness.Daemon(store=store)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
    stored = []
    try:
        # staging: one part larger than the limit (rank 450: 1.15 MB of safetensors)
        big = tiny_lora(os.path.join(TMP, "full-big"), 1, rank=450)
        st, obj = upload(d.port, "big", big)
        harness.assert_error(st, obj, 507, "insufficient_storage")
        assert store not in obj["error"]["message"] and "/tmp" not in obj["error"]["message"], obj
        # LMDB: distinct rank-64 adapters (~170 KB each) until data.mdb cannot grow
        answer = None
        for i in range(40):
            a = tiny_lora(os.path.join(TMP, "full-%d" % i), 100 + i, rank=64)
            st, obj = upload(d.port, "f%d" % i, a)
            if st != 201:
                answer = (st, obj)
                break
            stored.append(("f%d" % i, obj["sha256"]))
        print("    %d adapters stored, then %s" % (len(stored), answer))
        assert answer is not None, "40 adapters fit under a 1 MiB file limit?"
        harness.assert_error(answer[0], answer[1], 507, "insufficient_storage")
        assert store not in answer[1]["error"]["message"], answer
        assert stored, "not even one adapter fit"
        assert d.alive()
        names, _ = list_all(d)
        assert names == sorted(n for n, _ in stored), names
        for n, sha in stored:
            st, _, body = d.request("GET", "/v1/adapters/" + n)
            assert st == 200 and json.loads(body)["sha256"] == sha, (st, body[:200])
        out = d.complete(model=stored[0][0], prompt="Once upon a time", max_tokens=4, temperature=0)
        assert out["usage"]["completion_tokens"] >= 1
        st, _, _ = d.request("GET", "/health")
        assert st == 200
    finally:
        assert d.stop() == 0, d.log_text()
        d.close()
    d2 = harness.Daemon(store=store)
    try:
        names, _ = list_all(d2)
        assert names == sorted(n for n, _ in stored), names
        out = d2.complete(model=stored[-1][0], prompt="Once upon a time", max_tokens=4, temperature=0)
        assert out["usage"]["completion_tokens"] >= 1
    finally:
        d2.close()


if __name__ == "__main__":
    try:
        harness.run_tests(__file__)
    finally:
        shutil.rmtree(TMP, ignore_errors=True)
