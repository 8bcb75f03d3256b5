#!/usr/bin/env bash
# bench/peers/convert.sh — peftd's bench models and LoRAs -> GGUF for the llama.cpp peer.
#
# Usage: bench/peers/convert.sh MODEL_DIR [LORA_SET_DIR]
#   e.g. bench/peers/convert.sh bench/models/llama-110m-bf16 bench/models/lora-r16-all
# Writes bench/peers/.cache/gguf/<model>.gguf (bf16, convert_hf_to_gguf.py) and
# bench/peers/.cache/gguf/<lora set>/<adapter>.gguf (bf16, convert_lora_to_gguf.py), with
# the converters of the vendored llama.cpp (bench/peers/build_llama_cpp.sh must have run).
# Skips outputs that exist (written to .tmp and renamed, so an interrupted run is redone).
#
# Tokenizer: the bench models carry the stories260K tokenizer as tokenizer.json only (BPE,
# 512 pieces), which convert_hf_to_gguf.py's Llama path does not take (it wants
# sentencepiece's tokenizer.model, or a Llama-3 BPE it recognises by hash). The converter
# is given, in a side directory of hard links (same config.json, same model.safetensors,
# same tokenizer_config.json), the original SentencePiece model that tokenizer.json was made
# from (tok512.model of llama2.c's stories260K: same 512 pieces, ids, byte fallback); the
# converter pads the vocabulary to config.json's vocab_size with [PADn] pieces. The weights
# are the same bytes (bf16 -> bf16; q/k rows permuted to llama.cpp's rope layout, which is
# the same function; norms stored f32). The race sends prompts as token ids and
# ignores EOS, so the tokenizer never decides what is computed. Needs `pip install sentencepiece`.
set -euo pipefail
cd "$(dirname "$0")/../.."
C=bench/peers/.cache
LC=$(ls -d "$PWD/$C"/llama_cpp_python-*/vendor/llama.cpp | sort -V | tail -1)
SPM=${SPM_MODEL:-/work/shared/models/stories260K/tok512.model}
export PYTHONPATH=$LC/gguf-py${PYTHONPATH:+:$PYTHONPATH}
python3 -c 'import sentencepiece' 2>/dev/null || python3 -m pip install --quiet sentencepiece

model=${1:?usage: convert.sh MODEL_DIR [LORA_SET_DIR]}
name=$(basename "$model")
hf=$C/hf/$name
mkdir -p "$hf" "$C/gguf"
for f in config.json model.safetensors tokenizer_config.json; do ln -f "$model/$f" "$hf/$f"; done
cp "$SPM" "$hf/tokenizer.model"
out=$C/gguf/$name.gguf
if [ ! -f "$out" ]; then
    nice python3 "$LC/convert_hf_to_gguf.py" --outtype bf16 --outfile "$out.tmp" "$hf" 2>&1 |
        grep -v 'Writing:\|-->' >&2
    mv "$out.tmp" "$out"
fi
echo "$out"
[ $# -ge 2 ] || exit 0
set_dir=$2
lout=$C/gguf/$name--$(basename "$set_dir")
mkdir -p "$lout"
for a in "$set_dir"/*/; do
    a=${a%/}
    o=$lout/$(basename "$a").gguf
    [ -f "$o" ] && continue
    nice python3 "$LC/convert_lora_to_gguf.py" --outtype bf16 --base "$hf" --outfile "$o.tmp" "$a" 2>&1 |
        grep -i 'error\|exception' >&2 || true
    [ -f "$o.tmp" ] || { echo "convert: $a failed" >&2; exit 1; }
    mv "$o.tmp" "$o"
done
echo "$lout"
