"""tests/integration/test_compose.py — per-request compositions of LoRA adapters over HTTP:
"adapters": [{"name", "weight"}], "combination": "linear" | "cat" (adapter_store/adapter_mix.h),
against PEFT's own composed adapter (tests/fixtures/compose/reference.json, written by
tests/fixtures/adapters/make_compose_fixtures.py): the 32 greedy tokens of every reference case,
served from --adapter directories and from an upload; concurrent compositions and single
adapters equal to their solo runs; streaming and /v1/embeddings take the same field; and the refusals
(400 with the reason, 404 for an unknown name)."""

import json
import os
import threading

import harness
from harness import test

FIX = os.path.join(harness.ROOT, "tests", "fixtures")
REF = os.path.join(FIX, "compose", "reference.json")
NAMES = {"tests/fixtures/adapters/lora_r8_all": "r8", "tests/fixtures/adapters/lora_rslora": "rs",
         "tests/fixtures/adapters/lora_bf16": "bf16", "tests/fixtures/adapters/lora_r64_all": "r64",
         "tests/fixtures/adapters/lora_layers": "layers", "tests/fixtures/compose/lora_r8_mlp": "mlp"}
_daemon = None


def d():
    global _daemon
    if _daemon is None:
        args = []
        for path, name in NAMES.items():
            args += ["--adapter", "%s=%s" % (name, os.path.join(harness.ROOT, path))]
        for name in ("lora_dora", "ia3", "lora_bias"):
            args += ["--adapter", "%s=%s" % (name, os.path.join(FIX, "adapters", name))]
        _daemon = harness.Daemon(args)
    return _daemon


def cases():
    with open(REF) as f:
        return json.load(f)["cases"]


def body(case, ids, rename=None, **extra):
    names = rename or NAMES
    b = {"prompt": ids, "max_tokens": 32, "temperature": 0, "echo": True, "ignore_eos": True,
         "adapters": [{"name": names[a["dir"]], "weight": a["weight"]} for a in case["adapters"]]}
    if case["combination"] != "linear" or len(case["adapters"]) % 2:  # the default is "linear": sent or not
        b["combination"] = case["combination"]
    b.update(extra)
    return b


def detok(ids):
    """The text of ids as a completion shows it: special tokens (unk, BOS, EOS) skipped."""
    st, obj = d().post("/detokenize", {"tokens": [t for t in ids if t > 2]})
    assert st == 200, obj
    return obj["content"]


@test
def every_reference_case_gives_peft_tokens():
    n = 0
    for c in cases():
        for k in (1, 2):
            ids, want = c["cases"][k]["input_ids"], c["cases"][k]["greedy"]
            st, obj = d().post("/v1/completions", body(c, ids))
            assert st == 200, (c["name"], obj)
            got = obj["choices"][0]["text"]
            assert got == detok(ids + want), "%s prompt %d: %r vs PEFT's %r" % (c["name"], k, got, detok(ids + want))
            n += 1
    print("    %d compositions x 2 prompts: PEFT's 32 greedy tokens" % (n // 2))


@test
def an_uploaded_adapter_composes():
    st, obj = d().upload("mlp_up", os.path.join(FIX, "compose", "lora_r8_mlp"))
    assert st in (200, 201), obj
    c = [x for x in cases() if x["name"] == "linear3"][0]
    ids, want = c["cases"][1]["input_ids"], c["cases"][1]["greedy"]
    names = dict(NAMES)
    names["tests/fixtures/compose/lora_r8_mlp"] = "mlp_up"
    st, obj = d().post("/v1/completions", body(c, ids, rename=names))
    assert st == 200, obj
    assert obj["choices"][0]["text"] == detok(ids + want)


@test
def concurrent_compositions_match_solo():
    reqs = [body(c, c["cases"][2]["input_ids"]) for c in cases()]
    reqs += [{"model": "r8", "prompt": "Once upon a time", "max_tokens": 24, "temperature": 0},
             {"prompt": "The cat", "max_tokens": 24, "temperature": 0},
             {"model": "mlp", "prompt": "The cat", "max_tokens": 24, "temperature": 0}]
    solo = []
    for r in reqs:
        st, obj = d().post("/v1/completions", r)
        assert st == 200, obj
        solo.append(obj["choices"][0]["text"])
    got, errors = [None] * len(reqs), []

    def run(i):
        try:
            for _ in range(2):
                st, obj = d().post("/v1/completions", reqs[i])
                assert st == 200, obj
                got[i] = obj["choices"][0]["text"]
                assert got[i] == solo[i], (i, got[i], solo[i])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    ts = [threading.Thread(target=run, args=(i,)) for i in range(len(reqs))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors
    d().wait_idle()


@test
def streaming_and_embeddings_take_adapters():
    c = cases()[2]
    b = body(c, c["cases"][1]["input_ids"])
    st, obj = d().post("/v1/completions", b)
    assert st == 200, obj
    full = obj["choices"][0]["text"]
    del b["echo"]
    chunks, done, _ = d().stream(**b)
    assert done and "".join(ch["choices"][0]["text"] for ch in chunks if ch.get("choices")) == full[len(detok(
        c["cases"][1]["input_ids"])):]
    st, mixed = d().post("/v1/embeddings", {"input": "Once upon a time", "adapters": b["adapters"]})
    assert st == 200, mixed
    st, plain = d().post("/v1/embeddings", {"input": "Once upon a time"})
    assert st == 200, plain
    assert mixed["data"][0]["embedding"] != plain["data"][0]["embedding"]


@test
def refusals_are_client_errors():
    base = {"prompt": "Once", "max_tokens": 4}
    bad = [
        ({"adapters": [{"name": "r8"}, {"name": "lora_dora"}]}, 400, "DoRA"),
        ({"adapters": [{"name": "r8"}, {"name": "lora_bias"}]}, 400, "biases"),
        ({"adapters": [{"name": "r8"}, {"name": "ia3"}]}, 400, "only LoRA"),
        ({"adapters": [{"name": "r8"}, {"name": "layers"}]}, 400, "cat"),
        ({"adapters": [{"name": "r8"}, {"name": "bf16"}], "combination": "linear"}, 400, "one dtype"),
        ({"adapters": [{"name": "r8"}, {"name": "nope"}]}, 404, "nope"),
        ({"adapters": [{"name": "r8", "weight": 99}]}, 400, "weight"),
        ({"adapters": [{"name": "r8", "weight": "x"}]}, 400, "weight"),
        ({"adapters": [{"name": "r8", "scale": 1}]}, 400, "scale"),
        ({"adapters": [{"name": "r8"}] * 5}, 400, "1 to 4"),
        ({"adapters": []}, 400, "1 to 4"),
        ({"adapters": {"name": "r8"}}, 400, "array"),
        ({"adapters": [{"name": "r8"}], "combination": "ties"}, 400, "linear"),
        ({"combination": "cat"}, 400, "combination"),
        ({"adapters": [{"name": "r8"}], "adapter": "rs"}, 400, "adapter"),
        ({"adapters": [{"name": "r8"}], "model": "rs"}, 400, "base"),
    ]
    for extra, status, needle in bad:
        req = dict(base, **extra)
        st, obj = d().post("/v1/completions", req)
        harness.assert_error(st, obj, status)
        assert needle in obj["error"]["message"], (extra, obj)
    # the daemon is still serving
    assert d().complete(prompt="Once", max_tokens=4, adapters=[{"name": "r8"}, {"name": "rs", "weight": 0.5}])


if __name__ == "__main__":
    try:
        harness.run_tests(__file__)
    finally:
        if _daemon is not None:
            _daemon.close()
