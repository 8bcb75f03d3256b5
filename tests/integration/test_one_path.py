"""tests/integration/test_one_path.py — one path from a request to the engine (issue 10 §2).

/v1/completions and /v1/chat/completions share one parse of their common options, one
context rule and one status -> HTTP table, so the same invalid input must get the same
HTTP status and the same OpenAI error code on both routes. A daemon serving the default
model with a configured ChatML template (the model ships none) and the IA3 fixture adapter
gets each bad field once per route: an unknown model, max_tokens out of range or past the
context, a temperature that is not a number or too large, top_p 0, n 0, 17 stop strings, a
seed past 2^53, adapter_scale on an IA3 adapter, a duplicate key, a NUL, a prompt longer
than the context.
"""

import atexit
import json
import os
import tempfile

import harness
from harness import test

ROOT = harness.ROOT
IA3_DIR = os.path.join(ROOT, "tests", "fixtures", "adapters", "ia3")
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
TEXT = "Once upon a time"

_daemon = None


def d():
    """The daemon with a chat template and the IA3 adapter `ia3` (started on first use)."""
    global _daemon
    if _daemon is None:
        tmp = tempfile.mkdtemp(prefix="peftd-one-path-")
        tmpl = os.path.join(tmp, "chatml.jinja")
        with open(tmpl, "w") as f:
            f.write(CHATML + "\n")
        conf = os.path.join(tmp, "peftd.json")
        with open(conf, "w") as f:
            json.dump({"chat_template": tmpl}, f)
        _daemon = harness.Daemon(["--config", conf])
        atexit.register(_daemon.close)
        st, obj = _daemon.upload("ia3", IA3_DIR)
        assert 200 <= st < 300, (st, obj)
    return _daemon


def bodies(text=TEXT, **extra):
    """The same request on both routes: (completions body, chat body)."""
    comp = {"model": harness.MODEL_ID, "prompt": text, "max_tokens": 2}
    chat = {"model": harness.MODEL_ID, "messages": [{"role": "user", "content": text}], "max_tokens": 2}
    comp.update(extra)
    chat.update(extra)
    return comp, chat


def answer(path, body):
    st, _, data = d().request("POST", path, body)
    obj = json.loads(data)
    return st, obj


def same_answer(comp, chat, status, code=None):
    """Both routes answer status (and code) with an OpenAI error; returns the two errors."""
    st1, o1 = answer("/v1/completions", comp)
    st2, o2 = answer("/v1/chat/completions", chat)
    harness.assert_error(st1, o1, status, code)
    harness.assert_error(st2, o2, status, code)
    assert o1["error"]["code"] == o2["error"]["code"], (o1, o2)
    assert o1["error"]["type"] == o2["error"]["type"], (o1, o2)
    return o1["error"], o2["error"]


@test
def both_routes_work():
    comp, chat = bodies(temperature=0)
    assert answer("/v1/completions", comp)[0] == 200
    st, obj = answer("/v1/chat/completions", chat)
    assert st == 200 and obj["object"] == "chat.completion", (st, obj)


@test
def unknown_model():
    e1, e2 = same_answer(*bodies(model="no-such-adapter"), status=404, code="model_not_found")
    assert "no-such-adapter" in e1["message"] and "no-such-adapter" in e2["message"], (e1, e2)


@test
def bad_sampling_options():
    cases = [(dict(max_tokens=-1), "invalid_value", "'max_tokens'"),
             (dict(temperature="x"), "invalid_type", "'temperature'"),
             (dict(temperature=5), "invalid_value", "'temperature'"),
             (dict(top_p=0), "invalid_value", "'top_p'"),
             (dict(n=0), "invalid_value", "'n'"),
             (dict(stop=["s%d" % i for i in range(17)]), "invalid_value", "'stop'"),
             (dict(seed=2 ** 63), "invalid_value", "'seed'")]
    for extra, code, field in cases:
        e1, e2 = same_answer(*bodies(**extra), status=400, code=code)
        assert e1["message"] == e2["message"], (extra, e1, e2)
        assert field in e1["message"], (extra, e1)


@test
def chat_errors_name_the_field_sent():
    _, chat = bodies(max_completion_tokens=-1)
    st, obj = answer("/v1/chat/completions", chat)
    harness.assert_error(st, obj, 400, "invalid_value")
    assert "'max_completion_tokens'" in obj["error"]["message"], obj


@test
def adapter_scale_on_ia3():
    e1, e2 = same_answer(*bodies(model="ia3", adapter_scale=0.5), status=400, code="invalid_value")
    assert e1["message"] == e2["message"] and "adapter_scale" in e1["message"], (e1, e2)


@test
def duplicate_key_and_nul():
    for comp, chat in (bodies(), bodies(user="x")):
        dup = lambda b: (json.dumps(b)[:-1] + ', "temperature": 0, "temperature": 1}').encode()
        same_answer(dup(comp), dup(chat), status=400, code="invalid_json")
    comp, chat = bodies(text="Once\u0000upon")
    same_answer(json.dumps(comp).encode(), json.dumps(chat).encode(), status=400)
    comp, chat = bodies(user="a\u0000b")
    same_answer(json.dumps(comp).encode(), json.dumps(chat).encode(), status=400)


@test
def past_the_context():
    for comp, chat in (bodies(max_tokens=10 ** 9), bodies(text=" ".join([TEXT] * 200))):
        e1, e2 = same_answer(comp, chat, status=400, code="context_length_exceeded")
        for e in (e1, e2):
            assert "maximum context length" in e["message"], e
    # chat without a limit generates up to the context: a prompt past it is the same error
    _, chat = bodies(text=" ".join([TEXT] * 200))
    del chat["max_tokens"]
    st, obj = answer("/v1/chat/completions", chat)
    harness.assert_error(st, obj, 400, "context_length_exceeded")


if __name__ == "__main__":
    harness.run_tests(__file__)
