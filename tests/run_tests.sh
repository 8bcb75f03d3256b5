#!/usr/bin/env bash
# tests/run_tests.sh — runs every unit-test binary and every integration test,
# adds up their summary lines and prints one closing line:
#   "tests: N passed, N failed, N skipped"
set -u
BUILD=${BUILD:-build}
PYTHON=${PYTHON:-python3}
cd "$(dirname "$0")/.."
pass=0; fail=0; skip=0; failed_suites=()

tally() {  # $1 = suite name, stdin = its output
    local line
    line=$(grep -E '^[^ ].*: [0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$' "$2" | tail -n 1)
    if [ -z "$line" ]; then
        fail=$((fail + 1)); failed_suites+=("$1 (no summary: crashed?)"); return
    fi
    read -r p f s <<<"$(echo "$line" | sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed, ([0-9]+) skipped/\1 \2 \3/')"
    pass=$((pass + p)); fail=$((fail + f)); skip=$((skip + s))
    [ "$f" -eq 0 ] || failed_suites+=("$1")
}

out=$(mktemp)
echo "== unit tests ($BUILD/tests)"
for t in "$BUILD"/tests/test_*; do
    [ -x "$t" ] || continue
    "$t" 2>&1 | tee "$out"
    tally "$(basename "$t")" "$out"
done

# The GPU parity harness checks its own logic (sentinels, spreads, tolerances) with a second
# CPU backend standing in for CUDA: it runs here on every machine, GPU or not.
if [ -x "$BUILD/tests/test_backend_parity" ]; then
    echo "== GPU parity harness self-test (PEFTD_PARITY_SELFTEST=1: a CPU backend stands in for CUDA)"
    PEFTD_PARITY_SELFTEST=1 "$BUILD/tests/test_backend_parity" 2>&1 | tee "$out"
    tally "test_backend_parity (self-test)" "$out"
fi

echo "== integration tests (tests/integration)"
# The SDK/metrics/manifest tests need their Python packages (tests/requirements.txt, installed
# by `make venv` into build/venv; `make test` passes that venv's python as PYTHON). A missing
# one is a FAILED check here, never a silent skip.
for mod in openai prometheus_client kubernetes_validate yaml playwright jsonschema; do
    if "$PYTHON" -c "import $mod" 2>/dev/null; then
        echo "  ok python module $mod ($PYTHON)"; pass=$((pass + 1))
    else
        echo "  FAIL python module $mod missing for $PYTHON: run make venv (tests/requirements.txt)"
        fail=$((fail + 1)); failed_suites+=("python module $mod")
    fi
done
# test_console.py drives Debian's Chromium through Playwright (tests/requirements.txt): install
# Chromium when missing; without it the browser tests FAIL (an unmet dependency is no skip).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing Chromium: apt-get install chromium"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 \
        --no-install-recommends chromium >/dev/null; } ||
        echo "   apt-get install chromium failed: test_console.py's browser tests will FAIL"
fi
for t in tests/integration/test_*.py; do
    [ -f "$t" ] || continue
    PEFTD_BIN="$BUILD/peftd" "$PYTHON" "$t" 2>&1 | tee "$out"
    tally "$(basename "$t")" "$out"
done
rm -f "$out"

[ ${#failed_suites[@]} -eq 0 ] || echo "failed suites: ${failed_suites[*]}"
echo "tests: $pass passed, $fail failed, $skip skipped"
[ "$fail" -eq 0 ]
