#!/usr/bin/env bash
# tests/gpu/run.sh RESULTS_DIR — the GPU checks of issue 6, in one go (<= 8 minutes on
# one H200): build with nvcc, the op/e2e parity tests (CUDA vs the CPU reference; under
# compute-sanitizer memcheck when it exists), the GPU benchmark on a random-weight 1B
# Llama (bf16), and the Hugging Face transformers+peft baseline. Writes everything, and
# summary.txt, into RESULTS_DIR. Exit status: 0 when every step that ran passed.
#
# Steps and their logs:
#   build.log       make all tests-bin + bench binaries (CUDA backend must be built)
#   parity.log      build/tests/test_backend_parity (must report passes, not skips)
#   memcheck.log    the same under compute-sanitizer --tool memcheck (op tests only)
#   bw.json         device copy bandwidth (bench/bench_gpu)
#   bench64.json    bench_adapters --backend cuda, 64 seqs: a = base, c = 64 distinct
#                   rank-16 all-linear LoRAs (target c/a >= 0.9)
#   bench1.json     the same with 1 seq: batch-1 decode step vs the roofline
#                   (weight bytes / read bandwidth; target >= 60%)
#   hf.json         tests/gpu/hf_baseline.py: transformers+peft mixed batch (adapter_names)
# Knobs: GPU_BUILD (default build-gpu), GPU_TOKENS (default 32), SKIP_HF=1, SKIP_MEMCHECK=1.
set -uo pipefail
RES=${1:?usage: tests/gpu/run.sh RESULTS_DIR}
mkdir -p "$RES"
RES=$(cd "$RES" && pwd)
cd "$(dirname "$0")/../.."
BUILD=${GPU_BUILD:-build-gpu}
PYTHON=${PYTHON:-python3}
TOKENS=${GPU_TOKENS:-32}
SUM="$RES/summary.txt"
: >"$SUM"
status=0
t0=$(date +%s)
say() { echo "$*" | tee -a "$SUM"; }
elapsed() { echo "$(( $(date +%s) - t0 ))s"; }

say "== peftd GPU run $(date -u +%FT%TZ) on $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
export PATH=$PATH:/usr/local/cuda/bin

# 1. build
if ! make -j"$(nproc)" CUDA=1 BUILD="$BUILD" all tests-bin "$BUILD/bench/bench_adapters" "$BUILD/bench/bench_gpu" \
        >"$RES/build.log" 2>&1; then
    say "build: FAILED (see build.log)"; exit 1
fi
grep -q "CPU + CUDA" "$RES/build.log" || { say "build: the CUDA backend was not built (nvcc missing?)"; exit 1; }
say "build: ok ($(elapsed))"

# 2. parity (op tests + end-to-end greedy)
timeout 180 "$BUILD/tests/test_backend_parity" >"$RES/parity.log" 2>&1
line=$(grep -E 'test_backend_parity: [0-9]+ passed' "$RES/parity.log" | tail -1)
say "parity: ${line:-no summary (crashed?)} ($(elapsed))"
if ! echo "$line" | grep -qE ' 0 failed, 0 skipped'; then status=1; fi

# 3. compute-sanitizer memcheck on the op tests
CS=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
if [ -z "${SKIP_MEMCHECK:-}" ] && [ -n "$CS" ]; then
    # The harness forks each test; --target-processes all follows the children.
    timeout 240 "$CS" --tool memcheck --target-processes all --error-exitcode 99 \
        "$BUILD/tests/test_backend_parity" get_rows_parity matmul_parity rmsnorm_parity rope_parity \
        swiglu_add_parity kv_store_attention_parity sgmv_lora_parity seg_scale_parity >"$RES/memcheck.log" 2>&1
    rc=$?
    errs=$(grep -cE '^========= (Invalid|Program hit|.*error)' "$RES/memcheck.log" || true)
    say "memcheck: exit $rc, $errs error lines ($(elapsed))"
    [ "$rc" -eq 0 ] && [ "$errs" -eq 0 ] || status=1
else
    say "memcheck: skipped (no compute-sanitizer)"
fi

# 4. models: random 1B Llama (bf16) + 64 rank-16 all-linear LoRAs (cached in bench/models)
M=bench/models/llama-1b-bf16
A=bench/models/lora-1b-r16-all
if [ ! -f "$M/config.json" ]; then
    "$PYTHON" clients/gen_random_llama.py --preset 1b --dtype bf16 --out "$M" >"$RES/gen.log" 2>&1 ||
        { say "model generation FAILED (gen.log)"; exit 1; }
fi
if [ ! -d "$A" ] || [ "$(ls "$A" | wc -l)" -lt 64 ]; then
    "$PYTHON" clients/gen_random_lora.py --base "$M" --out "$A" --count 64 --rank 16 --alpha 32 \
        --targets all-linear --dtype bf16 >>"$RES/gen.log" 2>&1 || { say "adapter generation FAILED"; exit 1; }
fi
say "models: ready ($(elapsed))"

# 5. benchmark
"$BUILD/bench/bench_gpu" >"$RES/bw.json" 2>>"$RES/bench.log" || { say "bench_gpu FAILED"; status=1; }
timeout 240 "$BUILD/bench/bench_adapters" --backend cuda --model "$M" --shape "r16all:$A" --seqs 64 --prompt 8 \
    --tokens "$TOKENS" --tokens-d 8 --rounds 1 --out "$RES/bench64.json" >>"$RES/bench.log" 2>&1 ||
    { say "bench_adapters (64 seqs) FAILED (bench.log)"; status=1; }
timeout 120 "$BUILD/bench/bench_adapters" --backend cuda --model "$M" --shape "r16all:$A" --seqs 1 --prompt 8 \
    --tokens "$TOKENS" --tokens-d 8 --rounds 1 --out "$RES/bench1.json" >>"$RES/bench.log" 2>&1 ||
    { say "bench_adapters (1 seq) FAILED (bench.log)"; status=1; }
"$PYTHON" tests/gpu/summarize.py "$RES" "$M" | tee -a "$SUM"
say "bench: done ($(elapsed))"

# 6. Hugging Face baseline (issue line 5)
if [ -z "${SKIP_HF:-}" ]; then
    timeout 240 "$PYTHON" tests/gpu/hf_baseline.py --model "$M" --adapters "$A" --batch 64 --tokens "$TOKENS" \
        --peftd-json "$RES/bench64.json" --out "$RES/hf.json" >"$RES/hf.log" 2>&1
    say "hf baseline: $(tail -1 "$RES/hf.log") ($(elapsed))"
fi
say "== total $(elapsed), status $status"
exit $status
