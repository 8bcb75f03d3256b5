#!/usr/bin/env bash
# tests/gpu/run.sh RESULTS_DIR — the GPU checks of issue 13 in one unattended go, within a time
# budget (GPU_BUDGET_S, default 470 s: the issue's 8 minutes less a margin; every step runs
# under `timeout` capped by what is left of it). Writes every log, the JSON figures and
# summary.txt into RESULTS_DIR. Exit status 0 when every step ran and passed.
#
# Steps (logs in RESULTS_DIR):
#   preflight       one line each: GPU visible (nvidia-smi), driver's CUDA version >= the
#                   toolkit's major (nvcc --version), python3 + numpy, compute-sanitizer, disk
#                   space; after the build, `ldd` of every binary (no "not found", libcudart in).
#                   Nothing is installed: the device machine has no network (no pip here).
#   build.log       make all + the binaries below with CUDA=1 (models are generated meanwhile)
#   gen.log         random 1B Llama (bf16) + tokenizer (--tokenizer-from models/stories260K, the
#                   ids the benchmark prompts use) + 64 rank-16 all-linear and 64 rank-8 q,v
#                   LoRAs; then `peftd generate` proves the model and its tokenizer load
#   parity.log      test_backend_parity: every op vs the CPU + greedy tokens on the default
#                   model with each fixture adapter (must be all passes, no skips)
#   parity_graphs.log  the greedy parity with PEFTD_CUDA_GRAPHS=1 (decode steps captured/replayed)
#   pool.log        test_gpu_pool_graph: the device slot pool (copy stream, events; fixture
#                   adapters placed in slots = own allocation, greedy) and graph replay = eager
#   bw.json         bench_gpu: measured READ bandwidth (read-only reduction over 1 GiB)
#   bench64.json    bench_adapters, 64 seqs, shapes r16all and r8qv (a base, b one adapter,
#                   c 64 distinct adapters, d one adapter at a time)
#   bench1.json     the same at 1 seq: the batch-1 decode step for the roofline
#   bench<seqs>-graphs.json, bench1-graphs.json: both again with PEFTD_CUDA_GRAPHS=1 (CUDA only)
#   bench<seqs>-ops.json, bench1-ops.json: the per-op split of a step (--sync-ops 1)
#   bench<n>-q8_0.json, bench<n>-q4_k.json: the same model with its projections converted at
#                   load (--weights), batch 1 and <seqs>
#   ncu.csv         Nsight Compute's kernel durations over batch-1 decode steps (CUDA only);
#                   ncu<seqs>.csv the same over decode steps of scenario c at batch <seqs>
#   memcheck.log    compute-sanitizer memcheck on the op tests; racecheck.log likewise
#   hf.json         tests/gpu/hf_baseline.py: transformers + peft mixed batch (adapter_names)
#   pool_churn.json bench/pool_churn.py: N adapters through store.slots resident (acceptance 3d)
#   summary.txt     every line above + tests/gpu/summarize.py's acceptance 3/4 lines
#
# GPU_DRYRUN=1: the same script against the CPU build (the parity harness's self-test, the
# CPU backend, a tiny model, stand-ins for nvidia-smi/nvcc/compute-sanitizer that print what
# the real tools print), so its logic is tested without a GPU (tests/gpu/test_dryrun.sh).
# Knobs: GPU_BUILD (build-gpu; dry run: build), GPU_TOKENS (32), GPU_MODELS (bench/models),
# GPU_BUDGET_S (470), SKIP_HF=1 / SKIP_POOL=1 (reruns that save device time: the step is said
# NOT RUN and the run's status is 1, it shows less), PYTHON (python3), GPU_PREBUILT=1 (binaries already in GPU_BUILD:
# no make; how the device tool runs it, tests/gpu/device_run.sh).
set -uo pipefail
RES=${1:?usage: tests/gpu/run.sh RESULTS_DIR}
mkdir -p "$RES"
RES=$(cd "$RES" && pwd)
cd "$(dirname "$0")/../.." || exit 1
DRY=${GPU_DRYRUN:-}
BUILD_PATH=$PATH # make runs with this PATH: never the dry run's stand-ins (the stub nvcc)
PYTHON=${PYTHON:-python3}
SUM="$RES/summary.txt"
: >"$SUM"
status=0
t0=$(date +%s)
deadline=$((t0 + ${GPU_BUDGET_S:-470}))
say() { echo "$*" | tee -a "$SUM"; }
fail() { say "$*"; status=1; }
elapsed() { echo "$(($(date +%s) - t0))s"; }
# The timeout for a step: its own cap, or what is left of the budget when that is less.
cap() {
    local left=$((deadline - $(date +%s)))
    [ "$left" -lt "$1" ] && echo $((left > 1 ? left : 1)) || echo "$1"
}
# True when at least $1 seconds of the budget are left; otherwise says the step was cut.
has_time() {
    [ $((deadline - $(date +%s))) -ge "$1" ] && return 0
    fail "$2: NOT RUN (time budget of ${GPU_BUDGET_S:-470}s spent)"
    return 1
}

if [ -n "$DRY" ]; then
    # The dry run: the CPU build as `make test` builds it, the CPU backend, a tiny model, and
    # stand-ins for the NVIDIA tools (tests/gpu/stubs) that print what the real ones print.
    BUILD=${GPU_BUILD:-build}
    MAKE_FLAGS=()
    BACKEND=cpu
    MODELS=${GPU_MODELS:-$RES/models}
    M=$MODELS/llama-tiny-bf16
    GEN_MODEL=(--hidden 64 --layers 2 --heads 4 --kv-heads 2 --intermediate 128 --vocab 512 --max-pos 256)
    SEQS=4 TOKENS=${GPU_TOKENS:-8} TOKENS_D=4 BW_MB=256 HF_DEVICE=cpu
    POOL=(--adapters 40 --slots 16 --hot 8 --clients 8 --duration 3 --max-tokens 8)
    export PATH="$PWD/tests/gpu/stubs:$PATH" PEFTD_PARITY_SELFTEST=1
    say "== peftd GPU run, DRY RUN on the CPU (GPU_DRYRUN=1) $(date -u +%FT%TZ)"
else
    BUILD=${GPU_BUILD:-build-gpu}
    MAKE_FLAGS=(CUDA=1)
    BACKEND=cuda
    MODELS=${GPU_MODELS:-bench/models}
    M=$MODELS/llama-1b-bf16
    GEN_MODEL=(--preset 1b)
    SEQS=64 TOKENS=${GPU_TOKENS:-32} TOKENS_D=8 BW_MB=1024 HF_DEVICE=cuda
    POOL=(--adapters 1000 --slots 128 --hot 64 --clients 64 --duration 20 --max-tokens 32)
    export PATH="$PATH:/usr/local/cuda/bin"
    BUILD_PATH=$PATH
    say "== peftd GPU run $(date -u +%FT%TZ)"
fi
A16=$MODELS/$(basename "$M")-lora-r16-all
A8=$MODELS/$(basename "$M")-lora-r8-qv

# ---- 1. preflight (nothing is installed: no network on the device machine) ----
pre_ok=1
# nvidia-smi prints its complaints ("No devices were found", "couldn't communicate with the
# driver") on stdout: its exit status decides.
if ! gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1) || [ -z "$gpu" ]; then
    say "preflight: FAILED: nvidia-smi lists no GPU (driver not loaded or no device)"; pre_ok=0
else
    say "preflight: gpu $(echo "$gpu" | head -1)"
fi
drv_cuda=$(nvidia-smi 2>/dev/null | sed -nE 's/.*CUDA Version: *([0-9]+)\.([0-9]+).*/\1.\2/p' | head -1)
tk_cuda=$(nvcc --version 2>/dev/null | sed -nE 's/.*release ([0-9]+)\.([0-9]+).*/\1.\2/p' | head -1)
if [ -z "$tk_cuda" ]; then
    say "preflight: FAILED: nvcc not found (PATH, /usr/local/cuda/bin): cannot build the CUDA backend"; pre_ok=0
elif [ -z "$drv_cuda" ]; then
    say "preflight: FAILED: nvidia-smi reports no driver CUDA version (toolkit $tk_cuda)"; pre_ok=0
elif [ "${drv_cuda%.*}" -lt "${tk_cuda%.*}" ]; then
    say "preflight: FAILED: driver supports CUDA $drv_cuda, toolkit is $tk_cuda: the driver is too old for this toolkit's major version"
    pre_ok=0
elif [ "${drv_cuda%.*}" -eq "${tk_cuda%.*}" ] && [ "${drv_cuda#*.}" -lt "${tk_cuda#*.}" ]; then
    # CUDA minor-version compatibility: same major runs on an older-minor driver when no PTX
    # has to be JIT-compiled; the build carries sm_80/sm_90 SASS for A100/H100/H200.
    say "preflight: driver CUDA $drv_cuda < toolkit $tk_cuda (same major: minor-version compatibility, SASS sm_80/sm_90)"
else
    say "preflight: driver CUDA $drv_cuda >= toolkit $tk_cuda"
fi
if ! command -v "$PYTHON" >/dev/null; then
    say "preflight: FAILED: $PYTHON not found (the model generators need it)"; pre_ok=0
elif ! "$PYTHON" -c "import numpy" 2>/dev/null; then
    say "preflight: FAILED: numpy missing for $PYTHON (clients/gen_random_*.py need it; no pip here)"; pre_ok=0
else
    say "preflight: $PYTHON with numpy $("$PYTHON" -c 'import numpy; print(numpy.__version__)')"
fi
CS=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
[ -n "$CS" ] || fail "preflight: FAILED: compute-sanitizer not found: memcheck/racecheck cannot run"
mkdir -p "$MODELS"
need_mb=$([ -n "$DRY" ] && echo 50 || echo 6000)
have_mb=$(df -Pm "$MODELS" | awk 'NR == 2 {print $4}')
if [ ! -f "$M/config.json" ] && [ "${have_mb:-0}" -lt "$need_mb" ]; then
    say "preflight: FAILED: $MODELS has ${have_mb} MB free, the models need ${need_mb} MB"; pre_ok=0
fi
[ "$pre_ok" = 1 ] || { say "== preflight failed: nothing run ($(elapsed))"; exit 1; }

# ---- 2. models, in the background while the build runs ----
gen_models() {
    # A cached model without its tokenizer (older runs of this script) is regenerated.
    if [ ! -f "$M/config.json" ] || [ ! -f "$M/tokenizer.json" ]; then
        rm -rf "$M" "$M.tmp"
        "$PYTHON" clients/gen_random_llama.py "${GEN_MODEL[@]}" --dtype bf16 --seed 1 \
            --tokenizer-from models/stories260K --out "$M.tmp" && mv "$M.tmp" "$M" || return 1
        rm -rf "$A16" "$A8"
    fi
    if [ ! -d "$A16" ] || [ "$(ls "$A16" | wc -l)" -lt "$SEQS" ]; then
        "$PYTHON" clients/gen_random_lora.py --base "$M" --out "$A16" --count "$SEQS" --rank 16 --alpha 32 \
            --targets all-linear --dtype bf16 || return 1
    fi
    if [ ! -d "$A8" ] || [ "$(ls "$A8" | wc -l)" -lt "$SEQS" ]; then
        "$PYTHON" clients/gen_random_lora.py --base "$M" --out "$A8" --count "$SEQS" --rank 8 --alpha 16 \
            --targets q_proj,v_proj --dtype bf16 --seed 2 || return 1
    fi
}
gen_models >"$RES/gen.log" 2>&1 &
gen_pid=$!

# ---- 3. build ----
BINS=("$BUILD/peftd" "$BUILD/tests/test_backend_parity" "$BUILD/bench/bench_adapters" "$BUILD/bench/bench_gpu"
      "$BUILD/tests/test_gpu_pool_graph")
if [ -n "${GPU_PREBUILT:-}" ]; then
    # Built elsewhere (tests/gpu/pack.sh here, unpacked by tests/gpu/device_run.sh there): the
    # lent GPU machine has no -dev packages to build peftd with, so nothing is made here.
    rc=0
    for b in "${BINS[@]}"; do [ -x "$b" ] || { echo "missing prebuilt binary $b" >>"$RES/build.log"; rc=1; }; done
    [ "$rc" = 0 ] && { echo "prebuilt binaries in $BUILD (GPU_PREBUILT=1)"; cat "$BUILD/BUILD_INFO" 2>/dev/null; } >>"$RES/build.log"
else
    PATH=$BUILD_PATH timeout "$(cap 300)" make -j"$(nproc)" "${MAKE_FLAGS[@]}" BUILD="$BUILD" all "${BINS[@]:1}" >"$RES/build.log" 2>&1
    rc=$?
fi
if [ "$rc" -ne 0 ]; then
    say "build: FAILED (exit $rc$([ "$rc" -eq 124 ] && echo ': timed out'); see build.log)"
    wait "$gen_pid"; say "== total $(elapsed), status 1"; exit 1
fi
if [ -z "$DRY" ] && ! grep -q "CPU + CUDA" "$RES/build.log"; then
    say "build: FAILED: the CUDA backend was not built (build.log)"; exit 1
fi
say "build: ok, $(grep -m1 '^peftd: ' "$RES/build.log" | sed 's/^peftd: //') ($(elapsed))"
for b in "${BINS[@]}"; do
    missing=$(ldd "$b" 2>&1 | grep 'not found' | awk '{print $1}' | tr '\n' ' ')
    [ -z "$missing" ] || { fail "preflight: FAILED: ldd $b: not found: $missing"; continue; }
    if [ -z "$DRY" ] && ! ldd "$b" | grep libcudart >/dev/null; then fail "preflight: FAILED: $b does not link libcudart"; fi
done
say "preflight: ldd of ${#BINS[@]} binaries checked"

# A test binary's run: LABEL LOG CAP WANT (a regex of its passed count) BINARY [ARGS...];
# env assignments go before the call (VAR=x run_test ...). Passes only with 0 failed, 0 skipped.
run_test() {
    local label=$1 log=$2 limit=$3 want=$4 bin=$5 line
    shift 5
    timeout "$(cap "$limit")" "$bin" "$@" >"$RES/$log" 2>&1
    line=$(grep -E "$(basename "$bin"): [0-9]+ passed" "$RES/$log" | tail -1)
    say "$label: ${line:-no summary line (crashed or timed out)} ($(elapsed))"
    echo "$line" | grep -qE ": $want passed, 0 failed, 0 skipped\$" || status=1
}

# ---- 4. parity: every op + end-to-end greedy tokens ----
if has_time 20 "parity"; then
    run_test parity parity.log 120 '[1-9][0-9]*' "$BUILD/tests/test_backend_parity"
fi

# ---- 4a. the greedy parity again with decode steps as CUDA graphs (PEFTD_CUDA_GRAPHS=1) ----
if has_time 20 "parity greedy (graphs on)"; then
    PEFTD_CUDA_GRAPHS=1 run_test "parity greedy, PEFTD_CUDA_GRAPHS=1" parity_graphs.log 90 1 \
        "$BUILD/tests/test_backend_parity" greedy_tokens_cpu_equal_cuda
    # how many steps really replayed (a failed capture falls back to eager steps silently)
    say "  $(grep -ohE 'decode graphs: [0-9]+ captures, [0-9]+ replays, .*' "$RES/parity_graphs.log" | sort | uniq -c |
             tr -s ' ' | paste -sd';' - | sed 's/^ *//')"
fi

# ---- 4b. device slot pool + decode-graph capture/replay (CUDA only) ----
# pool.log: 40 versions through a 4-slot pool on the real copy stream/events; every fixture
# adapter placed into a pool slot decodes the same 16 greedy tokens as its own allocation;
# an op sequence captured as a graph replays bit-identical to eager steps.
if [ -n "$DRY" ]; then
    say "pool/graph: not run in the dry run (CUDA-only test; host logic: test_slot_pool, test_decode_graph)"
elif has_time 20 "pool/graph"; then
    run_test pool/graph pool.log 60 3 "$BUILD/tests/test_gpu_pool_graph"
fi

# ---- 5. models ready? (generated meanwhile) ----
if ! wait "$gen_pid"; then
    say "models: generation FAILED (gen.log)"; say "== total $(elapsed), status 1"; exit 1
fi
if timeout "$(cap 90)" "$BUILD/peftd" generate --model "$M" --prompt "Once upon a time" --max-tokens 2 \
        --temperature 0 >>"$RES/gen.log" 2>&1; then
    say "models: ready; peftd generate loads $(basename "$M") with its tokenizer ($(elapsed))"
else
    fail "models: FAILED: peftd generate cannot load $M (gen.log)"
fi

# ---- 6. benchmarks ----
if has_time 15 "read bandwidth"; then
    timeout "$(cap 60)" "$BUILD/bench/bench_gpu" --backend "$BACKEND" --mb "$BW_MB" >"$RES/bw.json" 2>>"$RES/bench.log" ||
        fail "bench_gpu: FAILED (bench.log)"
fi
if has_time 30 "bench_adapters (batch $SEQS)"; then
    timeout "$(cap 150)" "$BUILD/bench/bench_adapters" --backend "$BACKEND" --model "$M" --shape "r16all:$A16" \
        --shape "r8qv:$A8:0.9" --seqs "$SEQS" --prompt 8 --tokens "$TOKENS" --tokens-d "$TOKENS_D" --rounds 1 \
        --out "$RES/bench$SEQS.json" >>"$RES/bench.log" 2>&1 || fail "bench_adapters (batch $SEQS): FAILED (bench.log)"
fi
if has_time 15 "bench_adapters (batch 1)"; then
    timeout "$(cap 60)" "$BUILD/bench/bench_adapters" --backend "$BACKEND" --model "$M" --shape "r16all:$A16" \
        --seqs 1 --prompt 8 --tokens "$TOKENS" --tokens-d "$TOKENS_D" --rounds 1 --out "$RES/bench1.json" \
        >>"$RES/bench.log" 2>&1 || fail "bench_adapters (batch 1): FAILED (bench.log)"
fi
# acceptance 3d: N adapters (rank 8 on q, v; generated into $MODELS on the first run) uploaded to
# a daemon with store.slots resident, peftd-loadgen over HOT of them, then over all N
if [ -n "${SKIP_POOL:-}" ]; then
    fail "pool churn: NOT RUN (SKIP_POOL=1): this run does not show acceptance 3d"
elif has_time 90 "pool churn"; then
    PEFTD_BIN="$BUILD/peftd" timeout "$(cap 240)" "$PYTHON" bench/pool_churn.py --model "$M" "${POOL[@]}" \
        --adapters-dir "$MODELS/$(basename "$M")-pool-r8-qv" --out "$RES/pool_churn.json" >"$RES/pool_churn.log" 2>&1 ||
        fail "pool churn: FAILED (pool_churn.log)"
fi
say "bench: done ($(elapsed))"

# ---- 7. compute-sanitizer memcheck + racecheck on the op tests ----
OPS=$(grep -oE '^TEST\([a-z0-9_]+\)' tests/unit/test_backend_parity.c | sed -E 's/TEST\((.*)\)/\1/' |
      grep -v '^greedy_tokens')
for tool in memcheck racecheck; do
    [ -n "$CS" ] || break
    has_time 20 "$tool" || continue
    # The harness forks each test: --target-processes all follows the children; every
    # process prints its own summary, which tests/gpu/sanitizer_summary.py adds up (hazards
    # inside cuBLAS's own kernels apart: see there). The verdict is the summary's: the
    # tool's exit status is 99 whenever it printed any record, cuBLAS's included.
    # shellcheck disable=SC2086
    timeout "$(cap 120)" "$CS" --tool "$tool" --target-processes all --error-exitcode 99 \
        "$BUILD/tests/test_backend_parity" $OPS >"$RES/$tool.log" 2>&1
    rc=$?
    line=$("$PYTHON" tests/gpu/sanitizer_summary.py "$RES/$tool.log")
    src=$?
    say "$tool: exit $rc, $line ($(elapsed))"
    [ "$src" -eq 0 ] && { [ "$rc" -eq 0 ] || [ "$rc" -eq 99 ]; } || status=1
done

# ---- 8. Hugging Face transformers + peft baseline (acceptance 4) ----
if [ -n "${SKIP_HF:-}" ]; then
    echo '{"ran": false, "reason": "SKIP_HF=1 was set"}' >"$RES/hf.json"
    fail "hf baseline: NOT RUN (SKIP_HF=1): this run does not show acceptance 4"
elif has_time 30 "hf baseline"; then
    timeout "$(cap 150)" "$PYTHON" tests/gpu/hf_baseline.py --device "$HF_DEVICE" --model "$M" --adapters "$A16" \
        --batch "$SEQS" --tokens "$TOKENS" --peftd-json "$RES/bench$SEQS.json" --out "$RES/hf.json" >"$RES/hf.log" 2>&1
    say "hf baseline: exit $?: $(tail -1 "$RES/hf.log") ($(elapsed))"
fi

# ---- 8b. diagnostics for the next round (not acceptance lines: last, so a short budget cuts
# these first, and a cut one is said, not failed) ----
diag_time() {
    [ $((deadline - $(date +%s))) -ge "$1" ] && return 0
    say "$2: not run (time budget spent; a diagnostic, not an acceptance line)"
    return 1
}
# the same two runs with decode steps as CUDA graphs (PEFTD_CUDA_GRAPHS=1; off by default until
# these numbers and the greedy parity above say otherwise): bench<seqs>-graphs.json, bench1-graphs.json
if [ -z "$DRY" ] && diag_time 45 "bench_adapters with graphs"; then
    PEFTD_CUDA_GRAPHS=1 timeout "$(cap 150)" "$BUILD/bench/bench_adapters" --backend "$BACKEND" --model "$M" \
        --shape "r16all:$A16" --shape "r8qv:$A8:0.9" --seqs "$SEQS" --prompt 8 --tokens "$TOKENS" \
        --tokens-d "$TOKENS_D" --rounds 1 --out "$RES/bench$SEQS-graphs.json" >>"$RES/bench_graphs.log" 2>&1 &&
    PEFTD_CUDA_GRAPHS=1 timeout "$(cap 60)" "$BUILD/bench/bench_adapters" --backend "$BACKEND" --model "$M" \
        --shape "r16all:$A16" --seqs 1 --prompt 8 --tokens "$TOKENS" --tokens-d "$TOKENS_D" --rounds 1 \
        --out "$RES/bench1-graphs.json" >>"$RES/bench_graphs.log" 2>&1 ||
        fail "bench_adapters with graphs: FAILED (bench_graphs.log)"
    say "  $(grep -ohE 'decode graphs: [0-9]+ captures, [0-9]+ replays, [0-9]+ eager' "$RES/bench_graphs.log" |
             sort | uniq -c | tr -s ' ' | paste -sd';' - | sed 's/^ *//')"
fi
# where a step's time goes: every op waited for and timed, less an empty wait (bench_adapters
# --sync-ops 1; a profiling run: its tok/s are not the backend's): bench<seqs>-ops.json and
# bench1-ops.json, one line each in summary.txt (tests/gpu/summarize.py --ops)
if diag_time 40 "op split"; then
    for n in "$SEQS" 1; do
        timeout "$(cap 60)" "$BUILD/bench/bench_adapters" --backend "$BACKEND" --model "$M" --shape "r16all:$A16" \
            --seqs "$n" --prompt 8 --tokens 8 --tokens-d 3 --rounds 1 --sync-ops 1 \
            --out "$RES/bench$n-ops.json" >>"$RES/bench_ops.log" 2>&1 || fail "op split (batch $n): FAILED (bench_ops.log)"
    done
fi
# the quantized bases on this backend (issue 12's CUDA line): the layer projections converted at
# load to q8_0 and to q4_k (bench_adapters --weights; the dequantizing matmuls the parity step
# checked) at batch 1 and $SEQS with $SEQS distinct r16 LoRAs: bench<n>-<weights>.json, one line
# each in summary.txt
if diag_time 60 "quantized weights"; then
    for w in q8_0 q4_k; do
        for n in 1 "$SEQS"; do
            if timeout "$(cap 60)" "$BUILD/bench/bench_adapters" --backend "$BACKEND" --model "$M" --weights "$w" \
                --shape "r16all:$A16" --seqs "$n" --prompt 8 --tokens "$TOKENS" --tokens-d "$TOKENS_D" --rounds 1 \
                --out "$RES/bench$n-$w.json" >"$RES/bench_quant-$w-$n.log" 2>&1; then
                say "  weights $w, batch $n: $(tail -1 "$RES/bench_quant-$w-$n.log" | sed 's/^bench: //')"
            else
                fail "quantized weights ($w, batch $n): FAILED (bench_quant-$w-$n.log)"
            fi
        done
    done
fi
# which kernels a batch-1 decode step spends its GPU time in: Nsight Compute's per-kernel
# durations over decode steps of `peftd generate` with one r16 all-linear LoRA (its SGMV kernels
# too; model load and the prompt's prefill are launches skipped): ncu.csv, "ncu" lines in
# summary.txt (tests/gpu/ncu_summary.py)
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null || true)
if [ -n "$DRY" ]; then
    say "ncu: not run in the dry run (CUDA only; tests/gpu/ncu_summary.py is tested on a fixed CSV)"
elif [ -z "$NCU" ]; then
    say "ncu: not found: no per-kernel split"
elif diag_time 60 "ncu"; then
    timeout "$(cap 90)" "$NCU" --clock-control none --csv --print-units base --metrics gpu__time_duration.sum \
        --launch-skip 1000 --launch-count 1200 "$BUILD/peftd" generate --model "$M" \
        --adapter "$A16/$(ls "$A16" | head -1)" --prompt "Once upon a time" --max-tokens 12 --temperature 0 \
        >"$RES/ncu.csv" 2>"$RES/ncu.log"
    LAYERS=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["num_hidden_layers"])' "$M/config.json")
    "$PYTHON" tests/gpu/ncu_summary.py "$RES/ncu.csv" --layers "${LAYERS:-0}" | tee -a "$SUM"
    # the same at batch $SEQS with $SEQS distinct r16 all-linear LoRAs (acceptance 3c's step): its
    # kernel time per step beside the measured step says whether that step waits on the GPU or
    # on the host (ncu64.csv)
    if diag_time 60 "ncu at batch $SEQS"; then
        timeout "$(cap 90)" "$NCU" --clock-control none --csv --print-units base --metrics gpu__time_duration.sum \
            --launch-skip 1500 --launch-count 1400 "$BUILD/bench/bench_adapters" --backend "$BACKEND" --model "$M" \
            --shape "r16all:$A16" --seqs "$SEQS" --prompt 8 --tokens 8 --tokens-d 3 --rounds 1 --only c \
            >"$RES/ncu$SEQS.csv" 2>"$RES/ncu$SEQS.log"
        "$PYTHON" tests/gpu/ncu_summary.py "$RES/ncu$SEQS.csv" --label "ncu$SEQS" --layers "${LAYERS:-0}" | tee -a "$SUM"
    fi
fi

# ---- 9. the acceptance lines ----
"$PYTHON" tests/gpu/summarize.py "$RES" --seqs "$SEQS" | tee -a "$SUM"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
[ -f "$RES/bench$SEQS-graphs.json" ] && "$PYTHON" tests/gpu/summarize.py "$RES" --seqs "$SEQS" --tag=-graphs | tee -a "$SUM"
"$PYTHON" tests/gpu/summarize.py "$RES" --seqs "$SEQS" --ops | tee -a "$SUM"
say "== total $(elapsed), status $status"
exit $status
