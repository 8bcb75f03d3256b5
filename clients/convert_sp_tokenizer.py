#!/usr/bin/env python3
"""clients/convert_sp_tokenizer.py — SentencePiece BPE model -> Hugging Face tokenizer files.

Usage: python3 clients/convert_sp_tokenizer.py TOK.model OUTDIR

Writes OUTDIR/tokenizer.json and OUTDIR/tokenizer_config.json for a Llama-style SentencePiece
BPE model with byte fallback (the default model's tok512.model), using transformers' own
slow->fast conversion, then checks the result against `sentencepiece` itself:

  * ids: HF `tokenizer(text)["input_ids"]` == [BOS] + sp.encode(text) on sample text.
    SentencePiece collapses runs of spaces and strips leading/trailing ones
    (remove_extra_whitespaces); the HF Llama conversion does not (neither does llama2.c's
    run.c), so sample text with such runs is reported, not required to match.
  * decode: HF decode of a BOS-prefixed generation drops BOS and the dummy-prefix space, as
    llama2.c prints it.

Only OUTDIR/tokenizer.json and OUTDIR/tokenizer_config.json are written; other files in OUTDIR
(config.json, model.safetensors) are left alone.
"""
import json
import os
import shutil
import sys
import tempfile

SAMPLES = [
    "Once upon a time, there was a little girl named Lily.",
    "She loved to play outside in the park. One day, she saw a big, red ball.",
    'Lily\'s mom said, "Lily, let\'s go to the park."',
    "The cat sat on the mat.\nThe dog barked!",
    "Numbers: 0 1 22 333 4444 3.14159 -42 1e10",
    "Grüße aus München, ça va? Привет, мир! Γειά σου κόσμε",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "Emoji: 😀 👍🏽 👨‍👩‍👧‍👦 🇩🇪 ❤️",
    "def f(x):\treturn {'a': [1, 2]} # comment",
    "tabs\tand\nnewlines\r\nmixed",
    ]

# Text where SentencePiece's remove_extra_whitespaces makes it differ from the HF conversion.
WHITESPACE_SAMPLES = ["two  spaces", " leading space", "trailing space ", "   "]


def build_hf_tokenizer(model_path, workdir):
    """Runs transformers' slow->fast conversion on the SentencePiece model."""
    shutil.copyfile(model_path, os.path.join(workdir, "tokenizer.model"))
    from transformers import LlamaTokenizer

    # legacy=False: Metaspace(prepend_scheme="first"), the modern Llama conversion; the
    # dummy prefix goes only at the start of the text, not after every special token.
    kwargs = dict(add_bos_token=True, add_eos_token=False, legacy=False)
    try:
        tok = LlamaTokenizer.from_pretrained(workdir, **kwargs)
        backend = tok.backend_tokenizer
    except (AttributeError, ValueError, OSError):
        # transformers 4.x: the slow class has no backend; go through the fast class.
        from transformers import LlamaTokenizerFast

        tok = LlamaTokenizerFast.from_pretrained(workdir, from_slow=True, **kwargs)
        backend = tok.backend_tokenizer
    return tok, backend


def write_outputs(tok, backend, outdir):
    os.makedirs(outdir, exist_ok=True)
    backend.save(os.path.join(outdir, "tokenizer.json"), pretty=True)
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "clean_up_tokenization_spaces": False,
        "legacy": False,
        # The default model's context length (llama2.c seq_len).
        "model_max_length": 512,
        "tokenizer_class": "LlamaTokenizer",
    }
    with open(os.path.join(outdir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)
        f.write("\n")


def verify(model_path, outdir):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    sp = spm.SentencePieceProcessor(model_file=model_path)
    hf = AutoTokenizer.from_pretrained(outdir)
    failures = 0

    if (hf.bos_token_id, hf.eos_token_id, hf.unk_token_id) != (sp.bos_id(), sp.eos_id(), sp.unk_id()):
        print("FAIL special ids: hf", (hf.bos_token_id, hf.eos_token_id, hf.unk_token_id),
              "sp", (sp.bos_id(), sp.eos_id(), sp.unk_id()))
        failures += 1
    if len(hf) != sp.get_piece_size():
        print(f"FAIL vocab size: hf {len(hf)} sp {sp.get_piece_size()}")
        failures += 1

    for text in SAMPLES:
        ids = hf(text)["input_ids"]
        want = [sp.bos_id()] + sp.encode(text)
        if ids != want:
            print(f"FAIL encode {text!r}:\n  hf {ids}\n  sp {want}")
            failures += 1
        back = hf.decode(ids, skip_special_tokens=True)
        if back != text:
            print(f"FAIL decode {text!r} -> {back!r}")
            failures += 1
        if sp.decode(sp.encode(text)) != text:
            print(f"note: sentencepiece itself does not round-trip {text!r}")

    for text in WHITESPACE_SAMPLES:
        ids = hf(text)["input_ids"][1:]
        if ids != sp.encode(text):
            print(f"note: differs from sentencepiece on {text!r} (remove_extra_whitespaces): "
                  f"hf {ids} sp {sp.encode(text)}")

    # Special tokens written in user text are read as the special tokens (as HF does for Llama;
    # sentencepiece itself would spell them out), and are dropped by skip_special_tokens.
    ids = hf("a <s> b </s>")["input_ids"]
    if ids.count(sp.bos_id()) != 2 or ids.count(sp.eos_id()) != 1:
        print(f"FAIL special tokens in text: {ids}")
        failures += 1

    # A generation from BOS alone, as llama2.c prints it: no BOS, no leading space.
    ref_path = os.path.join(os.path.dirname(os.path.abspath(model_path)), "expected_greedy_noprompt_256.txt")
    if os.path.exists(ref_path):
        with open(ref_path, encoding="utf-8") as f:
            ref = f.read().rstrip("\n")
        gen = [sp.bos_id()] + sp.encode(ref)
        out = hf.decode(gen, skip_special_tokens=True)
        if out != ref:
            print(f"FAIL decode of BOS-prefixed generation:\n  {out[:80]!r}\n  {ref[:80]!r}")
            failures += 1
        else:
            print(f"ok: decode of a BOS-prefixed generation ({len(gen)} ids) matches llama2.c's text")
    return failures


def main(argv):
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    model_path, outdir = argv[1], argv[2]
    with tempfile.TemporaryDirectory() as workdir:
        tok, backend = build_hf_tokenizer(model_path, workdir)
        write_outputs(tok, backend, outdir)
    failures = verify(model_path, outdir)
    if failures:
        print(f"{failures} check(s) failed", file=sys.stderr)
        return 1
    print(f"wrote {outdir}/tokenizer.json and {outdir}/tokenizer_config.json; all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
