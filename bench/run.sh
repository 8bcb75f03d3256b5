#!/usr/bin/env bash
# bench/run.sh — `make bench`: the multi-adapter serving benchmark.
#
# Builds $BUILD/libpeftd.a and $BUILD/bench/bench_adapters, generates (once; reused from
# bench/models/, which git ignores) a random-weight 110M Llama (bf16: CPU decode is
# memory-bound and bf16 halves the bytes) and two sets of 32 random PEFT LoRA adapters
# (rank 8 on q_proj,v_proj — PEFT's default targets — and rank 16 on all linear modules;
# bf16, fixed seeds), then runs the benchmark: JSON on stdout and in
# bench/results/latest.json, a one-line summary last.
#
# Knobs (environment): BENCH_TOKENS (generated tokens per sequence in a-c, default 64,
# after an 8-token prompt), BENCH_TOKENS_D (per adapter in d, default 16), BENCH_ROUNDS
# (default 5), BENCH_THREADS (default: one per online core).
# Sized for < 10 minutes on 2 cores, build included: on a quiet 2-core machine a round
# (2 shapes x [a, b, c: 63 decode steps of ~55-75 ms; d: 32 x 15 steps of ~7 ms]) takes
# ~30 s, so 5 rounds ≈ 2.5 min; other processes on the machine can stretch that 2-3x.
set -euo pipefail

BUILD=${BUILD:-build}
PYTHON=${PYTHON:-python3}
TOKENS=${BENCH_TOKENS:-64}
TOKENS_D=${BENCH_TOKENS_D:-16}
ROUNDS=${BENCH_ROUNDS:-5}
THREADS=${BENCH_THREADS:-0}
N_ADAPTERS=32

cd "$(dirname "$0")/.."
MODELS=bench/models
BASE=$MODELS/llama-110m-bf16

make -s --no-print-directory BUILD="$BUILD" "$BUILD/libpeftd.a" "$BUILD/bench/bench_adapters"

# The generators need numpy only.
if ! "$PYTHON" -c 'import numpy' 2>/dev/null; then
    echo "bench: installing numpy for the model generators" >&2
    "$PYTHON" -m pip install --quiet numpy 2>/dev/null ||
        "$PYTHON" -m pip install --quiet --break-system-packages numpy
fi

mkdir -p "$MODELS" bench/results
# Generate into a temporary directory and rename, so an interrupted run never leaves a
# half-written model or adapter set that later runs would reuse.
if [ ! -f "$BASE/model.safetensors" ]; then
    echo "bench: generating $BASE (random weights, 110M Llama shape, bf16)" >&2
    rm -rf "$BASE.tmp"
    "$PYTHON" clients/gen_random_llama.py --preset 110m --dtype bf16 --seed 1 \
        --tokenizer-from models/stories260K --out "$BASE.tmp" >&2
    mv "$BASE.tmp" "$BASE"
fi

# make_loras NAME RANK ALPHA TARGETS SEED
make_loras() {
    local dir=$MODELS/$1
    if [ -d "$dir" ] && [ "$(find "$dir" -name adapter_model.safetensors | wc -l)" -eq "$N_ADAPTERS" ]; then
        return
    fi
    echo "bench: generating $N_ADAPTERS LoRA adapters in $dir (rank $2, $4, bf16)" >&2
    rm -rf "$dir" "$dir.tmp"
    "$PYTHON" clients/gen_random_lora.py --base "$BASE" --out "$dir.tmp" --count "$N_ADAPTERS" \
        --rank "$2" --alpha "$3" --targets "$4" --dtype bf16 --seed "$5" >&2
    mv "$dir.tmp" "$dir"
}
# alpha = 2 r: the scale alpha/r = 2 is what the LoRA papers' recipes commonly use; it
# does not change the cost.
make_loras lora-r8-qv 8 16 q_proj,v_proj 8
make_loras lora-r16-all 16 32 all-linear 16

# Targets from the issue: c/a >= 0.9 (rank 8 q,v), >= 0.75 (rank 16 all-linear); c/d >= 4.
"$BUILD/bench/bench_adapters" --model "$BASE" \
    --shape "r8-qv:$MODELS/lora-r8-qv:0.9" \
    --shape "r16-all:$MODELS/lora-r16-all:0.75" \
    --seqs "$N_ADAPTERS" --prompt 8 --tokens "$TOKENS" --tokens-d "$TOKENS_D" \
    --rounds "$ROUNDS" --threads "$THREADS" --cd-target 4 \
    --out bench/results/latest.json

# Prefix caching (issue 15): TTFT of a second request sharing a 400-token prefix with the
# first (same model, base) against the first's, and its tokens / logprobs against an engine
# without the cache (bench_prefix exits 1 if they differ). Target: ratio >= 5.
make -s --no-print-directory BUILD="$BUILD" "$BUILD/bench/bench_prefix"
"$BUILD/bench/bench_prefix" --model "$BASE" --prefix 400 --suffix 16 --rounds "${BENCH_ROUNDS_PREFIX:-3}" \
    --threads "$THREADS" --target 5 --out bench/results/latest-prefix.json >/dev/null

# response_format json_schema (issue 15): a decode step with and without one schema-masked
# sequence among 8 (the mask runs on the engine thread before sampling). A small random
# model with a real byte-level BPE vocabulary (the Llama-3-style 8192-token fixture
# tokenizer), so the mask walks a realistic vocabulary; bench_json exits 1 if the other
# sequences' tokens change.
JSONM=$MODELS/llama-json-8k
if [ ! -f "$JSONM/model.safetensors" ]; then
    rm -rf "$JSONM.tmp"
    "$PYTHON" clients/gen_random_llama.py --hidden 256 --layers 4 --heads 4 --kv-heads 4 --intermediate 688 \
        --vocab 8192 --max-pos 512 --bos 0 --eos 1 --seed 3 --tokenizer-from tests/fixtures/tokenizer/llama3bl \
        --out "$JSONM.tmp" >&2
    mv "$JSONM.tmp" "$JSONM"
fi
make -s --no-print-directory BUILD="$BUILD" "$BUILD/bench/bench_json"
"$BUILD/bench/bench_json" --model "$JSONM" --seqs 8 --tokens 64 --rounds "${BENCH_ROUNDS_JSON:-3}" \
    --threads "$THREADS" --out bench/results/latest-json.json >/dev/null

# Adapter kinds and compositions (issue 16): a 32-sequence batch of 8 distinct adapters of
# each kind against the base and against 8 distinct rank-16 all-linear LoRAs, and 32 sequences
# each composing two of those LoRAs ("linear": 4 (A, B) pairs per module, "cat": 2). The
# sets are random adapters shaped after the fixture adapters (clients/gen_like_adapter.py;
# PEFT LoRA variants at rank 16, the other kinds at the fixtures' sizes); LoKr, LoHa, OFT and BOFT also
# with every module forced dense (the rule's other form). BENCH_KINDS=0 skips it.
if [ "${BENCH_KINDS:-1}" != 0 ]; then
    KINDS=$MODELS/kinds-110m
    # like_set NAME FIXTURE COUNT RANK
    like_set() {
        [ -d "$KINDS/$1" ] && return
        rm -rf "$KINDS/$1.tmp"
        "$PYTHON" clients/gen_like_adapter.py --like "tests/fixtures/adapters/$2" --base "$BASE" \
            --out "$KINDS/$1.tmp" --count "$3" --rank "$4" --seed 3 >&2
        mv "$KINDS/$1.tmp" "$KINDS/$1"
    }
    mkdir -p "$KINDS"
    like_set ia3 ia3 8 0
    like_set prompt prompt_tuning 8 0
    like_set prefix prefix_tuning 8 0
    like_set lora_bias lora_bias 8 16
    like_set lora_embed_head lora_embed_head 4 16
    like_set modules_to_save lora_lm_head 4 16
    like_set seq_bn pfeiffer 8 0
    like_set par_bn hub_par_bn 8 0
    like_set vera vera 8 0
    like_set loha loha 8 0
    like_set lokr lokr 8 0
    like_set lokr_full lokr_full 8 0
    like_set oft oft 8 0
    like_set boft boft 8 0
    like_set ln_tuning ln_tuning 8 0
    like_set adalora adalora 8 0
    like_set p_tuning p_tuning 8 0
    like_set prefix_projection prefix_projection 8 0
    like_set hub_lora hub_lora 8 0
    like_set hub_ia3 hub_ia3 8 0
    like_set hub_prefix hub_prefix 8 0
    like_set hub_prefix_flat hub_prefix_flat 8 0
    like_set hub_mam hub_mam 8 0
    like_set compacter hub_compacter 8 0
    if [ ! -d "$KINDS/dora" ]; then
        "$PYTHON" clients/gen_random_lora.py --base "$BASE" --out "$KINDS/dora.tmp" --count 8 --rank 16 \
            --alpha 32 --targets all-linear --dtype bf16 --seed 17 --dora >&2
        mv "$KINDS/dora.tmp" "$KINDS/dora"
    fi
    make -s --no-print-directory BUILD="$BUILD" "$BUILD/bench/bench_kinds"
    "$BUILD/bench/bench_kinds" --model "$BASE" --lora "$MODELS/lora-r16-all" \
        $(for k in dora lora_bias lora_embed_head modules_to_save ia3 prompt prefix seq_bn par_bn vera loha lokr \
            lokr_full oft boft ln_tuning adalora p_tuning prefix_projection hub_lora hub_ia3 hub_prefix \
            hub_prefix_flat hub_mam compacter; do printf -- '--kind %s:%s ' "$k" "$KINDS/$k"; done) \
        --kind "lokr-dense:$KINDS/lokr:dense" --kind "loha-dense:$KINDS/loha:dense" \
        --kind "oft-dense:$KINDS/oft:dense" --kind "boft-dense:$KINDS/boft:dense" \
        --seqs "$N_ADAPTERS" --distinct 8 --prompt 8 --tokens "${BENCH_TOKENS_KINDS:-32}" \
        --rounds "${BENCH_ROUNDS_KINDS:-3}" --threads "$THREADS" --out bench/results/latest-kinds.json >/dev/null
fi

# The Llama-3.2-1B shape (issue 11): hidden 2048, 16 layers, 32/8 heads, intermediate 8192,
# vocab 128256, llama3 rope, tied, bf16 (2.47 GB). (1) batch-1 decode against the memory
# roofline measured in the same run, and start-up; (2) the daemon's start-up to its first
# /health 200; (3) 32 streams with 32 distinct rank-16 all-linear LoRAs (c) against the base
# (a) and one adapter at a time (d). Fewer tokens and rounds than the 110M run: a 32-row step
# of this model takes ~1-2 s on 2 cores. BENCH_1B=0 skips it.
[ "${BENCH_1B:-1}" = 0 ] && exit 0
BASE1B=$MODELS/llama32-1b-bf16
if ! grep -q '"llama3"' "$BASE1B/config.json" 2>/dev/null || [ ! -f "$BASE1B/model.safetensors" ]; then
    echo "bench: generating $BASE1B (random weights, Llama-3.2-1B shape, bf16, 2.5 GB)" >&2
    rm -rf "$BASE1B" "$BASE1B.tmp"
    "$PYTHON" clients/gen_random_llama.py --preset 1b --dtype bf16 --seed 1 \
        --tokenizer-from models/stories260K --out "$BASE1B.tmp" >&2
    mv "$BASE1B.tmp" "$BASE1B"
fi
BASE_SAVED=$BASE
BASE=$BASE1B
make_loras lora-llama32-1b-r16-all 16 32 all-linear 116
BASE=$BASE_SAVED
make -s --no-print-directory BUILD="$BUILD" "$BUILD/bench/bench_decode" "$BUILD/peftd"

"$BUILD/bench/bench_decode" --model "$BASE1B" --prompt 8 --tokens "${BENCH_TOKENS_1B:-32}" \
    --rounds "${BENCH_ROUNDS_1B:-3}" --threads "$THREADS" --target 0.70 --startup-target 2.0 \
    --out bench/results/latest-decode-1b.json >/dev/null

# Decode at ~930 positions, where the K/V a step reads rivals the weights: the 110M model with
# the KV cache in f32 and in f16 (engine.kv_dtype; bench/README, sixteenth quantized run).
for kv in f32 f16; do
    "$BUILD/bench/bench_decode" --model "$BASE" --prompt 896 --tokens 64 --rounds 3 --threads "$THREADS" \
        --target 0 --kv-dtype "$kv" --out "bench/results/latest-decode-ctx1k-$kv.json" >/dev/null
done

# The daemon from exec to its first /health 200 (model mmap, tokenizer, engine, store, HTTP).
PORT=${BENCH_PORT:-18437}
STORE=$(mktemp -d)
t0=$(date +%s.%N)
"$BUILD/peftd" serve --model "$BASE1B" --port "$PORT" --store "$STORE" 2>"$STORE.log" &
PID=$!
ready=""
for _ in $(seq 1 1000); do
    if curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then ready=$(date +%s.%N); break; fi
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.01
done
kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null || true
rm -rf "$STORE" "$STORE.log"
if [ -z "$ready" ]; then echo "bench: the daemon did not become ready" >&2; exit 1; fi
START_S=$(awk -v a="$t0" -v b="$ready" 'BEGIN { printf "%.3f", b - a }')
printf '{"bench": "daemon_startup", "model": "%s", "exec_to_health_200_s": %.3f, "target_s": 2.0}\n' \
    "$BASE1B" "$START_S" >bench/results/latest-startup-1b.json
printf 'bench: %s daemon start-up (exec to /health 200): %s s%s\n' "$(basename "$BASE1B")" "$START_S" \
    "$(awk -v s="$START_S" 'BEGIN { print (s <= 2.0 ? " (ok)" : " (MISS)") }')" >&2

exec "$BUILD/bench/bench_adapters" --model "$BASE1B" \
    --shape "r16-all-1b:$MODELS/lora-llama32-1b-r16-all:0.5" \
    --seqs "$N_ADAPTERS" --prompt 8 --tokens "${BENCH_TOKENS_1B_BATCH:-12}" --tokens-d 6 \
    --rounds "${BENCH_ROUNDS_1B_BATCH:-2}" --threads "$THREADS" --cd-target 4 \
    --out bench/results/latest-1b.json
