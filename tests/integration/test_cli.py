"""tests/integration/test_cli.py — the command line: `peftd generate` output and exit codes,
`peftd serve` start-up failures (bad config, missing model, busy port) with clear messages."""

import json
import os
import socket
import subprocess
import tempfile

import harness
from harness import test


def run(*args, timeout=120):
    return subprocess.run([harness.BIN, *args], cwd=harness.ROOT, capture_output=True,
                          timeout=timeout * harness.SLOW)


@test
def generate_seeded_sampling_is_reproducible():
    args = ("generate", "--model", harness.MODEL_DIR, "--prompt", "The dog", "--max-tokens", "40",
            "--temperature", "0.8", "--seed", "7")
    a, b = run(*args), run(*args)
    assert a.returncode == 0 and b.returncode == 0, a.stderr
    assert a.stdout == b.stdout and len(a.stdout) > 20, (a.stdout, b.stdout)


@test
def generate_rejects_bad_arguments():
    cases = [
        (("generate", "--model", harness.MODEL_DIR), "--prompt"),
        (("generate", "--model", harness.MODEL_DIR, "--prompt", "x", "--max-tokens", "-3"), "--max-tokens"),
        (("generate", "--model", harness.MODEL_DIR, "--prompt", "x", "--max-tokens", "600"), "context length"),
        (("generate", "--model", harness.MODEL_DIR, "--prompt", "x", "--temperature", "hot"), "--temperature"),
        (("generate", "--model", "/nonexistent", "--prompt", "x"), "/nonexistent"),
        (("generate", "--model", harness.MODEL_DIR, "--prompt", "x", "--bogus", "1"), "--bogus"),
        (("frobnicate",), "unknown command"),
    ]
    for args, needle in cases:
        r = run(*args)
        err = r.stderr.decode(errors="replace")
        assert r.returncode != 0, args
        assert needle in err, "%s: %r" % (args, err)
        assert r.stdout == b"", args


@test
def generate_rejects_invalid_utf8_prompt():
    r = run("generate", "--model", harness.MODEL_DIR, "--prompt", os.fsdecode(b"bad \xff byte"))
    assert r.returncode != 0 and b"UTF-8" in r.stderr, r.stderr


@test
def serve_fails_cleanly_on_bad_config():
    with tempfile.TemporaryDirectory() as d:
        cases = [
            ('{"port": "eighty"}', "port"),
            ('{"engine": {"max_seqs": 0}}', "max_seqs"),
            ('{"enigne": {}}', "enigne"),
            ('not json', "JSON"),
        ]
        for text, needle in cases:
            p = os.path.join(d, "c.json")
            with open(p, "w") as f:
                f.write(text)
            r = run("serve", "--config", p, timeout=30)
            assert r.returncode != 0 and needle in r.stderr.decode(), (text, r.stderr)
        r = run("serve", "--model", os.path.join(d, "nothing-here"), "--port", "0", "--store",
                os.path.join(d, "store"), timeout=30)
        assert r.returncode != 0 and b"nothing-here" in r.stderr, r.stderr


@test
def serve_fails_cleanly_when_the_port_is_taken():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        with tempfile.TemporaryDirectory() as d:
            r = run("serve", "--model", harness.MODEL_DIR, "--port", str(port), "--store", d, timeout=30)
        assert r.returncode != 0 and str(port).encode() in r.stderr, r.stderr


if __name__ == "__main__":
    harness.run_tests(__file__)
