"""tests/integration/test_json_schema.py — response_format {"type":"json_schema"} through HTTP
on the real daemon (issue 15, acceptance 1: "JSON mode outputs parse and follow the schema on
50 random schemas"). 50 schemas are drawn (seeded) from the supported subset — objects with
properties / required / additionalProperties false, arrays with items / minItems / maxItems,
strings with minLength / maxLength, integer, number, boolean, null, type lists, enum, const,
anyOf, $ref into $defs (plain and recursive); each is run greedy, sampled (temperature 1 and 2) and sampled with '}' and ']' pushed up,
on /v1/completions and /v1/chat/completions alternately, and every output must parse
(json.loads) and validate with the independent `jsonschema` package (Draft 2020-12), with
declared properties in declared order; unsupported keywords and malformed or oversized
schemas are 400s naming what is wrong; a max_tokens cut says "length"."""

import atexit
import json
import os
import random
import shutil
import sys
import tempfile

import jsonschema

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import MODEL_ID, assert_error, test  # noqa: E402

WORDS = ["name", "age", "city", "color", "size", "tags", "id", "kind", "score", "ok", "items", "note", "x", "xy",
         "a b", "caf\u00e9", "step", "mood"]


def d():
    return harness.daemon


_chat = []


def chat_d():
    """A second daemon whose config gives stories260K (which has none) a chat template, for
    /v1/chat/completions; closed at exit."""
    if not _chat:
        tmp = tempfile.mkdtemp(prefix="peftd-jschema-")
        tmpl = os.path.join(tmp, "plain.jinja")
        with open(tmpl, "w") as f:
            f.write("{% for m in messages %}{{ m['content'] }}\n{% endfor %}")
        conf = os.path.join(tmp, "peftd.json")
        with open(conf, "w") as f:
            json.dump({"chat_template": tmpl}, f)
        _chat.append(harness.Daemon(["--config", conf]))
        atexit.register(lambda: (_chat[0].close(), shutil.rmtree(tmp, ignore_errors=True)))
    return _chat[0]


class Gen:
    """Random schemas from the supported subset; every draw is bounded (strings have
    maxLength or are enum/const, arrays maxItems) so a generation can always finish."""

    def __init__(self, seed):
        self.r = random.Random(seed)
        self.defs = {}

    def leaf(self):
        r = self.r
        k = r.randrange(9)
        if k == 0:
            s = {"type": "string", "maxLength": r.randint(0, 12)}
            if r.random() < 0.4:
                s["minLength"] = r.randint(0, s["maxLength"])
            return s
        if k == 1:
            return {"type": "integer"}
        if k == 2:
            return {"type": "number"}
        if k == 3:
            return {"type": "boolean"}
        if k == 4:
            return {"type": "null"}
        if k == 5:
            vals = r.sample(["red", "green", "blue", "cat", "dog", 1, 12, 3.5, None, True, "\u00e9t\u00e9", "a\"b"],
                            r.randint(1, 4))
            return {"enum": vals}
        if k == 6:
            return {"const": r.choice(["yes", 0, False, {"k": [1, "v"]}, [None]])}
        if k == 7:
            return {"type": r.sample(["string", "integer", "null", "boolean"], 2), "maxLength": r.randint(1, 6)}
        return {"type": "string", "enum": r.sample(["north", "south", "east", "west", "n"], r.randint(2, 4))}

    def node(self, depth):
        r = self.r
        if depth >= 3 or r.random() < 0.35:
            return self.leaf()
        k = r.randrange(6)
        if k <= 1:
            return self.obj(depth)
        if k == 2:
            s = {"type": "array", "items": self.node(depth + 1), "maxItems": r.randint(0, 4)}
            if r.random() < 0.5:
                s["minItems"] = r.randint(0, min(2, s["maxItems"]))
            return s
        if k == 3:
            return {"anyOf": [self.node(depth + 1) for _ in range(r.randint(2, 3))]}
        if k == 4:  # a definition, referenced
            name = "d%d" % len(self.defs)
            self.defs[name] = None
            self.defs[name] = self.node(depth + 1)
            return {"$ref": "#/$defs/" + name}
        return {"type": "array", "items": self.leaf(), "minItems": 1, "maxItems": 3}

    def obj(self, depth):
        r = self.r
        names = r.sample(WORDS, r.randint(1, 4))
        props = {n: self.node(depth + 1) for n in names}
        s = {"type": "object", "properties": props,
             "required": [n for n in names if r.random() < 0.7]}
        if r.random() < 0.8:
            s["additionalProperties"] = False
        if r.random() < 0.3:
            s["description"] = "an object"
        return s

    def schema(self, i):
        r = self.r
        self.defs = {}
        if i % 10 == 9:  # recursive: a tree, or a linked list through "#"
            if r.random() < 0.5:
                self.defs["tree"] = {"type": "object", "properties": {
                    "label": {"type": "string", "maxLength": 5},
                    "kids": {"type": "array", "items": {"$ref": "#/$defs/tree"}, "maxItems": 2}},
                    "required": ["label"], "additionalProperties": False}
                return {"$defs": self.defs, "$ref": "#/$defs/tree"}
            return {"type": "object", "properties": {"v": {"type": "integer"},
                                                     "next": {"anyOf": [{"$ref": "#"}, {"type": "null"}]}},
                    "required": ["v", "next"], "additionalProperties": False}
        s = self.obj(0) if r.random() < 0.7 else self.node(0)
        if self.defs:
            s = dict(s)
            s["$defs"] = self.defs
        return s


# stories260K's byte tokens "<0x7D>" ('}') and "<0x5D>" (']')
CLOSE_BIAS = {"128": 30, "96": 30}


def declared_order_ok(schema, value):
    """The keys of a top-level object output come in the order the schema declares them."""
    if not isinstance(value, dict) or "properties" not in schema:
        return True
    order = list(schema["properties"])
    pos = [order.index(k) for k in value]
    return pos == sorted(pos)


def generate(schema, i, temperature, max_tokens=400, bias=None):
    rf = {"type": "json_schema", "json_schema": {"name": "s%d" % i, "schema": schema, "strict": True}}
    if i % 2 == 0:
        obj = d().complete(prompt="Once upon a time", max_tokens=max_tokens, temperature=temperature, seed=i,
                           response_format=rf, **({"logit_bias": bias} if bias else {}))
        c = obj["choices"][0]
        return c["text"], c["finish_reason"]
    st, obj = chat_d().post("/v1/chat/completions", {"model": MODEL_ID, "messages": [{"role": "user", "content": "Tell"}],
                                                 "max_tokens": max_tokens, "temperature": temperature, "seed": i,
                                                 "response_format": rf, **({"logit_bias": bias} if bias else {})})
    assert st == 200, obj
    c = obj["choices"][0]
    return c["message"]["content"], c["finish_reason"]


@test
def fifty_random_schemas_greedy_and_sampled_validate():
    g = Gen(20261202)
    runs = 0
    kinds = {}
    for i in range(50):
        schema = g.schema(i)
        text = json.dumps(schema)
        for key in ("$ref", "anyOf", "enum", "const", "minItems", "maxLength", "additionalProperties", '"null"'):
            kinds[key] = kinds.get(key, 0) + (key in text)
        jsonschema.Draft202012Validator.check_schema(schema)
        validator = jsonschema.Draft202012Validator(schema)
        # greedy, sampled, and sampled with '}' / ']' pushed up (wherever the mask allows
        # them: objects and arrays close as early as the schema lets them)
        for temperature, bias in ((0, None), (1.0, None), (1.0, CLOSE_BIAS), (2.0, None)):
            out, finish = generate(schema, i, temperature, bias=bias)
            assert finish == "stop", (i, temperature, finish, schema, out)
            try:
                value = json.loads(out)
            except json.JSONDecodeError as e:
                raise AssertionError("schema %d (T=%s): output does not parse: %s\n%r\n%s" %
                                     (i, temperature, e, out, text))
            errors = list(validator.iter_errors(value))
            assert not errors, "schema %d (T=%s): %s\noutput %r\nschema %s" % (i, temperature, errors[0].message,
                                                                              out, text)
            assert declared_order_ok(schema, value), (i, out, text)
            runs += 1
            if i < 3:
                print("    %s -> %s" % (text[:100], out[:100]))
    print("    %d generations on 50 schemas validate (schemas using: %s)" %
          (runs, ", ".join("%s %d" % kv for kv in sorted(kinds.items()))))
    assert runs == 200


@test
def length_cut_says_length():
    schema = {"type": "object", "properties": {"story": {"type": "string", "maxLength": 200}},
              "required": ["story"], "additionalProperties": False}
    out, finish = generate(schema, 0, 0, max_tokens=5)
    assert finish == "length", (finish, out)
    assert out and ('{"story":"'.startswith(out) or out.startswith('{"story":"')), out


def refused(schema, needle, code="invalid_value", rf=None):
    for daemon, route, extra in ((d(), "/v1/completions", {"prompt": "x"}),
                                 (chat_d(), "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]})):
        body = dict(extra, model=MODEL_ID,
                    response_format=rf or {"type": "json_schema", "json_schema": {"name": "t", "schema": schema}})
        st, obj = daemon.post(route, body)
        assert_error(st, obj, 400, code)
        assert needle in obj["error"]["message"], (needle, obj)


@test
def unsupported_malformed_and_oversized_schemas_are_400():
    refused({"type": "string", "pattern": "^a+$"}, "'pattern'")
    refused({"type": "string", "format": "email"}, "'format' (email)")
    refused({"type": "number", "minimum": 0}, "'minimum'")
    refused({"type": "object", "properties": {"a": {"type": "integer", "multipleOf": 2}}}, "'multipleOf'")
    refused({"oneOf": [{"type": "null"}]}, "'oneOf'")
    refused({"type": "object", "additionalProperties": {"type": "string"}}, "'additionalProperties'")
    refused({"type": 5}, "'type'")
    refused({"$ref": "#/$defs/nope"}, "'#/$defs/nope'")
    refused({"type": "object", "properties": {"n": {"$ref": "#"}}, "required": ["n"]}, "admits no value")
    refused({"enum": list(range(600))}, "more than 512 values")
    deep = {"type": "null"}
    for _ in range(30):
        deep = {"type": "array", "items": deep}
    refused(deep, "deeper than 24")
    many = {"type": "object", "properties": {"p%d" % i: {"type": "null"} for i in range(1100)}}
    refused(many, "more than 1024 properties")
    refused(None, "'response_format.json_schema.schema' is required",
            rf={"type": "json_schema", "json_schema": {"name": "t"}})
    refused(None, "'response_format.json_schema.name'",
            rf={"type": "json_schema", "json_schema": {"name": "bad name!", "schema": {}}})
    refused(None, "'response_format.json_schema.schemas'", code="unknown_parameter",
            rf={"type": "json_schema", "json_schema": {"name": "t", "schemas": {}}})
    refused(None, "'response_format.json_schema'", code="invalid_type", rf={"type": "json_schema"})
    st, obj = d().post("/v1/completions", {"model": MODEL_ID, "prompt": "x", "ignore_eos": True,
                                           "response_format": {"type": "json_schema",
                                                               "json_schema": {"name": "t", "schema": {}}}})
    assert_error(st, obj, 400, "invalid_value")
    assert "'ignore_eos'" in obj["error"]["message"], obj


@test
def openai_sdk_json_schema_round_trip():
    import openai
    cl = openai.OpenAI(base_url="http://127.0.0.1:%d/v1" % chat_d().port, api_key="x", max_retries=0, timeout=120)
    schema = {"type": "object", "properties": {"title": {"type": "string", "maxLength": 10},
                                               "year": {"type": "integer"}},
              "required": ["title", "year"], "additionalProperties": False}
    r = cl.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "A book"}], max_tokens=100,
                                   temperature=0,
                                   response_format={"type": "json_schema",
                                                    "json_schema": {"name": "book", "schema": schema, "strict": True}})
    v = json.loads(r.choices[0].message.content)
    jsonschema.validate(v, schema)
    assert list(v) == ["title", "year"], v


if __name__ == "__main__":
    harness.run_tests(__file__)
