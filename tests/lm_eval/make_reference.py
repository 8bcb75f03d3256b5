#!/usr/bin/env python3
"""tests/lm_eval/make_reference.py — the transformers+peft side of the lm_eval check.

Rerun from anywhere:  python3 tests/lm_eval/make_reference.py
(needs torch, transformers 4.57.6, peft 0.21.2; CI and `make test-lm-eval` read only the
committed outputs, so they need no torch). Deterministic: CPU, float64.

Inputs (committed): models/stories260K (base + tokenizer), the LoRA fixture
tests/fixtures/adapters/lora_r8_all (PEFT save_pretrained files), tasks/mc.jsonl (multiple
choice docs) and tasks/gen_prompts.json (generation prompts).

Outputs (committed):
  tasks/gen.jsonl     the generation task's docs: {"id", "prompt", "target"}, target = the
                      greedy continuation transformers+peft produces (so lm_eval's exact_match
                      is 1.0 exactly when peftd generated the same text);
  reference.json      {"model", "adapter", "dtype", "versions", "mc": [{"doc_id", "choice",
                      "context", "continuation", "context_ids", "continuation_ids",
                      "loglikelihood", "is_greedy", "base_loglikelihood"}],
                      "gen": [{"doc_id", "prompt_ids",
                      "ids", "text", "min_margin"}]}.

The token ids are what lm-evaluation-harness's local-completions sends with the model
arguments tests/lm_eval/run.sh uses (tokenizer_backend=huggingface on the model's own
tokenizer files, add_bos_token=True, tokenized_requests on): for a (context, continuation)
pair it moves the context's trailing spaces into the continuation, encodes context and
context+continuation with the BOS, and scores whole[len(context):]
(lm_eval/api/model.py _encode_pair — a fact about its protocol, re-stated here). A generation
prompt is the BOS plus the prompt's tokens; the greedy text is decode(prompt + generated)
minus decode(prompt), cut at the first "\n" (the task's `until`), at most MAX_GEN tokens or
up to the EOS. base_loglikelihood is the same score on the base model without the adapter:
the comparison uses it to show the adapter was applied (the two differ by far more than
the tolerance). min_margin is the smallest gap between the best and second-best logit over
the greedy steps: a gap far above float32 rounding means peftd's float32 argmax cannot flip.
"""
import json
import os
import sys

import numpy as np
import torch
import transformers
import peft
from transformers import AutoModelForCausalLM, AutoTokenizer
from peft import PeftModel

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BASE = os.path.join(ROOT, "models", "stories260K")
ADAPTER = os.path.join(ROOT, "tests", "fixtures", "adapters", "lora_r8_all")
TASKS = os.path.join(HERE, "tasks")
MAX_GEN = 24  # = generation_kwargs.max_gen_toks in tasks/peftd_stories_gen.yaml
UNTIL = "\n"  # = generation_kwargs.until


def encode_pair(tok, context, continuation):
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tok(context + continuation, add_special_tokens=True).input_ids
    ctx = tok(context, add_special_tokens=True).input_ids
    return ctx, whole[len(ctx):]


def main():
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(BASE)
    base = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, ADAPTER).double().eval()

    def logprobs(ids, adapter=True):
        with torch.no_grad():
            if adapter:
                logits = model(torch.tensor([ids])).logits[0].double()
            else:
                with model.disable_adapter():
                    logits = model(torch.tensor([ids])).logits[0].double()
        return torch.log_softmax(logits, dim=-1), logits

    def score(ctx, cont, adapter=True):
        lp, _ = logprobs(ctx + cont, adapter)
        # the token at position p is predicted by row p-1
        rows = [lp[len(ctx) + i - 1] for i in range(len(cont))]
        ll = float(sum(r[t].item() for r, t in zip(rows, cont)))
        return ll, all(int(torch.argmax(r)) == t for r, t in zip(rows, cont))

    mc = []
    with open(os.path.join(TASKS, "mc.jsonl")) as f:
        docs = [json.loads(line) for line in f if line.strip()]
    for d in docs:
        for ci, choice in enumerate(d["choices"]):
            ctx, cont = encode_pair(tok, d["context"], choice)
            ll, greedy = score(ctx, cont)
            base_ll, _ = score(ctx, cont, adapter=False)
            mc.append({"doc_id": d["id"], "choice": ci, "context": d["context"], "continuation": choice,
                       "context_ids": ctx, "continuation_ids": cont, "loglikelihood": ll, "is_greedy": greedy,
                       "base_loglikelihood": base_ll})

    with open(os.path.join(TASKS, "gen_prompts.json")) as f:
        prompts = json.load(f)
    gen, docs_out = [], []
    for i, p in enumerate(prompts):
        ids = tok(p, add_special_tokens=True).input_ids
        out, margin = [], float("inf")
        prefix_text = tok.decode(ids, skip_special_tokens=True)
        text = ""
        for _ in range(MAX_GEN):
            _, logits = logprobs(ids + out)
            row = logits[-1]
            top2 = torch.topk(row, 2).values
            margin = min(margin, float(top2[0] - top2[1]))
            t = int(torch.argmax(row))
            if t == tok.eos_token_id:
                break
            out.append(t)
            text = tok.decode(ids + out, skip_special_tokens=True)[len(prefix_text):]
            if UNTIL in text:
                break
        text = text.split(UNTIL)[0]
        gen.append({"doc_id": i, "prompt_ids": ids, "ids": out, "text": text, "min_margin": margin})
        docs_out.append({"id": i, "prompt": p, "target": text})

    with open(os.path.join(TASKS, "gen.jsonl"), "w") as f:
        for d in docs_out:
            f.write(json.dumps(d) + "\n")
    ref = {"model": "models/stories260K", "adapter": "tests/fixtures/adapters/lora_r8_all", "dtype": "float64",
           "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                        "peft": peft.__version__},
           "mc": mc, "gen": gen}
    with open(os.path.join(HERE, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1)
        f.write("\n")
    print("%d log-likelihoods, %d generations; smallest greedy margin %.4f" %
          (len(mc), len(gen), min(g["min_margin"] for g in gen)))


if __name__ == "__main__":
    sys.exit(main())
