"""tests/integration/test_faults.py — faults that belong to one request end that request only.

An adapter whose stored bytes were damaged after upload (a disk error, a bad copy of the
store) cannot be loaded; every request naming it must get an error naming the reason, and
the daemon must go on serving everyone else (issue 9, defect 1: admission freed the failing
request and then read it — under ASan the second such request killed the daemon)."""
import concurrent.futures
import os
import shutil
import tempfile

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


if __name__ == "__main__":
    harness.run_tests(__file__)
