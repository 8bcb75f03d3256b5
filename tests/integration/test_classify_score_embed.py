"""tests/integration/test_classify_score_embed.py — the prefill-only routes /v1/classify,
/v1/score and /v1/embeddings against transformers/peft references (tests/fixtures/endpoints/reference.json,
made by make_endpoint_fixtures.py with transformers 4.57 / peft 0.21): the base model and
the lora_r8_all adapter, a fresh SEQ_CLS LoRA (served with --adapter and uploaded), text
and token-id inputs, float and base64, mean and last pooling,
the prompt's KV shared across score candidates (prefix-cache hits), OpenAI-style errors,
and score/embeddings requests mixed with generation traffic giving exactly their solo
results."""

import base64
import json
import math
import os
import struct
import threading

import harness
from harness import test

ROOT = harness.ROOT
FIX = os.path.join(ROOT, "tests", "fixtures")
with open(os.path.join(FIX, "endpoints", "reference.json")) as f:
    REF = json.load(f)
ADAPTER_DIR = os.path.join(FIX, "adapters", "lora_r8_all")
SEQCLS_DIR = os.path.join(FIX, "endpoints", "seqcls")
_d = None


def d():
    global _d
    if _d is None:
        _d = harness.Daemon(["--adapter", "r8=" + ADAPTER_DIR, "--adapter", "cls=" + SEQCLS_DIR])
    return _d


def model_arg(which):
    return harness.MODEL_ID if which == "base" else "r8"


def post_ok(path, body):
    st, obj = d().post(path, body)
    assert st == 200, "%s: status %d: %s" % (path, st, obj)
    return obj


def check_score(which, candidates, prompt):
    ref = REF["models"][which]["score"]
    obj = post_ok("/v1/score", {"model": model_arg(which), "prompt": prompt, "candidates": candidates})
    assert obj["object"] == "list" and len(obj["data"]) == len(ref), obj
    for i, (got, want) in enumerate(zip(obj["data"], ref)):
        assert got["index"] == i
        assert got["token_ids"] == REF["candidate_ids"][i], (got["token_ids"], REF["candidate_ids"][i])
        assert len(got["token_logprobs"]) == len(want["token_logprobs"])
        for a, b in zip(got["token_logprobs"], want["token_logprobs"]):
            assert abs(a - b) <= 1e-4, (which, i, a, b)
        assert abs(got["logprob"] - want["logprob"]) <= 1e-4, (which, i, got["logprob"], want["logprob"])
    n_ids = sum(len(REF["score_prompt_ids"]) + len(c) for c in REF["candidate_ids"])
    assert obj["usage"]["prompt_tokens"] == n_ids, obj["usage"]
    return obj


@test
def test_score_matches_transformers_base_and_adapter():
    for which in ("base", "lora_r8_all"):
        check_score(which, REF["candidates"], REF["score_prompt"])           # text
        check_score(which, REF["candidate_ids"], REF["score_prompt_ids"])    # token ids


@test
def test_score_shares_the_prompt_kv_across_candidates():
    # a prompt no other test uses: candidate 0 computes (and caches) its 2 full blocks, the
    # 3 others start from them: 3 x 32 tokens hit
    prompt = REF["score_prompt_ids"][:1] + list(reversed(REF["score_prompt_ids"][1:]))
    before = d().metrics()["peftd_prefix_cache_hits_total"]
    post_ok("/v1/score", {"prompt": prompt, "candidates": REF["candidate_ids"]})
    hits = d().metrics()["peftd_prefix_cache_hits_total"] - before
    assert hits == 3 * 32, hits


def unit(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


@test
def test_embeddings_match_transformers_hidden_states():
    for which in ("base", "lora_r8_all"):
        ref = REF["models"][which]["embed"]
        for pooling in ("mean", "last"):
            for inp in (REF["embed_inputs"], REF["embed_ids"]):
                obj = post_ok("/v1/embeddings", {"model": model_arg(which), "input": inp, "pooling": pooling,
                                                 "normalize": False})
                assert obj["object"] == "list" and obj["model"] == model_arg(which), obj
                assert obj["usage"]["prompt_tokens"] == sum(len(i) for i in REF["embed_ids"]), obj["usage"]
                assert obj["usage"]["total_tokens"] == obj["usage"]["prompt_tokens"]
                for i, e in enumerate(obj["data"]):
                    assert e["object"] == "embedding" and e["index"] == i
                    want = ref[i][pooling]
                    assert len(e["embedding"]) == len(want) == 64
                    err = max(abs(a - b) for a, b in zip(e["embedding"], want))
                    assert err <= 1e-4, (which, pooling, i, err)


@test
def test_embeddings_default_mean_normalised_and_base64():
    ref = REF["models"]["base"]["embed"][1]["mean"]
    f = post_ok("/v1/embeddings", {"input": REF["embed_inputs"][1]})["data"][0]["embedding"]
    err = max(abs(a - b) for a, b in zip(f, unit(ref)))
    assert err <= 1e-5, err
    b = post_ok("/v1/embeddings", {"input": REF["embed_inputs"][1], "encoding_format": "base64"})
    raw = base64.b64decode(b["data"][0]["embedding"])
    assert list(struct.unpack("<%df" % (len(raw) // 4), raw)) == [struct.unpack("<f", struct.pack("<f", x))[0]
                                                                    for x in f]


def check_classify(model, labels):
    ref = REF["classify"]
    for inp in (REF["embed_inputs"], REF["embed_ids"]):
        obj = post_ok("/v1/classify", {"model": model, "input": inp})
        assert obj["object"] == "list" and obj["model"] == model, obj
        assert obj["usage"]["prompt_tokens"] == sum(len(i) for i in REF["embed_ids"]), obj["usage"]
        for i, c in enumerate(obj["data"]):
            assert c["index"] == i and c["labels"] == labels, c
            err = max(abs(a - b) for a, b in zip(c["probabilities"], ref["probs"][i]))
            assert err <= 1e-5, (model, i, err)
            assert c["probs"] == dict(zip(labels, c["probabilities"]))
            assert c["label"] == labels[max(range(3), key=lambda k: ref["probs"][i][k])]


@test
def test_classify_matches_peft_probabilities():
    check_classify("cls", REF["classify"]["labels"])  # id2label from the config.json beside it


@test
def test_classify_uploaded_adapter():
    st, obj = d().upload("cls-up", SEQCLS_DIR)  # the two PEFT files: no id2label, transformers' names
    assert st in (200, 201), (st, obj)
    check_classify("cls-up", ["LABEL_0", "LABEL_1", "LABEL_2"])


@test
def test_errors_are_openai_shaped():
    cases = [
        ("/v1/embeddings", {"model": "no-such-adapter", "input": "x"}, 404, "model_not_found"),
        ("/v1/score", {"model": "no-such-adapter", "prompt": "x", "candidates": ["y"]}, 404, "model_not_found"),
        ("/v1/embeddings", {}, 400, "missing_field"),
        ("/v1/embeddings", {"input": []}, 400, "invalid_value"),
        ("/v1/embeddings", {"input": "x", "encoding_format": "int8"}, 400, "invalid_value"),
        ("/v1/embeddings", {"input": "x", "pooling": "max"}, 400, "invalid_value"),
        ("/v1/embeddings", {"input": "x", "dimensions": 8}, 400, "unsupported_parameter"),
        ("/v1/embeddings", {"input": "x", "temperature": 1}, 400, "unknown_parameter"),
        ("/v1/embeddings", {"input": [[1, 100000]]}, 400, "invalid_value"),
        ("/v1/score", {"prompt": "x"}, 400, "missing_field"),
        ("/v1/score", {"prompt": "x", "candidates": []}, 400, "invalid_value"),
        ("/v1/score", {"prompt": "x", "candidates": [[]]}, 400, "invalid_value"),
        ("/v1/score", {"prompt": ["a", "b"], "candidates": ["y"]}, 400, "invalid_value"),
        ("/v1/classify", {"model": "no-such-adapter", "input": "x"}, 404, "model_not_found"),
        ("/v1/classify", {"input": "x"}, 400, "invalid_value"),           # the base has no head
        ("/v1/classify", {"model": "r8", "input": "x"}, 400, "invalid_value"),  # a LoRA without one
        ("/v1/classify", {"model": "cls"}, 400, "missing_field"),
        # a classifier's LoRA was trained for its head: no text, no token scores from lm_head
        ("/v1/completions", {"model": "cls", "prompt": "x", "max_tokens": 2}, 400, "invalid_value"),
        ("/v1/score", {"model": "cls", "prompt": "x", "candidates": ["y"]}, 400, "invalid_value"),
        ("/v1/classify", {"model": "cls", "input": "x", "pooling": "mean"}, 400, "unknown_parameter"),
        ("/v1/classify", {"model": "cls", "input": [[1] * 600]}, 413, "context_length_exceeded"),
        ("/v1/embeddings", {"input": [[1] * 4096]}, 413, "context_length_exceeded"),
        ("/v1/score", {"prompt": [1] * 4090, "candidates": [[2] * 10]}, 413, "context_length_exceeded"),
    ]
    for path, body, status, code in cases:
        st, obj = d().post(path, body)
        harness.assert_error(st, obj, status, code)
    post_ok("/v1/embeddings", {"model": "cls", "input": "x"})  # its hidden states are served


@test
def test_tenant_auth_quotas_and_scoping():
    """The routes go through completions' request path: keys (401), the tenant's quotas
    (sequences = inputs: over max_concurrent is 429), and adapter scoping (another tenant's
    adapter answers 404 like a missing one)."""
    import secrets
    import tempfile
    tmp = tempfile.mkdtemp(prefix="peftd-ep-auth-")
    cfg = os.path.join(tmp, "auth.json")
    admin_key = "adm_" + secrets.token_hex(24)
    with open(cfg, "w") as f:
        json.dump({"auth": {"enabled": True, "admin_key_env": "PEFTD_TEST_EP_ADMIN"}}, f)
    dm = harness.Daemon(["--config", cfg], env={"PEFTD_TEST_EP_ADMIN": admin_key})
    try:
        def call(path, key, body):
            st, _, data = dm.request("POST", path, body, headers={"Authorization": "Bearer " + key} if key else {})
            return st, json.loads(data)

        keys = {}
        for tid in ("ta", "tb"):
            st, _, data = dm.request("POST", "/v1/admin/tenants", {"id": tid, "weight": 1,
                                                                   "limits": {"max_concurrent": 2}},
                                     headers={"Authorization": "Bearer " + admin_key})
            assert st == 201, (st, data)
            st, _, data = dm.request("POST", "/v1/admin/tenants/%s/keys" % tid, None,
                                     headers={"Authorization": "Bearer " + admin_key})
            assert st == 201, (st, data)
            keys[tid] = json.loads(data)["key"]
        st, obj = dm.upload("mycls", SEQCLS_DIR, headers={"Authorization": "Bearer " + keys["ta"]})
        assert st in (200, 201), (st, obj)
        cls_body = {"model": "mycls", "input": REF["embed_inputs"][:2]}
        for path, body in (("/v1/embeddings", {"input": "x"}), ("/v1/score", {"prompt": "x", "candidates": ["y"]}),
                           ("/v1/classify", cls_body)):
            harness.assert_error(*call(path, None, body), 401, None)
        st, obj = call("/v1/classify", keys["ta"], cls_body)
        assert st == 200, (st, obj)
        for i, c in enumerate(obj["data"]):
            err = max(abs(a - b) for a, b in zip(c["probabilities"], REF["classify"]["probs"][i]))
            assert err <= 1e-5, err
        harness.assert_error(*call("/v1/classify", keys["tb"], cls_body), 404, "model_not_found")
        st, obj = call("/v1/embeddings", keys["ta"], {"input": ["a", "b", "c"]})  # 3 sequences > 2
        assert st == 429, (st, obj)
        st, obj = call("/v1/embeddings", keys["tb"], {"input": ["a", "b"]})
        assert st == 200, (st, obj)
    finally:
        dm.close()


def completion(prompt):
    return d().complete(prompt=prompt, max_tokens=32, temperature=0, ignore_eos=True)["choices"][0]["text"]


@test
def test_mixed_with_generation_identical_to_solo():
    gen_prompts = ["Once upon a time", "The dog", "A little girl", "One day"]
    solo_gen = [completion(p) for p in gen_prompts]
    score_body = {"model": "r8", "prompt": REF["score_prompt"], "candidates": REF["candidates"]}
    embed_body = {"input": REF["embed_inputs"], "normalize": False}
    embed_r8 = {"model": "r8", "input": REF["embed_inputs"], "pooling": "last"}
    cls_body = {"model": "cls", "input": REF["embed_inputs"]}
    solo = [post_ok("/v1/score", score_body), post_ok("/v1/embeddings", embed_body),
            post_ok("/v1/embeddings", embed_r8), post_ok("/v1/classify", cls_body)]
    results, errors = {}, []

    def run(key, fn):
        try:
            results[key] = fn()
        except Exception as e:  # collected: the main thread asserts
            errors.append("%s: %r" % (key, e))

    threads = []
    for rep in range(2):
        for i, p in enumerate(gen_prompts):
            threads.append(threading.Thread(target=run, args=(("g", rep, i), lambda p=p: completion(p))))
        threads.append(threading.Thread(target=run, args=(("s", rep), lambda: post_ok("/v1/score", score_body))))
        threads.append(threading.Thread(target=run, args=(("e", rep), lambda: post_ok("/v1/embeddings", embed_body))))
        threads.append(threading.Thread(target=run, args=(("r", rep), lambda: post_ok("/v1/embeddings", embed_r8))))
        threads.append(threading.Thread(target=run, args=(("c", rep), lambda: post_ok("/v1/classify", cls_body))))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for rep in range(2):
        for i in range(len(gen_prompts)):
            assert results[("g", rep, i)] == solo_gen[i], (rep, i)
        assert results[("s", rep)]["data"] == solo[0]["data"]
        assert results[("e", rep)]["data"] == solo[1]["data"]
        assert results[("r", rep)]["data"] == solo[2]["data"]
        assert results[("c", rep)]["data"] == solo[3]["data"]


if __name__ == "__main__":
    try:
        harness.run_tests(__file__)
    finally:
        if _d is not None:
            _d.close()
