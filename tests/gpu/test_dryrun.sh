#!/usr/bin/env bash
# shellcheck disable=SC2034  # out and rc are read by check()'s expressions, through eval
# tests/gpu/test_dryrun.sh — tests tests/gpu/run.sh's own logic on a machine without a GPU:
#   1. sanitizer_summary.py on compute-sanitizer logs (clean, errors, hazards, no summary);
#   2. the preflight refuses an old driver and a missing GPU (one clear line, nothing built);
#   3. the whole script in its CPU dry run (GPU_DRYRUN=1: CPU build, tiny model, stand-ins for
#      nvidia-smi/nvcc/compute-sanitizer) passes, with every acceptance line computed;
#   4. a sanitizer that reports errors fails the run (with GPU_PREBUILT=1: no make).
# Needs the CPU build (make all tests-bin) and python3 with numpy. Prints one line per check and
# "test_gpu_dryrun: P passed, F failed, 0 skipped" (tests/run_tests.sh adds it up).
set -u
cd "$(dirname "$0")/../.." || exit 1
PYTHON=${PYTHON:-python3}
BUILD=${BUILD:-build}
pass=0 fail=0
ok() { echo "  ok   $1"; pass=$((pass + 1)); }
bad() { echo "  FAIL $1"; fail=$((fail + 1)); }
check() { if eval "$2"; then ok "$1"; else bad "$1"; fi; }
TMP=$(mktemp -d /tmp/peftd-gpu-dryrun-XXXXXX)
trap 'rm -rf "$TMP"' EXIT

# ---- 1. the sanitizer log verdict ----
cs() { printf '%s\n' "$1" >"$TMP/cs.log"; out=$("$PYTHON" tests/gpu/sanitizer_summary.py "$TMP/cs.log"); rc=$?; }
T='test_backend_parity: 13 passed, 0 failed, 0 skipped'
cs "$(printf '========= COMPUTE-SANITIZER\n========= ERROR SUMMARY: 0 errors\n%s\n========= ERROR SUMMARY: 0 errors' "$T")"
check "memcheck clean: exit 0, '0 errors' is not an error" '[ $rc -eq 0 ] && [[ $out == "0 errors, 0 warnings in 2 process summaries"* ]]'
cs "$(printf '========= Invalid __global__ read of size 4 bytes\n========= ERROR SUMMARY: 1 error\n%s\n========= ERROR SUMMARY: 2 errors' "$T")"
check "memcheck errors are counted from the summaries' numbers (1 + 2)" '[ $rc -eq 1 ] && [[ $out == "3 errors,"* ]]'
cs "$(printf '%s\n========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)' "$T")"
check "racecheck clean: exit 0" '[ $rc -eq 0 ] && [[ $out == "0 errors, 0 warnings in 1 process"* ]]'
cs "$(printf '%s\n========= RACECHECK SUMMARY: 1 hazard displayed (0 errors, 1 warning)' "$T")"
check "a racecheck warning fails the run" '[ $rc -eq 1 ] && [[ $out == "0 errors, 1 warnings"* ]]'
V='========= Error: Race reported between Read access at nvjet_sm90_tss_64x8_64x16_2x4_h_bz_TNT+0xb00
=========     and Write access at nvjet_sm90_tss_64x8_64x16_2x4_h_bz_TNT+0x2840 [288 hazards]'
cs "$(printf '%s\n%s\n========= RACECHECK SUMMARY: 1 hazard displayed (1 error, 0 warnings)' "$V" "$T")"
check "racecheck: a record inside cuBLAS's own kernel (nvjet_*) is reported, not counted" \
    '[ $rc -eq 0 ] && [[ $out == "0 errors, 0 warnings in 1 process summaries (+1 vendor records"*nvjet_sm90_tss* ]]'
O='========= Error: Race reported between Write access at void k_expand<(kdtype)3>(const float *, int, ksgmv, int, float *, int *)+0x1a0
=========     and Read access at void k_expand<(kdtype)3>(const float *, int, ksgmv, int, float *, int *)+0x2c0 [4 hazards]'
cs "$(printf '%s\n%s\n%s\n========= RACECHECK SUMMARY: 2 hazards displayed (2 errors, 0 warnings)' "$V" "$O" "$T")"
check "racecheck: a record in peftd's own kernel still fails beside a cuBLAS one" '[ $rc -eq 1 ] && [[ $out == "1 errors,"* ]]'
cs "$T"
check "a log without a sanitizer summary fails (exit 2)" '[ $rc -eq 2 ]'
cs "$(printf 'test_backend_parity: 12 passed, 1 failed, 0 skipped\n========= ERROR SUMMARY: 0 errors')"
check "a failed test under a clean sanitizer fails the run" '[ $rc -eq 1 ]'

# ---- 1b. the per-kernel split from an Nsight Compute CSV ----
cat >"$TMP/ncu.csv" <<'CSV'
==PROF== Connected to process 1
"ID","Kernel Name","Metric Name","Metric Unit","Metric Value"
"0","void k_gemv<(kdtype)3, 1, true>(const float *, int, const void *, long, long, float *, int)","gpu__time_duration.sum","nsecond","12,345"
"1","void k_gemv<(kdtype)3, 1, true>(const float *, int, const void *, long, long, float *, int)","gpu__time_duration.sum","nsecond","7655"
"2","k_rmsnorm(const float *, const void *, int, int, float, float *, int *)","gpu__time_duration.sum","usecond","2.5"
"3","void k_attention<2>(kattn_args, int *)","gpu__time_duration.sum","nsecond","2500"
"4","void k_attention<2>(kattn_args, int *)","gpu__time_duration.sum","nsecond","2500"
CSV
out=$("$PYTHON" tests/gpu/ncu_summary.py "$TMP/ncu.csv"); rc=$?
check "ncu split: kernels grouped by name (templates cut), units read, largest first" \
    '[ $rc -eq 0 ] && [[ $(echo "$out" | head -1) == *"72.7%"*"20.0 us"*"2 launches"*"k_gemv" ]] && [[ $out == *"total 27.5 us"*"5 launches"* ]]'
out=$("$PYTHON" tests/gpu/ncu_summary.py "$TMP/ncu.csv" --label ncu64 --layers 1); rc=$?
check "ncu split: --layers gives the kernel time per step (attention launches / layers), lines labelled" \
    '[ $rc -eq 0 ] && [[ $out == *"ncu64 per decode step: 13.8 us of kernel time (2 steps"* ]] && [[ $(echo "$out" | head -1) == "  ncu64 "* ]]'
echo '==PROF== ERROR: nothing profiled' >"$TMP/ncu0.csv"
"$PYTHON" tests/gpu/ncu_summary.py "$TMP/ncu0.csv" >/dev/null; rc=$?
check "ncu split: a file without kernel rows fails (exit 2)" '[ $rc -eq 2 ]'

# ---- 2. preflight ----
STUB_DRIVER_CUDA=11.8 GPU_DRYRUN=1 GPU_MODELS="$TMP/models" bash tests/gpu/run.sh "$TMP/old" >/dev/null 2>&1
rc=$?
check "preflight: a driver older than the toolkit's major fails in one line, nothing built" \
    '[ $rc -eq 1 ] && grep -q "FAILED: driver supports CUDA 11.8, toolkit is 12.6" "$TMP/old/summary.txt" && [ ! -e "$TMP/old/build.log" ]'
STUB_NO_GPU=1 GPU_DRYRUN=1 GPU_MODELS="$TMP/models" bash tests/gpu/run.sh "$TMP/nogpu" >/dev/null 2>&1
rc=$?
check "preflight: no GPU fails in one line" '[ $rc -eq 1 ] && grep -q "nvidia-smi lists no GPU" "$TMP/nogpu/summary.txt"'
STUB_DRIVER_CUDA=12.2 GPU_DRYRUN=1 PYTHON=/nonexistent/python3 GPU_MODELS="$TMP/models" bash tests/gpu/run.sh "$TMP/nopy" >/dev/null 2>&1
rc=$?
check "preflight: a missing python fails in one line (and an older minor driver is accepted)" \
    '[ $rc -eq 1 ] && grep -q "FAILED: /nonexistent/python3 not found" "$TMP/nopy/summary.txt" && grep -q "minor-version compatibility" "$TMP/nopy/summary.txt"'

# ---- 3. the whole dry run ----
GPU_DRYRUN=1 GPU_BUILD="$BUILD" GPU_MODELS="$TMP/models" PYTHON="$PYTHON" bash tests/gpu/run.sh "$TMP/run" >"$TMP/run.out" 2>&1
rc=$?
S="$TMP/run/summary.txt"
sed 's/^/    | /' "$S"
check "dry run exits 0" '[ $rc -eq 0 ]'
check "parity self-test: all passed, none skipped" 'grep -qE "^parity: test_backend_parity: [1-9][0-9]* passed, 0 failed, 0 skipped" "$S"'
check "the generated model loads with its tokenizer (peftd generate)" 'grep -q "^models: ready; peftd generate loads" "$S"'
check "memcheck and racecheck lines from the summaries' numbers" \
    'grep -q "^memcheck: exit 0, 0 errors, 0 warnings in [1-9]" "$S" && grep -q "^racecheck: exit 0, 0 errors, 0 warnings in [1-9]" "$S"'
check "bench_adapters --backend cpu ran both shapes through the counting wrappers" \
    '"$PYTHON" -c "import json,sys; b=json.load(open(sys.argv[1])); assert b[\"setup\"][\"backend\"]==\"cpu\"; assert [s[\"name\"] for s in b[\"shapes\"]]==[\"r16all\",\"r8qv\"]; assert all(s[\"c\"][\"tok_s\"]>0 for s in b[\"shapes\"])" "$TMP/run/bench4.json"'
check "read bandwidth measured (bw.json)" '"$PYTHON" -c "import json,sys; assert json.load(open(sys.argv[1]))[\"read_gbps\"] > 0" "$TMP/run/bw.json"'
for l in 3a 3b 3c; do
    check "acceptance $l computed" 'grep -qE "^$l .* -> (MET|missed)$" "$S"'
done
check "acceptance 3d computed from the pool churn run (40 adapters through 16 slots, evictions seen)" \
    'grep -qE "^3d 40 adapters through a 16-slot pool .* [1-9][0-9]* evictions: [0-9.]+x -> (MET|missed)$" "$S"'
check "the per-op split of a step (--sync-ops), batch 4 and 1, base and distinct adapters" \
    'grep -qE "^op split, batch 4, a .*matmul [0-9.]+" "$S" && grep -qE "^op split, batch 1, c .*sgmv_shrink [0-9.]+" "$S"'
if "$PYTHON" -c "import torch, transformers, peft" 2>/dev/null; then
    check "acceptance 4: HF baseline ran (CPU) and the ratio is printed" 'grep -qE "^4 .*: [0-9.]+x -> (MET|missed)$" "$S"'
else
    check "acceptance 4: says plainly that the comparison could not run" 'grep -q "^4 .*NOT RUN (missing python package" "$S"'
fi
check "dry run within its time budget" 'grep -qE "^== total [0-9]+s, status 0$" "$S"'

# ---- 4. a sanitizer that finds errors fails the run (models and build reused; GPU_PREBUILT=1:
# no make, as tests/gpu/device_run.sh runs it on a lent GPU machine) ----
STUB_CS_ERRORS=2 SKIP_HF=1 SKIP_POOL=1 GPU_PREBUILT=1 GPU_DRYRUN=1 GPU_BUILD="$BUILD" GPU_MODELS="$TMP/models" \
    PYTHON="$PYTHON" bash tests/gpu/run.sh "$TMP/err" >/dev/null 2>&1
rc=$?
check "sanitizer errors: exit 1 and the count in summary.txt" \
    '[ $rc -eq 1 ] && grep -q "^memcheck: exit 99, [1-9][0-9]* errors" "$TMP/err/summary.txt"'
check "SKIP_HF=1 / SKIP_POOL=1 are said NOT RUN in summary.txt, not passed over" \
    'grep -q "^pool churn: NOT RUN (SKIP_POOL=1)" "$TMP/err/summary.txt" && grep -q "^hf baseline: NOT RUN (SKIP_HF=1)" "$TMP/err/summary.txt"'
check "GPU_PREBUILT=1: nothing made, the binaries checked" \
    'grep -q "prebuilt binaries in" "$TMP/err/build.log" && ! grep -qE "^(cc|nvcc) " "$TMP/err/build.log"'

echo "test_gpu_dryrun: $pass passed, $fail failed, 0 skipped"
[ "$fail" -eq 0 ]
