#!/usr/bin/env bash
# tests/lm_eval/run.sh — issue 15 acceptance 2: lm-evaluation-harness (local-completions)
# runs a log-likelihood task and a generation task against `peftd serve` with a LoRA adapter
# (the fixture tests/fixtures/adapters/lora_r8_all, uploaded under the Hugging Face-style
# name org/stories-lora), and compare.py checks every logged log-likelihood against
# transformers+peft (reference.json) within 1e-4 and every generation against their greedy
# text. `make test-lm-eval` runs it.
#
# Installs tests/lm_eval/requirements.txt into $LM_EVAL_VENV (default build/lm-eval-venv,
# reused while requirements.txt is unchanged: needs PyPI the first time). Nothing else is
# downloaded: the tasks read local JSONL files, the tokenizer is the model's own files, and
# the HF hub is forced offline. Env: BUILD (build), PEFTD_BIN ($BUILD/peftd), PYTHON
# (python3), LM_EVAL_VENV, LM_EVAL_OUT (output dir; default a fresh temporary one, kept
# on failure).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
BUILD=${BUILD:-build}
BIN=${PEFTD_BIN:-$BUILD/peftd}
PYTHON=${PYTHON:-python3}
VENV=${LM_EVAL_VENV:-$BUILD/lm-eval-venv}
REQS=tests/lm_eval/requirements.txt
ADAPTER=tests/fixtures/adapters/lora_r8_all
NAME=org/stories-lora

[ -x "$BIN" ] || { echo "run.sh: $BIN not built (make all)" >&2; exit 1; }
if ! cmp -s "$REQS" "$VENV/.reqs" 2>/dev/null; then
    echo "== lm_eval virtualenv $VENV"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install -q --no-cache-dir -r "$REQS"
    cp "$REQS" "$VENV/.reqs"
fi

OUT=${LM_EVAL_OUT:-$(mktemp -d /tmp/peftd-lm-eval.XXXXXX)}
STORE=$(mktemp -d /tmp/peftd-lm-eval-store.XXXXXX)
PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT
"$BIN" serve --model models/stories260K --host 127.0.0.1 --port "$PORT" --store "$STORE" > "$OUT/peftd.log" 2>&1 &
PID=$!
ok=0
cleanup() {
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    rm -rf "$STORE"
    if [ "$ok" = 1 ] && [ -z "${LM_EVAL_OUT:-}" ]; then rm -rf "$OUT"; else echo "run.sh: outputs kept in $OUT"; fi
}
trap cleanup EXIT
for _ in $(seq 1 600); do
    curl -sf "$URL/health" > /dev/null && break
    kill -0 "$PID" 2>/dev/null || { cat "$OUT/peftd.log"; echo "run.sh: peftd exited" >&2; exit 1; }
    sleep 0.1
done
curl -sf -X PUT -F "file=@$ADAPTER/adapter_config.json" -F "file=@$ADAPTER/adapter_model.safetensors" \
    "$URL/v1/adapters/$NAME" > "$OUT/upload.json" || { cat "$OUT/peftd.log"; echo "run.sh: upload failed" >&2; exit 1; }

echo "== lm_eval local-completions, model=$NAME, peftd on $URL"
HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
    "$VENV/bin/lm_eval" --model local-completions \
    --model_args "model=$NAME,base_url=$URL/v1/completions,tokenizer_backend=huggingface,tokenizer=$ROOT/models/stories260K,add_bos_token=True,num_concurrent=1,max_retries=1,timeout=120" \
    --include_path tests/lm_eval/tasks --tasks peftd_stories_mc,peftd_stories_gen \
    --batch_size 1 --log_samples --output_path "$OUT/results" > "$OUT/lm_eval.log" 2>&1 \
    || { tail -40 "$OUT/lm_eval.log"; echo "run.sh: lm_eval failed" >&2; exit 1; }
grep -E '^\|' "$OUT/lm_eval.log" || true
"$PYTHON" tests/lm_eval/compare.py "$OUT/results"
ok=1
