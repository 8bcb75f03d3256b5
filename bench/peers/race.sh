#!/usr/bin/env bash
# bench/peers/race.sh — race peftd against llama.cpp's llama-server on this machine: same
# weights (bf16, converted to GGUF), same 32 rank-16 LoRAs, same thread count, same HTTP
# client (race_client.py), interleaved rounds, best-of and median.
#
#   bench/peers/race.sh            # -> bench/results/peers-<date>.json, a table on stderr
#
# Steps: build_llama_cpp.sh (cached), the bench models if absent (as bench/run.sh makes
# them), convert.sh (cached), make build/peftd build/bench/bench_decode, then per model:
# bench_decode (read bandwidth, bytes per token), race.py (tests a, b, c; llama-bench as a
# cross-check of a), bench_decode again; llama-batched-bench once as a cross-check of b.
#
# Knobs (environment): RACE_THREADS (2), RACE_ROUNDS (3), RACE_MODELS ("110m 1b"),
# RACE_TOKENS_A (32), RACE_TOKENS_B (16), RACE_TOKENS_C (8); for the 1B model
# RACE_TOKENS_A_1B (8), RACE_TOKENS_B_1B (4), RACE_TOKENS_C_1B (4); RACE_TESTS_110M ("a b c"),
# RACE_TESTS_1B ("a b"); "q05b" in RACE_MODELS: the Qwen2.5-0.5B-wide Llama (gen_random_llama.py
# --preset q05b; 896 wide, so its Q4_K_M / Q5_K_M are mostly Q5_0 / Q5_1) with RACE_TOKENS_*_Q05B
# (16, 8, 4) and RACE_TESTS_Q05B ("a b"); RACE_LLAMA_T1 (true: also race llama-server at 1 thread);
# RACE_QUANT (bf16: both serve the bf16 weights, peftd from the HF directory; q8_0 or q4_k_m:
# llama-quantize makes that GGUF from the bf16 one and BOTH servers load that same file, peftd
# with --model FILE.gguf), RACE_NO_MMAP=1 (both servers and bench_decode read the weights into
# memory instead of mapping them: peftd's --no-mmap, llama.cpp's --load-mode none / -lm none),
# RACE_ISA=avx2 (the AVX2-only kind on an AVX-512 machine: llama.cpp built AVX2-only by
# build_llama_cpp.sh LLAMA_CPP_ISA=avx2, peftd built with MARCH=x86-64-v3 into build-avx2/ and
# run with PEFTD_CPU_QPATH=avx2; memory bandwidth stays this machine's), RACE_PROMPT_LEN (8: the
# prompt of every request, e.g. 880 for decode at ~1k positions; llama-bench then runs at that
# depth, -d), RACE_KV_DTYPE (f32, or f16: peftd's --kv-dtype, llama-server's default cache type),
# RACE_OUT (output path).
set -euo pipefail
cd "$(dirname "$0")/../.."
THREADS=${RACE_THREADS:-2}
NO_MMAP=$([ "${RACE_NO_MMAP:-0}" = 1 ] && echo 1 || true)
ROUNDS=${RACE_ROUNDS:-3}
MODELS=${RACE_MODELS:-110m 1b}
QUANT=${RACE_QUANT:-bf16}
case $QUANT in bf16) qtype= ;; q8_0) qtype=Q8_0 ;; q4_k_m) qtype=Q4_K_M ;;
    *) echo "race: RACE_QUANT must be bf16, q8_0 or q4_k_m (not $QUANT)" >&2; exit 2 ;; esac
OUT=${RACE_OUT:-bench/results/peers-$(date -u +%F)${qtype:+-$QUANT}.json}
C=bench/peers/.cache
TMP=$C/race-$$
mkdir -p "$TMP"

PB=build; INFO=$C/llama_cpp_info.json
case ${RACE_ISA:-native} in
    native) ;;
    avx2) PB=build-avx2; INFO=$C/llama_cpp_info-avx2.json; export PEFTD_CPU_QPATH=avx2 ;;
    *) echo "race: RACE_ISA must be native or avx2 (not $RACE_ISA)" >&2; exit 2 ;; esac
LLAMA_CPP_ISA=${RACE_ISA:-native} bench/peers/build_llama_cpp.sh >/dev/null
BIN=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bin"])' "$INFO")
if [ "$PB" = build ]; then
    make -s --no-print-directory build/peftd build/bench/bench_decode
else
    make -s --no-print-directory BUILD=$PB MARCH=x86-64-v3 $PB/peftd $PB/bench/bench_decode
fi

gen_model() { # DIR PRESET
    [ -f "$1/model.safetensors" ] && return
    python3 clients/gen_random_llama.py --preset "$2" --dtype bf16 --seed 1 \
        --tokenizer-from models/stories260K --out "$1.tmp" >&2
    mv "$1.tmp" "$1"
}
gen_loras() { # DIR BASE SEED
    [ "$(find "$1" -name adapter_model.safetensors 2>/dev/null | wc -l)" -eq 32 ] && return
    rm -rf "$1" "$1.tmp"
    python3 clients/gen_random_lora.py --base "$2" --out "$1.tmp" --count 32 --rank 16 \
        --alpha 32 --targets all-linear --dtype bf16 --seed "$3" >&2
    mv "$1.tmp" "$1"
}

parts=()
for m in $MODELS; do
    case $m in
    110m) hf=bench/models/llama-110m-bf16; lo=bench/models/lora-r16-all; seed=16
          ta=${RACE_TOKENS_A:-32}; tb=${RACE_TOKENS_B:-16}; tc=${RACE_TOKENS_C:-8}
          tests=${RACE_TESTS_110M:-a b c}; preset=110m ;;
    1b)   hf=bench/models/llama32-1b-bf16; lo=bench/models/lora-llama32-1b-r16-all; seed=116
          ta=${RACE_TOKENS_A_1B:-8}; tb=${RACE_TOKENS_B_1B:-4}; tc=${RACE_TOKENS_C_1B:-4}
          tests=${RACE_TESTS_1B:-a b}; preset=1b ;;
    q05b) hf=bench/models/llama-q05b-bf16; lo=bench/models/lora-q05b-r16-all; seed=216
          ta=${RACE_TOKENS_A_Q05B:-16}; tb=${RACE_TOKENS_B_Q05B:-8}; tc=${RACE_TOKENS_C_Q05B:-4}
          tests=${RACE_TESTS_Q05B:-a b}; preset=q05b ;;
    *) echo "race: unknown model $m" >&2; exit 2 ;;
    esac
    gen_model "$hf" "$preset"
    nad=0
    if [[ " $tests " == *" c "* ]]; then
        # llama-server started with 32 LoRAs (--lora-init-without-apply) is ~10x slower on requests
        # that name none (measured: 110M Q4_K_M a 17 tok/s vs 241): a and b would race a
        # handicapped peer. c runs on its own.
        if [[ " $tests " == *" a "* || " $tests " == *" b "* ]]; then
            echo "race: run c on its own (RACE_TESTS_110M=c / RACE_TESTS_1B=c): llama-server with the 32 LoRAs loaded is not the a/b peer" >&2
            exit 2
        fi
        gen_loras "$lo" "$hf" "$seed"; nad=32
    fi
    if [ $nad = 32 ]; then conv=$(bench/peers/convert.sh "$hf" "$lo"); else conv=$(bench/peers/convert.sh "$hf"); fi
    gguf=$(echo "$conv" | head -1); lgguf=$(echo "$conv" | sed -n 2p)
    name=$(basename "$hf")
    pmodel=$hf # what peftd loads (and bench_decode measures)
    if [ -n "$qtype" ]; then
        q=${gguf%.gguf}-$QUANT.gguf
        if [ ! -f "$q" ]; then
            echo "race: llama-quantize $gguf -> $q ($qtype)" >&2
            nice "$BIN/llama-quantize" "$gguf" "$q.tmp" "$qtype" "$THREADS" >"$TMP/$name-quantize.log" 2>&1 ||
                { echo "race: llama-quantize failed (see $TMP/$name-quantize.log)" >&2; exit 1; }
            mv "$q.tmp" "$q"
        fi
        gguf=$q; pmodel=$q; name=$name-$QUANT
    fi

    bd() { $PB/bench/bench_decode --model "$pmodel" --prompt "${RACE_PROMPT_LEN:-8}" --tokens "$ta" --rounds 2 \
        --threads "$THREADS" --target 0 ${NO_MMAP:+--no-mmap 1} --kv-dtype "${RACE_KV_DTYPE:-f32}" \
        --out "$TMP/$name-decode-$1.json" >/dev/null; }
    echo "race: $name: bench_decode (roofline) before" >&2
    bd before
    tests_json=$(printf '"%s",' $tests); tests_json="[${tests_json%,}]"
    cfg=$(printf '{"name":"%s","threads":%d,"rounds":%d,"n_adapters":%d,"tokens_a":%d,"tokens_b":%d,"tokens_c":%d,"tests":%s,"peftd":"%s/peftd","llama_bin":"%s","model_peftd":"%s","model_gguf":"%s","lora_hf":"%s","lora_gguf":"%s","peftd_port":18601,"llama_port":18602,"peftd_url":"http://127.0.0.1:18601","llama_url":"http://127.0.0.1:18602","llama_bench":true,"llama_t1":%s,"no_mmap":%s,"keep_logs":"%s","partial":"%s","prompt_len":%d,"kv_dtype":"%s"}' \
        "$name" "$THREADS" "$ROUNDS" "$nad" "$ta" "$tb" "$tc" "$tests_json" "$PB" "$BIN" "$pmodel" "$gguf" "$lo" "$lgguf" "${RACE_LLAMA_T1:-true}" "$([ -n "$NO_MMAP" ] && echo true || echo false)" "$TMP" "$TMP/$name-partial.json" "${RACE_PROMPT_LEN:-8}" "${RACE_KV_DTYPE:-f32}")
    python3 bench/peers/race.py "$cfg" >"$TMP/$name-race.json"
    echo "race: $name: bench_decode (roofline) after" >&2
    bd after
    echo "race: $name: llama-batched-bench (npp 8, ntg $tb, npl 1,32)" >&2
    "$BIN/llama-batched-bench" -m "$gguf" -t "$THREADS" -tb "$THREADS" -c $((32 * (8 + tb) + 64)) \
        -b 2048 -ub 512 -npp 8 -ntg "$tb" -npl 1,32 --output-format jsonl \
        >"$TMP/$name-batched.jsonl" 2>"$TMP/$name-batched.log" || echo "race: batched-bench failed" >&2
    parts+=("$name")
done

PEFTD_BUILD="$PB MARCH=$([ "$PB" = build ] && echo native || echo x86-64-v3) PEFTD_CPU_QPATH=${PEFTD_CPU_QPATH:-auto}" \
    python3 bench/peers/summarize.py "$TMP" "$INFO" "$THREADS" "${parts[@]}" >"$OUT"
echo "race: wrote $OUT" >&2
