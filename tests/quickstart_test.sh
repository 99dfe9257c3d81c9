#!/usr/bin/env bash
# The README quick start, run as a user would: start optd, check health, create an Adam session
# with optctl, step it from the C++ example worker until the loss is ~0, lower its learning rate
# with optctl update (version kept), step it again, pull it, delete it.
# Usage: quickstart_test.sh OPTD OPTCTL QUADRATIC_WORKER
set -euo pipefail
OPTD=$1 OPTCTL=$2 WORKER=$3
TMP=$(mktemp -d)
"$OPTD" --listen=127.0.0.1:0 --metrics_listen=127.0.0.1:0 > "$TMP/optd.out" 2> "$TMP/optd.err" &
PID=$!
cleanup() { kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
for _ in $(seq 100); do grep -q 'listening on' "$TMP/optd.out" && break; sleep 0.1; done
ADDR=$(sed -n 's/^optd listening on //p' "$TMP/optd.out")
[ -n "$ADDR" ] || { echo "optd did not start"; cat "$TMP/optd.err"; exit 1; }

"$OPTCTL" --server="$ADDR" health --service=optd.v1.Optimizer
"$OPTCTL" --server="$ADDR" create --session=quadratic --optimizer=adam --lr=0.1 --tensor=w:8 \
  | grep -q 'beta2 *0.999'
"$WORKER" --server="$ADDR" --session=quadratic --steps=300 | tee "$TMP/worker.out"
grep -q '^final loss 0.0000' "$TMP/worker.out"
"$OPTCTL" --server="$ADDR" describe quadratic | grep -q 'version: *300'
"$OPTCTL" --server="$ADDR" update quadratic --lr=0.01 > "$TMP/update.out"
grep -q '^  lr  *0.01$' "$TMP/update.out"
grep -q '^version: *300$' "$TMP/update.out"
"$WORKER" --server="$ADDR" --session=quadratic --steps=20 --worker=cpp-worker-2 > "$TMP/worker2.out"
grep -q '^worker cpp-worker-2 steps 20 duplicates 0 aborted 0 .* version 320 ' "$TMP/worker2.out"
"$OPTCTL" --server="$ADDR" describe quadratic > "$TMP/describe.out"
grep -q '^version: *320$' "$TMP/describe.out"
grep -q '^learning rate: 0.01 ' "$TMP/describe.out"
"$OPTCTL" --server="$ADDR" pull quadratic --out="$TMP/pull" | grep -q 'w \[8\]'
"$OPTCTL" --server="$ADDR" delete quadratic
if "$OPTCTL" --server="$ADDR" describe quadratic 2> "$TMP/err"; then exit 1; fi
grep -q NOT_FOUND "$TMP/err"
echo "quickstart: 1 passed, 0 failed"
