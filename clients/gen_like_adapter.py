#!/usr/bin/env python3
"""Random adapters of any kind for any Llama base, shaped after a fixture adapter (benchmarks).

Needs numpy only.

  python3 clients/gen_like_adapter.py --like tests/fixtures/adapters/ia3 \
      --base bench/models/llama-110m-bf16 --out /tmp/ia3s --count 8 --seed 0 [--dtype bf16]

The fixture (a real save_pretrained / save_adapter output made for models/stories260K, the
"fixture base") gives the files, the config and the tensor names; each tensor is written again
for --base with random values and its dimensions mapped from the fixture base's to the target's:
hidden, the K/V width, the intermediate size, the vocabulary, a prefix table's 2·layers·kv
width, an AdapterHub bottleneck (hidden / reduction_factor); other sizes (ranks, virtual tokens,
1) stay, except a LoRA's ranks with --rank. Per-layer tensors are written for every layer of the target (the fixture's layer 0
gives the shape). Config fields that name dimensions (prompt/prefix tuning's token_dim,
num_layers, num_attention_heads) follow the target. Values: N(0, 0.02²), IA3 vectors 1 +
N(0, 0.05²) (a scale near 1 keeps activations in range). Writes <out>/<kind>-0000, ...
Only what serving costs is meant to be realistic (the shapes); the outputs are noise.
"""
import argparse
import json
import os
import re
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_random_lora import ITEM, ST_DTYPE, to_dtype, write_safetensors  # noqa: E402


def dims(cfg):
    h = cfg["hidden_size"]
    heads = cfg["num_attention_heads"]
    kvh = cfg.get("num_key_value_heads") or heads
    hd = cfg.get("head_dim") or h // heads
    return {"hidden": h, "kv": kvh * hd, "q": heads * hd, "inter": cfg["intermediate_size"],
            "vocab": cfg["vocab_size"], "layers": cfg["num_hidden_layers"], "heads": heads, "kvh": kvh}


def module_shape(d, mod):
    """(out, in) of a Llama projection on a base with dims d."""
    return {"q_proj": (d["q"], d["hidden"]), "k_proj": (d["kv"], d["hidden"]), "v_proj": (d["kv"], d["hidden"]),
            "o_proj": (d["hidden"], d["q"]), "gate_proj": (d["inter"], d["hidden"]),
            "up_proj": (d["inter"], d["hidden"]), "down_proj": (d["hidden"], d["inter"])}[mod]


def factorization(dim, factor=-1):
    """PEFT's lokr factorization (tuners/lokr/layer.py): m <= n, m * n = dim."""
    if factor > 0 and dim % factor == 0:
        m, n = factor, dim // factor
        return (m, n) if m <= n else (n, m)
    if factor == -1:
        factor = dim
    m, n = 1, dim
    while m < n:
        new_m = m + 1
        while dim % new_m:
            new_m += 1
        new_n = dim // new_m
        if new_m + new_n > m + n or new_m > factor:
            break
        m, n = new_m, new_n
    return (m, n) if m <= n else (n, m)


def semantic_parts(cfg, mod, d):
    """Tensor suffixes and shapes of one module for kinds whose shapes follow the module's own
    factorisation (LoKr, OFT, BOFT) rather than the base's dimensions; None for the others."""
    t = cfg.get("peft_type")
    out, inp = module_shape(d, mod)
    if t == "LOKR":
        r, f = cfg.get("r", 8), cfg.get("decompose_factor", -1)
        (ol, ok), (im, in_) = factorization(out, f), factorization(inp, f)
        use_w1 = not (cfg.get("decompose_both") and r < max(ol, im) / 2)
        use_w2 = not (r < max(ok, in_) / 2)
        parts = [("lokr_w1", [ol, im])] if use_w1 else [("lokr_w1_a", [ol, r]), ("lokr_w1_b", [r, im])]
        parts += [("lokr_w2", [ok, in_])] if use_w2 else [("lokr_w2_a", [ok, r]), ("lokr_w2_b", [r, in_])]
        return parts
    if t == "ADALORA":
        r = cfg.get("init_r", 12)
        return [("lora_A", [r, inp]), ("lora_E", [r, 1]), ("lora_B", [out, r])]
    if t == "OFT":
        bs = cfg.get("oft_block_size") or inp // cfg["r"]
        n = 1 if cfg.get("block_share") else inp // bs
        return [("oft_R.weight", [n, bs * (bs - 1) // 2])]
    if t == "BOFT":
        bs = cfg.get("boft_block_size") or inp // cfg["boft_block_num"]
        return [("boft_R", [cfg.get("boft_n_butterfly_factor", 1), inp // bs, bs, bs]), ("boft_s", [out, 1])]
    return None


def read_st(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
    hdr.pop("__metadata__", None)
    return hdr


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--like", required=True)
    ap.add_argument("--base", required=True)
    ap.add_argument("--fixture-base", default="models/stories260K")
    ap.add_argument("--out", required=True)
    ap.add_argument("--count", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=sorted(ST_DTYPE), default="bf16")
    ap.add_argument("--rank", type=int, default=0,
                    help="a PEFT LoRA's ranks (r and rank_pattern's) become this (0: the fixture's)")
    a = ap.parse_args()
    src, dst = dims(json.load(open(os.path.join(a.fixture_base, "config.json")))), \
        dims(json.load(open(os.path.join(a.base, "config.json"))))
    cfg = json.load(open(os.path.join(a.like, "adapter_config.json")))
    hub = "config" in cfg and "peft_type" not in cfg
    st_name = [f for f in os.listdir(a.like) if f.endswith(".safetensors")][0]
    hdr = read_st(os.path.join(a.like, st_name))
    kind = os.path.basename(os.path.normpath(a.like))
    prefix = cfg.get("peft_type") == "PREFIX_TUNING"

    # value -> target value (the fixture base's distinct sizes; hidden == q on both here)
    m = {src["hidden"]: dst["hidden"], src["kv"]: dst["kv"], src["inter"]: dst["inter"],
         src["vocab"]: dst["vocab"], 2 * src["layers"] * src["kv"]: 2 * dst["layers"] * dst["kv"]}
    keep = {1}
    if hub:  # bottleneck widths hidden / reduction_factor; a prefix MLP's width stays
        hub_cfgs = cfg["config"].get("configs") or [cfg["config"]]
        for hc in hub_cfgs:
            rf = hc.get("reduction_factor")
            for r in ([rf] if rf and not isinstance(rf, dict) else (rf or {}).values()):
                m[int(src["hidden"] // r)] = int(dst["hidden"] // r)
                if hc.get("phm_layer"):  # Compacter: PHM factors of hidden / phm_dim and bottleneck / phm_dim
                    p = hc.get("phm_dim", 4)
                    m[src["hidden"] // p] = dst["hidden"] // p
                    m[int(src["hidden"] // r) // p] = int(dst["hidden"] // r) // p
            if hc.get("architecture") == "prefix_tuning":
                keep.add(hc.get("bottleneck_size"))
                if hc.get("flat"):  # control_trans [prefix_length * 2 * layers * kv]
                    pl = hc["prefix_length"]
                    m[pl * 2 * src["layers"] * src["kv"]] = pl * 2 * dst["layers"] * dst["kv"]
    if a.rank and cfg.get("peft_type") == "LORA":
        for r in [cfg.get("r", 8)] + list((cfg.get("rank_pattern") or {}).values()):
            m[r] = a.rank
        cfg["r"], cfg["lora_alpha"] = a.rank, 2 * a.rank
        cfg["rank_pattern"], cfg["alpha_pattern"] = {}, {}

    def shape_of(shape):
        return [m.get(d, d) if d not in keep else d for d in shape]

    # per-layer tensors: the fixture's layer 0 stands for every target layer
    names = []
    if semantic_parts(cfg, "q_proj", dst) is not None:  # shapes from each module's factorisation
        mods = sorted({re.search(r"layers\.0\.(self_attn|mlp)\.(\w+_proj)\.", k).group(2)
                       for k in hdr if "layers.0." in k})
        for layer in range(dst["layers"]):
            for mod in mods:
                path = "base_model.model.model.layers.%d.%s.%s" % (layer, "mlp" if mod in ("gate_proj", "up_proj",
                                                                                         "down_proj") else "self_attn", mod)
                for suffix, shape in semantic_parts(cfg, mod, dst):
                    names.append(("%s.%s" % (path, suffix), {"shape": shape, "dtype": "F32", "semantic": True}))
        hdr = {}
        cfg.pop("rank_pattern", None)  # AdaLoRA's pruning masks name the fixture's layers: every module keeps init_r
    for k, t in hdr.items():
        lm = re.search(r"layers\.(\d+)\.", k)
        if lm is None:
            names.append((k, t))
        elif lm.group(1) == "0":
            for layer in range(dst["layers"]):
                names.append((k.replace("layers.0.", "layers.%d." % layer, 1), t))
    if hub:
        cfg["hidden_size"], cfg["model_name"] = dst["hidden"], a.base
    else:
        for f in ("token_dim", "encoder_hidden_size"):
            if f in cfg:
                cfg[f] = dst["kv"] if prefix else dst["hidden"]
        if "num_layers" in cfg:
            cfg["num_layers"] = dst["layers"]
        if "num_attention_heads" in cfg:
            cfg["num_attention_heads"] = dst["kvh"] if prefix else dst["heads"]
        cfg["base_model_name_or_path"] = a.base
    dt = ST_DTYPE[a.dtype]
    os.makedirs(a.out, exist_ok=True)
    for i in range(a.count):
        rng = np.random.default_rng([a.seed, i])
        d = os.path.join(a.out, "%s-%04d" % (kind, i))
        os.makedirs(d, exist_ok=True)
        tensors = []
        for k, t in names:
            shape = t["shape"] if t.get("semantic") else shape_of(t["shape"])
            v = rng.standard_normal(int(np.prod(shape)), dtype=np.float32) * np.float32(0.02)
            if k.endswith("ia3_l") or k.endswith("boft_s"):
                v = np.float32(1.0) + v * np.float32(2.5)
            tdt = dt if t["dtype"] != "F32" or a.dtype != "f32" else "F32"
            tensors.append((k, tdt, shape, to_dtype(v.reshape(shape), tdt)))
        write_safetensors(os.path.join(d, st_name), tensors)
        with open(os.path.join(d, "adapter_config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
    print("gen_like_adapter: %d %s adapters for %s in %s" % (a.count, kind, a.base, a.out), file=sys.stderr)


if __name__ == "__main__":
    main()
