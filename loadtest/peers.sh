#!/bin/bash
# Our load generator and an external OpenAI-compatible benchmark client (guidellm) against one promptswap server
# on loopback, on the same workload shape (64 requests, 16 in flight, 64-token prompts, 32 output tokens).
#
#   GUIDELLM=/path/to/venv/bin/guidellm loadtest/peers.sh [OUT_DIR]
#
# guidellm pulls its own torch and transformers: install it in a separate virtual environment
# (`python -m venv /tmp/guidellm-venv && /tmp/guidellm-venv/bin/pip install guidellm`).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-loadtest-results/peers}
GUIDELLM=${GUIDELLM:-guidellm}
TOKENIZER=${TOKENIZER:-$HOME/.cache/promptswap/models/smollm2-135m-instruct}
PORT=${PORT:-8741}
URL=http://127.0.0.1:$PORT
mkdir -p "$OUT"
rm -rf "$OUT/store"

PROMPTSWAP_STORE=$OUT/store PROMPTSWAP_ADMIN_TOKEN=peers-token python -m server serve --port "$PORT" \
    > "$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null || true' EXIT
until curl -sf "$URL/ready" > /dev/null; do
    kill -0 $SERVER 2>/dev/null || { tail "$OUT/server.log"; exit 1; }
    sleep 1
done
python -m loadtest.upload_tasks --url "$URL" --admin-token peers-token --num-tasks 100 > "$OUT/upload.log" 2>&1

COMMON=(--url "$URL" --endpoint completions --concurrency 16 --num-requests 64 --input-len fixed:64
        --output-len fixed:32 --tokenizer "$TOKENIZER" --no-progress)
python -m loadtest.loadgen "${COMMON[@]}" --tasks none --out "$OUT/loadgen-base" | tee "$OUT/loadgen-base.txt"
python -m loadtest.loadgen "${COMMON[@]}" --base-fraction 0.1 --out "$OUT/loadgen-mix" | tee "$OUT/loadgen-mix.txt"

# guidellm addresses one model per run: the base model, then one prefix-tuning task.
for MODEL in smollm2-135m-instruct px-001; do
    "$GUIDELLM" run \
        --backend "kind=openai_http,target=$URL,model=$MODEL,request_format=/v1/completions" \
        --profile kind=concurrent,streams=16 --constraint kind=max_requests,count=64 \
        --tokenizer "kind=hf_auto,model=$TOKENIZER" \
        --data kind=synthetic_text,prompt_tokens=64,output_tokens=32 \
        --output "kind=json,path=$OUT/guidellm-$MODEL.json" --output kind=console --disable-progress \
        > "$OUT/guidellm-$MODEL.txt" 2>&1
done
