#!/usr/bin/env python3
"""Convert a llama2.c legacy (v0) checkpoint into a Hugging Face Llama directory.

Input format (llama2.c `run.c`, legacy v0): 7 x int32 header
    dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
(vocab_size > 0 means the classifier is shared with the token embedding; < 0 means
a separate wcls follows at the end), then float32 little-endian tensors in this order:
    tok_emb[vocab, dim], rms_att[L, dim], wq[L, dim, dim], wk[L, kv_dim, dim],
    wv[L, kv_dim, dim], wo[L, dim, dim], rms_ffn[L, dim], w1[L, hidden, dim],
    w2[L, dim, hidden], w3[L, hidden, dim], rms_final[dim],
    freq_cis_real[seq_len, head_size/2], freq_cis_imag[seq_len, head_size/2],
    (wcls[vocab, dim] if vocab_size < 0)

Output: config.json (LlamaForCausalLM) + model.safetensors (float32) + LICENSE, then, when
clients/convert_sp_tokenizer.py exists, that script is run to write the tokenizer files
(this script never writes tokenizer.json / tokenizer_config.json itself).

RoPE layout: llama2.c rotates adjacent pairs (x[2i], x[2i+1]) of each head, HF Llama rotates
halves (x[i], x[i + head_dim/2]). Permuting the output rows of wq and wk per head
(row 2i -> i, row 2i+1 -> i + head_dim/2) makes the two identical: the attention scores
q.k are invariant under applying the same permutation to q and k, and v/wo are untouched.
This is the permutation of transformers' convert_llama_weights_to_hf.py.

Only numpy + safetensors are needed (no torch).
"""
import argparse
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
from safetensors.numpy import save_file

HEADER_FMT = "<7i"


def permute_rope(w, n_heads, dim_in):
    """Adjacent-pair RoPE rows -> half-split RoPE rows, per head.

    w: [n_heads * head_dim, dim_in]. Same as HF's
    w.view(n_heads, head_dim // 2, 2, dim_in).transpose(1, 2).reshape(n_heads * head_dim, dim_in)
    """
    out_dim = w.shape[0]
    head_dim = out_dim // n_heads
    return (w.reshape(n_heads, head_dim // 2, 2, dim_in)
             .transpose(0, 2, 1, 3)
             .reshape(out_dim, dim_in))


def read_checkpoint(path):
    with open(path, "rb") as f:
        raw = f.read()
    hdr_size = struct.calcsize(HEADER_FMT)
    dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len = struct.unpack_from(HEADER_FMT, raw, 0)
    shared = vocab > 0
    vocab = abs(vocab)
    if min(dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len) <= 0:
        raise ValueError("bad header")
    if dim % n_heads or n_heads % n_kv_heads:
        raise ValueError("dim must divide by n_heads and n_heads by n_kv_heads")
    head_dim = dim // n_heads
    kv_dim = head_dim * n_kv_heads
    data = np.frombuffer(raw, dtype="<f4", offset=hdr_size)
    pos = 0

    def take(*shape):
        nonlocal pos
        n = int(np.prod(shape))
        if pos + n > data.size:
            raise ValueError("checkpoint truncated")
        t = data[pos:pos + n].reshape(shape).astype(np.float32)
        pos += n
        return t

    t = {}
    t["tok_emb"] = take(vocab, dim)
    t["rms_att"] = take(n_layers, dim)
    t["wq"] = take(n_layers, dim, dim)
    t["wk"] = take(n_layers, kv_dim, dim)
    t["wv"] = take(n_layers, kv_dim, dim)
    t["wo"] = take(n_layers, dim, dim)
    t["rms_ffn"] = take(n_layers, dim)
    t["w1"] = take(n_layers, hidden, dim)
    t["w2"] = take(n_layers, dim, hidden)
    t["w3"] = take(n_layers, hidden, dim)
    t["rms_final"] = take(dim)
    take(seq_len, head_dim // 2)  # freq_cis_real (unused: HF recomputes RoPE)
    take(seq_len, head_dim // 2)  # freq_cis_imag
    if not shared:
        t["wcls"] = take(vocab, dim)
    if pos != data.size:
        raise ValueError("trailing data in checkpoint: %d floats" % (data.size - pos))
    cfg = dict(dim=dim, hidden=hidden, n_layers=n_layers, n_heads=n_heads,
               n_kv_heads=n_kv_heads, vocab=vocab, seq_len=seq_len, shared=shared)
    return cfg, t


def to_hf(cfg, t):
    dim, n_heads, n_kv = cfg["dim"], cfg["n_heads"], cfg["n_kv_heads"]
    out = {"model.embed_tokens.weight": t["tok_emb"]}
    for i in range(cfg["n_layers"]):
        p = "model.layers.%d." % i
        out[p + "self_attn.q_proj.weight"] = permute_rope(t["wq"][i], n_heads, dim)
        out[p + "self_attn.k_proj.weight"] = permute_rope(t["wk"][i], n_kv, dim)
        out[p + "self_attn.v_proj.weight"] = t["wv"][i]
        out[p + "self_attn.o_proj.weight"] = t["wo"][i]
        out[p + "mlp.gate_proj.weight"] = t["w1"][i]
        out[p + "mlp.down_proj.weight"] = t["w2"][i]
        out[p + "mlp.up_proj.weight"] = t["w3"][i]
        out[p + "input_layernorm.weight"] = t["rms_att"][i]
        out[p + "post_attention_layernorm.weight"] = t["rms_ffn"][i]
    out["model.norm.weight"] = t["rms_final"]
    if not cfg["shared"]:
        out["lm_head.weight"] = t["wcls"]
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def hf_config(cfg):
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": cfg["dim"],
        "intermediate_size": cfg["hidden"],
        "num_hidden_layers": cfg["n_layers"],
        "num_attention_heads": cfg["n_heads"],
        "num_key_value_heads": cfg["n_kv_heads"],
        "head_dim": cfg["dim"] // cfg["n_heads"],
        "vocab_size": cfg["vocab"],
        "max_position_embeddings": cfg["seq_len"],
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": bool(cfg["shared"]),
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "torch_dtype": "float32",
    }


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True, help="llama2.c legacy v0 .bin")
    ap.add_argument("--tokenizer", help="SentencePiece .model (passed to convert_sp_tokenizer.py)")
    ap.add_argument("--license", help="LICENSE file to copy (default: LICENSE next to the checkpoint)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    cfg, t = read_checkpoint(args.checkpoint)
    os.makedirs(args.out, exist_ok=True)
    tensors = to_hf(cfg, t)
    save_file(tensors, os.path.join(args.out, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(hf_config(cfg), f, indent=2)
        f.write("\n")

    lic = args.license or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "LICENSE")
    if os.path.exists(lic):
        shutil.copyfile(lic, os.path.join(args.out, "LICENSE"))
    else:
        print("warning: no LICENSE found at %s" % lic, file=sys.stderr)

    print("wrote %s: %d tensors, checkpoint sha256 %s" % (args.out, len(tensors), sha256_file(args.checkpoint)))

    sp_conv = os.path.join(os.path.dirname(os.path.abspath(__file__)), "convert_sp_tokenizer.py")
    if args.tokenizer and os.path.exists(sp_conv):
        subprocess.run([sys.executable, sp_conv, args.tokenizer, args.out], check=True)
    elif args.tokenizer:
        print("note: %s not present yet; tokenizer files not written" % sp_conv, file=sys.stderr)


if __name__ == "__main__":
    main()
