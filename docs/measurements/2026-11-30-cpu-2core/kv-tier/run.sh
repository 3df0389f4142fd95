#!/usr/bin/env bash
# TTFT of a conversation's second turn on the prefill node that did not see the first (its prefix loaded from
# the Redis KV tier) against the first turn (a full prefill), 1,500-token documents. Run from the repository
# root, alone on the machine (under the shared vLLM lock on the dev box).
set -euo pipefail
here=docs/measurements/2026-11-30-cpu-2core/kv-tier
mkdir -p /tmp/disagg-kv-tier-measure && (umask 077; python3 -c 'import secrets; print(secrets.token_hex(16))' \
  > /tmp/disagg-kv-tier-measure/cluster-token)
python=${PYTHON:-.venv/bin/python}
export PYTHONPATH=$PWD  # every component runs this checkout's code
disagg() { "$python" -m disagg "$@"; }
trap 'disagg down "$here/cluster.toml"' EXIT
trap 'exit 143' TERM INT
disagg up "$here/cluster.toml"
timeout "${BENCH_TIMEOUT_S:-400}" "$python" -m disagg bench kv-tier --url http://127.0.0.1:18000 --prefill-url http://127.0.0.1:18100 \
  --prefill-url http://127.0.0.1:18110 --tokenizer ~/.cache/disagg/models/SmolLM2-135M-Instruct \
  --conversations 5 --prefix-tokens 1500 --max-tokens 16 --think-s 2 \
  --label "KV tier (Redis): second turns on the other prefill node vs first turns" --out-dir "$here"
