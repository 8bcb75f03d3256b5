#!/usr/bin/env python3
"""tests/gpu/hf_baseline.py — Hugging Face transformers + peft on the same GPU, same model,
adapters and batch as peftd's bench (issue 13 acceptance 4): a mixed-adapter batch through
PEFT's `adapter_names` (one adapter per row), greedy decode, decode tokens/s; with
--peftd-json (bench_adapters output) prints peftd c tok/s (of the shape whose adapters_dir is
--adapters) / HF tok/s. --device cpu: the GPU script's CPU dry run (GPU_DRYRUN=1).
With --out, a run that cannot happen still writes {"ran": false, "reason": ...} there.

Decode rate: (tokens - 1) * batch / (time of generate(max_new_tokens=tokens) - time of
generate(max_new_tokens=1)), so the prefill is excluded as in bench_adapters.
Needs torch (CUDA), transformers, peft and safetensors; every missing piece is reported
with a clear message and exit status 3."""
import argparse
import json
import os
import sys
import time


OUT = None


def die(msg, code=3):
    print(f"hf_baseline: {msg}", file=sys.stderr)
    print(f"hf baseline: not run ({msg})")
    if OUT:
        with open(OUT, "w") as f:
            json.dump({"ran": False, "reason": msg}, f)
    sys.exit(code)


def peftd_tok_s(path, adapters):
    """c tok/s of the bench shape that used the adapters directory `adapters`."""
    with open(path) as f:
        shapes = json.load(f)["shapes"]
    for s in shapes:
        if os.path.realpath(s["adapters_dir"]) == os.path.realpath(adapters):
            return s["c"]["tok_s"]
    raise SystemExit(f"hf_baseline: no shape of {path} used {adapters}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapters", required=True, help="directory of PEFT adapter directories")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--prompt", type=int, default=8)
    ap.add_argument("--peftd-json")
    ap.add_argument("--out")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    a = ap.parse_args()
    global OUT
    OUT = a.out
    try:
        import torch
        import transformers
        import peft
        from peft import PeftModel
    except Exception as e:  # noqa: BLE001
        die(f"missing python package: {e}")
    if a.device == "cuda" and not torch.cuda.is_available():
        die("torch sees no CUDA device")
    names = sorted(d for d in os.listdir(a.adapters) if os.path.isfile(os.path.join(a.adapters, d, "adapter_config.json")))
    if len(names) < a.batch:
        die(f"{a.adapters}: {len(names)} adapters, need {a.batch}")
    names = names[: a.batch]
    dev = a.device
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    base = transformers.AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=torch.bfloat16).to(dev)
    model = PeftModel.from_pretrained(base, os.path.join(a.adapters, names[0]), adapter_name=names[0])
    for n in names[1:]:
        model.load_adapter(os.path.join(a.adapters, n), adapter_name=n)
    model.eval()
    vocab = base.config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, min(vocab, 32000), (a.batch, a.prompt), generator=g).to(dev)
    mask = torch.ones_like(ids)

    def gen(n_new):
        sync()
        t = time.perf_counter()
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n_new, min_new_tokens=n_new,
                           do_sample=False, adapter_names=names, pad_token_id=0)
        sync()
        return time.perf_counter() - t

    gen(2)  # warm-up (kernels, allocator)
    t1 = min(gen(1) for _ in range(2))
    tn = gen(a.tokens)
    dec = max(tn - t1, 1e-9)
    tok_s = (a.tokens - 1) * a.batch / dec
    out = {"ran": True, "hf_decode_tok_s": tok_s, "batch": a.batch, "tokens": a.tokens, "torch": torch.__version__,
           "transformers": transformers.__version__, "peft": peft.__version__, "device": dev,
           "gpu": torch.cuda.get_device_name(0) if dev == "cuda" else None}
    line = f"HF transformers+peft mixed batch {a.batch}: {tok_s:.1f} decode tok/s"
    if a.peftd_json and os.path.exists(a.peftd_json):
        p = peftd_tok_s(a.peftd_json, a.adapters)
        out["peftd_c_tok_s"] = p
        out["ratio"] = p / tok_s
        line += f"; peftd {p:.1f} tok/s; ratio {p / tok_s:.1f}x (target >= 20x: {'MET' if p / tok_s >= 20 else 'missed'})"
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)
    print(line)


if __name__ == "__main__":
    main()
