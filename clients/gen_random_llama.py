#!/usr/bin/env python3
"""Generate a random-weight Hugging Face Llama model directory (tests and benchmarks).

Needs numpy only (no torch, no safetensors package): the safetensors files are written by hand,
tensor by tensor and chunk by chunk, so memory stays bounded (~64 MiB of scratch) even for the
1B preset, and the output loads with transformers / safetensors like any HF checkpoint.

Output directory:
  config.json                          LlamaForCausalLM config
  model.safetensors                    when --shard-mb 0 (default)
  model-0000i-of-0000n.safetensors     when --shard-mb N > 0, plus
  model.safetensors.index.json         {"metadata": {"total_size": bytes, "total_parameters": n},
                                        "weight_map": {tensor: file}} (keys sorted, indent 2),
                                       as transformers' save_pretrained writes it
  tokenizer.json, tokenizer_config.json (+ special_tokens_map.json) copied from --tokenizer-from

Sharding follows huggingface_hub's split_state_dict_into_shards: tensors in state-dict order
(embed, layers 0..L-1 [q,k,v,o,gate,up,down,input_layernorm,post_attention_layernorm], norm,
lm_head); a new shard starts when the next tensor would push the current one past the limit;
a tensor larger than the limit gets a shard of its own. --shard-mb is in MB = 10^6 bytes (as
HF's "5GB" strings), fractional values allowed (tiny test models).

Initialisation: linear/embedding weights ~ N(0, init_std^2) (default 0.02, the Llama
initializer_range), RMSNorm weights ~ 1 + N(0, norm_noise^2) (default 0.05). Every tensor gets
its own generator seeded with (seed, tensor index), so the values do not depend on sharding or
dtype. bf16 is f32 rounded to nearest even (uint16 view); f16 is numpy's IEEE conversion
(also round-to-nearest-even).

Examples:
  python3 clients/gen_random_llama.py --preset 1b --out /tmp/llama-1b --shard-mb 1000
  python3 clients/gen_random_llama.py --out tests/fixtures/models/tiny-gqa-bf16 --hidden 96 \\
      --layers 3 --heads 6 --kv-heads 2 --intermediate 160 --vocab 512 --max-pos 256 \\
      --rope-theta 500000 --rms-eps 1e-6 --dtype bf16 --no-tie --seed 1
"""
import argparse
import json
import os
import shutil
import struct
import sys
import time

import numpy as np

PRESETS = {
    # llama2.c stories110M shape (Llama-2 style, 32000 SentencePiece vocab)
    "110m": dict(hidden=768, layers=12, heads=12, kv_heads=12, intermediate=2048, vocab=32000,
                 max_pos=1024, rope_theta=10000.0, rms_eps=1e-5, dtype="f32", tie=True,
                 bos=1, eos=2),
    # Llama-3.2-1B shape (GQA 32/8, head_dim 64, 128256 vocab, tied embeddings), bf16, with
    # its published 131072 positions and llama3 rope_scaling (factor 32, low/high frequency
    # factors 1/4, original 8192); the engine sizes its context to the KV budget
    # (engine.max_context).
    "1b": dict(hidden=2048, layers=16, heads=32, kv_heads=8, intermediate=8192, vocab=128256,
               max_pos=131072, rope_theta=500000.0, rms_eps=1e-5, dtype="bf16", tie=True,
               bos=128000, eos=128001,
               rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    # Qwen2.5-0.5B's widths as a Llama (no q/k/v biases; GQA 14/2, head_dim 64, 151936 vocab,
    # tied), bf16: 896 wide, so llama-quantize's Q4_K_M / Q5_K_M fall back to Q5_0 / Q5_1 on
    # every tensor read 896 wide (bench/peers/race.sh RACE_MODELS=q05b)
    "q05b": dict(hidden=896, layers=24, heads=14, kv_heads=2, intermediate=4864, vocab=151936,
                 max_pos=4096, rope_theta=10000.0, rms_eps=1e-5, dtype="bf16", tie=True,
                 bos=1, eos=2),
}
DEFAULTS = dict(hidden=64, layers=2, heads=4, kv_heads=4, intermediate=172, vocab=512,
                max_pos=512, rope_theta=10000.0, rms_eps=1e-5, dtype="f32", tie=True,
                bos=1, eos=2, rope_scaling=None)

ST_DTYPE = {"f32": "F32", "f16": "F16", "bf16": "BF16"}
DSIZE = {"f32": 4, "f16": 2, "bf16": 2}
TORCH_DTYPE = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}
CHUNK = 1 << 22  # elements generated per step: 16 MiB of f32 scratch (x a few temporaries)


def f32_to_bf16(x):
    """Round float32 to bfloat16 (nearest, ties to even); returns the uint16 bit patterns."""
    u = x.view(np.uint32)
    # add 0x7FFF + lsb of the kept half, then truncate: round-to-nearest-even.
    # (inputs are finite normals here, so the NaN/Inf special case cannot arise)
    r = u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))
    return (r >> np.uint32(16)).astype(np.uint16)


def tensor_list(a):
    """(name, shape, kind) in HF Llama state-dict order. kind: 'w' random weight, 'n' norm."""
    hd = a.head_dim
    q_out, kv_out = a.heads * hd, a.kv_heads * hd
    t = [("model.embed_tokens.weight", (a.vocab, a.hidden), "w")]
    for i in range(a.layers):
        p = "model.layers.%d." % i
        t += [(p + "self_attn.q_proj.weight", (q_out, a.hidden), "w"),
              (p + "self_attn.k_proj.weight", (kv_out, a.hidden), "w"),
              (p + "self_attn.v_proj.weight", (kv_out, a.hidden), "w"),
              (p + "self_attn.o_proj.weight", (a.hidden, q_out), "w"),
              (p + "mlp.gate_proj.weight", (a.intermediate, a.hidden), "w"),
              (p + "mlp.up_proj.weight", (a.intermediate, a.hidden), "w"),
              (p + "mlp.down_proj.weight", (a.hidden, a.intermediate), "w"),
              (p + "input_layernorm.weight", (a.hidden,), "n"),
              (p + "post_attention_layernorm.weight", (a.hidden,), "n")]
    t.append(("model.norm.weight", (a.hidden,), "n"))
    if not a.tie:
        t.append(("lm_head.weight", (a.vocab, a.hidden), "w"))
    return t


def plan_shards(tensors, dsize, max_bytes):
    """huggingface_hub split_state_dict_into_shards: list of lists of tensor indices."""
    if max_bytes <= 0:
        return [list(range(len(tensors)))]
    shards, cur, cur_size = [], [], 0
    for idx, (_, shape, _) in enumerate(tensors):
        size = int(np.prod(shape)) * dsize
        if size > max_bytes:
            shards.append([idx])
            continue
        if cur and cur_size + size > max_bytes:
            shards.append(cur)
            cur, cur_size = [], 0
        cur.append(idx)
        cur_size += size
    if cur:
        shards.append(cur)
    return shards


def write_safetensors(path, items, a):
    """items: list of (tensor_index, name, shape, kind). Streams the data in chunks."""
    dsize = DSIZE[a.dtype]
    header = {"__metadata__": {"format": "pt"}}
    off = 0
    for _, name, shape, _ in items:
        n = int(np.prod(shape)) * dsize
        header[name] = {"dtype": ST_DTYPE[a.dtype], "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    hjson = json.dumps(header, separators=(",", ":")).encode()
    hjson += b" " * (-len(hjson) % 8)  # pad to 8 bytes with spaces, as the safetensors crate does
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for idx, _, shape, kind in items:
            rng = np.random.default_rng([a.seed, idx])
            left = int(np.prod(shape))
            while left:
                n = min(left, CHUNK)
                x = rng.standard_normal(n, dtype=np.float32)
                if kind == "n":
                    x *= np.float32(a.norm_noise)
                    x += np.float32(1.0)
                else:
                    x *= np.float32(a.init_std)
                if a.dtype == "bf16":
                    f.write(f32_to_bf16(x).astype("<u2").tobytes())
                elif a.dtype == "f16":
                    f.write(x.astype("<f2").tobytes())
                else:
                    f.write(x.astype("<f4").tobytes())
                left -= n
    return off


def config_json(a):
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": a.hidden,
        "intermediate_size": a.intermediate,
        "num_hidden_layers": a.layers,
        "num_attention_heads": a.heads,
        "num_key_value_heads": a.kv_heads,
        "head_dim": a.head_dim,
        "vocab_size": a.vocab,
        "max_position_embeddings": a.max_pos,
        "rms_norm_eps": a.rms_eps,
        "rope_theta": a.rope_theta,
        "rope_scaling": a.rope_scaling,
        "tie_word_embeddings": a.tie,
        "bos_token_id": a.bos,
        "eos_token_id": a.eos,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": a.init_std,
        "torch_dtype": TORCH_DTYPE[a.dtype],
    }


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", choices=sorted(PRESETS))
    ap.add_argument("--hidden", type=int)
    ap.add_argument("--layers", type=int)
    ap.add_argument("--heads", type=int)
    ap.add_argument("--kv-heads", type=int)
    ap.add_argument("--intermediate", type=int)
    ap.add_argument("--vocab", type=int)
    ap.add_argument("--head-dim", type=int, help="default hidden / heads")
    ap.add_argument("--max-pos", type=int)
    ap.add_argument("--rope-theta", type=float)
    ap.add_argument("--rms-eps", type=float)
    ap.add_argument("--dtype", choices=sorted(ST_DTYPE))
    ap.add_argument("--tie", dest="tie", action="store_true", default=None)
    ap.add_argument("--no-tie", dest="tie", action="store_false")
    ap.add_argument("--bos", type=int)
    ap.add_argument("--eos", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init-std", type=float, default=0.02, help="std of linear/embedding weights")
    ap.add_argument("--norm-noise", type=float, default=0.05, help="std of RMSNorm weights around 1")
    ap.add_argument("--shard-mb", type=float, default=0.0,
                    help="max shard size in MB (10^6 bytes); 0 = single model.safetensors")
    ap.add_argument("--tokenizer-from", help="directory to copy tokenizer.json + tokenizer_config.json from")
    a = ap.parse_args(argv)
    base = dict(DEFAULTS)
    if a.preset:
        base.update(PRESETS[a.preset])
    for k, v in base.items():
        if getattr(a, k, None) is None:
            setattr(a, k, v)
    if a.head_dim is None:
        if a.hidden % a.heads:
            ap.error("hidden must divide by heads (or give --head-dim)")
        a.head_dim = a.hidden // a.heads
    if a.heads % a.kv_heads:
        ap.error("heads must divide by kv-heads")
    if a.head_dim % 2:
        ap.error("head_dim must be even (RoPE)")
    return a


def main(argv=None):
    a = parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    for old in os.listdir(a.out):  # never leave stale shards from an earlier run
        if old.endswith(".safetensors") or old == "model.safetensors.index.json":
            os.remove(os.path.join(a.out, old))
    t0 = time.time()
    tensors = tensor_list(a)
    dsize = DSIZE[a.dtype]
    shards = plan_shards(tensors, dsize, int(a.shard_mb * 1e6))
    total = 0
    nparams = sum(int(np.prod(s)) for _, s, _ in tensors)
    if len(shards) == 1:
        items = [(i,) + tensors[i] for i in shards[0]]
        total = write_safetensors(os.path.join(a.out, "model.safetensors"), items, a)
    else:
        weight_map = {}
        n = len(shards)
        for si, idxs in enumerate(shards):
            fname = "model-%05d-of-%05d.safetensors" % (si + 1, n)
            items = [(i,) + tensors[i] for i in idxs]
            total += write_safetensors(os.path.join(a.out, fname), items, a)
            for i in idxs:
                weight_map[tensors[i][0]] = fname
        index = {"metadata": {"total_parameters": nparams, "total_size": total}, "weight_map": weight_map}
        with open(os.path.join(a.out, "model.safetensors.index.json"), "w") as f:
            f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(config_json(a), f, indent=2)
        f.write("\n")
    if a.tokenizer_from:
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            src = os.path.join(a.tokenizer_from, name)
            if os.path.exists(src):
                shutil.copyfile(src, os.path.join(a.out, name))
            elif name != "special_tokens_map.json":
                print("warning: %s not found" % src, file=sys.stderr)
    print("wrote %s: %d tensors, %d params, %.1f MB %s in %d file(s), %.1fs" %
          (a.out, len(tensors), nparams, total / 1e6, a.dtype, len(shards), time.time() - t0))


if __name__ == "__main__":
    main()
