#!/usr/bin/env bash
# tests/gpu/device_run.sh — the one command a lent GPU machine runs (the `device` tool, with
# `carry: [".gpu"]`): unpacks .gpu/bundle.tar.xz (tests/gpu/pack.sh, made on the CPU machine)
# into build-gpu, makes its libraries and the machine's CUDA libraries findable, runs
# tests/gpu/run.sh with GPU_PREBUILT=1, and leaves the results in $OUT as results.tgz (every
# log and JSON) + summary.txt (the tool brings back at most 8 files). Prints the summary and
# the tails of the logs of failed steps last, where the tool's output tail shows them.
# Knobs passed through: GPU_BUDGET_S, GPU_TOKENS, SKIP_HF, SKIP_POOL (run.sh: a skipped step fails the run).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
OUT=${OUT:-/tmp/peftd-gpu-out}
RES=${GPU_RES:-/tmp/peftd-gpu-res}
mkdir -p "$OUT" build-gpu
rm -rf "$RES"
mkdir -p "$RES"
if ! tar xJf .gpu/bundle.tar.xz -C build-gpu; then
    echo "device_run: FAILED: cannot unpack .gpu/bundle.tar.xz (run tests/gpu/pack.sh and carry .gpu)"
    exit 1
fi
export LD_LIBRARY_PATH=$PWD/build-gpu/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# CUDA's libraries: the rpath names this build machine's /usr/local/cuda/lib64; elsewhere look in
# the toolkit's usual places and in python's nvidia-* wheels.
for lib in libcudart.so libcublas.so libcublasLt.so; do
    ldd build-gpu/peftd | grep -qE "^\s*$lib\.[0-9]+ => /" && continue
    want=$(ldd build-gpu/peftd | grep -oE "$lib\.[0-9]+" | head -1)
    d=$(find /usr/local /opt /usr/lib -name "$want" 2>/dev/null | head -1)
    [ -n "$d" ] && LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$(dirname "$d")
done
{
    echo "== machine"
    nvidia-smi 2>&1 | head -20
    grep -E '^(PRETTY_NAME)=' /etc/os-release
    ldd --version | head -1
    python3 -c 'import sys, numpy; print("python", sys.version.split()[0], "numpy", numpy.__version__)' 2>&1
    nproc; free -g | head -2
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    ldd build-gpu/peftd
    cat build-gpu/BUILD_INFO
} >"$RES/machine.txt" 2>&1
GPU_PREBUILT=1 GPU_BUILD=build-gpu bash tests/gpu/run.sh "$RES"
rc=$?
tar czf "$OUT/results.tgz" --exclude='models' -C "$RES" . 2>/dev/null
cp "$RES/summary.txt" "$OUT/summary.txt" 2>/dev/null
echo "== failed steps' logs (tails)"
for f in "$RES"/*.log; do
    [ -s "$f" ] || continue
    if grep -qiE 'FAIL|error|abort|not found|Segmentation' "$f"; then
        echo "--- $(basename "$f")"
        grep -iE 'FAIL|error|abort|not found|Segmentation' "$f" | grep -v 'ERROR SUMMARY: 0 errors' | head -12
    fi
done
echo "== summary"
cat "$RES/summary.txt"
exit $rc
