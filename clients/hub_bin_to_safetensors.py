#!/usr/bin/env python3
"""clients/hub_bin_to_safetensors.py — an AdapterHub adapter saved as pytorch_adapter.bin
(a pickle) rewritten as the adapter.safetensors peftd reads.

    python3 clients/hub_bin_to_safetensors.py ADAPTER_DIR [--out OUT_DIR]

Why: adapters 1.3's save_adapter(use_safetensors=True) fails for prefix tuning (and MAM),
because every layer's prefix_tuning.pool refers to the same tensors; saving without
safetensors writes a pickle, which peftd never unpickles (an upload must not run code). This
loads the pickle with torch.load(weights_only=True) (tensors only, no code), keeps ONE copy of
each shared prefix-pool tensor (model.prefix_tuning.prefix_tunings.*; the per-layer views
model.layers.N.self_attn.prefix_tuning.pool.* are checked equal and dropped) and writes
OUT_DIR/adapter.safetensors next to a copy of adapter_config.json (OUT_DIR defaults to
ADAPTER_DIR). Needs torch and safetensors (what trained the adapter)."""
import argparse
import os
import re
import shutil
import sys

LAYER_VIEW = re.compile(r"^model\.layers\.\d+\.self_attn\.prefix_tuning\.pool\.(prefix_tunings\..*)$")


def convert(src, out):
    import torch
    from safetensors.torch import save_file
    sd = torch.load(os.path.join(src, "pytorch_adapter.bin"), map_location="cpu", weights_only=True)
    kept = {}
    for k, v in sd.items():
        m = LAYER_VIEW.match(k)
        if m:
            pool = "model.prefix_tuning." + m.group(1)
            if pool not in sd or not torch.equal(sd[pool], v):
                sys.exit("%s: %s is not a copy of %s" % (src, k, pool))
            continue
        kept[k] = v.detach().clone().contiguous()
    os.makedirs(out, exist_ok=True)
    save_file(kept, os.path.join(out, "adapter.safetensors"))
    if os.path.abspath(out) != os.path.abspath(src):
        shutil.copy(os.path.join(src, "adapter_config.json"), os.path.join(out, "adapter_config.json"))
    return len(sd), len(kept)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("adapter_dir")
    ap.add_argument("--out")
    a = ap.parse_args()
    n, k = convert(a.adapter_dir, a.out or a.adapter_dir)
    print("wrote %s/adapter.safetensors: %d tensors (%d per-layer views of shared ones dropped)"
          % (a.out or a.adapter_dir, k, n - k))


if __name__ == "__main__":
    main()
