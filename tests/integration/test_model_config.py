"""tests/integration/test_model_config.py — the daemon's start-up with config.json content it does
not serve: `peftd serve` refuses each unsupported family (MoE, Granite, OLMo, Cohere, multimodal,
quantized) with one line naming the architecture or field and a non-zero exit; a field it does not
read is named on one start-up line and the daemon still serves."""

import json
import os
import shutil
import subprocess
import tempfile
import time

import harness
from harness import test


def model_dir(tmp, **changes):
    """A copy of the test model (weights linked) whose config.json gets `changes`
    (a value of None deletes the key)."""
    d = os.path.join(tmp, "model")
    os.makedirs(d, exist_ok=True)
    for name in os.listdir(harness.MODEL_DIR):
        src, dst = os.path.join(harness.MODEL_DIR, name), os.path.join(d, name)
        if name != "config.json" and not os.path.exists(dst):
            os.symlink(src, dst)
    with open(os.path.join(harness.MODEL_DIR, "config.json")) as f:
        cfg = json.load(f)
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    return d


REFUSALS = [
    ("MoE", {"architectures": ["MixtralForCausalLM"], "num_local_experts": 8}, "MixtralForCausalLM"),
    ("MoE field", {"num_experts": 64}, "num_experts"),
    ("Granite", {"architectures": ["GraniteForCausalLM"]}, "GraniteForCausalLM"),
    ("Granite multiplier", {"residual_multiplier": 0.22}, "residual_multiplier"),
    ("OLMo", {"architectures": ["Olmo2ForCausalLM"]}, "Olmo2ForCausalLM"),
    ("Cohere", {"architectures": ["CohereForCausalLM"]}, "CohereForCausalLM"),
    ("multimodal", {"architectures": ["LlavaForConditionalGeneration"]}, "LlavaForConditionalGeneration"),
    ("vision tower", {"vision_config": {"hidden_size": 32}}, "vision_config"),
    ("quantized", {"quantization_config": {"quant_method": "gptq", "bits": 4}}, "quantization_config"),
]


@test
def serve_refuses_unsupported_families_with_one_line():
    for family, changes, needle in REFUSALS:
        with tempfile.TemporaryDirectory() as tmp:
            d = model_dir(tmp, **changes)
            r = subprocess.run([harness.BIN, "serve", "--model", d, "--port", "0", "--store",
                                os.path.join(tmp, "store")], cwd=harness.ROOT, capture_output=True,
                               timeout=60 * harness.SLOW)
        err = r.stderr.decode(errors="replace")
        lines = [l for l in err.splitlines() if needle in l]
        assert r.returncode != 0, (family, r.returncode, err)
        assert len(lines) == 1 and "not supported" in lines[0], (family, err)


@test
def serve_names_each_ignored_field_at_startup():
    with tempfile.TemporaryDirectory() as tmp:
        d = model_dir(tmp, frobnicate_scale=2.0, temperature=0.7, attention_dropout=0.1)
        log = open(os.path.join(tmp, "log"), "w+")
        p = subprocess.Popen([harness.BIN, "serve", "--model", d, "--host", "127.0.0.1", "--port",
                              str(harness.free_port()), "--store", os.path.join(tmp, "store")],
                             cwd=harness.ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 60 * harness.SLOW
            text = ""
            while time.time() < deadline and p.poll() is None and "listening" not in text.lower():
                time.sleep(0.1)
                log.seek(0)
                text = log.read()
            assert p.poll() is None, text  # still serving
        finally:
            p.terminate()
            p.wait(timeout=60 * harness.SLOW)
            log.seek(0)
            text = log.read()
            log.close()
    ignored = [l for l in text.splitlines() if "ignored field" in l]
    assert len(ignored) == 2, text
    assert '"frobnicate_scale"' in ignored[0] and '"temperature"' in ignored[1], ignored
    assert "attention_dropout" not in text, text  # cannot change the outputs: not named


@test
def the_test_model_has_no_ignored_field():
    r = subprocess.run([harness.BIN, "generate", "--model", harness.MODEL_DIR, "--prompt", "Once",
                        "--max-tokens", "2"], cwd=harness.ROOT, capture_output=True, timeout=120 * harness.SLOW)
    assert r.returncode == 0, r.stderr
    assert b"ignored field" not in r.stderr, r.stderr


if __name__ == "__main__":
    harness.run_tests(__file__)
