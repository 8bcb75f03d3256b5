"""tests/integration/test_openai_params.py — issue 15's "no silent ignoring" through HTTP on
the real daemon: every OpenAI field is honoured or refused with a 400 naming it; penalties,
logit_bias, min_tokens and best_of change what is generated the way their references say;
echo + logprobs scores the prompt (first token null) equal to transformers' logits
(tests/fixtures/logits/stories260K.json, max |diff| <= 1e-4), max_tokens 0 scores without
generating, streamed echo carries the same prompt logprobs; the openai SDK's
completions.create(echo=True, logprobs=k, max_tokens=0) works (lm-eval's local-completions)."""

import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import MODEL_ID, assert_error, test  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROMPT = "Once upon a time"


def d():
    return harness.daemon


def refused(route, field, code, **payload):
    payload.setdefault("model", MODEL_ID)
    st, obj = d().post(route, payload)
    assert_error(st, obj, 400, code)
    assert "'%s'" % field in obj["error"]["message"], (field, obj)


def chat_msgs():
    return [{"role": "user", "content": "hi"}]


@test
def unimplemented_fields_are_400_naming_them():
    c, ch = "/v1/completions", "/v1/chat/completions"
    refused(c, "suffix", "unsupported_parameter", prompt=PROMPT, suffix="The end")
    for f, v in (("tools", [{"type": "function", "function": {"name": "f"}}]), ("tool_choice", "auto"),
                 ("functions", [{"name": "f"}]), ("function_call", "auto"), ("parallel_tool_calls", True),
                 ("audio", {}), ("modalities", ["audio"]), ("prediction", {}), ("store", True),
                 ("metadata", {"a": "b"}), ("reasoning_effort", "low")):
        refused(ch, f, "unsupported_parameter", messages=chat_msgs(), **{f: v})
    for route, extra in ((c, {"prompt": PROMPT}), (ch, {"messages": chat_msgs()})):
        # json_schema is implemented (tests/integration/test_json_schema.py, which also covers
        # chat on a daemon with a chat template); what it cannot enforce is refused by keyword
        if route == c:
            refused(route, "pattern", "invalid_value",
                    response_format={"type": "json_schema",
                                     "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "a"}}},
                    **extra)
        refused(route, "response_format", "invalid_value", response_format={"type": "yaml"}, **extra)
        refused(route, "response_format", "invalid_type", response_format="json", **extra)
        refused(route, "service_tier", "unsupported_parameter", service_tier="flex", **extra)


@test
def unknown_fields_are_400_naming_them():
    refused("/v1/completions", "some_future_field", "unknown_parameter", prompt=PROMPT, some_future_field={"x": 1})
    refused("/v1/completions", "frequency_penlty", "unknown_parameter", prompt=PROMPT, frequency_penlty=1)
    # fields of the other route are unknown here
    refused("/v1/chat/completions", "echo", "unknown_parameter", messages=chat_msgs(), echo=True)
    refused("/v1/chat/completions", "best_of", "unknown_parameter", messages=chat_msgs(), best_of=2)
    refused("/v1/completions", "messages", "unknown_parameter", prompt=PROMPT, messages=chat_msgs())


@test
def harmless_fields_and_nulls_are_accepted():
    obj = d().complete(prompt=PROMPT, max_tokens=4, temperature=0, user="u1", frequency_penalty=None, best_of=None,
                       suffix=None, response_format={"type": "text"}, service_tier="auto", top_k=-1, top_p=1)
    assert obj["choices"][0]["text"], obj
    st, obj = d().post("/v1/chat/completions", {"model": MODEL_ID, "messages": chat_msgs(), "max_tokens": 2,
                                                "store": False, "tools": None, "response_format": {"type": "text"}})
    assert st in (200, 400), obj  # stories260K may have no chat template: then the 400 names it
    if st == 400:
        assert "tools" not in obj["error"]["message"] and "store" not in obj["error"]["message"], obj


@test
def out_of_range_values_are_400_naming_them():
    c = "/v1/completions"
    for f, v in (("presence_penalty", 2.5), ("frequency_penalty", -3), ("repetition_penalty", 0),
                 ("repetition_penalty", -1), ("min_tokens", -1), ("best_of", 0), ("best_of", 99)):
        refused(c, f, "invalid_value", prompt=PROMPT, **{f: v})
    refused(c, "min_tokens", "invalid_value", prompt=PROMPT, max_tokens=4, min_tokens=5)
    refused(c, "logit_bias", "invalid_value", prompt=PROMPT, logit_bias={"512": 1})
    refused(c, "logit_bias", "invalid_value", prompt=PROMPT, logit_bias={"abc": 1})
    refused(c, "logit_bias", "invalid_value", prompt=PROMPT, logit_bias={"-1": 1})
    refused(c, "logit_bias", "invalid_value", prompt=PROMPT, logit_bias={"5": 101})
    refused(c, "logit_bias", "invalid_type", prompt=PROMPT, logit_bias=[1, 2])
    refused(c, "best_of", "invalid_value", prompt=PROMPT, n=3, best_of=2)
    refused(c, "best_of", "invalid_value", prompt=PROMPT, n=1, best_of=2, stream=True)
    refused(c, "max_tokens", "invalid_value", prompt=PROMPT, max_tokens=0)


def tokens_of(obj):
    return obj["choices"][0]["logprobs"]["tokens"]


@test
def logit_bias_forces_and_bans_tokens():
    # from BOS greedy starts with id 403 (generate.json); -100 bans it, +100 on 400 forces 400
    base = d().complete(prompt=[1], max_tokens=4, temperature=0, logprobs=0)
    banned = d().complete(prompt=[1], max_tokens=4, temperature=0, logprobs=0, logit_bias={"403": -100})
    assert tokens_of(banned)[0] != tokens_of(base)[0], (banned, base)
    forced = d().complete(prompt=[1], max_tokens=4, temperature=0, logit_bias={"400": 100}, logprobs=0)
    assert len(set(tokens_of(forced))) == 1 and tokens_of(forced)[0] != tokens_of(base)[0], forced


@test
def repetition_penalty_matches_transformers_generate():
    ref = json.load(open(os.path.join(ROOT, "tests/fixtures/sampling/generate.json")))
    for c in ref["cases"]:
        obj = d().complete(prompt=c["prompt"], max_tokens=len(c["generated"]), temperature=0, ignore_eos=True,
                           repetition_penalty=c["repetition_penalty"], logprobs=0)
        lp = obj["choices"][0]["logprobs"]
        got = [v for v in lp["token_logprobs"]]
        assert len(got) == len(c["generated"]), obj
        diff = max(abs(a - b) for a, b in zip(got, c["raw_logprobs"]))
        assert diff <= 1e-4, (c["repetition_penalty"], diff)
    # and the penalty is not ignored: rp 2.0 on the 12-token prompt differs from rp 1.0
    a = [c for c in ref["cases"] if len(c["prompt"]) == 12 and c["repetition_penalty"] == 1.0][0]
    b = [c for c in ref["cases"] if len(c["prompt"]) == 12 and c["repetition_penalty"] == 2.0][0]
    assert a["generated"] != b["generated"]
    ta = d().complete(prompt=a["prompt"], max_tokens=40, temperature=0, ignore_eos=True)["choices"][0]["text"]
    tb = d().complete(prompt=b["prompt"], max_tokens=40, temperature=0, ignore_eos=True,
                      repetition_penalty=2.0)["choices"][0]["text"]
    assert ta != tb, ta


@test
def frequency_and_presence_penalties_change_the_output():
    # greedy from this prompt says "Max" and "play with his" again; the penalties steer away
    ids = [1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 400, 428]
    plain = d().complete(prompt=ids, max_tokens=24, temperature=0, ignore_eos=True, logprobs=0)
    toks = tokens_of(plain)
    assert len(set(toks)) < len(toks), toks
    for kw in ({"frequency_penalty": 2.0}, {"presence_penalty": 2.0}, {"frequency_penalty": -2.0}):
        pen = d().complete(prompt=ids, max_tokens=24, temperature=0, ignore_eos=True, logprobs=0, **kw)
        assert tokens_of(pen) != toks, kw
        # raw logprobs: the first token (nothing generated yet, nothing to penalize) is the same
        assert pen["choices"][0]["logprobs"]["token_logprobs"][0] == plain["choices"][0]["logprobs"]["token_logprobs"][0]


@test
def min_tokens_keeps_eos_away():
    # logit_bias makes EOS (id 2) the best token; min_tokens holds it back
    a = d().complete(prompt=PROMPT, max_tokens=10, temperature=0, logit_bias={"2": 100})
    assert a["choices"][0]["finish_reason"] == "stop" and a["usage"]["completion_tokens"] == 1, a
    b = d().complete(prompt=PROMPT, max_tokens=10, temperature=0, logit_bias={"2": 100}, min_tokens=5)
    assert b["choices"][0]["finish_reason"] == "stop" and b["usage"]["completion_tokens"] == 6, b


@test
def best_of_returns_the_highest_cumulative_logprob():
    kw = dict(prompt=PROMPT, max_tokens=8, temperature=1.5, seed=11, ignore_eos=True, logprobs=0)
    all4 = d().complete(n=4, **kw)  # candidate i samples with seed + i, as best_of's do
    cums = [sum(c["logprobs"]["token_logprobs"]) for c in all4["choices"]]
    assert len(set(round(x, 6) for x in cums)) > 1, cums
    best = d().complete(n=1, best_of=4, **kw)
    assert len(best["choices"]) == 1 and best["choices"][0]["index"] == 0, best
    i = max(range(4), key=lambda k: (cums[k], -k))
    assert best["choices"][0]["text"] == all4["choices"][i]["text"], (best, cums)
    two = d().complete(n=2, best_of=4, **kw)
    order = sorted(range(4), key=lambda k: (-cums[k], k))[:2]
    assert [c["text"] for c in two["choices"]] == [all4["choices"][k]["text"] for k in order], (two, cums)
    assert [c["index"] for c in two["choices"]] == [0, 1], two
    # without logprobs asked, none are shown; usage counts every candidate
    nolp = d().complete(n=1, best_of=4, **{k: v for k, v in kw.items() if k != "logprobs"})
    assert nolp["choices"][0]["logprobs"] is None, nolp
    assert nolp["choices"][0]["text"] == all4["choices"][i]["text"], nolp
    assert nolp["usage"]["completion_tokens"] == 32, nolp["usage"]


def reference_prompt_logprobs():
    ref = json.load(open(os.path.join(ROOT, "tests/fixtures/logits/stories260K.json")))
    out = []
    for c in ref["cases"]:
        ids, rows = c["input_ids"], c["logits"]
        lps, tops = [None], [None]
        for i in range(1, len(ids)):
            row = rows[i - 1]
            m = max(row)
            lse = m + math.log(sum(math.exp(v - m) for v in row))
            lps.append(row[ids[i]] - lse)
            tops.append(sorted(((v - lse) for v in row), reverse=True))
        out.append((ids, lps, tops))
    return out


def check_prompt_lp(lp, ids, ref_lps, ref_tops, k):
    assert len(lp["tokens"]) >= len(ids), lp
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None, lp
    diff = 0.0
    for i in range(1, len(ids)):
        diff = max(diff, abs(lp["token_logprobs"][i] - ref_lps[i]))
        top = lp["top_logprobs"][i]
        # the k best alternatives (plus the token itself when it is not among them)
        vals = sorted(top.values(), reverse=True)
        assert k <= len(vals) <= k + 1, (i, top)
        for a, b in zip(vals[:k], ref_tops[i][:k]):
            if len(vals) == k:
                diff = max(diff, abs(a - b))
    offs = lp["text_offset"]
    # running length of the token strings, continuing into the generated tokens (as vLLM)
    assert offs[0] == 0 and all(offs[i] == offs[i - 1] + len(lp["tokens"][i - 1].encode()) for i in range(1, len(ids))), offs
    if len(offs) > len(ids):
        assert offs[len(ids)] == offs[len(ids) - 1] + len(lp["tokens"][len(ids) - 1].encode()), offs
    return diff


@test
def echo_logprobs_scores_the_prompt_like_transformers():
    worst = 0.0
    for ids, lps, tops in reference_prompt_logprobs():
        for max_tokens in (0, 3):
            obj = d().complete(prompt=ids, max_tokens=max_tokens, echo=True, logprobs=2, temperature=0)
            c = obj["choices"][0]
            lp = c["logprobs"]
            assert len(lp["tokens"]) == len(ids) + obj["usage"]["completion_tokens"], obj
            worst = max(worst, check_prompt_lp(lp, ids, lps, tops, 2))
            if max_tokens == 0:
                assert c["finish_reason"] == "length" and obj["usage"]["completion_tokens"] == 0, obj
                assert len(lp["tokens"]) == len(ids), lp
    print("    prompt logprobs vs transformers: max |diff| %.3g" % worst)
    assert worst <= 1e-4, worst


@test
def prompt_logprobs_under_an_adapter_match_peft():
    """Scoring runs under the request's adapter: LoRA (incl. lm_head), prompt tuning (virtual
    tokens before the prompt) and prefix tuning, vs peft's per-position logits."""
    worst = {}
    for name in ("lora_r8_all", "lora_lm_head", "prompt_tuning", "prefix_tuning"):
        adir = os.path.join(ROOT, "tests/fixtures/adapters", name)
        st, obj = d().upload("score-" + name.replace("_", "-"), adir)
        assert st in (200, 201), (name, st, obj)
        ref = json.load(open(os.path.join(adir, "reference.json")))
        worst[name] = 0.0
        for c in ref["cases"]:
            ids = c["input_ids"]
            if len(ids) < 2:
                continue
            obj = d().complete(model="score-" + name.replace("_", "-"), prompt=ids, max_tokens=0, echo=True,
                               logprobs=1)
            lp = obj["choices"][0]["logprobs"]["token_logprobs"]
            assert lp[0] is None and len(lp) == len(ids), obj
            for i in range(1, len(ids)):
                row = c["logits"][i - 1]
                m = max(row)
                lse = m + math.log(sum(math.exp(v - m) for v in row))
                worst[name] = max(worst[name], abs(lp[i] - (row[ids[i]] - lse)))
    print("    prompt logprobs under adapters vs peft: %s" % ", ".join("%s %.3g" % kv for kv in worst.items()))
    assert max(worst.values()) <= 1e-4, worst


@test
def json_object_output_is_json():
    refused("/v1/completions", "ignore_eos", "invalid_value", prompt=PROMPT, ignore_eos=True,
            response_format={"type": "json_object"})
    brace = 128  # stories260K's byte token "<0x7D>" ('}'): a nudge to close the object
    stops = 0
    for seed in range(10):
        obj = d().complete(prompt=PROMPT, max_tokens=120, temperature=1, seed=seed, logit_bias={str(brace): 10},
                           response_format={"type": "json_object"})
        c = obj["choices"][0]
        text = c["text"]
        assert text.lstrip().startswith("{"), text
        if c["finish_reason"] == "stop":
            assert isinstance(json.loads(text), dict), text
            stops += 1
        else:
            assert c["finish_reason"] == "length", c
            # a prefix of an object: Python's parser fails only at the very end of the text
            try:
                json.loads(text)
                raise AssertionError("complete JSON but not stopped: %r" % text)
            except json.JSONDecodeError as e:
                assert "Unterminated string" in e.msg or e.pos >= len(text.rstrip()), (e, text)
    assert stops >= 2, stops


@test
def echo_without_logprobs_and_score_only():
    obj = d().complete(prompt=PROMPT, max_tokens=0, echo=True)
    c = obj["choices"][0]
    assert c["text"] == PROMPT and c["logprobs"] is None and c["finish_reason"] == "length", obj
    assert obj["usage"]["completion_tokens"] == 0, obj
    obj = d().complete(prompt=PROMPT, max_tokens=0, echo=True, logprobs=0)
    lp = obj["choices"][0]["logprobs"]
    assert lp["token_logprobs"][0] is None and all(isinstance(x, float) for x in lp["token_logprobs"][1:]), lp
    assert "".join(lp["tokens"]).endswith(PROMPT.split()[-1]), lp


@test
def streamed_echo_carries_the_prompt_logprobs():
    ids, lps, tops = reference_prompt_logprobs()[1]
    chunks, done, raw = d().stream(prompt=ids, max_tokens=3, echo=True, logprobs=1, temperature=0)
    assert done, raw
    first = chunks[0]["choices"][0]
    diff = check_prompt_lp(first["logprobs"], ids, lps, tops, 1)
    assert diff <= 1e-4, diff
    assert len(first["logprobs"]["tokens"]) == len(ids), first
    full = d().complete(prompt=ids, max_tokens=3, echo=True, logprobs=1, temperature=0)
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    assert text == full["choices"][0]["text"], (text, full)
    toks = sum((c["choices"][0]["logprobs"]["tokens"] for c in chunks if c["choices"] and c["choices"][0]["logprobs"]), [])
    assert toks == full["choices"][0]["logprobs"]["tokens"], (toks, full)
    offs = sum((c["choices"][0]["logprobs"]["text_offset"] for c in chunks if c["choices"] and c["choices"][0]["logprobs"]), [])
    assert offs == full["choices"][0]["logprobs"]["text_offset"], (offs, full)
    chunks, done, raw = d().stream(prompt=ids, max_tokens=0, echo=True, logprobs=1)
    assert done and chunks[-1]["choices"][0]["finish_reason"] == "length", raw


@test
def openai_sdk_scores_a_prompt():
    try:
        import openai
    except ImportError as e:
        harness.skip("the openai SDK is not installed: %s" % e)
    cl = openai.OpenAI(base_url="http://127.0.0.1:%d/v1" % d().port, api_key="unused", max_retries=0, timeout=120)
    ids, lps, tops = reference_prompt_logprobs()[2]
    r = cl.completions.create(model=MODEL_ID, prompt=ids, max_tokens=0, echo=True, logprobs=1, temperature=0)
    lp = r.choices[0].logprobs
    assert lp.token_logprobs[0] is None, lp
    diff = max(abs(a - b) for a, b in zip(lp.token_logprobs[1:], lps[1:]))
    assert diff <= 1e-4, diff
    assert r.usage.completion_tokens == 0, r.usage
    try:
        cl.completions.create(model=MODEL_ID, prompt="x", suffix="y")
        raise AssertionError("suffix was accepted")
    except openai.BadRequestError as e:
        assert "suffix" in str(e), e
    r = cl.completions.create(model=MODEL_ID, prompt=PROMPT, max_tokens=4, temperature=0, presence_penalty=1.0,
                              frequency_penalty=1.0, logit_bias={"400": -100}, best_of=2, n=1, seed=1)
    assert r.choices[0].text, r


if __name__ == "__main__":
    harness.run_tests(__file__)
