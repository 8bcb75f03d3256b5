#!/usr/bin/env python3
"""tests/gpu/hf_baseline.py — Hugging Face transformers + peft on the same GPU, same model,
adapters and batch as peftd's bench (issue 6 line 5): a mixed-adapter batch through
PEFT's `adapter_names` (one adapter per row), greedy decode, decode tokens/s; with
--peftd-json (bench_adapters --backend cuda output) prints peftd c tok/s / HF tok/s.

Decode rate: (tokens - 1) * batch / (time of generate(max_new_tokens=tokens) - time of
generate(max_new_tokens=1)), so the prefill is excluded as in bench_adapters.
Needs torch (CUDA), transformers, peft and safetensors; every missing piece is reported
with a clear message and exit status 3."""
import argparse
import json
import os
import sys
import time


def die(msg, code=3):
    print(f"hf_baseline: {msg}", file=sys.stderr)
    print(f"hf baseline: not run ({msg})")
    sys.exit(code)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapters", required=True, help="directory of PEFT adapter directories")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--prompt", type=int, default=8)
    ap.add_argument("--peftd-json")
    ap.add_argument("--out")
    a = ap.parse_args()
    try:
        import torch
        import transformers
        import peft
        from peft import PeftModel
    except Exception as e:  # noqa: BLE001
        die(f"missing python package: {e}")
    if not torch.cuda.is_available():
        die("torch sees no CUDA device")
    names = sorted(d for d in os.listdir(a.adapters) if os.path.isfile(os.path.join(a.adapters, d, "adapter_config.json")))
    if len(names) < a.batch:
        die(f"{a.adapters}: {len(names)} adapters, need {a.batch}")
    names = names[: a.batch]
    dev = "cuda"
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
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n_new, min_new_tokens=n_new,
                           do_sample=False, adapter_names=names, pad_token_id=0)
        torch.cuda.synchronize()
        return time.perf_counter() - t

    gen(2)  # warm-up (kernels, allocator)
    t1 = min(gen(1) for _ in range(2))
    tn = gen(a.tokens)
    dec = max(tn - t1, 1e-9)
    tok_s = (a.tokens - 1) * a.batch / dec
    out = {"hf_decode_tok_s": tok_s, "batch": a.batch, "tokens": a.tokens, "torch": torch.__version__,
           "transformers": transformers.__version__, "peft": peft.__version__,
           "gpu": torch.cuda.get_device_name(0)}
    line = f"HF transformers+peft mixed batch {a.batch}: {tok_s:.1f} decode tok/s"
    if a.peftd_json and os.path.exists(a.peftd_json):
        with open(a.peftd_json) as f:
            p = json.load(f)["shapes"][0]["c"]["tok_s"]
        out["peftd_c_tok_s"] = p
        out["ratio"] = p / tok_s
        line += f"; peftd {p:.1f} tok/s; ratio {p / tok_s:.1f}x (target >= 20x: {'MET' if p / tok_s >= 20 else 'missed'})"
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)
    print(line)


if __name__ == "__main__":
    main()
