"""tests/integration/test_gguf.py — serving a GGUF base over HTTP and from the command line:
`peftd serve --model FILE.gguf` (and a directory holding one .gguf + tokenizer.json; without
one, the tokenizer from the file's metadata) with a PEFT
adapter uploaded over HTTP, and `peftd generate --model FILE.gguf`. The fixture is the default
model converted by llama.cpp's convert_hf_to_gguf.py to f32 (tests/fixtures/
make_gguf_model_fixtures.py): the same weights as models/stories260K, whose adapter outputs are
checked against peft elsewhere (tests/unit/test_adapter_forward.c), so greedy text must equal the
HF directory's, token for token (its Q/K rows come back un-permuted at load)."""

import os
import shutil
import subprocess
import tempfile

import harness
from harness import test

GGUF_DIR = os.path.join(harness.ROOT, "tests", "fixtures", "gguf_models", "stories260K")
GGUF = os.path.join(GGUF_DIR, "stories260K-f32.gguf")
ADAPTER = os.path.join(harness.ROOT, "tests", "fixtures", "adapters", "lora_dora")
PROMPT = "Once upon a time"


def cli(model, adapter=None, max_tokens=24):
    args = [harness.BIN, "generate", "--model", model, "--prompt", PROMPT, "--max-tokens", str(max_tokens),
            "--temperature", "0"]
    if adapter:
        args += ["--adapter", adapter]
    r = subprocess.run(args, cwd=harness.ROOT, capture_output=True, timeout=120 * harness.SLOW,
                       env=dict(os.environ, PEFTD_LOG="info"))
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return r.stdout.decode(), r.stderr.decode(errors="replace")


@test
def generate_from_gguf_equals_hf_directory():
    for adapter in (None, ADAPTER):
        hf, _ = cli(harness.MODEL_DIR, adapter)
        gg, log = cli(GGUF, adapter)
        assert gg == hf and len(gg) > 20, (adapter, gg, hf)
        assert "un-permuted" in log, log  # llama: Q/K rows restored to the HF layout
    assert cli(GGUF)[0] != cli(GGUF, ADAPTER)[0]  # the adapter matters


@test
def serve_gguf_with_an_adapter_over_http():
    d = harness.Daemon(extra_args=["--model", GGUF])
    try:
        st, _, body = d.request("GET", "/v1/models")
        assert st == 200 and b'"stories260K-f32"' in body, body
        st, meta = d.upload("duck", ADAPTER)
        assert st in (200, 201), (st, meta)
        out = d.complete(model="duck", prompt=PROMPT, max_tokens=24, temperature=0)["choices"][0]["text"]
        base = d.complete(model="stories260K-f32", prompt=PROMPT, max_tokens=24, temperature=0)["choices"][0]["text"]
        assert out == cli(harness.MODEL_DIR, ADAPTER)[0], (out, d.log_text())
        assert base == cli(harness.MODEL_DIR)[0], base
        assert out != base
    finally:
        d.close()


@test
def serve_a_directory_holding_one_gguf():
    with tempfile.TemporaryDirectory() as tmp:
        for f in os.listdir(GGUF_DIR):
            os.symlink(os.path.join(GGUF_DIR, f), os.path.join(tmp, f))
        d = harness.Daemon(extra_args=["--model", tmp])
        try:
            text = d.complete(model="stories260K-f32", prompt=PROMPT, max_tokens=24, temperature=0)["choices"][0]["text"]
            assert text == cli(harness.MODEL_DIR)[0], text
        finally:
            d.close()


@test
def gguf_without_tokenizer_json_uses_its_metadata():
    """No tokenizer.json beside the file: the tokenizer comes from the GGUF's tokenizer.ggml.*
    metadata (SentencePiece, legacy spacing as llama.cpp); on this prompt its ids are the HF
    tokenizer's, so the text equals the HF directory's, with and without an adapter."""
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(GGUF, tmp)
        path = os.path.join(tmp, "stories260K-f32.gguf")
        for adapter in (None, ADAPTER):
            gg, log = cli(path, adapter)
            assert gg == cli(harness.MODEL_DIR, adapter)[0] and len(gg) > 20, (adapter, gg, log)
        d = harness.Daemon(extra_args=["--model", path])
        try:
            st, obj = d.post("/tokenize", {"model": "stories260K-f32", "prompt": PROMPT})
            assert st == 200 and obj["tokens"][0] == 1, obj  # add_bos_token from the metadata
            text = d.complete(model="stories260K-f32", prompt=PROMPT, max_tokens=24, temperature=0)["choices"][0]["text"]
            assert text == cli(harness.MODEL_DIR)[0], text
        finally:
            d.close()


if __name__ == "__main__":
    harness.run_tests(__file__)
