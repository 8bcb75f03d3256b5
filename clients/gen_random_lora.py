#!/usr/bin/env python3
"""Generate N random PEFT LoRA adapters for a Hugging Face Llama base (benchmarks, load tests).

Needs numpy only (no torch, no peft, no safetensors package: the files are written by hand).

  python3 clients/gen_random_lora.py --base models/stories260K --out /tmp/loras --count 1000 \
      --rank 8 --alpha 16 --targets q_proj,v_proj --dtype bf16 --seed 0 [--dora]

writes <out>/lora-0000, <out>/lora-0001, ... each with exactly what PEFT 0.21's
save_pretrained writes for a LoRA on a LlamaForCausalLM (README.md aside):
  adapter_config.json        peft_type LORA, task_type CAUSAL_LM, base_model_name_or_path, r,
                             lora_alpha, target_modules (list; "all-linear" is written resolved
                             to the 7 Llama projections, as PEFT does), lora_dropout 0, bias "none",
                             fan_in_fan_out false, use_rslora false, use_dora, ...
  adapter_model.safetensors  base_model.model.model.layers.{i}.self_attn.{q,k,v,o}_proj.lora_A.weight
                             [r, in], ...lora_B.weight [out, r]; mlp.{gate,up,down}_proj likewise;
                             with --dora also ...lora_magnitude_vector [out].
Shapes come from <base>/config.json: q [H*hd, hidden], k/v [KVH*hd, hidden], o [hidden, H*hd],
gate/up [intermediate, hidden], down [hidden, intermediate] (hd = head_dim or hidden/H).

Values (float32 generated, then stored as --dtype): A ~ U(-1/sqrt(in), 1/sqrt(in)) (what
kaiming_uniform_(a=sqrt(5)) gives, PEFT's A init), B ~ N(0, 0.02^2) (PEFT inits B to zero, which
would make the adapter a no-op; benchmarks want real work and visible output changes).
--dora: magnitude = ||W + scale*B*A||_row * (1 + N(0, 0.05^2)): PEFT initialises m to the row
norm of the merged weight (so DoRA starts equal to LoRA); the noise makes the per-output
factor m/||.|| differ from 1. Needs the base weights (model.safetensors or a sharded index);
the row norm is computed as ||w_i||^2 + 2s b_i.(A w_i) + s^2 ||B_i A||^2 so each adapter costs
one [out,in]x[in,r] product per module instead of forming W + sBA.
Each adapter uses its own generator seeded with (seed, adapter index): adapter k is the same
whatever --count is. bf16 = float32 rounded to nearest even; f16 = numpy's IEEE conversion.
"""
import argparse
import json
import os
import struct
import sys
import time

import numpy as np

ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP = ["gate_proj", "up_proj", "down_proj"]
ALL = ATTN + MLP
ST_DTYPE = {"f32": "F32", "bf16": "BF16", "f16": "F16"}
ITEM = {"F32": 4, "BF16": 2, "F16": 2}


def base_shapes(cfg):
    hidden = cfg["hidden_size"]
    heads = cfg["num_attention_heads"]
    kvh = cfg.get("num_key_value_heads") or heads
    hd = cfg.get("head_dim") or hidden // heads
    inter = cfg["intermediate_size"]
    return {  # module -> (out, in)
        "q_proj": (heads * hd, hidden), "k_proj": (kvh * hd, hidden), "v_proj": (kvh * hd, hidden),
        "o_proj": (hidden, heads * hd), "gate_proj": (inter, hidden), "up_proj": (inter, hidden),
        "down_proj": (hidden, inter),
    }


def module_path(layer, mod):
    return "model.layers.%d.%s.%s" % (layer, "self_attn" if mod in ATTN else "mlp", mod)


def to_dtype(a, dt):
    a = np.ascontiguousarray(a, dtype=np.float32)
    if dt == "F32":
        return a
    if dt == "F16":
        return a.astype("<f2")
    u = a.view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16  # round to nearest even (no NaNs generated here)
    return u.astype("<u2")


def write_safetensors(path, tensors):
    """tensors: list of (name, dtype, shape, np.ndarray already in dtype). Keys sorted, data in
    the same order, 8-byte aligned header (padded with spaces), as the safetensors library does."""
    tensors = sorted(tensors, key=lambda t: t[0])
    hdr, off = {}, 0
    for name, dt, shape, arr in tensors:
        n = arr.nbytes
        assert n == int(np.prod(shape)) * ITEM[dt]
        hdr[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    hdr["__metadata__"] = {"format": "pt"}
    h = json.dumps(hdr, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for _, _, _, arr in tensors:
            f.write(arr.tobytes())
    os.replace(tmp, path)


class BaseWeights:
    """Memory-mapped reader for the base's projection weights (only needed for --dora)."""

    def __init__(self, base):
        self.files = {}
        idx = os.path.join(base, "model.safetensors.index.json")
        if os.path.exists(idx):
            wm = json.load(open(idx))["weight_map"]
            self.where = {k: os.path.join(base, v) for k, v in wm.items()}
        else:
            single = os.path.join(base, "model.safetensors")
            if not os.path.exists(single):
                raise SystemExit("--dora needs the base weights: no model.safetensors(.index.json) in %s" % base)
            self.where = None
            self.single = single

    def _open(self, path):
        if path not in self.files:
            with open(path, "rb") as f:
                n = struct.unpack("<Q", f.read(8))[0]
                hdr = json.loads(f.read(n))
            self.files[path] = (hdr, 8 + n, np.memmap(path, dtype=np.uint8, mode="r"))
        return self.files[path]

    def get(self, name):
        path = self.where[name] if self.where is not None else self.single
        hdr, base, mm = self._open(path)
        t = hdr[name]
        a, b = t["data_offsets"]
        raw = mm[base + a:base + b]
        if t["dtype"] == "F32":
            arr = raw.view("<f4")
        elif t["dtype"] == "F16":
            arr = raw.view("<f2").astype(np.float32)
        elif t["dtype"] == "BF16":
            arr = (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            raise SystemExit("unsupported base dtype %s for %s" % (t["dtype"], name))
        return arr.reshape(t["shape"]).astype(np.float32, copy=False)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="HF base model directory (config.json)")
    ap.add_argument("--base-name", help="base_model_name_or_path to record (default: --base as given)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16)
    ap.add_argument("--targets", default="q_proj,v_proj", help="comma list of Llama projections or all-linear")
    ap.add_argument("--dtype", choices=sorted(ST_DTYPE), default="f32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dora", action="store_true")
    ap.add_argument("--start", type=int, default=0, help="first adapter index (lora-<start>...)")
    args = ap.parse_args()

    cfg = json.load(open(os.path.join(args.base, "config.json")))
    shapes = base_shapes(cfg)
    L = cfg["num_hidden_layers"]
    if args.targets.strip() == "all-linear":
        targets = sorted(ALL)
    else:
        targets = [t.strip() for t in args.targets.split(",") if t.strip()]
        bad = [t for t in targets if t not in ALL]
        if bad or not targets:
            raise SystemExit("unknown target module(s) %s; use %s or all-linear" % (bad, ",".join(ALL)))
    if args.rank < 1 or args.count < 0:
        raise SystemExit("--rank must be >= 1 and --count >= 0")
    r, dt = args.rank, ST_DTYPE[args.dtype]
    scale = args.alpha / r
    alpha = int(args.alpha) if float(args.alpha).is_integer() else args.alpha

    conf = {
        "alpha_pattern": {}, "base_model_name_or_path": args.base_name or args.base, "bias": "none",
        "exclude_modules": None, "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
        "layers_pattern": None, "layers_to_transform": None, "lora_alpha": alpha, "lora_bias": False,
        "lora_dropout": 0.0, "modules_to_save": None, "peft_type": "LORA", "r": r, "rank_pattern": {},
        "revision": None, "target_modules": targets, "task_type": "CAUSAL_LM", "use_dora": bool(args.dora),
        "use_rslora": False,
    }
    conf_text = json.dumps(conf, indent=2, sort_keys=True) + "\n"

    wnorm2 = {}
    bw = BaseWeights(args.base) if args.dora else None
    if bw:
        for l in range(L):
            for m in targets:
                W = bw.get(module_path(l, m) + ".weight")
                assert W.shape == shapes[m], (m, W.shape, shapes[m])
                wnorm2[(l, m)] = np.einsum("ij,ij->i", W, W, dtype=np.float64)

    os.makedirs(args.out, exist_ok=True)
    t0, nbytes = time.time(), 0
    for k in range(args.start, args.start + args.count):
        rng = np.random.Generator(np.random.PCG64([args.seed, k]))
        tensors = []
        for l in range(L):
            for m in targets:
                out_f, in_f = shapes[m]
                bound = 1.0 / np.sqrt(in_f)
                A = (rng.random((r, in_f), dtype=np.float32) * 2 - 1) * np.float32(bound)
                B = rng.standard_normal((out_f, r), dtype=np.float32) * np.float32(0.02)
                A, B = to_dtype(A, dt), to_dtype(B, dt)
                p = "base_model.model." + module_path(l, m)
                tensors.append((p + ".lora_A.weight", dt, (r, in_f), A))
                tensors.append((p + ".lora_B.weight", dt, (out_f, r), B))
                if bw:
                    # norms from the values as stored (bf16/f16 rounded), like PEFT after loading
                    Af = A if dt == "F32" else _to_f32(A, dt)
                    Bf = B if dt == "F32" else _to_f32(B, dt)
                    W = bw.get(module_path(l, m) + ".weight")
                    WA = W.astype(np.float64) @ Af.T.astype(np.float64)            # [out, r]
                    BA2 = np.einsum("ir,rs,is->i", Bf.astype(np.float64),
                                    Af.astype(np.float64) @ Af.T.astype(np.float64), Bf.astype(np.float64))
                    n2 = wnorm2[(l, m)] + 2 * scale * np.einsum("ir,ir->i", Bf, WA) + scale * scale * BA2
                    mag = np.sqrt(np.maximum(n2, 0)) * (1 + 0.05 * rng.standard_normal(out_f))
                    tensors.append((p + ".lora_magnitude_vector", dt, (out_f,), to_dtype(mag, dt)))
        d = os.path.join(args.out, "lora-%04d" % k)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "adapter_config.json"), "w") as f:
            f.write(conf_text)
        write_safetensors(os.path.join(d, "adapter_model.safetensors"), tensors)
        nbytes += sum(t[3].nbytes for t in tensors)
    dt_s = time.time() - t0
    print(json.dumps({"out": args.out, "count": args.count, "rank": r, "alpha": alpha, "targets": targets,
                      "dtype": args.dtype, "dora": bool(args.dora), "tensor_bytes_per_adapter":
                      nbytes // max(1, args.count), "seconds": round(dt_s, 3)}))
    return 0


def _to_f32(a, dt):
    if dt == "F16":
        return a.astype(np.float32)
    return (a.astype(np.uint32) << 16).view(np.float32)


if __name__ == "__main__":
    sys.exit(main())
