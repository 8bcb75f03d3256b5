"""tests/integration/test_openai_sdk.py — the official `openai` Python SDK against peftd.

A daemon serving tests/fixtures/models/stories260K-chat (stories260K with a ChatML chat
template) and the LoRA adapter `story` (tests/fixtures/adapters/lora_r8_all) is driven
through `openai.OpenAI(base_url=...)`: completions (+ stream), chat completions (+ stream
with delta.role first, n, logprobs/top_logprobs, stop, seed reproducibility,
max_completion_tokens, include_usage), models.list, adapter selection by `model`, and the
error mapping (unknown model -> NotFoundError, bad parameters -> BadRequestError). Chat
prompts are checked against completions on the same token ids (the ChatML rendering
tokenized by the `tokenizers` package without special tokens, as apply_chat_template does),
for the base model and for the adapter. The shared default daemon (models/stories260K, no
template) must answer chat with a 400 naming the missing template; a config-file
"chat_template" override must make chat work on it.

The SDK is installed by `make test` (tests/run_tests.sh) with pip when missing; if it still
cannot be imported, every test here is reported SKIPPED, never passed.
"""

import atexit
import json
import os
import tempfile

import harness
from harness import test, skip

try:
    import openai
except ImportError as e:  # reported per test as SKIPPED
    openai = None
    OPENAI_MISSING = str(e)

ROOT = harness.ROOT
CHAT_MODEL_DIR = os.path.join(ROOT, "tests", "fixtures", "models", "stories260K-chat")
CHAT_MODEL = "stories260K-chat"
ADAPTER_DIR = os.path.join(ROOT, "tests", "fixtures", "adapters", "lora_r8_all")
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

_chat_daemon = None


def chat_daemon():
    """The daemon with the chat model and the `story` adapter (started on first use)."""
    global _chat_daemon
    if _chat_daemon is None:
        _chat_daemon = harness.Daemon(["--model", CHAT_MODEL_DIR, "--adapter", "story=" + ADAPTER_DIR])
        atexit.register(_chat_daemon.close)
    return _chat_daemon


def client(d=None):
    if openai is None:
        skip("the openai SDK is not installed (pip install openai failed?): %s" % OPENAI_MISSING)
    d = d or chat_daemon()
    return openai.OpenAI(base_url="http://127.0.0.1:%d/v1" % d.port, api_key="unused", max_retries=0, timeout=120)


def chatml_ids(messages):
    """What the daemon's prompt must be: the ChatML rendering, tokenized without BOS by the
    `tokenizers` package (committed as a fixture by tests/fixtures/chat/make_chatml_ids.py,
    since CI has no `tokenizers`)."""
    with open(os.path.join(ROOT, "tests", "fixtures", "chat", "chatml_ids.json")) as f:
        fx = json.load(f)
    assert fx["messages"] == messages, "chatml_ids.json was made for another conversation"
    return fx["ids"]


MESSAGES = [{"role": "system", "content": "You tell short stories."},
            {"role": "user", "content": "Once upon a time there was a cat."}]


@test
def models_list_has_base_and_adapter():
    ids = [m.id for m in client().models.list()]
    assert CHAT_MODEL in ids, ids
    assert "story" in ids, ids


@test
def completions_create_and_stream():
    c = client()
    r = c.completions.create(model=CHAT_MODEL, prompt="Once upon a time", max_tokens=12, temperature=0)
    assert r.object == "text_completion" and r.model == CHAT_MODEL, r
    assert len(r.choices) == 1 and isinstance(r.choices[0].text, str) and r.choices[0].text
    assert r.choices[0].finish_reason in ("length", "stop"), r
    assert r.usage.completion_tokens <= 12 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    parts, finish = [], None
    for chunk in c.completions.create(model=CHAT_MODEL, prompt="Once upon a time", max_tokens=12, temperature=0,
                                      stream=True):
        if chunk.choices:
            parts.append(chunk.choices[0].text)
            finish = chunk.choices[0].finish_reason or finish
    assert "".join(parts) == r.choices[0].text, (parts, r.choices[0].text)
    assert finish == r.choices[0].finish_reason


@test
def chat_create_matches_completions_on_the_template_tokens():
    c = client()
    r = c.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=16, temperature=0)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-"), r
    msg = r.choices[0].message
    assert msg.role == "assistant" and isinstance(msg.content, str) and msg.content, r
    ids = chatml_ids(MESSAGES)
    assert r.usage.prompt_tokens == len(ids), (r.usage, len(ids))
    ref = c.completions.create(model=CHAT_MODEL, prompt=ids, max_tokens=16, temperature=0)
    assert msg.content == ref.choices[0].text, (msg.content, ref.choices[0].text)
    assert r.choices[0].finish_reason == ref.choices[0].finish_reason
    assert r.usage.completion_tokens == ref.usage.completion_tokens


@test
def chat_stream_role_first_then_content():
    c = client()
    full = c.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_completion_tokens=20, temperature=0)
    chunks = list(c.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_completion_tokens=20,
                                            temperature=0, stream=True, stream_options={"include_usage": True}))
    with_choices = [ch for ch in chunks if ch.choices]
    assert with_choices[0].choices[0].delta.role == "assistant", with_choices[0]
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    assert all(ch.choices[0].delta.role is None for ch in with_choices[1:])
    text = "".join(ch.choices[0].delta.content or "" for ch in with_choices)
    assert text == full.choices[0].message.content, (text, full.choices[0].message.content)
    assert with_choices[-1].choices[0].finish_reason == full.choices[0].finish_reason
    assert all(ch.choices[0].finish_reason is None for ch in with_choices[:-1])
    assert chunks[-1].usage is not None and not chunks[-1].choices, chunks[-1]
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens


@test
def chat_n_choices():
    c = client()
    r = c.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=10, n=3, temperature=1.0, seed=7)
    assert sorted(ch.index for ch in r.choices) == [0, 1, 2], r
    assert len({ch.message.content for ch in r.choices}) > 1, "3 sampled choices all identical: %s" % r
    assert r.usage.completion_tokens == 30 or r.choices[0].finish_reason == "stop" or \
        any(ch.finish_reason == "stop" for ch in r.choices), r.usage  # usage counts all choices
    got = {}
    for chunk in c.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=10, n=3, temperature=1.0,
                                           seed=7, stream=True):
        for ch in chunk.choices:
            got.setdefault(ch.index, []).append(ch.delta.content or "")
    assert {i: "".join(p) for i, p in got.items()} == {ch.index: ch.message.content for ch in r.choices}


@test
def chat_logprobs_and_top_logprobs():
    c = client()
    r = c.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=8, temperature=0, logprobs=True,
                                  top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens, (len(content), r.usage)
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3, t
        assert bytes(t.bytes) == t.token.encode(), t
        # greedy: the chosen token is the most likely one
        assert abs(t.top_logprobs[0].logprob - t.logprob) < 1e-5, t
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob >= t.top_logprobs[2].logprob
    r0 = c.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=4, temperature=0, logprobs=True)
    assert all(t.top_logprobs == [] for t in r0.choices[0].logprobs.content)
    plain = c.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=4, temperature=0)
    assert plain.choices[0].logprobs is None


@test
def chat_stop_strings():
    c = client()
    full = c.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=40, temperature=0)
    text = full.choices[0].message.content
    stop = text[8:11]
    assert len(stop) == 3 and stop.strip(), text
    r = c.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=40, temperature=0, stop=[stop, "zzzq"])
    assert r.choices[0].finish_reason == "stop", r
    assert r.choices[0].message.content == text[:text.index(stop)], (r.choices[0].message.content, text, stop)


@test
def chat_seed_reproducible():
    c = client()
    kw = dict(model=CHAT_MODEL, messages=MESSAGES, max_tokens=16, temperature=1.0, top_p=0.95)
    a = c.chat.completions.create(seed=1234, **kw).choices[0].message.content
    b = c.chat.completions.create(seed=1234, **kw).choices[0].message.content
    assert a == b, (a, b)
    others = {c.chat.completions.create(seed=s, **kw).choices[0].message.content for s in (1, 2, 3)}
    assert others - {a}, "three other seeds all gave the seed-1234 text"


@test
def adapter_selected_by_model():
    c = client()
    base = c.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=24, temperature=0)
    story = c.chat.completions.create(model="story", messages=MESSAGES, max_tokens=24, temperature=0)
    assert story.model == "story", story
    assert story.choices[0].message.content != base.choices[0].message.content, "the adapter changed nothing"
    ref = c.completions.create(model="story", prompt=chatml_ids(MESSAGES), max_tokens=24, temperature=0)
    assert story.choices[0].message.content == ref.choices[0].text
    parts = [ch.choices[0].delta.content or "" for ch in
             c.chat.completions.create(model="story", messages=MESSAGES, max_tokens=24, temperature=0, stream=True)
             if ch.choices]
    assert "".join(parts) == story.choices[0].message.content


@test
def content_parts_are_joined_text():
    c = client()
    parts = [{"role": "user", "content": [{"type": "text", "text": "Once upon"}, {"type": "text", "text": "a time"}]}]
    flat = [{"role": "user", "content": "Once upon\na time"}]
    a = c.chat.completions.create(model=CHAT_MODEL, messages=parts, max_tokens=8, temperature=0)
    b = c.chat.completions.create(model=CHAT_MODEL, messages=flat, max_tokens=8, temperature=0)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.prompt_tokens == b.usage.prompt_tokens


@test
def error_mapping():
    c = client()
    for call in (lambda: c.chat.completions.create(model="no-such-adapter", messages=MESSAGES, max_tokens=2),
                 lambda: c.completions.create(model="no-such-adapter", prompt="x", max_tokens=2)):
        try:
            call()
            raise AssertionError("unknown model accepted")
        except openai.NotFoundError as e:
            assert e.status_code == 404 and "no-such-adapter" in str(e), e
    bad = [dict(temperature=5), dict(top_logprobs=3), dict(logprobs=True, top_logprobs=21), dict(n=0),
           dict(max_completion_tokens=0), dict(messages=[]), dict(messages=[{"role": "tool", "content": "x"}]),
           dict(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])]
    for extra in bad:
        kw = dict(model=CHAT_MODEL, messages=MESSAGES, max_tokens=2)
        kw.update(extra)
        try:
            c.chat.completions.create(**kw)
            raise AssertionError("accepted %s" % extra)
        except openai.BadRequestError as e:
            assert e.status_code == 400, e
    try:
        c.completions.create(model=CHAT_MODEL, prompt="x", max_tokens=2, temperature=-1)
        raise AssertionError("accepted temperature -1")
    except openai.BadRequestError:
        pass


@test
def no_template_is_a_clear_400():
    c = client(harness.daemon)  # models/stories260K ships no chat template
    try:
        c.chat.completions.create(model=harness.MODEL_ID, messages=MESSAGES, max_tokens=2)
        raise AssertionError("chat accepted without a template")
    except openai.BadRequestError as e:
        assert "chat template" in str(e) and e.code == "chat_template_missing", e
    # completions keep working on that model
    r = c.completions.create(model=harness.MODEL_ID, prompt="Once", max_tokens=2)
    assert r.choices[0].text is not None


@test
def configured_template_override():
    if openai is None:
        client()
    tmp = tempfile.mkdtemp(prefix="peftd-chat-")
    tmpl = os.path.join(tmp, "chatml.jinja")
    with open(tmpl, "w") as f:
        f.write(CHATML + "\n")
    conf = os.path.join(tmp, "peftd.json")
    with open(conf, "w") as f:
        json.dump({"chat_template": tmpl}, f)
    d = harness.Daemon(["--config", conf])  # models/stories260K: its own config has no template
    try:
        c = client(d)
        r = c.chat.completions.create(model=harness.MODEL_ID, messages=MESSAGES, max_tokens=8, temperature=0)
        assert r.usage.prompt_tokens == len(chatml_ids(MESSAGES)), r.usage
        ref = c.completions.create(model=harness.MODEL_ID, prompt=chatml_ids(MESSAGES), max_tokens=8, temperature=0)
        assert r.choices[0].message.content == ref.choices[0].text
    finally:
        d.close()
    # a configured template that does not exist stops the start-up with a message
    with open(conf, "w") as f:
        json.dump({"chat_template": os.path.join(tmp, "missing.jinja")}, f)
    try:
        harness.Daemon(["--config", conf]).close()
        raise AssertionError("started with a missing chat template file")
    except RuntimeError as e:
        assert "missing.jinja" in str(e), e
    for n in os.listdir(tmp):
        os.unlink(os.path.join(tmp, n))
    os.rmdir(tmp)



@test
def embeddings_through_the_sdk():
    """embeddings.create (the SDK asks for base64 and decodes it): the normalised mean of
    transformers' last_hidden_state (tests/fixtures/endpoints/reference.json)."""
    c = client(harness.daemon)
    with open(os.path.join(ROOT, "tests", "fixtures", "endpoints", "reference.json")) as f:
        ref = json.load(f)
    r = c.embeddings.create(model=harness.MODEL_ID, input=ref["embed_inputs"])
    assert len(r.data) == len(ref["embed_inputs"]) and r.usage.prompt_tokens == sum(len(i) for i in ref["embed_ids"])
    for e, want in zip(r.data, ref["models"]["base"]["embed"]):
        n = sum(x * x for x in want["mean"]) ** 0.5
        assert max(abs(a - b / n) for a, b in zip(e.embedding, want["mean"])) <= 1e-5


if __name__ == "__main__":
    harness.run_tests(__file__)
