"""tests/integration/test_bad_input.py — hostile and mistaken requests: malformed JSON,
wrong types, out-of-range values, prompts past the context, unknown models, oversized and
non-UTF-8 bodies, unknown routes and wrong methods. Each must get a 4xx with an
OpenAI-style JSON error, and the daemon must keep serving normal requests afterwards."""

import json
import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import MODEL_ID, assert_error, test  # noqa: E402


def d():
    return harness.daemon


def still_serving():
    obj = d().complete(prompt="Once", max_tokens=3, temperature=0)
    assert obj["choices"][0]["finish_reason"] in ("stop", "length"), obj


def raw_post(body, status, code=None, mentions=None):
    st, _, data = d().request("POST", "/v1/completions", body)
    try:
        obj = json.loads(data)
    except ValueError:
        raise AssertionError("status %d, body is not JSON: %r" % (st, data[:300]))
    assert_error(st, obj, status, code)
    if mentions:
        assert mentions in obj["error"]["message"], (mentions, obj)
    return obj


def bad(status=400, code=None, mentions=None, **payload):
    payload.setdefault("model", MODEL_ID)
    payload.setdefault("prompt", "Once")
    return raw_post(json.dumps(payload).encode(), status, code, mentions)


@test
def malformed_json():
    for body in (b'{"model": "x", "prompt": "a",', b"not json", b"[1,2,3]", b'"str"', b"{}{}",
                 b'{"prompt": "a"} trailing'):
        raw_post(body, 400)
    raw_post(b"", 400)
    still_serving()


@test
def wrong_types_name_the_field():
    bad(prompt=5, mentions="prompt")
    bad(prompt={"a": 1}, mentions="prompt")
    bad(prompt=[1, "a"], mentions="prompt")
    bad(max_tokens="x", mentions="max_tokens")
    bad(max_tokens=1.5, mentions="max_tokens")
    bad(temperature="hot", mentions="temperature")
    bad(top_p="x", mentions="top_p")
    bad(top_k=1.5, mentions="top_k")
    bad(stop=3, mentions="stop")
    bad(stop=["a", 3], mentions="stop")
    bad(stream="yes", mentions="stream")
    bad(echo=1, mentions="echo")
    bad(n="2", mentions="n")
    bad(seed="abc", mentions="seed")
    bad(logprobs=True, mentions="logprobs")
    bad(model=7, mentions="model")
    bad(stream_options=1, mentions="stream_options")
    bad(user=5, mentions="user")
    still_serving()


@test
def out_of_range_values():
    bad(max_tokens=0, mentions="max_tokens")
    bad(max_tokens=-5, mentions="max_tokens")
    bad(max_tokens=10 ** 12, mentions="max_tokens")
    bad(max_tokens=10 ** 40, mentions="max_tokens")
    bad(max_tokens=600, code="context_length_exceeded")  # 512-token context
    bad(temperature=-0.1, mentions="temperature")
    bad(temperature=2.5, mentions="temperature")
    bad(top_p=0, mentions="top_p")
    bad(top_p=1.5, mentions="top_p")
    bad(top_k=-2, mentions="top_k")
    bad(n=0, mentions="n")
    bad(n=17, mentions="n")
    bad(logprobs=21, mentions="logprobs")
    bad(logprobs=-1, mentions="logprobs")
    bad(stop=[""], mentions="stop")
    bad(stop=["x"] * 17, mentions="stop")
    bad(prompt=[], mentions="prompt")
    bad(prompt=[100000], mentions="prompt")
    bad(prompt=[-1], mentions="prompt")
    still_serving()


@test
def prompt_over_context_length():
    obj = bad(prompt="the cat sat on the mat and " * 200, max_tokens=1,
              code="context_length_exceeded")
    assert "512" in obj["error"]["message"], obj
    still_serving()


@test
def unknown_model_is_404():
    bad(status=404, code="model_not_found", model="gpt-4")
    bad(status=404, code="model_not_found", model="")
    still_serving()


def raw_exchange(data, timeout=30):
    """Sends bytes on a fresh connection and reads until the server closes or the response
    is complete; returns (status, body bytes)."""
    s = socket.create_connection(("127.0.0.1", d().port), timeout=timeout * harness.SLOW)
    try:
        s.sendall(data)
        buf = b""
        while True:
            head, sep, rest = buf.partition(b"\r\n\r\n")
            if sep:
                hdrs = head.decode("latin-1").lower()
                for line in hdrs.split("\r\n"):
                    if line.startswith("content-length:"):
                        if len(rest) >= int(line.split(":")[1]):
                            return int(hdrs.split()[1]), rest[:int(line.split(":")[1])]
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        return int(head.split()[1]), rest
    finally:
        s.close()


@test
def body_over_limit_is_413():
    # A declared length past the limit is refused before the body is sent.
    req = ("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           "Content-Length: %d\r\n\r\n" % (1 << 31)).encode()
    st, body = raw_exchange(req)
    assert_error(st, json.loads(body), 413)
    # A chunked body (no declared length) that grows past the limit: the default limit is
    # 1 MiB; 3 MiB is over it and under the point where the server stops reading.
    big = b'{"prompt": "' + b"a" * (3 << 20) + b'"}'
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(big[i:i + 65536]), big[i:i + 65536])
                      for i in range(0, len(big), 65536))
    req = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n")
    st, body = raw_exchange(req)
    assert_error(st, json.loads(body), 413)
    still_serving()


@test
def non_utf8_is_400():
    raw_post(b'{"model": "%s", "prompt": "caf\xe9"}' % MODEL_ID.encode(), 400)
    raw_post(b'{"model": "%s", "prompt": "\xff\xfe\xfd"}' % MODEL_ID.encode(), 400)
    raw_post(b'{"model": "%s", "prompt": "\xed\xa0\x80"}' % MODEL_ID.encode(), 400)  # surrogate
    raw_post(b'{"model": "%s", "prompt": "\\ud800"}' % MODEL_ID.encode(), 400)  # lone escape
    # Valid multi-byte UTF-8 is fine.
    d().complete(prompt="caf\u00e9 \u2603 \U0001F600", max_tokens=2, temperature=0)
    still_serving()


@test
def nul_characters_are_refused_not_truncated():
    """Issue 9 defect 15: "\\u0000" cut a prompt short (C strings end at NUL) and the
    request was served as if the rest had not been sent."""
    raw_post(b'{"model": "%s", "prompt": "Once\\u0000upon"}' % MODEL_ID.encode(), 400, mentions="NUL")
    raw_post(b'{"model": "%s", "prompt": "\\u0000"}' % MODEL_ID.encode(), 400, mentions="NUL")
    raw_post(b'{"model": "%s\\u0000x", "prompt": "Once"}' % MODEL_ID.encode(), 400, mentions="NUL")
    raw_post(b'{"model": "%s", "prompt": "a", "stop": ["\\u0000"]}' % MODEL_ID.encode(), 400, mentions="NUL")
    raw_post(b'{"model": "%s", "prompt": "a\x00b"}' % MODEL_ID.encode(), 400)
    st, _, data = d().request("POST", "/v1/chat/completions",
                              b'{"model": "%s", "messages": [{"role": "user", "content": "hi\\u0000"}]}'
                              % MODEL_ID.encode())
    assert_error(st, json.loads(data), 400)
    # an escaped backslash before "u0000" is text, not a NUL
    d().complete(prompt="a \\u0000 b", max_tokens=2, temperature=0)
    still_serving()


@test
def error_bodies_are_valid_utf8_whatever_was_sent():
    """Issue 9 defect 15: an error message quoting client bytes echoed raw 0xFF bytes."""
    for body in (b'{"model": "\xff\xfe%s", "prompt": "Once"}' % MODEL_ID.encode(),
                 b'{"model": "caf\xc3", "prompt": "Once"}',
                 b'{"model": "' + "\u00e9".encode() * 300 + b'\xff", "prompt": "Once"}',
                 b'{"adapter": "\xf0\x9f\x98", "prompt": "Once"}'):
        st, _, data = d().request("POST", "/v1/completions", body)
        assert 400 <= st < 500, (st, data[:200])
        text = data.decode("utf-8")  # strict: raises on any invalid byte
        assert_error(st, json.loads(text), st)
    still_serving()


@test
def two_content_lengths_are_refused():
    """Issue 9 defect 15: two different Content-Length headers were accepted (request
    smuggling behind a proxy that reads the other one)."""
    body = b'{"model": "%s", "prompt": "Once", "max_tokens": 1}' % MODEL_ID.encode()
    for extra in ("Content-Length: %d\r\nContent-Length: 5\r\n" % len(body),
                  "Content-Length: %d\r\nContent-Length: %d\r\n" % (len(body), len(body)),
                  "Content-Length: %d\r\nTransfer-Encoding: chunked\r\n" % len(body)):
        req = ("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               "Connection: close\r\n" + extra + "\r\n").encode() + body
        st, data = raw_exchange(req)
        assert st == 400, (extra, st, data[:200])
    still_serving()


@test
def seeds_past_2_53_are_refused_not_crashed():
    """Issue 9 attack run: seed 2^63 - 1 (INT64_MAX, a common client value) was cast from a
    double that rounds to 2^63: undefined behaviour, the sanitized daemon died. Past 2^53 a
    JSON number is not exact (2^60 and 2^60 + 1 read the same), so such seeds are refused."""
    for seed in (9223372036854775807, -9223372036854775808, 2 ** 63, 2 ** 60 + 1, 1e300):
        bad(status=400, mentions="seed", seed=seed)
    for seed in (0, -1, 2 ** 53, -(2 ** 53), 12345):
        d().complete(prompt="Once", max_tokens=2, seed=seed, temperature=1.0)
    st, _, data = d().request("POST", "/v1/chat/completions",
                              {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}],
                               "seed": 9223372036854775807})
    assert st == 400, (st, data[:200])
    still_serving()


@test
def duplicate_keys_are_refused():
    """Issue 9 attack run: cJSON reads the first of two equal keys, Python's json (and most
    proxies) the last; chat's rewrite dropped one copy and smuggled the other past the
    template. A body saying a key twice is refused on every route."""
    body = b'{"model": "%s", "prompt": "Once", "max_tokens": 1, "max_tokens": 500}' % MODEL_ID.encode()
    raw_post(body, 400, mentions="max_tokens")
    raw_post(b'{"model": "%s", "prompt": "a", "stop": {"x": 1, "x": 2}}' % MODEL_ID.encode(), 400)
    st, _, data = d().request("POST", "/v1/chat/completions",
                              b'{"messages": [{"role": "user", "content": "hi"}], "prompt": "x", "prompt": ["a"]}')
    obj = json.loads(data)
    assert_error(st, obj, 400)
    assert "twice" in obj["error"]["message"], obj
    # the same key in two different objects is fine
    d().complete(prompt="Once", max_tokens=1, stream_options=None)
    still_serving()


@test
def unknown_route_is_404():
    # "/" is the web console (test_console.py); its files live under /console/ only
    for method, path in (("GET", "/index.html"), ("GET", "/console/missing.js"), ("GET", "/v2/models"), ("POST", "/v1/chat/nothing"),
                         ("GET", "/v1/completions/extra"), ("GET", "/%ff%fe%00x"),
                         ("GET", "/x" + "%C3%A9" * 300)):  # quoted in the message: cut at a character
        st, _, data = d().request(method, path, b"{}" if method == "POST" else None)
        assert_error(st, json.loads(data), 404)
    still_serving()


@test
def wrong_method_is_405():
    for method, path in (("GET", "/v1/completions"), ("DELETE", "/health"),
                         ("POST", "/v1/models"), ("PUT", "/metrics")):
        st, hdrs, data = d().request(method, path, b"{}" if method in ("POST", "PUT") else None)
        assert_error(st, json.loads(data), 405)
        assert "allow" in hdrs, hdrs
    still_serving()


@test
def bad_requests_are_counted():
    bad(max_tokens=0)
    st, _, body = d().request("GET", "/metrics")
    assert 'peftd_requests_total{endpoint="/v1/completions",status="400"}' in body.decode()


if __name__ == "__main__":
    harness.run_tests(__file__)
